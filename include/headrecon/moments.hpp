#pragma once
/// @file moments.hpp
/// Streaming, mergeable sufficient statistics of p-dimensional vectors: count,
/// mean and centered co-moment matrix. They hold everything a least-squares
/// fit of any subset of the p columns on any other subset needs.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "headrecon/detail/lapack.hpp"
#include "headrecon/error.hpp"

namespace headrecon {

/// Count n, mean μ and co-moment M2 = Σ_t (z_t − μ)(z_t − μ)ᵀ of vectors z_t ∈ R^p,
/// kept in double. Batches are centered on their own mean before the float
/// BLAS syrk, then merged with Chan's pairwise update, so large means (e.g.
/// 1e3 with unit variance) lose no precision. merge() of two accumulators
/// equals one pass over both (up to rounding).
class Moments {
 public:
  Moments() = default;
  explicit Moments(std::size_t p) : p_(p), mean_(p, 0.0), m2_(p * p, 0.0) {}

  std::size_t dim() const { return p_; }
  std::uint64_t count() const { return n_; }
  const std::vector<double>& mean() const { return mean_; }
  /// Co-moment entry (i, j) = Σ_t (z_ti − μ_i)(z_tj − μ_j); divide by count for the covariance.
  double comoment(std::size_t i, std::size_t j) const { return m2_[i * p_ + j]; }
  /// Row-major p×p co-moment matrix (symmetric, both triangles filled).
  const std::vector<double>& comoment() const { return m2_; }

  /// Adds n rows of a row-major float matrix (row stride ld ≥ p). Throws Error
  /// naming the row and column of the first non-finite value (nothing is
  /// added then). Any finite float is accepted: each centered column is scaled
  /// by a power of two before the float syrk (exact, undone in double), so
  /// values up to FLT_MAX neither overflow nor, when tiny, underflow.
  /// Not thread-safe on one object; use one per thread and merge.
  void add_batch(const float* rows, std::size_t n, std::size_t ld) {
    if (n == 0) return;
    if (ld < p_) detail::fail("Moments::add_batch: row stride ", ld, " is smaller than dim ", p_);
    std::vector<double> mu(p_, 0.0), amax(p_, 0.0);
    for (std::size_t t = 0; t < n; ++t) {
      const float* r = rows + t * ld;
      for (std::size_t i = 0; i < p_; ++i) {
        if (!std::isfinite(r[i]))
          detail::fail("non-finite value ", r[i], " at row ", t, ", column ", i, " of a batch");
        mu[i] += double(r[i]);
      }
    }
    for (double& m : mu) m /= double(n);
    for (std::size_t t = 0; t < n; ++t) {
      const float* r = rows + t * ld;
      for (std::size_t i = 0; i < p_; ++i) amax[i] = std::max(amax[i], std::fabs(double(r[i]) - mu[i]));
    }
    // Column scale 2^e with |centered| / 2^e <= 1: squares and sums stay in float range.
    std::vector<int> ex(p_, 0);
    std::vector<double> inv(p_, 1.0);
    for (std::size_t i = 0; i < p_; ++i) {
      if (amax[i] > 0.0) std::frexp(amax[i], &ex[i]);
      inv[i] = std::ldexp(1.0, -ex[i]);
    }
    centered_.resize(n * p_);
    for (std::size_t t = 0; t < n; ++t) {
      const float* r = rows + t * ld;
      float* c = centered_.data() + t * p_;
      for (std::size_t i = 0; i < p_; ++i) c[i] = float((double(r[i]) - mu[i]) * inv[i]);
    }
    gram_.assign(p_ * p_, 0.f);
    detail::syrk_upper_rm(int(p_), int(n), centered_.data(), int(p_), gram_.data());
    merge_centered(n, mu.data(),
                   [&](std::size_t i, std::size_t j) { return std::ldexp(double(gram_[i * p_ + j]), ex[i] + ex[j]); });
  }

  /// Adds the statistics of `other` (same dim): the result equals one pass over both.
  void merge(const Moments& other) {
    if (other.p_ != p_) detail::fail("Moments::merge: dims differ (", p_, " vs ", other.p_, ")");
    if (other.n_ == 0) return;
    merge_centered(other.n_, other.mean_.data(),
                   [&](std::size_t i, std::size_t j) { return other.m2_[i * p_ + j]; });
  }

  /// Number of floating-point operations add_batch spends on n rows (the syrk).
  double batch_flops(std::size_t n) const { return double(n) * double(p_) * double(p_ + 1); }

  /// Rebuilds an accumulator from its count, mean (p) and row-major p×p
  /// co-moment, as read from count(), mean() and comoment() of another (for
  /// instance received from another process). Throws Error on inconsistent sizes.
  static Moments from_parts(std::uint64_t n, std::vector<double> mean, std::vector<double> m2) {
    const std::size_t p = mean.size();
    if (m2.size() != p * p) detail::fail("Moments::from_parts: co-moment has ", m2.size(), " entries, expected ", p * p);
    Moments m;
    m.p_ = p;
    m.n_ = n;
    m.mean_ = std::move(mean);
    m.m2_ = std::move(m2);
    return m;
  }

 private:
  template <class Gram>
  void merge_centered(std::uint64_t nb, const double* mub, Gram gram) {
    const double na = double(n_), nbd = double(nb), nt = na + nbd;
    const double w = na * nbd / nt;
    std::vector<double> delta(p_);
    for (std::size_t i = 0; i < p_; ++i) delta[i] = mub[i] - mean_[i];
    for (std::size_t i = 0; i < p_; ++i) {
      double* row = m2_.data() + i * p_;
      for (std::size_t j = i; j < p_; ++j) row[j] += gram(i, j) + w * delta[i] * delta[j];
    }
    for (std::size_t i = 0; i < p_; ++i)
      for (std::size_t j = 0; j < i; ++j) m2_[i * p_ + j] = m2_[j * p_ + i];
    for (std::size_t i = 0; i < p_; ++i) mean_[i] += delta[i] * (nbd / nt);
    n_ += nb;
  }

  std::size_t p_ = 0;
  std::uint64_t n_ = 0;
  std::vector<double> mean_;
  std::vector<double> m2_;
  std::vector<float> centered_;  // scratch: the centered batch
  std::vector<float> gram_;      // scratch: its Gram matrix
};

/// A deterministic train/held-out split of a token stream. By default
/// (block = 0) whole sequences are held out: a token goes with the sequence it
/// belongs to (sequences longer than `max_unit` tokens are cut into chunks of
/// that many, so a file without positions - one long sequence - still
/// splits). Neighbouring tokens of one document are strongly correlated, so
/// splitting inside a sequence leaks: on SmolLM2, token-level hashing reads
/// held-out R² 0.03-0.06 higher. block > 0 instead hashes runs of `block`
/// consecutive tokens of the stream (block = 1: every token on its own). The
/// unit goes to the held-out side when a hash of (unit, seed) falls below
/// `fraction`; no token count is needed in advance, so it streams.
struct HoldoutSplit {
  double fraction = 0.25;
  std::uint64_t block = 0;  ///< 0 = whole sequences (chunks of max_unit); else runs of `block` tokens
  std::uint64_t seed = 0;
  std::uint64_t max_unit = 2048;  ///< longest unit when block = 0

  /// Token `token` of the stream, at `position` in its sequence.
  bool is_heldout(std::uint64_t token, std::uint64_t position) const {
    const std::uint64_t unit =
        block ? token / block : token - (max_unit ? position % max_unit : position);
    return hash_below(unit);
  }
  /// Token `token` of a stream that is one sequence starting at token 0.
  bool is_heldout(std::uint64_t token) const { return is_heldout(token, token); }

  void validate() const {
    if (!(fraction >= 0.0 && fraction < 1.0))
      detail::fail("held-out fraction must be in [0, 1), got ", fraction);
  }
  /// "whole sequences" or "blocks of N tokens".
  std::string describe() const {
    if (block == 0) return "whole sequences (chunks of up to " + std::to_string(max_unit) + " tokens)";
    return block == 1 ? std::string("single tokens") : "blocks of " + std::to_string(block) + " tokens";
  }

 private:
  bool hash_below(std::uint64_t unit) const {
    std::uint64_t z = unit + seed * 0x9e3779b97f4a7c15ull;
    z += 0x9e3779b97f4a7c15ull;  // splitmix64 finalizer
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return double(z >> 11) * 0x1.0p-53 < fraction;
  }
};

/// Training and held-out statistics of the same columns.
struct SplitMoments {
  Moments train, heldout;
  SplitMoments() = default;
  explicit SplitMoments(std::size_t p) : train(p), heldout(p) {}
  void merge(const SplitMoments& o) {
    train.merge(o.train);
    heldout.merge(o.heldout);
  }
};

}  // namespace headrecon
