#pragma once
// Arguments of the engine's quantized matrix kernels (quant_matvec-inl.h) and
// the scalar helpers they share; no Highway code here.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "gguf.hpp"

namespace headrecon_engine {

/// The engine's row layout of a block type: the GGUF row's block fields
/// gathered by kind, so that the kernels read 8 or 16 scales with one vector
/// load. For nb blocks: f16 scales d[nb] at offset 0, f16 mins m[nb] (Q4_1,
/// Q5_1), high-bit words qh[nb] (Q5_0, Q5_1, 4 bytes each), then the values
/// qs[nb] (16 bytes per block, 32 for Q8_0). Same bytes as the GGUF row, in
/// another order; repack_row / unpack_row convert exactly.
struct RowLayout {
  std::size_t nb = 0, m = 0, qh = 0, qs = 0, qs_bytes = 0;
  bool has_min = false, has_qh = false;
};

inline RowLayout row_layout(std::uint32_t type, std::size_t cols) {
  RowLayout l;
  l.nb = cols / 32;
  const GgmlType t = GgmlType(type);
  l.has_min = t == GgmlType::Q4_1 || t == GgmlType::Q5_1;
  l.has_qh = t == GgmlType::Q5_0 || t == GgmlType::Q5_1;
  l.qs_bytes = t == GgmlType::Q8_0 ? 32 : 16;
  l.m = 2 * l.nb;
  l.qh = l.m + (l.has_min ? 2 * l.nb : 0);
  l.qs = l.qh + (l.has_qh ? 4 * l.nb : 0);
  return l;
}

/// True for the block types the engine stores in the RowLayout order.
inline bool repacked_type(std::uint32_t type) {
  const GgmlType t = GgmlType(type);
  return t == GgmlType::Q4_0 || t == GgmlType::Q4_1 || t == GgmlType::Q5_0 || t == GgmlType::Q5_1 ||
         t == GgmlType::Q8_0;
}

/// One GGUF row of `cols` values of a repacked type into the RowLayout order
/// (pack = true), or back (pack = false).
inline void convert_row(std::uint32_t type, std::size_t cols, const std::uint8_t* in, std::uint8_t* out, bool pack) {
  const RowLayout l = row_layout(type, cols);
  const std::size_t block = ggml_type_info(type).bytes;
  for (std::size_t b = 0; b < l.nb; ++b) {
    std::size_t at = b * block;  // field offsets inside the GGUF block, in ggml-common.h order
    auto move = [&](std::size_t packed_at, std::size_t n) {
      if (pack)
        std::memcpy(out + packed_at, in + at, n);
      else
        std::memcpy(out + at, in + packed_at, n);
      at += n;
    };
    move(2 * b, 2);
    if (l.has_min) move(l.m + 2 * b, 2);
    if (l.has_qh) move(l.qh + 4 * b, 4);
    move(l.qs + l.qs_bytes * b, l.qs_bytes);
  }
}

/// y[t·ldy + r] (+)= Σ_c W[r][c] · x[t·ldx + c] for rows r < rows and inputs
/// t < n, with W in ggml type `type` (a kernel_type()), row r at w + r·row_bytes
/// (block types in the RowLayout order).
struct QuantMatVecArgs {
  std::uint32_t type = 0;
  const std::uint8_t* w = nullptr;
  std::size_t row_bytes = 0, cols = 0, rows = 0;
  const float* x = nullptr;
  std::size_t ldx = 0, n = 0;
  float* y = nullptr;
  std::size_t ldy = 0;
  bool accumulate = false;
  /// Rows that follow the `rows` rows in memory and that the caller reads
  /// next (the kernel prefetches into them; they must exist).
  std::size_t rows_after = 0;
  /// Optional 8-bit activations (block types only): input t's block b is
  /// xq[t·ldxq + 32b ..] (32 int8 values in -127..127) times xd[t·ldxb + b],
  /// with xs[t·ldxb + b] = xd·Σ xq of the block. When set, x is not read.
  const std::int8_t* xq = nullptr;
  const float *xd = nullptr, *xs = nullptr;
  std::size_t ldxq = 0, ldxb = 0;
};

/// out[r·ldo + c] = W[r][c] for rows r < rows (W as in QuantMatVecArgs).
struct DequantArgs {
  std::uint32_t type = 0;
  const std::uint8_t* w = nullptr;
  std::size_t row_bytes = 0, cols = 0, rows = 0;
  float* out = nullptr;
  std::size_t ldo = 0;
};

/// llama.cpp's Q8_1 activations for QuantMatVecArgs::xq: per 32-block of
/// each of n rows of x (cols a multiple of 32), d = max|x|/127, q = round(x/d)
/// (xq, n × cols), xd = d and xs = d·Σq (n × cols/32).
inline void quantize_q8_inputs(const float* x, std::size_t n, std::size_t ldx, std::size_t cols, std::int8_t* xq,
                               float* xd, float* xs) {
  const std::size_t nb = cols / 32;
  for (std::size_t t = 0; t < n; ++t)
    for (std::size_t b = 0; b < nb; ++b) {
      const float* xb = x + t * ldx + b * 32;
      float amax = 0;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(xb[j]));
      const float d = amax / 127.f, id = d > 0 ? 1.f / d : 0.f;
      int sum = 0;
      for (int j = 0; j < 32; ++j) {
        const int q = int(std::nearbyint(xb[j] * id));
        xq[t * cols + b * 32 + std::size_t(j)] = std::int8_t(q);
        sum += q;
      }
      xd[t * nb + b] = d;
      xs[t * nb + b] = d * float(sum);
    }
}

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
