// Calibration throughput: streaming statistics (GFLOP/s, as a fraction of the
// machine's ~95 GFLOP/s single-thread sgemm peak and against a bare BLAS syrk
// of the same batch measured in the same run), and the time to fit a
// Llama-3-8B-sized layer (8 KV heads, d = 128, 5 references, 100k tokens).
#include <benchmark/benchmark.h>

#include <chrono>
#include <random>
#include <vector>

#include "headrecon/blas_threads.hpp"
#include "headrecon/calibrate.hpp"
#include "headrecon/select.hpp"
#include "headrecon/synthetic.hpp"

using namespace headrecon;

namespace {
constexpr double kSgemmPeakGflops = 95.0;  // DESIGN.md section 6, one thread

std::vector<float> random_batch(std::size_t n, std::size_t p) {
  std::mt19937 rng(1);
  std::normal_distribution<float> g(0.f, 1.f);
  std::vector<float> x(n * p);
  for (auto& v : x) v = 3.f + g(rng);
  return x;
}

// Moments::add_batch on [n, p] batches with `threads` BLAS threads; the
// baseline is the syrk alone on the same (already centered) data, timed in
// the same run with the same threads. Large batches (what accumulate() feeds
// it: 2048 tokens of L·H·d = 5760 columns for SmolLM2 cross-layer) are where
// threads pay; selection and maps use one (blas_threads.hpp).
void BM_Accumulate(benchmark::State& state) {
  const std::size_t n = std::size_t(state.range(0)), p = std::size_t(state.range(1));
  const int threads = int(state.range(2));
  const ScopedBlasThreads blas(threads);
  const auto x = random_batch(n, p);
  Moments m(p);
  for (auto _ : state) {
    m.add_batch(x.data(), n, p);
    benchmark::ClobberMemory();
  }
  const double flops = m.batch_flops(n) * double(state.iterations());
  std::vector<float> g(p * p);
  const int reps = 3;
  const auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; ++r) detail::syrk_upper_rm(int(p), int(n), x.data(), int(p), g.data());
  const double t_syrk = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
  state.counters["GFLOPs"] = benchmark::Counter(flops / 1e9, benchmark::Counter::kIsRate);
  state.counters["syrk_GFLOPs"] = m.batch_flops(n) / t_syrk / 1e9;
  state.counters["tokens/s"] = benchmark::Counter(double(n) * double(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["peak_frac_per_thread"] =
      benchmark::Counter(flops / 1e9 / kSgemmPeakGflops / double(threads), benchmark::Counter::kIsRate);
  state.SetLabel("p=" + std::to_string(p) + " threads=" + std::to_string(threads) +
                 (blas_threads() ? "" : " (not OpenBLAS: threads ignored)"));
}
BENCHMARK(BM_Accumulate)
    ->ArgsProduct({{2048}, {256, 1024}, {1, 2}})
    ->ArgsProduct({{2048, 4096}, {2880, 5760}, {1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Whole calibration of one Llama-3-8B-sized layer: statistics over 100k
// tokens, greedy selection of 5 references for 4 of 8 heads, GCV maps.
void BM_FitLlamaLayer(benchmark::State& state) {
  SyntheticSpec spec;
  spec.n_layers = 1;
  spec.n_heads = 8;
  spec.head_dim = 128;
  spec.noise = 0.3;
  const SyntheticModel model(spec);
  const std::size_t tokens = std::size_t(state.range(0)), batch = 4096, d = 128, H = 8;
  std::vector<std::vector<float>> batches;
  for (std::size_t t0 = 0; t0 < tokens; t0 += batch) {
    batches.emplace_back(std::min(batch, tokens - t0) * H * d);
    model.generate(Kind::k, 0, t0, std::min(batch, tokens - t0), batches.back().data());
  }
  double t_stats = 0, t_select = 0, t_fit = 0, r2 = 0;
  for (auto _ : state) {
    using clock = std::chrono::steady_clock;
    auto t0 = clock::now();
    HeadMoments hm(1, 8, 128, RefScope::same_layer);
    std::size_t tok = 0;
    for (const auto& b : batches) {
      const std::size_t n = b.size() / (H * d);
      hm.add({erase(make_view<const float>(b.data(), b.size(), Extents3{n, H, d}, Layout::token_major))}, tok,
             HoldoutSplit{});
      tok += n;
    }
    auto t1 = clock::now();
    SelectionOptions opt;
    opt.max_refs = 5;
    const Selection sel = GreedySelection{}.select(hm, opt);
    auto t2 = clock::now();
    std::vector<TargetReport> rep;
    const KindPlan kp = build_kind_plan(hm, sel, Kind::k, FitOptions{}, &rep);
    auto t3 = clock::now();
    t_stats += std::chrono::duration<double>(t1 - t0).count();
    t_select += std::chrono::duration<double>(t2 - t1).count();
    t_fit += std::chrono::duration<double>(t3 - t2).count();
    r2 = 0;
    for (const auto& r : rep) r2 += r.r2_heldout / double(rep.size());
    benchmark::DoNotOptimize(kp);
  }
  const double it = double(state.iterations());
  const double stats_flops = double(tokens) * 1024.0 * 1025.0;
  state.counters["stats_s"] = t_stats / it;
  state.counters["select_s"] = t_select / it;
  state.counters["fit_s"] = t_fit / it;
  state.counters["stats_GFLOPs"] = stats_flops / (t_stats / it) / 1e9;
  state.counters["stats_peak_frac"] = stats_flops / (t_stats / it) / 1e9 / kSgemmPeakGflops;
  state.counters["mean_r2"] = r2;
}
BENCHMARK(BM_FitLlamaLayer)->Arg(100000)->Iterations(1)->Unit(benchmark::kSecond);
}  // namespace

BENCHMARK_MAIN();
