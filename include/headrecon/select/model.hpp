#pragma once
/// @file model.hpp
/// Every strategy under one budget for the whole model's KV cache, and the
/// bytes a plan stores and reads.
///
/// The budget counts head streams per token after the sink tokens (a stream
/// is one K or V head: d elements; the cache stores every head of the sink
/// tokens in full). `greedy` and `loss` allocate it across layers and between
/// K and V themselves (select_under_budget: greedy costs a target 1 − its
/// held-out R², loss by its loss metric). The per-layer strategies (`shared`,
/// `graph`, `random`) get the targets split evenly between the kinds and, per
/// kind, evenly over the layers (the remainder to the highest layers, which
/// the paper prefers); `graph` takes only each kind's total, as the paper's
/// procedure has no per-layer cap.

#include <cmath>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "headrecon/dtype.hpp"
#include "headrecon/ref_cache.hpp"
#include "headrecon/select.hpp"
#include "headrecon/select/budget.hpp"

namespace headrecon {

/// Bytes per token of a plan's reference-only KV cache (after the sink tokens).
struct KvBytes {
  std::size_t stored = 0;  ///< what the cache allocates per token (RefCacheLayout::body_bytes_per_token)
  std::size_t read = 0;    ///< what one decode step reads per token of context (every layer's streams)
  std::size_t full = 0;    ///< a full cache, stored = read
};

/// Stored and read bytes of `plan` on a model with `n_kv_heads` KV heads per layer.
inline KvBytes plan_kv_bytes(const Plan& plan, std::int32_t n_kv_heads, DType dtype) {
  const RefCacheLayout lay(plan, n_kv_heads);
  KvBytes b;
  b.stored = lay.body_bytes_per_token(dtype);
  b.full = lay.full_bytes_per_token(dtype);
  std::size_t streams = 0;
  for (Kind k : {Kind::k, Kind::v})
    for (std::int32_t l = 0; l < plan.n_layers; ++l) streams += lay.streams(k, l).size();
  b.read = streams * dtype_row_bytes(dtype, std::size_t(plan.head_dim));
  return b;
}

/// A whole-model budget in streams per token (K and V heads of all layers).
struct ModelBudget {
  std::size_t max_cached = 0;                                         ///< stored streams
  std::size_t max_streams = std::numeric_limits<std::size_t>::max();  ///< read streams per decode step

  /// Keeps round(fraction · total) of `total` streams (fraction in (0, 1]).
  static std::size_t streams_for_fraction(double fraction, std::size_t total, const char* what = "--kv-budget") {
    if (!(fraction > 0.0 && fraction <= 1.0)) detail::fail(what, " must be a fraction in (0, 1], got ", fraction);
    return std::size_t(std::floor(fraction * double(total) + 0.5));
  }
  /// Streams that fit in `bytes` per token: floor(bytes / (d · element size)).
  static std::size_t streams_for_bytes(std::size_t bytes, std::int32_t head_dim, DType dtype) {
    return bytes / dtype_row_bytes(dtype, std::size_t(head_dim));
  }
};

/// Per-kind selections of `strategy` (greedy, loss, shared, graph, random)
/// with up to opt.max_refs references per target (default: loss 8 - on
/// SmolLM2 at 67% of the KV bytes, 8 references instead of 5 take the
/// simulated perplexity change from +13.9% to +9.3%, 12 to +8.3% -, greedy 5)
/// under `budget`. `kinds` holds the statistics (and, for loss, the metrics)
/// of the kinds fitted; kinds not fitted stay cached and count as
/// `fixed_cached` streams. `graph` tunes the graph strategy; `parallel` runs
/// the candidate fits of greedy and loss on several threads.
inline std::vector<Selection> select_model(const std::string& strategy, const std::vector<KindCosts>& kinds,
                                           const ModelBudget& budget, std::size_t fixed_cached,
                                           const SelectionOptions& opt, const GraphSelection* graph = nullptr,
                                           const ParallelFor& parallel = {}) {
  if (kinds.empty()) detail::fail("select_model: no kinds");
  const std::int32_t L = kinds[0].stats->n_layers(), H = kinds[0].stats->n_heads();
  const std::size_t total = kinds.size() * std::size_t(L) * std::size_t(H);
  if (budget.max_cached < fixed_cached)
    detail::fail("KV budget of ", budget.max_cached, " head streams per token is below the ", fixed_cached,
                 " streams of the kinds that are not fitted (they stay cached)");
  const std::size_t keep = std::min(total, budget.max_cached - fixed_cached);
  if (strategy == "greedy" || strategy == "loss") {
    std::vector<KindCosts> kc = kinds;
    for (auto& k : kc) {
      if (strategy == "greedy") k.metric = nullptr;
      else if (!k.metric) detail::fail("strategy loss: kind ", kind_name(k.kind), " has no loss metric");
    }
    BudgetLimits lim;
    lim.max_cached = keep;
    if (budget.max_streams != std::numeric_limits<std::size_t>::max()) {
      if (budget.max_streams < budget.max_cached)
        detail::fail("read budget (", budget.max_streams, " streams) is below the stored budget (",
                     budget.max_cached, "): every stored stream is read");
      lim.max_streams = budget.max_streams - fixed_cached;
    }
    BudgetOptions bo;
    bo.max_refs = opt.max_refs > 0 ? opt.max_refs : strategy == "loss" ? 8 : 5;
    bo.fit = opt.fit;
    bo.parallel = parallel;
    const BudgetResult r = select_under_budget(kc, lim, bo);
    if (!r.met)
      detail::fail("strategy ", strategy, ": the budget (", keep, " stored, ", lim.max_streams == std::numeric_limits<std::size_t>::max() ? std::string("any") : std::to_string(lim.max_streams),
                   " read streams) cannot be met: no further head can be rebuilt (", r.cached, " stored, ",
                   r.streams, " read)");
    return r.selections;
  }
  if (budget.max_streams != std::numeric_limits<std::size_t>::max())
    detail::fail("a read budget needs strategy greedy or loss (", strategy, " does not count reads)");
  std::unique_ptr<SelectionStrategy> s = make_strategy(strategy);
  if (auto* g = dynamic_cast<GraphSelection*>(s.get()); g && graph) {
    g->min_refs = graph->min_refs;
    g->max_refs = graph->max_refs;
  }
  const bool total_only = strategy == "graph";
  const std::size_t n = total - keep, K = kinds.size();
  std::vector<Selection> out;
  for (std::size_t k = 0; k < K; ++k) {
    const std::size_t nk = n / K + (k < n % K ? 1 : 0);
    const std::int32_t cap = total_only ? H : H - 1;
    if (nk > std::size_t(cap) * std::size_t(L))
      detail::fail("strategy ", strategy, ": ", nk, " ", kind_name(kinds[k].kind), " targets do not fit in ", L,
                   " layers of ", H, " heads", total_only ? "" : " keeping one per layer");
    SelectionOptions o = opt;
    o.targets_per_layer.assign(std::size_t(L), std::int32_t(nk / std::size_t(L)));
    for (std::size_t i = 0; i < nk % std::size_t(L); ++i) ++o.targets_per_layer[std::size_t(L) - 1 - i];
    out.push_back(s->select(*kinds[k].stats, o));
  }
  return out;
}

}  // namespace headrecon
