#pragma once
// Front door of the engine's weight kernels (static dispatch: the Highway
// target is the one this translation unit is compiled for, e.g. -march=
// x86-64-v3 gives AVX2, x86-64-v4 AVX3). quant_matvec() multiplies rows of
// GGUF-typed weights with f32 inputs; quant_dequantize() writes rows as f32.
// Both are single-threaded and allocate nothing; matmul.hpp splits rows
// across threads.

#include "quant_matvec-inl.h"

namespace headrecon_engine {
/// See QuantMatVecArgs.
inline void quant_matvec(const QuantMatVecArgs& a) { HWY_STATIC_DISPATCH(QuantMatVec)(a); }
/// See DequantArgs.
inline void quant_dequantize(const DequantArgs& a) { HWY_STATIC_DISPATCH(QuantDequant)(a); }
/// The Highway target of the kernels above ("AVX2", "AVX3", ...).
inline const char* quant_kernel_target() { return HWY_STATIC_DISPATCH(QuantTargetName)(); }
}  // namespace headrecon_engine
