// Per-target matrix kernels over GGUF weight storage (see quant_matvec.hpp):
// each 32-element block is dequantized in registers (w = d·q + m, exactly the
// dequantizer's values up to the fused rounding) and multiplied into f32
// activations; activations are never quantized, so results equal
// dequantize-then-sgemv up to the summation order.
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
constexpr size_t BlockBytes(int t) {
  return t == kQ4_0 ? 18 : t == kQ4_1 ? 20 : t == kQ5_0 ? 22 : t == kQ5_1 ? 24 : t == kQ8_0 ? 34 : 0;
}

// One block's 32 quantized values as int8 (q - 8 for Q4_0, q - 16 for Q5_0),
// its scale d and min m (0 without one). Q8_0 values are read in place; the
// others are unpacked into tmp.
template <int kType>
HWY_INLINE const int8_t* UnpackBlock(const uint8_t* HWY_RESTRICT b, int8_t* HWY_RESTRICT tmp, float& d, float& m) {
  d = quant::f16_to_f32(b);
  if constexpr (kType == kQ8_0) {
    m = 0.f;
    return reinterpret_cast<const int8_t*>(b + 2);
  } else {
    const uint8_t* qs = nullptr;
    uint32_t qh = 0;
    m = HasMin(kType) ? quant::f16_to_f32(b + 2) : 0.f;
    if constexpr (kType == kQ4_0) qs = b + 2;
    if constexpr (kType == kQ4_1) qs = b + 4;
    if constexpr (kType == kQ5_0) {
      std::memcpy(&qh, b + 2, 4);
      qs = b + 6;
    }
    if constexpr (kType == kQ5_1) {
      std::memcpy(&qh, b + 4, 4);
      qs = b + 8;
    }
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
// The same in registers: values 0..15 in lo, 16..31 in hi.
template <int kType>
HWY_INLINE void UnpackBlockRegs(const uint8_t* HWY_RESTRICT b, hn::Vec<hn::Full128<int8_t>>& lo_out,
                                hn::Vec<hn::Full128<int8_t>>& hi_out, float& d, float& m) {
  const hn::Full128<int8_t> di8;
  d = quant::f16_to_f32(b);
  if constexpr (kType == kQ8_0) {
    m = 0.f;
    lo_out = hn::LoadU(di8, reinterpret_cast<const int8_t*>(b + 2));
    hi_out = hn::LoadU(di8, reinterpret_cast<const int8_t*>(b + 18));
  } else {
    HWY_ALIGN int8_t tmp[32];
    UnpackBlock<kType>(b, tmp, d, m);
    lo_out = hn::Load(di8, tmp);
    hi_out = hn::Load(di8, tmp + 16);
  }
}

// Σ_j q_j·x_j of one block as int32 lanes (q in lo/hi, x as int16).
template <class D16>
HWY_INLINE hn::Vec<hn::Repartition<int32_t, D16>> DotI16(D16 d16, hn::Vec<hn::Full128<int8_t>> lo,
                                                        hn::Vec<hn::Full128<int8_t>> hi, const int16_t* HWY_RESTRICT xb) {
  const hn::Repartition<int32_t, D16> d32;
  auto s = hn::Zero(d32), unused = hn::Zero(d32);
  if constexpr (hn::MaxLanes(D16()) == 16) {
    s = hn::ReorderWidenMulAccumulate(d32, hn::PromoteTo(d16, lo), hn::LoadU(d16, xb), s, unused);
    return hn::ReorderWidenMulAccumulate(d32, hn::PromoteTo(d16, hi), hn::LoadU(d16, xb + 16), s, unused);
  } else {
    const hn::Rebind<int8_t, D16> d8;
    return hn::ReorderWidenMulAccumulate(d32, hn::PromoteTo(d16, hn::Combine(d8, hi, lo)), hn::LoadU(d16, xb), s,
                                         unused);
  }
}

// BlockTile with 8-bit activations: integer dot products per block
// (int16 multiply-add pairs), scaled by d_w·d_x; the min by m_w·s_x.
template <int kType, size_t NR, size_t NT>
HWY_INLINE void IntBlockTile(const uint8_t* HWY_RESTRICT w, size_t row_bytes, size_t nblocks,
                             const QuantMatVecArgs& a, size_t t0, float* HWY_RESTRICT out) {
  const hn::ScalableTag<int16_t> d16;
  const hn::Repartition<float, decltype(d16)> df;
  constexpr size_t N16 = hn::MaxLanes(d16);
  static_assert(N16 == 16 || N16 == 32, "8-bit activations need 256- or 512-bit vectors");
  constexpr size_t kBytes = BlockBytes(kType);
  using VF = hn::Vec<decltype(df)>;
  VF acc[NR][NT];
  float accm[NR][NT];
  for (size_t r = 0; r < NR; ++r)
    for (size_t t = 0; t < NT; ++t) acc[r][t] = hn::Zero(df), accm[r][t] = 0.f;
  for (size_t b = 0; b < nblocks; ++b) {
    for (size_t r = 0; r < NR; ++r) {
      float d, m;
      hn::Vec<hn::Full128<int8_t>> lo, hi;
      UnpackBlockRegs<kType>(w + r * row_bytes + b * kBytes, lo, hi, d, m);
      for (size_t t = 0; t < NT; ++t) {
        const int16_t* HWY_RESTRICT xb = a.xq + (t0 + t) * a.ldxq + b * 32;
        const auto s = DotI16(d16, lo, hi, xb);
        const size_t xi = (t0 + t) * a.ldxb + b;
        acc[r][t] = hn::MulAdd(hn::ConvertTo(df, s), hn::Set(df, d * a.xd[xi]), acc[r][t]);
        if constexpr (HasMin(kType)) accm[r][t] += m * a.xs[xi];
      }
    }
  }
  for (size_t r = 0; r < NR; ++r)
    for (size_t t = 0; t < NT; ++t) out[r * NT + t] = hn::GetLane(hn::SumOfLanes(df, acc[r][t])) + accm[r][t];
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
HWY_INLINE void BlockTile(const uint8_t* HWY_RESTRICT w, size_t row_bytes, size_t nblocks,
                          const float* HWY_RESTRICT x, size_t ldx, float* HWY_RESTRICT out) {
  const hn::ScalableTag<float> df;
  const hn::RebindToSigned<decltype(df)> di;
  const hn::Rebind<int8_t, decltype(df)> d8;
  constexpr size_t NF = hn::MaxLanes(df);
  static_assert(32 % NF == 0, "a block holds a whole number of vectors");
  constexpr size_t kV = 32 / NF;
  constexpr size_t P = (NR * NT >= 4 || kV == 1) ? 1 : 2;
  constexpr size_t kBytes = BlockBytes(kType);
  using V = hn::Vec<decltype(df)>;
  V acc[NR][NT][P];
  for (size_t r = 0; r < NR; ++r)
    for (size_t t = 0; t < NT; ++t)
      for (size_t p = 0; p < P; ++p) acc[r][t][p] = hn::Zero(df);
  HWY_ALIGN int8_t tmp[NR][32];
  for (size_t b = 0; b < nblocks; ++b) {
    const float* HWY_RESTRICT xb = x + b * 32;
    for (size_t r = 0; r < NR; ++r) {
      float d, m;
      const int8_t* q = UnpackBlock<kType>(w + r * row_bytes + b * kBytes, tmp[r], d, m);
      const V vd = hn::Set(df, d);
      const V vm = hn::Set(df, m);
      for (size_t v = 0; v < kV; ++v) {
        V wv = hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(d8, q + v * NF)));
        wv = HasMin(kType) ? hn::MulAdd(wv, vd, vm) : hn::Mul(wv, vd);
        for (size_t t = 0; t < NT; ++t)
          acc[r][t][v % P] = hn::MulAdd(wv, hn::LoadU(df, xb + t * ldx + v * NF), acc[r][t][v % P]);
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
  size_t c = 0, k = 0;
  for (; c + NF <= cols; c += NF, ++k)
    for (size_t r = 0; r < NR; ++r) {
      const V wv = LoadRow<kType>(df, w + r * row_bytes, c);
      for (size_t t = 0; t < NT; ++t)
        acc[r][t][k % P] = hn::MulAdd(wv, hn::LoadU(df, x + t * ldx + c), acc[r][t][k % P]);
    }
  for (size_t r = 0; r < NR; ++r)
    for (size_t t = 0; t < NT; ++t) {
      V s = acc[r][t][0];
      if constexpr (P == 2) s = hn::Add(s, acc[r][t][1]);
      float sum = hn::GetLane(hn::SumOfLanes(df, s));
      for (size_t j = c; j < cols; ++j) sum += ScalarAt<kType>(w + r * row_bytes, j) * x[t * ldx + j];
      out[r * NT + t] = sum;
    }
}

template <int kType, size_t NR, size_t NT>
HWY_INLINE void Tile(const QuantMatVecArgs& a, size_t r0, size_t t0) {
  float out[NR * NT];
  const uint8_t* w = a.w + r0 * a.row_bytes;
  const float* x = a.x + t0 * a.ldx;
  if constexpr (IsBlock(kType)) {
#if HWY_TARGET <= HWY_AVX2
    if (a.xq) {
      IntBlockTile<kType, NR, NT>(w, a.row_bytes, a.cols / 32, a, t0, out);
    } else
#endif
      BlockTile<kType, NR, NT>(w, a.row_bytes, a.cols / 32, x, a.ldx, out);
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
  for (size_t t0 = 0; t0 < a.n; t0 += 4) {
    const size_t nt = a.n - t0 < 4 ? a.n - t0 : 4;
    size_t r = 0;
    switch (nt) {
      case 1:
        for (; r + 4 <= a.rows; r += 4) Tile<kType, 4, 1>(a, r, t0);
        for (; r < a.rows; ++r) Tile<kType, 1, 1>(a, r, t0);
        break;
      case 2:
        for (; r + 2 <= a.rows; r += 2) Tile<kType, 2, 2>(a, r, t0);
        for (; r < a.rows; ++r) Tile<kType, 1, 2>(a, r, t0);
        break;
      case 3:
        for (; r < a.rows; ++r) Tile<kType, 1, 3>(a, r, t0);
        break;
      default:
        for (; r < a.rows; ++r) Tile<kType, 1, 4>(a, r, t0);
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
      HWY_ALIGN int8_t tmp[32];
      for (size_t b = 0; b < a.cols / 32; ++b) {
        float d, m;
        const int8_t* q = UnpackBlock<kType>(row + b * BlockBytes(kType), tmp, d, m);
        for (size_t v = 0; v < 32 / NF; ++v) {
          auto wv = hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(d8, q + v * NF)));
          wv = HasMin(kType) ? hn::MulAdd(wv, hn::Set(df, d), hn::Set(df, m)) : hn::Mul(wv, hn::Set(df, d));
          hn::StoreU(wv, df, out + b * 32 + v * NF);
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
