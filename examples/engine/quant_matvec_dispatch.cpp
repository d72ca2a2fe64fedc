// The engine's weight kernels compiled once per Highway target (foreach_target),
// the best one of the running CPU chosen at run time; main.cpp installs it as
// engine_quant_kernel() (quant_matvec.hpp) unless --static-weights is given.
#include "quant_matvec_dispatch.hpp"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "quant_matvec_dispatch.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "quant_matvec-inl.h"

#if HWY_ONCE
namespace headrecon_engine {
HWY_EXPORT(QuantMatVec);
HWY_EXPORT(QuantTargetName);
void dispatch_quant_matvec(const QuantMatVecArgs& a) { HWY_DYNAMIC_DISPATCH(QuantMatVec)(a); }
const char* dispatch_quant_target() { return HWY_DYNAMIC_DISPATCH(QuantTargetName)(); }
}  // namespace headrecon_engine
#endif  // HWY_ONCE
