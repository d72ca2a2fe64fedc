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
/// For the block types q8_0 / q4_0 the offsets count values and are
/// multiples of 32: a token's vector is head_dim / 32 consecutive blocks.
struct HeadStream {
  const void* base = nullptr;
  DType dtype = DType::f32;
  std::ptrdiff_t offset = 0;        ///< elements from base to this head's first vector
  std::ptrdiff_t token_stride = 0;  ///< elements between consecutive tokens (within a page)
  const std::int32_t* block_table = nullptr;  ///< physical page of each logical page; null = contiguous
  std::size_t block_size = 0;                 ///< tokens per page
  std::ptrdiff_t block_stride = 0;            ///< elements between pages
  bool rotated = false;  ///< vectors stored Hadamard-rotated (hadamard.hpp); kernels undo it

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
  /// Address of token t's vector for any dtype, block types included.
  const void* row_address(std::size_t t) const {
    const std::ptrdiff_t off = token_offset(t);
    const std::ptrdiff_t bytes = is_block_type(dtype) ? off / std::ptrdiff_t(kQuantBlock) * std::ptrdiff_t(dtype_block_bytes(dtype))
                                                      : off * std::ptrdiff_t(dtype_size(dtype));
    return static_cast<const unsigned char*>(base) + bytes;
  }
  void* mutable_row_address(std::size_t t) const { return const_cast<void*>(row_address(t)); }
  /// Addresses of tokens t0 .. t0 + n − 1 (one division per call, not per token).
  void row_addresses(std::size_t t0, std::size_t n, const void** out) const {
    // Byte offsets: values × element size, or for block types values / 32 × block bytes
    // (offsets and strides are whole blocks there).
    const bool blocks = is_block_type(dtype);
    const std::ptrdiff_t unit = blocks ? std::ptrdiff_t(dtype_block_bytes(dtype)) : std::ptrdiff_t(dtype_size(dtype));
    auto bytes = [&](std::ptrdiff_t v) { return (blocks ? v / std::ptrdiff_t(kQuantBlock) : v) * unit; };
    const auto* b = static_cast<const unsigned char*>(base);
    const std::ptrdiff_t step = bytes(token_stride);
    if (block_table == nullptr) {
      const unsigned char* p = b + bytes(offset + std::ptrdiff_t(t0) * token_stride);
      for (std::size_t i = 0; i < n; ++i, p += step) out[i] = p;
      return;
    }
    const std::ptrdiff_t off = bytes(offset), page_bytes = bytes(block_stride);
    std::size_t page = t0 / block_size, in = t0 % block_size;
    const unsigned char* p = b + off + std::ptrdiff_t(block_table[page]) * page_bytes + std::ptrdiff_t(in) * step;
    for (std::size_t i = 0; i < n; ++i) {
      out[i] = p;
      p += step;
      if (++in == block_size && i + 1 < n) in = 0, ++page, p = b + off + std::ptrdiff_t(block_table[page]) * page_bytes;
    }
  }
};

/// Stream of head h of a [tokens, heads, dim] view (any layout whose dim stride is 1).
template <class T>
HeadStream stream_of(HeadsView<T> v, std::size_t h) {
  if (v.extent.dim > 1 && v.stride.dim != 1)
    detail::fail("stream_of: head vectors must be contiguous (dim stride ", v.stride.dim, ")");
  if (h >= v.extent.heads) detail::fail("stream_of: head ", h, " of a view with ", v.extent.heads, " heads");
  using U = std::remove_const_t<T>;
  HeadStream s;
  s.base = v.data;
  s.dtype = dtype_of<U>::value;
  s.offset = std::ptrdiff_t(h) * v.stride.head;
  s.token_stride = v.stride.token;
  return s;
}

/// A paged cache: pages of `block_tokens` tokens from one pool, in the order
/// a block table gives. Fill the fields by name, then take each head's stream.
struct PagedCache {
  const void* pool = nullptr;
  DType dtype = DType::f32;
  const std::int32_t* block_table = nullptr;  ///< physical page of each logical page
  std::size_t block_tokens = 0;               ///< tokens per page
  std::size_t heads = 0;                      ///< heads per page
  std::size_t head_dim = 0;
  Layout page_layout = Layout::token_major;   ///< [block_tokens, heads, dim] or [heads, block_tokens, dim]

  /// The stream of head h.
  HeadStream stream(std::size_t h) const {
    if (pool == nullptr || block_table == nullptr || block_tokens == 0 || head_dim == 0)
      detail::fail("PagedCache: pool, block table, block_tokens and head_dim are required");
    if (h >= heads) detail::fail("PagedCache: head ", h, " of ", heads);
    HeadStream s;
    s.base = pool;
    s.dtype = dtype;
    s.block_table = block_table;
    s.block_size = block_tokens;
    s.block_stride = std::ptrdiff_t(block_tokens * heads * head_dim);
    if (page_layout == Layout::token_major) {
      s.offset = std::ptrdiff_t(h * head_dim);
      s.token_stride = std::ptrdiff_t(heads * head_dim);
    } else {
      s.offset = std::ptrdiff_t(h * block_tokens * head_dim);
      s.token_stride = std::ptrdiff_t(head_dim);
    }
    return s;
  }
};

/// Where one sequence's K/V of one layer live: positions [0, n_sink) in the
/// sink streams (every KV head, exact), later positions p in the plan's
/// streams as body token p − n_sink.
struct SequenceStreams {
  std::size_t n_sink = 0;
  const HeadStream* sink_k = nullptr;  ///< [n_kv_heads]
  const HeadStream* sink_v = nullptr;  ///< [n_kv_heads]
  const HeadStream* k = nullptr;       ///< [plan.n_k_streams] over body tokens
  const HeadStream* v = nullptr;       ///< [plan.n_v_streams] over body tokens
};

}  // namespace headrecon
