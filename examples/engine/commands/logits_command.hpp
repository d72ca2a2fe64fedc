#pragma once
// `headrecon-engine logits`: top-K logits per position; --out writes all of them.

#include <algorithm>
#include <iostream>
#include <memory>

#include "engine_options.hpp"
#include "output_file.hpp"

namespace headrecon_engine::commands {

struct LogitsOptions {
  ModelOptions model;
  std::string ids, string, out;
  std::size_t top = 5;
  CLI::Option *ids_opt = nullptr, *string_opt = nullptr;
};

inline int run_logits(const LogitsOptions& o) {
  o.model.apply_threads();
  if (!o.out.empty()) headrecon::cli::check_output_path("--out", o.out, {o.model.model});
  const GgufFile f(o.model.path());
  const Tokenizer tok(f);
  const LlamaModel m = o.model.load(f);
  if (bool(o.ids_opt->count()) == bool(o.string_opt->count())) fail("give exactly one of --ids, --string");
  const auto ids = o.ids_opt->count() ? parse_ids(o.ids) : tok.encode(o.string, true);
  const std::size_t V = m.config().n_vocab, top = o.top;
  LlamaEngine eng(m);
  KvCache cache(m.attention_shape(), ids.size());
  std::vector<float> logits;
  eng.forward(ids.data(), ids.size(), cache, LogitsMode::all, &logits);
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
  if (!o.out.empty())
    headrecon::cli::write_stream_atomically(
        o.out,
        [&](std::ostream& os) {
          os.write(reinterpret_cast<const char*>(logits.data()), std::streamsize(logits.size() * sizeof(float)));
        },
        std::ios::binary);
  return 0;
}

inline void add_logits_command(headrecon::cli::Tool& tool) {
  auto o = std::make_shared<LogitsOptions>();
  CLI::App* c = tool.add("logits", "print top-K logits per position; --out writes all logits (f32, n x vocab)",
                         [o] { return run_logits(*o); });
  o->model.add_runtime(c);
  o->ids_opt = c->add_option("--ids", o->ids, "token ids: \"I I ...\"");
  o->string_opt = c->add_option("--string", o->string, "text, tokenized with BOS");
  c->add_option("--out", o->out, "write all logits here (f32, n x vocab)");
  c->add_option("--top", o->top, "logits printed per position")->check(integer_in(0, 1000));
}

}  // namespace headrecon_engine::commands
