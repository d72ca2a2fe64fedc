// Latent and hybrid references (latent.hpp): latent streams of full width
// rebuild the data exactly, the hybrid with r = d equals caching everything,
// the latent loss equals the discarded eigenvalues of the metric-weighted
// covariance (computed here by an independent Jacobi eigensolver), forward
// selection keeps the head that explains the others, and the whole-model
// allocation meets the budget exactly and equals a brute-force search.
#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "headrecon/latent.hpp"
#include "headrecon/ref_cache.hpp"

using namespace headrecon;

namespace {

constexpr std::int32_t kLayers = 2, kHeads = 4, kDim = 8;
constexpr std::size_t kP = std::size_t(kHeads) * kDim;

// Tokens of each layer: x = F s + offset + noise, s of `rank` components
// ([layer][token][head][dim]).
struct Data {
  std::size_t n;
  std::vector<std::vector<float>> x;  // per layer
};
Data make_data(std::size_t n, std::size_t rank, double noise, std::uint32_t seed,
               const std::function<void(std::vector<double>& f)>& shape_f = {}) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> g;
  Data d{n, {}};
  for (std::int32_t l = 0; l < kLayers; ++l) {
    std::vector<double> f(kP * rank), off(kP);
    for (auto& v : f) v = g(rng);
    if (shape_f) shape_f(f);
    for (auto& v : off) v = 2.0 * g(rng);
    std::vector<float> x(n * kP);
    std::vector<double> s(rank);
    for (std::size_t t = 0; t < n; ++t) {
      for (auto& v : s) v = g(rng);
      for (std::size_t i = 0; i < kP; ++i) {
        double acc = off[i] + noise * g(rng);
        for (std::size_t k = 0; k < rank; ++k) acc += f[i * rank + k] * s[k];
        x[t * kP + i] = float(acc);
      }
    }
    d.x.push_back(std::move(x));
  }
  return d;
}

HeadMoments stats_of(const Data& d, HoldoutSplit split) {
  HeadMoments hm(kLayers, kHeads, kDim, RefScope::same_layer);
  std::vector<AnyHeadsView> views;
  for (const auto& x : d.x)
    views.push_back(erase(make_view<const float>(x.data(), x.size(), Extents3{d.n, kHeads, kDim}, Layout::token_major)));
  hm.add(views, 0, split);
  return hm;
}

// Applies a fitted layer to token t of layer l: the rebuilt heads, as the store
// and kernels would (latent streams projected in double, rounded to float).
std::vector<double> rebuild(const LatentLayerFit& f, const Data& d, std::int32_t l, std::size_t t, const TargetMap& tm) {
  const float* x = d.x[std::size_t(l)].data() + t * kP;
  std::vector<double> y(kDim);
  for (std::size_t j = 0; j < std::size_t(kDim); ++j) y[j] = tm.bias[j];
  for (std::size_t r = 0; r < tm.refs.size(); ++r) {
    std::vector<double> src(kDim);
    const HeadId id = tm.refs[r];
    if (id.head < kHeads) {
      for (std::size_t i = 0; i < std::size_t(kDim); ++i) src[i] = x[std::size_t(id.head) * kDim + i];
    } else {
      const auto& P = f.latent[std::size_t(id.head - kHeads)].projection;
      for (std::size_t k = 0; k < std::size_t(kDim); ++k) {
        double z = 0;
        for (std::size_t i = 0; i < kP; ++i) z += double(x[i]) * double(P[i * kDim + k]);
        src[k] = double(float(z));
      }
    }
    for (std::size_t i = 0; i < std::size_t(kDim); ++i)
      for (std::size_t j = 0; j < std::size_t(kDim); ++j) y[j] += src[i] * double(tm.weight[(r * kDim + i) * kDim + j]);
  }
  return y;
}

double max_rel_error(const LatentLayerFit& f, const Data& d, std::int32_t l) {
  double worst = 0;
  for (const TargetMap& tm : f.targets)
    for (std::size_t t = 0; t < d.n; t += 7) {
      const auto y = rebuild(f, d, l, t, tm);
      for (std::size_t j = 0; j < std::size_t(kDim); ++j) {
        const double ref = d.x[std::size_t(l)][t * kP + std::size_t(tm.target.head) * kDim + j];
        worst = std::max(worst, std::fabs(y[j] - ref) / (1.0 + std::fabs(ref)));
      }
    }
  return worst;
}

// Eigenvalues of a symmetric matrix by cyclic Jacobi rotations (independent of LAPACK), descending.
std::vector<double> jacobi_eigenvalues(std::vector<double> a, std::size_t n) {
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0;
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = i + 1; j < n; ++j) off += a[i * n + j] * a[i * n + j];
    if (off < 1e-24) break;
    for (std::size_t p = 0; p < n; ++p)
      for (std::size_t q = p + 1; q < n; ++q) {
        if (std::fabs(a[p * n + q]) < 1e-300) continue;
        const double th = (a[q * n + q] - a[p * n + p]) / (2 * a[p * n + q]);
        const double t = (th >= 0 ? 1 : -1) / (std::fabs(th) + std::sqrt(th * th + 1));
        const double c = 1 / std::sqrt(t * t + 1), s = t * c;
        for (std::size_t k = 0; k < n; ++k) {  // columns p, q
          const double akp = a[k * n + p], akq = a[k * n + q];
          a[k * n + p] = c * akp - s * akq;
          a[k * n + q] = s * akp + c * akq;
        }
        for (std::size_t k = 0; k < n; ++k) {  // rows p, q
          const double apk = a[p * n + k], aqk = a[q * n + k];
          a[p * n + k] = c * apk - s * aqk;
          a[q * n + k] = s * apk + c * aqk;
        }
      }
  }
  std::vector<double> ev(n);
  for (std::size_t i = 0; i < n; ++i) ev[i] = a[i * n + i];
  std::sort(ev.rbegin(), ev.rend());
  return ev;
}

}  // namespace

TEST_CASE("latent streams of full width rebuild the data exactly", "[latent]") {
  const Data d = make_data(3000, kP, 0.0, 1);  // full rank
  const HeadMoments st = stats_of(d, HoldoutSplit{0.25, 64});
  const FitOptions ols{RidgeMode::fixed, 0.0};
  const LatentLayerFit f = fit_latent_layer(st, nullptr, Kind::k, 1, 0, kHeads, ols);
  REQUIRE(f.kept.empty());
  REQUIRE(f.latent.size() == std::size_t(kHeads));
  REQUIRE(f.targets.size() == std::size_t(kHeads));
  for (const auto& r : f.report) CHECK(r.r2_heldout > 1 - 1e-6);
  CHECK(f.loss < 1e-6);
  CHECK(max_rel_error(f, d, 1) < 2e-4);
}

TEST_CASE("hybrid with one latent stream per rebuilt head equals caching everything", "[latent]") {
  const Data d = make_data(3000, kP, 0.0, 2);
  const HeadMoments st = stats_of(d, HoldoutSplit{0.25, 64});
  const FitOptions ols{RidgeMode::fixed, 0.0};
  const LatentLayerFit f = fit_latent_layer(st, nullptr, Kind::v, 0, kHeads - 1, 1, ols);
  REQUIRE(f.kept.size() == std::size_t(kHeads - 1));
  REQUIRE(f.latent.size() == 1);
  REQUIRE(f.targets.size() == 1);
  CHECK(f.targets[0].refs.size() == std::size_t(kHeads));  // 3 heads + 1 stream
  CHECK(f.targets[0].refs.back() == HeadId{0, kHeads});
  CHECK(f.report[0].r2_heldout > 1 - 1e-6);
  CHECK(max_rel_error(f, d, 0) < 2e-4);
  // Without the stream the same head is not exact (the data has full rank).
  const LatentLayerFit h = fit_latent_layer(st, nullptr, Kind::v, 0, kHeads - 1, 0, ols);
  CHECK(h.report[0].r2_heldout < 0.99);
}

TEST_CASE("the latent loss is the metric-weighted covariance's discarded eigenvalues", "[latent]") {
  // Rank 12 < 32 plus noise: every eigenvalue matters. In-sample (no held-out
  // split) so that the least-squares refit attains the truncation exactly.
  const Data d = make_data(4000, 12, 0.3, 3);
  const HeadMoments st = stats_of(d, HoldoutSplit{0.0, 64});
  const FitOptions ols{RidgeMode::fixed, 0.0};
  HeadMetrics m(kLayers, kHeads, kDim);  // diagonal metrics with unequal weights
  std::mt19937 rng(9);
  std::uniform_real_distribution<double> w(0.1, 3.0);
  for (std::int32_t l = 0; l < kLayers; ++l)
    for (std::int32_t h = 0; h < kHeads; ++h)
      for (std::int32_t i = 0; i < kDim; ++i) m.at({l, h})[i * kDim + i] = w(rng) * (h == 0 ? 10.0 : 1.0);
  const std::int32_t l = 1;
  const auto& g = st.group({l, 0}).train;
  std::vector<double> c(kP * kP);
  for (std::size_t i = 0; i < kP; ++i)
    for (std::size_t j = 0; j < kP; ++j) c[i * kP + j] = g.comoment(i, j) / double(g.count());
  for (bool with_metric : {true, false}) {
    // M^½ C M^½ with M = the metric (or 1 / each head's variance).
    std::vector<double> s(kP);
    for (std::size_t i = 0; i < kP; ++i) {
      const std::size_t h = i / kDim;
      double tr = 0;
      for (std::size_t k = 0; k < std::size_t(kDim); ++k) tr += c[(h * kDim + k) * kP + h * kDim + k];
      s[i] = with_metric ? std::sqrt(m.at({l, std::int32_t(h)})[(i % kDim) * (kDim + 1)]) : 1.0 / std::sqrt(tr);
    }
    std::vector<double> a(kP * kP);
    for (std::size_t i = 0; i < kP; ++i)
      for (std::size_t j = 0; j < kP; ++j) a[i * kP + j] = s[i] * c[i * kP + j] * s[j];
    const std::vector<double> ev = jacobi_eigenvalues(a, kP);
    for (std::size_t streams = 1; streams < std::size_t(kHeads); ++streams) {
      const LatentLayerFit f = fit_latent_layer(st, with_metric ? &m : nullptr, Kind::k, l, 0, streams, ols);
      double discarded = 0;
      for (std::size_t k = streams * kDim; k < kP; ++k) discarded += ev[k];
      INFO((with_metric ? "metric" : "variance-weighted") << ", " << streams << " streams");
      CHECK(f.loss == Approx(discarded).epsilon(1e-5));
    }
  }
}

TEST_CASE("hybrid keeps the head that explains the others", "[latent]") {
  // Every head is a linear map of head 2's 8 factors plus small noise.
  const Data d = make_data(3000, kDim, 0.05, 4, [](std::vector<double>& f) {
    std::mt19937 rng(5);
    std::normal_distribution<double> g;
    // Head 2 = the factors exactly; other heads: random mixes of them, scaled down.
    for (std::size_t i = 0; i < kP; ++i)
      for (std::size_t k = 0; k < std::size_t(kDim); ++k)
        f[i * kDim + k] = i / kDim == 2 ? (i % kDim == k ? 1.0 : 0.0) : 0.5 * g(rng);
  });
  const HeadMoments st = stats_of(d, HoldoutSplit{0.25, 64});
  const LatentLayerFit f = fit_latent_layer(st, nullptr, Kind::k, 0, 1, 0);
  REQUIRE(f.kept == std::vector<std::int32_t>{2});
  for (const auto& r : f.report) CHECK(r.r2_heldout > 0.9);
  REQUIRE_THROWS_WITH(fit_latent_layer(st, nullptr, Kind::k, 0, 0, 0), Catch::Contains("would store nothing"));
  REQUIRE_THROWS_WITH(fit_latent_layer(st, nullptr, Kind::k, 0, 2, 3), Catch::Contains("at most one latent stream"));
}

TEST_CASE("select_latent_model meets the budget exactly and equals brute force", "[latent]") {
  const Data dk = make_data(3000, 10, 0.2, 6), dv = make_data(3000, 14, 0.2, 7);
  const HeadMoments sk = stats_of(dk, HoldoutSplit{0.25, 64}), sv = stats_of(dv, HoldoutSplit{0.25, 64});
  std::vector<KindCosts> kinds{{Kind::k, &sk}, {Kind::v, &sv, nullptr, 2.0}};
  for (bool hybrid : {true, false})
    for (std::size_t budget : {4u, 7u, 11u, 16u}) {
      LatentModelOptions o;
      o.hybrid = hybrid;
      const LatentModelResult r = select_latent_model(kinds, budget, o);
      INFO((hybrid ? "hybrid" : "latent") << " budget " << budget);
      REQUIRE(r.cached == budget);
      Plan plan;
      plan.head_dim = kDim;
      plan.n_layers = kLayers;
      plan.kinds = r.kinds;
      plan.validate();
      const RefCacheLayout lay(plan, kHeads);
      CHECK(lay.body_bytes_per_token(DType::f32) == budget * kDim * sizeof(float));
      // Brute force over every allocation with every split.
      std::vector<std::vector<double>> best(4, std::vector<double>(kHeads + 1, 1e300));
      for (std::size_t gi = 0; gi < 4; ++gi) {
        best[gi][kHeads] = 0;
        const KindCosts& k = kinds[gi / kLayers];
        for (std::size_t s = 1; s < std::size_t(kHeads); ++s)
          for (std::size_t m = hybrid ? 0 : s; m <= s; ++m) {
            const auto f = fit_latent_layer(*k.stats, nullptr, k.kind, std::int32_t(gi % kLayers), s - m, m);
            best[gi][s] = std::min(best[gi][s], k.weight * f.loss);
          }
      }
      double brute = 1e300;
      for (std::size_t a = 1; a <= 4; ++a)
        for (std::size_t b = 1; b <= 4; ++b)
          for (std::size_t c = 1; c <= 4; ++c)
            for (std::size_t e = 1; e <= 4; ++e)
              if (a + b + c + e == budget) brute = std::min(brute, best[0][a] + best[1][b] + best[2][c] + best[3][e]);
      CHECK(r.total_cost == Approx(brute).epsilon(1e-12));
      if (!hybrid)
        for (const auto& kp : r.kinds)
          for (const auto& layer : kp.layers)
            for (const auto& t : layer)
              for (HeadId ref : t.refs) CHECK(kp.is_latent(ref));
    }
  REQUIRE_THROWS_WITH(select_latent_model(kinds, 3), Catch::Contains("below one stream per layer and kind (4)"));
}

TEST_CASE("refit with earlier layers' streams: maps applied to the tokens give the reported R2", "[latent]") {
  // Both layers mix the same 12 factors (plus noise): layer 1 is predictable from layer 0.
  constexpr std::size_t n = 3000, rank = 12;
  std::mt19937 rng(12);
  std::normal_distribution<double> g;
  Data d{n, {}};
  std::vector<std::vector<double>> f(kLayers, std::vector<double>(kP * rank));
  for (auto& fl : f)
    for (auto& v : fl) v = g(rng);
  d.x.assign(kLayers, std::vector<float>(n * kP));
  std::vector<double> s(rank);
  for (std::size_t t = 0; t < n; ++t) {
    for (auto& v : s) v = g(rng);
    for (std::int32_t l = 0; l < kLayers; ++l)
      for (std::size_t i = 0; i < kP; ++i) {
        double acc = 0.3 * g(rng);
        for (std::size_t k = 0; k < rank; ++k) acc += f[std::size_t(l)][i * rank + k] * s[k];
        d.x[std::size_t(l)][t * kP + i] = float(acc);
      }
  }
  HeadMoments same(kLayers, kHeads, kDim, RefScope::same_layer), wide(kLayers, kHeads, kDim, RefScope::cross_layer_window, 1);
  std::vector<AnyHeadsView> views;
  for (const auto& x : d.x)
    views.push_back(erase(make_view<const float>(x.data(), x.size(), Extents3{n, kHeads, kDim}, Layout::token_major)));
  same.add(views, 0, HoldoutSplit{0.0, 64});
  wide.add(views, 0, HoldoutSplit{0.0, 64});
  const FitOptions ols{RidgeMode::fixed, 0.0};
  LatentModelOptions o;
  o.fit = ols;
  LatentModelResult r = select_latent_model({KindCosts(Kind::k, &wide)}, 3, o);  // 3 streams over 2 layers
  const LatentModelResult before = select_latent_model({KindCosts(Kind::k, &same)}, 3, o);
  REQUIRE_THROWS_WITH(refit_with_earlier_layers(r, {KindCosts(Kind::k, &same)}, 1),
                      Catch::Contains("need statistics of those layers"));
  refit_with_earlier_layers(r, {KindCosts(Kind::k, &wide)}, 1, ols);
  Plan plan;
  plan.head_dim = kDim;
  plan.n_layers = kLayers;
  plan.kinds = r.kinds;
  plan.validate();
  const KindPlan& kp = plan.kinds[0];
  REQUIRE(!kp.layers[1].empty());
  bool reads_earlier = false;
  for (const TargetMap& tm : kp.layers[1]) {
    double sse = 0, sst = 0, mean[kDim] = {};
    for (std::size_t t = 0; t < n; ++t)
      for (std::size_t j = 0; j < std::size_t(kDim); ++j) mean[j] += d.x[1][t * kP + std::size_t(tm.target.head) * kDim + j] / double(n);
    double r2_sum = 0;
    for (std::size_t j = 0; j < std::size_t(kDim); ++j) {
      sse = sst = 0;
      for (std::size_t t = 0; t < n; ++t) {
        double y = tm.bias[j];
        for (std::size_t ri = 0; ri < tm.refs.size(); ++ri) {
          const HeadId id = tm.refs[ri];
          const float* x = d.x[std::size_t(id.layer)].data() + t * kP;
          for (std::size_t i = 0; i < std::size_t(kDim); ++i) {
            double src;
            if (id.head < kHeads) {
              src = x[std::size_t(id.head) * kDim + i];
            } else {
              const auto& P = kp.latent[std::size_t(id.layer)][std::size_t(id.head - kHeads)].projection;
              double z = 0;
              for (std::size_t c = 0; c < kP; ++c) z += double(x[c]) * double(P[c * kDim + i]);
              src = z;
            }
            y += src * double(tm.weight[(ri * kDim + i) * kDim + j]);
          }
        }
        const double truth = d.x[1][t * kP + std::size_t(tm.target.head) * kDim + j];
        sse += (truth - y) * (truth - y);
        sst += (truth - mean[j]) * (truth - mean[j]);
      }
      r2_sum += 1 - sse / sst;
    }
    for (HeadId id : tm.refs) reads_earlier = reads_earlier || id.layer == 0;
    const TargetReport* rep = nullptr;
    for (const auto& x : r.reports[0])
      if (x.target == tm.target) rep = &x;
    REQUIRE(rep);
    CHECK(rep->r2_in_sample == Approx(r2_sum / kDim).margin(1e-4));
    const TargetReport* old = nullptr;
    for (const auto& x : before.reports[0])
      if (x.target == tm.target) old = &x;
    if (old) CHECK(rep->r2_in_sample >= old->r2_in_sample - 1e-9);
  }
  CHECK(reads_earlier);
}
