#pragma once
/// @file budget.hpp
/// Selection under a budget for the whole model: which K and V heads of which
/// layers are rebuilt, so that the cache stores (and, optionally, decode
/// reads) at most a given number of head streams per token, at the least
/// total cost.
///
/// Each kind brings its statistics and a cost: the loss of a target under a
/// metric (loss_metric.hpp; one currency for K and V, so the split between
/// them and across layers follows the costs) or, without a metric, 1 − its
/// held-out R². Targets are added one at a time, each time the head whose
/// marginal cost is lowest: its own cost with references chosen by forward
/// selection among the heads still cached (forward.hpp), plus what the
/// targets that used it as a reference lose when they re-choose theirs
/// without it. Candidates are examined lazily in order of their own cost, a
/// lower bound of the marginal cost. When only the read bound still binds,
/// the cost per stream saved decides. A cross-layer reference is stored once
/// but read by every layer that uses it, so reads ≥ stored streams.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <vector>

#include "headrecon/loss_metric.hpp"
#include "headrecon/parallel.hpp"
#include "headrecon/select.hpp"
#include "headrecon/select/forward.hpp"

namespace headrecon {

/// One kind's statistics and how its targets are costed.
struct KindCosts {
  KindCosts() = default;
  KindCosts(Kind k, const HeadMoments* s, const HeadMetrics* m = nullptr, double w = 1.0)
      : kind(k), stats(s), metric(m), weight(w) {}
  Kind kind = Kind::k;
  const HeadMoments* stats = nullptr;
  const HeadMetrics* metric = nullptr;  ///< null: cost = 1 − held-out mean R²
  double weight = 1.0;                  ///< multiplies every cost of this kind
  /// Cost relative to rebuilding the head from nothing (loss / loss of its
  /// mean): scale-free per head, so only the metric's shape matters.
  bool relative = false;
  std::vector<double> layer_weight;     ///< per-layer multipliers (empty: 1)
  std::vector<std::int32_t> max_targets;  ///< per-layer cap on targets (empty: no cap but min_cached)
};

/// What the selection must fit in, counted in head streams per token after
/// the sink tokens (a stream = one head's d components; bytes = streams · d ·
/// element size).
struct BudgetLimits {
  std::size_t max_cached = std::numeric_limits<std::size_t>::max();   ///< stored streams, all kinds
  std::size_t max_streams = std::numeric_limits<std::size_t>::max();  ///< streams read per decode step
  std::int32_t min_cached_per_layer = 0;  ///< heads of each kind every layer keeps (layer 0 keeps >= 1)
};

struct BudgetOptions {
  int max_refs = 5;
  /// Runs independent candidate fits on several threads (default: serial).
  ParallelFor parallel;
  /// Fit used to cost a candidate (near-OLS; the plan's maps are fitted later).
  FitOptions fit{RidgeMode::fixed, 1e-6, 1e-6};
};

struct BudgetResult {
  std::vector<Selection> selections;  ///< one per KindCosts, same order
  std::size_t cached = 0;             ///< stored streams per token (all kinds)
  std::size_t streams = 0;            ///< streams read per decode step (all kinds)
  double total_cost = 0.0;            ///< sum of the targets' costs
  bool met = false;                   ///< false when no further head could be rebuilt before the limits were met
};

namespace detail {
/// Stored and read streams of per-kind selections: per layer, the cached
/// heads plus the distinct earlier-layer references of its targets.
inline std::pair<std::size_t, std::size_t> count_streams(const std::vector<Selection>& sels, std::int32_t n_layers,
                                                         std::int32_t n_heads) {
  std::size_t cached = 0, read = 0;
  for (const Selection& s : sels)
    for (std::int32_t l = 0; l < n_layers; ++l) {
      const auto& layer = l < std::int32_t(s.layers.size()) ? s.layers[std::size_t(l)] : std::vector<TargetChoice>{};
      const std::size_t own = std::size_t(n_heads) - layer.size();
      std::vector<HeadId> extra;
      for (const auto& t : layer)
        for (HeadId r : t.refs)
          if (r.layer < l && std::find(extra.begin(), extra.end(), r) == extra.end()) extra.push_back(r);
      cached += own;
      read += own + extra.size();
    }
  return {cached, read};
}
}  // namespace detail

/// Chooses targets for every kind of `kinds` (same layer and head counts)
/// until `lim` holds. Throws Error on inconsistent inputs; returns met = false
/// when the limits cannot be reached (too few heads can be rebuilt).
inline BudgetResult select_under_budget(const std::vector<KindCosts>& kinds, const BudgetLimits& lim,
                                        const BudgetOptions& opt = {}) {
  if (kinds.empty()) detail::fail("select_under_budget: no kinds");
  const ScopedBlasThreads one_thread(1);  // many small LAPACK calls (blas_threads.hpp)
  const std::int32_t L = kinds[0].stats->n_layers(), H = kinds[0].stats->n_heads();
  for (const KindCosts& kc : kinds) {
    if (!kc.stats) detail::fail("select_under_budget: kind ", kind_name(kc.kind), " has no statistics");
    if (kc.stats->n_layers() != L || kc.stats->n_heads() != H)
      detail::fail("select_under_budget: kinds differ in layers or heads");
    if (kc.metric && (kc.metric->n_layers() != L || kc.metric->n_heads() != H ||
                      kc.metric->head_dim() != kc.stats->head_dim()))
      detail::fail("select_under_budget: the metric of kind ", kind_name(kc.kind), " has another shape");
    if (!kc.layer_weight.empty() && kc.layer_weight.size() != std::size_t(L))
      detail::fail("select_under_budget: ", kc.layer_weight.size(), " layer weights for ", L, " layers");
    if (!kc.max_targets.empty() && kc.max_targets.size() != std::size_t(L))
      detail::fail("select_under_budget: ", kc.max_targets.size(), " per-layer caps for ", L, " layers");
  }
  if (opt.max_refs < 1) detail::fail("select_under_budget: max_refs must be >= 1");
  const std::size_t K = kinds.size(), per = std::size_t(L) * std::size_t(H), N = K * per;
  auto idx = [&](std::size_t k, HeadId h) { return k * per + std::size_t(h.layer) * std::size_t(H) + std::size_t(h.head); };
  auto head_of = [&](std::size_t i) { return HeadId{std::int32_t((i % per) / std::size_t(H)), std::int32_t(i % std::size_t(H))}; };
  auto cap = [&](std::size_t k, std::int32_t l) {
    const std::int32_t keep = std::max(lim.min_cached_per_layer, l == 0 ? 1 : 0);
    std::int32_t c = H - std::min(keep, H);
    if (!kinds[k].max_targets.empty()) c = std::min(c, kinds[k].max_targets[std::size_t(l)]);
    return c;
  };

  struct Choice {
    std::vector<HeadId> refs;
    double cost = std::numeric_limits<double>::infinity();
    double r2 = 0.0;
    bool valid = false;
  };
  std::vector<char> target(N, 0);
  std::vector<Choice> tgt(N), cand(N);
  std::vector<std::int32_t> n_targets(K * std::size_t(L), 0);
  std::map<std::pair<std::size_t, std::size_t>, Choice> what_if;  // (target, removed head) -> re-chosen

  std::size_t read_now = 0;  // streams read now (kept current for choose())
  // Heads of kind k that layer l already reads: its cached heads and its targets' references.
  auto streamed = [&](std::size_t k, std::int32_t l, HeadId r) {
    if (r.layer == l) return !target[idx(k, r)];
    for (std::int32_t h = 0; h < H; ++h) {
      const std::size_t j = idx(k, {l, h});
      if (target[j] && std::find(tgt[j].refs.begin(), tgt[j].refs.end(), r) != tgt[j].refs.end()) return true;
    }
    return false;
  };
  // Best references of head i (kind k) among cached heads other than `skip`, and its cost.
  // Under a read bound, references that add streams to the target's layer
  // are used only while the bound leaves room for them.
  auto choose = [&](std::size_t i, std::size_t skip) {
    const std::size_t k = i / per;
    const KindCosts& kc = kinds[k];
    const HeadId t = head_of(i);
    std::vector<HeadId> cands, free_cands;
    for (std::int32_t l = 0; l <= t.layer; ++l)
      for (std::int32_t h = 0; h < H; ++h) {
        const HeadId r{l, h};
        const std::size_t j = idx(k, r);
        if (j != i && j != skip && !target[j] && kc.stats->allowed(t, r)) {
          cands.push_back(r);
          if (streamed(k, t.layer, r)) free_cands.push_back(r);
        }
      }
    Choice c;
    c.valid = true;
    if (cands.empty()) return c;
    const double* g = kc.metric ? kc.metric->at(t) : nullptr;
    c.refs = forward_references(*kc.stats, t, cands, opt.max_refs, g);
    if (lim.max_streams != std::numeric_limits<std::size_t>::max()) {
      std::size_t added = 0;
      for (HeadId r : c.refs) added += !streamed(k, t.layer, r);
      // Rebuilding t frees its own stream; more new streams than the room left: stay within what is read.
      const std::size_t room = lim.max_streams + 1 > read_now ? lim.max_streams + 1 - read_now : 0;
      if (added > room && !free_cands.empty()) c.refs = forward_references(*kc.stats, t, free_cands, opt.max_refs, g);
    }
    if (c.refs.empty()) c.refs.push_back(cands.front());  // nothing lowers the loss: any reference, cost as is
    const Evaluation ev = kc.stats->evaluate(t, c.refs, opt.fit, g, false);
    const double lw = kc.layer_weight.empty() ? 1.0 : kc.layer_weight[std::size_t(t.layer)];
    const double raw = g ? (kc.relative ? ev.loss / std::max(ev.loss_base, 1e-300) : ev.loss) : 1.0 - ev.score();
    c.cost = kc.weight * lw * raw;
    c.r2 = ev.score();
    return c;
  };
  auto selections = [&]() {
    std::vector<Selection> out(K);
    for (std::size_t k = 0; k < K; ++k) {
      out[k].layers.resize(std::size_t(L));
      for (std::size_t j = k * per; j < (k + 1) * per; ++j)
        if (target[j]) out[k].layers[std::size_t(head_of(j).layer)].push_back({head_of(j), tgt[j].refs, tgt[j].r2});
    }
    return out;
  };

  BudgetResult res;
  auto [cached, streams] = detail::count_streams(selections(), L, H);
  read_now = streams;
  while (cached > lim.max_cached || streams > lim.max_streams) {
    const bool by_reads = cached <= lim.max_cached;
    std::vector<std::size_t> todo;
    for (std::size_t i = 0; i < N; ++i)
      if (!target[i] && !cand[i].valid) todo.push_back(i);
    opt.parallel(todo.size(), [&](std::size_t j, std::size_t) { cand[todo[j]] = choose(todo[j], N); });
    std::vector<std::size_t> order;
    for (std::size_t i = 0; i < N; ++i) {
      const std::size_t k = i / per;
      if (target[i] || cand[i].refs.empty()) continue;
      if (n_targets[k * std::size_t(L) + std::size_t(head_of(i).layer)] >= cap(k, head_of(i).layer)) continue;
      order.push_back(i);
    }
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return cand[a].cost < cand[b].cost; });
    double best_score = std::numeric_limits<double>::infinity();
    std::size_t best = N;
    for (std::size_t i : order) {
      if (!by_reads && cand[i].cost >= best_score) break;  // penalties are (nearly) never negative
      double penalty = 0.0;
      bool feasible = true;
      std::vector<std::size_t> users, missing;
      for (std::size_t t = i / per * per; t < (i / per + 1) * per; ++t)
        if (target[t] && std::find(tgt[t].refs.begin(), tgt[t].refs.end(), head_of(i)) != tgt[t].refs.end()) {
          users.push_back(t);
          if (!what_if.count({t, i})) missing.push_back(t);
        }
      std::vector<Choice> fresh(missing.size());
      opt.parallel(missing.size(), [&](std::size_t j, std::size_t) { fresh[j] = choose(missing[j], i); });
      for (std::size_t j = 0; j < missing.size(); ++j) what_if.emplace(std::make_pair(missing[j], i), fresh[j]);
      for (std::size_t t : users) {
        const Choice& w = what_if.at({t, i});
        if (w.refs.empty()) feasible = false;
        else penalty += w.cost - tgt[t].cost;
      }
      if (!feasible) continue;
      double score = cand[i].cost + penalty;
      if (by_reads) {
        // Streams saved: apply the change to a copy and count.
        std::vector<Selection> trial = selections();
        const HeadId h = head_of(i);
        const std::size_t k = i / per;
        trial[k].layers[std::size_t(h.layer)].push_back({h, cand[i].refs, 0.0});
        for (auto& layer : trial[k].layers)
          for (auto& tc : layer) {
            const auto it = what_if.find({idx(k, tc.target), i});
            if (it != what_if.end() && std::find(tc.refs.begin(), tc.refs.end(), h) != tc.refs.end())
              tc.refs = it->second.refs;
          }
        const auto [c2, s2] = detail::count_streams(trial, L, H);
        (void)c2;
        if (s2 >= streams) continue;
        score /= double(streams - s2);
      }
      if (score < best_score) best_score = score, best = i;
    }
    if (best == N) break;  // nothing more can be rebuilt
    // Commit: best becomes a target; its users adopt their re-chosen references.
    const HeadId bh = head_of(best);
    const std::size_t bk = best / per;
    target[best] = 1;
    tgt[best] = cand[best];
    ++n_targets[bk * std::size_t(L) + std::size_t(bh.layer)];
    for (std::size_t t = bk * per; t < (bk + 1) * per; ++t)
      if (target[t] && t != best && std::find(tgt[t].refs.begin(), tgt[t].refs.end(), bh) != tgt[t].refs.end())
        tgt[t] = what_if.at({t, best});
    // Invalidate what used the new target: candidates and what-ifs whose references include it.
    for (std::size_t i = 0; i < N; ++i)
      if (!target[i] && cand[i].valid && i / per == bk &&
          std::find(cand[i].refs.begin(), cand[i].refs.end(), bh) != cand[i].refs.end())
        cand[i].valid = false;
    for (auto it = what_if.begin(); it != what_if.end();) {
      const auto& refs = it->second.refs;
      const bool stale = it->first.second == best ||
                         (it->first.first / per == bk && std::find(refs.begin(), refs.end(), bh) != refs.end());
      it = stale ? what_if.erase(it) : std::next(it);
    }
    // What-ifs of heads a target no longer uses are not needed any more.
    for (auto it = what_if.begin(); it != what_if.end();) {
      const auto& t = tgt[it->first.first];
      const bool uses = std::find(t.refs.begin(), t.refs.end(), head_of(it->first.second)) != t.refs.end();
      it = uses ? std::next(it) : what_if.erase(it);
    }
    std::tie(cached, streams) = detail::count_streams(selections(), L, H);
    // Near the read bound, candidates chosen with more room must choose again.
    if (lim.max_streams != std::numeric_limits<std::size_t>::max() && streams + 1 >= lim.max_streams)
      for (std::size_t i = 0; i < N; ++i) cand[i].valid = false;
    read_now = streams;
  }
  res.selections = selections();
  for (auto& s : res.selections)
    for (auto& layer : s.layers)
      std::sort(layer.begin(), layer.end(),
                [](const TargetChoice& a, const TargetChoice& b) { return a.target.head < b.target.head; });
  res.cached = cached;
  res.streams = streams;
  for (std::size_t i = 0; i < N; ++i)
    if (target[i]) res.total_cost += tgt[i].cost;
  res.met = cached <= lim.max_cached && streams <= lim.max_streams;
  return res;
}

}  // namespace headrecon
