#pragma once
/// @file hadamard.hpp
/// The normalized Walsh–Hadamard rotation H/√n of a vector of n = 2^k
/// components: orthogonal, symmetric and its own inverse, O(n log n). A KV
/// store rotates every head vector by it before quantizing (outliers spread
/// over the block, so 4-bit caches lose less); since q·k = (Hq)·(Hk) the
/// attention rotates each query vector once per step and each accumulator
/// once at the end, never a cached token.

#include <cmath>
#include <cstddef>

#include "headrecon/error.hpp"

namespace headrecon {

/// True when n is a power of two (the rotation's lengths).
constexpr bool hadamard_length_ok(std::size_t n) { return n != 0 && (n & (n - 1)) == 0; }

/// x ← (H/√n) x in place.
inline void hadamard_rotate(float* x, std::size_t n) {
  if (!hadamard_length_ok(n)) detail::fail("hadamard_rotate: length ", n, " is not a power of two");
  for (std::size_t h = 1; h < n; h *= 2)
    for (std::size_t i = 0; i < n; i += 2 * h)
      for (std::size_t j = i; j < i + h; ++j) {
        const float a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
  const float s = float(1.0 / std::sqrt(double(n)));
  for (std::size_t i = 0; i < n; ++i) x[i] *= s;
}

}  // namespace headrecon
