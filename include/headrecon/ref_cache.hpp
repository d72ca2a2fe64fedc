#pragma once
/// @file ref_cache.hpp
/// The layout of a reference-only KV cache for a plan: per layer, which K and
/// V streams are stored (and in which slot: the cached heads, then the
/// layer's latent streams, id n_kv_heads + j), which streams each layer's
/// kernels read (its own, then earlier layers' streams used as references),
/// and exactly how many bytes it takes.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "headrecon/dtype.hpp"
#include "headrecon/plan.hpp"

namespace headrecon {

class RefCacheLayout {
 public:
  /// `n_kv_heads` K/V heads per layer. A kind missing from the plan is fully
  /// cached. The plan must outlive the layout.
  RefCacheLayout(const Plan& plan, std::int32_t n_kv_heads) : plan_(&plan), heads_(n_kv_heads) {
    plan.validate();
    if (n_kv_heads <= 0) detail::fail("RefCacheLayout: n_kv_heads must be positive");
    for (Kind k : {Kind::k, Kind::v}) {
      const KindPlan* kp = plan.find(k);
      if (kp && kp->n_heads != n_kv_heads)
        detail::fail("RefCacheLayout: plan's ", kind_name(k), " has ", kp->n_heads, " heads per layer, the model ",
                     n_kv_heads);
      auto& side = sides_[k == Kind::k ? 0 : 1];
      side.resize(std::size_t(plan.n_layers));
      for (std::int32_t l = 0; l < plan.n_layers; ++l) {
        Layer& L = side[std::size_t(l)];
        const std::int32_t n_latent = kp ? std::int32_t(kp->n_latent(l)) : 0;
        L.slot.assign(std::size_t(n_kv_heads + n_latent), -1);
        for (std::int32_t h = 0; h < n_kv_heads + n_latent; ++h)
          if (h >= n_kv_heads || !kp || !kp->find({l, h})) {
            L.slot[std::size_t(h)] = std::int32_t(L.cached.size());
            L.cached.push_back(h);
            L.streams.push_back({l, h});
          }
        if (kp)
          for (const TargetMap& t : kp->layers[std::size_t(l)])
            for (HeadId r : t.refs)
              if (std::find(L.streams.begin(), L.streams.end(), r) == L.streams.end()) L.streams.push_back(r);
      }
    }
  }

  /// The layout points into the plan: a temporary would dangle.
  RefCacheLayout(Plan&&, std::int32_t) = delete;

  const Plan& plan() const { return *plan_; }
  std::int32_t n_layers() const { return plan_->n_layers; }
  std::int32_t n_kv_heads() const { return heads_; }
  std::int32_t head_dim() const { return plan_->head_dim; }
  std::int32_t sink_tokens() const { return plan_->sink_tokens; }

  /// Streams of `layer` stored in the cache, in slot order: cached heads, then
  /// latent streams (id n_kv_heads() + j).
  const std::vector<std::int32_t>& cached(Kind k, std::int32_t layer) const { return side(k, layer).cached; }
  /// The latent stream `id` (n_kv_heads() + j) of `layer`, or nullptr for a head.
  const LatentStream* latent(Kind k, std::int32_t layer, std::int32_t id) const {
    side(k, layer);
    const KindPlan* kp = plan_->find(k);
    if (!kp || id < heads_) return nullptr;
    return &kp->latent.at(std::size_t(layer)).at(std::size_t(id - heads_));
  }
  /// Slot of stream h (head, or latent n_kv_heads() + j) in its layer's cache, or −1 when it is rebuilt.
  std::int32_t slot(Kind k, std::int32_t layer, std::int32_t h) const {
    return side(k, layer).slot.at(std::size_t(h));
  }
  /// Heads that layer's attention reads: its cached heads (slot order), then
  /// the distinct earlier-layer heads its targets reference.
  const std::vector<HeadId>& streams(Kind k, std::int32_t layer) const { return side(k, layer).streams; }
  /// Index of head `id` in streams(k, layer); throws Error when that layer does not read it.
  std::uint32_t stream_index(Kind k, std::int32_t layer, HeadId id) const {
    const auto& s = side(k, layer).streams;
    for (std::size_t i = 0; i < s.size(); ++i)
      if (s[i] == id) return std::uint32_t(i);
    detail::fail("RefCacheLayout: ", kind_name(k), " layer ", layer, " does not read head ", id.layer, ".", id.head);
  }

  /// Bytes per token after the sink tokens (K and V, all layers).
  std::size_t body_bytes_per_token(DType t) const {
    std::size_t heads = 0;
    for (const auto& s : sides_)
      for (const auto& l : s) heads += l.cached.size();
    return heads * dtype_row_bytes(t, std::size_t(head_dim()));
  }
  /// Bytes per token of a full cache (K and V, all heads, all layers).
  std::size_t full_bytes_per_token(DType t) const {
    return 2 * std::size_t(n_layers()) * std::size_t(heads_) * dtype_row_bytes(t, std::size_t(head_dim()));
  }
  /// Exact bytes of the cache for `tokens` tokens: sinks in full, the rest reference-only.
  std::size_t bytes(std::size_t tokens, DType t) const {
    const std::size_t s = std::min(tokens, std::size_t(std::max(sink_tokens(), 0)));
    return s * full_bytes_per_token(t) + (tokens - s) * body_bytes_per_token(t);
  }

 private:
  struct Layer {
    std::vector<std::int32_t> cached, slot;
    std::vector<HeadId> streams;
  };
  const Layer& side(Kind k, std::int32_t layer) const {
    if (k == Kind::q) detail::fail("RefCacheLayout: queries are not cached");
    if (layer < 0 || layer >= n_layers()) detail::fail("RefCacheLayout: layer ", layer, " of ", n_layers());
    return sides_[k == Kind::k ? 0 : 1][std::size_t(layer)];
  }
  const Plan* plan_;
  std::int32_t heads_;
  std::vector<Layer> sides_[2];
};

}  // namespace headrecon
