// Fuzz target: plan files (load_plan: metadata, tensor names, shapes, limits,
// Plan::validate).
#include <cmath>
#include <cstdint>

#include "fuzz_input.hpp"
#include "headrecon/limits.hpp"
#include "headrecon/plan_io.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const headrecon::Plan p = headrecon::load_plan(headrecon_fuzz::as_file(data, size));
    using headrecon_fuzz::require;
    require(p.n_layers >= 1 && std::uint64_t(p.n_layers) <= headrecon::limits::max_layers, "n_layers within limits");
    for (const auto& kp : p.kinds) {
      require(kp.n_heads >= 1 && std::uint64_t(kp.n_heads) <= headrecon::limits::max_heads, "n_heads within limits");
      for (std::int32_t l = 0; l < p.n_layers; ++l) (void)kp.cached_heads(l);
      for (const auto& layer : kp.layers)
        for (const auto& t : layer) {
          require(std::isfinite(t.r2_heldout), "finite R2");
          for (float w : t.weight) require(std::isfinite(w), "finite weights");
        }
    }
  } catch (const headrecon::Error&) {
  }
  return 0;
}
