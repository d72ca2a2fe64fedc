// Loss-aware scores against brute-force computations over explicit tokens:
// the key metric (query-weighted logit error, GQA groups), the value metric
// (error after the output projection), the residual co-moment behind both;
// fast forward selection against the fit-per-candidate greedy; selection
// under a whole-model budget.
#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <set>
#include <vector>

#include "headrecon/calibrate.hpp"
#include "headrecon/loss_metric.hpp"
#include "headrecon/ref_cache.hpp"
#include "headrecon/select/budget.hpp"
#include "synthetic_stats.hpp"

using namespace headrecon;

namespace {
// Explicit tokens of one kind: [layers][tokens][heads][d].
struct Tokens {
  std::size_t L, N, H, d;
  std::vector<float> x;
  float* at(std::size_t l, std::size_t t, std::size_t h) { return x.data() + ((l * N + t) * H + h) * d; }
  const float* at(std::size_t l, std::size_t t, std::size_t h) const { return x.data() + ((l * N + t) * H + h) * d; }
  std::vector<AnyHeadsView> views() const {
    std::vector<AnyHeadsView> v;
    for (std::size_t l = 0; l < L; ++l)
      v.push_back(erase(make_view<const float>(x.data() + l * N * H * d, N * H * d, Extents3{N, H, d},
                                               Layout::token_major)));
    return v;
  }
};

Tokens synthetic_tokens(const SyntheticModel& m, Kind kind, std::size_t n) {
  const auto& s = m.spec();
  Tokens t{std::size_t(s.n_layers), n, std::size_t(m.n_heads(kind)), std::size_t(s.head_dim), {}};
  t.x.resize(t.L * t.N * t.H * t.d);
  for (std::size_t l = 0; l < t.L; ++l) m.generate(kind, std::int32_t(l), 0, n, t.at(l, 0, 0));
  return t;
}

const HoldoutSplit no_holdout{0.0, 1, 0};

// Residual of target (layer, head) under `map` on token t.
std::vector<double> residual(const Tokens& tk, HeadId target, const std::vector<HeadId>& refs, const LinearMap& map,
                             std::size_t t) {
  const std::size_t d = tk.d;
  std::vector<double> e(d);
  for (std::size_t j = 0; j < d; ++j) {
    double pred = map.bias[j];
    for (std::size_t r = 0; r < refs.size(); ++r)
      for (std::size_t i = 0; i < d; ++i)
        pred += map.weight[(r * d + i) * d + j] * tk.at(std::size_t(refs[r].layer), t, std::size_t(refs[r].head))[i];
    e[j] = tk.at(std::size_t(target.layer), t, std::size_t(target.head))[j] - pred;
  }
  return e;
}

std::vector<OutputProjection> random_wo(std::size_t L, std::size_t E, std::size_t hq, std::size_t d, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.f, 1.f);
  std::vector<OutputProjection> wo(L);
  for (auto& o : wo) {
    o.n_embd = E;
    o.n_q_heads = hq;
    o.head_dim = d;
    o.weight.resize(E * hq * d);
    for (auto& w : o.weight) w = g(rng);
  }
  return wo;
}
}  // namespace

TEST_CASE("residual co-moment from moments equals the sum over tokens", "[loss]") {
  SyntheticSpec s;
  s.n_layers = 2;
  s.n_heads = 3;
  s.head_dim = 6;
  s.noise = 0.4;
  const SyntheticModel m(s);
  const Tokens k = synthetic_tokens(m, Kind::k, 800);
  HeadMoments hm(2, 3, 6, RefScope::cross_layer);
  hm.add(k.views(), 0, HoldoutSplit{0.3, 1, 5});
  const HeadId t{1, 2};
  const std::vector<HeadId> refs{{1, 0}, {0, 2}};
  const Evaluation ev = hm.evaluate(t, refs, FitOptions{});
  // Scalar sums over each split.
  for (int side = 0; side < 2; ++side) {
    std::vector<double> e2(36, 0.0);
    std::size_t n = 0;
    for (std::size_t tok = 0; tok < k.N; ++tok) {
      if (HoldoutSplit{0.3, 1, 5}.is_heldout(tok) != bool(side)) continue;
      const auto e = residual(k, t, refs, ev.map, tok);
      for (std::size_t i = 0; i < 6; ++i)
        for (std::size_t j = 0; j < 6; ++j) e2[i * 6 + j] += e[i] * e[j];
      ++n;
    }
    const SplitMoments& g = hm.group(t);
    const Moments& mm = side ? g.heldout : g.train;
    REQUIRE(mm.count() == n);
    std::vector<std::size_t> x, y;
    for (HeadId r : refs)
      for (std::size_t i = 0; i < 6; ++i) x.push_back(hm.column(r) + i);
    for (std::size_t i = 0; i < 6; ++i) y.push_back(hm.column(t) + i);
    const auto got = residual_comoment(mm, x, y, ev.map);
    for (std::size_t i = 0; i < 36; ++i) REQUIRE(got[i] == Approx(e2[i]).epsilon(1e-5).margin(1e-6 * e2[0]));
  }
}

TEST_CASE("key and value losses equal brute-force sums (GQA groups, residual units)", "[loss]") {
  SyntheticSpec s;
  s.n_layers = 2;
  s.n_heads = 3;
  s.q_per_kv = 2;
  s.head_dim = 8;
  s.noise = 0.5;
  const SyntheticModel m(s);
  const std::size_t N = 600, d = 8, E = 10;
  const Tokens q = synthetic_tokens(m, Kind::q, N), k = synthetic_tokens(m, Kind::k, N), v = synthetic_tokens(m, Kind::v, N);
  HeadMoments ks(2, 3, 8, RefScope::cross_layer), vs(2, 3, 8, RefScope::cross_layer);
  ks.add(k.views(), 0, no_holdout);
  vs.add(v.views(), 0, no_holdout);
  QueryMoments qm(2, 6, 8);
  const auto qv = q.views();
  for (std::int32_t l = 0; l < 2; ++l) qm.add(l, qv[std::size_t(l)]);
  const auto wo = random_wo(2, E, 6, d, 3);
  const HeadMetrics gk = key_metric(qm, 3), gv = value_metric(wo, 3);

  const HeadId t{1, 1};  // KV head 1 is read by query heads 2 and 3
  const std::vector<HeadId> refs{{1, 0}, {0, 1}};
  const Evaluation ek = ks.evaluate(t, refs, FitOptions{}, gk.at(t));
  const Evaluation ev = vs.evaluate(t, refs, FitOptions{}, gv.at(t));
  REQUIRE(!ek.has_heldout);

  // Keys: mean over every (query token, key token) pair of (q·δk)²/d, summed over the group.
  std::vector<std::vector<double>> dk(N);
  for (std::size_t tok = 0; tok < N; ++tok) dk[tok] = residual(k, t, refs, ek.map, tok);
  double key_brute = 0.0;
  for (std::size_t h : {2u, 3u}) {
    double s2 = 0.0;
    for (std::size_t a = 0; a < N; ++a)
      for (std::size_t b = 0; b < N; ++b) {
        double dot = 0.0;
        for (std::size_t i = 0; i < d; ++i) dot += double(q.at(1, a, h)[i]) * dk[b][i];
        s2 += dot * dot;
      }
    key_brute += s2 / double(N * N) / double(d);
  }
  REQUIRE(ek.loss == Approx(key_brute).epsilon(1e-5));
  REQUIRE(ek.loss == Approx(ek.loss_in_sample));

  // Values: mean over tokens of Σ_h ‖W_o,h δv‖².
  double val_brute = 0.0, base_brute = 0.0;
  std::vector<double> vmean(d, 0.0);
  for (std::size_t tok = 0; tok < N; ++tok)
    for (std::size_t i = 0; i < d; ++i) vmean[i] += v.at(1, tok, 1)[i] / double(N);
  for (std::size_t tok = 0; tok < N; ++tok) {
    const auto e = residual(v, t, refs, ev.map, tok);
    for (std::size_t h : {2u, 3u})
      for (std::size_t r = 0; r < E; ++r) {
        double o = 0.0, ob = 0.0;
        for (std::size_t i = 0; i < d; ++i) {
          const float w = wo[1].weight[r * 6 * d + h * d + i];
          o += w * e[i];
          ob += w * (v.at(1, tok, 1)[i] - vmean[i]);
        }
        val_brute += o * o / double(N);
        base_brute += ob * ob / double(N);
      }
  }
  REQUIRE(ev.loss == Approx(val_brute).epsilon(1e-5));
  REQUIRE(ev.loss_base == Approx(base_brute).epsilon(1e-5));

  // Residual-unit weights: c_h = mean ‖W_o,h (v − v̄)‖² of the group's values.
  auto vcov = [&](std::int32_t l, std::int32_t g) {
    const Moments& mm = vs.group({l, g}).train;
    std::vector<double> c(d * d);
    for (std::size_t i = 0; i < d; ++i)
      for (std::size_t j = 0; j < d; ++j)
        c[i * d + j] = mm.comoment(vs.column({l, g}) + i, vs.column({l, g}) + j) / double(mm.count());
    return c;
  };
  const std::vector<double> cw = residual_query_weights(wo, 3, vcov);
  double c2 = 0.0, c3 = 0.0;
  for (std::size_t tok = 0; tok < N; ++tok)
    for (std::size_t r = 0; r < E; ++r)
      for (std::size_t h : {2u, 3u}) {
        double o = 0.0;
        for (std::size_t i = 0; i < d; ++i) o += wo[1].weight[r * 6 * d + h * d + i] * (v.at(1, tok, 1)[i] - vmean[i]);
        (h == 2 ? c2 : c3) += o * o / double(N);
      }
  REQUIRE(cw[1 * 6 + 2] == Approx(c2).epsilon(1e-5));
  REQUIRE(cw[1 * 6 + 3] == Approx(c3).epsilon(1e-5));
  // Scaled by c_h, the key loss is the weighted sum of the per-head logit losses.
  const HeadMetrics gk_res = key_metric(qm, 3, &cw);
  const double wk = ks.evaluate(t, refs, FitOptions{}, gk_res.at(t)).loss;
  std::vector<double> one(36 * 0 + 6 * 2, 0.0);
  double parts = 0.0;
  for (std::int32_t h : {2, 3}) {
    std::vector<double> w(12, 0.0);
    w[std::size_t(6 + h)] = 1.0;
    const HeadMetrics gh = key_metric(qm, 3, &w);
    parts += cw[std::size_t(6 + h)] * ks.evaluate(t, refs, FitOptions{}, gh.at(t)).loss;
  }
  REQUIRE(wk == Approx(parts).epsilon(1e-9));

  // residual_metrics: the same key metric and the value metric, each layer
  // divided by its attention output variance Σ_h c(l, h).
  HeadMoments vsame(2, 3, 8, RefScope::same_layer);
  vsame.add(v.views(), 0, no_holdout);
  const ResidualMetrics raw = residual_metrics(qm, wo, vsame, false), rel = residual_metrics(qm, wo, vsame);
  for (std::int32_t l = 0; l < 2; ++l) {
    double scale = 0.0;
    for (std::size_t h = 0; h < 6; ++h) scale += cw[std::size_t(l) * 6 + h];
    REQUIRE(rel.layer_scale[std::size_t(l)] == Approx(scale).epsilon(1e-9));
    for (std::int32_t g = 0; g < 3; ++g)
      for (std::size_t i = 0; i < d * d; ++i) {
        REQUIRE(raw.key.at({l, g})[i] == Approx(gk_res.at({l, g})[i]).epsilon(1e-9).margin(1e-12));
        REQUIRE(raw.value.at({l, g})[i] == Approx(gv.at({l, g})[i]).epsilon(1e-9).margin(1e-12));
        REQUIRE(rel.value.at({l, g})[i] == Approx(gv.at({l, g})[i] / scale).epsilon(1e-9).margin(1e-12));
        REQUIRE(rel.key.at({l, g})[i] == Approx(gk_res.at({l, g})[i] / scale).epsilon(1e-9).margin(1e-12));
      }
  }
}

TEST_CASE("loss-aware selection follows the query covariance; R² does not", "[loss][select]") {
  // Two layers of 3 KV heads (d = 4), one query head per KV head, references
  // from the same or earlier layers. Every head is an independent base except
  // layer 1's heads 1 and 2: copies of layer 0's head 0 plus noise in
  // complementary components (head 1: components 0-1, head 2: 2-3), head 1
  // slightly less noisy, so R² prefers to rebuild head 1. The queries of both
  // groups are large in components 0-1 (or 2-3): the loss-aware choice follows.
  const std::size_t N = 4000, d = 4;
  std::mt19937 rng(11);
  std::normal_distribution<double> g(0.0, 1.0);
  for (int aligned = 0; aligned < 2; ++aligned) {
    Tokens k{2, N, 3, d, std::vector<float>(2 * N * 3 * d)}, q{2, N, 3, d, std::vector<float>(2 * N * 3 * d)};
    for (std::size_t t = 0; t < N; ++t) {
      for (std::size_t l = 0; l < 2; ++l)
        for (std::size_t h = 0; h < 3; ++h)
          for (std::size_t i = 0; i < d; ++i) k.at(l, t, h)[i] = float(g(rng));
      for (std::size_t i = 0; i < d; ++i) {
        k.at(1, t, 1)[i] = k.at(0, t, 0)[i] + float(i < 2 ? 0.30 * g(rng) : 0.0);
        k.at(1, t, 2)[i] = k.at(0, t, 0)[i] + float(i >= 2 ? 0.33 * g(rng) : 0.0);
      }
      for (std::size_t l = 0; l < 2; ++l)
        for (std::size_t h = 0; h < 3; ++h)
          for (std::size_t i = 0; i < d; ++i) {
            const bool big = aligned ? i < 2 : i >= 2;
            q.at(l, t, h)[i] = float((big ? 5.0 : 0.2) * g(rng));
          }
    }
    HeadMoments ks(2, 3, 4, RefScope::cross_layer);
    ks.add(k.views(), 0, no_holdout);
    QueryMoments qm(2, 3, 4);
    const auto qv = q.views();
    for (std::int32_t l = 0; l < 2; ++l) qm.add(l, qv[std::size_t(l)]);
    const HeadMetrics gk = key_metric(qm, 3);
    // The costs themselves: R² prefers head 1; the loss follows the queries.
    const Evaluation e1 = ks.evaluate({1, 1}, {{0, 0}}, FitOptions{}, gk.at({1, 1}));
    const Evaluation e2 = ks.evaluate({1, 2}, {{0, 0}}, FitOptions{}, gk.at({1, 2}));
    REQUIRE(e1.score() > e2.score());
    REQUIRE((e1.loss > e2.loss) == bool(aligned));
    // And the selection of one target among all six heads.
    BudgetLimits lim;
    lim.max_cached = 5;
    const BudgetResult by_r2 = select_under_budget({{Kind::k, &ks, nullptr}}, lim);
    const BudgetResult by_loss = select_under_budget({{Kind::k, &ks, &gk}}, lim);
    REQUIRE(by_r2.selections[0].layers[1].size() == 1);
    REQUIRE(by_r2.selections[0].layers[1][0].target.head == 1);
    REQUIRE(by_loss.selections[0].layers[1].size() == 1);
    REQUIRE(by_loss.selections[0].layers[1][0].target.head == (aligned ? 2 : 1));
    REQUIRE(by_loss.cached == 5);
  }
}

TEST_CASE("fast forward selection chooses what refitting every candidate chooses", "[select][forward]") {
  SyntheticSpec s;
  s.n_layers = 3;
  s.n_heads = 5;
  s.head_dim = 8;
  s.noise = 0.6;
  s.seed = 5;
  const SyntheticModel m(s);
  const HeadMoments st = headrecon::testing::synthetic_stats(m, Kind::k, RefScope::cross_layer, 3000, 500, no_holdout);
  const FitOptions near_ols{RidgeMode::fixed, 1e-6, 1e-6};
  for (HeadId t : {HeadId{2, 4}, HeadId{1, 3}, HeadId{2, 0}}) {
    std::vector<HeadId> cands;
    for (std::int32_t l = 0; l <= t.layer; ++l)
      for (std::int32_t h = 0; h < 5; ++h)
        if (!(HeadId{l, h} == t)) cands.push_back({l, h});
    const auto fast = forward_references(st, t, cands, 4);
    // Reference: refit every trial set, keep the best in-sample R².
    std::vector<HeadId> refs, left = cands;
    while (refs.size() < 4) {
      double best = -1e300;
      std::size_t bi = 0;
      for (std::size_t i = 0; i < left.size(); ++i) {
        auto trial = refs;
        trial.push_back(left[i]);
        const double r2 = st.evaluate(t, trial, near_ols).in_sample.mean;
        if (r2 > best) best = r2, bi = i;
      }
      refs.push_back(left[bi]);
      left.erase(left.begin() + std::ptrdiff_t(bi));
    }
    REQUIRE(fast == refs);
  }
  // Duplicated and constant candidates do not break it.
  SyntheticSpec s2 = s;
  s2.n_layers = 1;
  const SyntheticModel m2(s2);
  Tokens k = synthetic_tokens(m2, Kind::k, 2000);
  for (std::size_t t = 0; t < k.N; ++t)
    for (std::size_t i = 0; i < k.d; ++i) {
      k.at(0, t, 3)[i] = k.at(0, t, 1)[i];  // head 3 duplicates head 1
      k.at(0, t, 4)[i] = 2.5f;              // head 4 is constant
    }
  HeadMoments hm(1, 5, 8, RefScope::same_layer);
  hm.add(k.views(), 0, no_holdout);
  const auto refs = forward_references(hm, {0, 2}, {{0, 0}, {0, 1}, {0, 3}, {0, 4}}, 4);
  REQUIRE(refs.size() >= 1);
  REQUIRE(std::set<HeadId>(refs.begin(), refs.end()).count({0, 4}) == 0);  // a constant head lowers nothing
  const std::set<HeadId> rs(refs.begin(), refs.end());
  REQUIRE(!(rs.count({0, 1}) && rs.count({0, 3})));  // never both copies
}

TEST_CASE("a whole-model budget is met exactly and reads are counted as the cache reads them", "[select][budget]") {
  SyntheticSpec s;
  s.n_layers = 4;
  s.n_heads = 4;
  s.head_dim = 8;
  s.noise = 0.3;
  const SyntheticModel m(s);
  const HeadMoments ks = headrecon::testing::synthetic_stats(m, Kind::k, RefScope::cross_layer, 2500);
  const HeadMoments vs = headrecon::testing::synthetic_stats(m, Kind::v, RefScope::cross_layer, 2500);
  BudgetOptions three;
  three.max_refs = 3;
  for (std::size_t keep : {31u, 24u, 16u, 9u}) {
    BudgetLimits lim;
    lim.max_cached = keep;
    const BudgetResult r = select_under_budget({{Kind::k, &ks}, {Kind::v, &vs}}, lim, three);
    REQUIRE(r.met);
    REQUIRE(r.cached == keep);
    // The plan's cache layout stores and reads exactly what the selection reports.
    Plan plan;
    plan.head_dim = 8;
    plan.n_layers = 4;
    plan.kinds.push_back(build_kind_plan(ks, r.selections[0], Kind::k, FitOptions{}));
    plan.kinds.push_back(build_kind_plan(vs, r.selections[1], Kind::v, FitOptions{}));
    const RefCacheLayout lay(plan, 4);
    REQUIRE(lay.body_bytes_per_token(DType::f32) == keep * 8 * 4);
    std::size_t reads = 0;
    for (Kind kd : {Kind::k, Kind::v})
      for (std::int32_t l = 0; l < 4; ++l) reads += lay.streams(kd, l).size();
    REQUIRE(reads == r.streams);
    REQUIRE(r.streams >= r.cached);
    // A read bound as tight as the store bound forbids extra cross-layer reads.
    BudgetLimits both = lim;
    both.max_streams = keep;
    const BudgetResult rb = select_under_budget({{Kind::k, &ks}, {Kind::v, &vs}}, both, three);
    REQUIRE(rb.streams <= keep);
    REQUIRE(rb.cached <= keep);
  }
  // A kind whose costs weigh 1000 times more is rebuilt last.
  BudgetLimits lim;
  lim.max_cached = 20;
  KindCosts k{Kind::k, &ks}, v{Kind::v, &vs};
  v.weight = 1000.0;
  const BudgetResult r = select_under_budget({k, v}, lim, three);
  std::size_t kt = 0, vt = 0;
  for (const auto& layer : r.selections[0].layers) kt += layer.size();
  for (const auto& layer : r.selections[1].layers) vt += layer.size();
  REQUIRE(kt + vt == 12);
  REQUIRE(kt >= vt);
}
