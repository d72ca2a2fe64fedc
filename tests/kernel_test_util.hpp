#pragma once
// Test helpers for the CPU kernels: random caches in every layout and dtype,
// HeadStreams over them, and a tolerance report that names the worst element.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "headrecon/block_quant.hpp"
#include "headrecon/head_stream.hpp"

namespace headrecon::testing {

enum class CacheLayout { token_major, head_major, paged };
inline const char* layout_name(CacheLayout l) {
  return l == CacheLayout::token_major ? "token-major" : l == CacheLayout::head_major ? "head-major" : "paged";
}

/// A [tokens, heads, dim] cache stored as raw bytes of `dtype` in one layout,
/// with padding so strides are not packed; `value(t, h, i)` is the stored value as float.
struct TestCache {
  DType dtype;
  CacheLayout layout;
  std::size_t tokens, heads, dim, page = 8, pad = 3;
  std::vector<std::uint16_t> h16;
  std::vector<float> f32;  // f32 values; for block types the dequantized stored values
  std::vector<unsigned char> blocks;  // block types: the q8_0 / q4_0 bytes
  std::vector<std::int32_t> table;

  TestCache(DType dt, CacheLayout l, std::size_t t, std::size_t h, std::size_t d, std::mt19937& rng, float mean = 0.f)
      : dtype(dt), layout(l), tokens(t), heads(h), dim(d) {
    if (is_block_type(dt)) pad = kQuantBlock;  // offsets stay whole blocks
    const std::size_t pages = (t + page - 1) / page;
    std::size_t n = size_elems(pages);
    if (dt == DType::f32 || is_block_type(dt)) f32.assign(n, std::nanf("")); else h16.assign(n, 0x7fc0);  // poison padding
    if (is_block_type(dt)) blocks.assign(dtype_row_bytes(dt, n), 0xff);  // scale 0xffff: NaN
    if (l == CacheLayout::paged) {
      table.resize(pages);
      std::iota(table.begin(), table.end(), 0);
      std::shuffle(table.begin(), table.end(), rng);
    }
    std::normal_distribution<float> g(mean, 1.f);
    for (std::size_t tt = 0; tt < t; ++tt)
      for (std::size_t hh = 0; hh < h; ++hh)
        for (std::size_t i = 0; i < d; ++i) set(tt, hh, i, g(rng));
    if (is_block_type(dt))  // quantize every row; value() then returns what was stored
      for (std::size_t tt = 0; tt < t; ++tt)
        for (std::size_t hh = 0; hh < h; ++hh) {
          const HeadStream st = stream(hh);
          float* row = f32.data() + index(tt, hh, 0);
          quantize_row(row, d, dt, st.mutable_row_address(tt));
          dequantize_row(st.row_address(tt), d, dt, row);
        }
  }
  std::size_t token_stride() const { return layout == CacheLayout::token_major ? heads * (dim + pad) : dim + pad; }
  std::size_t size_elems(std::size_t pages) const {
    if (layout == CacheLayout::paged) return pages * page * heads * dim;
    return tokens * heads * (dim + pad) + 16;
  }
  HeadStream stream(std::size_t h) const {
    const void* base = dtype == DType::f32 ? static_cast<const void*>(f32.data())
                       : is_block_type(dtype) ? static_cast<const void*>(blocks.data())
                                              : h16.data();
    if (layout == CacheLayout::paged) {
      PagedCache pc;
      pc.pool = base;
      pc.dtype = dtype;
      pc.block_table = table.data();
      pc.block_tokens = page;
      pc.heads = heads;
      pc.head_dim = dim;
      return pc.stream(h);
    }
    HeadStream s;
    s.base = base;
    s.dtype = dtype;
    s.token_stride = std::ptrdiff_t(token_stride());
    s.offset = layout == CacheLayout::token_major ? std::ptrdiff_t(h * (dim + pad))
                                                  : std::ptrdiff_t(h * tokens * (dim + pad));
    return s;
  }
  std::ptrdiff_t index(std::size_t t, std::size_t h, std::size_t i) const { return stream(h).token_offset(t) + std::ptrdiff_t(i); }
  void set(std::size_t t, std::size_t h, std::size_t i, float v) {
    const auto k = std::size_t(index(t, h, i));
    if (dtype == DType::f32 || is_block_type(dtype)) f32[k] = v;
    else if (dtype == DType::f16) h16[k] = to_f16(v).bits;
    else h16[k] = to_bf16(v).bits;
  }
  float value(std::size_t t, std::size_t h, std::size_t i) const {
    const auto k = std::size_t(index(t, h, i));
    if (dtype == DType::f32 || is_block_type(dtype)) return f32[k];
    if (dtype == DType::f16) return to_float(f16_t{h16[k]});
    return to_float(bf16_t{h16[k]});
  }
};

/// Bound on the error of u·x when the kernel quantizes u per block of 32 (as
/// q8_0: scale amax/127, round to nearest) for a block-type cache: half a
/// step of each block of u times that block's |x|₁. `x(i)` gives component i.
template <class X>
double quantized_query_bound(const std::vector<double>& u, X&& x) {
  double bound = 0;
  for (std::size_t b = 0; b + kQuantBlock <= u.size(); b += kQuantBlock) {
    double amax = 0, xl1 = 0;
    for (std::size_t j = b; j < b + kQuantBlock; ++j) amax = std::max(amax, std::fabs(u[j])), xl1 += std::fabs(double(x(j)));
    bound += 0.5 * (amax / 127.0) * (1.0 + 1e-6) * xl1;
  }
  return bound;
}

/// Relative rounding unit of a dtype.
inline double unit_roundoff(DType t) { return t == DType::f32 ? 0x1p-24 : t == DType::f16 ? 0x1p-11 : 0x1p-8; }

/// Tracks the worst |got − expected| / tolerance over a comparison.
struct Worst {
  double ratio = 0, got = 0, expected = 0, tol = 0;
  std::string where;
  void add(double g, double e, double tol_, const std::string& w) {
    const double r = std::isnan(g) ? 1e300 : std::fabs(g - e) / tol_;
    if (r > ratio) ratio = r, got = g, expected = e, tol = tol_, where = w;
  }
  std::string report() const {
    return "worst at " + where + ": got " + std::to_string(got) + ", expected " + std::to_string(expected) +
           ", tolerance " + std::to_string(tol);
  }
};

}  // namespace headrecon::testing
