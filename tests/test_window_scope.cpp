// The windowed cross-layer scope: a target in layer l may use layers l−w…l.
// Its statistics per layer equal cross-layer statistics of just those layers
// (bit for bit), every strategy keeps to the window, and the memory estimate
// and the largest fitting window are consistent.
#include <catch2/catch.hpp>

#include <string>

#include "headrecon/select.hpp"
#include "headrecon/select/forward.hpp"
#include "synthetic_stats.hpp"

using namespace headrecon;

namespace {
// Statistics of layers [l0, l0 + n) of `m` only, as one cross-layer group.
HeadMoments sub_layers(const SyntheticModel& m, std::int32_t l0, std::int32_t n, std::size_t tokens) {
  const auto& s = m.spec();
  const std::size_t H = std::size_t(s.n_heads), d = std::size_t(s.head_dim);
  HeadMoments hm(n, s.n_heads, s.head_dim, RefScope::cross_layer);
  std::vector<std::vector<float>> bufs(static_cast<std::size_t>(n));
  for (std::size_t t0 = 0; t0 < tokens; t0 += 500) {
    const std::size_t k = std::min<std::size_t>(500, tokens - t0);
    std::vector<AnyHeadsView> views;
    for (std::int32_t l = 0; l < n; ++l) {
      auto& b = bufs[std::size_t(l)];
      b.resize(k * H * d);
      m.generate(Kind::k, l0 + l, t0, k, b.data());
      views.push_back(erase(make_view<const float>(b.data(), b.size(), Extents3{k, H, d}, Layout::token_major)));
    }
    hm.add(views, t0, HoldoutSplit{});
  }
  return hm;
}

HeadMoments windowed(const SyntheticModel& m, std::int32_t w, std::size_t tokens) {
  const auto& s = m.spec();
  const std::size_t H = std::size_t(s.n_heads), d = std::size_t(s.head_dim);
  HeadMoments hm(s.n_layers, s.n_heads, s.head_dim, RefScope::cross_layer_window, w);
  std::vector<std::vector<float>> bufs(std::size_t(s.n_layers));
  for (std::size_t t0 = 0; t0 < tokens; t0 += 500) {
    const std::size_t k = std::min<std::size_t>(500, tokens - t0);
    std::vector<AnyHeadsView> views;
    for (std::int32_t l = 0; l < s.n_layers; ++l) {
      auto& b = bufs[std::size_t(l)];
      b.resize(k * H * d);
      m.generate(Kind::k, l, t0, k, b.data());
      views.push_back(erase(make_view<const float>(b.data(), b.size(), Extents3{k, H, d}, Layout::token_major)));
    }
    hm.add(views, t0, HoldoutSplit{});
  }
  return hm;
}

SyntheticSpec spec() {
  SyntheticSpec s;
  s.n_layers = 5;
  s.n_heads = 3;
  s.head_dim = 8;
  s.noise = 0.05;
  s.seed = 3;
  return s;
}
}  // namespace

TEST_CASE("a window's statistics equal cross-layer statistics of its layers, bit for bit", "[window]") {
  const SyntheticModel m(spec());
  const HeadMoments win = windowed(m, 2, 3000);
  REQUIRE(win.n_groups() == 5);
  REQUIRE(win.window() == 2);
  // Target (3, 1), references (1, 0), (2, 2), (3, 0): layers 1..3 = a cross-layer group of 3 layers.
  const HeadMoments sub = sub_layers(m, 1, 3, 3000);
  const Evaluation a = win.evaluate({3, 1}, {{1, 0}, {2, 2}, {3, 0}}, FitOptions{});
  const Evaluation b = sub.evaluate({2, 1}, {{0, 0}, {1, 2}, {2, 0}}, FitOptions{});
  CHECK(a.map.weight == b.map.weight);
  CHECK(a.map.bias == b.map.bias);
  CHECK(a.heldout.mean == b.heldout.mean);
  // Layer 1's group starts at layer 0 (a shorter window at the bottom).
  const HeadMoments sub0 = sub_layers(m, 0, 2, 3000);
  const Evaluation c = win.evaluate({1, 2}, {{0, 1}, {1, 0}}, FitOptions{});
  const Evaluation e = sub0.evaluate({1, 2}, {{0, 1}, {1, 0}}, FitOptions{});
  CHECK(c.map.weight == e.map.weight);
  CHECK(win.column({0, 1}, {1, 2}) == 1 * 8);
  CHECK(win.column({3, 1}) == 2 * 3 * 8 + 8);  // own group of layer 3 starts at layer 1
}

TEST_CASE("references outside the window are refused", "[window]") {
  const SyntheticModel m(spec());
  const HeadMoments win = windowed(m, 1, 1000);
  CHECK(win.allowed({3, 0}, {2, 1}));
  CHECK(win.allowed({3, 0}, {3, 1}));
  CHECK_FALSE(win.allowed({3, 0}, {1, 1}));
  CHECK_FALSE(win.allowed({3, 0}, {4, 1}));
  CHECK_THROWS_WITH(win.evaluate({3, 0}, {{1, 1}}, FitOptions{}), Catch::Contains("cannot be a reference"));
  CHECK_THROWS_WITH(win.column({1, 1}, {3, 0}), Catch::Contains("not in the group"));
  for (const char* name : {"greedy", "shared", "graph"}) {
    SelectionOptions opt;
    opt.budget = 0.34;
    opt.max_refs = 3;
    const Selection sel = make_strategy(name)->select(win, opt);
    std::size_t n = 0;
    for (const auto& layer : sel.layers)
      for (const auto& t : layer) {
        ++n;
        for (HeadId r : t.refs) {
          CHECK(r.layer <= t.target.layer);
          CHECK(r.layer >= t.target.layer - 1);
        }
      }
    CHECK(n > 0);
  }
  const std::vector<HeadId> refs = forward_references(win, {4, 2}, {{3, 0}, {3, 1}, {4, 0}}, 2);
  CHECK(!refs.empty());
}

TEST_CASE("the memory estimate and the largest window that fits", "[window]") {
  const std::int32_t L = 30, H = 8, d = 128;
  const double same = HeadMoments::statistics_bytes(L, H, d, RefScope::same_layer);
  CHECK(HeadMoments::statistics_bytes(L, H, d, RefScope::cross_layer_window, 0) == same);
  double prev = same;
  for (std::int32_t w = 1; w < L; ++w) {
    const double b = HeadMoments::statistics_bytes(L, H, d, RefScope::cross_layer_window, w);
    CHECK(b > prev);
    prev = b;
    CHECK(HeadMoments::largest_window(L, H, d, b) == w);
    CHECK(HeadMoments::largest_window(L, H, d, b - 1) == w - 1);
  }
  // One group of all layers: (L·H·d)² doubles twice (plus float scratch): 80 layers x 8 x 128 ~ 100 GB.
  const double all = HeadMoments::statistics_bytes(80, 8, 128, RefScope::cross_layer);
  CHECK(all > 2 * 8.0 * (80.0 * 1024) * (80.0 * 1024));
  CHECK(HeadMoments::largest_window(L, H, d, same - 1) == -1);
  // The estimate covers what the co-moments hold.
  const SyntheticModel m(spec());
  const HeadMoments win = windowed(m, 2, 600);
  double held = 0;
  for (std::size_t g = 0; g < win.n_groups(); ++g) held += 2.0 * 8.0 * double(win.group_at(g).train.comoment().size());
  CHECK(HeadMoments::statistics_bytes(5, 3, 8, RefScope::cross_layer_window, 2) > held);
}
