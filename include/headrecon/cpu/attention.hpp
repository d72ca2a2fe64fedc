#pragma once
/// @file attention.hpp
/// Front door of the CPU attention over a reference-only cache (static dispatch).
///
/// The cache stores only the reference heads (plus the first sink tokens of
/// every head in full): keys of rebuilt heads are absorbed into the query
/// ((W q)·x + q·b), values are attended over the references and mapped once
/// (Wᵀ Σ a_t x_t + b Σ a_t), so no rebuilt vector is ever materialized and the
/// bytes read are those of the reference cache. GQA: query head h uses KV head
/// h / (n_q_heads / n_kv_heads). Softmax is computed online (max-subtracted)
/// in f32. full_attention_plan() gives the plain full-cache attention in the
/// same kernel. Plans fitted before RoPE are rejected by make_attention_plan:
/// for them reconstruct() the heads, apply_rope(), then attend.
///
/// attention() runs decode for a batch of sequences and chunked prefill
/// (causal rows) on a caller-supplied ParallelFor, split over tokens
/// (split-K) with partial softmax states merged exactly; decode_attention()
/// is the one-sequence, one-thread case. Neither allocates: the caller
/// passes attention_workspace_floats() / decode_attention_workspace_floats().
/// Most engines call these through KvStore (cpu/kv_attention.hpp).

#include "headrecon/cpu/attention-inl.h"

namespace headrecon {
/// Attention of every group of rows (see AttentionRunArgs) on `pf`.
inline void attention(const AttentionRunArgs& args, const ParallelFor& pf = ParallelFor()) {
  HWY_STATIC_DISPATCH(RunAttention)(args, pf);
}
/// One decode step (see DecodeAttentionArgs).
inline void decode_attention(const DecodeAttentionArgs& args) { HWY_STATIC_DISPATCH(DecodeAttention)(args); }
}  // namespace headrecon
