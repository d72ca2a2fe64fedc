#pragma once
/// @file attention.cuh
/// CUDA decode attention over a reference-only cache, for a batch of
/// sequences: the GPU counterpart of cpu/attention.hpp, same math.
///
/// - Keys of rebuilt heads are absorbed into the query: score = (W_r q)·x_r + q·b,
///   so only the reference streams are read; values are attended over the
///   references and mapped once at the end: Wᵀ Σ a_t x_t + b Σ_body a_t.
/// - The first n_sink tokens of each sequence come exactly from the sink
///   streams (every KV head); GQA: query head h uses KV head h / (H / H_kv).
/// - Flash-decoding: each sequence's tokens are cut into splits of
///   `split_tokens`; one block per (split, sequence) runs an online softmax
///   over 32-token blocks and writes its partial (max, sum, accumulators);
///   a combine kernel merges the splits, applies the value maps, divides.
/// - Caches may be token-major, head-major or paged (block tables): anything
///   a HeadStream describes. All streams of a call share one element type.
/// - Two arithmetic paths: f32 FMAs (any cache type and head_dim), and tensor
///   cores (WMMA m8n32k16, f16/bf16 cache, head_dim a multiple of 32) for the
///   query·key and probability·value products. On the tensor-core path the
///   f32 operands (queries, probabilities) are split into two 16-bit parts
///   (x = hi + lo), so results agree with the f32 path to about 2^-16
///   relative (bf16) or 2^-22 (f16) instead of the 2^-8 of one rounding.
///
/// Setup: DeviceAttentionPlan::build() from the CPU AttentionLayerPlan, then
/// upload() into a device buffer of device_bytes() (once per layer). Per
/// step: decode_attention() with a caller-owned workspace of
/// decode_attention_workspace_bytes() on the caller's stream. Never
/// allocates, never synchronizes; returns a Status.

#if !defined(__CUDACC__)
#error "headrecon/cuda/*.cuh are CUDA headers: compile this file with nvcc (CMake target headrecon::cuda)"
#endif

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "headrecon/cuda/detail/common.cuh"
#include "headrecon/cuda/detail/host_headers.cuh"
#include "headrecon/cuda/reconstruct.cuh"
#include "headrecon/cuda/status.cuh"

namespace headrecon::cuda {

/// Tokens per block of the split kernel (one per lane in its softmax).
inline constexpr int kAttnBlockTokens = 32;
/// Largest head_dim the attention kernels take.
inline constexpr std::size_t kAttnMaxHeadDim = 256;

namespace detail {
// Device pointers into a DeviceAttentionPlan's tables (see build()).
struct AttnTables {
  const int* k_row_off;    // [n_k_streams + 1] first K row of each stream (rows padded to 8 per stream)
  const int* k_row_head;   // [n_k_rows] query head of the row, -1 = padding
  const int* k_row_vec;    // [n_k_rows] query vector (index into the prepared qvecs), -1 = padding
  const int* k_row_stream; // [n_k_rows]
  const int* k_head_off;   // [H + 1] CSR: K rows of each head
  const int* k_head_rows;
  const int* v_row_off;    // [n_v_streams + 1] first accumulator row of each V stream (padded to 8)
  const int* acc_row_head; // [n_acc_rows] head of the accumulator row, -1 = padding
  const int* acc_row_stream;  // [n_acc_rows] V stream, -1 = sink-only row of a rebuilt V head
  const int* sink_row;     // [H] accumulator row that the sink values of head h go to
  const int* v_head_off;   // [H + 1] CSR: accumulator rows of each head (its direct row first) ...
  const int* v_head_rows;
  const int* v_head_w;     // ... and the float offset of W_r in `weights` (-1: direct, added as is)
  const int* qvec_head;    // [n_qvecs] head of each query vector
  const int* qvec_w;       // [n_qvecs] float offset of W_r (-1: the raw scaled query)
  const int* k_bias;       // [H] float offset of the rebuilt K bias of head h's KV head, -1 = cached
  const int* v_bias;       // [H] same for V
  const float* weights;    // maps [k·d, d] and biases [d], f32
};
}  // namespace detail

/// An AttentionLayerPlan compiled into flat tables for the GPU: which rows of
/// the per-stream products belong to which head, where each map's weights
/// are. build() runs on the host; upload() copies the tables and weights
/// into device memory the caller owns (which must outlive every use).
struct DeviceAttentionPlan {
  int n_q_heads = 0, n_kv_heads = 0, head_dim = 0;
  int n_k_streams = 0, n_v_streams = 0;
  int n_qvecs = 0;     ///< query vectors per sequence: raw (one per head) then absorbed (W_r q)
  int n_k_rows = 0;    ///< rows of the query·key products, padded to 8 per stream
  int n_acc_rows = 0;  ///< value accumulators, padded to 8 per stream, plus sink-only rows
  std::vector<int> k_row_off, v_row_off;  ///< host copies (the launcher sizes shared memory with them)

  /// Compiles `plan`. invalid_argument when it is inconsistent.
  static Status build(const AttentionLayerPlan& plan, DeviceAttentionPlan& out);
  /// Bytes of device memory upload() needs.
  std::size_t device_bytes() const { return ints_bytes() + floats_.size() * sizeof(float); }
  /// Copies the tables into `device_buffer` (synchronous cudaMemcpy).
  Status upload(void* device_buffer, std::size_t bytes);
  bool uploaded() const { return device_ != nullptr; }
  /// Device pointers of the uploaded tables (internal).
  const detail::AttnTables& tables() const { return tables_; }
  /// The same tables in host memory (valid while this object lives): for
  /// tests and debugging on machines without a GPU.
  detail::AttnTables host_tables() const { return tables_at(ints_.data(), floats_.data()); }

 private:
  detail::AttnTables tables_at(const int* ints, const float* weights) const {
    auto t = [&](int i) { return ints + table_off_[i]; };
    return detail::AttnTables{t(kKRowOff), t(kKRowHead), t(kKRowVec), t(kKRowStream), t(kKHeadOff), t(kKHeadRows),
                              t(kVRowOff), t(kAccRowHead), t(kAccRowStream), t(kSinkRow), t(kVHeadOff),
                              t(kVHeadRows), t(kVHeadW), t(kQvecHead), t(kQvecW), t(kKBias), t(kVBias), weights};
  }
  std::size_t ints_bytes() const { return detail::round_up(ints_.size() * sizeof(int), 256); }
  std::vector<int> ints_;
  std::vector<float> floats_;
  enum : int { kKRowOff, kKRowHead, kKRowVec, kKRowStream, kKHeadOff, kKHeadRows, kVRowOff, kAccRowHead,
               kAccRowStream, kSinkRow, kVHeadOff, kVHeadRows, kVHeadW, kQvecHead, kQvecW, kKBias, kVBias, kNumTables };
  std::size_t table_off_[kNumTables] = {};
  const void* device_ = nullptr;
  detail::AttnTables tables_{};
};

inline Status DeviceAttentionPlan::build(const AttentionLayerPlan& p, DeviceAttentionPlan& out) {
  using detail::invalid;
  out = DeviceAttentionPlan{};
  const std::size_t H = p.n_q_heads, KVH = p.n_kv_heads, d = p.head_dim;
  if (H == 0 || KVH == 0 || H % KVH != 0 || d == 0) return invalid("DeviceAttentionPlan: head counts or head_dim");
  if (p.k.size() != KVH || p.v.size() != KVH || p.k_jobs.size() != p.n_k_streams || p.v_jobs.size() != p.n_v_streams)
    return invalid("DeviceAttentionPlan: the plan's sides and job lists do not match its counts");
  if (p.n_k_streams == 0 || p.n_v_streams == 0) return invalid("DeviceAttentionPlan: no K or V streams");
  const std::size_t G = H / KVH, nks = p.n_k_streams, nvs = p.n_v_streams;
  // Weights: per KV head, its rebuilt K map and bias, then its rebuilt V map and bias.
  std::vector<long long> kw(KVH, -1), kb(KVH, -1), vw(KVH, -1), vb(KVH, -1);
  for (std::size_t g = 0; g < KVH; ++g)
    for (int side = 0; side < 2; ++side) {
      const auto& s = side == 0 ? p.k[g] : p.v[g];
      const std::size_t n_streams = side == 0 ? nks : nvs;
      if (s.streams.empty()) return invalid("DeviceAttentionPlan: a KV head has no stream");
      for (std::uint32_t st : s.streams)
        if (st >= n_streams) return invalid("DeviceAttentionPlan: a stream index is out of range");
      if (!s.rebuilt) continue;
      if (!s.weight || !s.bias) return invalid("DeviceAttentionPlan: a rebuilt head has no weight or bias");
      (side == 0 ? kw : vw)[g] = (long long)out.floats_.size();
      out.floats_.insert(out.floats_.end(), s.weight, s.weight + s.streams.size() * d * d);
      (side == 0 ? kb : vb)[g] = (long long)out.floats_.size();
      out.floats_.insert(out.floats_.end(), s.bias, s.bias + d);
    }
  if (out.floats_.size() > 0x7fffffffu) return invalid("DeviceAttentionPlan: weights exceed 2^31 floats");
  auto ref_index = [](const AttentionLayerPlan::Side& s, std::size_t stream) -> long long {
    for (std::size_t r = 0; r < s.streams.size(); ++r)
      if (s.streams[r] == stream) return (long long)r;
    return -1;
  };
  // Query vectors.
  std::vector<int> qvec_head(p.n_qvecs, -1), qvec_w(p.n_qvecs, -1);
  if (p.n_qvecs < H) return invalid("DeviceAttentionPlan: fewer query vectors than heads");
  for (std::size_t h = 0; h < H; ++h) qvec_head[h] = int(h);
  // K rows, per stream, padded to 8.
  std::vector<int> k_row_off, k_row_head, k_row_vec, k_row_stream;
  for (std::size_t s = 0; s < nks; ++s) {
    k_row_off.push_back(int(k_row_head.size()));
    for (const auto& job : p.k_jobs[s]) {
      if (job.head >= H || job.vec >= p.n_qvecs) return invalid("DeviceAttentionPlan: a K job is out of range");
      k_row_head.push_back(int(job.head));
      k_row_vec.push_back(int(job.vec));
      k_row_stream.push_back(int(s));
      if (job.vec >= H) {
        const auto& side = p.k[job.head / G];
        const long long r = ref_index(side, s);
        if (!side.rebuilt || r < 0) return invalid("DeviceAttentionPlan: an absorbed K job without its map");
        qvec_head[job.vec] = int(job.head);
        qvec_w[job.vec] = int(kw[job.head / G] + r * (long long)(d * d));
      }
    }
    while (k_row_head.size() % 8) k_row_head.push_back(-1), k_row_vec.push_back(-1), k_row_stream.push_back(int(s));
  }
  k_row_off.push_back(int(k_row_head.size()));
  for (int h : qvec_head)
    if (h < 0) return invalid("DeviceAttentionPlan: a query vector no job uses");
  std::vector<int> k_head_off, k_head_rows;
  for (std::size_t h = 0; h < H; ++h) {
    k_head_off.push_back(int(k_head_rows.size()));
    for (std::size_t r = 0; r < k_row_head.size(); ++r)
      if (k_row_head[r] == int(h)) k_head_rows.push_back(int(r));
  }
  k_head_off.push_back(int(k_head_rows.size()));
  // Accumulator rows: per V stream, padded to 8; then sink-only rows of rebuilt V heads.
  std::vector<int> v_row_off, acc_row_head, acc_row_stream, acc_row_w, sink_row(H, -1);
  for (std::size_t s = 0; s < nvs; ++s) {
    v_row_off.push_back(int(acc_row_head.size()));
    for (const auto& job : p.v_jobs[s]) {
      if (job.head >= H || job.vec >= p.n_accs) return invalid("DeviceAttentionPlan: a V job is out of range");
      const auto& side = p.v[job.head / G];
      const int row = int(acc_row_head.size());
      acc_row_head.push_back(int(job.head));
      acc_row_stream.push_back(int(s));
      if (job.vec < H) {
        if (side.rebuilt || job.vec != job.head) return invalid("DeviceAttentionPlan: a direct V job of a rebuilt head");
        sink_row[job.head] = row;
        acc_row_w.push_back(-1);
      } else {
        const long long r = ref_index(side, s);
        if (!side.rebuilt || r < 0) return invalid("DeviceAttentionPlan: a V reference job without its map");
        acc_row_w.push_back(int(vw[job.head / G] + r * (long long)(d * d)));
      }
    }
    while (acc_row_head.size() % 8) acc_row_head.push_back(-1), acc_row_stream.push_back(int(s)), acc_row_w.push_back(-1);
  }
  v_row_off.push_back(int(acc_row_head.size()));
  for (std::size_t h = 0; h < H; ++h)
    if (sink_row[h] < 0) {
      if (!p.v[h / G].rebuilt) return invalid("DeviceAttentionPlan: a cached V head without its direct job");
      sink_row[h] = int(acc_row_head.size());
      acc_row_head.push_back(int(h));
      acc_row_stream.push_back(-1);
      acc_row_w.push_back(-1);
    }
  while (acc_row_head.size() % 8) acc_row_head.push_back(-1), acc_row_stream.push_back(-1), acc_row_w.push_back(-1);
  std::vector<int> v_head_off, v_head_rows, v_head_w;
  for (std::size_t h = 0; h < H; ++h) {
    v_head_off.push_back(int(v_head_rows.size()));
    v_head_rows.push_back(sink_row[h]);
    v_head_w.push_back(-1);
    for (std::size_t r = 0; r < acc_row_head.size(); ++r)
      if (acc_row_head[r] == int(h) && acc_row_w[r] >= 0) v_head_rows.push_back(int(r)), v_head_w.push_back(acc_row_w[r]);
  }
  v_head_off.push_back(int(v_head_rows.size()));
  std::vector<int> k_bias(H), v_bias(H);
  for (std::size_t h = 0; h < H; ++h) k_bias[h] = int(kb[h / G]), v_bias[h] = int(vb[h / G]);

  const std::vector<int>* tables[kNumTables] = {&k_row_off, &k_row_head, &k_row_vec, &k_row_stream, &k_head_off,
                                                &k_head_rows, &v_row_off, &acc_row_head, &acc_row_stream, &sink_row,
                                                &v_head_off, &v_head_rows, &v_head_w, &qvec_head, &qvec_w,
                                                &k_bias, &v_bias};
  for (int t = 0; t < kNumTables; ++t) {
    while (out.ints_.size() % 4) out.ints_.push_back(0);  // 16-byte aligned tables
    out.table_off_[t] = out.ints_.size();
    out.ints_.insert(out.ints_.end(), tables[t]->begin(), tables[t]->end());
  }
  out.n_q_heads = int(H);
  out.n_kv_heads = int(KVH);
  out.head_dim = int(d);
  out.n_k_streams = int(nks);
  out.n_v_streams = int(nvs);
  out.n_qvecs = int(p.n_qvecs);
  out.n_k_rows = int(k_row_head.size());
  out.n_acc_rows = int(acc_row_head.size());
  out.k_row_off = k_row_off;
  out.v_row_off = v_row_off;
  return {};
}

inline Status DeviceAttentionPlan::upload(void* device_buffer, std::size_t bytes) {
  if (n_q_heads == 0) return detail::invalid("DeviceAttentionPlan::upload: build() the plan first");
  if (!device_buffer) return detail::invalid("DeviceAttentionPlan::upload: no buffer");
  if (bytes < device_bytes()) return detail::fail(Code::workspace_too_small, "DeviceAttentionPlan::upload: buffer smaller than device_bytes()");
  if (reinterpret_cast<std::uintptr_t>(device_buffer) % 16)
    return detail::invalid("DeviceAttentionPlan::upload: buffer not 16-byte aligned");
  auto* base = static_cast<unsigned char*>(device_buffer);
  Status s = detail::check(cudaMemcpy(base, ints_.data(), ints_.size() * sizeof(int), cudaMemcpyHostToDevice),
                           "DeviceAttentionPlan::upload: cudaMemcpy (tables)");
  if (!s.ok()) return s;
  if (!floats_.empty()) {
    s = detail::check(cudaMemcpy(base + ints_bytes(), floats_.data(), floats_.size() * sizeof(float),
                                 cudaMemcpyHostToDevice),
                      "DeviceAttentionPlan::upload: cudaMemcpy (weights)");
    if (!s.ok()) return s;
  }
  tables_ = tables_at(reinterpret_cast<const int*>(base), reinterpret_cast<const float*>(base + ints_bytes()));
  device_ = device_buffer;
  return {};
}

/// Arguments of decode_attention(): one decode step of `batch` sequences and
/// one layer. Every pointer is device memory. Stream arrays are
/// [batch × n] HeadStreams (sequence-major) whose base and block_table are
/// device pointers: sink streams index the sink tokens 0..S_b-1, body streams
/// the tokens after them from 0 (as in the CPU DecodeAttentionArgs), where
/// S_b = min(n_sink, seq_lens[b]).
struct DecodeAttentionArgs {
  const DeviceAttentionPlan* plan = nullptr;  ///< uploaded
  DType cache_dtype = DType::bf16;  ///< dtype of every stream (the kernels trust it; a stream of another dtype gives NaN)
  std::size_t batch = 0;
  const float* q = nullptr;         ///< [batch, n_q_heads, head_dim], after RoPE
  float scale = 0.f;                ///< usually 1/sqrt(head_dim)
  std::size_t n_sink = 0;           ///< sink tokens (the plan's sink_tokens)
  const std::int32_t* seq_lens = nullptr;  ///< [batch] tokens of each sequence, sinks included (0: output 0)
  std::size_t max_seq_len = 0;      ///< upper bound of seq_lens (sizes the grid; a longer sequence gets NaN)
  std::size_t split_tokens = 0;     ///< tokens per split (default_split_tokens())
  const HeadStream* sink_k = nullptr;     ///< [batch × n_kv_heads]; may be null when n_sink == 0
  const HeadStream* sink_v = nullptr;
  const HeadStream* k_streams = nullptr;  ///< [batch × plan->n_k_streams]
  const HeadStream* v_streams = nullptr;  ///< [batch × plan->n_v_streams]
  float* out = nullptr;             ///< [batch, n_q_heads, head_dim]
  void* workspace = nullptr;        ///< decode_attention_workspace_bytes(), 256-byte aligned
  std::size_t workspace_bytes = 0;
  Math math = Math::automatic;
};

/// A split size for `batch` sequences of up to `max_seq_len` tokens on a GPU
/// with `sm_count` SMs: about two blocks per SM, at least 128 tokens, a
/// multiple of kAttnBlockTokens.
inline std::size_t default_split_tokens(std::size_t batch, std::size_t max_seq_len, int sm_count) {
  const std::size_t blocks = 2 * std::size_t(sm_count > 0 ? sm_count : 1);
  const std::size_t per_seq = detail::ceil_div(blocks, batch > 0 ? batch : 1);
  std::size_t split = detail::ceil_div(max_seq_len > 0 ? max_seq_len : 1, per_seq);
  split = split < 128 ? 128 : split;
  return detail::round_up(split, kAttnBlockTokens);
}

namespace detail {
struct AttnWorkspace {
  std::size_t qvec, qb, stats, acc, bytes;
};
inline AttnWorkspace attn_workspace(const DeviceAttentionPlan& p, std::size_t batch, std::size_t n_splits) {
  Carve c;
  AttnWorkspace w{};
  const std::size_t H = std::size_t(p.n_q_heads), d = std::size_t(p.head_dim);
  w.qvec = c.take(batch * std::size_t(p.n_qvecs) * d * sizeof(float));
  w.qb = c.take(batch * H * sizeof(float));
  w.stats = c.take(batch * n_splits * H * 3 * sizeof(float));
  w.acc = c.take(batch * n_splits * std::size_t(p.n_acc_rows) * d * sizeof(float));
  w.bytes = round_up(c.bytes, Carve::kAlign);
  return w;
}
}  // namespace detail

/// Device workspace of one decode_attention() call, in bytes: the prepared
/// query vectors and, per (sequence, split), the partial softmax statistics
/// and accumulators.
inline std::size_t decode_attention_workspace_bytes(const DeviceAttentionPlan& plan, std::size_t batch,
                                                    std::size_t max_seq_len, std::size_t split_tokens) {
  if (split_tokens == 0) return 0;
  return detail::attn_workspace(plan, batch, detail::ceil_div(max_seq_len, split_tokens)).bytes;
}

namespace detail {

constexpr int kAttnThreads = 256;
constexpr int kPrepBatch = 8;  // sequences per block of the query kernel

struct AttnSmem {
  int ld_x, ld_q, ld_p, ld_s, ld_acc, sps;
  std::size_t desc, skip, sc, stats, acc, sbuf, x, qhi, qlo, phi, plo, bytes;
};

struct AttnParams {
  AttnTables tb;
  int H, KVH, G, d, nks, nvs, n_qvecs, n_acc_rows, n_k_rows, batch, n_splits;
  long long split_tokens, n_sink;
  float scale;
  DType dtype;
  const float* q;
  const std::int32_t* seq_lens;
  const HeadStream *sink_k, *sink_v, *k_streams, *v_streams;
  float* out;
  float* qvec;
  float* qb;
  float* part_stats;
  float* part_acc;
  AttnSmem sm;
};

// Shared memory of the split kernel for `sps` streams per stage.
inline AttnSmem attn_smem(const DeviceAttentionPlan& p, std::size_t elem_size, bool tc, int sps) {
  constexpr int TT = kAttnBlockTokens;
  AttnSmem s{};
  const int d = p.head_dim, H = p.n_q_heads;
  const int per16 = int(16 / elem_size);
  s.ld_x = int(round_up(std::size_t(d), std::size_t(per16))) + per16;
  s.ld_q = s.ld_x;
  s.ld_p = TT + per16;
  s.ld_s = tile_ld<float>(TT);
  s.ld_acc = tile_ld<float>(d);
  s.sps = sps;
  auto stage_rows = [&](const std::vector<int>& off) {
    int mx = 0;
    const int n = int(off.size()) - 1;
    for (int s0 = 0; s0 < n; s0 += sps) {
      const int s1 = s0 + sps < n ? s0 + sps : n;
      mx = off[std::size_t(s1)] - off[std::size_t(s0)] > mx ? off[std::size_t(s1)] - off[std::size_t(s0)] : mx;
    }
    return mx;
  };
  Carve c;
  s.desc = c.take(std::size_t(2 * p.n_kv_heads + p.n_k_streams + p.n_v_streams) * sizeof(HeadStream));
  s.skip = c.take(std::size_t(p.n_k_streams + p.n_v_streams));
  s.sc = c.take(std::size_t(H) * TT * sizeof(float));
  s.stats = c.take(std::size_t(5 * H) * sizeof(float));
  s.acc = c.take(std::size_t(p.n_acc_rows) * s.ld_acc * sizeof(float));
  s.sbuf = c.take(std::size_t(stage_rows(p.k_row_off)) * s.ld_s * sizeof(float));
  s.x = c.take(std::size_t(sps) * TT * s.ld_x * elem_size);
  if (tc) {
    s.qhi = c.take(std::size_t(p.n_k_rows) * s.ld_q * elem_size);
    s.qlo = c.take(std::size_t(p.n_k_rows) * s.ld_q * elem_size);
    s.phi = c.take(std::size_t(stage_rows(p.v_row_off)) * s.ld_p * elem_size);
    s.plo = c.take(std::size_t(stage_rows(p.v_row_off)) * s.ld_p * elem_size);
  }
  s.bytes = round_up(c.bytes, Carve::kAlign);
  return s;
}

// Query vectors of every sequence: raw heads scaled (and q·b_K of rebuilt K
// heads), absorbed ones scale·W_r q. Block (query vector, 8 sequences).
template <int kThreads>
__global__ void __launch_bounds__(kThreads) attention_prepare_kernel(const __grid_constant__ AttnParams p) {
  const int v = int(blockIdx.x);
  const int b0 = int(blockIdx.y) * kPrepBatch, b1 = b0 + kPrepBatch < p.batch ? b0 + kPrepBatch : p.batch;
  const int h = p.tb.qvec_head[v], woff = p.tb.qvec_w[v];
  const int d = p.d, H = p.H, tid = int(threadIdx.x), lane = tid % kWarp, warp = tid / kWarp;
  const int nwarps = int(blockDim.x) / kWarp;
  if (woff < 0) {
    for (int b = b0; b < b1; ++b)
      for (int i = tid; i < d; i += int(blockDim.x))
        p.qvec[(std::size_t(b) * p.n_qvecs + v) * d + i] = p.scale * p.q[(std::size_t(b) * H + h) * d + i];
    if (v < H && warp == 0) {
      const int kb = p.tb.k_bias[h];
      for (int b = b0; b < b1; ++b) {
        float s = 0.f;
        if (kb >= 0)
          for (int i = lane; i < d; i += kWarp) s = fmaf(p.q[(std::size_t(b) * H + h) * d + i], p.tb.weights[kb + i], s);
        s = warp_sum(s);
        if (lane == 0) p.qb[std::size_t(b) * H + h] = kb >= 0 ? p.scale * s : 0.f;
      }
    }
  } else {
    const float* w = p.tb.weights + woff;  // W_r as [d, d]: row i is reference component i
    for (int i = warp; i < d; i += nwarps)
      for (int b = b0; b < b1; ++b) {
        const float* q = p.q + (std::size_t(b) * H + h) * d;
        float s = 0.f;
        for (int j = lane; j < d; j += kWarp) s = fmaf(w[std::size_t(i) * d + j], q[j], s);
        s = warp_sum(s);
        if (lane == 0) p.qvec[(std::size_t(b) * p.n_qvecs + v) * d + i] = p.scale * s;
      }
  }
}

// Partial products of one stage of K streams [s0, s0 + ns), rows [r0, r1):
// sbuf[row - r0][t] = qvec(row) · x_stream(row)[t], f32 FMAs (warp per row and token).
template <class T>
__device__ inline void stage_scores_simt(const AttnParams& p, const float* qv_b, const T* X, int ld_x, int s0, int r0,
                                         int r1, int nb, float* sbuf) {
  const int lane = int(threadIdx.x) % kWarp, warp = int(threadIdx.x) / kWarp, nwarps = int(blockDim.x) / kWarp;
  const int d = p.d;
  for (int w = warp; w < (r1 - r0) * nb; w += nwarps) {
    const int rr = w / nb, t = w % nb, r = r0 + rr;
    if (p.tb.k_row_head[r] < 0) continue;  // padding (uniform in the warp)
    const float* q = qv_b + std::size_t(p.tb.k_row_vec[r]) * d;
    const T* x = X + (std::size_t(p.tb.k_row_stream[r] - s0) * kAttnBlockTokens + t) * ld_x;
    float s = 0.f;
    for (int i = lane; i < d; i += kWarp) s = fmaf(q[i], Elem<T>::to_f32(x[i]), s);
    s = warp_sum(s);
    if (lane == 0) sbuf[rr * p.sm.ld_s + t] = s;
  }
}

// Same with tensor cores: per 8-row tile, C[8 × 32 tokens] = (Q_hi + Q_lo)[8 × d] · X^T[d × 32].
template <class T>
__device__ inline void stage_scores_tc(const AttnParams& p, const T* X, int s0, int r0, int r1,
                                       const typename Elem<T>::mma_t* qhi, const typename Elem<T>::mma_t* qlo,
                                       float* sbuf) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();
#else
  namespace wmma = nvcuda::wmma;
  using M = typename Elem<T>::mma_t;
  const int warp = int(threadIdx.x) / kWarp, nwarps = int(blockDim.x) / kWarp;
  const AttnSmem& L = p.sm;
  for (int tile = warp; tile < (r1 - r0) / 8; tile += nwarps) {
    const int r = r0 + tile * 8;
    const M* x = reinterpret_cast<const M*>(X) + std::size_t(p.tb.k_row_stream[r] - s0) * kAttnBlockTokens * L.ld_x;
    wmma::fragment<wmma::accumulator, 8, 32, 16, float> c;
    wmma::fill_fragment(c, 0.f);
    for (int i0 = 0; i0 < p.d; i0 += 16) {
      // B[k][n] = component i0 + k of token n: column-major with stride ld_x.
      wmma::fragment<wmma::matrix_b, 8, 32, 16, M, wmma::col_major> b;
      wmma::load_matrix_sync(b, x + i0, L.ld_x);
      wmma::fragment<wmma::matrix_a, 8, 32, 16, M, wmma::row_major> a;
      wmma::load_matrix_sync(a, qhi + std::size_t(r) * L.ld_q + i0, L.ld_q);
      wmma::mma_sync(c, a, b, c);
      wmma::load_matrix_sync(a, qlo + std::size_t(r) * L.ld_q + i0, L.ld_q);
      wmma::mma_sync(c, a, b, c);
    }
    wmma::store_matrix_sync(sbuf + (r - r0) * L.ld_s, c, L.ld_s, wmma::mem_row_major);
  }
#endif
}

// acc[row] += Σ_t p[head(row)][t] · x_stream(row)[t] for rows [r0, r1), f32 FMAs (thread per row and component).
template <class T>
__device__ inline void stage_values_simt(const AttnParams& p, const T* X, int s0, int r0, int r1, int nb,
                                         const float* sc, float* acc) {
  const int d = p.d;
  const AttnSmem& L = p.sm;
  for (int i = int(threadIdx.x); i < (r1 - r0) * d; i += int(blockDim.x)) {
    const int r = r0 + i / d, k = i % d;
    const int h = p.tb.acc_row_head[r];
    if (h < 0) continue;
    const T* x = X + std::size_t(p.tb.acc_row_stream[r] - s0) * kAttnBlockTokens * L.ld_x + k;
    float a = 0.f;
    for (int t = 0; t < nb; ++t) a = fmaf(sc[h * kAttnBlockTokens + t], Elem<T>::to_f32(x[std::size_t(t) * L.ld_x]), a);
    acc[std::size_t(r) * L.ld_acc + k] += a;
  }
}

// Same with tensor cores: per (8-row, 32-column) tile, C += (P_hi + P_lo)[8 × 32 tokens] · X[32 tokens × 32].
template <class T>
__device__ inline void stage_values_tc(const AttnParams& p, const T* X, int s0, int r0, int r1,
                                       const typename Elem<T>::mma_t* phi, const typename Elem<T>::mma_t* plo,
                                       float* acc) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();
#else
  namespace wmma = nvcuda::wmma;
  using M = typename Elem<T>::mma_t;
  const int warp = int(threadIdx.x) / kWarp, nwarps = int(blockDim.x) / kWarp;
  const AttnSmem& L = p.sm;
  const int n_col = p.d / 32, tiles = (r1 - r0) / 8 * n_col;
  for (int tile = warp; tile < tiles; tile += nwarps) {
    const int r = r0 + (tile / n_col) * 8, n0 = (tile % n_col) * 32;
    const M* x = reinterpret_cast<const M*>(X) + std::size_t(p.tb.acc_row_stream[r] - s0) * kAttnBlockTokens * L.ld_x;
    float* cptr = acc + std::size_t(r) * L.ld_acc + n0;
    wmma::fragment<wmma::accumulator, 8, 32, 16, float> c;
    wmma::load_matrix_sync(c, cptr, L.ld_acc, wmma::mem_row_major);
#pragma unroll
    for (int k0 = 0; k0 < kAttnBlockTokens; k0 += 16) {
      // B[k][n] = component n0 + n of token k0 + k: row-major with stride ld_x.
      wmma::fragment<wmma::matrix_b, 8, 32, 16, M, wmma::row_major> b;
      wmma::load_matrix_sync(b, x + std::size_t(k0) * L.ld_x + n0, L.ld_x);
      wmma::fragment<wmma::matrix_a, 8, 32, 16, M, wmma::row_major> a;
      wmma::load_matrix_sync(a, phi + std::size_t(r - r0) * L.ld_p + k0, L.ld_p);
      wmma::mma_sync(c, a, b, c);
      wmma::load_matrix_sync(a, plo + std::size_t(r - r0) * L.ld_p + k0, L.ld_p);
      wmma::mma_sync(c, a, b, c);
    }
    wmma::store_matrix_sync(cptr, c, L.ld_acc, wmma::mem_row_major);
  }
#endif
}

// One block per (split, sequence): online softmax over the split's tokens in
// blocks of 32 (never straddling the sink boundary), all query heads at once,
// every cached stream read once per block. Writes the split's (max, sum,
// body mass) per head and its accumulator rows.
template <class T, bool kTC>
__global__ void __launch_bounds__(kAttnThreads) attention_split_kernel(const __grid_constant__ AttnParams p) {
  constexpr int TT = kAttnBlockTokens;
  static_assert(TT == kWarp, "the softmax keeps one token per lane");
  extern __shared__ __align__(128) unsigned char smem[];
  const AttnSmem& L = p.sm;
  const AttnTables& tb = p.tb;
  const int tid = int(threadIdx.x), lane = tid % kWarp, warp = tid / kWarp, nwarps = int(blockDim.x) / kWarp;
  const int nthreads = int(blockDim.x);
  const int c = int(blockIdx.x), b = int(blockIdx.y);
  const int H = p.H, G = p.G, KVH = p.KVH, d = p.d, nks = p.nks, nvs = p.nvs, NAR = p.n_acc_rows;
  float* stats_out = p.part_stats + (std::size_t(b) * p.n_splits + c) * H * 3;
  const long long len = p.seq_lens[b] > 0 ? (long long)p.seq_lens[b] : 0;
  const long long S = p.n_sink < len ? p.n_sink : len;
  const long long t_begin = (long long)c * p.split_tokens;
  const long long t_end = t_begin + p.split_tokens < len ? t_begin + p.split_tokens : len;
  if (t_begin >= t_end) {  // nothing in this split: the combine kernel skips it
    for (int h = tid; h < H; h += nthreads) {
      stats_out[h * 3 + 0] = -INFINITY;
      stats_out[h * 3 + 1] = 0.f;
      stats_out[h * 3 + 2] = 0.f;
    }
    return;
  }
  HeadStream* desc = reinterpret_cast<HeadStream*>(smem + L.desc);  // sink K [KVH], sink V [KVH], K [nks], V [nvs]
  bool* skip = reinterpret_cast<bool*>(smem + L.skip);                // K [nks], V [nvs]: streams without rows
  float* sc = reinterpret_cast<float*>(smem + L.sc);                  // [H][TT] scores, then probabilities
  float* m = reinterpret_cast<float*>(smem + L.stats);                // [H] running max
  float* l = m + H;                                                   // [H] running sum
  float* mass = l + H;                                                // [H] running body sum (bias of rebuilt V)
  float* fac = mass + H;                                              // [H] rescale factor of the current block
  float* qb = fac + H;                                                // [H] scale·q·b_K (rebuilt K), else 0
  float* acc = reinterpret_cast<float*>(smem + L.acc);                // [NAR][ld_acc]
  float* sbuf = reinterpret_cast<float*>(smem + L.sbuf);              // [stage K rows][ld_s]
  T* X = reinterpret_cast<T*>(smem + L.x);                            // [sps][TT][ld_x]

  // Descriptors of this sequence's streams, copied as 8-byte words.
  static_assert(sizeof(HeadStream) % 8 == 0, "HeadStream is copied as 8-byte words");
  constexpr int kWords = int(sizeof(HeadStream) / 8);
  const int n_desc = 2 * KVH + nks + nvs;
  for (int i = tid; i < n_desc * kWords; i += nthreads) {
    const int k = i / kWords, w = i % kWords;
    const HeadStream* src = k < KVH         ? (p.sink_k ? p.sink_k + std::size_t(b) * KVH + k : nullptr)
                            : k < 2 * KVH   ? (p.sink_v ? p.sink_v + std::size_t(b) * KVH + (k - KVH) : nullptr)
                            : k < 2 * KVH + nks ? p.k_streams + std::size_t(b) * nks + (k - 2 * KVH)
                                                : p.v_streams + std::size_t(b) * nvs + (k - 2 * KVH - nks);
    reinterpret_cast<unsigned long long*>(desc)[i] = src ? reinterpret_cast<const unsigned long long*>(src)[w] : 0ull;
  }
  for (int i = tid; i < nks; i += nthreads) skip[i] = tb.k_row_off[i + 1] == tb.k_row_off[i];
  for (int i = tid; i < nvs; i += nthreads) skip[nks + i] = tb.v_row_off[i + 1] == tb.v_row_off[i];
  for (int h = tid; h < H; h += nthreads) {
    m[h] = -INFINITY;
    l[h] = 0.f;
    mass[h] = 0.f;
    fac[h] = 1.f;
    qb[h] = p.qb[std::size_t(b) * H + h];
  }
  for (int i = tid; i < NAR * L.ld_acc; i += nthreads) acc[i] = 0.f;
  const float* qv_b = p.qvec + std::size_t(b) * p.n_qvecs * d;
  using M = typename Elem<T>::mma_t_or_void;
  M* qhi = nullptr;
  M* qlo = nullptr;
  M* phi = nullptr;
  M* plo = nullptr;
  if constexpr (kTC) {
    qhi = reinterpret_cast<M*>(smem + L.qhi);
    qlo = reinterpret_cast<M*>(smem + L.qlo);
    phi = reinterpret_cast<M*>(smem + L.phi);
    plo = reinterpret_cast<M*>(smem + L.plo);
    for (int i = tid; i < p.n_k_rows * d; i += nthreads) {
      const int r = i / d, k = i % d, v = tb.k_row_vec[r];
      const float x = v >= 0 ? qv_b[std::size_t(v) * d + k] : 0.f;
      const M hi = Elem<T>::round(x);
      qhi[std::size_t(r) * L.ld_q + k] = hi;
      qlo[std::size_t(r) * L.ld_q + k] = Elem<T>::round(x - Elem<T>::widen(hi));
    }
  }
  __syncthreads();
  // Streams this split reads must have the call's dtype and, if paged, a block size.
  {
    int bad = 0;
    const bool sinks = t_begin < S, body = t_end > S;
    for (int k = tid; k < n_desc; k += nthreads) {
      const bool used = k < 2 * KVH ? sinks : body && !skip[k - 2 * KVH];
      if (used && (desc[k].base == nullptr || desc[k].dtype != p.dtype ||
                   (desc[k].block_table != nullptr && desc[k].block_size == 0)))
        bad = 1;
    }
    if (__syncthreads_or(bad)) {
      for (int h = tid; h < H; h += nthreads) {
        stats_out[h * 3 + 0] = 0.f;
        stats_out[h * 3 + 1] = __int_as_float(0x7fc00000);  // NaN: the combine kernel writes NaN
        stats_out[h * 3 + 2] = 0.f;
      }
      return;
    }
  }

  for (long long t0 = t_begin; t0 < t_end;) {
    const bool sink = t0 < S;
    long long t1 = t0 + TT < t_end ? t0 + TT : t_end;
    if (sink && t1 > S) t1 = S;
    const int nb = int(t1 - t0);
    // ---- scores
    if (sink) {
      for (int g0 = 0; g0 < KVH; g0 += L.sps) {
        const int ng = L.sps < KVH - g0 ? L.sps : KVH - g0;
        load_stage<T>(X, L.ld_x, TT, desc + g0, ng, nullptr, t0, nb, 0, d);
        __syncthreads();
        for (int w = warp; w < ng * G * nb; w += nwarps) {
          const int hl = w / nb, t = w % nb, h = g0 * G + hl;
          const T* x = X + (std::size_t(hl / G) * TT + t) * L.ld_x;
          const float* q = qv_b + std::size_t(h) * d;  // raw scaled query of head h
          float s = 0.f;
          for (int i = lane; i < d; i += kWarp) s = fmaf(q[i], Elem<T>::to_f32(x[i]), s);
          s = warp_sum(s);
          if (lane == 0) sc[h * TT + t] = s;
        }
        __syncthreads();
      }
    } else {
      const long long u0 = t0 - S;
      for (int i = tid; i < H * TT; i += nthreads) sc[i] = qb[i / TT];
      for (int s0 = 0; s0 < nks; s0 += L.sps) {
        const int ns = L.sps < nks - s0 ? L.sps : nks - s0;
        const int r0 = tb.k_row_off[s0], r1 = tb.k_row_off[s0 + ns];
        if (r0 == r1) continue;
        load_stage<T>(X, L.ld_x, TT, desc + 2 * KVH + s0, ns, skip + s0, u0, nb, 0, d);
        __syncthreads();
        if constexpr (kTC)
          stage_scores_tc<T>(p, X, s0, r0, r1, qhi, qlo, sbuf);
        else
          stage_scores_simt<T>(p, qv_b, X, L.ld_x, s0, r0, r1, nb, sbuf);
        __syncthreads();
        for (int i = tid; i < H * nb; i += nthreads) {
          const int h = i / nb, t = i % nb;
          float add = 0.f;
          for (int j = tb.k_head_off[h]; j < tb.k_head_off[h + 1]; ++j) {
            const int r = tb.k_head_rows[j];
            if (r >= r0 && r < r1) add += sbuf[(r - r0) * L.ld_s + t];
          }
          sc[h * TT + t] += add;
        }
        __syncthreads();
      }
    }
    // ---- online softmax, one warp per head, one token per lane
    for (int h = warp; h < H; h += nwarps) {
      const float s = lane < nb ? sc[h * TT + lane] : -INFINITY;
      const float m_old = m[h];
      const float m_new = fmaxf(m_old, warp_max(s));
      const float f = m_old == -INFINITY ? 0.f : expf(m_old - m_new);
      const float pr = lane < nb ? expf(s - m_new) : 0.f;
      const float sum = warp_sum(pr);
      sc[h * TT + lane] = pr;
      __syncwarp();
      if (lane == 0) {
        m[h] = m_new;
        l[h] = l[h] * f + sum;
        mass[h] = mass[h] * f + (sink ? 0.f : sum);
        fac[h] = f;
      }
    }
    __syncthreads();
    for (int i = tid; i < NAR * d; i += nthreads) {
      const int r = i / d, h = tb.acc_row_head[r];
      if (h >= 0) acc[std::size_t(r) * L.ld_acc + i % d] *= fac[h];
    }
    __syncthreads();
    // ---- values
    if (sink) {
      for (int g0 = 0; g0 < KVH; g0 += L.sps) {
        const int ng = L.sps < KVH - g0 ? L.sps : KVH - g0;
        load_stage<T>(X, L.ld_x, TT, desc + KVH + g0, ng, nullptr, t0, nb, 0, d);
        __syncthreads();
        for (int i = tid; i < ng * G * d; i += nthreads) {
          const int hl = i / d, k = i % d, h = g0 * G + hl;
          const T* x = X + std::size_t(hl / G) * TT * L.ld_x + k;
          float a = 0.f;
          for (int t = 0; t < nb; ++t) a = fmaf(sc[h * TT + t], Elem<T>::to_f32(x[std::size_t(t) * L.ld_x]), a);
          acc[std::size_t(tb.sink_row[h]) * L.ld_acc + k] += a;
        }
        __syncthreads();
      }
    } else {
      const long long u0 = t0 - S;
      for (int s0 = 0; s0 < nvs; s0 += L.sps) {
        const int ns = L.sps < nvs - s0 ? L.sps : nvs - s0;
        const int r0 = tb.v_row_off[s0], r1 = tb.v_row_off[s0 + ns];
        if (r0 == r1) continue;
        load_stage<T>(X, L.ld_x, TT, desc + 2 * KVH + nks + s0, ns, skip + nks + s0, u0, nb, 0, d);
        if constexpr (kTC) {
          for (int i = tid; i < (r1 - r0) * TT; i += nthreads) {
            const int rr = i / TT, t = i % TT, h = tb.acc_row_head[r0 + rr];
            const float x = (h >= 0 && t < nb) ? sc[h * TT + t] : 0.f;
            const M hi = Elem<T>::round(x);
            phi[std::size_t(rr) * L.ld_p + t] = hi;
            plo[std::size_t(rr) * L.ld_p + t] = Elem<T>::round(x - Elem<T>::widen(hi));
          }
        }
        __syncthreads();
        if constexpr (kTC)
          stage_values_tc<T>(p, X, s0, r0, r1, phi, plo, acc);
        else
          stage_values_simt<T>(p, X, s0, r0, r1, nb, sc, acc);
        __syncthreads();
      }
    }
    t0 = t1;
  }
  // ---- partials
  float* pa = p.part_acc + (std::size_t(b) * p.n_splits + c) * NAR * d;
  for (int i = tid; i < NAR * d; i += nthreads) pa[i] = acc[std::size_t(i / d) * L.ld_acc + i % d];
  for (int h = tid; h < H; h += nthreads) {
    stats_out[h * 3 + 0] = m[h];
    stats_out[h * 3 + 1] = l[h];
    stats_out[h * 3 + 2] = mass[h];
  }
}

// One block per (head, sequence), thread j = output component j: merges the
// splits (weights exp(m_c - max)), maps the reference accumulators (Wᵀ A_r),
// adds the bias times the body mass of rebuilt V heads, divides by the sum.
template <int kMaxThreads>
__global__ void __launch_bounds__(kMaxThreads) attention_combine_kernel(const __grid_constant__ AttnParams p) {
  extern __shared__ __align__(16) float csm[];
  const int NS = p.n_splits, H = p.H, d = p.d;
  float* w = csm;                                   // [NS] split weights
  float* abuf = csm + round_up(std::size_t(NS), 4);  // [d] merged reference accumulator
  float* red = abuf + round_up(std::size_t(d), 4);   // [32] reduction scratch
  const int h = int(blockIdx.x), b = int(blockIdx.y), j = int(threadIdx.x);
  const int lane = j % kWarp, warp = j / kWarp, nwarps = int(blockDim.x) / kWarp;
  const float* st = p.part_stats + std::size_t(b) * NS * H * 3;
  float mx = -INFINITY;
  int bad = 0;
  for (int c = j; c < NS; c += int(blockDim.x)) {
    const float lc = st[(std::size_t(c) * H + h) * 3 + 1];
    if (lc != lc) bad = 1;
    else if (lc > 0.f) mx = fmaxf(mx, st[(std::size_t(c) * H + h) * 3]);
  }
  bad = __syncthreads_or(bad);
  mx = warp_max(mx);
  if (lane == 0) red[warp] = mx;
  __syncthreads();
  if (warp == 0) {
    float v = lane < nwarps ? red[lane] : -INFINITY;
    v = warp_max(v);
    if (lane == 0) red[0] = v;
  }
  __syncthreads();
  mx = red[0];
  for (int c = j; c < NS; c += int(blockDim.x)) {
    const float* s = st + (std::size_t(c) * H + h) * 3;
    w[c] = s[1] > 0.f ? expf(s[0] - mx) : 0.f;
  }
  __syncthreads();
  float sum = 0.f, body = 0.f;
  for (int c = 0; c < NS; ++c) {
    if (w[c] == 0.f) continue;
    const float* s = st + (std::size_t(c) * H + h) * 3;
    sum = fmaf(w[c], s[1], sum);
    body = fmaf(w[c], s[2], body);
  }
  const long long len = p.seq_lens[b];
  if (len > (long long)NS * p.split_tokens) bad = 1;
  float o = 0.f;
  for (int k = p.tb.v_head_off[h]; k < p.tb.v_head_off[h + 1]; ++k) {
    const int r = p.tb.v_head_rows[k], woff = p.tb.v_head_w[k];
    float a = 0.f;
    if (j < d)
      for (int c = 0; c < NS; ++c)
        if (w[c] != 0.f) a = fmaf(w[c], p.part_acc[((std::size_t(b) * NS + c) * p.n_acc_rows + r) * d + j], a);
    if (woff < 0) {
      o += a;
    } else {
      __syncthreads();  // the previous map's readers are done with abuf
      if (j < d) abuf[j] = a;
      __syncthreads();
      if (j < d) {
        const float* wm = p.tb.weights + woff;  // W_r [d, d]: row i = reference component i
        float y = 0.f;
        for (int i = 0; i < d; ++i) y = fmaf(abuf[i], wm[std::size_t(i) * d + j], y);
        o += y;
      }
    }
  }
  if (j < d) {
    const int vb = p.tb.v_bias[h];
    if (vb >= 0) o = fmaf(body, p.tb.weights[vb + j], o);
    p.out[(std::size_t(b) * H + h) * d + j] = bad ? __int_as_float(0x7fc00000) : (sum > 0.f ? o / sum : 0.f);
  }
}

template <class T, bool kTC>
inline Status launch_attention(const AttnParams& p, std::size_t smem, dim3 grid, cudaStream_t stream) {
  if (Status s = allow_smem(attention_split_kernel<T, kTC>, smem); !s.ok()) return s;
  attention_split_kernel<T, kTC><<<grid, kAttnThreads, smem, stream>>>(p);
  return check(cudaGetLastError(), "decode_attention: split kernel launch");
}

}  // namespace detail

/// One decode step (see DecodeAttentionArgs) on `stream`: three kernels
/// (queries, splits, combine). invalid_argument / workspace_too_small for bad
/// arguments (checked before any CUDA call), unsupported for a head_dim above
/// 256, a plan too large for shared memory or Math::tensor_cores where it
/// does not apply, cuda_error when a launch fails. A sequence longer than
/// the grid covers (split_tokens × ceil(max_seq_len / split_tokens)), or a
/// stream of the wrong dtype, gets NaN outputs.
inline Status decode_attention(const DecodeAttentionArgs& a, cudaStream_t stream) {
  using namespace detail;
  if (!a.plan || !a.plan->uploaded()) return invalid("decode_attention: the plan is missing or not uploaded");
  const DeviceAttentionPlan& P = *a.plan;
  if (a.batch == 0) return {};
  if (!a.q || !a.out || !a.seq_lens || !a.k_streams || !a.v_streams)
    return invalid("decode_attention: q, out, seq_lens, k_streams and v_streams are required");
  if (a.n_sink > 0 && (!a.sink_k || !a.sink_v)) return invalid("decode_attention: sink tokens but no sink streams");
  if (a.split_tokens == 0 || a.max_seq_len == 0) return invalid("decode_attention: split_tokens and max_seq_len must be positive");
  if (a.batch > 65535) return unsupported("decode_attention: more than 65535 sequences in one call");
  if (a.cache_dtype != DType::f32 && a.cache_dtype != DType::f16 && a.cache_dtype != DType::bf16)
    return invalid("decode_attention: unknown cache dtype");
  if (std::size_t(P.head_dim) > kAttnMaxHeadDim) return unsupported("decode_attention: head_dim above 256");
  const std::size_t n_splits = ceil_div(a.max_seq_len, a.split_tokens);
  if (n_splits > 0x7fffffffu || a.split_tokens > std::size_t(INT64_MAX / 4))
    return unsupported("decode_attention: too many splits");
  const AttnWorkspace ws = attn_workspace(P, a.batch, n_splits);
  if (!a.workspace || a.workspace_bytes < ws.bytes)
    return fail(Code::workspace_too_small, "decode_attention: workspace smaller than decode_attention_workspace_bytes()");
  if (reinterpret_cast<std::uintptr_t>(a.workspace) % 256)
    return invalid("decode_attention: workspace not 256-byte aligned");

  DeviceInfo dev;
  if (Status s = device_info(dev); !s.ok()) return s;
  const bool tc_ok = a.cache_dtype != DType::f32 && P.head_dim % 32 == 0 && dev.cc_major >= 8;
  if (a.math == Math::tensor_cores && !tc_ok)
    return unsupported("decode_attention: tensor cores need an f16/bf16 cache, head_dim a multiple of 32 and sm_80+");
  const bool tc = a.math == Math::tensor_cores || (a.math == Math::automatic && tc_ok);
  const std::size_t es = dtype_size(a.cache_dtype);
  // Streams per stage: the body's K (or V) streams in as few stages of at
  // most 64 KiB as possible, balanced (8 streams of 8.5 KiB: 2 stages of 4);
  // fewer if shared memory is short. Sinks (all KV heads) use the same stages.
  const std::size_t tile = kAttnBlockTokens * std::size_t(attn_smem(P, es, tc, 1).ld_x) * es;
  const int n_max = P.n_k_streams > P.n_v_streams ? P.n_k_streams : P.n_v_streams;
  const int per_stage = int(std::size_t(64 * 1024) / tile) > 0 ? int(std::size_t(64 * 1024) / tile) : 1;
  const int stages = int(ceil_div(std::size_t(n_max), std::size_t(per_stage)));
  int sps = int(ceil_div(std::size_t(n_max), std::size_t(stages)));
  AttnSmem sm{};
  for (; sps >= 1; --sps) {
    sm = attn_smem(P, es, tc, sps);
    if (sm.bytes <= std::size_t(dev.max_smem_optin)) break;
  }
  if (sps < 1) return unsupported("decode_attention: the plan does not fit in shared memory");

  unsigned char* wsb = static_cast<unsigned char*>(a.workspace);
  AttnParams p{};
  p.tb = P.tables();
  p.H = P.n_q_heads;
  p.KVH = P.n_kv_heads;
  p.G = P.n_q_heads / P.n_kv_heads;
  p.d = P.head_dim;
  p.nks = P.n_k_streams;
  p.nvs = P.n_v_streams;
  p.n_qvecs = P.n_qvecs;
  p.n_acc_rows = P.n_acc_rows;
  p.n_k_rows = P.n_k_rows;
  p.batch = int(a.batch);
  p.n_splits = int(n_splits);
  p.split_tokens = (long long)a.split_tokens;
  p.n_sink = (long long)a.n_sink;
  p.scale = a.scale;
  p.dtype = a.cache_dtype;
  p.q = a.q;
  p.seq_lens = a.seq_lens;
  p.sink_k = a.n_sink > 0 ? a.sink_k : nullptr;
  p.sink_v = a.n_sink > 0 ? a.sink_v : nullptr;
  p.k_streams = a.k_streams;
  p.v_streams = a.v_streams;
  p.out = a.out;
  p.qvec = reinterpret_cast<float*>(wsb + ws.qvec);
  p.qb = reinterpret_cast<float*>(wsb + ws.qb);
  p.part_stats = reinterpret_cast<float*>(wsb + ws.stats);
  p.part_acc = reinterpret_cast<float*>(wsb + ws.acc);
  p.sm = sm;

  attention_prepare_kernel<128><<<dim3(unsigned(P.n_qvecs), unsigned(ceil_div(a.batch, kPrepBatch))), 128, 0, stream>>>(p);
  if (Status s = check(cudaGetLastError(), "decode_attention: query kernel launch"); !s.ok()) return s;

  const dim3 grid(unsigned(n_splits), unsigned(a.batch));
  Status s;
  switch (a.cache_dtype) {
    case DType::f32: s = launch_attention<float, false>(p, sm.bytes, grid, stream); break;
    case DType::f16:
      s = tc ? launch_attention<f16_t, true>(p, sm.bytes, grid, stream) : launch_attention<f16_t, false>(p, sm.bytes, grid, stream);
      break;
    case DType::bf16:
      s = tc ? launch_attention<bf16_t, true>(p, sm.bytes, grid, stream) : launch_attention<bf16_t, false>(p, sm.bytes, grid, stream);
      break;
  }
  if (!s.ok()) return s;

  const int threads = int(round_up(std::size_t(P.head_dim), kWarp));
  const std::size_t csmem = (round_up(n_splits, 4) + round_up(std::size_t(P.head_dim), 4) + kWarp) * sizeof(float);
  if (csmem > std::size_t(dev.max_smem_optin)) return unsupported("decode_attention: too many splits for the combine kernel");
  if (Status e = allow_smem(attention_combine_kernel<int(kAttnMaxHeadDim)>, csmem); !e.ok()) return e;
  attention_combine_kernel<int(kAttnMaxHeadDim)><<<dim3(unsigned(P.n_q_heads), unsigned(a.batch)), threads, csmem, stream>>>(p);
  return check(cudaGetLastError(), "decode_attention: combine kernel launch");
}

}  // namespace headrecon::cuda
