// Conan test_package: fits a plan on a tiny planted model through the
// installed headers and checks that the planted heads are rebuilt well.
#include <headrecon/headrecon.hpp>

#include <cstdio>
#include <vector>

int main() {
  using namespace headrecon;
  SyntheticSpec spec;
  spec.n_layers = 1;
  spec.n_heads = 4;
  spec.head_dim = 4;
  spec.noise = 0.01;
  const SyntheticModel model(spec);
  const std::size_t H = 4, d = 4, n = 2000;
  std::vector<float> acts(n * H * d);
  model.generate(Kind::v, 0, 0, n, acts.data());
  HeadMoments stats(1, 4, 4, RefScope::same_layer);
  stats.add({erase(make_view<const float>(acts.data(), acts.size(), Extents3{n, H, d}, Layout::token_major))}, 0,
            HoldoutSplit{});
  SelectionOptions opt;
  opt.max_refs = 2;
  const KindPlan kp = build_kind_plan(stats, GreedySelection().select(stats, opt), Kind::v, FitOptions{});
  float worst = 1.f;
  for (const TargetMap& t : kp.layers[0]) worst = t.r2_heldout < worst ? t.r2_heldout : worst;
  std::printf("headrecon %s test_package: %zu heads rebuilt, worst held-out R2 %.4f\n", version_string,
              kp.n_targets(), double(worst));
  return kp.n_targets() == 2 && worst > 0.99f ? 0 : 1;
}
