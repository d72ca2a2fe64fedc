#pragma once
/// @file attention.hpp
/// Front door of the CPU decode attention (static dispatch).
///
/// decode_attention() computes one decode step of one sequence and layer over
/// a cache that stores only the reference heads (plus the first sink tokens
/// of every head in full): keys of rebuilt heads are absorbed into the query
/// ((W q)·x + q·b), values are attended over the references and mapped once
/// (Wᵀ Σ a_t x_t + b Σ a_t), so no rebuilt vector is ever materialized and the
/// bytes read are those of the reference cache. GQA: query head h uses KV head
/// h / (n_q_heads / n_kv_heads). Softmax is computed online (max-subtracted)
/// in f32. full_attention_plan() gives the plain full-cache attention in the
/// same kernel. Plans fitted before RoPE are rejected by make_attention_plan:
/// for them reconstruct() the heads, apply_rope(), then attend.
/// Never allocates (decode_attention_workspace_floats()); thread-safe for
/// distinct outputs and workspaces.

#include "headrecon/cpu/attention-inl.h"

namespace headrecon {
/// One decode step (see DecodeAttentionArgs).
inline void decode_attention(const DecodeAttentionArgs& args) { HWY_STATIC_DISPATCH(DecodeAttention)(args); }
}  // namespace headrecon
