#pragma once
// `headrecon-engine ppl`: perplexity and tokens/s of the model on a text.

#include <iostream>
#include <memory>

#include "engine_options.hpp"
#include "capture.hpp"
#include "output_file.hpp"

namespace headrecon_engine::commands {

struct PplOptions {
  ModelOptions model;
  TextOptions text;
  std::size_t tokens = 0, seq_len = 512;
  std::string ids_out;
};

inline int run_ppl(const PplOptions& o) {
  o.model.apply_threads();
  if (!o.ids_out.empty()) {
    std::vector<std::string> inputs = o.text.files();
    inputs.push_back(o.model.model);
    headrecon::cli::check_output_path("--ids-out", o.ids_out, inputs);
  }
  const GgufFile f(o.model.path());
  const Tokenizer tok(f);
  const LlamaModel m = o.model.load(f);
  std::string source;
  const TokenStream s = o.text.tokens(tok, o.tokens, source, "eval");
  if (!o.ids_out.empty())
    headrecon::cli::write_stream_atomically(o.ids_out, [&](std::ostream& os) {
      for (std::size_t i = 0; i < s.tokens.size(); ++i) os << (i ? " " : "") << s.tokens[i];
      os << "\n";
    });
  const PerplexityStats st = perplexity(m, s.tokens, o.seq_len);
  std::cout.precision(8);
  std::cout << "text: " << source << "\n"
            << "tokens: " << st.tokens << " in " << st.sequences << " sequences of <= " << o.seq_len << " ("
            << st.predicted << " predicted)\n"
            << "perplexity: " << st.ppl() << " (mean NLL " << st.nll / double(st.predicted) << " nats)\n"
            << "time: " << st.seconds << " s, " << double(st.tokens) / st.seconds << " tokens/s\n";
  return 0;
}

inline void add_ppl_command(headrecon::cli::Tool& tool) {
  auto o = std::make_shared<PplOptions>();
  CLI::App* c = tool.add("ppl", "perplexity and tokens/s", [o] { return run_ppl(*o); });
  o->model.add_runtime(c);
  o->text.add(c);
  c->add_option("--tokens", o->tokens, "tokens of the text used")->required()->check(integer_in(2, 1LL << 40));
  c->add_option("--seq-len", o->seq_len, "tokens per sequence")->check(integer_in(2, 1LL << 20));
  c->add_option("--ids-out", o->ids_out, "also write the token ids here (one line)");
}

}  // namespace headrecon_engine::commands
