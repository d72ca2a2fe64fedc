// The engine's weight kernels (examples/engine/quant_matvec.hpp, matmul.hpp)
// on random matrices of every kernel type: the quantized matrix-vector
// product against dequantize-then-dot in double (gguf.hpp's scalar
// dequantizer, an independent implementation of the block layouts) and
// against dequantize-then-sgemv; the SIMD dequantizer against the scalar one;
// MatMul on 1..8 threads, both paths (kernels, panels + sgemm), odd row counts.
// No model needed.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "headrecon/dtype.hpp"
#include "headrecon/thread_pool.hpp"
#include "matmul.hpp"
#include "quant_matrix.hpp"
#include "quant_matvec.hpp"

namespace he = headrecon_engine;
using he::GgmlType;

namespace {

const GgmlType all_types[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16, GgmlType::Q4_0,
                              GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0};

void put_f16(std::vector<std::uint8_t>& b, std::size_t at, float v) {
  const std::uint16_t h = headrecon::to_f16(v).bits;
  std::memcpy(b.data() + at, &h, 2);
}

/// A random rows × cols matrix of `type`: block scales in ±[0.01, 0.1],
/// mins in ±0.5, every quantized bit random.
he::QuantMatrix random_matrix(GgmlType type, std::size_t rows, std::size_t cols, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.f, 1.f), mag(0.01f, 0.1f);
  std::uniform_int_distribution<int> byte(0, 255);
  if (type == GgmlType::F32) {
    std::vector<float> v(rows * cols);
    for (float& x : v) x = u(rng);
    return he::QuantMatrix::from_f32(rows, cols, std::move(v));
  }
  const he::GgmlTypeInfo info = he::ggml_type_info(std::uint32_t(type));
  const std::size_t row_bytes = cols / info.block * info.bytes;
  std::vector<std::uint8_t> b(rows * row_bytes);
  for (auto& x : b) x = std::uint8_t(byte(rng));
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t k = 0; k < cols / info.block; ++k) {
      const std::size_t at = r * row_bytes + k * info.bytes;
      switch (type) {
        case GgmlType::F16: put_f16(b, at, u(rng)); break;
        case GgmlType::BF16: {
          const std::uint16_t h = headrecon::to_bf16(u(rng)).bits;
          std::memcpy(b.data() + at, &h, 2);
          break;
        }
        case GgmlType::Q4_1: case GgmlType::Q5_1:
          put_f16(b, at, (u(rng) < 0 ? -1.f : 1.f) * mag(rng));
          put_f16(b, at + 2, 0.5f * u(rng));
          break;
        default:  // Q4_0, Q5_0, Q8_0: the scale only
          put_f16(b, at, (u(rng) < 0 ? -1.f : 1.f) * mag(rng));
          break;
      }
    }
  return he::QuantMatrix::from_bytes(type, rows, cols, std::move(b));
}

std::vector<float> random_vec(std::size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

struct Reference {
  std::vector<double> y;    // n × rows, in double from the scalar dequantizer
  std::vector<double> tol;  // per entry: a bound on f32 rounding of the sum
};

/// Dequantize-then-dot in double; tolerance (cols/4 + 16)·eps_f32·Σ|w·x|
/// (the kernels sum each lane over cols/lanes terms, then reduce).
Reference reference(const he::QuantMatrix& w, const std::vector<float>& x, std::size_t n) {
  const std::vector<float> wf = w.to_f32();
  const std::size_t R = w.rows(), C = w.cols();
  Reference ref;
  ref.y.resize(n * R);
  ref.tol.resize(n * R);
  const double k = double(C) / 4 + 16;
  for (std::size_t t = 0; t < n; ++t)
    for (std::size_t r = 0; r < R; ++r) {
      double s = 0, a = 0;
      for (std::size_t c = 0; c < C; ++c) {
        const double p = double(wf[r * C + c]) * x[t * C + c];
        s += p;
        a += std::fabs(p);
      }
      ref.y[t * R + r] = s;
      ref.tol[t * R + r] = k * 6e-8 * a + 1e-30;
    }
  return ref;
}

/// Checks got (n × rows, leading dimension ld) against ref, printing the worst entry.
void check_close(const std::vector<float>& got, std::size_t ld, const Reference& ref, std::size_t n, std::size_t rows,
                 const std::vector<float>* base = nullptr) {
  double worst = -1;
  std::size_t wi = 0;
  for (std::size_t t = 0; t < n; ++t)
    for (std::size_t r = 0; r < rows; ++r) {
      const double want = ref.y[t * rows + r] + (base ? double((*base)[t * ld + r]) : 0.0);
      const double err = std::fabs(double(got[t * ld + r]) - want) / ref.tol[t * rows + r];
      if (err > worst) worst = err, wi = t * rows + r;
    }
  INFO("worst entry (input " << wi / rows << ", row " << wi % rows << "): got " << got[(wi / rows) * ld + wi % rows]
                             << ", want " << ref.y[wi] << ", tolerance " << ref.tol[wi] << " (error/tolerance "
                             << worst << ")");
  CHECK(worst <= 1.0);
}

/// False (with a warning) when this build's kernels need AVX-512 and the CPU lacks it.
bool cpu_runs_kernels() {
#if defined(__AVX512F__)
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
      !__builtin_cpu_supports("avx512vl")) {
    WARN("not run: this build's kernels are AVX-512 and the CPU lacks it");
    return false;
  }
#endif
  return true;
}

}  // namespace

TEST_CASE("quant_matvec: every type equals dequantize-then-dot within f32 rounding") {
  if (!cpu_runs_kernels()) return;
  INFO("kernels: " << he::quant_kernel_target());
  std::mt19937 rng(11);
  for (GgmlType type : all_types)
    for (std::size_t cols : {32u, 96u, 576u})
      for (std::size_t rows : {1u, 3u, 5u, 7u, 67u})
        for (std::size_t n : {1u, 2u, 3u, 4u, 5u, 9u}) {
          INFO(he::ggml_type_name(std::uint32_t(type)) << " " << rows << " x " << cols << ", " << n << " inputs");
          const he::QuantMatrix w = random_matrix(type, rows, cols, rng);
          const std::vector<float> x = random_vec(n * cols, rng);
          const Reference ref = reference(w, x, n);
          // Output with a leading dimension larger than the row count.
          const std::size_t ld = rows + 3;
          std::vector<float> y(n * ld, 7.f);
          he::QuantMatVecArgs a;
          a.type = std::uint32_t(type);
          a.w = w.row(0);
          a.row_bytes = w.row_bytes();
          a.cols = cols;
          a.rows = rows;
          a.x = x.data();
          a.ldx = cols;
          a.n = n;
          a.y = y.data();
          a.ldy = ld;
          he::quant_matvec(a);
          check_close(y, ld, ref, n, rows);
          for (std::size_t t = 0; t < n; ++t) CHECK(y[t * ld + rows] == 7.f);  // the gap is untouched
          // Accumulate into the result.
          const std::vector<float> base = y;
          a.accumulate = true;
          he::quant_matvec(a);
          check_close(y, ld, ref, n, rows, &base);
        }
}

TEST_CASE("quant_matvec: 8-bit activations equal the dot with the quantized inputs") {
  // x quantized per 32-block (quantize_q8_inputs) and the integer kernels
  // (AVX2/AVX3; other targets fall back to f32 inputs): the result is the dot
  // with the dequantized inputs xd·xq up to f32 rounding, and differs from
  // the exact f32 product by at most the quantization error Σ|w|·xd/2.
  if (!cpu_runs_kernels()) return;
  std::mt19937 rng(17);
  for (GgmlType type : {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0})
    for (std::size_t cols : {32u, 576u})
      for (std::size_t rows : {1u, 5u, 67u})
        for (std::size_t n : {1u, 2u, 3u, 4u, 6u}) {
          INFO(he::ggml_type_name(std::uint32_t(type)) << " " << rows << " x " << cols << ", " << n << " inputs");
          const he::QuantMatrix w = random_matrix(type, rows, cols, rng);
          std::vector<float> x = random_vec(n * cols, rng);
          x[0] = 0.f;  // an all-zero block has scale 0
          if (cols == 32 && n == 1) std::fill(x.begin(), x.end(), 0.f);
          const std::size_t nb = cols / 32;
          std::vector<std::int8_t> xq(n * cols);
          std::vector<float> xd(n * nb), xs(n * nb), xdq(n * cols);
          he::quantize_q8_inputs(x.data(), n, cols, cols, xq.data(), xd.data(), xs.data());
          for (std::size_t i = 0; i < n * cols; ++i) {
            CHECK(std::abs(int(xq[i])) <= 127);
            xdq[i] = xd[i / 32] * float(xq[i]);
          }
          const Reference exact = reference(w, x, n);
          Reference ref = reference(w, xdq, n);
          std::vector<float> y(n * rows);
          he::QuantMatVecArgs a;
          a.type = std::uint32_t(type);
          a.w = w.row(0);
          a.row_bytes = w.row_bytes();
          a.cols = cols;
          a.rows = rows;
          a.x = x.data();
          a.ldx = cols;
          a.n = n;
          a.y = y.data();
          a.ldy = rows;
          a.xq = xq.data();
          a.xd = xd.data();
          a.xs = xs.data();
          a.ldxq = cols;
          a.ldxb = nb;
          he::quant_matvec(a);
          if (std::string(he::quant_kernel_target()) == "AVX2" || std::string(he::quant_kernel_target()) == "AVX3") {
            // The min term m·xd·Σq is summed in f32 per block: one more rounding per block.
            check_close(y, rows, ref, n, rows);
          } else {
            check_close(y, rows, exact, n, rows);
          }
          const std::vector<float> wf = w.to_f32();
          double worst = 0;
          for (std::size_t t = 0; t < n; ++t)
            for (std::size_t r = 0; r < rows; ++r) {
              double bound = exact.tol[t * rows + r];
              for (std::size_t c = 0; c < cols; ++c) bound += std::fabs(wf[r * cols + c]) * xd[t * nb + c / 32] * 0.5;
              worst = std::max(worst, std::fabs(y[t * rows + r] - exact.y[t * rows + r]) / bound);
            }
          INFO("worst |int8 - exact| / quantization bound: " << worst);
          CHECK(worst <= 1.0);
        }
}

TEST_CASE("quant_matvec: F32, F16 and BF16 rows of any length (vector tails)") {
  if (!cpu_runs_kernels()) return;
  std::mt19937 rng(12);
  for (GgmlType type : {GgmlType::F32, GgmlType::F16, GgmlType::BF16})
    for (std::size_t cols : {1u, 7u, 15u, 33u, 100u})
      for (std::size_t n : {1u, 2u, 4u}) {
        INFO(he::ggml_type_name(std::uint32_t(type)) << " 9 x " << cols << ", " << n << " inputs");
        const he::QuantMatrix w = random_matrix(type, 9, cols, rng);
        const std::vector<float> x = random_vec(n * cols, rng);
        const Reference ref = reference(w, x, n);
        std::vector<float> y(n * 9);
        he::QuantMatVecArgs a;
        a.type = std::uint32_t(type);
        a.w = w.row(0);
        a.row_bytes = w.row_bytes();
        a.cols = cols;
        a.rows = 9;
        a.x = x.data();
        a.ldx = cols;
        a.n = n;
        a.y = y.data();
        a.ldy = 9;
        he::quant_matvec(a);
        check_close(y, 9, ref, n, 9);
      }
}

TEST_CASE("quant_matvec: equals dequantize-then-sgemv (OpenBLAS) on the model's shapes") {
  if (!cpu_runs_kernels()) return;
  std::mt19937 rng(13);
  for (GgmlType type : {GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_0})
    for (auto [rows, cols] : {std::pair<std::size_t, std::size_t>{576, 576}, {1536, 576}, {576, 1536}, {193, 576}}) {
      INFO(he::ggml_type_name(std::uint32_t(type)) << " " << rows << " x " << cols);
      const he::QuantMatrix w = random_matrix(type, rows, cols, rng);
      const std::vector<float> x = random_vec(cols, rng), wf = w.to_f32();
      std::vector<float> want(rows), got(rows);
      he::sgemm_rm(false, true, 1, int(rows), int(cols), 1.f, x.data(), int(cols), wf.data(), int(cols), 0.f,
                   want.data(), int(rows));
      he::QuantMatVecArgs a;
      a.type = std::uint32_t(type);
      a.w = w.row(0);
      a.row_bytes = w.row_bytes();
      a.cols = cols;
      a.rows = rows;
      a.x = x.data();
      a.ldx = cols;
      a.n = 1;
      a.y = got.data();
      a.ldy = rows;
      he::quant_matvec(a);
      const Reference ref = reference(w, x, 1);
      double worst = 0;
      for (std::size_t r = 0; r < rows; ++r)
        worst = std::max(worst, std::fabs(double(got[r]) - double(want[r])) / (2 * ref.tol[r]));
      INFO("max |kernel - sgemv| / (2 x rounding bound) = " << worst);
      CHECK(worst <= 1.0);
    }
}

TEST_CASE("quant_dequantize: the SIMD dequantizer equals gguf.hpp's scalar one") {
  if (!cpu_runs_kernels()) return;
  std::mt19937 rng(14);
  for (GgmlType type : all_types) {
    INFO(he::ggml_type_name(std::uint32_t(type)));
    const bool floats = type == GgmlType::F32 || type == GgmlType::F16 || type == GgmlType::BF16;
    const std::size_t rows = 5, cols = floats ? 37 : 96;
    const he::QuantMatrix w = random_matrix(type, rows, cols, rng);
    const std::vector<float> want = w.to_f32();
    std::vector<float> got(rows * (cols + 2), -1.f);
    he::DequantArgs a;
    a.type = std::uint32_t(type);
    a.w = w.row(0);
    a.row_bytes = w.row_bytes();
    a.cols = cols;
    a.rows = rows;
    a.out = got.data();
    a.ldo = cols + 2;
    he::quant_dequantize(a);
    double worst = 0;
    for (std::size_t r = 0; r < rows; ++r) {
      for (std::size_t c = 0; c < cols; ++c) {
        // d·q + m fused or not: at most one rounding apart.
        const double wv = want[r * cols + c], gv = got[r * (cols + 2) + c];
        worst = std::max(worst, std::fabs(wv - gv) / (1.2e-7 * std::fabs(wv) + 1e-9));
      }
      CHECK(got[r * (cols + 2) + cols] == -1.f);
    }
    INFO("worst |difference| in units of the rounding of the value: " << worst);
    CHECK(worst <= 1.0);
  }
}

TEST_CASE("MatMul: 1..8 threads, both paths, several outputs, SwiGLU, odd row counts") {
  if (!cpu_runs_kernels()) return;
  std::mt19937 rng(15);
  const std::size_t C = 96;
  // Q4_1 (67 rows), Q8_0 (13 rows, accumulated), F32 (5 rows): one call.
  const he::QuantMatrix wa = random_matrix(GgmlType::Q4_1, 67, C, rng), wb = random_matrix(GgmlType::Q8_0, 13, C, rng),
                        wc = random_matrix(GgmlType::F32, 5, C, rng);
  const he::QuantMatrix wg = random_matrix(GgmlType::Q4_1, 75, C, rng), wu = random_matrix(GgmlType::Q5_0, 75, C, rng);
  for (std::size_t n : {1u, 3u, 8u, 21u}) {
    const std::vector<float> x = random_vec(n * C, rng), yb0 = random_vec(n * 13, rng);
    const Reference ra = reference(wa, x, n), rb = reference(wb, x, n), rc = reference(wc, x, n);
    const Reference rg = reference(wg, x, n), ru = reference(wu, x, n);
    for (std::size_t threads : {1u, 2u, 3u, 8u})
      for (std::size_t max_matvec : {std::size_t(0), std::size_t(64)}) {
        INFO(n << " inputs, " << threads << " threads, " << (max_matvec ? "quantized kernels" : "panels + sgemm"));
        headrecon::ThreadPool pool(threads);
        he::MatMul mm(pool.parallel_for());
        mm.set_max_matvec_inputs(max_matvec);
        std::vector<float> ya(n * 67), yb = yb0, yc(n * 5);
        mm.run(x.data(), n, C, {{&wa, ya.data(), 67}, {&wb, yb.data(), 13, true}, {&wc, yc.data(), 5}});
        check_close(ya, 67, ra, n, 67);
        check_close(yb, 13, rb, n, 13, &yb0);
        check_close(yc, 5, rc, n, 5);
        std::vector<float> h(n * 75), g(n * 75), u(n * 75);
        mm.swiglu(x.data(), n, C, wg, wu, h.data(), g.data(), u.data());
        double worst = 0;
        for (std::size_t i = 0; i < n * 75; ++i) {
          const double gv = rg.y[i], uv = ru.y[i];
          const double want = gv / (1 + std::exp(-gv)) * uv;
          // SiLU'(g) <= 1.1: the product's error from those of g and u, plus float exp.
          const double tol =
              1.1 * rg.tol[i] * std::fabs(uv) + ru.tol[i] * std::fabs(gv) + 1e-6 * std::fabs(want) + 1e-12;
          worst = std::max(worst, std::fabs(h[i] - want) / tol);
        }
        INFO("SwiGLU: worst error / tolerance " << worst);
        CHECK(worst <= 1.0);
      }
  }
}

TEST_CASE("MatMul's sgemm path runs the BLAS on one thread per worker and restores its thread count") {
  if (!openblas_get_num_threads || !openblas_set_num_threads) return;  // not OpenBLAS: left as it is
  std::mt19937 rng(16);
  const std::size_t C = 64, n = 40;
  const he::QuantMatrix w = random_matrix(GgmlType::Q8_0, 50, C, rng);
  const std::vector<float> x = random_vec(n * C, rng);
  const Reference r = reference(w, x, n);
  const int before = openblas_get_num_threads();
  openblas_set_num_threads(2);
  headrecon::ThreadPool pool(2);
  he::MatMul mm(pool.parallel_for());
  mm.set_max_matvec_inputs(0);
  std::vector<float> y(n * 50);
  mm.run(x.data(), n, C, {{&w, y.data(), 50}});
  check_close(y, 50, r, n, 50);
  CHECK(openblas_get_num_threads() == 2);
  openblas_set_num_threads(before);
}

TEST_CASE("MatMul and QuantMatrix reject mismatched shapes with messages that name them") {
  if (!cpu_runs_kernels()) return;
  std::mt19937 rng(16);
  const he::QuantMatrix w = random_matrix(GgmlType::Q4_1, 8, 64, rng), w2 = random_matrix(GgmlType::Q4_1, 8, 32, rng);
  std::vector<float> x(64), y(8);
  headrecon::ThreadPool pool(2);
  he::MatMul mm(pool.parallel_for());
  CHECK_THROWS_WITH(mm.run(x.data(), 1, 64, {{&w, y.data(), 8}, {&w2, y.data(), 8}}),
                    Catch::Contains("weights of 32 and 64 columns"));
  CHECK_THROWS_WITH(he::QuantMatrix::from_f32(2, 3, std::vector<float>(5)), Catch::Contains("5 values for a 2 x 3"));
  CHECK_THROWS_WITH(he::QuantMatrix::from_bytes(GgmlType::Q4_1, 2, 64, std::vector<std::uint8_t>(79)),
                    Catch::Contains("79 bytes for 2 rows of 40"));
}
