#pragma once
/// @file head_stream.hpp
/// Where one head's vectors live in a KV cache, whatever the layout: a base
/// pointer, a token stride and, for paged caches, a block table. Kernels read
/// and write caches only through HeadStream.

#include <cstddef>
#include <cstdint>

#include "headrecon/detail/host_device.hpp"
#include "headrecon/dtype.hpp"
#include "headrecon/view.hpp"

namespace headrecon {

/// The vectors of one head over tokens: element i of token t is at
///   base + offset + block_table[t / block_size]·block_stride + (t % block_size)·token_stride + i  (paged)
///   base + offset + t·token_stride + i                                                            (contiguous)
/// in elements of `dtype`; the head_dim components of a token are contiguous.
struct HeadStream {
  const void* base = nullptr;
  DType dtype = DType::f32;
  std::ptrdiff_t offset = 0;        ///< elements from base to this head's first vector
  std::ptrdiff_t token_stride = 0;  ///< elements between consecutive tokens (within a page)
  const std::int32_t* block_table = nullptr;  ///< physical page of each logical page; null = contiguous
  std::size_t block_size = 0;                 ///< tokens per page
  std::ptrdiff_t block_stride = 0;            ///< elements between pages

  /// Element offset of token t's vector.
  HEADRECON_HOST_DEVICE std::ptrdiff_t token_offset(std::size_t t) const {
    if (block_table == nullptr) return offset + std::ptrdiff_t(t) * token_stride;
    return offset + std::ptrdiff_t(block_table[t / block_size]) * block_stride +
           std::ptrdiff_t(t % block_size) * token_stride;
  }
  /// Pointer to token t's vector, typed.
  template <class T>
  HEADRECON_HOST_DEVICE const T* row(std::size_t t) const {
    return static_cast<const T*>(base) + token_offset(t);
  }
  template <class T>
  HEADRECON_HOST_DEVICE T* mutable_row(std::size_t t) const {
    return const_cast<T*>(static_cast<const T*>(base)) + token_offset(t);
  }
};

/// Stream of head h of a [tokens, heads, dim] view (any layout whose dim stride is 1).
template <class T>
HeadStream stream_of(HeadsView<T> v, std::size_t h) {
  if (v.extent.dim > 1 && v.stride.dim != 1)
    detail::fail("stream_of: head vectors must be contiguous (dim stride ", v.stride.dim, ")");
  if (h >= v.extent.heads) detail::fail("stream_of: head ", h, " of a view with ", v.extent.heads, " heads");
  using U = std::remove_const_t<T>;
  return {v.data, dtype_of<U>::value, std::ptrdiff_t(h) * v.stride.head, v.stride.token, nullptr, 0, 0};
}

/// Stream of head h in a paged cache whose pages hold [block_size, heads, dim]
/// (token-major pages) or [heads, block_size, dim] (head-major pages).
inline HeadStream paged_stream(const void* pool, DType dtype, const std::int32_t* block_table,
                               std::size_t block_size, std::size_t heads, std::size_t dim, std::size_t h,
                               Layout page_layout) {
  if (block_table == nullptr || block_size == 0) detail::fail("paged_stream: block table and block size required");
  if (h >= heads) detail::fail("paged_stream: head ", h, " of ", heads);
  HeadStream s;
  s.base = pool;
  s.dtype = dtype;
  s.block_table = block_table;
  s.block_size = block_size;
  s.block_stride = std::ptrdiff_t(block_size * heads * dim);
  if (page_layout == Layout::token_major) {
    s.offset = std::ptrdiff_t(h * dim);
    s.token_stride = std::ptrdiff_t(heads * dim);
  } else {
    s.offset = std::ptrdiff_t(h * block_size * dim);
    s.token_stride = std::ptrdiff_t(dim);
  }
  return s;
}

}  // namespace headrecon
