#pragma once
// `headrecon-engine demo`: the real-model pipeline end to end, with a report.
//   1. calibration text (Linux docs, even files) -> capture Q/K/V after RoPE
//   2. library statistics (same-layer and cross-layer) -> R² of every head with
//      1..5 references (greedy forward selection), and plans: greedy and
//      shared strategies, same- and cross-layer, 1 or 2 of 3 KV heads rebuilt
//   3. eval (Linux docs, odd files; KJV out of domain): perplexity decoded
//      token by token through the reference-only cache, KV bytes, tokens/s
//   4. the same R² analysis with random weights of matching scale
//   5. report: summary.md, r2.csv, r2_heatmap.svg, eval.csv/json/md, plans/
// Each step is a function (demo_capture, demo_r2_analysis_and_plans,
// demo_eval, demo_speed, demo_random_weights, demo_report_files,
// demo_write_summary); run_demo calls them in order and times them.

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "capture.hpp"
#include "corpus.hpp"
#include "eval.hpp"
#include "headrecon/accumulate.hpp"
#include "headrecon/calibrate.hpp"
#include "headrecon/latent.hpp"
#include "headrecon/plan_io.hpp"
#include "headrecon/select.hpp"
#include "llama.hpp"
#include "r2_analysis.hpp"
#include "report.hpp"
#include "speed.hpp"
#include "tokenizer.hpp"

namespace headrecon_engine {

struct PlanSpec {
  std::string name, strategy;
  bool cross = false;
  int keep = 2;  // cached KV heads per layer (of 3 for SmolLM2)
  int max_refs = 0;
  bool all_sinks = false;  // evaluated at every sink count (else at the fit's only)
};

/// "f32, q8_0r, q4_0r".
inline std::string cache_type_names(const std::vector<headrecon::CacheType>& types) {
  std::string out;
  for (const auto& t : types) out += (out.empty() ? "" : ", ") + t.name();
  return out;
}

struct DemoOptions {
  std::string dir = "build/demo";
  std::string model;  // GGUF path (fetched by fetch_script when absent)
  std::string fetch_script, prepare_text_script;
  std::string docs = "/usr/share/doc/linux-doc-6.1/html/_sources", suffix = ".rst.txt";
  std::string kjv;  // KJV text file ("" or missing: skipped)
  std::size_t calib_tokens = 16384, random_tokens = 16384, capture_seq_len = 512;
  std::size_t eval_seqs = 2, eval_len = 256, kjv_seqs = 1;
  int threads = 2, q_window = 2, max_k = 5, fit_sink = 4;
  std::vector<int> sinks{0, 4};
  std::uint64_t random_seed = 1;
  bool random = true, keep_acts = false;
  std::vector<headrecon::CacheType> cache_dtypes = {headrecon::CacheType()};  // eval rows per type; speed: the first
  std::size_t eval_chunk = 1;  // tokens per forward in the eval (1: decode; more: chunked prefill through the same store)
  std::vector<PlanSpec> plans{
      {"greedy-same-r1", "greedy", false, 2, 0, true}, {"greedy-cross-r1", "greedy", true, 2, 5, true},
      {"shared-same-r1", "shared", false, 2, 0, false}, {"shared-cross-r1", "shared", true, 2, 0, false},
      {"greedy-same-r2", "greedy", false, 1, 0, false}, {"greedy-cross-r2", "greedy", true, 1, 5, false},
      {"hybrid-same-r1", "hybrid", false, 2, 0, false}, {"hybrid-w2-r1", "hybrid", true, 2, 0, false}};
  bool speed = true;
  SpeedOptions speed_opt;
};

/// Writes to two streams (the terminal and the log file).
class TeeBuf : public std::streambuf {
 public:
  TeeBuf(std::streambuf* a, std::streambuf* b) : a_(a), b_(b) {}
 protected:
  int overflow(int c) override {
    if (c == EOF) return !EOF;
    const int r1 = a_->sputc(char(c)), r2 = b_->sputc(char(c));
    return r1 == EOF || r2 == EOF ? EOF : c;
  }
  int sync() override { return a_->pubsync() | b_->pubsync(); }
 private:
  std::streambuf *a_, *b_;
};

/// Runs `cmd` through the shell and returns its stdout (trailing newlines cut) and exit status.
inline std::string run_capture_stdout(const std::string& cmd, int& rc) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) {
    rc = -1;
    return out;
  }
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int st = ::pclose(p);
  rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

struct DemoTimer {
  using clock = std::chrono::steady_clock;
  clock::time_point start = clock::now(), last = start;
  std::vector<std::pair<std::string, double>> steps;
  double lap(const std::string& name) {
    const auto now = clock::now();
    const double s = std::chrono::duration<double>(now - last).count();
    steps.push_back({name, s});
    last = now;
    return s;
  }
  double total() const { return std::chrono::duration<double>(clock::now() - start).count(); }
};

/// Everything the R² part of one model produced.
struct ModelAnalysis {
  std::vector<R2Curve> curves;
  std::size_t train_tokens = 0, heldout_tokens = 0;
};

inline void append(std::vector<R2Curve>& a, std::vector<R2Curve> b) {
  a.insert(a.end(), std::make_move_iterator(b.begin()), std::make_move_iterator(b.end()));
}

/// R² curves of Q, K, V (same-layer, cross-layer; Q cross-layer over a window)
/// from an activation file; for K and V also the plans of `specs` when given.
inline ModelAnalysis analyze_file(const std::string& acts_path, const std::string& model_name, const DemoOptions& o,
                                  const headrecon::AccumulateOptions& acc, std::vector<headrecon::Plan>* plans,
                                  std::vector<std::vector<headrecon::TargetReport>>* reports, std::ostream& log) {
  using headrecon::Kind;
  using headrecon::RefScope;
  const headrecon::ActivationReader acts(acts_path);
  ModelAnalysis out;
  AnalysisOptions ao;
  ao.max_k = o.max_k;
  ao.threads = o.threads;
  auto secs = [](DemoTimer::clock::time_point t) {
    return std::chrono::duration<double>(DemoTimer::clock::now() - t).count();
  };
  for (Kind kind : {Kind::k, Kind::v, Kind::q}) {
    const std::string kn(headrecon::kind_name(kind));
    auto t0 = DemoTimer::clock::now();
    headrecon::AccumulateOptions a = acc;
    a.scope = RefScope::same_layer;
    const headrecon::HeadMoments same = headrecon::accumulate(acts, kind, a);
    out.train_tokens = same.train_count();
    out.heldout_tokens = same.heldout_count();
    append(out.curves, r2_curves(same, kind, model_name, ao));
    log << "  " << model_name << " " << kn << " same-layer: statistics + curves " << fmtd("%.1f", secs(t0)) << " s\n";
    t0 = DemoTimer::clock::now();
    if (kind == Kind::q && o.q_window + 1 < int(acts.n_layers())) {
      const auto hm = windowed_moments(acts, kind, o.q_window, acc, o.threads);
      append(out.curves, r2_curves_windowed(hm, kind, o.q_window, model_name, ao));
      log << "  " << model_name << " " << kn << " cross-layer (window " << o.q_window
          << " layers): statistics + curves " << fmtd("%.1f", secs(t0)) << " s\n";
      continue;
    }
    a.scope = RefScope::cross_layer;
    const headrecon::HeadMoments cross = headrecon::accumulate(acts, kind, a);
    append(out.curves, r2_curves(cross, kind, model_name, ao));
    log << "  " << model_name << " " << kn << " cross-layer: statistics + curves " << fmtd("%.1f", secs(t0)) << " s\n";
    if (!plans || kind == Kind::q) continue;
    // Plans: each selection single-threaded, two plans at a time.
    t0 = DemoTimer::clock::now();
    std::vector<headrecon::KindPlan> kps(o.plans.size());
    std::vector<std::vector<headrecon::TargetReport>> reps(o.plans.size());
    parallel_for(o.plans.size(), o.threads, [&](std::size_t i) {
      const PlanSpec& ps = o.plans[i];
      const headrecon::HeadMoments& st = ps.cross ? cross : same;
      if (ps.strategy == "hybrid" || ps.strategy == "latent") {
        // Latent streams: `keep` streams per layer on average, allocated over the layers.
        headrecon::LatentModelOptions lo;
        lo.hybrid = ps.strategy == "hybrid";
        const std::vector<headrecon::KindCosts> costs{headrecon::KindCosts(kind, &st)};
        auto r = headrecon::select_latent_model(costs, std::size_t(ps.keep) * std::size_t(st.n_layers()), lo);
        if (ps.cross) headrecon::refit_with_earlier_layers(r, costs, 2);  // maps also read the 2 previous layers' streams
        kps[i] = std::move(r.kinds[0]);
        reps[i].swap(r.reports[0]);
        return;
      }
      headrecon::SelectionOptions so;
      so.budget = double(ps.keep) / double(st.n_heads());
      so.max_refs = ps.max_refs;
      const auto strategy = headrecon::make_strategy(ps.strategy);
      const headrecon::Selection sel = strategy->select(st, so);
      kps[i] = headrecon::build_kind_plan(st, sel, kind, headrecon::FitOptions{}, &reps[i]);
    });
    for (std::size_t i = 0; i < o.plans.size(); ++i) {
      (*plans)[i].kinds.push_back(std::move(kps[i]));
      auto& r = (*reports)[i];
      r.insert(r.end(), reps[i].begin(), reps[i].end());
    }
    log << "  " << kn << " plans (" << o.plans.size() << " selections + maps): " << fmtd("%.1f", secs(t0)) << " s\n";
  }
  return out;
}

inline std::string demo_md_r2_table(const std::vector<R2Curve>& curves, const std::vector<std::string>& models,
                                    bool heldout, int max_k) {
  std::ostringstream os;
  os << "| kind | references from | weights |";
  for (int k = 1; k <= max_k; ++k) os << " k=" << k << " |";
  os << "\n|---|---|---|";
  for (int k = 1; k <= max_k; ++k) os << "---:|";
  os << "\n";
  for (headrecon::Kind kind : {headrecon::Kind::q, headrecon::Kind::k, headrecon::Kind::v})
    for (const std::string scope : {"same-layer", "cross-layer"})
      for (const auto& m : models) {
        std::string label = scope;
        for (const auto& c : curves)
          if (c.kind == kind && c.scope.rfind(scope, 0) == 0) {
            label = c.scope;
            break;
          }
        if (label.find("(w") != std::string::npos)
          label = "cross-layer (layers l-" + label.substr(label.find("(w") + 2, label.size() - label.find("(w") - 3) +
                  "..l)";
        else if (scope == std::string("cross-layer"))
          label = "cross-layer (layers 0..l)";
        else
          label = "same layer";
        os << "| " << std::string(headrecon::kind_name(kind)) << " | " << label << " | " << m << " |";
        for (int k = 1; k <= max_k; ++k) {
          const double v = mean_r2_at(curves, m, kind, scope, k, heldout);
          os << " " << (std::isnan(v) ? std::string("n/a") : fmtd("%.3f", v)) << " |";
        }
        os << "\n";
      }
  return os.str();
}

/// The demo's text: calibration and eval sequences spread over the docs, KJV when present.
struct DemoText {
  TokenStream calib, eval, kjv;
  bool have_kjv = false;
};

/// What the eval step measured.
struct DemoEval {
  std::vector<EvalRow> rows, kjv_rows;
};

/// Step 0: the model (fetched by o.fetch_script when absent; o.model is then
/// the fetched path), the docs and the KJV text (prepared when absent).
inline void demo_find_inputs(DemoOptions& o, std::ostream& log) {
  namespace fs = std::filesystem;
  if (!fs::exists(o.model)) {
    if (o.fetch_script.empty()) fail("model ", o.model, " not found");
    log << "model " << o.model << " not found: fetching with " << o.fetch_script << "\n";
    int rc = 0;
    const std::string p = run_capture_stdout("bash '" + o.fetch_script + "'", rc);
    if (rc != 0 || !fs::exists(p)) fail("fetching the model failed (", o.fetch_script, " exit status ", rc, ")");
    o.model = p;
  }
  if (!fs::is_directory(o.docs))
    fail(o.docs, ": not found. Install Debian's linux-doc-6.1 (scripts/install-deps.sh, or "
                 "apt-get install linux-doc-6.1)");
  if (!o.kjv.empty() && !fs::exists(o.kjv) && !o.prepare_text_script.empty()) {
    int rc = 0;
    run_capture_stdout("bash '" + o.prepare_text_script + "' 1>&2", rc);
  }
}

/// Step 0: tokenized text. Every sequence is the beginning of a different
/// document, the documents spread over the sorted list (calib: even files,
/// eval: odd files).
inline DemoText demo_tokenize_text(const DemoOptions& o, const Tokenizer& tok, std::ostream& log) {
  namespace fs = std::filesystem;
  DemoText t;
  const std::size_t n_calib = (o.calib_tokens + o.capture_seq_len - 1) / o.capture_seq_len;
  t.calib = spread_sequences(tok, list_text_files(o.docs, o.suffix, Split::calib), n_calib, o.capture_seq_len);
  t.eval = spread_sequences(tok, list_text_files(o.docs, o.suffix, Split::eval), o.eval_seqs, o.eval_len);
  t.have_kjv = !o.kjv.empty() && fs::exists(o.kjv) && o.kjv_seqs > 0;
  if (t.have_kjv) t.kjv = build_token_stream(tok, {o.kjv}, o.kjv_seqs * o.eval_len, document_separator(tok));
  log << "calibration: " << t.calib.tokens.size() << " tokens, the first " << o.capture_seq_len << " of "
      << t.calib.files.size() << " files spread over " << o.docs << " (calib split: even indices)\nevaluation: "
      << t.eval.tokens.size() << " tokens, the first " << o.eval_len << " of " << t.eval.files.size()
      << " files (eval split: odd indices)"
      << (t.have_kjv ? "; KJV: " + std::to_string(t.kjv.tokens.size()) + " tokens" : "") << "\n";
  return t;
}

/// Step 1: captures Q/K/V after RoPE of `tokens` into `path`.
inline void demo_capture(const LlamaModel& model, const std::vector<std::int32_t>& tokens, const std::string& path,
                         const CaptureOptions& co, std::ostream& log) {
  const CaptureStats cs = capture_activations(model, tokens, path, co);
  log << "wrote " << path << " (" << std::filesystem::file_size(path) / (1 << 20) << " MiB) in "
      << fmtd("%.1f", cs.seconds) << " s\n";
}

/// Step 2: statistics, R² curves and the plans of o.plans (fitted from the
/// same statistics), saved under DIR/plans/.
inline ModelAnalysis demo_r2_analysis_and_plans(const DemoOptions& o, const LlamaConfig& c,
                                                const std::string& acts_path,
                                                const headrecon::AccumulateOptions& acc,
                                                std::vector<EvalPlan>& eval_plans, std::ostream& log) {
  namespace fs = std::filesystem;
  std::vector<headrecon::Plan> plans(o.plans.size());
  std::vector<std::vector<headrecon::TargetReport>> reports(o.plans.size());
  for (auto& p : plans) {
    p.head_dim = std::int32_t(c.head_dim);
    p.n_layers = std::int32_t(c.n_layer);
    p.post_rope = true;
    p.sink_tokens = o.fit_sink;
  }
  ModelAnalysis trained = analyze_file(acts_path, "trained", o, acc, &plans, &reports, log);
  for (std::size_t i = 0; i < plans.size(); ++i) {
    const std::string path = (fs::path(o.dir) / "plans" / (o.plans[i].name + ".safetensors")).string();
    headrecon::save_plan(plans[i], path,
                         {{"strategy", o.plans[i].strategy},
                          {"scope", o.plans[i].cross ? "cross-layer" : "same-layer"},
                          {"cached_per_layer", std::to_string(o.plans[i].keep)},
                          {"source", "headrecon-engine demo"}});
    eval_plans.push_back({o.plans[i].name, plans[i]});
  }
  return trained;
}

/// Step 3: decode perplexity of every plan (all sink counts for the plans
/// marked so, the fit's otherwise) and out of domain; writes eval.csv/json.
inline DemoEval demo_eval(const LlamaModel& model, const DemoText& text, const std::vector<EvalPlan>& eval_plans,
                          const DemoOptions& o, std::ostream& log) {
  namespace fs = std::filesystem;
  DemoEval out;
  EvalOptions eo;
  eo.seq_len = o.eval_len;
  eo.sinks = o.sinks;
  eo.dtypes = o.cache_dtypes;
  eo.chunk = o.eval_chunk;
  eo.simulate = true;
  std::vector<EvalPlan> all_sink_plans, fit_sink_plans;
  for (std::size_t i = 0; i < eval_plans.size(); ++i)
    (o.plans[i].all_sinks ? all_sink_plans : fit_sink_plans).push_back(eval_plans[i]);
  out.rows = run_eval(model, text.eval.tokens, all_sink_plans, eo, log);
  {
    EvalOptions e2 = eo;
    e2.sinks = {o.fit_sink};
    e2.include_full = false;
    e2.reuse = out.rows;
    const std::vector<EvalRow> more = run_eval(model, text.eval.tokens, fit_sink_plans, e2, log);
    out.rows.insert(out.rows.end(), more.begin(), more.end());
  }
  if (text.have_kjv) {
    log << "out of domain (KJV), " << o.kjv_seqs << " x " << o.eval_len << " tokens:\n";
    EvalOptions ek = eo;
    ek.variants = {Apply::k, Apply::v, Apply::kv};
    ek.sinks = {o.fit_sink};
    std::vector<EvalPlan> one;
    for (const auto& ep : eval_plans)
      if (ep.name == "greedy-cross-r1") one.push_back(ep);
    if (one.empty() && !eval_plans.empty()) one.push_back(eval_plans.front());
    out.kjv_rows = run_eval(model, text.kjv.tokens, one, ek, log);
  }
  write_eval_csv(out.rows, (fs::path(o.dir) / "eval.csv").string());
  const std::map<std::string, std::string> meta{{"model", o.model},
                                                {"text", o.docs + " (eval split)"},
                                                {"seq_len", std::to_string(o.eval_len)},
                                                {"sequences", std::to_string(o.eval_seqs)},
                                                {"cache_dtypes", cache_type_names(o.cache_dtypes)}};
  write_eval_json(out.rows, meta, (fs::path(o.dir) / "eval.json").string());
  if (text.have_kjv) {
    write_eval_csv(out.kjv_rows, (fs::path(o.dir) / "eval_kjv.csv").string());
    std::map<std::string, std::string> kmeta = meta;
    kmeta["text"] = o.kjv + " (out of domain)";
    kmeta["sequences"] = std::to_string(o.kjv_seqs);
    write_eval_json(out.kjv_rows, kmeta, (fs::path(o.dir) / "eval_kjv.json").string());
  }
  return out;
}

/// Step 3b: decode speed, A/B interleaved, of the full cache and the greedy plans with K and V rebuilt.
inline std::vector<SpeedRow> demo_speed(const LlamaModel& model, const DemoText& text,
                                        const std::vector<EvalPlan>& eval_plans, const DemoOptions& o,
                                        std::ostream& log) {
  log << "\n## 3b. decode speed, A/B interleaved: whole model after " << o.speed_opt.context << " tokens ("
      << o.speed_opt.reps << " x " << o.speed_opt.decode << " tokens each), attention alone at "
      << o.speed_opt.long_context << " tokens (" << o.speed_opt.attn_reps << " x)\n";
  std::vector<headrecon::Plan> sp;
  std::vector<SpeedConfig> cfgs{{"full", nullptr}};
  auto timed = [](const std::string& n) {
    return n == "greedy-same-r1" || n == "greedy-cross-r1" || n == "greedy-cross-r2" || n == "hybrid-same-r1";
  };
  for (const auto& ep : eval_plans)
    if (timed(ep.name)) sp.push_back(plan_variant(ep.plan, Apply::kv, o.fit_sink));
  std::size_t j = 0;
  for (const auto& ep : eval_plans)
    if (timed(ep.name)) cfgs.push_back({ep.name + " K+V s" + std::to_string(o.fit_sink), &sp[j++]});
  std::vector<std::int32_t> prompt(text.eval.tokens.begin(), text.eval.tokens.end());
  while (prompt.size() < o.speed_opt.context + o.speed_opt.decode)
    prompt.insert(prompt.end(), text.eval.tokens.begin(), text.eval.tokens.end());
  std::vector<SpeedRow> speed = measure_speed(model, prompt, cfgs, o.speed_opt);
  print_speed_table(speed, o.speed_opt, log, false);
  return speed;
}

/// Step 4: the same R² analysis with random weights of matching scale (the model is randomized in place).
inline ModelAnalysis demo_random_weights(LlamaModel& model, const DemoText& text, CaptureOptions co,
                                         const headrecon::AccumulateOptions& acc, const DemoOptions& o,
                                         std::ostream& log) {
  namespace fs = std::filesystem;
  log << "\n## 4. random weights of matching scale (seed " << o.random_seed << "): capture " << o.random_tokens
      << " tokens, same analysis\n";
  model.randomize(o.random_seed);
  const std::vector<std::int32_t> rt(
      text.calib.tokens.begin(),
      text.calib.tokens.begin() + std::ptrdiff_t(std::min(o.random_tokens, text.calib.tokens.size())));
  const std::string rpath = (fs::path(o.dir) / "random_acts.safetensors").string();
  co.metadata["random_init"] = std::to_string(o.random_seed);
  const CaptureStats cs = capture_activations(model, rt, rpath, co);
  log << "captured in " << fmtd("%.1f", cs.seconds) << " s\n";
  ModelAnalysis random = analyze_file(rpath, "random", o, acc, nullptr, nullptr, log);
  if (!o.keep_acts) fs::remove(rpath);
  return random;
}

/// Step 5: r2.csv, r2_heatmap.svg and eval.md.
inline void demo_report_files(const std::vector<R2Curve>& all, const std::vector<std::string>& models,
                              const DemoEval& ev, const DemoOptions& o) {
  namespace fs = std::filesystem;
  using headrecon::Kind;
  write_r2_csv(all, (fs::path(o.dir) / "r2.csv").string());
  std::vector<HeatPanel> panels;
  for (Kind kind : {Kind::q, Kind::k, Kind::v})
    for (const auto& m : models) {
      const std::string kn(headrecon::kind_name(kind));
      const std::string K = kn == "q" ? "Q" : kn == "k" ? "K" : "V";
      panels.push_back({K + " " + m + "\nsame layer, k=2", m, "same-layer", kind, 2});
      panels.push_back({K + " " + m + "\ncross-layer, k=" + std::to_string(o.max_k), m, "cross-layer", kind, o.max_k});
    }
  write_r2_svg(all, panels, "SmolLM2-135M: held-out R2 per layer (rows) x head (columns)",
               (fs::path(o.dir) / "r2_heatmap.svg").string());
  std::ofstream md(fs::path(o.dir) / "eval.md");
  print_eval_table(ev.rows, md, true);
}

/// Step 5: summary.md, the report a person reads.
inline void demo_write_summary(const DemoOptions& o, const LlamaConfig& c, const DemoText& text,
                               const ModelAnalysis& trained, const std::vector<R2Curve>& all,
                               const std::vector<std::string>& models, const DemoEval& ev,
                               const std::vector<SpeedRow>& speed, const DemoTimer& timer, double wall) {
  namespace fs = std::filesystem;
  using headrecon::Kind;
  const std::vector<EvalRow>& rows = ev.rows;
  const TokenStream& calib = text.calib;
  const TokenStream& kjv = text.kjv;
  const bool have_kjv = text.have_kjv;
  const std::vector<EvalRow>& kjv_rows = ev.kjv_rows;
  std::ofstream md(fs::path(o.dir) / "summary.md");
  md << "# headrecon on a real model: " << fs::path(o.model).filename().string() << "\n\n";
  md << "Model: " << c.arch << ", " << c.n_layer << " layers, " << c.n_head << " query heads, " << c.n_head_kv
     << " KV heads, head_dim " << c.head_dim << ", RoPE base " << c.rope_base << ".\n\n";
  md << "Calibration: " << calib.tokens.size() << " tokens of Debian linux-doc-6.1: the first " << o.capture_seq_len
     << " tokens of " << calib.files.size()
     << " files spread over the even-indexed files of the sorted list; Q/K/V captured after RoPE. "
     << "Statistics skip positions < " << o.fit_sink << " (sink tokens); held-out split: 25% of 256-token blocks ("
     << trained.train_tokens << " training, " << trained.heldout_tokens << " held-out tokens).\n\n";
  // Headline: the main plan (greedy, cross-layer, 1 of 3 KV heads rebuilt) at the fit's sink count.
  for (const auto& r : rows)
    if (r.plan == "greedy-cross-r1" && r.apply == std::string("K+V") && r.sink == o.fit_sink) {
      const double kk = mean_r2_at(all, "trained", Kind::k, "cross-layer", o.max_k, true);
      const double vv = mean_r2_at(all, "trained", Kind::v, "cross-layer", o.max_k, true);
      const double rk = mean_r2_at(all, "random", Kind::k, "cross-layer", o.max_k, true);
      const double rv = mean_r2_at(all, "random", Kind::v, "cross-layer", o.max_k, true);
      md << "**In short.** With " << o.max_k << " cross-layer references, the mean held-out R2 of a head is "
         << fmtd("%.2f", kk) << " for K and " << fmtd("%.2f", vv) << " for V in the trained model";
      if (o.random) md << " (" << fmtd("%.2f", rk) << " and " << fmtd("%.2f", rv) << " with random weights)";
      md << ". Rebuilding 1 of the 3 KV heads of every layer for K and V (plan greedy-cross-r1, " << o.fit_sink
         << " sink tokens) allocates " << r.st.allocated_bytes << " instead of " << r.st.full_bytes << " bytes of KV cache for "
         << o.eval_len << " tokens (" << fmtd("%.1f", 100.0 * (1 - double(r.st.allocated_bytes) / double(r.st.full_bytes)))
         << "% saved) and moves held-out perplexity from " << fmtd("%.2f", rows[0].st.ppl()) << " to "
         << fmtd("%.2f", r.st.ppl()) << " (" << fmtd("%+.1f%%", 100.0 * (r.st.ppl() / rows[0].st.ppl() - 1)) << "), "
         << "measured by decoding through the reference-only cache.\n\n";
    }
  md << "## R2 of each head from k reference heads of the same kind\n\n"
     << "Greedy forward selection per target head (the candidate that most raises the training-split R2 is added), "
        "near-OLS fit (relative ridge 1e-6); R2 = mean over the 64 dimensions of 1 - SSE/SST, clipped at -1. "
        "Same layer: K/V have only 2 other heads per layer (3 KV heads), so k <= 2. Cross-layer: references from the "
        "target's layer and earlier layers (Q: the "
     << o.q_window << " previous layers only, to keep its statistics small). Random: every weight replaced by "
        "N(0, s^2) with s the RMS of the trained matrix, norms 1, same tokens (first "
     << std::min(o.random_tokens, calib.tokens.size()) << ").\n\n### Held-out\n\n"
     << demo_md_r2_table(all, models, true, o.max_k) << "\n### In-sample (training split)\n\n"
     << demo_md_r2_table(all, models, false, o.max_k)
     << "\nPer head: `r2.csv` (model, kind, scope, layer, head, k, held-out, in-sample, references); heatmap: "
        "`r2_heatmap.svg`.\n\n";
  md << "## Perplexity through the reference-only KV cache\n\n"
     << "Held-out Linux docs (odd files), " << o.eval_seqs << " sequences x " << o.eval_len
     << " tokens, every token decoded one at a time; each layer's attention runs headrecon::attend over the library KvStore "
        "cache that stores only the plan's cached heads (sink tokens in full; keys absorbed, values mapped). KV bytes "
        "= bytes allocated for one sequence of "
     << o.eval_len << " tokens (" << cache_type_names(o.cache_dtypes)
     << "), equal to RefCacheLayout::bytes. Plans: `rN` = N of 3 KV heads per layer rebuilt; `same`/`cross` = "
        "references from the same layer / also from earlier layers; `greedy`/`shared` = selection strategy; "
        "`hybrid-*-r1`: per kind as many stored streams as r1 (2 per layer on average, allocated over the layers), each "
        "layer storing heads and/or latent streams (principal directions of its heads, variance-weighted, projected "
        "at append time); `w2`: the maps also read the 2 previous layers' stored streams. "
        "Maps fitted on positions >= "
     << o.fit_sink << " (ridge by GCV); sink 0 applies the same maps to every position. Applied K / V / K+V: the "
        "other kind fully cached. Rows marked `= X` have the same plan content as X (result reused).\n\n";
  print_eval_table(rows, md, true);
  if (have_kjv) {
    md << "\nOut of domain (KJV Bible, " << kjv.tokens.size() << " tokens):\n\n";
    print_eval_table(kjv_rows, md, true);
  }
  md << "\nThe `decode tok/s` column is each run's own timing, taken while the machine may be busy with other work; "
        "for speed compare the A/B-interleaved medians below. `attn us/tok` is the time inside attention "
        "summed over the 30 layers. `simulated ppl`: the same plan with predicted K/V written into a full cache "
        "(the paper's simulation; for `full`, the engine's batched pass): it agrees with the measured perplexity "
        "to rounding, so the reference-only cache computes what it should.\n\n";
  if (!speed.empty()) {
    md << "## Decode speed\n\nA/B interleaved, medians (" << o.speed_opt.reps << " repetitions of "
       << o.speed_opt.decode << " tokens after a " << o.speed_opt.context << "-token prompt for the whole model; "
       << o.speed_opt.attn_reps << " repetitions of one decode step of the 30 layers' attention over "
       << o.speed_opt.long_context << " tokens of random K/V). Plans with K and V rebuilt, " << o.fit_sink
       << " sink tokens. `bytes read/tok`: what one decode step's attention reads (sink tokens with every head; per "
          "layer, every stream it attends over - a cross-layer reference is read again by each layer that uses "
          "it, so cross-layer plans save memory but not reads); read GB/s = bytes read / attention time.\n\n";
    print_speed_table(speed, o.speed_opt, md, true);
    md << "\nAt " << o.speed_opt.context
       << " tokens the whole-model decode reads every weight (in its GGUF type) per token and the KV cache is a few MB, so "
          "the cache size barely moves tokens/s; the attention-alone column is where a smaller cache pays, less the "
          "cost of mapping absorbed queries (k.d.d per rebuilt head and query) and values, and more dot products "
          "per token (each query of a rebuilt head scores every one of its k reference streams).\n\n";
  }
  md << "## KV bytes per token against perplexity\n\n"
     << "Every row of the tables above as a point (cache types " << cache_type_names(o.cache_dtypes)
     << "); blue: the full cache quantized, red: plans on quantized references; the lines join each family's "
        "Pareto front (no other point of the family has fewer bytes and lower perplexity). Drawn by "
        "`scripts/plot_pareto.py` from `eval.json` (`scripts/demo.sh` runs it after the demo):\n\n"
        "![KV bytes per token vs perplexity](pareto.svg)\n\n";
  if (have_kjv) md << "Out of domain (KJV): ![KJV](pareto_kjv.svg)\n\n";
  md << "## Time (this run)\n\n| step | seconds |\n|---|---:|\n";
  for (const auto& [name, s] : timer.steps) md << "| " << name << " | " << fmtd("%.1f", s) << " |\n";
  md << "| **total** | **" << fmtd("%.1f", wall) << "** |\n\n";
  md << "Files: `summary.md` (this), `r2.csv`, `r2_heatmap.svg`, `eval.csv`, `eval.json`, `eval.md`"
     << (have_kjv ? ", `eval_kjv.csv`, `eval_kjv.json`" : "") << ", `plans/*.safetensors` (headrecon plan files), `demo.log`.\n";
}

/// The demo: inputs, capture, R² analysis and plans, eval, speed, random
/// weights, report; each step timed. Returns 0 (failures throw).
inline int run_demo(const DemoOptions& o_in, std::ostream& term) {
  namespace fs = std::filesystem;
  DemoOptions o = o_in;
  DemoTimer timer;
  fs::create_directories(fs::path(o.dir) / "plans");
  std::ofstream logf(fs::path(o.dir) / "demo.log");
  TeeBuf tee(term.rdbuf(), logf.rdbuf());
  std::ostream log(&tee);
  log << std::unitbuf;  // progress shows as it happens
  set_blas_threads(o.threads);
  set_engine_threads(std::size_t(o.threads));

  log << "# headrecon-engine demo -> " << o.dir << "\n\n## 0. model and text\n";
  demo_find_inputs(o, log);
  const GgufFile f(o.model);
  const Tokenizer tok(f);
  LlamaModel model(f);
  const LlamaConfig& c = model.config();
  log << "model: " << o.model << " (" << c.arch << ", " << c.n_layer << " layers, " << c.n_head << " query heads, "
      << c.n_head_kv << " KV heads, head_dim " << c.head_dim << ")\n";
  const DemoText text = demo_tokenize_text(o, tok, log);
  timer.lap("load model, tokenize text");

  log << "\n## 1. capture Q/K/V after RoPE (" << text.calib.tokens.size() << " tokens, sequences of "
      << o.capture_seq_len << ")\n";
  const std::string acts_path = (fs::path(o.dir) / "calib_acts.safetensors").string();
  CaptureOptions co;
  co.seq_len = o.capture_seq_len;
  co.metadata["model"] = fs::path(o.model).filename().string();
  co.metadata["text_source"] = o.docs + " (calib split)";
  demo_capture(model, text.calib.tokens, acts_path, co, log);
  timer.lap("capture (trained)");

  log << "\n## 2. statistics, R2 curves (1.." << o.max_k << " references), plans\n";
  headrecon::AccumulateOptions acc;
  acc.split.fraction = 0.25;
  acc.split.block = 256;
  acc.sink_tokens = o.fit_sink;
  std::vector<EvalPlan> eval_plans;
  const ModelAnalysis trained = demo_r2_analysis_and_plans(o, c, acts_path, acc, eval_plans, log);
  if (!o.keep_acts) fs::remove(acts_path);
  timer.lap("statistics, R2 curves, plans (trained)");

  log << "\n## 3. eval: " << o.eval_seqs << " x " << o.eval_len
      << " tokens of held-out Linux docs, decoded token by token through the reference-only cache\n";
  const DemoEval ev = demo_eval(model, text, eval_plans, o, log);
  timer.lap("eval (decode perplexity)");

  std::vector<SpeedRow> speed;
  if (o.speed) {
    speed = demo_speed(model, text, eval_plans, o, log);
    timer.lap("decode speed (A/B)");
  }

  ModelAnalysis random;
  if (o.random) {
    random = demo_random_weights(model, text, co, acc, o, log);
    timer.lap("random-init capture + R2 curves");
  }

  std::vector<R2Curve> all = trained.curves;
  append(all, random.curves);
  std::vector<std::string> models{"trained"};
  if (o.random) models.push_back("random");
  demo_report_files(all, models, ev, o);
  timer.lap("report files");
  const double wall = timer.total();
  demo_write_summary(o, c, text, trained, all, models, ev, speed, timer, wall);

  log << "\n## 5. report\n";
  log << "held-out R2, mean over heads (k = 1.." << o.max_k << "):\n" << demo_md_r2_table(all, models, true, o.max_k);
  log << "\n";
  print_eval_table(ev.rows, log, false);
  if (!speed.empty()) {
    log << "\n";
    print_speed_table(speed, o.speed_opt, log, false);
  }
  log << "\nwrote " << o.dir << "/{summary.md, r2.csv, r2_heatmap.svg, eval.csv, eval.json, eval.md, plans/}\n";
  log << "demo wall time: " << fmtd("%.1f", wall) << " s\n";
  return 0;
}

}  // namespace headrecon_engine
