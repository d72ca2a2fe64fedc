// Per-target attention over a reference-only cache (see cpu/attention.hpp):
// the three kernels the driver (attention_driver.hpp) runs - prepare a row's
// queries, attend one split-K task of rows over a range of positions, finish
// a row from its merged state - and the entry points built on them.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>

#include "headrecon/cpu/attention_args.hpp"
#include "headrecon/cpu/attention_driver.hpp"
#include "headrecon/error.hpp"
#include "headrecon/parallel.hpp"

#if defined(HEADRECON_CPU_ATTENTION_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef HEADRECON_CPU_ATTENTION_INL_H_
#undef HEADRECON_CPU_ATTENTION_INL_H_
#else
#define HEADRECON_CPU_ATTENTION_INL_H_
#endif

#include "headrecon/cpu/convert-inl.h"
#include "hwy/cache_control.h"
#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"

// Software prefetch of one line for reading soon: prefetcht2 (L2 on Intel),
// measured 1.03x faster here than into L1.
#if defined(__GNUC__) || defined(__clang__)
#define HEADRECON_PREFETCH(p) __builtin_prefetch(p, 0, 1)
#else
#define HEADRECON_PREFETCH(p) hwy::Prefetch(p)
#endif
#ifndef HEADRECON_ATTN_UNROLL
#define HEADRECON_ATTN_UNROLL _Pragma("GCC unroll 16")
#endif

HWY_BEFORE_NAMESPACE();
namespace headrecon {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

namespace attn {
// Which rows a pass over a block's K (or V) streams prefetches: the next
// block's rows of each stream, or the current block's a few tokens ahead of
// the FMA tiles' reads (kScoreLead, kValueLead). The current block's where
// the rows are longer than kAheadRowBytes or the pass reads at least
// kAheadPassBytes (streams x tokens x row bytes). Measured (Emerald Rapids,
// 8k tokens, 2 threads, from DRAM, KV pool on 2 MiB pages, interleaved A/B):
// the current block's rows for
//   512-byte rows: Llama-3-8B f32 (8 streams, 128 KiB per pass) 1.1-1.19x
//     faster (stop 28), 3 KV heads of d = 128 (48 KiB) 1.02-1.04x faster;
//   256-byte rows: Llama-3-8B bf16 (64 KiB) 1.08-1.10x faster, 8 KV heads of
//     d = 64 f32 (64 KiB) the same; SmolLM2 f32 (24 KiB) 1.05-1.06x slower,
//     3 KV heads of d = 128 bf16 (24 KiB) 1.03-1.05x slower;
//   shorter rows: 8 KV heads of d = 64 bf16 (128 bytes, 32 KiB) 1.22-1.25x
//     slower, SmolLM2 bf16 (12 KiB) 1.15x slower, Llama-3-8B q8_0 (136 bytes,
//     34 KiB) within noise.
constexpr size_t kAheadRowBytes = 256, kAheadPassBytes = size_t(64) << 10;
// How far ahead of the FMA tiles' reads a long row is prefetched, in tokens of
// the stream being read; near the end of a stream's block the lead runs on
// into the rows the kernel reads next (Ahead::next): the next KV head's block,
// the first V stream after the last K stream, the next block's first K stream
// after the last V stream. Measured (Llama-3-8B f32 full cache, KV pool on
// 2 MiB pages, from DRAM, interleaved A/B): against the earlier leads (scores 6
// tokens, values none, each stream's first rows not prefetched) 8k 2 threads
// 1.05-1.07x faster, 32k one thread 1.06x, the 4 reference heads alone 1.10x.
// Score / value leads of 12 / 6, 12 / 8, 12 / 12, 18 / 6 and 24 / 6 came
// within 3% of each other; 6 / 3 and 6 / 6 1.02-1.04x slower; a lead that
// stops at the end of the stream's block slower than the same lead running on.
// Earlier (stop 28): no prefetch 1.10-1.14x slower, only a row's first lines
// 1.07-1.25x slower.
// The conversion of f32 rows into bf16 parts for the AMX tiles reads rows
// one after another like the score tiles and takes the same lead: Llama-3-8B
// f32 absorbed step, 8k, 2 threads, against 6 tokens stopping at the
// stream's end: 4 references 1.04-1.05x faster, 2 references 1.06x (18
// tokens the same as 12, 8 within 1.02x).
constexpr size_t kScoreLead = 12, kValueLead = 8;

// The rows to prefetch while the kernels read a stream's block, requested a
// few at a time (rows(t0, t1) as the tiles reach token t0). Short rows in a
// short pass (kAheadRowBytes, kAheadPassBytes): the stream's next block, so
// that the next block's memory latency overlaps this block's arithmetic (a
// head's block is a few KiB of a page, too short for the hardware prefetchers
// to run ahead of). Otherwise the current block's rows `lead` tokens on
// (at[t] = row t + lead), and over the block's last `lead` tokens the first
// rows of the stream read next (next[t - next_from]). n = next_n = 0: nothing
// to prefetch.
struct Ahead {
  const void* at[kAttnBlock];
  const void* next[kAttnBlock];
  size_t n = 0, bytes = 0, next_from = 0, next_n = 0;
  // User-provided, so that Ahead() does not zero the address arrays (1 KiB
  // per call of a map product); n = next_n = 0 means they are never read.
  Ahead() {}
  HWY_INLINE void clear() { n = next_n = 0; }
  HWY_INLINE void row(const void* p) const {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    for (uintptr_t line = a & ~uintptr_t(63); line < a + bytes; line += 64)
      HEADRECON_PREFETCH(reinterpret_cast<const void*>(line));
  }
  HWY_INLINE void rows(size_t t0, size_t t1) const {
    for (size_t t = t0; t < t1 && t < n; ++t) row(at[t]);
    if (HWY_UNLIKELY(next_n != 0) && t1 > next_from)
      for (size_t t = t0 > next_from ? t0 : next_from; t < t1 && t - next_from < next_n; ++t) row(next[t - next_from]);
  }
};

// The stream a kernel reads next, from token t0 (nb rows); st null: none.
struct Then {
  const HeadStream* st = nullptr;
  size_t t0 = 0, nb = 0;
};

// One row of d elements of type t at src as f32 (converted, or copied).
HWY_INLINE void WidenRow(const void* HWY_RESTRICT src, DType t, float* HWY_RESTRICT dst, size_t d) {
  switch (t) {
    case DType::f32: std::memcpy(dst, src, d * sizeof(float)); break;
    case DType::f16: RowToF32(static_cast<const f16_t*>(src), dst, d); break;
    case DType::bf16: RowToF32(static_cast<const bf16_t*>(src), dst, d); break;
    case DType::q8_0:
    case DType::q4_0: BlocksToF32(src, t, dst, d); break;
  }
}

// A block's rows. `at` gets their addresses. Returns the type the kernels
// read them as: f16/bf16 without `pack` are read in place from `at`; every
// other case returns f32 with `rows` filled - f32 in place without `pack`,
// else converted (or copied) into scratch. `pack` = several tiles will read
// rows that alias in L1 (RowsAlias). Block types are always converted.
// Converting rows prefetches the next block's (`ahead`).
HWY_INLINE DType BlockRows(const HeadStream& s, size_t t0, size_t nb, size_t d, bool pack, float* HWY_RESTRICT scratch,
                           const float** rows, const void** at, const Ahead& ahead) {
  s.row_addresses(t0, nb, at);
  if (!pack && !is_block_type(s.dtype)) {
    if (s.dtype != DType::f32) return s.dtype;
    for (size_t t = 0; t < nb; ++t) rows[t] = static_cast<const float*>(at[t]);
    return DType::f32;
  }
  for (size_t t = 0; t < nb; ++t) {
    ahead.rows(t, t + 1);
    WidenRow(at[t], s.dtype, scratch + t * d, d);
    rows[t] = scratch + t * d;
  }
  return DType::f32;
}

// Whether nb rows of s (row_bytes each), read in place by several tiles, would
// evict each other from L1: rows a multiple of 4 KiB apart share L1 sets
// (64-byte lines, 64 sets). Counts the most lines any set holds for nb
// consecutive rows of a page; more than 8 (of 12 ways, leaving room for the
// queries and accumulators) and the rows are better copied to contiguous
// scratch. Llama-3-8B's f32 rows (4 KiB apart) alias; SmolLM2's do not.
HWY_INLINE bool RowsAlias(const HeadStream& s, size_t nb, size_t row_bytes) {
  constexpr size_t kLine = 64, kSets = 64, kWays = 8;
  const size_t stride = size_t(s.token_stride < 0 ? -s.token_stride : s.token_stride) /
                        (is_block_type(s.dtype) ? kQuantBlock : 1) *
                        (is_block_type(s.dtype) ? dtype_block_bytes(s.dtype) : dtype_size(s.dtype));
  unsigned count[kSets] = {};
  const size_t lines = (row_bytes + kLine - 1) / kLine + 1;  // +1: a row need not start on a line
  for (size_t t = 0; t < nb; ++t)
    for (size_t i = 0; i < lines && i < kSets; ++i)
      if (++count[(t * stride / kLine + i) % kSets] > kWays) return true;
  return false;
}

// A vector of f32 from L elements at p (f32, or f16 / bf16 widened).
template <class D, class T>
HWY_INLINE hn::Vec<D> LoadF32(D df, const T* HWY_RESTRICT p) {
  if constexpr (std::is_same_v<T, float>) {
    return hn::LoadU(df, p);
  } else if constexpr (std::is_same_v<T, f16_t>) {
    return hn::PromoteTo(df, hn::LoadU(hn::Rebind<hwy::float16_t, D>(), reinterpret_cast<const hwy::float16_t*>(p)));
  } else {
    return hn::PromoteTo(df, hn::LoadU(hn::Rebind<hwy::bfloat16_t, D>(), reinterpret_cast<const hwy::bfloat16_t*>(p)));
  }
}

#if HWY_TARGET != HWY_SCALAR
// Sums of the lanes of each 128-bit block (4 floats) across the blocks of v.
template <class D>
HWY_INLINE hn::Vec<hn::Full128<float>> SumBlocks(D d, hn::Vec<D> v) {
  if constexpr (hn::MaxLanes(D()) <= 4) {
    (void)d;
    return v;
  } else {
    const hn::Half<D> dh;
    return SumBlocks(dh, hn::Add(hn::LowerHalf(dh, v), hn::UpperHalf(dh, v)));
  }
}
#endif

// out[0..4) = the horizontal sums of a0..a3: an interleave tree within 128-bit
// blocks, then the blocks added (one lane at a time on narrow targets).
template <class D>
HWY_INLINE void Sum4(D d, hn::Vec<D> a0, hn::Vec<D> a1, hn::Vec<D> a2, hn::Vec<D> a3, float* HWY_RESTRICT out) {
#if HWY_TARGET == HWY_SCALAR
  (void)d;
  out[0] = hn::GetLane(a0), out[1] = hn::GetLane(a1), out[2] = hn::GetLane(a2), out[3] = hn::GetLane(a3);
#else
  if constexpr (hn::MaxLanes(D()) < 4) {
    out[0] = hn::GetLane(hn::SumOfLanes(d, a0)), out[1] = hn::GetLane(hn::SumOfLanes(d, a1));
    out[2] = hn::GetLane(hn::SumOfLanes(d, a2)), out[3] = hn::GetLane(hn::SumOfLanes(d, a3));
  } else {
    const hn::Repartition<double, D> dd;
    const auto s01 = hn::Add(hn::InterleaveLower(d, a0, a1), hn::InterleaveUpper(d, a0, a1));
    const auto s23 = hn::Add(hn::InterleaveLower(d, a2, a3), hn::InterleaveUpper(d, a2, a3));
    const auto lo = hn::InterleaveLower(dd, hn::BitCast(dd, s01), hn::BitCast(dd, s23));
    const auto hi = hn::InterleaveUpper(dd, hn::BitCast(dd, s01), hn::BitCast(dd, s23));
    hn::StoreU(SumBlocks(d, hn::Add(hn::BitCast(d, lo), hn::BitCast(d, hi))), hn::Full128<float>(), out);
  }
#endif
}

// Tokens per score tile: J·U accumulators, U token vectors and one query
// vector must fit the register file (16 on AVX2, 32 on AVX-512).
constexpr size_t kScoreTokens = HWY_MAX_BYTES >= 64 ? 4 : 3;
// Query vectors per flush of f32 score tiles (split by NextTileJobs).
constexpr size_t kScoreJobs = 6;

// score_j[t] += q_j·rows[t] for t < nb and J query vectors (J·U a multiple
// of 4): register tile of J queries × U tokens over the whole head, each
// token vector loaded once for the J queries, horizontal sums reduced four
// accumulators at once.
template <size_t J, size_t U, class T = float>
HWY_INLINE void ScoresJ(const float* const* HWY_RESTRICT qs, const T* const* rows, size_t t, size_t nb, size_t d,
                        float* const* HWY_RESTRICT scores, const Ahead& ahead) {
  static_assert((J * U) % 4 == 0, "the tile reduces four accumulators at once");
  const hn::ScalableTag<float> df;
  const size_t L = hn::Lanes(df);
  const size_t dv = d - d % L;
  for (; t + U <= nb; t += U) {
    ahead.rows(t, t + U);
    // The first vector of the head initialises the accumulators (zeroing
    // 24 of them first compiled to a `rep stos` of the array per tile).
    hn::Vec<decltype(df)> acc[J * U];
    size_t i = 0;
    if (dv != 0) {
      hn::Vec<decltype(df)> x[U];
      HEADRECON_ATTN_UNROLL
      for (size_t u = 0; u < U; ++u) x[u] = LoadF32(df, rows[t + u]);
      HEADRECON_ATTN_UNROLL
      for (size_t j = 0; j < J; ++j) {
        const auto qv = hn::LoadU(df, qs[j]);
        HEADRECON_ATTN_UNROLL
        for (size_t u = 0; u < U; ++u) acc[j * U + u] = hn::Mul(qv, x[u]);
      }
      i = L;
    } else {
      HEADRECON_ATTN_UNROLL
      for (size_t k = 0; k < J * U; ++k) acc[k] = hn::Zero(df);
    }
    for (; i < dv; i += L) {
      hn::Vec<decltype(df)> x[U];
      HEADRECON_ATTN_UNROLL
      for (size_t u = 0; u < U; ++u) x[u] = LoadF32(df, rows[t + u] + i);
      HEADRECON_ATTN_UNROLL
      for (size_t j = 0; j < J; ++j) {
        const auto qv = hn::LoadU(df, qs[j] + i);
        HEADRECON_ATTN_UNROLL
        for (size_t u = 0; u < U; ++u) acc[j * U + u] = hn::MulAdd(qv, x[u], acc[j * U + u]);
      }
    }
    HEADRECON_ATTN_UNROLL
    for (size_t k = 0; k < J * U; k += 4) {
      alignas(16) float s4[4];
      Sum4(df, acc[k], acc[k + 1], acc[k + 2], acc[k + 3], s4);
      if (dv < d)  // past the last full vector
        for (size_t m = 0; m < 4; ++m)
          for (size_t i = dv; i < d; ++i) s4[m] += qs[(k + m) / U][i] * to_float(rows[t + (k + m) % U][i]);
#if HWY_TARGET != HWY_SCALAR
      if constexpr (U == 4) {  // one query's four tokens: add them as a vector
        const hn::Full128<float> d4;
        float* HWY_RESTRICT sj = scores[k / 4] + t;
        hn::StoreU(hn::Add(hn::LoadU(d4, sj), hn::Load(d4, s4)), d4, sj);
        continue;
      }
#endif
      HEADRECON_ATTN_UNROLL
      for (size_t m = 0; m < 4; ++m) scores[(k + m) / U][t + (k + m) % U] += s4[m];
    }
  }
  constexpr size_t step = 4 / std::gcd(J, size_t(4));  // the next narrower tile that still reduces by four
  if constexpr (U > step) {
    if (t < nb) ScoresJ<J, U - step, T>(qs, rows, t, nb, d, scores, ahead);
    return;
  }
  for (; t < nb; ++t) {
    ahead.rows(t, t + 1);
    for (size_t j = 0; j < J; ++j) {
      auto a = hn::Zero(df);
      for (size_t i = 0; i < dv; i += L) a = hn::MulAdd(hn::LoadU(df, qs[j] + i), LoadF32(df, rows[t] + i), a);
      float s = hn::GetLane(hn::SumOfLanes(df, a));
      for (size_t i = dv; i < d; ++i) s += qs[j][i] * to_float(rows[t][i]);
      scores[j][t] += s;
    }
  }
}

// The 32 values of a q8_0 or q4_0 block at p as int16 vectors k[0..32/N)
// (N int16 lanes each, values in order); returns the block's scale.
template <class D16>
HWY_INLINE float LoadBlockI16(D16 d16, const unsigned char* p, DType t, hn::Vec<D16>* k) {
  constexpr size_t N = hn::MaxLanes(D16()), n = kQuantBlock / N;
  static_assert(N <= kQuantBlock, "int16 vectors wider than a block");
  if (t == DType::q8_0) {
    const auto* qs = reinterpret_cast<const int8_t*>(p + kBlockQsOffset);  // byte-addressed: blocks need no alignment
    const hn::Rebind<int8_t, D16> d8;
    for (size_t m = 0; m < n; ++m) k[m] = hn::PromoteTo(d16, hn::LoadU(d8, qs + m * N));
    return block_scale(p);
  }
  const unsigned char* qs = p + kBlockQsOffset;  // byte j: value j (low nibble), value j + 16 (high)
#if HWY_TARGET != HWY_SCALAR
  if constexpr (N == kQuantBlock) {
    const hn::Half<D16> dh;
    const hn::Rebind<uint8_t, decltype(dh)> d8;
    const auto x = hn::BitCast(dh, hn::PromoteTo(hn::RebindToUnsigned<decltype(dh)>(), hn::LoadU(d8, qs)));
    k[0] = hn::Sub(hn::Combine(d16, hn::ShiftRight<4>(x), hn::And(x, hn::Set(dh, 15))), hn::Set(d16, 8));
  } else
#endif
  {
    const hn::Rebind<uint8_t, D16> d8;
    for (size_t m = 0; m < n / 2; ++m) {
      const auto x = hn::BitCast(d16, hn::PromoteTo(hn::RebindToUnsigned<D16>(), hn::LoadU(d8, qs + m * N)));
      k[m] = hn::Sub(hn::And(x, hn::Set(d16, 15)), hn::Set(d16, 8));
      k[n / 2 + m] = hn::Sub(hn::ShiftRight<4>(x), hn::Set(d16, 8));
    }
  }
  return block_scale(p);
}

// score_j[t] += q_j·k_t over a q8_0 / q4_0 stream, in integers: each block's
// int8 keys times the query's int8 values (widening 16-bit multiply-add into
// 32 bits), scaled by both blocks' scales in f32. Tile of J queries × 4 tokens.
template <size_t J>
HWY_INLINE void ScoresQuantJ(const int16_t* const* HWY_RESTRICT qi, const float* const* HWY_RESTRICT qsc, DType dt,
                             const void* const* at, size_t nb, size_t d, float* const* HWY_RESTRICT scores,
                             const Ahead& ahead) {
  const hn::ScalableTag<float> df;
  const hn::RebindToSigned<decltype(df)> di;
#if HWY_TARGET == HWY_SCALAR
  const hn::Rebind<int16_t, decltype(df)> d16;  // one lane
#else
  const hn::Repartition<int16_t, decltype(df)> d16;  // twice the f32 lanes
#endif
  using V16 = hn::Vec<decltype(d16)>;
  constexpr size_t N = hn::MaxLanes(d16), n = kQuantBlock / N;
  const size_t nblk = d / kQuantBlock, bb = dtype_block_bytes(dt);
  auto dot = [&](const V16* k, const V16* q) {
    auto s0 = hn::Zero(di), s1 = hn::Zero(di);
    HEADRECON_ATTN_UNROLL
    for (size_t m = 0; m < n; ++m) s0 = hn::ReorderWidenMulAccumulate(di, k[m], q[m], s0, s1);
    return hn::ConvertTo(df, hn::RearrangeToOddPlusEven(s0, s1));
  };
  size_t t = 0;
  for (; t + 4 <= nb; t += 4) {
    ahead.rows(t, t + 4);
    hn::Vec<decltype(df)> acc[J][4];
    HEADRECON_ATTN_UNROLL
    for (size_t j = 0; j < J; ++j) {
      HEADRECON_ATTN_UNROLL
      for (size_t u = 0; u < 4; ++u) acc[j][u] = hn::Zero(df);
    }
    const unsigned char* row[4];
    for (size_t u = 0; u < 4; ++u) row[u] = static_cast<const unsigned char*>(at[t + u]);
    for (size_t b = 0; b < nblk; ++b) {
      V16 k[4][n];
      float dk[4];
      HEADRECON_ATTN_UNROLL
      for (size_t u = 0; u < 4; ++u) dk[u] = LoadBlockI16(d16, row[u] + b * bb, dt, k[u]);
      HEADRECON_ATTN_UNROLL
      for (size_t j = 0; j < J; ++j) {
        V16 q[n];
        HEADRECON_ATTN_UNROLL
        for (size_t m = 0; m < n; ++m) q[m] = hn::LoadU(d16, qi[j] + b * kQuantBlock + m * N);
        HEADRECON_ATTN_UNROLL
        for (size_t u = 0; u < 4; ++u) acc[j][u] = hn::MulAdd(dot(k[u], q), hn::Set(df, dk[u] * qsc[j][b]), acc[j][u]);
      }
    }
    for (size_t j = 0; j < J; ++j) {
      alignas(16) float s4[4];
      Sum4(df, acc[j][0], acc[j][1], acc[j][2], acc[j][3], s4);
      for (size_t u = 0; u < 4; ++u) scores[j][t + u] += s4[u];
    }
  }
  for (; t < nb; ++t) {
    ahead.rows(t, t + 1);
    const unsigned char* row = static_cast<const unsigned char*>(at[t]);
    for (size_t j = 0; j < J; ++j) {
      auto a = hn::Zero(df);
      for (size_t b = 0; b < nblk; ++b) {
        V16 k[n], q[n];
        const float dk = LoadBlockI16(d16, row + b * bb, dt, k);
        for (size_t m = 0; m < n; ++m) q[m] = hn::LoadU(d16, qi[j] + b * kQuantBlock + m * N);
        a = hn::MulAdd(dot(k, q), hn::Set(df, dk * qsc[j][b]), a);
      }
      scores[j][t] += hn::GetLane(hn::SumOfLanes(df, a));
    }
  }
}

template <size_t J>
HWY_INLINE void ScoresQuantUpTo(size_t nj, const int16_t* const* qi, const float* const* qsc, DType dt,
                                const void* const* at, size_t nb, size_t d, float* const* ss, const Ahead& ahead) {
  if constexpr (J > 0) {
    if (nj == J) return ScoresQuantJ<J>(qi, qsc, dt, at, nb, d, ss, ahead);
    return ScoresQuantUpTo<J - 1>(nj, qi, qsc, dt, at, nb, d, ss, ahead);
  }
}

// Quantizes a query vector per block of 32 as q8_0 does (scale amax/127,
// round half away from zero), into int16 values and f32 scales.
HWY_INLINE void QuantizeQuery(const float* HWY_RESTRICT q, size_t d, int16_t* HWY_RESTRICT qi,
                              float* HWY_RESTRICT qs) {
  // Written without library calls (trunc and a compare instead of std::round,
  // a compare instead of std::fmax, same results) so that the compiler
  // vectorizes it.
  for (size_t b = 0; b < d / kQuantBlock; ++b) {
    const float* x = q + b * kQuantBlock;
    float amax = 0.f;
    for (size_t j = 0; j < kQuantBlock; ++j) {
      const float a = std::fabs(x[j]);
      amax = a > amax ? a : amax;  // NaN ignored, as std::fmax does
    }
    const float s = amax / 127.f, is = s != 0.f ? 1.f / s : 0.f;
    qs[b] = s;
    for (size_t j = 0; j < kQuantBlock; ++j) {
      const float v = x[j] * is, t = std::trunc(v), f = v - t;  // f exact
      qi[b * kQuantBlock + j] = int16_t(t + (f >= 0.5f ? 1.f : f <= -0.5f ? -1.f : 0.f));
    }
  }
}

// score[t] += q·rows[t] for one query vector.
HWY_INLINE void Scores(const float* HWY_RESTRICT q, const float* const* rows, size_t nb, size_t d,
                       float* HWY_RESTRICT score) {
  const float* qs[1] = {q};
  float* ss[1] = {score};
  ScoresJ<1, 4>(qs, rows, 0, nb, d, ss, Ahead());
}

// Most jobs in one f32 register tile: 6 on AVX-512 (6 × 4 scores or 6 jobs ×
// 4 value columns: 24 accumulators, 4 row vectors and a query or weight in 32
// registers), 4 on AVX2.
constexpr size_t kMaxTileJobs = HWY_MAX_BYTES >= 64 ? 6 : 4;
// Jobs in the next f32 register tile of a flush with n jobs left. AVX-512: n
// up to 6 in one tile (a SmolLM2 reference stream's 3 query heads and 3
// absorbed, each row read once), else 4 at a time. AVX2: 3 (a 3 × 4 tile: 12
// accumulators whose sums are added four tokens at a time) except 4 jobs,
// which fit one 4 × 3 tile; 6 jobs are two 3 × 4 tiles.
constexpr size_t NextTileJobs(size_t n) {
  if (HWY_MAX_BYTES >= 64) return n <= kMaxTileJobs ? n : 4;
  return n == 4 ? 4 : (n < 3 ? n : 3);
}
// A block-type (q8_0 / q4_0) stream with at most this many jobs is scored in
// integers in place; with more, its block is dequantized once and scored in f32.
constexpr size_t kIntScoreMaxJobs = 4;

// A bf16 stream with more jobs than this is scored and summed on AMX tiles
// where the CPU has them (amx_tiles.hpp). Measured (Emerald Rapids, 8k
// tokens, 2 threads): Llama-3-8B's absorbed step, 12 or 20 jobs per
// reference stream, 1.3-1.8x faster than the FMA tiles; SmolLM2's absorbed
// step (6 jobs per reference stream, d = 64) 1.03-1.06x faster since the
// 64-token tile calls; the full caches' 3 (SmolLM2: 1.35x slower on tiles)
// and 4 jobs (Llama: 1.03x faster full, 1.05x slower reference heads alone)
// stay on the FMA tiles.
constexpr size_t kAmxMinJobs = 5;
// The same for rows of d <= 64 (128 bytes) on the AVX-512 targets. Measured
// again in stop 29 (8k tokens, 2 threads, KV pool on 2 MiB pages, interleaved):
// SmolLM2's absorbed step, 6 jobs per reference stream, 1.10x faster on the
// FMA tiles than on AMX (1 reference: 324-332 -> 296-299 us; 2 references:
// 366-370 -> 333-335 us), while 6 jobs of d = 128 rows (a GQA-6 full cache)
// are 1.16-1.18x faster on AMX. On AVX2 the 6-job SmolLM2 streams were mixed
// (0.96-1.11x) and stay on AMX.
constexpr size_t kAmxMinJobsShortRows = HWY_MAX_BYTES >= 64 ? 6 : kAmxMinJobs;
// Jobs a bf16 stream of heads of d needs (more than this) to take the tiles.
constexpr size_t AmxMinJobs(size_t d) { return d <= 64 ? kAmxMinJobsShortRows : kAmxMinJobs; }
// Other streams with more jobs than these take the tiles split into bf16
// parts (amx::split_row: a conversion pass, and twice the tile work of bf16
// rows): f32 rows, and rows widened to f32 first (f16, q8_0, q4_0).
// Measured (8k tokens, 2 threads, against the FMA tiles): f32 with 20 jobs
// (Llama-3-8B absorbed, 4 references) 1.18x faster, 12 jobs (2 references)
// 1.08x, 8 (a GQA-8 full cache) 1.14x slower, 6 (SmolLM2) 1.17x slower;
// q8_0 / q4_0 / f16 with 20 jobs 1.10x / 1.08x / 1.01x faster, 12 jobs
// 0.95x / - / 0.86x.
constexpr size_t kAmxSplitMinJobs = 8;
constexpr size_t kAmxWidenedMinJobs = 12;

// Jobs per quantized score tile: 4 with 32 vector registers (AVX-512), else 2.
constexpr size_t kTileJobs = HWY_MAX_BYTES >= 64 ? 4 : 2;
// Jobs per flush of value tiles (split by NextTileJobs; the columns of a tile
// are chosen to fit the registers).
constexpr size_t kValueJobs = 6;

// acc_j[i0 .. i0 + C·L) += Σ_t p_j[t]·rows[t][…] for J jobs on the same rows:
// each row vector is loaded once for the J jobs (loads, not FMAs, bound the
// untiled loop), J·C independent accumulator chains.
template <size_t J, size_t C, class T>
HWY_INLINE void AccumulateTile(const float* const* HWY_RESTRICT ps, const T* const* rows, size_t nb, size_t i0,
                               float* const* HWY_RESTRICT accs, const Ahead& ahead) {
  const hn::ScalableTag<float> df;
  const size_t L = hn::Lanes(df);
  hn::Vec<decltype(df)> a[J][C];
  HEADRECON_ATTN_UNROLL
  for (size_t j = 0; j < J; ++j) {
    HEADRECON_ATTN_UNROLL
    for (size_t c = 0; c < C; ++c) a[j][c] = hn::LoadU(df, accs[j] + i0 + c * L);
  }
  for (size_t t = 0; t < nb; ++t) {
    ahead.rows(t, t + 1);
    hn::Vec<decltype(df)> x[C];
    HEADRECON_ATTN_UNROLL
    for (size_t c = 0; c < C; ++c) x[c] = LoadF32(df, rows[t] + i0 + c * L);
    HEADRECON_ATTN_UNROLL
    for (size_t j = 0; j < J; ++j) {
      const auto pv = hn::Set(df, ps[j][t]);
      HEADRECON_ATTN_UNROLL
      for (size_t c = 0; c < C; ++c) a[j][c] = hn::MulAdd(pv, x[c], a[j][c]);
    }
  }
  HEADRECON_ATTN_UNROLL
  for (size_t j = 0; j < J; ++j) {
    HEADRECON_ATTN_UNROLL
    for (size_t c = 0; c < C; ++c) hn::StoreU(a[j][c], df, accs[j] + i0 + c * L);
  }
}

template <size_t J, class T = float>
HWY_INLINE void AccumulateJobs(const float* const* ps, const T* const* rows, size_t nb, size_t d,
                               float* const* accs, const Ahead& ahead) {
  const hn::ScalableTag<float> df;
  const size_t L = hn::Lanes(df);
  // Columns per tile: J·C accumulators + C row vectors + one broadcast fit the registers.
  constexpr size_t C = J <= 2 || HWY_MAX_BYTES >= 64 ? 4 : 3;
  Ahead none;  // n = 0: the pointers are never read
  size_t i = 0;  // the first column tile prefetches
  for (; i + C * L <= d; i += C * L) AccumulateTile<J, C, T>(ps, rows, nb, i, accs, i == 0 ? ahead : none);
  for (; i + 2 * L <= d; i += 2 * L) AccumulateTile<J, 2, T>(ps, rows, nb, i, accs, i == 0 ? ahead : none);
  for (; i + L <= d; i += L) AccumulateTile<J, 1, T>(ps, rows, nb, i, accs, i == 0 ? ahead : none);
  if (i == 0) ahead.rows(0, nb);
  for (; i < d; ++i)
    for (size_t j = 0; j < J; ++j)
      for (size_t t = 0; t < nb; ++t) accs[j][i] += ps[j][t] * to_float(rows[t][i]);
}

// acc += Σ_t p[t]·rows[t] (one job).
HWY_INLINE void Accumulate(const float* HWY_RESTRICT p, const float* const* rows, size_t nb, size_t d,
                           float* HWY_RESTRICT acc) {
  const float* ps[1] = {p};
  float* accs[1] = {acc};
  AccumulateJobs<1>(ps, rows, nb, d, accs, Ahead());
}

template <size_t J, class T>
HWY_INLINE void ScoresUpTo(size_t n, const float* const* qs, const T* const* rows, size_t nb, size_t d,
                           float* const* ss, const Ahead& ahead) {
  if constexpr (J > 0) {
    if (n == J) return ScoresJ<J, (J * kScoreTokens) % 4 == 0 ? kScoreTokens : 4, T>(qs, rows, 0, nb, d, ss, ahead);
    return ScoresUpTo<J - 1, T>(n, qs, rows, nb, d, ss, ahead);
  }
}

// Runs tile(j, m, ahead) over n jobs in register tiles of m = NextTileJobs
// jobs; the first tile prefetches the next block, the others get `none`.
template <class Tile>
HWY_INLINE void ForEachTile(size_t n, const Ahead& ahead, const Tile& tile) {
  Ahead none;  // n = 0: the pointers are never read
  for (size_t j = 0; j < n;) {
    const size_t m = NextTileJobs(n - j);
    tile(j, m, j == 0 ? ahead : none);
    j += m;
  }
}

template <size_t J, class T>
HWY_INLINE void AccumulateUpTo(size_t n, const float* const* ps, const T* const* rows, size_t nb, size_t d,
                               float* const* accs, const Ahead& ahead) {
  if constexpr (J > 0) {
    if (n == J) return AccumulateJobs<J, T>(ps, rows, nb, d, accs, ahead);
    return AccumulateUpTo<J - 1, T>(n, ps, rows, nb, d, accs, ahead);
  }
}

// x[0..n) = f (std::fill stays a scalar loop at -O2: 4% of SmolLM2's
// absorbed step).
HWY_INLINE void Fill(float* HWY_RESTRICT x, size_t n, float f) {
  const hn::ScalableTag<float> df;
  const size_t L = hn::Lanes(df);
  size_t i = 0;
  for (; i + L <= n; i += L) hn::StoreU(hn::Set(df, f), df, x + i);
  for (; i < n; ++i) x[i] = f;
}

HWY_INLINE void Scale(float* HWY_RESTRICT x, size_t n, float f) {
  const hn::ScalableTag<float> df;
  const size_t L = hn::Lanes(df);
  size_t i = 0;
  for (; i + L <= n; i += L) hn::StoreU(hn::Mul(hn::LoadU(df, x + i), hn::Set(df, f)), df, x + i);
  for (; i < n; ++i) x[i] *= f;
}

// Online softmax over one block: scores become probabilities relative to the
// new running max; returns the factor that rescales earlier accumulators.
HWY_INLINE float Softmax(float* HWY_RESTRICT s, size_t nb, float& m, float& l, float* block_sum) {
  const hn::ScalableTag<float> df;
  const size_t L = hn::Lanes(df);
  float mx = -std::numeric_limits<float>::infinity();
  size_t t0 = 0;
  if (nb >= L) {
    auto mv = hn::LoadU(df, s);
    for (t0 = L; t0 + L <= nb; t0 += L) mv = hn::Max(mv, hn::LoadU(df, s + t0));
    mx = hn::GetLane(hn::MaxOfLanes(df, mv));
  }
  for (; t0 < nb; ++t0) mx = s[t0] > mx ? s[t0] : mx;
  const float m_new = mx > m ? mx : m;
  const float factor = m == -std::numeric_limits<float>::infinity() ? 0.f : std::exp(m - m_new);
  float sum = 0.f;
  size_t t = 0;
  const auto mv = hn::Set(df, m_new);
  auto acc = hn::Zero(df);
  for (; t + L <= nb; t += L) {
    const auto e = hn::Exp(df, hn::Sub(hn::LoadU(df, s + t), mv));
    hn::StoreU(e, df, s + t);
    acc = hn::Add(acc, e);
  }
  sum = hn::GetLane(hn::SumOfLanes(df, acc));
  for (; t < nb; ++t) {
    s[t] = std::exp(s[t] - m_new);
    sum += s[t];
  }
  m = m_new;
  l = l * factor + sum;
  *block_sum = sum;
  return factor;
}

// Runs tile(rows, nb, i0) over the rows of a row-major map W [d, d] in
// blocks of kMapRows, the rows i0 .. i0 + nb as a block's tokens (an FMA
// block's length).
template <class Tile>
HWY_INLINE void ForEachMapBlock(const float* HWY_RESTRICT w, size_t d, const Tile& tile) {
  constexpr size_t kMapRows = kAttnBlock / 2;
  const float* rows[kMapRows];
  for (size_t i0 = 0; i0 < d; i0 += kMapRows) {
    const size_t nb = d - i0 < kMapRows ? d - i0 : kMapRows;
    for (size_t t = 0; t < nb; ++t) rows[t] = w + (i0 + t) * d;
    tile(rows, nb, i0);
  }
}

// ys_j[i] += Σ_k W[i][k]·xs_j[k] for n <= 4 vectors: W's rows are the tokens
// of a score tile, so one read of W serves all n.
HWY_INLINE void MapQueries(const float* HWY_RESTRICT w, size_t d, size_t n, const float* const* xs,
                           float* const* ys) {
  ForEachMapBlock(w, d, [&](const float* const* rows, size_t nb, size_t i0) {
    ForEachTile(n, Ahead(), [&](size_t j, size_t m, const Ahead& a) {
      float* ss[4];
      for (size_t k = 0; k < m; ++k) ss[k] = ys[j + k] + i0;
      ScoresUpTo<4>(m, xs + j, rows, nb, d, ss, a);
    });
  });
}

// ys_j[:] += Σ_i xs_j[i]·W[i][:] for n <= 4 vectors: W's rows are the value
// rows of an accumulation tile.
HWY_INLINE void MapAdds(const float* HWY_RESTRICT w, size_t d, size_t n, const float* const* xs, float* const* ys) {
  ForEachMapBlock(w, d, [&](const float* const* rows, size_t nb, size_t i0) {
    ForEachTile(n, Ahead(), [&](size_t j, size_t m, const Ahead& a) {
      const float* ps[4];
      for (size_t k = 0; k < m; ++k) ps[k] = xs[j + k] + i0;
      AccumulateUpTo<4>(m, ps, rows, nb, d, ys + j, a);
    });
  });
}
}  // namespace attn

/// Prepares one row's queries (attention_query_floats): the scaled raw query
/// of every head, the absorbed ones scale·W_r q, and scale·q·b_K per head;
/// `quantize`: also each vector quantized per block of 32 (block-type keys).
/// Part `part` of `parts` (so that one row's maps run on several workers):
/// the KV heads AttentionLayerPlan::part_of gives this part, with their
/// query heads. The query heads of a KV head share its maps: up to four
/// are mapped per read of a map.
inline HWY_NOINLINE void PrepareQueries(const AttentionLayerPlan& p, float scale, const float* HWY_RESTRICT q,
                                        float* HWY_RESTRICT out, bool quantize, size_t part = 0, size_t parts = 1) {
  const size_t d = p.head_dim, H = p.n_q_heads, G = H / p.n_kv_heads;
  float* qv = out;
  float* qb = out + p.n_qvecs * d;
  auto mine = [&](size_t h) { return AttentionLayerPlan::part_of(p.k, p.kv_head(h), parts) == part; };
  for (size_t h = 0; h < H; ++h) {
    if (!mine(h)) continue;
    const float* qh = q + h * d;
    for (size_t i = 0; i < d; ++i) qv[h * d + i] = scale * qh[i];
    const auto& ks = p.k[p.kv_head(h)];
    float s = 0.f;
    if (ks.rebuilt)
      for (size_t i = 0; i < d; ++i) s += qh[i] * ks.bias[i];
    qb[h] = scale * s;
  }
  // The absorbed vectors of a KV head's query heads h0 + k for reference r
  // are i + k·refs, i that of h0 (add_jobs numbers them head by head).
  for (size_t i = 0; i < p.absorbed.size(); ++i) {
    const auto& a = p.absorbed[i];
    const size_t g = p.kv_head(a.head);
    if (a.head != g * G || !mine(a.head)) continue;
    const size_t refs = p.k[g].streams.size();
    for (size_t k0 = 0; k0 < G; k0 += 4) {
      const size_t m = G - k0 < 4 ? G - k0 : 4;
      const float* xs[4];
      float* ys[4];
      for (size_t k = 0; k < m; ++k) {
        xs[k] = q + (a.head + k0 + k) * d;
        ys[k] = qv + (H + i + (k0 + k) * refs) * d;
        std::fill(ys[k], ys[k] + d, 0.f);
      }
      attn::MapQueries(p.k[g].weight + a.ref * d * d, d, m, xs, ys);
      for (size_t k = 0; k < m; ++k) attn::Scale(ys[k], d, scale);
    }
  }
  auto mine_vec = [&](size_t v) { return mine(v < H ? v : p.absorbed[v - H].head); };
  if (p.rotated)  // q·k = (Hq)·(Hk): the cache holds Hk
    for (size_t v = 0; v < p.n_qvecs; ++v)
      if (mine_vec(v)) hadamard_rotate(qv + v * d, d);
  if (quantize && d % kQuantBlock == 0) {  // for block-type key streams: integer dot products
    int16_t* qi = reinterpret_cast<int16_t*>(qb + H);
    float* qs = qb + H + p.n_qvecs * d / 2;
    for (size_t v = 0; v < p.n_qvecs; ++v)
      if (mine_vec(v)) attn::QuantizeQuery(qv + v * d, d, qi + v * d, qs + v * (d / kQuantBlock));
  }
}

/// One split-K task (AttentionChunkArgs): every row's partial softmax state
/// over positions [pos_begin, pos_end) clipped to the row's length.
inline HWY_NOINLINE void AttendChunk(const AttentionChunkArgs& c) {
  const AttentionLayerPlan& p = *c.plan;
  const AttentionRows& R = *c.rows;
  const SequenceStreams& cache = R.cache;
  const size_t d = p.head_dim, H = p.n_q_heads, G = H / p.n_kv_heads, M = R.n_rows;
  const size_t qf = attention_query_floats(p), sf = attention_state_floats(p), S = cache.n_sink;
  constexpr size_t TJ = attn::kTileJobs, TS = attn::kScoreJobs, TV = attn::kValueJobs;
  constexpr size_t TA = std::max({amx::kJobs, TS, TV});
  static_assert(TS >= TJ, "score arrays hold either tile");
  float* sc = c.scratch;                   // [M][H][B]
  float* conv = sc + M * H * kAttnBlock;  // [B][d]
  // Streams on AMX tiles where the CPU has them (amx_tiles.hpp): the
  // query tiles of a block's flushes (at most kAmxCachedFlushes) stay packed
  // for the task's later blocks (the same flushes while the same rows are
  // live), then one call's work buffers.
  const bool amx_on = amx::fits(d) && amx::usable() && [&] {
    // Only where every block's flushes keep their packed queries (decode;
    // prefill's many rows would repack them every block).
    auto flushes = [&](size_t jobs) {
      return jobs > attn::AmxMinJobs(d) ? (jobs + amx::kJobs - 1) / amx::kJobs : 0;
    };
    size_t body = 0;
    for (const auto& jobs : p.k_jobs) body += flushes(M * jobs.size());
    return body <= kAmxCachedFlushes && p.n_kv_heads * flushes(M * G) <= kAmxCachedFlushes;
  }();
  // Whether a stream read by `jobs` query vectors takes the tiles: bf16
  // rows in place, others split into bf16 parts (amx::split_row) in `conv`.
  enum class Tiles { none, in_place, split };
  auto tiles_for = [&](const HeadStream& st, size_t jobs) {
    if (!amx_on) return Tiles::none;
    if (st.dtype == DType::bf16) return jobs > attn::AmxMinJobs(d) ? Tiles::in_place : Tiles::none;
    const size_t min_jobs = st.dtype == DType::f32 ? attn::kAmxSplitMinJobs : attn::kAmxWidenedMinJobs;
    return amx::split_fits(d) && jobs > min_jobs ? Tiles::split : Tiles::none;
  };
  auto takes_tiles = [&](const HeadStream& st, size_t jobs) { return tiles_for(st, jobs) == Tiles::in_place; };
  // Blocks of kAttnBlock tokens (a block's fixed work and the next block's
  // prefetch over more tokens), except where the FMA tiles read rows longer
  // than attn::kAheadRowBytes and no body key stream takes the AMX tiles:
  // half that, so that the value tiles' rows, which the column tiles read
  // more than once, stay in L1. Measured (8k, 2 threads unless noted,
  // interleaved A/B, 64 against 32 tokens): SmolLM2 full f32 1.04x faster
  // (one thread within noise), absorbed f32 1.02-1.04x, full bf16
  // 1.02-1.03x, absorbed bf16 1.04x; Llama-3-8B full bf16 1.04-1.06x (32k,
  // one thread 1.03-1.06x), absorbed q8_0 1.04-1.05x, full q8_0 and q4_0r
  // within noise; Llama-3-8B full f32 (512-byte rows) 1.03x slower.
  const size_t B = [&] {
    bool long_rows = false;
    for (size_t s = 0; cache.k && s < p.n_k_streams; ++s) {
      if (tiles_for(cache.k[s], M * p.k_jobs[s].size()) != Tiles::none) return kAttnBlock;
      long_rows = long_rows || dtype_row_bytes(cache.k[s].dtype, d) > attn::kAheadRowBytes;
    }
    return long_rows ? kAttnBlock / 2 : kAttnBlock;
  }();
  float* amx_slots =
      reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(conv + kAttnBlock * d + 16) + 63) & ~uintptr_t(63));
  float* amx_work = amx_slots + kAmxCachedFlushes * amx::query_slot_floats(d);
  auto* split = reinterpret_cast<uint32_t*>(conv);  // a block's split rows, [B][d]
  size_t amx_packed = 0, amx_live = 0;  // flushes packed, for this many live rows
  bool amx_sink = false, tiles_on = false;
  auto tiles = [&] {
    if (!tiles_on) amx::configure();
    tiles_on = true;
  };
  for (size_t r = 0; r < M; ++r) {
    float* st = c.state + r * sf;
    for (size_t h = 0; h < H; ++h) st[h] = -std::numeric_limits<float>::infinity();
    for (size_t i = H; i < sf; ++i) st[i] = 0.f;
  }
  auto qv = [&](size_t r) { return c.queries + r * qf; };
  auto qint = [&](size_t r, size_t vec) {  // row r's query vector vec, quantized (block-type streams)
    return reinterpret_cast<const int16_t*>(qv(r) + p.n_qvecs * d + H) + vec * d;
  };
  auto qscale = [&](size_t r, size_t vec) { return qv(r) + p.n_qvecs * d + H + p.n_qvecs * d / 2 + vec * (d / kQuantBlock); };
  auto acc = [&](size_t r) { return c.state + r * sf + 3 * H; };
  const float* rows[kAttnBlock];  // f32 rows (rows_t == f32), else rows read in place from `at`
  const void* at[kAttnBlock];
  DType rows_t = DType::f32;
  // Runs kernel(rows) with the block's rows typed as they are read.
  auto with_rows = [&](size_t nb, auto&& kernel) {
    if (rows_t == DType::f32) return kernel(rows);
    if (rows_t == DType::f16) {
      const f16_t* r[kAttnBlock];
      for (size_t t = 0; t < nb; ++t) r[t] = static_cast<const f16_t*>(at[t]);
      return kernel(r);
    }
    const bf16_t* r[kAttnBlock];
    for (size_t t = 0; t < nb; ++t) r[t] = static_cast<const bf16_t*>(at[t]);
    return kernel(r);
  };

  // Whether several tiles reading a stream's rows in place would alias in L1
  // (attn::RowsAlias), remembered for the last stride and block length.
  size_t alias_key[2] = {0, 0};
  bool alias_val = false;
  auto aliases = [&](const HeadStream& st, size_t nb) {
    const size_t key = size_t(st.token_stride) * 64 + nb;
    if (alias_key[0] != key || alias_key[1] != size_t(st.dtype) + 1) {
      alias_key[0] = key, alias_key[1] = size_t(st.dtype) + 1;
      alias_val = attn::RowsAlias(st, nb, dtype_row_bytes(st.dtype, d));
    }
    return alias_val;
  };
  auto block = [&](bool sink, size_t b0, size_t nb) {
    for (size_t r = 0; r < M; ++r) {
      if (R.row_len[r] <= b0) continue;
      const float* qb = qv(r) + p.n_qvecs * d;
      for (size_t h = 0; h < H; ++h) {
        float* s = sc + (r * H + h) * B;
        attn::Fill(s, nb, sink ? 0.f : qb[h]);
      }
    }
    // Scores, tiled over (row, job) pairs that share a stream: f32 dot
    // products, or integer ones with quantized queries for a q8_0 / q4_0
    // stream that one tile reads (see use_stream).
    const float* qs[TA];
    const int16_t* qi[TA];
    const float* qsc[TA];
    float* ss[TA];
    size_t n = 0;
    const HeadStream* cur = nullptr;
    bool int_scores = false;  // integer dot products on the stream's blocks in place
    Tiles on_tiles = Tiles::none;  // the current stream's rows on AMX tiles: bf16 in place, or split
    size_t flush_no = 0;      // AMX score flushes so far in this block
    // The stream's rows in the next block of this task, prefetched by the
    // first tile (or the conversion) that reads the stream's current rows.
    attn::Ahead ahead;
    // Bytes of the body pass being read (its streams' rows of this block).
    size_t pass_bytes = 0;
    auto pass_of = [&](const HeadStream* streams, const auto& jobs) {
      size_t bytes = 0;
      for (size_t s = 0; s < jobs.size(); ++s)
        if (!jobs[s].empty()) bytes += nb * dtype_row_bytes(streams[s].dtype, d);
      return bytes;
    };
    // Long rows or a long pass (attn::kAheadRowBytes, kAheadPassBytes): the
    // current block's rows, `lead` tokens ahead of the reads, running on into
    // `then`'s rows (the stream read next; none without it). Else the
    // stream's next block.
    auto look_ahead = [&](const HeadStream& st, size_t t0, size_t lead, const attn::Then& then) {
      ahead.clear();
      ahead.bytes = dtype_row_bytes(st.dtype, d);
      if (sink) return;
      if (ahead.bytes > attn::kAheadRowBytes || pass_bytes >= attn::kAheadPassBytes) {
        if (nb > lead) ahead.n = nb - lead, st.row_addresses(t0 + lead, ahead.n, ahead.at);
        if (then.st && then.st->dtype == st.dtype) {
          const size_t m = std::min({lead, nb, then.nb});
          ahead.next_from = nb - m, ahead.next_n = m;
          then.st->row_addresses(then.t0, m, ahead.next);
        }
        return;
      }
      if (b0 + nb >= c.pos_end) return;
      ahead.n = c.pos_end - (b0 + nb) < B ? c.pos_end - (b0 + nb) : B;
      st.row_addresses(t0 + nb, ahead.n, ahead.at);
    };
    // The body stream the kernel reads after K stream s / V stream s: the
    // next K stream of the block, then the first V stream, then (after the
    // last V stream) the first K stream of this task's next block.
    auto first_of = [](const auto& jobs, size_t from) {
      while (from < jobs.size() && jobs[from].empty()) ++from;
      return from;
    };
    auto after_k = [&](size_t s) {
      const size_t k = first_of(p.k_jobs, s + 1), v = first_of(p.v_jobs, 0);
      if (k < p.n_k_streams) return attn::Then{&cache.k[k], b0 - S, nb};
      return v < p.n_v_streams ? attn::Then{&cache.v[v], b0 - S, nb} : attn::Then();
    };
    auto after_v = [&](size_t s) {
      const size_t v = first_of(p.v_jobs, s + 1), k = first_of(p.k_jobs, 0);
      if (v < p.n_v_streams) return attn::Then{&cache.v[v], b0 - S, nb};
      if (k >= p.n_k_streams || b0 + nb >= c.pos_end) return attn::Then();
      return attn::Then{&cache.k[k], b0 + nb - S, c.pos_end - (b0 + nb) < B ? c.pos_end - (b0 + nb) : B};
    };
    auto flush_scores = [&] {
      if (n && on_tiles != Tiles::none) {
        // amx_on holds every block's flushes to kAmxCachedFlushes, so each has its slot.
        auto* qt = reinterpret_cast<uint16_t*>(amx_slots + flush_no * amx::query_slot_floats(d));
        if (flush_no >= amx_packed) {
          if (on_tiles == Tiles::split)
            amx::pack_split_queries(n, qs, d, qt);
          else
            amx::pack_queries(n, qs, d, qt);
          amx_packed = flush_no + 1;
        }
        ++flush_no;
        tiles();
        amx::scores(n, qt, at, nb, on_tiles == Tiles::split ? 2 * d : d, ss, amx_work);
      } else if (n && int_scores)
        attn::ScoresQuantUpTo<TJ>(n, qi, qsc, cur->dtype, at, nb, d, ss, ahead);
      else if (n)
        with_rows(nb, [&](const auto* rs) {
          attn::ForEachTile(n, ahead, [&](size_t j, size_t m, const attn::Ahead& a) {
            attn::ScoresUpTo<attn::kMaxTileJobs>(m, qs + j, rs, nb, d, ss + j, a);
          });
        });
      if (n) ahead.clear();
      n = 0;
    };
    auto add_score_job = [&](size_t r, size_t vec, size_t head) {
      qs[n] = qv(r) + vec * d, ss[n] = sc + (r * H + head) * B;
      if (int_scores) qi[n] = qint(r, vec), qsc[n] = qscale(r, vec);
      if (++n == (int_scores ? TJ : on_tiles != Tiles::none ? amx::kJobs : TS)) flush_scores();
    };
    // A stream's block split into bf16 parts, `at` pointing at the split
    // rows. The conversion reads the rows one after another, and prefetches
    // like the score tiles (attn::kScoreLead, running on into the next
    // stream). Stop 28, Llama-3-8B f32, 4 references, 8k, 2 threads: the
    // current block's rows 6 tokens ahead were 1.06-1.11x faster than the
    // next block's rows (which were 1.10-1.16x faster than no prefetch).
    // Other types are widened a row at a time into L1-resident floats.
    auto split_rows = [&](const HeadStream& st, size_t t0, const attn::Then& then) {
      look_ahead(st, t0, attn::kScoreLead, then);
      st.row_addresses(t0, nb, at);
      float row[amx::kMaxDim / 2];
      for (size_t t = 0; t < nb; ++t) {
        ahead.rows(t, t + 1);
        const float* src = static_cast<const float*>(at[t]);
        if (st.dtype != DType::f32) attn::WidenRow(at[t], st.dtype, row, d), src = row;
        amx::split_row(src, d, split + t * d);
        at[t] = split + t * d;
      }
      ahead.clear();
    };
    // A block-type stream read by one tile is scored in integers in place; by
    // several, its block is dequantized once and scored in f32 (fewer
    // operations per multiply-add, and the queries stay unquantized).
    auto use_stream = [&](const HeadStream& st, size_t t0, size_t jobs, const attn::Then& then = attn::Then()) {
      cur = &st;
      on_tiles = tiles_for(st, jobs);
      int_scores = false;
      if (on_tiles == Tiles::in_place) {  // the tiles prefetch their own rows into L1
        ahead.clear();
        return st.row_addresses(t0, nb, at);
      }
      if (on_tiles == Tiles::split) return split_rows(st, t0, then);
      look_ahead(st, t0, attn::kScoreLead, then);
      int_scores = is_block_type(st.dtype) && jobs <= attn::kIntScoreMaxJobs;
      if (int_scores) {
        st.row_addresses(t0, nb, at);
      } else {
        const bool pack = jobs > attn::kMaxTileJobs && aliases(st, nb);
        rows_t = attn::BlockRows(st, t0, nb, d, pack, conv, rows, at, ahead);
        if (pack || is_block_type(st.dtype)) ahead.clear();  // prefetched while converting
      }
    };
    auto live = [&] {
      size_t m = 0;
      for (size_t r = 0; r < M; ++r) m += R.row_len[r] > b0;
      return m;
    }();
    if (amx_on && (live != amx_live || sink != amx_sink)) amx_packed = 0, amx_live = live, amx_sink = sink;
    if (sink) {
      for (size_t g = 0; g < p.n_kv_heads; ++g) {
        use_stream(cache.sink_k[g], b0, live * G);
        for (size_t r = 0; r < M; ++r)
          if (R.row_len[r] > b0)
            for (size_t h = g * G; h < (g + 1) * G; ++h) add_score_job(r, h, h);
        flush_scores();
      }
    } else {
      pass_bytes = pass_of(cache.k, p.k_jobs);
      for (size_t s = 0; s < p.n_k_streams; ++s) {
        const auto& jobs = p.k_jobs[s];
        if (jobs.empty()) continue;
        use_stream(cache.k[s], b0 - S, live * jobs.size(), after_k(s));
        for (size_t r = 0; r < M; ++r)
          if (R.row_len[r] > b0)
            for (const auto& job : jobs) add_score_job(r, job.vec, job.head);
        flush_scores();
      }
    }
    // Causal mask, online softmax, rescale of every accumulator of a head.
    for (size_t r = 0; r < M; ++r) {
      if (R.row_len[r] <= b0) continue;
      const size_t valid = R.row_len[r] - b0 < nb ? R.row_len[r] - b0 : nb;
      float* st = c.state + r * sf;
      for (size_t h = 0; h < H; ++h) {
        float* s = sc + (r * H + h) * B;
        for (size_t t = valid; t < nb; ++t) s[t] = -std::numeric_limits<float>::max();
        float bs;
        const float f = attn::Softmax(s, nb, st[h], st[H + h], &bs);
        if (f != 1.f) {
          attn::Scale(acc(r) + h * d, d, f);
          for (const auto& ra : p.ref_accs[h]) attn::Scale(acc(r) + ra.acc * d, d, f);
        }
        st[2 * H + h] = sink ? st[2 * H + h] * f : st[2 * H + h] * f + bs;
      }
    }
    // Values, tiled the same way.
    const float* ps[TA];
    float* as[TA];
    // The next block's rows of body V stream s and K stream s where they take
    // the tiles, prefetched toward L2 by the value call on stream s's current
    // rows (spread over its work: measured 1.02-1.04x faster than no
    // prefetch, and than each call prefetching its own stream's next rows).
    const void* nx[2 * kAttnBlock];
    size_t n_nx = 0;
    auto next_rows = [&](size_t s) {
      n_nx = 0;
      if (b0 + nb >= c.pos_end) return;
      const size_t m = c.pos_end - (b0 + nb) < B ? c.pos_end - (b0 + nb) : B, t1 = b0 + nb - S;
      if (s < p.n_k_streams && takes_tiles(cache.k[s], live * p.k_jobs[s].size()))
        cache.k[s].row_addresses(t1, m, nx), n_nx = m;
      cache.v[s].row_addresses(t1, m, nx + n_nx);
      n_nx += m;
    };
    auto flush_values = [&] {
      if (n && on_tiles == Tiles::in_place) {
        tiles();
        amx::values(n, ps, at, nb, d, as, amx_work, n_nx ? nx : nullptr, n_nx);
        n_nx = 0;
      } else if (n && on_tiles == Tiles::split) {
        tiles();
        amx::values_split(n, ps, split, nb, d, as, amx_work);
      } else if (n)
        with_rows(nb, [&](const auto* rs) {
          attn::ForEachTile(n, ahead, [&](size_t j, size_t m, const attn::Ahead& a) {
            attn::AccumulateUpTo<attn::kMaxTileJobs>(m, ps + j, rs, nb, d, as + j, a);
          });
        });
      if (n) ahead.clear();
      n = 0;
    };
    // Rows of a V stream: prefetch its next block, pack when tiles would alias.
    auto value_rows = [&](const HeadStream& st, size_t t0, size_t jobs, const attn::Then& then = attn::Then()) {
      on_tiles = tiles_for(st, jobs);
      if (on_tiles == Tiles::in_place) {
        ahead.clear();
        return st.row_addresses(t0, nb, at);
      }
      if (on_tiles == Tiles::split) return split_rows(st, t0, then);
      look_ahead(st, t0, attn::kValueLead, then);
      const bool pack = jobs > attn::kMaxTileJobs && aliases(st, nb);
      rows_t = attn::BlockRows(st, t0, nb, d, pack, conv, rows, at, ahead);
      if (pack || is_block_type(st.dtype)) ahead.clear();
    };
    if (sink) {
      for (size_t g = 0; g < p.n_kv_heads; ++g) {
        value_rows(cache.sink_v[g], b0, live * G);
        for (size_t r = 0; r < M; ++r) {
          if (R.row_len[r] <= b0) continue;
          for (size_t h = g * G; h < (g + 1) * G; ++h) {
            ps[n] = sc + (r * H + h) * B, as[n] = acc(r) + h * d;
            if (++n == (on_tiles != Tiles::none ? amx::kJobs : TV)) flush_values();
          }
        }
        flush_values();
      }
    } else {
      pass_bytes = pass_of(cache.v, p.v_jobs);
      for (size_t s = 0; s < p.n_v_streams; ++s) {
        const auto& jobs = p.v_jobs[s];
        if (jobs.empty()) continue;
        value_rows(cache.v[s], b0 - S, live * jobs.size(), after_v(s));
        if (on_tiles == Tiles::in_place) next_rows(s);
        for (size_t r = 0; r < M; ++r) {
          if (R.row_len[r] <= b0) continue;
          for (const auto& job : jobs) {
            ps[n] = sc + (r * H + job.head) * B, as[n] = acc(r) + job.vec * d;
            if (++n == (on_tiles != Tiles::none ? amx::kJobs : TV)) flush_values();
          }
        }
        flush_values();
      }
    }
  };

  const size_t sink_end = c.pos_end < S ? c.pos_end : S;
  for (size_t b0 = c.pos_begin; b0 < sink_end; b0 += B) block(true, b0, sink_end - b0 < B ? sink_end - b0 : B);
  // Body blocks start at whole blocks of body tokens, where pages do: the
  // driver's task boundaries sit there (run_attention).
  for (size_t b0 = c.pos_begin > S ? c.pos_begin : S; b0 < c.pos_end; b0 += B)
    block(false, b0, c.pos_end - b0 < B ? c.pos_end - b0 : B);
  if (tiles_on) amx::release();
}

/// A row's output from its merged state: the direct accumulator, plus the
/// mapped reference accumulators and the bias weighted by the body's
/// probability mass, over the softmax sum. Part `part` of `parts`: the KV
/// heads AttentionLayerPlan::part_of(p.v, ...) gives this part, with their
/// query heads and accumulators; up to four query heads per read of a map.
inline HWY_NOINLINE void FinishAttention(const AttentionLayerPlan& p, float* HWY_RESTRICT state,
                                         float* HWY_RESTRICT out, size_t part = 0, size_t parts = 1) {
  const size_t d = p.head_dim, H = p.n_q_heads, G = H / p.n_kv_heads;
  float* acc = state + 3 * H;
  for (size_t g = 0; g < p.n_kv_heads; ++g) {
    if (AttentionLayerPlan::part_of(p.v, g, parts) != part) continue;
    const auto& vs = p.v[g];
    for (size_t h = g * G; h < (g + 1) * G; ++h) {
      if (p.rotated) {  // Σ a_t H v_t = H Σ a_t v_t, and H is its own inverse
        hadamard_rotate(acc + h * d, d);
        for (const auto& ra : p.ref_accs[h]) hadamard_rotate(acc + ra.acc * d, d);
      }
      std::copy(acc + h * d, acc + (h + 1) * d, out + h * d);
    }
    if (vs.rebuilt)
      for (size_t r = 0; r < vs.streams.size(); ++r)
        for (size_t k0 = 0; k0 < G; k0 += 4) {
          const size_t m = G - k0 < 4 ? G - k0 : 4;
          const float* xs[4];
          float* ys[4];
          for (size_t k = 0; k < m; ++k) {
            const size_t h = g * G + k0 + k;
            xs[k] = acc + p.ref_accs[h][r].acc * d;
            ys[k] = out + h * d;
          }
          attn::MapAdds(vs.weight + r * d * d, d, m, xs, ys);
        }
    for (size_t h = g * G; h < (g + 1) * G; ++h) {
      float* o = out + h * d;
      if (vs.rebuilt) {
        const float mass = state[2 * H + h];
        for (size_t i = 0; i < d; ++i) o[i] += mass * vs.bias[i];
      }
      attn::Scale(o, d, 1.f / state[H + h]);
    }
  }
}

struct AttentionKernels {
  static void prepare(const AttentionLayerPlan& p, float scale, const float* q, float* out, bool quantize, size_t part,
                      size_t parts) {
    PrepareQueries(p, scale, q, out, quantize, part, parts);
  }
  static void chunk(const AttentionChunkArgs& c) { AttendChunk(c); }
  static void finish(const AttentionLayerPlan& p, float* state, float* out, size_t part, size_t parts) {
    FinishAttention(p, state, out, part, parts);
  }
};

/// Attention over several sequences, split over tokens, on `pf` (see AttentionRunArgs).
inline HWY_NOINLINE void RunAttention(const AttentionRunArgs& a, const ParallelFor& pf) {
  detail::run_attention<AttentionKernels>(a, pf);
}

/// One decode step on the calling thread (see DecodeAttentionArgs). Throws
/// Error on inconsistent arguments or a short workspace; never allocates.
inline HWY_NOINLINE void DecodeAttention(const DecodeAttentionArgs& a) {
  if (!a.plan || !a.q || !a.out) detail::fail("decode_attention: plan, q and out are required");
  const std::size_t len = a.n_sink + a.n_body;
  if (len == 0) detail::fail("decode_attention: no tokens to attend to");
  AttentionRows rows;
  rows.cache = {a.n_sink, a.sink_k, a.sink_v, a.k_streams, a.v_streams};
  rows.n_rows = 1;
  rows.row_len = &len;
  rows.q = a.q;
  rows.out = a.out;
  AttentionRunArgs r;
  r.plan = a.plan;
  r.scale = a.scale;
  r.groups = &rows;
  r.n_groups = 1;
  r.split_tokens = len;  // one pass
  r.workspace = a.workspace;
  r.workspace_floats = a.workspace_floats;
  detail::run_attention<AttentionKernels>(r, ParallelFor());
}

}  // namespace HWY_NAMESPACE
}  // namespace headrecon
HWY_AFTER_NAMESPACE();

#endif  // HEADRECON_CPU_ATTENTION_INL_H_
