// Fuzz target: the example engine's GGUF reader (header, metadata values of
// every type, nested arrays, tensor infos, alignment, bounds), dequantization
// of the tensors it accepts, and a tokenizer built from its vocabulary.
#include <cstdint>
#include <vector>

#include "fuzz_input.hpp"
#include "gguf.hpp"
#include "tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace he = headrecon_engine;
  try {
    const he::GgufFile f(headrecon_fuzz::as_file(data, size));
    for (const he::GgufTensor& t : f.tensors()) {
      headrecon_fuzz::require(f.data_offset() + t.offset + t.n_bytes <= f.file_size(), "tensor inside the file");
      const he::GgmlTypeInfo info = he::ggml_type_info(t.type);
      // Dequantize what fits a small budget (the bytes are inside the file).
      if (info.dequantizable && t.n_elements <= (1u << 20)) (void)f.dequantize(t);
    }
    if (f.find("tokenizer.ggml.model")) {
      const he::Tokenizer tok(f);
      const auto ids = tok.encode("Hello world, it's 2024! <|im_start|>\xE2\x82\xAC\xFF", true);
      (void)tok.decode(ids);
    }
  } catch (const headrecon::Error&) {
  }
  return 0;
}
