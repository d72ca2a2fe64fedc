#pragma once
// `headrecon-engine demo`: the real-model pipeline (demo.hpp) with its options.

#include <algorithm>
#include <memory>

#include "demo.hpp"
#include "engine_options.hpp"

namespace headrecon_engine::commands {

struct DemoCommandOptions {
  DemoOptions demo;
  std::string cache_dtype = "f32", sinks, plans;
};

inline int run_demo_command(const DemoCommandOptions& c) {
  DemoOptions o = c.demo;
  o.fetch_script = std::string(HEADRECON_ENGINE_DIR) + "/fetch_model.sh";
  o.prepare_text_script = std::string(HEADRECON_ENGINE_DIR) + "/prepare_text.sh";
  o.speed_opt.context = o.eval_len;
  o.cache_dtypes.clear();
  for (const auto& t : split_list(c.cache_dtype)) o.cache_dtypes.push_back(headrecon::CacheType::parse(t));
  if (o.cache_dtypes.empty()) fail("--cache-dtype: no cache type given");
  o.speed_opt.dtype = o.cache_dtypes.front();
  if (!c.sinks.empty()) o.sinks = parse_sinks(c.sinks);
  if (!c.plans.empty()) {
    std::vector<PlanSpec> keep;
    for (const auto& name : split_list(c.plans)) {
      auto it = std::find_if(o.plans.begin(), o.plans.end(), [&](const PlanSpec& p) { return p.name == name; });
      if (it == o.plans.end()) {
        std::string known;
        for (const auto& p : o.plans) known += " " + p.name;
        fail("--plans: unknown plan '", name, "' (known:", known, ")");
      }
      keep.push_back(*it);
    }
    o.plans = keep;
  }
  return run_demo(o, std::cout);
}

inline void add_demo_command(headrecon::cli::Tool& tool) {
  auto c = std::make_shared<DemoCommandOptions>();
  DemoOptions& o = c->demo;
  o.model = default_model_path();
  o.kjv = cache_dir() + "/text/kjv.txt";
  CLI::App* cmd = tool.add("demo",
                           "the real-model pipeline: capture, R2 analysis (trained and random weights), plans, eval, "
                           "decode speed, report",
                           [c] { return run_demo_command(*c); });
  cmd->add_option("--dir", o.dir, "directory for the report and files");
  cmd->add_option("--model", o.model, "GGUF model (fetched when absent)");
  cmd->add_option("--docs", o.docs, "directory of calibration/eval text (Debian linux-doc-6.1)");
  cmd->add_option("--kjv", o.kjv, "out-of-domain text (KJV); skipped when missing");
  cmd->add_option("--calib-tokens", o.calib_tokens, "calibration tokens captured")->check(integer_in(256, 1LL << 30));
  cmd->add_option("--random-tokens", o.random_tokens, "tokens captured with random weights")
      ->check(integer_in(256, 1LL << 30));
  cmd->add_option("--seq-len", o.capture_seq_len, "capture sequence length")->check(integer_in(16, 1LL << 20));
  cmd->add_option("--eval-seqs", o.eval_seqs, "eval sequences")->check(integer_in(1, 1LL << 20));
  cmd->add_option("--eval-len", o.eval_len, "tokens per eval sequence")->check(integer_in(8, 1LL << 20));
  cmd->add_option("--kjv-seqs", o.kjv_seqs, "KJV eval sequences")->check(integer_in(0, 1LL << 20));
  cmd->add_option("--sinks", c->sinks, "sink token counts, comma-separated")->default_str("0,4");
  cmd->add_option("--q-window", o.q_window, "Q cross-layer references: this many previous layers")
      ->check(integer_in(0, 1 << 20));
  cmd->add_option("--max-k", o.max_k, "R2 curves up to k references")->check(integer_in(1, 16));
  cmd->add_option("--threads", o.threads, "threads")->check(integer_in(1, 1024));
  cmd->add_option("--seed", o.random_seed, "seed of the random weights")->check(integer_in(0, 1LL << 62));
  cmd->add_flag("!--no-random", o.random, "skip the random-weights analysis");
  cmd->add_flag("--keep-acts", o.keep_acts, "keep the activation files");
  cmd->add_option("--cache-dtype", c->cache_dtype,
                  "cache types of the eval, comma-separated: f32,f16,bf16,q8_0,q4_0 (r suffix: rotated, e.g. q4_0r); "
                  "the speed step uses the first");
  cmd->add_option("--chunk", o.eval_chunk, "eval tokens per forward (1: decode; more: chunked prefill, same store)")
      ->check(integer_in(1, 1 << 20));
  cmd->add_option("--plans", c->plans, "plans to build, comma-separated (default: all)");
  cmd->add_option("--speed-context", o.speed_opt.long_context, "attention-alone context of the speed step")
      ->check(integer_in(16, 1LL << 22));
  cmd->add_flag("!--no-speed", o.speed, "skip the decode-speed step");
}

}  // namespace headrecon_engine::commands
