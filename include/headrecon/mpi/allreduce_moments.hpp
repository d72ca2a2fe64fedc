#pragma once
/// @file mpi/allreduce_moments.hpp
/// Reduction of streaming statistics (Moments, HeadMoments, QueryMoments)
/// across an MPI communicator with the same Chan merge as their merge():
/// a fixed binary tree over ranks (for s = 1, 2, 4, …, rank r with r mod 2s = 0
/// absorbs rank r + s, in that order), then a broadcast from rank 0. Every rank
/// ends with identical statistics, equal to merging the ranks' accumulators
/// in rank order (up to rounding) and independent of MPI's own reduction
/// algorithms; uncentered sums are never added. Needs MPI (CMake option
/// HEADRECON_WITH_MPI, target headrecon::mpi).

#include <mpi.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "headrecon/error.hpp"
#include "headrecon/head_moments.hpp"
#include "headrecon/loss_metric.hpp"
#include "headrecon/moments.hpp"
#include "headrecon/mpi/collective_error.hpp"

namespace headrecon::mpi {

namespace detail {
constexpr int moments_tag = 0x4852;                  // "HR"
constexpr std::size_t max_chunk = std::size_t(1) << 27;  // doubles per message (int counts)

inline void send_doubles(const double* p, std::size_t n, int dest, MPI_Comm comm) {
  for (std::size_t i = 0; i < n; i += max_chunk)
    MPI_Send(p + i, int(std::min(max_chunk, n - i)), MPI_DOUBLE, dest, moments_tag, comm);
}
inline void recv_doubles(double* p, std::size_t n, int src, MPI_Comm comm) {
  for (std::size_t i = 0; i < n; i += max_chunk)
    MPI_Recv(p + i, int(std::min(max_chunk, n - i)), MPI_DOUBLE, src, moments_tag, comm, MPI_STATUS_IGNORE);
}
inline void bcast_doubles(double* p, std::size_t n, MPI_Comm comm) {
  for (std::size_t i = 0; i < n; i += max_chunk) MPI_Bcast(p + i, int(std::min(max_chunk, n - i)), MPI_DOUBLE, 0, comm);
}

// Every rank must hold the same number of accumulators with the same dims:
// checked collectively (min and max of a fingerprint), an Error on all ranks otherwise.
inline void check_same_shape(const std::vector<Moments*>& parts, MPI_Comm comm) {
  std::uint64_t sig[2] = {parts.size(), 0};
  for (std::size_t i = 0; i < parts.size(); ++i) sig[1] = sig[1] * 1000003u + parts[i]->dim() + 1;
  std::uint64_t lo[2], hi[2];
  MPI_Allreduce(sig, lo, 2, MPI_UINT64_T, MPI_MIN, comm);
  MPI_Allreduce(sig, hi, 2, MPI_UINT64_T, MPI_MAX, comm);
  agree_on_error(comm, lo[0] == hi[0] && lo[1] == hi[1]
                           ? std::string()
                           : std::string("allreduce: the ranks' statistics differ in shape (layers, heads, "
                                         "head_dim or scope)"));
}
}  // namespace detail

/// Replaces every accumulator in `parts` on every rank of `comm` by the merge
/// of that accumulator over all ranks (tree order above). Collective; the
/// ranks must pass the same number of accumulators with the same dims (else
/// every rank throws Error).
inline void allreduce(const std::vector<Moments*>& parts, MPI_Comm comm) {
  int rank = 0, size = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  detail::check_same_shape(parts, comm);
  if (size == 1) return;
  std::vector<std::uint64_t> counts(parts.size());
  std::vector<double> mean, m2;
  for (int s = 1; s < size; s <<= 1) {
    if (rank % (2 * s) == s) {  // send this subtree's statistics to rank - s, then wait for the broadcast
      for (std::size_t i = 0; i < parts.size(); ++i) counts[i] = parts[i]->count();
      MPI_Send(counts.data(), int(counts.size()), MPI_UINT64_T, rank - s, detail::moments_tag, comm);
      for (const Moments* m : parts) {
        detail::send_doubles(m->mean().data(), m->dim(), rank - s, comm);
        detail::send_doubles(m->comoment().data(), m->dim() * m->dim(), rank - s, comm);
      }
      break;
    }
    if (rank % (2 * s) == 0 && rank + s < size) {  // absorb rank + s's subtree
      MPI_Recv(counts.data(), int(counts.size()), MPI_UINT64_T, rank + s, detail::moments_tag, comm,
               MPI_STATUS_IGNORE);
      for (std::size_t i = 0; i < parts.size(); ++i) {
        const std::size_t p = parts[i]->dim();
        mean.resize(p);
        m2.resize(p * p);
        detail::recv_doubles(mean.data(), p, rank + s, comm);
        detail::recv_doubles(m2.data(), p * p, rank + s, comm);
        parts[i]->merge(Moments::from_parts(counts[i], std::move(mean), std::move(m2)));
        mean.clear();
        m2.clear();
      }
    }
  }
  for (std::size_t i = 0; i < parts.size(); ++i) counts[i] = parts[i]->count();
  MPI_Bcast(counts.data(), int(counts.size()), MPI_UINT64_T, 0, comm);
  for (std::size_t i = 0; i < parts.size(); ++i) {
    Moments& m = *parts[i];
    const std::size_t p = m.dim();
    if (rank == 0) {
      detail::bcast_doubles(const_cast<double*>(m.mean().data()), p, comm);
      detail::bcast_doubles(const_cast<double*>(m.comoment().data()), p * p, comm);
    } else {
      mean.assign(p, 0.0);
      m2.assign(p * p, 0.0);
      detail::bcast_doubles(mean.data(), p, comm);
      detail::bcast_doubles(m2.data(), p * p, comm);
      m = Moments::from_parts(counts[i], std::move(mean), std::move(m2));
      mean.clear();
      m2.clear();
    }
  }
}

/// One accumulator, reduced over all ranks (see above).
inline void allreduce(Moments& m, MPI_Comm comm) { allreduce(std::vector<Moments*>{&m}, comm); }

/// Every group (train and held-out) of `hm`, reduced over all ranks.
inline void allreduce(HeadMoments& hm, MPI_Comm comm) {
  std::vector<Moments*> parts;
  for (std::size_t g = 0; g < hm.n_groups(); ++g) {
    parts.push_back(&hm.group_at(g).train);
    parts.push_back(&hm.group_at(g).heldout);
  }
  allreduce(parts, comm);
}

/// Every query head's accumulator, reduced over all ranks.
inline void allreduce(QueryMoments& qm, MPI_Comm comm) {
  std::vector<Moments*> parts;
  for (Moments& m : qm.parts()) parts.push_back(&m);
  allreduce(parts, comm);
}

}  // namespace headrecon::mpi
