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

#include "headrecon/cuda/attention_kernels.cuh"
#include "headrecon/cuda/attention_plan.cuh"
#include "headrecon/cuda/status.cuh"

namespace headrecon::cuda {

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

/// Device workspace of one decode_attention() call, in bytes: the prepared
/// query vectors and, per (sequence, split), the partial softmax statistics
/// and accumulators.
inline std::size_t decode_attention_workspace_bytes(const DeviceAttentionPlan& plan, std::size_t batch,
                                                    std::size_t max_seq_len, std::size_t split_tokens) {
  if (split_tokens == 0) return 0;
  return detail::attn_workspace(plan, batch, detail::ceil_div(max_seq_len, split_tokens)).bytes;
}


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
    return unsupported("decode_attention: cache type not supported by the CUDA kernels (f32, f16 and bf16 are)");
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
    case DType::q8_0:
    case DType::q4_0: break;  // rejected above: the CUDA kernels read f32, f16 and bf16 caches
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
