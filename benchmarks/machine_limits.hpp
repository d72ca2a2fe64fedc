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
#include "fma_chains-inl.h"

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

/// One thread's FMA peak kernel (fma_chains-inl.h): runs and returns the
/// flops done; `sink` holds 64 floats.
using FmaChainsKernel = double (*)(float* sink);

/// GFLOP/s of `chains` (default: the static target's FmaChains) on every
/// worker of `pf` at once.
inline double fma_peak_gflops(const ParallelFor& pf = ParallelFor(), FmaChainsKernel chains = nullptr) {
  if (!chains) chains = &HWY_STATIC_DISPATCH(FmaChains);
  const std::size_t W = pf.workers();
  std::vector<float> sink(W * 64);
  std::vector<double> flops(W);
  const double t = best_seconds(
      [&] { pf(W, [&](std::size_t w, std::size_t) { flops[w] = chains(sink.data() + w * 64); }); }, 0.3);
  double total = 0;
  for (double f : flops) total += f;
  return total / t / 1e9;
}

/// GB/s of a streaming read (sum) of `bytes` split over the workers of `pf`;
/// the buffer is read once before timing. At most 256-bit loads on every
/// target: on this Emerald Rapids 512-bit loads read DRAM 1.1-1.2x slower
/// (1 and 2 threads, interleaved), and a limit is the best rate the machine
/// reaches, whatever vectors the kernels measured against it use.
inline double read_gbps(std::size_t bytes, const ParallelFor& pf = ParallelFor()) {
  const hn::CappedTag<float, 8> df;
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
