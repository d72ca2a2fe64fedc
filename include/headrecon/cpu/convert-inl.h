// Per-target conversions between cache element types and f32 rows.
// Included by the other -inl.h kernels; toggle guard for foreach_target.
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "headrecon/block_quant.hpp"
#include "headrecon/dtype.hpp"

#if defined(HEADRECON_CPU_CONVERT_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef HEADRECON_CPU_CONVERT_INL_H_
#undef HEADRECON_CPU_CONVERT_INL_H_
#else
#define HEADRECON_CPU_CONVERT_INL_H_
#endif

#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace headrecon {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

/// dst[0, n) = float(src[0, n)) for f32, f16 or bf16 sources.
template <class T>
HWY_INLINE void RowToF32(const T* HWY_RESTRICT src, float* HWY_RESTRICT dst, size_t n) {
  const hn::ScalableTag<float> df;
  const size_t L = hn::Lanes(df);
  size_t i = 0;
  if constexpr (std::is_same_v<T, float>) {
    for (; i + L <= n; i += L) hn::StoreU(hn::LoadU(df, src + i), df, dst + i);
  } else if constexpr (std::is_same_v<T, f16_t>) {
    const hn::Rebind<hwy::float16_t, decltype(df)> dh;
    const auto* s = reinterpret_cast<const hwy::float16_t*>(src);
    for (; i + L <= n; i += L) hn::StoreU(hn::PromoteTo(df, hn::LoadU(dh, s + i)), df, dst + i);
  } else {
    const hn::Rebind<hwy::bfloat16_t, decltype(df)> db;
    const auto* s = reinterpret_cast<const hwy::bfloat16_t*>(src);
    for (; i + L <= n; i += L) hn::StoreU(hn::PromoteTo(df, hn::LoadU(db, s + i)), df, dst + i);
  }
  for (; i < n; ++i) dst[i] = to_float(src[i]);
}

/// dst[0, n) = T(src[0, n)), rounding to nearest even (NaN stays NaN).
template <class T>
HWY_INLINE void RowFromF32(const float* HWY_RESTRICT src, T* HWY_RESTRICT dst, size_t n) {
  const hn::ScalableTag<float> df;
  const size_t L = hn::Lanes(df);
  size_t i = 0;
  if constexpr (std::is_same_v<T, float>) {
    for (; i + L <= n; i += L) hn::StoreU(hn::LoadU(df, src + i), df, dst + i);
  } else if constexpr (std::is_same_v<T, f16_t>) {
    const hn::Rebind<hwy::float16_t, decltype(df)> dh;
    auto* d = reinterpret_cast<hwy::float16_t*>(dst);
    for (; i + L <= n; i += L) hn::StoreU(hn::DemoteTo(dh, hn::LoadU(df, src + i)), dh, d + i);
  } else {
    // Highway 1.0.3's DemoteTo(bf16) truncates; round to nearest even by hand.
    const hn::RebindToUnsigned<decltype(df)> du;
    const hn::RebindToSigned<decltype(df)> di;
    const hn::Rebind<uint16_t, decltype(df)> du16;
    auto* d = reinterpret_cast<uint16_t*>(dst);
    for (; i + L <= n; i += L) {
      const auto v = hn::LoadU(df, src + i);
      const auto bits = hn::BitCast(du, v);
      const auto lsb = hn::And(hn::ShiftRight<16>(bits), hn::Set(du, 1u));
      const auto rounded = hn::Add(bits, hn::Add(hn::Set(du, 0x7fffu), lsb));
      const auto quiet = hn::Or(bits, hn::Set(du, 0x400000u));
      const auto out = hn::IfThenElse(hn::RebindMask(du, hn::Ne(v, v)), quiet, rounded);
      hn::StoreU(hn::DemoteTo(du16, hn::BitCast(di, hn::ShiftRight<16>(out))), du16, d + i);
    }
  }
  for (; i < n; ++i) dst[i] = from_float<T>(src[i]);
}

/// dst[0, n) = the values of the q8_0 or q4_0 blocks at src (n a multiple of 32).
HWY_INLINE void BlocksToF32(const void* HWY_RESTRICT src, DType t, float* HWY_RESTRICT dst, size_t n) {
  const hn::ScalableTag<float> df;
  const hn::RebindToSigned<decltype(df)> di;
  const size_t L = hn::Lanes(df);
  if (L > kQuantBlock / 2 || kQuantBlock % L != 0) return dequantize_row(src, n, t, dst);
  if (t == DType::q8_0) {
    const hn::Rebind<int8_t, decltype(di)> d8;
    const auto* p = static_cast<const unsigned char*>(src);  // byte-addressed: blocks need no alignment
    for (size_t k = 0; k < n / kQuantBlock; ++k, dst += kQuantBlock) {
      const unsigned char* blk = p + k * sizeof(BlockQ8_0);
      const auto* qs = reinterpret_cast<const int8_t*>(blk + kBlockQsOffset);
      const auto d = hn::Set(df, block_scale(blk));
      for (size_t i = 0; i < kQuantBlock; i += L)
        hn::StoreU(hn::Mul(d, hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(d8, qs + i)))), df, dst + i);
    }
  } else {
    const hn::Rebind<uint8_t, decltype(di)> d8;
    const auto* p = static_cast<const unsigned char*>(src);
    const auto mask = hn::Set(di, 15), eight = hn::Set(di, 8);
    for (size_t k = 0; k < n / kQuantBlock; ++k, dst += kQuantBlock) {
      const unsigned char* blk = p + k * sizeof(BlockQ4_0);
      const unsigned char* qs = blk + kBlockQsOffset;
      const auto d = hn::Set(df, block_scale(blk));
      for (size_t i = 0; i < kQuantBlock / 2; i += L) {
        const auto q = hn::BitCast(di, hn::PromoteTo(hn::RebindToUnsigned<decltype(di)>(), hn::LoadU(d8, qs + i)));
        hn::StoreU(hn::Mul(d, hn::ConvertTo(df, hn::Sub(hn::And(q, mask), eight))), df, dst + i);
        hn::StoreU(hn::Mul(d, hn::ConvertTo(df, hn::Sub(hn::ShiftRight<4>(q), eight))), df, dst + kQuantBlock / 2 + i);
      }
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace headrecon
HWY_AFTER_NAMESPACE();

#endif  // HEADRECON_CPU_CONVERT_INL_H_
