#pragma once
// How well each head is predicted by 1..K reference heads of the same kind:
// greedy forward selection per target head (at each step the candidate that
// most raises the training-split R² is added), scored in-sample and on the
// held-out split. References come from the target's own layer (same-layer)
// or from its layer and earlier ones (cross-layer; optionally a window of the
// previous W layers, which keeps the statistics of the 9-head Q small).
// Everything comes from the library's streaming statistics (HeadMoments).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "headrecon/accumulate.hpp"
#include "headrecon/head_moments.hpp"
#include "llama.hpp"

namespace headrecon_engine {

struct R2Curve {
  std::string model;  // "trained" or "random"
  headrecon::Kind kind = headrecon::Kind::k;
  std::string scope;  // "same-layer", "cross-layer" or "cross-layer(wN)"
  int layer = 0, head = 0;
  std::vector<headrecon::HeadId> refs;        // in order of choice (global layer indices)
  std::vector<double> heldout, in_sample;     // [k-1] for k = 1..refs.size()
};

struct AnalysisOptions {
  int max_k = 5;
  /// Near-OLS fit (relative ridge 1e-6) for every candidate set.
  headrecon::FitOptions fit{headrecon::RidgeMode::fixed, 1e-6, 1e-6};
  int threads = 2;
};

/// Runs f(i) for i in [0, n) on `threads` threads (BLAS set to 1 thread meanwhile).
template <class F>
void parallel_for(std::size_t n, int threads, F f) {
  const int t = std::max(1, std::min<int>(threads, int(n)));
  if (t == 1) {
    for (std::size_t i = 0; i < n; ++i) f(i);
    return;
  }
  set_blas_threads(1);
  std::atomic<std::size_t> next{0};
  std::vector<std::thread> pool;
  std::exception_ptr err;
  std::atomic<bool> failed{false};
  for (int k = 0; k < t; ++k)
    pool.emplace_back([&] {
      try {
        for (std::size_t i; !failed && (i = next++) < n;) f(i);
      } catch (...) {
        if (!failed.exchange(true)) err = std::current_exception();
      }
    });
  for (auto& th : pool) th.join();
  set_blas_threads(threads);
  if (err) std::rethrow_exception(err);
}

/// Greedy forward selection of up to max_k references of `target` among
/// `cands` (all in `stats`' index space). Selection by training-split R²;
/// both R² recorded after each step.
inline void greedy_curve(const headrecon::HeadMoments& stats, headrecon::HeadId target,
                         std::vector<headrecon::HeadId> cands, const AnalysisOptions& opt, R2Curve& out) {
  std::vector<headrecon::HeadId> refs;
  while (int(refs.size()) < opt.max_k && !cands.empty()) {
    double best = -1e300;
    std::size_t bi = 0;
    headrecon::Evaluation best_ev;
    for (std::size_t i = 0; i < cands.size(); ++i) {
      auto trial = refs;
      trial.push_back(cands[i]);
      headrecon::Evaluation ev = stats.evaluate(target, trial, opt.fit);
      if (ev.in_sample.mean > best) best = ev.in_sample.mean, bi = i, best_ev = std::move(ev);
    }
    refs.push_back(cands[bi]);
    cands.erase(cands.begin() + std::ptrdiff_t(bi));
    out.in_sample.push_back(best_ev.in_sample.mean);
    out.heldout.push_back(best_ev.has_heldout ? best_ev.heldout.mean : NAN);
  }
  out.refs = refs;
}

/// Curves of every head of `stats` (same-layer or all-earlier-layers scope).
inline std::vector<R2Curve> r2_curves(const headrecon::HeadMoments& stats, headrecon::Kind kind,
                                      const std::string& model, const AnalysisOptions& opt) {
  using headrecon::HeadId;
  const int L = stats.n_layers(), H = stats.n_heads();
  const bool same = stats.scope() == headrecon::RefScope::same_layer;
  std::vector<R2Curve> out(std::size_t(L * H));
  parallel_for(out.size(), opt.threads, [&](std::size_t i) {
    const HeadId t{int(i) / H, int(i) % H};
    std::vector<HeadId> cands;
    for (int l = same ? t.layer : 0; l <= t.layer; ++l)
      for (int h = 0; h < H; ++h)
        if (!(HeadId{l, h} == t)) cands.push_back({l, h});
    R2Curve& c = out[i];
    c.model = model;
    c.kind = kind;
    c.scope = same ? "same-layer" : "cross-layer";
    c.layer = t.layer;
    c.head = t.head;
    greedy_curve(stats, t, cands, opt, c);
  });
  return out;
}

/// Cross-layer statistics over a window: for every layer l, one HeadMoments
/// over layers max(0, l - window)..l (one pass over the file for all of them).
inline std::vector<headrecon::HeadMoments> windowed_moments(const headrecon::ActivationReader& acts,
                                                            headrecon::Kind kind, int window,
                                                            const headrecon::AccumulateOptions& opt, int threads) {
  const std::size_t L = acts.n_layers();
  const int H = int(acts.n_heads(kind)), d = int(acts.head_dim());
  std::vector<headrecon::HeadMoments> hm;
  for (std::size_t l = 0; l < L; ++l) {
    const std::size_t l0 = l >= std::size_t(window) ? l - std::size_t(window) : 0;
    hm.emplace_back(int(l - l0 + 1), H, d, headrecon::RefScope::cross_layer);
  }
  std::vector<std::vector<std::byte>> bufs(L);
  std::vector<headrecon::AnyHeadsView> views(L);
  const std::size_t total = opt.max_tokens ? std::min(opt.max_tokens, acts.n_tokens()) : acts.n_tokens();
  for (std::size_t t0 = 0; t0 < total; t0 += opt.batch_tokens) {
    const std::size_t n = std::min(opt.batch_tokens, total - t0);
    for (std::size_t l = 0; l < L; ++l) views[l] = acts.read(l, kind, t0, n, bufs[l]);
    const std::vector<std::int32_t> pos = acts.positions(t0, n);
    parallel_for(L, threads, [&](std::size_t l) {
      const std::size_t l0 = l + 1 - std::size_t(hm[l].n_layers());
      const std::vector<headrecon::AnyHeadsView> sub(views.begin() + std::ptrdiff_t(l0),
                                                     views.begin() + std::ptrdiff_t(l + 1));
      hm[l].add(sub, t0, opt.split, pos.data(), opt.sink_tokens);
    });
  }
  return hm;
}

/// Curves with cross-layer references from a window of previous layers.
inline std::vector<R2Curve> r2_curves_windowed(const std::vector<headrecon::HeadMoments>& hm, headrecon::Kind kind,
                                               int window, const std::string& model, const AnalysisOptions& opt) {
  using headrecon::HeadId;
  const int L = int(hm.size()), H = hm.empty() ? 0 : hm[0].n_heads();
  std::vector<R2Curve> out(std::size_t(L * H));
  parallel_for(out.size(), opt.threads, [&](std::size_t i) {
    const int layer = int(i) / H, head = int(i) % H;
    const headrecon::HeadMoments& s = hm[std::size_t(layer)];
    const int off = layer + 1 - s.n_layers(), tl = s.n_layers() - 1;
    std::vector<HeadId> cands;
    for (int l = 0; l <= tl; ++l)
      for (int h = 0; h < H; ++h)
        if (!(l == tl && h == head)) cands.push_back({l, h});
    R2Curve& c = out[i];
    c.model = model;
    c.kind = kind;
    c.scope = "cross-layer(w" + std::to_string(window) + ")";
    c.layer = layer;
    c.head = head;
    greedy_curve(s, {tl, head}, cands, opt, c);
    for (auto& r : c.refs) r.layer += off;
  });
  return out;
}

/// Mean R² over the heads whose curve reaches k references (NaN if none).
inline double mean_r2_at(const std::vector<R2Curve>& curves, const std::string& model, headrecon::Kind kind,
                         const std::string& scope_prefix, int k, bool heldout) {
  double s = 0;
  std::size_t n = 0;
  for (const auto& c : curves)
    if (c.model == model && c.kind == kind && c.scope.rfind(scope_prefix, 0) == 0 && int(c.refs.size()) >= k) {
      s += heldout ? c.heldout[std::size_t(k - 1)] : c.in_sample[std::size_t(k - 1)];
      ++n;
    }
  return n ? s / double(n) : NAN;
}

}  // namespace headrecon_engine
