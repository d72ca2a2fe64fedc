#pragma once
/// @file attention_kernels.cuh
/// The CUDA decode-attention kernels (namespace detail): prepared queries,
/// one block per (split, sequence) with an online softmax over 32-token
/// blocks, and the combine that merges splits and applies the value maps.
/// Call them through decode_attention() in attention.cuh.

#include "headrecon/cuda/attention_plan.cuh"
#include "headrecon/cuda/reconstruct.cuh"

namespace headrecon::cuda {

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

}  // namespace headrecon::cuda
