#pragma once
// `headrecon-engine capture`: a headrecon activations file (and optionally the
// output projections) from the model on a text.

#include <cctype>
#include <iostream>
#include <memory>
#include <sstream>

#include "capture.hpp"
#include "capture_shard.hpp"
#include "engine_options.hpp"
#include "output_file.hpp"

namespace headrecon_engine::commands {

struct CaptureCommandOptions {
  ModelOptions model;
  TextOptions text;
  std::size_t tokens = 0, seq_len = 512;
  std::string out, kinds = "q,k,v", dtype = "f32", projections, shard;
  bool pre_rope = false, spread = false;
};

inline int run_capture(const CaptureCommandOptions& o) {
  o.model.apply_threads();
  CaptureOptions opt;
  opt.seq_len = o.seq_len;
  opt.post_rope = !o.pre_rope;
  std::string dt = o.dtype;
  for (char& ch : dt) ch = char(std::toupper(static_cast<unsigned char>(ch)));
  opt.dtype = headrecon::parse_dtype(dt);
  opt.q = opt.k = opt.v = false;
  std::istringstream ks(o.kinds);
  for (std::string k; std::getline(ks, k, ',');) {
    const headrecon::Kind kind = headrecon::parse_kind(k);
    (kind == headrecon::Kind::q ? opt.q : kind == headrecon::Kind::k ? opt.k : opt.v) = true;
  }
  // The outputs are checked before the model runs (capture takes minutes).
  std::vector<std::string> inputs = o.text.files();
  inputs.push_back(o.model.model);
  std::string out = o.out;
  Shard shard;
  if (!o.shard.empty()) {  // a disjoint run of whole sequences (capture_shard.hpp)
    shard = parse_shard(o.shard);
    out = shard_path(out, shard);
  }
  headrecon::cli::check_output_path("--out", out, inputs);
  if (!o.projections.empty()) {
    if (o.projections == out) fail("--projections and --out name the same file");
    inputs.push_back(out);
    headrecon::cli::check_output_path("--projections", o.projections, inputs);
  }
  const GgufFile f(o.model.path());
  const Tokenizer tok(f);
  const LlamaModel m = o.model.load(f);
  std::string source;
  TokenStream s = o.spread ? o.text.spread(tok, (o.tokens + opt.seq_len - 1) / opt.seq_len, opt.seq_len,
                                                 source, "calib")
                                 : o.text.tokens(tok, o.tokens, source, "calib");
  opt.metadata["model"] = m.path().substr(m.path().find_last_of('/') + 1);
  if (m.randomized()) opt.metadata["random_init"] = std::to_string(o.model.random_init);
  opt.metadata["text_source"] = source;
  opt.metadata["text_files_used"] = std::to_string(s.files.size());
  if (!s.files.empty()) {
    opt.metadata["text_first_file"] = s.files.front();
    opt.metadata["text_last_file"] = s.files.back();
  }
  if (!o.shard.empty()) {
    std::size_t token0 = 0;
    s.tokens = shard_tokens(s.tokens, opt.seq_len, shard, token0);
    opt.metadata["shard"] = std::to_string(shard.index) + "/" + std::to_string(shard.count);
    opt.metadata["shard_token0"] = std::to_string(token0);
    std::cout << "shard " << opt.metadata["shard"] << ": tokens " << token0 << ".." << token0 + s.tokens.size() - 1
              << "\n";
  }
  const CaptureStats st = capture_activations(m, s.tokens, out, opt);
  if (!o.projections.empty()) {
    headrecon::save_output_projections(output_projections(m), o.projections, {{"model", opt.metadata["model"]}});
    std::cout << "wrote " << o.projections << ": output projections of " << m.config().n_layer << " layers\n";
  }
  std::cout << "text: " << source << " (" << s.files.size() << " files used)\n"
            << "wrote " << out << ": " << st.tokens << " tokens in " << st.sequences << " sequences of <= "
            << opt.seq_len << ", " << m.config().n_layer << " layers, kinds " << o.kinds << ", "
            << (opt.post_rope ? "post-RoPE" : "pre-RoPE") << ", " << headrecon::dtype_name(opt.dtype) << "\n"
            << "time: " << st.seconds << " s (" << double(st.tokens) / st.seconds << " tokens/s; forward alone "
            << double(st.tokens) / st.forward_seconds << " tokens/s)\n";
  return 0;
}

inline void add_capture_command(headrecon::cli::Tool& tool) {
  auto o = std::make_shared<CaptureCommandOptions>();
  CLI::App* c = tool.add("capture", "write a headrecon activations file", [o] { return run_capture(*o); });
  o->model.add_runtime(c);
  o->text.add(c);
  c->add_option("--tokens", o->tokens, "tokens captured")->required()->check(integer_in(1, 1LL << 40));
  c->add_option("--out", o->out, "activations file to write")->required();
  c->add_option("--seq-len", o->seq_len, "tokens per sequence")->check(integer_in(1, 1LL << 20));
  c->add_option("--kinds", o->kinds, "kinds captured, comma-separated");
  c->add_option("--dtype", o->dtype, "f32|f16|bf16");
  c->add_flag("--pre-rope", o->pre_rope, "capture Q and K before RoPE (default: after)");
  c->add_flag("--spread", o->spread, "each sequence from the start of a different file of --text-dir");
  c->add_option("--projections", o->projections, "also write the output projections (headrecon fit --wo)");
  c->add_option("--shard", o->shard,
                "i/N: capture only sequences i*S/N..(i+1)*S/N-1 of the S sequences ({i} in --out: the index); mpi: "
                "the rank and size under mpirun");
}

}  // namespace headrecon_engine::commands
