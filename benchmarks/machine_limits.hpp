#pragma once
// The machine's limits, measured in the same run as the kernels: single-thread
// f32 FMA peak (independent accumulators, no memory traffic) and single-thread
// DRAM bandwidth (STREAM-like triad over buffers far larger than the caches).
#include <chrono>
#include <vector>

#include <hwy/highway.h>

namespace headrecon::bench {

template <class F>
double seconds_per_call(F&& f, double min_seconds = 0.25) {
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

namespace hn = hwy::HWY_NAMESPACE;

/// GFLOP/s of 12 independent FMA chains on the widest static vector (12
/// chains hide the FMA latency on two pipes and fit 16 registers with the
/// two constants).
inline double fma_peak_gflops() {
  const hn::ScalableTag<float> df;
  const std::size_t L = hn::Lanes(df), iters = 20000000 / L;
  std::vector<float> sink(L);
  auto run = [&] {
    // Distinct starting values: identical chains would be merged by the compiler.
    auto a0 = hn::Set(df, 1.00f), a1 = hn::Set(df, 1.01f), a2 = hn::Set(df, 1.02f), a3 = hn::Set(df, 1.03f);
    auto a4 = hn::Set(df, 1.04f), a5 = hn::Set(df, 1.05f), a6 = hn::Set(df, 1.06f), a7 = hn::Set(df, 1.07f);
    auto a8 = hn::Set(df, 1.08f), a9 = hn::Set(df, 1.09f), a10 = hn::Set(df, 1.10f), a11 = hn::Set(df, 1.11f);
    const auto m = hn::Set(df, 0.999999f), c = hn::Set(df, 1e-7f);
    for (std::size_t i = 0; i < iters; ++i) {
      a0 = hn::MulAdd(a0, m, c); a1 = hn::MulAdd(a1, m, c); a2 = hn::MulAdd(a2, m, c); a3 = hn::MulAdd(a3, m, c);
      a4 = hn::MulAdd(a4, m, c); a5 = hn::MulAdd(a5, m, c); a6 = hn::MulAdd(a6, m, c); a7 = hn::MulAdd(a7, m, c);
      a8 = hn::MulAdd(a8, m, c); a9 = hn::MulAdd(a9, m, c); a10 = hn::MulAdd(a10, m, c); a11 = hn::MulAdd(a11, m, c);
    }
    auto s = hn::Add(hn::Add(hn::Add(a0, a1), hn::Add(a2, a3)), hn::Add(hn::Add(a4, a5), hn::Add(a6, a7)));
    s = hn::Add(s, hn::Add(hn::Add(a8, a9), hn::Add(a10, a11)));
    hn::StoreU(s, df, sink.data());
  };
  const double t = seconds_per_call(run, 0.2);
  return double(iters) * 12.0 * double(L) * 2.0 / t / 1e9;
}

/// GB/s of a[i] = b[i] + s·c[i] over 3 × 128 MiB (bytes: 2 reads + 1 write).
inline double triad_gbps() {
  const std::size_t n = std::size_t(32) << 20;
  std::vector<float> a(n, 0.f), b(n, 1.f), c(n, 2.f);
  const double t = seconds_per_call([&] {
    float* HWY_RESTRICT pa = a.data();
    const float* HWY_RESTRICT pb = b.data();
    const float* HWY_RESTRICT pc = c.data();
    for (std::size_t i = 0; i < n; ++i) pa[i] = pb[i] + 0.5f * pc[i];
  }, 0.3);
  return 3.0 * double(n) * 4.0 / t / 1e9;
}

}  // namespace headrecon::bench
