#pragma once
// The few BLAS/LAPACK routines the library calls, as Fortran symbols (OpenBLAS
// provides them all). Declared here rather than through cblas.h, whose
// declarations clash with the ones xtensor-blas bundles.

extern "C" {
void ssyrk_(const char* uplo, const char* trans, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* beta, float* c, const int* ldc);
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc);
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc);
void dtrsm_(const char* side, const char* uplo, const char* transa, const char* diag, const int* m, const int* n,
            const double* alpha, const double* a, const int* lda, double* b, const int* ldb);
void dpotrf_(const char* uplo, const int* n, double* a, const int* lda, int* info);
void dpotrs_(const char* uplo, const int* n, const int* nrhs, const double* a, const int* lda,
             double* b, const int* ldb, int* info);
void dpocon_(const char* uplo, const int* n, const double* a, const int* lda, const double* anorm,
             double* rcond, double* work, int* iwork, int* info);
double dlansy_(const char* norm, const char* uplo, const int* n, const double* a, const int* lda,
               double* work);
void dsyevd_(const char* jobz, const char* uplo, const int* n, double* a, const int* lda, double* w,
             double* work, const int* lwork, int* iwork, const int* liwork, int* info);
}

namespace headrecon::detail {

/// Row-major C(m×n) = alpha·op(A)·op(B) + beta·C, op = transpose when the flag is set.
inline void gemm_rm(bool ta, bool tb, int m, int n, int k, double alpha, const double* a, int lda,
                    const double* b, int ldb, double beta, double* c, int ldc) {
  // Row-major C = op(A)op(B) is column-major Cᵀ = op(B)ᵀ op(A)ᵀ.
  const char tbs = tb ? 'T' : 'N', tas = ta ? 'T' : 'N';
  dgemm_(&tbs, &tas, &n, &m, &k, &alpha, b, &ldb, a, &lda, &beta, c, &ldc);
}

/// Row-major upper triangle of G(p×p) = Xᵀ X for row-major X (n×p, row stride ldx).
inline void syrk_upper_rm(int p, int n, const float* x, int ldx, float* g) {
  // Row-major X is column-major Xᵀ (p×n); column-major lower of Xᵀ(Xᵀ)ᵀ is
  // row-major upper.
  const float one = 1.f, zero = 0.f;
  ssyrk_("L", "N", &p, &n, &one, x, &ldx, &zero, g, &p);
}

}  // namespace headrecon::detail
