#pragma once
// `headrecon fit`: statistics -> selection -> maps -> plan file, with a report
// a person can read (per layer x head held-out R², references, KV saved).

#include <chrono>
#include <cstdio>
#include <map>
#include <ostream>
#include <string>
#include <vector>

#include "args.hpp"
#include "headrecon/accumulate.hpp"
#include "headrecon/calibrate.hpp"
#include "headrecon/plan_io.hpp"
#include "headrecon/select.hpp"

namespace headrecon::cli {

struct FitConfig {
  std::string acts, out;
  std::vector<Kind> kinds{Kind::k};
  std::string strategy = "greedy", fixed_spec;
  std::string ridge = "auto";
  SelectionOptions select;
  AccumulateOptions accumulate;
  int graph_min_refs = 4, graph_max_refs = 6;
};

struct KindSummary {
  Kind kind;
  std::size_t rebuilt = 0, heads = 0;
  double mean_r2 = 0.0;
};

inline std::string head_name(HeadId h) { return std::to_string(h.layer) + "." + std::to_string(h.head); }

inline std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

inline FitOptions parse_ridge(const std::string& s) {
  FitOptions o;
  if (s == "auto") return o;
  o.ridge = RidgeMode::fixed;
  o.lambda = Args::parse_double("--ridge", s);
  if (o.lambda < 0) detail::fail("--ridge must be 'auto' or a number >= 0, got ", s);
  return o;
}

/// Runs the fit and writes the plan; returns one summary per kind.
inline std::vector<KindSummary> run_fit(const FitConfig& cfg, std::ostream& os) {
  using clock = std::chrono::steady_clock;
  auto secs = [](clock::time_point a) { return std::chrono::duration<double>(clock::now() - a).count(); };
  const ActivationReader acts(cfg.acts);
  const FitOptions fit = parse_ridge(cfg.ridge);
  Plan plan;
  plan.head_dim = std::int32_t(acts.head_dim());
  plan.n_layers = std::int32_t(acts.n_layers());
  plan.post_rope = acts.post_rope();
  plan.sink_tokens = cfg.accumulate.sink_tokens;
  os << "headrecon fit: " << cfg.acts << " (" << acts.n_layers() << " layers, " << acts.n_tokens()
     << " tokens, head_dim " << acts.head_dim() << ", " << (acts.post_rope() ? "post-RoPE" : "pre-RoPE") << ")\n";

  std::vector<KindSummary> out;
  std::vector<std::string> mean_lines;
  for (Kind kind : cfg.kinds) {
    const auto kn = std::string(kind_name(kind));
    auto t0 = clock::now();
    const HeadMoments stats = accumulate(acts, kind, cfg.accumulate);
    const double t_stats = secs(t0);
    auto strategy = make_strategy(cfg.strategy, cfg.fixed_spec);
    if (auto* g = dynamic_cast<GraphSelection*>(strategy.get())) {
      g->min_refs = cfg.graph_min_refs;
      g->max_refs = cfg.graph_max_refs;
    }
    SelectionOptions sel_opt = cfg.select;
    if (fit.ridge == RidgeMode::fixed) sel_opt.fit = fit;  // score candidates with the user's λ
    t0 = clock::now();
    const Selection sel = strategy->select(stats, sel_opt);
    const double t_select = secs(t0);
    t0 = clock::now();
    std::vector<TargetReport> report;
    plan.kinds.push_back(build_kind_plan(stats, sel, kind, fit, &report));
    const double t_fit = secs(t0);

    const std::int32_t H = stats.n_heads(), keep = cached_count(H, cfg.select.budget);
    os << "\n== " << kn << ": " << acts.n_layers() << " layers x " << H << " heads; strategy " << strategy->name()
       << ", budget " << fmt("%.2f", cfg.select.budget) << " (keep " << keep << ", rebuild " << H - keep
       << " per layer), refs <= " << (cfg.select.max_refs ? std::to_string(cfg.select.max_refs) : "default") << ", "
       << (stats.scope() == RefScope::same_layer ? "same-layer" : "cross-layer") << ", ridge " << cfg.ridge << "\n";
    if (auto* g = dynamic_cast<GraphSelection*>(strategy.get()))
      os << "   graph: edge threshold " << fmt("%.3f", g->threshold) << ", " << g->min_refs << ".." << g->max_refs
         << " references per target\n";
    os << "   tokens: " << stats.train_count() << " train, " << stats.heldout_count() << " held-out"
       << (cfg.accumulate.sink_tokens ? ", sink tokens skipped" : "") << "\n";
    os << "   time: statistics " << fmt("%.2f", t_stats) << " s, selection " << fmt("%.2f", t_select) << " s, fit "
       << fmt("%.2f", t_fit) << " s\n";
    if (stats.heldout_count() < 2) os << "   (no held-out tokens: R2 below is in-sample)\n";

    std::map<std::pair<int, int>, const TargetReport*> by_head;
    for (const auto& r : report) by_head[{r.target.layer, r.target.head}] = &r;
    os << "held-out R2 per layer x head (-- = cached):\nlayer";
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
      for (HeadId h : r.refs) refs += " " + head_name(h);
      os << "  " << kn << " " << head_name(r.target) << " <-" << refs << "   R2 held-out " << fmt("%.4f", r.r2_heldout)
         << ", in-sample " << fmt("%.4f", r.r2_in_sample) << ", weighted " << fmt("%.4f", r.r2_weighted)
         << ", lambda " << fmt("%.1e", r.lambda) <<  " " << solve_method_name(r.method)
         << (r.rank < r.in_dim ? " rank " + std::to_string(r.rank) + "/" + std::to_string(r.in_dim) : "") << "\n";
      sum += r.r2_heldout;
    }
    KindSummary ks{kind, report.size(), std::size_t(H) * acts.n_layers(), report.empty() ? 0.0 : sum / double(report.size())};
    out.push_back(ks);
    mean_lines.push_back("mean held-out R2 (" + kn + "): " +
                         (report.empty() ? std::string("n/a (no head rebuilt)") : fmt("%.4f", ks.mean_r2)));
  }

  // KV cache saved: rebuilt K and V heads over all K and V heads.
  std::size_t kv_rebuilt = 0, kv_heads = 2 * acts.n_heads(Kind::k) * acts.n_layers();
  for (const auto& s : out)
    if (s.kind != Kind::q) kv_rebuilt += s.rebuilt;
  os << "\nKV cache saved: " << kv_rebuilt << " of " << kv_heads << " K/V heads rebuilt = "
     << fmt("%.1f", kv_heads ? 100.0 * double(kv_rebuilt) / double(kv_heads) : 0.0)
     << "% of the KV cache (per token after the " << cfg.accumulate.sink_tokens << " sink tokens)\n";
  if (!cfg.out.empty()) {
    const std::map<std::string, std::string> meta = {
        {"strategy", cfg.strategy}, {"budget", fmt("%g", cfg.select.budget)},
        {"ridge", cfg.ridge},       {"holdout", fmt("%g", cfg.accumulate.split.fraction)},
        {"source", cfg.acts}};
    save_plan(plan, cfg.out, meta);
    os << "plan written to " << cfg.out << "\n";
  }
  for (const auto& l : mean_lines) os << l << "\n";
  return out;
}

}  // namespace headrecon::cli
