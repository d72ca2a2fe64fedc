#pragma once
/// @file attention_plan.hpp
/// One layer's attention over a reference-only cache, compiled from a plan:
/// which query vectors score which cached stream and which accumulators each
/// value stream feeds. Backend-neutral plain data that the CPU kernels
/// (cpu/attention.hpp) and the CUDA kernels (cuda/attention.cuh) both follow.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "headrecon/ref_cache.hpp"

namespace headrecon {

/// Keys of a rebuilt head are absorbed into the query (score = (W_r q)·x_r +
/// q·b), values are attended over the references and mapped once
/// (Wᵀ Σ a_t x_t + b·Σ a_t). Streams are numbered as
/// RefCacheLayout::streams(kind, layer).
struct AttentionLayerPlan {
  struct Side {             // K or V of one KV head
    bool rebuilt = false;
    std::vector<std::uint32_t> streams;  ///< cached: its own stream; rebuilt: its references' streams
    const float* weight = nullptr;       ///< rebuilt: [k·d, d] (owned by the Plan)
    const float* bias = nullptr;         ///< rebuilt: [d]
  };
  struct Job {              // one d-vector dot (K) or accumulation (V) per token
    std::uint32_t head;     ///< query head
    std::uint32_t vec;      ///< K: index of its query vector; V: index of its accumulator
  };
  struct RefAcc {           // one reference accumulator of a query head with rebuilt V
    std::uint32_t acc;      ///< accumulator index
    std::uint32_t ref;      ///< which reference of the head's V map (its W block)
  };
  struct QVec {             // an absorbed query vector: scale · W_ref q_head
    std::uint32_t head;     ///< query head
    std::uint32_t ref;      ///< which reference of the head's K map (its W block)
  };
  std::size_t n_q_heads = 0, n_kv_heads = 0, head_dim = 0;
  std::size_t n_k_streams = 0, n_v_streams = 0;
  std::vector<Side> k, v;                       ///< [n_kv_heads]
  std::vector<std::vector<Job>> k_jobs, v_jobs;  ///< per stream, body tokens
  std::vector<std::vector<RefAcc>> ref_accs;     ///< per query head (empty when its V is cached)
  std::vector<QVec> absorbed;                    ///< [n_qvecs − n_q_heads] absorbed query vectors
  std::size_t n_qvecs = 0;  ///< raw scaled queries (index = head) then absorbed ones
  std::size_t n_accs = 0;   ///< direct accumulators (index = head) then per-reference ones
  std::size_t max_refs = 1;
  /// The cache's vectors are Hadamard-rotated (hadamard.hpp): every query
  /// vector is rotated once per step and every accumulator once at the end.
  bool rotated = false;

  /// KV head of query head h (GQA).
  std::size_t kv_head(std::size_t h) const { return h / (n_q_heads / n_kv_heads); }
  /// Which of `parts` workers handles KV head g's side (`k` or `v`) when one
  /// row's maps are split: g's rank among the KV heads rebuilt alike, mod
  /// parts, so that the rebuilt heads (which carry the maps) spread evenly.
  static std::size_t part_of(const std::vector<Side>& sides, std::size_t g, std::size_t parts) {
    std::size_t rank = 0;
    for (std::size_t k = 0; k < g; ++k) rank += sides[k].rebuilt == sides[g].rebuilt;
    return rank % parts;
  }
};

namespace detail {
inline void add_jobs(AttentionLayerPlan& p) {
  const std::size_t G = p.n_q_heads / p.n_kv_heads;
  p.k_jobs.assign(p.n_k_streams, {});
  p.v_jobs.assign(p.n_v_streams, {});
  p.ref_accs.assign(p.n_q_heads, {});
  p.absorbed.clear();
  p.n_qvecs = p.n_q_heads;
  p.n_accs = p.n_q_heads;
  for (std::size_t h = 0; h < p.n_q_heads; ++h) {
    const auto& ks = p.k[h / G];
    if (!ks.rebuilt) {
      p.k_jobs[ks.streams[0]].push_back({std::uint32_t(h), std::uint32_t(h)});
    } else {
      for (std::size_t r = 0; r < ks.streams.size(); ++r) {
        p.absorbed.push_back({std::uint32_t(h), std::uint32_t(r)});
        p.k_jobs[ks.streams[r]].push_back({std::uint32_t(h), std::uint32_t(p.n_qvecs++)});
      }
    }
    const auto& vs = p.v[h / G];
    if (!vs.rebuilt) {
      p.v_jobs[vs.streams[0]].push_back({std::uint32_t(h), std::uint32_t(h)});
    } else {
      for (std::size_t r = 0; r < vs.streams.size(); ++r) {
        p.ref_accs[h].push_back({std::uint32_t(p.n_accs), std::uint32_t(r)});
        p.v_jobs[vs.streams[r]].push_back({std::uint32_t(h), std::uint32_t(p.n_accs++)});
      }
    }
    p.max_refs = std::max({p.max_refs, ks.streams.size(), vs.streams.size()});
  }
}
}  // namespace detail

/// The attention plan of `layer` for a model with `n_q_heads` query heads,
/// its streams numbered as `layout` numbers them. Throws Error for a plan
/// fitted before RoPE (keys cannot be absorbed: use reconstruct() then
/// apply_rope(), then full attention) or a head count that is not a multiple
/// of the KV heads.
inline AttentionLayerPlan make_attention_plan(const RefCacheLayout& layout, std::int32_t layer, std::size_t n_q_heads) {
  if (!layout.plan().post_rope)
    detail::fail("attention: the plan was fitted before RoPE; rebuilt keys cannot be absorbed into the query "
                 "(reconstruct, apply RoPE, then attend)");
  AttentionLayerPlan p;
  p.n_q_heads = n_q_heads;
  p.n_kv_heads = std::size_t(layout.n_kv_heads());
  p.head_dim = std::size_t(layout.head_dim());
  if (n_q_heads == 0 || n_q_heads % p.n_kv_heads != 0)
    detail::fail("attention: ", n_q_heads, " query heads is not a multiple of ", p.n_kv_heads, " KV heads");
  for (Kind kind : {Kind::k, Kind::v}) {
    auto& sides = kind == Kind::k ? p.k : p.v;
    (kind == Kind::k ? p.n_k_streams : p.n_v_streams) = layout.streams(kind, layer).size();
    sides.resize(p.n_kv_heads);
    const KindPlan* kp = layout.plan().find(kind);
    for (std::size_t g = 0; g < p.n_kv_heads; ++g) {
      auto& side = sides[g];
      const TargetMap* t = kp ? kp->find({layer, std::int32_t(g)}) : nullptr;
      if (!t) {
        side.streams = {layout.stream_index(kind, layer, {layer, std::int32_t(g)})};
      } else {
        side.rebuilt = true;
        side.weight = t->weight.data();
        side.bias = t->bias.data();
        for (HeadId r : t->refs) side.streams.push_back(layout.stream_index(kind, layer, r));
      }
    }
  }
  detail::add_jobs(p);
  return p;
}

/// Plain attention over a full cache: every KV head cached, stream g = head g.
inline AttentionLayerPlan full_attention_plan(std::size_t n_q_heads, std::size_t n_kv_heads, std::size_t head_dim) {
  if (n_kv_heads == 0 || n_q_heads == 0 || n_q_heads % n_kv_heads != 0 || head_dim == 0)
    detail::fail("attention: ", n_q_heads, " query heads, ", n_kv_heads, " KV heads, head_dim ", head_dim);
  AttentionLayerPlan p;
  p.n_q_heads = n_q_heads;
  p.n_kv_heads = n_kv_heads;
  p.head_dim = head_dim;
  p.n_k_streams = p.n_v_streams = n_kv_heads;
  p.k.resize(n_kv_heads);
  p.v.resize(n_kv_heads);
  for (std::size_t g = 0; g < n_kv_heads; ++g) p.k[g].streams = p.v[g].streams = {std::uint32_t(g)};
  detail::add_jobs(p);
  return p;
}

}  // namespace headrecon
