// Tests of the example engine's GGUF reader on crafted files and on a fixture
// of every quantization type (no model needed), and of the text selection.

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "corpus.hpp"
#include "engine_test_util.hpp"
#include "gguf.hpp"

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
    nest.str("k.deep");
    for (int i = 0; i < 12; ++i) nest.u32(9).u32(9).u64(1);  // arrays of arrays ...
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

