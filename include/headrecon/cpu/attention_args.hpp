#pragma once
/// @file attention_args.hpp
/// Decode attention over a reference-only cache: the per-layer plan the kernel
/// follows (which query vectors score which cached stream, which accumulators
/// each value stream feeds) and the kernel's arguments. Plain data.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "headrecon/head_stream.hpp"
#include "headrecon/ref_cache.hpp"

namespace headrecon {

/// One layer's attention, compiled from a plan. Keys of a rebuilt head are
/// absorbed into the query (score = (W_r q)·x_r + q·b), values are attended
/// over the references and mapped once (Wᵀ Σ a_t x_t + b·Σ a_t). Streams are
/// numbered as RefCacheLayout::streams(kind, layer).
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
  std::size_t n_q_heads = 0, n_kv_heads = 0, head_dim = 0;
  std::size_t n_k_streams = 0, n_v_streams = 0;
  std::vector<Side> k, v;                       ///< [n_kv_heads]
  std::vector<std::vector<Job>> k_jobs, v_jobs;  ///< per stream, body tokens
  std::vector<std::vector<RefAcc>> ref_accs;     ///< per query head (empty when its V is cached)
  std::size_t n_qvecs = 0;  ///< raw scaled queries (index = head) then absorbed ones
  std::size_t n_accs = 0;   ///< direct accumulators (index = head) then per-reference ones
  std::size_t max_refs = 1;
};

namespace detail {
inline void add_jobs(AttentionLayerPlan& p) {
  const std::size_t G = p.n_q_heads / p.n_kv_heads;
  p.k_jobs.assign(p.n_k_streams, {});
  p.v_jobs.assign(p.n_v_streams, {});
  p.ref_accs.assign(p.n_q_heads, {});
  p.n_qvecs = p.n_q_heads;
  p.n_accs = p.n_q_heads;
  for (std::size_t h = 0; h < p.n_q_heads; ++h) {
    const auto& ks = p.k[h / G];
    if (!ks.rebuilt) {
      p.k_jobs[ks.streams[0]].push_back({std::uint32_t(h), std::uint32_t(h)});
    } else {
      for (std::uint32_t s : ks.streams) p.k_jobs[s].push_back({std::uint32_t(h), std::uint32_t(p.n_qvecs++)});
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

/// The attention plan of `layer` for a model with `n_q_heads` query heads.
/// Throws Error for a plan fitted before RoPE (keys cannot be absorbed: use
/// reconstruct() then apply_rope(), then full attention) or a head count that
/// is not a multiple of the KV heads.
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
    const auto& streams = layout.streams(kind, layer);
    auto& sides = kind == Kind::k ? p.k : p.v;
    (kind == Kind::k ? p.n_k_streams : p.n_v_streams) = streams.size();
    sides.resize(p.n_kv_heads);
    const KindPlan* kp = layout.plan().find(kind);
    for (std::size_t g = 0; g < p.n_kv_heads; ++g) {
      auto& side = sides[g];
      const TargetMap* t = kp ? kp->find({layer, std::int32_t(g)}) : nullptr;
      auto index_of = [&](HeadId h) {
        for (std::size_t i = 0; i < streams.size(); ++i)
          if (streams[i] == h) return std::uint32_t(i);
        detail::fail("attention: head ", h.layer, ".", h.head, " has no stream");
      };
      if (!t) {
        side.streams = {index_of({layer, std::int32_t(g)})};
      } else {
        side.rebuilt = true;
        side.weight = t->weight.data();
        side.bias = t->bias.data();
        for (HeadId r : t->refs) side.streams.push_back(index_of(r));
      }
    }
  }
  detail::add_jobs(p);
  return p;
}

/// Plain attention over a full cache: every KV head cached, stream g = head g.
inline AttentionLayerPlan full_attention_plan(std::size_t n_q_heads, std::size_t n_kv_heads, std::size_t head_dim) {
  if (n_kv_heads == 0 || n_q_heads % n_kv_heads != 0 || head_dim == 0)
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

/// Tokens per block of the attention kernel.
inline constexpr std::size_t kAttnBlock = 32;

/// One decode step of one sequence and layer: `out` = softmax(q·kᵀ·scale)·V
/// for every query head, where the first n_sink tokens come exactly from the
/// sink streams (all KV heads) and the next n_body tokens from the
/// reference-only streams.
struct DecodeAttentionArgs {
  const AttentionLayerPlan* plan = nullptr;
  const float* q = nullptr;        ///< [n_q_heads, head_dim], after RoPE
  float scale = 0.f;               ///< usually 1/sqrt(head_dim)
  std::size_t n_sink = 0;
  const HeadStream* sink_k = nullptr;  ///< [n_kv_heads] streams over the sink tokens
  const HeadStream* sink_v = nullptr;
  std::size_t n_body = 0;
  const HeadStream* k_streams = nullptr;  ///< [plan->n_k_streams] over the body tokens
  const HeadStream* v_streams = nullptr;  ///< [plan->n_v_streams]
  float* out = nullptr;            ///< [n_q_heads, head_dim]
  float* workspace = nullptr;      ///< decode_attention_workspace_floats(*plan) floats, caller-owned
  std::size_t workspace_floats = 0;
};

/// Workspace of one decode_attention call, in floats.
inline std::size_t decode_attention_workspace_floats(const AttentionLayerPlan& p) {
  const std::size_t d = p.head_dim, H = p.n_q_heads;
  return p.n_qvecs * d + p.n_accs * d + H * kAttnBlock + 4 * H + kAttnBlock * d + 2 * d + 64;
}

}  // namespace headrecon
