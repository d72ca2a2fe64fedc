#pragma once
/// @file limits.hpp
/// The largest counts headrecon's files may hold. Readers check every count
/// against these maxima (and against the file's real size) before allocating
/// anything for it; Plan::validate() and the writers enforce them too, so what
/// is written can be read back. They are far above today's models (at most
/// 126 layers, 128 heads, head_dim 256).

#include <cstdint>

namespace headrecon::limits {

/// Layers of a plan or an activations file.
inline constexpr std::uint64_t max_layers = 4096;
/// Heads per layer of one kind (q, k or v).
inline constexpr std::uint64_t max_heads = 4096;
/// Components per head.
inline constexpr std::uint64_t max_head_dim = 4096;

}  // namespace headrecon::limits
