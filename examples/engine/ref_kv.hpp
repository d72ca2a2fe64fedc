#pragma once
// A reference-only KV cache for one sequence, and decode attention over it
// through the library (headrecon::decode_attention): per layer and kind, the
// first plan.sink_tokens tokens keep every KV head; later tokens keep only
// the heads the plan caches in that layer (RefCacheLayout::cached). A layer's
// attention reads its own cached heads and, for cross-layer references, the
// cached heads of earlier layers, straight from those layers' buffers
// (RefCacheLayout::streams): nothing is stored twice and nothing rebuilt is
// ever written. Without a plan every head is cached and attention runs the
// same kernel with full_attention_plan().

#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "headrecon/cpu/attention.hpp"
#include "headrecon/dtype.hpp"
#include "headrecon/error.hpp"
#include "headrecon/plan.hpp"
#include "headrecon/ref_cache.hpp"

namespace headrecon_engine {

/// Shape of the model's attention, as the cache needs it.
struct AttentionShape {
  std::size_t n_layer = 0, n_head = 0, n_head_kv = 0, head_dim = 0;
};

class RefKvCache {
 public:
  /// A cache of `n_ctx` tokens. `plan` (copied; may be null) must be fitted
  /// after RoPE on this model's KV heads; null = full cache. `dtype`: storage
  /// type of the cached vectors (f32, f16 or bf16).
  RefKvCache(const AttentionShape& s, const headrecon::Plan* plan, std::size_t n_ctx,
             headrecon::DType dtype = headrecon::DType::f32)
      : shape_(s), n_ctx_(n_ctx), dtype_(dtype), has_plan_(plan != nullptr) {
    using headrecon::Kind;
    if (plan) {
      plan_ = *plan;
      if (std::size_t(plan_.n_layers) != s.n_layer || std::size_t(plan_.head_dim) != s.head_dim)
        headrecon::detail::fail("reference cache: the plan has ", plan_.n_layers, " layers and head_dim ",
                                plan_.head_dim, ", the model ", s.n_layer, " and ", s.head_dim);
      if (plan_.find(Kind::q)) plan_.kinds.erase(plan_.kinds.begin() + (plan_.find(Kind::q) - plan_.kinds.data()));
    } else {
      plan_.n_layers = std::int32_t(s.n_layer);
      plan_.head_dim = std::int32_t(s.head_dim);
      plan_.post_rope = true;
      plan_.sink_tokens = 0;
    }
    layout_ = std::make_unique<headrecon::RefCacheLayout>(plan_, std::int32_t(s.n_head_kv));
    n_sink_ = std::min(n_ctx_, std::size_t(plan_.sink_tokens));
    const std::size_t L = s.n_layer, d = s.head_dim, kv = s.n_head_kv, es = headrecon::dtype_size(dtype_);
    layers_.resize(L);
    for (std::size_t l = 0; l < L; ++l) {
      Layer& Y = layers_[l];
      for (int side = 0; side < 2; ++side) {
        const Kind kind = side == 0 ? Kind::k : Kind::v;
        Y.n_cached[side] = layout_->cached(kind, std::int32_t(l)).size();
        Y.sink[side].assign(n_sink_ * kv * d * es, std::byte{0});
        Y.body[side].assign((n_ctx_ - n_sink_) * Y.n_cached[side] * d * es, std::byte{0});
      }
    }
    // Streams: sink streams over every head; body streams as the layout lists
    // them, each pointing into the buffer of the layer that caches the head.
    for (std::size_t l = 0; l < L; ++l) {
      Layer& Y = layers_[l];
      for (int side = 0; side < 2; ++side) {
        const Kind kind = side == 0 ? Kind::k : Kind::v;
        for (std::size_t h = 0; h < kv; ++h)
          Y.sink_streams[side].push_back({Y.sink[side].data(), dtype_, std::ptrdiff_t(h * d),
                                          std::ptrdiff_t(kv * d), nullptr, 0, 0});
        for (headrecon::HeadId id : layout_->streams(kind, std::int32_t(l))) {
          const std::int32_t slot = layout_->slot(kind, id.layer, id.head);
          if (slot < 0 || id.layer > std::int32_t(l))
            headrecon::detail::fail("reference cache: layer ", l, " reads ", headrecon::kind_name(kind), " head ",
                                    id.layer, ".", id.head, ", which no layer up to it caches");
          const Layer& src = layers_[std::size_t(id.layer)];
          Y.body_streams[side].push_back({src.body[side].data(), dtype_, std::ptrdiff_t(std::size_t(slot) * d),
                                          std::ptrdiff_t(src.n_cached[side] * d), nullptr, 0, 0});
        }
      }
      Y.attn = has_plan_ ? headrecon::make_attention_plan(*layout_, std::int32_t(l), s.n_head)
                         : headrecon::full_attention_plan(s.n_head, kv, d);
      work_floats_ = std::max(work_floats_, headrecon::decode_attention_workspace_floats(Y.attn));
    }
    work_.assign(work_floats_, 0.f);
    if (allocated_bytes() != layout_bytes())
      headrecon::detail::fail("reference cache: allocated ", allocated_bytes(), " bytes, the layout says ",
                              layout_bytes());
  }
  RefKvCache(const RefKvCache&) = delete;
  RefKvCache& operator=(const RefKvCache&) = delete;

  std::size_t capacity() const { return n_ctx_; }
  /// Positions already filled (the next token's position).
  std::size_t size() const { return n_past_; }
  void clear() { n_past_ = 0; }
  void advance(std::size_t n) { n_past_ += n; }
  std::size_t sink_tokens() const { return n_sink_; }
  headrecon::DType dtype() const { return dtype_; }
  const headrecon::Plan& plan() const { return plan_; }
  bool has_plan() const { return has_plan_; }
  const headrecon::RefCacheLayout& layout() const { return *layout_; }

  /// Bytes of the K/V buffers actually allocated (sinks + bodies, all layers).
  std::size_t allocated_bytes() const {
    std::size_t b = 0;
    for (const Layer& Y : layers_)
      for (int side = 0; side < 2; ++side) b += Y.sink[side].size() + Y.body[side].size();
    return b;
  }
  /// What RefCacheLayout::bytes() says this capacity takes.
  std::size_t layout_bytes() const { return layout_->bytes(n_ctx_, dtype_); }
  /// Bytes one decode step reads at `n_tokens` tokens, all layers: every
  /// head of the sink tokens, and per layer every stream it attends over
  /// (its cached heads and its earlier-layer references, which are read
  /// again by each layer that uses them).
  std::size_t read_bytes(std::size_t n_tokens) const {
    const std::size_t ns = std::min(n_tokens, n_sink_), d = shape_.head_dim, es = headrecon::dtype_size(dtype_);
    std::size_t b = 0;
    for (const Layer& Y : layers_)
      b += (ns * 2 * shape_.n_head_kv + (n_tokens - ns) * (Y.body_streams[0].size() + Y.body_streams[1].size())) * d * es;
    return b;
  }
  /// Bytes of a full cache of the same capacity and dtype.
  std::size_t full_bytes() const { return n_ctx_ * layout_->full_bytes_per_token(dtype_); }

  /// Stores K/V of tokens at positions pos0..pos0+n-1 of `layer`: k and v are
  /// [n][n_head_kv][head_dim] floats (K after RoPE). Sink positions keep every
  /// head; later positions only the layer's cached heads.
  void append(std::size_t layer, std::size_t pos0, std::size_t n, const float* k, const float* v) {
    if (pos0 + n > n_ctx_)
      headrecon::detail::fail("reference cache: ", pos0 + n, " positions exceed the capacity ", n_ctx_);
    Layer& Y = layers_.at(layer);
    const std::size_t d = shape_.head_dim, kv = shape_.n_head_kv;
    for (int side = 0; side < 2; ++side) {
      const float* src = side == 0 ? k : v;
      const auto& cached = layout_->cached(side == 0 ? headrecon::Kind::k : headrecon::Kind::v, std::int32_t(layer));
      for (std::size_t i = 0; i < n; ++i) {
        const std::size_t p = pos0 + i;
        const float* row = src + i * kv * d;
        if (p < n_sink_) {
          store(Y.sink[side], (p * kv) * d, row, kv * d);
        } else {
          const std::size_t base = (p - n_sink_) * Y.n_cached[side];
          for (std::size_t s = 0; s < cached.size(); ++s)
            store(Y.body[side], (base + s) * d, row + std::size_t(cached[s]) * d, d);
        }
      }
    }
  }

  /// Attention output of the token at position `pos` of `layer` (its K/V and
  /// those of every earlier layer already appended): `q` [n_head][head_dim]
  /// after RoPE, `out` [n_head][head_dim].
  void attend(std::size_t layer, std::size_t pos, const float* q, float* out) {
    const auto t0 = std::chrono::steady_clock::now();
    const Layer& Y = layers_.at(layer);
    const std::size_t n = pos + 1, ns = std::min(n, n_sink_);
    headrecon::DecodeAttentionArgs a;
    a.plan = &Y.attn;
    a.q = q;
    a.scale = float(1.0 / std::sqrt(double(shape_.head_dim)));
    a.n_sink = ns;
    a.sink_k = Y.sink_streams[0].data();
    a.sink_v = Y.sink_streams[1].data();
    a.n_body = n - ns;
    a.k_streams = Y.body_streams[0].data();
    a.v_streams = Y.body_streams[1].data();
    a.out = out;
    a.workspace = work_.data();
    a.workspace_floats = work_.size();
    headrecon::decode_attention(a);
    attn_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  /// Time spent in decode_attention since construction (or reset).
  double attention_seconds() const { return attn_seconds_; }
  void reset_attention_seconds() { attn_seconds_ = 0; }

 private:
  struct Layer {
    std::size_t n_cached[2] = {0, 0};                       // K, V
    std::vector<std::byte> sink[2], body[2];                // [n_sink][kv][d], [n_ctx - n_sink][n_cached][d]
    std::vector<headrecon::HeadStream> sink_streams[2], body_streams[2];
    headrecon::AttentionLayerPlan attn;
  };
  void store(std::vector<std::byte>& buf, std::size_t elem0, const float* x, std::size_t n) const {
    switch (dtype_) {
      case headrecon::DType::f32: {
        float* dst = reinterpret_cast<float*>(buf.data()) + elem0;
        for (std::size_t i = 0; i < n; ++i) dst[i] = x[i];
        break;
      }
      case headrecon::DType::f16: {
        auto* dst = reinterpret_cast<headrecon::f16_t*>(buf.data()) + elem0;
        for (std::size_t i = 0; i < n; ++i) dst[i] = headrecon::to_f16(x[i]);
        break;
      }
      case headrecon::DType::bf16: {
        auto* dst = reinterpret_cast<headrecon::bf16_t*>(buf.data()) + elem0;
        for (std::size_t i = 0; i < n; ++i) dst[i] = headrecon::to_bf16(x[i]);
        break;
      }
    }
  }

  AttentionShape shape_;
  std::size_t n_ctx_;
  headrecon::DType dtype_;
  bool has_plan_;
  headrecon::Plan plan_;  // before layout_, which points into it
  std::unique_ptr<headrecon::RefCacheLayout> layout_;
  std::size_t n_sink_ = 0, n_past_ = 0, work_floats_ = 0;
  std::vector<Layer> layers_;
  std::vector<float> work_;
  double attn_seconds_ = 0;
};

}  // namespace headrecon_engine
