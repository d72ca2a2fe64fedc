#pragma once
// Engine tasks shared by the command-line tool and the tests: capturing Q/K/V
// into a headrecon activations file, and perplexity over a token stream. Both
// cut the stream into sequences of seq_len tokens (the last may be shorter),
// each run from position 0 with an empty cache.

#include <chrono>
#include <functional>
#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "headrecon/activations_io.hpp"
#include "headrecon/projections_io.hpp"
#include "llama.hpp"

namespace headrecon_engine {

struct CaptureOptions {
  std::size_t seq_len = 512;
  bool post_rope = true;
  bool q = true, k = true, v = true;
  headrecon::DType dtype = headrecon::DType::f32;
  std::map<std::string, std::string> metadata;  // extra file metadata
};

struct CaptureStats {
  std::size_t tokens = 0, sequences = 0;
  double seconds = 0;          // total, forward and writing
  double forward_seconds = 0;  // forward passes alone (hook time excluded)
};

/// Runs `tokens` through the model in sequences of opt.seq_len and writes the
/// selected kinds of every layer to `out_path` with headrecon::ActivationWriter,
/// with per-sequence positions. Returns timing.
inline CaptureStats capture_activations(const LlamaModel& model, const std::vector<std::int32_t>& tokens,
                                        const std::string& out_path, const CaptureOptions& opt) {
  using clock = std::chrono::steady_clock;
  const LlamaConfig& c = model.config();
  if (tokens.empty()) fail("capture: no tokens");
  if (opt.seq_len == 0) fail("capture: seq_len must be positive");
  if (!opt.q && !opt.k && !opt.v) fail("capture: no kind selected");
  headrecon::KindHeads heads;
  heads.q = opt.q ? c.n_head : 0;
  heads.k = opt.k ? c.n_head_kv : 0;
  heads.v = opt.v ? c.n_head_kv : 0;
  std::map<std::string, std::string> md = opt.metadata;
  md["model.architecture"] = c.arch;
  md["model.n_head"] = std::to_string(c.n_head);
  md["model.n_head_kv"] = std::to_string(c.n_head_kv);
  md["model.rope_base"] = std::to_string(c.rope_base);
  md["model.n_rot"] = std::to_string(c.n_rot);
  md["seq_len"] = std::to_string(opt.seq_len);
  md["qk_component_order"] = c.rope_neox ? "gguf (rope halves (i, i+n_rot/2))"
                                         : "gguf (rope pairs (2i, 2i+1); HF order permuted)";
  headrecon::ActivationWriter w(out_path, c.n_layer, tokens.size(), c.head_dim, heads, opt.dtype,
                                opt.post_rope, true, md);
  LlamaEngine eng(model);
  KvCache cache(model.attention_shape(), std::min(opt.seq_len, tokens.size()));
  std::size_t token0 = 0;
  double hook_seconds = 0;
  eng.set_hook(
      [&](const QkvBatch& b) {
        const auto t0 = clock::now();
        const headrecon::Extents3 eq{b.n_tokens, b.n_head, b.head_dim}, ek{b.n_tokens, b.n_head_kv, b.head_dim};
        if (opt.q)
          w.write(b.layer, headrecon::Kind::q, token0 + b.pos0,
                  headrecon::make_view(b.q, b.n_tokens * b.n_head * b.head_dim, eq, headrecon::Layout::token_major, "q"));
        if (opt.k)
          w.write(b.layer, headrecon::Kind::k, token0 + b.pos0,
                  headrecon::make_view(b.k, b.n_tokens * b.n_head_kv * b.head_dim, ek, headrecon::Layout::token_major, "k"));
        if (opt.v)
          w.write(b.layer, headrecon::Kind::v, token0 + b.pos0,
                  headrecon::make_view(b.v, b.n_tokens * b.n_head_kv * b.head_dim, ek, headrecon::Layout::token_major, "v"));
        hook_seconds += std::chrono::duration<double>(clock::now() - t0).count();
      },
      opt.post_rope ? CaptureStage::post_rope : CaptureStage::pre_rope);

  CaptureStats st;
  const auto start = clock::now();
  std::vector<std::int32_t> pos;
  while (token0 < tokens.size()) {
    const std::size_t n = std::min(opt.seq_len, tokens.size() - token0);
    cache.clear();
    eng.forward(tokens.data() + token0, n, cache, LogitsMode::none, nullptr);
    pos.resize(n);
    for (std::size_t i = 0; i < n; ++i) pos[i] = std::int32_t(i);
    w.write_positions(token0, pos.data(), n);
    token0 += n;
    ++st.sequences;
  }
  w.finish();
  st.tokens = tokens.size();
  st.seconds = std::chrono::duration<double>(clock::now() - start).count();
  st.forward_seconds = st.seconds - hook_seconds;
  return st;
}

/// The model's attention output projections (W_o of every layer, [n_embd,
/// n_head·head_dim] as applied), for headrecon's value metric.
inline headrecon::OutputProjections output_projections(const LlamaModel& model) {
  const LlamaConfig& c = model.config();
  headrecon::OutputProjections p;
  p.n_kv_heads = std::int32_t(c.n_head_kv);
  for (std::size_t l = 0; l < c.n_layer; ++l) {
    headrecon::OutputProjection o;
    o.n_embd = c.n_embd;
    o.n_q_heads = c.n_head;
    o.head_dim = c.head_dim;
    o.weight = model.layer(l).wo.to_f32();  // row-major [n_embd][q_dim], dequantized
    p.layers.push_back(std::move(o));
  }
  return p;
}

struct PerplexityStats {
  double nll = 0;            // summed negative log-likelihood (nats)
  std::size_t predicted = 0;  // tokens scored: every token but the first of each sequence
  std::size_t tokens = 0, sequences = 0;
  double seconds = 0;
  double ppl() const { return std::exp(nll / double(predicted)); }
};

/// Perplexity of `tokens` in sequences of seq_len (non-overlapping windows):
/// token i of a sequence is scored by the logits of token i-1. `setup`, when
/// given, is called once with the engine and its cache before the first
/// sequence (e.g. to install a K/V transform).
inline PerplexityStats perplexity(const LlamaModel& model, const std::vector<std::int32_t>& tokens,
                                  std::size_t seq_len,
                                  const std::function<void(LlamaEngine&, KvCache&)>& setup = {}) {
  const LlamaConfig& c = model.config();
  if (seq_len < 2) fail("perplexity: seq_len must be at least 2");
  LlamaEngine eng(model);
  KvCache cache(model.attention_shape(), std::min(seq_len, tokens.size()));
  if (setup) setup(eng, cache);
  PerplexityStats st;
  std::vector<float> logits;
  const auto start = std::chrono::steady_clock::now();
  for (std::size_t t0 = 0; t0 < tokens.size(); t0 += seq_len) {
    const std::size_t n = std::min(seq_len, tokens.size() - t0);
    cache.clear();
    eng.forward(tokens.data() + t0, n, cache, LogitsMode::all, &logits);
    for (std::size_t i = 0; i + 1 < n; ++i) {
      st.nll -= log_prob(logits.data() + i * c.n_vocab, c.n_vocab, tokens[t0 + i + 1]);
      ++st.predicted;
    }
    ++st.sequences;
  }
  st.tokens = tokens.size();
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (st.predicted == 0) fail("perplexity: no token to score (need sequences of at least 2 tokens)");
  return st;
}

}  // namespace headrecon_engine
