// Fuzz target: the safetensors container (header length, JSON header, entries,
// coverage of the data buffer, lazy reads).
#include <cstdint>
#include <vector>

#include "fuzz_input.hpp"
#include "headrecon/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const headrecon::SafetensorsFile f(headrecon_fuzz::as_file(data, size));
    std::uint64_t total = 0;
    std::vector<unsigned char> buf;
    for (const headrecon::TensorInfo& t : f.tensors()) {
      headrecon_fuzz::require(t.end >= t.begin && t.end <= f.file_size() - f.data_offset(), "tensor inside the file");
      total += t.bytes();
      buf.resize(t.bytes());
      f.read_bytes(t, 0, t.bytes(), buf.data());
      headrecon_fuzz::require(f.find(t.name) != nullptr, "every tensor can be found by name");
    }
    headrecon_fuzz::require(f.data_offset() + total == f.file_size(), "tensors cover the data buffer exactly");
  } catch (const headrecon::Error&) {
  }
  return 0;
}
