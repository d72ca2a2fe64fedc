#pragma once
// The machine's limits, measured in the same run as the kernels: f32 FMA peak
// (independent accumulators, no memory traffic) on 1..n threads, and read
// bandwidth (a streaming sum) on 1..n threads over a buffer of a given size:
// far larger than the last-level cache for DRAM, or the size of the data a
// kernel reads (so caches help the baseline exactly as they help the kernel).
// Plus the classic single-thread triad. Buffers come from KvPool, on the same
// 2 MiB pages as the KV stores the kernels read (4 KiB pages would put TLB
// misses in the baseline that the kernels do not have).
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <vector>

#include <hwy/highway.h>

#include "headrecon/kv_pool.hpp"
#include "headrecon/thread_pool.hpp"

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

/// The fastest of `reps` timings of seconds_per_call (noise on a shared machine only adds time).
template <class F>
double best_seconds(F&& f, double min_seconds = 0.25, int reps = 3) {
  double best = 1e300;
  for (int r = 0; r < reps; ++r) best = std::min(best, seconds_per_call(f, min_seconds / reps));
  return best;
}

namespace hn = hwy::HWY_NAMESPACE;

namespace limits_detail {
// One thread's 12 FMA chains of `iters` steps.
inline void fma_chains(std::size_t iters, float* sink) {
  const hn::ScalableTag<float> df;
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
  hn::StoreU(s, df, sink);
}
}  // namespace limits_detail

/// GFLOP/s of 12 independent FMA chains per thread on the widest static
/// vector (12 chains hide the FMA latency on two pipes and fit 16 registers
/// with the two constants), on every worker of `pf`.
inline double fma_peak_gflops(const ParallelFor& pf = ParallelFor()) {
  const std::size_t iters = 20000000 / hn::Lanes(hn::ScalableTag<float>()), W = pf.workers();
  std::vector<float> sink(W * 64);
  const double t = best_seconds(
      [&] { pf(W, [&](std::size_t w, std::size_t) { limits_detail::fma_chains(iters, sink.data() + w * 64); }); }, 0.3);
  const double per_thread = double(iters) * 12.0 * double(hn::Lanes(hn::ScalableTag<float>())) * 2.0;
  return double(W) * per_thread / t / 1e9;
}

/// GB/s of a streaming read (sum) of `bytes` split over the workers of `pf`;
/// the buffer is read once before timing.
inline double read_gbps(std::size_t bytes, const ParallelFor& pf = ParallelFor()) {
  const hn::ScalableTag<float> df;
  const std::size_t L = hn::Lanes(df), n = std::max<std::size_t>(bytes / 4 / (4 * L) * (4 * L), 4 * L);
  KvPool mem(n * sizeof(float));
  float* const buf = reinterpret_cast<float*>(mem.data());
  std::fill(buf, buf + n, 1.f);
  std::vector<float> sink(pf.workers() * 64);
  const std::size_t W = pf.workers();
  auto run = [&] {
    pf(W, [&](std::size_t w, std::size_t) {
      const std::size_t chunk = (n / W) / (4 * L) * (4 * L), b = w * chunk, e = w + 1 == W ? n : b + chunk;
      auto s0 = hn::Zero(df), s1 = hn::Zero(df), s2 = hn::Zero(df), s3 = hn::Zero(df);
      const float* HWY_RESTRICT p = buf;
      for (std::size_t i = b; i < e; i += 4 * L) {
        s0 = hn::Add(s0, hn::LoadU(df, p + i));
        s1 = hn::Add(s1, hn::LoadU(df, p + i + L));
        s2 = hn::Add(s2, hn::LoadU(df, p + i + 2 * L));
        s3 = hn::Add(s3, hn::LoadU(df, p + i + 3 * L));
      }
      hn::StoreU(hn::Add(hn::Add(s0, s1), hn::Add(s2, s3)), df, sink.data() + w * 64);
    });
  };
  const double t = best_seconds(run, 0.3);
  return double(n) * 4.0 / t / 1e9;
}

/// Read bandwidth from DRAM: a buffer of 1 GiB (or `bytes`), far above any last-level cache here.
inline double dram_read_gbps(const ParallelFor& pf = ParallelFor(), std::size_t bytes = std::size_t(1) << 30) {
  return read_gbps(bytes, pf);
}

/// GB/s of a[i] = b[i] + s·c[i] over 3 × 256 MiB on one thread (bytes: 2 reads + 1 write).
inline double triad_gbps() {
  const std::size_t n = std::size_t(64) << 20;
  KvPool a(n * sizeof(float)), b(n * sizeof(float)), c(n * sizeof(float));
  float* const fa = reinterpret_cast<float*>(a.data());
  float* const fb = reinterpret_cast<float*>(b.data());
  float* const fc = reinterpret_cast<float*>(c.data());
  std::fill(fa, fa + n, 0.f), std::fill(fb, fb + n, 1.f), std::fill(fc, fc + n, 2.f);
  const double t = best_seconds([&] {
    float* HWY_RESTRICT pa = fa;
    const float* HWY_RESTRICT pb = fb;
    const float* HWY_RESTRICT pc = fc;
    for (std::size_t i = 0; i < n; ++i) pa[i] = pb[i] + 0.5f * pc[i];
  }, 0.5);
  return 3.0 * double(n) * 4.0 / t / 1e9;
}

}  // namespace headrecon::bench
