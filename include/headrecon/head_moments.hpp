#pragma once
/// @file head_moments.hpp
/// Streaming statistics of every head of one kind (q, k or v) across layers,
/// grouped so that any target can be fitted on any allowed reference set:
/// one joint group per layer (same-layer references), one group over all
/// layers (references from the same or earlier layers), or one group per layer
/// over a window of w earlier layers (references from layers l−w…l).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "headrecon/error.hpp"
#include "headrecon/fit.hpp"
#include "headrecon/moments.hpp"
#include "headrecon/plan.hpp"
#include "headrecon/view.hpp"

namespace headrecon {

/// Where references may come from.
enum class RefScope : std::uint8_t {
  same_layer,    ///< only heads of the target's layer
  cross_layer,   ///< heads of the target's layer or any earlier layer
  cross_layer_window,  ///< heads of layers l−w…l for a target in layer l (HeadMoments' window w)
};

/// A fit of one target on one reference set, scored in-sample and held-out;
/// with a metric G (see loss_metric.hpp) also its loss E[eᵀGe] per token.
struct Evaluation {
  LinearMap map;
  R2Score in_sample;
  R2Score heldout;
  bool has_heldout = false;
  /// Mean eᵀGe per token of the residual e (NaN without a metric), and the
  /// same for the target's own deviation from its mean (the loss of rebuilding
  /// it from nothing), on the held-out split when there is one.
  double loss = std::numeric_limits<double>::quiet_NaN();
  double loss_in_sample = std::numeric_limits<double>::quiet_NaN();
  double loss_base = std::numeric_limits<double>::quiet_NaN();
  /// The selection criterion: held-out mean R² when a held-out split exists.
  double score() const { return has_heldout ? heldout.mean : in_sample.mean; }
};

/// Train/held-out moments of all heads of one kind. Cross-layer statistics
/// cost (L·H·d)² doubles twice; same-layer ones L·(H·d)²; a window of w layers
/// Σ_l ((min(l, w) + 1)·H·d)² (see statistics_bytes).
class HeadMoments {
 public:
  /// `window` (>= 0) is the number of earlier layers a target may draw on
  /// under RefScope::cross_layer_window; other scopes ignore it.
  HeadMoments(std::int32_t n_layers, std::int32_t n_heads, std::int32_t head_dim, RefScope scope,
              std::int32_t window = 0)
      : layers_(n_layers), heads_(n_heads), dim_(head_dim), scope_(scope),
        window_(scope == RefScope::cross_layer_window ? window : 0) {
    if (n_layers <= 0 || n_heads <= 0 || head_dim <= 0)
      detail::fail("HeadMoments: layers, heads and head_dim must be positive (got ", n_layers, ", ",
                   n_heads, ", ", head_dim, ")");
    if (window_ < 0) detail::fail("HeadMoments: window must be >= 0, got ", window);
    const std::size_t groups = scope == RefScope::cross_layer ? 1 : std::size_t(n_layers);
    for (std::size_t g = 0; g < groups; ++g) groups_.emplace_back(group_dim(g));
  }

  /// Bytes the statistics of this shape and scope hold (train and held-out
  /// co-moments in double, the per-accumulator float scratch of add_batch and
  /// one gathered batch of `batch_tokens` rows): an estimate to check before allocating.
  static double statistics_bytes(std::int32_t n_layers, std::int32_t n_heads, std::int32_t head_dim,
                                 RefScope scope, std::int32_t window = 0, std::size_t batch_tokens = 2048) {
    double total = 0.0, widest = 0.0;
    const std::int32_t groups = scope == RefScope::cross_layer ? 1 : n_layers;
    for (std::int32_t g = 0; g < groups; ++g) {
      const std::int32_t layers = scope == RefScope::same_layer    ? 1
                                  : scope == RefScope::cross_layer ? n_layers
                                                                   : std::min(g, window) + 1;
      const double p = double(layers) * double(n_heads) * double(head_dim);
      total += 2.0 * (12.0 * p * p + 16.0 * p);  // m2 (double) + gram scratch (float), mean
      widest = std::max(widest, p);
    }
    return total + 2.0 * 4.0 * double(batch_tokens) * widest;  // gather rows + centered batch
  }
  /// The largest window w (0…L−1) whose statistics_bytes fit `limit` bytes, or −1 when not even w = 0 does.
  static std::int32_t largest_window(std::int32_t n_layers, std::int32_t n_heads, std::int32_t head_dim,
                                     double limit, std::size_t batch_tokens = 2048) {
    std::int32_t best = -1;
    for (std::int32_t w = 0; w < n_layers; ++w) {
      if (statistics_bytes(n_layers, n_heads, head_dim, RefScope::cross_layer_window, w, batch_tokens) > limit) break;
      best = w;
    }
    return best;
  }

  std::int32_t n_layers() const { return layers_; }
  std::int32_t n_heads() const { return heads_; }
  std::int32_t head_dim() const { return dim_; }
  RefScope scope() const { return scope_; }
  /// Earlier layers a target may draw on under RefScope::cross_layer_window (0 otherwise).
  std::int32_t window() const { return window_; }
  /// The accumulator groups (one per layer, or one for RefScope::cross_layer),
  /// for serialization and reduction across processes.
  std::size_t n_groups() const { return groups_.size(); }
  SplitMoments& group_at(std::size_t g) { return groups_.at(g); }
  const SplitMoments& group_at(std::size_t g) const { return groups_.at(g); }
  std::uint64_t train_count() const { return groups_[0].train.count(); }
  std::uint64_t heldout_count() const { return groups_[0].heldout.count(); }

  /// Adds a batch of tokens: `layers[l]` is layer l's [tokens, heads, dim]
  /// view (all layers, same token count). `token0` is the global index of the
  /// batch's first token (it decides the split); tokens whose `positions`
  /// entry (nullable = one sequence starting at token 0) is below
  /// `sink_tokens` are skipped, as engines keep them exact.
  void add(const std::vector<AnyHeadsView>& layers, std::uint64_t token0, const HoldoutSplit& split,
           const std::int32_t* positions = nullptr, std::int32_t sink_tokens = 0) {
    if (layers.size() != std::size_t(layers_))
      detail::fail("HeadMoments::add: got ", layers.size(), " layers, expected ", layers_);
    const std::size_t n = layers.empty() ? 0 : layers[0].extent.tokens;
    for (std::size_t l = 0; l < layers.size(); ++l) {
      const Extents3 e = layers[l].extent;
      if (e.tokens != n || e.heads != std::size_t(heads_) || e.dim != std::size_t(dim_))
        detail::fail("HeadMoments::add: layer ", l, " view is [", e.tokens, ", ", e.heads, ", ", e.dim,
                     "], expected [", n, ", ", heads_, ", ", dim_, "]");
    }
    std::vector<std::size_t> train_rows, test_rows;
    for (std::size_t t = 0; t < n; ++t) {
      const std::int64_t pos = positions ? positions[t] : std::int64_t(token0 + t);
      if (pos < sink_tokens) continue;
      (split.is_heldout(token0 + t, std::uint64_t(pos)) ? test_rows : train_rows).push_back(t);
    }
    for (std::size_t g = 0; g < groups_.size(); ++g) {
      gather(layers, g, train_rows, token0);
      groups_[g].train.add_batch(rows_.data(), train_rows.size(), group_dim(g));
      gather(layers, g, test_rows, token0);
      groups_[g].heldout.add_batch(rows_.data(), test_rows.size(), group_dim(g));
    }
  }

  /// Adds another accumulator's statistics (same shape and scope).
  void merge(const HeadMoments& o) {
    if (o.layers_ != layers_ || o.heads_ != heads_ || o.dim_ != dim_ || o.scope_ != scope_ || o.window_ != window_)
      detail::fail("HeadMoments::merge: shapes or scopes differ");
    for (std::size_t g = 0; g < groups_.size(); ++g) groups_[g].merge(o.groups_[g]);
  }

  /// True when `ref` may serve as a reference of `target` under this scope.
  bool allowed(HeadId target, HeadId ref) const {
    if (ref == target) return false;
    if (scope_ == RefScope::same_layer) return ref.layer == target.layer;
    return ref.layer <= target.layer && (scope_ == RefScope::cross_layer || ref.layer >= target.layer - window_);
  }

  /// Fits `target` on `refs` (training split) and scores it on both splits;
  /// with `metric` (d×d row-major, symmetric PSD) also its loss.
  /// `in_sample` false skips the training-split scores (in_sample, loss_in_sample)
  /// when a held-out split exists: selection needs only the held-out side.
  Evaluation evaluate(HeadId target, const std::vector<HeadId>& refs, const FitOptions& opt,
                      const double* metric = nullptr, bool in_sample = true) const {
    check(target, "target");
    if (refs.empty()) detail::fail("evaluate: target (", target.layer, ", ", target.head, ") has no references");
    for (HeadId r : refs) {
      check(r, "reference");
      if (!allowed(target, r))
        detail::fail("evaluate: head (", r.layer, ", ", r.head, ") cannot be a reference of (", target.layer,
                     ", ", target.head, ") under this scope");
    }
    const SplitMoments& g = groups_[group_of(target)];
    std::vector<std::size_t> blocks;
    for (HeadId r : refs) blocks.push_back(block_in(r, group_of(target)));
    const auto x = head_columns(blocks, std::size_t(dim_));
    const auto y = head_columns({block_in(target, group_of(target))}, std::size_t(dim_));
    Evaluation ev;
    ev.map = fit_ridge(g.train, x, y, opt);
    ev.has_heldout = g.heldout.count() >= 2;
    const bool train_side = in_sample || !ev.has_heldout;
    if (train_side) ev.in_sample = score_r2(g.train, x, y, ev.map);
    if (ev.has_heldout) ev.heldout = score_r2(g.heldout, x, y, ev.map);
    if (metric) {
      const std::size_t d = std::size_t(dim_);
      const std::vector<double> gm(metric, metric + d * d);
      const Moments& side = ev.has_heldout ? g.heldout : g.train;
      if (train_side)
        ev.loss_in_sample = metric_trace(gm, residual_comoment(g.train, x, y, ev.map), double(g.train.count()));
      ev.loss = ev.has_heldout ? metric_trace(gm, residual_comoment(side, x, y, ev.map), double(side.count()))
                               : ev.loss_in_sample;
      const auto& m2 = side.comoment();
      const std::size_t p = side.dim();
      double base = 0.0;
      for (std::size_t i = 0; i < d; ++i)
        for (std::size_t j = 0; j < d; ++j) base += gm[i * d + j] * m2[y[i] * p + y[j]];
      ev.loss_base = base / double(side.count());
    }
    return ev;
  }

  /// Training and held-out statistics of the group that holds target `h`, and
  /// the column index of component 0 of `h` in them; column(r, target) is the
  /// column of reference r (allowed(target, r) or r == target) in target's group.
  const SplitMoments& group(HeadId h) const {
    check(h, "head");
    return groups_[group_of(h)];
  }
  std::size_t column(HeadId h) const { return block_in(h, group_of(h)) * std::size_t(dim_); }
  std::size_t column(HeadId r, HeadId target) const {
    if (!(r == target) && !allowed(target, r))
      detail::fail("HeadMoments::column: head (", r.layer, ", ", r.head, ") is not in the group of (", target.layer,
                   ", ", target.head, ")");
    return block_in(r, group_of(target)) * std::size_t(dim_);
  }

 private:
  // First layer and one-past-last layer of group g.
  std::size_t first_layer(std::size_t g) const {
    if (scope_ == RefScope::cross_layer) return 0;
    if (scope_ == RefScope::same_layer) return g;
    return g >= std::size_t(window_) ? g - std::size_t(window_) : 0;
  }
  std::size_t end_layer(std::size_t g) const { return scope_ == RefScope::cross_layer ? std::size_t(layers_) : g + 1; }
  std::size_t group_dim(std::size_t g) const {
    return (end_layer(g) - first_layer(g)) * std::size_t(heads_) * std::size_t(dim_);
  }
  std::size_t group_of(HeadId h) const { return scope_ == RefScope::cross_layer ? 0 : std::size_t(h.layer); }
  std::size_t block_in(HeadId h, std::size_t g) const {
    return (std::size_t(h.layer) - first_layer(g)) * std::size_t(heads_) + std::size_t(h.head);
  }
  void check(HeadId h, const char* what) const {
    if (h.layer < 0 || h.layer >= layers_ || h.head < 0 || h.head >= heads_)
      detail::fail("evaluate: ", what, " (", h.layer, ", ", h.head, ") is outside ", layers_, " layers x ",
                   heads_, " heads");
  }
  // Gathers rows `sel` of group g into rows_ as float [sel.size(), group_dim()];
  // a non-finite value is an Error naming its layer, token, head and component.
  void gather(const std::vector<AnyHeadsView>& layers, std::size_t g, const std::vector<std::size_t>& sel,
              std::uint64_t token0) {
    const std::size_t gd = group_dim(g), d = std::size_t(dim_);
    rows_.resize(sel.size() * gd);
    const std::size_t l0 = first_layer(g), l1 = end_layer(g);
    for (std::size_t l = l0; l < l1; ++l) {
      layers[l].visit([&](auto v) {
        for (std::size_t r = 0; r < sel.size(); ++r)
          for (std::size_t h = 0; h < std::size_t(heads_); ++h) {
            float* dst = rows_.data() + r * gd + ((l - l0) * std::size_t(heads_) + h) * d;
            const auto* src = v.vec(sel[r], h);
            for (std::size_t i = 0; i < d; ++i) {
              dst[i] = to_float(src[std::ptrdiff_t(i) * v.stride.dim]);
              if (!std::isfinite(dst[i]))
                detail::fail("non-finite value ", dst[i], " at layer ", l, ", token ", token0 + sel[r], ", head ",
                             h, ", component ", i);
            }
          }
      });
    }
  }

  std::int32_t layers_, heads_, dim_;
  RefScope scope_;
  std::int32_t window_;
  std::vector<SplitMoments> groups_;
  std::vector<float> rows_;  // gather scratch
};

}  // namespace headrecon
