#pragma once
// Perplexity measured by decoding token by token through a reference-only KV
// cache (KvCache over headrecon::KvStore), and the `eval` matrix:
// full cache vs plans applied to keys only, values only or both, at several
// sink-token counts, with KV bytes and decode speed.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <map>
#include <ostream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "capture.hpp"
#include "headrecon/plan.hpp"
#include "llama.hpp"
#include "kv_cache.hpp"

namespace headrecon_engine {

struct DecodePplStats {
  double nll = 0;
  std::size_t predicted = 0, tokens = 0, sequences = 0;
  double seconds = 0;       // all decode steps
  double attn_seconds = 0;  // inside attention (all layers)
  std::size_t allocated_bytes = 0, layout_bytes = 0, full_bytes = 0;  // one sequence's cache (seq_len tokens)
  std::size_t positions = 0;  // capacity of that cache
  double ppl() const { return std::exp(nll / double(predicted)); }
  double tokens_per_s() const { return double(tokens) / seconds; }
  double bytes_per_token() const { return positions ? double(allocated_bytes) / double(positions) : 0.0; }
};

/// Perplexity of `tokens` in sequences of seq_len, every token decoded one at
/// a time (forward of 1 token, last logits) through a KvCache built from
/// `plan` (null: full cache, same kernel). `chunk` > 1 feeds that many tokens
/// per forward (same attention per token, batched projections; faster, same
/// result up to rounding) - 1 is true decoding.
inline DecodePplStats decode_perplexity(const LlamaModel& model, const std::vector<std::int32_t>& tokens,
                                        std::size_t seq_len, const headrecon::Plan* plan,
                                        headrecon::CacheType dtype = headrecon::CacheType(), std::size_t chunk = 1) {
  const LlamaConfig& c = model.config();
  if (seq_len < 2) fail("decode perplexity: seq_len must be at least 2");
  if (chunk == 0) chunk = 1;
  LlamaEngine eng(model);
  KvCache cache(model.attention_shape(), plan, std::min(seq_len, tokens.size()), dtype);
  DecodePplStats st;
  st.allocated_bytes = cache.allocated_bytes();
  st.layout_bytes = cache.layout_bytes();
  st.full_bytes = cache.full_bytes();
  st.positions = cache.capacity();
  std::vector<float> logits;
  const LogitsMode mode = chunk == 1 ? LogitsMode::last : LogitsMode::all;
  const auto start = std::chrono::steady_clock::now();
  for (std::size_t t0 = 0; t0 < tokens.size(); t0 += seq_len) {
    const std::size_t n = std::min(seq_len, tokens.size() - t0);
    cache.clear();
    for (std::size_t i = 0; i < n; i += chunk) {
      const std::size_t m = std::min(chunk, n - i);
      eng.forward(tokens.data() + t0 + i, m, cache, mode, &logits);
      for (std::size_t j = 0; j < m; ++j) {
        if (i + j + 1 >= n) break;
        const float* row = logits.data() + (mode == LogitsMode::last ? 0 : j * c.n_vocab);
        st.nll -= log_prob(row, c.n_vocab, tokens[t0 + i + j + 1]);
        ++st.predicted;
      }
    }
    ++st.sequences;
  }
  st.tokens = tokens.size();
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  st.attn_seconds = cache.attention_seconds();
  if (st.predicted == 0) fail("decode perplexity: no token to score");
  return st;
}

/// Writes the plan's predictions over its rebuilt heads in a full cache, for
/// positions >= plan.sink_tokens: K/V of target (layer, h) become
/// Wᵀ[x_ref1; ...] + b computed from the (true) cached reference heads, read
/// from `cache` for earlier layers. The paper's simulation of reconstruction
/// (the memory is not saved); attention then runs over the full cache.
inline LlamaEngine::KvTransform simulate_plan_transform(const headrecon::Plan& plan, const LlamaConfig& c,
                                                        KvCache& cache) {
  // Latent streams of every (kind, layer) by position, [pos][stream][d], computed from
  // the exact heads when the layer is appended (later layers may read them).
  auto latent = std::make_shared<std::vector<std::vector<float>>>(2 * c.n_layer);
  return [&plan, &c, &cache, latent](std::size_t l, std::size_t pos0, std::size_t n, float* k, float* v) {
    const std::size_t d = c.head_dim, KD = c.kv_dim();
    std::vector<float> y(d), earlier(d);
    for (const auto& kp : plan.kinds) {
      if (kp.kind == headrecon::Kind::q) continue;
      const bool is_k = kp.kind == headrecon::Kind::k;
      float* cur = is_k ? k : v;
      auto lat = [&](std::size_t layer) -> std::vector<float>& { return (*latent)[(is_k ? 0 : c.n_layer) + layer]; };
      // This layer's latent streams from the exact heads, before any is overwritten
      // (projected in double and rounded once, as the store does).
      const std::size_t nl = kp.n_latent(std::int32_t(l));
      if (nl > 0) {
        auto& z = lat(l);
        if (z.size() < (pos0 + n) * nl * d) z.resize((pos0 + n) * nl * d);
        for (std::size_t i = 0; i < n; ++i)
          for (std::size_t j = 0; j < nl; ++j) {
            const float* P = kp.latent[l][j].projection.data();
            for (std::size_t o = 0; o < d; ++o) {
              double acc = 0;
              for (std::size_t x = 0; x < KD; ++x) acc += double(cur[i * KD + x]) * double(P[x * d + o]);
              z[((pos0 + i) * nl + j) * d + o] = float(acc);
            }
          }
      }
      for (const auto& t : kp.layers.at(l))
        for (std::size_t i = 0; i < n; ++i) {
          const std::size_t p = pos0 + i;
          if (p < std::size_t(plan.sink_tokens)) continue;
          for (std::size_t o = 0; o < d; ++o) y[o] = t.bias[o];
          for (std::size_t r = 0; r < t.refs.size(); ++r) {
            const auto ref = t.refs[r];
            const float* x = cur + i * KD + std::size_t(ref.head) * d;
            if (kp.is_latent(ref)) {
              const std::size_t src = std::size_t(ref.layer), m = kp.n_latent(ref.layer);
              x = lat(src).data() + (p * m + std::size_t(ref.head - kp.n_heads)) * d;
            } else if (std::size_t(ref.layer) != l) {
              cache.read(kp.kind, std::size_t(ref.layer), p, std::size_t(ref.head), earlier.data());
              x = earlier.data();
            }
            const float* w = t.weight.data() + r * d * d;
            for (std::size_t j = 0; j < d; ++j)
              for (std::size_t o = 0; o < d; ++o) y[o] += w[j * d + o] * x[j];
          }
          float* dst = cur + i * KD + std::size_t(t.target.head) * d;
          for (std::size_t o = 0; o < d; ++o) dst[o] = y[o];
        }
    }
  };
}

/// Perplexity with reconstruction simulated in a full cache (batched
/// sequences; see simulate_plan_transform). A cross-check of the measured
/// decode_perplexity: both compute the same function of the same weights.
inline PerplexityStats simulated_perplexity(const LlamaModel& model, const std::vector<std::int32_t>& tokens,
                                            std::size_t seq_len, const headrecon::Plan& plan) {
  return perplexity(model, tokens, seq_len, [&](LlamaEngine& eng, KvCache& cache) {
    eng.set_kv_transform(simulate_plan_transform(plan, model.config(), cache));
  });
}

/// Which kinds of a plan are applied.
enum class Apply { k, v, kv };
inline const char* apply_name(Apply a) { return a == Apply::k ? "K" : a == Apply::v ? "V" : "K+V"; }
inline Apply parse_apply(const std::string& s) {
  if (s == "k" || s == "K") return Apply::k;
  if (s == "v" || s == "V") return Apply::v;
  if (s == "kv" || s == "KV" || s == "k+v" || s == "K+V") return Apply::kv;
  fail("unknown variant '", s, "' (expected k, v or kv)");
}

/// `plan` restricted to K and/or V (a kind missing from a plan is fully
/// cached), with `sink` sink tokens.
inline headrecon::Plan plan_variant(const headrecon::Plan& plan, Apply a, int sink) {
  headrecon::Plan p = plan;
  p.kinds.clear();
  for (const auto& kp : plan.kinds) {
    if (kp.kind == headrecon::Kind::k && a != Apply::v) p.kinds.push_back(kp);
    if (kp.kind == headrecon::Kind::v && a != Apply::k) p.kinds.push_back(kp);
  }
  p.sink_tokens = sink;
  return p;
}

/// A canonical description of a plan: its sink count and, per rebuilt head,
/// the sorted reference set and the map's recorded held-out R². Two plans
/// with equal keys rebuild the same heads from the same references with maps
/// fitted alike (the same predictions, whatever the order of the references),
/// so their results are equal.
inline std::string plan_key(const headrecon::Plan& p) {
  std::string s = std::to_string(p.sink_tokens);
  for (const auto& kp : p.kinds) {
    s += "|" + std::string(headrecon::kind_name(kp.kind));
    for (std::size_t l = 0; l < kp.latent.size(); ++l)
      for (const auto& ls : kp.latent[l]) {
        double sum = 0;  // a latent stream: its layer and a checksum of its projection
        for (std::size_t i = 0; i < ls.projection.size(); ++i) sum += double(ls.projection[i]) * double(i % 7 + 1);
        char buf[48];
        std::snprintf(buf, sizeof buf, ";z%zu:%.9g", l, sum);
        s += buf;
      }
    for (const auto& layer : kp.layers)
      for (const auto& t : layer) {
        auto refs = t.refs;
        std::sort(refs.begin(), refs.end());
        s += ";" + std::to_string(t.target.layer) + "." + std::to_string(t.target.head) + "<";
        for (auto r : refs) s += std::to_string(r.layer) + "." + std::to_string(r.head) + ",";
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.6g", double(t.r2_heldout));
        s += buf;
      }
  }
  return s;
}

struct EvalRow {
  std::string plan = "full";  // plan name, "full" for the full cache
  std::string cache = "f32";  // what the KV cache stores (CacheType::name)
  std::string apply = "-";    // K, V, K+V or -
  int sink = 0;
  std::size_t k_rebuilt = 0, v_rebuilt = 0, kv_heads = 0;  // rebuilt heads over all layers; K (or V) heads of the model
  std::size_t max_refs = 0;
  double mean_r2_k = NAN, mean_r2_v = NAN;  // held-out R² of the rebuilt heads (from the plan)
  DecodePplStats st;
  double sim_ppl = NAN;  // simulated reconstruction in a full cache (when asked)
  std::string same_as;  // label of the earlier row it equals
  std::string key;      // plan_key of the applied plan  // an earlier row with the same plan content (result copied, not re-run)
};

inline double mean_r2(const headrecon::KindPlan* kp) {
  if (!kp || kp->n_targets() == 0) return NAN;
  double s = 0;
  for (const auto& l : kp->layers)
    for (const auto& t : l) s += t.r2_heldout;
  return s / double(kp->n_targets());
}

inline EvalRow describe_row(const std::string& name, const headrecon::Plan* p, Apply a, int sink,
                            std::size_t kv_heads_total, headrecon::CacheType cache = headrecon::CacheType()) {
  EvalRow r;
  r.plan = name;
  r.cache = cache.name();
  r.sink = sink;
  r.kv_heads = kv_heads_total;
  if (!p) return r;
  r.apply = apply_name(a);
  if (const auto* k = p->find(headrecon::Kind::k)) r.k_rebuilt = k->n_targets(), r.mean_r2_k = mean_r2(k);
  if (const auto* v = p->find(headrecon::Kind::v)) r.v_rebuilt = v->n_targets(), r.mean_r2_v = mean_r2(v);
  for (const auto& kp : p->kinds)
    for (const auto& l : kp.layers)
      for (const auto& t : l) r.max_refs = std::max(r.max_refs, t.refs.size());
  return r;
}

inline std::string fmtd(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

/// The table, as printed and as Markdown (md = true).
inline void print_eval_table(const std::vector<EvalRow>& rows, std::ostream& os, bool md) {
  const EvalRow* base = nullptr;  // the full cache: in f32 when there is one
  for (const auto& r : rows)
    if (r.plan == "full" && (!base || r.cache == "f32")) base = &r;
  bool sim = false;
  for (const auto& r : rows) sim = sim || !std::isnan(r.sim_ppl);
  const char* hdr[] = {"plan", "cache", "applied", "sink", "K rebuilt", "V rebuilt", "max refs", "R2 K", "R2 V",
                       "ppl", "vs full", "KV bytes", "bytes/token", "saved", "decode tok/s", "attn us/tok",
                       "simulated ppl"};
  std::vector<std::vector<std::string>> cells;
  for (const auto& r : rows) {
    const double ppl = r.st.ppl();
    std::vector<std::string> c;
    c.push_back(r.plan);
    c.push_back(r.cache);
    c.push_back(r.apply);
    c.push_back(std::to_string(r.sink));
    c.push_back(std::to_string(r.k_rebuilt) + "/" + std::to_string(r.kv_heads));
    c.push_back(std::to_string(r.v_rebuilt) + "/" + std::to_string(r.kv_heads));
    c.push_back(r.max_refs ? std::to_string(r.max_refs) : "-");
    c.push_back(std::isnan(r.mean_r2_k) ? "-" : fmtd("%.3f", r.mean_r2_k));
    c.push_back(std::isnan(r.mean_r2_v) ? "-" : fmtd("%.3f", r.mean_r2_v));
    c.push_back(fmtd("%.4f", ppl));
    c.push_back(base ? fmtd("%+.2f%%", 100.0 * (ppl / base->st.ppl() - 1.0)) : "-");  // base: the "full" row
    c.push_back(std::to_string(r.st.allocated_bytes));
    c.push_back(fmtd("%.1f", r.st.bytes_per_token()));
    c.push_back(fmtd("%.1f%%", 100.0 * (1.0 - double(r.st.allocated_bytes) / double(r.st.full_bytes))));
    c.push_back(r.same_as.empty() ? fmtd("%.1f", r.st.tokens_per_s()) : "= " + r.same_as);
    c.push_back(r.same_as.empty() ? fmtd("%.0f", 1e6 * r.st.attn_seconds / double(r.st.tokens)) : "");
    c.push_back(std::isnan(r.sim_ppl) ? "-" : fmtd("%.4f", r.sim_ppl));
    cells.push_back(std::move(c));
  }
  const std::size_t nc = sizeof hdr / sizeof hdr[0] - (sim ? 0 : 1);
  std::vector<std::size_t> w(nc);
  for (std::size_t i = 0; i < nc; ++i) w[i] = std::string(hdr[i]).size();
  for (const auto& c : cells)
    for (std::size_t i = 0; i < nc; ++i) w[i] = std::max(w[i], c[i].size());
  auto line = [&](const std::vector<std::string>& c) {
    for (std::size_t i = 0; i < nc; ++i) {
      if (md) os << "| ";
      const std::string pad(w[i] - c[i].size(), ' ');
      os << (i < 4 ? c[i] + pad : pad + c[i]) << (md ? " " : "  ");
    }
    os << (md ? "|\n" : "\n");
  };
  line(std::vector<std::string>(hdr, hdr + nc));
  if (md) {
    for (std::size_t i = 0; i < nc; ++i) os << "|" << (i < 4 ? ":" : "") << std::string(w[i] + 1, '-') << (i < 4 ? "" : ":");
    os << "|\n";
  }
  for (const auto& c : cells) line(c);
}

inline void write_eval_csv(const std::vector<EvalRow>& rows, const std::string& path) {
  std::ofstream os(path);
  os << "plan,cache,applied,sink,k_rebuilt,v_rebuilt,kv_heads,max_refs,mean_r2_k,mean_r2_v,ppl,mean_nll,predicted,"
        "tokens,sequences,kv_bytes_allocated,kv_bytes_layout,kv_bytes_full,kv_bytes_per_token,decode_seconds,"
        "decode_tokens_per_s,attention_seconds,simulated_ppl,same_as\n";
  for (const auto& r : rows) {
    os << r.plan << "," << r.cache << "," << r.apply << "," << r.sink << "," << r.k_rebuilt << "," << r.v_rebuilt << "," << r.kv_heads
       << "," << r.max_refs << "," << (std::isnan(r.mean_r2_k) ? "" : fmtd("%.6f", r.mean_r2_k)) << ","
       << (std::isnan(r.mean_r2_v) ? "" : fmtd("%.6f", r.mean_r2_v)) << "," << fmtd("%.6f", r.st.ppl()) << ","
       << fmtd("%.8f", r.st.nll / double(r.st.predicted)) << "," << r.st.predicted << "," << r.st.tokens << ","
       << r.st.sequences << "," << r.st.allocated_bytes << "," << r.st.layout_bytes << "," << r.st.full_bytes << ","
       << fmtd("%.3f", r.st.bytes_per_token()) << "," << fmtd("%.4f", r.st.seconds) << "," << fmtd("%.3f", r.st.tokens_per_s()) << ","
       << fmtd("%.5f", r.st.attn_seconds) << "," << (std::isnan(r.sim_ppl) ? "" : fmtd("%.6f", r.sim_ppl)) << ","
       << r.same_as << "\n";
  }
  if (!os) fail(path, ": cannot write");
}

inline void write_eval_json(const std::vector<EvalRow>& rows, const std::map<std::string, std::string>& meta,
                            const std::string& path) {
  using json = nlohmann::ordered_json;
  const auto num = [](double v) { return std::isnan(v) ? json(nullptr) : json(v); };
  json out = {{"meta", meta}, {"rows", json::array()}};
  for (const auto& r : rows)
    out["rows"].push_back({{"plan", r.plan},
                           {"cache", r.cache},
                           {"applied", r.apply},
                           {"sink", r.sink},
                           {"k_rebuilt", r.k_rebuilt},
                           {"v_rebuilt", r.v_rebuilt},
                           {"kv_heads", r.kv_heads},
                           {"max_refs", r.max_refs},
                           {"mean_r2_k", num(r.mean_r2_k)},
                           {"mean_r2_v", num(r.mean_r2_v)},
                           {"ppl", r.st.ppl()},
                           {"predicted", r.st.predicted},
                           {"tokens", r.st.tokens},
                           {"kv_bytes_allocated", r.st.allocated_bytes},
                           {"kv_bytes_layout", r.st.layout_bytes},
                           {"kv_bytes_full", r.st.full_bytes},
                           {"kv_bytes_per_token", r.st.bytes_per_token()},
                           {"decode_tokens_per_s", r.st.tokens_per_s()},
                           {"attention_seconds", r.st.attn_seconds},
                           {"simulated_ppl", num(r.sim_ppl)},
                           {"same_as", r.same_as}});
  std::ofstream os(path);
  os << out.dump(2) << "\n";
  if (!os) fail(path, ": cannot write");
}

struct EvalPlan {
  std::string name;
  headrecon::Plan plan;
};

struct EvalOptions {
  std::size_t seq_len = 256;
  std::vector<Apply> variants{Apply::k, Apply::v, Apply::kv};
  std::vector<int> sinks{0, 4};
  std::vector<headrecon::CacheType> dtypes{headrecon::CacheType()};  // one full row and one row per plan each
  std::size_t chunk = 1;
  bool simulate = false;  // also compute the simulated perplexity (full cache, predicted K/V written in)
  bool include_full = true;  // run the full cache first (the baseline of "vs full")
  std::vector<EvalRow> reuse;  // earlier rows whose results identical plans may reuse (and the baseline)
  bool verbose = true;
};

/// For every cache type: the full cache, then every plan x variant x sink
/// (a variant that rebuilds nothing is skipped; a plan identical to an
/// earlier one in the same cache type reuses its result). Progress lines go
/// to `log`.
inline std::vector<EvalRow> run_eval(const LlamaModel& model, const std::vector<std::int32_t>& tokens,
                                     const std::vector<EvalPlan>& plans, const EvalOptions& opt, std::ostream& log) {
  const LlamaConfig& c = model.config();
  const std::size_t kv_total = c.n_layer * c.n_head_kv;
  std::vector<EvalRow> rows;
  std::map<std::string, std::string> done;  // cache + plan key -> row label
  std::vector<EvalRow> known = opt.reuse;   // rows whose results may be reused
  auto label_of = [](const EvalRow& x) {
    return x.plan + " " + x.cache + " " + x.apply + " s" + std::to_string(x.sink);
  };
  for (const auto& x : known)
    if (!x.key.empty() && x.same_as.empty()) done[x.cache + "#" + x.key] = label_of(x);
  double base_ppl = 0;  // the full cache in f32 when evaluated, else the first full cache
  for (const headrecon::CacheType ct : opt.dtypes) {
    EvalRow full = describe_row("full", nullptr, Apply::kv, 0, kv_total, ct);
    for (const auto& r : opt.reuse)
      if (r.plan == "full" && r.cache == full.cache) full = r;
    if (opt.include_full) {
      full.st = decode_perplexity(model, tokens, opt.seq_len, nullptr, ct, opt.chunk);
      if (opt.simulate && ct == headrecon::CacheType())
        full.sim_ppl = perplexity(model, tokens, opt.seq_len).ppl();  // the engine's own batched pass
      if (opt.verbose)
        log << "  full cache " << full.cache << ": ppl " << fmtd("%.4f", full.st.ppl()) << ", "
            << fmtd("%.1f", full.st.bytes_per_token()) << " bytes/token, " << fmtd("%.1f", full.st.tokens_per_s())
            << " tokens/s\n";
      rows.push_back(full);
    } else if (full.st.predicted == 0) {
      fail("eval: include_full is off and no full-cache row for ", full.cache, " was given to reuse");
    }
    if (base_ppl == 0 || full.cache == "f32") base_ppl = full.st.ppl();
    for (const auto& ep : plans)
      for (int sink : opt.sinks)
        for (Apply a : opt.variants) {
          const headrecon::Plan p = plan_variant(ep.plan, a, sink);
          EvalRow r = describe_row(ep.name, &p, a, sink, kv_total, ct);
          if (r.k_rebuilt + r.v_rebuilt == 0) continue;
          const std::string key = plan_key(p);
          const std::string label = label_of(r);
          r.key = key;
          auto it = done.find(r.cache + "#" + key);
          if (it != done.end()) {
            for (const auto& x : known)
              if (label_of(x) == it->second) r.st = x.st, r.sim_ppl = x.sim_ppl;
            r.same_as = it->second;
          } else {
            r.st = decode_perplexity(model, tokens, opt.seq_len, &p, ct, opt.chunk);
            if (opt.simulate && ct == headrecon::CacheType())
              r.sim_ppl = simulated_perplexity(model, tokens, opt.seq_len, p).ppl();
            done[r.cache + "#" + key] = label;
          }
          if (opt.verbose)
            log << "  " << label << ": ppl " << fmtd("%.4f", r.st.ppl()) << " ("
                << fmtd("%+.2f%%", 100.0 * (r.st.ppl() / base_ppl - 1)) << "), KV "
                << fmtd("%.1f", r.st.bytes_per_token()) << " bytes/token ("
                << fmtd("%.1f%%", 100.0 * (1 - double(r.st.allocated_bytes) / double(r.st.full_bytes)))
                << " saved), " << (r.same_as.empty() ? fmtd("%.1f", r.st.tokens_per_s()) + " tokens/s"
                                                     : "same plan as " + r.same_as)
                << "\n";
          rows.push_back(r);
          known.push_back(r);
        }
  }
  return rows;
}

}  // namespace headrecon_engine
