// Fuzz target: byte-level BPE encoding of arbitrary bytes with a fixed crafted
// vocabulary (SmolLM2's pre-tokenizer; bytes 0x04 and 0xFF have no token).
// Properties: decode(encode(s)) == s without the missing bytes, with and
// without special-token parsing, and unknown_bytes() counts exactly those.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "fuzz_input.hpp"
#include "gguf.hpp"
#include "gguf_craft.hpp"
#include "tokenizer.hpp"

namespace {
struct Vocab {
  std::unique_ptr<headrecon_engine::GgufFile> file;
  std::unique_ptr<headrecon_engine::Tokenizer> tok;
};
const Vocab& vocab() {
  static const Vocab v = [] {
    headrecon_engine_test::VocabSpec spec;
    spec.merges = headrecon_engine_test::english_merges();
    spec.merges.push_back("! !");
    spec.missing = {0x04, 0xFF};
    const std::string bytes = headrecon_engine_test::vocab_craft(spec).build();
    char tmpl[] = "/tmp/headrecon-fuzz-vocab-XXXXXX";
    const int fd = ::mkstemp(tmpl);
    headrecon_fuzz::require(fd >= 0 && ::write(fd, bytes.data(), bytes.size()) == ssize_t(bytes.size()),
                            "write the vocabulary");
    ::close(fd);
    Vocab out;
    out.file = std::make_unique<headrecon_engine::GgufFile>(tmpl);
    out.tok = std::make_unique<headrecon_engine::Tokenizer>(*out.file);
    ::unlink(tmpl);  // the mapping stays valid
    return out;
  }();
  return v;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const headrecon_engine::Tokenizer& tok = *vocab().tok;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  std::string kept;
  for (char c : text)
    if (c != '\x04' && c != '\xFF') kept += c;
  for (const bool special : {false, true}) {
    const std::size_t before = tok.unknown_bytes();
    const auto ids = tok.encode(text, special);
    headrecon_fuzz::require(tok.unknown_bytes() - before == text.size() - kept.size(), "unknown bytes counted");
    headrecon_fuzz::require(tok.decode(ids) == kept, "decode(encode(s)) == s less the missing bytes");
    if (!special)
      for (auto id : ids) headrecon_fuzz::require(tok.type(id) == headrecon_engine::TokenType::normal, "plain text gives normal tokens");
  }
  return 0;
}
