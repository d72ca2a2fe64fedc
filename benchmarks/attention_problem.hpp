#pragma once
// One decode-attention benchmark problem: layers of a model shape at a
// context length, in KvStores of one cache type (paged, 16-token blocks) as
// an engine holds them, and the ways to attend that the benchmarks compare.
// Each call attends the next layer, round robin, over enough layers that the
// full cache spans at least `footprint` bytes (default 1 GiB, beyond this
// machine's 300 MiB L3): as in a real decode step, the KV cache comes from
// DRAM, not from a cache warmed by the previous call. The ways to attend:
// - full: every KV head cached, same kernel;
// - absorbed: the reference-only cache (keys absorbed, values mapped);
// - refs-only: the cached heads attended by their own query heads alone,
//   i.e. the reference cache's bytes with none of the extra work;
// - reconstruct-then-attend (rta): rebuild the targets into an f32 cache, attend.
// Each runs on a ParallelFor (split over tokens).
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bench_kernels.hpp"
#include "headrecon/kv_pool.hpp"
#include "headrecon/kv_store.hpp"

namespace headrecon::bench {

struct ModelShape {
  std::string name;
  std::size_t n_q, n_kv, d, rebuilt;  // rebuilt: KV heads per layer rebuilt (K and V)
  std::size_t refs = 0;               // references per rebuilt head (0: all cached heads)
};
inline const ModelShape kLlama3_8B{"llama3-8b", 32, 8, 128, 4};
inline const ModelShape kLlama3_8B_2refs{"llama3-8b/2ref", 32, 8, 128, 4, 2};
inline const ModelShape kSmolLM2{"smollm2-135m", 9, 3, 64, 1};

/// One sequence of `tokens` positions in a store of the plan's layers (every
/// layer holds the same K/V); attend() visits the layers round robin.
struct StoredSequence {
  Plan plan;
  std::unique_ptr<RefCacheLayout> layout;
  KvPool pool;  // 2 MiB pages where the OS has them, as an engine would allocate it
  std::unique_ptr<KvStore> store;
  std::unique_ptr<AttentionWorkspace> ws;
  SequenceId seq;
  std::size_t next_layer = 0;

  StoredSequence(Plan p, std::size_t n_kv, std::size_t n_q, std::size_t tokens, CacheType ct, std::size_t workers,
                 const std::vector<float>& k, const std::vector<float>& v)  // [tokens][n_kv][d]
      : plan(std::move(p)) {
    layout = std::make_unique<RefCacheLayout>(plan, std::int32_t(n_kv));
    KvStoreOptions o;
    o.n_q_heads = n_q;
    o.dtype = ct.dtype;
    o.rotate = ct.rotate;
    o.block_tokens = 16;
    o.n_blocks = tokens / 16 + 1;
    pool = KvPool(KvStore::pool_bytes(*layout, o));
    store = std::make_unique<KvStore>(*layout, o, pool.data(), pool.size());
    seq = store->add_sequence();
    const std::size_t d = std::size_t(plan.head_dim), chunk = 1024;
    for (std::size_t t0 = 0; t0 < tokens; t0 += chunk) {
      const std::size_t n = std::min(chunk, tokens - t0), e = n * n_kv * d;
      const std::size_t pos = store->extend(seq, n);
      for (std::int32_t l = 0; l < plan.n_layers; ++l)
        store->append(seq, std::size_t(l), pos,
                      erase(make_view(k.data() + t0 * n_kv * d, e, {n, n_kv, d}, Layout::token_major)),
                      erase(make_view(v.data() + t0 * n_kv * d, e, {n, n_kv, d}, Layout::token_major)));
    }
    AttentionLimits lim;
    lim.max_tokens = tokens;
    lim.workers = workers;
    ws = std::make_unique<AttentionWorkspace>(*store, lim);
  }
  std::size_t layer() {
    const std::size_t l = next_layer;
    next_layer = (next_layer + 1) % std::size_t(plan.n_layers);
    return l;
  }
  void attend(const float* q, float* out, const ParallelFor& pf, AttentionKernel kernel = nullptr) {
    headrecon::attend(*store, layer(), {{seq, store->length(seq) - 1, 1, q, out}}, *ws, pf, kernel);
  }
  /// Bytes one call (one layer) reads.
  double read_bytes() const {
    return double(store->read_bytes(store->length(seq))) / double(plan.n_layers);
  }
};

struct AttentionProblem {
  ModelShape shape;
  std::size_t tokens, sinks = 4;
  CacheType cache;
  BenchKernels kernels;  // the static target's unless a tool installs others
  std::unique_ptr<StoredSequence> full_seq, ref_seq, refs_only_seq;
  std::vector<float> q, out, recon_cache, recon_work;
  std::vector<HeadStream> recon_k, recon_v;
  std::vector<std::vector<std::uint32_t>> recon_refs;
  std::vector<ReconTarget> recon_targets;
  AttentionLayerPlan recon_full_plan;
  std::vector<float> recon_attn_work;

  std::size_t n_layers = 1;

  AttentionProblem(const ModelShape& s, std::size_t T, CacheType ct, std::size_t workers = 1,
                   std::size_t footprint = std::size_t(1) << 30)
      : shape(s), tokens(T), cache(ct) {
    std::mt19937 rng(11);
    std::normal_distribution<float> g;
    const std::size_t d = s.d, kv = s.n_kv, cached = kv - s.rebuilt, G = s.n_q / kv;
    const std::size_t layer_bytes = T * kv * 2 * dtype_row_bytes(ct.dtype, d);
    n_layers = std::min<std::size_t>(512, std::max<std::size_t>(1, (footprint + layer_bytes - 1) / layer_bytes));
    const std::int32_t L = std::int32_t(n_layers);
    // Plan: in every layer, heads cached..kv-1 rebuilt from all (or `refs`) cached heads, K and V (same maps).
    Plan plan = Plan::none(L, std::int32_t(d));
    plan.sink_tokens = std::int32_t(sinks);
    for (Kind k : {Kind::k, Kind::v}) {
      KindPlan kp{k, std::int32_t(kv), std::vector<std::vector<TargetMap>>(n_layers), {}};
      for (std::size_t h = cached; h < kv; ++h) {
        TargetMap t;
        t.target = {0, std::int32_t(h)};
        const std::size_t nr = s.refs ? s.refs : cached;
        for (std::size_t r = 0; r < nr; ++r) t.refs.push_back({0, std::int32_t((h + r) % cached)});
        t.weight.resize(nr * d * d);
        for (auto& w : t.weight) w = g(rng) / std::sqrt(float(nr * d));
        t.bias.assign(d, 0.1f);
        for (std::int32_t l = 0; l < L; ++l) {
          TargetMap tl = t;
          tl.target.layer = l;
          for (HeadId& r : tl.refs) r.layer = l;
          kp.layers[std::size_t(l)].push_back(std::move(tl));
        }
      }
      plan.kinds.push_back(std::move(kp));
    }
    std::vector<float> k(T * kv * d), v(T * kv * d), kc(T * cached * d), vc(T * cached * d);
    for (auto& x : k) x = g(rng);
    for (auto& x : v) x = g(rng);
    for (std::size_t t = 0; t < T; ++t)  // the cached heads alone, for refs-only
      for (std::size_t h = 0; h < cached; ++h)
        for (std::size_t i = 0; i < d; ++i)
          kc[(t * cached + h) * d + i] = k[(t * kv + h) * d + i], vc[(t * cached + h) * d + i] = v[(t * kv + h) * d + i];
    full_seq = std::make_unique<StoredSequence>(Plan::none(L, std::int32_t(d)), kv, s.n_q, T, ct, workers, k, v);
    ref_seq = std::make_unique<StoredSequence>(plan, kv, s.n_q, T, ct, workers, k, v);
    refs_only_seq = std::make_unique<StoredSequence>(Plan::none(L, std::int32_t(d)), cached, cached * G, T, ct, workers,
                                                     kc, vc);
    q.resize(s.n_q * d);
    for (auto& x : q) x = g(rng);
    out.resize(s.n_q * d);
    // Reconstruct-then-attend: an f32 full-size cache the targets are rebuilt into.
    const std::size_t body = T - sinks;
    recon_cache.resize(2 * body * kv * d);
    for (std::size_t h = 0; h < kv; ++h) {
      HeadStream hk, hv;
      hk.base = hv.base = recon_cache.data();
      hk.offset = std::ptrdiff_t(h * d);
      hv.offset = std::ptrdiff_t(body * kv * d + h * d);
      hk.token_stride = hv.token_stride = std::ptrdiff_t(kv * d);
      recon_k.push_back(hk);
      recon_v.push_back(hv);
    }
    const RefCacheLayout& lay = *ref_seq->layout;
    for (const KindPlan& kp : ref_seq->plan.kinds)
      for (const TargetMap& t : kp.layers[0]) {
        recon_refs.emplace_back();
        for (HeadId r : t.refs) recon_refs.back().push_back(lay.stream_index(kp.kind, 0, r));
        const auto& dst = kp.kind == Kind::k ? recon_k : recon_v;
        recon_targets.push_back({t.weight.data(), t.bias.data(), nullptr, 0, dst[std::size_t(t.target.head)]});
      }
    for (std::size_t j = 0; j < recon_targets.size(); ++j) {
      recon_targets[j].refs = recon_refs[j].data();
      recon_targets[j].n_refs = recon_refs[j].size();
    }
    recon_work.resize(reconstruct_workspace_floats(cached, d));
    recon_full_plan = full_attention_plan(s.n_q, kv, d);
    recon_attn_work.resize(decode_attention_workspace_floats(recon_full_plan));
  }
  float scale() const { return 1.f / std::sqrt(float(shape.d)); }
  std::size_t cached() const { return shape.n_kv - shape.rebuilt; }

  void full(const ParallelFor& pf) { full_seq->attend(q.data(), out.data(), pf, kernels.attention); }
  void absorbed(const ParallelFor& pf) { ref_seq->attend(q.data(), out.data(), pf, kernels.attention); }
  void refs_only(const ParallelFor& pf) { refs_only_seq->attend(q.data(), out.data(), pf, kernels.attention); }
  /// One thread: the reconstruction kernel over the store's reference streams
  /// (next layer), then attention.
  void reconstruct_then_attend() {
    const std::size_t body = tokens - sinks, half = recon_targets.size() / 2;
    const SequenceStreams st = ref_seq->store->streams(ref_seq->seq, ref_seq->layer());
    const std::size_t nk = ref_seq->store->attention_plan(0).n_k_streams;
    const std::size_t nv = ref_seq->store->attention_plan(0).n_v_streams;
    ReconstructArgs rk{shape.d, 0, body, st.k, nk, recon_targets.data(), half, recon_work.data(), recon_work.size()};
    ReconstructArgs rv{shape.d, 0, body, st.v, nv, recon_targets.data() + half, half, recon_work.data(), recon_work.size()};
    kernels.run_reconstruct(rk);
    kernels.run_reconstruct(rv);
    DecodeAttentionArgs a;
    a.plan = &recon_full_plan;
    a.q = q.data();
    a.scale = scale();
    a.n_body = body;
    a.k_streams = recon_k.data();
    a.v_streams = recon_v.data();
    a.out = out.data();
    a.workspace = recon_attn_work.data();
    a.workspace_floats = recon_attn_work.size();
    kernels.run_decode_attention(a);
  }
  double full_bytes() const { return full_seq->read_bytes(); }
  double ref_bytes() const { return ref_seq->read_bytes(); }
  /// Flops of one decode step: 2 per multiply-add of every score and value job.
  double flops(bool absorbed_cache) const {
    const AttentionLayerPlan& p = (absorbed_cache ? ref_seq : full_seq)->store->attention_plan(0);
    std::size_t jobs = 0;
    for (const auto& j : p.k_jobs) jobs += j.size();
    for (const auto& j : p.v_jobs) jobs += j.size();
    return 2.0 * double(jobs) * double(shape.d) * double(tokens);
  }
};

}  // namespace headrecon::bench
