// Statistics throughput over MPI ranks: T tokens of synthetic K activations
// (generated before the clock starts) split by batches over the ranks, each
// rank accumulating cross-layer HeadMoments on one BLAS thread, then the
// tree-ordered all-reduce. Prints tokens/s and GFLOP/s (the syrk flops of
// Moments::batch_flops) of accumulate + reduce, the slowest rank's wall time.
// usage: mpirun -np N bench_mpi_statistics [--tokens T] [--layers L] [--heads H] [--dim D] [--reps R]
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "headrecon/blas_threads.hpp"
#include "headrecon/mpi/allreduce_moments.hpp"
#include "headrecon/synthetic.hpp"

using namespace headrecon;

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  std::size_t tokens = 32768, batch = 1024;
  int reps = 3;
  SyntheticSpec spec;
  spec.n_layers = 8;
  spec.n_heads = 4;
  spec.head_dim = 64;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    const long v = std::atol(argv[i + 1]);
    if (a == "--tokens") tokens = std::size_t(v);
    else if (a == "--layers") spec.n_layers = std::int32_t(v);
    else if (a == "--heads") spec.n_heads = std::int32_t(v);
    else if (a == "--dim") spec.head_dim = std::int32_t(v);
    else if (a == "--reps") reps = int(v);
  }
  const ScopedBlasThreads one(1);
  const SyntheticModel m(spec);
  const std::size_t L = std::size_t(spec.n_layers), H = std::size_t(spec.n_heads), d = std::size_t(spec.head_dim);
  const std::size_t batches = (tokens + batch - 1) / batch;
  const std::size_t b0 = batches * std::size_t(rank) / std::size_t(size),
                    b1 = batches * std::size_t(rank + 1) / std::size_t(size);
  // This rank's batches, every layer, generated up front.
  std::vector<std::vector<std::vector<float>>> data(b1 - b0, std::vector<std::vector<float>>(L));
  for (std::size_t b = b0; b < b1; ++b)
    for (std::size_t l = 0; l < L; ++l) {
      const std::size_t t0 = b * batch, n = std::min(batch, tokens - t0);
      data[b - b0][l].resize(n * H * d);
      m.generate(Kind::k, std::int32_t(l), t0, n, data[b - b0][l].data());
    }
  double best = 1e300, best_acc = 0, best_red = 0;
  for (int r = 0; r < reps; ++r) {
    HeadMoments hm(spec.n_layers, spec.n_heads, spec.head_dim, RefScope::cross_layer);
    MPI_Barrier(MPI_COMM_WORLD);
    const double t0 = MPI_Wtime();
    for (std::size_t b = b0; b < b1; ++b) {
      const std::size_t n = data[b - b0][0].size() / (H * d);
      std::vector<AnyHeadsView> views;
      for (std::size_t l = 0; l < L; ++l)
        views.push_back(erase(make_view<const float>(data[b - b0][l].data(), n * H * d, Extents3{n, H, d},
                                                     Layout::token_major)));
      hm.add(views, b * batch, HoldoutSplit{});
    }
    const double t1 = MPI_Wtime();
    mpi::allreduce(hm, MPI_COMM_WORLD);
    const double t2 = MPI_Wtime();
    double times[2] = {t1 - t0, t2 - t0}, worst[2];
    MPI_Allreduce(times, worst, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (worst[1] < best) {
      best = worst[1];
      best_acc = worst[0];
      best_red = worst[1] - worst[0];
    }
  }
  if (rank == 0) {
    const double p = double(L * H * d);
    const double flops = double(tokens) * p * (p + 1);  // Moments::batch_flops over all tokens (train + held-out)
    std::printf("ranks %d tokens %zu p %.0f seconds %.4f tokens/s %.0f GFLOP/s %.2f (accumulate %.4f s, reduce %.4f s)\n",
                size, tokens, p, best, double(tokens) / best, flops / best * 1e-9, best_acc, best_red);
  }
  MPI_Finalize();
  return 0;
}
