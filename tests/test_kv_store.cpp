// KvStore and attention over it (cpu/kv_attention.hpp) against a plain
// scalar reference: contiguous and paged storage, f32/f16/bf16, three
// sequences of different lengths (one shorter than the sink count), plans with
// head and latent references (the store projects latent streams at append), block
// sizes that do not divide the lengths, appends in uneven chunks. Decode for
// a batch and chunked prefill equal ordinary attention without a plan and
// reconstruct-then-attend with one; split-K gives the same bits for 1..8
// threads and equals one pass; bad input is rejected with the shapes named.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "headrecon/cpu/kv_attention.hpp"
#include "headrecon/kv_pool.hpp"
#include "headrecon/kv_store.hpp"
#include "headrecon/thread_pool.hpp"
#include "kernel_test_util.hpp"

using namespace headrecon;
using headrecon::testing::Worst;

namespace {

constexpr std::size_t kLayers = 2, kKv = 4, kGroup = 2, kDim = 64, kSinks = 4;

// mode 1: layer 1 rebuilds K head 1 from (1.0, 1.2), K head 3 from (0.3, 1.0)
// (cross-layer) and V head 2 from (1.0, 1.1); layer 0 rebuilds V head 0 from 0.1.
// mode 2 (latent streams, ids kKv + j): layer 1 keeps two latent K streams,
// K head 1 from (1.0, latent 0), K head 3 from (0.3, latent 1); layer 0 one
// latent V stream, V head 0 from it alone; V head 2 of layer 1 as in mode 1.
// mode 0: no targets.
Plan make_plan(int mode, std::mt19937& rng) {
  Plan plan;
  plan.head_dim = kDim;
  plan.n_layers = kLayers;
  plan.sink_tokens = kSinks;
  if (mode == 0) return plan;
  std::normal_distribution<float> g;
  auto target = [&](std::int32_t layer, std::int32_t head, std::vector<HeadId> refs) {
    TargetMap t;
    t.target = {layer, head};
    t.refs = refs;
    t.weight.resize(refs.size() * kDim * kDim);
    for (auto& w : t.weight) w = g(rng) / std::sqrt(float(refs.size() * kDim));
    t.bias.resize(kDim);
    for (auto& b : t.bias) b = 0.5f * g(rng);
    return t;
  };
  auto stream = [&] {
    LatentStream ls;
    ls.projection.resize(kKv * kDim * kDim);
    for (auto& w : ls.projection) w = g(rng) / std::sqrt(float(kKv * kDim));
    return ls;
  };
  KindPlan k{Kind::k, kKv, {{}, {}}, {}}, v{Kind::v, kKv, {{}, {}}, {}};
  const std::int32_t z = kKv;  // latent stream 0
  if (mode == 2) {
    k.latent = {{}, {stream(), stream()}};
    v.latent = {{stream()}, {}};
  }
  k.layers[1].push_back(target(1, 1, {{1, 0}, mode == 2 ? HeadId{1, z} : HeadId{1, 2}}));
  k.layers[1].push_back(target(1, 3, {{0, 3}, mode == 2 ? HeadId{1, z + 1} : HeadId{1, 0}}));
  v.layers[0].push_back(target(0, 0, {mode == 2 ? HeadId{0, z} : HeadId{0, 1}}));
  v.layers[1].push_back(target(1, 2, {{1, 0}, {1, 1}}));
  plan.kinds = {k, v};
  plan.validate();
  return plan;
}

// The K/V an engine would append: [layer][pos][kv][dim] per sequence.
struct SeqData {
  std::size_t len;
  std::vector<float> k, v;
  std::vector<float> sk, sv;  // k, v as the store returns them to attention (stored(), below)
  std::vector<float> fk;      // k as stored, in the store's (rotated) frame
  // Latent streams z = Pᵀx ([layer][pos][j][dim], j < kKv), projected in double and
  // rounded once as the store does: stored (szk, szv) and in the stored frame (fzk).
  std::vector<float> szk, szv, fzk;
  float kat(std::size_t l, std::size_t t, std::size_t h, std::size_t i) const { return k[((l * len + t) * kKv + h) * kDim + i]; }
  float vat(std::size_t l, std::size_t t, std::size_t h, std::size_t i) const { return v[((l * len + t) * kKv + h) * kDim + i]; }
};

// A head vector as the store keeps it (rotated first when asked), read back as
// float in the store's own (rotated) frame.
std::vector<float> stored_frame(CacheType ct, const float* x) {
  std::vector<float> v(x, x + kDim);
  if (ct.rotate) hadamard_rotate(v.data(), kDim);
  switch (ct.dtype) {
    case DType::f32: break;
    case DType::f16: for (auto& e : v) e = to_float(to_f16(e)); break;
    case DType::bf16: for (auto& e : v) e = to_float(to_bf16(e)); break;
    default: {
      std::vector<unsigned char> b(dtype_row_bytes(ct.dtype, kDim));
      quantize_row(v.data(), kDim, ct.dtype, b.data());
      dequantize_row(b.data(), kDim, ct.dtype, v.data());
    }
  }
  return v;
}
// The same in the model's frame (rotation undone): what attention sees, and
// what the library's cache_roundtrip() returns.
std::vector<float> stored(CacheType ct, const float* x) {
  std::vector<float> v = stored_frame(ct, x);
  if (ct.rotate) hadamard_rotate(v.data(), kDim);
  std::vector<float> lib(x, x + kDim);
  cache_roundtrip(ct, lib.data(), kDim);
  REQUIRE(lib == v);
  return v;
}

// K (or V) of head h at position t of layer l as attention sees it: sinks
// exact, cached heads stored, rebuilt heads mapped from stored references.
void effective(const Plan& plan, CacheType dt, const SeqData& s, Kind kind, std::size_t l, std::size_t t, std::size_t h,
               std::vector<double>& out) {
  (void)dt;
  auto at = [&](std::size_t layer, std::size_t head, std::size_t i) {
    if (head >= kKv) return double((kind == Kind::k ? s.szk : s.szv)[((layer * s.len + t) * kKv + head - kKv) * kDim + i]);
    return double((kind == Kind::k ? s.sk : s.sv)[((layer * s.len + t) * kKv + head) * kDim + i]);
  };
  const KindPlan* kp = plan.find(kind);
  const TargetMap* tm = kp && t >= std::size_t(plan.sink_tokens) ? kp->find({std::int32_t(l), std::int32_t(h)}) : nullptr;
  for (std::size_t j = 0; j < kDim; ++j) {
    if (!tm) {
      out[j] = at(l, h, j);
      continue;
    }
    double y = tm->bias[j];
    for (std::size_t r = 0; r < tm->refs.size(); ++r)
      for (std::size_t i = 0; i < kDim; ++i)
        y += at(std::size_t(tm->refs[r].layer), std::size_t(tm->refs[r].head), i) * tm->weight[(r * kDim + i) * kDim + j];
    out[j] = y;
  }
}

// Scalar attention of one row (query [Hq][d] at position pos) over positions 0..pos.
// Block-type caches: the kernel's integer scores use each query vector (the
// raw one, W_r q for rebuilt keys) quantized per block in the store's frame;
// the bound on the score error of head h at position t.
double score_quant_bound(const Plan& plan, CacheType dt, const SeqData& s, std::size_t l, std::size_t t, std::size_t h,
                         const float* q, double scale) {
  if (!is_block_type(dt.dtype)) return 0.0;
  const std::size_t g = h / kGroup;
  auto frame = [&](std::vector<double> u) {
    if (dt.rotate) {
      std::vector<float> f(u.begin(), u.end());
      hadamard_rotate(f.data(), kDim);
      u.assign(f.begin(), f.end());
    }
    return u;
  };
  auto stored_k = [&](std::size_t layer, std::size_t head) {
    const float* x = head >= kKv ? &s.fzk[((layer * s.len + t) * kKv + head - kKv) * kDim]
                                 : &s.fk[((layer * s.len + t) * kKv + head) * kDim];
    return [x](std::size_t i) { return x[i]; };
  };
  std::vector<double> u(kDim);
  for (std::size_t i = 0; i < kDim; ++i) u[i] = scale * q[h * kDim + i];
  const KindPlan* kp = plan.find(Kind::k);
  const TargetMap* tm = kp && t >= std::size_t(plan.sink_tokens) ? kp->find({std::int32_t(l), std::int32_t(g)}) : nullptr;
  if (!tm) return headrecon::testing::quantized_query_bound(frame(u), stored_k(l, g));
  double b = 0;
  for (std::size_t r = 0; r < tm->refs.size(); ++r) {
    std::vector<double> w(kDim, 0.0);
    for (std::size_t i = 0; i < kDim; ++i)
      for (std::size_t j = 0; j < kDim; ++j) w[i] += double(tm->weight[(r * kDim + i) * kDim + j]) * u[j];
    b += headrecon::testing::quantized_query_bound(
        frame(w), stored_k(std::size_t(tm->refs[r].layer), std::size_t(tm->refs[r].head)));
  }
  return b;
}

// Also returns, per head, the tolerance the quantized queries add: a score
// error δ moves the output by at most 2·δ·max|v|.
std::vector<double> reference_row(const Plan& plan, CacheType dt, const SeqData& s, std::size_t l, std::size_t pos,
                                  const float* q, double scale, std::vector<double>& quant_tol) {
  const std::size_t Hq = kKv * kGroup;
  std::vector<double> out(Hq * kDim, 0.0), kv(kDim);
  quant_tol.assign(Hq, 0.0);
  for (std::size_t h = 0; h < Hq; ++h) {
    const std::size_t g = h / kGroup;
    std::vector<double> sc(pos + 1);
    double ds = 0, vmax = 0;
    for (std::size_t t = 0; t <= pos; ++t) {
      ds = std::max(ds, score_quant_bound(plan, dt, s, l, t, h, q, scale));
      effective(plan, dt, s, Kind::k, l, t, g, kv);
      double dot = 0;
      for (std::size_t i = 0; i < kDim; ++i) dot += double(q[h * kDim + i]) * kv[i];
      sc[t] = scale * dot;
    }
    const double mx = *std::max_element(sc.begin(), sc.end());
    double sum = 0;
    for (auto& x : sc) sum += (x = std::exp(x - mx));
    for (std::size_t t = 0; t <= pos; ++t) {
      effective(plan, dt, s, Kind::v, l, t, g, kv);
      for (std::size_t i = 0; i < kDim; ++i) out[h * kDim + i] += sc[t] / sum * kv[i], vmax = std::max(vmax, std::fabs(kv[i]));
    }
    quant_tol[h] = 2.0 * ds * vmax;
  }
  return out;
}

struct Fixture {
  Plan plan;
  RefCacheLayout layout;
  KvStoreOptions opt;
  KvPool pool;
  KvStore store;
  std::vector<SeqData> data;
  std::vector<SequenceId> ids;

  Fixture(int targets, KvStoreOptions o, std::mt19937& rng, std::vector<std::size_t> lens)
      : plan(make_plan(targets, rng)),
        layout(plan, kKv),
        opt(o),
        pool(KvStore::pool_bytes(layout, o)),
        store(layout, o, pool.data(), pool.size()) {
    std::normal_distribution<float> g;
    for (std::size_t len : lens) {
      SeqData s{len, std::vector<float>(kLayers * len * kKv * kDim), std::vector<float>(kLayers * len * kKv * kDim), {}, {}, {}, {}, {}, {}};
      for (auto& x : s.k) x = g(rng);
      for (auto& x : s.v) x = g(rng);
      s.sk.resize(s.k.size());
      s.sv.resize(s.v.size());
      s.fk.resize(s.k.size());
      for (std::size_t r = 0; r < s.k.size(); r += kDim) {
        const auto f = stored_frame({o.dtype, o.rotate}, &s.k[r]);
        std::copy(f.begin(), f.end(), s.fk.begin() + std::ptrdiff_t(r));
        const auto a = stored({o.dtype, o.rotate}, &s.k[r]), b = stored({o.dtype, o.rotate}, &s.v[r]);
        std::copy(a.begin(), a.end(), s.sk.begin() + std::ptrdiff_t(r));
        std::copy(b.begin(), b.end(), s.sv.begin() + std::ptrdiff_t(r));
      }
      s.szk.assign(s.k.size(), 0.f);
      s.szv.assign(s.k.size(), 0.f);
      s.fzk.assign(s.k.size(), 0.f);
      for (Kind kind : {Kind::k, Kind::v}) {
        const KindPlan* kp = plan.find(kind);
        if (!kp) continue;
        for (std::size_t l = 0; l < kLayers; ++l)
          for (std::size_t j = 0; j < kp->n_latent(std::int32_t(l)); ++j)
            for (std::size_t t = 0; t < len; ++t) {
              const float* x = (kind == Kind::k ? s.k : s.v).data() + (l * len + t) * kKv * kDim;
              const auto& P = kp->latent[l][j].projection;
              std::vector<float> z(kDim);
              for (std::size_t c = 0; c < kDim; ++c) {
                double acc = 0;
                for (std::size_t i = 0; i < kKv * kDim; ++i) acc += double(x[i]) * double(P[i * kDim + c]);
                z[c] = float(acc);
              }
              const std::size_t at = ((l * len + t) * kKv + j) * kDim;
              const auto a = stored({o.dtype, o.rotate}, z.data());
              std::copy(a.begin(), a.end(), (kind == Kind::k ? s.szk : s.szv).begin() + std::ptrdiff_t(at));
              if (kind == Kind::k) {
                const auto fr = stored_frame({o.dtype, o.rotate}, z.data());
                std::copy(fr.begin(), fr.end(), s.fzk.begin() + std::ptrdiff_t(at));
              }
            }
      }
      data.push_back(std::move(s));
      ids.push_back(store.add_sequence());
    }
    // Append in uneven chunks, interleaving sequences, layer by layer.
    std::vector<std::size_t> done(lens.size(), 0);
    std::uniform_int_distribution<std::size_t> chunk(1, 9);
    for (bool more = true; more;) {
      more = false;
      for (std::size_t i = 0; i < lens.size(); ++i) {
        if (done[i] == lens[i]) continue;
        const std::size_t n = std::min(chunk(rng), lens[i] - done[i]);
        const std::size_t pos = store.extend(ids[i], n);
        REQUIRE(pos == done[i]);
        for (std::size_t l = 0; l < kLayers; ++l) {
          const float* kp = data[i].k.data() + (l * lens[i] + pos) * kKv * kDim;
          const float* vp = data[i].v.data() + (l * lens[i] + pos) * kKv * kDim;
          store.append(ids[i], l, pos, erase(make_view(kp, n * kKv * kDim, Extents3{n, kKv, kDim}, Layout::token_major)),
                       erase(make_view(vp, n * kKv * kDim, Extents3{n, kKv, kDim}, Layout::token_major)));
        }
        done[i] += n;
        more = more || done[i] < lens[i];
      }
    }
  }
};

std::vector<float> random_q(std::size_t rows, std::mt19937& rng) {
  std::normal_distribution<float> g;
  std::vector<float> q(rows * kKv * kGroup * kDim);
  for (auto& x : q) x = g(rng);
  return q;
}

void check_rows(const Fixture& f, std::size_t seq, std::size_t layer, std::size_t pos0, std::size_t n_rows,
                const std::vector<float>& q, const std::vector<float>& out, const std::string& what) {
  const std::size_t Hq = kKv * kGroup;
  const double scale = 1.0 / std::sqrt(double(kDim));
  Worst worst;
  for (std::size_t r = 0; r < n_rows; ++r) {
    std::vector<double> quant_tol;
    const auto ref = reference_row(f.plan, {f.opt.dtype, f.opt.rotate}, f.data[seq], layer, pos0 + r,
                                   q.data() + r * Hq * kDim, scale, quant_tol);
    for (std::size_t i = 0; i < Hq * kDim; ++i)
      worst.add(out[r * Hq * kDim + i], ref[i], 2e-5 * (1.0 + std::fabs(ref[i])) + 2e-5 + quant_tol[i / kDim],
                "row " + std::to_string(r) + " head " + std::to_string(i / kDim) + " dim " + std::to_string(i % kDim));
  }
  INFO(what << ": " << worst.report());
  REQUIRE(worst.ratio <= 1.0);
}

KvStoreOptions paged(CacheType dt, std::size_t block_tokens, std::size_t n_blocks) {
  KvStoreOptions o;
  o.storage = KvStoreOptions::Storage::paged;
  o.n_q_heads = kKv * kGroup;
  o.dtype = dt.dtype;
  o.rotate = dt.rotate;
  o.max_sequences = 4;
  o.block_tokens = block_tokens;
  o.n_blocks = n_blocks;
  return o;
}
KvStoreOptions contiguous(CacheType dt, std::size_t max_tokens) {
  KvStoreOptions o;
  o.storage = KvStoreOptions::Storage::contiguous;
  o.n_q_heads = kKv * kGroup;
  o.dtype = dt.dtype;
  o.rotate = dt.rotate;
  o.max_sequences = 3;
  o.max_tokens = max_tokens;
  return o;
}

const std::vector<CacheType> kTypes = {CacheType::parse("f32"),  CacheType::parse("f16"),  CacheType::parse("bf16"),
                                       CacheType::parse("q8_0"), CacheType::parse("q4_0"), CacheType::parse("q4_0r"),
                                       CacheType::parse("f32r")};

}  // namespace

TEST_CASE("KvStore stores what the plan keeps, in the store's element type", "[store]") {
  std::mt19937 rng(3);
  for (CacheType dt : kTypes)
    for (bool is_paged : {true, false}) {
      Fixture f(true, is_paged ? paged(dt, 7, 64) : contiguous(dt, 100), rng, {83, 3, 40});
      INFO(dt.name() << (is_paged ? " paged" : " contiguous"));
      auto read = [&](const HeadStream& hs, std::size_t tok) {
        std::vector<float> v(kDim);
        switch (hs.dtype) {
          case DType::f32: for (std::size_t i = 0; i < kDim; ++i) v[i] = hs.row<float>(tok)[i]; break;
          case DType::f16: for (std::size_t i = 0; i < kDim; ++i) v[i] = to_float(hs.row<f16_t>(tok)[i]); break;
          case DType::bf16: for (std::size_t i = 0; i < kDim; ++i) v[i] = to_float(hs.row<bf16_t>(tok)[i]); break;
          default: dequantize_row(hs.row_address(tok), kDim, hs.dtype, v.data());
        }
        REQUIRE(hs.rotated == dt.rotate);
        return v;
      };
      for (std::size_t i = 0; i < f.ids.size(); ++i)
        for (std::size_t l = 0; l < kLayers; ++l) {
          const SequenceStreams st = f.store.streams(f.ids[i], l);
          const auto& cached_k = f.layout.cached(Kind::k, std::int32_t(l));
          const auto& cached_v = f.layout.cached(Kind::v, std::int32_t(l));
          const SeqData& D = f.data[i];
          auto input = [&](const std::vector<float>& x, std::size_t t, std::size_t h) {
            return &x[((l * D.len + t) * kKv + h) * kDim];
          };
          for (std::size_t t = 0; t < D.len; ++t) {
            if (t < kSinks) {
              for (std::size_t h = 0; h < kKv; ++h) {
                REQUIRE(read(st.sink_k[h], t) == stored_frame(dt, input(D.k, t, h)));
                REQUIRE(read(st.sink_v[h], t) == stored_frame(dt, input(D.v, t, h)));
              }
            } else {
              for (std::size_t s = 0; s < cached_k.size(); ++s)
                REQUIRE(read(st.k[s], t - kSinks) == stored_frame(dt, input(D.k, t, std::size_t(cached_k[s]))));
              for (std::size_t s = 0; s < cached_v.size(); ++s)
                REQUIRE(read(st.v[s], t - kSinks) == stored_frame(dt, input(D.v, t, std::size_t(cached_v[s]))));
            }
          }
        }
      // Exact bytes: a sequence holds its sink slab and whole blocks of bytes_per_token positions.
      REQUIRE(f.store.bytes_per_token() == f.layout.body_bytes_per_token(dt.dtype));
      REQUIRE(f.store.block_bytes() == (is_paged ? 7 : 100 - kSinks) * f.store.bytes_per_token());
      REQUIRE(f.store.sink_bytes() == kSinks * f.layout.full_bytes_per_token(dt.dtype));
      if (is_paged) REQUIRE(f.store.bytes_in_use(f.ids[0]) == f.store.sink_bytes() + 12 * f.store.block_bytes());
    }
  // q8_0 is llama.cpp's 34 bytes per 32 values: bytes per token of the SmolLM2-like layout here.
  std::mt19937 r0(1);
  const Plan p0 = make_plan(true, r0);
  const RefCacheLayout l0(p0, kKv);
  REQUIRE(l0.body_bytes_per_token(DType::q8_0) * 32 == l0.body_bytes_per_token(DType::f32) / 4 * 34);
  // A contiguous store for one sequence of T positions is exactly RefCacheLayout::bytes(T).
  std::mt19937 r2(4);
  const Plan plan = make_plan(true, r2);
  const RefCacheLayout layout(plan, kKv);
  for (CacheType dt : kTypes) {
    KvStoreOptions one = contiguous(dt, 1000);
    one.max_sequences = 1;
    REQUIRE(KvStore::pool_bytes(layout, one) == layout.bytes(1000, dt.dtype));
  }
}

TEST_CASE("decode for a batch and chunked prefill equal the scalar reference", "[store][attention]") {
  std::mt19937 rng(7);
  for (CacheType dt : kTypes)
    for (int targets : {0, 1, 2})
      for (bool is_paged : {true, false}) {
        Fixture f(targets, is_paged ? paged(dt, 5, 80) : contiguous(dt, 130), rng, {130, 2, 61});
        AttentionLimits lim;
        lim.max_requests = 3;
        lim.max_rows = 40;
        lim.max_tokens = 130;
        lim.split_tokens = 40;  // several tasks, none aligned to the lengths
        AttentionWorkspace ws(f.store, lim);
        const std::string what = dt.name() + (targets == 2 ? " latent plan" : targets ? " plan" : " full") +
                                 (is_paged ? " paged" : " contiguous");
        for (std::size_t l = 0; l < kLayers; ++l) {
          // Decode: the last position of each sequence.
          const auto q = random_q(3, rng);
          std::vector<float> out(q.size());
          const std::size_t HD = kKv * kGroup * kDim;
          std::vector<AttendRequest> reqs;
          for (std::size_t i = 0; i < 3; ++i)
            reqs.push_back({f.ids[i], f.data[i].len - 1, 1, q.data() + i * HD, out.data() + i * HD});
          attend(f.store, l, reqs.data(), reqs.size(), ws);
          for (std::size_t i = 0; i < 3; ++i)
            check_rows(f, i, l, f.data[i].len - 1, 1, std::vector<float>(q.begin() + i * HD, q.begin() + (i + 1) * HD),
                       std::vector<float>(out.begin() + i * HD, out.begin() + (i + 1) * HD), "decode " + what);
          // Prefill chunks: rows across the sink boundary and in the body.
          for (auto [pos0, n] : {std::pair<std::size_t, std::size_t>{0, 7}, {2, 1}, {50, 33}, {97, 33}}) {
            const auto qc = random_q(n, rng);
            std::vector<float> oc(qc.size());
            attend(f.store, l, {{f.ids[0], pos0, n, qc.data(), oc.data()}}, ws);
            check_rows(f, 0, l, pos0, n, qc, oc, "prefill " + what);
          }
        }
      }
}

// Layer 1's decode step (the last position) of the first n_req sequences of f,
// queries q ([n_req][H·d]), on pf, through a workspace sized by the limits
// (3 requests of one row, max_tokens, split).
std::vector<float> decode_last(const Fixture& f, const std::vector<float>& q, const ParallelFor& pf, std::size_t split,
                               std::size_t max_tokens, std::size_t n_req) {
  const std::size_t HD = kKv * kGroup * kDim;
  AttentionLimits lim;
  lim.max_requests = 3;
  lim.max_rows = 3;
  lim.max_tokens = max_tokens;
  lim.workers = pf.workers();
  lim.split_tokens = split;
  AttentionWorkspace ws(f.store, lim);
  std::vector<float> out(n_req * HD);
  std::vector<AttendRequest> reqs;
  for (std::size_t i = 0; i < n_req; ++i)
    reqs.push_back({f.ids[i], f.data[i].len - 1, 1, q.data() + i * HD, out.data() + i * HD});
  attend(f.store, 1, reqs.data(), reqs.size(), ws, pf);
  return out;
}

TEST_CASE("split-K gives the same bits for 1..8 threads and equals one pass", "[store][attention][parallel]") {
  std::mt19937 rng(11);
  Fixture f(true, paged(CacheType::parse("q4_0r"), 16, 64), rng, {300, 31, 200});
  const auto q = random_q(3, rng);
  // n_req = 1: fewer rows than workers, so the row's query maps, merge and
  // output maps are split over the workers by KV head as well.
  auto run = [&](ParallelFor pf, std::size_t split, std::size_t n_req = 3) {
    return decode_last(f, q, pf, split, 300, n_req);
  };
  const auto serial = run(ParallelFor(), 64);
  const auto serial_one = run(ParallelFor(), 64, 1);
  for (std::size_t threads = 1; threads <= 8; ++threads) {
    ThreadPool pool(threads);
    REQUIRE(run(pool.parallel_for(), 64) == serial);
    REQUIRE(run(pool.parallel_for(), 64, 1) == serial_one);
  }
  REQUIRE(std::equal(serial_one.begin(), serial_one.end(), serial.begin()));
  const auto one_pass = run(ParallelFor(), 4096);
  double worst = 0;
  for (std::size_t i = 0; i < serial.size(); ++i) worst = std::max(worst, double(std::fabs(serial[i] - one_pass[i])));
  INFO("max |split-K - one pass| = " << worst);
  REQUIRE(worst <= 1e-5);
}

TEST_CASE("the automatic split-K cut: tasks per worker, within the workspace, equal to the cut it names",
          "[store][attention][parallel]") {
  // The cut: a set split rounded up to blocks; 0 about kAutoTasksPerWorker
  // tasks per worker, none shorter than kAutoMinSplit.
  REQUIRE(attention_split(0) == kAutoMinSplit);
  REQUIRE(attention_split(40) == 64);
  REQUIRE(attention_split(100, 8192, 2) == 128);
  REQUIRE(attention_split(0, 8192, 2) == 2048);
  REQUIRE(attention_split(0, 8192, 0) == 4096);  // no workers counts as one
  REQUIRE(attention_split(0, 100000, 1) == 50048);
  REQUIRE(attention_split(0, 1000, 2) == kAutoMinSplit);
  REQUIRE(attention_split(0, 0, 8) == kAutoMinSplit);

  std::mt19937 rng(13);
  const std::vector<std::size_t> lens = {2600, 700, 40};
  Fixture f(true, paged(CacheType(), 16, 240), rng, lens);
  const std::size_t HD = kKv * kGroup * kDim;
  const auto q = random_q(3, rng);
  // The workspace is sized by the limits: for the automatic cut, by its shortest task.
  auto run = [&](ParallelFor pf, std::size_t split) { return decode_last(f, q, pf, split, 2600, 3); };
  const auto one_pass = run(ParallelFor(), 4096);
  for (std::size_t threads = 1; threads <= 8; ++threads) {
    ThreadPool pool(threads);
    const std::size_t cut = attention_split(0, 2600 + 700 + 40, threads);
    INFO(threads << " threads: " << cut << " positions per task");
    REQUIRE(cut == std::max<std::size_t>(kAutoMinSplit, (3340 + 2 * threads - 1) / (2 * threads) + 63) / 64 * 64);
    const auto automatic = run(pool.parallel_for(), 0);
    REQUIRE(automatic == run(pool.parallel_for(), cut));  // the same cut, the same bits
    double worst = 0;
    for (std::size_t i = 0; i < automatic.size(); ++i)
      worst = std::max(worst, double(std::fabs(automatic[i] - one_pass[i])));
    INFO("max |automatic split - one pass| = " << worst);
    REQUIRE(worst <= 1e-5);
  }
  for (std::size_t i = 0; i < 3; ++i)
    check_rows(f, i, 1, lens[i] - 1, 1, std::vector<float>(q.begin() + i * HD, q.begin() + (i + 1) * HD),
               std::vector<float>(one_pass.begin() + i * HD, one_pass.begin() + (i + 1) * HD), "one pass");
}

TEST_CASE("KvStore rejects what does not fit, and loses nothing", "[store]") {
  std::mt19937 rng(5);
  Fixture f(true, paged(CacheType(), 8, 6), rng, {4 + 8 * 5});  // 5 of 6 blocks used
  std::vector<float> k(2 * 3 * kDim);
  auto view = [&](std::size_t heads, std::size_t dim) {
    return erase(make_view(k.data(), k.size(), Extents3{1, heads, dim}, Layout::token_major));
  };
  const SequenceId s = f.ids[0];
  const std::size_t pos = f.store.extend(s, 1);
  REQUIRE_THROWS_WITH(f.store.append(s, 0, pos, view(3, kDim), view(kKv, kDim)),
                      Catch::Contains("3 heads of dim 64") && Catch::Contains("4 KV heads of dim 64"));
  REQUIRE_THROWS_WITH(f.store.append(s, 0, pos, view(kKv, kDim), view(1, 2 * kDim)),
                      Catch::Contains("V view has 1 heads of dim 128"));
  REQUIRE_THROWS_WITH(f.store.append(s, 0, pos + 1, view(kKv, kDim), view(kKv, kDim)), Catch::Contains("call extend"));
  REQUIRE_THROWS_WITH(f.store.append(s, 2, pos, view(kKv, kDim), view(kKv, kDim)), Catch::Contains("layer 2 of 2"));
  // Pool exhausted: nothing changes.
  REQUIRE(f.store.free_blocks() == 0);
  REQUIRE_THROWS_WITH(f.store.extend(s, 8), Catch::Contains("1 more blocks") && Catch::Contains("0 of 6 are free"));
  REQUIRE(f.store.length(s) == pos + 1);
  const SequenceId t = f.store.add_sequence();
  REQUIRE(f.store.extend(t, 4) == 0);  // sinks need no block
  REQUIRE_THROWS(f.store.extend(t, 1));
  f.store.truncate(s, 4 + 8 * 2);
  REQUIRE(f.store.free_blocks() == 4);
  REQUIRE(f.store.extend(t, 8 * 4) == 4);
  f.store.remove_sequence(t);
  REQUIRE(f.store.free_blocks() == 4);
  REQUIRE_THROWS_WITH(f.store.length(t), Catch::Contains("not alive"));
  // Limits of a workspace and of a request are checked.
  AttentionLimits lim;
  lim.max_tokens = 8;
  AttentionWorkspace ws(f.store, lim);
  AttentionLimits huge = lim;
  huge.max_rows = huge.max_requests = std::size_t(1) << 40;
  REQUIRE_THROWS_WITH(AttentionWorkspace(f.store, huge), Catch::Contains("got max_rows 1099511627776"));
  huge = lim;
  huge.max_tokens = std::size_t(1) << 40;
  REQUIRE_THROWS_WITH(AttentionWorkspace(f.store, huge), Catch::Contains("max_tokens 1099511627776"));
  std::vector<float> q(kKv * kGroup * kDim), out(q.size());
  REQUIRE_THROWS_WITH(attend(f.store, 0, {{s, 19, 1, q.data(), out.data()}}, ws), Catch::Contains("workspace serves 8"));
  REQUIRE_THROWS_WITH(attend(f.store, 0, {{s, 40, 1, q.data(), out.data()}}, ws), Catch::Contains("which holds 20"));
  KvStoreOptions bad = paged(CacheType(), 8, 6);
  bad.n_q_heads = 6;
  REQUIRE_THROWS_WITH(KvStore(f.layout, bad, f.pool.data(), f.pool.size()), Catch::Contains("n_q_heads 6"));
  REQUIRE_THROWS_WITH(KvStore(f.layout, f.opt, f.pool.data(), 10), Catch::Contains("pool of 10 bytes"));
}

TEST_CASE("KvPool is zero-filled, aligned and movable; a size it cannot map is an Error", "[store][pool]") {
  for (const bool huge : {true, false}) {
    KvPoolOptions o;
    o.huge_pages = huge;
    const std::size_t n = 3 * KvPool::kAlign + 12345;
    KvPool p(n, o);
    REQUIRE(p.size() == n);
    REQUIRE(reinterpret_cast<std::uintptr_t>(p.data()) % KvPool::kAlign == 0);
    REQUIRE(std::all_of(p.data(), p.data() + n, [](std::byte b) { return b == std::byte{0}; }));
    if (!huge) REQUIRE_FALSE(p.huge_pages());
    std::memset(p.data(), 0x5a, n);  // writable to its last byte
    std::byte* at = p.data();
    KvPool q(std::move(p));
    REQUIRE(q.data() == at);
    REQUIRE(p.data() == nullptr);
    REQUIRE(p.size() == 0);
    p = std::move(q);
    REQUIRE(p.data() == at);
    REQUIRE(p.data()[n - 1] == std::byte{0x5a});
  }
  const KvPool empty(0);
  REQUIRE(empty.data() == nullptr);
  REQUIRE(empty.size() == 0);
  REQUIRE_THROWS_WITH(KvPool(std::numeric_limits<std::size_t>::max()),
                      Catch::Contains("KvPool") && Catch::Contains("not an allocatable size"));
  REQUIRE_THROWS_WITH(KvPool(std::size_t(1) << 60), Catch::Contains("KvPool: cannot map 1152921504606846976 bytes"));
}
