#pragma once
/// @file probe_weights.hpp
/// Per-layer weights of the loss-aware costs from a direct probe: an engine
/// rebuilds each (kind, layer) group of some plan's targets alone and
/// measures what the model loses (e.g. the KL divergence of its output
/// distribution, headrecon-engine probe). The weight of (kind, layer) is that
/// loss over the group's cost under the statistics' metric, so a weighted
/// cost estimates the probe's unit; a layer the probe did not cover gets the
/// median weight of its kind, and every weight is kept within a factor of 8
/// of that median (a probe over a few hundred tokens is noisy; one bad layer
/// must not make a layer free or forbidden).

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "headrecon/select/budget.hpp"

namespace headrecon {

/// One probed group: a kind's targets of one layer (with the references they
/// were rebuilt from) and the measured loss (>= 0).
struct ProbedGroup {
  Kind kind = Kind::k;
  std::int32_t layer = 0;
  std::vector<TargetChoice> targets;
  double loss = 0.0;
};

/// Sets kinds[i].layer_weight from `groups` (groups of the same kind and layer
/// pool: Σ loss / Σ cost); returns how many groups were used.
/// Throws Error naming a group whose kind is not in `kinds`, whose targets or
/// references are out of range, or whose loss is negative or not finite.
inline std::size_t apply_probe_weights(std::vector<KindCosts>& kinds, const std::vector<ProbedGroup>& groups,
                                       const FitOptions& fit = {RidgeMode::fixed, 1e-6, 1e-6}) {
  std::size_t used = 0;
  for (KindCosts& kc : kinds) {
    const std::int32_t L = kc.stats->n_layers();
    std::vector<double> loss(std::size_t(L), 0.0), costs(std::size_t(L), 0.0);
    for (const ProbedGroup& g : groups) {
      if (g.kind != kc.kind) continue;
      if (g.layer < 0 || g.layer >= L) detail::fail("probe: layer ", g.layer, " is outside ", L, " layers");
      if (!(g.loss >= 0.0) || !std::isfinite(g.loss))
        detail::fail("probe: ", kind_name(g.kind), " layer ", g.layer, ": loss ", g.loss, " is not a finite value >= 0");
      double cost = 0.0;
      for (const TargetChoice& t : g.targets) {
        if (t.target.layer != g.layer)
          detail::fail("probe: ", kind_name(g.kind), " layer ", g.layer, " lists target ", t.target.layer, ".",
                       t.target.head);
        const Evaluation ev =
            kc.stats->evaluate(t.target, t.refs, fit, kc.metric ? kc.metric->at(t.target) : nullptr, false);
        cost += kc.metric ? (kc.relative ? ev.loss / std::max(ev.loss_base, 1e-300) : ev.loss) : 1.0 - ev.score();
      }
      if (cost > 0.0) loss[std::size_t(g.layer)] += g.loss, costs[std::size_t(g.layer)] += cost, ++used;
    }
    // Several groups of one (kind, layer) (probes of several plans) pool.
    std::vector<double> w(std::size_t(L), std::numeric_limits<double>::quiet_NaN());
    for (std::size_t l = 0; l < w.size(); ++l)
      if (costs[l] > 0.0) w[l] = loss[l] / costs[l];
    std::vector<double> known;
    for (double x : w)
      if (!std::isnan(x)) known.push_back(x);
    if (known.empty()) continue;
    std::nth_element(known.begin(), known.begin() + std::ptrdiff_t(known.size() / 2), known.end());
    const double median = known[known.size() / 2];
    for (double& x : w) x = std::isnan(x) ? median : std::clamp(x, median / 8.0, median * 8.0);
    kc.layer_weight = w;
  }
  return used;
}

}  // namespace headrecon
