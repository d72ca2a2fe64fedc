#pragma once
// `headrecon-engine bench`: prefill and decode throughput; with --contexts,
// decode tokens/s after each context for the full cache and plans.

#include <chrono>
#include <iostream>
#include <memory>

#include "engine_options.hpp"
#include "headrecon/plan_io.hpp"
#include "speed.hpp"

namespace headrecon_engine::commands {

struct BenchOptions {
  ModelOptions model;
  std::size_t seq_len = 512, decode = 64, reps = 3;
  std::string contexts, cache_dtype = "f32";
  std::vector<std::string> plans;  // NAME=PLAN
};

/// Decode tokens/s after each context: the full cache and each plan, in
/// every cache type, A/B interleaved (speed.hpp measure_decode).
inline int run_decode_bench(const BenchOptions& o, const LlamaModel& m) {
  std::vector<std::size_t> contexts;
  for (const auto& c : split_list(o.contexts)) {
    char* end = nullptr;
    const unsigned long v = std::strtoul(c.c_str(), &end, 10);
    if (*end || v == 0 || v > (1ul << 22)) fail("--contexts: '", c, "' is not a context length in [1, 4194304]");
    contexts.push_back(std::size_t(v));
  }
  std::vector<headrecon::CacheType> dtypes;
  for (const auto& t : split_list(o.cache_dtype)) dtypes.push_back(headrecon::CacheType::parse(t));
  std::vector<headrecon::Plan> plans;
  plans.reserve(o.plans.size());
  std::vector<SpeedConfig> configs{{"full", nullptr}};
  for (const auto& spec : o.plans) {
    const auto eq = spec.find('=');
    plans.push_back(headrecon::load_plan(eq == std::string::npos ? spec : spec.substr(eq + 1)));
    configs.push_back({eq == std::string::npos ? spec : spec.substr(0, eq), &plans.back()});
  }
  std::size_t cmax = 0;
  for (std::size_t c : contexts) cmax = std::max(cmax, c);
  const std::size_t V = m.config().n_vocab;
  std::vector<std::int32_t> prompt(cmax + o.decode);
  for (std::size_t i = 0; i < prompt.size(); ++i) prompt[i] = std::int32_t((i * 7919 + 17) % V);
  std::cout << "threads " << engine_pool().size() << ", kernels " << weight_kernel_targets() << ", attention "
            << attention_target() << ", decode " << o.decode
            << " tokens after each context, median of " << o.reps << " A/B-interleaved runs\n";
  print_decode_table(measure_decode(m, prompt, configs, dtypes, contexts, o.decode, o.reps, std::cerr), std::cout);
  return 0;
}

inline int run_bench(const BenchOptions& o) {
  o.model.apply_threads();
  const GgufFile f(o.model.path());
  const LlamaModel m = o.model.load(f);
  if (!o.contexts.empty()) return run_decode_bench(o, m);
  if (!o.plans.empty()) fail("--plan needs --contexts");
  const std::size_t seq = o.seq_len, dec = o.decode;
  const std::size_t V = m.config().n_vocab;
  std::vector<std::int32_t> ids(seq);
  for (std::size_t i = 0; i < seq; ++i) ids[i] = std::int32_t((i * 7919 + 17) % V);
  LlamaEngine eng(m);
  KvCache cache(m.attention_shape(), seq + dec);
  std::vector<float> logits;
  using clk = std::chrono::steady_clock;
  auto secs = [](clk::time_point a0, clk::time_point b0) { return std::chrono::duration<double>(b0 - a0).count(); };
  // Warm-up (BLAS thread start, page faults), then timed runs.
  eng.forward(ids.data(), std::min<std::size_t>(seq, 32), cache, LogitsMode::none, nullptr);
  cache.clear();
  auto t0 = clk::now();
  eng.forward(ids.data(), seq, cache, LogitsMode::none, nullptr);
  auto t1 = clk::now();
  const double pre_none = secs(t0, t1);
  cache.clear();
  t0 = clk::now();
  eng.forward(ids.data(), seq, cache, LogitsMode::all, &logits);
  t1 = clk::now();
  const double pre_all = secs(t0, t1);
  double dec_s = 0;
  if (dec) {
    t0 = clk::now();
    std::int32_t next = 1;
    for (std::size_t i = 0; i < dec; ++i) eng.forward(&next, 1, cache, LogitsMode::last, &logits);
    dec_s = secs(t0, clk::now());
  }
  std::cout << "threads " << engine_pool().size() << ", kernels " << weight_kernel_targets() << ", attention "
            << attention_target()
            << (o.model.int8_inputs ? ", 8-bit inputs" : ", f32 inputs") << ", weights " << m.weight_bytes()
            << " bytes\n"
            << "prefill " << seq << " tokens, no logits: " << double(seq) / pre_none << " tokens/s\n"
            << "prefill " << seq << " tokens, all logits: " << double(seq) / pre_all << " tokens/s\n";
  if (dec)
    std::cout << "decode " << dec << " tokens after " << seq << " (last logits): " << double(dec) / dec_s
              << " tokens/s\n";
  return 0;
}

inline void add_bench_command(headrecon::cli::Tool& tool) {
  auto o = std::make_shared<BenchOptions>();
  CLI::App* c = tool.add("bench", "prefill and decode throughput", [o] { return run_bench(*o); });
  o->model.add_runtime(c, /*with_random_init=*/false);
  c->add_option("--seq-len", o->seq_len, "prefill tokens")->check(integer_in(1, 1 << 20));
  c->add_option("--decode", o->decode, "decoded tokens")->check(integer_in(0, 1 << 20));
  c->add_option("--contexts", o->contexts,
                "comma-separated contexts (e.g. 1024,4096,8192): decode tokens/s after each, full cache and --plan "
                "plans, every --cache-dtype, A/B interleaved");
  c->add_option("--plan", o->plans, "NAME=PLAN (repeatable; with --contexts)")->allow_extra_args(false);
  c->add_option("--cache-dtype", o->cache_dtype, "cache types, comma-separated (with --contexts)");
  c->add_option("--reps", o->reps, "A/B repetitions (with --contexts)")->check(integer_in(1, 100));
}

}  // namespace headrecon_engine::commands
