#pragma once
/// @file parallel.hpp
/// How the library runs work on several threads without owning them: a
/// ParallelFor is a caller-supplied "for i in [0, n) on my workers". An engine
/// wraps its own pool in one; ThreadPool (thread_pool.hpp) is the default.
/// The default-constructed ParallelFor runs everything on the calling thread.

#include <cstddef>
#include <functional>
#include <type_traits>
#include <utility>

namespace headrecon {

/// A non-owning reference to a callable `void(std::size_t task, std::size_t worker)`.
/// Cheap to copy; the callable must outlive every call.
class TaskRef {
 public:
  template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, TaskRef>>>
  TaskRef(F&& f)  // NOLINT(google-explicit-constructor): a function reference
      : obj_(const_cast<void*>(static_cast<const void*>(&f))),
        call_([](void* o, std::size_t task, std::size_t worker) {
          (*static_cast<std::remove_reference_t<F>*>(o))(task, worker);
        }) {}
  void operator()(std::size_t task, std::size_t worker) const { call_(obj_, task, worker); }

 private:
  void* obj_;
  void (*call_)(void*, std::size_t, std::size_t);
};

/// "Run task(i, worker) once for every i in [0, n) and return when all
/// returned." Contract for an implementation: worker < workers(); two calls
/// with the same worker never overlap (so per-worker scratch needs no lock);
/// an exception thrown by a task is rethrown to the caller after every
/// started task has returned.
class ParallelFor {
 public:
  using RunFn = std::function<void(std::size_t n, TaskRef task)>;

  /// Serial: every task on the calling thread, worker 0.
  ParallelFor() = default;
  /// `workers` workers driven by `run` (see the class contract).
  ParallelFor(std::size_t workers, RunFn run) : workers_(workers ? workers : 1), run_(std::move(run)) {}

  std::size_t workers() const { return workers_; }
  void operator()(std::size_t n, TaskRef task) const {
    if (n == 0) return;
    if (!run_ || workers_ == 1 || n == 1) {
      for (std::size_t i = 0; i < n; ++i) task(i, 0);
      return;
    }
    run_(n, task);
  }

 private:
  std::size_t workers_ = 1;
  RunFn run_;
};

}  // namespace headrecon
