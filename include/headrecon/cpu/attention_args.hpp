#pragma once
/// @file attention_args.hpp
/// Arguments of the CPU attention over a reference-only cache (plain data, no
/// SIMD types): where a sequence's K/V live, which query rows attend which
/// positions, and the caller-owned workspace.

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "headrecon/attention_plan.hpp"
#include "headrecon/cpu/amx_tiles.hpp"
#include "headrecon/head_stream.hpp"

namespace headrecon {

/// Tokens per block of the attention kernel where AMX tiles read the keys
/// (amx_tiles.hpp); half that on the FMA units.
inline constexpr std::size_t kAttnBlock = 64;

/// Query rows of one sequence: row r (query [n_q_heads, head_dim] after
/// RoPE) attends positions [0, row_len[r]). Decode: one row, row_len = the
/// sequence length. Chunked prefill: row r at position pos0 + r sees
/// pos0 + r + 1 positions (causal inside the chunk).
struct AttentionRows {
  SequenceStreams cache;
  std::size_t n_rows = 0;
  const std::size_t* row_len = nullptr;  ///< [n_rows], each >= 1
  const float* q = nullptr;              ///< [n_rows][n_q_heads][head_dim]
  float* out = nullptr;                  ///< [n_rows][n_q_heads][head_dim]
};

/// One attention call over several sequences (groups of rows), split over
/// tokens (split-K / flash-decoding): every group's positions are cut into
/// tasks, whose partial softmax states are merged exactly. By default the
/// cut is automatic (attention_split: about kAutoTasksPerWorker tasks per
/// worker), so results agree across thread counts within rounding; a set
/// `split_tokens` cuts independently of the thread count, so that results
/// are identical for any ParallelFor.
struct AttentionRunArgs {
  const AttentionLayerPlan* plan = nullptr;
  float scale = 0.f;                     ///< usually 1/sqrt(head_dim)
  const AttentionRows* groups = nullptr;
  std::size_t n_groups = 0;
  std::size_t split_tokens = 0;          ///< positions per task (rounded up to kAttnBlock); 0: automatic
  float* workspace = nullptr;            ///< attention_workspace_floats() floats, caller-owned
  std::size_t workspace_floats = 0;
};

/// Floats of one row's prepared queries: scaled raw and absorbed query vectors, scale·q·b_K per head,
/// then (head_dim a multiple of 32) the vectors quantized per block of 32 for block-type caches:
/// int16 values and one f32 scale per block.
inline std::size_t attention_query_floats(const AttentionLayerPlan& p) {
  const std::size_t quant = p.head_dim % kQuantBlock == 0 ? p.n_qvecs * (p.head_dim / 2 + p.head_dim / kQuantBlock) : 0;
  return p.n_qvecs * p.head_dim + p.n_q_heads + quant;
}
/// Floats of one row's partial softmax state: max, sum, body mass per head, then the accumulators.
inline std::size_t attention_state_floats(const AttentionLayerPlan& p) {
  return 3 * p.n_q_heads + p.n_accs * p.head_dim;
}
/// Query tiles a task keeps packed for AMX (the first flushes of a block).
inline constexpr std::size_t kAmxCachedFlushes = 8;
/// Floats of one task's scratch for `rows` rows: block scores, one converted
/// block, and where AMX tiles can run (amx_tiles.hpp) their packed queries
/// and work buffers.
inline std::size_t attention_scratch_floats(const AttentionLayerPlan& p, std::size_t rows) {
  const std::size_t d = p.head_dim;
  const std::size_t tiles =
      amx::fits(d) ? kAmxCachedFlushes * amx::query_slot_floats(d) + amx::call_work_floats(d) + 16 : 0;
  return rows * p.n_q_heads * kAttnBlock + kAttnBlock * d + 16 + tiles;
}
/// The automatic split-K cut (split_tokens 0): about kAutoTasksPerWorker
/// tasks per worker over a call's positions, none shorter than
/// kAutoMinSplit. Each task costs a cold start of its prefetch, its own
/// packing of the AMX query tiles and a state to merge; measured (Emerald
/// Rapids, 8k tokens, 2 threads, against 512-position tasks): 2 tasks per
/// worker 1.01-1.09x faster (full caches 1.01-1.03x, absorbed 1.02-1.09x),
/// 1 or 4 per worker no faster than 2.
inline constexpr std::size_t kAutoMinSplit = 512, kAutoTasksPerWorker = 2;

/// Positions per task after rounding `split_tokens` up to whole blocks; 0
/// (automatic): kAutoMinSplit, the shortest task the automatic cut makes,
/// which bounds the task count a workspace is sized for.
inline std::size_t attention_split(std::size_t split_tokens) {
  if (split_tokens == 0) return kAutoMinSplit;
  return (split_tokens + kAttnBlock - 1) / kAttnBlock * kAttnBlock;
}
/// Positions per task of one call whose groups attend `positions` positions
/// in all (each group's longest row, summed) on `workers` workers: a set
/// `split_tokens` rounded up to whole blocks, else the automatic cut.
inline std::size_t attention_split(std::size_t split_tokens, std::size_t positions, std::size_t workers) {
  if (split_tokens != 0) return attention_split(split_tokens);
  const std::size_t tasks = std::max<std::size_t>(workers, 1) * kAutoTasksPerWorker;
  const std::size_t per = (positions + tasks - 1) / tasks;
  return std::max(kAutoMinSplit, (per + kAttnBlock - 1) / kAttnBlock * kAttnBlock);
}

/// Workspace an attention call needs with `workers` workers, for groups of
/// at most `max_rows` rows, `total_rows` rows and `total_tasks` tasks in all
/// (a group of n positions has ceil(n / attention_split(split)) tasks).
inline std::size_t attention_workspace_floats(const AttentionLayerPlan& p, std::size_t total_rows,
                                              std::size_t max_rows, std::size_t total_tasks, std::size_t workers) {
  return total_rows * attention_query_floats(p) + total_tasks * max_rows * attention_state_floats(p) +
         std::max<std::size_t>(workers, 1) * attention_scratch_floats(p, max_rows);
}

/// Positions a group attends: its longest row.
inline std::size_t attention_group_len(const AttentionRows& G) {
  std::size_t len = 0;
  for (std::size_t r = 0; r < G.n_rows; ++r) len = std::max(len, G.row_len ? G.row_len[r] : 0);
  return len;
}
/// Positions per task of this call on `workers` workers (attention_split
/// over every group's positions).
inline std::size_t attention_split(const AttentionRunArgs& a, std::size_t workers) {
  std::size_t positions = 0;
  for (std::size_t g = 0; g < a.n_groups; ++g) positions += attention_group_len(a.groups[g]);
  return attention_split(a.split_tokens, positions, workers);
}

/// Workspace of exactly this call (see attention_workspace_floats above).
inline std::size_t attention_workspace_floats(const AttentionRunArgs& a, std::size_t workers) {
  if (!a.plan) detail::fail("attention: no plan");
  const std::size_t split = attention_split(a, workers);
  std::size_t rows = 0, max_rows = 0, tasks = 0;
  for (std::size_t g = 0; g < a.n_groups; ++g) {
    rows += a.groups[g].n_rows;
    max_rows = std::max(max_rows, a.groups[g].n_rows);
    tasks += (attention_group_len(a.groups[g]) + split - 1) / split;
  }
  return attention_workspace_floats(*a.plan, rows, max_rows, tasks, workers);
}

/// One decode step of one sequence and layer on the calling thread (the
/// single-row case of AttentionRunArgs): `out` = softmax(q·kᵀ·scale)·V for
/// every query head over n_sink sink tokens and n_body body tokens.
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
  return attention_query_floats(p) + attention_state_floats(p) + attention_scratch_floats(p, 1);
}

}  // namespace headrecon
