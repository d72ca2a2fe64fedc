#pragma once
/// @file accumulate.hpp
/// Streams an activation file into HeadMoments, one token batch at a time
/// (memory: one batch of every layer, never the whole file).

#include <cstddef>
#include <vector>

#include "headrecon/activations_io.hpp"
#include "headrecon/head_moments.hpp"

namespace headrecon {

struct AccumulateOptions {
  RefScope scope = RefScope::cross_layer;
  HoldoutSplit split{};
  std::int32_t sink_tokens = 0;     ///< tokens at positions < sink_tokens are skipped (kept exact by engines)
  std::size_t batch_tokens = 2048;  ///< tokens read per batch
  std::size_t max_tokens = 0;       ///< 0 = all tokens of the file
};

/// Statistics of every head of `kind` in the file. Throws Error naming the
/// file when the kind is absent, and (from Moments) the batch row/column of
/// any non-finite value.
inline HeadMoments accumulate(const ActivationReader& acts, Kind kind, const AccumulateOptions& opt) {
  opt.split.validate();
  if (!acts.has(kind)) detail::fail(acts.path(), ": no '", kind_name(kind), "' activations in this file");
  if (opt.batch_tokens == 0) detail::fail("accumulate: batch_tokens must be positive");
  const std::size_t L = acts.n_layers();
  HeadMoments hm(std::int32_t(L), std::int32_t(acts.n_heads(kind)), std::int32_t(acts.head_dim()), opt.scope);
  std::vector<std::vector<std::byte>> bufs(L);
  std::vector<AnyHeadsView> views(L);
  const std::size_t total = opt.max_tokens ? std::min(opt.max_tokens, acts.n_tokens()) : acts.n_tokens();
  for (std::size_t t0 = 0; t0 < total; t0 += opt.batch_tokens) {
    const std::size_t n = std::min(opt.batch_tokens, total - t0);
    for (std::size_t l = 0; l < L; ++l) views[l] = acts.read(l, kind, t0, n, bufs[l]);
    const std::vector<std::int32_t> pos = acts.positions(t0, n);
    try {
      hm.add(views, t0, opt.split, pos.data(), opt.sink_tokens);
    } catch (const Error& e) {
      detail::fail(acts.path(), ": ", kind_name(kind), " activations, tokens ", t0, "..", t0 + n - 1, ": ",
                   e.what());
    }
  }
  return hm;
}

}  // namespace headrecon
