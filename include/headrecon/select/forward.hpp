#pragma once
/// @file forward.hpp
/// Fast greedy forward selection of a target's references from training
/// statistics: each step adds the candidate that most lowers the loss
/// tr(G E)/n of a near-OLS fit (E the residual co-moment, G a d×d metric),
/// by the block Schur complement - E(S ∪ {c}) = E(S) − Bᵀ A⁻¹ B with
/// A = C_cc|S and B = C_cy|S - so a step costs a triangular solve per
/// candidate instead of a new fit. The ridge λ·diag(C) (relative, tiny by
/// default) only keeps duplicated or constant heads from breaking the
/// Cholesky factors.

#include <cmath>
#include <cstddef>
#include <vector>

#include "headrecon/detail/lapack.hpp"
#include "headrecon/head_moments.hpp"

namespace headrecon {

namespace detail {
/// Column-major Cholesky (lower) in place; false when not positive definite.
inline bool cholesky_lower(std::vector<double>& a, int n) {
  int info = 0;
  dpotrf_("L", &n, a.data(), &n, &info);
  if (info != 0) return false;
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < j; ++i) a[std::size_t(i) + std::size_t(j) * std::size_t(n)] = 0.0;
  return true;
}
/// B (m×n, column-major) := L⁻¹ B for lower-triangular L (m×m, column-major).
inline void lower_solve(const std::vector<double>& l, int m, std::vector<double>& b, int n) {
  if (m == 0 || n == 0) return;
  const double one = 1.0;
  dtrsm_("L", "L", "N", "N", &m, &n, &one, l.data(), &m, b.data(), &m);
}
/// C (n×n) := Xᵀ Y for column-major X, Y (m×n).
inline void cross_product(const std::vector<double>& x, const std::vector<double>& y, int m, int n,
                          std::vector<double>& c) {
  c.assign(std::size_t(n) * std::size_t(n), 0.0);
  if (m == 0) return;
  const double one = 1.0, zero = 0.0;
  dgemm_("T", "N", &n, &n, &m, &one, x.data(), &m, y.data(), &m, &zero, c.data(), &n);
}
}  // namespace detail

/// The R² metric of `target` on the training split: G = diag(n/(d·C_jj)) with
/// C_jj the target's co-moment diagonal, so tr(G E)/n = 1 − (in-sample mean R²)
/// for residual co-moment E. Constant target components weigh 0.
inline std::vector<double> r2_metric(const HeadMoments& stats, HeadId target) {
  const Moments& m = stats.group(target).train;
  const std::size_t d = std::size_t(stats.head_dim()), c0 = stats.column(target), p = m.dim();
  std::vector<double> g(d * d, 0.0);
  for (std::size_t j = 0; j < d; ++j) {
    const double v = m.comoment()[(c0 + j) * p + c0 + j];
    if (v > 0.0) g[j * d + j] = double(m.count()) / (double(d) * v);
  }
  return g;
}

/// Greedy forward selection of up to k references of `target` among
/// `candidates` (each must be allowed by the statistics' scope), ranked by
/// the training-split loss under `metric` (d×d row-major; null: the R²
/// metric). Returns the references in order of choice; stops early when no
/// candidate lowers the loss. Every candidate's conditional blocks A_c, B_c
/// are kept and updated when a reference is added (one gather, gemm and
/// triangular solve over all candidates per step, then d×d work each).
inline std::vector<HeadId> forward_references(const HeadMoments& stats, HeadId target,
                                              const std::vector<HeadId>& candidates, int k,
                                              const double* metric = nullptr, double lambda = 1e-6) {
  const Moments& m = stats.group(target).train;
  const int d = stats.head_dim();
  const std::size_t p = m.dim(), ud = std::size_t(d), dd = ud * ud, nc = candidates.size();
  const auto& c2 = m.comoment();  // symmetric: row-major = column-major
  const std::size_t y0 = stats.column(target);
  std::vector<double> g;
  if (metric) g.assign(metric, metric + dd);
  else g = r2_metric(stats, target);
  for (HeadId c : candidates)
    if (!stats.allowed(target, c))
      detail::fail("forward_references: head (", c.layer, ", ", c.head, ") cannot be a reference of (",
                   target.layer, ", ", target.head, ")");
  // Ridge-regularized co-moment of column i with itself.
  auto diag = [&](std::size_t i) {
    const double v = c2[i * p + i];
    return v > 0.0 ? v * (1.0 + lambda) : 1.0;
  };
  std::vector<std::size_t> col(nc);
  for (std::size_t c = 0; c < nc; ++c) col[c] = stats.column(candidates[c], target);
  // Conditional blocks given the chosen set S, column-major d×d per candidate:
  // A_c = C_cc|S (with the ridge), B_c = C_cy|S.
  std::vector<double> a(nc * dd), b(nc * dd), own(nc, 0.0);
  for (std::size_t c = 0; c < nc; ++c)
    for (std::size_t j = 0; j < ud; ++j)
      for (std::size_t i = 0; i < ud; ++i) {
        a[c * dd + i + j * ud] = i == j ? diag(col[c] + i) : c2[(col[c] + i) * p + col[c] + j];
        b[c * dd + i + j * ud] = c2[(col[c] + i) * p + y0 + j];
        if (i == j) own[c] += a[c * dd + i + j * ud];
      }
  double total = 0.0;  // tr(G C_yy): gains below a 1e-9 fraction of it are rounding
  for (std::size_t i = 0; i < ud; ++i)
    for (std::size_t j = 0; j < ud; ++j) total += g[i * ud + j] * c2[(y0 + i) * p + y0 + j];
  constexpr double redundant = 1e-5;  // relative conditional variance below which a candidate is redundant
  std::vector<std::vector<double>> rows;  // per chosen step: L⁻¹-rows of every candidate, d × (nc·d)
  std::vector<std::size_t> chosen_idx;
  std::vector<HeadId> chosen;
  std::vector<char> used(nc, 0);
  std::vector<double> la(dd), x(dd), xtx(dd), best_la, best_x;
  const int ncd = int(nc * ud);
  while (int(chosen.size()) < k) {
    double best_gain = 1e-9 * total;
    std::size_t best = nc;
    for (std::size_t c = 0; c < nc; ++c) {
      if (used[c]) continue;
      double cond = 0.0;
      for (std::size_t i = 0; i < ud; ++i) cond += a[c * dd + i * (ud + 1)];
      // (Nearly) in the span of the chosen references: nothing the float statistics can resolve.
      if (!(cond > redundant * own[c])) continue;
      la.assign(a.begin() + std::ptrdiff_t(c * dd), a.begin() + std::ptrdiff_t((c + 1) * dd));
      if (!detail::cholesky_lower(la, d)) continue;
      x.assign(b.begin() + std::ptrdiff_t(c * dd), b.begin() + std::ptrdiff_t((c + 1) * dd));
      detail::lower_solve(la, d, x, d);  // X = La⁻¹ B: the gain is tr(G XᵀX)
      detail::cross_product(x, x, d, d, xtx);
      double gain = 0.0;
      for (std::size_t i = 0; i < dd; ++i) gain += g[i] * xtx[i];
      if (gain > best_gain) best_gain = gain, best = c, best_la = la, best_x = x;
    }
    if (best == nc) break;
    used[best] = 1;
    chosen.push_back(candidates[best]);
    chosen_idx.push_back(best);
    if (int(chosen.size()) == k) break;
    // New rows of every candidate: T = La_b⁻¹ (C_{b,all} − Σ_s R_s[:, b]ᵀ R_s).
    std::vector<double> t(ud * nc * ud);
    for (std::size_t c = 0; c < nc; ++c)
      for (std::size_t j = 0; j < ud; ++j)
        for (std::size_t i = 0; i < ud; ++i) t[i + (c * ud + j) * ud] = c2[(col[best] + i) * p + col[c] + j];
    const double one = 1.0, minus = -1.0;
    for (const auto& r : rows)
      dgemm_("T", "N", &d, &ncd, &d, &minus, r.data() + best * dd, &d, r.data(), &d, &one, t.data(), &d);
    dtrsm_("L", "L", "N", "N", &d, &ncd, &one, best_la.data(), &d, t.data(), &d);
    // A_c −= T_cᵀ T_c, B_c −= T_cᵀ X_b.
    for (std::size_t c = 0; c < nc; ++c) {
      if (used[c]) continue;
      const double* tc = t.data() + c * dd;
      dgemm_("T", "N", &d, &d, &d, &minus, tc, &d, tc, &d, &one, a.data() + c * dd, &d);
      dgemm_("T", "N", &d, &d, &d, &minus, tc, &d, best_x.data(), &d, &one, b.data() + c * dd, &d);
    }
    rows.push_back(std::move(t));
  }
  return chosen;
}

}  // namespace headrecon
