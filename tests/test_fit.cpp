// Ridge/OLS maps from moments against explicit data: xtensor-blas lstsq
// (LAPACK gelsd) as the independent implementation, scalar R² and residual
// orthogonality as properties.
#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <vector>
#include <xtensor-blas/xlinalg.hpp>
#include <xtensor/xtensor.hpp>
#include <xtensor/xview.hpp>

#include "headrecon/fit.hpp"

using namespace headrecon;

namespace {
struct Data {
  std::size_t n, kx, dy;
  std::vector<float> rows;  // [n, kx + dy]: x columns then y columns
  std::vector<std::size_t> xc, yc;
};

// y = Wᵀx + b + noise with a planted W.
Data planted(std::size_t n, std::size_t kx, std::size_t dy, double noise, unsigned seed,
             std::vector<double>* w_out = nullptr) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> g(0.0, 1.0);
  std::vector<double> w(kx * dy), b(dy);
  for (auto& v : w) v = g(rng) / std::sqrt(double(kx));
  for (auto& v : b) v = g(rng);
  Data d{n, kx, dy, std::vector<float>(n * (kx + dy)), {}, {}};
  for (std::size_t t = 0; t < n; ++t) {
    float* r = d.rows.data() + t * (kx + dy);
    for (std::size_t i = 0; i < kx; ++i) r[i] = float(2.0 + g(rng));
    for (std::size_t j = 0; j < dy; ++j) {
      double y = b[j] + noise * g(rng);
      for (std::size_t i = 0; i < kx; ++i) y += w[i * dy + j] * r[i];
      r[kx + j] = float(y);
    }
  }
  for (std::size_t i = 0; i < kx; ++i) d.xc.push_back(i);
  for (std::size_t j = 0; j < dy; ++j) d.yc.push_back(kx + j);
  if (w_out) *w_out = w;
  return d;
}

Moments moments_of(const Data& d, std::size_t t0, std::size_t t1) {
  Moments m(d.kx + d.dy);
  m.add_batch(d.rows.data() + t0 * (d.kx + d.dy), t1 - t0, d.kx + d.dy);
  return m;
}

// Scalar R² of the map on rows [t0, t1), sklearn's uniform average.
double scalar_r2(const Data& d, std::size_t t0, std::size_t t1, const LinearMap& map) {
  const std::size_t p = d.kx + d.dy;
  double sum = 0;
  for (std::size_t j = 0; j < d.dy; ++j) {
    double mean = 0;
    for (std::size_t t = t0; t < t1; ++t) mean += d.rows[t * p + d.kx + j];
    mean /= double(t1 - t0);
    double sse = 0, sst = 0;
    for (std::size_t t = t0; t < t1; ++t) {
      double pred = map.bias[j];
      for (std::size_t i = 0; i < d.kx; ++i) pred += map.weight[i * d.dy + j] * d.rows[t * p + i];
      const double y = d.rows[t * p + d.kx + j];
      sse += (y - pred) * (y - pred);
      sst += (y - mean) * (y - mean);
    }
    sum += 1.0 - sse / sst;
  }
  return sum / double(d.dy);
}

// Independent solution: lstsq on [X 1] (gelsd, min-norm).
xt::xtensor<double, 2> lstsq_solution(const Data& d) {
  const std::size_t p = d.kx + d.dy;
  xt::xtensor<double, 2> a = xt::ones<double>({d.n, d.kx + 1}), y = xt::zeros<double>({d.n, d.dy});
  for (std::size_t t = 0; t < d.n; ++t) {
    for (std::size_t i = 0; i < d.kx; ++i) a(t, i) = d.rows[t * p + i];
    for (std::size_t j = 0; j < d.dy; ++j) y(t, j) = d.rows[t * p + d.kx + j];
  }
  return std::get<0>(xt::linalg::lstsq(a, y, 1e-10));
}
}  // namespace

TEST_CASE("OLS from moments recovers a planted map and matches lstsq", "[fit]") {
  std::vector<double> w;
  const Data d = planted(3000, 12, 5, 0.05, 1, &w);
  const Moments m = moments_of(d, 0, d.n);
  FitOptions ols;
  ols.ridge = RidgeMode::fixed;
  const LinearMap map = fit_ridge(m, d.xc, d.yc, ols);
  REQUIRE(map.method == SolveMethod::cholesky);
  REQUIRE(map.rank == 12);
  const auto ref = lstsq_solution(d);
  for (std::size_t i = 0; i < d.kx; ++i)
    for (std::size_t j = 0; j < d.dy; ++j) {
      REQUIRE(map.weight[i * d.dy + j] == Approx(ref(i, j)).margin(1e-4));
      REQUIRE(map.weight[i * d.dy + j] == Approx(w[i * d.dy + j]).margin(0.01));
    }
  for (std::size_t j = 0; j < d.dy; ++j) REQUIRE(map.bias[j] == Approx(ref(d.kx, j)).margin(1e-3));

  // Residuals are orthogonal to every reference column and sum to zero.
  const std::size_t p = d.kx + d.dy;
  for (std::size_t j = 0; j < d.dy; ++j) {
    double rsum = 0, scale = 0;
    std::vector<double> dot(d.kx, 0.0);
    for (std::size_t t = 0; t < d.n; ++t) {
      double pred = map.bias[j];
      for (std::size_t i = 0; i < d.kx; ++i) pred += map.weight[i * d.dy + j] * d.rows[t * p + i];
      const double r = d.rows[t * p + d.kx + j] - pred;
      rsum += r;
      scale += std::fabs(r);
      for (std::size_t i = 0; i < d.kx; ++i) dot[i] += r * (d.rows[t * p + i] - 2.0);
    }
    REQUIRE(std::fabs(rsum) <= 1e-4 * scale);
    for (double v : dot) REQUIRE(std::fabs(v) <= 1e-3 * scale);
  }
}

TEST_CASE("R² from moments equals the scalar definition, in-sample and held-out", "[fit][r2]") {
  const Data d = planted(2000, 6, 4, 0.7, 2);
  const Moments train = moments_of(d, 0, 1500), test = moments_of(d, 1500, 2000);
  FitOptions ols;
  ols.ridge = RidgeMode::fixed;
  const LinearMap map = fit_ridge(train, d.xc, d.yc, ols);
  const R2Score in = score_r2(train, d.xc, d.yc, map), out = score_r2(test, d.xc, d.yc, map);
  // The co-moments are accumulated by float syrk: agreement to ~1e-7 relative.
  REQUIRE(in.mean == Approx(scalar_r2(d, 0, 1500, map)).epsilon(1e-6));
  REQUIRE(out.mean == Approx(scalar_r2(d, 1500, 2000, map)).epsilon(1e-6));
  REQUIRE(out.count == 500);
  REQUIRE(in.mean > out.mean - 0.05);
  REQUIRE(out.mean < 1.0);
}

TEST_CASE("R² against a hand-computed value", "[fit][r2]") {
  // x = 0,1,2,3; y0 = 2x + 1 exactly; y1 = 1,3,2,4 (OLS: slope 0.8, R² = 0.64).
  const float rows[] = {0, 1, 1, 1, 3, 3, 2, 5, 2, 3, 7, 4};
  Moments m(3);
  m.add_batch(rows, 4, 3);
  FitOptions ols;
  ols.ridge = RidgeMode::fixed;
  const LinearMap map = fit_ridge(m, {0}, {1, 2}, ols);
  REQUIRE(map.weight[0] == Approx(2.0));
  REQUIRE(map.weight[1] == Approx(0.8));
  REQUIRE(map.bias[0] == Approx(1.0));
  REQUIRE(map.bias[1] == Approx(1.3));
  const R2Score r = score_r2(m, {0}, {1, 2}, map);
  REQUIRE(r.per_dim[0] == Approx(1.0));
  REQUIRE(r.per_dim[1] == Approx(0.64));
  REQUIRE(r.mean == Approx(0.82));
  // variance weighted: SSE = 0 + 1.8, SST = 20 + 5.
  REQUIRE(r.weighted == Approx(1.0 - 1.8 / 25.0));
  // A useless map on held-out data clips at -1.
  LinearMap bad = map;
  bad.bias = {100.0, 100.0};
  REQUIRE(score_r2(m, {0}, {1, 2}, bad).mean == -1.0);
}

TEST_CASE("collinear references fall back to the truncated eigen solve, never NaN", "[fit][hard]") {
  Data d = planted(1000, 4, 3, 0.1, 3);
  // Make reference column 3 an exact copy of column 1 (a duplicated head).
  const std::size_t p = d.kx + d.dy;
  for (std::size_t t = 0; t < d.n; ++t) d.rows[t * p + 3] = d.rows[t * p + 1];
  const Moments m = moments_of(d, 0, d.n);
  FitOptions ols;
  ols.ridge = RidgeMode::fixed;
  const LinearMap map = fit_ridge(m, d.xc, d.yc, ols);
  REQUIRE(map.method == SolveMethod::eigen_fallback);
  REQUIRE(map.rank == 3);
  REQUIRE(map.rank_deficient());
  for (double w : map.weight) REQUIRE(std::isfinite(w));
  // Same predictions as gelsd's minimum-norm solution.
  const auto ref = lstsq_solution(d);
  for (std::size_t j = 0; j < d.dy; ++j) {
    REQUIRE(map.weight[1 * d.dy + j] == Approx(ref(1, j)).margin(1e-3));
    REQUIRE(map.weight[3 * d.dy + j] == Approx(ref(3, j)).margin(1e-3));
  }
  const R2Score r = score_r2(m, d.xc, d.yc, map);
  REQUIRE(r.mean == Approx(scalar_r2(d, 0, d.n, map)).epsilon(1e-6));
  // GCV on the same data is finite too.
  const LinearMap g = fit_ridge(m, d.xc, d.yc, FitOptions{});
  REQUIRE(g.method == SolveMethod::gcv);
  REQUIRE(g.rank == 3);
  for (double w : g.weight) REQUIRE(std::isfinite(w));
}

TEST_CASE("constant dimensions: constant references, constant targets", "[fit][hard]") {
  Data d = planted(500, 3, 3, 0.1, 4);
  const std::size_t p = d.kx + d.dy;
  for (std::size_t t = 0; t < d.n; ++t) {
    d.rows[t * p + 0] = 7.0f;       // a constant reference component
    d.rows[t * p + d.kx + 2] = -3.0f;  // a constant target component
  }
  const Moments m = moments_of(d, 0, d.n);
  for (RidgeMode mode : {RidgeMode::fixed, RidgeMode::gcv}) {
    FitOptions o;
    o.ridge = mode;
    const LinearMap map = fit_ridge(m, d.xc, d.yc, o);
    for (double w : map.weight) REQUIRE(std::isfinite(w));
    REQUIRE(map.bias[2] == Approx(-3.0).margin(1e-6));
    const R2Score r = score_r2(m, d.xc, d.yc, map);
    REQUIRE(r.per_dim[2] == 1.0);  // predicted exactly, as sklearn scores it
    REQUIRE(std::isfinite(r.mean));
  }
  // Every reference constant: W = 0, b = mean(y).
  Moments c(2);
  const float rows[] = {1, 5, 1, 6, 1, 7};
  c.add_batch(rows, 3, 2);
  const LinearMap zero = fit_ridge(c, {0}, {1});
  REQUIRE(zero.weight[0] == 0.0);
  REQUIRE(zero.bias[0] == Approx(6.0));
  REQUIRE(zero.rank == 0);
  REQUIRE(score_r2(c, {0}, {1}, zero).mean == Approx(0.0).margin(1e-12));
}

TEST_CASE("fixed ridge equals the closed form and GCV regularizes small noisy problems", "[fit][ridge]") {
  const Data d = planted(400, 20, 3, 1.0, 5);
  const Moments m = moments_of(d, 0, d.n);
  FitOptions o;
  o.ridge = RidgeMode::fixed;
  o.lambda = 0.3;
  const LinearMap map = fit_ridge(m, d.xc, d.yc, o);
  // Closed form with xtensor-blas: (Cxx + λ·diag(Cxx))⁻¹ Cxy (ridge on standardized references).
  const std::size_t k = d.kx;
  xt::xtensor<double, 2> cxx = xt::zeros<double>({k, k}), cxy = xt::zeros<double>({k, d.dy});
  for (std::size_t i = 0; i < k; ++i) {
    for (std::size_t j = 0; j < k; ++j) cxx(i, j) = m.comoment(i, j);
    for (std::size_t j = 0; j < d.dy; ++j) cxy(i, j) = m.comoment(i, k + j);
  }
  for (std::size_t i = 0; i < k; ++i) cxx(i, i) *= 1.3;
  const auto w = xt::linalg::solve(cxx, cxy);
  for (std::size_t i = 0; i < k; ++i)
    for (std::size_t j = 0; j < d.dy; ++j) REQUIRE(map.weight[i * d.dy + j] == Approx(w(i, j)).margin(1e-9));

  // Few tokens, many references, heavy noise: GCV picks λ > 0 and predicts
  // held-out tokens better than OLS.
  const Data small = planted(2060, 40, 4, 3.0, 6);
  const Moments tr = moments_of(small, 0, 60), te = moments_of(small, 60, 2060);
  FitOptions ols;
  ols.ridge = RidgeMode::fixed;
  const LinearMap g = fit_ridge(tr, small.xc, small.yc, FitOptions{});
  const LinearMap plain = fit_ridge(tr, small.xc, small.yc, ols);
  REQUIRE(g.lambda > 0.0);
  REQUIRE(score_r2(te, small.xc, small.yc, g).mean > score_r2(te, small.xc, small.yc, plain).mean);
  // Plenty of clean data: GCV keeps λ tiny and matches OLS.
  const Data big = planted(5000, 8, 3, 0.01, 7);
  const Moments mb = moments_of(big, 0, big.n);
  const LinearMap gb = fit_ridge(mb, big.xc, big.yc, FitOptions{});
  REQUIRE(gb.lambda <= 1e-4);
  REQUIRE(score_r2(mb, big.xc, big.yc, gb).mean > 0.999);
}

TEST_CASE("fit rejects bad arguments with a clear error", "[fit]") {
  Moments m(4);
  const float rows[] = {1, 2, 3, 4};
  m.add_batch(rows, 1, 4);
  REQUIRE_THROWS_WITH(fit_ridge(m, {0}, {1}), Catch::Contains("at least 2 training tokens"));
  REQUIRE_THROWS_WITH(fit_ridge(m, {9}, {1}), Catch::Contains("column 9"));
  FitOptions o;
  o.ridge = RidgeMode::fixed;
  o.lambda = -1;
  m.add_batch(rows, 1, 4);
  REQUIRE_THROWS_WITH(fit_ridge(m, {0}, {1}, o), Catch::Contains("lambda"));
  REQUIRE_THROWS_WITH(score_r2(Moments(4), {0}, {1}, fit_ridge(m, {0}, {1})), Catch::Contains("no tokens"));
}

TEST_CASE("rescaling a reference changes its weights, not the fit (issue 13)", "[fit][hard]") {
  // One reference head scaled by 1000 carries the same information: every
  // solve path (OLS, fixed ridge, GCV, the truncated eigen solve) gives the
  // same R² and predictions.
  Data d = planted(3000, 8, 4, 0.3, 8);
  Data scaled = d;
  const std::size_t p = d.kx + d.dy;
  for (std::size_t t = 0; t < d.n; ++t)
    for (std::size_t i = 0; i < 4; ++i) scaled.rows[t * p + i] *= 1000.0f;
  const Moments a = moments_of(d, 0, 2000), b = moments_of(scaled, 0, 2000);
  const Moments ta = moments_of(d, 2000, 3000), tb = moments_of(scaled, 2000, 3000);
  FitOptions ols, ridge, gcv, tight;
  ols.ridge = RidgeMode::fixed;
  ridge.ridge = RidgeMode::fixed;
  ridge.lambda = 0.1;
  tight.ridge = RidgeMode::fixed;
  tight.min_rcond = 0.5;  // forces the truncated eigen solve
  for (const FitOptions& o : {ols, ridge, gcv, tight}) {
    const LinearMap ma = fit_ridge(a, d.xc, d.yc, o), mb = fit_ridge(b, d.xc, d.yc, o);
    REQUIRE(ma.method == mb.method);
    REQUIRE(ma.rank == mb.rank);
    REQUIRE(score_r2(ta, d.xc, d.yc, ma).mean == Approx(score_r2(tb, d.xc, d.yc, mb).mean).epsilon(1e-6));
    for (std::size_t i = 0; i < d.kx; ++i)
      for (std::size_t j = 0; j < d.dy; ++j)
        REQUIRE(ma.weight[i * d.dy + j] ==
                Approx(mb.weight[i * d.dy + j] * (i < 4 ? 1000.0 : 1.0)).epsilon(1e-5).margin(1e-9));
  }
  REQUIRE(score_r2(ta, d.xc, d.yc, fit_ridge(a, d.xc, d.yc, ols)).mean > 0.9);
}

TEST_CASE("values near the float limit are fitted, not overflowed (issue 13)", "[fit][hard]") {
  // The same data times 1e20, 1e30 and 1e-30 (finite floats): the statistics
  // scale each column by a power of two before the float syrk, so the fit and
  // its R² are those of the unscaled data.
  const Data d = planted(2000, 6, 3, 0.2, 9);
  const Moments m = moments_of(d, 0, 1500), t = moments_of(d, 1500, 2000);
  const LinearMap base = fit_ridge(m, d.xc, d.yc);
  const double r2 = score_r2(t, d.xc, d.yc, base).mean;
  for (double s : {1e20, 1e30, 1e-30}) {
    Data big = d;
    for (auto& v : big.rows) v = float(double(v) * s);
    const Moments mb = moments_of(big, 0, 1500), tb = moments_of(big, 1500, 2000);
    for (std::size_t i = 0; i < mb.dim(); ++i) REQUIRE(std::isfinite(mb.comoment(i, i)));
    const LinearMap map = fit_ridge(mb, d.xc, d.yc);
    REQUIRE(score_r2(tb, d.xc, d.yc, map).mean == Approx(r2).epsilon(1e-5));
  }
  // Mixed scales in one batch: a column at 3e38 next to one at 1e-3.
  Moments mix(2);
  const float rows[] = {3e38f, 1e-3f, -3e38f, 2e-3f, 1e38f, 4e-3f};
  mix.add_batch(rows, 3, 2);
  REQUIRE(std::isfinite(mix.comoment(0, 0)));
  REQUIRE(mix.comoment(1, 1) == Approx(4.66666667e-6).epsilon(1e-6));
}
