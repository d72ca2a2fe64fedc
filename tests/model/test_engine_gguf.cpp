// Tests of the example engine that need no downloaded model: the GGUF reader
// on crafted files and on a fixture of every quantization type, a tiny random
// qwen2 model against the NumPy reference, the text selection, and the
// tokenizer on crafted byte-level vocabularies.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "corpus.hpp"
#include "engine_test_util.hpp"
#include "gguf.hpp"
#include "llama.hpp"
#include "tokenizer.hpp"

using namespace headrecon_engine_test;
using headrecon_test::write_file;

namespace {
const std::string test_dir = HEADRECON_MODEL_TEST_DIR;
void spit(const std::string& path, const std::string& bytes) { write_file(path, bytes); }
}  // namespace

TEST_CASE("gguf: a crafted valid file parses with its metadata and tensors") {
  TempDir d;
  const std::string p = d.file("ok.gguf");
  spit(p, valid_craft().build());
  he::GgufFile f(p);
  CHECK(f.version() == 3);
  CHECK(f.alignment() == 32);
  CHECK(f.get_string("general.architecture") == "llama");
  CHECK(f.get_uint("llama.block_count") == 7);
  CHECK(f.get_float("llama.rope.freq_base") == 10000.0);
  CHECK(f.get_bool("tokenizer.ggml.add_bos_token", false));
  CHECK(f.get_string_array("tokenizer.ggml.tokens") == std::vector<std::string>{"a", "b", "ab"});
  CHECK(f.get_int_array("tokenizer.ggml.token_type") == std::vector<std::int64_t>{1, 1, 3});
  CHECK_THROWS_WITH(f.get_string("llama.block_count"), Catch::Contains("'llama.block_count' is UINT32, expected a string"));
  CHECK_THROWS_WITH(f.get_uint("missing.key"), Catch::Contains("missing metadata key 'missing.key'"));
  CHECK_THROWS_WITH(f.tensor("nope"), Catch::Contains("missing tensor 'nope'"));
  const auto& t = f.tensor("w.f32");
  CHECK(t.n_dims == 2);
  CHECK(t.rows() == 2);
  CHECK(f.dequantize(t) == std::vector<float>{1, 2, 3, 4, 5, 6, 7, 8});
  const auto q = f.dequantize(f.tensor("w.q8"));
  REQUIRE(q.size() == 32);
  for (int i = 0; i < 32; ++i) CHECK(q[std::size_t(i)] == 0.5f * float(i - 16));
  CHECK(f.tensor("w.q8").offset % 32 == 0);
}

TEST_CASE("gguf: every truncation of a crafted file is rejected") {
  const std::string full = valid_craft().build();
  TempDir d;
  const std::string p = d.file("trunc.gguf");
  for (std::size_t n = 0; n < full.size(); ++n) {
    spit(p, full.substr(0, n));
    INFO("prefix of " << n << " of " << full.size() << " bytes");
    CHECK_THROWS_AS(he::GgufFile(p), headrecon::Error);
  }
  CHECK_THROWS_WITH(he::GgufFile((spit(p, full.substr(0, full.size() - 1)), p)),
                    Catch::Contains("tensor 'w.q8'") && Catch::Contains("extends past the end of the file"));
  CHECK_THROWS_WITH(he::GgufFile((spit(p, full.substr(0, 30)), p)),
                    Catch::Contains("metadata count 6 cannot fit"));
  // Cut inside the tokenizer.ggml.tokens array (bytes 179..251 of the file).
  CHECK_THROWS_WITH(he::GgufFile((spit(p, full.substr(0, 240)), p)),
                    Catch::Contains("truncated") && Catch::Contains("tokenizer.ggml.tokens"));
}

TEST_CASE("gguf: malformed headers, metadata and tensor infos are rejected with the key or tensor named") {
  {
    Craft c = valid_craft();
    c.magic = "GGUG";
    expect_reject(c.build(), {"not a GGUF file"});
  }
  for (std::uint32_t v : {1u, 2u, 4u}) {
    Craft c = valid_craft();
    c.version = v;
    expect_reject(c.build(), {"GGUF version " + std::to_string(v) + " is not supported"});
  }
  {
    Craft c = valid_craft();
    c.tensor_count_override = 1ull << 60;
    expect_reject(c.build(), {"tensor count"});
  }
  {
    Craft c = valid_craft();
    c.kv_count_override = 1ull << 60;
    expect_reject(c.build(), {"metadata count"});
  }
  {
    Craft c = valid_craft();
    c.kv.push_back(Bytes().str("k.huge").u32(8).u64(1ull << 62).s);
    expect_reject(c.build(), {"metadata key 'k.huge'", "string length"});
  }
  {
    Craft c = valid_craft();
    c.kv.push_back(Bytes().str("k.arr").u32(9).u32(4).u64(1ull << 61).s);
    expect_reject(c.build(), {"metadata key 'k.arr'", "array of"});
  }
  {
    Craft c = valid_craft();
    c.kv.push_back(Bytes().str("k.type").u32(13).u32(0).s);
    expect_reject(c.build(), {"metadata key 'k.type'", "invalid value type 13"});
  }
  {
    Craft c = valid_craft();
    c.kv.push_back(Craft::kv_bool("k.bool", 2));
    expect_reject(c.build(), {"metadata key 'k.bool'", "invalid bool"});
  }
  {
    Craft c = valid_craft();
    Bytes nest;
    nest.str("k.deep").u32(9);
    for (int i = 0; i < 12; ++i) nest.u32(9).u64(1);  // arrays of arrays ... (items carry no type tag)
    c.kv.push_back(nest.s);
    expect_reject(c.build(), {"metadata key 'k.deep'", "nested deeper"});
  }
  {
    Craft c = valid_craft();
    c.kv.push_back(Craft::kv_u32("llama.block_count", 8));
    expect_reject(c.build(), {"duplicate metadata key 'llama.block_count'"});
  }
  {
    Craft c = valid_craft();
    c.kv.push_back(Craft::kv_u32("general.alignment", 24));
    expect_reject(c.build(), {"general.alignment", "not a power of two"});
  }
  {
    Craft c = valid_craft();
    c.kv.push_back(Bytes().str("general.alignment").u32(10).u64(32).s);
    expect_reject(c.build(), {"general.alignment", "expected UINT32"});
  }
  {
    Craft c = valid_craft();
    c.tensors[1].offset = 40;  // not a multiple of 32
    expect_reject(c.build(), {"tensor 'w.q8'", "not a multiple of the alignment"});
  }
  {
    Craft c = valid_craft();
    c.tensors[1].type = 99;
    expect_reject(c.build(), {"tensor 'w.q8'", "unknown ggml type id 99"});
  }
  {
    Craft c = valid_craft();
    c.tensors[1].ne = {16};  // Q8_0 rows must be multiples of 32
    c.tensors[1].data.resize(17);
    expect_reject(c.build(), {"tensor 'w.q8'", "not a multiple of the Q8_0 block size 32"});
  }
  {
    Craft c = valid_craft();
    c.tensors[0].ne = {1, 1, 1, 1, 8};
    expect_reject(c.build(), {"tensor 'w.f32'", "n_dims = 5"});
  }
  {
    Craft c = valid_craft();
    c.tensors[0].ne = {4, 0};
    expect_reject(c.build(), {"tensor 'w.f32'", "ne[1] = 0"});
  }
  {
    Craft c = valid_craft();
    c.tensors[0].ne = {1ull << 40, 1ull << 40};
    expect_reject(c.build(), {"tensor 'w.f32'", "overflows"});
  }
  {
    Craft c = valid_craft();
    c.tensors[1].name = "w.f32";
    expect_reject(c.build(), {"duplicate tensor 'w.f32'"});
  }
  {
    Craft c = valid_craft();
    c.tensors[1].name = std::string(64, 'n');
    expect_reject(c.build(), {"name of 64 bytes"});
  }
  {
    Craft c = valid_craft();
    c.tensors[1].offset = 0;  // overlaps w.f32
    expect_reject(c.build(), {"overlap", "w.f32", "w.q8"});
  }
  {
    Craft c = valid_craft();
    c.tensors[1].offset = 1u << 20;  // aligned, but past the end of the data
    std::string b = c.build();
    b.resize(b.size() - 100);
    expect_reject(b, {"tensor 'w.q8'", "extends past the end of the file"});
  }
}

TEST_CASE("gguf: array counts are capped before anything is allocated") {
  // Issue 13: nested arrays cost ~200 bytes of memory per 16 bytes of file and
  // were allocated up front at every level: a 16 MiB file peaked at 2.2 GB.
  {
    Craft c = valid_craft();
    Bytes deep;
    deep.str("k.deep").u32(9).u32(9).u64(1u << 20);  // claims 2^20 arrays (16 MiB of file would fit them)
    for (int i = 0; i < 8; ++i) deep.u32(9).u64(1u << 20);
    deep.s.resize(deep.s.size() + (std::size_t(16) << 20));
    c.kv.push_back(deep.s);
    expect_reject(c.build(), {"metadata key 'k.deep'", "array of 1048576 arrays", "more than the maximum of 65536"});
  }
  {
    Craft c = valid_craft();
    Bytes ok;  // 2^16 nested (empty) arrays are fine, in 1 MiB
    ok.str("k.nested").u32(9).u32(9).u64(1u << 16);
    for (int i = 0; i < (1 << 16); ++i) ok.u32(0).u64(0);
    c.kv.push_back(ok.s);
    TempDir d;
    const std::string p = d.file("nested.gguf");
    spit(p, c.build());
    he::GgufFile f(p);
    CHECK(f.get("k.nested").items.size() == (1u << 16));
    // The encoding of gguf-py's writer: [[1, 2], [3]] as INT32 items without type tags.
    Craft small = valid_craft();
    small.kv.push_back(Bytes().str("k.ints").u32(9).u32(9).u64(2).u32(5).u64(2).i32(1).i32(2).u32(5).u64(1).i32(3).s);
    spit(p, small.build());
    he::GgufFile g(p);
    const he::GgufValue& v = g.get("k.ints");
    REQUIRE(v.items.size() == 2);
    CHECK(v.items[0].ints == std::vector<std::int64_t>{1, 2});
    CHECK(v.items[1].ints == std::vector<std::int64_t>{3});
    CHECK(g.get_string("general.architecture") == "llama");  // what follows is read in step
    Craft more = c;
    Bytes one;  // one more nested array anywhere in the file is one too many
    one.str("k.more").u32(9).u32(9).u64(1).u32(0).u64(0);
    more.kv.push_back(one.s);
    expect_reject(more.build(), {"metadata key 'k.more'", "more than the maximum of 65536"});
  }
  {
    Craft c = valid_craft();
    Bytes big;  // 2^24 + 1 UINT8: fits the file, exceeds the element cap
    big.str("k.big").u32(9).u32(0).u64((1u << 24) + 1);
    big.s.resize(big.s.size() + (1u << 24) + 1);
    c.kv.push_back(big.s);
    expect_reject(c.build(), {"metadata key 'k.big'", "array of 16777217 UINT8", "exceeds the maximum of 16777216"});
  }
}

TEST_CASE("gguf: dequantization of every fixture type matches gguf.quants") {
  // tests/model/quant_fixture.gguf: random blocks "q.TYPE" and the gguf
  // package's float32 dequantization "expect.TYPE" (make_quant_fixture.py).
  he::GgufFile f(test_dir + "/quant_fixture.gguf");
  std::size_t checked = 0;
  for (const auto& t : f.tensors()) {
    if (t.name.rfind("q.", 0) != 0) continue;
    const std::string type = t.name.substr(2);
    INFO("type " << type);
    CHECK(he::ggml_type_name(t.type) == type);
    const auto got = f.dequantize(t);
    const auto want = f.dequantize(f.tensor("expect." + type));
    REQUIRE(got.size() == want.size());
    float scale = 0;
    for (float v : want) scale = std::max(scale, std::fabs(v));
    // Same float operations in a possibly different order (FMA contraction):
    // a few ulps of the largest magnitude involved.
    const float tol = 4e-7f * std::max(scale, 1.f);
    std::size_t worst = 0;
    float worst_err = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
      const float e = std::fabs(got[i] - want[i]);
      if (!(e <= worst_err)) worst_err = e, worst = i;
    }
    INFO("worst index " << worst << ": got " << got[worst] << ", expected " << want[worst] << ", tol " << tol);
    CHECK(worst_err <= tol);
    ++checked;
  }
  CHECK(checked == 12);

  // Q8_K (absent from gguf.quants): float32 d, 256 int8 quants, 16 int16 sums.
  Bytes blk;
  blk.f32(0.25f);
  for (int i = 0; i < 256; ++i) blk.u8(std::uint8_t(std::int8_t(i - 128)));
  for (int i = 0; i < 16; ++i) blk.u8(0).u8(0);
  REQUIRE(blk.s.size() == 292);
  std::vector<float> y(256);
  he::dequantize(std::uint32_t(he::GgmlType::Q8_K), reinterpret_cast<const std::uint8_t*>(blk.s.data()), y.data(), 256);
  for (int i = 0; i < 256; ++i) CHECK(y[std::size_t(i)] == 0.25f * float(i - 128));
  CHECK_THROWS_WITH(he::dequantize(std::uint32_t(he::GgmlType::IQ2_XXS), nullptr, y.data(), 256, "t"),
                    Catch::Contains("IQ2_XXS cannot be dequantized"));
  CHECK_THROWS_WITH(he::dequantize(std::uint32_t(he::GgmlType::Q4_0), nullptr, y.data(), 33, "t"),
                    Catch::Contains("not a multiple"));
}


TEST_CASE("corpus: file selection is sorted and splits are disjoint") {
  TempDir d;
  for (const char* n : {"b.txt", "a.txt", "sub/c.txt", "d.bin", "e.txt"}) {
    std::filesystem::create_directories((d.path() / n).parent_path());
    spit(d.file(n), std::string("text of ") + n);
  }
  const auto all = he::list_text_files(d.path().string(), ".txt", he::Split::all);
  const auto cal = he::list_text_files(d.path().string(), ".txt", he::Split::calib);
  const auto ev = he::list_text_files(d.path().string(), ".txt", he::Split::eval);
  REQUIRE(all.size() == 4);
  CHECK(std::filesystem::path(all[0]).filename() == "a.txt");
  CHECK(std::filesystem::path(all[3]).filename() == "c.txt");
  CHECK(cal.size() == 2);
  CHECK(ev.size() == 2);
  for (const auto& c : cal) CHECK(std::find(ev.begin(), ev.end(), c) == ev.end());
}


TEST_CASE("llama: a tiny random qwen2 model matches the NumPy reference (biases, NEOX RoPE, untied output)") {
  // tests/model/tiny_qwen2.gguf (make_tiny_qwen2.py): 2 layers, hidden 32,
  // 4 query / 2 KV heads of 8, Q/K/V biases, output.weight, weights in Q8_0,
  // Q4_1, Q5_0, F16, F32; expect.logits from reference_forward.py (float64).
  he::GgufFile f(test_dir + "/tiny_qwen2.gguf");
  const he::LlamaModel m(f);
  const he::LlamaConfig& c = m.config();
  CHECK(c.arch == "qwen2");
  CHECK(c.rope_neox);
  CHECK_FALSE(c.tied_output);
  CHECK(c.head_dim == 8);
  CHECK(c.n_head_kv == 2);
  CHECK_FALSE(m.layer(0).bq.empty());
  const he::GgufValue& idv = f.get("fixture.token_ids");
  std::vector<std::int32_t> ids;
  for (auto v : idv.ints) ids.push_back(std::int32_t(v));
  for (auto v : idv.uints) ids.push_back(std::int32_t(v));
  REQUIRE(ids.size() == 11);
  const std::vector<float> want = f.dequantize(f.tensor("expect.logits"));
  REQUIRE(want.size() == ids.size() * c.n_vocab);

  he::LlamaEngine eng(m);
  he::KvCache cache(m.attention_shape(), ids.size());
  std::vector<float> got;
  eng.forward(ids.data(), ids.size(), cache, he::LogitsMode::all, &got);
  REQUIRE(got.size() == want.size());
  double max_diff = 0;
  for (std::size_t i = 0; i < got.size(); ++i) max_diff = std::max(max_diff, double(std::fabs(got[i] - want[i])));
  INFO("max |logit diff| vs NumPy: " << max_diff);
  CHECK(max_diff < 1e-4);  // logits within +-6, float32 through 2 layers

  // The same logits one token at a time (sgemv path, cache reuse).
  he::KvCache inc(m.attention_shape(), ids.size());
  std::vector<float> one;
  double inc_diff = 0;
  for (std::size_t t = 0; t < ids.size(); ++t) {
    eng.forward(&ids[t], 1, inc, he::LogitsMode::last, &one);
    for (std::size_t i = 0; i < c.n_vocab; ++i)
      inc_diff = std::max(inc_diff, double(std::fabs(one[i] - want[t * c.n_vocab + i])));
  }
  INFO("max |logit diff| incremental vs NumPy: " << inc_diff);
  CHECK(inc_diff < 1e-4);
}

TEST_CASE("llama: models with missing or misshapen tensors are rejected naming the tensor") {
  Craft c;
  c.kv.push_back(Craft::kv_str("general.architecture", "llama"));
  c.kv.push_back(Craft::kv_u32("llama.block_count", 1));
  c.kv.push_back(Craft::kv_u32("llama.embedding_length", 32));
  c.kv.push_back(Craft::kv_u32("llama.feed_forward_length", 32));
  c.kv.push_back(Craft::kv_u32("llama.attention.head_count", 4));
  c.kv.push_back(Craft::kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f));
  c.tensors.push_back({"token_embd.weight", {32, 4}, 0, f32_data(std::vector<float>(128, 0.f))});
  TempDir d;
  const std::string p = d.file("m.gguf");
  spit(p, c.build());
  {
    he::GgufFile f(p);
    CHECK_THROWS_WITH(he::LlamaModel(f), Catch::Contains("missing tensor 'output_norm.weight'") && Catch::Contains(p));
  }
  c.tensors.push_back({"output_norm.weight", {16}, 0, f32_data(std::vector<float>(16, 1.f))});
  spit(p, c.build());
  {
    he::GgufFile f(p);
    CHECK_THROWS_WITH(he::LlamaModel(f), Catch::Contains("tensor 'output_norm.weight' has shape [16], expected [32]"));
  }
  Craft q = c;
  q.kv[0] = Craft::kv_str("general.architecture", "mamba");
  spit(p, q.build());
  {
    he::GgufFile f(p);
    CHECK_THROWS_WITH(he::LlamaModel(f), Catch::Contains("architecture 'mamba' is not supported"));
  }
}

namespace {

/// The tokenizer of a crafted byte-level vocabulary (see gguf_craft.hpp).
struct CraftedTokenizer {
  TempDir dir;
  std::unique_ptr<he::GgufFile> file;
  std::unique_ptr<he::Tokenizer> tok;
  explicit CraftedTokenizer(const VocabSpec& v) {
    const std::string p = dir.file("vocab.gguf");
    spit(p, vocab_craft(v).build());
    file = std::make_unique<he::GgufFile>(p);
    tok = std::make_unique<he::Tokenizer>(*file);
  }
};

/// Random byte strings: ASCII text, UTF-8 of every length, and arbitrary bytes.
std::vector<std::string> random_byte_strings(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  const std::vector<std::string> atoms = {"the", " the", "  ", "\n", "\t", "'s", "42", "\xC3\xA9", "\xE6\x9D\xB1",
                                          "\xF0\x9F\x98\x80", "<|im_start|>", "\xE2\x82", "\xFF", "\x80"};
  std::vector<std::string> out;
  for (std::size_t i = 0; i < n; ++i) {
    std::string s;
    const std::size_t len = rng() % 48;
    for (std::size_t k = 0; k < len; ++k) {
      if (rng() % 3 == 0)
        s += atoms[rng() % atoms.size()];
      else
        s += char(rng() % 256);
    }
    out.push_back(s);
  }
  return out;
}

std::string without(const std::string& s, const std::vector<std::uint8_t>& drop) {
  std::string out;
  for (char c : s)
    if (std::find(drop.begin(), drop.end(), std::uint8_t(c)) == drop.end()) out += c;
  return out;
}

}  // namespace

TEST_CASE("tokenizer: a complete byte-level vocabulary encodes every byte and round-trips any byte string") {
  VocabSpec v;
  v.merges = english_merges();
  CraftedTokenizer c(v);
  const he::Tokenizer& tok = *c.tok;
  CHECK(tok.missing_bytes().empty());
  for (int b = 0; b < 256; ++b) {
    const std::string s(1, char(b));
    const auto ids = tok.encode(s);
    INFO("byte " << b);
    REQUIRE(ids.size() == 1);
    CHECK(tok.token(ids[0]) == byte_level_char(std::uint8_t(b)));
    CHECK(tok.decode(ids) == s);
  }
  CHECK(tok.encode(" the") == std::vector<std::int32_t>{tok.find("\xC4\xA0the")});  // merges apply
  for (const std::string& s : random_byte_strings(3000, 7)) {
    INFO("input of " << s.size() << " bytes");
    const auto ids = tok.encode(s);
    REQUIRE(tok.decode(ids) == s);
    for (auto id : ids) REQUIRE(tok.type(id) == he::TokenType::normal);  // no control token from plain text
  }
  CHECK(tok.unknown_bytes() == 0);
}

TEST_CASE("tokenizer: bytes missing from the vocabulary are dropped and counted, never a control token") {
  VocabSpec v;
  v.merges = english_merges();
  v.merges.push_back("! !");
  v.missing = {0x04, 0xFF};
  CraftedTokenizer c(v);  // unknown_token_id defaults to 0 = <|endoftext|>, a control token
  const he::Tokenizer& tok = *c.tok;
  CHECK(tok.missing_bytes() == std::vector<std::uint8_t>{0x04, 0xFF});
  CHECK_FALSE(tok.maps_missing_bytes_to_unknown());
  const auto ids = tok.encode("a\x04" "b");
  CHECK(ids == std::vector<std::int32_t>{tok.find("a"), tok.find("b")});
  CHECK(tok.unknown_bytes() == 1);
  CHECK(tok.encode("a\x04" "b") == ids);  // from the cache: counted again
  CHECK(tok.unknown_bytes() == 2);
  CHECK(tok.encode("\x04\x04\xFF").empty());
  CHECK(tok.unknown_bytes() == 5);
  // One pre-token "!\x04!": the missing byte is not merged over.
  CHECK(tok.encode("!!") == std::vector<std::int32_t>{tok.find("!!")});
  CHECK(tok.encode("!\x04!") == std::vector<std::int32_t>{tok.find("!"), tok.find("!")});
  std::size_t unknown = tok.unknown_bytes();
  for (const std::string& s : random_byte_strings(2000, 11)) {
    const auto got = tok.encode(s);
    INFO("input of " << s.size() << " bytes");
    REQUIRE(tok.decode(got) == without(s, v.missing));
    const std::size_t n_missing = s.size() - without(s, v.missing).size();
    REQUIRE(tok.unknown_bytes() == unknown + n_missing);
    unknown = tok.unknown_bytes();
    for (auto id : got) REQUIRE(tok.type(id) == he::TokenType::normal);
  }
}

TEST_CASE("tokenizer: with an UNKNOWN-type token, missing bytes become it") {
  VocabSpec v;
  v.missing = {0x04};
  v.unk = "<unk>";
  CraftedTokenizer c(v);
  const he::Tokenizer& tok = *c.tok;
  CHECK(tok.maps_missing_bytes_to_unknown());
  const std::int32_t unk = tok.find("<unk>");
  CHECK(tok.encode("a\x04" "b") == std::vector<std::int32_t>{tok.find("a"), unk, tok.find("b")});
  CHECK(tok.unknown_bytes() == 1);
  CHECK(tok.decode(tok.encode("a\x04" "b")) == "a<unk>b");
  CHECK(tok.decode(tok.encode("a\x04" "b"), true) == "ab");
}
