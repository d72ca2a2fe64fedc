// Reconstruction kernel vs OpenBLAS sgemm on the identical math (see
// recon_problem.hpp). vs_blas = BLAS time / our time (> 1: we are faster).
#include <benchmark/benchmark.h>

#include "machine_limits.hpp"
#include "recon_problem.hpp"

using namespace headrecon;
using namespace headrecon::bench;

namespace {
void BM_Reconstruct(benchmark::State& state) {
  ReconProblem p(std::size_t(state.range(0)), std::size_t(state.range(1)));
  for (auto _ : state) {
    p.ours();
    benchmark::ClobberMemory();
  }
  const double t_blas = seconds_per_call([&] { p.blas(); });
  const double t_ours = seconds_per_call([&] { p.ours(); });
  state.counters["GFLOPs"] = p.flops() / t_ours / 1e9;
  state.counters["blas_GFLOPs"] = p.flops() / t_blas / 1e9;
  state.counters["vs_blas"] = t_blas / t_ours;
}
BENCHMARK(BM_Reconstruct)
    ->ArgsProduct({{1, 2, 4, 8}, {64, 128}})
    ->ArgsProduct({{256, 1024, 4096}, {64, 128}})
    ->Unit(benchmark::kMicrosecond);
}  // namespace

BENCHMARK_MAIN();
