#pragma once
/// @file thread_pool.hpp
/// The default pool behind ParallelFor: n−1 worker threads plus the calling
/// thread (worker 0). Tasks are handed out by an atomic counter. Idle workers
/// spin for a bounded time (decode issues hundreds of short parallel loops
/// per token, and a sleeping thread takes tens of microseconds to wake), then
/// sleep on a condition variable, so a loaded machine loses no core to
/// spinning. One run at a time: concurrent callers are serialized.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "headrecon/error.hpp"
#include "headrecon/parallel.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HEADRECON_CPU_RELAX() _mm_pause()
#else
#define HEADRECON_CPU_RELAX() std::this_thread::yield()
#endif

namespace headrecon {

class ThreadPool {
 public:
  /// `threads` workers in all, the caller included (0: one per hardware
  /// thread). `spin` bounds how long an idle worker polls before it sleeps.
  explicit ThreadPool(std::size_t threads = 0, std::chrono::microseconds spin = std::chrono::microseconds(200))
      : spin_(spin) {
    if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
    if (threads > 4096) detail::fail("ThreadPool: ", threads, " threads requested (at most 4096)");
    n_ = threads;
    workers_.reserve(n_ - 1);
    for (std::size_t w = 1; w < n_; ++w) workers_.emplace_back([this, w] { worker_loop(w); });
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  /// Wakes and joins every worker (no task may be running).
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_.store(true, std::memory_order_relaxed);
      epoch_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

  std::size_t size() const { return n_; }

  /// task(i, worker) for i in [0, n); returns when all returned; rethrows the
  /// first exception a task threw.
  void run(std::size_t n, TaskRef task) {
    if (n == 0) return;
    std::lock_guard<std::mutex> serial(run_mu_);
    if (n_ == 1 || n == 1) {
      for (std::size_t i = 0; i < n; ++i) task(i, 0);
      return;
    }
    task_ = &task;
    n_tasks_ = n;
    next_.store(0, std::memory_order_relaxed);
    error_ = nullptr;
    active_.store(n_ - 1, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lk(mu_);
      epoch_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    work(0);
    while (active_.load(std::memory_order_acquire) != 0) HEADRECON_CPU_RELAX();
    task_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

  /// This pool as a ParallelFor (the pool must outlive it).
  ParallelFor parallel_for() {
    return ParallelFor(n_, [this](std::size_t n, TaskRef task) { run(n, task); });
  }

 private:
  void work(std::size_t worker) {
    for (;;) {
      const std::size_t i = next_.fetch_add(1, std::memory_order_relaxed);
      if (i >= n_tasks_) return;
      try {
        (*task_)(i, worker);
      } catch (...) {
        std::lock_guard<std::mutex> lk(err_mu_);
        if (!error_) error_ = std::current_exception();
        next_.store(n_tasks_, std::memory_order_relaxed);  // start no further tasks
      }
    }
  }

  void worker_loop(std::size_t w) {
    std::uint64_t seen = 0;
    for (;;) {
      // Spin for new work, then sleep.
      const auto t0 = std::chrono::steady_clock::now();
      std::uint64_t e = epoch_.load(std::memory_order_acquire);
      for (unsigned k = 0; e == seen; ++k) {
        HEADRECON_CPU_RELAX();
        if ((k & 255) == 255 && std::chrono::steady_clock::now() - t0 > spin_) {
          std::unique_lock<std::mutex> lk(mu_);
          cv_.wait(lk, [&] { return epoch_.load(std::memory_order_acquire) != seen; });
        }
        e = epoch_.load(std::memory_order_acquire);
      }
      seen = e;
      if (stop_.load(std::memory_order_relaxed)) return;
      work(w);
      active_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  std::size_t n_ = 1;
  std::chrono::microseconds spin_;
  std::vector<std::thread> workers_;
  std::mutex run_mu_, mu_, err_mu_;
  std::condition_variable cv_;
  std::atomic<std::uint64_t> epoch_{0};
  std::atomic<std::size_t> next_{0}, active_{0};
  std::size_t n_tasks_ = 0;
  const TaskRef* task_ = nullptr;
  std::exception_ptr error_;
  std::atomic<bool> stop_{false};
};

}  // namespace headrecon
