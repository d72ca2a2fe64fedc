#pragma once
// A writer of small GGUF files, including malformed ones, and of byte-level
// BPE vocabularies; no test framework, so the fuzz targets use it too.

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace headrecon_engine_test {

// A writer of small GGUF files, including malformed ones.

struct Bytes {
  std::string s;
  Bytes& u8(std::uint8_t v) { return raw(&v, 1); }
  Bytes& u32(std::uint32_t v) { return raw(&v, 4); }
  Bytes& i32(std::int32_t v) { return raw(&v, 4); }
  Bytes& u64(std::uint64_t v) { return raw(&v, 8); }
  Bytes& f32(float v) { return raw(&v, 4); }
  Bytes& str(const std::string& v) {
    u64(v.size());
    s += v;
    return *this;
  }
  Bytes& raw(const void* p, std::size_t n) {
    s.append(static_cast<const char*>(p), n);
    return *this;
  }
  Bytes& pad_to(std::size_t align) {
    while (s.size() % align) s += '\0';
    return *this;
  }
};

struct CraftTensor {
  std::string name;
  std::vector<std::uint64_t> ne;
  std::uint32_t type;
  std::string data;
  std::uint64_t offset = ~0ull;  // ~0: next aligned position
};

struct Craft {
  std::uint32_t version = 3;
  std::string magic = "GGUF";
  std::vector<std::string> kv;  // pre-encoded key/value records
  std::uint64_t kv_count_override = ~0ull, tensor_count_override = ~0ull;
  std::vector<CraftTensor> tensors;
  std::size_t align = 32;

  static std::string kv_u32(const std::string& key, std::uint32_t v) { return Bytes().str(key).u32(4).u32(v).s; }
  static std::string kv_f32(const std::string& key, float v) { return Bytes().str(key).u32(6).f32(v).s; }
  static std::string kv_str(const std::string& key, const std::string& v) { return Bytes().str(key).u32(8).str(v).s; }
  static std::string kv_bool(const std::string& key, std::uint8_t v) { return Bytes().str(key).u32(7).u8(v).s; }

  std::string build() const {
    Bytes b;
    b.raw(magic.data(), magic.size()).u32(version);
    b.u64(tensor_count_override != ~0ull ? tensor_count_override : tensors.size());
    b.u64(kv_count_override != ~0ull ? kv_count_override : kv.size());
    for (const auto& r : kv) b.s += r;
    std::uint64_t next = 0;
    std::vector<std::uint64_t> offs;
    for (const auto& t : tensors) {
      const std::uint64_t off = t.offset != ~0ull ? t.offset : next;
      offs.push_back(off);
      next = std::max<std::uint64_t>(next, off + t.data.size());
      next = (next + align - 1) / align * align;
      b.str(t.name).u32(std::uint32_t(t.ne.size()));
      for (auto n : t.ne) b.u64(n);
      b.u32(t.type).u64(off);
    }
    b.pad_to(align);
    const std::size_t base = b.s.size();
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      if (b.s.size() < base + offs[i]) b.s.resize(base + offs[i], '\0');
      b.s.replace(base + offs[i], std::min(tensors[i].data.size(), b.s.size() - base - offs[i]), tensors[i].data);
      if (b.s.size() < base + offs[i] + tensors[i].data.size()) b.s.resize(base + offs[i] + tensors[i].data.size());
    }
    return b.s;
  }
};

inline std::string f32_data(const std::vector<float>& v) { return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4); }

/// A valid little file: metadata of several types and two tensors (F32 4x2, Q8_0 32).
inline Craft valid_craft() {
  Craft c;
  c.kv.push_back(Craft::kv_str("general.architecture", "llama"));
  c.kv.push_back(Craft::kv_u32("llama.block_count", 7));
  c.kv.push_back(Craft::kv_f32("llama.rope.freq_base", 10000.f));
  c.kv.push_back(Craft::kv_bool("tokenizer.ggml.add_bos_token", 1));
  Bytes arr;
  arr.str("tokenizer.ggml.tokens").u32(9).u32(8).u64(3).str("a").str("b").str("ab");
  c.kv.push_back(arr.s);
  Bytes iarr;
  iarr.str("tokenizer.ggml.token_type").u32(9).u32(5).u64(3).i32(1).i32(1).i32(3);
  c.kv.push_back(iarr.s);
  c.tensors.push_back({"w.f32", {4, 2}, 0, f32_data({1, 2, 3, 4, 5, 6, 7, 8})});
  Bytes q8;  // d = 0.5 (f16 0x3800), qs = -16..15
  q8.u8(0x00).u8(0x38);
  for (int i = 0; i < 32; ++i) q8.u8(std::uint8_t(std::int8_t(i - 16)));
  c.tensors.push_back({"w.q8", {32}, 8, q8.s});
  return c;
}

/// The GPT-2 byte-level alphabet: byte b as the UTF-8 of its code point
/// (printable bytes map to themselves, the others to 256, 257, ... in order).
inline std::string byte_level_char(std::uint8_t b) {
  const auto printable = [](int c) { return (c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255); };
  std::uint32_t cp = b;
  if (!printable(b)) {
    cp = 256;
    for (int c = 0; c < b; ++c) cp += printable(c) ? 0 : 1;
  }
  std::string out;
  if (cp < 0x80) {
    out += char(cp);
  } else {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  }
  return out;
}

/// A byte-level BPE vocabulary as GGUF metadata (model "gpt2", pre-tokenizer
/// `pre`): control tokens `specials` first, then one token per byte except
/// `missing`, then the results of `merges` ("a b" in byte-level spelling, in
/// rank order). `unk` (when not empty) is added with type `unk_type` and
/// becomes tokenizer.ggml.unknown_token_id.
struct VocabSpec {
  std::vector<std::string> specials = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
  std::vector<std::uint8_t> missing;
  std::vector<std::string> merges;
  std::string unk;
  std::int32_t unk_type = 2;  // UNKNOWN
  std::string pre = "smollm";
};

inline Craft vocab_craft(const VocabSpec& v) {
  std::vector<std::string> tokens;
  std::vector<std::int32_t> types;
  for (const auto& s : v.specials) tokens.push_back(s), types.push_back(3);
  std::int32_t unk_id = 0;
  if (!v.unk.empty()) {
    unk_id = std::int32_t(tokens.size());
    tokens.push_back(v.unk);
    types.push_back(v.unk_type);
  }
  for (int b = 0; b < 256; ++b)
    if (std::find(v.missing.begin(), v.missing.end(), std::uint8_t(b)) == v.missing.end())
      tokens.push_back(byte_level_char(std::uint8_t(b))), types.push_back(1);
  for (const auto& m : v.merges) {
    const std::string joined = m.substr(0, m.find(' ')) + m.substr(m.find(' ') + 1);
    if (std::find(tokens.begin(), tokens.end(), joined) == tokens.end()) tokens.push_back(joined), types.push_back(1);
  }
  Craft c;
  c.kv.push_back(Craft::kv_str("tokenizer.ggml.model", "gpt2"));
  c.kv.push_back(Craft::kv_str("tokenizer.ggml.pre", v.pre));
  Bytes t;
  t.str("tokenizer.ggml.tokens").u32(9).u32(8).u64(tokens.size());
  for (const auto& s : tokens) t.str(s);
  c.kv.push_back(t.s);
  Bytes ty;
  ty.str("tokenizer.ggml.token_type").u32(9).u32(5).u64(types.size());
  for (auto x : types) ty.i32(x);
  c.kv.push_back(ty.s);
  Bytes m;
  m.str("tokenizer.ggml.merges").u32(9).u32(8).u64(v.merges.size());
  for (const auto& s : v.merges) m.str(s);
  c.kv.push_back(m.s);
  c.kv.push_back(Craft::kv_u32("tokenizer.ggml.bos_token_id", 0));
  c.kv.push_back(Craft::kv_u32("tokenizer.ggml.eos_token_id", 0));
  c.kv.push_back(Craft::kv_u32("tokenizer.ggml.unknown_token_id", std::uint32_t(unk_id)));
  return c;
}

/// A few English merges in byte-level spelling ("\xC4\xA0" is the space, U+0120).
inline std::vector<std::string> english_merges() {
  const std::string sp = "\xC4\xA0";
  return {"t h", "h e", "th e", sp + " t", sp + "t he", "i n", "e r", sp + " a", "o n", "r e", "a n", sp + " the",
          "in g", "e n", "o r", sp + " s", "l l", "e s"};
}

}  // namespace headrecon_engine_test
