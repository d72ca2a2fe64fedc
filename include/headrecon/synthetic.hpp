#pragma once
/// @file synthetic.hpp
/// Activations with planted linear structure, for tests, demos and benchmarks.
/// In every layer and kind, the first max(2, ceil(H/2)) heads are independent "base"
/// heads (correlated components, non-zero mean); each other head is
/// "derived": y = Wᵀ[x_a; x_b] + b + noise·ε for two base heads a, b of the
/// same layer. Values depend only on (seed, kind, layer, token), so any
/// batching gives the same data.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "headrecon/dtype.hpp"
#include "headrecon/plan.hpp"

namespace headrecon {

struct SyntheticSpec {
  std::int32_t n_layers = 4;
  std::int32_t n_heads = 4;       ///< K/V heads per layer
  std::int32_t q_per_kv = 1;      ///< GQA group size: Q has n_heads·q_per_kv heads
  std::int32_t head_dim = 32;
  double noise = 0.1;             ///< std of the noise added to derived heads
  std::uint64_t seed = 1;
};

class SyntheticModel {
 public:
  /// A derived head's planted map.
  struct Planted {
    std::vector<std::int32_t> refs;  ///< base heads of the same layer
    std::vector<float> weight;       ///< [2d, d]
    std::vector<float> bias;         ///< [d]
  };

  explicit SyntheticModel(SyntheticSpec s) : spec_(s) {
    if (s.n_layers <= 0 || s.n_heads <= 0 || s.q_per_kv <= 0 || s.head_dim <= 0 || !(s.noise >= 0))
      detail::fail("synthetic: layers, heads, q_per_kv and head_dim must be positive and noise >= 0");
    for (int k = 0; k < 3; ++k) {
      const std::int32_t H = n_heads(Kind(k));
      auto& per_layer = planted_[k];
      per_layer.resize(std::size_t(s.n_layers));
      for (std::int32_t l = 0; l < s.n_layers; ++l) {
        auto& heads = per_layer[std::size_t(l)];
        heads.resize(std::size_t(H));
        Rng rng(mix(s.seed, 1000 + std::uint64_t(k), std::uint64_t(l), 0));
        const std::int32_t base = n_base(Kind(k));
        const std::size_t d = std::size_t(s.head_dim);
        for (std::int32_t h = base; h < H && base >= 2; ++h) {
          Planted p;
          const auto a = std::int32_t(rng.next() % std::uint64_t(base));
          auto b = std::int32_t(rng.next() % std::uint64_t(base - 1));
          if (b >= a) ++b;
          p.refs = std::vector<std::int32_t>{std::min(a, b), std::max(a, b)};
          p.weight.resize(2 * d * d);
          for (auto& w : p.weight) w = float(rng.normal() / std::sqrt(2.0 * double(d)));
          p.bias.resize(d);
          for (auto& v : p.bias) v = float(rng.normal());
          heads[std::size_t(h)] = std::move(p);
        }
      }
    }
  }

  const SyntheticSpec& spec() const { return spec_; }
  std::int32_t n_heads(Kind k) const { return k == Kind::q ? spec_.n_heads * spec_.q_per_kv : spec_.n_heads; }
  /// Base (unpredictable) heads are 0 .. n_base−1 (at least 2, about half);
  /// the rest are derived.
  std::int32_t n_base(Kind k) const { return std::min(n_heads(k), std::max(2, (n_heads(k) + 1) / 2)); }
  /// The planted map of a derived head, or nullptr for a base head.
  const Planted* planted(Kind k, std::int32_t layer, std::int32_t head) const {
    const auto& p = planted_[int(k)][std::size_t(layer)][std::size_t(head)];
    return p.refs.empty() ? nullptr : &p;
  }

  /// Writes tokens [token0, token0+n) of (kind, layer) as token-major
  /// [n, heads, head_dim] floats into out.
  void generate(Kind k, std::int32_t layer, std::uint64_t token0, std::size_t n, float* out) const {
    const std::size_t H = std::size_t(n_heads(k)), d = std::size_t(spec_.head_dim);
    const std::size_t base = std::size_t(n_base(k));
    for (std::size_t t = 0; t < n; ++t) {
      Rng rng(mix(spec_.seed, std::uint64_t(k), std::uint64_t(layer), token0 + t));
      float* row = out + t * H * d;
      for (std::size_t h = 0; h < base; ++h) {
        // Correlated components with a head-specific mean and scale.
        double prev = 0.0;
        for (std::size_t i = 0; i < d; ++i) {
          prev = 0.6 * prev + rng.normal();
          row[h * d + i] = float(0.5 * double(h + 1) + (1.0 + 0.02 * double(i)) * prev);
        }
      }
      for (std::size_t h = base; h < H; ++h) {
        const Planted* p = planted(k, layer, std::int32_t(h));
        for (std::size_t j = 0; j < d; ++j) {
          double y = p ? double(p->bias[j]) : 0.0;
          if (p)
            for (std::size_t r = 0; r < 2; ++r)
              for (std::size_t i = 0; i < d; ++i)
                y += double(p->weight[(r * d + i) * d + j]) * double(row[std::size_t(p->refs[r]) * d + i]);
          row[h * d + j] = float(y + spec_.noise * rng.normal());
        }
      }
    }
  }

 private:
  struct Rng {
    std::uint64_t s;
    explicit Rng(std::uint64_t seed) : s(seed) {}
    std::uint64_t next() {
      std::uint64_t z = (s += 0x9e3779b97f4a7c15ull);
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      return z ^ (z >> 31);
    }
    double uniform() { return (double(next() >> 11) + 0.5) * 0x1.0p-53; }
    double normal() {
      const double u = uniform(), v = uniform();
      return std::sqrt(-2.0 * std::log(u)) * std::cos(6.283185307179586 * v);
    }
  };
  static std::uint64_t mix(std::uint64_t a, std::uint64_t b, std::uint64_t c, std::uint64_t d) {
    Rng r(a * 0x100000001b3ull ^ (b << 48) ^ (c << 32) ^ d);
    r.next();
    return r.next() ^ d * 0xd6e8feb86659fd93ull;
  }

  SyntheticSpec spec_;
  std::vector<std::vector<Planted>> planted_[3];
};

}  // namespace headrecon
