#pragma once
/// @file kv_attention.hpp
/// CPU attention over a KvStore: decode for a batch of sequences and chunked
/// prefill, in one call (continuous batching mixes them), split over tokens
/// on a caller-supplied ParallelFor. Plan/run split: an AttentionWorkspace,
/// sized once for the largest call (AttentionLimits), holds every buffer;
/// the calls never allocate.
///
///     KvStore store(layout, options, pool.data(), pool.size());
///     AttentionWorkspace ws(store, limits);
///     SequenceId s = store.add_sequence();
///     std::size_t pos = store.extend(s, n);              // per forward pass
///     store.append(s, layer, pos, k_view, v_view);       // per layer
///     attend(store, layer, {{s, pos, n, q, out}}, ws, pool.parallel_for());

#include <cstddef>
#include <initializer_list>
#include <vector>

#include "headrecon/cpu/attention.hpp"
#include "headrecon/kv_store.hpp"
#include "headrecon/parallel.hpp"

namespace headrecon {

/// Rows of one sequence in an attend() call: row r is the token at position
/// pos0 + r (already appended) and attends positions [0, pos0 + r + 1).
/// Decode: n_rows = 1, pos0 = length − 1. Prefill of a chunk: n_rows tokens.
struct AttendRequest {
  SequenceId sequence;
  std::size_t pos0 = 0;
  std::size_t n_rows = 1;
  const float* q = nullptr;  ///< [n_rows][n_q_heads][head_dim], after RoPE
  float* out = nullptr;      ///< [n_rows][n_q_heads][head_dim]
};

/// The largest attend() call a workspace serves.
struct AttentionLimits {
  std::size_t max_requests = 1;   ///< sequences per call
  std::size_t max_rows = 1;       ///< rows per call, all requests together
  std::size_t max_tokens = 0;     ///< positions a row may attend (context length)
  std::size_t workers = 1;        ///< ParallelFor::workers() of the calls
  std::size_t split_tokens = 0;   ///< positions per split-K task; 0: automatic (attention_split)
};

/// The kernel attend() runs. Null (the default): attention(), compiled for
/// the including translation unit's static Highway target (AVX2 with
/// -march=x86-64-v3); dispatch::attention (cpu/dispatch.hpp, link
/// headrecon::dispatch) runs the best target of the CPU it runs on (AVX3 on
/// an AVX-512 CPU; the same results within rounding).
using AttentionKernel = void (*)(const AttentionRunArgs&, const ParallelFor&);

/// Every buffer attend() needs, owned by the caller and reused across calls
/// and layers (one per concurrent caller).
class AttentionWorkspace {
 public:
  AttentionWorkspace(const KvStore& store, const AttentionLimits& limits) : limits_(limits) {
    if (limits.max_requests == 0 || limits.max_rows < limits.max_requests || limits.max_tokens == 0)
      detail::fail("AttentionWorkspace: limits need max_requests >= 1, max_rows >= max_requests, max_tokens >= 1");
    // Bounds under which every buffer's size is computed without wrapping
    // (attention_workspace_floats multiplies them).
    constexpr std::size_t kMaxRows = std::size_t(1) << 24, kMaxTokens = std::size_t(1) << 32;
    if (limits.max_rows > kMaxRows || limits.max_tokens > kMaxTokens)
      detail::fail("AttentionWorkspace: limits need max_rows <= ", kMaxRows, " and max_tokens <= ", kMaxTokens,
                   ", got max_rows ", limits.max_rows, ", max_tokens ", limits.max_tokens);
    const std::size_t split = attention_split(limits.split_tokens);
    const std::size_t tasks_per_group = (limits.max_tokens + split - 1) / split;
    std::size_t floats = 0;
    for (std::size_t l = 0; l < store.n_layers(); ++l)
      floats = std::max(floats, attention_workspace_floats(store.attention_plan(l), limits.max_rows, limits.max_rows,
                                                           limits.max_requests * tasks_per_group, limits.workers));
    floats_.assign(floats, 0.f);
    groups_.resize(limits.max_requests);
    lens_.resize(limits.max_rows);
  }
  const AttentionLimits& limits() const { return limits_; }
  std::size_t bytes() const {
    return floats_.size() * sizeof(float) + groups_.size() * sizeof(AttentionRows) + lens_.size() * sizeof(std::size_t);
  }

 private:
  friend void attend(const KvStore&, std::size_t, const AttendRequest*, std::size_t, AttentionWorkspace&,
                     const ParallelFor&, AttentionKernel);
  AttentionLimits limits_;
  std::vector<float> floats_;
  std::vector<AttentionRows> groups_;
  std::vector<std::size_t> lens_;
};

/// Attention of layer `layer` for every request, on `pf`, with `kernel`
/// (AttentionKernel). Throws Error (naming the request) when a request
/// exceeds the workspace's limits or a position the sequence does not hold.
inline void attend(const KvStore& store, std::size_t layer, const AttendRequest* requests, std::size_t n,
                   AttentionWorkspace& ws, const ParallelFor& pf = ParallelFor(), AttentionKernel kernel = nullptr) {
  const AttentionLimits& lim = ws.limits_;
  if (n > lim.max_requests) detail::fail("attend: ", n, " requests, the workspace serves ", lim.max_requests);
  if (pf.workers() > lim.workers)
    detail::fail("attend: ", pf.workers(), " workers, the workspace serves ", lim.workers);
  std::size_t row = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const AttendRequest& r = requests[i];
    const std::size_t len = store.length(r.sequence);
    if (r.n_rows == 0 || r.pos0 + r.n_rows > len)
      detail::fail("attend: request ", i, " rows at positions ", r.pos0, "..", r.pos0 + r.n_rows, " of sequence ",
                   r.sequence.slot, ", which holds ", len);
    if (r.pos0 + r.n_rows > lim.max_tokens)
      detail::fail("attend: request ", i, " attends ", r.pos0 + r.n_rows, " positions, the workspace serves ",
                   lim.max_tokens);
    if (row + r.n_rows > lim.max_rows) detail::fail("attend: more than ", lim.max_rows, " rows in one call");
    AttentionRows& g = ws.groups_[i];
    g.cache = store.streams(r.sequence, layer);
    g.n_rows = r.n_rows;
    g.row_len = ws.lens_.data() + row;
    for (std::size_t k = 0; k < r.n_rows; ++k) ws.lens_[row + k] = r.pos0 + k + 1;
    g.q = r.q;
    g.out = r.out;
    row += r.n_rows;
  }
  AttentionRunArgs a;
  a.plan = &store.attention_plan(layer);
  a.scale = store.attention_scale();
  a.groups = ws.groups_.data();
  a.n_groups = n;
  a.split_tokens = lim.split_tokens;
  a.workspace = ws.floats_.data();
  a.workspace_floats = ws.floats_.size();
  if (kernel)
    kernel(a, pf);
  else
    attention(a, pf);
}

inline void attend(const KvStore& store, std::size_t layer, std::initializer_list<AttendRequest> requests,
                   AttentionWorkspace& ws, const ParallelFor& pf = ParallelFor(), AttentionKernel kernel = nullptr) {
  attend(store, layer, requests.begin(), requests.size(), ws, pf, kernel);
}

}  // namespace headrecon
