// plan_compare A B [--tol REL]: exit 0 when two plan files rebuild the same
// targets from the same references (in the same order) and every weight and
// bias agrees to REL relative to the largest magnitude of its map (default 0:
// bit-identical); prints the largest relative difference and how many
// values differ. Test tool for shards, multi-file and MPI fits.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <string>

#include "headrecon/plan_io.hpp"

using namespace headrecon;

int main(int argc, char** argv) {
  if (argc != 3 && !(argc == 5 && std::string(argv[3]) == "--tol")) {
    std::cerr << "usage: plan_compare A B [--tol REL]\n";
    return 2;
  }
  const double tol = argc == 5 ? std::strtod(argv[4], nullptr) : 0.0;
  try {
    const Plan a = load_plan(argv[1]), b = load_plan(argv[2]);
    auto differ = [&](const std::string& what) {
      std::cerr << "plans differ: " << what << "\n";
      return 1;
    };
    if (a.head_dim != b.head_dim || a.n_layers != b.n_layers || a.post_rope != b.post_rope ||
        a.sink_tokens != b.sink_tokens || a.kinds.size() != b.kinds.size())
      return differ("shape, sink tokens or kinds");
    double worst = 0.0;
    std::size_t values = 0, changed = 0, targets = 0;
    for (const KindPlan& ka : a.kinds) {
      const KindPlan* kb = b.find(ka.kind);
      if (!kb || kb->n_heads != ka.n_heads) return differ("kind " + std::string(kind_name(ka.kind)));
      for (std::size_t l = 0; l < ka.layers.size(); ++l) {
        if (ka.layers[l].size() != kb->layers[l].size())
          return differ("number of targets in layer " + std::to_string(l));
        for (std::size_t i = 0; i < ka.layers[l].size(); ++i) {
          const TargetMap &x = ka.layers[l][i], &y = kb->layers[l][i];
          const std::string name = std::string(kind_name(ka.kind)) + " " + std::to_string(x.target.layer) + "." +
                                   std::to_string(x.target.head);
          if (!(x.target == y.target) || x.refs.size() != y.refs.size() ||
              !std::equal(x.refs.begin(), x.refs.end(), y.refs.begin()))
            return differ("target or references of " + name);
          if (x.weight.size() != y.weight.size() || x.bias.size() != y.bias.size()) return differ("map size of " + name);
          double scale = 0.0;
          for (float v : y.weight) scale = std::max(scale, std::fabs(double(v)));
          for (float v : y.bias) scale = std::max(scale, std::fabs(double(v)));
          auto cmp = [&](const std::vector<float>& u, const std::vector<float>& v) {
            for (std::size_t j = 0; j < u.size(); ++j) {
              ++values;
              if (u[j] != v[j]) ++changed;
              if (scale > 0) worst = std::max(worst, std::fabs(double(u[j]) - double(v[j])) / scale);
            }
          };
          cmp(x.weight, y.weight);
          cmp(x.bias, y.bias);
          ++targets;
        }
      }
    }
    std::cout << "plans match in targets and references (" << targets << " targets); " << changed << " of " << values
              << " weights/biases differ, largest relative difference " << worst << "\n";
    return worst <= tol ? 0 : differ("a weight differs by more than --tol " + std::to_string(tol));
  } catch (const std::exception& e) {
    std::cerr << "plan_compare: " << e.what() << "\n";
    return 2;
  }
}
