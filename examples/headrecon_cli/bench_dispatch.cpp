// FmaChains (benchmarks/fma_chains-inl.h) compiled once per Highway target
// (foreach_target); `headrecon bench` measures the FMA peak on the target
// that headrecon::dispatch chooses for its kernels.
#include "bench_dispatch.hpp"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "bench_dispatch.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "fma_chains-inl.h"

#if HWY_ONCE
namespace headrecon::bench {
HWY_EXPORT(FmaChains);
double dispatch_fma_chains(float* sink) { return HWY_DYNAMIC_DISPATCH(FmaChains)(sink); }
}  // namespace headrecon::bench
#endif  // HWY_ONCE
