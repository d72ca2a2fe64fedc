// Conversions against the compiler's own _Float16 (GCC >= 12 on x86) and a
// nearest-candidate bfloat16 reference.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "headrecon/dtype.hpp"

using namespace headrecon;

namespace {
std::uint16_t ref_bf16_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  const std::uint32_t lo = u & 0xffff0000u, hi = lo + 0x10000u;
  float flo, fhi;
  std::memcpy(&flo, &lo, 4);
  std::memcpy(&fhi, &hi, 4);
  const double dl = std::fabs(double(f) - double(flo)), dh = std::fabs(double(f) - double(fhi));
  if (dl < dh) return std::uint16_t(lo >> 16);
  if (dh < dl) return std::uint16_t(hi >> 16);
  return std::uint16_t(((lo >> 16) & 1u) ? hi >> 16 : lo >> 16);
}
}  // namespace

TEST_CASE("f16 -> float is exact for every bit pattern", "[dtype]") {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    _Float16 h;
    const std::uint16_t bits = std::uint16_t(b);
    std::memcpy(&h, &bits, 2);
    const float expect = float(h), got = to_float(f16_t{bits});
    if (std::isnan(expect)) {
      REQUIRE(std::isnan(got));
    } else {
      REQUIRE(std::memcmp(&expect, &got, 4) == 0);
    }
  }
}

TEST_CASE("float -> f16 rounds to nearest even like _Float16", "[dtype]") {
  std::mt19937 rng(1);
  std::uniform_int_distribution<std::uint32_t> bits;
  auto check = [](float f) {
    const _Float16 h = _Float16(f);
    std::uint16_t expect;
    std::memcpy(&expect, &h, 2);
    const std::uint16_t got = to_f16(f).bits;
    if (std::isnan(f)) {
      REQUIRE(std::isnan(to_float(f16_t{got})));
    } else {
      INFO("value " << f);
      REQUIRE(got == expect);
    }
  };
  for (int i = 0; i < 200000; ++i) {
    std::uint32_t u = bits(rng);
    // Concentrate on the half range: exponents around [-26, 17].
    u = (u & 0x807fffffu) | ((100u + (u >> 23) % 46u) << 23);
    float f;
    std::memcpy(&f, &u, 4);
    check(f);
  }
  for (float f : {0.f, -0.f, 65504.f, 65519.99f, 65520.f, 1e-8f, 2.98e-8f, 2.9802322e-8f, 5.96e-8f,
                  6.1035156e-5f, 6.1e-5f, std::numeric_limits<float>::infinity(),
                  -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()})
    check(f);
}

TEST_CASE("bf16 conversions round to nearest even and keep NaN", "[dtype]") {
  std::mt19937 rng(2);
  std::uniform_int_distribution<std::uint32_t> bits;
  for (int i = 0; i < 200000; ++i) {
    const std::uint32_t u = bits(rng);
    float f;
    std::memcpy(&f, &u, 4);
    if (std::isnan(f) || std::isinf(f) || std::fabs(f) > 3.3e38f) continue;
    INFO("bits " << u);
    REQUIRE(to_bf16(f).bits == ref_bf16_bits(f));
    REQUIRE(to_float(to_bf16(f)) == to_float(bf16_t{ref_bf16_bits(f)}));
  }
  REQUIRE(std::isnan(to_float(to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  REQUIRE(std::isnan(to_float(to_bf16(-std::numeric_limits<float>::signaling_NaN()))));
  REQUIRE(to_float(to_bf16(1.0f)) == 1.0f);
  REQUIRE(parse_dtype("BF16") == DType::bf16);
  REQUIRE_THROWS_WITH(parse_dtype("F64"), Catch::Contains("F64"));
}
