#pragma once
// The engine's weight products on its threads. A few inputs (decode, short
// chunks) run the quantized kernels of quant_matvec.hpp directly on the GGUF
// blocks, rows split across the workers of a headrecon::ParallelFor; more
// inputs (prefill) split the rows into chunks on the workers, each
// dequantized to f32 and multiplied by its own single-threaded BLAS sgemm.
// Also here: the BLAS helpers the forward pass uses and the process-wide
// engine thread pool.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <thread>
#include <vector>

#include "headrecon/detail/lapack.hpp"
#include "headrecon/parallel.hpp"
#include "headrecon/thread_pool.hpp"
#include "quant_matrix.hpp"
#include "quant_matvec.hpp"

extern "C" {
void openblas_set_num_threads(int) __attribute__((weak));
int openblas_get_num_threads(void) __attribute__((weak));
void sgemv_(const char* trans, const int* m, const int* n, const float* alpha, const float* a,
            const int* lda, const float* x, const int* incx, const float* beta, float* y, const int* incy);
}

namespace headrecon_engine {

/// Sets the BLAS thread count when the BLAS is OpenBLAS; returns false otherwise.
inline bool set_blas_threads(int n) {
  if (!openblas_set_num_threads) return false;
  openblas_set_num_threads(n);
  return true;
}

/// BLAS on one thread for the scope when `on` (OpenBLAS; other BLAS
/// libraries are left as they are), then the count it had: each of the
/// engine's workers calls the BLAS on its own rows.
class OneBlasThread {
 public:
  explicit OneBlasThread(bool on) {
    if (!on || !openblas_get_num_threads || !openblas_set_num_threads) return;
    prev_ = openblas_get_num_threads();
    if (prev_ > 1) openblas_set_num_threads(1);
  }
  ~OneBlasThread() {
    if (prev_ > 1) openblas_set_num_threads(prev_);
  }
  OneBlasThread(const OneBlasThread&) = delete;
  OneBlasThread& operator=(const OneBlasThread&) = delete;

 private:
  int prev_ = 0;
};

/// Row-major C(m×n) = alpha·op(A)·op(B) + beta·C in single precision. One
/// row (decode) goes to sgemv, which reads B once instead of packing it.
inline void sgemm_rm(bool ta, bool tb, int m, int n, int k, float alpha, const float* a, int lda,
                     const float* b, int ldb, float beta, float* c, int ldc) {
  if (m == 1 && !ta) {
    // c = op(B)ᵀ-side product: row-major B (n×k if tb, k×n if not) is column-major Bᵀ.
    const int one = 1;
    if (tb)
      sgemv_("T", &k, &n, &alpha, b, &ldb, a, &one, &beta, c, &one);
    else
      sgemv_("N", &n, &k, &alpha, b, &ldb, a, &one, &beta, c, &one);
    return;
  }
  const char tas = ta ? 'T' : 'N', tbs = tb ? 'T' : 'N';
  sgemm_(&tbs, &tas, &n, &m, &k, &alpha, b, &ldb, a, &lda, &beta, c, &ldc);
}

namespace detail {
struct EnginePoolState {
  std::size_t threads = 0;  // 0: one per hardware thread
  std::unique_ptr<headrecon::ThreadPool> pool;
};
inline EnginePoolState& engine_pool_state() {
  static EnginePoolState s;
  return s;
}
}  // namespace detail

/// Sets the size of the engine's thread pool (0: one per hardware thread).
/// Call before the first engine runs: the pool, once started, keeps its size.
inline void set_engine_threads(std::size_t n) {
  detail::EnginePoolState& s = detail::engine_pool_state();
  const std::size_t want = n ? n : std::max(1u, std::thread::hardware_concurrency());
  if (s.pool && s.pool->size() != want)
    fail("set_engine_threads(", n, "): the engine pool already runs with ", s.pool->size(), " threads");
  s.threads = n;
}

/// The process-wide pool every LlamaEngine uses unless given another
/// ParallelFor; started at the first call.
inline headrecon::ThreadPool& engine_pool() {
  detail::EnginePoolState& s = detail::engine_pool_state();
  if (!s.pool) s.pool = std::make_unique<headrecon::ThreadPool>(s.threads);
  return *s.pool;
}
inline headrecon::ParallelFor engine_parallel_for() { return engine_pool().parallel_for(); }

namespace detail {
inline bool& default_int8_inputs() {
  static bool on = false;
  return on;
}
}  // namespace detail

/// Whether MatMuls made from now on quantize their kernel inputs to 8 bits
/// (MatMul::set_int8_inputs); off unless set (--int8-inputs).
inline void set_default_int8_inputs(bool on) { detail::default_int8_inputs() = on; }

/// One product of MatMul::run: y (n × w.rows(), leading dimension ldy) =
/// x·Wᵀ, or += when accumulate.
struct MatOut {
  const QuantMatrix* w = nullptr;
  float* y = nullptr;
  std::size_t ldy = 0;
  bool accumulate = false;
};

/// Weight products of one engine; owns scratch (not thread-safe).
class MatMul {
 public:
  /// Up to this many inputs per call run the quantized kernels; more
  /// dequantize row chunks and call sgemm (measured crossover: see README).
  static constexpr std::size_t default_max_matvec_inputs = 8;

  explicit MatMul(headrecon::ParallelFor pf = {}) : pf_(std::move(pf)), int8_(detail::default_int8_inputs()) {}

  const headrecon::ParallelFor& parallel_for() const { return pf_; }
  std::size_t max_matvec_inputs() const { return max_matvec_; }
  /// Tests force one path or the other with 0 (always sgemm) or a large value.
  void set_max_matvec_inputs(std::size_t n) { max_matvec_ = n; }
  /// Quantizes the inputs of the block kernels to 8 bits per 32-block first
  /// (llama.cpp's Q8_1 scheme, quantize_q8_inputs) and uses integer dot
  /// products: about 2x faster on AVX2, equal on AVX3, and NOT exact (the
  /// perplexity moves by ~0.4% on SmolLM2). Only the quantized kernels
  /// (decode, short chunks) use it; prefill stays f32.
  void set_int8_inputs(bool on) { int8_ = on; }
  bool int8_inputs() const { return int8_; }

  /// For every output: y (+)= x·Wᵀ, with x n × cols (leading dimension ldx)
  /// and cols the column count of every W.
  void run(const float* x, std::size_t n, std::size_t ldx, std::initializer_list<MatOut> outs) {
    if (n == 0 || outs.size() == 0) return;
    const std::size_t cols = outs.begin()->w->cols();
    for (const MatOut& o : outs)
      if (o.w->cols() != cols) fail("MatMul::run: weights of ", o.w->cols(), " and ", cols, " columns in one call");
    if (n <= max_matvec_) {
      matvec(x, n, ldx, outs.begin(), outs.size(), nullptr);
      return;
    }
    for (const MatOut& o : outs) gemm(x, n, ldx, o);
  }

  /// h = SiLU(x·Wgᵀ) ⊙ (x·Wuᵀ), all n × rows; g and u are n × rows scratch.
  void swiglu(const float* x, std::size_t n, std::size_t ldx, const QuantMatrix& wg, const QuantMatrix& wu, float* h,
              float* g, float* u) {
    if (wg.rows() != wu.rows() || wg.cols() != wu.cols()) fail("MatMul::swiglu: gate and up shapes differ");
    const std::size_t F = wg.rows();
    const MatOut outs[2] = {{&wg, g, F, false}, {&wu, u, F, false}};
    if (n <= max_matvec_) {
      const Epilogue silu{g, u, h, F};
      matvec(x, n, ldx, outs, 2, &silu);
      return;
    }
    gemm(x, n, ldx, outs[0]);
    gemm(x, n, ldx, outs[1]);
    pf_(n, [&](std::size_t t, std::size_t) { silu_mul(g + t * F, u + t * F, h + t * F, F); });
  }

 private:
  // SwiGLU after the kernels: h = SiLU(g)·u on the rows each task computed
  // (g, u, h: n × ld).
  struct Epilogue {
    const float *g, *u;
    float* h;
    std::size_t ld;
  };
  static void silu_mul(const float* g, const float* u, float* h, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
      const float gv = g[i];
      h[i] = gv / (1.f + std::exp(-gv)) * u[i];
    }
  }

  struct Task {
    std::size_t r0, r1;  // rows of the first output (swiglu: of both)
    std::uint32_t out;
  };

  // Row-chunked quantized kernels on the workers. With an epilogue (swiglu)
  // the two outputs share their row chunks and each task finishes its rows.
  void matvec(const float* x, std::size_t n, std::size_t ldx, const MatOut* outs, std::size_t n_outs,
              const Epilogue* epi) {
    std::size_t total = 0;
    for (std::size_t i = 0; i < n_outs; ++i) total += outs[i].w->rows();
    const std::size_t cols = outs[0].w->cols();
    if (int8_ && cols % 32 == 0) quantize_inputs(x, n, ldx, cols);
    const std::size_t workers = pf_.workers();
    // About two tasks per worker, multiples of 4 rows, at least 16.
    std::size_t chunk = workers == 1 ? total : (total + 2 * workers - 1) / (2 * workers);
    chunk = std::max<std::size_t>(16, (chunk + 3) / 4 * 4);
    tasks_.clear();
    for (std::size_t i = 0; i < (epi ? 1 : n_outs); ++i)
      for (std::size_t r = 0; r < outs[i].w->rows(); r += chunk)
        tasks_.push_back({r, std::min(outs[i].w->rows(), r + chunk), std::uint32_t(i)});
    const bool q = int8_ && cols % 32 == 0;
    pf_(tasks_.size(), [&](std::size_t k, std::size_t) {
      const Task& tk = tasks_[k];
      const std::size_t i0 = epi ? 0 : tk.out, i1 = epi ? n_outs : tk.out + 1;
      for (std::size_t i = i0; i < i1; ++i) rows(x, n, ldx, outs[i], tk.r0, tk.r1, q);
      if (epi)
        for (std::size_t t = 0; t < n; ++t) {
          const std::size_t o = t * epi->ld + tk.r0;
          silu_mul(epi->g + o, epi->u + o, epi->h + o, tk.r1 - tk.r0);
        }
    });
  }

  // Rows [r0, r1) of one output, 64 rows per kernel call so that a group of
  // up to 4 inputs finds them in L1 when the kernel sweeps the next group.
  void rows(const float* x, std::size_t n, std::size_t ldx, const MatOut& o, std::size_t r0, std::size_t r1,
            bool q) const {
    constexpr std::size_t step = 64;
    for (std::size_t r = r0; r < r1; r += step) {
      QuantMatVecArgs a;
      a.type = std::uint32_t(o.w->type());
      a.w = o.w->row(r);
      a.row_bytes = o.w->row_bytes();
      a.cols = o.w->cols();
      a.rows = std::min(r1, r + step) - r;
      a.rows_after = r1 - r - a.rows;  // the task's next rows: prefetched across calls
      a.x = x;
      a.ldx = ldx;
      a.n = n;
      a.y = o.y + r;
      a.ldy = o.ldy;
      a.accumulate = o.accumulate;
      if (q) {
        a.xq = xq_.data();
        a.xd = xd_.data();
        a.xs = xs_.data();
        a.ldxq = o.w->cols();
        a.ldxb = o.w->cols() / 32;
      }
      quant_matvec(a);
    }
  }

  void quantize_inputs(const float* x, std::size_t n, std::size_t ldx, std::size_t cols) {
    xq_.resize(n * cols);
    xd_.resize(n * cols / 32);
    xs_.resize(n * cols / 32);
    quantize_q8_inputs(x, n, ldx, cols, xq_.data(), xd_.data(), xs_.data());
  }

  // Many inputs: row chunks of W on the workers, each dequantized to f32
  // (F32 weights are read in place) and multiplied by one single-threaded
  // BLAS sgemm. No BLAS thread pool runs beside the engine's: OpenBLAS's
  // threads poll for ~0.1 s after each call, and slowed the decode that
  // followed a prefill by 2-8% on 2 cores.
  void gemm(const float* x, std::size_t n, std::size_t ldx, const MatOut& o) {
    const QuantMatrix& w = *o.w;
    const std::size_t R = w.rows(), C = w.cols(), W = std::max<std::size_t>(1, pf_.workers());
    const float beta = o.accumulate ? 1.f : 0.f;
    const bool in_place = w.type() == GgmlType::F32;
    // About two chunks per worker, multiples of 16 rows; the workers'
    // buffers together hold at most max_panel_floats.
    const std::size_t most = std::max<std::size_t>(16, max_panel_floats / (W * C) / 16 * 16);
    const std::size_t chunk = std::min(most, std::max<std::size_t>(16, ((R + 2 * W - 1) / (2 * W) + 15) / 16 * 16));
    if (!in_place) panel_.resize(W * chunk * C);
    const OneBlasThread one(W > 1);  // one worker keeps the BLAS's own threads
    pf_((R + chunk - 1) / chunk, [&](std::size_t k, std::size_t worker) {
      const std::size_t r0 = k * chunk, nr = std::min(R - r0, chunk);
      const float* rows = nullptr;
      if (in_place) {
        rows = w.f32().data() + r0 * C;
      } else {
        float* buf = panel_.data() + worker * chunk * C;
        DequantArgs a;
        a.type = std::uint32_t(w.type());
        a.w = w.row(r0);
        a.row_bytes = w.row_bytes();
        a.cols = C;
        a.rows = nr;
        a.out = buf;
        a.ldo = C;
        quant_dequantize(a);
        rows = buf;
      }
      sgemm_rm(false, true, int(n), int(nr), int(C), 1.f, x, int(ldx), rows, int(C), beta, o.y + r0, int(o.ldy));
    });
  }

  static constexpr std::size_t max_panel_floats = std::size_t(4) << 20;  // 16 MB of f32

  headrecon::ParallelFor pf_;
  bool int8_;
  std::size_t max_matvec_ = default_max_matvec_inputs;
  std::vector<Task> tasks_;
  std::vector<float> panel_;
  std::vector<std::int8_t> xq_;
  std::vector<float> xd_, xs_;
};

}  // namespace headrecon_engine
