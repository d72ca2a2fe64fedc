#pragma once
// `headrecon fit` over several activation files and, under mpirun (built with
// HEADRECON_WITH_MPI), over several processes. The files form one token
// stream in the order given, cut into the batches one process would read
// (each file from its first token); every rank accumulates a contiguous run of
// batches, the statistics are reduced by tree-ordered Chan merges
// (headrecon/mpi/allreduce_moments.hpp) and every rank holds the result;
// selection, fits and the plan are rank 0's. An error on any rank (a malformed
// file, say) is agreed on collectively, so every rank throws the same Error.

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <ostream>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "headrecon/accumulate.hpp"
#include "headrecon/activations_io.hpp"
#include "headrecon/head_moments.hpp"
#include "headrecon/loss_metric.hpp"

#ifdef HEADRECON_WITH_MPI
#include <mpi.h>

#include "headrecon/mpi/allreduce_moments.hpp"
#include "headrecon/mpi/collective_error.hpp"
#endif

namespace headrecon::cli {

/// Ranks started by mpirun according to the environment (Open MPI, or a PMI
/// launcher such as MPICH's); 0 when not started by a launcher.
inline int launched_ranks() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"})
    if (const char* v = std::getenv(var)) return std::atoi(v);
  return 0;
}

/// MPI for the tool's lifetime: initialized only when started by mpirun (a
/// plain run stays a plain process). Without MPI support, more than one
/// launched rank is an error: each would write the same plan.
class MpiSession {
 public:
  MpiSession(int& argc, char**& argv) {
#ifdef HEADRECON_WITH_MPI
    if (launched_ranks() > 0) {
      MPI_Init(&argc, &argv);
      active_ = true;
    }
#else
    (void)argc;
    (void)argv;
    if (launched_ranks() > 1)
      detail::fail("started on ", launched_ranks(), " MPI ranks, but this headrecon was built without MPI "
                   "(configure with -DHEADRECON_WITH_MPI=ON)");
#endif
  }
  ~MpiSession() {
#ifdef HEADRECON_WITH_MPI
    if (active_) MPI_Finalize();
#endif
  }
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

 private:
  bool active_ = false;
};

/// The communicator of a fit: MPI_COMM_WORLD when MPI is initialized, else one rank.
class FitComm {
 public:
  FitComm() {
#ifdef HEADRECON_WITH_MPI
    int on = 0;
    MPI_Initialized(&on);
    if (on) {
      mpi_ = true;
      MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
      MPI_Comm_size(MPI_COMM_WORLD, &size_);
    }
#endif
  }
  int rank() const { return rank_; }
  int size() const { return size_; }

  /// Runs f on every rank; an exception on any rank becomes the same Error on all.
  template <class F>
  void collectively(F&& f) const {
#ifdef HEADRECON_WITH_MPI
    if (mpi_) return mpi::collectively(MPI_COMM_WORLD, std::forward<F>(f));
#endif
    std::forward<F>(f)();
  }
  /// Element-wise sum over ranks.
  void sum(std::vector<std::uint64_t>& v) const {
#ifdef HEADRECON_WITH_MPI
    if (mpi_) MPI_Allreduce(MPI_IN_PLACE, v.data(), int(v.size()), MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
#else
    (void)v;
#endif
  }
  template <class Stats>
  void allreduce(Stats& s) const {
#ifdef HEADRECON_WITH_MPI
    if (mpi_) mpi::allreduce(s, MPI_COMM_WORLD);
#else
    (void)s;
#endif
  }

 private:
  [[maybe_unused]] bool mpi_ = false;
  int rank_ = 0, size_ = 1;
};

/// Bytes a process may use for statistics: `max_memory` when given, else
/// MemAvailable of /proc/meminfo shared by the ranks of this node (0 = unknown).
inline double statistics_memory_limit(std::size_t max_memory) {
  if (max_memory) return double(max_memory);
  std::ifstream is("/proc/meminfo");
  std::string key;
  double kib = 0;
  while (is >> key >> kib) {
    if (key == "MemAvailable:") {
      int local = 1;
      if (const char* v = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE")) local = std::max(1, std::atoi(v));
      return kib * 1024.0 / local;
    }
    is.ignore(1 << 10, '\n');
  }
  return 0;
}

/// "12.3 MiB" below a GiB, else "1.23 GiB".
inline std::string gib(double bytes) {
  std::ostringstream s;
  s.precision(3);
  if (bytes < double(1 << 30)) s << bytes / double(1 << 20) << " MiB";
  else s << bytes / double(1 << 30) << " GiB";
  return s.str();
}

/// Human name of a scope: "same-layer", "cross-layer", "cross-layer window 4".
inline std::string scope_name(RefScope scope, std::int32_t window) {
  if (scope == RefScope::same_layer) return "same-layer";
  if (scope == RefScope::cross_layer) return "cross-layer";
  return "cross-layer window " + std::to_string(window);
}

/// Fails, naming the limit and the largest window that fits, when the
/// statistics of `kind` would not fit `limit` bytes (0 = no limit); prints their size first.
inline void check_statistics_memory(const ActivationReader& acts, Kind kind, const AccumulateOptions& opt,
                                    double limit, std::ostream& os) {
  const auto L = std::int32_t(acts.n_layers()), H = std::int32_t(acts.n_heads(kind)),
             d = std::int32_t(acts.head_dim());
  const double need = HeadMoments::statistics_bytes(L, H, d, opt.scope, opt.window, opt.batch_tokens);
  os << "statistics of " << kind_name(kind) << " (" << scope_name(opt.scope, opt.window) << "): " << gib(need)
     << " per process" << (limit > 0 ? " (limit " + gib(limit) + ")" : std::string()) << "\n";
  if (limit <= 0 || need <= limit) return;
  const std::int32_t w = HeadMoments::largest_window(L, H, d, limit, opt.batch_tokens);
  detail::fail("the ", scope_name(opt.scope, opt.window), " statistics of ", kind_name(kind), " (", L, " layers x ", H,
               " heads x ", d, ") need ", gib(need), ", more than the ", gib(limit),
               " allowed (--max-memory, else the memory available per rank); ",
               w >= 0 ? "the largest cross-layer window that fits is --window " + std::to_string(w)
                      : std::string("not even a window of 0 (same-layer) fits: lower --batch or add memory"));
}

/// The activation files of a fit as one token stream, split over the ranks.
class FitSource {
 public:
  /// Opens every file (file 0 on every rank, the others round-robin), checks
  /// that they agree in layers, heads, head_dim and RoPE stage, and learns
  /// their token counts. Collective.
  explicit FitSource(std::vector<std::string> files) : files_(std::move(files)) {
    if (files_.empty()) detail::fail("no activation files (--acts)");
    std::set<std::string> seen;
    for (const auto& f : files_)
      if (!seen.insert(f).second) detail::fail("--acts ", f, " is given twice");
    comm_.collectively([&] { first_ = std::make_unique<ActivationReader>(files_[0]); });
    tokens_.assign(files_.size(), 0);
    comm_.collectively([&] {
      for (std::size_t f = std::size_t(comm_.rank()); f < files_.size(); f += std::size_t(comm_.size())) {
        if (f == 0) {
          tokens_[0] = first_->n_tokens();
          continue;
        }
        const ActivationReader r(files_[f]);
        check_like(r);
        tokens_[f] = r.n_tokens();
      }
    });
    comm_.sum(tokens_);
  }

  const ActivationReader& first() const { return *first_; }
  const std::vector<std::string>& files() const { return files_; }
  bool is_root() const { return comm_.rank() == 0; }
  int ranks() const { return comm_.size(); }
  std::size_t n_tokens() const {
    std::size_t n = 0;
    for (auto t : tokens_) n += t;
    return n;
  }

  /// Statistics of `kind` over the stream (up to opt.max_tokens), on every
  /// rank; checks their memory against `limit` bytes first (0 = none). Collective.
  HeadMoments statistics(Kind kind, const AccumulateOptions& opt, double limit, std::ostream& os) {
    opt.split.validate();
    if (!first_->has(kind)) detail::fail(first_->path(), ": no '", kind_name(kind), "' activations in this file");
    if (opt.batch_tokens == 0) detail::fail("accumulate: batch_tokens must be positive");
    comm_.collectively([&] { check_statistics_memory(*first_, kind, opt, limit, os); });
    const std::size_t L = first_->n_layers();
    HeadMoments hm(std::int32_t(L), std::int32_t(first_->n_heads(kind)), std::int32_t(first_->head_dim()), opt.scope,
                   opt.window);
    std::vector<std::vector<std::byte>> bufs(L);
    std::vector<AnyHeadsView> views(L);
    // --fit-on-cache: K/V rounded as the cache gives them back (accumulate.hpp does the same).
    const bool round = opt.cache_type && kind != Kind::q;
    if (round && is_block_type(opt.cache_type->dtype) && first_->head_dim() % kQuantBlock != 0)
      detail::fail("cache type ", opt.cache_type->name(), " needs head_dim a multiple of ", kQuantBlock, ", got ",
                   first_->head_dim());
    std::vector<std::vector<float>> rounded(round ? L : 0);
    comm_.collectively([&] {
      for (const Unit& u : my_units(opt)) {
        const ActivationReader& acts = reader(u.file);
        try {
          for (std::size_t l = 0; l < L; ++l) {
            views[l] = acts.read(l, kind, u.t0, u.n, bufs[l]);
            if (round) views[l] = detail::roundtrip_view(views[l], *opt.cache_type, rounded[l]);
          }
          const std::vector<std::int32_t> pos = acts.positions(u.t0, u.n);
          hm.add(views, u.token0, opt.split, pos.data(), opt.sink_tokens);
        } catch (const Error& e) {
          detail::fail(acts.path(), ": ", kind_name(kind), " activations, tokens ", u.t0, "..", u.t0 + u.n - 1,
                       " (", u.token0, ".. of the stream): ", e.what());
        }
      }
    });
    comm_.allreduce(hm);
    return hm;
  }

  /// Query statistics (for the key metric) over the stream, on every rank. Collective.
  QueryMoments queries(const AccumulateOptions& opt) {
    if (!first_->has(Kind::q))
      detail::fail(first_->path(), ": no 'q' activations in this file (the key metric needs the queries)");
    if (opt.batch_tokens == 0) detail::fail("accumulate: batch_tokens must be positive");
    const std::size_t L = first_->n_layers();
    QueryMoments qm(std::int32_t(L), std::int32_t(first_->n_heads(Kind::q)), std::int32_t(first_->head_dim()));
    std::vector<std::byte> buf;
    comm_.collectively([&] {
      for (const Unit& u : my_units(opt)) {
        const ActivationReader& acts = reader(u.file);
        try {
          const std::vector<std::int32_t> pos = acts.positions(u.t0, u.n);
          for (std::size_t l = 0; l < L; ++l) qm.add(std::int32_t(l), acts.read(l, Kind::q, u.t0, u.n, buf), pos.data(),
                                                      opt.sink_tokens);
        } catch (const Error& e) {
          detail::fail(acts.path(), ": q activations, tokens ", u.t0, "..", u.t0 + u.n - 1, ": ", e.what());
        }
      }
    });
    comm_.allreduce(qm);
    return qm;
  }

 private:
  struct Unit {
    std::size_t file, t0, n;  // tokens [t0, t0 + n) of the file
    std::uint64_t token0;     // index of token t0 in the whole stream
  };

  // This rank's contiguous share of the stream's batches.
  std::vector<Unit> my_units(const AccumulateOptions& opt) const {
    std::vector<Unit> all;
    std::uint64_t offset = 0, left = opt.max_tokens ? opt.max_tokens : ~std::uint64_t(0);
    for (std::size_t f = 0; f < files_.size() && left > 0; ++f) {
      const std::size_t total = std::size_t(std::min<std::uint64_t>(tokens_[f], left));
      for (std::size_t t0 = 0; t0 < total; t0 += opt.batch_tokens)
        all.push_back({f, t0, std::min(opt.batch_tokens, total - t0), offset + t0});
      offset += tokens_[f];
      left -= total;
    }
    const std::size_t n = all.size(), r = std::size_t(comm_.rank()), s = std::size_t(comm_.size());
    return {all.begin() + std::ptrdiff_t(n * r / s), all.begin() + std::ptrdiff_t(n * (r + 1) / s)};
  }

  const ActivationReader& reader(std::size_t f) {
    if (f == 0) return *first_;
    auto& r = open_[f];
    if (!r) {
      r = std::make_unique<ActivationReader>(files_[f]);
      check_like(*r);
    }
    return *r;
  }

  void check_like(const ActivationReader& r) const {
    const ActivationReader& a = *first_;
    std::ostringstream why;
    if (r.n_layers() != a.n_layers()) why << r.n_layers() << " layers, not " << a.n_layers();
    else if (r.head_dim() != a.head_dim()) why << "head_dim " << r.head_dim() << ", not " << a.head_dim();
    else if (r.post_rope() != a.post_rope()) why << (r.post_rope() ? "post-RoPE" : "pre-RoPE") << " activations";
    else
      for (Kind k : {Kind::q, Kind::k, Kind::v})
        if (r.has(k) != a.has(k) || (r.has(k) && r.n_heads(k) != a.n_heads(k))) {
          why << (r.has(k) ? std::to_string(r.n_heads(k)) : std::string("no")) << " '" << kind_name(k) << "' heads";
          break;
        }
    if (!why.str().empty()) detail::fail(r.path(), ": ", why.str(), " (unlike ", a.path(), ")");
  }

  FitComm comm_;
  std::vector<std::string> files_;
  std::vector<std::uint64_t> tokens_;
  std::unique_ptr<ActivationReader> first_;
  std::map<std::size_t, std::unique_ptr<ActivationReader>> open_;
};

}  // namespace headrecon::cli
