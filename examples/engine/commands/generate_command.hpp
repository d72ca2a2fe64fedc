#pragma once
// `headrecon-engine generate`: greedy decoding; prefill and decode tokens/s.

#include <algorithm>
#include <chrono>
#include <iostream>
#include <memory>

#include "engine_options.hpp"

namespace headrecon_engine::commands {

struct GenerateOptions {
  ModelOptions model;
  std::string prompt, ids;
  std::size_t n = 32;
  bool chat = false;
  CLI::Option *prompt_opt = nullptr, *ids_opt = nullptr;
};

inline int run_generate(const GenerateOptions& o) {
  o.model.apply_threads();
  const GgufFile f(o.model.path());
  const Tokenizer tok(f);
  const LlamaModel m = o.model.load(f);
  std::vector<std::int32_t> ids;
  if (bool(o.ids_opt->count()) == bool(o.prompt_opt->count())) fail("give exactly one of --prompt, --ids");
  if (o.ids_opt->count()) {
    ids = parse_ids(o.ids);
  } else {
    std::string p = o.prompt;
    if (o.chat) p = "<|im_start|>user\n" + p + "<|im_end|>\n<|im_start|>assistant\n";
    ids = tok.encode(p, true);
  }
  if (tok.add_bos()) ids.insert(ids.begin(), tok.bos_id());
  const std::size_t n_new = o.n;
  LlamaEngine eng(m);
  KvCache cache(m.attention_shape(), ids.size() + n_new);
  std::vector<float> logits;
  auto argmax = [&]() { return std::int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin()); };
  const auto t0 = std::chrono::steady_clock::now();
  eng.forward(ids.data(), ids.size(), cache, LogitsMode::last, &logits);
  const auto t1 = std::chrono::steady_clock::now();
  std::vector<std::int32_t> out;
  std::int32_t next = argmax();
  for (std::size_t i = 0; i < n_new; ++i) {
    out.push_back(next);
    if (next == tok.eos_id() || i + 1 == n_new) break;
    eng.forward(&next, 1, cache, LogitsMode::last, &logits);
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

inline void add_generate_command(headrecon::cli::Tool& tool) {
  auto o = std::make_shared<GenerateOptions>();
  CLI::App* c = tool.add("generate", "greedy decoding; prefill and decode tokens/s", [o] { return run_generate(*o); });
  o->model.add_runtime(c);
  o->prompt_opt = c->add_option("--prompt", o->prompt, "prompt text");
  o->ids_opt = c->add_option("--ids", o->ids, "prompt token ids: \"I I ...\"");
  c->add_option("--n", o->n, "tokens generated")->check(integer_in(1, 1 << 20));
  c->add_flag("--chat", o->chat, "wrap the prompt in the chat template");
}

}  // namespace headrecon_engine::commands
