#pragma once
// Helpers of the engine tests: a writer of small (also malformed) GGUF files
// and a check that opening one fails with a message naming the culprit.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "gguf.hpp"
#include "io_test_util.hpp"

namespace headrecon_engine_test {

namespace he = headrecon_engine;
using headrecon_test::TempDir;

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

/// Expects opening `bytes` (written to a temp file) to throw an Error whose
/// message contains every one of `parts` and the file name.
inline void expect_reject(const std::string& bytes, const std::vector<std::string>& parts) {
  TempDir d;
  const std::string p = d.file("bad.gguf");
  headrecon_test::write_file(p, bytes);
  try {
    he::GgufFile f(p);
    FAIL("accepted a malformed file; expected an error mentioning '" << (parts.empty() ? "" : parts[0]) << "'");
  } catch (const headrecon::Error& e) {
    const std::string msg = e.what();
    INFO("message: " << msg);
    CHECK(msg.find(p) != std::string::npos);
    for (const auto& s : parts) CHECK(msg.find(s) != std::string::npos);
  }
}


}  // namespace headrecon_engine_test
