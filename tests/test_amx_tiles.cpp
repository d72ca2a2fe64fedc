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
#include <cstring>
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

// nb rows of d floats with every mantissa bit used, split (amx::split_row)
// into rows of d pairs at split + t·d.
struct SplitRows {
  std::vector<float> f;
  std::vector<std::uint32_t> split;
  std::vector<const void*> at;
  SplitRows(std::size_t nb, std::size_t d, std::mt19937& rng) : f(nb * d), split(64 * d) {
    std::normal_distribution<float> nd;
    for (auto& v : f) v = nd(rng) * 2.f;
    for (std::size_t t = 0; t < nb; ++t) {
      amx::split_row(f.data() + t * d, d, split.data() + t * d);
      at.push_back(split.data() + t * d);
    }
  }
};

TEST_CASE("AMX split rows hold each float to 2^-16, in place or not") {
  REQUIRE_AMX_OR_SKIP();
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  const std::size_t d = 64;
  std::vector<float> f(d);
  for (auto& v : f) v = nd(rng) * 1e3f;
  f[0] = 0.f, f[1] = -1.f, f[2] = 3.0000002f, f[3] = -65504.f;
  std::vector<std::uint32_t> out(d);
  amx::split_row(f.data(), d, out.data());
  std::vector<float> in_place(f);
  amx::split_row(in_place.data(), d, reinterpret_cast<std::uint32_t*>(in_place.data()));
  REQUIRE(std::memcmp(in_place.data(), out.data(), d * 4) == 0);
  for (std::size_t i = 0; i < d; ++i) {
    const bf16_t hi{std::uint16_t(out[i] & 0xffffu)}, lo{std::uint16_t(out[i] >> 16)};
    INFO("element " << i << " = " << f[i]);
    CHECK(std::fabs(double(to_float(hi)) + to_float(lo) - f[i]) <= std::ldexp(std::fabs(double(f[i])), -16));
  }
}

TEST_CASE("AMX scores and values over split f32 rows equal the sums in double, for 1-32 jobs and 1-64 tokens") {
  REQUIRE_AMX_OR_SKIP();
  std::mt19937 rng(13);
  std::normal_distribution<float> nd;
  std::uniform_real_distribution<float> ud(0.f, 1.f);
  amx::configure();
  // Rows, queries and probabilities each hold every element to 2^-16 (hi + lo), so a product is within
  // 2^-15 (3.1e-5) of its magnitude, plus f32 sums (an unsplit row or query would be off by ~2^-9).
  constexpr double kTol = 4e-5;
  for (std::size_t d : {32u, 64u, 128u})
    for (std::size_t n : {1u, 6u, 8u, 9u, 20u, 32u})
      for (std::size_t nb : {1u, 15u, 16u, 17u, 33u, 63u, 64u}) {
        const SplitRows rows(nb, d, rng);
        std::vector<float> q(n * d), s(n * 64), p(n * 64), acc(n * d);
        for (auto& v : q) v = nd(rng) * 3.f;
        for (auto& v : s) v = nd(rng);
        for (auto& v : p) v = ud(rng);
        for (auto& v : acc) v = nd(rng);
        const std::vector<float> s0(s), acc0(acc);
        std::vector<const float*> qs(n), ps(n);
        std::vector<float*> ss(n), as(n);
        for (std::size_t j = 0; j < n; ++j)
          qs[j] = q.data() + j * d, ss[j] = s.data() + j * 64, ps[j] = p.data() + j * 64, as[j] = acc.data() + j * d;
        Aligned qt(amx::query_slot_floats(d)), work(amx::call_work_floats(d));
        amx::pack_split_queries(n, qs.data(), d, reinterpret_cast<std::uint16_t*>(qt.p));
        amx::scores(n, reinterpret_cast<const std::uint16_t*>(qt.p), rows.at.data(), nb, 2 * d, ss.data(), work.p);
        amx::values_split(n, ps.data(), rows.split.data(), nb, d, as.data(), work.p);
        double worst_s = 0, worst_v = 0;
        for (std::size_t j = 0; j < n; ++j) {
          for (std::size_t t = 0; t < 64; ++t) {
            double want = s0[j * 64 + t], mag = 1;
            if (t < nb)
              for (std::size_t i = 0; i < d; ++i) {
                want += double(q[j * d + i]) * rows.f[t * d + i];
                mag += std::fabs(double(q[j * d + i]) * rows.f[t * d + i]);
              }
            worst_s = std::max(worst_s, std::fabs(s[j * 64 + t] - want) / mag);
          }
          for (std::size_t i = 0; i < d; ++i) {
            double want = acc0[j * d + i], mag = 1;
            for (std::size_t t = 0; t < nb; ++t) {
              want += double(p[j * 64 + t]) * rows.f[t * d + i];
              mag += std::fabs(double(p[j * 64 + t]) * rows.f[t * d + i]);
            }
            worst_v = std::max(worst_v, std::fabs(acc[j * d + i] - want) / mag);
          }
        }
        INFO("d " << d << " jobs " << n << " tokens " << nb);
        REQUIRE(worst_s < kTol);
        REQUIRE(worst_v < kTol);
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
  REQUIRE_THROWS_WITH(amx::pack_split_queries(4, qs.data(), 256, packed), Catch::Contains("head size 256"));
  REQUIRE_THROWS_WITH(amx::values_split(4, qs.data(), nullptr, 65, 64, ss.data(), work.p),
                      Catch::Contains("65 tokens"));
  REQUIRE_THROWS_WITH(amx::values_split(33, qs.data(), nullptr, 64, 64, ss.data(), work.p),
                      Catch::Contains("33 jobs"));
  amx::release();
  CHECK(s == std::vector<float>(33 * 65, 0.f));  // nothing written
}

TEST_CASE("AMX tiles take head sizes that are multiples of 32 up to 256, split rows up to 128") {
  CHECK(amx::fits(32));
  CHECK(amx::fits(64));
  CHECK(amx::fits(256));
  CHECK_FALSE(amx::fits(80));
  CHECK(amx::split_fits(32));
  CHECK(amx::split_fits(128));
  CHECK_FALSE(amx::split_fits(256));
  CHECK_FALSE(amx::split_fits(48));
  CHECK_FALSE(amx::fits(0));
  CHECK_FALSE(amx::fits(288));
  if (!HEADRECON_HAS_AMX) CHECK_FALSE(amx::usable());
}

}  // namespace
}  // namespace headrecon
