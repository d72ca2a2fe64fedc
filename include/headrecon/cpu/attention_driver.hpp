#pragma once
/// @file attention_driver.hpp
/// The target-independent part of CPU attention: checks the arguments, cuts
/// every group's positions into split-K tasks, runs the three phases on a
/// ParallelFor (prepare each row's queries; attend each task; merge each
/// row's partial states exactly and finish; with fewer rows than workers, a
/// row's prepare and merge + finish are split over its KV heads), and carves
/// the caller's workspace. The per-target kernels come in as `Kernels` (attention-inl.h).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

#include "headrecon/cpu/attention_args.hpp"
#include "headrecon/error.hpp"
#include "headrecon/hadamard.hpp"
#include "headrecon/parallel.hpp"

namespace headrecon {

/// One task of the attention kernel: rows of one sequence over positions
/// [pos_begin, pos_end), each row clipped to its own length.
struct AttentionChunkArgs {
  const AttentionLayerPlan* plan = nullptr;
  const AttentionRows* rows = nullptr;
  const float* queries = nullptr;  ///< [rows->n_rows][attention_query_floats]
  std::size_t pos_begin = 0, pos_end = 0;
  float* state = nullptr;          ///< out: [rows->n_rows][attention_state_floats]
  float* scratch = nullptr;        ///< attention_scratch_floats(plan, n_rows)
};

namespace detail {

/// Merges the partial states src[0..n) (stride `stride` floats apart) of one
/// row into src[0]: per head, the sums and accumulators rescaled to the
/// common max. Exact up to rounding: merge equals one pass.
inline void merge_attention_states(const AttentionLayerPlan& p, float* s, std::size_t n, std::size_t stride,
                                   std::size_t part = 0, std::size_t parts = 1) {
  const std::size_t H = p.n_q_heads, d = p.head_dim;
  const float ninf = -std::numeric_limits<float>::infinity();
  for (std::size_t h = 0; h < H; ++h) {
    if (AttentionLayerPlan::part_of(p.v, p.kv_head(h), parts) != part) continue;  // as FinishAttention splits
    float mx = ninf;
    for (std::size_t c = 0; c < n; ++c) mx = std::max(mx, s[c * stride + h]);
    if (mx == ninf) continue;
    auto scale_into = [&](std::size_t acc, float f0, const auto& factor) {
      float* dst = s + 3 * H + acc * d;
      for (std::size_t i = 0; i < d; ++i) dst[i] *= f0;
      for (std::size_t c = 1; c < n; ++c) {
        const float f = factor(c);
        if (f == 0.f) continue;
        const float* src = s + c * stride + 3 * H + acc * d;
        for (std::size_t i = 0; i < d; ++i) dst[i] += f * src[i];
      }
    };
    auto factor = [&](std::size_t c) {
      const float m = s[c * stride + h];
      return m == ninf ? 0.f : std::exp(m - mx);
    };
    const float f0 = factor(0);
    float l = 0.f, mass = 0.f;
    for (std::size_t c = 0; c < n; ++c) {
      const float f = factor(c);
      l += f * s[c * stride + H + h];
      mass += f * s[c * stride + 2 * H + h];
    }
    scale_into(h, f0, factor);
    for (const auto& ra : p.ref_accs[h]) scale_into(ra.acc, f0, factor);
    s[h] = mx;
    s[H + h] = l;
    s[2 * H + h] = mass;
  }
}

inline void check_attention_args(const AttentionRunArgs& a) {
  if (!a.plan) detail::fail("attention: no plan");
  const AttentionLayerPlan& p = *a.plan;
  if (p.n_q_heads == 0 || p.n_kv_heads == 0 || p.head_dim == 0) detail::fail("attention: empty plan");
  if (a.n_groups && !a.groups) detail::fail("attention: ", a.n_groups, " groups but no group array");
  for (std::size_t g = 0; g < a.n_groups; ++g) {
    const AttentionRows& G = a.groups[g];
    if (G.n_rows == 0) continue;
    if (!G.row_len || !G.q || !G.out) detail::fail("attention: group ", g, ": row_len, q and out are required");
    std::size_t len = 0;
    for (std::size_t r = 0; r < G.n_rows; ++r) {
      if (G.row_len[r] == 0) detail::fail("attention: group ", g, " row ", r, " has no tokens to attend to");
      len = std::max(len, G.row_len[r]);
    }
    const SequenceStreams& c = G.cache;
    if (c.n_sink && (!c.sink_k || !c.sink_v))
      detail::fail("attention: group ", g, ": ", c.n_sink, " sink tokens but no sink streams");
    if (len > c.n_sink && (!c.k || !c.v)) detail::fail("attention: group ", g, ": body tokens but no streams");
    auto check = [&](const HeadStream* s, std::size_t n, const char* what) {
      for (std::size_t i = 0; s && i < n; ++i) {
        if (is_block_type(s[i].dtype) && p.head_dim % kQuantBlock != 0)
          detail::fail("attention: group ", g, ": ", what, " stream ", i, " of type ", dtype_name(s[i].dtype),
                       " needs head_dim divisible by 32, got ", p.head_dim);
        if (s[i].rotated != p.rotated)
          detail::fail("attention: group ", g, ": ", what, " stream ", i, (s[i].rotated ? " is" : " is not"),
                       " Hadamard-rotated, the plan", (p.rotated ? " is" : " is not"));
      }
    };
    if (c.n_sink) check(c.sink_k, p.n_kv_heads, "sink K"), check(c.sink_v, p.n_kv_heads, "sink V");
    if (len > c.n_sink) check(c.k, p.n_k_streams, "K"), check(c.v, p.n_v_streams, "V");
  }
  if (p.rotated && !hadamard_length_ok(p.head_dim))
    detail::fail("attention: a rotated plan needs head_dim a power of two, got ", p.head_dim);
}

/// Runs an attention call with the kernels `K` (see the file comment).
template <class K>
void run_attention(const AttentionRunArgs& a, const ParallelFor& pf) {
  check_attention_args(a);
  const AttentionLayerPlan& p = *a.plan;
  const std::size_t need = attention_workspace_floats(a, pf.workers());
  if (!a.workspace || a.workspace_floats < need)
    detail::fail("attention: workspace of ", a.workspace_floats, " floats, need ", need);
  const std::size_t qf = attention_query_floats(p), sf = attention_state_floats(p);
  const std::size_t split = attention_split(a, pf.workers());
  std::size_t n_rows = 0, max_rows = 0, n_tasks = 0;
  for (std::size_t g = 0; g < a.n_groups; ++g) {
    n_rows += a.groups[g].n_rows;
    max_rows = std::max(max_rows, a.groups[g].n_rows);
    n_tasks += (attention_group_len(a.groups[g]) + split - 1) / split;
  }
  if (n_rows == 0) return;
  float* queries = a.workspace;           // [n_rows][qf]
  float* states = queries + n_rows * qf;  // per group: [tasks][rows][sf]
  float* scratch = states + n_tasks * max_rows * sf;
  const std::size_t scratch_floats = attention_scratch_floats(p, max_rows);

  // Where row i / task i of the flattened call lives.
  struct Where {
    std::size_t group, index, row0, state0, tasks;
  };
  auto locate = [&](std::size_t i, bool by_task) {
    std::size_t row0 = 0, task0 = 0;
    for (std::size_t g = 0;; ++g) {
      const AttentionRows& G = a.groups[g];
      const std::size_t tasks = G.n_rows ? (attention_group_len(G) + split - 1) / split : 0;
      const std::size_t n = by_task ? tasks : G.n_rows;
      if (i < n) return Where{g, i, row0, task0 * max_rows * sf, tasks};
      i -= n;
      row0 += G.n_rows;
      task0 += tasks;
    }
  };

  // Whether any key stream of a cache is q8_0 / q4_0 (its queries are then
  // also quantized, for the integer dot products).
  auto block_typed_keys = [](const AttentionLayerPlan& pl, const SequenceStreams& c) {
    for (std::size_t i = 0; c.n_sink && i < pl.n_kv_heads; ++i)
      if (is_block_type(c.sink_k[i].dtype)) return true;
    for (std::size_t i = 0; c.k && i < pl.n_k_streams; ++i)
      if (is_block_type(c.k[i].dtype)) return true;
    return false;
  };
  // A row's query maps and its merge and output maps are split over heads
  // when there are fewer rows than workers (decode: one row per sequence).
  const std::size_t parts =
      n_rows >= pf.workers() ? 1 : std::min(p.n_q_heads, (pf.workers() + n_rows - 1) / n_rows);
  pf(n_rows * parts, [&](std::size_t i, std::size_t) {
    const Where w = locate(i / parts, false);
    const AttentionRows& G = a.groups[w.group];
    K::prepare(p, a.scale, G.q + w.index * p.n_q_heads * p.head_dim, queries + (w.row0 + w.index) * qf,
               block_typed_keys(p, G.cache), i % parts, parts);
  });
  pf(n_tasks, [&](std::size_t i, std::size_t worker) {
    const Where w = locate(i, true);
    const AttentionRows& G = a.groups[w.group];
    AttentionChunkArgs c;
    c.plan = &p;
    c.rows = &G;
    c.queries = queries + w.row0 * qf;
    // Task boundaries sit on whole blocks of body tokens (offset by the sink
    // tokens), so that blocks start where pages do.
    const std::size_t len = attention_group_len(G), off = G.cache.n_sink % kAttnBlock;
    c.pos_begin = w.index == 0 ? 0 : std::min(w.index * split + off, len);
    c.pos_end = std::min((w.index + 1) * split + off, len);
    c.state = states + w.state0 + w.index * G.n_rows * sf;
    c.scratch = scratch + worker * scratch_floats;
    K::chunk(c);
  });
  pf(n_rows * parts, [&](std::size_t i, std::size_t) {
    const Where w = locate(i / parts, false);
    const AttentionRows& G = a.groups[w.group];
    const std::size_t tasks = (attention_group_len(G) + split - 1) / split;
    float* s = states + w.state0 + w.index * sf;
    if (tasks > 1) merge_attention_states(p, s, tasks, G.n_rows * sf, i % parts, parts);
    // (rotates the accumulators in place)
    K::finish(p, s, G.out + w.index * p.n_q_heads * p.head_dim, i % parts, parts);
  });
}

}  // namespace detail
}  // namespace headrecon
