#pragma once
/// @file accumulate.hpp
/// Streams an activation file into HeadMoments, one token batch at a time
/// (memory: one batch of every layer, never the whole file).

#include <cstddef>
#include <optional>
#include <vector>

#include "headrecon/activations_io.hpp"
#include "headrecon/cache_type.hpp"
#include "headrecon/head_moments.hpp"
#include "headrecon/loss_metric.hpp"

namespace headrecon {

struct AccumulateOptions {
  RefScope scope = RefScope::cross_layer;
  std::int32_t window = 0;          ///< earlier layers a target may use under RefScope::cross_layer_window
  HoldoutSplit split{};
  std::int32_t sink_tokens = 0;     ///< tokens at positions < sink_tokens are skipped (kept exact by engines)
  std::size_t batch_tokens = 2048;  ///< tokens read per batch
  std::size_t max_tokens = 0;       ///< 0 = all tokens of the file
  /// When set, every K/V vector is first passed through cache_roundtrip (what
  /// a cache of this type gives back), so the maps are fitted on the
  /// references the kernels will read. Queries are never rounded.
  std::optional<CacheType> cache_type;
};

namespace detail {
/// `v` copied into `buf` as f32 [tokens, heads, dim] with every vector rounded
/// through a cache of type `ct`; returns the view of `buf`.
inline AnyHeadsView roundtrip_view(const AnyHeadsView& v, CacheType ct, std::vector<float>& buf) {
  const Extents3 e = v.extent;
  buf.resize(e.tokens * e.heads * e.dim);
  v.visit([&](auto hv) {
    for (std::size_t t = 0; t < e.tokens; ++t)
      for (std::size_t h = 0; h < e.heads; ++h) {
        float* out = buf.data() + (t * e.heads + h) * e.dim;
        const auto* in = hv.vec(t, h);
        for (std::size_t i = 0; i < e.dim; ++i) out[i] = to_float(in[std::ptrdiff_t(i) * hv.stride.dim]);
        cache_roundtrip(ct, out, e.dim);
      }
  });
  return erase(HeadsView<const float>{buf.data(), e, packed_strides(Layout::token_major, e)});
}
}  // namespace detail

/// Statistics of every head of `kind` in the file. Throws Error naming the
/// file when the kind is absent, and (from Moments) the batch row/column of
/// any non-finite value.
inline HeadMoments accumulate(const ActivationReader& acts, Kind kind, const AccumulateOptions& opt) {
  opt.split.validate();
  if (!acts.has(kind)) detail::fail(acts.path(), ": no '", kind_name(kind), "' activations in this file");
  if (opt.batch_tokens == 0) detail::fail("accumulate: batch_tokens must be positive");
  const std::size_t L = acts.n_layers();
  HeadMoments hm(std::int32_t(L), std::int32_t(acts.n_heads(kind)), std::int32_t(acts.head_dim()), opt.scope,
                 opt.window);
  std::vector<std::vector<std::byte>> bufs(L);
  std::vector<AnyHeadsView> views(L);
  const bool round = opt.cache_type && kind != Kind::q;
  if (round && acts.head_dim() % kQuantBlock != 0 && is_block_type(opt.cache_type->dtype))
    detail::fail(acts.path(), ": cache type ", opt.cache_type->name(), " needs head_dim a multiple of ", kQuantBlock,
                 ", the file has ", acts.head_dim());
  std::vector<std::vector<float>> rounded(round ? L : 0);
  const std::size_t total = opt.max_tokens ? std::min(opt.max_tokens, acts.n_tokens()) : acts.n_tokens();
  for (std::size_t t0 = 0; t0 < total; t0 += opt.batch_tokens) {
    const std::size_t n = std::min(opt.batch_tokens, total - t0);
    for (std::size_t l = 0; l < L; ++l) {
      views[l] = acts.read(l, kind, t0, n, bufs[l]);
      if (round) views[l] = detail::roundtrip_view(views[l], *opt.cache_type, rounded[l]);
    }
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

/// Second moments of every query head in the file (for the key metric), over
/// the tokens at positions >= opt.sink_tokens (all splits: the metric weighs
/// errors, it is not scored). Throws Error naming the file when it has no queries.
inline QueryMoments accumulate_queries(const ActivationReader& acts, const AccumulateOptions& opt) {
  if (!acts.has(Kind::q))
    detail::fail(acts.path(), ": no 'q' activations in this file (the key metric needs the queries)");
  if (opt.batch_tokens == 0) detail::fail("accumulate: batch_tokens must be positive");
  const std::size_t L = acts.n_layers();
  QueryMoments qm(std::int32_t(L), std::int32_t(acts.n_heads(Kind::q)), std::int32_t(acts.head_dim()));
  std::vector<std::byte> buf;
  const std::size_t total = opt.max_tokens ? std::min(opt.max_tokens, acts.n_tokens()) : acts.n_tokens();
  for (std::size_t t0 = 0; t0 < total; t0 += opt.batch_tokens) {
    const std::size_t n = std::min(opt.batch_tokens, total - t0);
    const std::vector<std::int32_t> pos = acts.positions(t0, n);
    for (std::size_t l = 0; l < L; ++l) {
      try {
        qm.add(std::int32_t(l), acts.read(l, Kind::q, t0, n, buf), pos.data(), opt.sink_tokens);
      } catch (const Error& e) {
        detail::fail(acts.path(), ": q activations, tokens ", t0, "..", t0 + n - 1, ": ", e.what());
      }
    }
  }
  return qm;
}

/// Tokens of the file (up to opt.max_tokens) at positions >= opt.sink_tokens,
/// and the largest position seen: what the statistics can use.
inline std::pair<std::size_t, std::int64_t> usable_tokens(const ActivationReader& acts, const AccumulateOptions& opt) {
  const std::size_t total = opt.max_tokens ? std::min(opt.max_tokens, acts.n_tokens()) : acts.n_tokens();
  std::size_t n_ok = 0;
  std::int64_t max_pos = -1;
  for (std::size_t t0 = 0; t0 < total; t0 += 65536) {
    const std::size_t n = std::min<std::size_t>(65536, total - t0);
    for (std::int32_t p : acts.positions(t0, n)) {
      n_ok += p >= opt.sink_tokens;
      max_pos = std::max<std::int64_t>(max_pos, p);
    }
  }
  return {n_ok, max_pos};
}

}  // namespace headrecon
