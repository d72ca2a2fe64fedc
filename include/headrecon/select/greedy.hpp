#pragma once
/// @file greedy.hpp
/// Per-target greedy forward selection.
///
/// Layers are decided from first to last. In each layer, while fewer than
/// H − round(budget·H) heads are rebuilt, every still-cached head is scored by
/// greedy forward selection of up to k references among the heads still
/// cached (and, with cross-layer statistics, the cached heads of earlier
/// layers); the best-predicted head becomes a target. Finally each target's
/// references are re-chosen greedily from the final cached set.
/// k = --refs, default 5.

#include "headrecon/select.hpp"

namespace headrecon {

class GreedySelection : public SelectionStrategy {
 public:
  std::string name() const override { return "greedy"; }
  Selection select(const HeadMoments& stats, const SelectionOptions& opt) const override {
    const ScopedBlasThreads one_thread(1);  // many small LAPACK calls (blas_threads.hpp)
    opt.validate();
    const int k = opt.max_refs > 0 ? opt.max_refs : 5;
    const std::int32_t H = stats.n_heads();
    Selection sel;
    sel.layers.resize(std::size_t(stats.n_layers()));
    for (std::int32_t l = 0; l < stats.n_layers(); ++l) {
      const std::int32_t n_targets = target_count(opt, l, H);
      auto& layer = sel.layers[std::size_t(l)];
      for (std::int32_t round = 0; round < n_targets; ++round) {
        const auto cached = sel.cached(H, l);
        TargetChoice best{{l, -1}, {}, -3.0};
        for (HeadId h : cached) {
          if (h.layer != l) continue;
          TargetChoice tc = greedy_references(stats, h, detail::candidates_for(stats, h, cached), k, opt.fit);
          if (!tc.refs.empty() && tc.score > best.score) best = tc;
        }
        if (best.target.head < 0) break;  // nothing left to predict from
        layer.push_back(best);
      }
      const auto cached = sel.cached(H, l);
      for (TargetChoice& t : layer)
        t = greedy_references(stats, t.target, detail::candidates_for(stats, t.target, cached), k, opt.fit);
      std::sort(layer.begin(), layer.end(),
                [](const TargetChoice& a, const TargetChoice& b) { return a.target.head < b.target.head; });
    }
    return sel;
  }
};

}  // namespace headrecon
