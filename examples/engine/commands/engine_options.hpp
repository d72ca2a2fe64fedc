#pragma once
// Options several headrecon-engine commands share: the model (--model,
// --threads, --int8-inputs, --random-init), the text (--text, --text-dir,
// --split, --suffix, --ids) and small value lists.

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "command_line.hpp"
#include "corpus.hpp"
#include "gguf.hpp"
#include "llama.hpp"
#include "tokenizer.hpp"

namespace headrecon_engine::commands {

using headrecon::cli::finite;
using headrecon::cli::integer_in;

/// $HEADRECON_CACHE, or ~/.cache/headrecon.
inline std::string cache_dir() {
  const char* cache = std::getenv("HEADRECON_CACHE");
  if (cache && *cache) return cache;
  const char* home = std::getenv("HOME");
  return std::string(home && *home ? home : ".") + "/.cache/headrecon";
}

inline std::string default_model_path() { return cache_dir() + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"; }

/// Comma-separated items, empty ones dropped.
inline std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream is(s);
  for (std::string x; std::getline(is, x, ',');)
    if (!x.empty()) out.push_back(x);
  return out;
}

/// "0,4": token counts (sink tokens), each in [0, 2^20].
inline std::vector<int> parse_sinks(const std::string& s) {
  std::vector<int> out;
  for (const auto& v : split_list(s)) {
    char* end = nullptr;
    const long x = std::strtol(v.c_str(), &end, 10);
    if (v.empty() || *end || x < 0 || x > 1 << 20) fail("--sinks: '", v, "' is not a token count");
    out.push_back(int(x));
  }
  if (out.empty()) fail("--sinks: no token count in '", s, "'");
  return out;
}

/// "1 2 3" or "1,2,3": non-negative token ids.
inline std::vector<std::int32_t> parse_ids(const std::string& s) {
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

/// --model, and for the commands that run the model --threads, --int8-inputs
/// and (optionally) --random-init.
struct ModelOptions {
  std::string model = default_model_path();
  std::uint64_t random_init = 0;
  int threads = 1;
  bool int8_inputs = false, static_attention = false, static_weights = false;
  CLI::Option *random_opt = nullptr, *threads_opt = nullptr;

  void add_model(CLI::App* c) {
    c->add_option("--model", model, "GGUF model file (fetch the default with examples/engine/fetch_model.sh)");
  }
  void add_runtime(CLI::App* c, bool with_random_init = true) {
    add_model(c);
    threads_opt = c->add_option("--threads", threads, "engine and BLAS threads (default: all hardware threads)")
                      ->check(integer_in(1, 1024))
                      ->default_str("all");
    c->add_flag("--int8-inputs", int8_inputs,
                "quantize the inputs of decode's weight products to 8 bits per 32-block (faster, not exact)");
    c->add_flag("--static-attention", static_attention,
                "attention kernels of this build's SIMD target instead of the best one of this CPU (runtime dispatch)");
    c->add_flag("--static-weights", static_weights,
                "weight kernels (f32 inputs) of this build's SIMD target instead of the best one of this CPU");
    if (with_random_init)
      random_opt = c->add_option("--random-init", random_init,
                                 "replace every weight by a random one of matching scale (seed)")
                       ->check(integer_in(0, 1LL << 62))
                       ->default_str("off");
  }
  bool randomized() const { return random_opt && random_opt->count(); }

  /// The --model path, checked to exist.
  std::string path() const {
    if (!std::ifstream(model))
      fail("model file ", model, " not found: pass --model or run examples/engine/fetch_model.sh to fetch ",
           "SmolLM2-135M-Instruct.Q4_1.gguf into $HEADRECON_CACHE/models (default ~/.cache/headrecon/models)");
    return model;
  }
  /// The model, randomized when --random-init SEED is given.
  LlamaModel load(const GgufFile& f) const {
    LlamaModel m(f);
    if (randomized()) m.randomize(random_init);
    return m;
  }
  /// --threads N: the engine pool's size and the BLAS threads; --int8-inputs;
  /// the attention and weight kernels (runtime dispatch unless --static-attention,
  /// --static-weights).
  void apply_threads() const {
    if (static_attention) engine_attention_kernel() = {};  // attend's default: the build's target
    if (static_weights) engine_quant_kernel() = {};        // quant_matvec's static kernel
    if (threads_opt && threads_opt->count()) {
      set_engine_threads(std::size_t(threads));
      if (!set_blas_threads(threads)) std::cerr << "note: BLAS threads unchanged (the BLAS is not OpenBLAS)\n";
    }
    if (int8_inputs) set_default_int8_inputs(true);
  }
};

inline const char* const text_help = R"(TEXT is one of
  --text FILE                      one text file (may be repeated; used in order)
  --text-dir DIR [--split calib|eval|all] [--suffix .txt]
                                   files under DIR sorted by relative path; calib
                                   takes even indices, eval odd ones (default:
                                   calib for capture and probe, eval for ppl and eval)
  --ids "I I ..."                  token ids directly
Documents are packed into one token stream, separated by <|endoftext|> (or EOS).)";

/// --text / --text-dir (--split, --suffix) / --ids: the token stream a command reads.
struct TextOptions {
  std::vector<std::string> text;
  std::string text_dir, split, suffix = ".txt", ids;
  CLI::Option *text_opt = nullptr, *dir_opt = nullptr, *ids_opt = nullptr;

  /// `with_ids`: also --ids and --text (else only the --text-dir group).
  void add(CLI::App* c, bool with_files = true) {
    if (with_files)
      text_opt = c->add_option("--text", text, "text file (repeatable; used in order)")
                     ->allow_extra_args(false)
                     ->default_str("");
    dir_opt = c->add_option("--text-dir", text_dir, "directory of text files, sorted by relative path");
    c->add_option("--split", split, "calib (even files), eval (odd files) or all")->default_str("per command");
    c->add_option("--suffix", suffix, "file name suffix under --text-dir");
    if (with_files) ids_opt = c->add_option("--ids", ids, "token ids directly: \"I I ...\"");
    c->footer(text_help);
  }
  bool has_dir() const { return dir_opt && dir_opt->count(); }
  Split split_or(const char* def) const { return parse_split(split.empty() ? def : split); }
  /// The files of --text or --text-dir: inputs a command must not overwrite.
  std::vector<std::string> files() const { return text; }

  /// The token stream, cut to `n` tokens (0: all); `source` describes it.
  TokenStream tokens(const Tokenizer& tok, std::size_t n, std::string& source, const char* default_split) const {
    const int given = int(text_opt->count() > 0) + int(has_dir()) + int(ids_opt->count() > 0);
    if (given != 1) fail("give exactly one of --text, --text-dir, --ids");
    if (ids_opt->count()) {
      TokenStream s;
      s.tokens = parse_ids(ids);
      if (n) {
        if (s.tokens.size() < n) fail("--ids has ", s.tokens.size(), " tokens, ", n, " were asked for");
        s.tokens.resize(n);
      }
      source = "ids";
      return s;
    }
    std::vector<std::string> files;
    if (text_opt->count()) {
      files = text;
      source = "files:";
      for (const auto& f : files) source += " " + f;
    } else {
      const Split sp = split_or(default_split);
      files = list_text_files(text_dir, suffix, sp);
      if (files.empty()) fail(text_dir, ": no files ending in '", suffix, "'");
      source = "dir: " + text_dir + " suffix " + suffix + " split " + split_name(sp) + " (" +
               std::to_string(files.size()) + " files, sorted by path; calib = even, eval = odd indices)";
    }
    for (const auto& f : files)
      if (!std::ifstream(f)) fail(f, ": cannot open");
    return build_token_stream(tok, files, n, document_separator(tok));
  }

  /// --spread: the first `seq_len` tokens of `seqs` files spread over the split of --text-dir.
  TokenStream spread(const Tokenizer& tok, std::size_t seqs, std::size_t seq_len, std::string& source,
                     const char* default_split) const {
    if (!has_dir()) fail("--spread needs --text-dir");
    const Split sp = split_or(default_split);
    TokenStream s = spread_sequences(tok, list_text_files(text_dir, suffix, sp), seqs, seq_len);
    source = "dir: " + text_dir + " suffix " + suffix + " split " + split_name(sp) + ", the first " +
             std::to_string(seq_len) + " tokens of " + std::to_string(s.files.size()) + " files spread over the split";
    return s;
  }
};

}  // namespace headrecon_engine::commands
