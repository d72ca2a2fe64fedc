#pragma once
// `headrecon fit`: statistics -> selection -> maps -> plan file, with a report
// a person can read (per layer x head held-out R², references, KV bytes
// stored and read).

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <memory>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "command_line.hpp"
#include "fit_distributed.hpp"
#include "headrecon/accumulate.hpp"
#include "headrecon/blas_threads.hpp"
#include "headrecon/calibrate.hpp"
#include "headrecon/latent.hpp"
#include "headrecon/plan_io.hpp"
#include "headrecon/projections_io.hpp"
#include "headrecon/select.hpp"
#include "headrecon/select/model.hpp"
#include "headrecon/select/probe_weights.hpp"
#include "headrecon/thread_pool.hpp"
#include "output_file.hpp"

namespace headrecon::cli {

struct FitConfig {
  std::string acts, out;
  std::vector<std::string> more_acts;  ///< further activation files: one token stream after `acts`
  std::size_t max_memory = 0;          ///< bytes the statistics may use per process (0: the available memory)
  std::vector<Kind> kinds{Kind::k};
  std::string strategy = "greedy", fixed_spec;
  std::string ridge = "auto";
  SelectionOptions select;
  AccumulateOptions accumulate;
  int graph_min_refs = 4, graph_max_refs = 6;
  int threads = 1;  ///< BLAS threads for the statistics; worker threads of greedy/loss selection (one BLAS thread each)
  /// Whole-model budget (instead of the per-layer select.budget): a fraction
  /// of the KV bytes kept, or bytes per token; optionally a bound on reads.
  double kv_budget = std::numeric_limits<double>::quiet_NaN();
  std::size_t kv_bytes = 0;
  double read_budget = std::numeric_limits<double>::quiet_NaN();
  DType cache_dtype = DType::f32;  ///< element type the byte budget and report count in
  std::string wo;                  ///< output projections file (strategy loss)
  std::string probe;               ///< direct probe CSV (headrecon-engine probe): per-layer weights of strategy loss

  bool whole_model() const { return !std::isnan(kv_budget) || kv_bytes > 0 || !std::isnan(read_budget); }
  /// Strategies whose plans cache latent streams (latent.hpp).
  bool latent() const { return strategy == "latent" || strategy == "hybrid"; }
  /// Strategies that cost targets by the loss metrics (--wo; optional for latent and hybrid).
  bool uses_metrics() const { return strategy == "loss" || (latent() && !wo.empty()); }
};

struct KindSummary {
  Kind kind;
  std::size_t rebuilt = 0, heads = 0;
  double mean_r2 = 0.0;
  bool heldout = true;
};

/// "L.H" for a head, "L.zJ" for latent stream J of a kind with `n_heads` heads.
inline std::string head_name(HeadId h, std::int32_t n_heads = std::numeric_limits<std::int32_t>::max()) {
  return std::to_string(h.layer) + "." + (h.head >= n_heads ? "z" + std::to_string(h.head - n_heads) : std::to_string(h.head));
}

inline std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

inline FitOptions parse_ridge(const std::string& s) {
  FitOptions o;
  if (s == "auto") return o;
  o.ridge = RidgeMode::fixed;
  char* end = nullptr;
  o.lambda = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0') detail::fail("--ridge: '", s, "' is not a number");
  if (o.lambda < 0 || !std::isfinite(o.lambda)) detail::fail("--ridge must be 'auto' or a finite number >= 0, got ", s);
  return o;
}

/// Reads a probe CSV (kind,layer,targets,kl,dnll; targets "L.H<L.H+L.H ..."):
/// the KL column is the measured loss. Throws Error naming the file and line.
inline std::vector<ProbedGroup> read_probe_csv(const std::string& path) {
  std::ifstream is(path);
  if (!is) detail::fail(path, ": cannot open");
  std::string line;
  std::getline(is, line);
  if (line.rfind("kind,layer,targets,kl", 0) != 0)
    detail::fail(path, ": not a probe file (expected the header kind,layer,targets,kl,dnll)");
  std::vector<ProbedGroup> out;
  for (std::size_t no = 2; std::getline(is, line); ++no) {
    if (line.empty()) continue;
    std::vector<std::string> f;
    std::istringstream ls(line);
    for (std::string x; std::getline(ls, x, ',');) f.push_back(x);
    auto bad = [&](const std::string& why) { detail::fail(path, ":", no, ": ", why, " in '", line, "'"); };
    if (f.size() < 4) bad("expected at least 4 fields");
    ProbedGroup g;
    try {
      g.kind = parse_kind(f[0]);
    } catch (const Error&) {
      bad("unknown kind");
    }
    auto number = [&](const std::string& s, const char* what) {
      char* end = nullptr;
      errno = 0;
      const double v = std::strtod(s.c_str(), &end);
      if (s.empty() || *end || errno == ERANGE || !std::isfinite(v)) bad(std::string("bad ") + what);
      return v;
    };
    const double layer = number(f[1], "layer");
    if (layer < 0 || layer > 1e6 || layer != std::floor(layer)) bad("bad layer");
    g.layer = std::int32_t(layer);
    g.loss = number(f[3], "kl");
    std::istringstream ts(f[2]);
    auto head = [&](const std::string& s) {
      const auto dot = s.find('.');
      if (dot == std::string::npos) bad("bad head '" + s + "'");
      const double a = number(s.substr(0, dot), "head"), b = number(s.substr(dot + 1), "head");
      if (a < 0 || b < 0 || a > 1e6 || b > 1e6) bad("bad head '" + s + "'");
      return HeadId{std::int32_t(a), std::int32_t(b)};
    };
    for (std::string t; ts >> t;) {
      const auto lt = t.find('<');
      if (lt == std::string::npos) bad("target '" + t + "' without references (L.H<L.H+L.H)");
      TargetChoice tc;
      tc.target = head(t.substr(0, lt));
      std::istringstream rs(t.substr(lt + 1));
      for (std::string r; std::getline(rs, r, '+');) tc.refs.push_back(head(r));
      if (tc.refs.empty()) bad("target '" + t + "' without references");
      g.targets.push_back(tc);
    }
    out.push_back(std::move(g));
  }
  if (out.empty()) detail::fail(path, ": no probed groups");
  return out;
}

/// Checks what can be checked before any statistics are computed.
inline void check_fit_config(const FitConfig& cfg, const ActivationReader& acts) {
  if (!cfg.out.empty()) {
    std::vector<std::string> inputs{cfg.acts, cfg.wo, cfg.probe};
    inputs.insert(inputs.end(), cfg.more_acts.begin(), cfg.more_acts.end());
    check_output_path("--out", cfg.out, inputs);
  }
  std::set<Kind> seen;
  for (Kind k : cfg.kinds) {
    if (!seen.insert(k).second) detail::fail("--kind ", kind_name(k), " is given twice");
    if (!acts.has(k)) detail::fail(acts.path(), ": no '", kind_name(k), "' activations in this file");
  }
  if (cfg.whole_model()) {
    if (!std::isnan(cfg.kv_budget) && cfg.kv_bytes > 0) detail::fail("give --kv-budget or --kv-bytes, not both");
    for (Kind k : cfg.kinds)
      if (k == Kind::q) detail::fail("a KV budget (--kv-budget, --kv-bytes, --read-budget) applies to k and v only");
    if (!acts.has(Kind::k) && !acts.has(Kind::v)) detail::fail(acts.path(), ": no k or v activations");
    if (cfg.strategy == "fixed") detail::fail("strategy fixed ignores budgets: drop --kv-budget");
  } else if (cfg.strategy == "loss" && cfg.kinds.size() > 0) {
    for (Kind k : cfg.kinds)
      if (k == Kind::q) detail::fail("strategy loss rebuilds k and v (queries are not cached)");
  }
  if (!cfg.probe.empty() && cfg.strategy != "loss") detail::fail("--probe calibrates strategy loss only");
  if (cfg.latent()) {
    if (std::isnan(cfg.kv_budget) && cfg.kv_bytes == 0)
      detail::fail("strategy ", cfg.strategy, " allocates a whole-model budget: give --kv-budget F or --kv-bytes N");
    if (!std::isnan(cfg.read_budget))
      detail::fail("strategy ", cfg.strategy, " has no read budget (it reads its layer's streams, with --window W also "
                   "those of the W previous layers): drop --read-budget");
    if (cfg.accumulate.scope == RefScope::cross_layer)
      detail::fail("strategy ", cfg.strategy, ": give --same-layer (each layer rebuilt from its own stored streams) or "
                   "--window W (also from the stored streams of the W previous layers)");
    if (cfg.accumulate.cache_type)
      detail::fail("--fit-on-cache applies to head references; strategy ", cfg.strategy,
                   " projects latent streams from exact K/V");
    if (!cfg.wo.empty() && !acts.has(Kind::q))
      detail::fail(acts.path(), ": --wo (loss-weighted latent streams) needs the queries (capture with q) for the key metric");
  }
  if (cfg.strategy == "loss") {
    if (cfg.wo.empty())
      detail::fail("strategy loss needs --wo FILE: the model's output projections (headrecon-engine capture "
                   "--projections FILE writes them)");
    if (!acts.has(Kind::q))
      detail::fail(acts.path(), ": strategy loss needs the queries (capture with q) for the key metric");
  }
  const auto [usable, max_pos] = usable_tokens(acts, cfg.accumulate);
  if (usable < 2 && cfg.more_acts.empty())  // several files: the training-token check after the statistics
    detail::fail(acts.path(), ": only ", usable, " of ", acts.n_tokens(), " tokens are at positions >= --sink ",
                 cfg.accumulate.sink_tokens, " (the largest position is ", max_pos,
                 "); lower --sink or capture longer sequences");
}

/// Runs the fit and writes the plan; returns one summary per kind.
inline std::vector<KindSummary> run_fit(const FitConfig& cfg, std::ostream& os) {
  using clock = std::chrono::steady_clock;
  auto secs = [](clock::time_point a) { return std::chrono::duration<double>(clock::now() - a).count(); };
  std::vector<std::string> files{cfg.acts};
  files.insert(files.end(), cfg.more_acts.begin(), cfg.more_acts.end());
  FitSource source(files);  // every file, split over the MPI ranks (fit_distributed.hpp)
  const ActivationReader& acts = source.first();
  check_fit_config(cfg, acts);
  const double memory_limit = statistics_memory_limit(cfg.max_memory);
  const FitOptions fit = parse_ridge(cfg.ridge);
  OutputProjections wo;
  if (!cfg.wo.empty()) {
    wo = load_output_projections(cfg.wo);
    if (wo.layers.size() != acts.n_layers() || wo.layers[0].head_dim != acts.head_dim() ||
        (acts.has(Kind::q) && wo.layers[0].n_q_heads != acts.n_heads(Kind::q)) ||
        (acts.has(Kind::k) && std::size_t(wo.n_kv_heads) != acts.n_heads(Kind::k)))
      detail::fail(cfg.wo, ": ", wo.layers.size(), " layers, ", wo.layers[0].n_q_heads, " query heads, ", wo.n_kv_heads,
                   " KV heads, head_dim ", wo.layers[0].head_dim, " do not match ", cfg.acts);
  }
  Plan plan;
  plan.head_dim = std::int32_t(acts.head_dim());
  plan.n_layers = std::int32_t(acts.n_layers());
  plan.post_rope = acts.post_rope();
  plan.sink_tokens = cfg.accumulate.sink_tokens;
  std::string sources = cfg.acts;
  for (const auto& f : cfg.more_acts) sources += ", " + f;
  os << "headrecon fit: " << sources << " (" << acts.n_layers() << " layers, " << source.n_tokens()
     << " tokens, head_dim " << acts.head_dim() << ", " << (acts.post_rope() ? "post-RoPE" : "pre-RoPE") << ")\n";
  os << "held-out split: " << fmt("%g", cfg.accumulate.split.fraction) << " of "
     << cfg.accumulate.split.describe() << "; BLAS threads: " << cfg.threads
     << " for the statistics, 1 for selection and maps (" << cfg.threads << " selection workers)\n";
  if (cfg.accumulate.cache_type)
    os << "K/V statistics on the values a " << cfg.accumulate.cache_type->name()
       << " cache gives back (references and targets rounded as the kernels read them)\n";
  if (source.ranks() > 1)
    os << "statistics: " << files.size() << " file(s) over " << source.ranks()
       << " MPI ranks (batches split, tree-ordered merges); selection, maps and the plan on rank 0\n";

  // Statistics of every kind first (a whole-model budget selects them together).
  std::vector<HeadMoments> stats;
  std::vector<double> t_stats;
  for (Kind kind : cfg.kinds) {
    const auto t0 = clock::now();
    const ScopedBlasThreads threads(cfg.threads);
    stats.push_back(source.statistics(kind, cfg.accumulate, memory_limit, os));
    t_stats.push_back(secs(t0));
    if (stats.back().train_count() < 2)
      detail::fail(cfg.acts, ": ", stats.back().train_count(), " training tokens after the held-out split (",
                   stats.back().heldout_count(), " held out); lower --holdout or give more tokens");
  }
  ResidualMetrics metrics;
  double t_metrics = 0.0;
  if (cfg.uses_metrics()) {
    const auto t0 = clock::now();
    const ScopedBlasThreads threads(cfg.threads);
    const QueryMoments qm = source.queries(cfg.accumulate);
    // The key metric weighs each query head by the spread of the values it reads.
    const HeadMoments* vstats = nullptr;
    std::unique_ptr<HeadMoments> own;
    for (std::size_t i = 0; i < cfg.kinds.size(); ++i)
      if (cfg.kinds[i] == Kind::v) vstats = &stats[i];
    if (!vstats) {
      if (!acts.has(Kind::v)) detail::fail(acts.path(), ": strategy loss needs the values (capture with v)");
      AccumulateOptions a = cfg.accumulate;
      a.scope = RefScope::same_layer;
      own = std::make_unique<HeadMoments>(source.statistics(Kind::v, a, memory_limit, os));
      vstats = own.get();
    }
    metrics = residual_metrics(qm, wo.layers, *vstats);
    t_metrics = secs(t0);
  }
  if (!source.is_root()) return {};  // selection, maps and the plan are rank 0's

  std::vector<Selection> sels;
  LatentModelResult latent;  // strategies latent and hybrid
  std::vector<std::unique_ptr<SelectionStrategy>> strategies;
  SelectionOptions sel_opt = cfg.select;
  if (fit.ridge == RidgeMode::fixed) sel_opt.fit = fit;  // score candidates with the user's λ
  GraphSelection graph_params;
  graph_params.min_refs = cfg.graph_min_refs;
  graph_params.max_refs = cfg.graph_max_refs;
  const std::int32_t n_kv = std::int32_t(acts.has(Kind::k) ? acts.n_heads(Kind::k) : acts.n_heads(Kind::v));
  const std::size_t all_streams = 2 * acts.n_layers() * std::size_t(n_kv);
  ModelBudget budget;
  auto t0 = clock::now();
  std::vector<KindCosts> costs;
  for (std::size_t i = 0; i < cfg.kinds.size(); ++i) {
    const HeadMetrics* m = !cfg.uses_metrics() ? nullptr : cfg.kinds[i] == Kind::k ? &metrics.key : &metrics.value;
    costs.emplace_back(cfg.kinds[i], &stats[i], m);
  }
  if (!cfg.probe.empty()) {
    const std::size_t used = apply_probe_weights(costs, read_probe_csv(cfg.probe));
    os << "probe " << cfg.probe << ": " << used << " (kind, layer) groups calibrate the costs\n";
  }
  if (cfg.whole_model()) {
    budget.max_cached = all_streams;
    if (!std::isnan(cfg.kv_budget)) budget.max_cached = ModelBudget::streams_for_fraction(cfg.kv_budget, all_streams);
    if (cfg.kv_bytes > 0)
      budget.max_cached = ModelBudget::streams_for_bytes(cfg.kv_bytes, plan.head_dim, cfg.cache_dtype);
    if (!std::isnan(cfg.read_budget))
      budget.max_streams = ModelBudget::streams_for_fraction(cfg.read_budget, all_streams, "--read-budget");
    std::size_t fixed = 0;
    for (Kind k : {Kind::k, Kind::v})
      if (std::find(cfg.kinds.begin(), cfg.kinds.end(), k) == cfg.kinds.end()) fixed += acts.n_layers() * std::size_t(n_kv);
    ThreadPool pool(std::size_t(cfg.threads));
    if (cfg.latent()) {
      if (budget.max_cached < fixed) detail::fail("KV budget of ", budget.max_cached, " streams is below the ", fixed, " streams of the kinds not fitted");
      LatentModelOptions lo;
      lo.hybrid = cfg.strategy == "hybrid";
      lo.fit = fit;
      lo.parallel = pool.parallel_for();
      latent = select_latent_model(costs, budget.max_cached - fixed, lo);
      if (cfg.accumulate.scope == RefScope::cross_layer_window)
        refit_with_earlier_layers(latent, costs, cfg.accumulate.window, fit, pool.parallel_for());
    } else {
      sels = select_model(cfg.strategy, costs, budget, fixed, sel_opt, &graph_params, pool.parallel_for());
    }
  } else if (cfg.strategy == "loss") {
    // Per-layer budget, loss-aware within each layer: exactly H − keep targets per layer and kind.
    BudgetLimits lim;
    lim.max_cached = 0;
    for (auto& c : costs) {
      const std::int32_t H = c.stats->n_heads();
      c.max_targets.assign(acts.n_layers(), H - cached_count(H, cfg.select.budget));
      lim.max_cached += acts.n_layers() * std::size_t(cached_count(H, cfg.select.budget));
    }
    BudgetOptions bo;
    bo.max_refs = cfg.select.max_refs > 0 ? cfg.select.max_refs : 8;
    bo.fit = sel_opt.fit;
    ThreadPool pool(std::size_t(cfg.threads));
    bo.parallel = pool.parallel_for();
    const BudgetResult r = select_under_budget(costs, lim, bo);
    if (!r.met) detail::fail("strategy loss: the per-layer budget cannot be met (too few heads can be rebuilt)");
    sels = r.selections;
  } else {
    for (std::size_t i = 0; i < cfg.kinds.size(); ++i) {
      strategies.push_back(make_strategy(cfg.strategy, cfg.fixed_spec));
      if (auto* g = dynamic_cast<GraphSelection*>(strategies.back().get())) {
        g->min_refs = cfg.graph_min_refs;
        g->max_refs = cfg.graph_max_refs;
      }
      sels.push_back(strategies.back()->select(stats[i], sel_opt));
    }
  }
  const double t_select = secs(t0);

  std::vector<KindSummary> out;
  std::vector<std::string> mean_lines;
  for (std::size_t ki = 0; ki < cfg.kinds.size(); ++ki) {
    const Kind kind = cfg.kinds[ki];
    const HeadMoments& st = stats[ki];
    const auto kn = std::string(kind_name(kind));
    t0 = clock::now();
    std::vector<TargetReport> report;
    if (cfg.latent()) {
      plan.kinds.push_back(std::move(latent.kinds[ki]));
      report.swap(latent.reports[ki]);
    } else {
      plan.kinds.push_back(build_kind_plan(st, sels[ki], kind, fit, &report));
    }
    const double t_fit = secs(t0);
    const bool heldout = st.heldout_count() >= 2;
    const std::string r2_label = heldout ? "held-out R2" : "in-sample R2";

    const std::int32_t H = st.n_heads();
    const std::size_t rebuilt = plan.kinds.back().n_targets();
    os << "\n== " << kn << ": " << acts.n_layers() << " layers x " << H << " heads; strategy " << cfg.strategy << ", ";
    if (cfg.whole_model())
      os << "whole-model KV budget (" << rebuilt << " of " << std::size_t(H) * acts.n_layers() << " rebuilt)";
    else
      os << "budget " << fmt("%.2f", cfg.select.budget) << " (keep " << cached_count(H, cfg.select.budget)
         << ", rebuild " << H - cached_count(H, cfg.select.budget) << " per layer)";
    os << ", refs <= " << (cfg.select.max_refs ? std::to_string(cfg.select.max_refs) : "default") << ", "
       << scope_name(st.scope(), st.window()) << ", ridge " << cfg.ridge << "\n";
    if (cfg.latent()) {
      std::size_t n_lat = 0;
      std::string per_layer;
      const KindPlan& kp = plan.kinds.back();
      for (std::int32_t l = 0; l < std::int32_t(kp.layers.size()); ++l) {  // kept = heads not rebuilt
        const std::size_t kept = std::size_t(kp.n_heads) - kp.layers[std::size_t(l)].size(), m = kp.n_latent(l);
        n_lat += m;
        per_layer += " " + std::to_string(kept) + "+" + std::to_string(m);
      }
      os << "   " << n_lat << " latent streams (" << (cfg.uses_metrics() ? "loss-weighted" : "variance-weighted")
         << " principal directions); per layer, heads kept + latent streams:" << per_layer << "\n";
    }
    if (cfg.strategy == "graph" && !strategies.empty())
      if (auto* g = dynamic_cast<GraphSelection*>(strategies[ki].get()))
        os << "   graph: edge threshold " << fmt("%.3f", g->threshold) << ", " << g->min_refs << ".." << g->max_refs
           << " references per target\n";
    if (cfg.strategy == "graph" && strategies.empty())
      os << "   graph: edge threshold chosen per kind, " << cfg.graph_min_refs << ".." << cfg.graph_max_refs
         << " references per target\n";
    os << "   tokens: " << st.train_count() << " train, " << st.heldout_count() << " held-out"
       << (cfg.accumulate.sink_tokens ? ", positions < " + std::to_string(cfg.accumulate.sink_tokens) + " (sink) skipped" : "")
       << "\n";
    os << "   time: statistics " << fmt("%.2f", t_stats[ki]) << " s" << (ki == 0 && t_metrics > 0 ? ", loss metrics " + fmt("%.2f", t_metrics) + " s" : "")
       << (ki == 0 ? ", selection " + fmt("%.2f", t_select) + " s" : "") << ", maps " << fmt("%.2f", t_fit) << " s\n";
    if (!heldout) os << "   (no held-out tokens: every R2 below is in-sample)\n";

    std::map<std::pair<int, int>, const TargetReport*> by_head;
    for (const auto& r : report) by_head[{r.target.layer, r.target.head}] = &r;
    os << r2_label << " per layer x head (-- = cached):\nlayer";
    for (std::int32_t h = 0; h < H; ++h) {
      const std::string name = "h" + std::to_string(h);
      os << std::string(8 - std::min<std::size_t>(name.size(), 7), ' ') << name;
    }
    os << "\n";
    for (std::int32_t l = 0; l < std::int32_t(acts.n_layers()); ++l) {
      os << fmt("%5.0f", double(l));
      for (std::int32_t h = 0; h < H; ++h) {
        auto it = by_head.find({l, h});
        os << (it == by_head.end() ? std::string("      --") : fmt("%8.3f", it->second->r2_heldout));
      }
      os << "\n";
    }
    os << "targets <- references (layer.head):\n";
    double sum = 0.0;
    for (const auto& r : report) {
      std::string refs;
      for (HeadId h : r.refs) refs += " " + head_name(h, H);
      os << "  " << kn << " " << head_name(r.target) << " <-" << refs;
      if (heldout)
        os << "   R2 held-out " << fmt("%.4f", r.r2_heldout) << ", in-sample " << fmt("%.4f", r.r2_in_sample)
           << ", weighted " << fmt("%.4f", r.r2_weighted);
      else
        os << "   R2 in-sample " << fmt("%.4f", r.r2_in_sample) << ", weighted " << fmt("%.4f", r.r2_weighted);
      os << ", lambda " << fmt("%.1e", r.lambda) << " " << solve_method_name(r.method)
         << (r.rank < r.in_dim ? " rank " + std::to_string(r.rank) + "/" + std::to_string(r.in_dim) : "") << "\n";
      sum += r.r2_heldout;
    }
    KindSummary ks{kind, report.size(), std::size_t(H) * acts.n_layers(),
                   report.empty() ? 0.0 : sum / double(report.size()), heldout};
    out.push_back(ks);
    mean_lines.push_back("mean " + r2_label + " (" + kn + "): " +
                         (report.empty() ? std::string("n/a (no head rebuilt)") : fmt("%.4f", ks.mean_r2)));
  }

  // KV cache: rebuilt K and V heads, bytes stored and read (as the cache allocates and reads them).
  std::size_t kv_rebuilt = 0;
  for (const auto& s : out)
    if (s.kind != Kind::q) kv_rebuilt += s.rebuilt;
  if (cfg.latent()) {
    const std::size_t saved = all_streams - latent.cached - (all_streams - cfg.kinds.size() * acts.n_layers() * std::size_t(n_kv));
    os << "\nKV cache saved: " << saved << " of " << all_streams << " K/V head streams ("
       << kv_rebuilt << " heads rebuilt, latent streams stored in their place) = "
       << fmt("%.1f", 100.0 * double(saved) / double(all_streams)) << "% of the KV cache (per token after the "
       << cfg.accumulate.sink_tokens << " sink tokens)\n";
  } else {
    os << "\nKV cache saved: " << kv_rebuilt << " of " << all_streams << " K/V heads rebuilt = "
       << fmt("%.1f", all_streams ? 100.0 * double(kv_rebuilt) / double(all_streams) : 0.0)
       << "% of the KV cache (per token after the " << cfg.accumulate.sink_tokens << " sink tokens)\n";
  }
  if (acts.has(Kind::k) || acts.has(Kind::v)) {
    Plan kv = plan;
    kv.kinds.erase(std::remove_if(kv.kinds.begin(), kv.kinds.end(), [](const KindPlan& k) { return k.kind == Kind::q; }),
                   kv.kinds.end());
    const KvBytes b = plan_kv_bytes(kv, n_kv, cfg.cache_dtype);
    os << "KV bytes per token (" << dtype_name(cfg.cache_dtype) << ", after the sink tokens): stored " << b.stored
       << " of " << b.full << " (" << fmt("%.1f", 100.0 * double(b.stored) / double(b.full))
       << "%), read per decode step " << b.read << " (" << fmt("%.1f", 100.0 * double(b.read) / double(b.full))
       << "%; a cross-layer reference is stored once and read by every layer that uses it)\n";
    if (cfg.whole_model())
      os << "budget: " << budget.max_cached << " stored head streams ("
         << budget.max_cached * dtype_row_bytes(cfg.cache_dtype, std::size_t(plan.head_dim)) << " bytes)"
         << (budget.max_streams != std::numeric_limits<std::size_t>::max()
                 ? ", " + std::to_string(budget.max_streams) + " read streams"
                 : std::string())
         << "\n";
  }
  if (!cfg.out.empty()) {
    bool heldout = true;
    for (const auto& s : out) heldout = heldout && s.heldout;
    std::map<std::string, std::string> meta = {
        {"strategy", cfg.strategy},
        {"ridge", cfg.ridge},
        {"holdout", fmt("%g", cfg.accumulate.split.fraction) + " of " + cfg.accumulate.split.describe()},
        {"r2", heldout ? "held-out" : "in-sample (no held-out tokens)"},
        {"source", sources}};
    if (cfg.accumulate.cache_type) meta["fit_on_cache"] = cfg.accumulate.cache_type->name();
    if (cfg.whole_model()) {
      meta["kv_budget_streams"] = std::to_string(budget.max_cached);
      if (budget.max_streams != std::numeric_limits<std::size_t>::max())
        meta["read_budget_streams"] = std::to_string(budget.max_streams);
    } else {
      meta["budget"] = fmt("%g", cfg.select.budget);
    }
    save_plan(plan, cfg.out, meta);
    os << "plan written to " << cfg.out << "\n";
  }
  for (const auto& l : mean_lines) os << l << "\n";
  return out;
}

inline const char* const fit_help_footer = R"(budget: --budget F keeps round(F*H) heads of each layer (0.4 on 5 heads keeps 2);
  --kv-budget F keeps round(F * all K and V heads) for the whole model (--kv-bytes N:
  N bytes per token of --cache-dtype), allocated across layers and between K and V
  by the strategy; --read-budget F also bounds what one decode step reads.
strategy loss: rebuilds what costs the model least (key errors through the queries,
  value errors through the output projection, --wo from headrecon-engine capture
  --projections); greedy: best held-out R2 first.
strategy latent: each layer caches R principal directions of its heads (latent streams,
  projected at append time); hybrid: cached heads kept exact plus principal directions
  of the other heads' residual. Both need --kv-budget/--kv-bytes, allocate it exactly
  across layers and K/V, weigh directions by the loss metrics with --wo (variance
  without). --same-layer: a layer reads only what it stores; --window W: the maps also
  read the stored streams of the W previous layers (no extra storage, more reads).
  Plan format version 2.
--cache-dtype T: f32, f16, bf16, q8_0, q4_0 (r suffix: Hadamard-rotated, e.g. q4_0r), what
  bytes count in; --fit-on-cache fits the maps on K/V as that cache gives them back.
held-out split: whole sequences by default (--holdout-block N: runs of N tokens).
--probe FILE: per-layer weights of strategy loss from headrecon-engine probe.
--window W: cross-layer references from layers l-W..l only (statistics of
  (W+1) layers per layer instead of all layers); the statistics' memory is printed
  first and checked against --max-memory (default: the available memory per rank),
  with the largest window that fits when it is exceeded.
mpirun -np N headrecon fit (built with HEADRECON_WITH_MPI): the files' batches are
  split over the ranks, the statistics reduced, the plan written by rank 0.
--threads N: BLAS threads for the statistics (default 1); N selection workers
  (each on one BLAS thread: selection makes many small LAPACK calls).)";

/// Registers `headrecon fit`: its options, checked, fill a FitConfig for run_fit.
inline void add_fit_command(Tool& tool) {
  struct Opts {
    FitConfig c;
    std::vector<std::string> kinds, acts;
    std::string cache_dtype = "f32";
    bool fit_on_cache = false;
    std::uint64_t seed = 0;
    CLI::Option *budget = nullptr, *kv_budget = nullptr, *kv_bytes = nullptr, *read_budget = nullptr, *window = nullptr;
  };
  auto o = std::make_shared<Opts>();
  FitConfig& c = o->c;
  CLI::App* cmd = tool.add("fit", "fit a plan on captured activations and print held-out R2 per layer x head, "
                                  "the KV bytes stored and read per token", [o] {
    FitConfig& c = o->c;
    c.acts = o->acts.front();
    c.more_acts.assign(o->acts.begin() + 1, o->acts.end());
    if (o->window->count()) {
      if (c.accumulate.scope == RefScope::same_layer) detail::fail("give --same-layer or --window, not both");
      c.accumulate.scope = RefScope::cross_layer_window;
    }
    if (!o->kinds.empty()) {
      c.kinds.clear();
      for (const auto& k : o->kinds) c.kinds.push_back(parse_kind(k));
    }
    parse_ridge(c.ridge);  // validate before any work
    c.select.seed = c.accumulate.split.seed = o->seed;
    c.select.validate();
    c.accumulate.split.validate();
    if (o->budget->count() && (o->kv_budget->count() || o->kv_bytes->count()))
      detail::fail("give --budget (per layer) or --kv-budget / --kv-bytes (whole model), not both");
    if (!std::isnan(c.kv_budget) && !(c.kv_budget > 0 && c.kv_budget <= 1))
      detail::fail("--kv-budget must be a fraction in (0, 1], got ", c.kv_budget);
    if (!std::isnan(c.read_budget) && !(c.read_budget > 0 && c.read_budget <= 1))
      detail::fail("--read-budget must be a fraction in (0, 1], got ", c.read_budget);
    const CacheType ct = CacheType::parse(o->cache_dtype);
    c.cache_dtype = ct.dtype;
    if (o->fit_on_cache) c.accumulate.cache_type = ct;
    std::vector<std::string> inputs{c.acts, c.wo, c.probe};
    inputs.insert(inputs.end(), c.more_acts.begin(), c.more_acts.end());
    check_output_path("--out", c.out, inputs);
    std::ostream quiet(nullptr);  // MPI ranks other than 0 print nothing but errors
    run_fit(c, FitComm().rank() == 0 ? std::cout : quiet);
    return 0;
  });
  cmd->footer(fit_help_footer);
  cmd->add_option("--acts", o->acts,
                  "activations file (headrecon synth, headrecon-engine capture); repeat for several: one token "
                  "stream, split over the ranks under mpirun")
      ->required()
      ->allow_extra_args(false);
  cmd->add_option("--out", c.out, "plan file to write")->required();
  cmd->add_option("--kind", o->kinds, "kind to fit: k, v or q (repeat for several)")
      ->allow_extra_args(false)
      ->default_str("k");
  cmd->add_option("--strategy", c.strategy, "greedy|loss|latent|hybrid|shared|graph|fixed|random");
  o->budget = cmd->add_option("--budget", c.select.budget, "fraction of each layer's heads kept")->check(finite());
  o->kv_budget = cmd->add_option("--kv-budget", c.kv_budget, "fraction of all K and V heads kept (whole model)")
                     ->check(finite())
                     ->default_str("none");
  o->kv_bytes = cmd->add_option("--kv-bytes", c.kv_bytes, "KV bytes per token kept (whole model)")
                    ->check(integer_in(1, 1LL << 40));
  o->read_budget = cmd->add_option("--read-budget", c.read_budget, "fraction of K/V streams one decode step reads")
                       ->check(finite())
                       ->default_str("none");
  cmd->add_option("--cache-dtype", o->cache_dtype,
                  "f32|f16|bf16|q8_0|q4_0 (r suffix: Hadamard-rotated, e.g. q4_0r): what the byte budget counts");
  cmd->add_flag("--fit-on-cache", o->fit_on_cache, "fit the maps on K/V as a --cache-dtype cache gives them back");
  cmd->add_option("--wo", c.wo, "output projections (strategy loss; headrecon-engine capture --projections)");
  cmd->add_option("--probe", c.probe, "probe CSV (headrecon-engine probe): per-layer weights of strategy loss");
  cmd->add_option("--refs", c.select.max_refs, "references per target (0: the strategy's default)")
      ->check(integer_in(0, 64));
  cmd->add_option("--holdout", c.accumulate.split.fraction, "held-out fraction")->check(finite());
  cmd->add_option("--holdout-block", c.accumulate.split.block, "held-out runs of N tokens (0: whole sequences)")
      ->check(integer_in(0, 1LL << 30));
  cmd->add_option("--ridge", c.ridge, "auto (GCV) or a fixed lambda >= 0");
  cmd->add_option("--sink", c.accumulate.sink_tokens, "positions < S are kept exact and not fitted")
      ->check(integer_in(0, 1LL << 20));
  cmd->add_flag("--same-layer", "references from the target's layer only (default: also earlier layers)")
      ->each([&c](const std::string&) { c.accumulate.scope = RefScope::same_layer; });
  cmd->add_option("--fixed", c.fixed_spec, "strategy fixed: L.H=L.H,L.H;...");
  cmd->add_option("--seed", o->seed, "seed of the held-out split and strategy random")
      ->check(integer_in(0, 1LL << 40));
  cmd->add_option("--min-refs", c.graph_min_refs, "strategy graph: fewest references per target")
      ->check(integer_in(1, 64));
  cmd->add_option("--max-refs", c.graph_max_refs, "strategy graph: most references per target")
      ->check(integer_in(1, 64));
  cmd->add_option("--batch", c.accumulate.batch_tokens, "tokens read per batch")->check(integer_in(1, 1LL << 24));
  cmd->add_option("--max-tokens", c.accumulate.max_tokens, "tokens used (0: all)")->check(integer_in(0, 1LL << 40));
  cmd->add_option("--threads", c.threads, "BLAS threads for the statistics; selection workers")
      ->check(integer_in(1, 1024));
  o->window = cmd->add_option("--window", c.accumulate.window, "cross-layer references from layers l-W..l only")
                  ->check(integer_in(0, 1 << 20));
  cmd->add_option("--max-memory", c.max_memory, "bytes the statistics may take (default: available memory per rank)")
      ->check(integer_in(1, 1LL << 50));
}

}  // namespace headrecon::cli
