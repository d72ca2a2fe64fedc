#pragma once
// `headrecon-engine capture --shard i/N`: shard i of N captures a contiguous,
// disjoint run of whole sequences, so the shards' files, given in order to
// `headrecon fit --acts s0 --acts s1 ...`, are one capture of the whole text.
// `--shard mpi` takes i and N from mpirun's environment (Open MPI or PMI).

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "llama.hpp"

namespace headrecon_engine {

struct Shard {
  std::size_t index = 0, count = 1;
};

/// Parses "i/N" (0 <= i < N) or "mpi" (the launcher's rank and size).
inline Shard parse_shard(const std::string& spec) {
  Shard s;
  if (spec == "mpi") {
    const char* r = std::getenv("OMPI_COMM_WORLD_RANK");
    const char* n = std::getenv("OMPI_COMM_WORLD_SIZE");
    if (!r || !n) {
      r = std::getenv("PMI_RANK");
      n = std::getenv("PMI_SIZE");
    }
    if (!r || !n) fail("--shard mpi: not started by mpirun (no OMPI_COMM_WORLD_RANK/SIZE or PMI_RANK/SIZE)");
    return parse_shard(std::string(r) + "/" + n);
  }
  const auto slash = spec.find('/');
  char* end = nullptr;
  const unsigned long long i = std::strtoull(spec.c_str(), &end, 10);
  const bool ok_i = slash != std::string::npos && end == spec.c_str() + slash && slash > 0;
  const unsigned long long n = ok_i ? std::strtoull(spec.c_str() + slash + 1, &end, 10) : 0;
  if (!ok_i || *end || slash + 1 == spec.size() || n == 0 || n > (1u << 20) || i >= n || spec[0] == '-' ||
      spec[slash + 1] == '-')
    fail("--shard must be i/N with 0 <= i < N <= 1048576, or mpi; got '", spec, "'");
  s.index = std::size_t(i);
  s.count = std::size_t(n);
  return s;
}

/// The tokens of shard `s`: sequences [i·S/N, (i+1)·S/N) of the S sequences of
/// `seq_len` tokens (the last may be shorter); its first token's index in
/// `token0`. Throws when the shard has no sequence.
inline std::vector<std::int32_t> shard_tokens(const std::vector<std::int32_t>& tokens, std::size_t seq_len,
                                              const Shard& s, std::size_t& token0) {
  const std::size_t seqs = (tokens.size() + seq_len - 1) / seq_len;
  const std::size_t a = seqs * s.index / s.count, b = seqs * (s.index + 1) / s.count;
  if (a == b)
    fail("--shard ", s.index, "/", s.count, ": ", seqs, " sequences of ", seq_len, " tokens leave this shard empty");
  token0 = a * seq_len;
  const std::size_t end = std::min(tokens.size(), b * seq_len);
  return {tokens.begin() + std::ptrdiff_t(token0), tokens.begin() + std::ptrdiff_t(end)};
}

/// `out` with "{i}" replaced by the shard index (so one command line serves every rank).
inline std::string shard_path(std::string out, const Shard& s) {
  for (std::size_t p; (p = out.find("{i}")) != std::string::npos;) out.replace(p, 3, std::to_string(s.index));
  return out;
}

}  // namespace headrecon_engine
