// ParallelFor and the default ThreadPool: every task runs exactly once, on a
// worker index below workers(), no two tasks of one worker overlap, the first
// exception reaches the caller, and the pool shuts down cleanly (also right
// after construction and after a failed run).
#include <catch2/catch.hpp>

#include <atomic>
#include <stdexcept>
#include <thread>
#include <vector>

#include "headrecon/thread_pool.hpp"

using namespace headrecon;

TEST_CASE("serial ParallelFor runs every task on worker 0") {
  ParallelFor pf;
  REQUIRE(pf.workers() == 1);
  std::vector<int> hits(17, 0);
  pf(17, [&](std::size_t i, std::size_t w) {
    REQUIRE(w == 0);
    ++hits[i];
  });
  for (int h : hits) REQUIRE(h == 1);
}

TEST_CASE("ThreadPool runs each task once, per-worker calls never overlap") {
  for (std::size_t threads : {1, 2, 3, 8}) {
    ThreadPool pool(threads);
    REQUIRE(pool.size() == threads);
    ParallelFor pf = pool.parallel_for();
    REQUIRE(pf.workers() == threads);
    for (std::size_t n : {1, 2, 7, 64, 1000}) {
      std::vector<std::atomic<int>> hits(n);
      std::vector<std::atomic<int>> busy(threads);
      std::atomic<bool> overlap{false}, bad_worker{false};
      pf(n, [&](std::size_t i, std::size_t w) {
        if (w >= threads) {
          bad_worker = true;
          return;
        }
        if (busy[w].fetch_add(1) != 0) overlap = true;
        hits[i].fetch_add(1);
        if (i % 5 == 0) std::this_thread::yield();
        busy[w].fetch_sub(1);
      });
      REQUIRE_FALSE(bad_worker.load());
      REQUIRE_FALSE(overlap.load());
      for (auto& h : hits) REQUIRE(h.load() == 1);
    }
  }
}

TEST_CASE("ThreadPool rethrows a task's exception and stays usable") {
  ThreadPool pool(3);
  ParallelFor pf = pool.parallel_for();
  REQUIRE_THROWS_WITH(pf(100,
                         [&](std::size_t i, std::size_t) {
                           if (i == 37) throw std::runtime_error("task 37 failed");
                         }),
                      "task 37 failed");
  std::atomic<int> sum{0};
  pf(10, [&](std::size_t i, std::size_t) { sum += int(i); });
  REQUIRE(sum.load() == 45);
}

TEST_CASE("ThreadPool shuts down cleanly, idle or after sleeping") {
  { ThreadPool idle(4); }
  ThreadPool pool(2, std::chrono::microseconds(0));  // workers go to sleep at once
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::atomic<int> n{0};
  pool.run(8, [&](std::size_t, std::size_t) { ++n; });
  REQUIRE(n.load() == 8);
  REQUIRE_THROWS_WITH(ThreadPool(5000), Catch::Contains("5000 threads"));
}
