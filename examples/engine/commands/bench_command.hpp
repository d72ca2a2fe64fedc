#pragma once
// `headrecon-engine bench`: prefill and decode throughput.

#include <chrono>
#include <iostream>
#include <memory>

#include "engine_options.hpp"

namespace headrecon_engine::commands {

struct BenchOptions {
  ModelOptions model;
  std::size_t seq_len = 512, decode = 64;
};

inline int run_bench(const BenchOptions& o) {
  o.model.apply_threads();
  const GgufFile f(o.model.path());
  const LlamaModel m = o.model.load(f);
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
  std::cout << "threads " << engine_pool().size() << ", kernels " << quant_kernel_target()
            << (o.model.int8_inputs ? " (8-bit inputs)" : " (f32 inputs)") << ", weights " << m.weight_bytes()
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
}

}  // namespace headrecon_engine::commands
