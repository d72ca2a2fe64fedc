// Reconstruction kernel vs OpenBLAS sgemm on the identical math: 4 targets
// rebuilt from 5 references each. Our side reads the reference heads from a
// token-major f32 cache (the gather is included); BLAS gets X already packed
// contiguously [tokens, 5·d] and W of the 4 targets side by side [5·d, 4·d]
// (one sgemm), plus the bias. Ratio = BLAS time / our time (> 1: we are faster).
#include <benchmark/benchmark.h>

#include <chrono>
#include <random>
#include <vector>

#include "headrecon/cpu/reconstruct.hpp"
#include "headrecon/detail/lapack.hpp"

using namespace headrecon;

namespace {
constexpr std::size_t kRefs = 5, kTargets = 4, kHeads = 9;

struct Problem {
  std::size_t n, d;
  std::vector<float> cache, w_all, b, x_packed, y_blas, out;
  std::vector<std::vector<float>> w;
  std::vector<std::uint32_t> refs;
  std::vector<HeadStream> streams;
  std::vector<ReconTarget> targets;
  std::vector<float> work;

  Problem(std::size_t n_, std::size_t d_) : n(n_), d(d_) {
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
    reconstruct(a);
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

template <class F>
double seconds_per_call(F&& f, double min_seconds = 0.2) {
  f();
  std::size_t reps = 0;
  const auto t0 = std::chrono::steady_clock::now();
  double el = 0;
  do {
    f();
    ++reps;
    el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  } while (el < min_seconds);
  return el / double(reps);
}

void BM_Reconstruct(benchmark::State& state) {
  Problem p(std::size_t(state.range(0)), std::size_t(state.range(1)));
  for (auto _ : state) {
    p.ours();
    benchmark::ClobberMemory();
  }
  const double t_blas = seconds_per_call([&] { p.blas(); });
  const double t_ours = seconds_per_call([&] { p.ours(); });
  state.counters["GFLOPs"] = p.flops() / t_ours / 1e9;
  state.counters["blas_GFLOPs"] = p.flops() / t_blas / 1e9;
  state.counters["vs_blas"] = t_blas / t_ours;
  state.counters["peak_frac"] = p.flops() / t_ours / 1e9 / 95.0;
}
BENCHMARK(BM_Reconstruct)
    ->ArgsProduct({{1, 2, 4, 8}, {64, 128}})
    ->ArgsProduct({{256, 1024, 4096}, {64, 128}})
    ->Unit(benchmark::kMicrosecond);
}  // namespace

BENCHMARK_MAIN();
