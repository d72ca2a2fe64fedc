#pragma once
/// @file rope.hpp
/// Rotary position embedding, for plans fitted before RoPE: their rebuilt keys
/// (and queries) must be reconstructed first and rotated afterwards, since the
/// rotation depends on the token's position and cannot be absorbed into a map.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "headrecon/error.hpp"
#include "headrecon/head_stream.hpp"

namespace headrecon {

/// Which components RoPE rotates together.
enum class RopeStyle : std::uint8_t {
  interleaved,  ///< pairs (2i, 2i+1): llama.cpp's "normal" (LLaMA GGUF files)
  neox,         ///< pairs (i, i + rot/2): GPT-NeoX / HF transformers layout
};

/// Rotation parameters: pair i turns by position · theta^(−2i/rotary_dim);
/// components at or past rotary_dim are left alone.
struct RopeConfig {
  double theta = 10000.0;
  std::size_t rotary_dim = 0;  ///< even, ≤ head_dim
  RopeStyle style = RopeStyle::interleaved;
};

/// Rotates `n` f32 vectors of `head_dim` components in place: vector t lives
/// at data + t·stride and has position positions[t]. Angles in double, so
/// long positions stay exact to f32 rounding.
inline void apply_rope(float* data, std::size_t n, std::ptrdiff_t stride, std::size_t head_dim,
                       const std::int32_t* positions, const RopeConfig& cfg) {
  if (cfg.rotary_dim % 2 != 0 || cfg.rotary_dim > head_dim || cfg.rotary_dim == 0)
    detail::fail("apply_rope: rotary_dim ", cfg.rotary_dim, " must be even, positive and <= head_dim ", head_dim);
  if (!(cfg.theta > 1.0)) detail::fail("apply_rope: theta must be > 1, got ", cfg.theta);
  const std::size_t half = cfg.rotary_dim / 2;
  std::vector<double> inv(half);
  for (std::size_t i = 0; i < half; ++i) inv[i] = std::pow(cfg.theta, -2.0 * double(i) / double(cfg.rotary_dim));
  for (std::size_t t = 0; t < n; ++t) {
    if (positions[t] < 0) detail::fail("apply_rope: negative position ", positions[t], " at vector ", t);
    float* v = data + std::ptrdiff_t(t) * stride;
    for (std::size_t i = 0; i < half; ++i) {
      const double a = double(positions[t]) * inv[i], c = std::cos(a), s = std::sin(a);
      const std::size_t i0 = cfg.style == RopeStyle::interleaved ? 2 * i : i;
      const std::size_t i1 = cfg.style == RopeStyle::interleaved ? 2 * i + 1 : i + half;
      const double x0 = v[i0], x1 = v[i1];
      v[i0] = float(x0 * c - x1 * s);
      v[i1] = float(x0 * s + x1 * c);
    }
  }
}

}  // namespace headrecon
