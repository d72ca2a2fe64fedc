// Per-target reconstruction kernel: Y = X·W + b for every target of a layer,
// one pass over the reference tokens. See cpu/reconstruct.hpp for the API.
#include <cstddef>
#include <cstdint>

#include "headrecon/cpu/reconstruct_args.hpp"
#include "headrecon/error.hpp"
#include "headrecon/hadamard.hpp"

#if defined(HEADRECON_CPU_RECONSTRUCT_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef HEADRECON_CPU_RECONSTRUCT_INL_H_
#undef HEADRECON_CPU_RECONSTRUCT_INL_H_
#else
#define HEADRECON_CPU_RECONSTRUCT_INL_H_
#endif

#include "headrecon/cpu/convert-inl.h"
#include "hwy/highway.h"

#ifndef HEADRECON_UNROLL
#define HEADRECON_UNROLL _Pragma("GCC unroll 16")
#endif

HWY_BEFORE_NAMESPACE();
namespace headrecon {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

namespace recon {
// Rows of the register tile: 8 with 16-lane vectors, 6 with 8 lanes.
constexpr size_t kTileRows = HWY_MAX_BYTES >= 64 ? 8 : 6;

// tile[row][j0 .. j0 + V·L) = Σ_r Σ_i x[r·R + row][i] · W[r·d + i][j0 ..], for R rows.
template <size_t R, size_t V>
HWY_INLINE void Tile(const float* const* HWY_RESTRICT x, size_t k, const float* HWY_RESTRICT w, size_t d,
                     size_t j0, float* HWY_RESTRICT tile) {
  const hn::ScalableTag<float> df;
  const size_t L = hn::Lanes(df);
  using Vf = hn::Vec<decltype(df)>;
  // Fully unrolled so the R×V accumulators stay in registers.
  Vf acc[R][V];
  HEADRECON_UNROLL
  for (size_t row = 0; row < R; ++row) {
    HEADRECON_UNROLL
    for (size_t v = 0; v < V; ++v) acc[row][v] = hn::Zero(df);
  }
  for (size_t r = 0; r < k; ++r) {
    const float* HWY_RESTRICT wr = w + r * d * d + j0;
    const float* xr[R];
    HEADRECON_UNROLL
    for (size_t row = 0; row < R; ++row) xr[row] = x[r * R + row];
    for (size_t i = 0; i < d; ++i) {
      Vf wv[V];
      HEADRECON_UNROLL
      for (size_t v = 0; v < V; ++v) wv[v] = hn::LoadU(df, wr + i * d + v * L);
      HEADRECON_UNROLL
      for (size_t row = 0; row < R; ++row) {
        const Vf xb = hn::Set(df, xr[row][i]);
        HEADRECON_UNROLL
        for (size_t v = 0; v < V; ++v) acc[row][v] = hn::MulAdd(xb, wv[v], acc[row][v]);
      }
    }
  }
  HEADRECON_UNROLL
  for (size_t row = 0; row < R; ++row) {
    HEADRECON_UNROLL
    for (size_t v = 0; v < V; ++v) hn::StoreU(acc[row][v], df, tile + row * d + j0 + v * L);
  }
}

// All columns of an R-row tile: pairs of vectors, one vector, then scalars.
template <size_t R>
HWY_INLINE void Rows(const float* const* HWY_RESTRICT x, size_t k, const float* HWY_RESTRICT w, size_t d,
                     float* HWY_RESTRICT tile) {
  const hn::ScalableTag<float> df;
  const size_t L = hn::Lanes(df);
  size_t j0 = 0;
  for (; j0 + 2 * L <= d; j0 += 2 * L) Tile<R, 2>(x, k, w, d, j0, tile);
  for (; j0 + L <= d; j0 += L) Tile<R, 1>(x, k, w, d, j0, tile);
  for (; j0 < d; ++j0)
    for (size_t row = 0; row < R; ++row) {
      float s = 0.f;
      for (size_t r = 0; r < k; ++r)
        for (size_t i = 0; i < d; ++i) s += x[r * R + row][i] * w[(r * d + i) * d + j0];
      tile[row * d + j0] = s;
    }
}

template <size_t R>
HWY_INLINE void RowsUpTo(size_t nr, const float* const* x, size_t k, const float* w, size_t d, float* tile) {
  if constexpr (R > 0) {
    if (nr == R) return Rows<R>(x, k, w, d, tile);
    return RowsUpTo<R - 1>(nr, x, k, w, d, tile);
  }
}

template <class T>
HWY_INLINE void StoreRow(const float* HWY_RESTRICT acc, const float* HWY_RESTRICT bias, float* HWY_RESTRICT tmp,
                         const HeadStream& out, size_t t, size_t d) {
  const hn::ScalableTag<float> df;
  const size_t L = hn::Lanes(df);
  size_t i = 0;
  for (; i + L <= d; i += L) hn::StoreU(hn::Add(hn::LoadU(df, acc + i), hn::LoadU(df, bias + i)), df, tmp + i);
  for (; i < d; ++i) tmp[i] = acc[i] + bias[i];
  RowFromF32<T>(tmp, out.mutable_row<T>(t), d);
}
}  // namespace recon

/// Rebuilds every target's tokens (see ReconstructArgs). Throws Error on a
/// workspace that is too small or a reference index out of range.
inline HWY_NOINLINE void Reconstruct(const ReconstructArgs& a) {
  const size_t d = a.head_dim;
  constexpr size_t B = kReconBlock, R = recon::kTileRows;
  if (a.n_tokens == 0 || a.n_targets == 0) return;
  if (d == 0) detail::fail("reconstruct: head_dim must be positive");
  if (a.workspace == nullptr || a.workspace_floats < reconstruct_workspace_floats(a.n_streams, d))
    detail::fail("reconstruct: workspace of ", a.workspace_floats, " floats, need ",
                 reconstruct_workspace_floats(a.n_streams, d));
  size_t max_refs = 0;
  for (size_t j = 0; j < a.n_targets; ++j) {
    const ReconTarget& tg = a.targets[j];
    if (tg.n_refs == 0 || !tg.weight || !tg.bias || !tg.out.base)
      detail::fail("reconstruct: target ", j, " has no references, weight, bias or output");
    if (is_block_type(tg.out.dtype))
      detail::fail("reconstruct: target ", j, " output of type ", dtype_name(tg.out.dtype), " (f32, f16 or bf16 only)");
    for (size_t r = 0; r < tg.n_refs; ++r)
      if (tg.refs[r] >= a.n_streams)
        detail::fail("reconstruct: target ", j, " reference ", tg.refs[r], " of ", a.n_streams, " streams");
    max_refs = max_refs > tg.n_refs ? max_refs : tg.n_refs;
  }
  float* gathered = a.workspace;                 // [n_streams][B][d] f32 copies of 16-bit rows
  float* tile = gathered + a.n_streams * B * d;  // [B][d]
  // Row pointers per stream and token of the block; f32 streams are read in place.
  const float* rows_buf[64 * B];
  if (a.n_streams > 64) detail::fail("reconstruct: at most 64 reference streams per call, got ", a.n_streams);
  for (size_t s = 0; s < a.n_streams; ++s) {
    if (is_block_type(a.streams[s].dtype) && d % kQuantBlock != 0)
      detail::fail("reconstruct: stream ", s, " of type ", dtype_name(a.streams[s].dtype),
                   " needs head_dim divisible by 32, got ", d);
    if (a.streams[s].rotated && !hadamard_length_ok(d))
      detail::fail("reconstruct: stream ", s, " is rotated, head_dim ", d, " is not a power of two");
  }
  const float* xp_buf[64 * 8];
  if (max_refs * R > 64 * 8) detail::fail("reconstruct: at most ", 64 * 8 / R, " references per target");
  float tmp[1024];
  if (d > 1024) detail::fail("reconstruct: head_dim ", d, " > 1024");

  for (size_t b0 = 0; b0 < a.n_tokens; b0 += B) {
    const size_t nb = a.n_tokens - b0 < B ? a.n_tokens - b0 : B;
    for (size_t s = 0; s < a.n_streams; ++s) {
      const HeadStream& st = a.streams[s];
      for (size_t t = 0; t < nb; ++t) {
        const size_t tok = a.token0 + b0 + t;
        float* g = gathered + (s * B + t) * d;
        switch (st.dtype) {
          case DType::f32: rows_buf[s * B + t] = st.row<float>(tok); break;
          case DType::f16: RowToF32(st.row<f16_t>(tok), g, d); rows_buf[s * B + t] = g; break;
          case DType::bf16: RowToF32(st.row<bf16_t>(tok), g, d); rows_buf[s * B + t] = g; break;
          case DType::q8_0:
          case DType::q4_0: BlocksToF32(st.row_address(tok), st.dtype, g, d); rows_buf[s * B + t] = g; break;
        }
        if (st.rotated) {  // stored Hx: undo the rotation (H is its own inverse)
          if (rows_buf[s * B + t] != g) RowToF32(rows_buf[s * B + t], g, d);
          hadamard_rotate(g, d);
          rows_buf[s * B + t] = g;
        }
      }
    }
    for (size_t j = 0; j < a.n_targets; ++j) {
      const ReconTarget& tg = a.targets[j];
      for (size_t r0 = 0; r0 < nb; r0 += R) {
        const size_t nr = nb - r0 < R ? nb - r0 : R;
        for (size_t r = 0; r < tg.n_refs; ++r)
          for (size_t row = 0; row < nr; ++row) xp_buf[r * nr + row] = rows_buf[tg.refs[r] * B + r0 + row];
        recon::RowsUpTo<R>(nr, xp_buf, tg.n_refs, tg.weight, d, tile);
        for (size_t row = 0; row < nr; ++row) {
          const size_t tok = a.token0 + b0 + r0 + row;
          switch (tg.out.dtype) {
            case DType::f32: recon::StoreRow<float>(tile + row * d, tg.bias, tmp, tg.out, tok, d); break;
            case DType::f16: recon::StoreRow<f16_t>(tile + row * d, tg.bias, tmp, tg.out, tok, d); break;
            case DType::bf16: recon::StoreRow<bf16_t>(tile + row * d, tg.bias, tmp, tg.out, tok, d); break;
            case DType::q8_0:
            case DType::q4_0: break;  // rejected above
          }
        }
      }
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace headrecon
HWY_AFTER_NAMESPACE();

#endif  // HEADRECON_CPU_RECONSTRUCT_INL_H_
