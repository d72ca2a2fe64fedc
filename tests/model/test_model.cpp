// Tests of the example engine (examples/engine) on the real SmolLM2-135M GGUF:
// its properties, rejection of truncated copies, logits and perplexity against
// the NumPy reference, KV cache, tokenizer against `tokenizers`, capture.
// The model is fetched by examples/engine/fetch_model.sh when absent; a failed
// fetch fails the tests (it does not skip them).

#include <catch2/catch.hpp>

#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "capture.hpp"
#include "corpus.hpp"
#include "gguf.hpp"
#include "headrecon/activations_io.hpp"
#include "headrecon/thread_pool.hpp"
#include "engine_test_util.hpp"
#include "io_test_util.hpp"
#include "llama.hpp"
#include "model_fixture.hpp"
#include "tokenizer.hpp"

#include <nlohmann/json.hpp>

namespace he = headrecon_engine;
using json = nlohmann::json;
using headrecon_test::TempDir;

namespace {

using namespace headrecon_model_test;

json read_json(const std::string& name) { return json::parse(slurp(test_dir + "/" + name)); }

}  // namespace

using namespace headrecon_engine_test;

TEST_CASE("model: the SmolLM2-135M GGUF has the expected properties") {
  const Loaded& l = loaded();
  const he::GgufFile& f = l.file;
  CHECK(f.version() == 3);
  CHECK(f.get_string("general.architecture") == "llama");
  const he::LlamaConfig& c = l.model.config();
  CHECK(c.n_layer == 30);
  CHECK(c.n_embd == 576);
  CHECK(c.n_head == 9);
  CHECK(c.n_head_kv == 3);
  CHECK(c.head_dim == 64);
  CHECK(c.n_ff == 1536);
  CHECK(c.n_vocab == 49152);
  CHECK(c.n_rot == 64);
  CHECK(c.rope_base == 100000.0);
  CHECK_FALSE(c.rope_neox);
  CHECK(c.tied_output);
  const std::map<std::string, std::size_t> types{{"F32", 61}, {"Q4_1", 210}, {"Q8_0", 1}};
  CHECK(l.model.tensor_types() == types);
  CHECK(f.tensors().size() == 272);
  CHECK(l.tok.pre_tokenizer() == "smollm");
  CHECK(l.tok.vocab_size() == 49152);
}

TEST_CASE("model: truncated and corrupted copies of the model file are rejected") {
  const std::string& path = model_path();
  const he::GgufFile full(path);
  // The tensor stored last in the file.
  const he::GgufTensor* last = &full.tensors()[0];
  for (const auto& t : full.tensors())
    if (t.offset > last->offset) last = &t;
  std::ifstream is(path, std::ios::binary);
  std::string head(1 << 20, '\0');
  is.read(&head[0], std::streamsize(head.size()));
  // A prefix ending inside the vocabulary array.
  expect_reject(head.substr(0, 300000), {"truncated", "tokenizer.ggml.tokens"});
  expect_reject(head.substr(0, 20), {"truncated file"});
  {
    std::string bad = head.substr(0, 4096);
    bad[4] = 2;  // version 2
    expect_reject(bad, {"GGUF version 2"});
  }
  // Everything but the last 1000 bytes: the last tensor is cut.
  TempDir d;
  const std::string p = d.file("cut.gguf");
  {
    std::ifstream src(path, std::ios::binary);
    std::ofstream dst(p, std::ios::binary);
    std::vector<char> buf(1 << 20);
    std::uint64_t left = full.file_size() - 1000;
    while (left > 0) {
      const std::size_t n = std::size_t(std::min<std::uint64_t>(left, buf.size()));
      src.read(buf.data(), std::streamsize(n));
      dst.write(buf.data(), std::streamsize(n));
      left -= n;
    }
  }
  CHECK_THROWS_WITH(he::GgufFile(p), Catch::Contains("tensor '" + last->name + "'") &&
                                         Catch::Contains("extends past the end of the file") &&
                                         Catch::Contains(p));
}

TEST_CASE("model: logits match the NumPy float64 reference") {
  // reference_logits.json: top-5 logits per position of 16 tokens from the
  // independent NumPy forward pass (float64, HF conventions). The engine runs
  // in float32 with BLAS; measured max |diff| over all 16 x 49152 logits was
  // 3.9e-5 (logits up to 30). The tolerance, 2e-3, leaves 50x headroom for
  // other BLAS kernels and thread counts, and stays far below the errors of
  // a real bug: the NumPy pass with the RoPE pair layout wrong differs by up
  // to 13.8 and agrees on 7 of 16 argmaxes.
  const Loaded& l = loaded();
  const json ref = read_json("reference_logits.json");
  std::vector<std::int32_t> ids;
  for (const auto& v : ref.at("tokens")) ids.push_back(v.get<std::int32_t>());
  REQUIRE(ids.size() == 16);
  he::LlamaEngine eng(l.model);
  he::KvCache cache(l.model.attention_shape(), ids.size());
  std::vector<float> logits;
  eng.forward(ids.data(), ids.size(), cache, he::LogitsMode::all, &logits);
  const std::size_t V = l.model.config().n_vocab;
  const auto& top = ref.at("top");
  REQUIRE(top.size() == ids.size());
  double max_diff = 0;
  for (std::size_t t = 0; t < ids.size(); ++t) {
    const auto& tid = top[t].at("ids");
    const auto& tv = top[t].at("logits");
    for (std::size_t k = 0; k < tid.size(); ++k) {
      const double want = tv[k].get<double>();
      const double got = logits[t * V + tid[k].get<std::size_t>()];
      max_diff = std::max(max_diff, std::fabs(got - want));
    }
    const float* row = logits.data() + t * V;
    const auto argmax = std::max_element(row, row + V) - row;
    INFO("position " << t);
    CHECK(argmax == tid[0].get<std::int64_t>());
  }
  INFO("max |logit diff| over the reference top-5: " << max_diff);
  CHECK(max_diff < 2e-3);

  // Perplexity of one 135-token sequence (the KJV excerpt) against NumPy's.
  const json& p = ref.at("ppl");
  std::vector<std::int32_t> pid;
  for (const auto& v : p.at("tokens")) pid.push_back(v.get<std::int32_t>());
  const he::PerplexityStats st = he::perplexity(l.model, pid, pid.size());
  CHECK(st.predicted == pid.size() - 1);
  CHECK(st.ppl() == Approx(p.at("perplexity").get<double>()).epsilon(1e-4));
}

TEST_CASE("model: incremental decode with the KV cache equals one batched pass") {
  const Loaded& l = loaded();
  const std::vector<std::int32_t> ids = l.tok.encode("The quick brown fox jumps over the lazy dog, then naps.");
  REQUIRE(ids.size() >= 10);
  const std::size_t V = l.model.config().n_vocab;
  he::LlamaEngine eng(l.model);
  he::KvCache full(l.model.attention_shape(), ids.size());
  std::vector<float> all, one;
  eng.forward(ids.data(), ids.size(), full, he::LogitsMode::all, &all);
  // 3 tokens at once, then one at a time.
  he::KvCache inc(l.model.attention_shape(), ids.size());
  eng.forward(ids.data(), 3, inc, he::LogitsMode::last, &one);
  double max_diff = 0;
  for (std::size_t i = 0; i < V; ++i) max_diff = std::max(max_diff, double(std::fabs(one[i] - all[2 * V + i])));
  for (std::size_t t = 3; t < ids.size(); ++t) {
    eng.forward(&ids[t], 1, inc, he::LogitsMode::last, &one);
    for (std::size_t i = 0; i < V; ++i) max_diff = std::max(max_diff, double(std::fabs(one[i] - all[t * V + i])));
  }
  INFO("max |logit diff| incremental vs batched: " << max_diff);
  CHECK(max_diff < 1e-3);
  CHECK(inc.size() == ids.size());
  CHECK_THROWS_WITH(eng.forward(ids.data(), 1, inc, he::LogitsMode::none, nullptr), Catch::Contains("capacity"));
}

TEST_CASE("engine: logits equal on 1..8 threads and on both weight-product paths") {
  // The weights stay in their GGUF types: a few tokens run the quantized
  // kernels, many run dequantized panels + sgemm. Both, on any thread count,
  // must give the serial engine's logits up to f32 summation order.
  const Loaded& l = loaded();
  const std::vector<std::int32_t> ids = l.tok.encode("Quantized weights, read once per token on every core.");
  REQUIRE(ids.size() >= 8);
  const std::size_t V = l.model.config().n_vocab;
  std::vector<float> want, got;
  {
    he::LlamaEngine serial(l.model, headrecon::ParallelFor{});
    he::KvCache cache(l.model.attention_shape(), ids.size());
    serial.forward(ids.data(), ids.size(), cache, he::LogitsMode::all, &want);
  }
  double worst = 0;
  for (std::size_t threads : {1u, 2u, 3u, 8u}) {
    headrecon::ThreadPool pool(threads);
    for (std::size_t max_matvec : {std::size_t(0), std::size_t(64)}) {
      he::LlamaEngine eng(l.model, pool.parallel_for());
      eng.matmul().set_max_matvec_inputs(max_matvec);
      he::KvCache cache(l.model.attention_shape(), ids.size());
      eng.forward(ids.data(), ids.size(), cache, he::LogitsMode::all, &got);
      double d = 0;
      for (std::size_t i = 0; i < ids.size() * V; ++i) d = std::max(d, double(std::fabs(got[i] - want[i])));
      INFO(threads << " threads, " << (max_matvec ? "quantized kernels" : "panels + sgemm") << ": max |logit diff| "
                   << d);
      CHECK(d < 1e-3);
      worst = std::max(worst, d);
    }
  }
  INFO("worst max |logit diff| " << worst);
  CHECK(worst > 0.0);  // the two paths do differ in summation order: both really ran
}

TEST_CASE("engine: 8-bit inputs (opt-in) stay close to the exact logits") {
  // --int8-inputs quantizes the kernels' inputs per 32-block (llama.cpp's
  // scheme): not exact, so it is checked against the NumPy reference with a
  // tolerance set from measurement, and for the perplexity it changes.
  const Loaded& l = loaded();
  const json ref = read_json("reference_logits.json");
  std::vector<std::int32_t> ids;
  for (const auto& v : ref.at("tokens")) ids.push_back(v.get<std::int32_t>());
  const std::size_t V = l.model.config().n_vocab;
  he::LlamaEngine eng(l.model);
  eng.matmul().set_int8_inputs(true);
  eng.matmul().set_max_matvec_inputs(64);  // every product through the kernels
  he::KvCache cache(l.model.attention_shape(), ids.size());
  std::vector<float> logits;
  eng.forward(ids.data(), ids.size(), cache, he::LogitsMode::all, &logits);
  const auto& top = ref.at("top");
  double max_diff = 0;
  std::size_t argmax_same = 0;
  for (std::size_t t = 0; t < ids.size(); ++t) {
    const auto& tid = top[t].at("ids");
    const auto& tv = top[t].at("logits");
    for (std::size_t k = 0; k < tid.size(); ++k)
      max_diff = std::max(max_diff, std::fabs(logits[t * V + tid[k].get<std::size_t>()] - tv[k].get<double>()));
    const float* row = logits.data() + t * V;
    argmax_same += (std::max_element(row, row + V) - row) == tid[0].get<std::int64_t>();
  }
  INFO("8-bit inputs: max |logit diff| over the reference top-5 " << max_diff << ", argmax equal at " << argmax_same
                                                                   << " of " << ids.size());
  // Measured 0.51 (logits up to 30; llama.cpp's Q8_1 activations err alike).
  CHECK(max_diff > 1e-2);  // really quantized: the exact path is within 1e-4
  CHECK(max_diff < 1.5);
  CHECK(argmax_same >= ids.size() - 1);

  // Perplexity of the KJV excerpt decoded token by token: measured -0.4%.
  const json& p = ref.at("ppl");
  std::vector<std::int32_t> pid;
  for (const auto& v : p.at("tokens")) pid.push_back(v.get<std::int32_t>());
  he::KvCache pc(l.model.attention_shape(), pid.size());
  double nll = 0;
  for (std::size_t t = 0; t + 1 < pid.size(); ++t) {
    eng.forward(&pid[t], 1, pc, he::LogitsMode::last, &logits);
    nll -= he::log_prob(logits.data(), V, pid[t + 1]);
  }
  const double ppl = std::exp(nll / double(pid.size() - 1)), want = p.at("perplexity").get<double>();
  INFO("8-bit inputs: perplexity " << ppl << ", exact (NumPy) " << want);
  CHECK(std::fabs(ppl / want - 1) > 1e-5);
  CHECK(std::fabs(ppl / want - 1) < 0.02);
}

TEST_CASE("tokenizer: ids match the tokenizers library and decode round-trips") {
  // reference_tokens.json: ids from the Rust `tokenizers` BPE with SmolLM2's
  // pre-tokenizer (Digits(individual) + ByteLevel), built from the same GGUF
  // vocabulary and merges by reference_forward.py.
  const Loaded& l = loaded();
  const json ref = read_json("reference_tokens.json");
  std::size_t n = 0;
  for (const auto& c : ref.at("cases")) {
    const std::string text = c.at("text").get<std::string>();
    std::vector<std::int32_t> want;
    for (const auto& v : c.at("ids")) want.push_back(v.get<std::int32_t>());
    INFO("text: " << text);
    CHECK(l.tok.encode(text) == want);
    CHECK(l.tok.decode(want) == text);
    ++n;
  }
  CHECK(n >= 10);
  // Hand-checked pre-tokenization and ids.
  using SV = std::vector<std::string_view>;
  CHECK(l.tok.pre_tokenize("a  b") == SV{"a", " ", " b"});
  CHECK(l.tok.pre_tokenize("x\n\ny") == SV{"x", "\n", "\n", "y"});
  CHECK(l.tok.pre_tokenize("it's 42!") == SV{"it", "'s", " ", "4", "2", "!"});
  CHECK(l.tok.pre_tokenize("end  ") == SV{"end", "  "});
  CHECK(l.tok.pre_tokenize("Grüße, 東京") == SV{"Grüße", ",", " 東京"});
  CHECK(l.tok.encode("Hello world") == std::vector<std::int32_t>{19556, 905});
  CHECK(l.tok.token(19556) == "Hello");
  CHECK(l.tok.token(905) == "\xC4\xA0world");  // "Ġworld"
  // Special tokens only when asked.
  const auto sp = l.tok.encode("<|im_start|>user\nhi<|im_end|>", true);
  REQUIRE(sp.size() >= 3);
  CHECK(sp.front() == 1);
  CHECK(sp.back() == 2);
  CHECK(l.tok.encode("<|im_start|>").size() > 1);
  CHECK(l.tok.decode(sp) == "<|im_start|>user\nhi<|im_end|>");
  CHECK(l.tok.decode(sp, true) == "user\nhi");
  // Invalid UTF-8 round-trips byte for byte, except 0xFF, which SmolLM2 has no token for.
  const std::string odd = "ab\xE2\x82 z\xFF";
  const std::size_t unknown_before = l.tok.unknown_bytes();
  const auto oid = l.tok.encode(odd);
  CHECK(l.tok.decode(oid) == "ab\xE2\x82 z");
  CHECK(l.tok.unknown_bytes() == unknown_before + 1);
}

TEST_CASE("tokenizer: every byte of the SmolLM2 vocabulary encodes alone; the 21 it lacks are dropped, not EOS") {
  // Issue 13: 21 byte values tokenized to <|endoftext|>, so "a\x04b" became
  // [a, EOS, b]. SmolLM2's vocabulary has no token for them at all (not even
  // inside a longer token): they cannot be encoded, so they are dropped and
  // counted (see tokenizer.hpp).
  const Loaded& l = loaded();
  const he::Tokenizer& tok = l.tok;
  std::vector<std::uint8_t> absent;  // bytes whose byte-level character is no token
  for (int b = 0; b < 256; ++b)
    if (tok.find(byte_level_char(std::uint8_t(b))) < 0) absent.push_back(std::uint8_t(b));
  CHECK(absent == std::vector<std::uint8_t>{0x04, 0x06, 0x13, 0x14, 0x16, 0x1d, 0xc0, 0xc1, 0xf1, 0xf2, 0xf5,
                                            0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff});
  CHECK(tok.missing_bytes() == absent);
  CHECK_FALSE(tok.maps_missing_bytes_to_unknown());  // unknown_token_id 0 is <|endoftext|>, a control token
  for (int b = 0; b < 256; ++b) {
    const std::string s(1, char(b));
    const std::size_t before = tok.unknown_bytes();
    const auto ids = tok.encode(s);
    INFO("byte " << b);
    if (std::find(absent.begin(), absent.end(), std::uint8_t(b)) != absent.end()) {
      CHECK(ids.empty());
      CHECK(tok.unknown_bytes() == before + 1);
    } else {
      REQUIRE(ids.size() == 1);
      CHECK(tok.decode(ids) == s);
      CHECK(tok.unknown_bytes() == before);
    }
  }
  CHECK(tok.encode("a\x04" "b") == std::vector<std::int32_t>{tok.find("a"), tok.find("b")});
  // Random byte strings round-trip, less the bytes the vocabulary lacks.
  std::mt19937 rng(13);
  for (int i = 0; i < 2000; ++i) {
    std::string s(rng() % 40, '\0'), kept;
    for (char& c : s) c = char(rng() % 4 == 0 ? rng() % 256 : 32 + rng() % 95);
    for (char c : s)
      if (std::find(absent.begin(), absent.end(), std::uint8_t(c)) == absent.end()) kept += c;
    const std::size_t before = tok.unknown_bytes();
    const auto ids = tok.encode(s);
    INFO("input " << i << " of " << s.size() << " bytes");
    REQUIRE(tok.decode(ids) == kept);
    REQUIRE(tok.unknown_bytes() == before + (s.size() - kept.size()));
    for (auto id : ids) REQUIRE(tok.type(id) == he::TokenType::normal);
  }
}

TEST_CASE("tokenizer: decode(encode(text)) == text on the Linux documentation") {
  const std::string dir = "/usr/share/doc/linux-doc-6.1/html/_sources";
  if (!std::filesystem::is_directory(dir)) {
    WARN("skipping the Linux documentation round trip: " << dir << " is absent (apt-get install linux-doc-6.1)");
    return;
  }
  const Loaded& l = loaded();
  const auto files = he::list_text_files(dir, ".rst.txt", he::Split::eval);
  REQUIRE(files.size() > 1000);
  std::size_t tokens = 0, bytes = 0;
  for (std::size_t i = 0; i < files.size(); i += 25) {
    const std::string text = he::read_text_file(files[i]);
    const auto ids = l.tok.encode(text);
    INFO(files[i]);
    CHECK(l.tok.decode(ids) == text);
    tokens += ids.size();
    bytes += text.size();
  }
  CHECK(tokens > 0);
  CHECK(double(bytes) / double(tokens) > 2.5);  // sane compression of English text
}

TEST_CASE("capture: 256 tokens written by the engine read back with ActivationReader") {
  const Loaded& l = loaded();
  const json ref = read_json("reference_tokens.json");
  std::vector<std::int32_t> ids;
  while (ids.size() < 256)
    for (const auto& cs : ref.at("cases"))
      for (const auto& v : cs.at("ids")) ids.push_back(v.get<std::int32_t>());
  ids.resize(256);
  TempDir d;
  const std::string out = d.file("acts.safetensors");
  he::CaptureOptions opt;
  opt.seq_len = 100;  // sequences of 100, 100, 56 tokens
  opt.metadata["text_source"] = "test";
  const he::CaptureStats st = he::capture_activations(l.model, ids, out, opt);
  CHECK(st.sequences == 3);
  CHECK(st.tokens == 256);

  headrecon::ActivationReader r(out);
  CHECK(r.n_layers() == 30);
  CHECK(r.n_tokens() == 256);
  CHECK(r.head_dim() == 64);
  CHECK(r.post_rope());
  CHECK(r.n_heads(headrecon::Kind::q) == 9);
  CHECK(r.n_heads(headrecon::Kind::k) == 3);
  CHECK(r.n_heads(headrecon::Kind::v) == 3);
  CHECK(r.metadata().at("text_source") == "test");
  CHECK(r.metadata().at("model.architecture") == "llama");
  const auto pos = r.positions(0, 256);
  CHECK(pos[0] == 0);
  CHECK(pos[99] == 99);
  CHECK(pos[100] == 0);
  CHECK(pos[255] == 55);

  // The file holds exactly what the engine's hook sees for the same sequence.
  he::LlamaEngine eng(l.model);
  he::KvCache cache(l.model.attention_shape(), 100);
  std::vector<float> k29, q0, v5, kpre29;
  eng.set_hook([&](const he::QkvBatch& b) {
    if (b.layer == 29) k29.assign(b.k, b.k + b.n_tokens * b.n_head_kv * b.head_dim);
    if (b.layer == 0) q0.assign(b.q, b.q + b.n_tokens * b.n_head * b.head_dim);
    if (b.layer == 5) v5.assign(b.v, b.v + b.n_tokens * b.n_head_kv * b.head_dim);
  });
  eng.forward(ids.data() + 100, 100, cache, he::LogitsMode::none, nullptr);  // the second sequence
  std::vector<std::byte> buf;
  auto same = [&](std::size_t layer, headrecon::Kind kind, const std::vector<float>& want) {
    const headrecon::AnyHeadsView v = r.read(layer, kind, 100, 100, buf);
    REQUIRE(v.dtype == headrecon::DType::f32);
    const float* p = static_cast<const float*>(v.data);
    REQUIRE(want.size() == 100 * v.extent.heads * 64);
    return std::equal(want.begin(), want.end(), p);
  };
  CHECK(same(29, headrecon::Kind::k, k29));
  CHECK(same(0, headrecon::Kind::q, q0));
  CHECK(same(5, headrecon::Kind::v, v5));

  // Pre-RoPE K rotated by its position gives the post-RoPE K (pairs 2i, 2i+1).
  std::vector<float> vpre;
  eng.set_hook(
      [&](const he::QkvBatch& b) {
        if (b.layer == 29) {
          CHECK_FALSE(b.post_rope);
          kpre29.assign(b.k, b.k + b.n_tokens * b.n_head_kv * b.head_dim);
        }
        if (b.layer == 5) vpre.assign(b.v, b.v + b.n_tokens * b.n_head_kv * b.head_dim);
      },
      he::CaptureStage::pre_rope);
  cache.clear();
  eng.forward(ids.data() + 100, 100, cache, he::LogitsMode::none, nullptr);
  CHECK(vpre == v5);
  double max_err = 0;
  for (std::size_t t : {0u, 1u, 37u, 99u})
    for (std::size_t h = 0; h < 3; ++h)
      for (std::size_t i = 0; i < 32; ++i) {
        const double th = double(t) * std::pow(100000.0, -2.0 * double(i) / 64.0);
        const std::size_t o = (t * 3 + h) * 64 + 2 * i;
        const double a = kpre29[o], b = kpre29[o + 1];
        max_err = std::max(max_err, std::fabs(a * std::cos(th) - b * std::sin(th) - k29[o]));
        max_err = std::max(max_err, std::fabs(a * std::sin(th) + b * std::cos(th) - k29[o + 1]));
      }
  CHECK(max_err < 1e-4);

  // A pre-RoPE capture of one kind in f16.
  he::CaptureOptions o2;
  o2.seq_len = 64;
  o2.post_rope = false;
  o2.q = o2.v = false;
  o2.dtype = headrecon::DType::f16;
  he::capture_activations(l.model, std::vector<std::int32_t>(ids.begin(), ids.begin() + 128), d.file("k.safetensors"), o2);
  headrecon::ActivationReader r2(d.file("k.safetensors"));
  CHECK_FALSE(r2.post_rope());
  CHECK_FALSE(r2.has(headrecon::Kind::q));
  CHECK(r2.n_heads(headrecon::Kind::k) == 3);
  CHECK(r2.dtype(headrecon::Kind::k, 0) == headrecon::DType::f16);
  CHECK(r2.positions(64, 1)[0] == 0);
}

