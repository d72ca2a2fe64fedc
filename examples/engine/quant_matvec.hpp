#pragma once
// Front door of the engine's weight kernels (static dispatch: the Highway
// target is the one this translation unit is compiled for, e.g. -march=
// x86-64-v3 gives AVX2, x86-64-v4 AVX3; the engine can install a runtime
// dispatch for f32 inputs, engine_quant_kernel()). quant_matvec() multiplies
// rows of GGUF-typed weights with f32 inputs; quant_dequantize() writes rows
// as f32.
// Both are single-threaded and allocate nothing; matmul.hpp splits rows
// across threads.

#include <string>

#include "quant_matvec-inl.h"

namespace headrecon_engine {
/// The kernel of the weight products with f32 inputs, chosen at start-up:
/// null = this build's static target; the engine installs the runtime
/// dispatch of quant_matvec_dispatch.hpp (the best target of the CPU) unless
/// --static-weights is given. Products with 8-bit inputs stay on the build's
/// target: measured (Emerald Rapids, bench_engine_matvec, one thread) the AVX3
/// build's 8-bit kernels 1.1-1.2x slower than AVX2's, its f32-input kernels
/// 1.46-1.64x faster (Q4_1) and 1.22-1.25x (Q8_0).
struct QuantKernelChoice {
  void (*matvec)(const QuantMatVecArgs&) = nullptr;
  const char* target = nullptr;
};
inline QuantKernelChoice& engine_quant_kernel() {
  static QuantKernelChoice k;
  return k;
}
/// See QuantMatVecArgs.
inline void quant_matvec(const QuantMatVecArgs& a) {
  const QuantKernelChoice& k = engine_quant_kernel();
  if (k.matvec && a.xq == nullptr) return k.matvec(a);
  HWY_STATIC_DISPATCH(QuantMatVec)(a);
}
/// See DequantArgs.
inline void quant_dequantize(const DequantArgs& a) { HWY_STATIC_DISPATCH(QuantDequant)(a); }
/// The Highway target of the static kernels above ("AVX2", "AVX3", ...).
inline const char* quant_kernel_target() { return HWY_STATIC_DISPATCH(QuantTargetName)(); }
/// The targets the weight products run on: "AVX2", or with runtime dispatch
/// installed "AVX3_SPR (8-bit inputs AVX2)".
inline std::string weight_kernel_targets() {
  const QuantKernelChoice& k = engine_quant_kernel();
  if (!k.matvec || !k.target) return quant_kernel_target();
  return std::string(k.target) + " (8-bit inputs " + quant_kernel_target() + ")";
}
}  // namespace headrecon_engine
