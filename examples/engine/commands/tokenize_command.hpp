#pragma once
// `headrecon-engine tokenize`: token ids of a text, one line.

#include <iostream>
#include <memory>

#include "engine_options.hpp"

namespace headrecon_engine::commands {

struct TokenizeOptions {
  ModelOptions model;
  std::string text, string;
  bool special = false;
  CLI::Option *text_opt = nullptr, *string_opt = nullptr;
};

inline int run_tokenize(const TokenizeOptions& o) {
  const GgufFile f(o.model.path());
  const Tokenizer tok(f);
  if (bool(o.text_opt->count()) == bool(o.string_opt->count())) fail("give exactly one of --text, --string");
  const std::string text = o.text_opt->count() ? read_text_file(o.text) : o.string;
  const auto ids = tok.encode(text, o.special);
  for (std::size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
  std::cout << "\n";
  return 0;
}

inline void add_tokenize_command(headrecon::cli::Tool& tool) {
  auto o = std::make_shared<TokenizeOptions>();
  CLI::App* c = tool.add("tokenize", "print token ids, one line", [o] { return run_tokenize(*o); });
  o->model.add_model(c);
  o->text_opt = c->add_option("--text", o->text, "text file");
  o->string_opt = c->add_option("--string", o->string, "text given directly");
  c->add_flag("--special", o->special, "parse special tokens (<|im_start|> ...) in the text");
}

}  // namespace headrecon_engine::commands
