// Every strategy on activations with planted structure: the planted targets
// and references are found by the strategies that should find them, and every
// selection respects the cache invariants.
#include <catch2/catch.hpp>

#include <algorithm>
#include <set>

#include "headrecon/calibrate.hpp"
#include "headrecon/select.hpp"
#include "synthetic_stats.hpp"

using namespace headrecon;
using headrecon::testing::synthetic_stats;

namespace {
SyntheticSpec spec6() {
  SyntheticSpec s;
  s.n_layers = 3;
  s.n_heads = 6;
  s.head_dim = 12;
  s.noise = 0.05;
  s.seed = 42;
  return s;
}

// Invariants every selection must satisfy.
void check_invariants(const Selection& sel, const HeadMoments& stats, int max_refs, double budget) {
  const std::int32_t H = stats.n_heads();
  for (std::size_t l = 0; l < sel.layers.size(); ++l) {
    REQUIRE(std::int32_t(sel.layers[l].size()) <= H - cached_count(H, budget));
    for (const auto& t : sel.layers[l]) {
      REQUIRE(t.target.layer == std::int32_t(l));
      REQUIRE(!t.refs.empty());
      REQUIRE(int(t.refs.size()) <= max_refs);
      for (HeadId r : t.refs) {
        REQUIRE(r != t.target);
        REQUIRE(!sel.is_target(r));
        REQUIRE(stats.allowed(t.target, r));
      }
    }
  }
}

std::set<std::int32_t> targets_of(const Selection& sel, std::size_t l) {
  std::set<std::int32_t> s;
  for (const auto& t : sel.layers[l]) s.insert(t.target.head);
  return s;
}
std::set<std::int32_t> refs_of(const TargetChoice& t) {
  std::set<std::int32_t> s;
  for (HeadId r : t.refs) s.insert(r.head);
  return s;
}
}  // namespace

TEST_CASE("budget arithmetic", "[select]") {
  REQUIRE(cached_count(5, 0.4) == 2);  // --budget 0.4 on 5 heads keeps 2, rebuilds 3
  REQUIRE(cached_count(3, 0.5) == 2);
  REQUIRE(cached_count(8, 0.5) == 4);
  REQUIRE(cached_count(3, 1.0 / 3.0) == 1);
  REQUIRE(cached_count(1, 0.1) == 1);
  REQUIRE(cached_count(4, 1.0) == 4);
  SelectionOptions bad;
  bad.budget = 0.0;
  REQUIRE_THROWS_WITH(bad.validate(), Catch::Contains("budget"));
}

TEST_CASE("greedy finds the planted targets and references", "[select]") {
  const SyntheticModel model(spec6());
  for (RefScope scope : {RefScope::same_layer, RefScope::cross_layer}) {
    const HeadMoments stats = synthetic_stats(model, Kind::k, scope, 3000);
    SelectionOptions opt;
    opt.max_refs = 2;
    const Selection sel = GreedySelection{}.select(stats, opt);
    check_invariants(sel, stats, 2, 0.5);
    for (std::size_t l = 0; l < 3; ++l) {
      REQUIRE(targets_of(sel, l) == std::set<std::int32_t>{3, 4, 5});
      for (const auto& t : sel.layers[l]) {
        const auto* p = model.planted(Kind::k, std::int32_t(l), t.target.head);
        REQUIRE(refs_of(t) == std::set<std::int32_t>(p->refs.begin(), p->refs.end()));
        for (HeadId r : t.refs) REQUIRE(r.layer == std::int32_t(l));
        REQUIRE(t.score > 0.95);
      }
    }
  }
}

TEST_CASE("shared keeps the base heads and predicts the rest from all of them", "[select]") {
  const SyntheticModel model(spec6());
  const HeadMoments stats = synthetic_stats(model, Kind::v, RefScope::same_layer, 3000);
  const Selection sel = SharedSelection{}.select(stats, SelectionOptions{});
  check_invariants(sel, stats, 3, 0.5);
  for (std::size_t l = 0; l < 3; ++l) {
    REQUIRE(targets_of(sel, l) == std::set<std::int32_t>{3, 4, 5});
    for (const auto& t : sel.layers[l]) {
      REQUIRE(refs_of(t) == std::set<std::int32_t>{0, 1, 2});
      REQUIRE(t.score > 0.95);
    }
  }
  // With --refs 2 each target picks its two planted references from the shared set.
  SelectionOptions two;
  two.max_refs = 2;
  const Selection s2 = SharedSelection{}.select(stats, two);
  for (const auto& t : s2.layers[1]) {
    const auto* p = model.planted(Kind::v, 1, t.target.head);
    REQUIRE(refs_of(t) == std::set<std::int32_t>(p->refs.begin(), p->refs.end()));
  }
}

TEST_CASE("shared uses backward elimination and swaps when subsets are many", "[select]") {
  SyntheticSpec s = spec6();
  s.n_heads = 12;  // C(12, 6) = 924 subsets
  s.n_layers = 1;
  const SyntheticModel model(s);
  const HeadMoments stats = synthetic_stats(model, Kind::k, RefScope::same_layer, 3000);
  const Selection sel = SharedSelection{}.select(stats, SelectionOptions{});
  check_invariants(sel, stats, 6, 0.5);
  REQUIRE(targets_of(sel, 0) == std::set<std::int32_t>{6, 7, 8, 9, 10, 11});
}

TEST_CASE("graph selects derived heads with their planted sources above the threshold", "[select]") {
  // Three heads per layer: heads 0, 1 are base, head 2 = f(0, 1). Budget 2/3
  // rebuilds one head per layer; with min_refs 2 only head 2 has two strong
  // sources at a high threshold.
  SyntheticSpec s = spec6();
  s.n_heads = 3;
  const SyntheticModel model(s);
  for (RefScope scope : {RefScope::same_layer, RefScope::cross_layer}) {
    const HeadMoments stats = synthetic_stats(model, Kind::k, scope, 3000);
    GraphSelection g;
    g.min_refs = 2;
    g.max_refs = 2;
    SelectionOptions opt;
    opt.budget = 2.0 / 3.0;
    const Selection sel = g.select(stats, opt);
    check_invariants(sel, stats, 2, opt.budget);
    REQUIRE(g.threshold > 0.3);
    for (std::size_t l = 0; l < 3; ++l) {
      REQUIRE(targets_of(sel, l) == std::set<std::int32_t>{2});
      REQUIRE(refs_of(sel.layers[l][0]) == std::set<std::int32_t>{0, 1});
      for (HeadId r : sel.layers[l][0].refs) REQUIRE(r.layer == std::int32_t(l));
      REQUIRE(sel.layers[l][0].score > 0.95);
    }
  }
}

TEST_CASE("graph reaches the budget on larger layers and degrades gracefully", "[select]") {
  const SyntheticModel model(spec6());
  const HeadMoments stats = synthetic_stats(model, Kind::k, RefScope::cross_layer, 3000);
  GraphSelection g;
  g.min_refs = 2;
  g.max_refs = 3;
  const Selection sel = g.select(stats, SelectionOptions{});
  check_invariants(sel, stats, 3, 0.5);
  double mean = 0;
  std::size_t n = 0;
  for (const auto& layer : sel.layers)
    for (const auto& t : layer) mean += t.score, ++n;
  // Greedy pinning is the paper's procedure: a head chosen as a reference by a
  // higher layer's target can no longer be rebuilt, so a layer may end below
  // its budget. Here it reaches at least 7 of the 9 targets, all predicted well.
  REQUIRE(n >= 7);
  REQUIRE(n <= 9);
  REQUIRE(mean / double(n) > 0.8);
  // The paper's defaults (at least 4 sources) on same-layer scope: fewer
  // candidates than that in a 6-head layer once targets are pinned; the
  // result is smaller, never a broken plan.
  GraphSelection paper;
  const HeadMoments same = synthetic_stats(model, Kind::k, RefScope::same_layer, 3000);
  const Selection ps = paper.select(same, SelectionOptions{});
  check_invariants(ps, same, 6, 0.5);
}

TEST_CASE("fixed selection follows its spec and rejects bad ones", "[select]") {
  const SyntheticModel model(spec6());
  const HeadMoments stats = synthetic_stats(model, Kind::k, RefScope::cross_layer, 1000);
  const auto* p = model.planted(Kind::k, 1, 4);
  const std::string spec = "1.4=1." + std::to_string(p->refs[0]) + ",1." + std::to_string(p->refs[1]) + ";2.5=0.0";
  const Selection sel = make_strategy("fixed", spec)->select(stats, SelectionOptions{});
  REQUIRE(sel.layers[1].size() == 1);
  REQUIRE(sel.layers[1][0].score > 0.95);
  REQUIRE(sel.layers[2][0].refs == std::vector<HeadId>{{0, 0}});
  REQUIRE_THROWS_WITH(FixedSelection::parse("1.4=1"), Catch::Contains("expected '.'"));
  REQUIRE_THROWS_WITH(FixedSelection::parse("1.4=x"), Catch::Contains("expected a number"));
  REQUIRE_THROWS_WITH(make_strategy("fixed", "1.4=1.0;1.0=1.1")->select(stats, SelectionOptions{}),
                      Catch::Contains("itself a target"));
  REQUIRE_THROWS_WITH(make_strategy("fixed", "9.0=1.0")->select(stats, SelectionOptions{}),
                      Catch::Contains("outside"));
  REQUIRE_THROWS_WITH(make_strategy("fixed", "1.0=2.0")->select(stats, SelectionOptions{}),
                      Catch::Contains("cannot be a reference"));
  REQUIRE_THROWS_WITH(make_strategy("nope"), Catch::Contains("unknown strategy"));
}

TEST_CASE("random baseline is valid, seeded, and worse than greedy", "[select]") {
  const SyntheticModel model(spec6());
  const HeadMoments stats = synthetic_stats(model, Kind::k, RefScope::same_layer, 2000);
  SelectionOptions opt;
  opt.max_refs = 2;
  opt.seed = 9;
  const Selection a = RandomSelection{}.select(stats, opt), b = RandomSelection{}.select(stats, opt);
  check_invariants(a, stats, 2, 0.5);
  double mean_random = 0, mean_greedy = 0;
  const Selection g = GreedySelection{}.select(stats, opt);
  for (std::size_t l = 0; l < 3; ++l) {
    REQUIRE(targets_of(a, l) == targets_of(b, l));
    for (std::size_t i = 0; i < a.layers[l].size(); ++i) {
      REQUIRE(a.layers[l][i].refs == b.layers[l][i].refs);
      mean_random += a.layers[l][i].score;
      mean_greedy += g.layers[l][i].score;
    }
  }
  REQUIRE(mean_random < mean_greedy - 0.5);
}

TEST_CASE("merged head statistics equal one pass and maps recover the planted weights", "[select][calibrate]") {
  const SyntheticModel model(spec6());
  const HeadMoments one = synthetic_stats(model, Kind::q, RefScope::same_layer, 2000, 2000);
  HeadMoments merged = synthetic_stats(model, Kind::q, RefScope::same_layer, 2000, 300);
  const auto e1 = one.evaluate({2, 5}, {{2, 0}, {2, 1}}, FitOptions{});
  const auto e2 = merged.evaluate({2, 5}, {{2, 0}, {2, 1}}, FitOptions{});
  REQUIRE(e1.heldout.mean == Approx(e2.heldout.mean).epsilon(1e-6));
  REQUIRE(e1.heldout.count == e2.heldout.count);

  SelectionOptions opt;
  opt.max_refs = 2;
  const Selection sel = GreedySelection{}.select(one, opt);
  std::vector<TargetReport> report;
  Plan plan;
  plan.head_dim = 12;
  plan.n_layers = 3;
  plan.kinds.push_back(build_kind_plan(one, sel, Kind::q, FitOptions{}, &report));
  REQUIRE_NOTHROW(plan.validate());
  REQUIRE(report.size() == 9);
  const TargetMap& tm = plan.kinds[0].layers[1][0];
  const auto* p = model.planted(Kind::q, 1, tm.target.head);
  const std::size_t d = 12;
  for (std::size_t r = 0; r < 2; ++r) {
    // The plan's ref r is planted ref j; compare its W block.
    const std::size_t j = std::size_t(tm.refs[r].head == p->refs[0] ? 0 : 1);
    for (std::size_t i = 0; i < d * d; ++i)
      REQUIRE(tm.weight[r * d * d + i] == Approx(p->weight[j * d * d + i]).margin(0.02));
  }
  for (std::size_t i = 0; i < d; ++i) REQUIRE(tm.bias[i] == Approx(p->bias[i]).margin(0.05));
}
