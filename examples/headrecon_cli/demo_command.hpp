#pragma once
// `headrecon demo`: synth + fit (K and V) + inspect on a built-in synthetic model.

#include <filesystem>
#include <iostream>
#include <memory>
#include <string>

#include "command_line.hpp"
#include "fit_command.hpp"
#include "inspect_command.hpp"
#include "synth_command.hpp"

namespace headrecon::cli {

inline void run_demo(const std::filesystem::path& dir, std::ostream& os) {
  std::filesystem::create_directories(dir);
  SynthConfig s;
  s.out = (dir / "synthetic_acts.safetensors").string();
  s.spec.n_layers = 6;
  s.spec.n_heads = 4;
  s.spec.q_per_kv = 2;
  s.spec.head_dim = 32;
  s.spec.noise = 0.2;
  s.tokens = 16384;
  os << "# 1. synthetic activations with planted structure\n";
  run_synth(s, os);
  FitConfig f;
  f.acts = s.out;
  f.out = (dir / "plan.safetensors").string();
  f.kinds = {Kind::k, Kind::v};
  f.accumulate.sink_tokens = 4;
  f.select.max_refs = 2;
  os << "\n# 2. fit: greedy selection, half of the K and V heads rebuilt from 2 references\n";
  run_fit(f, os);
  os << "\n# 3. the plan file\n";
  run_inspect(f.out, os);
}

/// Registers `headrecon demo`.
inline void add_demo_command(Tool& tool) {
  auto dir = std::make_shared<std::string>("headrecon-demo");
  CLI::App* cmd = tool.add("demo", "synth + fit (K and V) + inspect on a built-in synthetic model", [dir] {
    run_demo(*dir, std::cout);
    return 0;
  });
  cmd->add_option("--dir", *dir, "directory for the files it writes");
}

}  // namespace headrecon::cli
