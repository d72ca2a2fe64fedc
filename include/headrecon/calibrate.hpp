#pragma once
/// @file calibrate.hpp
/// From statistics and a selection to the maps of a plan: each target is fitted
/// on its references (training split) and scored on the held-out split.

#include <cmath>
#include <vector>

#include "headrecon/head_moments.hpp"
#include "headrecon/plan.hpp"
#include "headrecon/select.hpp"

namespace headrecon {

/// What was measured for one rebuilt head.
struct TargetReport {
  HeadId target;
  std::vector<HeadId> refs;
  double r2_heldout = 0.0;   ///< mean over dims, clipped at −1 (in-sample when has_heldout is false)
  double r2_in_sample = 0.0;
  double r2_weighted = 0.0;  ///< variance-weighted, held-out (in-sample when has_heldout is false)
  bool has_heldout = true;   ///< false: the statistics had no held-out tokens, r2_heldout is in-sample
  double lambda = 0.0;       ///< relative ridge used
  SolveMethod method = SolveMethod::cholesky;
  std::size_t rank = 0, in_dim = 0;
};

/// Fits every target of `sel` with `fit` and returns the kind's plan; fills
/// `report` (one entry per target, layer by layer) when given.
inline KindPlan build_kind_plan(const HeadMoments& stats, const Selection& sel, Kind kind, const FitOptions& fit,
                                std::vector<TargetReport>* report = nullptr) {
  const ScopedBlasThreads one_thread(1);  // many small LAPACK calls (blas_threads.hpp)
  KindPlan kp;
  kp.kind = kind;
  kp.n_heads = stats.n_heads();
  kp.layers.resize(std::size_t(stats.n_layers()));
  if (sel.layers.size() != kp.layers.size())
    detail::fail("build_kind_plan: selection has ", sel.layers.size(), " layers, statistics ", kp.layers.size());
  for (std::size_t l = 0; l < sel.layers.size(); ++l) {
    for (const TargetChoice& tc : sel.layers[l]) {
      for (HeadId r : tc.refs)
        if (sel.is_target(r))
          detail::fail("build_kind_plan: reference (", r.layer, ", ", r.head, ") of (", tc.target.layer, ", ",
                       tc.target.head, ") is itself a target");
      const Evaluation ev = stats.evaluate(tc.target, tc.refs, fit);
      TargetMap tm;
      tm.target = tc.target;
      tm.refs = tc.refs;
      tm.weight.assign(ev.map.weight.begin(), ev.map.weight.end());
      tm.bias.assign(ev.map.bias.begin(), ev.map.bias.end());
      // The plan stores float: a map beyond its range (references ~1e-30 rebuilding
      // a head ~1e20, say) cannot be stored and is an error, never an infinity.
      for (std::size_t i = 0; i < tm.weight.size() + tm.bias.size(); ++i) {
        const double v = i < tm.weight.size() ? ev.map.weight[i] : ev.map.bias[i - tm.weight.size()];
        const float f = i < tm.weight.size() ? tm.weight[i] : tm.bias[i - tm.weight.size()];
        if (!std::isfinite(f))
          detail::fail("map of ", kind_name(kind), " head ", tc.target.layer, ".", tc.target.head, ": ",
                       i < tm.weight.size() ? "weight " : "bias ", v,
                       " is outside float range (references and target differ in scale by too much)");
      }
      tm.r2_heldout = float(ev.score());
      kp.layers[l].push_back(std::move(tm));
      if (report) {
        const R2Score& main = ev.has_heldout ? ev.heldout : ev.in_sample;
        report->push_back({tc.target, tc.refs, ev.score(), ev.in_sample.mean, main.weighted, ev.has_heldout,
                           ev.map.lambda, ev.map.method, ev.map.rank, ev.map.in_dim});
      }
    }
  }
  return kp;
}

}  // namespace headrecon
