#pragma once
/// @file plan.hpp
/// A reconstruction plan: per kind (q, k, v) and layer, which heads stay cached
/// and, for every rebuilt (target) head, its references and its linear map.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "headrecon/error.hpp"
#include "headrecon/limits.hpp"

namespace headrecon {

/// Which projection a head belongs to.
enum class Kind : std::uint8_t { q = 0, k = 1, v = 2 };

constexpr std::string_view kind_name(Kind k) { return k == Kind::q ? "q" : k == Kind::k ? "k" : "v"; }

/// Parses "q", "k" or "v"; throws Error naming the value otherwise.
inline Kind parse_kind(std::string_view s) {
  if (s == "q") return Kind::q;
  if (s == "k") return Kind::k;
  if (s == "v") return Kind::v;
  detail::fail("unknown kind '", s, "' (expected q, k or v)");
}

/// A head, addressed by layer and head index within its kind.
struct HeadId {
  std::int32_t layer = 0;
  std::int32_t head = 0;
  friend bool operator==(HeadId a, HeadId b) { return a.layer == b.layer && a.head == b.head; }
  friend bool operator!=(HeadId a, HeadId b) { return !(a == b); }
  friend bool operator<(HeadId a, HeadId b) {
    return a.layer != b.layer ? a.layer < b.layer : a.head < b.head;
  }
};

/// The linear map of one rebuilt head: y = W^T [x_ref1; ...; x_refk] + b.
struct TargetMap {
  HeadId target;
  std::vector<HeadId> refs;   ///< k references, in the order their blocks appear in W's rows.
  std::vector<float> weight;  ///< row-major [k*d, d]: row r·d+i is component i of ref r.
  std::vector<float> bias;    ///< [d]
  float r2_heldout = 0.f;     ///< Held-out R² (mean over dimensions, clipped at -1).
};

/// A latent stream: d components z = Pᵀ x of a layer, x = the layer's heads
/// of one kind concatenated (head 0 first, n_heads·d values). The cache stores
/// it like a head (the store projects at append time); targets reference
/// latent stream j of layer l as head id {l, n_heads + j}.
struct LatentStream {
  std::vector<float> projection;  ///< row-major [n_heads·d, d]: column j gives component j
};

/// One kind's plan: the head count and the rebuilt heads of every layer.
struct KindPlan {
  Kind kind = Kind::k;
  std::int32_t n_heads = 0;  ///< heads per layer of this kind (Q heads differ from KV heads under GQA)
  std::vector<std::vector<TargetMap>> layers;  ///< [n_layers] targets, sorted by head
  /// [n_layers] latent streams per layer (empty: none; a plan of format
  /// version 1 has none). At most n_heads per layer.
  std::vector<std::vector<LatentStream>> latent;

  /// Latent streams of `layer`.
  std::size_t n_latent(std::int32_t layer) const {
    return layer >= 0 && std::size_t(layer) < latent.size() ? latent[std::size_t(layer)].size() : 0;
  }
  /// True when `id` names a latent stream (head index n_heads + j).
  bool is_latent(HeadId id) const { return id.head >= n_heads; }
  /// True when any layer has a latent stream.
  bool has_latent() const {
    for (const auto& l : latent)
      if (!l.empty()) return true;
    return false;
  }

  /// Heads of `layer` that stay cached (every head that is not a target).
  std::vector<std::int32_t> cached_heads(std::int32_t layer) const {
    std::vector<std::int32_t> out;
    for (std::int32_t h = 0; h < n_heads; ++h)
      if (!find(HeadId{layer, h})) out.push_back(h);
    return out;
  }
  /// The map of head `id`, or nullptr when that head is cached.
  const TargetMap* find(HeadId id) const {
    if (id.layer < 0 || std::size_t(id.layer) >= layers.size()) return nullptr;
    for (const auto& t : layers[std::size_t(id.layer)])
      if (t.target.head == id.head) return &t;
    return nullptr;
  }
  /// Number of rebuilt heads over all layers.
  std::size_t n_targets() const {
    std::size_t n = 0;
    for (const auto& l : layers) n += l.size();
    return n;
  }
};

/// A complete plan, as stored in a `headrecon.plan` safetensors file.
struct Plan {
  std::int32_t head_dim = 0;
  std::int32_t n_layers = 0;
  bool post_rope = true;         ///< fitted after RoPE (absorbable into attention)
  std::int32_t sink_tokens = 0;  ///< first tokens of each sequence kept exact for all heads
  std::vector<KindPlan> kinds;   ///< at most one per Kind

  const KindPlan* find(Kind k) const {
    for (const auto& kp : kinds)
      if (kp.kind == k) return &kp;
    return nullptr;
  }
  KindPlan* find(Kind k) {
    for (auto& kp : kinds)
      if (kp.kind == k) return &kp;
    return nullptr;
  }

  /// A plan that rebuilds nothing: every head cached (a full KV cache).
  static Plan none(std::int32_t n_layers, std::int32_t head_dim) {
    Plan p;
    p.n_layers = n_layers;
    p.head_dim = head_dim;
    return p;
  }

  /// Checks internal consistency (counts within limits.hpp, indices in range,
  /// no target is a reference, no duplicates, weight/bias sizes, finite
  /// weights, biases and R²); throws Error naming the first offending head.
  void validate() const;
};

inline void Plan::validate() const {
  if (head_dim <= 0 || std::uint64_t(head_dim) > limits::max_head_dim)
    detail::fail("plan: head_dim must be in [1, ", limits::max_head_dim, "], got ", head_dim);
  if (n_layers <= 0 || std::uint64_t(n_layers) > limits::max_layers)
    detail::fail("plan: n_layers must be in [1, ", limits::max_layers, "], got ", n_layers);
  if (sink_tokens < 0) detail::fail("plan: sink_tokens must be >= 0, got ", sink_tokens);
  const std::size_t d = std::size_t(head_dim);
  for (std::size_t i = 0; i < kinds.size(); ++i) {
    const KindPlan& kp = kinds[i];
    const auto kn = kind_name(kp.kind);
    for (std::size_t j = 0; j < i; ++j)
      if (kinds[j].kind == kp.kind) detail::fail("plan: kind ", kn, " appears twice");
    if (kp.n_heads <= 0 || std::uint64_t(kp.n_heads) > limits::max_heads)
      detail::fail("plan: kind ", kn, ": n_heads must be in [1, ", limits::max_heads, "], got ", kp.n_heads);
    if (kp.layers.size() != std::size_t(n_layers))
      detail::fail("plan: kind ", kn, " has ", kp.layers.size(), " layers, expected ", n_layers);
    if (!kp.latent.empty() && kp.latent.size() != std::size_t(n_layers))
      detail::fail("plan: kind ", kn, " has latent streams for ", kp.latent.size(), " layers, expected ", n_layers);
    for (std::size_t l = 0; l < kp.latent.size(); ++l) {
      if (kp.latent[l].size() > std::size_t(kp.n_heads))
        detail::fail("plan: kind ", kn, " layer ", l, " has ", kp.latent[l].size(),
                     " latent streams, more than its ", kp.n_heads, " heads");
      for (std::size_t j = 0; j < kp.latent[l].size(); ++j) {
        const auto& pr = kp.latent[l][j].projection;
        if (pr.size() != std::size_t(kp.n_heads) * d * d)
          detail::fail("plan: latent stream ", kn, ".", l, ".", j, ": projection has ", pr.size(),
                       " elements, expected ", std::size_t(kp.n_heads) * d * d);
        for (std::size_t i = 0; i < pr.size(); ++i)
          if (!std::isfinite(pr[i]))
            detail::fail("plan: latent stream ", kn, ".", l, ".", j, ": non-finite projection ", pr[i],
                         " at element ", i);
      }
    }
    for (std::size_t l = 0; l < kp.layers.size(); ++l) {
      for (const TargetMap& t : kp.layers[l]) {
        const auto where = [&] {
          return std::string(kn) + "." + std::to_string(t.target.layer) + "." +
                 std::to_string(t.target.head);
        };
        if (t.target.layer != std::int32_t(l) || t.target.head < 0 || t.target.head >= kp.n_heads)
          detail::fail("plan: target ", where(), " is out of range or filed under layer ", l);
        if (t.refs.empty()) detail::fail("plan: target ", where(), " has no references");
        for (std::size_t r = 0; r < t.refs.size(); ++r) {
          const HeadId ref = t.refs[r];
          if (ref.layer < 0 || ref.layer > std::int32_t(l) || ref.head < 0 ||
              ref.head >= kp.n_heads + std::int32_t(kp.n_latent(ref.layer)))
            detail::fail("plan: target ", where(), ": reference (", ref.layer, ", ", ref.head,
                         ") is out of range (layers 0..", l, ", heads 0..", kp.n_heads - 1,
                         kp.n_latent(ref.layer) ? ", latent streams " + std::to_string(kp.n_heads) + ".." +
                                                      std::to_string(kp.n_heads + std::int32_t(kp.n_latent(ref.layer)) - 1)
                                                : std::string(),
                         ")");
          if (kp.find(ref))
            detail::fail("plan: target ", where(), ": reference (", ref.layer, ", ", ref.head,
                         ") is itself rebuilt, so its K/V would not be cached");
          for (std::size_t s = 0; s < r; ++s)
            if (t.refs[s] == ref)
              detail::fail("plan: target ", where(), ": reference (", ref.layer, ", ", ref.head,
                           ") is listed twice");
        }
        if (t.weight.size() != t.refs.size() * d * d)
          detail::fail("plan: target ", where(), ": weight has ", t.weight.size(),
                       " elements, expected ", t.refs.size() * d * d);
        if (t.bias.size() != d)
          detail::fail("plan: target ", where(), ": bias has ", t.bias.size(), " elements, expected ", d);
        for (std::size_t i = 0; i < t.weight.size(); ++i)
          if (!std::isfinite(t.weight[i]))
            detail::fail("plan: target ", where(), ": non-finite weight ", t.weight[i], " at element ", i);
        for (std::size_t i = 0; i < t.bias.size(); ++i)
          if (!std::isfinite(t.bias[i]))
            detail::fail("plan: target ", where(), ": non-finite bias ", t.bias[i], " at element ", i);
        if (!std::isfinite(t.r2_heldout))
          detail::fail("plan: target ", where(), ": non-finite held-out R2 ", t.r2_heldout);
      }
      for (std::size_t a = 0; a < kp.layers[l].size(); ++a)
        for (std::size_t b = 0; b < a; ++b)
          if (kp.layers[l][a].target == kp.layers[l][b].target)
            detail::fail("plan: kind ", kn, " layer ", l, ": head ", kp.layers[l][a].target.head,
                         " is a target twice");
    }
  }
}

}  // namespace headrecon
