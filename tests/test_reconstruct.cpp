// Reconstruction kernel vs a HWY_NOINLINE scalar reference, on every compiled
// Highway target, every cache/output dtype, layouts token-major, head-major
// and paged, non-packed strides, head_dim 64/80/128 and a non-lane-multiple 37.
#include <catch2/catch.hpp>

#include <vector>

#include "headrecon/cpu/reconstruct_args.hpp"
#include "kernel_test_util.hpp"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "test_reconstruct.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "headrecon/cpu/reconstruct-inl.h"

HWY_BEFORE_NAMESPACE();
namespace headrecon {
namespace HWY_NAMESPACE {
inline void CallReconstruct(const ReconstructArgs& a) { Reconstruct(a); }
}  // namespace HWY_NAMESPACE
}  // namespace headrecon
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace headrecon {
HWY_EXPORT(CallReconstruct);

namespace {
using namespace testing;

// Plain double-precision reference for one target and token.
HWY_NOINLINE void reference(const TestCache& cache, const std::vector<std::uint32_t>& refs, const std::vector<float>& w,
                            const std::vector<float>& b, std::size_t t, std::size_t d, std::vector<double>& y,
                            std::vector<double>& mag) {
  for (std::size_t j = 0; j < d; ++j) {
    double s = b[j], m = std::fabs(b[j]);
    for (std::size_t r = 0; r < refs.size(); ++r)
      for (std::size_t i = 0; i < d; ++i) {
        const double term = double(cache.value(t, refs[r], i)) * double(w[(r * d + i) * d + j]);
        s += term;
        m += std::fabs(term);
      }
    y[j] = s;
    mag[j] = m;
  }
}

void run_case(DType cache_t, DType out_t, CacheLayout layout, std::size_t d, std::size_t tokens, std::mt19937& rng) {
  const std::size_t heads = 6, token0 = 3;
  TestCache cache(cache_t, layout, token0 + tokens, heads, d, rng, 0.5f);
  const std::vector<std::vector<std::uint32_t>> refs = {{0}, {1, 2, 0}, {3, 4, 5, 0, 2}};
  std::vector<std::vector<float>> ws, bs;
  std::normal_distribution<float> g(0.f, 1.f);
  std::vector<TestCache> outs;
  std::vector<ReconTarget> targets;
  for (const auto& r : refs) {
    ws.emplace_back(r.size() * d * d);
    for (auto& v : ws.back()) v = g(rng) / std::sqrt(float(r.size() * d));
    bs.emplace_back(d);
    for (auto& v : bs.back()) v = g(rng);
    outs.emplace_back(out_t, layout, token0 + tokens, 1, d, rng);
  }
  std::vector<HeadStream> streams;
  for (std::size_t h = 0; h < heads; ++h) streams.push_back(cache.stream(h));
  for (std::size_t j = 0; j < refs.size(); ++j)
    targets.push_back({ws[j].data(), bs[j].data(), refs[j].data(), refs[j].size(), outs[j].stream(0)});
  std::vector<float> work(reconstruct_workspace_floats(streams.size(), d));

  const std::vector<TestCache> before = outs;
  for (const std::int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    ReconstructArgs a{d, token0, tokens, streams.data(), streams.size(), targets.data(), targets.size(), work.data(), work.size()};
    HWY_DYNAMIC_DISPATCH(CallReconstruct)(a);
    Worst worst;
    std::vector<double> y(d), mag(d);
    for (std::size_t j = 0; j < refs.size(); ++j)
      for (std::size_t t = token0; t < token0 + tokens; ++t) {
        reference(cache, refs[j], ws[j], bs[j], t, d, y, mag);
        for (std::size_t i = 0; i < d; ++i) {
          const double tol = 8.0 * double(refs[j].size() * d) * 0x1p-24 * mag[i] + 2.0 * unit_roundoff(out_t) * std::fabs(y[i]) + 1e-30;
          worst.add(outs[j].value(t, 0, i), y[i], tol, "target " + std::to_string(j) + " token " + std::to_string(t) + " dim " + std::to_string(i));
        }
      }
    INFO(hwy::TargetName(target) << " cache " << dtype_name(cache_t) << " out " << dtype_name(out_t) << " "
                                 << layout_name(layout) << " d=" << d << " tokens=" << tokens << ": " << worst.report());
    REQUIRE(worst.ratio <= 1.0);
    // Tokens before token0 are untouched (still the random fill).
    for (std::size_t j = 0; j < refs.size(); ++j)
      for (std::size_t t = 0; t < token0; ++t)
        for (std::size_t i = 0; i < d; ++i) REQUIRE(outs[j].value(t, 0, i) == before[j].value(t, 0, i));
  }
  hwy::SetSupportedTargetsForTest(0);
}
}  // namespace

TEST_CASE("reconstruction matches the scalar reference on every target, dtype and layout", "[kernel][reconstruct]") {
  std::mt19937 rng(17);
  std::string names;
  for (auto t : hwy::SupportedAndGeneratedTargets()) names += std::string(hwy::TargetName(t)) + " ";
  WARN("reconstruction tested on Highway targets: " << names);
  REQUIRE(!hwy::SupportedAndGeneratedTargets().empty());
  for (DType ct : {DType::f32, DType::f16, DType::bf16, DType::q8_0, DType::q4_0})
    for (DType ot : {DType::f32, DType::f16, DType::bf16})
      for (CacheLayout l : {CacheLayout::token_major, CacheLayout::head_major, CacheLayout::paged})
        run_case(ct, ot, l, 64, 21, rng);
  for (std::size_t tokens : {1u, 16u, 33u}) run_case(DType::q4_0, DType::f32, CacheLayout::paged, 128, tokens, rng);
  for (std::size_t d : {80u, 128u, 37u})
    for (std::size_t tokens : {1u, 7u, 16u, 33u}) run_case(DType::bf16, DType::f32, CacheLayout::paged, d, tokens, rng);
}

TEST_CASE("reconstruction rejects a short workspace and bad reference indices", "[kernel][reconstruct]") {
  std::vector<float> w(64 * 64, 0.f), b(64, 0.f), out(64 * 4);
  std::vector<float> x(64 * 4, 1.f);
  HeadStream s{x.data(), DType::f32, 0, 64, nullptr, 0, 0}, o{out.data(), DType::f32, 0, 64, nullptr, 0, 0};
  std::uint32_t bad_ref = 3;
  ReconTarget t{w.data(), b.data(), &bad_ref, 1, o};
  std::vector<float> work(reconstruct_workspace_floats(1, 64));
  ReconstructArgs a{64, 0, 4, &s, 1, &t, 1, work.data(), work.size()};
  REQUIRE_THROWS_WITH(HWY_DYNAMIC_DISPATCH(CallReconstruct)(a), Catch::Contains("reference 3 of 1 streams"));
  std::uint32_t ok_ref = 0;
  t.refs = &ok_ref;
  a.workspace_floats = 10;
  REQUIRE_THROWS_WITH(HWY_DYNAMIC_DISPATCH(CallReconstruct)(a), Catch::Contains("workspace"));
}
}  // namespace headrecon
#endif  // HWY_ONCE
