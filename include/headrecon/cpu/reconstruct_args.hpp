#pragma once
/// @file reconstruct_args.hpp
/// Arguments of the CPU reconstruction kernel (plain data, no SIMD types).

#include <cstddef>
#include <cstdint>

#include "headrecon/head_stream.hpp"

namespace headrecon {

/// One rebuilt head: y_t = Wᵀ [x_{ref0,t}; …; x_{ref(k−1),t}] + b, written to `out`.
struct ReconTarget {
  const float* weight = nullptr;       ///< row-major [k·d, d] (the plan's TargetMap::weight)
  const float* bias = nullptr;         ///< [d]
  const std::uint32_t* refs = nullptr; ///< k indices into ReconstructArgs::streams
  std::size_t n_refs = 0;
  HeadStream out;                      ///< destination (f32, f16 or bf16; any layout)
};

/// Rebuilds tokens [token0, token0 + n_tokens) of every target from its
/// reference streams, reading each reference token once for all targets.
struct ReconstructArgs {
  std::size_t head_dim = 0;
  std::size_t token0 = 0, n_tokens = 0;
  const HeadStream* streams = nullptr;  ///< reference heads (f32, f16 or bf16 each)
  std::size_t n_streams = 0;
  const ReconTarget* targets = nullptr;
  std::size_t n_targets = 0;
  float* workspace = nullptr;           ///< reconstruct_workspace_floats() floats, caller-owned
  std::size_t workspace_floats = 0;
};

/// Tokens gathered per block by the reconstruction kernel.
inline constexpr std::size_t kReconBlock = 16;

/// Workspace the kernel needs, in floats.
inline std::size_t reconstruct_workspace_floats(std::size_t n_streams, std::size_t head_dim) {
  return (n_streams + 1) * kReconBlock * head_dim + 64;
}

}  // namespace headrecon
