#pragma once
// Reconstruction benchmark problem: 4 targets rebuilt from 5 references each.
// Our side reads the references from a token-major f32 cache of 9 heads (the
// gather is included); the BLAS side gets X already packed [tokens, 5·d] and
// the 4 targets' W side by side [5·d, 4·d] (one sgemm), plus the bias.
#include <random>
#include <vector>

#include "bench_kernels.hpp"
#include "headrecon/detail/lapack.hpp"

namespace headrecon::bench {
constexpr std::size_t kRefs = 5, kTargets = 4, kHeads = 9;

struct ReconProblem {
  std::size_t n, d;
  std::vector<float> cache, w_all, b, x_packed, y_blas, out;
  std::vector<std::vector<float>> w;
  std::vector<std::uint32_t> refs;
  std::vector<HeadStream> streams;
  std::vector<ReconTarget> targets;
  std::vector<float> work;
  BenchKernels kernels;  // the static target's unless a tool installs others

  ReconProblem(std::size_t n_, std::size_t d_) : n(n_), d(d_) {
    std::mt19937 rng(3);
    std::normal_distribution<float> g;
    cache.resize(n * kHeads * d);
    for (auto& v : cache) v = g(rng);
    refs = {0, 2, 4, 6, 8};
    w.assign(kTargets, std::vector<float>(kRefs * d * d));
    w_all.resize(kRefs * d * kTargets * d);
    for (std::size_t j = 0; j < kTargets; ++j)
      for (std::size_t r = 0; r < kRefs * d; ++r)
        for (std::size_t c = 0; c < d; ++c) w_all[r * kTargets * d + j * d + c] = w[j][r * d + c] = g(rng) * 0.05f;
    b.assign(d, 0.1f);
    x_packed.resize(n * kRefs * d);
    for (std::size_t t = 0; t < n; ++t)
      for (std::size_t r = 0; r < kRefs; ++r)
        for (std::size_t i = 0; i < d; ++i) x_packed[(t * kRefs + r) * d + i] = cache[(t * kHeads + refs[r]) * d + i];
    y_blas.resize(n * kTargets * d);
    out.resize(n * kTargets * d);
    for (std::size_t h = 0; h < kHeads; ++h)
      streams.push_back({cache.data(), DType::f32, std::ptrdiff_t(h * d), std::ptrdiff_t(kHeads * d), nullptr, 0, 0});
    for (std::size_t j = 0; j < kTargets; ++j)
      targets.push_back({w[j].data(), b.data(), refs.data(), kRefs,
                         {out.data(), DType::f32, std::ptrdiff_t(j * d), std::ptrdiff_t(kTargets * d), nullptr, 0, 0}});
    work.resize(reconstruct_workspace_floats(streams.size(), d));
  }
  void ours() {
    ReconstructArgs a{d, 0, n, streams.data(), streams.size(), targets.data(), targets.size(), work.data(), work.size()};
    kernels.run_reconstruct(a);
  }
  void blas() {
    // Row-major Y[n, 4d] = X[n, 5d] · W[5d, 4d] is column-major Yᵀ = Wᵀ Xᵀ.
    const int m = int(kTargets * d), nn = int(n), k = int(kRefs * d);
    const float one = 1.f, zero = 0.f;
    sgemm_("N", "N", &m, &nn, &k, &one, w_all.data(), &m, x_packed.data(), &k, &zero, y_blas.data(), &m);
    for (std::size_t t = 0; t < n; ++t)
      for (std::size_t c = 0; c < kTargets * d; ++c) y_blas[t * kTargets * d + c] += b[c % d];
  }
  double flops() const { return 2.0 * double(n) * double(kRefs * d) * double(kTargets * d); }
};

}  // namespace headrecon::bench
