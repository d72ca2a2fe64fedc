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
/// candidate lowers the loss.
inline std::vector<HeadId> forward_references(const HeadMoments& stats, HeadId target,
                                              const std::vector<HeadId>& candidates, int k,
                                              const double* metric = nullptr, double lambda = 1e-6) {
  const Moments& m = stats.group(target).train;
  const int d = stats.head_dim();
  const std::size_t p = m.dim(), ud = std::size_t(d);
  const auto& c2 = m.comoment();  // symmetric: row-major = column-major
  const std::size_t y0 = stats.column(target);
  std::vector<double> g;
  if (metric) g.assign(metric, metric + ud * ud);
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
  std::vector<std::size_t> s_cols;           // columns of the chosen references
  std::vector<double> lf;                    // Cholesky factor of C_SS (nS×nS, column-major)
  std::vector<double> zy;                    // L⁻¹ C_Sy (nS×d, column-major)
  std::vector<HeadId> chosen;
  std::vector<bool> used(candidates.size(), false);
  std::vector<double> zc, a, b, xtx, best_zc, best_x, best_la;
  constexpr double redundant = 1e-5;  // relative conditional variance below which a candidate is redundant
  double total = 0.0;                 // tr(G C_yy): gains below a 1e-9 fraction of it are rounding
  for (std::size_t i = 0; i < ud; ++i)
    for (std::size_t j = 0; j < ud; ++j) total += g[i * ud + j] * c2[(y0 + i) * p + y0 + j];
  while (int(chosen.size()) < k) {
    const int ns = int(s_cols.size());
    double best_gain = 1e-9 * total;
    std::size_t best = candidates.size();
    for (std::size_t ci = 0; ci < candidates.size(); ++ci) {
      if (used[ci]) continue;
      const std::size_t c0 = stats.column(candidates[ci]);
      zc.assign(std::size_t(ns) * ud, 0.0);  // C_Sc (nS×d)
      for (int j = 0; j < d; ++j)
        for (int i = 0; i < ns; ++i) zc[std::size_t(i) + std::size_t(j) * std::size_t(ns)] = c2[s_cols[std::size_t(i)] * p + c0 + std::size_t(j)];
      detail::lower_solve(lf, ns, zc, d);
      detail::cross_product(zc, zc, ns, d, a);  // Zcᵀ Zc
      detail::cross_product(zc, zy, ns, d, b);  // Zcᵀ Zy
      for (int j = 0; j < d; ++j)
        for (int i = 0; i < d; ++i) {
          const std::size_t ij = std::size_t(i) + std::size_t(j) * ud;
          a[ij] = (i == j ? diag(c0 + std::size_t(i)) : c2[(c0 + std::size_t(i)) * p + c0 + std::size_t(j)]) - a[ij];
          b[ij] = c2[(c0 + std::size_t(i)) * p + y0 + std::size_t(j)] - b[ij];
        }
      // A candidate (nearly) in the span of the chosen ones adds nothing the
      // float statistics can resolve: skip it (as fit_ridge truncates it).
      double cond_var = 0.0, own_var = 0.0;
      for (int i = 0; i < d; ++i) {
        cond_var += a[std::size_t(i) * (ud + 1)];
        own_var += diag(c0 + std::size_t(i));
      }
      if (!(cond_var > redundant * own_var)) continue;
      if (!detail::cholesky_lower(a, d)) continue;
      detail::lower_solve(a, d, b, d);  // X = La⁻¹ B
      detail::cross_product(b, b, d, d, xtx);
      double gain = 0.0;
      for (std::size_t i = 0; i < ud * ud; ++i) gain += g[i] * xtx[i];
      if (gain > best_gain) {
        best_gain = gain;
        best = ci;
        best_zc = zc;
        best_x = b;
        best_la = a;
      }
    }
    if (best == candidates.size()) break;
    // Extend the factor: L' = [[L, 0], [Zcᵀ, La]], Zy' = [Zy; X].
    const int n2 = ns + d;
    std::vector<double> l2(std::size_t(n2) * std::size_t(n2), 0.0), zy2(std::size_t(n2) * ud, 0.0);
    for (int j = 0; j < ns; ++j)
      for (int i = 0; i < ns; ++i) l2[std::size_t(i) + std::size_t(j) * std::size_t(n2)] = lf[std::size_t(i) + std::size_t(j) * std::size_t(ns)];
    for (int j = 0; j < ns; ++j)
      for (int i = 0; i < d; ++i)  // row ns+i, column j: Zcᵀ(i, j) = Zc(j, i)
        l2[std::size_t(ns + i) + std::size_t(j) * std::size_t(n2)] = best_zc[std::size_t(j) + std::size_t(i) * std::size_t(ns)];
    for (int j = 0; j < d; ++j)
      for (int i = 0; i < d; ++i)
        l2[std::size_t(ns + i) + std::size_t(ns + j) * std::size_t(n2)] = best_la[std::size_t(i) + std::size_t(j) * ud];
    for (int j = 0; j < d; ++j) {
      for (int i = 0; i < ns; ++i) zy2[std::size_t(i) + std::size_t(j) * std::size_t(n2)] = zy[std::size_t(i) + std::size_t(j) * std::size_t(ns)];
      for (int i = 0; i < d; ++i) zy2[std::size_t(ns + i) + std::size_t(j) * std::size_t(n2)] = best_x[std::size_t(i) + std::size_t(j) * ud];
    }
    lf.swap(l2);
    zy.swap(zy2);
    const std::size_t c0 = stats.column(candidates[best]);
    for (int i = 0; i < d; ++i) s_cols.push_back(c0 + std::size_t(i));
    chosen.push_back(candidates[best]);
    used[best] = true;
  }
  return chosen;
}

}  // namespace headrecon
