// Per-target FMA peak kernel (machine_limits.hpp): 12 independent FMA chains
// on the target's widest f32 vector, no memory traffic. Included once for the
// static target by machine_limits.hpp, and once per target by a tool that
// measures the peak of the target its kernels are dispatched to
// (examples/headrecon_cli/bench_dispatch.cpp).
#include <cstddef>

#if defined(HEADRECON_BENCH_FMA_CHAINS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef HEADRECON_BENCH_FMA_CHAINS_INL_H_
#undef HEADRECON_BENCH_FMA_CHAINS_INL_H_
#else
#define HEADRECON_BENCH_FMA_CHAINS_INL_H_
#endif

#include <hwy/highway.h>

HWY_BEFORE_NAMESPACE();
namespace headrecon::bench {
namespace HWY_NAMESPACE {

/// Runs 12 FMA chains of 2·10⁷ / lanes steps (12 chains hide the FMA latency
/// on two pipes and fit 16 registers with the two constants); stores a sum to
/// `sink` (64 floats) so the chains are not optimized away. Returns the flops done.
inline double FmaChains(float* sink) {
  namespace hn = hwy::HWY_NAMESPACE;
  const hn::ScalableTag<float> df;
  const std::size_t L = hn::Lanes(df), iters = 20000000 / L;
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
  return double(iters) * 12.0 * double(L) * 2.0;
}

}  // namespace HWY_NAMESPACE
}  // namespace headrecon::bench
HWY_AFTER_NAMESPACE();

#endif  // HEADRECON_BENCH_FMA_CHAINS_INL_H_
