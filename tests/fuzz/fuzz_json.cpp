// Fuzz target: the strict JSON parser and the safetensors header on top of it.
// The first two bytes give the size of the data buffer the header is checked
// against; the rest is the header text. A parsed document must dump to JSON
// that parses back to the same document.
#include <cstdint>
#include <string_view>

#include "fuzz_input.hpp"
#include "headrecon/detail/json.hpp"
#include "headrecon/detail/safetensors_header.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace json = headrecon::detail::json;
  if (size < 2) return 0;
  const std::uint64_t data_size = std::uint64_t(data[0]) | std::uint64_t(data[1]) << 8;
  const std::string_view text(reinterpret_cast<const char*>(data + 2), size - 2);
  try {
    const json::Json doc = json::parse(text);
    const std::string again = json::dump(doc);
    headrecon_fuzz::require(json::parse(again) == doc, "dump then parse gives the same document");
  } catch (const headrecon::Error&) {
  }
  try {
    const std::uint64_t data_offset = 8 + text.size();
    const auto h = headrecon::detail::parse_safetensors_header(text, data_offset, data_offset + data_size);
    std::uint64_t covered = 0;
    for (const auto& t : h.tensors) covered += t.bytes();
    headrecon_fuzz::require(covered == data_size, "tensors cover the data buffer");
  } catch (const headrecon::Error&) {
  }
  return 0;
}
