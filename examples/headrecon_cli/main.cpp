// headrecon: the command-line tool (fit, inspect, synth, demo).
#include <cmath>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>

#include "args.hpp"
#include "bench_command.hpp"
#include "fit_command.hpp"
#include "inspect_command.hpp"
#include "synth_command.hpp"

using namespace headrecon;
using namespace headrecon::cli;

namespace {
const char* usage = R"(usage: headrecon COMMAND [options]

commands:
  fit --acts FILE --out PLAN [--kind k|v|q ...] [--strategy greedy|loss|shared|graph|fixed|random]
      [--budget F | --kv-budget F | --kv-bytes N] [--read-budget F] [--cache-dtype f32|f16|bf16]
      [--wo PROJECTIONS] [--probe PROBE.csv] [--refs N] [--holdout F] [--holdout-block N] [--ridge auto|LAMBDA]
      [--sink S] [--same-layer] [--fixed SPEC] [--seed N] [--min-refs N] [--max-refs N]
      [--batch N] [--max-tokens N] [--threads N] [--window W] [--max-memory BYTES]
        fit a plan on captured activations and print held-out R2 per layer x head,
        the KV bytes stored and read per token. --acts may be repeated: the files are
        one token stream. Under mpirun (built with HEADRECON_WITH_MPI) the files'
        batches are split over the ranks, the statistics reduced, the plan written by rank 0
  inspect PLAN
        print what a plan holds
  synth --out FILE [--layers N] [--heads N] [--q-per-kv N] [--dim D] [--tokens N]
      [--seq-len N] [--noise F] [--seed N] [--dtype f32|f16|bf16] [--projections FILE]
        write activations with planted linear structure (and random output projections)
  demo [--dir DIR]
        synth + fit (K and V) + inspect on a built-in synthetic model
  bench [--quick] [--json FILE]
        kernel speed as ratios against baselines measured in the same run

budget: --budget F keeps round(F*H) heads of each layer (0.4 on 5 heads keeps 2);
  --kv-budget F keeps round(F * all K and V heads) for the whole model (--kv-bytes N:
  N bytes per token of --cache-dtype), allocated across layers and between K and V
  by the strategy; --read-budget F also bounds what one decode step reads.
strategy loss: rebuilds what costs the model least (key errors through the queries,
  value errors through the output projection, --wo from headrecon-engine capture
  --projections); greedy: best held-out R2 first.
held-out split: whole sequences by default (--holdout-block N: runs of N tokens).
--probe FILE: per-layer weights of strategy loss from headrecon-engine probe.
--window W: cross-layer references from layers l-W..l only (statistics of
  (W+1) layers per layer instead of all layers); the statistics' memory is printed
  first and checked against --max-memory (default: the available memory per rank),
  with the largest window that fits when it is exceeded.
--threads N: BLAS threads for the statistics (default 1); N selection workers
  (each on one BLAS thread: selection makes many small LAPACK calls).
)";

int cmd_fit(int argc, char** argv) {
  Args a(argc, argv, 2,
         {"--acts", "--out", "--kind", "--strategy", "--budget", "--refs", "--holdout", "--holdout-block", "--ridge",
          "--sink", "--fixed", "--seed", "--min-refs", "--max-refs", "--batch", "--max-tokens", "--threads",
          "--kv-budget", "--kv-bytes", "--read-budget", "--cache-dtype", "--wo", "--probe", "--window", "--max-memory"},
         {"--same-layer"});
  FitConfig c;
  const std::vector<std::string> acts = a.all("--acts");
  if (acts.empty()) detail::fail("missing required option --acts");
  c.acts = acts[0];
  c.more_acts.assign(acts.begin() + 1, acts.end());
  c.out = a.required("--out");
  if (a.has("--kind")) {
    c.kinds.clear();
    for (const auto& k : a.all("--kind")) c.kinds.push_back(parse_kind(k));
  }
  c.strategy = a.str("--strategy", "greedy");
  c.fixed_spec = a.str("--fixed", "");
  c.ridge = a.str("--ridge", "auto");
  parse_ridge(c.ridge);  // validate early
  c.select.budget = a.num("--budget", 0.5);
  c.select.max_refs = int(a.integer("--refs", 0, 0, 64));
  c.select.seed = std::uint64_t(a.integer("--seed", 0, 0, 1L << 40));
  c.select.validate();
  c.accumulate.split.fraction = a.num("--holdout", 0.25);
  c.accumulate.split.block = std::uint64_t(a.integer("--holdout-block", 0, 0, 1L << 30));
  c.accumulate.split.seed = c.select.seed;
  c.accumulate.split.validate();
  c.accumulate.sink_tokens = std::int32_t(a.integer("--sink", 0, 0, 1L << 20));
  c.accumulate.scope = a.has("--same-layer") ? RefScope::same_layer : RefScope::cross_layer;
  if (a.has("--window")) {
    if (a.has("--same-layer")) detail::fail("give --same-layer or --window, not both");
    c.accumulate.scope = RefScope::cross_layer_window;
    c.accumulate.window = std::int32_t(a.integer("--window", 0, 0, 1L << 20));
  }
  c.max_memory = std::size_t(a.integer("--max-memory", 0, 1, 1L << 50));
  c.accumulate.batch_tokens = std::size_t(a.integer("--batch", 2048, 1, 1L << 24));
  c.accumulate.max_tokens = std::size_t(a.integer("--max-tokens", 0, 0, 1L << 40));
  c.graph_min_refs = int(a.integer("--min-refs", 4, 1, 64));
  c.graph_max_refs = int(a.integer("--max-refs", 6, 1, 64));
  c.threads = int(a.integer("--threads", 1, 1, 1024));
  if (a.has("--budget") && (a.has("--kv-budget") || a.has("--kv-bytes")))
    detail::fail("give --budget (per layer) or --kv-budget / --kv-bytes (whole model), not both");
  if (a.has("--kv-budget")) c.kv_budget = a.num("--kv-budget", 0.0);
  if (a.has("--kv-bytes")) c.kv_bytes = std::size_t(a.integer("--kv-bytes", 0, 1, 1L << 40));
  if (a.has("--read-budget")) c.read_budget = a.num("--read-budget", 0.0);
  if (!std::isnan(c.kv_budget) && !(c.kv_budget > 0 && c.kv_budget <= 1))
    detail::fail("--kv-budget must be a fraction in (0, 1], got ", a.str("--kv-budget", ""));
  if (!std::isnan(c.read_budget) && !(c.read_budget > 0 && c.read_budget <= 1))
    detail::fail("--read-budget must be a fraction in (0, 1], got ", a.str("--read-budget", ""));
  {
    const std::string dt = a.str("--cache-dtype", "f32");
    if (dt != "f32" && dt != "f16" && dt != "bf16") detail::fail("--cache-dtype must be f32, f16 or bf16, got ", dt);
    c.cache_dtype = dt == "f32" ? DType::f32 : dt == "f16" ? DType::f16 : DType::bf16;
  }
  c.wo = a.str("--wo", "");
  c.probe = a.str("--probe", "");
  if (!a.positional().empty()) detail::fail("fit: unexpected argument '", a.positional()[0], "'");
  std::ostream quiet(nullptr);  // MPI ranks other than 0 print nothing but errors
  run_fit(c, FitComm().rank() == 0 ? std::cout : quiet);
  return 0;
}

int cmd_synth(int argc, char** argv) {
  Args a(argc, argv, 2,
         {"--out", "--layers", "--heads", "--q-per-kv", "--dim", "--tokens", "--seq-len", "--noise", "--seed",
          "--dtype", "--projections"},
         {});
  SynthConfig c;
  c.out = a.required("--out");
  c.projections = a.str("--projections", "");
  if (c.projections == c.out) detail::fail("--projections and --out name the same file");
  c.spec.n_layers = std::int32_t(a.integer("--layers", 4, 1, 1024));
  c.spec.n_heads = std::int32_t(a.integer("--heads", 4, 1, 1024));
  c.spec.q_per_kv = std::int32_t(a.integer("--q-per-kv", 2, 1, 64));
  c.spec.head_dim = std::int32_t(a.integer("--dim", 32, 1, 1024));
  c.spec.noise = a.num("--noise", 0.1);
  c.spec.seed = std::uint64_t(a.integer("--seed", 1, 0, 1L << 40));
  c.tokens = std::size_t(a.integer("--tokens", 8192, 1, 1L << 32));
  c.seq_len = std::size_t(a.integer("--seq-len", 1024, 1, 1L << 32));
  const std::string dt = a.str("--dtype", "f32");
  c.dtype = dt == "f32" ? DType::f32 : dt == "f16" ? DType::f16 : dt == "bf16" ? DType::bf16 : DType::f32;
  if (dt != "f32" && dt != "f16" && dt != "bf16") detail::fail("--dtype must be f32, f16 or bf16, got ", dt);
  if (c.spec.noise < 0) detail::fail("--noise must be >= 0");
  run_synth(c, std::cout);
  return 0;
}

int cmd_demo(int argc, char** argv) {
  Args a(argc, argv, 2, {"--dir"}, {});
  const std::filesystem::path dir = a.str("--dir", "headrecon-demo");
  std::filesystem::create_directories(dir);
  SynthConfig s;
  s.out = (dir / "synthetic_acts.safetensors").string();
  s.spec.n_layers = 6;
  s.spec.n_heads = 4;
  s.spec.q_per_kv = 2;
  s.spec.head_dim = 32;
  s.spec.noise = 0.2;
  s.tokens = 16384;
  std::cout << "# 1. synthetic activations with planted structure\n";
  run_synth(s, std::cout);
  FitConfig f;
  f.acts = s.out;
  f.out = (dir / "plan.safetensors").string();
  f.kinds = {Kind::k, Kind::v};
  f.accumulate.sink_tokens = 4;
  f.select.max_refs = 2;
  std::cout << "\n# 2. fit: greedy selection, half of the K and V heads rebuilt from 2 references\n";
  run_fit(f, std::cout);
  std::cout << "\n# 3. the plan file\n";
  run_inspect(f.out, std::cout);
  return 0;
}
}  // namespace

int main(int argc, char** argv) {
  std::unique_ptr<MpiSession> mpi;  // MPI when started by mpirun (fit_distributed.hpp)
  try {
    mpi = std::make_unique<MpiSession>(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "headrecon: error: " << e.what() << "\n";
    return 1;
  }
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::cout << usage;
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  try {
    if (cmd == "fit") return cmd_fit(argc, argv);
    if (cmd == "synth") return cmd_synth(argc, argv);
    if (cmd == "demo") return cmd_demo(argc, argv);
    if (cmd == "bench") {
      Args a(argc, argv, 2, {"--json"}, {"--quick"});
      run_bench({a.has("--quick"), a.str("--json", "")}, std::cout);
      return 0;
    }
    if (cmd == "inspect") {
      Args a(argc, argv, 2, {}, {});
      if (a.positional().size() != 1) detail::fail("inspect takes one plan file");
      run_inspect(a.positional()[0], std::cout);
      return 0;
    }
    std::cerr << "headrecon: unknown command '" << cmd << "'\n" << usage;
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "headrecon " << cmd << ": error: " << e.what() << "\n";
    return 1;
  }
}
