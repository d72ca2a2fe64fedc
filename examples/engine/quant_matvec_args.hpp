#pragma once
// Arguments of the engine's quantized matrix kernels (quant_matvec-inl.h) and
// the scalar helpers they share; no Highway code here.

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "gguf.hpp"

namespace headrecon_engine {

/// y[t·ldy + r] (+)= Σ_c W[r][c] · x[t·ldx + c] for rows r < rows and inputs
/// t < n, with W in ggml type `type` (a kernel_type()), row r at w + r·row_bytes.
struct QuantMatVecArgs {
  std::uint32_t type = 0;
  const std::uint8_t* w = nullptr;
  std::size_t row_bytes = 0, cols = 0, rows = 0;
  const float* x = nullptr;
  std::size_t ldx = 0, n = 0;
  float* y = nullptr;
  std::size_t ldy = 0;
  bool accumulate = false;
};

/// out[r·ldo + c] = W[r][c] for rows r < rows (W as in QuantMatVecArgs).
struct DequantArgs {
  std::uint32_t type = 0;
  const std::uint8_t* w = nullptr;
  std::size_t row_bytes = 0, cols = 0, rows = 0;
  float* out = nullptr;
  std::size_t ldo = 0;
};

namespace quant {

inline float f16_to_f32(const std::uint8_t* p) {
  std::uint16_t b;
  std::memcpy(&b, p, 2);
#if defined(__F16C__)
  return _cvtsh_ss(b);
#else
  return headrecon::to_float(headrecon::f16_t{b});
#endif
}

/// Entry i: 8 bytes, byte j = 0x10 when bit j of i is set, else 0 (Q5 high bits).
inline const std::uint64_t* bit_to_0x10() {
  static const std::array<std::uint64_t, 256> table = [] {
    std::array<std::uint64_t, 256> t{};
    for (std::uint64_t i = 0; i < 256; ++i)
      for (std::uint64_t j = 0; j < 8; ++j)
        if ((i >> j) & 1) t[i] |= std::uint64_t(0x10) << (8 * j);
    return t;
  }();
  return table.data();
}

}  // namespace quant
}  // namespace headrecon_engine
