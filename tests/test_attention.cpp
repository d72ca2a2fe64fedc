// Decode attention over a reference-only cache vs a HWY_NOINLINE scalar
// reconstruct-then-attend reference (double), on every compiled Highway target,
// dtypes f32/f16/bf16, layouts token-major/head-major/paged, GQA 1/4/8,
// head_dim 64/80/128, sink tokens 0 and 4, token counts off the block size.
// Also: absorbed attention equals the library's own reconstruct-then-attend.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "headrecon/cpu/attention_args.hpp"
#include "headrecon/cpu/reconstruct_args.hpp"
#include "kernel_test_util.hpp"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "test_attention.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "headrecon/cpu/attention-inl.h"
#include "headrecon/cpu/reconstruct-inl.h"

HWY_BEFORE_NAMESPACE();
namespace headrecon {
namespace HWY_NAMESPACE {
inline void CallAttention(const DecodeAttentionArgs& a) { DecodeAttention(a); }
inline void CallRunAttention(const AttentionRunArgs& a, const ParallelFor& pf) { RunAttention(a, pf); }
inline void CallReconstruct2(const ReconstructArgs& a) { Reconstruct(a); }
}  // namespace HWY_NAMESPACE
}  // namespace headrecon
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace headrecon {
HWY_EXPORT(CallAttention);
HWY_EXPORT(CallRunAttention);
HWY_EXPORT(CallReconstruct2);

namespace {
using namespace testing;

// A plan over n_kv heads: K rebuilds head 1 (refs 0, 2) and, with 4 heads, head 3
// from 0 (cross-layer from layer 0 when layer 1 is used) ; V rebuilds head 2 (refs 0, 1).
Plan make_plan(std::size_t n_kv, std::size_t d, std::int32_t sinks, std::mt19937& rng) {
  Plan plan;
  plan.head_dim = std::int32_t(d);
  plan.n_layers = 2;
  plan.post_rope = true;
  plan.sink_tokens = sinks;
  std::normal_distribution<float> g;
  auto target = [&](std::int32_t layer, std::int32_t head, std::vector<HeadId> refs) {
    TargetMap t;
    t.target = {layer, head};
    t.refs = refs;
    t.weight.resize(refs.size() * d * d);
    for (auto& w : t.weight) w = g(rng) / std::sqrt(float(refs.size() * d));
    t.bias.resize(d);
    for (auto& b : t.bias) b = 0.5f * g(rng);
    return t;
  };
  KindPlan k{Kind::k, std::int32_t(n_kv), {{}, {}}, {}}, v{Kind::v, std::int32_t(n_kv), {{}, {}}, {}};
  if (n_kv >= 3) {
    k.layers[1].push_back(target(1, 1, {{1, 0}, {1, 2}}));
    v.layers[1].push_back(target(1, 2, {{1, 0}, {1, 1}}));
  }
  if (n_kv >= 4) k.layers[1].push_back(target(1, 3, {{0, 3}, {1, 0}}));  // cross-layer reference
  if (n_kv == 2) k.layers[1].push_back(target(1, 1, {{1, 0}}));
  plan.kinds = {k, v};
  plan.validate();
  return plan;
}

struct Case {
  std::size_t n_kv, group, d, sinks, body;
  DType dtype;
  CacheLayout layout;
};

void run_case(const Case& c, std::mt19937& rng) {
  const std::size_t d = c.d, Hq = c.n_kv * c.group, S = c.sinks, T = c.body;
  const Plan plan = make_plan(c.n_kv, d, std::int32_t(S), rng);
  const RefCacheLayout layout(plan, std::int32_t(c.n_kv));
  const std::int32_t layer = 1;
  const AttentionLayerPlan ap = make_attention_plan(layout, layer, Hq);
  // Caches: sinks hold every head of layer 1; the body holds, per stream,
  // one head (cached heads of layer 1 and the cross-layer reference).
  TestCache sink_k(c.dtype, c.layout, S ? S : 1, c.n_kv, d, rng), sink_v(c.dtype, c.layout, S ? S : 1, c.n_kv, d, rng);
  const auto& ks = layout.streams(Kind::k, layer);
  const auto& vs = layout.streams(Kind::v, layer);
  TestCache body_k(c.dtype, c.layout, T ? T : 1, ks.size(), d, rng), body_v(c.dtype, c.layout, T ? T : 1, vs.size(), d, rng);
  std::vector<HeadStream> sk, sv, bk, bv;
  for (std::size_t g = 0; g < c.n_kv; ++g) sk.push_back(sink_k.stream(g)), sv.push_back(sink_v.stream(g));
  for (std::size_t s = 0; s < ks.size(); ++s) bk.push_back(body_k.stream(s));
  for (std::size_t s = 0; s < vs.size(); ++s) bv.push_back(body_v.stream(s));
  std::normal_distribution<float> g;
  std::vector<float> q(Hq * d);
  for (auto& x : q) x = g(rng);
  const float scale = 1.f / std::sqrt(float(d));

  // Reference: rebuild every head of every body token in double, then attend.
  auto value = [&](Kind kind, std::size_t t, std::size_t head, std::vector<double>& out, double& mag) {
    const KindPlan* kp = plan.find(kind);
    const TargetMap* tm = kp->find({layer, std::int32_t(head)});
    const auto& streams = kind == Kind::k ? ks : vs;
    const TestCache& cache = kind == Kind::k ? body_k : body_v;
    auto stream_of_head = [&](HeadId h) {
      for (std::size_t s = 0; s < streams.size(); ++s)
        if (streams[s] == h) return s;
      return std::size_t(0);
    };
    mag = 0;
    for (std::size_t j = 0; j < d; ++j) {
      if (!tm) {
        out[j] = cache.value(t, stream_of_head({layer, std::int32_t(head)}), j);
        mag = std::max(mag, std::fabs(out[j]));
        continue;
      }
      double y = tm->bias[j], m = std::fabs(tm->bias[j]);
      for (std::size_t r = 0; r < tm->refs.size(); ++r)
        for (std::size_t i = 0; i < d; ++i) {
          const double term = double(cache.value(t, stream_of_head(tm->refs[r]), i)) * tm->weight[(r * d + i) * d + j];
          y += term;
          m += std::fabs(term);
        }
      out[j] = y;
      mag = std::max(mag, m);
    }
  };
  // Block-type caches: the kernel's integer scores use the query quantized per
  // block of 32 (raw query for cached heads and sinks, W_r q for rebuilt keys).
  auto score_quant_bound = [&](std::size_t h, std::size_t t) {
    if (!is_block_type(c.dtype)) return 0.0;
    const std::size_t head = h / c.group;
    std::vector<double> u(d);
    for (std::size_t i = 0; i < d; ++i) u[i] = scale * q[h * d + i];
    if (t < S) return quantized_query_bound(u, [&](std::size_t i) { return sink_k.value(t, head, i); });
    auto stream_of_head = [&](HeadId id) {
      for (std::size_t st = 0; st < ks.size(); ++st)
        if (ks[st] == id) return st;
      return std::size_t(0);
    };
    const TargetMap* tm = plan.find(Kind::k)->find({layer, std::int32_t(head)});
    if (!tm)
      return quantized_query_bound(u, [&](std::size_t i) { return body_k.value(t - S, stream_of_head({layer, std::int32_t(head)}), i); });
    double b = 0;
    for (std::size_t r = 0; r < tm->refs.size(); ++r) {
      std::vector<double> w(d, 0.0);
      for (std::size_t i = 0; i < d; ++i)
        for (std::size_t j = 0; j < d; ++j) w[i] += double(tm->weight[(r * d + i) * d + j]) * u[j];
      b += quantized_query_bound(w, [&](std::size_t i) { return body_k.value(t - S, stream_of_head(tm->refs[r]), i); });
    }
    return b;
  };
  std::vector<double> ref(Hq * d), tol(Hq * d);
  std::vector<double> kv(d), vv(d);
  for (std::size_t h = 0; h < Hq; ++h) {
    const std::size_t head = h / c.group;
    std::vector<double> s(S + T);
    double smag = 0, vmax = 0, ds = 0;
    for (std::size_t t = 0; t < S + T; ++t) ds = std::max(ds, score_quant_bound(h, t));
    for (std::size_t t = 0; t < S + T; ++t) {
      double mag = 0, dot = 0, dmag = 0;
      for (std::size_t i = 0; i < d; ++i) {
        const double kval = t < S ? double(sink_k.value(t, head, i)) : 0.0;
        kv[i] = kval;
      }
      if (t >= S) value(Kind::k, t - S, head, kv, mag);
      for (std::size_t i = 0; i < d; ++i) dot += q[h * d + i] * kv[i], dmag += std::fabs(q[h * d + i] * kv[i]);
      s[t] = scale * dot;
      smag = std::max(smag, scale * std::max(dmag, mag * 4.0));
    }
    const double mx = *std::max_element(s.begin(), s.end());
    double l = 0;
    for (auto& x : s) l += (x = std::exp(x - mx));
    std::vector<double> o(d, 0.0);
    for (std::size_t t = 0; t < S + T; ++t) {
      double mag = 0;
      if (t < S) {
        for (std::size_t i = 0; i < d; ++i) vv[i] = sink_v.value(t, head, i);
        for (double x : vv) mag = std::max(mag, std::fabs(x));
      } else {
        value(Kind::v, t - S, head, vv, mag);
      }
      vmax = std::max(vmax, mag);
      for (std::size_t i = 0; i < d; ++i) o[i] += s[t] / l * vv[i];
    }
    for (std::size_t i = 0; i < d; ++i) {
      ref[h * d + i] = o[i];
      // f32 arithmetic: score error ~ eps·(2d)·|score terms|, value error ~ eps·(2d)·|value terms|.
      // Quantized queries: a score error δ moves the output by at most 2·δ·max|v|.
      tol[h * d + i] = 16.0 * 0x1p-24 * double(2 * d) * (1.0 + smag) * vmax + 1e-6 + 2.0 * ds * vmax;
    }
  }

  std::vector<float> out(Hq * d), work(decode_attention_workspace_floats(ap));
  for (const std::int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    DecodeAttentionArgs a{&ap, q.data(), scale, S, sk.data(), sv.data(), T, bk.data(), bv.data(), out.data(), work.data(), work.size()};
    HWY_DYNAMIC_DISPATCH(CallAttention)(a);
    Worst worst;
    for (std::size_t i = 0; i < Hq * d; ++i)
      worst.add(out[i], ref[i], tol[i], "head " + std::to_string(i / d) + " dim " + std::to_string(i % d));
    INFO(hwy::TargetName(target) << " " << dtype_name(c.dtype) << " " << layout_name(c.layout) << " kv=" << c.n_kv
                                 << " group=" << c.group << " d=" << d << " sinks=" << S << " body=" << T << ": "
                                 << worst.report());
    REQUIRE(worst.ratio <= 1.0);
  }
  hwy::SetSupportedTargetsForTest(0);
}
}  // namespace

TEST_CASE("absorbed decode attention equals reconstruct-then-attend (scalar reference)", "[kernel][attention]") {
  std::mt19937 rng(5);
  for (DType dt : {DType::f32, DType::f16, DType::bf16, DType::q8_0, DType::q4_0})
    for (CacheLayout l : {CacheLayout::token_major, CacheLayout::head_major, CacheLayout::paged})
      run_case({4, 4, 64, 4, 45, dt, l}, rng);
  for (DType dt : {DType::q8_0, DType::q4_0}) run_case({4, 4, 128, 4, 70, dt, CacheLayout::paged}, rng);
  for (std::size_t group : {1u, 4u, 8u})
    for (std::size_t d : {64u, 80u, 128u})
      for (std::size_t sinks : {0u, 4u}) run_case({4, group, d, sinks, 70, DType::bf16, CacheLayout::paged}, rng);
  // Rows 4 or 2 KiB apart (8 heads x 128, f32 or bf16, token-major) alias in L1: the
  // reference streams, read by several tiles, are packed into scratch first;
  // the rows above (1 KiB or less apart, or contiguous) are read in place.
  for (DType dt : {DType::f32, DType::bf16}) run_case({8, 4, 128, 4, 70, dt, CacheLayout::token_major}, rng);
  // GQA groups of 8: reference streams read by 16 and 24 query vectors, so
  // that where the CPU has AMX their f32 / f16 / q8_0 / q4_0 rows take the
  // tiles split into bf16 parts, over a whole and a partial block.
  for (DType dt : {DType::f32, DType::f16, DType::q8_0, DType::q4_0})
    for (std::size_t d : {64u, 128u}) run_case({4, 8, d, 4, 70, dt, CacheLayout::paged}, rng);
  run_case({3, 3, 64, 4, 1, DType::f32, CacheLayout::token_major}, rng);   // SmolLM2-like, one body token
  // SmolLM2-like reference streams (3 query heads + 3 absorbed: one 6-job
  // register tile on AVX-512) over a whole and a partial block, and with
  // head_dim 80 (a tail past the last full vector).
  for (DType dt : {DType::f32, DType::bf16, DType::f16}) run_case({3, 3, 64, 4, 70, dt, CacheLayout::paged}, rng);
  run_case({3, 3, 80, 0, 70, DType::f32, CacheLayout::token_major}, rng);
  run_case({2, 2, 64, 4, 0, DType::f16, CacheLayout::token_major}, rng);   // sinks only
  run_case({2, 1, 37, 0, 33, DType::f32, CacheLayout::head_major}, rng);   // head_dim not a lane multiple
}

TEST_CASE("absorbed attention equals the library's reconstruct-then-attend", "[kernel][attention]") {
  std::mt19937 rng(9);
  const std::size_t n_kv = 4, G = 4, d = 64, S = 4, T = 300, Hq = n_kv * G;
  const Plan plan = make_plan(n_kv, d, std::int32_t(S), rng);
  const RefCacheLayout layout(plan, std::int32_t(n_kv));
  const AttentionLayerPlan ap = make_attention_plan(layout, 1, Hq);
  const auto& ks = layout.streams(Kind::k, 1);
  const auto& vs = layout.streams(Kind::v, 1);
  TestCache bk(DType::f32, CacheLayout::token_major, T, ks.size(), d, rng), bvc(DType::f32, CacheLayout::token_major, T, vs.size(), d, rng);
  TestCache sk(DType::f32, CacheLayout::token_major, S, n_kv, d, rng), sv(DType::f32, CacheLayout::token_major, S, n_kv, d, rng);
  // Full caches: sinks then body, every head; rebuilt heads by the reconstruction kernel.
  std::vector<float> fk((S + T) * n_kv * d), fv((S + T) * n_kv * d);
  for (Kind kind : {Kind::k, Kind::v}) {
    auto& full = kind == Kind::k ? fk : fv;
    const TestCache& sink = kind == Kind::k ? sk : sv;
    const TestCache& body = kind == Kind::k ? bk : bvc;
    const auto& streams = kind == Kind::k ? ks : vs;
    for (std::size_t t = 0; t < S; ++t)
      for (std::size_t h = 0; h < n_kv; ++h)
        for (std::size_t i = 0; i < d; ++i) full[(t * n_kv + h) * d + i] = sink.value(t, h, i);
    std::vector<HeadStream> in;
    for (std::size_t s = 0; s < streams.size(); ++s) in.push_back(body.stream(s));
    for (std::size_t s = 0; s < streams.size(); ++s)
      if (streams[s].layer == 1)
        for (std::size_t t = 0; t < T; ++t)
          for (std::size_t i = 0; i < d; ++i) full[((S + t) * n_kv + std::size_t(streams[s].head)) * d + i] = body.value(t, s, i);
    std::vector<std::vector<std::uint32_t>> refs;
    std::vector<ReconTarget> targets;
    for (const TargetMap& tm : plan.find(kind)->layers[1]) {
      refs.emplace_back();
      for (HeadId r : tm.refs)
        for (std::size_t s = 0; s < streams.size(); ++s)
          if (streams[s] == r) refs.back().push_back(std::uint32_t(s));
    }
    std::size_t j = 0;
    for (const TargetMap& tm : plan.find(kind)->layers[1]) {
      HeadStream o{full.data(), DType::f32, std::ptrdiff_t((S * n_kv + std::size_t(tm.target.head)) * d), std::ptrdiff_t(n_kv * d), nullptr, 0, 0};
      targets.push_back({tm.weight.data(), tm.bias.data(), refs[j].data(), refs[j].size(), o});
      ++j;
    }
    std::vector<float> work(reconstruct_workspace_floats(in.size(), d));
    ReconstructArgs ra{d, 0, T, in.data(), in.size(), targets.data(), targets.size(), work.data(), work.size()};
    HWY_DYNAMIC_DISPATCH(CallReconstruct2)(ra);
  }
  std::vector<float> q(Hq * d);
  std::normal_distribution<float> g;
  for (auto& x : q) x = g(rng);
  const float scale = 0.125f;
  std::vector<HeadStream> skv, svv, bks, bvs, fks, fvs;
  for (std::size_t h = 0; h < n_kv; ++h) skv.push_back(sk.stream(h)), svv.push_back(sv.stream(h));
  for (std::size_t s = 0; s < ks.size(); ++s) bks.push_back(bk.stream(s));
  for (std::size_t s = 0; s < vs.size(); ++s) bvs.push_back(bvc.stream(s));
  for (std::size_t h = 0; h < n_kv; ++h) {
    fks.push_back({fk.data(), DType::f32, std::ptrdiff_t(h * d), std::ptrdiff_t(n_kv * d), nullptr, 0, 0});
    fvs.push_back({fv.data(), DType::f32, std::ptrdiff_t(h * d), std::ptrdiff_t(n_kv * d), nullptr, 0, 0});
  }
  const AttentionLayerPlan full = full_attention_plan(Hq, n_kv, d);
  std::vector<float> o1(Hq * d), o2(Hq * d), w1(decode_attention_workspace_floats(ap)), w2(decode_attention_workspace_floats(full));
  DecodeAttentionArgs a1{&ap, q.data(), scale, S, skv.data(), svv.data(), T, bks.data(), bvs.data(), o1.data(), w1.data(), w1.size()};
  DecodeAttentionArgs a2{&full, q.data(), scale, 0, nullptr, nullptr, S + T, fks.data(), fvs.data(), o2.data(), w2.data(), w2.size()};
  HWY_DYNAMIC_DISPATCH(CallAttention)(a1);
  HWY_DYNAMIC_DISPATCH(CallAttention)(a2);
  double worst = 0, norm = 0;
  for (std::size_t i = 0; i < Hq * d; ++i) worst = std::max(worst, double(std::fabs(o1[i] - o2[i]))), norm = std::max(norm, double(std::fabs(o2[i])));
  INFO("max |absorbed - reconstruct-then-attend| = " << worst << ", max |out| = " << norm);
  REQUIRE(worst <= 2e-5 * (1.0 + norm));
}

TEST_CASE("causal rows split over tokens equal one decode step per row, on every target", "[kernel][attention]") {
  std::mt19937 rng(13);
  // Task boundaries sit on whole blocks of body tokens: with 100 sink tokens
  // a task holds the last sinks and the first body block, another sinks only.
  const std::size_t S = GENERATE(as<std::size_t>(), 4, 100);
  const std::size_t n_kv = 4, G = 2, d = 64, T = 150, Hq = n_kv * G, M = 37, pos0 = S + T - M;
  const Plan plan = make_plan(n_kv, d, std::int32_t(S), rng);
  const RefCacheLayout layout(plan, std::int32_t(n_kv));
  const AttentionLayerPlan ap = make_attention_plan(layout, 1, Hq);
  const auto& ks = layout.streams(Kind::k, 1);
  const auto& vs = layout.streams(Kind::v, 1);
  TestCache bk(DType::bf16, CacheLayout::paged, T, ks.size(), d, rng), bvc(DType::bf16, CacheLayout::paged, T, vs.size(), d, rng);
  TestCache sk(DType::bf16, CacheLayout::paged, S, n_kv, d, rng), sv(DType::bf16, CacheLayout::paged, S, n_kv, d, rng);
  std::vector<HeadStream> skv, svv, bks, bvs;
  for (std::size_t h = 0; h < n_kv; ++h) skv.push_back(sk.stream(h)), svv.push_back(sv.stream(h));
  for (std::size_t s = 0; s < ks.size(); ++s) bks.push_back(bk.stream(s));
  for (std::size_t s = 0; s < vs.size(); ++s) bvs.push_back(bvc.stream(s));
  std::normal_distribution<float> g;
  std::vector<float> q(M * Hq * d);
  for (auto& x : q) x = g(rng);
  std::vector<std::size_t> len(M);
  for (std::size_t r = 0; r < M; ++r) len[r] = pos0 + r + 1;
  AttentionRows rows;
  rows.cache = {S, skv.data(), svv.data(), bks.data(), bvs.data()};
  rows.n_rows = M;
  rows.row_len = len.data();
  rows.q = q.data();
  std::vector<float> out(M * Hq * d), one(Hq * d), work1(decode_attention_workspace_floats(ap));
  for (const std::int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    rows.out = out.data();
    AttentionRunArgs a;
    a.plan = &ap;
    a.scale = 0.125f;
    a.groups = &rows;
    a.n_groups = 1;
    a.split_tokens = 40;  // 3 or 4 tasks of 64 positions, the last partial
    std::vector<float> work(attention_workspace_floats(a, 1));
    a.workspace = work.data();
    a.workspace_floats = work.size();
    HWY_DYNAMIC_DISPATCH(CallRunAttention)(a, ParallelFor());
    double worst = 0, norm = 0;
    for (std::size_t r = 0; r < M; ++r) {
      DecodeAttentionArgs d1;
      d1.plan = &ap;
      d1.q = q.data() + r * Hq * d;
      d1.scale = 0.125f;
      d1.n_sink = S;
      d1.sink_k = skv.data();
      d1.sink_v = svv.data();
      d1.n_body = len[r] - S;
      d1.k_streams = bks.data();
      d1.v_streams = bvs.data();
      d1.out = one.data();
      d1.workspace = work1.data();
      d1.workspace_floats = work1.size();
      HWY_DYNAMIC_DISPATCH(CallAttention)(d1);
      for (std::size_t i = 0; i < Hq * d; ++i)
        worst = std::max(worst, double(std::fabs(out[r * Hq * d + i] - one[i]))), norm = std::max(norm, double(std::fabs(one[i])));
    }
    INFO(hwy::TargetName(target) << ", " << S << " sinks: max |rows - per-row decode| = " << worst << ", max |out| = " << norm);
    REQUIRE(worst <= 2e-6 * (1.0 + norm));
  }
  hwy::SetSupportedTargetsForTest(0);
}

TEST_CASE("attention arguments are checked", "[kernel][attention]") {
  std::mt19937 rng(1);
  Plan pre = make_plan(4, 64, 0, rng);
  pre.post_rope = false;
  const RefCacheLayout layout(pre, 4);
  REQUIRE_THROWS_WITH(make_attention_plan(layout, 1, 16), Catch::Contains("before RoPE"));
  Plan post = make_plan(4, 64, 0, rng);
  const RefCacheLayout l2(post, 4);
  REQUIRE_THROWS_WITH(make_attention_plan(l2, 1, 10), Catch::Contains("not a multiple"));
  REQUIRE_THROWS_WITH(RefCacheLayout(post, 3), Catch::Contains("4 heads per layer"));
  const AttentionLayerPlan ap = full_attention_plan(4, 2, 64);
  std::vector<float> q(4 * 64), out(4 * 64), work(10);
  DecodeAttentionArgs a{&ap, q.data(), 0.125f, 0, nullptr, nullptr, 0, nullptr, nullptr, out.data(), work.data(), work.size()};
  REQUIRE_THROWS_WITH(HWY_DYNAMIC_DISPATCH(CallAttention)(a), Catch::Contains("no tokens"));
  a.n_body = 5;
  std::vector<float> kv(5 * 2 * 64);
  std::vector<HeadStream> st = {{kv.data(), DType::f32, 0, 128, nullptr, 0, 0}, {kv.data(), DType::f32, 64, 128, nullptr, 0, 0}};
  a.k_streams = a.v_streams = st.data();
  REQUIRE_THROWS_WITH(HWY_DYNAMIC_DISPATCH(CallAttention)(a), Catch::Contains("workspace"));
}
}  // namespace headrecon
#endif  // HWY_ONCE
