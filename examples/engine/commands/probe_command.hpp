#pragma once
// `headrecon-engine probe`: each (kind, layer) of a plan rebuilt alone; KL to
// the full model and NLL change per token (headrecon fit --probe).

#include <iostream>
#include <memory>

#include "engine_options.hpp"
#include "headrecon/plan_io.hpp"
#include "output_file.hpp"
#include "probe.hpp"

namespace headrecon_engine::commands {

struct ProbeOptions {
  ModelOptions model;
  TextOptions text;
  std::string plan, out;
  std::size_t seqs = 4, seq_len = 256;
};

inline int run_probe(const ProbeOptions& o) {
  o.model.apply_threads();
  headrecon::cli::check_output_path("--out", o.out, {o.model.model, o.plan});
  if (!o.text.has_dir()) fail("probe needs --text-dir (calibration text: --split calib, the default)");
  const GgufFile f(o.model.path());
  const Tokenizer tok(f);
  const LlamaModel m = o.model.load(f);
  const headrecon::Plan plan = headrecon::load_plan(o.plan);
  const Split split = o.text.split_or("calib");
  const TokenStream s =
      spread_sequences(tok, list_text_files(o.text.text_dir, o.text.suffix, split), o.seqs, o.seq_len);
  std::cout << "probe: " << o.seqs << " sequences of " << o.seq_len << " tokens (split " << split_name(split)
            << "), each (kind, layer) of " << o.plan << " rebuilt alone\n";
  const auto rows = probe_plan(m, s.tokens, o.seq_len, plan, std::cout);
  headrecon::cli::write_atomically(o.out, [&](const std::string& tmp) { write_probe_csv(rows, tmp); });
  std::cout << "wrote " << o.out << "\n";
  return 0;
}

inline void add_probe_command(headrecon::cli::Tool& tool) {
  auto o = std::make_shared<ProbeOptions>();
  CLI::App* c = tool.add("probe",
                         "the direct probe: each (kind, layer) of the plan rebuilt alone (simulated in a full cache); "
                         "KL to the full model and NLL change per token (headrecon fit --probe)",
                         [o] { return run_probe(*o); });
  o->model.add_runtime(c);
  c->add_option("--plan", o->plan, "plan file")->required();
  c->add_option("--out", o->out, "probe CSV to write")->required();
  o->text.add(c, /*with_files=*/false);
  c->add_option("--seqs", o->seqs, "sequences")->check(integer_in(1, 1LL << 20));
  c->add_option("--seq-len", o->seq_len, "tokens per sequence")->check(integer_in(2, 1LL << 20));
}

}  // namespace headrecon_engine::commands
