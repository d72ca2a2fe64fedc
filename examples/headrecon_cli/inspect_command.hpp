#pragma once
// `headrecon inspect PLAN`: what a plan holds.

#include <cmath>
#include <ostream>
#include <string>

#include "command_line.hpp"
#include "fit_command.hpp"
#include "headrecon/plan_io.hpp"

namespace headrecon::cli {

inline void run_inspect(const std::string& path, std::ostream& os) {
  const Plan plan = load_plan(path);
  os << path << ": headrecon plan, " << plan.n_layers << " layers, head_dim " << plan.head_dim << ", "
     << (plan.post_rope ? "fitted after RoPE (absorbable into attention)" : "fitted before RoPE (reconstruct, then rotate)")
     << ", " << plan.sink_tokens << " sink tokens kept exact\n";
  for (const KindPlan& kp : plan.kinds) {
    const std::size_t total = std::size_t(kp.n_heads) * std::size_t(plan.n_layers), rebuilt = kp.n_targets();
    double r2 = 0.0;
    std::size_t params = 0;
    for (const auto& layer : kp.layers)
      for (const auto& t : layer) r2 += t.r2_heldout, params += t.weight.size() + t.bias.size();
    os << "\n" << kind_name(kp.kind) << ": " << kp.n_heads << " heads/layer, " << rebuilt << " of " << total
       << " rebuilt (" << fmt("%.1f", total ? 100.0 * double(rebuilt) / double(total) : 0.0) << "%), "
       << params << " map parameters (" << fmt("%.2f", double(params) * 4.0 / 1048576.0) << " MiB)";
    if (rebuilt) os << ", mean held-out R2 " << fmt("%.4f", r2 / double(rebuilt));
    std::size_t n_latent = 0;
    for (std::int32_t l = 0; l < plan.n_layers; ++l) n_latent += kp.n_latent(l);
    if (n_latent)
      os << "; " << n_latent << " latent streams (zJ: principal directions of a layer's heads, projected at append time)";
    os << "\n";
    for (std::int32_t l = 0; l < plan.n_layers; ++l) {
      os << "  layer " << l << ": cached";
      for (std::int32_t h : kp.cached_heads(l)) os << " " << h;
      for (std::size_t j = 0; j < kp.n_latent(l); ++j) os << " z" << j;
      for (const auto& t : kp.layers[std::size_t(l)]) {
        double wn = 0.0;
        for (float w : t.weight) wn += double(w) * double(w);
        os << " | " << t.target.head << " <-";
        for (HeadId r : t.refs) os << " " << head_name(r, kp.n_heads);
        os << " (R2 " << fmt("%.3f", t.r2_heldout) << ", |W| " << fmt("%.2f", std::sqrt(wn)) << ")";
      }
      os << "\n";
    }
  }
}

/// Registers `headrecon inspect PLAN`.
inline void add_inspect_command(Tool& tool) {
  auto path = std::make_shared<std::string>();
  CLI::App* cmd = tool.add("inspect", "print what a plan holds", [path] {
    run_inspect(*path, std::cout);
    return 0;
  });
  cmd->add_option("plan", *path, "plan file (headrecon fit)")->required();
}

}  // namespace headrecon::cli
