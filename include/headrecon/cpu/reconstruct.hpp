#pragma once
/// @file reconstruct.hpp
/// Front door of the CPU reconstruction kernel (static dispatch: the target is
/// the one the including translation unit is compiled for, e.g. by -march).
/// For runtime dispatch, see cpu/dispatch.hpp.
///
/// reconstruct() writes, for tokens [token0, token0 + n_tokens), every
/// target head y_t = Wᵀ[x_ref0,t; …] + b (f32 accumulation) from a cache
/// holding only reference heads, in any layout HeadStream describes
/// (token-major, head-major, paged), reading each reference token once for
/// all targets. It never allocates: the caller passes
/// reconstruct_workspace_floats() floats. Thread-safe for disjoint outputs.
/// For a plan fitted before RoPE, rotate the result afterwards (cpu/rope.hpp).

#include "headrecon/cpu/reconstruct-inl.h"

namespace headrecon {
/// Rebuilds the targets described by `args` (see ReconstructArgs).
inline void reconstruct(const ReconstructArgs& args) { HWY_STATIC_DISPATCH(Reconstruct)(args); }
}  // namespace headrecon
