#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "headrecon/activations_io.hpp"
#include "io_test_util.hpp"

using namespace headrecon;
using Catch::Contains;
using headrecon_test::TempDir;

namespace {

/// Deterministic activation value of (layer, kind, token, head, component).
float value(std::size_t l, Kind k, std::size_t t, std::size_t h, std::size_t i) {
  const std::uint32_t x = std::uint32_t(l * 1000003u + std::size_t(k) * 7919u + t * 104729u +
                                        h * 1299709u + i * 15485863u);
  return float(int(x % 20001u) - 10000) / 997.f + (x % 3 == 0 ? 1e-3f : 0.f);
}

/// What a float becomes once stored as `dt` and read back as float.
float stored(float x, DType dt) {
  switch (dt) {
    case DType::f16: return to_float(to_f16(x));
    case DType::bf16: return to_float(to_bf16(x));
    default: return x;
  }
}

/// A head-major [heads][tokens][dim] buffer for tokens [t0, t0 + n).
std::vector<float> head_major_batch(std::size_t l, Kind k, std::size_t t0, std::size_t n,
                                    std::size_t heads, std::size_t dim) {
  std::vector<float> buf(n * heads * dim);
  for (std::size_t h = 0; h < heads; ++h)
    for (std::size_t t = 0; t < n; ++t)
      for (std::size_t i = 0; i < dim; ++i)
        buf[(h * n + t) * dim + i] = value(l, k, t0 + t, h, i);
  return buf;
}

constexpr std::size_t L = 2, T = 10, D = 3;
const KindHeads kHeads{4, 2, 0};  // q and k, no v

/// Writes a complete file: batches of 4, 4, 2 tokens, in shuffled order, from
/// head-major (strided) sources.
void write_full(const std::string& path, DType dt, bool positions) {
  ActivationWriter w(path, L, T, D, kHeads, dt, true, positions, {{"model", "tiny"}});
  const std::size_t starts[] = {4, 0, 8};
  for (std::size_t l = 0; l < L; ++l)
    for (Kind k : {Kind::k, Kind::q})
      for (std::size_t t0 : starts) {
        const std::size_t n = t0 == 8 ? 2 : 4;
        const std::size_t nh = kHeads[k];
        auto buf = head_major_batch(l, k, t0, n, nh, D);
        const auto view = make_view(static_cast<const float*>(buf.data()), buf.size(),
                                    Extents3{n, nh, D}, Layout::head_major);
        w.write(l, k, t0, view);
      }
  if (positions) {
    const std::int32_t pos[T] = {0, 1, 2, 3, 0, 1, 2, 0, 1, 2};
    w.write_positions(5, pos + 5, 5);
    w.write_positions(0, pos, 5);
  }
  w.finish();
}

void check_view(const AnyHeadsView& v, std::size_t l, Kind k, std::size_t t0, DType dt) {
  REQUIRE(v.dtype == dt);
  v.visit([&](auto hv) {
    for (std::size_t t = 0; t < hv.tokens(); ++t)
      for (std::size_t h = 0; h < hv.heads(); ++h)
        for (std::size_t i = 0; i < hv.dim(); ++i) {
          const float want = stored(value(l, k, t0 + t, h, i), dt);
          const float got = to_float(hv(t, h, i));
          if (std::memcmp(&want, &got, 4) != 0) {
            INFO("layer " << l << " token " << t0 + t << " head " << h << " i " << i);
            REQUIRE(got == want);
          }
        }
  });
}

}  // namespace

TEST_CASE("activations_io: round trip in F32, F16 and BF16", "[activations_io]") {
  TempDir dir;
  for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
    INFO("dtype " << dtype_name(dt));
    const std::string path = dir.file("act_" + std::string(dtype_name(dt)) + ".safetensors");
    write_full(path, dt, true);
    CHECK_FALSE(std::filesystem::exists(path + ".tmp"));

    const ActivationReader r(path);
    CHECK(r.path() == path);
    CHECK(r.n_layers() == L);
    CHECK(r.n_tokens() == T);
    CHECK(r.head_dim() == D);
    CHECK(r.post_rope());
    CHECK(r.has(Kind::q));
    CHECK(r.has(Kind::k));
    CHECK_FALSE(r.has(Kind::v));
    CHECK(r.n_heads(Kind::q) == 4);
    CHECK(r.n_heads(Kind::k) == 2);
    CHECK(r.n_heads(Kind::v) == 0);
    CHECK(r.dtype(Kind::k, 1) == dt);
    CHECK(r.metadata().at("model") == "tiny");
    CHECK(r.metadata().at("format") == "headrecon.activations");
    CHECK(r.has_positions());
    CHECK(r.positions(0, T) == std::vector<std::int32_t>{0, 1, 2, 3, 0, 1, 2, 0, 1, 2});
    CHECK(r.positions(3, 3) == std::vector<std::int32_t>{3, 0, 1});

    std::vector<std::byte> buf;
    for (std::size_t l = 0; l < L; ++l)
      for (Kind k : {Kind::q, Kind::k}) {
        const AnyHeadsView all = r.read(l, k, 0, T, buf);
        CHECK(all.extent.tokens == T);
        CHECK(all.extent.heads == kHeads[k]);
        CHECK(all.extent.dim == D);
        check_view(all, l, k, 0, dt);
        // A batch in the middle, straddling two written batches.
        const AnyHeadsView mid = r.read(l, k, 3, 4, buf);
        CHECK(buf.size() == 4 * kHeads[k] * D * dtype_size(dt));
        CHECK(mid.extent.tokens == 4);
        CHECK(mid.stride.token == std::ptrdiff_t(kHeads[k] * D));
        check_view(mid, l, k, 3, dt);
      }
    CHECK(r.read(0, Kind::q, T, 0, buf).extent.tokens == 0);
    REQUIRE_THROWS_WITH(r.read(0, Kind::q, 8, 3, buf),
                        Contains(path) && Contains("'layers.0.q': tokens [8, 11) are outside [0, 10)"));
    REQUIRE_THROWS_WITH(r.read(2, Kind::q, 0, 1, buf), Contains("layer 2 out of range"));
    REQUIRE_THROWS_WITH(r.read(0, Kind::v, 0, 1, buf), Contains("kind v is not stored"));
    REQUIRE_THROWS_WITH(r.dtype(Kind::v, 0), Contains("kind v is not stored"));
    REQUIRE_THROWS_WITH(r.positions(9, 2), Contains("positions of tokens [9, 11)"));
  }
}

TEST_CASE("activations_io: typed and converting writes", "[activations_io]") {
  TempDir dir;
  const std::string path = dir.file("conv.safetensors");
  // Source in f16, file in f32 and bf16: conversion goes through float.
  std::vector<f16_t> src(3 * 1 * 2);
  for (std::size_t i = 0; i < src.size(); ++i) src[i] = to_f16(0.1f * float(i) - 0.25f);
  const auto view = make_view(src.data(), src.size(), Extents3{3, 1, 2}, Layout::token_major);
  for (DType dt : {DType::f32, DType::bf16, DType::f16}) {
    {
      ActivationWriter w(path, 1, 3, 2, KindHeads{0, 0, 1}, dt, false, false);
      w.write(0, Kind::v, 0, view);  // HeadsView<f16_t> overload
      w.finish();
    }
    const ActivationReader r(path);
    CHECK_FALSE(r.post_rope());
    CHECK_FALSE(r.has_positions());
    CHECK(r.positions(1, 2) == std::vector<std::int32_t>{1, 2});  // one sequence
    std::vector<std::byte> buf;
    const AnyHeadsView got = r.read(0, Kind::v, 0, 3, buf);
    got.visit([&](auto hv) {
      for (std::size_t t = 0; t < 3; ++t)
        for (std::size_t i = 0; i < 2; ++i) {
          const float x = to_float(src[t * 2 + i]);
          CHECK(to_float(hv(t, 0, i)) == stored(x, dt));
        }
    });
  }
}

TEST_CASE("activations_io: writer detects missing and overlapping rows", "[activations_io]") {
  TempDir dir;
  const std::string path = dir.file("w.safetensors");
  std::vector<float> buf(T * 4 * D, 1.f);
  const auto batch = [&](std::size_t n, std::size_t heads) {
    return make_view(static_cast<const float*>(buf.data()), buf.size(), Extents3{n, heads, D},
                     Layout::token_major);
  };
  {
    ActivationWriter w(path, L, T, D, kHeads, DType::f32, true, true);
    for (std::size_t l = 0; l < L; ++l) {
      w.write(l, Kind::q, 0, batch(T, 4));
      w.write(l, Kind::k, 0, batch(T, 2));
    }
    const std::int32_t pos[T] = {};
    w.write_positions(0, pos, 4);
    REQUIRE_THROWS_WITH(w.finish(), Contains(path) && Contains("tensor 'positions': tokens [4, 10) were "
                                                               "never written (4 of 10 tokens written)"));
    w.write_positions(4, pos, 6);
    w.finish();
  }
  CHECK(std::filesystem::exists(path));
  std::filesystem::remove(path);
  {
    ActivationWriter w(path, L, T, D, kHeads, DType::bf16, true, false);
    w.write(0, Kind::q, 0, batch(4, 4));
    w.write(0, Kind::q, 6, batch(4, 4));
    REQUIRE_THROWS_WITH(w.write(0, Kind::q, 2, batch(3, 4)),
                        Contains(path) && Contains("tensor 'layers.0.q': tokens [2, 4) were already written"));
    REQUIRE_THROWS_WITH(w.write(0, Kind::q, 9, batch(1, 4)), Contains("tokens [9, 10) were already written"));
    REQUIRE_THROWS_WITH(w.write(0, Kind::q, 8, batch(3, 4)),
                        Contains("tokens [8, 11) are outside [0, 10)"));
    REQUIRE_THROWS_WITH(w.write(0, Kind::k, 0, batch(3, 4)),
                        Contains("tensor 'layers.0.k': batch has 4 heads x 3 dims, expected 2 x 3"));
    REQUIRE_THROWS_WITH(w.write(0, Kind::v, 0, batch(3, 4)), Contains("kind v is not stored"));
    REQUIRE_THROWS_WITH(w.write(2, Kind::q, 0, batch(3, 4)), Contains("layer 2 out of range"));
    const std::int32_t p = 0;
    REQUIRE_THROWS_WITH(w.write_positions(0, &p, 1), Contains("without a positions tensor"));
    REQUIRE_THROWS_WITH(w.finish(), Contains("tensor 'layers.0.q': tokens [4, 6) were never written"));
    w.write(0, Kind::q, 4, batch(2, 4));
    REQUIRE_THROWS_WITH(w.finish(), Contains("tensor 'layers.0.k': tokens [0, 10) were never written"));
    // Abandoned: no file, no temporary.
  }
  CHECK_FALSE(std::filesystem::exists(path));
  CHECK_FALSE(std::filesystem::exists(path + ".tmp"));

  ActivationWriter w(path, 1, 2, D, KindHeads{0, 1, 0}, DType::f32, true, true);
  const std::int32_t neg[2] = {0, -1};
  REQUIRE_THROWS_WITH(w.write_positions(0, neg, 2), Contains("token 1 has negative position -1"));
  REQUIRE_THROWS_WITH(ActivationWriter(path, 0, 2, D, kHeads, DType::f32, true, false),
                      Contains("n_layers must be in [1, 4096], got 0"));
  REQUIRE_THROWS_WITH(ActivationWriter(path, 1, 2, D, KindHeads{}, DType::f32, true, false),
                      Contains("no kind has a positive head count"));
  REQUIRE_THROWS_WITH(
      ActivationWriter(path, 1, 2, D, kHeads, DType::f32, true, false, {{"n_tokens", "3"}}),
      Contains("'n_tokens' is reserved"));
}

namespace {

/// Writes an activations-like file from explicit tensors (zero data).
struct Spec {
  std::map<std::string, std::string> meta = {{"format", "headrecon.activations"},
                                             {"version", "1"},
                                             {"n_layers", "2"},
                                             {"n_tokens", "5"},
                                             {"head_dim", "3"},
                                             {"post_rope", "true"}};
  std::vector<std::tuple<std::string, std::string, std::vector<std::uint64_t>>> tensors = {
      {"layers.0.k", "F16", {5, 2, 3}}, {"layers.1.k", "F16", {5, 2, 3}},
      {"layers.0.q", "F32", {5, 4, 3}}, {"layers.1.q", "BF16", {5, 4, 3}}};

  std::map<std::string, std::string> data;  // tensor contents; zeros when absent

  void write(const std::string& path) const {
    SafetensorsWriter w(path);
    for (const auto& [k, v] : meta) w.set_metadata(k, v);
    for (const auto& [name, dt, shape] : tensors) {
      std::uint64_t n = safetensors_dtype_size(dt);
      for (auto x : shape) n *= x;
      const auto it = data.find(name);
      const std::string bytes = it != data.end() ? it->second : std::string(n, '\0');
      w.add(name, dt, shape, bytes.data(), bytes.size());
    }
    w.finish();
  }
};

}  // namespace

TEST_CASE("activations_io: reader validates names, shapes and metadata", "[activations_io]") {
  TempDir dir;
  const std::string path = dir.file("r.safetensors");
  {
    Spec ok;  // mixed dtypes per layer are allowed
    ok.write(path);
    const ActivationReader r(path);
    CHECK(r.dtype(Kind::q, 0) == DType::f32);
    CHECK(r.dtype(Kind::q, 1) == DType::bf16);
    CHECK(r.n_heads(Kind::q) == 4);
  }
  const auto expect = [&](auto mutate, const std::string& what) {
    Spec s;
    mutate(s);
    s.write(path);
    REQUIRE_THROWS_WITH(ActivationReader(path), Contains(path) && Contains(what));
  };
  using Shape = std::vector<std::uint64_t>;
  expect([](Spec& s) { std::get<2>(s.tensors[1]) = Shape{5, 3, 3}; },
         "tensor 'layers.1.k' has 3 heads but 'layers.0.k' has 2");
  expect([](Spec& s) { std::get<2>(s.tensors[1]) = Shape{5, 2, 4}; },
         "tensor 'layers.1.k' has shape [5, 2, 4], expected [n_tokens, heads, head_dim] = [5, 1..4096, 3]");
  expect([](Spec& s) { std::get<2>(s.tensors[0]) = Shape{6, 2, 3}; }, "has shape [6, 2, 3]");
  expect([](Spec& s) { std::get<2>(s.tensors[0]) = Shape{5, 0, 3}; }, "has shape [5, 0, 3]");
  expect([](Spec& s) { std::get<2>(s.tensors[0]) = Shape{30}; }, "has shape [30]");
  expect([](Spec& s) { s.tensors.pop_back(); },
         "missing tensor 'layers.1.q' (every layer must store the same kinds as 'layers.0.q')");
  expect([](Spec& s) { s.tensors.push_back({"layers.2.v", "F32", {5, 1, 3}}); },
         "unexpected tensor 'layers.2.v'");
  expect([](Spec& s) { s.tensors.push_back({"layers.01.v", "F32", {5, 1, 3}}); },
         "unexpected tensor 'layers.01.v'");
  expect([](Spec& s) { s.tensors.push_back({"layers.0.o", "F32", {5, 1, 3}}); },
         "unexpected tensor 'layers.0.o'");
  expect([](Spec& s) { s.tensors.push_back({"extra", "F32", {1}}); }, "unexpected tensor 'extra'");
  expect([](Spec& s) { std::get<1>(s.tensors[0]) = "I16"; },
         "tensor 'layers.0.k': unsupported element type 'I16'");
  expect([](Spec& s) { s.tensors.clear(); }, "no layers.L.{q,k,v} tensors");
  expect([](Spec& s) { s.tensors.push_back({"positions", "I64", {5}}); },
         "tensor 'positions' has dtype I64, expected I32");
  expect([](Spec& s) { s.tensors.push_back({"positions", "I32", {4}}); },
         "tensor 'positions' has shape [4], expected [n_tokens] = [5]");
  expect([](Spec& s) { s.meta["format"] = "headrecon.plan"; },
         "metadata format is 'headrecon.plan', expected 'headrecon.activations'");
  expect([](Spec& s) { s.meta["version"] = "01"; }, "unsupported headrecon.activations version '01'");
  expect([](Spec& s) { s.meta["n_tokens"] = "5x"; }, "metadata 'n_tokens' = '5x' is not");
  expect([](Spec& s) { s.meta["head_dim"] = "0"; }, "'head_dim' = '0' is out of range");
  expect([](Spec& s) { s.meta.erase("post_rope"); }, "missing metadata key 'post_rope' (\"true\" when Q/K were");
  expect([](Spec& s) { s.meta.erase("format"); }, "missing metadata key 'format'");
  expect([](Spec& s) { s.meta["version"] = "2"; }, "unsupported headrecon.activations version '2' (expected 1)");
  expect([](Spec& s) { s.meta["post_rope"] = "1"; }, "'post_rope' = '1' is not 'true' or 'false'");

  // Negative stored positions are rejected when read.
  Spec s;
  s.tensors.push_back({"positions", "I32", {5}});
  const std::int32_t pos[5] = {0, 1, -5, 0, 1};
  s.data["positions"] = std::string(reinterpret_cast<const char*>(pos), sizeof pos);
  s.write(path);
  const ActivationReader r(path);
  CHECK(r.positions(0, 2) == std::vector<std::int32_t>{0, 1});
  REQUIRE_THROWS_WITH(r.positions(1, 3), Contains(path) && Contains("token 2 has negative position -5"));
}

TEST_CASE("activations_io: reads only the requested batch", "[activations_io]") {
  TempDir dir;
  const std::string path = dir.file("big.safetensors");
  const std::size_t tokens = 8192, heads = 8, dim = 16;  // 4 MiB per F32 tensor
  {
    ActivationWriter w(path, 1, tokens, dim, KindHeads{0, heads, 0}, DType::f32, true, false);
    std::vector<float> buf(512 * heads * dim);
    for (std::size_t t0 = 0; t0 < tokens; t0 += 512) {
      for (std::size_t t = 0; t < 512; ++t)
        for (std::size_t h = 0; h < heads; ++h)
          for (std::size_t i = 0; i < dim; ++i)
            buf[(t * heads + h) * dim + i] = float((t0 + t) * 1000 + h * 10) + float(i) / 16.f;
      w.write(0, Kind::k, t0,
              make_view(static_cast<const float*>(buf.data()), buf.size(),
                        Extents3{512, heads, dim}, Layout::token_major));
    }
    w.finish();
  }
  const ActivationReader r(path);
  // Truncate the file to its first half: batches there still read, because
  // nothing beyond the header was loaded when the reader was opened.
  std::filesystem::resize_file(path, r.file().data_offset() + tokens / 2 * heads * dim * 4);
  std::vector<std::byte> buf;
  const AnyHeadsView v = r.read(0, Kind::k, 1000, 16, buf);
  CHECK(buf.size() == 16 * heads * dim * 4);
  v.visit([&](auto hv) {
    for (std::size_t t = 0; t < 16; ++t)
      for (std::size_t h = 0; h < heads; ++h)
        for (std::size_t i = 0; i < dim; ++i)
          REQUIRE(to_float(hv(t, h, i)) == float((1000 + t) * 1000 + h * 10) + float(i) / 16.f);
  });
  REQUIRE_THROWS_WITH(r.read(0, Kind::k, 6000, 16, buf),
                      Contains(path) && Contains("short read") && Contains("layers.0.k"));
}

TEST_CASE("activations_io: n_layers, n_tokens and head_dim come from the tensors, checked against the metadata",
          "[activations_io]") {
  TempDir dir;
  const std::string path = dir.file("r.safetensors");
  const auto expect = [&](auto mutate, const std::string& what) {
    Spec s;
    mutate(s);
    s.write(path);
    REQUIRE_THROWS_WITH(ActivationReader(path), Contains(path) && Contains(what));
  };
  {  // Only the required keys: everything else is inferred.
    Spec s;
    s.meta = {{"format", "headrecon.activations"}, {"post_rope", "false"}};
    s.write(path);
    const ActivationReader r(path);
    CHECK(r.n_layers() == 2);
    CHECK(r.n_tokens() == 5);
    CHECK(r.head_dim() == 3);
    CHECK(r.n_heads(Kind::q) == 4);
    CHECK(r.n_heads(Kind::k) == 2);
    CHECK_FALSE(r.post_rope());
  }
  using Shape = std::vector<std::uint64_t>;
  const auto minimal = [](Spec& s) { s.meta = {{"format", "headrecon.activations"}, {"post_rope", "true"}}; };
  expect([&](Spec& s) { minimal(s); std::get<2>(s.tensors[1]) = Shape{6, 2, 3}; },
         "tensor 'layers.1.k' has shape [6, 2, 3], expected [n_tokens, heads, head_dim] = [5, 1..4096, 3] "
         "(as tensor 'layers.0.");
  expect([&](Spec& s) { minimal(s); std::get<2>(s.tensors[2]) = Shape{5, 4, 2}; },
         "has shape [5, 2, 3], expected [n_tokens, heads, head_dim] = [5, 1..4096, 2] (as tensor 'layers.0.q')");
  expect([&](Spec& s) { minimal(s); s.tensors.erase(s.tensors.begin() + 1); },
         "missing tensor 'layers.1.k' (every layer must store the same kinds as 'layers.0.k')");
  expect([&](Spec& s) { minimal(s); s.tensors.push_back({"layers.3.k", "F16", {5, 2, 3}}); },
         "missing tensor 'layers.2.q'");
  // Keys that are present must agree with the tensors.
  expect([](Spec& s) { s.meta["n_tokens"] = "6"; }, "expected [n_tokens, heads, head_dim] = [6, 1..4096, 3]");
  expect([](Spec& s) { s.meta["head_dim"] = "4"; }, "= [5, 1..4096, 4]");
  expect([](Spec& s) { s.meta["n_layers"] = "3"; },
         "missing tensor 'layers.2.q' (every layer must store the same kinds as 'layers.0.q', for the n_layers = 3 "
         "of the metadata)");
  expect([](Spec& s) { s.meta["n_layers"] = "1"; }, "unexpected tensor 'layers.1.k' (expected layers.L.{q,k,v} with "
                                                    "L < n_layers = 1, or positions)");
}

TEST_CASE("activations_io: counts beyond the documented limits fail before anything is allocated",
          "[activations_io]") {
  TempDir dir;
  const std::string path = dir.file("huge.safetensors");
  const auto expect = [&](auto mutate, const std::string& what) {
    Spec s;
    mutate(s);
    s.write(path);
    REQUIRE_THROWS_WITH(ActivationReader(path), Contains(path) && Contains(what));
  };
  // Issue 13: n_layers = 2^31-1 made the reader allocate 51 GB.
  expect([](Spec& s) { s.meta["n_layers"] = "2147483647"; },
         "metadata 'n_layers' = '2147483647' is out of range [1, 4096]");
  expect([](Spec& s) { s.meta["head_dim"] = "5000"; }, "metadata 'head_dim' = '5000' is out of range [1, 4096]");
  expect([](Spec& s) {
    s.meta.erase("n_layers");
    s.tensors.push_back({"layers.4096.k", "F16", {5, 2, 3}});
  }, "unexpected tensor 'layers.4096.k' (expected layers.L.{q,k,v} with L < the limit 4096");
  expect([](Spec& s) {
    s.meta.erase("n_layers");
    s.tensors = {{"layers.4095.k", "F16", {5, 2, 3}}};
  }, "missing tensor 'layers.0.k'");
  expect([](Spec& s) {
    s.meta = {{"format", "headrecon.activations"}, {"post_rope", "true"}};
    s.tensors = {{"layers.0.v", "U8", {1, 1, 2}}};
  }, "unsupported element type 'U8'");
  expect([](Spec& s) {
    s.meta = {{"format", "headrecon.activations"}, {"post_rope", "true"}};
    s.tensors = {{"layers.0.v", "F16", {1, 1, 5000}}};
  }, "tensor 'layers.0.v' has shape [1, 1, 5000]: head_dim 5000 is outside [1, 4096]");
  expect([](Spec& s) {
    s.meta = {{"format", "headrecon.activations"}, {"post_rope", "true"}};
    s.tensors = {{"layers.0.v", "F16", {1, 5000, 1}}};
  }, "tensor 'layers.0.v' has shape [1, 5000, 1], expected [n_tokens, heads, head_dim] = [1, 1..4096, 1]");
  REQUIRE_THROWS_WITH(ActivationWriter(path, 5000, 1, 1, KindHeads{0, 1, 0}, DType::f32, true, false),
                      Contains("n_layers must be in [1, 4096], got 5000"));
  REQUIRE_THROWS_WITH(ActivationWriter(path, 1, 1, 1, KindHeads{0, 4097, 0}, DType::f32, true, false),
                      Contains("4097 k heads exceed the maximum of 4096"));
}

TEST_CASE("activations_io: a file written by hand as the README describes it is read", "[activations_io]") {
  // What a Python script with json + struct writes: json.dumps' separators,
  // no padding, no version or counts in the metadata, tensors in any order.
  TempDir dir;
  const std::string path = dir.file("py.safetensors");
  std::vector<float> k(3 * 1 * 2), v(3 * 2 * 2);
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = float(i) + 0.5f;
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = -float(i);
  const std::string header =
      R"({"__metadata__": {"format": "headrecon.activations", "post_rope": "true", "source": "numpy"}, )"
      R"("layers.0.v": {"dtype": "F32", "shape": [3, 2, 2], "data_offsets": [0, 48]}, )"
      R"("layers.0.k": {"dtype": "F32", "shape": [3, 1, 2], "data_offsets": [48, 72]}})";
  const std::string data = std::string(reinterpret_cast<const char*>(v.data()), 48) +
                           std::string(reinterpret_cast<const char*>(k.data()), 24);
  headrecon_test::write_file(path, headrecon_test::raw_safetensors(header, data));
  const ActivationReader r(path);
  CHECK(r.n_layers() == 1);
  CHECK(r.n_tokens() == 3);
  CHECK(r.head_dim() == 2);
  CHECK(r.n_heads(Kind::k) == 1);
  CHECK(r.n_heads(Kind::v) == 2);
  CHECK_FALSE(r.has(Kind::q));
  CHECK(r.positions(0, 3) == std::vector<std::int32_t>{0, 1, 2});
  std::vector<std::byte> buf;
  const AnyHeadsView got = r.read(0, Kind::k, 1, 2, buf);
  got.visit([&](auto hv) {
    CHECK(to_float(hv(0, 0, 0)) == 2.5f);
    CHECK(to_float(hv(1, 0, 1)) == 5.5f);
  });
  const AnyHeadsView gv = r.read(0, Kind::v, 2, 1, buf);
  gv.visit([&](auto hv) { CHECK(to_float(hv(0, 1, 1)) == -11.f); });
}
