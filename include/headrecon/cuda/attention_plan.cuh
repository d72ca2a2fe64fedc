#pragma once
/// @file attention_plan.cuh
/// The CUDA side of an AttentionLayerPlan (attention_plan.hpp): the plan
/// compiled into flat tables for the GPU (which rows of the per-stream
/// products belong to which head, where each map's weights are), built on
/// the host and uploaded into device memory the caller owns. Used by the
/// kernels in attention_kernels.cuh through the front door attention.cuh.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "headrecon/cuda/detail/common.cuh"
#include "headrecon/cuda/detail/host_headers.cuh"
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

}  // namespace headrecon::cuda
