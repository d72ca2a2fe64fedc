// headrecon-engine: the example engine's command-line tool. Runs a Llama-
// family GGUF model on the CPU, captures Q/K/V activations for headrecon, and
// measures perplexity and speed. See examples/engine/README.md.

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "capture.hpp"
#include "capture_shard.hpp"
#include "corpus.hpp"
#include "demo.hpp"
#include "eval.hpp"
#include "gguf.hpp"
#include "headrecon/plan_io.hpp"
#include "llama.hpp"
#include "probe.hpp"
#include "tokenizer.hpp"

namespace he = headrecon_engine;
using he::fail;

namespace {

const char* const usage_text = R"(usage: headrecon-engine COMMAND [options]

Commands:
  info      --model GGUF                       model properties, tensor types
  tokenize  --model GGUF (--text FILE | --string S) [--special]
                                               print token ids, one line
  detokenize --model GGUF --ids "I I ..."      print the text of token ids
  logits    --model GGUF (--ids "I I ..." | --string S) [--out FILE.f32] [--top K]
                                               print top-K logits per position;
                                               --out writes all logits (f32, n x vocab)
  ppl       --model GGUF TEXT --tokens N [--seq-len 512] [--ids-out FILE]
                                               perplexity and tokens/s
  capture   --model GGUF TEXT --tokens N --out ACTS.safetensors [--pre-rope]
            [--seq-len 512] [--kinds q,k,v] [--dtype f32|f16|bf16] [--spread]
            [--projections PROJ.safetensors] [--shard i/N|mpi]
                                               write a headrecon activations file;
                                               --shard: sequences i*S/N..(i+1)*S/N-1
                                               only ("{i}" in --out: the index; mpi:
                                               rank/size under mpirun); the shards'
                                               files in order = one capture
                                               --spread: each sequence from the start
                                               of a different file of --text-dir;
                                               --projections: also the output
                                               projections (headrecon fit --wo)
  generate  --model GGUF (--prompt S | --ids "I I ...") [--n 32] [--chat]
                                               greedy decoding; prefill and decode tokens/s
  bench     --model GGUF [--seq-len 512] [--decode 64]
                                               prefill and decode throughput
  demo      [--dir build/demo] [--calib-tokens 16384] [--random-tokens 16384]
            [--eval-seqs 2] [--eval-len 256] [--kjv-seqs 1] [--sinks 0,4]
            [--q-window 2] [--max-k 5] [--seed 1] [--no-random] [--keep-acts]
            [--cache-dtype f32|f16|bf16|q8_0|q4_0|q4_0r] [--docs DIR] [--kjv FILE] [--plans A,B]
            [--speed-context 4096] [--no-speed]
                                               the real-model pipeline: capture,
                                               R2 analysis (trained and random
                                               weights), plans, eval, report
  eval      --model GGUF TEXT [--seqs 2] [--seq-len 256] --plan [NAME=]PLAN ...
            [--variants k,v,kv] [--sinks 0,4] [--cache-dtype f32,f16,bf16,q8_0,q4_0,q4_0r]
            [--chunk 1] [--simulate] [--spread] [--csv FILE] [--json FILE] [--md FILE] [--ids-out FILE]
                                               perplexity decoded token by token
                                               through a reference-only KV cache:
                                               full cache, then each plan on K, V,
                                               K+V at each sink count; KV bytes,
                                               decode tokens/s; --simulate adds the
                                               perplexity with predicted K/V
                                               written into a full cache; --spread
                                               takes each sequence from the start
                                               of a different file of --text-dir

  probe     --model GGUF --plan PLAN --text-dir DIR [--split calib] [--suffix .txt]
            [--seqs 4] [--seq-len 256] --out PROBE.csv
                                               the direct probe: each (kind, layer) of
                                               the plan rebuilt alone (simulated in a
                                               full cache); KL to the full model and
                                               NLL change per token (headrecon fit --probe)

TEXT is one of
  --text FILE                      one text file (may be repeated; used in order)
  --text-dir DIR [--split calib|eval|all] [--suffix .txt]
                                   files under DIR sorted by relative path; calib
                                   takes even indices, eval odd ones (default:
                                   calib for capture, eval for ppl)
  --ids "I I ..."                  token ids directly
Documents are packed into one token stream, separated by <|endoftext|> (or EOS).

Common options: --threads N (engine and BLAS threads; default: all hardware threads);
--int8-inputs quantizes the inputs of decode's weight products to 8 bits per
32-block (llama.cpp's scheme: faster on AVX2, not exact; default: exact f32); --random-init SEED replaces every
weight by a random one of matching scale (same architecture). --model defaults to
$HEADRECON_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf (HEADRECON_CACHE defaults
to ~/.cache/headrecon); fetch it with examples/engine/fetch_model.sh.
)";

class Args {
 public:
  Args(int argc, char** argv, const std::set<std::string>& valued, const std::set<std::string>& switches) {
    for (int i = 2; i < argc; ++i) {
      const std::string a = argv[i];
      if (switches.count(a)) {
        switches_.insert(a);
      } else if (valued.count(a)) {
        if (i + 1 >= argc) fail("option ", a, " needs a value");
        values_[a].push_back(argv[++i]);
      } else {
        fail("unknown option or argument '", a, "'");
      }
    }
  }
  bool has(const std::string& f) const { return switches_.count(f) || values_.count(f); }
  std::vector<std::string> all(const std::string& f) const {
    auto it = values_.find(f);
    return it == values_.end() ? std::vector<std::string>{} : it->second;
  }
  std::string str(const std::string& f, const std::string& def = "") const {
    auto it = values_.find(f);
    if (it == values_.end()) return def;
    if (it->second.size() > 1) fail("option ", f, " given ", it->second.size(), " times");
    return it->second[0];
  }
  std::string required(const std::string& f) const {
    if (!values_.count(f)) fail("missing required option ", f);
    return str(f);
  }
  long integer(const std::string& f, long def, long lo, long hi) const {
    if (!values_.count(f)) return def;
    const std::string s = str(f);
    char* end = nullptr;
    const long v = std::strtol(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0') fail("option ", f, ": '", s, "' is not an integer");
    if (v < lo || v > hi) fail("option ", f, ": ", v, " is outside [", lo, ", ", hi, "]");
    return v;
  }

 private:
  std::map<std::string, std::vector<std::string>> values_;
  std::set<std::string> switches_;
};

std::string cache_dir() {
  const char* cache = std::getenv("HEADRECON_CACHE");
  std::string base;
  if (cache && *cache) {
    base = cache;
  } else {
    const char* home = std::getenv("HOME");
    base = std::string(home && *home ? home : ".") + "/.cache/headrecon";
  }
  return base;
}

std::string default_model_path() { return cache_dir() + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"; }

std::string model_path(const Args& a) {
  const std::string p = a.str("--model", default_model_path());
  std::ifstream is(p);
  if (!is)
    fail("model file ", p, " not found: pass --model or run examples/engine/fetch_model.sh to fetch ",
         "SmolLM2-135M-Instruct.Q4_1.gguf into $HEADRECON_CACHE/models (default ~/.cache/headrecon/models)");
  return p;
}

/// The model of --model, randomized when --random-init SEED is given.
he::LlamaModel load_model(const Args& a, const he::GgufFile& f) {
  he::LlamaModel m(f);
  if (a.has("--random-init")) m.randomize(std::uint64_t(a.integer("--random-init", 0, 0, 1L << 62)));
  return m;
}

/// --threads N: the engine pool's size (default: one per hardware thread) and the BLAS threads.
void apply_threads(const Args& a) {
  if (a.has("--threads")) {
    const long n = a.integer("--threads", 1, 1, 1024);
    he::set_engine_threads(std::size_t(n));
    if (!he::set_blas_threads(int(n))) std::cerr << "note: BLAS threads unchanged (the BLAS is not OpenBLAS)\n";
  }
  if (a.has("--int8-inputs")) he::set_default_int8_inputs(true);
}

std::vector<std::int32_t> parse_ids(const std::string& s) {
  std::vector<std::int32_t> ids;
  std::string norm = s;
  for (char& ch : norm)
    if (ch == ',') ch = ' ';
  std::istringstream is(norm);
  std::string w;
  while (is >> w) {
    char* end = nullptr;
    const long v = std::strtol(w.c_str(), &end, 10);
    if (*end != '\0' || v < 0 || v > INT32_MAX) fail("token id '", w, "' is not a non-negative integer");
    ids.push_back(std::int32_t(v));
  }
  if (ids.empty()) fail("no token ids in '", s, "'");
  return ids;
}

const std::set<std::string> text_options = {"--text", "--text-dir", "--split", "--suffix", "--ids"};

/// The token stream named by --text / --text-dir / --ids, cut to `n` tokens (0: all).
he::TokenStream text_tokens(const Args& a, const he::Tokenizer& tok, std::size_t n, std::string& source,
                            const char* default_split) {
  const int given = int(a.has("--text")) + int(a.has("--text-dir")) + int(a.has("--ids"));
  if (given != 1) fail("give exactly one of --text, --text-dir, --ids");
  if (a.has("--ids")) {
    he::TokenStream s;
    s.tokens = parse_ids(a.str("--ids"));
    if (n) {
      if (s.tokens.size() < n) fail("--ids has ", s.tokens.size(), " tokens, ", n, " were asked for");
      s.tokens.resize(n);
    }
    source = "ids";
    return s;
  }
  std::vector<std::string> files;
  if (a.has("--text")) {
    files = a.all("--text");
    source = "files:";
    for (const auto& f : files) source += " " + f;
  } else {
    const std::string dir = a.str("--text-dir");
    const he::Split split = he::parse_split(a.str("--split", default_split));
    const std::string suffix = a.str("--suffix", ".txt");
    files = he::list_text_files(dir, suffix, split);
    if (files.empty()) fail(dir, ": no files ending in '", suffix, "'");
    source = "dir: " + dir + " suffix " + suffix + " split " + he::split_name(split) + " (" +
             std::to_string(files.size()) + " files, sorted by path; calib = even, eval = odd indices)";
  }
  for (const auto& f : files)
    if (!std::ifstream(f)) fail(f, ": cannot open");
  return he::build_token_stream(tok, files, n, he::document_separator(tok));
}

int cmd_info(const Args& a) {
  const he::GgufFile f(model_path(a));
  std::cout << "file: " << f.path() << " (" << f.file_size() << " bytes)\n"
            << "GGUF version " << f.version() << ", " << f.metadata().size() << " metadata keys, "
            << f.tensors().size() << " tensors, alignment " << f.alignment() << ", data at offset "
            << f.data_offset() << "\n";
  std::map<std::string, std::size_t> types;
  for (const auto& t : f.tensors()) ++types[he::ggml_type_name(t.type)];
  std::cout << "tensor types:";
  for (const auto& [k, n] : types) std::cout << " " << k << " x" << n;
  std::cout << "\n";
  if (f.find("general.name")) std::cout << "name: " << f.get_string("general.name") << "\n";
  const auto t0 = std::chrono::steady_clock::now();
  const he::LlamaModel m = load_model(a, f);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const he::LlamaConfig& c = m.config();
  std::cout << "architecture: " << c.arch << "\nlayers: " << c.n_layer << "\nhidden: " << c.n_embd
            << "\nheads: " << c.n_head << "\nkv heads: " << c.n_head_kv << "\nhead_dim: " << c.head_dim
            << "\nffn: " << c.n_ff << "\nvocab: " << c.n_vocab << "\ncontext (train): " << c.n_ctx_train
            << "\nrope: base " << c.rope_base << ", dims " << c.n_rot << ", "
            << (c.rope_neox ? "NEOX (halves)" : "NORM (adjacent pairs)") << "\nrms eps: " << c.rms_eps
            << "\noutput: " << (c.tied_output ? "tied to token_embd" : "output.weight")
            << "\nparameters: " << m.n_params() << "\nweight bytes (read per decoded token): " << m.weight_bytes()
            << "\nweight kernels: " << he::quant_kernel_target() << "\nload: " << load_s << " s\n";
  const he::Tokenizer tok(f);
  std::cout << "tokenizer: gpt2 (byte-level BPE), pre '" << tok.pre_tokenizer() << "', vocab "
            << tok.vocab_size() << ", bos " << tok.bos_id() << ", eos " << tok.eos_id()
            << ", add_bos " << (tok.add_bos() ? "true" : "false") << "\n";
  return 0;
}

int cmd_tokenize(const Args& a) {
  const he::GgufFile f(model_path(a));
  const he::Tokenizer tok(f);
  if (a.has("--text") == a.has("--string")) fail("give exactly one of --text, --string");
  const std::string text = a.has("--text") ? he::read_text_file(a.str("--text")) : a.str("--string");
  const auto ids = tok.encode(text, a.has("--special"));
  for (std::size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
  std::cout << "\n";
  return 0;
}

int cmd_detokenize(const Args& a) {
  const he::GgufFile f(model_path(a));
  const he::Tokenizer tok(f);
  std::cout << tok.decode(parse_ids(a.required("--ids")));
  return 0;
}

int cmd_logits(const Args& a) {
  apply_threads(a);
  const he::GgufFile f(model_path(a));
  const he::Tokenizer tok(f);
  const he::LlamaModel m = load_model(a, f);
  if (a.has("--ids") == a.has("--string")) fail("give exactly one of --ids, --string");
  const auto ids = a.has("--ids") ? parse_ids(a.str("--ids")) : tok.encode(a.str("--string"), true);
  const std::size_t V = m.config().n_vocab, top = std::size_t(a.integer("--top", 5, 0, 1000));
  he::LlamaEngine eng(m);
  he::KvCache cache(m.attention_shape(), ids.size());
  std::vector<float> logits;
  eng.forward(ids.data(), ids.size(), cache, he::LogitsMode::all, &logits);
  for (std::size_t t = 0; t < ids.size(); ++t) {
    std::vector<std::int32_t> order(V);
    for (std::size_t i = 0; i < V; ++i) order[i] = std::int32_t(i);
    const float* row = logits.data() + t * V;
    std::partial_sort(order.begin(), order.begin() + std::ptrdiff_t(std::min(top, V)), order.end(),
                      [&](std::int32_t x, std::int32_t y) { return row[x] > row[y]; });
    std::cout << t << " " << ids[t];
    for (std::size_t k = 0; k < std::min(top, V); ++k) std::cout << " " << order[k] << ":" << row[order[k]];
    std::cout << "\n";
  }
  if (a.has("--out")) {
    std::ofstream os(a.str("--out"), std::ios::binary);
    os.write(reinterpret_cast<const char*>(logits.data()), std::streamsize(logits.size() * sizeof(float)));
    if (!os) fail(a.str("--out"), ": cannot write");
  }
  return 0;
}

int cmd_ppl(const Args& a) {
  apply_threads(a);
  const he::GgufFile f(model_path(a));
  const he::Tokenizer tok(f);
  const he::LlamaModel m = load_model(a, f);
  const std::size_t n = std::size_t(a.integer("--tokens", 0, 2, 1L << 40));
  if (!n) fail("missing required option --tokens");
  const std::size_t seq = std::size_t(a.integer("--seq-len", 512, 2, 1L << 20));
  std::string source;
  const he::TokenStream s = text_tokens(a, tok, n, source, "eval");
  if (a.has("--ids-out")) {
    std::ofstream os(a.str("--ids-out"));
    for (std::size_t i = 0; i < s.tokens.size(); ++i) os << (i ? " " : "") << s.tokens[i];
    os << "\n";
    if (!os) fail(a.str("--ids-out"), ": cannot write");
  }
  const he::PerplexityStats st = he::perplexity(m, s.tokens, seq);
  std::cout.precision(8);
  std::cout << "text: " << source << "\n"
            << "tokens: " << st.tokens << " in " << st.sequences << " sequences of <= " << seq
            << " (" << st.predicted << " predicted)\n"
            << "perplexity: " << st.ppl() << " (mean NLL " << st.nll / double(st.predicted) << " nats)\n"
            << "time: " << st.seconds << " s, " << double(st.tokens) / st.seconds << " tokens/s\n";
  return 0;
}

int cmd_capture(const Args& a) {
  apply_threads(a);
  const he::GgufFile f(model_path(a));
  const he::Tokenizer tok(f);
  const he::LlamaModel m = load_model(a, f);
  const std::size_t n = std::size_t(a.integer("--tokens", 0, 1, 1L << 40));
  if (!n) fail("missing required option --tokens");
  he::CaptureOptions opt;
  opt.seq_len = std::size_t(a.integer("--seq-len", 512, 1, 1L << 20));
  opt.post_rope = !a.has("--pre-rope");
  std::string dt = a.str("--dtype", "f32");
  for (char& ch : dt) ch = char(std::toupper(static_cast<unsigned char>(ch)));
  opt.dtype = headrecon::parse_dtype(dt);
  opt.q = opt.k = opt.v = false;
  std::string kinds = a.str("--kinds", "q,k,v");
  std::istringstream ks(kinds);
  for (std::string k; std::getline(ks, k, ',');) {
    const headrecon::Kind kind = headrecon::parse_kind(k);
    (kind == headrecon::Kind::q ? opt.q : kind == headrecon::Kind::k ? opt.k : opt.v) = true;
  }
  std::string source;
  he::TokenStream s;
  if (a.has("--spread")) {
    if (!a.has("--text-dir")) fail("--spread needs --text-dir");
    const he::Split split = he::parse_split(a.str("--split", "calib"));
    const std::string suffix = a.str("--suffix", ".txt");
    const std::size_t seqs = (n + opt.seq_len - 1) / opt.seq_len;
    s = he::spread_sequences(tok, he::list_text_files(a.str("--text-dir"), suffix, split), seqs, opt.seq_len);
    source = "dir: " + a.str("--text-dir") + " suffix " + suffix + " split " + he::split_name(split) +
             ", the first " + std::to_string(opt.seq_len) + " tokens of " + std::to_string(s.files.size()) +
             " files spread over the split";
  } else {
    s = text_tokens(a, tok, n, source, "calib");
  }
  opt.metadata["model"] = m.path().substr(m.path().find_last_of('/') + 1);
  if (m.randomized()) opt.metadata["random_init"] = a.str("--random-init");
  opt.metadata["text_source"] = source;
  opt.metadata["text_files_used"] = std::to_string(s.files.size());
  if (!s.files.empty()) {
    opt.metadata["text_first_file"] = s.files.front();
    opt.metadata["text_last_file"] = s.files.back();
  }
  std::string out = a.required("--out");
  if (a.has("--shard")) {  // a disjoint run of whole sequences (capture_shard.hpp)
    const he::Shard shard = he::parse_shard(a.str("--shard"));
    std::size_t token0 = 0;
    s.tokens = he::shard_tokens(s.tokens, opt.seq_len, shard, token0);
    out = he::shard_path(out, shard);
    opt.metadata["shard"] = std::to_string(shard.index) + "/" + std::to_string(shard.count);
    opt.metadata["shard_token0"] = std::to_string(token0);
    std::cout << "shard " << opt.metadata["shard"] << ": tokens " << token0 << ".." << token0 + s.tokens.size() - 1
              << "\n";
  }
  if (a.has("--projections"))  // checked before the capture runs
    if (a.str("--projections") == out) fail("--projections and --out name the same file");
  const he::CaptureStats st = he::capture_activations(m, s.tokens, out, opt);
  if (a.has("--projections")) {
    headrecon::save_output_projections(he::output_projections(m), a.str("--projections"),
                                       {{"model", opt.metadata["model"]}});
    std::cout << "wrote " << a.str("--projections") << ": output projections of " << m.config().n_layer
              << " layers\n";
  }
  std::cout << "text: " << source << " (" << s.files.size() << " files used)\n"
            << "wrote " << out << ": " << st.tokens << " tokens in " << st.sequences << " sequences of <= "
            << opt.seq_len << ", " << m.config().n_layer << " layers, kinds " << kinds << ", "
            << (opt.post_rope ? "post-RoPE" : "pre-RoPE") << ", " << headrecon::dtype_name(opt.dtype) << "\n"
            << "time: " << st.seconds << " s (" << double(st.tokens) / st.seconds << " tokens/s; forward alone "
            << double(st.tokens) / st.forward_seconds << " tokens/s)\n";
  return 0;
}

int cmd_generate(const Args& a) {
  apply_threads(a);
  const he::GgufFile f(model_path(a));
  const he::Tokenizer tok(f);
  const he::LlamaModel m = load_model(a, f);
  std::vector<std::int32_t> ids;
  if (a.has("--ids") == a.has("--prompt")) fail("give exactly one of --prompt, --ids");
  if (a.has("--ids")) {
    ids = parse_ids(a.str("--ids"));
  } else {
    std::string p = a.str("--prompt");
    if (a.has("--chat")) p = "<|im_start|>user\n" + p + "<|im_end|>\n<|im_start|>assistant\n";
    ids = tok.encode(p, true);
  }
  if (tok.add_bos()) ids.insert(ids.begin(), tok.bos_id());
  const std::size_t n_new = std::size_t(a.integer("--n", 32, 1, 1 << 20));
  he::LlamaEngine eng(m);
  he::KvCache cache(m.attention_shape(), ids.size() + n_new);
  std::vector<float> logits;
  auto argmax = [&]() {
    return std::int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  };
  const auto t0 = std::chrono::steady_clock::now();
  eng.forward(ids.data(), ids.size(), cache, he::LogitsMode::last, &logits);
  const auto t1 = std::chrono::steady_clock::now();
  std::vector<std::int32_t> out;
  std::int32_t next = argmax();
  for (std::size_t i = 0; i < n_new; ++i) {
    out.push_back(next);
    if (next == tok.eos_id() || i + 1 == n_new) break;
    eng.forward(&next, 1, cache, he::LogitsMode::last, &logits);
    next = argmax();
  }
  const auto t2 = std::chrono::steady_clock::now();
  const double pre_s = std::chrono::duration<double>(t1 - t0).count();
  const double dec_s = std::chrono::duration<double>(t2 - t1).count();
  std::cout << tok.decode(out) << "\n";
  std::cerr << "prompt " << ids.size() << " tokens: " << double(ids.size()) / pre_s << " tokens/s; "
            << "generated " << out.size() << " tokens";
  if (out.size() > 1) std::cerr << ": " << double(out.size() - 1) / dec_s << " tokens/s";
  std::cerr << "\n";
  return 0;
}

int cmd_bench(const Args& a) {
  apply_threads(a);
  const he::GgufFile f(model_path(a));
  const he::LlamaModel m = load_model(a, f);
  const std::size_t seq = std::size_t(a.integer("--seq-len", 512, 1, 1 << 20));
  const std::size_t dec = std::size_t(a.integer("--decode", 64, 0, 1 << 20));
  const std::size_t V = m.config().n_vocab;
  std::vector<std::int32_t> ids(seq);
  for (std::size_t i = 0; i < seq; ++i) ids[i] = std::int32_t((i * 7919 + 17) % V);
  he::LlamaEngine eng(m);
  he::KvCache cache(m.attention_shape(), seq + dec);
  std::vector<float> logits;
  using clk = std::chrono::steady_clock;
  auto secs = [](clk::time_point a0, clk::time_point b0) { return std::chrono::duration<double>(b0 - a0).count(); };
  // Warm-up (BLAS thread start, page faults), then timed runs.
  eng.forward(ids.data(), std::min<std::size_t>(seq, 32), cache, he::LogitsMode::none, nullptr);
  cache.clear();
  auto t0 = clk::now();
  eng.forward(ids.data(), seq, cache, he::LogitsMode::none, nullptr);
  auto t1 = clk::now();
  const double pre_none = secs(t0, t1);
  cache.clear();
  t0 = clk::now();
  eng.forward(ids.data(), seq, cache, he::LogitsMode::all, &logits);
  t1 = clk::now();
  const double pre_all = secs(t0, t1);
  double dec_s = 0;
  if (dec) {
    t0 = clk::now();
    std::int32_t next = 1;
    for (std::size_t i = 0; i < dec; ++i) eng.forward(&next, 1, cache, he::LogitsMode::last, &logits);
    dec_s = secs(t0, clk::now());
  }
  std::cout << "threads " << he::engine_pool().size() << ", kernels " << he::quant_kernel_target()
            << (a.has("--int8-inputs") ? " (8-bit inputs)" : " (f32 inputs)") << ", weights "
            << m.weight_bytes() << " bytes\n"
            << "prefill " << seq << " tokens, no logits: " << double(seq) / pre_none << " tokens/s\n"
            << "prefill " << seq << " tokens, all logits: " << double(seq) / pre_all << " tokens/s\n";
  if (dec)
    std::cout << "decode " << dec << " tokens after " << seq << " (last logits): " << double(dec) / dec_s
              << " tokens/s\n";
  return 0;
}


std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream is(s);
  for (std::string x; std::getline(is, x, ',');)
    if (!x.empty()) out.push_back(x);
  return out;
}

int cmd_eval(const Args& a) {
  apply_threads(a);
  const he::GgufFile f(model_path(a));
  const he::Tokenizer tok(f);
  const he::LlamaModel m = load_model(a, f);
  he::EvalOptions opt;
  opt.seq_len = std::size_t(a.integer("--seq-len", 256, 2, 1L << 20));
  const std::size_t seqs = std::size_t(a.integer("--seqs", 2, 1, 1L << 20));
  opt.chunk = std::size_t(a.integer("--chunk", 1, 1, 1L << 20));
  opt.simulate = a.has("--simulate");
  opt.dtypes.clear();
  for (const auto& t : split_list(a.str("--cache-dtype", "f32"))) opt.dtypes.push_back(headrecon::CacheType::parse(t));
  if (a.has("--variants")) {
    opt.variants.clear();
    for (const auto& v : split_list(a.str("--variants"))) opt.variants.push_back(he::parse_apply(v));
  }
  if (a.has("--sinks")) {
    opt.sinks.clear();
    for (const auto& v : split_list(a.str("--sinks"))) {
      char* end = nullptr;
      const long x = std::strtol(v.c_str(), &end, 10);
      if (*end || x < 0 || x > 1 << 20) fail("--sinks: '", v, "' is not a token count");
      opt.sinks.push_back(int(x));
    }
  }
  std::vector<he::EvalPlan> plans;
  for (const auto& spec : a.all("--plan")) {
    const auto eq = spec.find('=');
    std::string name = eq == std::string::npos ? spec : spec.substr(0, eq);
    const std::string path = eq == std::string::npos ? spec : spec.substr(eq + 1);
    if (eq == std::string::npos) {
      name = name.substr(name.find_last_of('/') + 1);
      name = name.substr(0, name.find('.'));
    }
    plans.push_back({name, headrecon::load_plan(path)});
  }
  std::string source;
  he::TokenStream s;
  if (a.has("--spread")) {
    if (!a.has("--text-dir")) fail("--spread needs --text-dir");
    const he::Split split = he::parse_split(a.str("--split", "eval"));
    const std::string suffix = a.str("--suffix", ".txt");
    s = he::spread_sequences(tok, he::list_text_files(a.str("--text-dir"), suffix, split), seqs, opt.seq_len);
    source = "dir: " + a.str("--text-dir") + " suffix " + suffix + " split " + he::split_name(split) +
             ", the first " + std::to_string(opt.seq_len) + " tokens of " + std::to_string(s.files.size()) +
             " files spread over the split";
  } else {
    s = text_tokens(a, tok, seqs * opt.seq_len, source, "eval");
  }
  if (a.has("--ids-out")) {  // one sequence per line, for other engines (benchmarks/llamacpp_perplexity.py)
    std::ofstream os(a.str("--ids-out"));
    for (std::size_t i = 0; i < s.tokens.size(); ++i)
      os << s.tokens[i] << ((i + 1) % opt.seq_len == 0 || i + 1 == s.tokens.size() ? "\n" : " ");
    if (!os) fail(a.str("--ids-out"), ": cannot write");
  }
  std::cout << "text: " << source << "\n"
            << "eval: " << seqs << " sequences of " << opt.seq_len << " tokens, decoded one token at a time"
            << (opt.chunk > 1 ? " (chunks of " + std::to_string(opt.chunk) + ")" : std::string())
            << " through the reference-only cache\n";
  const std::vector<he::EvalRow> rows = he::run_eval(m, s.tokens, plans, opt, std::cout);
  std::cout << "\n";
  he::print_eval_table(rows, std::cout, false);
  std::map<std::string, std::string> meta{{"model", m.path()},
                                          {"text", source},
                                          {"seq_len", std::to_string(opt.seq_len)},
                                          {"sequences", std::to_string(seqs)},
                                          {"cache_dtypes", a.str("--cache-dtype", "f32")},
                                          {"chunk", std::to_string(opt.chunk)}};
  if (a.has("--csv")) he::write_eval_csv(rows, a.str("--csv"));
  if (a.has("--json")) he::write_eval_json(rows, meta, a.str("--json"));
  if (a.has("--md")) {
    std::ofstream os(a.str("--md"));
    he::print_eval_table(rows, os, true);
  }
  return 0;
}

int cmd_probe(const Args& a) {
  apply_threads(a);
  const he::GgufFile f(model_path(a));
  const he::Tokenizer tok(f);
  const he::LlamaModel m = load_model(a, f);
  const headrecon::Plan plan = headrecon::load_plan(a.required("--plan"));
  const std::string out = a.required("--out");
  const std::size_t seq_len = std::size_t(a.integer("--seq-len", 256, 2, 1L << 20));
  const std::size_t seqs = std::size_t(a.integer("--seqs", 4, 1, 1L << 20));
  if (!a.has("--text-dir")) fail("probe needs --text-dir (calibration text: --split calib, the default)");
  const he::Split split = he::parse_split(a.str("--split", "calib"));
  const he::TokenStream s = he::spread_sequences(
      tok, he::list_text_files(a.str("--text-dir"), a.str("--suffix", ".txt"), split), seqs, seq_len);
  std::cout << "probe: " << seqs << " sequences of " << seq_len << " tokens (split " << he::split_name(split)
            << "), each (kind, layer) of " << a.str("--plan") << " rebuilt alone\n";
  const auto rows = he::probe_plan(m, s.tokens, seq_len, plan, std::cout);
  he::write_probe_csv(rows, out);
  std::cout << "wrote " << out << "\n";
  return 0;
}

int cmd_demo(const Args& a) {
  he::DemoOptions o;
  o.dir = a.str("--dir", o.dir);
  o.model = a.str("--model", default_model_path());
  o.fetch_script = std::string(HEADRECON_ENGINE_DIR) + "/fetch_model.sh";
  o.prepare_text_script = std::string(HEADRECON_ENGINE_DIR) + "/prepare_text.sh";
  o.docs = a.str("--docs", o.docs);
  o.kjv = a.str("--kjv", cache_dir() + "/text/kjv.txt");
  o.calib_tokens = std::size_t(a.integer("--calib-tokens", long(o.calib_tokens), 256, 1L << 30));
  o.random_tokens = std::size_t(a.integer("--random-tokens", long(o.random_tokens), 256, 1L << 30));
  o.capture_seq_len = std::size_t(a.integer("--seq-len", long(o.capture_seq_len), 16, 1L << 20));
  o.eval_seqs = std::size_t(a.integer("--eval-seqs", long(o.eval_seqs), 1, 1L << 20));
  o.eval_len = std::size_t(a.integer("--eval-len", long(o.eval_len), 8, 1L << 20));
  o.kjv_seqs = std::size_t(a.integer("--kjv-seqs", long(o.kjv_seqs), 0, 1L << 20));
  o.q_window = int(a.integer("--q-window", o.q_window, 0, 1 << 20));
  o.max_k = int(a.integer("--max-k", o.max_k, 1, 16));
  o.threads = int(a.integer("--threads", o.threads, 1, 1024));
  o.random_seed = std::uint64_t(a.integer("--seed", long(o.random_seed), 0, 1L << 62));
  o.random = !a.has("--no-random");
  o.keep_acts = a.has("--keep-acts");
  o.speed = !a.has("--no-speed");
  o.speed_opt.context = o.eval_len;
  o.speed_opt.long_context = std::size_t(a.integer("--speed-context", long(o.speed_opt.long_context), 16, 1L << 22));
  o.cache_dtype = headrecon::CacheType::parse(a.str("--cache-dtype", "f32"));
  if (a.has("--sinks")) {
    o.sinks.clear();
    for (const auto& v : split_list(a.str("--sinks"))) {
      char* end = nullptr;
      const long x = std::strtol(v.c_str(), &end, 10);
      if (*end || x < 0 || x > 1 << 20) fail("--sinks: '", v, "' is not a token count");
      o.sinks.push_back(int(x));
    }
  }
  if (a.has("--plans")) {
    std::vector<he::PlanSpec> keep;
    for (const auto& name : split_list(a.str("--plans"))) {
      auto it = std::find_if(o.plans.begin(), o.plans.end(), [&](const he::PlanSpec& p) { return p.name == name; });
      if (it == o.plans.end()) {
        std::string known;
        for (const auto& p : o.plans) known += " " + p.name;
        fail("--plans: unknown plan '", name, "' (known:", known, ")");
      }
      keep.push_back(*it);
    }
    o.plans = keep;
  }
  return he::run_demo(o, std::cout);
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h" ||
      std::string(argv[1]) == "help") {
    std::cout << usage_text;
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  try {
    auto with = [](std::set<std::string> s, const std::set<std::string>& more) {
      s.insert(more.begin(), more.end());
      return s;
    };
    if (cmd == "info") return cmd_info(Args(argc, argv, {"--model"}, {}));
    if (cmd == "tokenize") return cmd_tokenize(Args(argc, argv, {"--model", "--text", "--string"}, {"--special"}));
    if (cmd == "detokenize") return cmd_detokenize(Args(argc, argv, {"--model", "--ids"}, {}));
    if (cmd == "logits")
      return cmd_logits(Args(argc, argv, {"--model", "--ids", "--string", "--out", "--top", "--threads", "--random-init"}, {"--int8-inputs"}));
    if (cmd == "ppl")
      return cmd_ppl(Args(argc, argv, with(text_options, {"--model", "--tokens", "--seq-len", "--ids-out", "--threads", "--random-init"}), {"--int8-inputs"}));
    if (cmd == "capture")
      return cmd_capture(Args(argc, argv,
                              with(text_options, {"--model", "--tokens", "--seq-len", "--out", "--kinds",
                                                  "--dtype", "--threads", "--random-init", "--projections", "--shard"}),
                              {"--pre-rope", "--spread", "--int8-inputs"}));
    if (cmd == "generate")
      return cmd_generate(Args(argc, argv, {"--model", "--prompt", "--ids", "--n", "--threads", "--random-init"}, {"--chat", "--int8-inputs"}));
    if (cmd == "demo")
      return cmd_demo(Args(argc, argv,
                           {"--dir", "--model", "--docs", "--kjv", "--calib-tokens", "--random-tokens", "--seq-len",
                            "--eval-seqs", "--eval-len", "--kjv-seqs", "--q-window", "--max-k", "--threads", "--seed",
                            "--cache-dtype", "--sinks", "--plans", "--speed-context"},
                           {"--no-random", "--keep-acts", "--no-speed"}));
    if (cmd == "eval")
      return cmd_eval(Args(argc, argv,
                           with(text_options, {"--model", "--seqs", "--seq-len", "--plan", "--variants", "--sinks",
                                               "--cache-dtype", "--chunk", "--csv", "--json", "--md", "--threads", "--ids-out",
                                               "--random-init"}),
                           {"--simulate", "--spread", "--int8-inputs"}));
    if (cmd == "probe")
      return cmd_probe(Args(argc, argv,
                            {"--model", "--plan", "--out", "--text-dir", "--split", "--suffix", "--seqs", "--seq-len",
                             "--threads", "--random-init"},
                            {"--int8-inputs"}));
    if (cmd == "bench") return cmd_bench(Args(argc, argv, {"--model", "--seq-len", "--decode", "--threads"}, {"--int8-inputs"}));
    std::cerr << "headrecon-engine: unknown command '" << cmd << "'\n\n" << usage_text;
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "headrecon-engine " << cmd << ": error: " << e.what() << "\n";
    return 1;
  }
}
