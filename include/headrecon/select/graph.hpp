#pragma once
/// @file graph.hpp
/// The paper's graph procedure (arXiv 2603.13314, reference code).
///
/// Every allowed (source → target) pair gets an edge scored by the held-out
/// R² of a one-source fit. For a threshold τ, heads are visited from the last
/// layer to the first (within a layer, the highest sum of its best max_refs
/// edges above τ first); a
/// head becomes a target when it is not already a reference of a chosen
/// target, its layer has fewer than H − round(budget·H) targets (with a
/// whole-model count, SelectionOptions::targets_per_layer, only the total
/// counts: the paper has no per-layer cap), and it has at
/// least min_refs incoming edges with R² ≥ τ from heads that are not targets;
/// it keeps the best max_refs of them (max_refs = --refs when given, else 6),
/// which can no longer become targets. τ is the largest edge score (on a grid
/// of up to 256 quantiles) that reaches the budget's number of targets, or
/// failing that the one reaching the most. The paper binary-searches τ; the
/// count is not monotone in τ, so a scan is used. Heads with fewer than
/// min_refs candidates (e.g. same-layer scope with few heads) stay cached.


#include "headrecon/select.hpp"

namespace headrecon {

class GraphSelection : public SelectionStrategy {
 public:
  int min_refs = 4;  ///< a target needs at least this many non-target sources above τ
  int max_refs = 6;  ///< and keeps at most this many (capped by --refs)
  mutable double threshold = 0.0;  ///< τ chosen by the last select() (for reports)

  std::string name() const override { return "graph"; }
  Selection select(const HeadMoments& stats, const SelectionOptions& opt) const override {
    const ScopedBlasThreads one_thread(1);  // many small LAPACK calls (blas_threads.hpp)
    opt.validate();
    const std::int32_t L = stats.n_layers(), H = stats.n_heads();
    const int hi_refs = opt.max_refs > 0 ? opt.max_refs : max_refs;
    const int lo_refs = std::min(min_refs, hi_refs);
    if (lo_refs < 1) detail::fail("graph: min_refs must be >= 1");
    // Per-layer budget: every layer at most its share; a whole-model count
    // (targets_per_layer): only the total, as the paper's procedure.
    const bool total_only = !opt.targets_per_layer.empty();
    std::size_t desired = 0;
    for (std::int32_t l = 0; l < L; ++l) desired += std::size_t(target_count(opt, l, H));
    const auto cap_of = [&](std::int32_t l) { return total_only ? H : target_count(opt, l, H); };

    // In-edges of every head: (source, one-source score), best first.
    std::vector<std::vector<std::pair<HeadId, double>>> in(std::size_t(L * H));
    for (std::int32_t tl = 0; tl < L; ++tl)
      for (std::int32_t th = 0; th < H; ++th)
        for (std::int32_t sl = 0; sl <= tl; ++sl)
          for (std::int32_t sh = 0; sh < H; ++sh) {
            const HeadId t{tl, th}, s{sl, sh};
            if (!stats.allowed(t, s)) continue;
            in[std::size_t(tl * H + th)].push_back({s, stats.evaluate(t, {s}, opt.fit).score()});
          }
    for (auto& e : in)
      std::stable_sort(e.begin(), e.end(), [](const auto& a, const auto& b) { return a.second > b.second; });

    auto run = [&](double tau) {
      Selection sel;
      sel.layers.resize(std::size_t(L));
      std::vector<char> is_target(std::size_t(L * H), 0), pinned(std::size_t(L * H), 0);
      std::vector<HeadId> order;
      std::vector<double> strong(std::size_t(L * H), 0.0);  // sum of the best hi_refs edges above τ
      for (std::int32_t l = 0; l < L; ++l)
        for (std::int32_t h = 0; h < H; ++h) {
          order.push_back({l, h});
          int used = 0;
          for (const auto& e : in[std::size_t(l * H + h)])
            if (e.second >= tau && used++ < hi_refs) strong[std::size_t(l * H + h)] += e.second;
        }
      std::stable_sort(order.begin(), order.end(), [&](HeadId a, HeadId b) {
        if (a.layer != b.layer) return a.layer > b.layer;
        return strong[std::size_t(a.layer * H + a.head)] > strong[std::size_t(b.layer * H + b.head)];
      });
      std::size_t total = 0;
      for (HeadId t : order) {
        const std::size_t ti = std::size_t(t.layer * H + t.head);
        if (total >= desired || pinned[ti] || std::int32_t(sel.layers[std::size_t(t.layer)].size()) >= cap_of(t.layer))
          continue;
        std::vector<std::pair<HeadId, double>> src;
        for (const auto& e : in[ti])
          if (e.second >= tau && !is_target[std::size_t(e.first.layer * H + e.first.head)]) src.push_back(e);
        if (int(src.size()) < lo_refs) continue;
        if (int(src.size()) > hi_refs) src.resize(std::size_t(hi_refs));
        TargetChoice tc{t, {}, 0.0};
        for (const auto& e : src) {
          tc.refs.push_back(e.first);
          pinned[std::size_t(e.first.layer * H + e.first.head)] = 1;
        }
        is_target[ti] = 1;
        sel.layers[std::size_t(t.layer)].push_back(tc);
        ++total;
      }
      return std::pair{sel, total};
    };

    // The count is not monotone in τ (pinning is greedy), so scan a grid of
    // edge-score quantiles from high to low: the first τ reaching the budget
    // wins; otherwise the τ reaching the most targets.
    std::vector<double> scores;
    for (const auto& e : in)
      for (const auto& x : e) scores.push_back(x.second);
    std::sort(scores.begin(), scores.end());
    scores.erase(std::unique(scores.begin(), scores.end()), scores.end());
    std::vector<double> grid;
    const std::size_t steps = std::min<std::size_t>(scores.size(), 256);
    for (std::size_t i = 0; i < steps; ++i)
      grid.push_back(scores[scores.size() - 1 - (i * (scores.size() - 1)) / std::max<std::size_t>(steps - 1, 1)]);
    Selection best;
    best.layers.resize(std::size_t(L));
    std::size_t best_n = 0;
    double best_tau = grid.empty() ? 0.0 : grid.front();
    for (double tau : grid) {
      auto [s, n] = run(tau);
      if (n > best_n) best = std::move(s), best_n = n, best_tau = tau;
      if (best_n >= desired) break;
    }
    threshold = best_tau;
    for (auto& layer : best.layers) {
      for (TargetChoice& t : layer) t.score = stats.evaluate(t.target, t.refs, opt.fit).score();
      std::sort(layer.begin(), layer.end(),
                [](const TargetChoice& a, const TargetChoice& b) { return a.target.head < b.target.head; });
    }
    return best;
  }
};

}  // namespace headrecon
