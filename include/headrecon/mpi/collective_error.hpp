#pragma once
/// @file mpi/collective_error.hpp
/// Agreeing on an error across an MPI communicator, so that a failure on one
/// rank (a malformed file, say) makes every rank throw the same Error instead
/// of leaving the others waiting in the next collective. Needs MPI (CMake
/// option HEADRECON_WITH_MPI, target headrecon::mpi).

#include <mpi.h>

#include <exception>
#include <string>
#include <utility>

#include "headrecon/error.hpp"

namespace headrecon::mpi {

/// Collective over `comm`: every rank passes its own error message (empty
/// when it succeeded). When any rank failed, every rank throws Error with the
/// message of the lowest failing rank, prefixed by that rank's number;
/// otherwise returns.
inline void agree_on_error(MPI_Comm comm, const std::string& local_error) {
  int rank = 0, size = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  int first = local_error.empty() ? size : rank;
  MPI_Allreduce(MPI_IN_PLACE, &first, 1, MPI_INT, MPI_MIN, comm);
  if (first == size) return;
  int len = rank == first ? int(local_error.size()) : 0;
  MPI_Bcast(&len, 1, MPI_INT, first, comm);
  std::string msg = rank == first ? local_error : std::string(std::size_t(len), '\0');
  MPI_Bcast(msg.data(), len, MPI_CHAR, first, comm);
  detail::fail("rank ", first, " of ", size, ": ", msg);
}

/// Runs `f` on every rank of `comm` and agrees on its outcome: a
/// std::exception thrown by `f` on any rank is rethrown as the same Error on
/// all of them (see agree_on_error). `f` must not call collectives on `comm`.
template <class F>
void collectively(MPI_Comm comm, F&& f) {
  std::string err;
  try {
    std::forward<F>(f)();
  } catch (const std::exception& e) {
    err = e.what();
    if (err.empty()) err = "unknown error";
  }
  agree_on_error(comm, err);
}

}  // namespace headrecon::mpi
