#pragma once
// The engine's KV cache: one sequence in a headrecon::KvStore (contiguous
// storage, f32/f16/bf16) and its attention workspace. Glue only: what is
// stored (sinks with every head, then the plan's cached heads; cross-layer
// references read from the earlier layer's rows), the attention (keys
// absorbed, values mapped once, split over tokens on the engine's threads)
// and the byte counts all come from the library. Without a plan every head
// is cached: an ordinary KV cache through the same kernel.

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include <hwy/targets.h>

#include "headrecon/cpu/kv_attention.hpp"
#include "headrecon/kv_pool.hpp"
#include "headrecon/kv_store.hpp"
#include "headrecon/plan.hpp"
#include "headrecon/ref_cache.hpp"

namespace headrecon_engine {

/// The attention kernel every KvCache runs, and its Highway target's name:
/// null = headrecon::attend's default, this build's static target. The
/// engine's main sets headrecon::dispatch::attention (the best target of the
/// running CPU) unless --static-attention is given.
struct AttentionKernelChoice {
  headrecon::AttentionKernel kernel = nullptr;
  const char* target = nullptr;
};
inline AttentionKernelChoice& engine_attention_kernel() {
  static AttentionKernelChoice k;
  return k;
}
/// The Highway target the caches' attention runs on ("AVX3_SPR", "AVX2", ...).
inline const char* attention_target() {
  const AttentionKernelChoice& k = engine_attention_kernel();
  return k.target ? k.target : hwy::TargetName(HWY_STATIC_TARGET);
}

/// Shape of the model's attention, as the cache needs it.
struct AttentionShape {
  std::size_t n_layer = 0, n_head = 0, n_head_kv = 0, head_dim = 0;
};

class KvCache {
 public:
  /// Rows one attention call takes; longer forward passes are cut into chunks of this many tokens.
  static constexpr std::size_t kMaxRows = 256;

  /// A cache of `n_ctx` positions. `plan` (copied; null = full cache) must be
  /// fitted after RoPE on this model's KV heads; its Q part is ignored.
  KvCache(const AttentionShape& s, const headrecon::Plan* plan, std::size_t n_ctx,
          headrecon::CacheType type = headrecon::CacheType())
      : shape_(s), has_plan_(plan != nullptr) {
    using headrecon::Kind;
    if (plan) {
      plan_ = *plan;
      if (std::size_t(plan_.n_layers) != s.n_layer || std::size_t(plan_.head_dim) != s.head_dim)
        headrecon::detail::fail("KV cache: the plan has ", plan_.n_layers, " layers and head_dim ", plan_.head_dim,
                                ", the model ", s.n_layer, " and ", s.head_dim);
      if (plan_.find(Kind::q)) plan_.kinds.erase(plan_.kinds.begin() + (plan_.find(Kind::q) - plan_.kinds.data()));
    } else {
      plan_.n_layers = std::int32_t(s.n_layer);
      plan_.head_dim = std::int32_t(s.head_dim);
    }
    layout_ = std::make_unique<headrecon::RefCacheLayout>(plan_, std::int32_t(s.n_head_kv));
    headrecon::KvStoreOptions o;
    o.storage = headrecon::KvStoreOptions::Storage::contiguous;
    o.n_q_heads = s.n_head;
    o.dtype = type.dtype;
    o.rotate = type.rotate;
    o.max_sequences = 1;
    o.max_tokens = n_ctx;
    pool_ = headrecon::KvPool(headrecon::KvStore::pool_bytes(*layout_, o));  // 2 MiB pages where the OS has them
    store_ = std::make_unique<headrecon::KvStore>(*layout_, o, pool_.data(), pool_.size());
    seq_ = store_->add_sequence();
    headrecon::AttentionLimits lim;
    lim.max_rows = std::min(kMaxRows, n_ctx);
    lim.max_tokens = n_ctx;
    lim.workers = std::max(1u, std::thread::hardware_concurrency());
    ws_ = std::make_unique<headrecon::AttentionWorkspace>(*store_, lim);
  }
  /// A full f32 cache.
  KvCache(const AttentionShape& s, std::size_t n_ctx) : KvCache(s, nullptr, n_ctx) {}
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  std::size_t capacity() const { return store_->options().max_tokens; }
  /// Positions already filled (the next token's position).
  std::size_t size() const { return store_->length(seq_); }
  void clear() { store_->truncate(seq_, 0); }
  /// Keeps positions [0, n) and forgets the rest.
  void truncate(std::size_t n) { store_->truncate(seq_, n); }
  /// Makes room for `n` more positions; returns the first.
  std::size_t extend(std::size_t n) { return store_->extend(seq_, n); }
  std::size_t sink_tokens() const { return store_->sink_tokens(); }
  headrecon::DType dtype() const { return store_->options().dtype; }
  headrecon::CacheType cache_type() const { return {store_->options().dtype, store_->options().rotate}; }
  const headrecon::Plan& plan() const { return plan_; }
  bool has_plan() const { return has_plan_; }
  const headrecon::RefCacheLayout& layout() const { return *layout_; }
  const headrecon::KvStore& store() const { return *store_; }

  /// Stores K/V of positions pos0..pos0+n-1 of `layer`: k and v are
  /// [n][n_head_kv][head_dim] floats (K after RoPE). Extends the sequence
  /// when these positions are new.
  void append(std::size_t layer, std::size_t pos0, std::size_t n, const float* k, const float* v) {
    if (pos0 + n > size()) extend(pos0 + n - size());
    const std::size_t e = n * shape_.n_head_kv * shape_.head_dim;
    const headrecon::Extents3 ext{n, shape_.n_head_kv, shape_.head_dim};
    store_->append(seq_, layer, pos0,
                   headrecon::erase(headrecon::make_view(k, e, ext, headrecon::Layout::token_major, "K")),
                   headrecon::erase(headrecon::make_view(v, e, ext, headrecon::Layout::token_major, "V")));
  }

  /// Attention of the tokens at positions pos0..pos0+n-1 of `layer` (each
  /// over the positions up to its own; their K/V appended): q and out are
  /// [n][n_head][head_dim], q after RoPE.
  void attend(std::size_t layer, std::size_t pos0, std::size_t n, const float* q, float* out,
              const headrecon::ParallelFor& pf = headrecon::ParallelFor()) {
    const auto t0 = std::chrono::steady_clock::now();
    if (pf.workers() > ws_->limits().workers) {  // a larger pool than this machine's threads: grow once
      headrecon::AttentionLimits lim = ws_->limits();
      lim.workers = pf.workers();
      ws_ = std::make_unique<headrecon::AttentionWorkspace>(*store_, lim);
    }
    headrecon::attend(*store_, layer, {{seq_, pos0, n, q, out}}, *ws_, pf, engine_attention_kernel().kernel);
    attn_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  /// One token's attention (decode).
  void attend(std::size_t layer, std::size_t pos, const float* q, float* out,
              const headrecon::ParallelFor& pf = headrecon::ParallelFor()) {
    attend(layer, pos, 1, q, out, pf);
  }

  /// The stored K or V of `head` at `pos` of `layer`, as float (a rebuilt
  /// head past the sinks has none: Error).
  void read(headrecon::Kind kind, std::size_t layer, std::size_t pos, std::size_t head, float* out) const {
    const headrecon::SequenceStreams st = store_->streams(seq_, layer);
    const bool is_k = kind == headrecon::Kind::k;
    const headrecon::HeadStream* s = nullptr;
    std::size_t tok = pos;
    if (pos < st.n_sink) {
      s = (is_k ? st.sink_k : st.sink_v) + head;
    } else {
      const std::int32_t slot = layout_->slot(kind, std::int32_t(layer), std::int32_t(head));
      if (slot < 0) headrecon::detail::fail("KV cache: head ", layer, ".", head, " is rebuilt, not stored");
      s = (is_k ? st.k : st.v) + slot;
      tok = pos - st.n_sink;
    }
    const std::size_t d = shape_.head_dim;
    for (std::size_t i = 0; i < d && !headrecon::is_block_type(s->dtype); ++i) switch (s->dtype) {
        case headrecon::DType::f16: out[i] = headrecon::to_float(s->row<headrecon::f16_t>(tok)[i]); break;
        case headrecon::DType::bf16: out[i] = headrecon::to_float(s->row<headrecon::bf16_t>(tok)[i]); break;
        default: out[i] = s->row<float>(tok)[i]; break;
      }
    if (headrecon::is_block_type(s->dtype)) headrecon::dequantize_row(s->row_address(tok), d, s->dtype, out);
    if (s->rotated) headrecon::hadamard_rotate(out, d);
  }

  /// Bytes of the K/V buffers (sinks + body, all layers) for the capacity.
  std::size_t allocated_bytes() const { return store_->pool_bytes(); }
  /// What RefCacheLayout::bytes() says this capacity takes.
  std::size_t layout_bytes() const { return layout_->bytes(capacity(), dtype()); }
  /// Bytes `n_tokens` positions occupy (sink tokens with every head).
  std::size_t stored_bytes(std::size_t n_tokens) const { return layout_->bytes(n_tokens, dtype()); }
  /// Bytes one decode step reads at `n_tokens` positions (KvStore::read_bytes).
  std::size_t read_bytes(std::size_t n_tokens) const { return store_->read_bytes(n_tokens); }
  /// Bytes of a full cache of the same capacity and dtype.
  std::size_t full_bytes() const { return capacity() * layout_->full_bytes_per_token(dtype()); }

  /// Time spent in attention since construction (or reset).
  double attention_seconds() const { return attn_seconds_; }
  void reset_attention_seconds() { attn_seconds_ = 0; }

 private:
  AttentionShape shape_;
  bool has_plan_;
  headrecon::Plan plan_;  // before layout_, which points into it
  std::unique_ptr<headrecon::RefCacheLayout> layout_;
  headrecon::KvPool pool_;
  std::unique_ptr<headrecon::KvStore> store_;
  std::unique_ptr<headrecon::AttentionWorkspace> ws_;
  headrecon::SequenceId seq_;
  double attn_seconds_ = 0;
};

}  // namespace headrecon_engine
