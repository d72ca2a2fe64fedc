#include <catch2/catch.hpp>

#include <cfloat>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "headrecon/plan_io.hpp"
#include "io_test_util.hpp"

using namespace headrecon;
using Catch::Contains;
using headrecon_test::TempDir;

namespace {

TargetMap make_target(std::int32_t layer, std::int32_t head, std::vector<HeadId> refs,
                      std::size_t d, std::mt19937& rng) {
  std::normal_distribution<float> nd;
  TargetMap t;
  t.target = {layer, head};
  t.refs = std::move(refs);
  t.weight.resize(t.refs.size() * d * d);
  for (float& w : t.weight) w = nd(rng);
  t.bias.resize(d);
  for (float& b : t.bias) b = nd(rng);
  t.r2_heldout = 0.5f + 0.1f * float(head);
  return t;
}

Plan make_plan() {
  std::mt19937 rng(42);
  Plan p;
  p.head_dim = 4;
  p.n_layers = 3;
  p.post_rope = false;
  p.sink_tokens = 4;
  KindPlan k;
  k.kind = Kind::k;
  k.n_heads = 4;
  k.layers.resize(3);
  k.layers[0].push_back(make_target(0, 1, {{0, 0}, {0, 2}}, 4, rng));
  k.layers[2].push_back(make_target(2, 1, {{2, 0}, {1, 3}}, 4, rng));
  k.layers[2].push_back(make_target(2, 3, {{0, 0}}, 4, rng));
  // Exact bit patterns that must survive: -0, a subnormal, FLT_MAX.
  k.layers[0][0].weight[0] = -0.f;
  k.layers[0][0].weight[1] = 1e-45f;
  k.layers[0][0].weight[2] = FLT_MAX;
  k.layers[2][1].r2_heldout = -1.f;
  KindPlan v;
  v.kind = Kind::v;
  v.n_heads = 2;
  v.layers.resize(3);
  v.layers[1].push_back(make_target(1, 0, {{0, 1}, {1, 1}}, 4, rng));
  p.kinds.push_back(std::move(k));
  p.kinds.push_back(std::move(v));
  p.validate();
  return p;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

void require_equal(const Plan& a, const Plan& b) {
  REQUIRE(a.head_dim == b.head_dim);
  REQUIRE(a.n_layers == b.n_layers);
  REQUIRE(a.post_rope == b.post_rope);
  REQUIRE(a.sink_tokens == b.sink_tokens);
  REQUIRE(a.kinds.size() == b.kinds.size());
  for (std::size_t i = 0; i < a.kinds.size(); ++i) {
    const KindPlan &ka = a.kinds[i], &kb = b.kinds[i];
    REQUIRE(ka.kind == kb.kind);
    REQUIRE(ka.n_heads == kb.n_heads);
    REQUIRE(ka.layers.size() == kb.layers.size());
    for (std::size_t l = 0; l < ka.layers.size(); ++l) {
      REQUIRE(ka.layers[l].size() == kb.layers[l].size());
      for (std::size_t t = 0; t < ka.layers[l].size(); ++t) {
        const TargetMap &ta = ka.layers[l][t], &tb = kb.layers[l][t];
        CHECK(ta.target == tb.target);
        CHECK(ta.refs == tb.refs);
        CHECK(same_bits(ta.weight, tb.weight));
        CHECK(same_bits(ta.bias, tb.bias));
        CHECK(std::memcmp(&ta.r2_heldout, &tb.r2_heldout, sizeof(float)) == 0);
      }
    }
    REQUIRE(ka.has_latent() == kb.has_latent());
    for (std::int32_t l = 0; l < a.n_layers; ++l) {
      REQUIRE(ka.n_latent(l) == kb.n_latent(l));
      for (std::size_t j = 0; j < ka.n_latent(l); ++j)
        CHECK(same_bits(ka.latent[std::size_t(l)][j].projection, kb.latent[std::size_t(l)][j].projection));
    }
  }
}

// make_plan() with latent K streams: two in layer 1 (head 0 rebuilt from
// both), one in layer 2 (head 1 from head 0 and the stream, head 3 cross-layer
// from layer 1's stream 1).
Plan make_latent_plan() {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  Plan p = make_plan();
  KindPlan& k = p.kinds[0];
  k.latent.resize(3);
  auto stream = [&] {
    LatentStream ls;
    ls.projection.resize(4 * 4 * 4);
    for (float& x : ls.projection) x = nd(rng);
    return ls;
  };
  k.latent[1] = {stream(), stream()};
  k.latent[2] = {stream()};
  k.layers[1].push_back(make_target(1, 0, {{1, 4}, {1, 5}}, 4, rng));
  k.layers[2].clear();
  k.layers[2].push_back(make_target(2, 1, {{2, 0}, {2, 4}}, 4, rng));
  k.layers[2].push_back(make_target(2, 3, {{1, 5}}, 4, rng));
  p.validate();
  return p;
}

/// A safetensors file held in memory, for crafting malformed plans.
struct RawTensor {
  std::string name, dtype;
  std::vector<std::uint64_t> shape;
  std::string bytes;
};
struct RawFile {
  std::map<std::string, std::string> meta;
  std::vector<RawTensor> tensors;

  explicit RawFile(const std::string& path) {
    const SafetensorsFile f(path);
    meta = f.metadata();
    for (const TensorInfo& t : f.tensors()) {
      RawTensor r{t.name, t.dtype, t.shape, std::string(std::size_t(t.bytes()), '\0')};
      f.read_bytes(t, 0, t.bytes(), r.bytes.data());
      tensors.push_back(std::move(r));
    }
  }
  RawTensor& at(const std::string& name) {
    for (auto& t : tensors)
      if (t.name == name) return t;
    FAIL("no tensor " << name);
    throw 0;
  }
  void erase(const std::string& name) {
    for (auto it = tensors.begin(); it != tensors.end(); ++it)
      if (it->name == name) {
        tensors.erase(it);
        return;
      }
    FAIL("no tensor " << name);
  }
  void write(const std::string& path) const {
    SafetensorsWriter w(path);
    for (const auto& [k, v] : meta) w.set_metadata(k, v);
    for (const auto& t : tensors) w.add(t.name, t.dtype, t.shape, t.bytes.data(), t.bytes.size());
    w.finish();
  }
};

std::string i32_bytes(std::vector<std::int32_t> v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

}  // namespace

TEST_CASE("plan_io: round trip is bitwise exact", "[plan_io]") {
  TempDir dir;
  const std::string path = dir.file("plan.safetensors");
  const Plan plan = make_plan();
  save_plan(plan, path, {{"model", "tiny-llama"}, {"calibration_tokens", "4096"}});
  const Plan back = load_plan(path);
  require_equal(plan, back);
  CHECK(back.kinds[0].cached_heads(2) == std::vector<std::int32_t>{0, 2});

  const SafetensorsFile f(path);
  const auto& md = f.metadata();
  CHECK(md.at("format") == "headrecon.plan");
  CHECK(md.at("version") == "2");
  CHECK(md.at("k.n_latent") == "0");
  CHECK(md.at("head_dim") == "4");
  CHECK(md.at("n_layers") == "3");
  CHECK(md.at("post_rope") == "false");
  CHECK(md.at("sink_tokens") == "4");
  CHECK(md.at("kinds") == "k,v");
  CHECK(md.at("k.n_heads") == "4");
  CHECK(md.at("v.n_heads") == "2");
  CHECK(md.at("model") == "tiny-llama");
  CHECK(md.at("calibration_tokens") == "4096");
  CHECK(f.tensors().size() == 16);
  const TensorInfo& w = f.get("k.2.1.weight");
  CHECK(w.dtype == "F32");
  CHECK(w.shape == std::vector<std::uint64_t>{8, 4});
  CHECK(f.get("k.2.1.refs").shape == std::vector<std::uint64_t>{2, 2});
  CHECK(f.read_all<std::int32_t>("k.2.1.refs") == std::vector<std::int32_t>{2, 0, 1, 3});
  CHECK(f.get("k.2.3.r2").shape == std::vector<std::uint64_t>{1});
  CHECK(f.get("v.1.0.bias").shape == std::vector<std::uint64_t>{4});
}

TEST_CASE("plan_io: targets come back sorted by head and empty kinds survive", "[plan_io]") {
  TempDir dir;
  const std::string path = dir.file("plan.safetensors");
  Plan plan = make_plan();
  std::swap(plan.kinds[0].layers[2][0], plan.kinds[0].layers[2][1]);  // heads 3, 1
  plan.kinds[1].layers[1].clear();  // v: no targets at all
  plan.post_rope = true;
  save_plan(plan, path);
  const Plan back = load_plan(path);
  REQUIRE(back.kinds[0].layers[2].size() == 2);
  CHECK(back.kinds[0].layers[2][0].target.head == 1);
  CHECK(back.kinds[0].layers[2][1].target.head == 3);
  CHECK(back.kinds[1].kind == Kind::v);
  CHECK(back.kinds[1].n_heads == 2);
  CHECK(back.kinds[1].n_targets() == 0);
  CHECK(back.post_rope);

  Plan none;  // no kinds at all
  none.head_dim = 8;
  none.n_layers = 1;
  save_plan(none, path);
  const Plan nb = load_plan(path);
  CHECK(nb.kinds.empty());
  CHECK(nb.head_dim == 8);
}

TEST_CASE("plan_io: save rejects invalid plans and reserved keys", "[plan_io]") {
  TempDir dir;
  const std::string path = dir.file("plan.safetensors");
  Plan plan = make_plan();
  REQUIRE_THROWS_WITH(save_plan(plan, path, {{"kinds", "q"}}),
                      Contains(path) && Contains("'kinds' is reserved"));
  REQUIRE_THROWS_WITH(save_plan(plan, path, {{"k.n_heads", "9"}}), Contains("reserved"));
  plan.kinds[0].layers[0][0].r2_heldout = std::numeric_limits<float>::quiet_NaN();
  REQUIRE_THROWS_WITH(save_plan(plan, path), Contains(path) && Contains("invalid plan") &&
                                                 Contains("target k.0.1: non-finite held-out R2"));
  plan.kinds[0].layers[0][0].r2_heldout = 0.5f;
  plan.n_layers = 5000;
  REQUIRE_THROWS_WITH(save_plan(plan, path), Contains("n_layers must be in [1, 4096], got 5000"));
  plan.n_layers = 3;
  plan.kinds[0].layers[0][0].bias.pop_back();
  REQUIRE_THROWS_WITH(save_plan(plan, path),
                      Contains(path) && Contains("invalid plan") && Contains("bias has 3"));
  CHECK_FALSE(std::filesystem::exists(path));
  CHECK_FALSE(std::filesystem::exists(path + ".tmp"));
}

TEST_CASE("plan_io: malformed plans", "[plan_io]") {
  TempDir dir;
  const std::string good = dir.file("good.safetensors");
  const std::string bad = dir.file("bad.safetensors");
  save_plan(make_plan(), good, {{"note", "x"}});

  const auto expect = [&](auto mutate, const std::string& what) {
    RawFile raw(good);
    mutate(raw);
    raw.write(bad);
    REQUIRE_THROWS_WITH(load_plan(bad), Contains(bad) && Contains(what));
  };
  const auto set_meta = [](std::string key, std::string value) {
    return [key, value](RawFile& r) { r.meta[key] = value; };
  };

  SECTION("unknown metadata keys are ignored") {
    RawFile raw(good);
    raw.meta["something.else"] = "whatever";
    raw.write(bad);
    require_equal(load_plan(bad), make_plan());
  }
  SECTION("missing tensor") {
    expect([](RawFile& r) { r.erase("k.0.1.bias"); },
           "target k.0.1 is missing tensor 'k.0.1.bias'");
    expect([](RawFile& r) { r.erase("v.1.0.weight"); }, "missing tensor 'v.1.0.weight'");
    expect([](RawFile& r) { r.erase("k.2.3.r2"); }, "missing tensor 'k.2.3.r2'");
    expect([](RawFile& r) { r.erase("k.2.3.refs"); }, "missing tensor 'k.2.3.refs'");
  }
  SECTION("wrong shapes and dtypes") {
    expect([](RawFile& r) { r.at("k.0.1.weight").shape = {4, 8}; },
           "tensor 'k.0.1.weight' has shape [4, 8], expected [k*d, d] = [8, 4]");
    expect([](RawFile& r) { r.at("k.2.3.weight").shape = {8, 4}; r.at("k.2.3.weight").bytes += std::string(64, '\0'); },
           "tensor 'k.2.3.weight' has shape [8, 4], expected [k*d, d] = [4, 4]");
    expect([](RawFile& r) { r.at("k.0.1.bias").shape = {2, 2}; }, "expected [d] = [4]");
    expect([](RawFile& r) { r.at("k.0.1.refs").shape = {4}; }, "expected [k, 2] with k >= 1");
    expect([](RawFile& r) { r.at("k.0.1.refs").dtype = "F32"; },
           "tensor 'k.0.1.refs' has dtype F32, expected I32");
    expect([](RawFile& r) { r.at("k.0.1.bias").dtype = "I32"; },
           "tensor 'k.0.1.bias' has dtype I32, expected F32");
    expect([](RawFile& r) {
      auto& t = r.at("k.0.1.r2");
      t.dtype = "F64";
      t.bytes += std::string(4, '\0');
    }, "has dtype F64, expected F32");
  }
  SECTION("references that are themselves targets, or out of range") {
    expect([](RawFile& r) { r.at("k.2.3.refs").bytes = i32_bytes({0, 1}); },
           "target k.2.3: reference (0, 1) is itself rebuilt");
    expect([](RawFile& r) { r.at("k.2.3.refs").bytes = i32_bytes({0, 7}); },
           "reference (0, 7) is out of range");
    expect([](RawFile& r) { r.at("k.0.1.refs").bytes = i32_bytes({0, 0, 0, 0}); },
           "is listed twice");
  }
  SECTION("format and version") {
    expect(set_meta("version", "3"), "unsupported headrecon.plan version '3' (expected 2)");
    expect([](RawFile& r) { r.meta.erase("k.n_latent"); }, "missing metadata key 'k.n_latent'");
    expect(set_meta("format", "headrecon.activations"),
           "metadata format is 'headrecon.activations', expected 'headrecon.plan'");
    expect([](RawFile& r) { r.meta.erase("version"); }, "missing metadata key 'version'");
    expect([](RawFile& r) { r.meta.clear(); }, "missing metadata key 'format'");
  }
  SECTION("garbage numbers") {
    expect(set_meta("head_dim", "12abc"), "metadata 'head_dim' = '12abc' is not a non-negative integer");
    expect(set_meta("head_dim", " 4"), "is not a non-negative integer");
    expect(set_meta("head_dim", "0"), "metadata 'head_dim' = '0' is out of range [1, 4096]");
    expect(set_meta("n_layers", "-3"), "metadata 'n_layers' = '-3' is not a non-negative integer");
    expect(set_meta("n_layers", "99999999999999999999999"), "out of range");
    expect(set_meta("sink_tokens", ""), "metadata 'sink_tokens' = '' is not");
    expect(set_meta("sink_tokens", "+1"), "is not a non-negative integer");
    expect(set_meta("k.n_heads", "4.0"), "metadata 'k.n_heads' = '4.0'");
    expect(set_meta("k.n_heads", "2147483648"), "out of range");
    expect(set_meta("post_rope", "yes"), "metadata 'post_rope' = 'yes' is not 'true' or 'false'");
    expect([](RawFile& r) { r.meta.erase("v.n_heads"); }, "missing metadata key 'v.n_heads'");
  }
  SECTION("counts beyond the documented limits, before anything is allocated") {
    // Issue 13: n_layers 1e8 loaded as valid (4.7 GB in inspect); 20,000 heads
    // gave a bare std::bad_alloc.
    expect(set_meta("n_layers", "100000000"), "metadata 'n_layers' = '100000000' is out of range [1, 4096]");
    expect(set_meta("k.n_heads", "20000"), "metadata 'k.n_heads' = '20000' is out of range [1, 4096]");
    expect(set_meta("head_dim", "4097"), "out of range [1, 4096]");
    expect([](RawFile& r) {
      auto& refs = r.at("k.0.1.refs");
      refs.shape = {5, 2};
      refs.bytes = i32_bytes({0, 0, 0, 2, 0, 3, 0, 0, 0, 0});
    }, "tensor 'k.0.1.refs' lists 5 references, more than the 4 heads and latent streams of layers 0..0");
  }
  SECTION("NaN or Inf anywhere") {
    const auto poke = [](std::string tensor, std::size_t index, float value) {
      return [tensor, index, value](RawFile& r) {
        std::memcpy(&r.at(tensor).bytes[index * sizeof(float)], &value, sizeof(float));
      };
    };
    const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
    expect(poke("k.2.1.weight", 5, nan), "target k.2.1: non-finite weight nan at element 5");
    expect(poke("v.1.0.weight", 0, -inf), "target v.1.0: non-finite weight -inf at element 0");
    expect(poke("k.0.1.bias", 3, inf), "target k.0.1: non-finite bias inf at element 3");
    expect(poke("k.2.3.r2", 0, nan), "target k.2.3: non-finite held-out R2 nan");
    expect(poke("k.2.3.r2", 0, inf), "non-finite held-out R2 inf");
  }
  SECTION("kinds") {
    expect(set_meta("kinds", "k,x"), "unknown kind 'x'");
    expect(set_meta("kinds", "k,k"), "lists k twice");
    expect(set_meta("kinds", "k"), "unexpected tensor 'v.1.0.");
    expect(set_meta("kinds", "k,"), "unknown kind ''");
  }
  SECTION("unexpected tensor names") {
    const auto rename = [](std::string from, std::string to) {
      return [from, to](RawFile& r) { r.at(from).name = to; };
    };
    const auto add = [](std::string name) {
      return [name](RawFile& r) { r.tensors.push_back({name, "F32", {1}, std::string(4, '\0')}); };
    };
    expect(add("k.0.1.gradient"), "unexpected tensor 'k.0.1.gradient': unknown field 'gradient'");
    expect(add("junk"), "unexpected tensor 'junk': not four dot-separated parts");
    expect(add("k.0.1.r2.x"), "not four dot-separated parts");
    expect(add("q.0.0.r2"), "kind 'q' is not in 'kinds' (k,v)");
    expect(add("k.3.0.r2"), "layer '3' is not an integer in [0, 3)");
    expect(add("k.x.0.r2"), "layer 'x'");
    expect(add("k.0.4.r2"), "head '4' is not an integer in [0, 4)");
    expect(add("v.0.2.r2"), "head '2' is not an integer in [0, 2)");
    expect(add("k.0.-1.r2"), "head '-1'");
    expect(rename("k.0.1.bias", "k.00.1.bias"), "leading zeros");
    expect(add("k.0.3.r2"), "target k.0.3 is missing tensor 'k.0.3.weight'");
  }
}

TEST_CASE("plan_io: latent streams round trip (version 2); version 1 files still load", "[plan_io][latent]") {
  TempDir dir;
  const std::string path = dir.file("plan.safetensors");
  const Plan plan = make_latent_plan();
  save_plan(plan, path);
  const Plan back = load_plan(path);
  require_equal(plan, back);
  {
    const SafetensorsFile f(path);
    CHECK(f.metadata().at("version") == "2");
    CHECK(f.metadata().at("k.n_latent") == "3");
    CHECK(f.metadata().at("v.n_latent") == "0");
    CHECK(f.get("k.1.latent.1").shape == std::vector<std::uint64_t>{16, 4});
    CHECK(f.read_all<std::int32_t>("k.1.0.refs") == std::vector<std::int32_t>{1, 4, 1, 5});
  }
  // A version 1 file (written as version 1 writers did: no n_latent keys).
  const std::string v1 = dir.file("v1.safetensors");
  save_plan(make_plan(), v1);
  {
    RawFile raw(v1);
    raw.meta["version"] = "1";
    raw.meta.erase("k.n_latent");
    raw.meta.erase("v.n_latent");
    raw.write(v1);
  }
  const Plan old = load_plan(v1);
  require_equal(old, make_plan());
  CHECK_FALSE(old.kinds[0].has_latent());

  const std::string bad = dir.file("bad.safetensors");
  const auto expect = [&](auto mutate, const std::string& what) {
    RawFile raw(path);
    mutate(raw);
    raw.write(bad);
    REQUIRE_THROWS_WITH(load_plan(bad), Contains(bad) && Contains(what));
  };
  expect([](RawFile& r) { r.erase("k.1.latent.0"); }, "latent streams of layer 1 must be numbered 0..m-1");
  expect([](RawFile& r) { r.at("k.2.latent.0").shape = {4, 16}; },
         "tensor 'k.2.latent.0' has shape [4, 16], expected [n_heads*d, d] = [16, 4]");
  expect([](RawFile& r) { r.at("k.2.latent.0").dtype = "I32"; }, "has dtype I32, expected F32");
  expect([](RawFile& r) { r.meta["k.n_latent"] = "4"; }, "metadata 'k.n_latent' = 4 but the file holds 3");
  expect([](RawFile& r) { r.meta["k.n_latent"] = "0"; }, "absent or 0");
  expect([](RawFile& r) { r.meta["version"] = "1"; }, "absent or 0");
  expect([](RawFile& r) { r.meta["version"] = "3"; }, "unsupported headrecon.plan version '3'");
  expect([](RawFile& r) { r.at("k.2.latent.0").name = "k.2.latent.4"; }, "is not an integer in [0, 4)");
  expect([](RawFile& r) { r.at("k.2.latent.0").name = "k.2.latent.00"; }, "without leading zeros");
  expect([](RawFile& r) { std::memcpy(r.at("k.1.latent.1").bytes.data() + 8, "\x00\x00\xc0\x7f", 4); },
         "latent stream k.1.1: non-finite projection nan at element 2");
  expect([](RawFile& r) { r.at("k.2.1.refs").bytes = i32_bytes({2, 0, 2, 5}); },
         "reference (2, 5) is out of range (layers 0..2, heads 0..3, latent streams 4..4)");
  // A latent stream in a layer with none.
  expect([](RawFile& r) { r.at("k.2.1.refs").bytes = i32_bytes({2, 0, 0, 4}); }, "reference (0, 4) is out of range");
}
