#pragma once
/// @file dtype.hpp
/// Element types of activations and caches: float, IEEE fp16 and bfloat16,
/// with exact round-to-nearest-even conversions that need no hardware support.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>

#include "headrecon/detail/host_device.hpp"
#include "headrecon/error.hpp"

namespace headrecon {

/// IEEE 754 binary16, stored as raw bits (layout-compatible with hwy::float16_t).
struct f16_t {
  std::uint16_t bits;
};
/// bfloat16 (the top half of a binary32), stored as raw bits.
struct bf16_t {
  std::uint16_t bits;
};

/// Runtime tag of an element type. f32, f16 and bf16 are element types
/// (activations, caches); q8_0 and q4_0 are llama.cpp's block types for KV
/// caches (block_quant.hpp): 32 values per block, q8_0 = f16 scale + 32
/// int8 (34 bytes), q4_0 = f16 scale + 32 4-bit values (18 bytes).
enum class DType : std::uint8_t { f32, f16, bf16, q8_0, q4_0 };

/// Values per block of a block type.
inline constexpr std::size_t kQuantBlock = 32;

/// True for the block types q8_0 and q4_0.
constexpr bool is_block_type(DType t) { return t == DType::q8_0 || t == DType::q4_0; }

/// Size in bytes of one element of an element type (f32, f16, bf16); block
/// types have no per-element size (use dtype_row_bytes): Error.
constexpr std::size_t dtype_size(DType t) {
  if (is_block_type(t)) throw Error("dtype_size: a block type has no per-element size (use dtype_row_bytes)");
  return t == DType::f32 ? 4 : 2;
}

/// Bytes of one block of a block type.
constexpr std::size_t dtype_block_bytes(DType t) { return t == DType::q8_0 ? 34 : t == DType::q4_0 ? 18 : 0; }

/// Bytes of a row of `n` values of `t` (for block types `n` is a multiple of 32).
constexpr std::size_t dtype_row_bytes(DType t, std::size_t n) {
  return is_block_type(t) ? n / kQuantBlock * dtype_block_bytes(t) : n * dtype_size(t);
}

/// The safetensors / GGML spelling: "F32", "F16", "BF16", "Q8_0", "Q4_0".
constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "F32";
    case DType::f16: return "F16";
    case DType::bf16: return "BF16";
    case DType::q8_0: return "Q8_0";
    case DType::q4_0: return "Q4_0";
  }
  return "?";
}

/// Parses a safetensors dtype name of an element type; throws Error naming it when unsupported.
inline DType parse_dtype(std::string_view s) {
  if (s == "F32") return DType::f32;
  if (s == "F16") return DType::f16;
  if (s == "BF16") return DType::bf16;
  detail::fail("unsupported element type '", s, "' (expected F32, F16 or BF16)");
}

template <class T>
struct dtype_of;
template <>
struct dtype_of<float> {
  static constexpr DType value = DType::f32;
};
template <>
struct dtype_of<f16_t> {
  static constexpr DType value = DType::f16;
};
template <>
struct dtype_of<bf16_t> {
  static constexpr DType value = DType::bf16;
};

namespace detail {
HEADRECON_HOST_DEVICE inline std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
HEADRECON_HOST_DEVICE inline float bits_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
}  // namespace detail

/// bfloat16 -> float (exact).
HEADRECON_HOST_DEVICE inline float to_float(bf16_t v) {
  return detail::bits_float(std::uint32_t(v.bits) << 16);
}

/// float -> bfloat16, round to nearest even; NaN stays a (quiet) NaN.
HEADRECON_HOST_DEVICE inline bf16_t to_bf16(float f) {
  const std::uint32_t u = detail::float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t{std::uint16_t((u >> 16) | 0x40u)};
  const std::uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);
  return bf16_t{std::uint16_t(rounded >> 16)};
}

/// binary16 -> float (exact, subnormals included).
HEADRECON_HOST_DEVICE inline float to_float(f16_t v) {
  const std::uint32_t sign = std::uint32_t(v.bits & 0x8000u) << 16;
  const std::uint32_t exp = (v.bits >> 10) & 0x1fu;
  const std::uint32_t man = v.bits & 0x3ffu;
  if (exp == 0x1f) return detail::bits_float(sign | 0x7f800000u | (man << 13));
  if (exp != 0) return detail::bits_float(sign | ((exp + 112u) << 23) | (man << 13));
  // Zero or subnormal: value = man * 2^-24, exact in float.
  const float mag = float(man) * 5.9604644775390625e-8f;
  return sign ? -mag : mag;
}

/// float -> binary16, round to nearest even; overflow gives infinity.
HEADRECON_HOST_DEVICE inline f16_t to_f16(float f) {
  const std::uint32_t u = detail::float_bits(f);
  const std::uint16_t sign = std::uint16_t((u >> 16) & 0x8000u);
  const std::uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return f16_t{std::uint16_t(sign | 0x7e00u | ((abs >> 13) & 0x3ffu))};
  if (abs >= 0x477ff000u) return f16_t{std::uint16_t(sign | 0x7c00u)};  // rounds to >= 65520
  if (abs >= 0x38800000u) {  // normal half: exponent >= -14
    const std::uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
    return f16_t{std::uint16_t(sign | ((rounded - 0x38000000u) >> 13))};
  }
  if (abs < 0x33000000u) return f16_t{sign};  // below half the smallest subnormal
  // Subnormal half: shift the full significand, round to nearest even.
  const std::uint32_t e = abs >> 23;
  const std::uint32_t m = (abs & 0x7fffffu) | 0x800000u;
  const std::uint32_t shift = 126u - e;  // 14..24
  const std::uint32_t half_bits = m >> shift;
  const std::uint32_t rem = m & ((1u << shift) - 1u);
  const std::uint32_t halfway = 1u << (shift - 1u);
  const std::uint32_t up = (rem > halfway || (rem == halfway && (half_bits & 1u))) ? 1u : 0u;
  return f16_t{std::uint16_t(sign | (half_bits + up))};
}

HEADRECON_HOST_DEVICE inline float to_float(float v) { return v; }

/// Converts a float to element type T (identity for float).
template <class T>
HEADRECON_HOST_DEVICE inline T from_float(float f) {
  if constexpr (std::is_same_v<T, float>) {
    return f;
  } else if constexpr (std::is_same_v<T, f16_t>) {
    return to_f16(f);
  } else {
    return to_bf16(f);
  }
}

}  // namespace headrecon
