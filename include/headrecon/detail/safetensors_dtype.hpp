#pragma once
/// @file safetensors_dtype.hpp
/// The safetensors element types: names, sizes, the name of a C++ type, and
/// byte counts of shapes (overflow-checked).

#include <cstddef>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "headrecon/dtype.hpp"

namespace headrecon {

/// Size in bytes of one element of the safetensors dtype `name` ("F32",
/// "I64", ...), or 0 when the dtype is unknown or not byte-sized.
inline std::size_t safetensors_dtype_size(std::string_view name) {
  static constexpr std::pair<std::string_view, std::size_t> table[] = {
      {"BOOL", 1},    {"U8", 1},      {"I8", 1},       {"F8_E5M2", 1}, {"F8_E4M3", 1},
      {"F8_E8M0", 1}, {"I16", 2},     {"U16", 2},      {"F16", 2},     {"BF16", 2},
      {"I32", 4},     {"U32", 4},     {"F32", 4},      {"I64", 8},     {"U64", 8},
      {"F64", 8},     {"C64", 8},
  };
  for (const auto& [n, size] : table)
    if (n == name) return size;
  return 0;
}

/// The safetensors dtype name of C++ element type T (`safetensors_dtype<T>::name`).
template <class T>
struct safetensors_dtype;
#define HEADRECON_ST_DTYPE(T, N)                   \
  template <>                                      \
  struct safetensors_dtype<T> {                    \
    static constexpr std::string_view name = N;    \
  }
HEADRECON_ST_DTYPE(std::uint8_t, "U8");
HEADRECON_ST_DTYPE(std::int8_t, "I8");
HEADRECON_ST_DTYPE(std::uint16_t, "U16");
HEADRECON_ST_DTYPE(std::int16_t, "I16");
HEADRECON_ST_DTYPE(std::uint32_t, "U32");
HEADRECON_ST_DTYPE(std::int32_t, "I32");
HEADRECON_ST_DTYPE(std::uint64_t, "U64");
HEADRECON_ST_DTYPE(std::int64_t, "I64");
HEADRECON_ST_DTYPE(float, "F32");
HEADRECON_ST_DTYPE(double, "F64");
HEADRECON_ST_DTYPE(f16_t, "F16");
HEADRECON_ST_DTYPE(bf16_t, "BF16");
#undef HEADRECON_ST_DTYPE

namespace detail {

/// "[a, b, c]".
inline std::string shape_str(const std::vector<std::uint64_t>& shape) {
  std::ostringstream os;
  os << '[';
  for (std::size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

/// Bytes needed by `shape` of elements of `esize` bytes; false on uint64 overflow.
inline bool shape_bytes(const std::vector<std::uint64_t>& shape, std::uint64_t esize,
                        std::uint64_t& out) {
  std::uint64_t n = esize;
  bool zero = esize == 0;
  bool overflow = false;
  for (auto s : shape) {
    if (s == 0) zero = true;
    if (!overflow && s != 0 && n > std::numeric_limits<std::uint64_t>::max() / s) overflow = true;
    if (!overflow) n *= s;
  }
  if (zero) {
    out = 0;
    return true;
  }
  out = n;
  return !overflow;
}

}  // namespace detail
}  // namespace headrecon
