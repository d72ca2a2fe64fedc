// The example engine's weight products (examples/engine/matmul.hpp) on
// SmolLM2-135M's shapes: one input (decode) through the quantized kernels,
// f32 or 8-bit activations, 1..N threads; and against OpenBLAS sgemv on the
// dequantized f32 matrix (what the engine did before). Counters: weight_GBps
// = storage bytes read per second; vs_sgemv = sgemv time / ours.
#include <benchmark/benchmark.h>

#include <cstring>
#include <random>
#include <vector>

#include "headrecon/dtype.hpp"
#include "headrecon/thread_pool.hpp"
#include "machine_limits.hpp"
#include "matmul.hpp"

namespace he = headrecon_engine;

namespace {

he::QuantMatrix random_weights(he::GgmlType type, std::size_t rows, std::size_t cols) {
  std::mt19937 rng(1);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> u(0.01f, 0.1f);
  const he::GgmlTypeInfo info = he::ggml_type_info(std::uint32_t(type));
  const std::size_t rb = cols / info.block * info.bytes;
  std::vector<std::uint8_t> b(rows * rb);
  for (auto& x : b) x = std::uint8_t(byte(rng));
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t k = 0; k < cols / info.block; ++k) {
      const std::uint16_t d = headrecon::to_f16(u(rng)).bits, m = headrecon::to_f16(-u(rng)).bits;
      std::memcpy(b.data() + r * rb + k * info.bytes, &d, 2);
      if (type == he::GgmlType::Q4_1) std::memcpy(b.data() + r * rb + k * info.bytes + 2, &m, 2);
    }
  return he::QuantMatrix::from_bytes(type, rows, cols, std::move(b));
}

// Arguments: ggml type, rows, cols, threads, 8-bit activations (0/1).
void BM_EngineMatVec(benchmark::State& state) {
  const auto type = he::GgmlType(state.range(0));
  const std::size_t rows = std::size_t(state.range(1)), cols = std::size_t(state.range(2));
  const std::size_t threads = std::size_t(state.range(3));
  const he::QuantMatrix w = random_weights(type, rows, cols);
  std::vector<float> x(cols, 0.5f), y(rows);
  headrecon::ThreadPool pool(threads);
  he::MatMul mm(pool.parallel_for());
  mm.set_int8_inputs(state.range(4) != 0);
  for (auto _ : state) {
    mm.run(x.data(), 1, cols, {{&w, y.data(), rows}});
    benchmark::ClobberMemory();
  }
  const double t = headrecon::bench::seconds_per_call([&] { mm.run(x.data(), 1, cols, {{&w, y.data(), rows}}); });
  const std::vector<float> wf = w.to_f32();
  he::set_blas_threads(int(threads));
  const double t_blas = headrecon::bench::seconds_per_call([&] {
    he::sgemm_rm(false, true, 1, int(rows), int(cols), 1.f, x.data(), int(cols), wf.data(), int(cols), 0.f, y.data(),
                 int(rows));
  });
  state.counters["weight_GBps"] = double(w.storage_bytes()) / t / 1e9;
  state.counters["vs_sgemv"] = t_blas / t;
  state.SetLabel(std::string(he::ggml_type_name(std::uint32_t(type))) + (state.range(4) ? " int8-x" : " f32-x") +
                 " " + he::quant_kernel_target());
}
BENCHMARK(BM_EngineMatVec)
    ->ArgsProduct({{int(he::GgmlType::Q4_1)}, {1536}, {576}, {1, 2}, {0, 1}})
    ->ArgsProduct({{int(he::GgmlType::Q4_1)}, {576}, {1536}, {1, 2}, {0, 1}})
    ->ArgsProduct({{int(he::GgmlType::Q8_0)}, {49152}, {576}, {1, 2}, {0, 1}})
    ->ArgsProduct({{int(he::GgmlType::Q4_0)}, {1536}, {576}, {1}, {0, 1}})
    ->Unit(benchmark::kMicrosecond);
// n inputs at once on one thread: the quantized kernels (path 1) against
// dequantized panels + sgemm (path 0); MatMul switches at max_matvec_inputs.
// Counter: us_per_input.
void BM_EngineMatMulInputs(benchmark::State& state) {
  const std::size_t n = std::size_t(state.range(0)), rows = 1536, cols = 576;
  const he::QuantMatrix w = random_weights(he::GgmlType::Q4_1, rows, cols);
  std::vector<float> x(n * cols, 0.5f), y(n * rows);
  he::set_blas_threads(1);
  he::MatMul mm;
  mm.set_max_matvec_inputs(state.range(1) ? 1u << 20 : 0);
  for (auto _ : state) {
    mm.run(x.data(), n, cols, {{&w, y.data(), rows}});
    benchmark::ClobberMemory();
  }
  const double t = headrecon::bench::seconds_per_call([&] { mm.run(x.data(), n, cols, {{&w, y.data(), rows}}); });
  state.counters["us_per_input"] = t / double(n) * 1e6;
  state.SetLabel(state.range(1) ? "quantized kernels" : "panels + sgemm");
}
BENCHMARK(BM_EngineMatMulInputs)
    ->ArgsProduct({{1, 2, 4, 8, 16, 32, 64, 128, 256, 512}, {0, 1}})
    ->Unit(benchmark::kMicrosecond);
}  // namespace

BENCHMARK_MAIN();
