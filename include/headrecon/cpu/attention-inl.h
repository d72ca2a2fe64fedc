// Per-target decode attention over a reference-only cache (see cpu/attention.hpp).
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "headrecon/cpu/attention_args.hpp"
#include "headrecon/error.hpp"

#if defined(HEADRECON_CPU_ATTENTION_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef HEADRECON_CPU_ATTENTION_INL_H_
#undef HEADRECON_CPU_ATTENTION_INL_H_
#else
#define HEADRECON_CPU_ATTENTION_INL_H_
#endif

#include "headrecon/cpu/convert-inl.h"
#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"

#ifndef HEADRECON_ATTN_UNROLL
#define HEADRECON_ATTN_UNROLL _Pragma("GCC unroll 16")
#endif

HWY_BEFORE_NAMESPACE();
namespace headrecon {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

namespace attn {
// Rows of a block as f32 pointers: in place for f32 streams, else converted into scratch.
HWY_INLINE void BlockRows(const HeadStream& s, size_t t0, size_t nb, size_t d, float* HWY_RESTRICT scratch,
                          const float** rows) {
  for (size_t t = 0; t < nb; ++t) {
    switch (s.dtype) {
      case DType::f32: rows[t] = s.row<float>(t0 + t); break;
      case DType::f16: RowToF32(s.row<f16_t>(t0 + t), scratch + t * d, d); rows[t] = scratch + t * d; break;
      case DType::bf16: RowToF32(s.row<bf16_t>(t0 + t), scratch + t * d, d); rows[t] = scratch + t * d; break;
    }
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

// score_j[t] += q_j·rows[t] for t < nb and J (1 or 2) query vectors; register
// tile of J queries × 4 tokens, horizontal sums reduced four tokens at once.
template <size_t J>
HWY_INLINE void ScoresJ(const float* const* HWY_RESTRICT qs, const float* const* rows, size_t nb, size_t d,
                        float* const* HWY_RESTRICT scores) {
  const hn::ScalableTag<float> df;
  const size_t L = hn::Lanes(df);
  const size_t dv = d - d % L;
  size_t t = 0;
  for (; t + 4 <= nb; t += 4) {
    hn::Vec<decltype(df)> acc[J][4];
    HEADRECON_ATTN_UNROLL
    for (size_t j = 0; j < J; ++j) {
      HEADRECON_ATTN_UNROLL
      for (size_t u = 0; u < 4; ++u) acc[j][u] = hn::Zero(df);
    }
    for (size_t i = 0; i < dv; i += L) {
      const auto x0 = hn::LoadU(df, rows[t] + i), x1 = hn::LoadU(df, rows[t + 1] + i);
      const auto x2 = hn::LoadU(df, rows[t + 2] + i), x3 = hn::LoadU(df, rows[t + 3] + i);
      HEADRECON_ATTN_UNROLL
      for (size_t j = 0; j < J; ++j) {
        const auto qv = hn::LoadU(df, qs[j] + i);
        acc[j][0] = hn::MulAdd(qv, x0, acc[j][0]);
        acc[j][1] = hn::MulAdd(qv, x1, acc[j][1]);
        acc[j][2] = hn::MulAdd(qv, x2, acc[j][2]);
        acc[j][3] = hn::MulAdd(qv, x3, acc[j][3]);
      }
    }
    for (size_t j = 0; j < J; ++j) {
      alignas(16) float s4[4];
      Sum4(df, acc[j][0], acc[j][1], acc[j][2], acc[j][3], s4);
      for (size_t i = dv; i < d; ++i)  // components past the last full vector
        for (size_t u = 0; u < 4; ++u) s4[u] += qs[j][i] * rows[t + u][i];
      for (size_t u = 0; u < 4; ++u) scores[j][t + u] += s4[u];
    }
  }
  for (; t < nb; ++t)
    for (size_t j = 0; j < J; ++j) {
      auto a = hn::Zero(df);
      for (size_t i = 0; i < dv; i += L) a = hn::MulAdd(hn::LoadU(df, qs[j] + i), hn::LoadU(df, rows[t] + i), a);
      float s = hn::GetLane(hn::SumOfLanes(df, a));
      for (size_t i = dv; i < d; ++i) s += qs[j][i] * rows[t][i];
      scores[j][t] += s;
    }
}

// score[t] += q·rows[t] for one query vector.
HWY_INLINE void Scores(const float* HWY_RESTRICT q, const float* const* rows, size_t nb, size_t d,
                       float* HWY_RESTRICT score) {
  const float* qs[1] = {q};
  float* ss[1] = {score};
  ScoresJ<1>(qs, rows, nb, d, ss);
}

// Jobs per register tile: 4 with 32 vector registers (AVX-512), else 2.
constexpr size_t kTileJobs = HWY_MAX_BYTES >= 64 ? 4 : 2;

// acc_j[i0 .. i0 + C·L) += Σ_t p_j[t]·rows[t][…] for J jobs on the same rows:
// each row vector is loaded once for the J jobs (loads, not FMAs, bound the
// untiled loop), J·C independent accumulator chains.
template <size_t J, size_t C>
HWY_INLINE void AccumulateTile(const float* const* HWY_RESTRICT ps, const float* const* rows, size_t nb, size_t i0,
                               float* const* HWY_RESTRICT accs) {
  const hn::ScalableTag<float> df;
  const size_t L = hn::Lanes(df);
  hn::Vec<decltype(df)> a[J][C];
  HEADRECON_ATTN_UNROLL
  for (size_t j = 0; j < J; ++j) {
    HEADRECON_ATTN_UNROLL
    for (size_t c = 0; c < C; ++c) a[j][c] = hn::LoadU(df, accs[j] + i0 + c * L);
  }
  for (size_t t = 0; t < nb; ++t) {
    hn::Vec<decltype(df)> x[C];
    HEADRECON_ATTN_UNROLL
    for (size_t c = 0; c < C; ++c) x[c] = hn::LoadU(df, rows[t] + i0 + c * L);
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

template <size_t J>
HWY_INLINE void AccumulateJobs(const float* const* ps, const float* const* rows, size_t nb, size_t d,
                               float* const* accs) {
  const hn::ScalableTag<float> df;
  const size_t L = hn::Lanes(df);
  size_t i = 0;
  for (; i + 4 * L <= d; i += 4 * L) AccumulateTile<J, 4>(ps, rows, nb, i, accs);
  for (; i + L <= d; i += L) AccumulateTile<J, 1>(ps, rows, nb, i, accs);
  for (; i < d; ++i)
    for (size_t j = 0; j < J; ++j)
      for (size_t t = 0; t < nb; ++t) accs[j][i] += ps[j][t] * rows[t][i];
}

// acc += Σ_t p[t]·rows[t] (one job).
HWY_INLINE void Accumulate(const float* HWY_RESTRICT p, const float* const* rows, size_t nb, size_t d,
                           float* HWY_RESTRICT acc) {
  const float* ps[1] = {p};
  float* accs[1] = {acc};
  AccumulateJobs<1>(ps, rows, nb, d, accs);
}

template <size_t J>
HWY_INLINE void ScoresUpTo(size_t n, const float* const* qs, const float* const* rows, size_t nb, size_t d,
                           float* const* ss) {
  if constexpr (J > 0) {
    if (n == J) return ScoresJ<J>(qs, rows, nb, d, ss);
    return ScoresUpTo<J - 1>(n, qs, rows, nb, d, ss);
  }
}

template <size_t J>
HWY_INLINE void AccumulateUpTo(size_t n, const float* const* ps, const float* const* rows, size_t nb, size_t d,
                               float* const* accs) {
  if constexpr (J > 0) {
    if (n == J) return AccumulateJobs<J>(ps, rows, nb, d, accs);
    return AccumulateUpTo<J - 1>(n, ps, rows, nb, d, accs);
  }
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
  for (size_t t = 0; t < nb; ++t) mx = s[t] > mx ? s[t] : mx;
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

// y[j] += Σ_i x[i]·W[i][j] for row-major W [d, d].
HWY_INLINE void MapAdd(const float* HWY_RESTRICT x, const float* HWY_RESTRICT w, size_t d, float* HWY_RESTRICT y) {
  const hn::ScalableTag<float> df;
  const size_t L = hn::Lanes(df);
  for (size_t i = 0; i < d; ++i) {
    const auto xv = hn::Set(df, x[i]);
    const float* wr = w + i * d;
    size_t j = 0;
    for (; j + L <= d; j += L) hn::StoreU(hn::MulAdd(xv, hn::LoadU(df, wr + j), hn::LoadU(df, y + j)), df, y + j);
    for (; j < d; ++j) y[j] += x[i] * wr[j];
  }
}

// y[i] = scale · Σ_j W[i][j]·q[j] for row-major W [d, d].
HWY_INLINE void MapQuery(const float* HWY_RESTRICT w, const float* HWY_RESTRICT q, size_t d, float scale,
                         float* HWY_RESTRICT y) {
  const float* rows[1];
  for (size_t i = 0; i < d; ++i) {
    float s = 0.f;
    rows[0] = w + i * d;
    Scores(q, rows, 1, d, &s);
    y[i] = scale * s;
  }
}
}  // namespace attn

/// One decode step (see DecodeAttentionArgs). Throws Error on inconsistent
/// arguments or a short workspace; never allocates.
inline HWY_NOINLINE void DecodeAttention(const DecodeAttentionArgs& a) {
  if (!a.plan || !a.q || !a.out) detail::fail("decode_attention: plan, q and out are required");
  const AttentionLayerPlan& p = *a.plan;
  const size_t d = p.head_dim, H = p.n_q_heads, G = p.n_q_heads / p.n_kv_heads, B = kAttnBlock;
  if (a.n_sink + a.n_body == 0) detail::fail("decode_attention: no tokens to attend to");
  if (a.n_sink && (!a.sink_k || !a.sink_v)) detail::fail("decode_attention: ", a.n_sink, " sink tokens but no sink streams");
  if (a.n_body && (!a.k_streams || !a.v_streams)) detail::fail("decode_attention: body tokens but no streams");
  if (!a.workspace || a.workspace_floats < decode_attention_workspace_floats(p))
    detail::fail("decode_attention: workspace of ", a.workspace_floats, " floats, need ",
                 decode_attention_workspace_floats(p));
  float* qv = a.workspace;                 // [n_qvecs][d]
  float* acc = qv + p.n_qvecs * d;         // [n_accs][d]
  float* sc = acc + p.n_accs * d;          // [H][B]
  float* m = sc + H * B;                   // [H]
  float* l = m + H;                        // [H]
  float* mass = l + H;                     // [H] body probability mass (bias of rebuilt V)
  float* qb = mass + H;                    // [H] scale·q·b_K of rebuilt K
  float* scratch = qb + H;                 // [B][d]
  const float* rows[kAttnBlock];

  // Query vectors: raw (scaled) per head, then the absorbed ones W_r q.
  for (size_t h = 0; h < H; ++h) {
    const float* q = a.q + h * d;
    for (size_t i = 0; i < d; ++i) qv[h * d + i] = a.scale * q[i];
    m[h] = -std::numeric_limits<float>::infinity();
    l[h] = mass[h] = qb[h] = 0.f;
    const auto& ks = p.k[h / G];
    if (ks.rebuilt) {
      float s = 0.f;
      for (size_t i = 0; i < d; ++i) s += q[i] * ks.bias[i];
      qb[h] = a.scale * s;
    }
  }
  for (size_t s = 0; s < p.n_k_streams; ++s)
    for (const auto& job : p.k_jobs[s]) {
      if (job.vec < H) continue;
      const auto& ks = p.k[job.head / G];
      size_t r = 0;
      while (ks.streams[r] != s) ++r;
      attn::MapQuery(ks.weight + r * d * d, a.q + job.head * d, d, a.scale, qv + job.vec * d);
    }
  for (size_t i = 0; i < p.n_accs * d; ++i) acc[i] = 0.f;

  // Sink tokens: exact K and V of every head.
  for (size_t b0 = 0; b0 < a.n_sink; b0 += B) {
    const size_t nb = a.n_sink - b0 < B ? a.n_sink - b0 : B;
    for (size_t i = 0; i < H * B; ++i) sc[i] = 0.f;
    for (size_t g = 0; g < p.n_kv_heads; ++g) {
      attn::BlockRows(a.sink_k[g], b0, nb, d, scratch, rows);
      for (size_t h = g * G; h < (g + 1) * G; ++h) attn::Scores(qv + h * d, rows, nb, d, sc + h * B);
    }
    for (size_t h = 0; h < H; ++h) {
      float bs;
      const float f = attn::Softmax(sc + h * B, nb, m[h], l[h], &bs);
      attn::Scale(acc + h * d, d, f);
      mass[h] *= f;
    }
    for (size_t g = 0; g < p.n_kv_heads; ++g) {
      attn::BlockRows(a.sink_v[g], b0, nb, d, scratch, rows);
      for (size_t h = g * G; h < (g + 1) * G; ++h) attn::Accumulate(sc + h * B, rows, nb, d, acc + h * d);
    }
  }
  // Head h's accumulators (direct and per reference), for rescaling.
  auto scale_head = [&](size_t h, float f) {
    attn::Scale(acc + h * d, d, f);
    for (const auto& ra : p.ref_accs[h]) attn::Scale(acc + ra.acc * d, d, f);
  };
  // Body tokens: reference-only streams.
  for (size_t b0 = 0; b0 < a.n_body; b0 += B) {
    const size_t nb = a.n_body - b0 < B ? a.n_body - b0 : B;
    for (size_t h = 0; h < H; ++h)
      for (size_t t = 0; t < nb; ++t) sc[h * B + t] = qb[h];
    for (size_t s = 0; s < p.n_k_streams; ++s) {
      if (p.k_jobs[s].empty()) continue;
      attn::BlockRows(a.k_streams[s], b0, nb, d, scratch, rows);
      const auto& jobs = p.k_jobs[s];
      for (size_t j = 0; j < jobs.size(); j += attn::kTileJobs) {
        const float* qs[attn::kTileJobs];
        float* ss[attn::kTileJobs];
        const size_t n = jobs.size() - j < attn::kTileJobs ? jobs.size() - j : attn::kTileJobs;
        for (size_t u = 0; u < n; ++u) qs[u] = qv + jobs[j + u].vec * d, ss[u] = sc + jobs[j + u].head * B;
        attn::ScoresUpTo<attn::kTileJobs>(n, qs, rows, nb, d, ss);
      }
    }
    for (size_t h = 0; h < H; ++h) {
      float bs;
      const float f = attn::Softmax(sc + h * B, nb, m[h], l[h], &bs);
      if (f != 1.f) scale_head(h, f);
      mass[h] = mass[h] * f + bs;
    }
    for (size_t s = 0; s < p.n_v_streams; ++s) {
      if (p.v_jobs[s].empty()) continue;
      attn::BlockRows(a.v_streams[s], b0, nb, d, scratch, rows);
      const auto& jobs = p.v_jobs[s];
      for (size_t j = 0; j < jobs.size(); j += attn::kTileJobs) {
        const float* ps[attn::kTileJobs];
        float* accs[attn::kTileJobs];
        const size_t n = jobs.size() - j < attn::kTileJobs ? jobs.size() - j : attn::kTileJobs;
        for (size_t u = 0; u < n; ++u) ps[u] = sc + jobs[j + u].head * B, accs[u] = acc + jobs[j + u].vec * d;
        attn::AccumulateUpTo<attn::kTileJobs>(n, ps, rows, nb, d, accs);
      }
    }
  }
  // Output: direct accumulator, plus the mapped reference accumulators and
  // the bias weighted by the body's probability mass, over the softmax sum.
  for (size_t h = 0; h < H; ++h) {
    float* o = a.out + h * d;
    for (size_t i = 0; i < d; ++i) o[i] = acc[h * d + i];
    const auto& vs = p.v[h / G];
    if (vs.rebuilt) {
      for (const auto& ra : p.ref_accs[h]) attn::MapAdd(acc + ra.acc * d, vs.weight + ra.ref * d * d, d, o);
      for (size_t i = 0; i < d; ++i) o[i] += mass[h] * vs.bias[i];
    }
    attn::Scale(o, d, 1.f / l[h]);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace headrecon
HWY_AFTER_NAMESPACE();

#endif  // HEADRECON_CPU_ATTENTION_INL_H_
