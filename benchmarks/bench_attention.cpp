// Decode attention, one sequence and layer, 50% of KV heads rebuilt (K and V)
// for Llama-3-8B shapes (1 of 3 for SmolLM2): absorbed attention over the
// reference-only cache vs full-cache attention, vs attention over the
// reference heads alone, and vs reconstruct-then-attend, all timed in this run.
#include <benchmark/benchmark.h>

#include "attention_problem.hpp"
#include "machine_limits.hpp"

using namespace headrecon;
using namespace headrecon::bench;

namespace {
void BM_DecodeAttention(benchmark::State& state) {
  const ModelShape& shape = state.range(0) == 0 ? kLlama3_8B : kSmolLM2;
  const CacheType dt = CacheType::parse(state.range(2) == 0 ? "f32" : state.range(2) == 1 ? "bf16" : "q8_0");
  const std::size_t threads = std::size_t(state.range(3));
  ThreadPool pool(threads);
  const ParallelFor pf = pool.parallel_for();
  AttentionProblem p(shape, std::size_t(state.range(1)), dt, threads);
  for (auto _ : state) p.absorbed(pf);
  const double t_abs = seconds_per_call([&] { p.absorbed(pf); });
  const double t_full = seconds_per_call([&] { p.full(pf); });
  const double t_refs = seconds_per_call([&] { p.refs_only(pf); });
  const double t_rta = seconds_per_call([&] { p.reconstruct_then_attend(); }, 0.1);
  state.counters["full_over_absorbed"] = t_full / t_abs;
  state.counters["absorbed_over_refs_only"] = t_abs / t_refs;
  state.counters["rta_over_absorbed"] = t_rta / t_abs;
  state.counters["absorbed_GBps"] = p.ref_bytes() / t_abs / 1e9;
  state.counters["full_GBps"] = p.full_bytes() / t_full / 1e9;
  state.SetLabel(shape.name + " " + dt.name() + " " + std::to_string(threads) + " threads");
}
BENCHMARK(BM_DecodeAttention)
    ->ArgsProduct({{0}, {1024, 4096, 8192, 16384, 32768}, {0, 1, 2}, {1, 2}})
    ->ArgsProduct({{1}, {1024, 8192, 32768}, {0, 1, 2}, {1, 2}})
    ->Unit(benchmark::kMicrosecond);

void BM_MachineLimits(benchmark::State& state) {
  double fma = 0, bw = 0;
  for (auto _ : state) fma = fma_peak_gflops(), bw = triad_gbps();
  state.counters["fma_peak_GFLOPs"] = fma;
  state.counters["triad_GBps"] = bw;
}
BENCHMARK(BM_MachineLimits)->Iterations(1)->Unit(benchmark::kMillisecond);
}  // namespace

BENCHMARK_MAIN();
