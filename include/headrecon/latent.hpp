#pragma once
/// @file latent.hpp
/// Latent and hybrid references. A layer's cache (one kind) holds some of its
/// heads exactly and m latent streams z = Pᵀ x (x = the layer's heads
/// concatenated, P = [n_heads·d, m·d]); every other head is a linear map of
/// the stored streams, so the absorbed attention kernels run it unchanged (a
/// latent stream is d components, like a head).
///
/// - latent: no head kept; the streams are the top m·d principal directions
///   of the layer's heads (joint low rank).
/// - hybrid: k heads kept exact plus the top m·d principal directions of the
///   other heads' residual after regressing them on the kept heads (shared
///   plus low-rank residual, as LRKV does in training, here after training);
///   m = 0 is plain same-layer reconstruction, k = 0 the latent case.
///
/// Directions are principal in the loss metric: with a metric G_h per head
/// (loss_metric.hpp) those of M^½ Σ M^½ (M = blockdiag G_h), which minimize
/// Σ_h E[eᵀ G_h e] of the truncation; without one each head is weighed by
/// 1 / its variance (the loss is then Σ_h (1 − weighted R²)). Kept heads are
/// chosen by forward selection on the same loss. The maps are refitted by
/// ridge (fit.hpp) on the stored streams; everything comes from the
/// co-moments already accumulated (no second pass over the tokens), and every
/// reported loss and R² is on the held-out split when there is one.
///
/// select_latent_model() allocates a whole-model budget of stored streams
/// across layers and kinds exactly (dynamic programming over the per-layer
/// losses of every stream count).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "headrecon/blas_threads.hpp"
#include "headrecon/calibrate.hpp"
#include "headrecon/detail/lapack.hpp"
#include "headrecon/fit.hpp"
#include "headrecon/head_moments.hpp"
#include "headrecon/loss_metric.hpp"
#include "headrecon/parallel.hpp"
#include "headrecon/plan.hpp"
#include "headrecon/select/budget.hpp"

namespace headrecon {

/// One (kind, layer) fitted with `kept` heads exact and latent streams.
struct LatentLayerFit {
  std::vector<std::int32_t> kept;      ///< heads cached exactly (ascending)
  std::vector<LatentStream> latent;    ///< the layer's latent streams
  std::vector<TargetMap> targets;      ///< every other head; refs = kept heads, then latent {layer, n_heads + j}
  std::vector<TargetReport> report;    ///< one per target
  double loss = 0.0;  ///< Σ over targets of the held-out E[eᵀGe] (without a metric: Σ 1 − weighted R²)
  std::size_t streams() const { return kept.size() + latent.size(); }
};

namespace detail {
/// M^½ of a symmetric PSD d×d row-major matrix (negative eigenvalues clipped).
inline std::vector<double> psd_sqrt(const double* g, std::size_t d) {
  std::vector<double> s, v;
  eigh(std::vector<double>(g, g + d * d), d, s, v);
  std::vector<double> out(d * d, 0.0);
  for (std::size_t k = 0; k < d; ++k) {
    const double r = std::sqrt(std::max(s[k], 0.0));
    if (r == 0.0) continue;
    for (std::size_t i = 0; i < d; ++i)
      for (std::size_t j = 0; j < d; ++j) out[i * d + j] += r * v[i * d + k] * v[j * d + k];
  }
  return out;
}

/// Moments of y = Tᵀ x_cols (T row-major [cols.size(), q]) from those of x.
inline Moments transform_moments(const Moments& m, const std::vector<std::size_t>& cols, const std::vector<double>& t,
                                 std::size_t q) {
  const std::size_t p = cols.size();
  const std::vector<double> s = gather(m.comoment(), m.dim(), cols, cols);
  std::vector<double> st(p * q, 0.0), m2(q * q, 0.0), mean(q, 0.0);
  gemm_rm(false, false, int(p), int(q), int(p), 1.0, s.data(), int(p), t.data(), int(q), 0.0, st.data(), int(q));
  gemm_rm(true, false, int(q), int(q), int(p), 1.0, t.data(), int(q), st.data(), int(q), 0.0, m2.data(), int(q));
  for (std::size_t i = 0; i < q; ++i)  // exact symmetry
    for (std::size_t j = 0; j < i; ++j) m2[i * q + j] = m2[j * q + i] = 0.5 * (m2[i * q + j] + m2[j * q + i]);
  for (std::size_t i = 0; i < p; ++i)
    for (std::size_t j = 0; j < q; ++j) mean[j] += t[i * q + j] * m.mean()[cols[i]];
  return Moments::from_parts(m.count(), std::move(mean), std::move(m2));
}

/// Σ_T|K = C_TT − C_TK C_KK⁺ C_KT of a covariance c (n×n row-major) and, in b,
/// the regression B = C_TK C_KK⁺ ([|T|, |K|]). An empty K gives C_TT, B empty.
inline std::vector<double> conditional_cov(const std::vector<double>& c, std::size_t n, const std::vector<std::size_t>& kc,
                                           const std::vector<std::size_t>& tc, std::vector<double>* b = nullptr) {
  std::vector<double> out = gather(c, n, tc, tc);
  const std::size_t nk = kc.size(), nt = tc.size();
  if (nk == 0) {
    if (b) b->clear();
    return out;
  }
  std::vector<double> s, v;
  eigh(gather(c, n, kc, kc), nk, s, v);
  const double tol = 1e-10 * std::max(s.back(), 0.0);
  const std::vector<double> ctk = gather(c, n, tc, kc);  // [nt, nk]
  std::vector<double> g(nt * nk, 0.0), bb(nt * nk, 0.0);
  gemm_rm(false, false, int(nt), int(nk), int(nk), 1.0, ctk.data(), int(nk), v.data(), int(nk), 0.0, g.data(), int(nk));
  for (std::size_t i = 0; i < nt; ++i)  // g ← C_TK V diag(1/s)
    for (std::size_t k = 0; k < nk; ++k) g[i * nk + k] = s[k] > tol ? g[i * nk + k] / s[k] : 0.0;
  gemm_rm(false, true, int(nt), int(nk), int(nk), 1.0, g.data(), int(nk), v.data(), int(nk), 0.0, bb.data(), int(nk));
  std::vector<double> corr(nt * nt, 0.0);  // B C_KT
  gemm_rm(false, true, int(nt), int(nt), int(nk), 1.0, bb.data(), int(nk), ctk.data(), int(nk), 0.0, corr.data(), int(nt));
  for (std::size_t i = 0; i < nt * nt; ++i) out[i] -= corr[i];
  if (b) *b = std::move(bb);
  return out;
}

/// A target's map, report and loss (fit_stream_target()).
struct StreamTargetFit {
  TargetMap map;
  TargetReport report;
  double loss = 0.0;  ///< held-out (else in-sample) E[eᵀGe]; 0 without a metric
};

/// Ridge map of columns y0..y0+d−1 of `train` (transformed moments) on columns
/// `x` (the streams `refs`), scored on `held` (null: in-sample), with the loss
/// under `metric` when given; `who` names the caller if a map exceeds float range.
inline StreamTargetFit fit_stream_target(const Moments& train, const Moments* held, const std::vector<std::size_t>& x,
                                         std::size_t y0, std::size_t d, HeadId target, const std::vector<HeadId>& refs,
                                         const FitOptions& fit, const char* who, Kind kind,
                                         const std::vector<double>* metric = nullptr) {
  std::vector<std::size_t> y(d);
  for (std::size_t i = 0; i < d; ++i) y[i] = y0 + i;
  const LinearMap map = fit_ridge(train, x, y, fit);
  const R2Score in = score_r2(train, x, y, map);
  const R2Score ho = held ? score_r2(*held, x, y, map) : in;
  StreamTargetFit out;
  if (metric) {
    const Moments& side = held ? *held : train;
    out.loss = metric_trace(*metric, residual_comoment(side, x, y, map), double(side.count()));
  }
  TargetMap& tm = out.map;
  tm.target = target;
  tm.refs = std::vector<HeadId>(refs);  // (copy-assignment trips a GCC 12 -Wnonnull false positive)
  tm.weight.assign(map.weight.begin(), map.weight.end());
  tm.bias.assign(map.bias.begin(), map.bias.end());
  for (const std::vector<float>* v : {&tm.weight, &tm.bias})
    for (float f : *v)
      if (!std::isfinite(f))
        fail(who, ": map of ", kind_name(kind), " head ", target.layer, ".", target.head, " outside float range");
  tm.r2_heldout = float(ho.mean);
  out.report = {target, refs, ho.mean, in.mean, ho.weighted, held != nullptr, map.lambda, map.method, map.rank,
                map.in_dim};
  return out;
}
}  // namespace detail

/// Fits `layer` of `stats` with `n_kept` heads kept exact and `n_latent`
/// latent streams (n_kept + n_latent >= 1, n_latent <= heads not kept).
/// `metric` (null: variance-weighted) gives each head's loss metric; kept
/// heads are chosen by forward selection on the loss of the others.
inline LatentLayerFit fit_latent_layer(const HeadMoments& stats, const HeadMetrics* metric, Kind kind,
                                       std::int32_t layer, std::size_t n_kept, std::size_t n_latent,
                                       const FitOptions& fit = {}) {
  const std::size_t H = std::size_t(stats.n_heads()), d = std::size_t(stats.head_dim()), p = H * d;
  if (layer < 0 || layer >= stats.n_layers()) detail::fail("latent: layer ", layer, " of ", stats.n_layers());
  if (n_kept + n_latent == 0) detail::fail("latent: layer ", layer, " would store nothing (keep a head or a latent stream)");
  if (n_kept > H || n_latent > H - n_kept)
    detail::fail("latent: layer ", layer, ": ", n_kept, " kept heads and ", n_latent, " latent streams for ", H,
                 " heads (at most one latent stream per rebuilt head)");
  const ScopedBlasThreads one_thread(1);
  const SplitMoments& g = stats.group(HeadId{layer, 0});
  const bool heldout = g.heldout.count() >= 2;
  if (g.train.count() < 2) detail::fail("latent: need at least 2 training tokens, have ", g.train.count());
  std::vector<std::size_t> cols;  // the layer's p columns in the group
  for (std::size_t h = 0; h < H; ++h)
    for (std::size_t i = 0; i < d; ++i) cols.push_back(stats.column(HeadId{layer, std::int32_t(h)}) + i);
  std::vector<std::size_t> all(p);
  for (std::size_t i = 0; i < p; ++i) all[i] = i;
  std::vector<double> c = detail::gather(g.train.comoment(), g.train.dim(), cols, cols);
  for (double& x : c) x /= double(g.train.count());

  // Per-head metric G_h and its square root.
  std::vector<std::vector<double>> gm(H), gs(H);
  for (std::size_t h = 0; h < H; ++h) {
    if (metric) {
      const double* m = metric->at(HeadId{layer, std::int32_t(h)});
      gm[h].assign(m, m + d * d);
    } else {
      double tr = 0.0;
      for (std::size_t i = 0; i < d; ++i) tr += c[(h * d + i) * p + h * d + i];
      gm[h].assign(d * d, 0.0);
      for (std::size_t i = 0; i < d; ++i) gm[h][i * d + i] = tr > 0.0 ? 1.0 / tr : 1.0;
    }
    gs[h] = detail::psd_sqrt(gm[h].data(), d);
  }
  auto head_cols = [&](const std::vector<std::int32_t>& hs) {
    std::vector<std::size_t> o;
    for (std::int32_t h : hs)
      for (std::size_t i = 0; i < d; ++i) o.push_back(std::size_t(h) * d + i);
    return o;
  };
  auto others = [&](const std::vector<std::int32_t>& kept) {
    std::vector<std::int32_t> o;
    for (std::int32_t h = 0; h < std::int32_t(H); ++h)
      if (std::find(kept.begin(), kept.end(), h) == kept.end()) o.push_back(h);
    return o;
  };
  // Σ_t tr(G_t Σ_t|K): the loss of rebuilding the others from the kept heads.
  auto cond_loss = [&](const std::vector<std::int32_t>& kept) {
    const auto tg = others(kept);
    const std::vector<double> r = detail::conditional_cov(c, p, head_cols(kept), head_cols(tg));
    const std::size_t nt = tg.size() * d;
    double loss = 0.0;
    for (std::size_t a = 0; a < tg.size(); ++a)
      for (std::size_t i = 0; i < d; ++i)
        for (std::size_t j = 0; j < d; ++j)
          loss += gm[std::size_t(tg[a])][i * d + j] * r[(a * d + j) * nt + a * d + i];
    return loss;
  };

  LatentLayerFit out;
  while (out.kept.size() < n_kept) {
    std::int32_t best = -1;
    double best_loss = std::numeric_limits<double>::infinity();
    for (std::int32_t h : others(out.kept)) {
      auto trial = out.kept;
      trial.push_back(h);
      const double l = cond_loss(trial);
      if (l < best_loss) best_loss = l, best = h;
    }
    out.kept.push_back(best);
  }
  std::sort(out.kept.begin(), out.kept.end());
  const std::vector<std::int32_t> tg = others(out.kept);
  const std::vector<std::size_t> kc = head_cols(out.kept), tc = head_cols(tg);
  const std::size_t nk = kc.size(), nt = tc.size(), r = n_latent * d;

  // Latent directions: top r eigenvectors of M^½ Σ_T|K M^½ (M over the targets).
  std::vector<double> proj(p * r, 0.0);  // P, row-major [p, r]
  if (r > 0) {
    std::vector<double> b;
    const std::vector<double> res = detail::conditional_cov(c, p, kc, tc, &b);
    std::vector<double> mh(nt * nt, 0.0);  // blockdiag G_t^½
    for (std::size_t a = 0; a < tg.size(); ++a)
      for (std::size_t i = 0; i < d; ++i)
        for (std::size_t j = 0; j < d; ++j) mh[(a * d + i) * nt + a * d + j] = gs[std::size_t(tg[a])][i * d + j];
    std::vector<double> tmp(nt * nt, 0.0), s_mat(nt * nt, 0.0);
    detail::gemm_rm(false, false, int(nt), int(nt), int(nt), 1.0, mh.data(), int(nt), res.data(), int(nt), 0.0,
                    tmp.data(), int(nt));
    detail::gemm_rm(false, false, int(nt), int(nt), int(nt), 1.0, tmp.data(), int(nt), mh.data(), int(nt), 0.0,
                    s_mat.data(), int(nt));
    std::vector<double> ev, vec;
    detail::eigh(s_mat, nt, ev, vec);  // ascending
    std::vector<double> u(nt * r);      // top r, descending
    for (std::size_t i = 0; i < nt; ++i)
      for (std::size_t k = 0; k < r; ++k) u[i * r + k] = vec[i * nt + (nt - 1 - k)];
    std::vector<double> at(nt * r, 0.0);  // A_T = M^½ U
    detail::gemm_rm(false, false, int(nt), int(r), int(nt), 1.0, mh.data(), int(nt), u.data(), int(r), 0.0, at.data(),
                    int(r));
    std::vector<double> ak(nk * r, 0.0);  // A_K = −Bᵀ A_T
    if (nk > 0)
      detail::gemm_rm(true, false, int(nk), int(r), int(nt), -1.0, b.data(), int(nk), at.data(), int(r), 0.0, ak.data(),
                      int(r));
    for (std::size_t a = 0; a < nt; ++a)
      for (std::size_t k = 0; k < r; ++k) proj[tc[a] * r + k] = at[a * r + k];
    for (std::size_t a = 0; a < nk; ++a)
      for (std::size_t k = 0; k < r; ++k) proj[kc[a] * r + k] = ak[a * r + k];
    // Scale each stream so that its components vary like the layer's own
    // (mean variance): the map absorbs the scale, and a 16-bit cache stays in range.
    double var_x = 0.0;
    for (std::size_t i = 0; i < p; ++i) var_x += c[i * p + i];
    var_x /= double(p);
    for (std::size_t j = 0; j < n_latent; ++j) {
      double var_z = 0.0;
      for (std::size_t k = j * d; k < (j + 1) * d; ++k) var_z += std::max(ev[nt - 1 - k], 0.0);
      var_z /= double(d);
      const double sc = var_z > 0.0 && var_x > 0.0 ? std::sqrt(var_x / var_z) : 1.0;
      for (std::size_t i = 0; i < p; ++i)
        for (std::size_t k = j * d; k < (j + 1) * d; ++k) proj[i * r + k] *= sc;
    }
    for (std::size_t j = 0; j < n_latent; ++j) {
      LatentStream ls;
      ls.projection.resize(p * d);
      for (std::size_t i = 0; i < p; ++i)
        for (std::size_t k = 0; k < d; ++k) {
          ls.projection[i * d + k] = float(proj[i * r + j * d + k]);
          if (!std::isfinite(ls.projection[i * d + k]))
            detail::fail("latent: ", kind_name(kind), " layer ", layer, ": projection outside float range");
        }
      out.latent.push_back(std::move(ls));
    }
    // The maps see the stored (float) projection.
    for (std::size_t j = 0; j < n_latent; ++j)
      for (std::size_t i = 0; i < p; ++i)
        for (std::size_t k = 0; k < d; ++k) proj[i * r + j * d + k] = double(out.latent[j].projection[i * d + k]);
  }

  // Statistics of [x_K, z, x_T]: T = [E_K | P | E_T], then ridge maps of each target.
  const std::size_t q = nk + r + nt;
  std::vector<double> t(p * q, 0.0);
  for (std::size_t a = 0; a < nk; ++a) t[kc[a] * q + a] = 1.0;
  for (std::size_t i = 0; i < p; ++i)
    for (std::size_t k = 0; k < r; ++k) t[i * q + nk + k] = proj[i * r + k];
  for (std::size_t a = 0; a < nt; ++a) t[tc[a] * q + nk + r + a] = 1.0;
  const Moments train = detail::transform_moments(g.train, cols, t, q);
  const Moments held = heldout ? detail::transform_moments(g.heldout, cols, t, q) : Moments(q);
  std::vector<std::size_t> x(nk + r);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = i;
  std::vector<HeadId> refs;
  for (std::int32_t h : out.kept) refs.push_back({layer, h});
  for (std::size_t j = 0; j < n_latent; ++j) refs.push_back({layer, std::int32_t(H + j)});
  for (std::size_t a = 0; a < tg.size(); ++a) {
    detail::StreamTargetFit f = detail::fit_stream_target(train, heldout ? &held : nullptr, x, nk + r + a * d, d,
                                                          {layer, tg[a]}, refs, fit, "latent", kind,
                                                          &gm[std::size_t(tg[a])]);
    out.targets.push_back(std::move(f.map));
    out.report.push_back(std::move(f.report));
    out.loss += f.loss;  // without a metric G = I / tr Σ: SSE / (n·tr Σ) = 1 − weighted R²
  }
  return out;
}

/// Options of select_latent_model().
struct LatentModelOptions {
  bool hybrid = true;  ///< false: latent only (no head kept exact in a rebuilt layer)
  FitOptions fit;      ///< the maps' ridge
  ParallelFor parallel;  ///< runs the per-layer fits on several threads
};

/// What select_latent_model() chose and fitted.
struct LatentModelResult {
  std::vector<KindPlan> kinds;                    ///< one per KindCosts, same order
  std::vector<std::vector<TargetReport>> reports; ///< per kind, targets layer by layer
  std::size_t cached = 0;                         ///< stored streams per token, all kinds
  double total_cost = 0.0;                        ///< Σ weighted held-out losses of the selection (same-layer streams)
};

/// Latent (or hybrid) references under a whole-model budget of `max_cached`
/// stored streams (heads and latent streams, all fitted kinds): every layer
/// of every kind stores between 1 and n_heads streams; the stream counts and,
/// for hybrid, the split between kept heads and latent streams minimize the
/// sum of the weighted held-out losses exactly (dynamic programming). Costs:
/// KindCosts::metric (null: variance-weighted), weight and layer_weight.
inline LatentModelResult select_latent_model(const std::vector<KindCosts>& kinds, std::size_t max_cached,
                                             const LatentModelOptions& opt = {}) {
  if (kinds.empty()) detail::fail("latent: no kinds");
  const std::int32_t L = kinds[0].stats->n_layers();
  const std::size_t H = std::size_t(kinds[0].stats->n_heads());
  for (const auto& k : kinds)
    if (k.stats->n_layers() != L || std::size_t(k.stats->n_heads()) != H)
      detail::fail("latent: kinds differ in layers or heads");
  const std::size_t G = kinds.size() * std::size_t(L);
  if (max_cached < G)
    detail::fail("latent: a budget of ", max_cached, " streams is below one stream per layer and kind (", G, ")");
  // Candidates per (kind, layer): every (kept, latent) with 1 <= kept + latent < H, and all kept.
  struct Cand {
    std::size_t group, kept, latent;
  };
  std::vector<Cand> cands;
  for (std::size_t gi = 0; gi < G; ++gi)
    for (std::size_t s = 1; s < H; ++s)
      for (std::size_t m = opt.hybrid ? 0 : s; m <= s; ++m)
        if (m <= H - (s - m)) cands.push_back({gi, s - m, m});
  std::vector<LatentLayerFit> fits(cands.size());
  opt.parallel(cands.size(), [&](std::size_t i, std::size_t) {
    const Cand& c = cands[i];
    const KindCosts& k = kinds[c.group / std::size_t(L)];
    fits[i] = fit_latent_layer(*k.stats, k.metric, k.kind, std::int32_t(c.group % std::size_t(L)), c.kept, c.latent,
                               opt.fit);
  });
  // best[g][s]: the candidate index with the least loss storing s streams (H: all kept, loss 0).
  constexpr std::size_t none = std::numeric_limits<std::size_t>::max();
  std::vector<std::vector<std::size_t>> best(G, std::vector<std::size_t>(H + 1, none));
  std::vector<std::vector<double>> cost(G, std::vector<double>(H + 1, std::numeric_limits<double>::infinity()));
  for (std::size_t gi = 0; gi < G; ++gi) cost[gi][H] = 0.0;
  for (std::size_t i = 0; i < cands.size(); ++i) {
    const Cand& c = cands[i];
    const KindCosts& k = kinds[c.group / std::size_t(L)];
    const std::size_t l = c.group % std::size_t(L);
    const double w = k.weight * (k.layer_weight.empty() ? 1.0 : k.layer_weight.at(l));
    const double v = w * fits[i].loss;
    const std::size_t s = c.kept + c.latent;
    if (v < cost[c.group][s]) cost[c.group][s] = v, best[c.group][s] = i;
  }
  // Exact allocation: dp[g][b] = least cost of groups 0..g−1 storing b streams.
  const std::size_t B = std::min(max_cached, G * H);
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<std::vector<double>> dp(G + 1, std::vector<double>(B + 1, inf));
  std::vector<std::vector<std::size_t>> pick(G + 1, std::vector<std::size_t>(B + 1, 0));
  dp[0][0] = 0.0;
  for (std::size_t gi = 0; gi < G; ++gi)
    for (std::size_t b = 0; b <= B; ++b) {
      if (dp[gi][b] == inf) continue;
      for (std::size_t s = 1; s <= H && b + s <= B; ++s) {
        const double v = dp[gi][b] + cost[gi][s];
        if (v < dp[gi + 1][b + s]) dp[gi + 1][b + s] = v, pick[gi + 1][b + s] = s;
      }
    }
  const std::size_t b_best = B;  // every stream of the budget is used (more streams never cost more in-sample)
  if (dp[G][b_best] == inf) detail::fail("latent: no allocation meets the budget of ", max_cached, " streams");
  LatentModelResult res;
  res.total_cost = dp[G][b_best];
  res.cached = b_best;
  res.kinds.resize(kinds.size());
  res.reports.resize(kinds.size());
  for (std::size_t ki = 0; ki < kinds.size(); ++ki) {
    KindPlan& kp = res.kinds[ki];
    kp.kind = kinds[ki].kind;
    kp.n_heads = std::int32_t(H);
    kp.layers.resize(std::size_t(L));
    kp.latent.resize(std::size_t(L));
  }
  std::vector<std::size_t> chosen(G);
  for (std::size_t gi = G, b = b_best; gi > 0; --gi) {
    chosen[gi - 1] = pick[gi][b];
    b -= pick[gi][b];
  }
  for (std::size_t gi = 0; gi < G; ++gi) {
    const std::size_t ki = gi / std::size_t(L), l = gi % std::size_t(L), s = chosen[gi];
    if (s == H) continue;
    LatentLayerFit& f = fits[best[gi][s]];
    res.kinds[ki].layers[l] = std::move(f.targets);
    res.kinds[ki].latent[l] = std::move(f.latent);
    res.reports[ki].insert(res.reports[ki].end(), f.report.begin(), f.report.end());
  }
  return res;
}

/// Refits every target of `res` (from select_latent_model on the same `kinds`)
/// on its layer's stored streams plus those of the `window` earlier layers
/// (their kept heads and latent streams: a stream a later layer can read at no
/// extra storage). The statistics must cover those layers: scope
/// cross_layer_window with a window >= `window`, or cross_layer. Stored bytes do
/// not change; each layer then reads its own streams and the window's. Losses,
/// R² and reports are updated (held-out when there is a split).
inline void refit_with_earlier_layers(LatentModelResult& res, const std::vector<KindCosts>& kinds, std::int32_t window,
                                      const FitOptions& fit = {}, const ParallelFor& parallel = {}) {
  if (window <= 0) return;
  if (res.kinds.size() != kinds.size()) detail::fail("latent refit: ", res.kinds.size(), " kinds fitted, ", kinds.size(), " given");
  const std::int32_t L = kinds[0].stats->n_layers();
  const std::size_t H = std::size_t(kinds[0].stats->n_heads()), d = std::size_t(kinds[0].stats->head_dim());
  for (const auto& k : kinds) {
    const RefScope sc = k.stats->scope();
    if (sc == RefScope::same_layer || (sc == RefScope::cross_layer_window && k.stats->window() < window))
      detail::fail("latent refit: references from ", window, " earlier layers need statistics of those layers "
                   "(a cross-layer window >= ", window, "), have ",
                   sc == RefScope::same_layer ? std::string("same-layer statistics")
                                              : "a window of " + std::to_string(k.stats->window()));
  }
  struct Job {
    std::size_t kind;
    std::int32_t layer;
  };
  std::vector<Job> jobs;
  for (std::size_t ki = 0; ki < kinds.size(); ++ki)
    for (std::int32_t l = 1; l < L; ++l)
      if (!res.kinds[ki].layers[std::size_t(l)].empty()) jobs.push_back({ki, l});
  std::vector<std::vector<TargetReport>> new_reports(jobs.size());
  parallel(jobs.size(), [&](std::size_t ji, std::size_t) {
    const ScopedBlasThreads one_thread(1);
    const std::size_t ki = jobs[ji].kind;
    const std::int32_t l = jobs[ji].layer;
    KindPlan& kp = res.kinds[ki];
    const HeadMoments& st = *kinds[ki].stats;
    const HeadId anchor{l, 0};
    const SplitMoments& g = st.group(anchor);
    const bool heldout = g.heldout.count() >= 2;
    // Streams: the layer's own (kept heads, then latent), then each earlier layer's in the window.
    std::vector<HeadId> refs;
    const std::int32_t l0 = std::max(0, l - window);
    for (std::int32_t src = l; src >= l0; --src) {
      for (std::int32_t h = 0; h < std::int32_t(H); ++h)
        if (!kp.find({src, h})) refs.push_back({src, h});
      for (std::size_t j = 0; j < kp.n_latent(src); ++j) refs.push_back({src, std::int32_t(H + j)});
    }
    // Input columns: every head of layers l0..l in the target's group.
    std::vector<std::size_t> cols;
    for (std::int32_t src = l0; src <= l; ++src)
      for (std::size_t h = 0; h < H; ++h)
        for (std::size_t i = 0; i < d; ++i) cols.push_back(st.column({src, std::int32_t(h)}, anchor) + i);
    auto col_of = [&](std::int32_t layer, std::size_t h) { return (std::size_t(layer - l0) * H + h) * d; };
    auto& targets = kp.layers[std::size_t(l)];
    const std::size_t nin = refs.size() * d, q = nin + targets.size() * d;
    std::vector<double> t(cols.size() * q, 0.0);
    for (std::size_t r = 0; r < refs.size(); ++r) {
      const HeadId id = refs[r];
      if (std::size_t(id.head) < H) {
        for (std::size_t i = 0; i < d; ++i) t[(col_of(id.layer, std::size_t(id.head)) + i) * q + r * d + i] = 1.0;
      } else {
        const auto& P = kp.latent[std::size_t(id.layer)][std::size_t(id.head) - H].projection;
        for (std::size_t i = 0; i < H * d; ++i)
          for (std::size_t k = 0; k < d; ++k) t[(col_of(id.layer, 0) + i) * q + r * d + k] = double(P[i * d + k]);
      }
    }
    for (std::size_t a = 0; a < targets.size(); ++a)
      for (std::size_t i = 0; i < d; ++i)
        t[(col_of(l, std::size_t(targets[a].target.head)) + i) * q + nin + a * d + i] = 1.0;
    const Moments train = detail::transform_moments(g.train, cols, t, q);
    const Moments held = heldout ? detail::transform_moments(g.heldout, cols, t, q) : Moments(q);
    std::vector<std::size_t> x(nin);
    for (std::size_t i = 0; i < nin; ++i) x[i] = i;
    for (std::size_t a = 0; a < targets.size(); ++a) {
      detail::StreamTargetFit f = detail::fit_stream_target(train, heldout ? &held : nullptr, x, nin + a * d, d,
                                                            targets[a].target, refs, fit, "latent refit", kp.kind);
      targets[a] = std::move(f.map);
      new_reports[ji].push_back(std::move(f.report));
    }
  });
  // Reports keep their order (LatentModelResult::total_cost stays the selection's same-layer cost).
  for (std::size_t ji = 0; ji < jobs.size(); ++ji) {
    auto& rep = res.reports[jobs[ji].kind];
    for (const TargetReport& r : new_reports[ji])
      for (TargetReport& old : rep)
        if (old.target == r.target) old = r;
  }
}

}  // namespace headrecon
