// Fuzz target: activations files (ActivationReader: metadata, names, shapes,
// inferred counts, limits, reads of every tensor and the positions).
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fuzz_input.hpp"
#include "headrecon/activations_io.hpp"
#include "headrecon/limits.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace headrecon;
  try {
    const ActivationReader r(headrecon_fuzz::as_file(data, size));
    headrecon_fuzz::require(r.n_layers() >= 1 && r.n_layers() <= limits::max_layers, "n_layers within limits");
    std::vector<std::byte> buf;
    for (std::size_t l = 0; l < r.n_layers(); ++l)
      for (Kind k : {Kind::q, Kind::k, Kind::v})
        if (r.has(k)) {
          const AnyHeadsView v = r.read(l, k, 0, r.n_tokens(), buf);
          headrecon_fuzz::require(v.extent.heads == r.n_heads(k) && v.extent.dim == r.head_dim(), "view extents");
          v.visit([](auto hv) {
            float s = 0;
            for (std::size_t t = 0; t < hv.tokens(); ++t) s += to_float(hv(t, hv.heads() - 1, hv.dim() - 1));
            (void)s;
          });
        }
    (void)r.positions(0, r.n_tokens());
  } catch (const Error&) {
  }
  return 0;
}
