// RoPE helper: rotation properties and the pre-RoPE path (reconstruct, then
// rotate) against rotating the true vectors.
#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <vector>

#include "headrecon/cpu/reconstruct.hpp"
#include "headrecon/cpu/rope.hpp"

using namespace headrecon;

TEST_CASE("RoPE preserves norms, matches a hand rotation and composes with position", "[rope]") {
  const std::size_t d = 8;
  std::vector<float> v = {1, 0, 0, 1, 2, 3, 4, 5};
  const std::int32_t pos[] = {3};
  RopeConfig cfg{100.0, 4, RopeStyle::interleaved};
  std::vector<float> r = v;
  apply_rope(r.data(), 1, 0, d, pos, cfg);
  // Pair 0 turns by 3 rad, pair 1 by 3/10 rad; components 4.. untouched.
  REQUIRE(r[0] == Approx(std::cos(3.0)));
  REQUIRE(r[1] == Approx(std::sin(3.0)));
  REQUIRE(r[2] == Approx(-std::sin(0.3)));
  REQUIRE(r[3] == Approx(std::cos(0.3)));
  REQUIRE(r[4] == 2.f);
  RopeConfig neox{10000.0, 8, RopeStyle::neox};
  std::vector<float> a = v, b = v;
  const std::int32_t p1[] = {5}, p2[] = {2}, p3[] = {7};
  apply_rope(a.data(), 1, 0, d, p1, neox);
  apply_rope(a.data(), 1, 0, d, p2, neox);
  apply_rope(b.data(), 1, 0, d, p3, neox);
  double na = 0, nv = 0;
  for (std::size_t i = 0; i < d; ++i) {
    REQUIRE(a[i] == Approx(b[i]).margin(1e-5));
    na += double(a[i]) * a[i];
    nv += double(v[i]) * v[i];
  }
  REQUIRE(na == Approx(nv));
  REQUIRE_THROWS_WITH(apply_rope(a.data(), 1, 0, d, p1, RopeConfig{10000.0, 9, RopeStyle::neox}), Catch::Contains("rotary_dim 9"));
  const std::int32_t bad[] = {-1};
  REQUIRE_THROWS_WITH(apply_rope(a.data(), 1, 0, d, bad, neox), Catch::Contains("negative position"));
}

TEST_CASE("pre-RoPE plans: reconstruct, then rotate, equals rotating the true keys", "[rope][reconstruct]") {
  // Head 1 = W^T head 0 + b exactly (pre-RoPE); rebuild it and rotate it.
  const std::size_t d = 64, T = 40;
  std::mt19937 rng(2);
  std::normal_distribution<float> g;
  std::vector<float> x(T * d), w(d * d), b(d), truth(T * d), rebuilt(T * d);
  for (auto& v : x) v = g(rng);
  for (auto& v : w) v = g(rng) / 8.f;
  for (auto& v : b) v = g(rng);
  for (std::size_t t = 0; t < T; ++t)
    for (std::size_t j = 0; j < d; ++j) {
      double y = b[j];
      for (std::size_t i = 0; i < d; ++i) y += double(x[t * d + i]) * w[i * d + j];
      truth[t * d + j] = float(y);
    }
  std::vector<std::int32_t> pos(T);
  for (std::size_t t = 0; t < T; ++t) pos[t] = std::int32_t(1000 + 37 * t);
  const std::uint32_t ref = 0;
  HeadStream in{x.data(), DType::f32, 0, std::ptrdiff_t(d), nullptr, 0, 0};
  ReconTarget tg{w.data(), b.data(), &ref, 1, {rebuilt.data(), DType::f32, 0, std::ptrdiff_t(d), nullptr, 0, 0}};
  std::vector<float> work(reconstruct_workspace_floats(1, d));
  reconstruct({d, 0, T, &in, 1, &tg, 1, work.data(), work.size()});
  const RopeConfig cfg{500000.0, d, RopeStyle::neox};
  apply_rope(rebuilt.data(), T, std::ptrdiff_t(d), d, pos.data(), cfg);
  apply_rope(truth.data(), T, std::ptrdiff_t(d), d, pos.data(), cfg);
  for (std::size_t i = 0; i < T * d; ++i) REQUIRE(rebuilt[i] == Approx(truth[i]).margin(1e-4));
}
