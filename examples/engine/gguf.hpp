#pragma once
// A GGUF (version 3) reader for the example engine: the file is memory-mapped
// read-only; every count, length, offset, size and type is checked against
// the file and the maxima of GgufFile (max_array_length elements per array,
// max_nested_items array elements that are themselves arrays in the whole
// file, max_array_depth levels) before anything is allocated for it, and every
// error names the file and the key or tensor at fault. Dequantizes F32, F16, BF16, F64, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
// Q2_K..Q6_K and Q8_K to float. Format: ggml docs/gguf.md; block layouts:
// ggml-common.h (all little-endian).

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "headrecon/dtype.hpp"
#include "headrecon/error.hpp"

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__)
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the GGUF reader assumes a little-endian host");
#endif

namespace headrecon_engine {

using headrecon::Error;
using headrecon::detail::fail;

/// Metadata value types of GGUF.
enum class GgufType : std::uint32_t {
  uint8 = 0, int8 = 1, uint16 = 2, int16 = 3, uint32 = 4, int32 = 5, float32 = 6,
  boolean = 7, string = 8, array = 9, uint64 = 10, int64 = 11, float64 = 12,
};

inline const char* gguf_type_name(GgufType t) {
  static const char* names[] = {"UINT8",   "INT8",  "UINT16", "INT16", "UINT32", "INT32", "FLOAT32",
                                "BOOL",    "STRING", "ARRAY", "UINT64", "INT64", "FLOAT64"};
  const auto i = std::uint32_t(t);
  return i < 13 ? names[i] : "?";
}

/// ggml tensor types that a GGUF file may name (the ids are part of the format).
enum class GgmlType : std::uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22,
  IQ4_XS = 23, I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
  TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39,
};

/// Block geometry of a ggml type: `block` elements take `bytes` bytes.
struct GgmlTypeInfo {
  const char* name = nullptr;  // nullptr: unknown type id
  std::uint32_t block = 0, bytes = 0;
  bool dequantizable = false;  // this reader can convert it to float
};

inline GgmlTypeInfo ggml_type_info(std::uint32_t id) {
  constexpr std::uint32_t QK = 256;
  switch (GgmlType(id)) {
    case GgmlType::F32: return {"F32", 1, 4, true};
    case GgmlType::F16: return {"F16", 1, 2, true};
    case GgmlType::BF16: return {"BF16", 1, 2, true};
    case GgmlType::F64: return {"F64", 1, 8, true};
    case GgmlType::Q4_0: return {"Q4_0", 32, 2 + 16, true};
    case GgmlType::Q4_1: return {"Q4_1", 32, 2 + 2 + 16, true};
    case GgmlType::Q5_0: return {"Q5_0", 32, 2 + 4 + 16, true};
    case GgmlType::Q5_1: return {"Q5_1", 32, 2 + 2 + 4 + 16, true};
    case GgmlType::Q8_0: return {"Q8_0", 32, 2 + 32, true};
    case GgmlType::Q8_1: return {"Q8_1", 32, 2 + 2 + 32, false};
    case GgmlType::Q2_K: return {"Q2_K", QK, QK / 16 + QK / 4 + 2 + 2, true};
    case GgmlType::Q3_K: return {"Q3_K", QK, QK / 8 + QK / 4 + 12 + 2, true};
    case GgmlType::Q4_K: return {"Q4_K", QK, 2 + 2 + 12 + QK / 2, true};
    case GgmlType::Q5_K: return {"Q5_K", QK, 2 + 2 + 12 + QK / 8 + QK / 2, true};
    case GgmlType::Q6_K: return {"Q6_K", QK, QK / 2 + QK / 4 + QK / 16 + 2, true};
    case GgmlType::Q8_K: return {"Q8_K", QK, 4 + QK + QK / 8, true};
    case GgmlType::IQ2_XXS: return {"IQ2_XXS", QK, 2 + QK / 4, false};
    case GgmlType::IQ2_XS: return {"IQ2_XS", QK, 2 + QK / 4 + QK / 32, false};
    case GgmlType::IQ3_XXS: return {"IQ3_XXS", QK, 2 + QK / 4 + QK / 8, false};
    case GgmlType::IQ1_S: return {"IQ1_S", QK, 2 + QK / 8 + QK / 16, false};
    case GgmlType::IQ4_NL: return {"IQ4_NL", 32, 2 + 16, false};
    case GgmlType::IQ3_S: return {"IQ3_S", QK, 2 + QK / 4 + QK / 8 + QK / 32 + 4, false};
    case GgmlType::IQ2_S: return {"IQ2_S", QK, 2 + QK / 4 + QK / 16, false};
    case GgmlType::IQ4_XS: return {"IQ4_XS", QK, 2 + 2 + QK / 2 + QK / 64, false};
    case GgmlType::I8: return {"I8", 1, 1, false};
    case GgmlType::I16: return {"I16", 1, 2, false};
    case GgmlType::I32: return {"I32", 1, 4, false};
    case GgmlType::I64: return {"I64", 1, 8, false};
    case GgmlType::IQ1_M: return {"IQ1_M", QK, QK / 8 + QK / 16 + QK / 32, false};
    case GgmlType::TQ1_0: return {"TQ1_0", QK, 2 + 4 * 13, false};
    case GgmlType::TQ2_0: return {"TQ2_0", QK, 2 + 64, false};
    case GgmlType::MXFP4: return {"MXFP4", 32, 1 + 16, false};
  }
  return {};
}

inline std::string ggml_type_name(std::uint32_t id) {
  const GgmlTypeInfo t = ggml_type_info(id);
  return t.name ? std::string(t.name) : "unknown type " + std::to_string(id);
}

/// One metadata value. Scalars: integers in `i` (signed types) or `u`
/// (unsigned and bool), floats in `f`, strings in `s`. Arrays: `elem` names
/// the element type and exactly one of strs / ints / uints / floats / items
/// (nested arrays) holds the `n` elements.
struct GgufValue {
  GgufType type = GgufType::uint8;
  std::int64_t i = 0;
  std::uint64_t u = 0;
  double f = 0;
  std::string s;
  GgufType elem = GgufType::uint8;
  std::uint64_t n = 0;
  std::vector<std::string> strs;
  std::vector<std::int64_t> ints;
  std::vector<std::uint64_t> uints;
  std::vector<double> floats;
  std::vector<GgufValue> items;

  bool is_integer() const {
    switch (type) {
      case GgufType::uint8: case GgufType::int8: case GgufType::uint16: case GgufType::int16:
      case GgufType::uint32: case GgufType::int32: case GgufType::uint64: case GgufType::int64:
        return true;
      default:
        return false;
    }
  }
  bool is_signed() const {
    return type == GgufType::int8 || type == GgufType::int16 || type == GgufType::int32 ||
           type == GgufType::int64;
  }
};

/// One tensor: name, extents ne[0..n_dims) (ne[0] is the contiguous one, the
/// row length), ggml type, and its bytes inside the mapping.
struct GgufTensor {
  std::string name;
  std::uint32_t n_dims = 0;
  std::uint64_t ne[4] = {1, 1, 1, 1};
  std::uint32_t type = 0;
  std::uint64_t offset = 0;  // relative to the data section
  std::uint64_t n_elements = 0, n_bytes = 0;
  const std::uint8_t* data = nullptr;

  /// Number of rows (product of ne[1..]).
  std::uint64_t rows() const { return ne[1] * ne[2] * ne[3]; }
  std::string shape_str() const {
    std::string s = "[";
    for (std::uint32_t d = 0; d < n_dims; ++d) s += (d ? ", " : "") + std::to_string(ne[d]);
    return s + "]";
  }
};

namespace detail {

/// A read-only private memory mapping of a whole file.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) fail(path, ": cannot open: ", std::strerror(errno));
    struct stat st {};
    if (::fstat(fd_, &st) != 0) {
      const int e = errno;
      ::close(fd_);
      fail(path, ": cannot stat: ", std::strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd_);
      fail(path, ": not a regular file");
    }
    size_ = std::uint64_t(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
      if (p == MAP_FAILED) {
        const int e = errno;
        ::close(fd_);
        fail(path, ": cannot mmap ", size_, " bytes: ", std::strerror(e));
      }
      data_ = static_cast<const std::uint8_t*>(p);
    }
  }
  ~MappedFile() {
    if (data_) ::munmap(const_cast<std::uint8_t*>(data_), size_);
    if (fd_ >= 0) ::close(fd_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::uint8_t* data() const { return data_; }
  std::uint64_t size() const { return size_; }

 private:
  int fd_ = -1;
  const std::uint8_t* data_ = nullptr;
  std::uint64_t size_ = 0;
};

/// Bounds-checked little-endian reads over the mapping.
class Cursor {
 public:
  Cursor(const std::string& path, const std::uint8_t* data, std::uint64_t size)
      : path_(path), data_(data), size_(size) {}

  std::uint64_t pos() const { return pos_; }
  std::uint64_t remaining() const { return size_ - pos_; }

  void need(std::uint64_t n, const std::string& what) const {
    if (n > size_ - pos_)
      fail(path_, ": truncated file: ", what, " needs ", n, " bytes at offset ", pos_, " but only ",
           size_ - pos_, " remain (file size ", size_, ")");
  }
  template <class T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string read_string(const std::string& what) {
    const auto len = read<std::uint64_t>(what + " (string length)");
    if (len > size_ - pos_)
      fail(path_, ": truncated or malformed file: ", what, ": string length ", len, " at offset ",
           pos_ - 8, " exceeds the remaining ", size_ - pos_, " bytes of the file");
    std::string s(reinterpret_cast<const char*>(data_ + pos_), std::size_t(len));
    pos_ += len;
    return s;
  }

 private:
  const std::string& path_;
  const std::uint8_t* data_;
  std::uint64_t size_, pos_ = 0;
};

inline float f16_to_float(const std::uint8_t* p) {
  std::uint16_t b;
  std::memcpy(&b, p, 2);
  return headrecon::to_float(headrecon::f16_t{b});
}

// ---- dequantization of one row of n elements (n a multiple of the block) ----
// Each routine follows the block struct of ggml-common.h field by field.

inline void deq_q4_0(const std::uint8_t* b, float* y, std::uint64_t nb) {
  for (std::uint64_t i = 0; i < nb; ++i, b += 18, y += 32) {  // d | qs[16]
    const float d = f16_to_float(b);
    const std::uint8_t* qs = b + 2;
    for (int j = 0; j < 16; ++j) {
      y[j] = float(int(qs[j] & 0x0F) - 8) * d;
      y[j + 16] = float(int(qs[j] >> 4) - 8) * d;
    }
  }
}
inline void deq_q4_1(const std::uint8_t* b, float* y, std::uint64_t nb) {
  for (std::uint64_t i = 0; i < nb; ++i, b += 20, y += 32) {  // d | m | qs[16]
    const float d = f16_to_float(b), m = f16_to_float(b + 2);
    const std::uint8_t* qs = b + 4;
    for (int j = 0; j < 16; ++j) {
      y[j] = float(qs[j] & 0x0F) * d + m;
      y[j + 16] = float(qs[j] >> 4) * d + m;
    }
  }
}
inline void deq_q5_0(const std::uint8_t* b, float* y, std::uint64_t nb) {
  for (std::uint64_t i = 0; i < nb; ++i, b += 22, y += 32) {  // d | qh[4] | qs[16]
    const float d = f16_to_float(b);
    std::uint32_t qh;
    std::memcpy(&qh, b + 2, 4);
    const std::uint8_t* qs = b + 6;
    for (int j = 0; j < 16; ++j) {
      const int hi0 = int((qh >> j) & 1u) << 4, hi1 = int((qh >> (j + 16)) & 1u) << 4;
      y[j] = float(((qs[j] & 0x0F) | hi0) - 16) * d;
      y[j + 16] = float(((qs[j] >> 4) | hi1) - 16) * d;
    }
  }
}
inline void deq_q5_1(const std::uint8_t* b, float* y, std::uint64_t nb) {
  for (std::uint64_t i = 0; i < nb; ++i, b += 24, y += 32) {  // d | m | qh[4] | qs[16]
    const float d = f16_to_float(b), m = f16_to_float(b + 2);
    std::uint32_t qh;
    std::memcpy(&qh, b + 4, 4);
    const std::uint8_t* qs = b + 8;
    for (int j = 0; j < 16; ++j) {
      const int hi0 = int((qh >> j) & 1u) << 4, hi1 = int((qh >> (j + 16)) & 1u) << 4;
      y[j] = float((qs[j] & 0x0F) | hi0) * d + m;
      y[j + 16] = float((qs[j] >> 4) | hi1) * d + m;
    }
  }
}
inline void deq_q8_0(const std::uint8_t* b, float* y, std::uint64_t nb) {
  for (std::uint64_t i = 0; i < nb; ++i, b += 34, y += 32) {  // d | qs[32] (int8)
    const float d = f16_to_float(b);
    for (int j = 0; j < 32; ++j) y[j] = float(std::int8_t(b[2 + j])) * d;
  }
}
inline void deq_q2_k(const std::uint8_t* b, float* y, std::uint64_t nb) {
  for (std::uint64_t i = 0; i < nb; ++i, b += 84) {  // scales[16] | qs[64] | d | dmin
    const std::uint8_t* sc = b;
    const std::uint8_t* q = b + 16;
    const float d = f16_to_float(b + 80), dmin = f16_to_float(b + 82);
    int is = 0;
    for (int half = 0; half < 2; ++half, q += 32)  // 128 values per 32 bytes of qs
      for (int shift = 0; shift < 8; shift += 2)
        for (int part = 0; part < 2; ++part) {  // 16 values from q[0..16) then q[16..32)
          const std::uint8_t s = sc[is++];
          const float dl = d * float(s & 0x0F), ml = dmin * float(s >> 4);
          for (int l = 0; l < 16; ++l) *y++ = dl * float((q[part * 16 + l] >> shift) & 3) - ml;
        }
  }
}
inline void deq_q3_k(const std::uint8_t* b, float* y, std::uint64_t nb) {
  for (std::uint64_t i = 0; i < nb; ++i, b += 110) {  // hmask[32] | qs[64] | scales[12] | d
    const std::uint8_t* hm = b;
    const std::uint8_t* q = b + 32;
    const std::uint8_t* s12 = b + 96;
    const float d = f16_to_float(b + 108);
    // 16 six-bit scales: low 4 bits from s12[0..8) (nibbles), high 2 bits from s12[8..12).
    int scale[16];
    for (int j = 0; j < 16; ++j) {
      const int lo = j < 8 ? (s12[j] & 0x0F) : (s12[j - 8] >> 4);
      const int hi = (s12[8 + (j % 4)] >> (2 * (j / 4))) & 3;
      scale[j] = (lo | (hi << 4)) - 32;
    }
    int is = 0;
    std::uint8_t m = 1;
    for (int half = 0; half < 2; ++half, q += 32)
      for (int shift = 0; shift < 8; shift += 2, m = std::uint8_t(m << 1))
        for (int part = 0; part < 2; ++part) {
          const float dl = d * float(scale[is++]);
          for (int l = 0; l < 16; ++l) {
            const int k = part * 16 + l;
            const int v = int((q[k] >> shift) & 3) - ((hm[k] & m) ? 0 : 4);
            *y++ = dl * float(v);
          }
        }
  }
}
/// Scale and min j (0..7) of a Q4_K/Q5_K super-block (6 bits each in 12 bytes).
inline void scale_min_k4(int j, const std::uint8_t* q, std::uint8_t& sc, std::uint8_t& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = std::uint8_t((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4));
    m = std::uint8_t((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}
inline void deq_q4_k(const std::uint8_t* b, float* y, std::uint64_t nb) {
  for (std::uint64_t i = 0; i < nb; ++i, b += 144) {  // d | dmin | scales[12] | qs[128]
    const float d = f16_to_float(b), dmin = f16_to_float(b + 2);
    const std::uint8_t* scales = b + 4;
    const std::uint8_t* q = b + 16;
    for (int j = 0; j < 4; ++j, q += 32) {  // 64 values per 32 bytes
      std::uint8_t sc, m;
      scale_min_k4(2 * j, scales, sc, m);
      const float d1 = d * sc, m1 = dmin * m;
      scale_min_k4(2 * j + 1, scales, sc, m);
      const float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; ++l) *y++ = d1 * float(q[l] & 0x0F) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * float(q[l] >> 4) - m2;
    }
  }
}
inline void deq_q5_k(const std::uint8_t* b, float* y, std::uint64_t nb) {
  for (std::uint64_t i = 0; i < nb; ++i, b += 176) {  // d | dmin | scales[12] | qh[32] | qs[128]
    const float d = f16_to_float(b), dmin = f16_to_float(b + 2);
    const std::uint8_t* scales = b + 4;
    const std::uint8_t* qh = b + 16;
    const std::uint8_t* q = b + 48;
    for (int j = 0; j < 4; ++j, q += 32) {
      std::uint8_t sc, m;
      scale_min_k4(2 * j, scales, sc, m);
      const float d1 = d * sc, m1 = dmin * m;
      scale_min_k4(2 * j + 1, scales, sc, m);
      const float d2 = d * sc, m2 = dmin * m;
      const std::uint8_t u1 = std::uint8_t(1u << (2 * j)), u2 = std::uint8_t(2u << (2 * j));
      for (int l = 0; l < 32; ++l) *y++ = d1 * float((q[l] & 0x0F) + ((qh[l] & u1) ? 16 : 0)) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * float((q[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
    }
  }
}
inline void deq_q6_k(const std::uint8_t* b, float* y, std::uint64_t nb) {
  for (std::uint64_t i = 0; i < nb; ++i, b += 210) {  // ql[128] | qh[64] | scales[16] | d
    const std::uint8_t* ql = b;
    const std::uint8_t* qh = b + 128;
    const std::int8_t* sc = reinterpret_cast<const std::int8_t*>(b + 192);
    const float d = f16_to_float(b + 208);
    for (int half = 0; half < 2; ++half, ql += 64, qh += 32, sc += 8, y += 128)
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = int((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = int((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = int((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = int((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = d * float(sc[is]) * float(q1);
        y[l + 32] = d * float(sc[is + 2]) * float(q2);
        y[l + 64] = d * float(sc[is + 4]) * float(q3);
        y[l + 96] = d * float(sc[is + 6]) * float(q4);
      }
  }
}
inline void deq_q8_k(const std::uint8_t* b, float* y, std::uint64_t nb) {
  for (std::uint64_t i = 0; i < nb; ++i, b += 292, y += 256) {  // d (f32) | qs[256] | bsums[16]
    float d;
    std::memcpy(&d, b, 4);
    for (int j = 0; j < 256; ++j) y[j] = d * float(std::int8_t(b[4 + j]));
  }
}

}  // namespace detail

/// Converts `n` elements of ggml type `type` at `src` to float. `n` must be a
/// multiple of the type's block size; throws Error for a type this reader
/// cannot convert. `what` names the tensor in errors.
inline void dequantize(std::uint32_t type, const std::uint8_t* src, float* dst, std::uint64_t n,
                       const std::string& what = "tensor") {
  const GgmlTypeInfo info = ggml_type_info(type);
  if (!info.name) fail(what, ": unknown ggml type id ", type);
  if (!info.dequantizable)
    fail(what, ": ggml type ", info.name, " cannot be dequantized by this reader");
  if (n % info.block != 0)
    fail(what, ": ", n, " elements are not a multiple of the ", info.name, " block of ", info.block);
  const std::uint64_t nb = n / info.block;
  switch (GgmlType(type)) {
    case GgmlType::F32: std::memcpy(dst, src, n * 4); break;
    case GgmlType::F16:
      for (std::uint64_t i = 0; i < n; ++i) dst[i] = detail::f16_to_float(src + 2 * i);
      break;
    case GgmlType::BF16:
      for (std::uint64_t i = 0; i < n; ++i) {
        std::uint16_t b;
        std::memcpy(&b, src + 2 * i, 2);
        dst[i] = headrecon::to_float(headrecon::bf16_t{b});
      }
      break;
    case GgmlType::F64:
      for (std::uint64_t i = 0; i < n; ++i) {
        double v;
        std::memcpy(&v, src + 8 * i, 8);
        dst[i] = float(v);
      }
      break;
    case GgmlType::Q4_0: detail::deq_q4_0(src, dst, nb); break;
    case GgmlType::Q4_1: detail::deq_q4_1(src, dst, nb); break;
    case GgmlType::Q5_0: detail::deq_q5_0(src, dst, nb); break;
    case GgmlType::Q5_1: detail::deq_q5_1(src, dst, nb); break;
    case GgmlType::Q8_0: detail::deq_q8_0(src, dst, nb); break;
    case GgmlType::Q2_K: detail::deq_q2_k(src, dst, nb); break;
    case GgmlType::Q3_K: detail::deq_q3_k(src, dst, nb); break;
    case GgmlType::Q4_K: detail::deq_q4_k(src, dst, nb); break;
    case GgmlType::Q5_K: detail::deq_q5_k(src, dst, nb); break;
    case GgmlType::Q6_K: detail::deq_q6_k(src, dst, nb); break;
    case GgmlType::Q8_K: detail::deq_q8_k(src, dst, nb); break;
    default: fail(what, ": ggml type ", info.name, " cannot be dequantized by this reader");
  }
}

/// A parsed, validated GGUF v3 file. Metadata is decoded eagerly; tensor data
/// stays in the read-only mapping until dequantize() converts it.
class GgufFile {
 public:
  static constexpr std::uint32_t max_dims = 4;        // GGML_MAX_DIMS
  static constexpr std::size_t max_name_bytes = 64;   // GGML_MAX_NAME, terminator included
  static constexpr int max_array_depth = 8;
  /// Elements of one metadata array (a vocabulary has ~10^5; 2^24 leaves room).
  static constexpr std::uint64_t max_array_length = std::uint64_t(1) << 24;
  /// Array elements that are arrays, whole file: each costs ~200 bytes of
  /// memory for 12 bytes of file, so their number is capped (llama.cpp
  /// rejects nested arrays altogether).
  static constexpr std::uint64_t max_nested_items = std::uint64_t(1) << 16;

  explicit GgufFile(std::string path) : path_(std::move(path)), map_(path_) { parse(); }

  const std::string& path() const { return path_; }
  std::uint32_t version() const { return version_; }
  std::uint64_t file_size() const { return map_.size(); }
  std::uint64_t alignment() const { return alignment_; }
  /// Offset of the tensor data section from the start of the file.
  std::uint64_t data_offset() const { return data_offset_; }

  /// Metadata in file order.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return kv_; }
  const std::vector<GgufTensor>& tensors() const { return tensors_; }

  /// The value of `key`, or nullptr.
  const GgufValue* find(const std::string& key) const {
    auto it = kv_index_.find(key);
    return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
  }
  /// The value of `key`; throws Error naming the file and key when absent.
  const GgufValue& get(const std::string& key) const {
    const GgufValue* v = find(key);
    if (!v) fail(path_, ": missing metadata key '", key, "'");
    return *v;
  }
  /// An unsigned integer value (any integer type holding a value >= 0).
  std::uint64_t get_uint(const std::string& key) const {
    const GgufValue& v = get(key);
    if (!v.is_integer()) wrong_type(key, v, "an integer");
    if (v.is_signed() && v.i < 0) fail(path_, ": metadata key '", key, "' is negative (", v.i, ")");
    return v.is_signed() ? std::uint64_t(v.i) : v.u;
  }
  std::uint64_t get_uint(const std::string& key, std::uint64_t dflt) const {
    return find(key) ? get_uint(key) : dflt;
  }
  /// A float value (FLOAT32 or FLOAT64).
  double get_float(const std::string& key) const {
    const GgufValue& v = get(key);
    if (v.type != GgufType::float32 && v.type != GgufType::float64) wrong_type(key, v, "a float");
    return v.f;
  }
  double get_float(const std::string& key, double dflt) const {
    return find(key) ? get_float(key) : dflt;
  }
  bool get_bool(const std::string& key, bool dflt) const {
    const GgufValue* v = find(key);
    if (!v) return dflt;
    if (v->type != GgufType::boolean) wrong_type(key, *v, "a bool");
    return v->u != 0;
  }
  const std::string& get_string(const std::string& key) const {
    const GgufValue& v = get(key);
    if (v.type != GgufType::string) wrong_type(key, v, "a string");
    return v.s;
  }
  const std::vector<std::string>& get_string_array(const std::string& key) const {
    const GgufValue& v = get(key);
    if (v.type != GgufType::array || v.elem != GgufType::string) wrong_type(key, v, "an array of strings");
    return v.strs;
  }
  /// An array of signed integers.
  const std::vector<std::int64_t>& get_int_array(const std::string& key) const {
    const GgufValue& v = get(key);
    if (v.type != GgufType::array || !(v.elem == GgufType::int8 || v.elem == GgufType::int16 ||
                                       v.elem == GgufType::int32 || v.elem == GgufType::int64))
      wrong_type(key, v, "an array of signed integers");
    return v.ints;
  }

  /// The tensor `name`, or nullptr.
  const GgufTensor* find_tensor(const std::string& name) const {
    auto it = tensor_index_.find(name);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
  }
  /// The tensor `name`; throws Error naming the file and tensor when absent.
  const GgufTensor& tensor(const std::string& name) const {
    const GgufTensor* t = find_tensor(name);
    if (!t) fail(path_, ": missing tensor '", name, "'");
    return *t;
  }

  /// The whole tensor as float (n_elements values, ne[0] fastest).
  std::vector<float> dequantize(const GgufTensor& t) const {
    std::vector<float> out(std::size_t(t.n_elements));
    headrecon_engine::dequantize(t.type, t.data, out.data(), t.n_elements,
                                 path_ + ": tensor '" + t.name + "'");
    return out;
  }

 private:
  [[noreturn]] void wrong_type(const std::string& key, const GgufValue& v, const char* expected) const {
    std::string got = gguf_type_name(v.type);
    if (v.type == GgufType::array) got += std::string(" of ") + gguf_type_name(v.elem);
    fail(path_, ": metadata key '", key, "' is ", got, ", expected ", expected);
  }

  static std::uint64_t scalar_size(GgufType t) {
    switch (t) {
      case GgufType::uint8: case GgufType::int8: case GgufType::boolean: return 1;
      case GgufType::uint16: case GgufType::int16: return 2;
      case GgufType::uint32: case GgufType::int32: case GgufType::float32: return 4;
      case GgufType::uint64: case GgufType::int64: case GgufType::float64: return 8;
      case GgufType::string: return 8;  // at least its length field
      case GgufType::array: return 12;  // at least its type and count
    }
    return 0;
  }

  GgufType read_type(detail::Cursor& c, const std::string& what) {
    const auto t = c.read<std::uint32_t>(what + " (value type)");
    if (t > 12) fail(path_, ": ", what, ": invalid value type ", t, " at offset ", c.pos() - 4);
    return GgufType(t);
  }

  /// Reads a scalar of type t into v (integers, floats, bool, string).
  void read_scalar(detail::Cursor& c, GgufType t, GgufValue& v, const std::string& what) {
    v.type = t;
    switch (t) {
      case GgufType::uint8: v.u = c.read<std::uint8_t>(what); break;
      case GgufType::int8: v.i = c.read<std::int8_t>(what); break;
      case GgufType::uint16: v.u = c.read<std::uint16_t>(what); break;
      case GgufType::int16: v.i = c.read<std::int16_t>(what); break;
      case GgufType::uint32: v.u = c.read<std::uint32_t>(what); break;
      case GgufType::int32: v.i = c.read<std::int32_t>(what); break;
      case GgufType::uint64: v.u = c.read<std::uint64_t>(what); break;
      case GgufType::int64: v.i = c.read<std::int64_t>(what); break;
      case GgufType::float32: v.f = c.read<float>(what); break;
      case GgufType::float64: v.f = c.read<double>(what); break;
      case GgufType::boolean: {
        const auto b = c.read<std::uint8_t>(what);
        if (b > 1) fail(path_, ": ", what, ": invalid bool byte ", int(b), " at offset ", c.pos() - 1);
        v.u = b;
        break;
      }
      case GgufType::string: v.s = c.read_string(what); break;
      case GgufType::array: fail(path_, ": ", what, ": internal error (array read as scalar)");
    }
  }

  void read_value(detail::Cursor& c, GgufType t, GgufValue& v, const std::string& what, int depth) {
    if (t != GgufType::array) return read_scalar(c, t, v, what);
    if (depth >= max_array_depth)
      fail(path_, ": ", what, ": arrays nested deeper than ", max_array_depth);
    v.type = GgufType::array;
    v.elem = read_type(c, what + " (array element type)");
    v.n = c.read<std::uint64_t>(what + " (array length)");
    const std::uint64_t min_size = scalar_size(v.elem);
    if (v.n > c.remaining() / min_size)
      fail(path_, ": truncated or malformed file: ", what, ": array of ", v.n, " ",
           gguf_type_name(v.elem), " at offset ", c.pos() - 12, " cannot fit in the remaining ",
           c.remaining(), " bytes of the file");
    if (v.n > max_array_length)
      fail(path_, ": ", what, ": array of ", v.n, " ", gguf_type_name(v.elem), " at offset ", c.pos() - 12,
           " exceeds the maximum of ", max_array_length, " elements");
    if (v.elem == GgufType::array) {
      nested_items_ += v.n;
      if (nested_items_ > max_nested_items)
        fail(path_, ": ", what, ": array of ", v.n, " arrays at offset ", c.pos() - 12, " brings the file's nested "
             "array elements to ", nested_items_, ", more than the maximum of ", max_nested_items);
    }
    const std::size_t n = std::size_t(v.n);
    GgufValue tmp;
    switch (v.elem) {
      case GgufType::string:
        v.strs.reserve(n);
        for (std::size_t k = 0; k < n; ++k)
          v.strs.push_back(c.read_string(what + "[" + std::to_string(k) + "]"));
        break;
      case GgufType::float32: case GgufType::float64:
        v.floats.reserve(n);
        for (std::size_t k = 0; k < n; ++k) {
          read_scalar(c, v.elem, tmp, what);
          v.floats.push_back(tmp.f);
        }
        break;
      case GgufType::int8: case GgufType::int16: case GgufType::int32: case GgufType::int64:
        v.ints.reserve(n);
        for (std::size_t k = 0; k < n; ++k) {
          read_scalar(c, v.elem, tmp, what);
          v.ints.push_back(tmp.i);
        }
        break;
      case GgufType::array:
        // Each item is an array without a type tag of its own (gguf.md, gguf-py):
        // element type, count, elements. Grown item by item, each read (>= 12
        // bytes of file) before it is stored.
        for (std::size_t k = 0; k < n; ++k) {
          GgufValue x;
          read_value(c, GgufType::array, x, what + "[" + std::to_string(k) + "]", depth + 1);
          v.items.push_back(std::move(x));
        }
        break;
      default:  // unsigned integers and bool
        v.uints.reserve(n);
        for (std::size_t k = 0; k < n; ++k) {
          read_scalar(c, v.elem, tmp, what);
          v.uints.push_back(tmp.u);
        }
        break;
    }
  }

  void parse() {
    detail::Cursor c(path_, map_.data(), map_.size());
    c.need(4, "the magic 'GGUF'");
    if (std::memcmp(map_.data(), "GGUF", 4) != 0) {
      const std::uint8_t* m = map_.data();
      fail(path_, ": not a GGUF file (magic bytes ", int(m[0]), " ", int(m[1]), " ", int(m[2]), " ",
           int(m[3]), ", expected 'GGUF')");
    }
    (void)c.read<std::uint32_t>("magic");
    version_ = c.read<std::uint32_t>("the version");
    if (version_ != 3)
      fail(path_, ": GGUF version ", version_, " is not supported (this reader reads version 3)");
    const auto n_tensors = c.read<std::uint64_t>("the tensor count");
    const auto n_kv = c.read<std::uint64_t>("the metadata count");
    // Every key/value takes at least 8 + 4 + 1 bytes, every tensor info 8 + 4 + 8 + 4 + 8.
    if (n_kv > c.remaining() / 13)
      fail(path_, ": truncated or malformed file: metadata count ", n_kv, " cannot fit in a file of ",
           map_.size(), " bytes");
    if (n_tensors > c.remaining() / 32)
      fail(path_, ": truncated or malformed file: tensor count ", n_tensors, " cannot fit in a file of ",
           map_.size(), " bytes");

    // Grown as records are read (a record in memory is ~15x its minimum in the file).
    for (std::uint64_t k = 0; k < n_kv; ++k) {
      std::string key = c.read_string("metadata key #" + std::to_string(k));
      const std::string what = "metadata key '" + key + "'";
      if (kv_index_.count(key)) fail(path_, ": duplicate ", what);
      GgufValue v;
      const GgufType t = read_type(c, what);
      read_value(c, t, v, what, 0);
      kv_index_.emplace(key, kv_.size());
      kv_.emplace_back(std::move(key), std::move(v));
    }

    if (const GgufValue* a = find("general.alignment")) {
      if (a->type != GgufType::uint32)
        fail(path_, ": metadata key 'general.alignment' is ", gguf_type_name(a->type), ", expected UINT32");
      if (a->u == 0 || (a->u & (a->u - 1)) != 0)
        fail(path_, ": metadata key 'general.alignment' = ", a->u, " is not a power of two");
      alignment_ = a->u;
    }

    for (std::uint64_t k = 0; k < n_tensors; ++k) {
      GgufTensor& t = tensors_.emplace_back();
      t.name = c.read_string("name of tensor #" + std::to_string(k));
      const std::string what = "tensor '" + t.name + "'";
      if (t.name.size() >= max_name_bytes)
        fail(path_, ": ", what, ": name of ", t.name.size(), " bytes is longer than ", max_name_bytes - 1);
      if (tensor_index_.count(t.name)) fail(path_, ": duplicate ", what);
      tensor_index_.emplace(t.name, std::size_t(k));
      t.n_dims = c.read<std::uint32_t>(what + " (n_dims)");
      if (t.n_dims == 0 || t.n_dims > max_dims)
        fail(path_, ": ", what, ": n_dims = ", t.n_dims, " (expected 1..", max_dims, ")");
      std::uint64_t n = 1;
      for (std::uint32_t d = 0; d < t.n_dims; ++d) {
        t.ne[d] = c.read<std::uint64_t>(what + " (ne[" + std::to_string(d) + "])");
        if (t.ne[d] == 0 || t.ne[d] > std::uint64_t(std::numeric_limits<std::int64_t>::max()))
          fail(path_, ": ", what, ": extent ne[", d, "] = ", t.ne[d], " is out of range");
        if (n > std::uint64_t(std::numeric_limits<std::int64_t>::max()) / t.ne[d])
          fail(path_, ": ", what, ": element count overflows (shape ", t.shape_str(), ")");
        n *= t.ne[d];
      }
      t.n_elements = n;
      t.type = c.read<std::uint32_t>(what + " (type)");
      const GgmlTypeInfo info = ggml_type_info(t.type);
      if (!info.name) fail(path_, ": ", what, ": unknown ggml type id ", t.type);
      if (t.ne[0] % info.block != 0)
        fail(path_, ": ", what, ": row length ne[0] = ", t.ne[0], " is not a multiple of the ",
             info.name, " block size ", info.block);
      if (n / info.block > std::numeric_limits<std::uint64_t>::max() / info.bytes)
        fail(path_, ": ", what, ": byte size overflows");
      t.n_bytes = n / info.block * info.bytes;
      t.offset = c.read<std::uint64_t>(what + " (data offset)");
      if (t.offset % alignment_ != 0)
        fail(path_, ": ", what, ": data offset ", t.offset, " is not a multiple of the alignment ",
             alignment_);
    }

    const std::uint64_t end_of_infos = c.pos();
    data_offset_ = (end_of_infos + alignment_ - 1) / alignment_ * alignment_;
    if (data_offset_ > map_.size() && n_tensors > 0)
      fail(path_, ": truncated file: the tensor data section starts at offset ", data_offset_,
           " beyond the end of the file (", map_.size(), " bytes)");
    const std::uint64_t data_size = map_.size() > data_offset_ ? map_.size() - data_offset_ : 0;
    for (GgufTensor& t : tensors_) {
      if (t.offset > data_size || t.n_bytes > data_size - t.offset)
        fail(path_, ": truncated or malformed file: tensor '", t.name, "' (", ggml_type_name(t.type),
             " ", t.shape_str(), ", ", t.n_bytes, " bytes at data offset ", t.offset,
             ") extends past the end of the file (data section holds ", data_size, " bytes)");
      t.data = map_.data() + data_offset_ + t.offset;
    }
    // Tensors must not overlap.
    std::vector<const GgufTensor*> by_offset;
    for (const GgufTensor& t : tensors_) by_offset.push_back(&t);
    std::sort(by_offset.begin(), by_offset.end(),
              [](const GgufTensor* a, const GgufTensor* b) { return a->offset < b->offset; });
    for (std::size_t k = 1; k < by_offset.size(); ++k) {
      const GgufTensor& a = *by_offset[k - 1];
      const GgufTensor& b = *by_offset[k];
      if (a.offset + a.n_bytes > b.offset)
        fail(path_, ": tensors '", a.name, "' (bytes ", a.offset, "..", a.offset + a.n_bytes,
             ") and '", b.name, "' (from ", b.offset, ") overlap");
    }
  }

  std::string path_;
  detail::MappedFile map_;
  std::uint32_t version_ = 0;
  std::uint64_t alignment_ = 32;
  std::uint64_t data_offset_ = 0;
  std::uint64_t nested_items_ = 0;  // array elements that are arrays, so far
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::map<std::string, std::size_t> kv_index_;
  std::vector<GgufTensor> tensors_;
  std::map<std::string, std::size_t> tensor_index_;
};

}  // namespace headrecon_engine
