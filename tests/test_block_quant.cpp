// q8_0 / q4_0 blocks: byte-exact against the gguf package's NumPy port of
// ggml's reference quantizers (tests/quant/blocks_fixture.bin, written by
// make_block_fixture.py), round-trip error within the quantization step,
// defined results for degenerate input, the SIMD dequantizer on every
// compiled Highway target, and the Hadamard rotation's algebra.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "headrecon/block_quant.hpp"
#include "headrecon/hadamard.hpp"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "test_block_quant.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "headrecon/cpu/convert-inl.h"

HWY_BEFORE_NAMESPACE();
namespace headrecon {
namespace HWY_NAMESPACE {
inline void CallBlocksToF32(const void* src, DType t, float* dst, size_t n) { BlocksToF32(src, t, dst, n); }
}  // namespace HWY_NAMESPACE
}  // namespace headrecon
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace headrecon {
HWY_EXPORT(CallBlocksToF32);

namespace {

std::vector<unsigned char> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  REQUIRE(f.good());
  return std::vector<unsigned char>(std::istreambuf_iterator<char>(f), {});
}

}  // namespace

TEST_CASE("q8_0 and q4_0 match ggml's reference quantizers byte for byte", "[quant]") {
  const auto bytes = read_file(std::string(HEADRECON_TEST_DATA_DIR) + "/quant/blocks_fixture.bin");
  std::uint32_t n = 0;
  std::memcpy(&n, bytes.data(), 4);
  const std::size_t row = 32 * 4 + 34 + 18;
  REQUIRE(n >= 70);
  REQUIRE(bytes.size() == 4 + n * row);
  for (std::uint32_t r = 0; r < n; ++r) {
    const unsigned char* p = bytes.data() + 4 + r * row;
    float x[32];
    std::memcpy(x, p, sizeof x);
    BlockQ8_0 q8;
    BlockQ4_0 q4;
    quantize_block(x, q8);
    quantize_block(x, q4);
    INFO("row " << r << ", x[0] = " << x[0]);
    CHECK(std::memcmp(&q8, p + 128, 34) == 0);
    CHECK(std::memcmp(&q4, p + 128 + 34, 18) == 0);
  }
}

TEST_CASE("block round trip stays within the quantization step", "[quant]") {
  std::mt19937 rng(3);
  std::normal_distribution<float> g;
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<float> x(128), y(128);
    const float scale = std::pow(10.f, float(trial % 9) - 4.f);
    for (auto& v : x) v = scale * g(rng);
    for (DType t : {DType::q8_0, DType::q4_0}) {
      std::vector<unsigned char> blocks(dtype_row_bytes(t, 128));
      quantize_row(x.data(), 128, t, blocks.data());
      dequantize_row(blocks.data(), 128, t, y.data());
      for (std::size_t b = 0; b < 4; ++b) {
        float amax = 0;
        for (std::size_t j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b * 32 + j]));
        // q8_0: half a step d = amax/127; q4_0: half a step d = amax/8, a full step for the
        // value opposite the extreme (+8 clips to 7); both plus |q|·(f16 rounding of d),
        // which is relative (2^-11) for normal halves and absolute (2^-25) for subnormal ones.
        const float step = t == DType::q8_0 ? amax / 127 : amax / 8, qmax = t == DType::q8_0 ? 127.f : 8.f;
        const float bound = (t == DType::q8_0 ? 0.5f : 1.0f) * step + qmax * std::max(step * 0x1p-11f, 0x1p-25f);
        for (std::size_t j = 0; j < 32; ++j) {
          const float err = std::fabs(x[b * 32 + j] - y[b * 32 + j]);
          INFO(dtype_name(t) << " block " << b << " value " << j << ": " << x[b * 32 + j] << " -> " << y[b * 32 + j]);
          REQUIRE(err <= bound * 1.0001f);
        }
      }
    }
  }
  // Degenerate input gives defined values: all zeros, a subnormal scale, infinities.
  float zeros[32] = {}, tiny[32] = {}, inf[32] = {}, out[32];
  tiny[5] = 1e-40f;
  inf[7] = std::numeric_limits<float>::infinity();
  BlockQ8_0 q8;
  BlockQ4_0 q4;
  for (const float* x : {zeros, tiny, inf}) {
    quantize_block(x, q8);
    quantize_block(x, q4);
    dequantize_block(q8, out);
    if (x == zeros)
      for (float v : out) REQUIRE(v == 0.f);
    dequantize_block(q4, out);
    if (x == zeros)
      for (float v : out) REQUIRE(v == 0.f);
  }
  REQUIRE_THROWS_WITH(quantize_row(zeros, 31, DType::q8_0, &q8), Catch::Contains("31 values"));
  REQUIRE_THROWS_WITH(dtype_size(DType::q4_0), Catch::Contains("block type"));
  REQUIRE(dtype_row_bytes(DType::q8_0, 128) == 4 * 34);
  REQUIRE(dtype_row_bytes(DType::q4_0, 64) == 2 * 18);
}

TEST_CASE("SIMD dequantization equals the scalar one on every target", "[quant][kernel]") {
  std::mt19937 rng(5);
  std::normal_distribution<float> g;
  std::vector<float> x(256), want(256), got(256);
  for (auto& v : x) v = 3.f * g(rng);
  for (DType t : {DType::q8_0, DType::q4_0}) {
    std::vector<unsigned char> blocks(dtype_row_bytes(t, 256) + 1);
    quantize_row(x.data(), 256, t, blocks.data() + 1);  // unaligned on purpose
    dequantize_row(blocks.data() + 1, 256, t, want.data());
    for (const std::int64_t target : hwy::SupportedAndGeneratedTargets()) {
      hwy::SetSupportedTargetsForTest(target);
      HWY_DYNAMIC_DISPATCH(CallBlocksToF32)(blocks.data() + 1, t, got.data(), 256);
      INFO(hwy::TargetName(target) << " " << dtype_name(t));
      REQUIRE(got == want);
    }
    hwy::SetSupportedTargetsForTest(0);
  }
}

TEST_CASE("the Hadamard rotation is orthogonal and its own inverse", "[quant]") {
  std::mt19937 rng(7);
  std::normal_distribution<float> g;
  for (std::size_t n : {1u, 2u, 8u, 64u, 128u}) {
    std::vector<float> x(n), y(n);
    for (auto& v : x) v = g(rng);
    y = x;
    hadamard_rotate(y.data(), n);
    double nx = 0, ny = 0;
    for (std::size_t i = 0; i < n; ++i) nx += double(x[i]) * x[i], ny += double(y[i]) * y[i];
    REQUIRE(std::fabs(nx - ny) <= 1e-5 * nx);
    // Against the explicit matrix: H[i][j] = (-1)^popcount(i & j) / sqrt(n).
    for (std::size_t i = 0; i < n; ++i) {
      double s = 0;
      for (std::size_t j = 0; j < n; ++j) s += (__builtin_popcountll(i & j) % 2 ? -1.0 : 1.0) * x[j];
      REQUIRE(std::fabs(s / std::sqrt(double(n)) - y[i]) <= 1e-5 * (1 + std::fabs(s)));
    }
    hadamard_rotate(y.data(), n);
    for (std::size_t i = 0; i < n; ++i) REQUIRE(std::fabs(y[i] - x[i]) <= 1e-5f * (1 + std::fabs(x[i])));
  }
  float x[3];
  REQUIRE_THROWS_WITH(hadamard_rotate(x, 3), Catch::Contains("length 3"));
}

}  // namespace headrecon
#endif  // HWY_ONCE
