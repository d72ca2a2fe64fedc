#pragma once
// `headrecon-engine detokenize`: the text of token ids.

#include <iostream>
#include <memory>

#include "engine_options.hpp"

namespace headrecon_engine::commands {

struct DetokenizeOptions {
  ModelOptions model;
  std::string ids;
};

inline int run_detokenize(const DetokenizeOptions& o) {
  const GgufFile f(o.model.path());
  const Tokenizer tok(f);
  std::cout << tok.decode(parse_ids(o.ids));
  return 0;
}

inline void add_detokenize_command(headrecon::cli::Tool& tool) {
  auto o = std::make_shared<DetokenizeOptions>();
  CLI::App* c = tool.add("detokenize", "print the text of token ids", [o] { return run_detokenize(*o); });
  o->model.add_model(c);
  c->add_option("--ids", o->ids, "token ids: \"I I ...\"")->required();
}

}  // namespace headrecon_engine::commands
