#pragma once
/// @file shared.hpp
/// One shared reference set per layer under a cache budget.
///
/// Per layer, the round(budget·H) cached heads C are chosen to maximize the
/// mean score of the heads they rebuild: exhaustively when there are at most
/// 256 subsets of that size, otherwise by backward elimination from all heads
/// followed by single swaps while they improve the objective. Each
/// target's references are all of C by default; with --refs N (or
/// cross-layer statistics) each target instead picks up to N (default |C|)
/// references greedily among C and, cross-layer, earlier layers' cached heads.

#include "headrecon/select.hpp"

namespace headrecon {

class SharedSelection : public SelectionStrategy {
 public:
  std::string name() const override { return "shared"; }
  Selection select(const HeadMoments& stats, const SelectionOptions& opt) const override {
    const ScopedBlasThreads one_thread(1);  // many small LAPACK calls (blas_threads.hpp)
    opt.validate();
    const std::int32_t H = stats.n_heads();
    Selection sel;
    sel.layers.resize(std::size_t(stats.n_layers()));
    for (std::int32_t l = 0; l < stats.n_layers(); ++l) {
      const std::int32_t keep = H - target_count(opt, l, H);
      if (keep == H) continue;
      if (keep == 0) detail::fail("shared: layer ", l, " would keep no head to share");
      std::vector<std::int32_t> best_set;
      double best = -3.0;
      auto consider = [&](const std::vector<std::int32_t>& set) {
        const double s = objective(stats, sel, l, set, opt);
        if (s > best) best = s, best_set = set;
      };
      if (binomial(H, keep) <= 256) {
        std::vector<std::int32_t> set(static_cast<std::size_t>(keep));
        for (std::int32_t i = 0; i < keep; ++i) set[std::size_t(i)] = i;
        while (true) {
          consider(set);
          std::int32_t i = keep - 1;
          while (i >= 0 && set[std::size_t(i)] == H - keep + i) --i;
          if (i < 0) break;
          ++set[std::size_t(i)];
          for (std::int32_t j = i + 1; j < keep; ++j) set[std::size_t(j)] = set[std::size_t(j - 1)] + 1;
        }
      } else {
        // Backward elimination: rebuild, one at a time, the head whose loss
        // keeps the objective highest; then swap single heads in and out of
        // the cached set while that improves it.
        std::vector<std::int32_t> set(static_cast<std::size_t>(H));
        for (std::int32_t h = 0; h < H; ++h) set[std::size_t(h)] = h;
        while (std::int32_t(set.size()) > keep) {
          double round_best = -3.0;
          std::size_t drop = 0;
          for (std::size_t i = 0; i < set.size(); ++i) {
            auto trial = set;
            trial.erase(trial.begin() + std::ptrdiff_t(i));
            const double s = objective(stats, sel, l, trial, opt);
            if (s > round_best) round_best = s, drop = i;
          }
          set.erase(set.begin() + std::ptrdiff_t(drop));
          best = round_best;
        }
        for (bool improved = true; improved;) {
          improved = false;
          for (std::size_t i = 0; i < set.size() && !improved; ++i)
            for (std::int32_t h = 0; h < H && !improved; ++h) {
              if (std::find(set.begin(), set.end(), h) != set.end()) continue;
              auto trial = set;
              trial[i] = h;
              std::sort(trial.begin(), trial.end());
              const double s = objective(stats, sel, l, trial, opt);
              if (s > best + 1e-9) best = s, set = trial, improved = true;
            }
        }
        best_set = set;
      }
      sel.layers[std::size_t(l)] = targets_for(stats, sel, l, best_set, opt);
    }
    return sel;
  }

 private:
  static double binomial(std::int32_t n, std::int32_t k) {
    double c = 1.0;
    for (std::int32_t i = 1; i <= k; ++i) c = c * double(n - k + i) / double(i);
    return c;
  }
  // The targets of layer l (and their references) when `set` stays cached.
  static std::vector<TargetChoice> targets_for(const HeadMoments& stats, const Selection& sel, std::int32_t l,
                                               const std::vector<std::int32_t>& set,
                                               const SelectionOptions& opt) {
    std::vector<HeadId> layer_refs, cached = sel.cached(stats.n_heads(), l - 1);
    for (std::int32_t h : set) layer_refs.push_back({l, h}), cached.push_back({l, h});
    const bool pick = opt.max_refs > 0 || stats.scope() != RefScope::same_layer;
    const int k = opt.max_refs > 0 ? opt.max_refs : int(set.size());
    std::vector<TargetChoice> out;
    for (std::int32_t h = 0; h < stats.n_heads(); ++h) {
      if (std::find(set.begin(), set.end(), h) != set.end()) continue;
      const HeadId t{l, h};
      if (pick) {
        out.push_back(greedy_references(stats, t, detail::candidates_for(stats, t, cached), k, opt.fit));
      } else {
        out.push_back({t, layer_refs, stats.evaluate(t, layer_refs, opt.fit).score()});
      }
    }
    return out;
  }
  static double objective(const HeadMoments& stats, const Selection& sel, std::int32_t l,
                          const std::vector<std::int32_t>& set, const SelectionOptions& opt) {
    const auto targets = targets_for(stats, sel, l, set, opt);
    if (targets.empty()) return 1.0;
    double s = 0.0;
    for (const auto& t : targets) s += t.score;
    return s / double(targets.size());
  }
};

}  // namespace headrecon
