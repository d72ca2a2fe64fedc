#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "headrecon/safetensors.hpp"
#include "io_test_util.hpp"

using namespace headrecon;
using Catch::Contains;
using headrecon_test::raw_safetensors;
using headrecon_test::TempDir;
using headrecon_test::write_file;

namespace {

std::string bytes_of(const void* p, std::size_t n) {
  return std::string(static_cast<const char*>(p), n);
}

/// Writes a file with `header` and `data_size` zero bytes of data, then
/// expects opening it to fail with a message containing the path and `what`.
void expect_open_error(const TempDir& dir, const std::string& header, std::size_t data_size,
                       const std::string& what) {
  const std::string path = dir.file("bad.safetensors");
  write_file(path, raw_safetensors(header, std::string(data_size, '\0')));
  INFO("header: " << header);
  REQUIRE_THROWS_WITH(SafetensorsFile(path), Contains(path) && Contains(what));
}

}  // namespace

TEST_CASE("safetensors: round trip with in-memory and streamed tensors", "[safetensors]") {
  TempDir dir;
  const std::string path = dir.file("rt.safetensors");
  const std::vector<float> a = {1.f, -2.f, 3.5f, 0.f, -0.f, 1e-40f};
  const std::vector<std::int32_t> b = {7, -8, 9, 2147483647};
  const std::vector<std::uint16_t> h = {0x3c00, 0x8001, 0x7bff};  // odd byte count: 6
  const std::int64_t s = -1234567890123;
  const std::vector<std::uint16_t> stream = {1, 2, 3, 4, 5, 6, 7, 8};
  {
    SafetensorsWriter w(path);
    w.set_metadata("format", "test");
    w.set_metadata("note", "h\xc3\xa9llo \"quoted\"\n");
    w.add("h", "F16", {3}, h.data(), 6);
    w.add("a", "F32", {2, 3}, a.data(), a.size() * 4);
    w.reserve("streamed", "BF16", {4, 2});
    w.add("b", "I32", {4}, b.data(), 16);
    w.add("scalar", "I64", {}, &s, 8);
    w.add("empty", "F32", {0, 4}, nullptr, 0);
    w.begin_stream();
    CHECK_FALSE(std::filesystem::exists(path));
    CHECK(std::filesystem::exists(path + ".tmp"));
    w.write_rows("streamed", 8, stream.data() + 4, 8);  // rows 2..3 first
    w.write_rows("streamed", 0, stream.data(), 8);
    w.finish();
  }
  CHECK(std::filesystem::exists(path));
  CHECK_FALSE(std::filesystem::exists(path + ".tmp"));

  const SafetensorsFile f(path);
  CHECK(f.path() == path);
  CHECK(f.data_offset() % 8 == 0);  // header padded to a multiple of 8
  CHECK(f.metadata().size() == 2);
  CHECK(f.metadata().at("format") == "test");
  CHECK(f.metadata().at("note") == "h\xc3\xa9llo \"quoted\"\n");
  REQUIRE(f.tensors().size() == 6);
  for (const TensorInfo& t : f.tensors())  // larger elements first: every tensor aligned
    CHECK(t.begin % safetensors_dtype_size(t.dtype) == 0);

  const TensorInfo* ta = f.find("a");
  REQUIRE(ta != nullptr);
  CHECK(ta->dtype == "F32");
  CHECK(ta->shape == std::vector<std::uint64_t>{2, 3});
  CHECK(ta->bytes() == 24);
  CHECK(ta->numel() == 6);
  const auto ra = f.read_all<float>("a");
  CHECK(std::memcmp(ra.data(), a.data(), 24) == 0);
  CHECK(f.read_all<std::int32_t>("b") == b);
  CHECK(f.read_all<std::int64_t>("scalar") == std::vector<std::int64_t>{s});
  CHECK(f.get("scalar").shape.empty());
  const auto rh = f.read_all<f16_t>("h");
  REQUIRE(rh.size() == 3);
  CHECK(rh[1].bits == 0x8001);
  const auto rs = f.read_all<bf16_t>("streamed");
  REQUIRE(rs.size() == 8);
  for (std::size_t i = 0; i < 8; ++i) CHECK(rs[i].bits == stream[i]);
  CHECK(f.read_all<float>("empty").empty());
  CHECK(f.get("empty").shape == std::vector<std::uint64_t>{0, 4});

  // Partial reads and their bounds.
  float two[2];
  f.read_bytes(*ta, 8, 8, two);
  CHECK(two[0] == 3.5f);
  CHECK(two[1] == 0.f);
  REQUIRE_THROWS_WITH(f.read_bytes(*ta, 20, 8, two), Contains(path) && Contains("'a'") &&
                                                         Contains("outside its 24 bytes"));
  REQUIRE_THROWS_WITH(f.read_bytes(*ta, 25, 0, two), Contains("outside"));
  CHECK_NOTHROW(f.read_bytes(*ta, 24, 0, nullptr));

  CHECK(f.find("nope") == nullptr);
  REQUIRE_THROWS_WITH(f.get("nope"), Contains(path + ": missing tensor nope"));
  REQUIRE_THROWS_WITH(f.read_all<float>("b"), Contains("'b' has dtype I32, expected F32"));
}

TEST_CASE("safetensors: header bytes match the reference layout", "[safetensors]") {
  TempDir dir;
  const std::string path = dir.file("ref.safetensors");
  const float x[2] = {1.f, 2.f};
  SafetensorsWriter w(path);
  w.add("x", "F32", {2}, x, 8);
  w.finish();
  std::string expect = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  while (expect.size() % 8) expect += ' ';
  const std::string file = raw_safetensors(expect, bytes_of(x, 8));
  std::ifstream is(path, std::ios::binary);
  const std::string got((std::istreambuf_iterator<char>(is)), std::istreambuf_iterator<char>());
  CHECK(got == file);
}

TEST_CASE("safetensors: reads a hand-made file", "[safetensors]") {
  TempDir dir;
  const std::string path = dir.file("hand.safetensors");
  const std::int32_t v[3] = {1, 2, 3};
  const std::string header =
      R"({"__metadata__":{"k":"v"},"b":{"dtype":"I32","shape":[2],"data_offsets":[4,12]},)"
      R"("a":{"dtype":"I32","shape":[],"data_offsets":[0,4]},"z":{"dtype":"U8","shape":[0],)"
      R"("data_offsets":[12,12], "extra":"ignored"}})";
  write_file(path, raw_safetensors(header, bytes_of(v, 12)));
  const SafetensorsFile f(path);
  CHECK(f.metadata().at("k") == "v");
  REQUIRE(f.tensors().size() == 3);
  CHECK(f.tensors()[0].name == "b");  // header order
  CHECK(f.read_all<std::int32_t>("a") == std::vector<std::int32_t>{1});
  CHECK(f.read_all<std::int32_t>("b") == std::vector<std::int32_t>{2, 3});
  CHECK(f.data_offset() == 8 + header.size());

  // An empty file (no tensors, no data) is valid too, and null metadata.
  write_file(path, raw_safetensors("{}", ""));
  CHECK(SafetensorsFile(path).tensors().empty());
  write_file(path, raw_safetensors(R"({"__metadata__":null})", ""));
  CHECK(SafetensorsFile(path).metadata().empty());
}

TEST_CASE("safetensors: malformed header length", "[safetensors]") {
  TempDir dir;
  const std::string path = dir.file("len.safetensors");
  write_file(path, "abc");
  REQUIRE_THROWS_WITH(SafetensorsFile(path), Contains(path) && Contains("3 bytes, too short"));
  write_file(path, headrecon_test::le64(0) + "{}");
  REQUIRE_THROWS_WITH(SafetensorsFile(path), Contains(path) && Contains("header length is 0"));
  write_file(path, headrecon_test::le64(100) + "{}");
  REQUIRE_THROWS_WITH(SafetensorsFile(path),
                      Contains(path) && Contains("header length 100 exceeds the 2 bytes"));
  write_file(path, headrecon_test::le64(~std::uint64_t(0)) + "{}");
  REQUIRE_THROWS_WITH(SafetensorsFile(path), Contains("exceeds"));
  REQUIRE_THROWS_WITH(SafetensorsFile(dir.file("absent.safetensors")),
                      Contains("absent.safetensors: cannot open"));
  REQUIRE_THROWS_WITH(SafetensorsFile(dir.path().string()), Contains("not a regular file"));
}

TEST_CASE("safetensors: malformed JSON headers", "[safetensors]") {
  TempDir dir;
  expect_open_error(dir, "{\"a\":", 0, "header: invalid JSON at byte 5");
  expect_open_error(dir, "{} x", 0, "expected end of input");
  expect_open_error(dir, "[1,2]", 0, "header is a JSON array, expected an object");
  expect_open_error(dir, "\"s\"", 0, "header is a JSON string");
  expect_open_error(
      dir, R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8"}})", 1,
      "duplicate key \"a\"");
}

TEST_CASE("safetensors: malformed tensor entries", "[safetensors]") {
  TempDir dir;
  const auto entry = [](const std::string& body) { return "{\"t\":" + body + "}"; };
  expect_open_error(dir, entry("[1]"), 0, "tensor 't': entry is a JSON array, expected an object");
  expect_open_error(dir, entry(R"({"shape":[1],"data_offsets":[0,4]})"), 4,
                    "tensor 't': missing field \"dtype\"");
  expect_open_error(dir, entry(R"({"dtype":"F32","data_offsets":[0,4]})"), 4,
                    "tensor 't': missing field \"shape\"");
  expect_open_error(dir, entry(R"({"dtype":"F32","shape":[1]})"), 4,
                    "tensor 't': missing field \"data_offsets\"");
  expect_open_error(dir, entry(R"({"dtype":32,"shape":[1],"data_offsets":[0,4]})"), 4,
                    "field \"dtype\" is a JSON integer, expected a string");
  expect_open_error(dir, entry(R"({"dtype":"F32","shape":{},"data_offsets":[0,4]})"), 4,
                    "field \"shape\" is a JSON object, expected an array");
  expect_open_error(dir, entry(R"({"dtype":"F32","shape":[1,-2],"data_offsets":[0,4]})"), 4,
                    "shape[1] is -2, expected a non-negative integer");
  expect_open_error(dir, entry(R"({"dtype":"F32","shape":["1"],"data_offsets":[0,4]})"), 4,
                    "shape[0] is string");
  expect_open_error(dir, entry(R"({"dtype":"F32","shape":[1.0],"data_offsets":[0,4]})"), 4,
                    "shape[0] is number");
  expect_open_error(dir, entry(R"({"dtype":"F32","shape":[1],"data_offsets":"0,4"})"), 4,
                    "field \"data_offsets\" is a JSON string");
  expect_open_error(dir, entry(R"({"dtype":"F32","shape":[1],"data_offsets":[0,4,8]})"), 8,
                    "data_offsets has 3 elements, expected 2");
  expect_open_error(dir, entry(R"({"dtype":"F32","shape":[1],"data_offsets":[-4,4]})"), 8,
                    "data_offsets[0] is -4");
  expect_open_error(dir, entry(R"({"dtype":"F99","shape":[1],"data_offsets":[0,4]})"), 4,
                    "tensor 't': unknown dtype 'F99'");
  expect_open_error(dir, entry(R"({"dtype":"F32","shape":[2,3],"data_offsets":[0,20]})"), 20,
                    "tensor 't': shape [2, 3] of F32 needs 24 bytes but data_offsets [0, 20] span 20");
  expect_open_error(
      dir,
      entry(R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]})"), 4,
      "shape [4294967296, 4294967296] of F32 overflows");
  expect_open_error(dir, entry(R"({"dtype":"F32","shape":[1],"data_offsets":[8,4]})"), 8,
                    "data_offsets [8, 4] end before they begin");
  expect_open_error(dir, entry(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})"), 4,
                    "data_offsets [0, 8] extend past the data buffer of 4 bytes");
  // Offsets are exact uint64: no fractions, no negatives, nothing above 2^64-1.
  expect_open_error(dir, entry(R"({"dtype":"F32","shape":[1],"data_offsets":[0,4.0]})"), 4,
                    "data_offsets[1] is number, expected a non-negative integer");
  expect_open_error(dir, entry(R"({"dtype":"F32","shape":[1],"data_offsets":[0,4e0]})"), 4,
                    "data_offsets[1] is number");
  expect_open_error(dir, entry(R"({"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551616]})"), 4,
                    "integer 18446744073709551616 is out of range");
  expect_open_error(dir, entry(R"({"dtype":"U8","shape":[1],"data_offsets":[0,18446744073709551615]})"), 4,
                    "needs 1 bytes but data_offsets [0, 18446744073709551615]");
  expect_open_error(dir, entry(R"({"dtype":"F32","shape":[1],"data_offsets":[0,4],"dtype":"F16"})"), 4,
                    "duplicate key \"dtype\" in object \"t\"");
  expect_open_error(dir, R"({"__metadata__":{"a":"1","a":"2"}})", 0,
                    "duplicate key \"a\" in object \"__metadata__\"");
  expect_open_error(dir, "{\"t\xff\":1}", 0, "ill-formed UTF-8");
}

TEST_CASE("safetensors: a cut file is reported as truncated with both sizes", "[safetensors]") {
  TempDir dir;
  const std::string path = dir.file("cut.safetensors");
  const float x[4] = {1, 2, 3, 4};
  {
    SafetensorsWriter w(path);
    w.add("a", "F32", {2}, x, 8);
    w.add("b", "F32", {2}, x + 2, 8);
    w.finish();
  }
  const auto full = std::filesystem::file_size(path);
  const std::uint64_t data_offset = SafetensorsFile(path).data_offset();
  for (const std::uint64_t cut : {full - 1, data_offset + 8, data_offset, data_offset - 5, std::uint64_t(12), std::uint64_t(3)}) {
    std::filesystem::resize_file(path, full);
    std::filesystem::resize_file(path, cut);
    INFO("cut to " << cut << " of " << full << " bytes");
    if (cut >= data_offset) {
      REQUIRE_THROWS_WITH(SafetensorsFile(path),
                          Contains(path) && Contains("truncated") && Contains("tensor 'b'") &&
                              Contains("header describes " + std::to_string(full) + " bytes, the file has " +
                                       std::to_string(cut)));
    } else if (cut >= 8) {
      REQUIRE_THROWS_WITH(SafetensorsFile(path),
                          Contains(path) && Contains("truncated") &&
                              Contains("header alone needs " + std::to_string(data_offset) + " bytes, the file has " +
                                       std::to_string(cut)));
    } else {
      REQUIRE_THROWS_WITH(SafetensorsFile(path), Contains(path) && Contains("truncated"));
    }
  }
}

TEST_CASE("safetensors: coverage of the data buffer", "[safetensors]") {
  TempDir dir;
  expect_open_error(dir,
                    R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                    R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                    12, "tensor 'b' data_offsets [4, 12] overlap tensor 'a' [0, 8]");
  expect_open_error(dir,
                    R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                    R"("b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                    8, "overlap tensor");
  expect_open_error(dir,
                    R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                    R"("b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})",
                    16, "hole in the data buffer: bytes [8, 12) belong to no tensor");
  expect_open_error(dir, R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8,
                    "hole in the data buffer: bytes [0, 4)");
  expect_open_error(dir, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 11,
                    "3 trailing bytes after the last tensor (data buffer is 11 bytes");
  expect_open_error(dir, "{}", 5, "5 trailing bytes");
  expect_open_error(dir,
                    R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                    R"("z":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})",
                    8, "tensor 'z' data_offsets [4, 4] overlap tensor 'a'");
}

TEST_CASE("safetensors: malformed metadata", "[safetensors]") {
  TempDir dir;
  expect_open_error(dir, R"({"__metadata__":{"a":"x","n":3}})", 0,
                    "__metadata__ value of key 'n' is a JSON integer, expected a string");
  expect_open_error(dir, R"({"__metadata__":{"a":{"b":"c"}}})", 0, "is a JSON object");
  expect_open_error(dir, R"({"__metadata__":["a"]})", 0,
                    "__metadata__ is a JSON array, expected an object");
}

TEST_CASE("safetensors: writer misuse", "[safetensors]") {
  TempDir dir;
  const std::string path = dir.file("w.safetensors");
  const float x[4] = {1, 2, 3, 4};
  {
    SafetensorsWriter w(path);
    w.add("x", "F32", {4}, x, 16);
    REQUIRE_THROWS_WITH(w.add("x", "F32", {4}, x, 16),
                        Contains(path) && Contains("duplicate tensor name 'x'"));
    REQUIRE_THROWS_WITH(w.reserve("x", "F32", {4}), Contains("duplicate tensor name 'x'"));
    REQUIRE_THROWS_WITH(w.add("__metadata__", "F32", {4}, x, 16), Contains("not a valid tensor name"));
    REQUIRE_THROWS_WITH(w.add("y", "F31", {4}, x, 16), Contains("unknown dtype 'F31'"));
    REQUIRE_THROWS_WITH(w.add("y", "F32", {4}, x, 12),
                        Contains("tensor 'y': shape [4] of F32 needs 16 bytes, got 12"));
    REQUIRE_THROWS_WITH(w.reserve("y", "F32", {std::uint64_t(1) << 62, 8}), Contains("overflows"));
    REQUIRE_THROWS_WITH(w.reserve("bad\xff", "F32", {1}), Contains("not valid UTF-8"));
    REQUIRE_THROWS_WITH(w.set_metadata("k", "\xc0"), Contains("metadata 'k'"));
    REQUIRE_THROWS_WITH(w.write_rows("x", 0, x, 4), Contains("write_rows() called before"));
    w.reserve("r", "F32", {4});
    w.begin_stream();
    REQUIRE_THROWS_WITH(w.add("z", "F32", {4}, x, 16), Contains("add() called while streaming"));
    REQUIRE_THROWS_WITH(w.set_metadata("a", "b"), Contains("called while streaming"));
    REQUIRE_THROWS_WITH(w.write_rows("x", 0, x, 4), Contains("added with data, not reserve()d"));
    REQUIRE_THROWS_WITH(w.write_rows("q", 0, x, 4), Contains("undeclared tensor 'q'"));
    REQUIRE_THROWS_WITH(w.write_rows("r", 12, x, 8), Contains("outside its 16 bytes"));
    w.write_rows("r", 4, x, 8);
    REQUIRE_THROWS_WITH(w.write_rows("r", 0, x, 8),
                        Contains("write of bytes [0, 8) overlaps bytes already written [4, 8)"));
    REQUIRE_THROWS_WITH(w.write_rows("r", 8, x, 8), Contains("overlaps"));
    REQUIRE_THROWS_WITH(w.finish(), Contains(path) && Contains("tensor 'r': only 8 of 16 bytes") &&
                                        Contains("bytes [0, 4) are missing"));
    CHECK_FALSE(std::filesystem::exists(path));
    // The writer is abandoned: its destructor removes the temporary file.
  }
  CHECK_FALSE(std::filesystem::exists(path));
  CHECK_FALSE(std::filesystem::exists(path + ".tmp"));

  {  // finish() completes the file after the error is fixed.
    SafetensorsWriter w(path);
    w.reserve("r", "F32", {4});
    w.begin_stream();
    w.write_rows("r", 0, x, 8);
    REQUIRE_THROWS_WITH(w.finish(), Contains("bytes [8, 16) are missing"));
    w.write_rows("r", 8, x + 2, 8);
    w.finish();
    REQUIRE_THROWS_WITH(w.finish(), Contains("finish() called after finish()"));
  }
  CHECK(SafetensorsFile(path).read_all<float>("r") == std::vector<float>{1, 2, 3, 4});

  // A writer that never reaches finish() leaves an existing file untouched.
  {
    SafetensorsWriter w(path);
    w.add("other", "F32", {1}, x, 4);
    w.begin_stream();
  }
  CHECK(SafetensorsFile(path).find("r") != nullptr);
  CHECK_FALSE(std::filesystem::exists(path + ".tmp"));

  REQUIRE_THROWS_WITH(
      [&] {
        SafetensorsWriter w(dir.file("no/such/dir.safetensors"));
        w.finish();
      }(),
      Contains("dir.safetensors.tmp: cannot create"));
}

TEST_CASE("safetensors: reading is lazy", "[safetensors]") {
  TempDir dir;
  const std::string path = dir.file("big.safetensors");
  const std::size_t rows = 4096, cols = 256;  // 4 MiB of F32
  {
    SafetensorsWriter w(path);
    w.reserve("big", "F32", {rows, cols});
    w.set_metadata("rows", std::to_string(rows));
    w.begin_stream();
    std::vector<float> batch(256 * cols);
    for (std::size_t r0 = 0; r0 < rows; r0 += 256) {
      for (std::size_t i = 0; i < batch.size(); ++i) batch[i] = float(r0 * cols + i);
      w.write_rows("big", r0 * cols * 4, batch.data(), batch.size() * 4);
    }
    w.finish();
  }
  const SafetensorsFile f(path);
  const TensorInfo& t = f.get("big");
  CHECK(f.file_size() == f.data_offset() + rows * cols * 4);
  std::vector<float> row(cols);
  f.read_bytes(t, 1000 * cols * 4, cols * 4, row.data());
  for (std::size_t i = 0; i < cols; ++i) REQUIRE(row[i] == float(1000 * cols + i));

  // Cut the file after opening: early rows still read (nothing was loaded
  // up front), late rows fail with a short read naming the file.
  std::filesystem::resize_file(path, f.data_offset() + 2000 * cols * 4);
  f.read_bytes(t, 10 * cols * 4, cols * 4, row.data());
  CHECK(row[0] == float(10 * cols));
  REQUIRE_THROWS_WITH(f.read_bytes(t, 3000 * cols * 4, cols * 4, row.data()),
                      Contains(path) && Contains("short read") && Contains("tensor 'big'"));
}

TEST_CASE("safetensors: dtype table", "[safetensors]") {
  CHECK(safetensors_dtype_size("F32") == 4);
  CHECK(safetensors_dtype_size("BF16") == 2);
  CHECK(safetensors_dtype_size("I64") == 8);
  CHECK(safetensors_dtype_size("BOOL") == 1);
  CHECK(safetensors_dtype_size("f32") == 0);
  CHECK(safetensors_dtype<float>::name == "F32");
  CHECK(safetensors_dtype<bf16_t>::name == "BF16");
}
