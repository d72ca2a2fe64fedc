#pragma once
// Test helper: HeadMoments of a SyntheticModel, accumulated in batches.
#include <vector>

#include "headrecon/head_moments.hpp"
#include "headrecon/synthetic.hpp"

namespace headrecon::testing {
inline HeadMoments synthetic_stats(const SyntheticModel& m, Kind kind, RefScope scope, std::size_t tokens,
                                   std::size_t batch = 500, HoldoutSplit split = {}) {
  const auto& s = m.spec();
  const std::size_t H = std::size_t(m.n_heads(kind)), d = std::size_t(s.head_dim);
  HeadMoments hm(s.n_layers, m.n_heads(kind), s.head_dim, scope);
  std::vector<std::vector<float>> bufs(std::size_t(s.n_layers));
  for (std::size_t t0 = 0; t0 < tokens; t0 += batch) {
    const std::size_t n = std::min(batch, tokens - t0);
    std::vector<AnyHeadsView> views;
    for (std::int32_t l = 0; l < s.n_layers; ++l) {
      auto& b = bufs[std::size_t(l)];
      b.resize(n * H * d);
      m.generate(kind, l, t0, n, b.data());
      views.push_back(erase(make_view<const float>(b.data(), b.size(), Extents3{n, H, d}, Layout::token_major)));
    }
    hm.add(views, t0, split);
  }
  return hm;
}
}  // namespace headrecon::testing
