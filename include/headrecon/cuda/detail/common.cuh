#pragma once
// Internals shared by the CUDA kernels (namespace headrecon::cuda::detail):
// element types, conversions, tile loads through HeadStream, warp reductions,
// shared-memory layout arithmetic and device queries.

#if !defined(__CUDACC__)
#error "headrecon/cuda/*.cuh are CUDA headers: compile this file with nvcc (CMake target headrecon::cuda)"
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "headrecon/cuda/detail/host_headers.cuh"
#include "headrecon/cuda/status.cuh"

namespace headrecon::cuda::detail {

constexpr int kWarp = 32;

/// Element types of caches. `mma_t` is the type the tensor cores take for a
/// 16-bit element; values are moved as raw bits and reinterpreted.
template <class T>
struct Elem;
template <>
struct Elem<float> {
  static constexpr bool kTensorCores = false;
  static constexpr DType kDType = DType::f32;
  using mma_t_or_void = float;  // placeholder: no tensor-core path for f32 caches
  __device__ static float to_f32(float v) { return v; }
};
template <>
struct Elem<f16_t> {
  static constexpr bool kTensorCores = true;
  static constexpr DType kDType = DType::f16;
  using mma_t = __half;
  using mma_t_or_void = mma_t;
  __device__ static float to_f32(f16_t v) { return __half2float(__ushort_as_half(v.bits)); }
  __device__ static mma_t round(float x) { return __float2half_rn(x); }
  __device__ static float widen(mma_t v) { return __half2float(v); }
};
template <>
struct Elem<bf16_t> {
  static constexpr bool kTensorCores = true;
  static constexpr DType kDType = DType::bf16;
  using mma_t = __nv_bfloat16;
  using mma_t_or_void = mma_t;
  __device__ static float to_f32(bf16_t v) { return __uint_as_float(std::uint32_t(v.bits) << 16); }
  __device__ static mma_t round(float x) { return __float2bfloat16_rn(x); }
  __device__ static float widen(mma_t v) { return __bfloat162float(v); }
};

/// Element `idx` (in elements of `t`) of a buffer, as float.
__device__ inline float load_as_f32(DType t, const void* base, std::ptrdiff_t idx) {
  switch (t) {
    case DType::f32: return static_cast<const float*>(base)[idx];
    case DType::f16: return Elem<f16_t>::to_f32(static_cast<const f16_t*>(base)[idx]);
    case DType::bf16: return Elem<bf16_t>::to_f32(static_cast<const bf16_t*>(base)[idx]);
    case DType::q8_0:
    case DType::q4_0: break;  // block types are rejected before any kernel launch
  }
  return __int_as_float(0x7fc00000);
}

/// Stores `v` as element `idx` of a buffer of type `t`, rounding to nearest even.
__device__ inline void store_from_f32(DType t, const void* base, std::ptrdiff_t idx, float v) {
  void* p = const_cast<void*>(base);
  switch (t) {
    case DType::f32: static_cast<float*>(p)[idx] = v; break;
    case DType::f16: static_cast<std::uint16_t*>(p)[idx] = __half_as_ushort(__float2half_rn(v)); break;
    case DType::bf16: static_cast<std::uint16_t*>(p)[idx] = __bfloat16_as_ushort(__float2bfloat16_rn(v)); break;
    case DType::q8_0:
    case DType::q4_0: break;  // block types are rejected before any kernel launch
  }
}

__device__ inline float warp_sum(float v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ inline float warp_max(float v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__host__ __device__ constexpr std::size_t round_up(std::size_t x, std::size_t a) { return (x + a - 1) / a * a; }
__host__ __device__ constexpr std::size_t ceil_div(std::size_t x, std::size_t a) { return (x + a - 1) / a; }

/// Shared-memory (or workspace) regions carved one after another, each
/// aligned to `kAlign` bytes (enough for WMMA's 32-byte and vector loads' 16).
struct Carve {
  static constexpr std::size_t kAlign = 128;
  std::size_t bytes = 0;
  __host__ __device__ std::size_t take(std::size_t n) {
    const std::size_t off = round_up(bytes, kAlign);
    bytes = off + n;
    return off;
  }
};

/// Copies components [comp0, comp0 + width) of tokens [u0, u0 + nb) of the
/// streams descs[0 .. n_streams) into a shared stage: tile sl (stream sl)
/// holds `rows` rows of stride `ld` elements (16-byte aligned), rows nb..rows-1
/// and skipped streams zero-filled. Each thread keeps kBatch 16-byte loads in
/// flight before storing them; sources that are not 16-byte aligned are read
/// element by element. Called by all threads of the block.
template <class T>
__device__ inline void load_stage(T* stage, int ld, int rows, const HeadStream* descs, int n_streams,
                                  const bool* skip, long long u0, int nb, int comp0, int width) {
  constexpr int E = 16 / int(sizeof(T));
  constexpr int kBatch = 4;
  const int tid = int(threadIdx.x), nthreads = int(blockDim.x);
  if (width % E == 0) {
    const int ch = width / E;
    const int total = n_streams * rows * ch;
    for (int i0 = tid; i0 < total; i0 += nthreads * kBatch) {
      uint4 v[kBatch];
      T* o[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const int i = i0 + u * nthreads;
        o[u] = nullptr;
        v[u] = make_uint4(0u, 0u, 0u, 0u);
        if (i < total) {
          const int sl = i / (rows * ch), rem = i % (rows * ch), t = rem / ch, c = rem % ch;
          o[u] = stage + (std::ptrdiff_t(sl) * rows + t) * ld + c * E;
          if (t < nb && !(skip && skip[sl])) {
            const T* src = descs[sl].row<T>(std::size_t(u0 + t)) + comp0 + c * E;
            if ((reinterpret_cast<std::uintptr_t>(src) & 15u) == 0) {
              v[u] = __ldg(reinterpret_cast<const uint4*>(src));
            } else {
              T tmp[E];
#pragma unroll
              for (int e = 0; e < E; ++e) tmp[e] = src[e];
              memcpy(&v[u], tmp, 16);
            }
          }
        }
      }
#pragma unroll
      for (int u = 0; u < kBatch; ++u)
        if (o[u]) *reinterpret_cast<uint4*>(o[u]) = v[u];
    }
  } else {
    const int total = n_streams * rows * width;
    for (int i = tid; i < total; i += nthreads) {
      const int sl = i / (rows * width), rem = i % (rows * width), t = rem / width, c = rem % width;
      stage[(std::ptrdiff_t(sl) * rows + t) * ld + c] =
          (t < nb && !(skip && skip[sl])) ? descs[sl].row<T>(std::size_t(u0 + t))[comp0 + c] : T{};
    }
  }
}

/// Elements per 16 bytes, and the padded row stride of a shared tile of d
/// elements of T: rows stay 16-byte aligned and consecutive rows fall on
/// different banks.
template <class T>
__host__ __device__ constexpr int tile_ld(int d) {
  return int(round_up(std::size_t(d), 16 / sizeof(T))) + int(16 / sizeof(T));
}

/// Device properties the launchers need.
struct DeviceInfo {
  int device = 0, sm_count = 0, cc_major = 0, max_smem_optin = 0;
};
inline Status device_info(DeviceInfo& info) {
  Status s = check(cudaGetDevice(&info.device), "cudaGetDevice");
  if (!s.ok()) return s;
  s = check(cudaDeviceGetAttribute(&info.sm_count, cudaDevAttrMultiProcessorCount, info.device),
            "cudaDeviceGetAttribute(MultiProcessorCount)");
  if (!s.ok()) return s;
  s = check(cudaDeviceGetAttribute(&info.cc_major, cudaDevAttrComputeCapabilityMajor, info.device),
            "cudaDeviceGetAttribute(ComputeCapabilityMajor)");
  if (!s.ok()) return s;
  return check(cudaDeviceGetAttribute(&info.max_smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, info.device),
               "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)");
}

/// Allows `kernel` `bytes` of dynamic shared memory (needed above 48 KiB).
template <class Kernel>
inline Status allow_smem(Kernel kernel, std::size_t bytes) {
  if (bytes <= 48 * 1024) return {};
  return check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),
               "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
}

}  // namespace headrecon::cuda::detail
