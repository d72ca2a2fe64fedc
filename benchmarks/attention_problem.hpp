#pragma once
// One decode-attention benchmark problem: a layer of a model shape at a
// context length, with a full cache and a reference-only cache of the same
// tokens, and the four ways to attend that the benchmarks compare.
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "headrecon/cpu/attention.hpp"
#include "headrecon/cpu/reconstruct.hpp"

namespace headrecon::bench {

struct ModelShape {
  std::string name;
  std::size_t n_q, n_kv, d, rebuilt;  // rebuilt: KV heads per layer rebuilt (K and V)
  std::size_t refs = 0;               // references per rebuilt head (0: all cached heads)
};
inline const ModelShape kLlama3_8B{"llama3-8b", 32, 8, 128, 4};
inline const ModelShape kLlama3_8B_2refs{"llama3-8b/2ref", 32, 8, 128, 4, 2};
inline const ModelShape kSmolLM2{"smollm2-135m", 9, 3, 64, 1};

struct AttentionProblem {
  ModelShape shape;
  std::size_t tokens, sinks = 4;
  DType dtype;
  Plan plan;
  std::vector<std::uint16_t> full16, ref16;  // full cache [T][2][n_kv][d]; reference cache [T-S][2][n_cached][d]
  std::vector<float> full32, ref32;
  std::vector<float> q, out, work_full, work_abs, work_refs, recon_cache, recon_work;
  std::vector<HeadStream> full_k, full_v, sink_k, sink_v, body_k, body_v, recon_k, recon_v;
  AttentionLayerPlan full_plan, abs_plan, refs_plan;
  std::vector<std::vector<std::uint32_t>> recon_refs;
  std::vector<ReconTarget> recon_targets;

  bool head_major = false;
  AttentionProblem(const ModelShape& s, std::size_t T, DType dt, bool head_major_ = false)
      : shape(s), tokens(T), dtype(dt), head_major(head_major_) {
    std::mt19937 rng(11);
    std::normal_distribution<float> g;
    const std::size_t d = s.d, kv = s.n_kv, cached = kv - s.rebuilt;
    // Plan: layer 0, heads cached..kv-1 rebuilt from all cached heads (K and V).
    plan.head_dim = std::int32_t(d);
    plan.n_layers = 1;
    plan.sink_tokens = std::int32_t(sinks);
    for (Kind k : {Kind::k, Kind::v}) {
      KindPlan kp{k, std::int32_t(kv), {{}}};
      for (std::size_t h = cached; h < kv; ++h) {
        TargetMap t;
        t.target = {0, std::int32_t(h)};
        const std::size_t k = s.refs ? s.refs : cached;
        for (std::size_t r = 0; r < k; ++r) t.refs.push_back({0, std::int32_t((h + r) % cached)});
        t.weight.resize(k * d * d);
        for (auto& w : t.weight) w = g(rng) / std::sqrt(float(k * d));
        t.bias.assign(d, 0.1f);
        kp.layers[0].push_back(std::move(t));
      }
      plan.kinds.push_back(std::move(kp));
    }
    const RefCacheLayout layout(plan, std::int32_t(kv));
    abs_plan = make_attention_plan(layout, 0, s.n_q);
    full_plan = full_attention_plan(s.n_q, kv, d);
    refs_plan = full_attention_plan(cached * (s.n_q / kv), cached, d);
    // Caches, token-major: full [T][kv][d] for K then V; reference [T-S][cached][d].
    const std::size_t body = T - sinks, es = dtype_size(dt);
    auto fill = [&](std::size_t n, std::vector<float>& f32, std::vector<std::uint16_t>& h16) {
      if (dt == DType::f32) { f32.resize(n); for (auto& x : f32) x = g(rng); }
      else { h16.resize(n); for (auto& x : h16) x = dt == DType::f16 ? to_f16(g(rng)).bits : to_bf16(g(rng)).bits; }
    };
    fill(2 * T * kv * d, full32, full16);
    fill(2 * body * cached * d, ref32, ref16);
    const void* fb = dt == DType::f32 ? static_cast<const void*>(full32.data()) : full16.data();
    const void* rb = dt == DType::f32 ? static_cast<const void*>(ref32.data()) : ref16.data();
    (void)es;
    // Token-major [T][heads][d] by default; head-major [heads][T][d] keeps each stream contiguous.
    auto off = [&](std::size_t h, std::size_t n) {  // n: tokens of that cache
      return head_major ? std::ptrdiff_t(h * n * d) : std::ptrdiff_t(h * d);
    };
    auto stride = [&](std::size_t heads) { return head_major ? std::ptrdiff_t(d) : std::ptrdiff_t(heads * d); };
    for (std::size_t h = 0; h < kv; ++h) {
      full_k.push_back({fb, dt, off(h, T), stride(kv), nullptr, 0, 0});
      full_v.push_back({fb, dt, std::ptrdiff_t(T * kv * d) + off(h, T), stride(kv), nullptr, 0, 0});
    }
    sink_k = full_k;  // sinks: the first S tokens of the full cache
    sink_v = full_v;
    for (std::size_t h = 0; h < cached; ++h) {
      body_k.push_back({rb, dt, off(h, body), stride(cached), nullptr, 0, 0});
      body_v.push_back({rb, dt, std::ptrdiff_t(body * cached * d) + off(h, body), stride(cached), nullptr, 0, 0});
    }
    q.resize(s.n_q * d);
    for (auto& x : q) x = g(rng);
    out.resize(s.n_q * d);
    work_full.resize(decode_attention_workspace_floats(full_plan));
    work_abs.resize(decode_attention_workspace_floats(abs_plan));
    work_refs.resize(decode_attention_workspace_floats(refs_plan));
    // Reconstruct-then-attend: an f32 full-size cache the targets are rebuilt into.
    recon_cache.resize(2 * body * kv * d);
    for (std::size_t h = 0; h < kv; ++h) {
      recon_k.push_back({recon_cache.data(), DType::f32, std::ptrdiff_t(h * d), std::ptrdiff_t(kv * d), nullptr, 0, 0});
      recon_v.push_back({recon_cache.data(), DType::f32, std::ptrdiff_t(body * kv * d + h * d), std::ptrdiff_t(kv * d), nullptr, 0, 0});
    }
    for (const KindPlan& kp : plan.kinds)
      for (const TargetMap& t : kp.layers[0]) {
        recon_refs.emplace_back();
        for (HeadId r : t.refs) recon_refs.back().push_back(std::uint32_t(r.head));  // stream = slot = head
        const auto& dst = kp.kind == Kind::k ? recon_k : recon_v;
        recon_targets.push_back({t.weight.data(), t.bias.data(), nullptr, 0, dst[std::size_t(t.target.head)]});
      }
    for (std::size_t j = 0; j < recon_targets.size(); ++j) {
      recon_targets[j].refs = recon_refs[j].data();
      recon_targets[j].n_refs = recon_refs[j].size();
    }
    recon_work.resize(reconstruct_workspace_floats(cached, d));
  }
  float scale() const { return 1.f / std::sqrt(float(shape.d)); }
  std::size_t cached() const { return shape.n_kv - shape.rebuilt; }

  void full() {
    DecodeAttentionArgs a{&full_plan, q.data(), scale(), 0, nullptr, nullptr, tokens, full_k.data(), full_v.data(),
                          out.data(), work_full.data(), work_full.size()};
    decode_attention(a);
  }
  void absorbed() {
    DecodeAttentionArgs a{&abs_plan, q.data(), scale(), sinks, sink_k.data(), sink_v.data(), tokens - sinks,
                          body_k.data(), body_v.data(), out.data(), work_abs.data(), work_abs.size()};
    decode_attention(a);
  }
  void refs_only() {  // the cached heads attended by their own query heads alone
    DecodeAttentionArgs a{&refs_plan, q.data(), scale(), 0, nullptr, nullptr, tokens - sinks, body_k.data(),
                          body_v.data(), out.data(), work_refs.data(), work_refs.size()};
    decode_attention(a);
  }
  void reconstruct_then_attend() {
    const std::size_t body = tokens - sinks, half = recon_targets.size() / 2;
    // K targets read the K reference streams, V targets the V ones.
    ReconstructArgs rk{shape.d, 0, body, body_k.data(), body_k.size(), recon_targets.data(), half, recon_work.data(), recon_work.size()};
    ReconstructArgs rv{shape.d, 0, body, body_v.data(), body_v.size(), recon_targets.data() + half, half, recon_work.data(), recon_work.size()};
    reconstruct(rk);
    reconstruct(rv);
    DecodeAttentionArgs a{&full_plan, q.data(), scale(), 0, nullptr, nullptr, body, recon_k.data(), recon_v.data(),
                          out.data(), work_full.data(), work_full.size()};
    decode_attention(a);
  }
  double full_bytes() const { return 2.0 * double(tokens) * double(shape.n_kv * shape.d * dtype_size(dtype)); }
  double ref_bytes() const {
    return 2.0 * double(sinks) * double(shape.n_kv * shape.d * dtype_size(dtype)) +
           2.0 * double(tokens - sinks) * double(cached() * shape.d * dtype_size(dtype));
  }
};

}  // namespace headrecon::bench
