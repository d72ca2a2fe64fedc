#pragma once
/// @file blas_threads.hpp
/// The BLAS thread count, chosen deliberately. Selection and fitting make many
/// small LAPACK calls (systems of a few hundred unknowns): with OpenBLAS's
/// default threads they spend their time waking and spinning threads, 18-90×
/// slower than one thread on a loaded 2-core machine. Only the statistics
/// (a syrk per batch of thousands of tokens) gain from threads. OpenBLAS is
/// reached through weak symbols: with another BLAS these calls do nothing.

extern "C" {
void openblas_set_num_threads(int) __attribute__((weak));
int openblas_get_num_threads(void) __attribute__((weak));
}

namespace headrecon {

/// Sets the BLAS thread count (n >= 1); returns false when the BLAS is not OpenBLAS.
inline bool set_blas_threads(int n) {
  if (!openblas_set_num_threads || n < 1) return false;
  openblas_set_num_threads(n);
  return true;
}

/// The BLAS thread count (0 when unknown: not OpenBLAS).
inline int blas_threads() { return openblas_get_num_threads ? openblas_get_num_threads() : 0; }

/// Runs a scope with `n` BLAS threads and restores the previous count. Not
/// thread-safe against other threads changing the count (OpenBLAS's count is global).
class ScopedBlasThreads {
 public:
  explicit ScopedBlasThreads(int n) : previous_(blas_threads()) {
    if (previous_ > 0 && previous_ != n) set_blas_threads(n);
  }
  ~ScopedBlasThreads() {
    if (previous_ > 0 && blas_threads() != previous_) set_blas_threads(previous_);
  }
  ScopedBlasThreads(const ScopedBlasThreads&) = delete;
  ScopedBlasThreads& operator=(const ScopedBlasThreads&) = delete;

 private:
  int previous_;
};

}  // namespace headrecon
