#pragma once
// `headrecon-engine eval`: perplexity decoded token by token through the
// reference-only KV cache, for the full cache and each plan variant.

#include <iostream>
#include <map>
#include <memory>

#include "engine_options.hpp"
#include "eval.hpp"
#include "headrecon/plan_io.hpp"
#include "output_file.hpp"

namespace headrecon_engine::commands {

struct EvalCommandOptions {
  ModelOptions model;
  TextOptions text;
  std::size_t seqs = 2, seq_len = 256, chunk = 1;
  std::vector<std::string> plans;
  std::string variants, sinks, cache_dtype = "f32", csv, json, md, ids_out;
  bool simulate = false, spread = false;
};

inline int run_eval_command(const EvalCommandOptions& o) {
  o.model.apply_threads();
  EvalOptions opt;
  opt.seq_len = o.seq_len;
  opt.chunk = o.chunk;
  opt.simulate = o.simulate;
  opt.dtypes.clear();
  for (const auto& t : split_list(o.cache_dtype)) opt.dtypes.push_back(headrecon::CacheType::parse(t));
  if (!o.variants.empty()) {
    opt.variants.clear();
    for (const auto& v : split_list(o.variants)) opt.variants.push_back(parse_apply(v));
  }
  if (!o.sinks.empty()) opt.sinks = parse_sinks(o.sinks);
  std::vector<std::pair<std::string, std::string>> plan_paths;  // name, path
  for (const auto& spec : o.plans) {
    const auto eq = spec.find('=');
    std::string name = eq == std::string::npos ? spec : spec.substr(0, eq);
    const std::string path = eq == std::string::npos ? spec : spec.substr(eq + 1);
    if (eq == std::string::npos) {
      name = name.substr(name.find_last_of('/') + 1);
      name = name.substr(0, name.find('.'));
    }
    plan_paths.push_back({name, path});
  }
  // Every output is checked before the (long) evaluation: none may name an input or another output.
  std::vector<std::string> inputs = o.text.files();
  inputs.push_back(o.model.model);
  for (const auto& p : plan_paths) inputs.push_back(p.second);
  for (const auto& [opt_name, path] : {std::pair<const char*, const std::string*>{"--csv", &o.csv},
                                       {"--json", &o.json}, {"--md", &o.md}, {"--ids-out", &o.ids_out}}) {
    if (path->empty()) continue;
    headrecon::cli::check_output_path(opt_name, *path, inputs);
    inputs.push_back(*path);
  }
  const GgufFile f(o.model.path());
  const Tokenizer tok(f);
  const LlamaModel m = o.model.load(f);
  std::vector<EvalPlan> plans;
  for (const auto& [name, path] : plan_paths) plans.push_back({name, headrecon::load_plan(path)});
  std::string source;
  const TokenStream s = o.spread ? o.text.spread(tok, o.seqs, opt.seq_len, source, "eval")
                                 : o.text.tokens(tok, o.seqs * opt.seq_len, source, "eval");
  if (!o.ids_out.empty())  // one sequence per line, for other engines (benchmarks/llamacpp_perplexity.py)
    headrecon::cli::write_stream_atomically(o.ids_out, [&](std::ostream& os) {
      for (std::size_t i = 0; i < s.tokens.size(); ++i)
        os << s.tokens[i] << ((i + 1) % opt.seq_len == 0 || i + 1 == s.tokens.size() ? "\n" : " ");
    });
  std::cout << "text: " << source << "\n"
            << "eval: " << o.seqs << " sequences of " << opt.seq_len << " tokens, decoded one token at a time"
            << (opt.chunk > 1 ? " (chunks of " + std::to_string(opt.chunk) + ")" : std::string())
            << " through the reference-only cache\n";
  const std::vector<EvalRow> rows = run_eval(m, s.tokens, plans, opt, std::cout);
  std::cout << "\n";
  print_eval_table(rows, std::cout, false);
  const std::map<std::string, std::string> meta{{"model", m.path()},
                                                {"text", source},
                                                {"seq_len", std::to_string(opt.seq_len)},
                                                {"sequences", std::to_string(o.seqs)},
                                                {"cache_dtypes", o.cache_dtype},
                                                {"chunk", std::to_string(opt.chunk)}};
  using headrecon::cli::write_atomically;
  if (!o.csv.empty()) write_atomically(o.csv, [&](const std::string& tmp) { write_eval_csv(rows, tmp); });
  if (!o.json.empty()) write_atomically(o.json, [&](const std::string& tmp) { write_eval_json(rows, meta, tmp); });
  if (!o.md.empty())
    headrecon::cli::write_stream_atomically(o.md, [&](std::ostream& os) { print_eval_table(rows, os, true); });
  return 0;
}

inline void add_eval_command(headrecon::cli::Tool& tool) {
  auto o = std::make_shared<EvalCommandOptions>();
  CLI::App* c = tool.add("eval",
                         "perplexity decoded token by token through a reference-only KV cache: full cache, then each "
                         "plan on K, V, K+V at each sink count; KV bytes, decode tokens/s",
                         [o] { return run_eval_command(*o); });
  o->model.add_runtime(c);
  o->text.add(c);
  c->add_option("--seqs", o->seqs, "sequences")->check(integer_in(1, 1LL << 20));
  c->add_option("--seq-len", o->seq_len, "tokens per sequence")->check(integer_in(2, 1LL << 20));
  c->add_option("--plan", o->plans, "[NAME=]PLAN (repeatable)")->allow_extra_args(false)->default_str("");
  c->add_option("--variants", o->variants, "k,v,kv: which kinds each plan rebuilds")->default_str("k,v,kv");
  c->add_option("--sinks", o->sinks, "sink token counts, comma-separated")->default_str("0,4");
  c->add_option("--cache-dtype", o->cache_dtype, "cache element types, comma-separated: f32,f16,bf16,q8_0,q4_0,q4_0r");
  c->add_option("--chunk", o->chunk, "tokens decoded per step")->check(integer_in(1, 1LL << 20));
  c->add_flag("--simulate", o->simulate, "also the perplexity with predicted K/V written into a full cache");
  c->add_flag("--spread", o->spread, "each sequence from the start of a different file of --text-dir");
  c->add_option("--csv", o->csv, "write the rows as CSV");
  c->add_option("--json", o->json, "write the rows as JSON");
  c->add_option("--md", o->md, "write the table as Markdown");
  c->add_option("--ids-out", o->ids_out, "write the token ids, one sequence per line");
}

}  // namespace headrecon_engine::commands
