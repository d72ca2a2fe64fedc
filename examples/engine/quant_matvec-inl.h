// Per-target matrix kernels over GGUF weight storage (see quant_matvec.hpp):
// each 32-element block is dequantized in registers (w = d·q + m, exactly the
// dequantizer's values up to the fused rounding) and multiplied into f32
// activations, so results equal dequantize-then-sgemv up to the summation
// order. With 8-bit activations (QuantMatVecArgs::xq) the x86 kernels take
// integer dot products per block instead.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "headrecon/error.hpp"
#include "quant_matvec_args.hpp"

#if defined(HEADRECON_ENGINE_QUANT_MATVEC_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef HEADRECON_ENGINE_QUANT_MATVEC_INL_H_
#undef HEADRECON_ENGINE_QUANT_MATVEC_INL_H_
#else
#define HEADRECON_ENGINE_QUANT_MATVEC_INL_H_
#endif

#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace headrecon_engine {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

namespace qmv {

// ggml type ids (GgmlType) as template arguments.
constexpr int kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ5_1 = 7, kQ8_0 = 8, kBF16 = 30;

constexpr bool IsBlock(int t) { return t == kQ4_0 || t == kQ4_1 || t == kQ5_0 || t == kQ5_1 || t == kQ8_0; }
constexpr bool HasMin(int t) { return t == kQ4_1 || t == kQ5_1; }

// Blocks per chunk whose scales are converted at once.
constexpr size_t kChunk = 32;

// Scales d[i] (and mins m[i] for Q4_1/Q5_1) of blocks b0 + i, i < n <=
// kChunk, of a row in RowLayout order, as f32: converted a vector at a time
// from the row's scale array, so the block loop broadcasts them from memory
// (one f16 conversion and broadcast per block costs shuffle-port uops that
// the products need).
template <int kType>
HWY_INLINE void BlockScales(const uint8_t* HWY_RESTRICT row, const RowLayout& l, size_t b0, size_t n,
                            float* HWY_RESTRICT d, float* HWY_RESTRICT m) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<hwy::float16_t, decltype(df)> dh;
  const hwy::float16_t* hd = reinterpret_cast<const hwy::float16_t*>(row) + b0;
  const hwy::float16_t* hm = reinterpret_cast<const hwy::float16_t*>(row + l.m) + b0;
  size_t i = 0;
  for (; i + hn::Lanes(df) <= n; i += hn::Lanes(df)) {
    hn::Store(hn::PromoteTo(df, hn::LoadU(dh, hd + i)), df, d + i);
    if constexpr (HasMin(kType)) hn::Store(hn::PromoteTo(df, hn::LoadU(dh, hm + i)), df, m + i);
  }
  for (; i < n; ++i) {
    d[i] = quant::f16_to_f32(row + 2 * (b0 + i));
    if constexpr (HasMin(kType)) m[i] = quant::f16_to_f32(row + l.m + 2 * (b0 + i));
  }
}

// Block b of a row in RowLayout order: its 32 quantized values as int8
// (q - 8 for Q4_0, q - 16 for Q5_0). Q8_0 values are read in place; the
// others are unpacked into tmp.
template <int kType>
HWY_INLINE const int8_t* UnpackValues(const uint8_t* HWY_RESTRICT row, const RowLayout& l, size_t b,
                                      int8_t* HWY_RESTRICT tmp) {
  const uint8_t* qs = row + l.qs + b * l.qs_bytes;
  if constexpr (kType == kQ8_0) {
    return reinterpret_cast<const int8_t*>(qs);
  } else {
    uint32_t qh = 0;
    if constexpr (kType == kQ5_0 || kType == kQ5_1) std::memcpy(&qh, row + l.qh + 4 * b, 4);
    constexpr int kOffset = kType == kQ4_0 ? 8 : kType == kQ5_0 ? 16 : 0;
#if HWY_TARGET == HWY_SCALAR
    for (int j = 0; j < 16; ++j) {
      int lo = qs[j] & 0x0F, hi = qs[j] >> 4;
      if constexpr (kType == kQ5_0 || kType == kQ5_1) {
        lo |= int((qh >> j) & 1u) << 4;
        hi |= int((qh >> (j + 16)) & 1u) << 4;
      }
      tmp[j] = int8_t(lo - kOffset);
      tmp[j + 16] = int8_t(hi - kOffset);
    }
#else
    const hn::Full128<uint8_t> d8;
    const auto v = hn::LoadU(d8, qs);
    auto lo = hn::And(v, hn::Set(d8, uint8_t{0x0F}));
    auto hi = hn::ShiftRight<4>(v);
    if constexpr (kType == kQ5_0 || kType == kQ5_1) {
      const hn::Full128<uint64_t> d64;
      const uint64_t* t = quant::bit_to_0x10();
      lo = hn::Or(lo, hn::BitCast(d8, hn::InterleaveLower(d64, hn::Set(d64, t[qh & 0xFF]),
                                                          hn::Set(d64, t[(qh >> 8) & 0xFF]))));
      hi = hn::Or(hi, hn::BitCast(d8, hn::InterleaveLower(d64, hn::Set(d64, t[(qh >> 16) & 0xFF]),
                                                          hn::Set(d64, t[qh >> 24]))));
    }
    if constexpr (kOffset != 0) {
      lo = hn::Sub(lo, hn::Set(d8, uint8_t{kOffset}));
      hi = hn::Sub(hi, hn::Set(d8, uint8_t{kOffset}));
    }
    uint8_t* out = reinterpret_cast<uint8_t*>(tmp);
    hn::StoreU(lo, d8, out);
    hn::StoreU(hi, d8, out + 16);
#endif
    return tmp;
  }
}

#if HWY_TARGET <= HWY_AVX2
// The 8-bit kernels use 256-bit integer instructions on every x86 target
// (Highway 1.0 has no u8 x i8 multiply-add): vpmaddubsw multiplies 32 unsigned
// by 32 signed bytes into 16 pair sums, vpmaddwd adds the pairs to 8 int32.
constexpr bool UnsignedValues(int t) { return t == kQ4_1 || t == kQ5_1; }

// Block b of a row as 32 bytes in element order: unsigned 0..15 / 0..31 for
// Q4_1 / Q5_1 (the min is a separate term), signed q - 8 / q - 16 / q for
// Q4_0 / Q5_0 / Q8_0.
template <int kType>
HWY_INLINE __m256i BlockBytes(const uint8_t* HWY_RESTRICT row, const RowLayout& l, size_t b) {
  const uint8_t* qs = row + l.qs + b * l.qs_bytes;
  if constexpr (kType == kQ8_0) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs));
  } else if constexpr (kType == kQ4_0 || kType == kQ4_1) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1);
    const __m256i q = _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
    if constexpr (kType == kQ4_0) return _mm256_sub_epi8(q, _mm256_set1_epi8(8));
    return q;
  } else {
    HWY_ALIGN int8_t tmp[32];
    UnpackValues<kType>(row, l, b, tmp);
    return _mm256_load_si256(reinterpret_cast<const __m256i*>(tmp));
  }
}

// Σ_j w_j·x_j of one block as 8 int32 lanes converted to f32. Signed values
// multiply |w| by x with w's sign (|w| <= 128, |x| <= 127: no pair sum
// saturates).
template <int kType>
HWY_INLINE __m256 BlockDot(__m256i w, __m256i x) {
  __m256i pairs;
  if constexpr (UnsignedValues(kType))
    pairs = _mm256_maddubs_epi16(w, x);
  else
    pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

HWY_INLINE float HorizontalSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// BlockTile with 8-bit activations: integer dot products per block, scaled
// by d_w·d_x; the min term of Q4_1 / Q5_1 by m_w·s_x.
template <int kType, size_t NR, size_t NT>
HWY_INLINE void IntBlockTile(const uint8_t* HWY_RESTRICT w, size_t row_bytes, const RowLayout& l,
                             const QuantMatVecArgs& a, size_t t0, float* HWY_RESTRICT out) {
  const size_t nblocks = l.nb;
  const hn::ScalableTag<float> df;
  using VF = hn::Vec<decltype(df)>;
  __m256 acc[NR][NT];
  VF accm[NR][NT];
  float mtail[NR][NT];
  for (size_t r = 0; r < NR; ++r)
    for (size_t t = 0; t < NT; ++t) acc[r][t] = _mm256_setzero_ps(), accm[r][t] = hn::Zero(df), mtail[r][t] = 0.f;
  HWY_ALIGN float ds[NR][kChunk], ms[NR][kChunk], dsx[NR][NT][kChunk];
  for (size_t b0 = 0; b0 < nblocks; b0 += kChunk) {
    const size_t nc = nblocks - b0 < kChunk ? nblocks - b0 : kChunk;
    // Per block: d_w·d_x, and the min terms m_w·s_x summed as vectors.
    for (size_t r = 0; r < NR; ++r) {
      BlockScales<kType>(w + r * row_bytes, l, b0, nc, ds[r], ms[r]);
      for (size_t t = 0; t < NT; ++t) {
        const size_t xi = (t0 + t) * a.ldxb + b0;
        size_t i = 0;
        for (; i + hn::Lanes(df) <= nc; i += hn::Lanes(df)) {
          hn::Store(hn::Mul(hn::Load(df, ds[r] + i), hn::LoadU(df, a.xd + xi + i)), df, dsx[r][t] + i);
          if constexpr (HasMin(kType))
            accm[r][t] = hn::MulAdd(hn::Load(df, ms[r] + i), hn::LoadU(df, a.xs + xi + i), accm[r][t]);
        }
        for (; i < nc; ++i) {
          dsx[r][t][i] = ds[r][i] * a.xd[xi + i];
          if constexpr (HasMin(kType)) mtail[r][t] += ms[r][i] * a.xs[xi + i];
        }
      }
    }
    for (size_t b = b0; b < b0 + nc; ++b) {
      __m256i xv[NT];
#pragma GCC unroll 4
      for (size_t t = 0; t < NT; ++t)
        xv[t] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.xq + (t0 + t) * a.ldxq + b * 32));
      // Unrolled so that the accumulators stay in registers (a rolled loop
      // keeps them on the stack: a store-forwarding chain per block).
#pragma GCC unroll 4
      for (size_t r = 0; r < NR; ++r) {
        const __m256i wv = BlockBytes<kType>(w + r * row_bytes, l, b);
#pragma GCC unroll 4
        for (size_t t = 0; t < NT; ++t)
          acc[r][t] = _mm256_fmadd_ps(BlockDot<kType>(wv, xv[t]), _mm256_broadcast_ss(&dsx[r][t][b - b0]), acc[r][t]);
      }
    }
  }
  for (size_t r = 0; r < NR; ++r)
    for (size_t t = 0; t < NT; ++t)
      out[r * NT + t] = HorizontalSum(acc[r][t]) + hn::GetLane(hn::SumOfLanes(df, accm[r][t])) + mtail[r][t];
}
#endif

// Lanes [c, c + Lanes) of a row of F32 / F16 / BF16 values as f32.
template <int kType, class DF>
HWY_INLINE hn::Vec<DF> LoadRow(DF df, const uint8_t* HWY_RESTRICT row, size_t c) {
  if constexpr (kType == kF32) {
    return hn::LoadU(df, reinterpret_cast<const float*>(row) + c);
  } else if constexpr (kType == kF16) {
    const hn::Rebind<hwy::float16_t, DF> dh;
    return hn::PromoteTo(df, hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(row) + c));
  } else {
    const hn::Rebind<hwy::bfloat16_t, DF> dh;
    return hn::PromoteTo(df, hn::LoadU(dh, reinterpret_cast<const hwy::bfloat16_t*>(row) + c));
  }
}

template <int kType>
HWY_INLINE float ScalarAt(const uint8_t* HWY_RESTRICT row, size_t c) {
  if constexpr (kType == kF32) {
    float v;
    std::memcpy(&v, row + 4 * c, 4);
    return v;
  } else if constexpr (kType == kF16) {
    return quant::f16_to_f32(row + 2 * c);
  } else {
    uint16_t b;
    std::memcpy(&b, row + 2 * c, 2);
    const uint32_t u = uint32_t(b) << 16;
    float v;
    std::memcpy(&v, &u, 4);
    return v;
  }
}

// out[r·NT + t] = W[r]·x[t] for NR rows of blocks (row r at w + r·row_bytes)
// and NT inputs (input t at x + t·ldx). P accumulators per (row, input) keep
// at least four independent FMA chains.
template <int kType, size_t NR, size_t NT>
HWY_INLINE void BlockTile(const uint8_t* HWY_RESTRICT w, size_t row_bytes, const RowLayout& l,
                          const float* HWY_RESTRICT x, size_t ldx, float* HWY_RESTRICT out) {
  const size_t nblocks = l.nb;
  const hn::ScalableTag<float> df;
  const hn::RebindToSigned<decltype(df)> di;
  const hn::Rebind<int8_t, decltype(df)> d8;
  constexpr size_t NF = hn::MaxLanes(df);
  static_assert(32 % NF == 0, "a block holds a whole number of vectors");
  constexpr size_t kV = 32 / NF;
  constexpr size_t P = (NR * NT >= 4 || kV == 1) ? 1 : 2;
  using V = hn::Vec<decltype(df)>;
  V acc[NR][NT][P];
  for (size_t r = 0; r < NR; ++r)
    for (size_t t = 0; t < NT; ++t)
      for (size_t p = 0; p < P; ++p) acc[r][t][p] = hn::Zero(df);
  HWY_ALIGN int8_t tmp[NR][32];
  HWY_ALIGN float ds[NR][kChunk], ms[NR][kChunk];
  for (size_t b0 = 0; b0 < nblocks; b0 += kChunk) {
    const size_t nc = nblocks - b0 < kChunk ? nblocks - b0 : kChunk;
    for (size_t r = 0; r < NR; ++r) BlockScales<kType>(w + r * row_bytes, l, b0, nc, ds[r], ms[r]);
    for (size_t b = b0; b < b0 + nc; ++b) {
      const float* HWY_RESTRICT xb = x + b * 32;
      // Unrolled: accumulators in registers, as in IntBlockTile.
#pragma GCC unroll 4
      for (size_t r = 0; r < NR; ++r) {
        if constexpr (kType == kQ4_0 || kType == kQ4_1) {
          // 4-bit values unpacked in registers: byte k of the block holds
          // value k (low nibble) and value k + 16 (high), so each vector of
          // bytes zero-extended to 32 bits gives two vectors of values (the
          // same products, bit for bit, as through UnpackValues' int8 copy;
          // Q4_1 1536 x 576 from DRAM, 2 threads, AVX3: 12.2-12.6 -> 13.5
          // GB/s, in L2 17.7 -> 19.4).
          const hn::Rebind<uint8_t, decltype(df)> du8;
          const uint8_t* qs = w + r * row_bytes + l.qs + b * l.qs_bytes;
          const V vd = hn::Set(df, ds[r][b - b0]);
          // w = d·q + m (Q4_1), d·q − 8d (Q4_0).
          const V vm = HasMin(kType) ? hn::Set(df, ms[r][b - b0]) : hn::Mul(vd, hn::Set(df, -8.f));
#pragma GCC unroll 4
          for (size_t k = 0; k < 16; k += NF) {
            const auto raw = hn::PromoteTo(di, hn::LoadU(du8, qs + k));
            const V wlo = hn::MulAdd(hn::ConvertTo(df, hn::And(raw, hn::Set(di, 15))), vd, vm);
            const V whi = hn::MulAdd(hn::ConvertTo(df, hn::ShiftRight<4>(raw)), vd, vm);
#pragma GCC unroll 4
            for (size_t t = 0; t < NT; ++t) {
              acc[r][t][0] = hn::MulAdd(wlo, hn::LoadU(df, xb + t * ldx + k), acc[r][t][0]);
              acc[r][t][P - 1] = hn::MulAdd(whi, hn::LoadU(df, xb + t * ldx + 16 + k), acc[r][t][P - 1]);
            }
          }
          continue;
        }
        const int8_t* q = UnpackValues<kType>(w + r * row_bytes, l, b, tmp[r]);
        const V vd = hn::Set(df, ds[r][b - b0]);
#pragma GCC unroll 4
        for (size_t v = 0; v < kV; ++v) {
          V wv = hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(d8, q + v * NF)));
          wv = HasMin(kType) ? hn::MulAdd(wv, vd, hn::Set(df, ms[r][b - b0])) : hn::Mul(wv, vd);
#pragma GCC unroll 4
          for (size_t t = 0; t < NT; ++t)
            acc[r][t][v % P] = hn::MulAdd(wv, hn::LoadU(df, xb + t * ldx + v * NF), acc[r][t][v % P]);
        }
      }
    }
  }
  for (size_t r = 0; r < NR; ++r)
    for (size_t t = 0; t < NT; ++t) {
      V s = acc[r][t][0];
      if constexpr (P == 2) s = hn::Add(s, acc[r][t][1]);
      out[r * NT + t] = hn::GetLane(hn::SumOfLanes(df, s));
    }
}

// The same for rows of F32 / F16 / BF16 values (any column count).
template <int kType, size_t NR, size_t NT>
HWY_INLINE void FloatTile(const uint8_t* HWY_RESTRICT w, size_t row_bytes, size_t cols, const float* HWY_RESTRICT x,
                          size_t ldx, float* HWY_RESTRICT out) {
  const hn::ScalableTag<float> df;
  constexpr size_t NF = hn::MaxLanes(df);
  constexpr size_t P = NR * NT >= 4 ? 1 : 2;
  using V = hn::Vec<decltype(df)>;
  V acc[NR][NT][P];
  for (size_t r = 0; r < NR; ++r)
    for (size_t t = 0; t < NT; ++t)
      for (size_t p = 0; p < P; ++p) acc[r][t][p] = hn::Zero(df);
  // P vectors per step, each step inlined with its accumulator index p a
  // constant, so the accumulators stay in registers (as in BlockTile).
  auto step = [&](size_t c0, size_t p) HWY_ATTR {
#pragma GCC unroll 4
    for (size_t r = 0; r < NR; ++r) {
      const V wv = LoadRow<kType>(df, w + r * row_bytes, c0);
#pragma GCC unroll 4
      for (size_t t = 0; t < NT; ++t) acc[r][t][p] = hn::MulAdd(wv, hn::LoadU(df, x + t * ldx + c0), acc[r][t][p]);
    }
  };
  size_t c = 0;
  for (; c + P * NF <= cols; c += P * NF) {
    step(c, 0);
    if constexpr (P == 2) step(c + NF, 1);
  }
  for (; c + NF <= cols; c += NF) step(c, 0);
  for (size_t r = 0; r < NR; ++r)
    for (size_t t = 0; t < NT; ++t) {
      V s = acc[r][t][0];
      if constexpr (P == 2) s = hn::Add(s, acc[r][t][1]);
      float sum = hn::GetLane(hn::SumOfLanes(df, s));
      for (size_t j = c; j < cols; ++j) sum += ScalarAt<kType>(w + r * row_bytes, j) * x[t * ldx + j];
      out[r * NT + t] = sum;
    }
}

// Weight rows are prefetched this many rows ahead of the rows a tile reads:
// without it the products stall on every line from DRAM (measured on a 71 MB
// Q4_1 matrix, 2 threads: 8.6 -> 11.5 GB/s with f32 inputs, 11.3 -> 16.6 with
// 8-bit ones; 16 rows of 360 bytes are ~6 KB ahead).
constexpr size_t kRowsAhead = 16;

// Rows [r, r + n) of the weights toward L2, those that exist: this call's
// rows and the rows_after that follow them.
HWY_INLINE void PrefetchRows(const QuantMatVecArgs& a, size_t r, size_t n) {
  const size_t end = a.rows + a.rows_after;
  if (r >= end) return;
  if (n > end - r) n = end - r;
  const uintptr_t p = reinterpret_cast<uintptr_t>(a.w + r * a.row_bytes);
  for (uintptr_t line = p & ~uintptr_t(63); line < p + n * a.row_bytes; line += 64)
    __builtin_prefetch(reinterpret_cast<const void*>(line), 0, 1);
}

template <int kType, size_t NR, size_t NT>
HWY_INLINE void Tile(const QuantMatVecArgs& a, const RowLayout& l, size_t r0, size_t t0) {
  if (t0 == 0) PrefetchRows(a, r0 + kRowsAhead, NR);  // later input groups find the rows in cache
  float out[NR * NT];
  const uint8_t* w = a.w + r0 * a.row_bytes;
  const float* x = a.x + t0 * a.ldx;
  if constexpr (IsBlock(kType)) {
#if HWY_TARGET <= HWY_AVX2
    if (a.xq) {
      IntBlockTile<kType, NR, NT>(w, a.row_bytes, l, a, t0, out);
    } else
#endif
      BlockTile<kType, NR, NT>(w, a.row_bytes, l, x, a.ldx, out);
  } else
    FloatTile<kType, NR, NT>(w, a.row_bytes, a.cols, x, a.ldx, out);
  for (size_t r = 0; r < NR; ++r)
    for (size_t t = 0; t < NT; ++t) {
      float& y = a.y[(t0 + t) * a.ldy + r0 + r];
      y = a.accumulate ? y + out[r * NT + t] : out[r * NT + t];
    }
}

// Inputs in groups of up to four; each group sweeps all rows (the caller
// passes a few rows at a time, so they stay in L1 across the groups).
template <int kType>
HWY_NOINLINE void MatVecType(const QuantMatVecArgs& a) {
  const RowLayout l = row_layout(uint32_t(kType), a.cols);
  for (size_t t0 = 0; t0 < a.n; t0 += 4) {
    const size_t nt = a.n - t0 < 4 ? a.n - t0 : 4;
    size_t r = 0;
    switch (nt) {
      case 1:
        for (; r + 4 <= a.rows; r += 4) Tile<kType, 4, 1>(a, l, r, t0);
        for (; r < a.rows; ++r) Tile<kType, 1, 1>(a, l, r, t0);
        break;
      case 2:
        for (; r + 2 <= a.rows; r += 2) Tile<kType, 2, 2>(a, l, r, t0);
        for (; r < a.rows; ++r) Tile<kType, 1, 2>(a, l, r, t0);
        break;
      case 3:
        for (; r < a.rows; ++r) Tile<kType, 1, 3>(a, l, r, t0);
        break;
      default:
        for (; r < a.rows; ++r) Tile<kType, 1, 4>(a, l, r, t0);
        break;
    }
  }
}

template <int kType>
HWY_NOINLINE void DequantType(const DequantArgs& a) {
  const hn::ScalableTag<float> df;
  const hn::RebindToSigned<decltype(df)> di;
  const hn::Rebind<int8_t, decltype(df)> d8;
  constexpr size_t NF = hn::MaxLanes(df);
  for (size_t r = 0; r < a.rows; ++r) {
    const uint8_t* row = a.w + r * a.row_bytes;
    float* HWY_RESTRICT out = a.out + r * a.ldo;
    if constexpr (IsBlock(kType)) {
      const RowLayout l = row_layout(uint32_t(kType), a.cols);
      HWY_ALIGN int8_t tmp[32];
      HWY_ALIGN float ds[kChunk], ms[kChunk];
      for (size_t b0 = 0; b0 < l.nb; b0 += kChunk) {
        const size_t nc = l.nb - b0 < kChunk ? l.nb - b0 : kChunk;
        BlockScales<kType>(row, l, b0, nc, ds, ms);
        for (size_t b = b0; b < b0 + nc; ++b) {
          const int8_t* q = UnpackValues<kType>(row, l, b, tmp);
          const auto vd = hn::Set(df, ds[b - b0]);
          for (size_t v = 0; v < 32 / NF; ++v) {
            auto wv = hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(d8, q + v * NF)));
            wv = HasMin(kType) ? hn::MulAdd(wv, vd, hn::Set(df, ms[b - b0])) : hn::Mul(wv, vd);
            hn::StoreU(wv, df, out + b * 32 + v * NF);
          }
        }
      }
    } else {
      size_t c = 0;
      for (; c + NF <= a.cols; c += NF) hn::StoreU(LoadRow<kType>(df, row, c), df, out + c);
      for (; c < a.cols; ++c) out[c] = ScalarAt<kType>(row, c);
    }
  }
}

}  // namespace qmv

/// See QuantMatVecArgs.
inline HWY_NOINLINE void QuantMatVec(const QuantMatVecArgs& a) {
  switch (a.type) {
    case qmv::kF32: return qmv::MatVecType<qmv::kF32>(a);
    case qmv::kF16: return qmv::MatVecType<qmv::kF16>(a);
    case qmv::kBF16: return qmv::MatVecType<qmv::kBF16>(a);
    case qmv::kQ4_0: return qmv::MatVecType<qmv::kQ4_0>(a);
    case qmv::kQ4_1: return qmv::MatVecType<qmv::kQ4_1>(a);
    case qmv::kQ5_0: return qmv::MatVecType<qmv::kQ5_0>(a);
    case qmv::kQ5_1: return qmv::MatVecType<qmv::kQ5_1>(a);
    case qmv::kQ8_0: return qmv::MatVecType<qmv::kQ8_0>(a);
    default: headrecon::detail::fail("quant_matvec: ggml type ", ggml_type_name(a.type), " has no kernel");
  }
}

/// See DequantArgs.
inline HWY_NOINLINE void QuantDequant(const DequantArgs& a) {
  switch (a.type) {
    case qmv::kF32: return qmv::DequantType<qmv::kF32>(a);
    case qmv::kF16: return qmv::DequantType<qmv::kF16>(a);
    case qmv::kBF16: return qmv::DequantType<qmv::kBF16>(a);
    case qmv::kQ4_0: return qmv::DequantType<qmv::kQ4_0>(a);
    case qmv::kQ4_1: return qmv::DequantType<qmv::kQ4_1>(a);
    case qmv::kQ5_0: return qmv::DequantType<qmv::kQ5_0>(a);
    case qmv::kQ5_1: return qmv::DequantType<qmv::kQ5_1>(a);
    case qmv::kQ8_0: return qmv::DequantType<qmv::kQ8_0>(a);
    default: headrecon::detail::fail("quant_dequantize: ggml type ", ggml_type_name(a.type), " has no kernel");
  }
}

inline const char* QuantTargetName() { return hwy::TargetName(HWY_TARGET); }

}  // namespace HWY_NAMESPACE
}  // namespace headrecon_engine
HWY_AFTER_NAMESPACE();

#endif  // include guard
