// Definitions of headrecon/cpu/dispatch.hpp: include in exactly one .cc.
// It compiles the kernels once per Highway target (foreach_target.h).
#include "headrecon/cpu/dispatch.hpp"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "headrecon/cpu/dispatch_impl.hpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "headrecon/cpu/attention-inl.h"
#include "headrecon/cpu/reconstruct-inl.h"

HWY_BEFORE_NAMESPACE();
namespace headrecon {
namespace HWY_NAMESPACE {
inline void DispatchReconstruct(const ReconstructArgs& a) { Reconstruct(a); }
inline void DispatchDecodeAttention(const DecodeAttentionArgs& a) { DecodeAttention(a); }
inline void DispatchAttention(const AttentionRunArgs& a, const ParallelFor& pf) { RunAttention(a, pf); }
inline const char* DispatchTargetName() { return hwy::TargetName(HWY_TARGET); }
}  // namespace HWY_NAMESPACE
}  // namespace headrecon
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace headrecon {
HWY_EXPORT(DispatchReconstruct);
HWY_EXPORT(DispatchDecodeAttention);
HWY_EXPORT(DispatchAttention);
HWY_EXPORT(DispatchTargetName);
namespace dispatch {
void reconstruct(const ReconstructArgs& args) { HWY_DYNAMIC_DISPATCH(DispatchReconstruct)(args); }
void decode_attention(const DecodeAttentionArgs& args) { HWY_DYNAMIC_DISPATCH(DispatchDecodeAttention)(args); }
void attention(const AttentionRunArgs& args, const ParallelFor& pf) { HWY_DYNAMIC_DISPATCH(DispatchAttention)(args, pf); }
const char* target_name() { return HWY_DYNAMIC_DISPATCH(DispatchTargetName)(); }
}  // namespace dispatch
}  // namespace headrecon
#endif  // HWY_ONCE
