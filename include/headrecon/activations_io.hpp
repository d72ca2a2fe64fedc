#pragma once
/// @file activations_io.hpp
/// Captured activations as a `headrecon.activations` safetensors file.
///
/// Tensors `layers.{L}.{q|k|v}` [tokens, heads, head_dim] in F32, F16 or BF16
/// for L = 0 .. n_layers-1 (every layer stores the same kinds; heads are
/// constant per kind; tokens and head_dim are the same for all), and
/// optionally `positions` I32 [tokens]: each token's position in its sequence
/// (absent: one sequence, positions 0, 1, ...).
///
/// Metadata, required: `format` = headrecon.activations; `post_rope` = true
/// or false (whether Q/K were captured after RoPE: it decides how a plan
/// fitted on them may be applied, so it has no default). Optional: `version`
/// (1, the default), and `n_layers`, `n_tokens`, `head_dim`, which the reader
/// infers from the tensors and, when present, checks against them. Other keys
/// are free-form. Limits (limits.hpp): n_layers, heads and head_dim <= 4096.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "headrecon/dtype.hpp"
#include "headrecon/error.hpp"
#include "headrecon/limits.hpp"
#include "headrecon/plan.hpp"
#include "headrecon/safetensors.hpp"
#include "headrecon/view.hpp"

namespace headrecon {

/// Heads per layer of each kind in an activations file; 0 means not stored.
struct KindHeads {
  std::size_t q = 0, k = 0, v = 0;
  /// The head count of `kind`.
  std::size_t operator[](Kind kind) const { return kind == Kind::q ? q : kind == Kind::k ? k : v; }
  std::size_t& operator[](Kind kind) { return kind == Kind::q ? q : kind == Kind::k ? k : v; }
};

namespace detail {
inline constexpr std::string_view activations_format = "headrecon.activations";
inline constexpr std::string_view activations_version = "1";
inline constexpr Kind all_kinds[] = {Kind::q, Kind::k, Kind::v};

/// "layers.{layer}.{kind}".
inline std::string activation_name(std::size_t layer, Kind kind) {
  return "layers." + std::to_string(layer) + "." + std::string(kind_name(kind));
}

/// Copies a [tokens, heads, dim] view of any layout into a packed token-major
/// buffer of element type U, converting through float when the types differ.
template <class U>
void pack_converted(const AnyHeadsView& src, U* dst) {
  src.visit([&](auto v) {
    using T = std::remove_const_t<typename std::remove_pointer_t<decltype(v.data)>>;
    std::size_t o = 0;
    for (std::size_t t = 0; t < v.tokens(); ++t)
      for (std::size_t h = 0; h < v.heads(); ++h)
        for (std::size_t i = 0; i < v.dim(); ++i) {
          if constexpr (std::is_same_v<T, U>)
            dst[o++] = v(t, h, i);
          else
            dst[o++] = from_float<U>(to_float(v(t, h, i)));
        }
  });
}
}  // namespace detail

/// Streams activations into a new file, batch by batch, never holding the
/// whole file in memory. The header is written by the constructor; every row
/// of every tensor must be written exactly once before finish().
class ActivationWriter {
 public:
  /// Declares a file of `n_layers` layers, `n_tokens` tokens and `head_dim`
  /// components, storing each kind with heads[kind] > 0 in `dtype`, plus a
  /// `positions` tensor when `has_positions`. Keys of `extra_metadata` must
  /// not collide with the format's own keys.
  ActivationWriter(std::string path, std::size_t n_layers, std::size_t n_tokens,
                   std::size_t head_dim, KindHeads heads, DType dtype, bool post_rope,
                   bool has_positions,
                   const std::map<std::string, std::string>& extra_metadata = {})
      : w_(std::move(path)),
        n_layers_(n_layers),
        n_tokens_(n_tokens),
        head_dim_(head_dim),
        heads_(heads),
        dtype_(dtype),
        has_positions_(has_positions) {
    const std::string& p = w_.path();
    if (n_layers == 0 || n_layers > limits::max_layers)
      detail::fail(p, ": n_layers must be in [1, ", limits::max_layers, "], got ", n_layers);
    if (head_dim == 0 || head_dim > limits::max_head_dim)
      detail::fail(p, ": head_dim must be in [1, ", limits::max_head_dim, "], got ", head_dim);
    if (heads.q == 0 && heads.k == 0 && heads.v == 0)
      detail::fail(p, ": no kind has a positive head count (nothing to store)");
    for (Kind kind : detail::all_kinds)
      if (heads[kind] > limits::max_heads)
        detail::fail(p, ": ", heads[kind], " ", kind_name(kind), " heads exceed the maximum of ", limits::max_heads);
    static constexpr std::string_view reserved[] = {"format",   "version",  "n_layers",
                                                    "n_tokens", "head_dim", "post_rope"};
    for (const auto& [k, v] : extra_metadata) {
      for (auto r : reserved)
        if (k == r) detail::fail(p, ": extra metadata key '", k, "' is reserved by the format");
      w_.set_metadata(k, v);
    }
    w_.set_metadata("format", std::string(detail::activations_format));
    w_.set_metadata("version", std::string(detail::activations_version));
    w_.set_metadata("n_layers", std::to_string(n_layers));
    w_.set_metadata("n_tokens", std::to_string(n_tokens));
    w_.set_metadata("head_dim", std::to_string(head_dim));
    w_.set_metadata("post_rope", post_rope ? "true" : "false");
    const std::string dt(dtype_name(dtype));
    for (std::size_t l = 0; l < n_layers; ++l)
      for (Kind kind : detail::all_kinds)
        if (heads[kind] > 0)
          w_.reserve(detail::activation_name(l, kind), dt, {n_tokens, heads[kind], head_dim});
    if (has_positions) w_.reserve("positions", "I32", {n_tokens});
    w_.begin_stream();
    coverage_.resize(n_layers * 3 + 1);
  }

  /// Writes tokens [token0, token0 + batch.tokens()) of layer `layer`, kind
  /// `kind`, converting to the file's dtype. Throws Error naming the file and
  /// tensor for wrong extents, out-of-range or already-written tokens.
  void write(std::size_t layer, Kind kind, std::size_t token0, const AnyHeadsView& batch) {
    const std::string& p = w_.path();
    if (layer >= n_layers_) detail::fail(p, ": layer ", layer, " out of range (n_layers ", n_layers_, ")");
    const std::size_t nh = heads_[kind];
    if (nh == 0) detail::fail(p, ": kind ", kind_name(kind), " is not stored in this file");
    const std::string name = detail::activation_name(layer, kind);
    if (batch.extent.heads != nh || batch.extent.dim != head_dim_)
      detail::fail(p, ": tensor '", name, "': batch has ", batch.extent.heads, " heads x ",
                   batch.extent.dim, " dims, expected ", nh, " x ", head_dim_);
    const std::size_t n = batch.extent.tokens;
    claim(layer * 3 + std::size_t(kind), name, token0, n);
    if (n == 0) return;
    if (!batch.data) detail::fail(p, ": tensor '", name, "': null batch data");
    const std::size_t count = n * nh * head_dim_;
    buf_.resize(count * dtype_size(dtype_));
    switch (dtype_) {
      case DType::f32: detail::pack_converted(batch, reinterpret_cast<float*>(buf_.data())); break;
      case DType::f16: detail::pack_converted(batch, reinterpret_cast<f16_t*>(buf_.data())); break;
      case DType::bf16: detail::pack_converted(batch, reinterpret_cast<bf16_t*>(buf_.data())); break;
      default: break;  // block types are rejected by the constructor (dtype_size)
    }
    const std::uint64_t row = std::uint64_t(nh) * head_dim_ * dtype_size(dtype_);
    w_.write_rows(name, token0 * row, buf_.data(), buf_.size());
    commit(layer * 3 + std::size_t(kind), token0, n);
  }
  /// Typed overload of write(layer, kind, token0, AnyHeadsView).
  template <class T>
  void write(std::size_t layer, Kind kind, std::size_t token0, HeadsView<T> batch) {
    write(layer, kind, token0, erase(batch));
  }

  /// Writes positions of tokens [token0, token0 + n); each must be >= 0.
  void write_positions(std::size_t token0, const std::int32_t* positions, std::size_t n) {
    const std::string& p = w_.path();
    if (!has_positions_) detail::fail(p, ": file was declared without a positions tensor");
    claim(n_layers_ * 3, "positions", token0, n);
    if (n == 0) return;
    if (!positions) detail::fail(p, ": tensor 'positions': null data");
    for (std::size_t i = 0; i < n; ++i)
      if (positions[i] < 0)
        detail::fail(p, ": tensor 'positions': token ", token0 + i, " has negative position ",
                     positions[i]);
    w_.write_rows("positions", token0 * 4, positions, n * 4);
    commit(n_layers_ * 3, token0, n);
  }

  /// Checks that every token of every tensor was written, then completes the
  /// file (renaming PATH.tmp to PATH). Throws Error naming the first tensor
  /// with missing tokens.
  void finish() {
    for (std::size_t l = 0; l < n_layers_; ++l)
      for (Kind kind : detail::all_kinds)
        if (heads_[kind] > 0) check_complete(l * 3 + std::size_t(kind), detail::activation_name(l, kind));
    if (has_positions_) check_complete(n_layers_ * 3, "positions");
    w_.finish();
  }

  /// The final path of the file.
  const std::string& path() const { return w_.path(); }

 private:
  void claim(std::size_t slot, const std::string& name, std::size_t token0, std::size_t n) const {
    const std::string& p = w_.path();
    if (token0 > n_tokens_ || n > n_tokens_ - token0)
      detail::fail(p, ": tensor '", name, "': tokens [", token0, ", ", token0 + n,
                   ") are outside [0, ", n_tokens_, ")");
    std::uint64_t olo = 0, ohi = 0;
    if (coverage_[slot].overlaps(token0, token0 + n, olo, ohi))
      detail::fail(p, ": tensor '", name, "': tokens [", olo, ", ", ohi, ") were already written");
  }
  void commit(std::size_t slot, std::size_t token0, std::size_t n) {
    coverage_[slot].insert(token0, token0 + n);
  }
  void check_complete(std::size_t slot, const std::string& name) const {
    const detail::IntervalSet& c = coverage_[slot];
    if (c.total() != n_tokens_)
      detail::fail(w_.path(), ": tensor '", name, "': tokens [", c.first_gap(), ", ",
                   c.gap_end(n_tokens_), ") were never written (", c.total(), " of ", n_tokens_,
                   " tokens written)");
  }

  SafetensorsWriter w_;
  std::size_t n_layers_, n_tokens_, head_dim_;
  KindHeads heads_;
  DType dtype_;
  bool has_positions_;
  std::vector<detail::IntervalSet> coverage_;  // [layer * 3 + kind], then positions
  std::vector<std::byte> buf_;                 // conversion buffer of one batch
};

/// Reads an activations file lazily: the constructor validates metadata and
/// every tensor's name, dtype and shape; read() loads one token range.
class ActivationReader {
 public:
  /// Opens and validates `path`; throws Error naming the file and tensor.
  /// n_layers, n_tokens and head_dim come from the tensors and must match the
  /// metadata keys of the same names where those are present.
  explicit ActivationReader(std::string path) : f_(std::move(path)) {
    const std::string& p = f_.path();
    const auto& md = f_.metadata();
    detail::meta_check_format(md, p, detail::activations_format, detail::activations_version, true);
    if (md.find("post_rope") == md.end())
      detail::fail(p, ": missing metadata key 'post_rope' (\"true\" when Q/K were captured after RoPE, else "
                   "\"false\"; it has no default because it decides how a plan fitted on them may be applied)");
    post_rope_ = detail::meta_bool(md, p, "post_rope");
    const auto declared = [&](const char* key, std::uint64_t lo, std::uint64_t hi) -> std::optional<std::uint64_t> {
      if (md.find(key) == md.end()) return std::nullopt;
      return detail::meta_uint(md, p, key, lo, hi);
    };
    const auto md_layers = declared("n_layers", 1, limits::max_layers);
    const auto md_tokens = declared("n_tokens", 0, std::uint64_t(std::numeric_limits<std::int64_t>::max()));
    const auto md_dim = declared("head_dim", 1, limits::max_head_dim);

    // Pass 1: names (layers bounded by the metadata or limits::max_layers) and
    // one shape as the reference for all others.
    const auto& ts = f_.tensors();
    const std::size_t max_layer = std::size_t(md_layers ? *md_layers : limits::max_layers);
    std::vector<std::pair<std::size_t, std::size_t>> layer_tensors;  // (layer * 3 + kind, tensor index)
    std::size_t first_layer_tensor = ts.size(), positions = ts.size();
    for (std::size_t i = 0; i < ts.size(); ++i) {
      const TensorInfo& t = ts[i];
      if (t.name == "positions") {
        positions = i;
        continue;
      }
      std::size_t layer = 0;
      Kind kind = Kind::q;
      if (!parse_name(t.name, max_layer, layer, kind))
        detail::fail(p, ": unexpected tensor '", t.name, "' (expected layers.L.{q,k,v} with L < ",
                     md_layers ? "n_layers = " : "the limit ", max_layer, ", or positions)");
      layer_tensors.emplace_back(layer * 3 + std::size_t(kind), i);
      if (first_layer_tensor == ts.size()) first_layer_tensor = i;
      n_layers_ = std::max(n_layers_, layer + 1);
    }
    if (first_layer_tensor == ts.size()) detail::fail(p, ": no layers.L.{q,k,v} tensors");
    const TensorInfo& ref = ts[first_layer_tensor];
    if ((!md_tokens || !md_dim) && ref.shape.size() != 3)
      detail::fail(p, ": tensor '", ref.name, "' has shape ", detail::shape_str(ref.shape),
                   ", expected [n_tokens, heads, head_dim]");
    n_tokens_ = std::size_t(md_tokens ? *md_tokens : ref.shape[0]);
    head_dim_ = std::size_t(md_dim ? *md_dim : ref.shape[2]);
    if (head_dim_ == 0 || head_dim_ > limits::max_head_dim)
      detail::fail(p, ": tensor '", ref.name, "' has shape ", detail::shape_str(ref.shape), ": head_dim ", head_dim_,
                   " is outside [1, ", limits::max_head_dim, "]");
    const std::string source = md_tokens && md_dim ? std::string() : " (as tensor '" + ref.name + "')";
    const std::size_t seen_layers = n_layers_;
    if (md_layers) n_layers_ = std::size_t(*md_layers);  // layers beyond the tensors are reported below, by name

    // Pass 2: every layer tensor's dtype and shape.
    constexpr std::size_t none = std::size_t(-1);
    index_.assign(n_layers_ * 3, none);  // n_layers_ <= limits::max_layers
    std::array<std::size_t, 3> first{none, none, none};  // first tensor seen per kind
    for (const auto& [slot, i] : layer_tensors) {
      const TensorInfo& t = ts[i];
      try {
        (void)parse_dtype(t.dtype);
      } catch (const Error& e) {
        detail::fail(p, ": tensor '", t.name, "': ", e.what());
      }
      if (t.shape.size() != 3 || t.shape[0] != n_tokens_ || t.shape[1] == 0 || t.shape[1] > limits::max_heads ||
          t.shape[2] != head_dim_)
        detail::fail(p, ": tensor '", t.name, "' has shape ", detail::shape_str(t.shape),
                     ", expected [n_tokens, heads, head_dim] = [", n_tokens_, ", 1..", limits::max_heads, ", ",
                     head_dim_, "]", source);
      const std::size_t k = slot % 3;
      const Kind kind = Kind(k);
      if (first[k] == none) {
        first[k] = i;
        heads_[kind] = std::size_t(t.shape[1]);
      } else if (t.shape[1] != heads_[kind]) {
        detail::fail(p, ": tensor '", t.name, "' has ", t.shape[1], " heads but '", ts[first[k]].name, "' has ",
                     heads_[kind]);
      }
      index_[slot] = i;
    }
    for (std::size_t l = 0; l < n_layers_; ++l)
      for (Kind kind : detail::all_kinds)
        if (heads_[kind] > 0 && index_[l * 3 + std::size_t(kind)] == none)
          detail::fail(p, ": missing tensor '", detail::activation_name(l, kind),
                       "' (every layer must store the same kinds as '", ts[first[std::size_t(kind)]].name, "'",
                       n_layers_ > seen_layers ? ", for the n_layers = " + std::to_string(n_layers_) + " of the metadata"
                                               : std::string(),
                       ")");

    if (positions != ts.size()) {
      const TensorInfo& t = ts[positions];
      if (t.dtype != "I32") detail::fail(p, ": tensor 'positions' has dtype ", t.dtype, ", expected I32");
      if (t.shape != std::vector<std::uint64_t>{n_tokens_})
        detail::fail(p, ": tensor 'positions' has shape ", detail::shape_str(t.shape), ", expected [n_tokens] = [",
                     n_tokens_, "]");
      positions_ = positions;
    }
  }

  /// The path the file was opened with.
  const std::string& path() const { return f_.path(); }
  /// Number of layers (from the tensors; equals metadata n_layers when present).
  std::size_t n_layers() const { return n_layers_; }
  /// Number of tokens, all sequences together (from the tensors' shapes).
  std::size_t n_tokens() const { return n_tokens_; }
  /// Components per head (from the tensors' shapes).
  std::size_t head_dim() const { return head_dim_; }
  /// True when the activations were captured after RoPE.
  bool post_rope() const { return post_rope_; }
  /// True when the file stores kind `kind`.
  bool has(Kind kind) const { return heads_[kind] > 0; }
  /// Heads per layer of `kind` (0 when not stored).
  std::size_t n_heads(Kind kind) const { return heads_[kind]; }
  /// True when the file has a positions tensor.
  bool has_positions() const { return positions_ != std::size_t(-1); }
  /// All metadata, free-form keys included.
  const std::map<std::string, std::string>& metadata() const { return f_.metadata(); }
  /// The underlying container.
  const SafetensorsFile& file() const { return f_; }

  /// Element type of tensor layers.{layer}.{kind}; throws Error when absent.
  DType dtype(Kind kind, std::size_t layer) const { return parse_dtype(tensor(layer, kind).dtype); }

  /// Positions of tokens [t0, t0 + n): read from the file, or t0 + i when the
  /// file has no positions tensor (one sequence). Throws Error for a range
  /// outside the file or a negative stored position.
  std::vector<std::int32_t> positions(std::size_t t0, std::size_t n) const {
    const std::string& p = f_.path();
    if (t0 > n_tokens_ || n > n_tokens_ - t0)
      detail::fail(p, ": positions of tokens [", t0, ", ", t0 + n, ") requested, file has ",
                   n_tokens_, " tokens");
    std::vector<std::int32_t> out(n);
    if (!has_positions()) {
      if (n && t0 + n - 1 > std::size_t(std::numeric_limits<std::int32_t>::max()))
        detail::fail(p, ": token ", t0 + n - 1, " has no int32 position");
      for (std::size_t i = 0; i < n; ++i) out[i] = std::int32_t(t0 + i);
      return out;
    }
    f_.read_bytes(f_.tensors()[positions_], t0 * 4, n * 4, out.data());
    for (std::size_t i = 0; i < n; ++i)
      if (out[i] < 0)
        detail::fail(p, ": tensor 'positions': token ", t0 + i, " has negative position ", out[i]);
    return out;
  }

  /// Reads tokens [token0, token0 + n) of layers.{layer}.{kind} into `buf`
  /// (resized) and returns a packed token-major view over it, in the file's
  /// dtype. Only that range is read from disk.
  AnyHeadsView read(std::size_t layer, Kind kind, std::size_t token0, std::size_t n,
                    std::vector<std::byte>& buf) const {
    const TensorInfo& t = tensor(layer, kind);
    if (token0 > n_tokens_ || n > n_tokens_ - token0)
      detail::fail(f_.path(), ": tensor '", t.name, "': tokens [", token0, ", ", token0 + n,
                   ") are outside [0, ", n_tokens_, ")");
    const DType dt = parse_dtype(t.dtype);
    const std::size_t nh = heads_[kind];
    const std::uint64_t row = std::uint64_t(nh) * head_dim_ * dtype_size(dt);
    buf.resize(std::size_t(n * row));
    f_.read_bytes(t, token0 * row, n * row, buf.data());
    const Extents3 e{n, nh, head_dim_};
    return AnyHeadsView{dt, buf.data(), e, packed_strides(Layout::token_major, e)};
  }

 private:
  const TensorInfo& tensor(std::size_t layer, Kind kind) const {
    if (layer >= n_layers_)
      detail::fail(f_.path(), ": layer ", layer, " out of range (n_layers ", n_layers_, ")");
    if (!has(kind)) detail::fail(f_.path(), ": kind ", kind_name(kind), " is not stored");
    return f_.tensors()[index_[layer * 3 + std::size_t(kind)]];
  }

  /// Parses "layers.{L}.{q|k|v}" with L canonical decimal < max_layer.
  static bool parse_name(std::string_view name, std::size_t max_layer, std::size_t& layer, Kind& kind) {
    constexpr std::string_view prefix = "layers.";
    if (name.substr(0, prefix.size()) != prefix) return false;
    name.remove_prefix(prefix.size());
    const std::size_t dot = name.find('.');
    if (dot == std::string_view::npos) return false;
    const std::string_view l = name.substr(0, dot), k = name.substr(dot + 1);
    std::uint64_t v = 0;
    if (!detail::parse_decimal(l, max_layer - 1, v) || (l.size() > 1 && l[0] == '0')) return false;
    if (k != "q" && k != "k" && k != "v") return false;
    layer = std::size_t(v);
    kind = parse_kind(k);
    return true;
  }

  SafetensorsFile f_;
  std::size_t n_layers_ = 0, n_tokens_ = 0, head_dim_ = 0;
  bool post_rope_ = true;
  KindHeads heads_;
  std::vector<std::size_t> index_;  // [layer * 3 + kind] -> tensor index
  std::size_t positions_ = std::size_t(-1);
};

}  // namespace headrecon
