// A downstream program: fits a plan on a tiny planted-structure model, saves
// and reloads it, rebuilds one head for a few unseen tokens with plain loops
// (y = Wᵀ[x_ref1; ...; x_refk] + b) and checks the error against the true
// values. Exit code 0 when everything matches. Usage: consumer [PLAN_PATH]
#include <headrecon/headrecon.hpp>
#ifdef CONSUMER_USES_DISPATCH
#include <headrecon/cpu/dispatch.hpp>
#endif

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

int main(int argc, char** argv) try {
  using namespace headrecon;
  SyntheticSpec spec;
  spec.n_layers = 2;
  spec.n_heads = 4;
  spec.head_dim = 8;
  spec.noise = 0.01;
  spec.seed = 7;
  const SyntheticModel model(spec);
  const Kind kind = Kind::k;
  const std::size_t H = std::size_t(model.n_heads(kind)), d = std::size_t(spec.head_dim);

  // Statistics of 4000 tokens, streamed in batches of 500.
  HeadMoments stats(spec.n_layers, model.n_heads(kind), spec.head_dim, RefScope::same_layer);
  const HoldoutSplit split{0.25, 1, 0};
  std::vector<std::vector<float>> bufs(std::size_t(spec.n_layers));
  for (std::size_t t0 = 0; t0 < 4000; t0 += 500) {
    std::vector<AnyHeadsView> views;
    for (std::int32_t l = 0; l < spec.n_layers; ++l) {
      auto& b = bufs[std::size_t(l)];
      b.resize(500 * H * d);
      model.generate(kind, l, t0, 500, b.data());
      views.push_back(erase(make_view<const float>(b.data(), b.size(), Extents3{500, H, d}, Layout::token_major)));
    }
    stats.add(views, t0, split);
  }

  // Half of each layer's heads stay cached, at most 2 references per target.
  SelectionOptions opt;
  opt.budget = 0.5;
  opt.max_refs = 2;
  const Selection sel = GreedySelection().select(stats, opt);
  Plan plan;
  plan.head_dim = spec.head_dim;
  plan.n_layers = spec.n_layers;
  plan.post_rope = false;
  plan.kinds.push_back(build_kind_plan(stats, sel, kind, FitOptions{}));

  const std::string path = argc > 1 ? argv[1]
                                    : (std::filesystem::temp_directory_path() / "headrecon-consumer.plan").string();
  save_plan(plan, path);
  const Plan loaded = load_plan(path);
  std::filesystem::remove(path);
  const KindPlan* kp = loaded.find(kind);
  if (!kp || kp->n_targets() != plan.kinds[0].n_targets() || kp->layers[1].empty() ||
      kp->layers[1][0].weight != plan.kinds[0].layers[1][0].weight) {
    std::fprintf(stderr, "consumer: the reloaded plan differs from the saved one\n");
    return 1;
  }

  // Rebuild the first target of layer 1 for 8 tokens the fit never saw.
  const TargetMap& t = kp->layers[1][0];
  const std::size_t n = 8, k = t.refs.size();
  std::vector<float> acts(n * H * d);
  model.generate(kind, 1, 100000, n, acts.data());
  double err2 = 0.0, ref2 = 0.0;
  for (std::size_t tok = 0; tok < n; ++tok) {
    const float* row = acts.data() + tok * H * d;
    for (std::size_t j = 0; j < d; ++j) {
      double y = t.bias[j];
      for (std::size_t r = 0; r < k; ++r)
        for (std::size_t i = 0; i < d; ++i)
          y += double(t.weight[(r * d + i) * d + j]) * double(row[std::size_t(t.refs[r].head) * d + i]);
      const double truth = row[std::size_t(t.target.head) * d + j];
      err2 += (y - truth) * (y - truth);
      ref2 += truth * truth;
    }
  }
  const double rel = std::sqrt(err2 / ref2);
#ifdef CONSUMER_USES_DISPATCH
  // The same head through the SIMD kernel (runtime dispatch) must agree.
  {
    std::vector<float> cache(n * H * d), out(n * d);
    model.generate(kind, 1, 100000, n, cache.data());
    std::vector<HeadStream> streams;
    std::vector<std::uint32_t> refs;
    for (HeadId r : t.refs) {
      refs.push_back(std::uint32_t(streams.size()));
      streams.push_back({cache.data(), DType::f32, std::ptrdiff_t(std::size_t(r.head) * d), std::ptrdiff_t(H * d), nullptr, 0, 0});
    }
    ReconTarget rt{t.weight.data(), t.bias.data(), refs.data(), refs.size(), {out.data(), DType::f32, 0, std::ptrdiff_t(d), nullptr, 0, 0}};
    std::vector<float> work(reconstruct_workspace_floats(streams.size(), d));
    dispatch::reconstruct({d, 0, n, streams.data(), streams.size(), &rt, 1, work.data(), work.size()});
    double diff = 0;
    for (std::size_t tok = 0; tok < n; ++tok)
      for (std::size_t j = 0; j < d; ++j) {
        double y = t.bias[j];
        for (std::size_t r = 0; r < t.refs.size(); ++r)
          for (std::size_t i = 0; i < d; ++i)
            y += double(t.weight[(r * d + i) * d + j]) * cache[tok * H * d + std::size_t(t.refs[r].head) * d + i];
        diff = std::max(diff, std::fabs(y - double(out[tok * d + j])));
      }
    std::printf("consumer: runtime dispatch chose %s, max |kernel - loops| = %.2e\n", dispatch::target_name(), diff);
    if (!(diff < 1e-3)) return 1;
  }
#endif
  std::printf("consumer: headrecon %s, %zu of %zu k heads rebuilt; k.1.%d from %zu refs on %zu new tokens: "
              "relative error %.4f, held-out R2 %.4f\n",
              version_string, kp->n_targets(), H * std::size_t(spec.n_layers), t.target.head, k, n, rel,
              double(t.r2_heldout));
  if (!(rel < 0.05) || !(t.r2_heldout > 0.99)) {
    std::fprintf(stderr, "consumer: reconstruction is off (want relative error < 0.05 and R2 > 0.99)\n");
    return 1;
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "consumer: %s\n", e.what());
  return 1;
}
