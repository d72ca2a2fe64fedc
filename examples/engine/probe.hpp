#pragma once
// The direct probe: what each (kind, layer) part of a plan costs the model,
// measured. For every kind and layer with targets, only that layer's targets
// are rebuilt (the predicted K or V written into a full cache, as
// simulate_plan_transform does) and the output distribution is compared with
// the full model's over the same tokens: mean KL(full || rebuilt) per token
// (low-noise: it needs no sampled token to be hurt) and the change of the
// mean negative log-likelihood. headrecon fit --probe FILE turns these into
// per-layer weights of the loss-aware strategy.

#include <cmath>
#include <cstdint>
#include <fstream>
#include <ostream>
#include <string>
#include <vector>

#include "capture.hpp"
#include "eval.hpp"
#include "headrecon/plan.hpp"
#include "llama.hpp"

namespace headrecon_engine {

struct ProbeRow {
  headrecon::Kind kind = headrecon::Kind::k;
  int layer = 0;
  std::vector<headrecon::HeadId> targets;
  std::vector<std::vector<headrecon::HeadId>> refs;  // each target's references
  double kl = 0.0;    // mean KL(full || rebuilt) per scored token (nats)
  double dnll = 0.0;  // mean NLL change per scored token (nats)
};

/// Log-softmax of every row of `logits` (rows × vocab) in place.
inline void log_softmax_rows(std::vector<float>& logits, std::size_t vocab) {
  for (std::size_t r = 0; r * vocab < logits.size(); ++r) {
    float* x = logits.data() + r * vocab;
    float mx = x[0];
    for (std::size_t i = 1; i < vocab; ++i) mx = std::max(mx, x[i]);
    double s = 0.0;
    for (std::size_t i = 0; i < vocab; ++i) s += std::exp(double(x[i] - mx));
    const float lse = float(double(mx) + std::log(s));
    for (std::size_t i = 0; i < vocab; ++i) x[i] -= lse;
  }
}

/// Log-probabilities of every position of every sequence of `tokens` (cut in
/// sequences of seq_len), with `plan` simulated (null: full model).
inline std::vector<float> sequence_log_probs(const LlamaModel& model, const std::vector<std::int32_t>& tokens,
                                             std::size_t seq_len, const headrecon::Plan* plan) {
  const LlamaConfig& c = model.config();
  LlamaEngine eng(model);
  KvCache cache(model.attention_shape(), std::min(seq_len, tokens.size()));
  if (plan) eng.set_kv_transform(simulate_plan_transform(*plan, c, cache));
  std::vector<float> out, logits;
  out.reserve(tokens.size() * c.n_vocab);
  for (std::size_t t0 = 0; t0 < tokens.size(); t0 += seq_len) {
    const std::size_t n = std::min(seq_len, tokens.size() - t0);
    cache.clear();
    eng.forward(tokens.data() + t0, n, cache, LogitsMode::all, &logits);
    log_softmax_rows(logits, c.n_vocab);
    out.insert(out.end(), logits.begin(), logits.end());
  }
  return out;
}

/// Probes every (kind, layer) of `plan` that has targets; `progress` gets a line per probe.
inline std::vector<ProbeRow> probe_plan(const LlamaModel& model, const std::vector<std::int32_t>& tokens,
                                        std::size_t seq_len, const headrecon::Plan& plan, std::ostream& progress) {
  const std::size_t V = model.config().n_vocab;
  if (seq_len < 2) fail("probe: seq_len must be at least 2");
  const std::vector<float> full = sequence_log_probs(model, tokens, seq_len, nullptr);
  std::vector<ProbeRow> rows;
  for (const auto& kp : plan.kinds) {
    if (kp.kind == headrecon::Kind::q) continue;
    for (std::size_t l = 0; l < kp.layers.size(); ++l) {
      if (kp.layers[l].empty()) continue;
      headrecon::Plan sub = plan;
      sub.kinds.clear();
      headrecon::KindPlan one = kp;
      for (std::size_t m = 0; m < one.layers.size(); ++m)
        if (m != l) one.layers[m].clear();
      sub.kinds.push_back(one);
      const std::vector<float> lp = sequence_log_probs(model, tokens, seq_len, &sub);
      ProbeRow r;
      r.kind = kp.kind;
      r.layer = int(l);
      for (const auto& t : kp.layers[l]) r.targets.push_back(t.target), r.refs.push_back(t.refs);
      std::size_t scored = 0;
      for (std::size_t t0 = 0; t0 < tokens.size(); t0 += seq_len) {
        const std::size_t n = std::min(seq_len, tokens.size() - t0);
        for (std::size_t i = 0; i + 1 < n; ++i) {
          const float* p = full.data() + (t0 + i) * V;
          const float* q = lp.data() + (t0 + i) * V;
          double kl = 0.0;
          for (std::size_t v = 0; v < V; ++v) kl += std::exp(double(p[v])) * (double(p[v]) - double(q[v]));
          r.kl += kl;
          const std::size_t next = std::size_t(tokens[t0 + i + 1]);
          r.dnll += double(p[next]) - double(q[next]);
          ++scored;
        }
      }
      r.kl /= double(scored);
      r.dnll /= double(scored);
      progress << "  probe " << headrecon::kind_name(r.kind) << " layer " << l << " (" << r.targets.size()
               << " targets): KL " << fmtd("%.5f", r.kl) << ", dNLL " << fmtd("%+.5f", r.dnll) << " nats/token" << std::endl;
      rows.push_back(r);
    }
  }
  return rows;
}

/// CSV: kind,layer,targets,kl,dnll; targets as "L.H<L.H+L.H L.H<..." (each
/// target and its references, space-separated), as headrecon fit --probe reads it.
inline void write_probe_csv(const std::vector<ProbeRow>& rows, const std::string& path) {
  std::ofstream os(path);
  os << "kind,layer,targets,kl,dnll\n";
  for (const auto& r : rows) {
    os << headrecon::kind_name(r.kind) << "," << r.layer << ",";
    for (std::size_t i = 0; i < r.targets.size(); ++i) {
      os << (i ? " " : "") << r.targets[i].layer << "." << r.targets[i].head << "<";
      for (std::size_t j = 0; j < r.refs[i].size(); ++j)
        os << (j ? "+" : "") << r.refs[i][j].layer << "." << r.refs[i][j].head;
    }
    os << "," << fmtd("%.8g", r.kl) << "," << fmtd("%.8g", r.dnll) << "\n";
  }
  if (!os) fail(path, ": cannot write");
}

}  // namespace headrecon_engine
