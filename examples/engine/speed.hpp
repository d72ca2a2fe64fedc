#pragma once
// Decode speed of the full cache against reference-only caches, measured A/B
// interleaved (the configurations take turns, repeated; medians reported) so
// that load from other processes hits all of them alike:
//  - the whole model decoding tokens after a prefilled context;
//  - attention alone (headrecon::attend of every layer for one new token) over
//    a long context filled with random K/V: the part the cache size drives.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "eval.hpp"
#include "llama.hpp"
#include "kv_cache.hpp"

namespace headrecon_engine {

struct SpeedConfig {
  std::string name;
  const headrecon::Plan* plan = nullptr;  // null: full cache
};

struct SpeedRow {
  std::string name;
  double decode_tok_s = 0;       // whole model, median over repetitions
  double decode_attn_us = 0;     // per token inside attention (all layers), median
  std::size_t decode_bytes = 0;  // cache bytes at the decode context
  double attn_step_us = 0;       // attention alone at the long context, per token (all layers), median
  std::size_t long_bytes = 0;    // cache bytes at the long context
  std::size_t long_read = 0;     // bytes one decode step reads at the long context (all layers)
};

struct SpeedOptions {
  std::size_t context = 256, decode = 32, reps = 3;      // whole model
  std::size_t long_context = 4096, attn_reps = 15;        // attention alone
  headrecon::CacheType dtype = headrecon::CacheType();
};

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

inline std::vector<SpeedRow> measure_speed(const LlamaModel& model, const std::vector<std::int32_t>& prompt,
                                           const std::vector<SpeedConfig>& configs, const SpeedOptions& o) {
  using clock = std::chrono::steady_clock;
  const LlamaConfig& c = model.config();
  const std::size_t n = configs.size();
  std::vector<SpeedRow> rows(n);
  std::vector<std::vector<double>> tok_s(n), attn_us(n), step_us(n);
  if (prompt.size() < o.context + o.decode) fail("speed: need ", o.context + o.decode, " prompt tokens");
  LlamaEngine eng(model);
  std::vector<std::unique_ptr<KvCache>> caches;
  for (const auto& cf : configs)
    caches.push_back(std::make_unique<KvCache>(model.attention_shape(), cf.plan, o.context + o.decode, o.dtype));
  std::vector<float> logits;
  for (std::size_t r = 0; r < o.reps; ++r)
    for (std::size_t i = 0; i < n; ++i) {
      KvCache& cache = *caches[i];
      cache.clear();
      eng.forward(prompt.data(), o.context, cache, LogitsMode::none, nullptr);
      cache.reset_attention_seconds();
      const auto t0 = clock::now();
      for (std::size_t t = 0; t < o.decode; ++t)
        eng.forward(&prompt[o.context + t], 1, cache, LogitsMode::last, &logits);
      const double s = std::chrono::duration<double>(clock::now() - t0).count();
      tok_s[i].push_back(double(o.decode) / s);
      attn_us[i].push_back(1e6 * cache.attention_seconds() / double(o.decode));
      rows[i].decode_bytes = cache.allocated_bytes();
    }
  caches.clear();
  // Attention alone over a long context of random K/V.
  const std::size_t L = c.n_layer, kvd = c.kv_dim(), T = o.long_context;
  std::mt19937 rng(7);
  std::normal_distribution<float> g(0.f, 1.f);
  std::vector<float> k(T * kvd), v(T * kvd), q(c.q_dim()), out(c.q_dim());
  for (auto& x : k) x = g(rng);
  for (auto& x : v) x = g(rng);
  for (auto& x : q) x = 0.3f * g(rng);
  for (const auto& cf : configs) {
    caches.push_back(std::make_unique<KvCache>(model.attention_shape(), cf.plan, T, o.dtype));
    for (std::size_t l = 0; l < L; ++l) caches.back()->append(l, 0, T, k.data(), v.data());
  }
  for (std::size_t r = 0; r < o.attn_reps; ++r)
    for (std::size_t i = 0; i < n; ++i) {
      const auto t0 = clock::now();
      for (std::size_t l = 0; l < L; ++l) caches[i]->attend(l, T - 1, q.data(), out.data());
      step_us[i].push_back(1e6 * std::chrono::duration<double>(clock::now() - t0).count());
      rows[i].long_bytes = caches[i]->allocated_bytes();
      rows[i].long_read = caches[i]->read_bytes(T);
    }
  for (std::size_t i = 0; i < n; ++i) {
    rows[i].name = configs[i].name;
    rows[i].decode_tok_s = median(tok_s[i]);
    rows[i].decode_attn_us = median(attn_us[i]);
    rows[i].attn_step_us = median(step_us[i]);
  }
  return rows;
}

/// Whole-model decode speed at several context lengths: for every context C,
/// one cache per (configuration, cache type) is prefilled with C tokens of
/// `prompt`; then, `reps` times in turn (A/B interleaved), each decodes
/// `decode` tokens after C and is cut back to C. Median tokens/s per row.
struct DecodeRow {
  std::string config;
  headrecon::CacheType dtype;
  std::size_t context = 0;
  double tok_s = 0;        // median whole-model decode tokens/s
  double attn_us = 0;      // median time inside attention per token (all layers)
  std::size_t read = 0;    // KV bytes one decode step reads at the context (all layers)
  std::size_t stored = 0;  // KV bytes the cache holds at the context
};

inline std::vector<DecodeRow> measure_decode(const LlamaModel& model, const std::vector<std::int32_t>& prompt,
                                             const std::vector<SpeedConfig>& configs,
                                             const std::vector<headrecon::CacheType>& dtypes,
                                             const std::vector<std::size_t>& contexts, std::size_t decode,
                                             std::size_t reps, std::ostream& progress) {
  using clock = std::chrono::steady_clock;
  std::vector<DecodeRow> out;
  LlamaEngine eng(model);
  std::vector<float> logits;
  for (std::size_t C : contexts) {
    if (prompt.size() < C + decode) fail("decode speed: need ", C + decode, " prompt tokens, have ", prompt.size());
    std::vector<std::unique_ptr<KvCache>> caches;
    std::vector<DecodeRow> rows;
    for (const auto& cf : configs)
      for (const auto& dt : dtypes) {
        caches.push_back(std::make_unique<KvCache>(model.attention_shape(), cf.plan, C + decode, dt));
        eng.forward(prompt.data(), C, *caches.back(), LogitsMode::none, nullptr);
        DecodeRow r;
        r.config = cf.name;
        r.dtype = dt;
        r.context = C;
        r.read = caches.back()->read_bytes(C);
        r.stored = caches.back()->stored_bytes(C);
        rows.push_back(r);
        progress << "  prefilled " << C << " tokens: " << cf.name << " " << dt.name() << std::endl;
      }
    std::vector<std::vector<double>> tok_s(rows.size()), attn(rows.size());
    for (std::size_t rep = 0; rep < reps; ++rep)
      for (std::size_t i = 0; i < rows.size(); ++i) {
        KvCache& cache = *caches[i];
        cache.reset_attention_seconds();
        const auto t0 = clock::now();
        for (std::size_t t = 0; t < decode; ++t) eng.forward(&prompt[C + t], 1, cache, LogitsMode::last, &logits);
        const double s = std::chrono::duration<double>(clock::now() - t0).count();
        tok_s[i].push_back(double(decode) / s);
        attn[i].push_back(1e6 * cache.attention_seconds() / double(decode));
        cache.truncate(C);
      }
    for (std::size_t i = 0; i < rows.size(); ++i) {
      rows[i].tok_s = median(tok_s[i]);
      rows[i].attn_us = median(attn[i]);
      out.push_back(rows[i]);
    }
  }
  return out;
}

/// The decode table: one row per (context, configuration, cache type); "vs
/// full" against the first configuration's row of the same context and type.
inline void print_decode_table(const std::vector<DecodeRow>& rows, std::ostream& os) {
  os << "context  config            cache   decode tok/s  vs full  attn us/tok  attn share  KV read/step  KV stored\n";
  for (const auto& r : rows) {
    const DecodeRow* base = &r;
    for (const auto& b : rows)
      if (b.context == r.context && b.dtype == r.dtype) { base = &b; break; }
    const double share = r.attn_us * 1e-6 * r.tok_s;
    char line[256];
    std::snprintf(line, sizeof line, "%7zu  %-16s  %-6s  %12.1f  %6.2fx  %11.0f  %10.2f  %12zu  %9zu\n", r.context,
                  r.config.c_str(), r.dtype.name().c_str(), r.tok_s, r.tok_s / base->tok_s, r.attn_us, share, r.read,
                  r.stored);
    os << line;
  }
}

inline void print_speed_table(const std::vector<SpeedRow>& rows, const SpeedOptions& o, std::ostream& os, bool md) {
  if (rows.empty()) return;
  const SpeedRow& base = rows[0];
  const std::string ctx = std::to_string(o.context), lc = std::to_string(o.long_context);
  const std::string cap = std::to_string(o.context + o.decode);
  std::vector<std::string> hdr{"cache", "decode tok/s @" + ctx, "vs full", "attn us/tok @" + ctx, "KV bytes @" + cap,
                               "attention us/tok @" + lc, "vs full", "KV bytes @" + lc, "bytes read/tok @" + lc,
                               "read GB/s"};
  std::vector<std::vector<std::string>> cells;
  for (const auto& r : rows)
    cells.push_back({r.name, fmtd("%.1f", r.decode_tok_s), fmtd("%.2fx", r.decode_tok_s / base.decode_tok_s),
                     fmtd("%.0f", r.decode_attn_us), std::to_string(r.decode_bytes), fmtd("%.0f", r.attn_step_us),
                     fmtd("%.2fx", base.attn_step_us / r.attn_step_us), std::to_string(r.long_bytes),
                     std::to_string(r.long_read), fmtd("%.1f", double(r.long_read) / (r.attn_step_us * 1e3))});
  std::vector<std::size_t> w(hdr.size());
  for (std::size_t i = 0; i < hdr.size(); ++i) w[i] = hdr[i].size();
  for (const auto& c : cells)
    for (std::size_t i = 0; i < hdr.size(); ++i) w[i] = std::max(w[i], c[i].size());
  auto line = [&](const std::vector<std::string>& c) {
    for (std::size_t i = 0; i < c.size(); ++i) {
      const std::string pad(w[i] - c[i].size(), ' ');
      os << (md ? "| " : "") << (i == 0 ? c[i] + pad : pad + c[i]) << (md ? " " : "  ");
    }
    os << (md ? "|\n" : "\n");
  };
  line(hdr);
  if (md) {
    for (std::size_t i = 0; i < hdr.size(); ++i) os << "|" << (i == 0 ? ":" : "") << std::string(w[i] + 1, '-') << (i ? ":" : "");
    os << "|\n";
  }
  for (const auto& c : cells) line(c);
}

}  // namespace headrecon_engine
