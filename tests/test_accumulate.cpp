#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "headrecon/accumulate.hpp"
#include "io_test_util.hpp"

using namespace headrecon;
using headrecon_test::TempDir;

namespace {
constexpr std::size_t kTokens = 300, kHeads = 3, kDim = 64;

// One layer of K (and V) heads: head 2 = a linear map of heads 0 and 1 plus noise.
std::vector<float> make_heads(std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<float> x(kTokens * kHeads * kDim);
  for (std::size_t t = 0; t < kTokens; ++t) {
    float* row = x.data() + t * kHeads * kDim;
    for (std::size_t i = 0; i < 2 * kDim; ++i) row[i] = nd(rng) * (i % 7 == 0 ? 4.f : 1.f);
    for (std::size_t i = 0; i < kDim; ++i) row[2 * kDim + i] = 0.6f * row[i] - 0.3f * row[kDim + (i * 5) % kDim] + 0.05f * nd(rng);
  }
  return x;
}

void write_file(const std::string& path, const std::vector<float>& k, const std::vector<float>& q) {
  ActivationWriter w(path, 1, kTokens, kDim, KindHeads{kHeads, kHeads, 0}, DType::f32, true, false);
  const Extents3 e{kTokens, kHeads, kDim};
  w.write(0, Kind::k, 0, make_view(k.data(), k.size(), e, Layout::token_major));
  w.write(0, Kind::q, 0, make_view(q.data(), q.size(), e, Layout::token_major));
  w.finish();
}

double r2_of_head2(const HeadMoments& hm) {
  return hm.evaluate({0, 2}, {{0, 0}, {0, 1}}, FitOptions{}).in_sample.mean;
}
}  // namespace

TEST_CASE("accumulate: cache_type rounds every K/V vector as the cache would, queries untouched", "[accumulate]") {
  TempDir dir;
  const std::vector<float> k = make_heads(1), q = make_heads(2);
  for (const char* type : {"q4_0", "q4_0r", "q8_0", "bf16"}) {
    const CacheType ct = CacheType::parse(type);
    // The scalar reference: the same vectors rounded by hand, written to a second file.
    std::vector<float> kr = k;
    for (std::size_t v = 0; v < kTokens * kHeads; ++v) cache_roundtrip(ct, kr.data() + v * kDim, kDim);
    write_file(dir.file("raw.safetensors"), k, q);
    write_file(dir.file("rounded.safetensors"), kr, q);
    const ActivationReader raw(dir.file("raw.safetensors")), rounded(dir.file("rounded.safetensors"));
    AccumulateOptions opt;
    opt.scope = RefScope::same_layer;
    opt.batch_tokens = 77;  // batches that do not divide the tokens
    const HeadMoments exact = accumulate(raw, Kind::k, opt);
    const HeadMoments by_hand = accumulate(rounded, Kind::k, opt);
    opt.cache_type = ct;
    const HeadMoments on_cache = accumulate(raw, Kind::k, opt);
    INFO(type);
    CHECK(r2_of_head2(on_cache) == r2_of_head2(by_hand));
    CHECK(r2_of_head2(on_cache) != r2_of_head2(exact));
    // Queries are never rounded (the cache holds no queries).
    const double q_on_cache = r2_of_head2(accumulate(raw, Kind::q, opt));
    opt.cache_type.reset();
    CHECK(q_on_cache == r2_of_head2(accumulate(raw, Kind::q, opt)));
  }
  AccumulateOptions bad;
  bad.cache_type = CacheType::parse("q4_0");
  TempDir d2;
  {
    ActivationWriter w(d2.file("odd.safetensors"), 1, 4, 48, KindHeads{0, 2, 0}, DType::f32, true, false);
    std::vector<float> x(4 * 2 * 48, 1.f);
    w.write(0, Kind::k, 0, make_view(x.data(), x.size(), Extents3{4, 2, 48}, Layout::token_major));
    w.finish();
  }
  const ActivationReader odd(d2.file("odd.safetensors"));
  REQUIRE_THROWS_WITH(accumulate(odd, Kind::k, bad), Catch::Contains("q4_0") && Catch::Contains("48"));
}
