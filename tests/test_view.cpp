#include <catch2/catch.hpp>

#include <vector>
#include <xtensor/xtensor.hpp>
#include <xtensor/xview.hpp>

#include "headrecon/view.hpp"

using namespace headrecon;

TEST_CASE("token-major and head-major views address the same logical element", "[view]") {
  const Extents3 e{5, 3, 4};
  std::vector<float> tm(60), hm(60);
  for (std::size_t t = 0; t < 5; ++t)
    for (std::size_t h = 0; h < 3; ++h)
      for (std::size_t i = 0; i < 4; ++i) {
        const float v = float(t * 100 + h * 10 + i);
        tm[(t * 3 + h) * 4 + i] = v;
        hm[(h * 5 + t) * 4 + i] = v;
      }
  auto a = make_view(tm.data(), tm.size(), e, Layout::token_major, "a");
  auto b = make_view(hm.data(), hm.size(), e, Layout::head_major, "b");
  for (std::size_t t = 0; t < 5; ++t)
    for (std::size_t h = 0; h < 3; ++h)
      for (std::size_t i = 0; i < 4; ++i) REQUIRE(a(t, h, i) == b(t, h, i));
  auto sub = b.token_range(2, 2);
  REQUIRE(sub.tokens() == 2);
  REQUIRE(sub(1, 2, 3) == b(3, 2, 3));
  REQUIRE_THROWS_WITH(b.token_range(4, 2), Catch::Contains("outside a view of 5 tokens"));
}

TEST_CASE("views reject extents and strides that do not fit", "[view]") {
  std::vector<float> buf(59);
  REQUIRE_THROWS_WITH(make_view(buf.data(), buf.size(), Extents3{5, 3, 4}, Layout::token_major, "keys"),
                      Catch::Contains("keys") && Catch::Contains("buffer of 59"));
  std::vector<float> ok(64);
  // Writable view whose head stride aliases two heads onto the same elements.
  REQUIRE_THROWS_WITH(make_view(ok.data(), ok.size(), Extents3{4, 2, 4}, Strides3{8, 2, 1}, "cache"),
                      Catch::Contains("cache") && Catch::Contains("overlap"));
  // The same strides are fine read-only (broadcast-like reads).
  const float* cp = ok.data();
  REQUIRE_NOTHROW(make_view(cp, ok.size(), Extents3{4, 2, 4}, Strides3{8, 2, 1}, "cache"));
  // Negative strides reaching below the start.
  REQUIRE_THROWS_WITH(make_view(cp, ok.size(), Extents3{4, 2, 4}, Strides3{-8, 4, 1}, "rev"),
                      Catch::Contains("rev"));
  REQUIRE_THROWS_WITH(make_view<float>(nullptr, 0, Extents3{1, 1, 1}, Layout::token_major, "nul"),
                      Catch::Contains("null"));
  // Empty views are fine with no data.
  REQUIRE_NOTHROW(make_view<float>(nullptr, 0, Extents3{0, 3, 4}, Layout::token_major, "empty"));
}

TEST_CASE("xtensor containers and strided views adapt without copies", "[view]") {
  xt::xtensor<float, 3> x = xt::zeros<float>({6, 4, 8});
  for (std::size_t i = 0; i < x.size(); ++i) x.data()[i] = float(i);
  auto v = view_of(x, "x");
  REQUIRE(v.tokens() == 6);
  REQUIRE(v(5, 3, 7) == x(5, 3, 7));
  auto strided = xt::view(x, xt::range(1, 6, 2), xt::all(), xt::range(0, 8, 2));
  auto sv = view_of(strided, "strided");
  REQUIRE(sv.tokens() == 3);
  REQUIRE(sv.dim() == 4);
  for (std::size_t t = 0; t < 3; ++t)
    for (std::size_t h = 0; h < 4; ++h)
      for (std::size_t i = 0; i < 4; ++i) REQUIRE(sv(t, h, i) == x(1 + 2 * t, h, 2 * i));
  xt::xtensor<float, 2> flat = xt::zeros<float>({3, 3});
  REQUIRE_THROWS_WITH(view_of(flat, "flat"), Catch::Contains("flat") && Catch::Contains("rank 2"));
  auto any = erase(HeadsView<const float>(v));
  REQUIRE(any.visit([](auto w) { return double(to_float(w(2, 1, 3))); }) == double(x(2, 1, 3)));
}
