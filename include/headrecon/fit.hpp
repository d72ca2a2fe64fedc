#pragma once
/// @file fit.hpp
/// Ridge / OLS linear maps with intercept, solved from Moments alone:
/// W = (Cxx + λ·diag(Cxx))⁻¹ Cxy, b = ȳ − Wᵀx̄ over centered co-moments (the ridge
/// of standardized references). Cholesky first; an ill-conditioned or singular system falls back to a truncated
/// eigendecomposition (the SVD of the symmetric Gram) and says so.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include "headrecon/detail/lapack.hpp"
#include "headrecon/error.hpp"
#include "headrecon/moments.hpp"

namespace headrecon {

/// How the ridge penalty λ is chosen. λ is relative: the fit standardizes the
/// references, so the absolute penalty is λ · diag(Cxx) (each reference's
/// own co-moment) and one value suits activations of any scale.
enum class RidgeMode : std::uint8_t {
  fixed,  ///< use FitOptions::lambda (0 = ordinary least squares)
  gcv,    ///< minimize generalized cross-validation over a log grid (training data only)
};

struct FitOptions {
  RidgeMode ridge = RidgeMode::gcv;
  double lambda = 0.0;  ///< relative λ for RidgeMode::fixed
  /// Directions of the standardized reference covariance (the correlation
  /// matrix) with eigenvalue below min_rcond · (largest eigenvalue) are treated as zero: float accumulation
  /// cannot resolve them, and inverting them only amplifies noise. A Cholesky
  /// solve whose reciprocal condition estimate falls below it is replaced by
  /// the truncated eigen solve.
  double min_rcond = 1e-6;
};

/// How a map was solved.
enum class SolveMethod : std::uint8_t {
  cholesky,        ///< fixed λ, (Cxx + λI) well conditioned
  gcv,             ///< λ chosen by GCV, solved by the (truncated) eigendecomposition
  eigen_fallback,  ///< fixed λ, but Cholesky failed or was ill-conditioned: truncated eigen solve
};

/// "cholesky", "gcv" or "eigen-fallback".
constexpr const char* solve_method_name(SolveMethod m) {
  return m == SolveMethod::cholesky ? "cholesky" : m == SolveMethod::gcv ? "gcv" : "eigen-fallback";
}

/// y ≈ Wᵀx + b for x of in_dim and y of out_dim components.
struct LinearMap {
  std::size_t in_dim = 0, out_dim = 0;
  std::vector<double> weight;  ///< row-major [in_dim, out_dim]
  std::vector<double> bias;    ///< [out_dim]
  double lambda = 0.0;         ///< relative λ actually used
  SolveMethod method = SolveMethod::cholesky;
  std::size_t rank = 0;        ///< numerical rank of Cxx (in_dim when full)
  bool rank_deficient() const { return rank < in_dim; }
};

/// R² of a map on a set of statistics (training or held-out).
struct R2Score {
  std::vector<double> per_dim;  ///< 1 − SSE_j/SST_j; a constant dimension scores 1 if predicted exactly, else 0 (as sklearn)
  double mean = 0.0;            ///< unweighted mean over dimensions, clipped at −1 (the paper's R²)
  double weighted = 0.0;        ///< variance-weighted: 1 − ΣSSE/ΣSST
  std::uint64_t count = 0;      ///< tokens scored
};

namespace detail {
/// Row-major sub-matrix M[rows, cols] of a p×p row-major matrix.
inline std::vector<double> gather(const std::vector<double>& m, std::size_t p,
                                  const std::vector<std::size_t>& rows,
                                  const std::vector<std::size_t>& cols) {
  std::vector<double> out(rows.size() * cols.size());
  for (std::size_t a = 0; a < rows.size(); ++a)
    for (std::size_t b = 0; b < cols.size(); ++b) out[a * cols.size() + b] = m[rows[a] * p + cols[b]];
  return out;
}

inline void check_columns(const Moments& m, const std::vector<std::size_t>& x,
                          const std::vector<std::size_t>& y) {
  if (x.empty() || y.empty()) fail("fit: empty reference or target column set");
  for (std::size_t c : x)
    if (c >= m.dim()) fail("fit: reference column ", c, " is outside statistics of dim ", m.dim());
  for (std::size_t c : y)
    if (c >= m.dim()) fail("fit: target column ", c, " is outside statistics of dim ", m.dim());
}

/// Eigendecomposition of a symmetric k×k row-major matrix: eigenvalues
/// ascending in s, eigenvectors as columns of v (row-major k×k).
inline void eigh(std::vector<double> a, std::size_t k, std::vector<double>& s, std::vector<double>& v) {
  const int n = int(k);
  s.assign(k, 0.0);
  int info = 0, lwork = -1, liwork = -1, iwq = 0;
  double wq = 0;
  // Row-major symmetric == column-major symmetric; eigenvectors come back in
  // columns of the column-major array, i.e. rows of the row-major view.
  dsyevd_("V", "U", &n, a.data(), &n, s.data(), &wq, &lwork, &iwq, &liwork, &info);
  lwork = int(wq);
  liwork = iwq;
  std::vector<double> work(std::size_t(std::max(lwork, 1)));
  std::vector<int> iwork(std::size_t(std::max(liwork, 1)));
  dsyevd_("V", "U", &n, a.data(), &n, s.data(), work.data(), &lwork, iwork.data(), &liwork, &info);
  if (info != 0) fail("fit: eigendecomposition failed to converge (LAPACK dsyevd info ", info, ")");
  v.assign(k * k, 0.0);
  for (std::size_t i = 0; i < k; ++i)  // column-major eigenvector i is a[i*k .. i*k+k)
    for (std::size_t r = 0; r < k; ++r) v[r * k + i] = a[i * k + r];
}

/// W = V diag(f) Vᵀ Cxy given g = Vᵀ Cxy (k×d), all row-major.
inline std::vector<double> eigen_solution(const std::vector<double>& v, const std::vector<double>& g,
                                          const std::vector<double>& f, std::size_t k, std::size_t d) {
  std::vector<double> fg(k * d), w(k * d, 0.0);
  for (std::size_t i = 0; i < k; ++i)
    for (std::size_t j = 0; j < d; ++j) fg[i * d + j] = f[i] * g[i * d + j];
  gemm_rm(false, false, int(k), int(d), int(k), 1.0, v.data(), int(k), fg.data(), int(d), 0.0, w.data(),
          int(d));
  return w;
}
}  // namespace detail

/// Fits y_cols ≈ Wᵀ x_cols + b from training statistics. The references are
/// standardized first (each divided by its standard deviation), so the ridge
/// penalty λ·diag(Cxx) and the eigen truncation see every reference at the
/// same scale: rescaling a reference changes its row of W, not the fit.
/// Never returns a non-finite map: singular references fall back to the
/// truncated eigen solve (LinearMap::method and LinearMap::rank say so);
/// constant references get zero weight (all constant: W = 0, b = ȳ). Throws
/// Error with fewer than 2 training tokens.
inline LinearMap fit_ridge(const Moments& train, const std::vector<std::size_t>& x_cols,
                           const std::vector<std::size_t>& y_cols, const FitOptions& opt = {}) {
  detail::check_columns(train, x_cols, y_cols);
  if (train.count() < 2) detail::fail("fit: need at least 2 training tokens, have ", train.count());
  if (!(opt.lambda >= 0.0) || !std::isfinite(opt.lambda))
    detail::fail("fit: ridge lambda must be finite and >= 0, got ", opt.lambda);
  const std::size_t k_all = x_cols.size(), d = y_cols.size(), p = train.dim();
  const auto& m2 = train.comoment();

  LinearMap map;
  map.in_dim = k_all;
  map.out_dim = d;
  map.weight.assign(k_all * d, 0.0);
  // Standardize: active (non-constant) references divided by their std.
  std::vector<std::size_t> act;   // positions in x_cols of non-constant references
  std::vector<double> sd;         // their sqrt(co-moment diagonal)
  for (std::size_t i = 0; i < k_all; ++i) {
    const double v = m2[x_cols[i] * p + x_cols[i]];
    if (v > 0.0) act.push_back(i), sd.push_back(std::sqrt(v));
  }
  const std::size_t k = act.size();
  std::vector<std::size_t> ax(k);
  for (std::size_t i = 0; i < k; ++i) ax[i] = x_cols[act[i]];
  std::vector<double> cxx = detail::gather(m2, p, ax, ax);
  std::vector<double> cxy = detail::gather(m2, p, ax, y_cols);
  for (std::size_t i = 0; i < k; ++i) {
    for (std::size_t j = 0; j < k; ++j) cxx[i * k + j] /= sd[i] * sd[j];
    for (std::size_t j = 0; j < d; ++j) cxy[i * d + j] /= sd[i];
  }
  std::vector<double> wt(k * d, 0.0);  // weights of the standardized references

  if (k > 0 && opt.ridge == RidgeMode::fixed) {
    // Cholesky of C̃xx + λI, accepted when its condition estimate is good enough.
    const double lam = opt.lambda;
    std::vector<double> a = cxx;
    for (std::size_t i = 0; i < k; ++i) a[i * k + i] += lam;
    const int n = int(k);
    int info = 0;
    std::vector<double> work(3 * k);
    double anorm = dlansy_("1", "U", &n, a.data(), &n, work.data()), rcond = 0.0;
    std::vector<int> iwork(k);
    dpotrf_("U", &n, a.data(), &n, &info);
    if (info == 0) dpocon_("U", &n, a.data(), &n, &anorm, &rcond, work.data(), iwork.data(), &info);
    if (info == 0 && rcond >= opt.min_rcond) {
      // Row-major C̃xy (k×d) is column-major d×k; solve on its transpose copy.
      std::vector<double> b(k * d);
      for (std::size_t i = 0; i < k; ++i)
        for (std::size_t j = 0; j < d; ++j) b[j * k + i] = cxy[i * d + j];
      const int nrhs = int(d);
      dpotrs_("U", &n, &nrhs, a.data(), &n, b.data(), &n, &info);
      if (info != 0) detail::fail("fit: Cholesky solve failed (LAPACK dpotrs info ", info, ")");
      for (std::size_t i = 0; i < k; ++i)
        for (std::size_t j = 0; j < d; ++j) wt[i * d + j] = b[j * k + i];
      map.lambda = opt.lambda;
      map.method = SolveMethod::cholesky;
      map.rank = k;
    } else {
      map.method = SolveMethod::eigen_fallback;  // solved below
    }
  } else {
    map.method = opt.ridge == RidgeMode::gcv ? SolveMethod::gcv : SolveMethod::eigen_fallback;
  }

  if (k > 0 && map.method != SolveMethod::cholesky) {
    std::vector<double> s, v;
    detail::eigh(cxx, k, s, v);
    const double smax = std::max(s.back(), 0.0);
    const double tol = opt.min_rcond * smax;
    std::vector<double> g(k * d, 0.0);  // Vᵀ C̃xy
    detail::gemm_rm(true, false, int(k), int(d), int(k), 1.0, v.data(), int(k), cxy.data(), int(d), 0.0,
                    g.data(), int(d));
    std::vector<double> gnorm(k, 0.0);
    std::size_t rank = 0;
    for (std::size_t i = 0; i < k; ++i) {
      for (std::size_t j = 0; j < d; ++j) gnorm[i] += g[i * d + j] * g[i * d + j];
      rank += s[i] > tol;
    }
    double lam = opt.lambda;
    if (opt.ridge == RidgeMode::gcv) {
      // GCV(λ) = n·RSS(λ) / (n − 1 − df(λ))², RSS and df from the eigenvalues.
      double ysst = 0.0;
      for (std::size_t j = 0; j < d; ++j) ysst += m2[y_cols[j] * p + y_cols[j]];
      const double n = double(train.count());
      double best = std::numeric_limits<double>::infinity();
      lam = 1e2;
      for (int e = -1; e <= 30; ++e) {
        const double lr = e < 0 ? 0.0 : std::pow(10.0, -8.0 + double(e) / 3.0);
        double rss = ysst, df = 0.0;
        for (std::size_t i = 0; i < k; ++i) {
          if (s[i] <= tol) continue;
          const double den = s[i] + lr;
          rss -= gnorm[i] * (s[i] + 2.0 * lr) / (den * den);
          df += s[i] / den;
        }
        const double resid_df = n - 1.0 - df;
        if (resid_df <= 0.0) continue;
        const double gcv = n * std::max(rss, 0.0) / (resid_df * resid_df);
        if (gcv < best) {
          best = gcv;
          lam = lr;
        }
      }
    }
    std::vector<double> f(k, 0.0);
    for (std::size_t i = 0; i < k; ++i)
      if (s[i] > tol) f[i] = 1.0 / (s[i] + lam);
    wt = detail::eigen_solution(v, g, f, k, d);
    map.lambda = lam;
    map.rank = rank;
  }
  if (k == 0) map.rank = 0;  // every reference constant: W = 0, b = ȳ
  for (std::size_t i = 0; i < k; ++i)
    for (std::size_t j = 0; j < d; ++j) map.weight[act[i] * d + j] = wt[i * d + j] / sd[i];
  map.bias.assign(d, 0.0);
  const auto& mu = train.mean();
  for (std::size_t j = 0; j < d; ++j) {
    double acc = mu[y_cols[j]];
    for (std::size_t i = 0; i < k_all; ++i) acc -= map.weight[i * d + j] * mu[x_cols[i]];
    map.bias[j] = acc;
  }
  for (double w : map.weight)
    if (!std::isfinite(w)) detail::fail("fit: internal error, non-finite weight (please report)");
  for (double b : map.bias)
    if (!std::isfinite(b)) detail::fail("fit: internal error, non-finite bias (please report)");
  return map;
}

/// R² of `map` on the tokens summarized by `m` (training or held-out
/// statistics of the same columns), from moments alone. Throws Error when m
/// has no tokens.
inline R2Score score_r2(const Moments& m, const std::vector<std::size_t>& x_cols,
                        const std::vector<std::size_t>& y_cols, const LinearMap& map) {
  detail::check_columns(m, x_cols, y_cols);
  const std::size_t k = x_cols.size(), d = y_cols.size(), p = m.dim();
  if (map.in_dim != k || map.out_dim != d)
    detail::fail("score_r2: map is ", map.in_dim, "->", map.out_dim, ", columns are ", k, "->", d);
  if (m.count() == 0) detail::fail("score_r2: no tokens to score");
  const auto& m2 = m.comoment();
  const std::vector<double> cxx = detail::gather(m2, p, x_cols, x_cols);
  const std::vector<double> cxy = detail::gather(m2, p, x_cols, y_cols);
  std::vector<double> cw(k * d, 0.0);  // Cxx W
  detail::gemm_rm(false, false, int(k), int(d), int(k), 1.0, cxx.data(), int(k), map.weight.data(), int(d),
                  0.0, cw.data(), int(d));
  const auto& mu = m.mean();
  const double n = double(m.count());
  R2Score r;
  r.count = m.count();
  r.per_dim.resize(d);
  double sse_sum = 0.0, sst_sum = 0.0, mean_sum = 0.0;
  for (std::size_t j = 0; j < d; ++j) {
    double cross = 0.0, quad = 0.0, pred_mean = map.bias[j];
    for (std::size_t i = 0; i < k; ++i) {
      const double w = map.weight[i * d + j];
      cross += w * cxy[i * d + j];
      quad += w * cw[i * d + j];
      pred_mean += w * mu[x_cols[i]];
    }
    const double sst = m2[y_cols[j] * p + y_cols[j]];
    const double bias_err = mu[y_cols[j]] - pred_mean;
    const double sse = std::max(sst - 2.0 * cross + quad, 0.0) + n * bias_err * bias_err;
    double r2;
    if (sst > 0.0) {
      r2 = 1.0 - sse / sst;
    } else {
      r2 = sse <= 1e-12 * n * (1.0 + mu[y_cols[j]] * mu[y_cols[j]]) ? 1.0 : 0.0;
    }
    r.per_dim[j] = r2;
    mean_sum += r2;
    sse_sum += sse;
    sst_sum += sst;
  }
  r.mean = std::max(mean_sum / double(d), -1.0);
  r.weighted = sst_sum > 0.0 ? 1.0 - sse_sum / sst_sum : (sse_sum <= 0.0 ? 1.0 : 0.0);
  return r;
}

/// Σ_t e_t e_tᵀ of the residuals e_t = y_t − (Wᵀx_t + b) over the tokens summarized
/// by `m`, from moments alone: row-major d×d (d = y_cols.size()). Divide by
/// m.count() for the residual second moment.
inline std::vector<double> residual_comoment(const Moments& m, const std::vector<std::size_t>& x_cols,
                                             const std::vector<std::size_t>& y_cols, const LinearMap& map) {
  detail::check_columns(m, x_cols, y_cols);
  const std::size_t k = x_cols.size(), d = y_cols.size(), p = m.dim();
  if (map.in_dim != k || map.out_dim != d)
    detail::fail("residual_comoment: map is ", map.in_dim, "->", map.out_dim, ", columns are ", k, "->", d);
  const auto& m2 = m.comoment();
  const std::vector<double> cxx = detail::gather(m2, p, x_cols, x_cols);
  const std::vector<double> cxy = detail::gather(m2, p, x_cols, y_cols);
  std::vector<double> e = detail::gather(m2, p, y_cols, y_cols);
  std::vector<double> cw(k * d, 0.0), wcw(d * d, 0.0), wcxy(d * d, 0.0);
  detail::gemm_rm(false, false, int(k), int(d), int(k), 1.0, cxx.data(), int(k), map.weight.data(), int(d), 0.0,
                  cw.data(), int(d));
  detail::gemm_rm(true, false, int(d), int(d), int(k), 1.0, map.weight.data(), int(d), cw.data(), int(d), 0.0,
                  wcw.data(), int(d));
  detail::gemm_rm(true, false, int(d), int(d), int(k), 1.0, map.weight.data(), int(d), cxy.data(), int(d), 0.0,
                  wcxy.data(), int(d));
  const auto& mu = m.mean();
  std::vector<double> beta(d);  // mean residual
  for (std::size_t j = 0; j < d; ++j) {
    double pred = map.bias[j];
    for (std::size_t i = 0; i < k; ++i) pred += map.weight[i * d + j] * mu[x_cols[i]];
    beta[j] = mu[y_cols[j]] - pred;
  }
  const double n = double(m.count());
  for (std::size_t i = 0; i < d; ++i)
    for (std::size_t j = 0; j < d; ++j)
      e[i * d + j] += wcw[i * d + j] - wcxy[i * d + j] - wcxy[j * d + i] + n * beta[i] * beta[j];
  return e;
}

/// tr(G E) / n: the mean of eᵀGe over n tokens whose residual co-moment is E
/// (both d×d row-major, G symmetric).
inline double metric_trace(const std::vector<double>& g, const std::vector<double>& e, double n) {
  if (g.size() != e.size()) detail::fail("metric_trace: metric has ", g.size(), " entries, residual ", e.size());
  double s = 0.0;
  for (std::size_t i = 0; i < g.size(); ++i) s += g[i] * e[i];
  return n > 0 ? s / n : 0.0;
}

/// Column indices of the heads `blocks` (each `d` consecutive columns) in order.
inline std::vector<std::size_t> head_columns(const std::vector<std::size_t>& blocks, std::size_t d) {
  std::vector<std::size_t> cols;
  cols.reserve(blocks.size() * d);
  for (std::size_t b : blocks)
    for (std::size_t i = 0; i < d; ++i) cols.push_back(b * d + i);
  return cols;
}

}  // namespace headrecon
