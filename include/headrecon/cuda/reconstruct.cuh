#pragma once
/// @file reconstruct.cuh
/// CUDA reconstruction of rebuilt heads from a reference-only cache: for
/// tokens [token0, token0 + n_tokens) and every target,
///   y_t = Wᵀ [x_ref0,t; …; x_ref(k−1),t] + b      (f32 accumulation)
/// written to the target's output stream (f32, f16 or bf16, any HeadStream
/// layout). The same contract as the CPU reconstruct() (cpu/reconstruct.hpp);
/// for a plan fitted before RoPE, rotate the result afterwards.
///
/// Two paths: tensor cores (WMMA, f16/bf16 inputs, f32 accumulation) for
/// prefill-sized token counts, and plain f32 FMAs for small counts, f32
/// caches and head dims that are not a multiple of 32. On the tensor-core
/// path each weight is split into two 16-bit parts (w = hi + lo, both in the
/// cache's type), so the products keep about 16 bits (bf16) or 22 bits (f16)
/// of the f32 weight: the result matches the f32 path to well below the
/// rounding of a 16-bit output.
///
/// Never allocates, never synchronizes; returns a Status instead of throwing.

#if !defined(__CUDACC__)
#error "headrecon/cuda/*.cuh are CUDA headers: compile this file with nvcc (CMake target headrecon::cuda)"
#endif

#include <cstddef>
#include <cstdint>

#include "headrecon/cuda/detail/common.cuh"
#include "headrecon/cuda/detail/host_headers.cuh"
#include "headrecon/cuda/status.cuh"

namespace headrecon::cuda {

/// Which arithmetic a kernel uses. `automatic` picks tensor cores where they
/// apply (16-bit cache, head_dim a multiple of 32, compute capability >= 8.0,
/// and for reconstruction at least kReconTensorCoreMinTokens tokens).
enum class Math : std::uint8_t { automatic, simt, tensor_cores };

/// Limits of one reconstruct() call (its descriptors travel as kernel parameters).
inline constexpr std::size_t kReconMaxStreams = 32;
inline constexpr std::size_t kReconMaxTargets = 16;
inline constexpr std::size_t kReconMaxRefs = 8;
inline constexpr std::size_t kReconMaxHeadDim = 256;
/// Below this many tokens `Math::automatic` uses the f32 FMA path.
inline constexpr std::size_t kReconTensorCoreMinTokens = 64;

/// Arguments of reconstruct(). The descriptor arrays (`streams`, `targets`,
/// each target's `refs`) are host memory, read during the call; everything
/// they point to (cache bases, block tables, weights, biases, outputs) is
/// device memory.
struct ReconstructArgs {
  std::size_t head_dim = 0;
  std::size_t token0 = 0, n_tokens = 0;
  const HeadStream* streams = nullptr;   ///< reference heads (f32, f16 or bf16 each)
  std::size_t n_streams = 0;
  const ReconTarget* targets = nullptr;  ///< weight [k·d, d] and bias [d] f32 on the device; refs on the host
  std::size_t n_targets = 0;
  Math math = Math::automatic;
};

/// Device workspace reconstruct() needs, in bytes: none (kept for symmetry
/// with the other kernels; it will stay 0 for this signature).
inline std::size_t reconstruct_workspace_bytes(const ReconstructArgs&) { return 0; }

namespace detail {

struct ReconTargetDesc {
  const float* weight;
  const float* bias;
  HeadStream out;
  int n_refs;
  std::uint8_t refs[kReconMaxRefs];
};

struct ReconParams {
  int d, n_targets, n_streams;
  long long token0, n_tokens;
  HeadStream streams[kReconMaxStreams];
  ReconTargetDesc targets[kReconMaxTargets];
};
static_assert(sizeof(ReconParams) <= 4000, "kernel parameters must fit in 4 KB");

constexpr int kReconSimtTokens = 8;    // tokens per block, f32 path
constexpr int kReconSimtThreads = 128;
constexpr int kReconTcTokens = 64;     // tokens per block, tensor-core path (4 WMMA row tiles)
constexpr int kReconTcChunk = 32;      // reference components per shared-memory chunk
constexpr int kReconTcThreads = 256;   // 8 warps: warp w owns row tile w % 4, column tiles w / 4 + 2k

// f32 path: block (token tile of TT, target); thread j owns output component
// j of the tile's tokens; the tile's reference rows are staged in shared
// memory as f32. (A template, like every kernel here, so that the header can
// be included by several translation units.)
template <int TT>
__global__ void __launch_bounds__(kReconSimtThreads)
    reconstruct_simt_kernel(const __grid_constant__ ReconParams p) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  float* xs = reinterpret_cast<float*>(smem_raw);  // [n_refs][kReconSimtTokens][d]
  const ReconTargetDesc& tg = p.targets[blockIdx.y];
  const int d = p.d, k = tg.n_refs;
  const long long t0 = (long long)blockIdx.x * TT;
  const int nt = int(p.n_tokens - t0 < TT ? p.n_tokens - t0 : TT);
  for (int i = threadIdx.x; i < k * TT * d; i += blockDim.x) {
    const int r = i / (TT * d), t = (i / d) % TT, c = i % d;
    float x = 0.f;
    if (t < nt) {
      const HeadStream& s = p.streams[tg.refs[r]];
      x = load_as_f32(s.dtype, s.base, s.token_offset(std::size_t(p.token0 + t0 + t)) + c);
    }
    xs[i] = x;
  }
  __syncthreads();
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    float acc[TT];
#pragma unroll
    for (int t = 0; t < TT; ++t) acc[t] = 0.f;
    for (int r = 0; r < k; ++r) {
      const float* w = tg.weight + std::size_t(r) * d * d + j;
      const float* x = xs + r * TT * d;
      for (int i = 0; i < d; ++i) {
        const float wv = w[std::size_t(i) * d];
#pragma unroll
        for (int t = 0; t < TT; ++t) acc[t] = fmaf(x[t * d + i], wv, acc[t]);
      }
    }
    const float b = tg.bias[j];
    for (int t = 0; t < nt; ++t)
      store_from_f32(tg.out.dtype, tg.out.base, tg.out.token_offset(std::size_t(p.token0 + t0 + t)) + j, acc[t] + b);
  }
}

// Shared memory of the tensor-core kernel: the staging buffers (X chunk, W hi
// and lo chunks) and, after the last product, the f32 result tile over them.
struct ReconTcSmem {
  int ldx, ldw, ldc;
  std::size_t x, whi, wlo, c, bytes;
};
template <class T>
__host__ __device__ inline ReconTcSmem recon_tc_smem(int d) {
  ReconTcSmem s{};
  s.ldx = tile_ld<T>(kReconTcChunk);
  s.ldw = tile_ld<T>(d);
  s.ldc = tile_ld<float>(d);
  Carve stage;
  s.x = stage.take(std::size_t(kReconTcTokens) * s.ldx * sizeof(T));
  s.whi = stage.take(std::size_t(kReconTcChunk) * s.ldw * sizeof(T));
  s.wlo = stage.take(std::size_t(kReconTcChunk) * s.ldw * sizeof(T));
  Carve result;
  s.c = result.take(std::size_t(kReconTcTokens) * s.ldc * sizeof(float));
  s.bytes = round_up(stage.bytes > result.bytes ? stage.bytes : result.bytes, Carve::kAlign);
  return s;
}

// Tensor-core path: block (64-token tile, target); Y[64 × d] accumulates
// X_r[64 × 32-chunk] · (W_hi + W_lo)[chunk × d] over references and chunks
// in WMMA 16×16×16 fragments that stay in registers.
template <class T>
__global__ void __launch_bounds__(kReconTcThreads)
    reconstruct_tc_kernel(const __grid_constant__ ReconParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // the launcher never selects this path below sm_80
#else
  namespace wmma = nvcuda::wmma;
  using M = typename Elem<T>::mma_t;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int d = p.d;
  const ReconTcSmem L = recon_tc_smem<T>(d);
  T* xs = reinterpret_cast<T*>(smem_raw + L.x);
  M* whi = reinterpret_cast<M*>(smem_raw + L.whi);
  M* wlo = reinterpret_cast<M*>(smem_raw + L.wlo);
  float* cs = reinterpret_cast<float*>(smem_raw + L.c);
  const ReconTargetDesc& tg = p.targets[blockIdx.y];
  const long long t0 = (long long)blockIdx.x * kReconTcTokens;
  const int nt = int(p.n_tokens - t0 < kReconTcTokens ? p.n_tokens - t0 : kReconTcTokens);
  const int warp = int(threadIdx.x) / kWarp;
  const int mt = warp % 4;           // row tile: tokens mt*16 .. mt*16+15
  const int n_cols = d / 32;         // column tiles per warp: (warp / 4) + 2k, k < n_cols
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kReconMaxHeadDim / 32];
#pragma unroll
  for (int k = 0; k < int(kReconMaxHeadDim / 32); ++k) wmma::fill_fragment(acc[k], 0.f);

  for (int r = 0; r < tg.n_refs; ++r) {
    const HeadStream& src = p.streams[tg.refs[r]];
    for (int i0 = 0; i0 < d; i0 += kReconTcChunk) {
      load_stage<T>(xs, L.ldx, kReconTcTokens, &src, 1, nullptr, p.token0 + t0, nt, i0, kReconTcChunk);
      const float* w = tg.weight + (std::size_t(r) * d + i0) * d;  // rows r·d + i0 .. + chunk
      for (int i = threadIdx.x; i < kReconTcChunk * d; i += blockDim.x) {
        const int kk = i / d, n = i % d;
        const float wv = w[std::size_t(kk) * d + n];
        const M hi = Elem<T>::round(wv);
        whi[kk * L.ldw + n] = hi;
        wlo[kk * L.ldw + n] = Elem<T>::round(wv - Elem<T>::widen(hi));
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kReconTcChunk; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, M, wmma::row_major> a;
        wmma::load_matrix_sync(a, reinterpret_cast<const M*>(xs) + mt * 16 * L.ldx + kk, L.ldx);
#pragma unroll
        for (int k = 0; k < int(kReconMaxHeadDim / 32); ++k) {
          if (k < n_cols) {
            const int n0 = (warp / 4 + 2 * k) * 16;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, M, wmma::row_major> b;
            wmma::load_matrix_sync(b, whi + kk * L.ldw + n0, L.ldw);
            wmma::mma_sync(acc[k], a, b, acc[k]);
            wmma::load_matrix_sync(b, wlo + kk * L.ldw + n0, L.ldw);
            wmma::mma_sync(acc[k], a, b, acc[k]);
          }
        }
      }
      __syncthreads();
    }
  }
  // The result tile reuses the staging memory: every warp passed the last barrier.
#pragma unroll
  for (int k = 0; k < int(kReconMaxHeadDim / 32); ++k)
    if (k < n_cols)
      wmma::store_matrix_sync(cs + mt * 16 * L.ldc + (warp / 4 + 2 * k) * 16, acc[k], L.ldc, wmma::mem_row_major);
  __syncthreads();
  for (int i = threadIdx.x; i < nt * d; i += blockDim.x) {
    const int t = i / d, j = i % d;
    store_from_f32(tg.out.dtype, tg.out.base, tg.out.token_offset(std::size_t(p.token0 + t0 + t)) + j,
                   cs[t * L.ldc + j] + tg.bias[j]);
  }
#endif
}

inline bool valid_stream(const HeadStream& s) {
  return s.base != nullptr && (s.dtype == DType::f32 || s.dtype == DType::f16 || s.dtype == DType::bf16) &&
         (s.block_table == nullptr || s.block_size > 0);
}

}  // namespace detail

/// Rebuilds every target's tokens (see ReconstructArgs) on `stream`.
/// Returns invalid_argument for a bad descriptor (null pointer, reference out
/// of range, paged stream without block size), unsupported beyond the limits
/// above or for Math::tensor_cores where it does not apply, cuda_error when a
/// launch fails. Thread-safe for disjoint outputs.
inline Status reconstruct(const ReconstructArgs& a, cudaStream_t stream) {
  using namespace detail;
  if (a.n_tokens == 0 || a.n_targets == 0) return {};
  if (a.head_dim == 0) return invalid("reconstruct: head_dim must be positive");
  if (a.head_dim > kReconMaxHeadDim) return unsupported("reconstruct: head_dim above 256");
  if (!a.streams || !a.targets) return invalid("reconstruct: streams and targets are required");
  if (a.n_streams > kReconMaxStreams) return unsupported("reconstruct: more than 32 reference streams in one call");
  if (a.n_targets > kReconMaxTargets) return unsupported("reconstruct: more than 16 targets in one call");
  if (a.token0 + a.n_tokens > std::size_t(INT64_MAX / 2)) return invalid("reconstruct: token range overflows");
  ReconParams p{};
  p.d = int(a.head_dim);
  p.n_targets = int(a.n_targets);
  p.n_streams = int(a.n_streams);
  p.token0 = (long long)a.token0;
  p.n_tokens = (long long)a.n_tokens;
  bool same_16bit = true;
  std::size_t max_refs = 0;
  for (std::size_t s = 0; s < a.n_streams; ++s) {
    if (!valid_stream(a.streams[s])) return invalid("reconstruct: a reference stream has no base, an unknown dtype or a block table without block size");
    p.streams[s] = a.streams[s];
  }
  for (std::size_t j = 0; j < a.n_targets; ++j) {
    const ReconTarget& t = a.targets[j];
    if (t.n_refs == 0 || !t.refs || !t.weight || !t.bias) return invalid("reconstruct: a target has no references, weight or bias");
    if (!valid_stream(t.out)) return invalid("reconstruct: a target's output stream has no base, an unknown dtype or a block table without block size");
    if (t.n_refs > kReconMaxRefs) return unsupported("reconstruct: more than 8 references per target");
    ReconTargetDesc& o = p.targets[j];
    o.weight = t.weight;
    o.bias = t.bias;
    o.out = t.out;
    o.n_refs = int(t.n_refs);
    for (std::size_t r = 0; r < t.n_refs; ++r) {
      if (t.refs[r] >= a.n_streams) return invalid("reconstruct: a target's reference index is out of range");
      o.refs[r] = std::uint8_t(t.refs[r]);
      const DType dt = a.streams[t.refs[r]].dtype;
      same_16bit = same_16bit && dt != DType::f32 && dt == a.streams[t.refs[0]].dtype;
    }
    max_refs = t.n_refs > max_refs ? t.n_refs : max_refs;
  }
  // All targets must read one 16-bit type for the tensor-core kernel.
  const DType dt0 = a.streams[a.targets[0].refs[0]].dtype;
  for (std::size_t j = 0; j < a.n_targets && same_16bit; ++j)
    same_16bit = a.streams[a.targets[j].refs[0]].dtype == dt0;

  DeviceInfo dev;
  if (Status s = device_info(dev); !s.ok()) return s;
  const bool tc_ok = same_16bit && a.head_dim % 32 == 0 && dev.cc_major >= 8;
  if (a.math == Math::tensor_cores && !tc_ok)
    return unsupported("reconstruct: tensor cores need one 16-bit cache type, head_dim a multiple of 32 and sm_80+");
  const bool use_tc = a.math == Math::tensor_cores || (a.math == Math::automatic && tc_ok && a.n_tokens >= kReconTensorCoreMinTokens);

  if (use_tc) {
    const std::size_t blocks = ceil_div(a.n_tokens, kReconTcTokens);
    if (blocks > 0x7fffffffu) return unsupported("reconstruct: too many tokens for one launch");
    const dim3 grid(unsigned(blocks), unsigned(a.n_targets));
    const std::size_t smem = dt0 == DType::f16 ? recon_tc_smem<f16_t>(p.d).bytes : recon_tc_smem<bf16_t>(p.d).bytes;
    if (smem > std::size_t(dev.max_smem_optin)) return unsupported("reconstruct: head_dim too large for shared memory");
    if (dt0 == DType::f16) {
      if (Status s = allow_smem(reconstruct_tc_kernel<f16_t>, smem); !s.ok()) return s;
      reconstruct_tc_kernel<f16_t><<<grid, kReconTcThreads, smem, stream>>>(p);
    } else {
      if (Status s = allow_smem(reconstruct_tc_kernel<bf16_t>, smem); !s.ok()) return s;
      reconstruct_tc_kernel<bf16_t><<<grid, kReconTcThreads, smem, stream>>>(p);
    }
  } else {
    const std::size_t blocks = ceil_div(a.n_tokens, kReconSimtTokens);
    if (blocks > 0x7fffffffu) return unsupported("reconstruct: too many tokens for one launch");
    const dim3 grid(unsigned(blocks), unsigned(a.n_targets));
    const std::size_t smem = max_refs * kReconSimtTokens * a.head_dim * sizeof(float);
    if (smem > std::size_t(dev.max_smem_optin)) return unsupported("reconstruct: references × head_dim too large for shared memory");
    if (Status s = allow_smem(reconstruct_simt_kernel<kReconSimtTokens>, smem); !s.ok()) return s;
    reconstruct_simt_kernel<kReconSimtTokens><<<grid, kReconSimtThreads, smem, stream>>>(p);
  }
  return check(cudaGetLastError(), "reconstruct: kernel launch");
}

}  // namespace headrecon::cuda
