#pragma once
/// @file view.hpp
/// Non-owning strided views over per-head activations [tokens, heads, head_dim]
/// (Q, K or V of one layer), in token-major, head-major or any strided layout.

#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>

#include "headrecon/detail/host_device.hpp"
#include "headrecon/dtype.hpp"
#include "headrecon/error.hpp"

namespace headrecon {

/// Extents of a [tokens, heads, dim] view.
struct Extents3 {
  std::size_t tokens = 0, heads = 0, dim = 0;
};
/// Strides in elements (not bytes) of a [tokens, heads, dim] view.
struct Strides3 {
  std::ptrdiff_t token = 0, head = 0, dim = 0;
};

/// Standard memory layouts of a [tokens, heads, dim] buffer.
enum class Layout : std::uint8_t {
  token_major,  ///< [tokens][heads][dim]: the usual activation / KV-cache layout.
  head_major,   ///< [heads][tokens][dim]: one contiguous plane per head.
};

/// Packed strides of `layout` for extents `e`.
constexpr Strides3 packed_strides(Layout layout, Extents3 e) {
  if (layout == Layout::token_major)
    return {std::ptrdiff_t(e.heads * e.dim), std::ptrdiff_t(e.dim), 1};
  return {std::ptrdiff_t(e.dim), std::ptrdiff_t(e.tokens * e.dim), 1};
}

/// A non-owning view of [tokens, heads, dim] elements of type T (float, f16_t,
/// bf16_t; const-qualified for read-only views). Element (t, h, i) lives at
/// data[t*stride.token + h*stride.head + i*stride.dim]. Cheap to copy.
template <class T>
struct HeadsView {
  T* data = nullptr;
  Extents3 extent;
  Strides3 stride;

  HEADRECON_HOST_DEVICE std::size_t tokens() const { return extent.tokens; }
  HEADRECON_HOST_DEVICE std::size_t heads() const { return extent.heads; }
  HEADRECON_HOST_DEVICE std::size_t dim() const { return extent.dim; }

  /// Element (token t, head h, component i); no bounds check.
  HEADRECON_HOST_DEVICE T& operator()(std::size_t t, std::size_t h, std::size_t i) const {
    return data[std::ptrdiff_t(t) * stride.token + std::ptrdiff_t(h) * stride.head +
                std::ptrdiff_t(i) * stride.dim];
  }
  /// Start of the vector of token t, head h (its components are stride.dim apart).
  HEADRECON_HOST_DEVICE T* vec(std::size_t t, std::size_t h) const {
    return data + std::ptrdiff_t(t) * stride.token + std::ptrdiff_t(h) * stride.head;
  }
  /// The sub-view of tokens [t0, t0 + n).
  HeadsView token_range(std::size_t t0, std::size_t n) const {
    if (t0 > extent.tokens || n > extent.tokens - t0)
      detail::fail("token range [", t0, ", ", t0 + n, ") is outside a view of ", extent.tokens,
                   " tokens");
    HeadsView v = *this;
    v.data = n ? vec(t0, 0) : data;
    v.extent.tokens = n;
    return v;
  }
  /// Implicit conversion to a read-only view.
  operator HeadsView<const T>() const { return {data, extent, stride}; }
};

/// A HeadsView whose element type is known only at run time (file-backed data).
struct AnyHeadsView {
  DType dtype = DType::f32;
  const void* data = nullptr;
  Extents3 extent;
  Strides3 stride;

  /// Calls f(HeadsView<const T>) with the statically typed view.
  template <class F>
  decltype(auto) visit(F&& f) const {
    switch (dtype) {
      case DType::f16:
        return f(HeadsView<const f16_t>{static_cast<const f16_t*>(data), extent, stride});
      case DType::bf16:
        return f(HeadsView<const bf16_t>{static_cast<const bf16_t*>(data), extent, stride});
      case DType::f32:
      default:
        return f(HeadsView<const float>{static_cast<const float*>(data), extent, stride});
    }
  }
};

template <class T>
AnyHeadsView erase(HeadsView<T> v) {
  using U = std::remove_const_t<T>;
  return {dtype_of<U>::value, v.data, v.extent, v.stride};
}

namespace detail {
/// Offsets (in elements) of the lowest and highest element a view touches.
inline std::array<std::ptrdiff_t, 2> offset_span(Extents3 e, Strides3 s) {
  std::ptrdiff_t lo = 0, hi = 0;
  const std::size_t ext[3] = {e.tokens, e.heads, e.dim};
  const std::ptrdiff_t str[3] = {s.token, s.head, s.dim};
  for (int k = 0; k < 3; ++k) {
    if (ext[k] == 0) return {0, -1};
    const std::ptrdiff_t reach = std::ptrdiff_t(ext[k] - 1) * str[k];
    (reach < 0 ? lo : hi) += reach;
  }
  return {lo, hi};
}

/// True when distinct indices map to distinct elements (checked by the usual
/// sufficient condition: sorted by |stride|, each stride covers the span below).
inline bool non_overlapping(Extents3 e, Strides3 s) {
  std::array<std::pair<std::ptrdiff_t, std::size_t>, 3> d = {
      std::pair{s.token < 0 ? -s.token : s.token, e.tokens},
      std::pair{s.head < 0 ? -s.head : s.head, e.heads},
      std::pair{s.dim < 0 ? -s.dim : s.dim, e.dim}};
  for (int i = 0; i < 3; ++i)
    for (int j = i + 1; j < 3; ++j)
      if (d[j].first < d[i].first) std::swap(d[i], d[j]);
  std::ptrdiff_t span = 1;  // elements covered by the faster dimensions
  for (const auto& [str, ext] : d) {
    if (ext <= 1) continue;
    if (str < span) return false;
    span = str * std::ptrdiff_t(ext);
  }
  return true;
}

inline void check_extents(Extents3 e, const char* what) {
  const std::size_t limit = std::size_t(std::numeric_limits<std::ptrdiff_t>::max() / 4);
  if (e.tokens > limit || e.heads > limit || e.dim > limit ||
      (e.heads && e.dim && e.tokens > limit / (e.heads * e.dim)))
    fail(what, ": extents [", e.tokens, ", ", e.heads, ", ", e.dim, "] overflow the address space");
}
}  // namespace detail

/// A view over a packed buffer in `layout`; `len` is the buffer's length in
/// elements, checked against the extents. `what` names the buffer in errors.
template <class T>
HeadsView<T> make_view(T* data, std::size_t len, Extents3 e, Layout layout,
                       const char* what = "tensor") {
  return make_view(data, len, e, packed_strides(layout, e), what);
}

/// A view with explicit strides over a buffer of `len` elements. Throws Error
/// naming `what` when an element would fall outside the buffer, when a
/// mutable view would alias two indices onto one element, or when data is null.
template <class T>
HeadsView<T> make_view(T* data, std::size_t len, Extents3 e, Strides3 s,
                       const char* what = "tensor") {
  detail::check_extents(e, what);
  const auto span = detail::offset_span(e, s);
  if (span[1] < span[0]) return {data, e, s};  // empty view
  if (data == nullptr) detail::fail(what, ": null data for a non-empty view");
  if (span[0] < 0 || std::size_t(span[1]) >= len)
    detail::fail(what, ": extents [", e.tokens, ", ", e.heads, ", ", e.dim, "] with strides [",
                 s.token, ", ", s.head, ", ", s.dim, "] reach elements ", span[0], "..", span[1],
                 " of a buffer of ", len);
  if constexpr (!std::is_const_v<T>) {
    if (!detail::non_overlapping(e, s))
      detail::fail(what, ": strides [", s.token, ", ", s.head, ", ", s.dim,
                   "] make distinct elements of a writable view overlap");
  }
  return {data, e, s};
}

/// Adapts an xtensor container or strided expression of rank 3 ([tokens,
/// heads, dim]) holding float, f16_t or bf16_t. The view aliases its storage.
template <class E>
auto view_of(E& x, const char* what = "tensor") {
  using V = std::remove_reference_t<decltype(*x.data())>;
  if (x.dimension() != 3)
    detail::fail(what, ": expected rank 3 [tokens, heads, dim], got rank ", x.dimension());
  const auto& sh = x.shape();
  const auto& st = x.strides();
  Extents3 e{std::size_t(sh[0]), std::size_t(sh[1]), std::size_t(sh[2])};
  // xtensor reports stride 0 for extent-1 dimensions; any value is fine there.
  Strides3 s{std::ptrdiff_t(st[0]), std::ptrdiff_t(st[1]), std::ptrdiff_t(st[2])};
  auto* base = x.data() + x.data_offset();
  detail::check_extents(e, what);
  if constexpr (!std::is_const_v<V>) {
    if (!detail::non_overlapping(e, s))
      detail::fail(what, ": strides make distinct elements of a writable view overlap");
  }
  return HeadsView<V>{base, e, s};
}

}  // namespace headrecon
