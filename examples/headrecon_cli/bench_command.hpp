#pragma once
// `headrecon bench`: the machine's limits and every kernel ratio measured in
// one run, as a table a person reads and a JSON file. Single-threaded on both
// sides (OpenBLAS is set to one thread), static Highway target of this build.
#include <cstdio>
#include <fstream>
#include <ostream>
#include <string>
#include <vector>

#include "attention_problem.hpp"
#include "command_line.hpp"
#include "output_file.hpp"
#include <nlohmann/json.hpp>

#include "headrecon/moments.hpp"
#include "machine_limits.hpp"
#include "recon_problem.hpp"

extern "C" void openblas_set_num_threads(int);

namespace headrecon::cli {

struct BenchConfig {
  bool quick = false;     // small sizes (CI smoke run)
  std::string json_path;  // empty: no JSON
};

inline void run_bench(const BenchConfig& cfg, std::ostream& os) {
  using namespace headrecon::bench;
  using json = nlohmann::ordered_json;
  openblas_set_num_threads(1);
  const double tmin = cfg.quick ? 0.02 : 0.25;
  json root = json::object();
  char line[512];

  // Machine limits, measured now.
  const double fma = fma_peak_gflops(), triad = cfg.quick ? 0.0 : triad_gbps();
  ReconProblem gemm(cfg.quick ? 256 : 2048, 128);
  const double sgemm = gemm.flops() / seconds_per_call([&] { gemm.blas(); }, tmin) / 1e9;
  os << "headrecon bench (Highway static target " << hwy::TargetName(HWY_STATIC_TARGET) << ", one thread)\n\n";
  std::snprintf(line, sizeof line,
                "machine: f32 FMA peak %.0f GFLOP/s, OpenBLAS sgemm %.0f GFLOP/s, triad %.1f GB/s\n\n", fma, sgemm, triad);
  os << line;
  root["machine"] = {{"target", hwy::TargetName(HWY_STATIC_TARGET)},
                     {"fma_peak_gflops", fma},
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

  // Decode attention.
  os << "\ndecode attention, one sequence and layer, 4 sink tokens; absorbed = reference-only cache\n"
        "(goal: full/absorbed >= 1.8 at >= 8k, absorbed/refs-only <= 1.15)\n";
  os << "  model          cache  context  full us  absorbed us  full/abs  abs/refs-only  rta/abs  abs GB/s  of triad\n";
  json attn = json::array();
  struct Row { const ModelShape* shape; std::size_t T; CacheType dt; };
  std::vector<Row> rows;
  const std::vector<std::size_t> ctx = cfg.quick ? std::vector<std::size_t>{1024} : std::vector<std::size_t>{1024, 4096, 8192, 16384, 32768};
  for (CacheType dt : {CacheType::parse("f32"), CacheType::parse("bf16")})
    for (std::size_t T : ctx) rows.push_back({&kLlama3_8B, T, dt});
  for (std::size_t T : cfg.quick ? std::vector<std::size_t>{} : std::vector<std::size_t>{8192, 32768})
    rows.push_back({&kLlama3_8B_2refs, T, CacheType::parse("f32")});
  for (CacheType dt : {CacheType::parse("f32"), CacheType::parse("bf16")})
    for (std::size_t T : cfg.quick ? std::vector<std::size_t>{1024} : std::vector<std::size_t>{1024, 8192, 32768})
      rows.push_back({&kSmolLM2, T, dt});
  for (const Row& r : rows) {
    AttentionProblem p(*r.shape, r.T, r.dt);
    const ParallelFor one;
    const double tf = seconds_per_call([&] { p.full(one); }, tmin), ta = seconds_per_call([&] { p.absorbed(one); }, tmin);
    const double tr = seconds_per_call([&] { p.refs_only(one); }, tmin);
    const double trta = seconds_per_call([&] { p.reconstruct_then_attend(); }, tmin / 2);
    const double gbs = p.ref_bytes() / ta / 1e9;
    std::snprintf(line, sizeof line, "  %-13s  %-5s  %7zu  %7.0f  %11.0f  %8.2f  %13.2f  %7.2f  %8.1f  %8.2f\n",
                  r.shape->name.c_str(), r.dt.name().c_str(), r.T, tf * 1e6, ta * 1e6, tf / ta, ta / tr,
                  trta / ta, gbs, triad > 0 ? gbs / triad : 0.0);
    os << line;
    attn.push_back({{"model", r.shape->name},
                    {"cache", r.dt.name()},
                    {"context", r.T},
                    {"full_us", tf * 1e6},
                    {"absorbed_us", ta * 1e6},
                    {"refs_only_us", tr * 1e6},
                    {"reconstruct_then_attend_us", trta * 1e6},
                    {"full_over_absorbed", tf / ta},
                    {"absorbed_over_refs_only", ta / tr},
                    {"absorbed_gbps", gbs},
                    {"full_gbps", p.full_bytes() / tf / 1e9}});
  }
  root["decode_attention"] = std::move(attn);
  if (!cfg.json_path.empty()) {
    write_stream_atomically(cfg.json_path, [&](std::ostream& f) { f << root.dump() << "\n"; });
    os << "\nJSON written to " << cfg.json_path << "\n";
  }
}

/// Registers `headrecon bench`.
inline void add_bench_command(Tool& tool) {
  auto c = std::make_shared<BenchConfig>();
  CLI::App* cmd = tool.add("bench", "kernel speed as ratios against baselines measured in the same run", [c] {
    if (!c->json_path.empty()) check_output_path("--json", c->json_path);
    run_bench(*c, std::cout);
    return 0;
  });
  cmd->add_flag("--quick", c->quick, "small sizes (a smoke run)");
  cmd->add_option("--json", c->json_path, "also write the results as JSON");
}

}  // namespace headrecon::cli
