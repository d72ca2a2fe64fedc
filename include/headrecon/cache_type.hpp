#pragma once
/// @file cache_type.hpp
/// What a KV cache stores (element type, optional Hadamard rotation) as
/// engines spell it, and the vector such a cache gives back for an input.

#include <cctype>
#include <cstddef>
#include <string>
#include <string_view>

#include "headrecon/block_quant.hpp"
#include "headrecon/dtype.hpp"
#include "headrecon/error.hpp"
#include "headrecon/hadamard.hpp"

namespace headrecon {

/// What a KV cache stores, as engines spell it: f32, f16, bf16, q8_0, q4_0,
/// and with an "r" suffix (q4_0r, q8_0r, ...) Hadamard-rotated first.
struct CacheType {
  DType dtype = DType::f32;
  bool rotate = false;

  static CacheType parse(std::string_view s) {
    CacheType c;
    std::string_view base = s;
    if (!s.empty() && s.back() == 'r') base = s.substr(0, s.size() - 1), c.rotate = true;
    if (base == "f32") c.dtype = DType::f32;
    else if (base == "f16") c.dtype = DType::f16;
    else if (base == "bf16") c.dtype = DType::bf16;
    else if (base == "q8_0") c.dtype = DType::q8_0;
    else if (base == "q4_0") c.dtype = DType::q4_0;
    else detail::fail("unknown cache type '", s, "' (expected f32, f16, bf16, q8_0 or q4_0, optionally with an r suffix: rotated)");
    return c;
  }
  std::string name() const {
    std::string n(dtype_name(dtype));
    for (char& ch : n) ch = char(std::tolower(static_cast<unsigned char>(ch)));
    return rotate ? n + "r" : n;
  }
  friend bool operator==(CacheType a, CacheType b) { return a.dtype == b.dtype && a.rotate == b.rotate; }
};

/// The vector a KV cache of type `ct` gives back for x (d values, in place):
/// rotated, rounded or quantized, dequantized and rotated back. Fitting maps
/// on such vectors lets the statistics see what the kernels will read.
inline void cache_roundtrip(CacheType ct, float* x, std::size_t d) {
  if (is_block_type(ct.dtype) && d % kQuantBlock != 0)
    detail::fail("cache_roundtrip: ", dtype_name(ct.dtype), " needs a multiple of 32 values, got ", d);
  if (ct.rotate) hadamard_rotate(x, d);
  switch (ct.dtype) {
    case DType::f32: break;
    case DType::f16:
      for (std::size_t i = 0; i < d; ++i) x[i] = to_float(to_f16(x[i]));
      break;
    case DType::bf16:
      for (std::size_t i = 0; i < d; ++i) x[i] = to_float(to_bf16(x[i]));
      break;
    case DType::q8_0:
    case DType::q4_0:
      for (std::size_t b = 0; b < d; b += kQuantBlock) {
        if (ct.dtype == DType::q8_0) {
          BlockQ8_0 q;
          quantize_block(x + b, q);
          dequantize_block(q, x + b);
        } else {
          BlockQ4_0 q;
          quantize_block(x + b, q);
          dequantize_block(q, x + b);
        }
      }
      break;
  }
  if (ct.rotate) hadamard_rotate(x, d);
}

}  // namespace headrecon
