// AMX-BF16 score and value tiles (cpu/amx_tiles.hpp) against a scalar double
// reference: 1..32 jobs (one and two tile groups, partial groups), 1..64
// tokens (partial token tiles, one and two steps of 32), head sizes 32..256,
// rows evenly spaced (read in place) and rows across pages (copied). The
// tolerance, 1e-5 of the sum of |terms|, is 50x below the error of an
// unsplit bf16 query or probability (2^-9), so the hi + lo split is checked.
// Skipped where the CPU or the OS has no AMX (the attention tests then cover
// the FMA path alone).
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <vector>

#include "headrecon/cpu/amx_tiles.hpp"
#include "headrecon/dtype.hpp"

namespace headrecon {
namespace {

#define REQUIRE_AMX_OR_SKIP()                                                      \
  do {                                                                             \
    if (!amx::usable()) {                                                          \
      WARN("skipped: no AMX (CPU, OS permission or HEADRECON_NO_AMX)");            \
      return;                                                                      \
    }                                                                              \
  } while (0)

// 64-byte aligned floats (the work buffers' contract).
struct Aligned {
  explicit Aligned(std::size_t n) : p(static_cast<float*>(std::aligned_alloc(64, (n * 4 + 63) / 64 * 64))) {}
  ~Aligned() { std::free(p); }
  Aligned(const Aligned&) = delete;
  Aligned& operator=(const Aligned&) = delete;
  float* p;
};

// nb bf16 rows of d: evenly spaced (`paged` false) or in pages of 8 rows
// placed out of order, with padding between rows.
struct Rows {
  std::vector<bf16_t> store;
  std::vector<const void*> at;
  Rows(std::size_t nb, std::size_t d, bool paged, std::mt19937& rng) {
    std::normal_distribution<float> nd;
    const std::size_t stride = d + 16, page = 8 * stride, pages = (nb + 7) / 8;
    store.resize(pages * page + 32);
    for (auto& v : store) v = to_bf16(nd(rng));
    for (std::size_t t = 0; t < nb; ++t) {
      const std::size_t pg = paged ? pages - 1 - t / 8 : t / 8;  // pages in reverse order
      at.push_back(store.data() + pg * page + (t % 8) * stride);
    }
  }
  float get(std::size_t t, std::size_t i) const { return to_float(static_cast<const bf16_t*>(at[t])[i]); }
};

TEST_CASE("AMX score tiles equal q·k in double, for 1-32 jobs and 1-64 tokens") {
  REQUIRE_AMX_OR_SKIP();
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  amx::configure();
  for (std::size_t d : {32u, 64u, 128u, 256u})
    for (std::size_t n : {1u, 3u, 8u, 9u, 16u, 20u, 32u})
      for (std::size_t nb : {1u, 15u, 16u, 17u, 32u, 33u, 48u, 63u, 64u})
        for (bool paged : {false, true}) {
          const Rows rows(nb, d, paged, rng);
          std::vector<float> q(n * d), s(n * 64);
          for (auto& v : q) v = nd(rng) * 3.f;
          for (auto& v : s) v = nd(rng);
          const std::vector<float> s0(s);
          std::vector<const float*> qs(n);
          std::vector<float*> ss(n);
          for (std::size_t j = 0; j < n; ++j) qs[j] = q.data() + j * d, ss[j] = s.data() + j * 64;
          Aligned qt(amx::query_tiles_floats(d)), work(amx::work_floats(d));
          amx::pack_queries(n, qs.data(), d, reinterpret_cast<std::uint16_t*>(qt.p));
          amx::scores(n, reinterpret_cast<const std::uint16_t*>(qt.p), rows.at.data(), nb, d, ss.data(), work.p);
          double worst = 0;
          for (std::size_t j = 0; j < n; ++j)
            for (std::size_t t = 0; t < 64; ++t) {
              double want = s0[j * 64 + t], mag = 1;
              if (t < nb)
                for (std::size_t i = 0; i < d; ++i) {
                  want += double(q[j * d + i]) * rows.get(t, i);
                  mag += std::fabs(double(q[j * d + i]) * rows.get(t, i));
                }
              worst = std::max(worst, std::fabs(s[j * 64 + t] - want) / mag);
            }
          INFO("d " << d << " jobs " << n << " tokens " << nb << (paged ? " paged" : " even"));
          REQUIRE(worst < 1e-5);
        }
  amx::release();
}

TEST_CASE("AMX value tiles equal sum p·v in double, for 1-32 jobs and 1-64 tokens") {
  REQUIRE_AMX_OR_SKIP();
  std::mt19937 rng(11);
  std::normal_distribution<float> nd;
  std::uniform_real_distribution<float> ud(0.f, 1.f);
  amx::configure();
  for (std::size_t d : {32u, 64u, 128u, 256u})
    for (std::size_t n : {1u, 3u, 8u, 9u, 16u, 17u, 20u, 32u})
      for (std::size_t nb : {1u, 2u, 15u, 17u, 31u, 32u, 33u, 47u, 64u})
        for (bool paged : {false, true}) {
          const Rows rows(nb, d, paged, rng);
          std::vector<float> p(n * 64), acc(n * d);
          for (auto& v : p) v = ud(rng);
          for (auto& v : acc) v = nd(rng);
          const std::vector<float> acc0(acc);
          std::vector<const float*> ps(n);
          std::vector<float*> as(n);
          for (std::size_t j = 0; j < n; ++j) ps[j] = p.data() + j * 64, as[j] = acc.data() + j * d;
          Aligned work(amx::work_floats(d));
          // The paged cases also pass rows to prefetch (`next`: here the same
          // rows, nb of them spread over 16 token pairs per step).
          amx::values(n, ps.data(), rows.at.data(), nb, d, as.data(), work.p, paged ? rows.at.data() : nullptr,
                      paged ? nb : 0);
          double worst = 0;
          for (std::size_t j = 0; j < n; ++j)
            for (std::size_t i = 0; i < d; ++i) {
              double want = acc0[j * d + i], mag = 1;
              for (std::size_t t = 0; t < nb; ++t) {
                want += double(p[j * 64 + t]) * rows.get(t, i);
                mag += std::fabs(double(p[j * 64 + t]) * rows.get(t, i));
              }
              worst = std::max(worst, std::fabs(acc[j * d + i] - want) / mag);
            }
          INFO("d " << d << " jobs " << n << " tokens " << nb << (paged ? " paged" : " even"));
          REQUIRE(worst < 1e-5);
        }
  amx::release();
}

TEST_CASE("AMX score tiles carry a NaN query to that job's scores only") {
  REQUIRE_AMX_OR_SKIP();
  std::mt19937 rng(3);
  const std::size_t d = 64, n = 3, nb = 32;
  const Rows rows(nb, d, false, rng);
  std::vector<float> q(n * d, 0.25f), s(n * 32, 0.f);
  q[1 * d + 5] = std::nanf("");
  const float* qs[n] = {q.data(), q.data() + d, q.data() + 2 * d};
  float* ss[n] = {s.data(), s.data() + 32, s.data() + 64};
  Aligned qt(amx::query_tiles_floats(d)), work(amx::work_floats(d));
  amx::configure();
  amx::pack_queries(n, qs, d, reinterpret_cast<std::uint16_t*>(qt.p));
  amx::scores(n, reinterpret_cast<const std::uint16_t*>(qt.p), rows.at.data(), nb, d, ss, work.p);
  amx::release();
  for (std::size_t t = 0; t < nb; ++t) {
    CHECK(std::isfinite(s[t]));
    CHECK(std::isnan(s[32 + t]));
    CHECK(std::isfinite(s[64 + t]));
  }
}

TEST_CASE("AMX tile calls refuse more jobs or tokens than their tiles hold") {
  REQUIRE_AMX_OR_SKIP();
  std::mt19937 rng(5);
  const std::size_t d = 64;
  const Rows rows(65, d, false, rng);
  std::vector<float> q(33 * d, 1.f), s(33 * 65, 0.f);
  std::vector<const float*> qs(33);
  std::vector<float*> ss(33);
  for (std::size_t j = 0; j < 33; ++j) qs[j] = q.data() + j * d, ss[j] = s.data() + j * 65;
  Aligned qt(amx::query_tiles_floats(d)), work(amx::work_floats(d));
  auto* packed = reinterpret_cast<std::uint16_t*>(qt.p);
  REQUIRE_THROWS_WITH(amx::pack_queries(33, qs.data(), d, packed), Catch::Contains("33 jobs"));
  REQUIRE_THROWS_WITH(amx::pack_queries(4, qs.data(), 80, packed), Catch::Contains("head size 80"));
  amx::pack_queries(4, qs.data(), d, packed);
  amx::configure();
  REQUIRE_THROWS_WITH(amx::scores(4, packed, rows.at.data(), 65, d, ss.data(), work.p), Catch::Contains("65 tokens"));
  REQUIRE_THROWS_WITH(amx::values(4, qs.data(), rows.at.data(), 65, d, ss.data(), work.p), Catch::Contains("65 tokens"));
  REQUIRE_THROWS_WITH(amx::values(33, qs.data(), rows.at.data(), 64, d, ss.data(), work.p), Catch::Contains("33 jobs"));
  amx::release();
  CHECK(s == std::vector<float>(33 * 65, 0.f));  // nothing written
}

TEST_CASE("AMX tiles take head sizes that are multiples of 32 up to 256") {
  CHECK(amx::fits(32));
  CHECK(amx::fits(64));
  CHECK(amx::fits(256));
  CHECK_FALSE(amx::fits(80));
  CHECK_FALSE(amx::fits(0));
  CHECK_FALSE(amx::fits(288));
  if (!HEADRECON_HAS_AMX) CHECK_FALSE(amx::usable());
}

}  // namespace
}  // namespace headrecon
