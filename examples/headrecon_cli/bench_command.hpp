#pragma once
// `headrecon bench`: the machine's limits and every kernel ratio measured in
// one run, as a table a person reads and a JSON file. Reconstruction and
// statistics single-threaded on both sides (OpenBLAS is set to one thread);
// decode attention on 1 and --threads threads (split-K) against the limits of
// as many threads. The kernels and the FMA peak run on the CPU's best Highway
// target (headrecon::dispatch, as an engine would call them), or on this
// build's static target with --static-kernels; the streaming statistics stay
// on the static target.
#include <cstdio>
#include <fstream>
#include <map>
#include <ostream>
#include <string>
#include <vector>

#include "attention_problem.hpp"
#include "bench_dispatch.hpp"
#include "command_line.hpp"
#include "output_file.hpp"
#include <nlohmann/json.hpp>

#include "headrecon/cpu/dispatch.hpp"
#include "headrecon/moments.hpp"
#include "headrecon/thread_pool.hpp"
#include "machine_limits.hpp"
#include "recon_problem.hpp"
#include "roofline_svg.hpp"

extern "C" void openblas_set_num_threads(int);

namespace headrecon::cli {

struct BenchConfig {
  bool quick = false;     // small sizes (CI smoke run)
  std::size_t threads = 2;  // the attention rows run on 1 and on this many threads
  bool static_kernels = false;  // the build's static Highway target instead of the CPU's best
  std::string json_path;  // empty: no JSON
  std::string plot_path;  // roofline SVG; empty: next to the JSON (NAME.json -> NAME.roofline.svg), none without JSON
};

/// Where the roofline plot goes: --plot, else next to the JSON.
inline std::string roofline_path(const BenchConfig& cfg) {
  if (!cfg.plot_path.empty() || cfg.json_path.empty()) return cfg.plot_path;
  const std::string& j = cfg.json_path;
  const std::size_t dot = j.rfind('.'), slash = j.find_last_of('/');
  const std::string stem = dot != std::string::npos && (slash == std::string::npos || dot > slash) ? j.substr(0, dot) : j;
  return stem + ".roofline.svg";
}

inline void run_bench(const BenchConfig& cfg, std::ostream& os) {
  using namespace headrecon::bench;
  using json = nlohmann::ordered_json;
  openblas_set_num_threads(1);
  const double tmin = cfg.quick ? 0.02 : 0.25;
  json root = json::object();
  char line[512];

  // The kernels measured: the CPU's best target (runtime dispatch) or the build's.
  BenchKernels kernels;
  FmaChainsKernel chains = nullptr;
  if (!cfg.static_kernels) {
    kernels.attention = &dispatch::attention;
    kernels.reconstruct = &dispatch::reconstruct;
    kernels.decode_attention = &dispatch::decode_attention;
    chains = &dispatch_fma_chains;
  }
  const std::string target = cfg.static_kernels ? hwy::TargetName(HWY_STATIC_TARGET) : dispatch::target_name();

  // Machine limits, measured now: one thread and every thread of the pool.
  ThreadPool pool(cfg.threads);
  const ParallelFor one, all = pool.parallel_for();
  const double fma = fma_peak_gflops(one, chains), triad = cfg.quick ? 0.0 : triad_gbps();
  const double fma_all = cfg.threads > 1 ? fma_peak_gflops(all, chains) : fma;
  const std::size_t dram_bytes = cfg.quick ? std::size_t(8) << 20 : std::size_t(1) << 30;  // quick: a smoke run
  const double dram1 = dram_read_gbps(one, dram_bytes), dram_all = cfg.threads > 1 ? dram_read_gbps(all, dram_bytes) : dram1;
  ReconProblem gemm(cfg.quick ? 256 : 2048, 128);
  const double sgemm = gemm.flops() / seconds_per_call([&] { gemm.blas(); }, tmin) / 1e9;
  if (cfg.static_kernels)
    os << "headrecon bench (kernels and FMA peak on this build's static Highway target " << target;
  else
    os << "headrecon bench (kernels and FMA peak on Highway target " << target
       << ", the CPU's best, through runtime dispatch; this build's static target " << hwy::TargetName(HWY_STATIC_TARGET);
  os << "; OpenBLAS on one thread)\n\n";
  std::snprintf(line, sizeof line,
                "machine: f32 FMA peak %.0f GFLOP/s (1 thread), %.0f (%zu threads); read from DRAM (%zu MiB buffer) "
                "%.1f GB/s (1 thread), %.1f (%zu threads); triad %.1f GB/s; OpenBLAS sgemm %.0f GFLOP/s\n\n",
                fma, fma_all, cfg.threads, dram_bytes >> 20, dram1, dram_all, cfg.threads, triad, sgemm);
  os << line;
  root["machine"] = {{"target", target},
                     {"kernels", cfg.static_kernels ? "static" : "dispatch"},
                     {"static_target", hwy::TargetName(HWY_STATIC_TARGET)},
                     {"threads", cfg.threads},
                     {"fma_peak_gflops", fma},
                     {"fma_peak_gflops_all_threads", fma_all},
                     {"dram_read_gbps", dram1},
                     {"dram_read_gbps_all_threads", dram_all},
                     {"dram_buffer_bytes", dram_bytes},
                     {"sgemm_gflops", sgemm},
                     {"triad_gbps", triad}};

  // Streaming statistics.
  {
    const std::size_t n = 2048, p = cfg.quick ? 256 : 1024;
    std::vector<float> x(n * p);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = float((i * 2654435761u) % 1000) * 1e-3f + 3.f;
    Moments m(p);
    const double t = seconds_per_call([&] { m.add_batch(x.data(), n, p); }, tmin);
    std::vector<float> g(p * p);
    const double ts = seconds_per_call([&] { detail::syrk_upper_rm(int(p), int(n), x.data(), int(p), g.data()); }, tmin);
    const double gf = m.batch_flops(n) / t / 1e9;
    std::snprintf(line, sizeof line,
                  "statistics (p = %zu, batches of %zu tokens): %.1f GFLOP/s = %.2f x bare syrk, %.2f of sgemm, %.2f of FMA peak\n\n",
                  p, n, gf, ts / t, gf / sgemm, gf / fma);
    os << line;
    root["statistics"] = {{"dim", p}, {"gflops", gf}, {"vs_syrk", ts / t}};
  }

  // Reconstruction vs OpenBLAS.
  os << "reconstruction, 4 targets x 5 references, f32 cache (ratio = BLAS time / ours; goal >= 0.9 prefill, >= 1.5 decode)\n";
  os << "  tokens    d   ours GFLOP/s   BLAS GFLOP/s   ratio   of FMA peak\n";
  json recon = json::array();
  const std::vector<std::size_t> token_list = cfg.quick ? std::vector<std::size_t>{1, 8, 256}
                                                        : std::vector<std::size_t>{1, 2, 4, 8, 256, 1024, 4096};
  for (std::size_t d : {64u, 128u})
    for (std::size_t n : token_list) {
      ReconProblem p(n, d);
      p.kernels = kernels;
      const double tb = seconds_per_call([&] { p.blas(); }, tmin), to = seconds_per_call([&] { p.ours(); }, tmin);
      std::snprintf(line, sizeof line, "  %6zu  %3zu   %12.1f   %12.1f   %5.2f   %11.2f\n", n, d, p.flops() / to / 1e9,
                    p.flops() / tb / 1e9, tb / to, p.flops() / to / 1e9 / fma);
      os << line;
      recon.push_back({{"tokens", n},
                       {"head_dim", d},
                       {"gflops", p.flops() / to / 1e9},
                       {"blas_gflops", p.flops() / tb / 1e9},
                       {"vs_blas", tb / to}});
    }
  root["reconstruction"] = std::move(recon);

  // Decode attention: each call attends the next of enough layers that the
  // full cache spans 1 GiB (beyond the last-level cache), as a decode step does.
  os << "\ndecode attention, one sequence, 4 sink tokens, caches of >= " << (dram_bytes >> 20)
     << " MiB visited layer by layer; absorbed = reference-only cache (50% of K and V heads rebuilt; SmolLM2 1 of 3)\n"
        "GB/s = bytes one step reads / time, of DRAM = that over the DRAM read rate of as many threads; "
        "GFLOP/s of FMA = the step's multiply-adds over the FMA peak of as many threads\n";
  os << "  model           cache  context  thr  full us   abs us  full/abs  abs/refs  rta/abs  full GB/s  of DRAM"
        "  abs GB/s  of DRAM  abs of FMA\n";
  json attn = json::array();
  std::map<std::size_t, RooflinePanel> panels;  // by thread count
  struct Row { const ModelShape* shape; std::size_t T; CacheType dt; std::size_t threads; };
  std::vector<Row> rows;
  const std::vector<CacheType> types =
      cfg.quick ? std::vector<CacheType>{CacheType::parse("f32"), CacheType::parse("q4_0r")}
                : std::vector<CacheType>{CacheType::parse("f32"), CacheType::parse("bf16"), CacheType::parse("q8_0"),
                                         CacheType::parse("q4_0r")};
  const std::vector<std::size_t> llama_ctx = cfg.quick ? std::vector<std::size_t>{1024}
                                                       : std::vector<std::size_t>{4096, 32768};
  std::vector<std::size_t> thread_list = {1};
  if (cfg.threads > 1) thread_list.push_back(cfg.threads);
  for (const CacheType& dt : types)
    for (std::size_t T : llama_ctx)
      for (std::size_t th : thread_list) rows.push_back({&kLlama3_8B, T, dt, th});
  for (std::size_t T : cfg.quick ? std::vector<std::size_t>{} : std::vector<std::size_t>{8192, 32768})
    rows.push_back({&kLlama3_8B_2refs, T, CacheType::parse("f32"), 1});
  for (const CacheType& dt : types)
    for (std::size_t T : cfg.quick ? std::vector<std::size_t>{1024} : std::vector<std::size_t>{8192})
      for (std::size_t th : thread_list) rows.push_back({&kSmolLM2, T, dt, th});
  for (const Row& r : rows) {
    AttentionProblem p(*r.shape, r.T, r.dt, r.threads, dram_bytes);
    p.kernels = kernels;
    const ParallelFor& pf = r.threads > 1 ? all : one;
    const double dram = r.threads > 1 ? dram_all : dram1, peak = r.threads > 1 ? fma_all : fma;
    const double tf = best_seconds([&] { p.full(pf); }, tmin), ta = best_seconds([&] { p.absorbed(pf); }, tmin);
    const double tr = best_seconds([&] { p.refs_only(pf); }, tmin);
    const double trta = r.threads == 1 ? best_seconds([&] { p.reconstruct_then_attend(); }, tmin / 2) : 0.0;
    const double gf = p.full_bytes() / tf / 1e9, ga = p.ref_bytes() / ta / 1e9, fl = p.flops(true) / ta / 1e9;
    char rta[16] = "-";
    if (trta > 0) std::snprintf(rta, sizeof rta, "%.2f", trta / ta);
    std::snprintf(line, sizeof line,
                  "  %-14s  %-5s  %7zu  %3zu  %7.0f  %7.0f  %8.2f  %8.2f  %7s  %9.1f  %7.2f  %8.1f  %7.2f  %10.2f\n",
                  r.shape->name.c_str(), r.dt.name().c_str(), r.T, r.threads, tf * 1e6, ta * 1e6, tf / ta, ta / tr,
                  rta, gf, gf / dram, ga, ga / dram, fl / peak);
    os << line;
    RooflinePanel& panel = panels[r.threads];
    panel.threads = r.threads, panel.dram_gbps = dram, panel.peak_gflops = peak;
    const std::string label = r.shape->name.substr(0, r.shape->name.find('-')) + " " + r.dt.name() + " " +
                              std::to_string(r.T / 1024) + "k";
    panel.points.push_back({label, r.dt.name(), false, p.flops(false) / p.full_bytes(), p.flops(false) / tf / 1e9});
    panel.points.push_back({label, r.dt.name(), true, p.flops(true) / p.ref_bytes(), fl});
    attn.push_back({{"model", r.shape->name},
                    {"cache", r.dt.name()},
                    {"context", r.T},
                    {"threads", r.threads},
                    {"layers_visited", p.n_layers},
                    {"full_us", tf * 1e6},
                    {"absorbed_us", ta * 1e6},
                    {"refs_only_us", tr * 1e6},
                    {"reconstruct_then_attend_us", trta > 0 ? json(trta * 1e6) : json(nullptr)},
                    {"full_over_absorbed", tf / ta},
                    {"absorbed_over_refs_only", ta / tr},
                    {"full_bytes", p.full_bytes()},
                    {"absorbed_bytes", p.ref_bytes()},
                    {"full_flops", p.flops(false)},
                    {"absorbed_flops", p.flops(true)},
                    {"full_gbps", gf},
                    {"absorbed_gbps", ga},
                    {"dram_gbps", dram},
                    {"fma_peak_gflops", peak}});
  }
  root["decode_attention"] = std::move(attn);
  if (!cfg.json_path.empty()) {
    write_stream_atomically(cfg.json_path, [&](std::ostream& f) { f << root.dump() << "\n"; });
    os << "\nJSON written to " << cfg.json_path << "\n";
  }
  if (const std::string plot = roofline_path(cfg); !plot.empty()) {
    std::vector<RooflinePanel> list;
    for (auto& [th, pnl] : panels) list.push_back(std::move(pnl));
    write_stream_atomically(plot, [&](std::ostream& f) {
      write_roofline_svg(f, list, "decode attention against the limits measured in this run (" + target + ")");
    });
    os << "roofline plot written to " << plot << "\n";
  }
}

/// Registers `headrecon bench`.
inline void add_bench_command(Tool& tool) {
  auto c = std::make_shared<BenchConfig>();
  CLI::App* cmd = tool.add("bench", "kernel speed as ratios against baselines measured in the same run", [c] {
    if (!c->json_path.empty()) check_output_path("--json", c->json_path);
    if (const std::string plot = roofline_path(*c); !plot.empty()) check_output_path("--plot", plot);
    run_bench(*c, std::cout);
    return 0;
  });
  cmd->add_flag("--quick", c->quick, "small sizes (a smoke run)");
  cmd->add_option("--json", c->json_path, "also write the results as JSON (and the roofline plot next to it)");
  cmd->add_option("--plot", c->plot_path,
                  "roofline plot (SVG: flop per byte against GFLOP/s under the measured roofs; default: next to "
                  "--json, NAME.roofline.svg)");
  cmd->add_flag("--static-kernels", c->static_kernels,
                "run the kernels and the FMA peak on this build's static Highway target instead of the CPU's best");
  cmd->add_option("--threads", c->threads, "decode attention also on this many threads (split-K)")
      ->check(integer_in(1, 1024));
}

}  // namespace headrecon::cli
