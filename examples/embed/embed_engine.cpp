// Embedding headrecon in an engine, step by step (the README walks through
// this file): load a plan, lay out a reference-only KV cache, append tokens,
// and run decode attention over it. Exits non-zero if the result differs from
// attention over the full cache.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "headrecon/cpu/attention.hpp"
#include "headrecon/headrecon.hpp"

using namespace headrecon;

int main(int argc, char** argv) {
  // 0. A plan. An engine loads one fitted offline: `Plan plan = load_plan(path);`
  //    Here we fit one on synthetic activations so the example is self-contained.
  SyntheticSpec spec;
  spec.n_layers = 1;
  spec.n_heads = 4;  // KV heads; 2 are rebuilt from the other 2
  spec.q_per_kv = 2;
  spec.head_dim = 64;
  spec.noise = 0.0;
  const SyntheticModel model(spec);
  Plan plan;
  plan.head_dim = spec.head_dim;
  plan.n_layers = 1;
  plan.sink_tokens = 4;
  for (Kind kind : {Kind::k, Kind::v}) {
    HeadMoments stats(1, spec.n_heads, spec.head_dim, RefScope::same_layer);
    std::vector<float> buf(2048 * 4 * 64);
    model.generate(kind, 0, 0, 2048, buf.data());
    stats.add({erase(make_view<const float>(buf.data(), buf.size(), Extents3{2048, 4, 64}, Layout::token_major))}, 0,
              HoldoutSplit{});
    SelectionOptions opt;
    opt.max_refs = 2;
    plan.kinds.push_back(build_kind_plan(stats, SharedSelection{}.select(stats, opt), kind, FitOptions{}));
  }
  const std::string path = argc > 1 ? argv[1] : "embed_plan.safetensors";
  save_plan(plan, path);
  const Plan loaded = load_plan(path);  // what an engine does at startup

  // 1. The cache layout: which heads each layer stores, and its exact size.
  const std::int32_t n_kv = spec.n_heads, layer = 0;
  const std::size_t n_q = std::size_t(spec.n_heads * spec.q_per_kv), d = 64;
  const RefCacheLayout layout(loaded, n_kv);
  const auto& k_streams = layout.streams(Kind::k, layer);  // cached K heads (slot order), then cross-layer refs
  const auto& v_streams = layout.streams(Kind::v, layer);
  const std::size_t T = 1000, S = std::size_t(layout.sink_tokens());
  std::printf("cache for %zu tokens: %zu bytes reference-only vs %zu full (f32)\n", T, layout.bytes(T, DType::f32),
              T * layout.full_bytes_per_token(DType::f32));

  // 2. Allocate: sink tokens keep every head, later tokens only the cached ones
  //    (token-major [tokens][slots][d]; a paged pool works the same way).
  std::vector<float> sink_k(S * n_kv * d), sink_v(S * n_kv * d);
  std::vector<float> body_k((T - S) * k_streams.size() * d), body_v((T - S) * v_streams.size() * d);

  // 3. Append tokens: the engine computes K/V of every head as usual, stores all
  //    heads for sink tokens and only the cached heads afterwards.
  std::vector<float> full_k(T * n_kv * d), full_v(T * n_kv * d);  // only to check the result below
  std::vector<float> kt(std::size_t(n_kv) * d), vt(std::size_t(n_kv) * d);
  for (std::size_t t = 0; t < T; ++t) {
    model.generate(Kind::k, 0, 5000 + t, 1, kt.data());  // tokens the fit never saw
    model.generate(Kind::v, 0, 5000 + t, 1, vt.data());
    for (std::size_t i = 0; i < kt.size(); ++i) full_k[t * kt.size() + i] = kt[i], full_v[t * vt.size() + i] = vt[i];
    if (t < S) {
      for (std::size_t i = 0; i < kt.size(); ++i) sink_k[t * kt.size() + i] = kt[i], sink_v[t * vt.size() + i] = vt[i];
      continue;
    }
    for (std::size_t s = 0; s < k_streams.size(); ++s)
      for (std::size_t i = 0; i < d; ++i)
        body_k[((t - S) * k_streams.size() + s) * d + i] = kt[std::size_t(k_streams[s].head) * d + i];
    for (std::size_t s = 0; s < v_streams.size(); ++s)
      for (std::size_t i = 0; i < d; ++i)
        body_v[((t - S) * v_streams.size() + s) * d + i] = vt[std::size_t(v_streams[s].head) * d + i];
  }

  // 4. Decode: describe the cache with HeadStreams and call the kernel.
  const AttentionLayerPlan attn = make_attention_plan(layout, layer, n_q);
  std::vector<HeadStream> sk, sv, bk, bv;
  for (std::int32_t h = 0; h < n_kv; ++h) {
    sk.push_back({sink_k.data(), DType::f32, std::ptrdiff_t(h) * std::ptrdiff_t(d), std::ptrdiff_t(n_kv) * std::ptrdiff_t(d), nullptr, 0, 0});
    sv.push_back({sink_v.data(), DType::f32, std::ptrdiff_t(h) * std::ptrdiff_t(d), std::ptrdiff_t(n_kv) * std::ptrdiff_t(d), nullptr, 0, 0});
  }
  for (std::size_t s = 0; s < k_streams.size(); ++s)
    bk.push_back({body_k.data(), DType::f32, std::ptrdiff_t(s * d), std::ptrdiff_t(k_streams.size() * d), nullptr, 0, 0});
  for (std::size_t s = 0; s < v_streams.size(); ++s)
    bv.push_back({body_v.data(), DType::f32, std::ptrdiff_t(s * d), std::ptrdiff_t(v_streams.size() * d), nullptr, 0, 0});
  std::vector<float> q(n_q * d), out(n_q * d), work(decode_attention_workspace_floats(attn));
  std::mt19937 rng(1);
  std::normal_distribution<float> g;
  for (auto& x : q) x = g(rng) * 0.3f;
  decode_attention({&attn, q.data(), 1.f / 8.f, S, sk.data(), sv.data(), T - S, bk.data(), bv.data(), out.data(),
                    work.data(), work.size()});

  // Check: attention over the full cache (same kernel, every head cached).
  const AttentionLayerPlan full = full_attention_plan(n_q, std::size_t(n_kv), d);
  std::vector<HeadStream> fk, fv;
  for (std::int32_t h = 0; h < n_kv; ++h) {
    fk.push_back({full_k.data(), DType::f32, std::ptrdiff_t(h) * std::ptrdiff_t(d), std::ptrdiff_t(n_kv) * std::ptrdiff_t(d), nullptr, 0, 0});
    fv.push_back({full_v.data(), DType::f32, std::ptrdiff_t(h) * std::ptrdiff_t(d), std::ptrdiff_t(n_kv) * std::ptrdiff_t(d), nullptr, 0, 0});
  }
  std::vector<float> ref(n_q * d), work2(decode_attention_workspace_floats(full));
  decode_attention({&full, q.data(), 1.f / 8.f, 0, nullptr, nullptr, T, fk.data(), fv.data(), ref.data(), work2.data(), work2.size()});
  double err = 0, norm = 0;
  for (std::size_t i = 0; i < out.size(); ++i) err += double(out[i] - ref[i]) * (out[i] - ref[i]), norm += double(ref[i]) * ref[i];
  const double rel = std::sqrt(err / norm);
  std::printf("decode attention over the reference-only cache vs the full cache: relative error %.2e\n", rel);
  return rel < 1e-3 ? 0 : 1;
}
