#pragma once
/// @file kv_store.hpp
/// The reference-only KV cache of a model: the K/V an engine appends, stored
/// as a plan says (sink tokens with every KV head, later tokens with only the
/// cached heads), for several sequences, in fixed-size blocks of a
/// caller-owned pool (paged, one block table per sequence, as vLLM and
/// FlashInfer do) or one contiguous region per sequence. Without rebuilt
/// heads (an empty plan) it is an ordinary KV cache.
///
/// Memory: the pool holds one sink slab per sequence slot ([layer][K|V]
/// [sink][kv_head][dim]), then the blocks; a block holds `block_tokens`
/// positions of one sequence for every layer: [layer][K|V][token][slot][dim],
/// slot = index in RefCacheLayout::cached(). Cross-layer references are read
/// from the earlier layer's part of the same block: nothing is stored twice.
/// Attention over a store: cpu/kv_attention.hpp.

#include <algorithm>
#include <cctype>
#include <string>
#include <string_view>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "headrecon/attention_plan.hpp"
#include "headrecon/block_quant.hpp"
#include "headrecon/cache_type.hpp"
#include "headrecon/dtype.hpp"
#include "headrecon/error.hpp"
#include "headrecon/hadamard.hpp"
#include "headrecon/head_stream.hpp"
#include "headrecon/ref_cache.hpp"
#include "headrecon/view.hpp"

namespace headrecon {

/// A sequence of a KvStore (its slot).
struct SequenceId {
  std::uint32_t slot = 0;
  friend bool operator==(SequenceId a, SequenceId b) { return a.slot == b.slot; }
};

/// How a KvStore is laid out. Fill the fields by name.
struct KvStoreOptions {
  enum class Storage : std::uint8_t {
    paged,       ///< blocks of block_tokens positions, any block for any sequence
    contiguous,  ///< one region of max_tokens positions per sequence slot
  };
  Storage storage = Storage::paged;
  std::size_t n_q_heads = 0;      ///< query heads of the model (a multiple of the KV heads)
  DType dtype = DType::f32;       ///< stored type: f32, f16, bf16, q8_0 or q4_0 (llama.cpp's blocks)
  bool rotate = false;            ///< Hadamard-rotate every vector before storing (q4_0 + rotate = "q4_0r")
  std::size_t max_sequences = 1;  ///< sequences alive at once (sink slabs)
  std::size_t block_tokens = 16;  ///< paged: positions per block
  std::size_t n_blocks = 0;       ///< paged: blocks in the pool
  std::size_t max_tokens = 0;     ///< contiguous: positions per sequence, sinks included
  float attention_scale = 0.f;    ///< softmax scale of the scores; 0: 1/sqrt(head_dim)
};

class KvStore {
 public:
  /// Bytes of the pool a store with these options needs.
  static std::size_t pool_bytes(const RefCacheLayout& layout, const KvStoreOptions& options) {
    return Geometry(layout, options).pool_bytes;
  }

  /// A store over `pool` (at least pool_bytes(layout, options) bytes, owned by
  /// the caller, never freed by the store; KvPool allocates it on 2 MiB
  /// pages). `layout` and its plan must outlive the store. Throws Error naming
  /// the option at fault.
  KvStore(const RefCacheLayout& layout, const KvStoreOptions& options, void* pool, std::size_t pool_bytes)
      : layout_(&layout), opt_(options), geo_(layout, options), pool_(static_cast<std::byte*>(pool)) {
    if (!pool_ && geo_.pool_bytes) detail::fail("KvStore: null pool");
    if (pool_bytes < geo_.pool_bytes)
      detail::fail("KvStore: pool of ", pool_bytes, " bytes, the options need ", geo_.pool_bytes);
    const std::size_t L = std::size_t(layout.n_layers()), kv = std::size_t(layout.n_kv_heads());
    plans_.reserve(L);
    const bool has_targets = layout.plan().find(Kind::k) || layout.plan().find(Kind::v);
    for (std::size_t l = 0; l < L; ++l) {
      plans_.push_back(has_targets ? make_attention_plan(layout, std::int32_t(l), opt_.n_q_heads)
                                   : full_attention_plan(opt_.n_q_heads, kv, geo_.d));
      plans_.back().rotated = opt_.rotate;
    }
    row_.resize(geo_.d);
    seqs_.resize(opt_.max_sequences);
    tables_.assign(opt_.max_sequences * geo_.max_blocks_per_seq, -1);
    free_.reserve(geo_.n_blocks);
    for (std::size_t b = geo_.n_blocks; b-- > 0;) free_.push_back(std::int32_t(b));
    build_streams();
  }
  /// The store points into the layout: a temporary would dangle.
  KvStore(RefCacheLayout&&, const KvStoreOptions&, void*, std::size_t) = delete;
  KvStore(const KvStore&) = delete;
  KvStore& operator=(const KvStore&) = delete;

  const RefCacheLayout& layout() const { return *layout_; }
  const KvStoreOptions& options() const { return opt_; }
  std::size_t n_layers() const { return plans_.size(); }
  std::size_t head_dim() const { return geo_.d; }
  std::size_t n_kv_heads() const { return std::size_t(layout_->n_kv_heads()); }
  std::size_t n_q_heads() const { return opt_.n_q_heads; }
  std::size_t sink_tokens() const { return geo_.sinks; }
  /// Softmax scale of the attention scores.
  float attention_scale() const {
    return opt_.attention_scale != 0.f ? opt_.attention_scale : 1.f / std::sqrt(float(geo_.d));
  }
  /// The attention plan of `layer` (queries absorbed, streams as the store numbers them).
  const AttentionLayerPlan& attention_plan(std::size_t layer) const { return plans_.at(layer); }

  // --- sequences -----------------------------------------------------------

  /// A new, empty sequence. Throws Error when max_sequences are alive.
  SequenceId add_sequence() {
    for (std::size_t i = 0; i < seqs_.size(); ++i)
      if (!seqs_[i].alive) {
        seqs_[i] = Seq{true, 0, 0};
        return SequenceId{std::uint32_t(i)};
      }
    detail::fail("KvStore: all ", seqs_.size(), " sequence slots are in use (KvStoreOptions::max_sequences)");
  }
  /// Frees the sequence's blocks and its slot.
  void remove_sequence(SequenceId s) {
    truncate(s, 0);
    seqs_[s.slot].alive = false;
  }
  /// Positions the sequence holds (the next token's position).
  std::size_t length(SequenceId s) const { return seq(s).length; }
  /// Extends the sequence by `n` positions (allocating blocks); returns the
  /// first new position. Their K/V must be appended, layer by layer, before
  /// attention reads them. Throws Error, changing nothing, when the pool or
  /// the contiguous region is too small.
  std::size_t extend(SequenceId s, std::size_t n) {
    Seq& q = seq(s);
    const std::size_t len = q.length + n;
    const std::size_t body = len > geo_.sinks ? len - geo_.sinks : 0;
    if (opt_.storage == KvStoreOptions::Storage::contiguous) {
      if (len > opt_.max_tokens)
        detail::fail("KvStore: sequence ", s.slot, " would hold ", len, " positions, the contiguous capacity is ",
                     opt_.max_tokens, " (KvStoreOptions::max_tokens)");
    } else {
      const std::size_t need = (body + geo_.block_tokens - 1) / geo_.block_tokens;
      if (need > q.n_blocks && need - q.n_blocks > free_.size())
        detail::fail("KvStore: sequence ", s.slot, " needs ", need - q.n_blocks, " more blocks of ",
                     geo_.block_tokens, " positions, ", free_.size(), " of ", geo_.n_blocks, " are free");
      for (; q.n_blocks < need; ++q.n_blocks) {
        tables_[s.slot * geo_.max_blocks_per_seq + q.n_blocks] = free_.back();
        free_.pop_back();
      }
    }
    const std::size_t pos0 = q.length;
    q.length = len;
    return pos0;
  }
  /// Keeps the first `n` positions (n <= length), freeing blocks no longer used.
  void truncate(SequenceId s, std::size_t n) {
    Seq& q = seq(s);
    if (n > q.length) detail::fail("KvStore: truncate sequence ", s.slot, " to ", n, " of ", q.length, " positions");
    q.length = n;
    if (opt_.storage == KvStoreOptions::Storage::contiguous) return;
    const std::size_t body = n > geo_.sinks ? n - geo_.sinks : 0;
    const std::size_t keep = (body + geo_.block_tokens - 1) / geo_.block_tokens;
    for (; q.n_blocks > keep; --q.n_blocks) {
      std::int32_t& b = tables_[s.slot * geo_.max_blocks_per_seq + q.n_blocks - 1];
      free_.push_back(b);
      b = -1;
    }
  }

  // --- append --------------------------------------------------------------

  /// Stores K and V of positions [pos0, pos0 + n) of `layer` (views
  /// [n, n_kv_heads, head_dim], any layout and element type; K after RoPE):
  /// every head of sink positions, the layer's cached heads after them and
  /// its latent streams (Pᵀ of the token's heads, in double, rounded once),
  /// converted to the store's element type. Positions must have been
  /// extend()ed. Throws Error naming both shapes when a view does not fit.
  void append(SequenceId s, std::size_t layer, std::size_t pos0, AnyHeadsView k, AnyHeadsView v) {
    const Seq& q = seq(s);
    if (layer >= n_layers()) detail::fail("KvStore::append: layer ", layer, " of ", n_layers());
    for (const auto* x : {&k, &v}) {
      const char* name = x == &k ? "K" : "V";
      if (x->extent.heads != n_kv_heads() || x->extent.dim != geo_.d)
        detail::fail("KvStore::append: ", name, " view has ", x->extent.heads, " heads of dim ", x->extent.dim,
                     ", the store's plan has ", n_kv_heads(), " KV heads of dim ", geo_.d);
    }
    if (k.extent.tokens != v.extent.tokens)
      detail::fail("KvStore::append: K has ", k.extent.tokens, " tokens, V ", v.extent.tokens);
    const std::size_t n = k.extent.tokens;
    if (pos0 + n > q.length)
      detail::fail("KvStore::append: positions ", pos0, "..", pos0 + n, " of sequence ", s.slot, ", which holds ",
                   q.length, " (call extend first)");
    const SequenceStreams where = streams(s, layer);
    for (int side = 0; side < 2; ++side) {
      const AnyHeadsView& x = side == 0 ? k : v;
      const auto& cached = layout_->cached(side == 0 ? Kind::k : Kind::v, std::int32_t(layer));
      const HeadStream* sinks = side == 0 ? where.sink_k : where.sink_v;
      const HeadStream* body = side == 0 ? where.k : where.v;
      const Kind kind = side == 0 ? Kind::k : Kind::v;
      x.visit([&](auto view) {
        for (std::size_t t = 0; t < n; ++t) {
          const std::size_t pos = pos0 + t;
          if (pos < geo_.sinks) {
            for (std::size_t h = 0; h < n_kv_heads(); ++h) store_row(view, t, h, sinks[h], pos);
            continue;
          }
          bool projected = false;
          for (std::size_t slot = 0; slot < cached.size(); ++slot) {
            const std::int32_t id = cached[slot];
            if (std::size_t(id) < n_kv_heads()) {
              store_row(view, t, std::size_t(id), body[slot], pos - geo_.sinks);
              continue;
            }
            if (!projected) load_layer(view, t), projected = true;
            project(*layout_->latent(kind, std::int32_t(layer), id));
            store_buffer(body[slot], pos - geo_.sinks);
          }
        }
      });
    }
  }

  // --- reading -------------------------------------------------------------

  /// Where the kernels read layer `layer` of sequence `s`.
  SequenceStreams streams(SequenceId s, std::size_t layer) const {
    seq(s);
    if (layer >= n_layers()) detail::fail("KvStore: layer ", layer, " of ", n_layers());
    const LayerStreams& L = streams_[s.slot * n_layers() + layer];
    return {geo_.sinks, L.sink[0].data(), L.sink[1].data(), L.body[0].data(), L.body[1].data()};
  }

  // --- bytes ---------------------------------------------------------------

  /// Bytes per position after the sinks (K and V, every layer): the cached heads only.
  std::size_t bytes_per_token() const { return layout_->body_bytes_per_token(opt_.dtype); }
  /// Bytes of one sequence's sink slab (every head of the sink positions).
  std::size_t sink_bytes() const { return geo_.slab_bytes; }
  /// Bytes of one block (block_tokens × bytes_per_token()).
  std::size_t block_bytes() const { return geo_.block_bytes; }
  /// Bytes of the whole pool.
  std::size_t pool_bytes() const { return geo_.pool_bytes; }
  /// Bytes a sequence occupies: its sink slab and its blocks (contiguous: its region).
  std::size_t bytes_in_use(SequenceId s) const {
    const Seq& q = seq(s);
    const std::size_t blocks = opt_.storage == KvStoreOptions::Storage::contiguous ? 1 : q.n_blocks;
    return geo_.slab_bytes + blocks * geo_.block_bytes;
  }
  /// Free blocks of a paged pool.
  std::size_t free_blocks() const { return free_.size(); }
  /// Bytes one decode step of all layers reads at `n` positions:
  /// every head of the sink positions, and per layer every stream it attends
  /// over (cross-layer references are read again by each layer using them).
  std::size_t read_bytes(std::size_t n) const {
    const std::size_t ns = std::min(n, geo_.sinks), row = dtype_row_bytes(opt_.dtype, geo_.d);
    std::size_t b = 0;
    for (const AttentionLayerPlan& p : plans_)
      b += (ns * 2 * n_kv_heads() + (n - ns) * (p.n_k_streams + p.n_v_streams)) * row;
    return b;
  }

 private:
  struct Geometry {
    std::size_t d = 0, sinks = 0, block_tokens = 0, n_blocks = 0, max_blocks_per_seq = 1;
    std::size_t block_values = 0, slab_values = 0, block_bytes = 0, slab_bytes = 0, pool_bytes = 0;
    std::vector<std::size_t> region[2], sink_region[2];  // value offsets within a block / a slab, per layer

    Geometry(const RefCacheLayout& layout, const KvStoreOptions& o) {
      d = std::size_t(layout.head_dim());
      sinks = std::size_t(std::max(layout.sink_tokens(), 0));
      if (is_block_type(o.dtype) && d % kQuantBlock != 0)
        detail::fail("KvStore: ", dtype_name(o.dtype), " needs head_dim divisible by 32, got ", d);
      if (o.rotate && !hadamard_length_ok(d))
        detail::fail("KvStore: rotate needs head_dim a power of two, got ", d);
      if (o.n_q_heads == 0 || o.n_q_heads % std::size_t(layout.n_kv_heads()) != 0)
        detail::fail("KvStore: n_q_heads ", o.n_q_heads, " is not a positive multiple of the ", layout.n_kv_heads(),
                     " KV heads");
      if (o.max_sequences == 0 || o.max_sequences > (1u << 20))
        detail::fail("KvStore: max_sequences ", o.max_sequences, " (expected 1..", 1u << 20, ")");
      if (o.storage == KvStoreOptions::Storage::contiguous) {
        if (o.max_tokens == 0) detail::fail("KvStore: contiguous storage needs max_tokens > 0");
        block_tokens = o.max_tokens > sinks ? o.max_tokens - sinks : 0;
        n_blocks = o.max_sequences;
      } else {
        if (o.block_tokens == 0) detail::fail("KvStore: block_tokens must be positive");
        if (o.n_blocks > (std::size_t(1) << 31) - 1) detail::fail("KvStore: n_blocks ", o.n_blocks, " exceeds 2^31-1");
        block_tokens = o.block_tokens;
        n_blocks = o.n_blocks;
        max_blocks_per_seq = std::max<std::size_t>(n_blocks, 1);
      }
      const std::size_t L = std::size_t(layout.n_layers()), kv = std::size_t(layout.n_kv_heads());
      for (int side = 0; side < 2; ++side) {
        region[side].resize(L);
        sink_region[side].resize(L);
      }
      for (std::size_t l = 0; l < L; ++l)
        for (int side = 0; side < 2; ++side) {
          const std::size_t slots = layout.cached(side == 0 ? Kind::k : Kind::v, std::int32_t(l)).size();
          region[side][l] = block_values;
          block_values += block_tokens * slots * d;
          sink_region[side][l] = slab_values;
          slab_values += sinks * kv * d;
        }
      block_bytes = dtype_row_bytes(o.dtype, block_values);
      slab_bytes = dtype_row_bytes(o.dtype, slab_values);
      const double total = double(o.max_sequences) * double(slab_bytes) + double(n_blocks) * double(block_bytes);
      if (total > 1e18) detail::fail("KvStore: the pool would need ", total, " bytes");
      pool_bytes = o.max_sequences * slab_bytes + n_blocks * block_bytes;
    }
  };
  struct Seq {
    bool alive = false;
    std::size_t length = 0, n_blocks = 0;
  };
  struct LayerStreams {
    std::vector<HeadStream> sink[2], body[2];
  };

  const Seq& seq(SequenceId s) const {
    if (s.slot >= seqs_.size() || !seqs_[s.slot].alive) detail::fail("KvStore: sequence ", s.slot, " is not alive");
    return seqs_[s.slot];
  }
  Seq& seq(SequenceId s) { return const_cast<Seq&>(static_cast<const KvStore*>(this)->seq(s)); }

  void build_streams() {
    const std::size_t L = n_layers(), kv = n_kv_heads(), d = geo_.d;
    const bool paged = opt_.storage == KvStoreOptions::Storage::paged;
    const std::size_t body0 = opt_.max_sequences * geo_.slab_values;  // value offset of block 0
    streams_.resize(opt_.max_sequences * L);
    for (std::size_t i = 0; i < opt_.max_sequences; ++i)
      for (std::size_t l = 0; l < L; ++l) {
        LayerStreams& S = streams_[i * L + l];
        for (int side = 0; side < 2; ++side) {
          const Kind kind = side == 0 ? Kind::k : Kind::v;
          for (std::size_t h = 0; h < kv; ++h) {
            HeadStream st;
            st.base = pool_;
            st.dtype = opt_.dtype;
            st.offset = std::ptrdiff_t(i * geo_.slab_values + geo_.sink_region[side][l] + h * d);
            st.token_stride = std::ptrdiff_t(kv * d);
            st.rotated = opt_.rotate;
            S.sink[side].push_back(st);
          }
          for (HeadId id : layout_->streams(kind, std::int32_t(l))) {
            const std::size_t src = std::size_t(id.layer);
            const std::size_t slot = std::size_t(layout_->slot(kind, id.layer, id.head));
            const std::size_t slots = layout_->cached(kind, id.layer).size();
            HeadStream st;
            st.base = pool_;
            st.dtype = opt_.dtype;
            st.offset = std::ptrdiff_t(body0 + geo_.region[side][src] + slot * d);
            st.token_stride = std::ptrdiff_t(slots * d);
            st.rotated = opt_.rotate;
            if (paged) {
              st.block_table = tables_.data() + i * geo_.max_blocks_per_seq;
              st.block_size = geo_.block_tokens;
              st.block_stride = std::ptrdiff_t(geo_.block_values);
            } else {
              st.offset += std::ptrdiff_t(i * geo_.block_values);
            }
            S.body[side].push_back(st);
          }
        }
      }
  }

  template <class View>
  void store_row(const View& view, std::size_t t, std::size_t h, const HeadStream& dst, std::size_t token) {
    const std::size_t d = geo_.d;
    const auto* src = view.vec(t, h);
    for (std::size_t i = 0; i < d; ++i) row_[i] = to_float(src[std::ptrdiff_t(i) * view.stride.dim]);
    store_buffer(dst, token);
  }
  /// Token t's heads of the layer, concatenated, into layer_row_ (double).
  template <class View>
  void load_layer(const View& view, std::size_t t) {
    const std::size_t d = geo_.d, kv = n_kv_heads();
    layer_row_.resize(kv * d);
    for (std::size_t h = 0; h < kv; ++h) {
      const auto* src = view.vec(t, h);
      for (std::size_t i = 0; i < d; ++i) layer_row_[h * d + i] = double(to_float(src[std::ptrdiff_t(i) * view.stride.dim]));
    }
  }
  /// row_ = Pᵀ layer_row_, accumulated in double and rounded once to float
  /// (an independent implementation gets the same floats).
  void project(const LatentStream& ls) {
    const std::size_t d = geo_.d, p = layer_row_.size();
    acc_.assign(d, 0.0);
    const float* P = ls.projection.data();
    for (std::size_t i = 0; i < p; ++i) {
      const double xi = layer_row_[i];
      const float* pr = P + i * d;
      for (std::size_t j = 0; j < d; ++j) acc_[j] += xi * double(pr[j]);
    }
    for (std::size_t j = 0; j < d; ++j) row_[j] = float(acc_[j]);
  }
  /// Stores row_ (the model's frame) as the store's type at token `token` of `dst`.
  void store_buffer(const HeadStream& dst, std::size_t token) {
    const std::size_t d = geo_.d;
    float* x = row_.data();
    if (opt_.rotate) hadamard_rotate(x, d);
    void* out = dst.mutable_row_address(token);
    switch (opt_.dtype) {
      case DType::f32: std::memcpy(out, x, d * sizeof(float)); break;
      case DType::f16:
        for (std::size_t i = 0; i < d; ++i) static_cast<f16_t*>(out)[i] = to_f16(x[i]);
        break;
      case DType::bf16:
        for (std::size_t i = 0; i < d; ++i) static_cast<bf16_t*>(out)[i] = to_bf16(x[i]);
        break;
      case DType::q8_0:
      case DType::q4_0: quantize_row(x, d, opt_.dtype, out); break;
    }
  }

  const RefCacheLayout* layout_;
  KvStoreOptions opt_;
  Geometry geo_;
  std::byte* pool_;
  std::vector<AttentionLayerPlan> plans_;
  std::vector<Seq> seqs_;
  std::vector<std::int32_t> tables_;  // [max_sequences][max_blocks_per_seq]
  std::vector<std::int32_t> free_;
  std::vector<LayerStreams> streams_;  // [max_sequences][n_layers]
  std::vector<float> row_;             // append's conversion buffer
  std::vector<double> layer_row_, acc_;  // append's latent projection: the layer's heads, Pᵀx
};

}  // namespace headrecon
