#pragma once
/// @file block_quant.hpp
/// llama.cpp's q8_0 and q4_0 blocks (so an engine's existing KV buffers fit)
/// and their reference quantizers, bit for bit: 32 values per block with an
/// f16 scale d.
/// - q8_0: d = max|x| / 127, q = round(x / d) (half away from zero), x ≈ d·q.
/// - q4_0: m = the value of largest magnitude (first one on ties),
///   d = m / −8, q = min(15, trunc(x / d + 8.5)), x ≈ d·(q − 8); value j of
///   the block sits in the low nibble of byte j, value j + 16 in its high
///   nibble.
/// Checked against the gguf package's NumPy port of ggml's reference
/// quantizers (tests/quant/).

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "headrecon/dtype.hpp"

namespace headrecon {

struct BlockQ8_0 {
  f16_t d;
  std::int8_t qs[kQuantBlock];
};
struct BlockQ4_0 {
  f16_t d;
  std::uint8_t qs[kQuantBlock / 2];
};
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18, "llama.cpp block sizes");

/// The f16 scale of the block at `p` (any byte address) as float; its values start at p + kBlockQsOffset.
inline constexpr std::size_t kBlockQsOffset = 2;
inline float block_scale(const unsigned char* p) {
  f16_t h;
  std::memcpy(&h, p, sizeof h);
  return to_float(h);
}

/// One q8_0 block from 32 values (ggml's quantize_row_q8_0_ref).
inline void quantize_block(const float* x, BlockQ8_0& y) {
  float amax = 0.f;
  for (std::size_t j = 0; j < kQuantBlock; ++j) amax = std::fmax(amax, std::fabs(x[j]));
  const float d = amax / 127.f;
  const float id = d != 0.f ? 1.f / d : 0.f;
  y.d = to_f16(d);
  for (std::size_t j = 0; j < kQuantBlock; ++j) {
    const float v = std::round(x[j] * id);  // in [-127, 127] unless the scale is subnormal (id = inf)
    y.qs[j] = v == v ? std::int8_t(std::fmin(std::fmax(v, -127.f), 127.f)) : std::int8_t(0);
  }
}

/// One q4_0 block from 32 values (ggml's quantize_row_q4_0_ref).
inline void quantize_block(const float* x, BlockQ4_0& y) {
  float amax = 0.f, max = 0.f;
  for (std::size_t j = 0; j < kQuantBlock; ++j)
    if (amax < std::fabs(x[j])) amax = std::fabs(x[j]), max = x[j];
  const float d = max / -8.f;
  const float id = d != 0.f ? 1.f / d : 0.f;
  y.d = to_f16(d);
  for (std::size_t j = 0; j < kQuantBlock / 2; ++j) {
    // The products are rounded before the addition, as in ggml (volatile: no FMA contraction).
    const volatile float x0 = x[j] * id, x1 = x[j + kQuantBlock / 2] * id;
    const float v0 = x0 + 8.5f, v1 = x1 + 8.5f;  // in [0.5, 16.5] unless the scale is subnormal
    const int q0 = v0 == v0 ? int(std::fmin(std::fmax(v0, 0.f), 16.f)) : 8;
    const int q1 = v1 == v1 ? int(std::fmin(std::fmax(v1, 0.f), 16.f)) : 8;
    y.qs[j] = std::uint8_t((q0 < 15 ? q0 : 15) | (q1 < 15 ? q1 : 15) << 4);
  }
}

inline void dequantize_block(const BlockQ8_0& b, float* x) {
  const float d = to_float(b.d);
  for (std::size_t j = 0; j < kQuantBlock; ++j) x[j] = d * float(b.qs[j]);
}
inline void dequantize_block(const BlockQ4_0& b, float* x) {
  const float d = to_float(b.d);
  for (std::size_t j = 0; j < kQuantBlock / 2; ++j) {
    x[j] = d * float(int(b.qs[j] & 15) - 8);
    x[j + kQuantBlock / 2] = d * float(int(b.qs[j] >> 4) - 8);
  }
}

/// Quantizes `n` values (a multiple of 32) into blocks of `t` (q8_0 or q4_0) at `out`.
inline void quantize_row(const float* x, std::size_t n, DType t, void* out) {
  if (!is_block_type(t) || n % kQuantBlock != 0)
    detail::fail("quantize_row: ", n, " values of ", dtype_name(t), " (a block type, whole blocks of 32)");
  // Blocks are copied byte-wise: a row may start at any byte (34- and 18-byte blocks pack with no padding).
  unsigned char* o = static_cast<unsigned char*>(out);
  for (std::size_t b = 0; b < n / kQuantBlock; ++b) {
    if (t == DType::q8_0) {
      BlockQ8_0 q;
      quantize_block(x + b * kQuantBlock, q);
      std::memcpy(o + b * sizeof q, &q, sizeof q);
    } else {
      BlockQ4_0 q;
      quantize_block(x + b * kQuantBlock, q);
      std::memcpy(o + b * sizeof q, &q, sizeof q);
    }
  }
}

/// Dequantizes `n` values (a multiple of 32) of blocks of `t` at `in`.
inline void dequantize_row(const void* in, std::size_t n, DType t, float* x) {
  if (!is_block_type(t) || n % kQuantBlock != 0)
    detail::fail("dequantize_row: ", n, " values of ", dtype_name(t), " (a block type, whole blocks of 32)");
  const unsigned char* p = static_cast<const unsigned char*>(in);
  for (std::size_t b = 0; b < n / kQuantBlock; ++b) {
    if (t == DType::q8_0) {
      BlockQ8_0 q;
      std::memcpy(&q, p + b * sizeof q, sizeof q);
      dequantize_block(q, x + b * kQuantBlock);
    } else {
      BlockQ4_0 q;
      std::memcpy(&q, p + b * sizeof q, sizeof q);
      dequantize_block(q, x + b * kQuantBlock);
    }
  }
}

}  // namespace headrecon
