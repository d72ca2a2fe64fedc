#pragma once
/// @file random.hpp
/// The random baseline: per layer, a uniformly random set of H − round(budget·H)
/// heads is rebuilt; each target takes up to k (= --refs, default 5) references
/// drawn uniformly from the heads it may use (cached heads of its layer, and of
/// earlier layers under cross-layer scope). Deterministic for a given seed.

#include <random>

#include "headrecon/select.hpp"

namespace headrecon {

class RandomSelection : public SelectionStrategy {
 public:
  std::string name() const override { return "random"; }
  Selection select(const HeadMoments& stats, const SelectionOptions& opt) const override {
    const ScopedBlasThreads one_thread(1);  // many small LAPACK calls (blas_threads.hpp)
    opt.validate();
    const int k = opt.max_refs > 0 ? opt.max_refs : 5;
    const std::int32_t H = stats.n_heads();
    std::mt19937_64 rng(opt.seed);
    Selection sel;
    sel.layers.resize(std::size_t(stats.n_layers()));
    for (std::int32_t l = 0; l < stats.n_layers(); ++l) {
      std::vector<std::int32_t> heads(static_cast<std::size_t>(H));
      for (std::int32_t h = 0; h < H; ++h) heads[std::size_t(h)] = h;
      std::shuffle(heads.begin(), heads.end(), rng);
      auto& layer = sel.layers[std::size_t(l)];
      for (std::int32_t i = 0; i < target_count(opt, l, H); ++i)
        layer.push_back({{l, heads[std::size_t(i)]}, {}, 0.0});
      const auto cached = sel.cached(H, l);
      for (TargetChoice& t : layer) {
        auto cand = detail::candidates_for(stats, t.target, cached);
        std::shuffle(cand.begin(), cand.end(), rng);
        if (int(cand.size()) > k) cand.resize(std::size_t(k));
        t.refs = cand;
        t.score = stats.evaluate(t.target, t.refs, opt.fit).score();
      }
      std::sort(layer.begin(), layer.end(),
                [](const TargetChoice& a, const TargetChoice& b) { return a.target.head < b.target.head; });
    }
    return sel;
  }
};

}  // namespace headrecon
