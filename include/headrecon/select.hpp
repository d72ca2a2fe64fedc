#pragma once
/// @file select.hpp
/// Head selection: which heads of each layer stay cached and which references
/// every rebuilt (target) head uses. Each strategy is a SelectionStrategy;
/// make_strategy() builds one by name. The strategies live in select/.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "headrecon/blas_threads.hpp"
#include "headrecon/error.hpp"
#include "headrecon/head_moments.hpp"
#include "headrecon/plan.hpp"
#include "headrecon/select/forward.hpp"

namespace headrecon {

/// Knobs shared by every strategy.
struct SelectionOptions {
  /// Fraction of each layer's heads that stay cached: round(budget·H),
  /// at least 1. 0.4 on 5 heads keeps 2 and rebuilds 3.
  double budget = 0.5;
  /// Cap on references per target; 0 = the strategy's default.
  int max_refs = 0;
  /// Fit used to score candidate reference sets.
  FitOptions fit{RidgeMode::fixed, 1e-6, 1e-6};
  std::uint64_t seed = 0;  ///< for the random baseline
  /// When not empty: the number of targets of each layer, instead of the
  /// budget fraction (a whole-model budget split over the layers). The graph
  /// strategy takes only their sum (the paper's procedure has no per-layer cap).
  std::vector<std::int32_t> targets_per_layer;

  void validate() const {
    if (!(budget > 0.0 && budget <= 1.0)) detail::fail("budget must be in (0, 1], got ", budget);
    if (max_refs < 0) detail::fail("--refs must be >= 0, got ", max_refs);
    for (std::int32_t n : targets_per_layer)
      if (n < 0) detail::fail("targets per layer must be >= 0, got ", n);
  }
};

/// Number of heads of a layer of `n_heads` that stay cached under `budget`.
inline std::int32_t cached_count(std::int32_t n_heads, double budget) {
  const auto keep = std::int32_t(std::floor(budget * double(n_heads) + 0.5 + 1e-9));
  return std::clamp(keep, std::int32_t(1), n_heads);
}

/// Number of targets of `layer` (of `n_heads`) under `opt`: the per-layer
/// count when given, else the heads the budget fraction does not keep.
inline std::int32_t target_count(const SelectionOptions& opt, std::int32_t layer, std::int32_t n_heads) {
  if (!opt.targets_per_layer.empty()) {
    if (layer < 0 || std::size_t(layer) >= opt.targets_per_layer.size())
      detail::fail("targets_per_layer has ", opt.targets_per_layer.size(), " layers, layer ", layer, " asked");
    return std::min(opt.targets_per_layer[std::size_t(layer)], n_heads);
  }
  return n_heads - cached_count(n_heads, opt.budget);
}

/// A rebuilt head and its references.
struct TargetChoice {
  HeadId target;
  std::vector<HeadId> refs;
  double score = 0.0;  ///< held-out R² (in-sample without a held-out split) while selecting
};

/// A selection: per layer, the rebuilt heads with their references.
struct Selection {
  std::vector<std::vector<TargetChoice>> layers;

  bool is_target(HeadId h) const {
    if (h.layer < 0 || std::size_t(h.layer) >= layers.size()) return false;
    for (const auto& t : layers[std::size_t(h.layer)])
      if (t.target == h) return true;
    return false;
  }
  /// Cached heads of layers [0, last] (all layers when last < 0).
  std::vector<HeadId> cached(std::int32_t n_heads, std::int32_t last) const {
    std::vector<HeadId> out;
    for (std::int32_t l = 0; l <= last; ++l)
      for (std::int32_t h = 0; h < n_heads; ++h)
        if (!is_target({l, h})) out.push_back({l, h});
    return out;
  }
};

/// A head-selection strategy. select() decides, for every layer, the heads
/// that are rebuilt and each target's references, so that no reference is a
/// target and every reference is allowed by the statistics' scope.
class SelectionStrategy {
 public:
  virtual ~SelectionStrategy() = default;
  virtual std::string name() const = 0;
  virtual Selection select(const HeadMoments& stats, const SelectionOptions& opt) const = 0;
};

namespace detail {
/// The references `target` may use when `cached` heads are kept.
inline std::vector<HeadId> candidates_for(const HeadMoments& stats, HeadId target,
                                          const std::vector<HeadId>& cached) {
  std::vector<HeadId> out;
  for (HeadId c : cached)
    if (stats.allowed(target, c)) out.push_back(c);
  return out;
}
}  // namespace detail

/// Greedy forward selection: adds, one at a time, the candidate that most
/// lowers the target's training-split error (in-sample R², fast block updates:
/// forward.hpp), up to k references or until no candidate helps; the chosen
/// set is then fitted with `fit` and scored (held-out R² when a held-out split
/// exists). Returns the references in order of choice and that score.
inline TargetChoice greedy_references(const HeadMoments& stats, HeadId target, std::vector<HeadId> candidates,
                                      int k, const FitOptions& fit) {
  TargetChoice tc{target, {}, -1.0};
  if (candidates.empty() || k <= 0) return tc;
  tc.refs = forward_references(stats, target, candidates, k);
  if (tc.refs.empty()) tc.refs.push_back(candidates.front());  // nothing helps: any one reference
  tc.score = stats.evaluate(target, tc.refs, fit).score();
  return tc;
}

}  // namespace headrecon

#include "headrecon/select/fixed.hpp"
#include "headrecon/select/graph.hpp"
#include "headrecon/select/greedy.hpp"
#include "headrecon/select/random.hpp"
#include "headrecon/select/shared.hpp"

namespace headrecon {
/// Builds a strategy by name: greedy, shared, graph, random (fixed needs its
/// spec: use FixedSelection directly or make_strategy("fixed", spec)).
inline std::unique_ptr<SelectionStrategy> make_strategy(const std::string& name, const std::string& spec = "") {
  if (name == "greedy") return std::make_unique<GreedySelection>();
  if (name == "shared") return std::make_unique<SharedSelection>();
  if (name == "graph") return std::make_unique<GraphSelection>();
  if (name == "random") return std::make_unique<RandomSelection>();
  if (name == "fixed") return std::make_unique<FixedSelection>(FixedSelection::parse(spec));
  detail::fail("unknown strategy '", name, "' (expected greedy, shared, graph, fixed or random)");
}
}  // namespace headrecon
