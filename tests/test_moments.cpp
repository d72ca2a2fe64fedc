#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "headrecon/moments.hpp"

using namespace headrecon;

namespace {
std::vector<float> random_rows(std::size_t n, std::size_t p, double mean, double sd, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> g(0.0, sd);
  std::vector<float> x(n * p);
  for (std::size_t t = 0; t < n; ++t)
    for (std::size_t i = 0; i < p; ++i) x[t * p + i] = float(mean + (1.0 + 0.1 * double(i)) * g(rng));
  return x;
}

// Plain two-pass reference in long double.
void reference(const std::vector<float>& x, std::size_t n, std::size_t p, std::vector<double>& mu,
               std::vector<double>& m2) {
  std::vector<long double> m(p, 0.0L);
  for (std::size_t t = 0; t < n; ++t)
    for (std::size_t i = 0; i < p; ++i) m[i] += x[t * p + i];
  for (auto& v : m) v /= n;
  m2.assign(p * p, 0.0);
  for (std::size_t i = 0; i < p; ++i)
    for (std::size_t j = 0; j < p; ++j) {
      long double s = 0;
      for (std::size_t t = 0; t < n; ++t) s += (x[t * p + i] - m[i]) * (x[t * p + j] - m[j]);
      m2[i * p + j] = double(s);
    }
  mu.assign(m.begin(), m.end());
}

void require_close(const Moments& a, const std::vector<double>& mu, const std::vector<double>& m2,
                   double rel) {
  const std::size_t p = a.dim();
  double worst = 0;
  std::size_t wi = 0, wj = 0;
  for (std::size_t i = 0; i < p; ++i) {
    REQUIRE(a.mean()[i] == Approx(mu[i]).epsilon(1e-12));
    for (std::size_t j = 0; j < p; ++j) {
      const double scale = std::sqrt(m2[i * p + i] * m2[j * p + j]);
      const double err = std::fabs(a.comoment(i, j) - m2[i * p + j]) / scale;
      if (err > worst) worst = err, wi = i, wj = j;
    }
  }
  INFO("worst relative error " << worst << " at (" << wi << ", " << wj << "), got "
                               << a.comoment(wi, wj) << " expected " << m2[wi * p + wj]);
  REQUIRE(worst <= rel);
}
}  // namespace

TEST_CASE("streamed moments match a two-pass reference", "[moments]") {
  const std::size_t n = 1000, p = 13;
  const auto x = random_rows(n, p, 0.5, 1.0, 7);
  std::vector<double> mu, m2;
  reference(x, n, p, mu, m2);
  Moments m(p);
  for (std::size_t t0 = 0; t0 < n; t0 += 77) m.add_batch(x.data() + t0 * p, std::min<std::size_t>(77, n - t0), p);
  REQUIRE(m.count() == n);
  require_close(m, mu, m2, 1e-6);
}

TEST_CASE("a mean of 1e3 with unit variance loses no precision", "[moments]") {
  const std::size_t n = 4096, p = 8;
  const auto x = random_rows(n, p, 1e3, 1.0, 11);
  std::vector<double> mu, m2;
  reference(x, n, p, mu, m2);
  Moments m(p);
  for (std::size_t t0 = 0; t0 < n; t0 += 512) m.add_batch(x.data() + t0 * p, 512, p);
  // Uncentered float accumulation would lose everything here (1e6 vs 1).
  require_close(m, mu, m2, 1e-6);
}

TEST_CASE("merging accumulators equals one pass over both", "[moments]") {
  const std::size_t n = 900, p = 10;
  const auto x = random_rows(n, p, -3.0, 2.0, 5);
  Moments one(p), a(p), b(p), c(p);
  one.add_batch(x.data(), n, p);
  a.add_batch(x.data(), 100, p);
  b.add_batch(x.data() + 100 * p, 500, p);
  c.add_batch(x.data() + 600 * p, 300, p);
  Moments ab = a;
  ab.merge(b);
  ab.merge(c);
  Moments bc = b;  // different association order
  bc.merge(c);
  Moments a_bc = a;
  a_bc.merge(bc);
  REQUIRE(ab.count() == n);
  std::vector<double> mu(one.mean()), m2(one.comoment());
  require_close(ab, mu, m2, 1e-6);
  require_close(a_bc, mu, m2, 1e-6);
  Moments empty(p);
  empty.merge(one);
  require_close(empty, mu, m2, 0.0);
}

TEST_CASE("non-finite input is rejected with its location and nothing is added", "[moments]") {
  const std::size_t p = 4;
  std::vector<float> x(3 * p, 1.0f);
  Moments m(p);
  m.add_batch(x.data(), 3, p);
  x[2 * p + 3] = std::numeric_limits<float>::quiet_NaN();
  REQUIRE_THROWS_WITH(m.add_batch(x.data(), 3, p), Catch::Contains("row 2, column 3"));
  REQUIRE(m.count() == 3);
  x[2 * p + 3] = std::numeric_limits<float>::infinity();
  REQUIRE_THROWS_WITH(m.add_batch(x.data(), 3, p), Catch::Contains("non-finite"));
  Moments other(5);
  REQUIRE_THROWS_WITH(m.merge(other), Catch::Contains("dims differ"));
}

TEST_CASE("the held-out split is deterministic and close to its fraction", "[moments]") {
  HoldoutSplit s{0.25, 1, 3};
  std::size_t held = 0;
  for (std::uint64_t t = 0; t < 100000; ++t) held += s.is_heldout(t);
  REQUIRE(double(held) / 1e5 == Approx(0.25).margin(0.01));
  HoldoutSplit blocks{0.25, 16, 3};
  for (std::uint64_t t = 0; t < 1600; t += 16)
    for (std::uint64_t u = 1; u < 16; ++u) REQUIRE(blocks.is_heldout(t) == blocks.is_heldout(t + u));
  HoldoutSplit none{0.0, 1, 0};
  for (std::uint64_t t = 0; t < 1000; ++t) REQUIRE(!none.is_heldout(t));
  REQUIRE_THROWS(HoldoutSplit{1.0, 1, 0}.validate());
}
