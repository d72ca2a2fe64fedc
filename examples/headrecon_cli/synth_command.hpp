#pragma once
// `headrecon synth`: writes activations with planted linear structure.

#include <ostream>
#include <string>
#include <vector>

#include <random>

#include "command_line.hpp"
#include "headrecon/activations_io.hpp"
#include "headrecon/projections_io.hpp"
#include "headrecon/synthetic.hpp"
#include "output_file.hpp"

namespace headrecon::cli {

struct SynthConfig {
  std::string out;
  SyntheticSpec spec;
  std::size_t tokens = 8192, seq_len = 1024;
  DType dtype = DType::f32;
  std::string projections;  ///< also write random output projections here (for strategy loss)
};

inline void run_synth(const SynthConfig& c, std::ostream& os) {
  const SyntheticModel model(c.spec);
  KindHeads heads;
  for (Kind k : {Kind::q, Kind::k, Kind::v}) heads[k] = std::size_t(model.n_heads(k));
  const std::size_t d = std::size_t(c.spec.head_dim), L = std::size_t(c.spec.n_layers);
  ActivationWriter w(c.out, L, c.tokens, d, heads, c.dtype, /*post_rope=*/true, /*has_positions=*/true,
                     {{"generator", "headrecon synth"}, {"seed", std::to_string(c.spec.seed)}});
  const std::size_t batch = 1024;
  std::vector<float> buf;
  for (std::size_t t0 = 0; t0 < c.tokens; t0 += batch) {
    const std::size_t n = std::min(batch, c.tokens - t0);
    for (std::size_t l = 0; l < L; ++l)
      for (Kind k : {Kind::q, Kind::k, Kind::v}) {
        buf.resize(n * heads[k] * d);
        model.generate(k, std::int32_t(l), t0, n, buf.data());
        w.write(l, k, t0, make_view<const float>(buf.data(), buf.size(), Extents3{n, heads[k], d}, Layout::token_major));
      }
    std::vector<std::int32_t> pos(n);
    for (std::size_t i = 0; i < n; ++i) pos[i] = std::int32_t((t0 + i) % c.seq_len);
    w.write_positions(t0, pos.data(), n);
  }
  w.finish();
  if (!c.projections.empty()) {
    // N(0, 1/(H·d)) output projections of width 4·d, one per layer (seeded).
    OutputProjections p;
    p.n_kv_heads = std::int32_t(heads.k);
    std::mt19937_64 rng(c.spec.seed * 7919 + 1);
    std::normal_distribution<float> g(0.f, 1.f / std::sqrt(float(heads.q * d)));
    for (std::size_t l = 0; l < L; ++l) {
      OutputProjection o;
      o.n_embd = 4 * d;
      o.n_q_heads = heads.q;
      o.head_dim = d;
      o.weight.resize(o.n_embd * heads.q * d);
      for (float& x : o.weight) x = g(rng);
      p.layers.push_back(std::move(o));
    }
    save_output_projections(p, c.projections, {{"generator", "headrecon synth (random)"}});
    os << "wrote " << c.projections << ": random output projections [" << 4 * d << ", " << heads.q * d << "] per layer\n";
  }
  os << "wrote " << c.out << ": " << L << " layers, " << c.tokens << " tokens (sequences of " << c.seq_len
     << "), q/k/v heads " << heads.q << "/" << heads.k << "/" << heads.v << ", head_dim " << d << ", "
     << dtype_name(c.dtype) << "\n";
  const std::int32_t base = model.n_base(Kind::k);
  if (base < std::int32_t(heads.k))
    os << "planted: in every layer and kind, " << (std::int32_t(heads.k) - base == 1 ? "head " : "heads ") << base
       << (std::int32_t(heads.k) - base == 1 ? "" : ".." + std::to_string(heads.k - 1))
       << " (K/V) " << (std::int32_t(heads.k) - base == 1 ? "is a linear map" : "are linear maps")
       << " of two of heads 0.." << base - 1 << " plus noise " << c.spec.noise << "\n";
  else
    os << "planted: none for K/V - with " << heads.k << (heads.k == 1 ? " head" : " heads")
       << " per layer every head is an independent base head (derived heads need at least 3)\n";
}

/// Registers `headrecon synth`.
inline void add_synth_command(Tool& tool) {
  struct Opts {
    SynthConfig c;
    std::string dtype = "f32";
  };
  auto o = std::make_shared<Opts>();
  SynthConfig& c = o->c;
  c.spec.n_layers = 4;
  c.spec.n_heads = 4;
  c.spec.q_per_kv = 2;
  c.spec.head_dim = 32;
  c.spec.noise = 0.1;
  c.spec.seed = 1;
  CLI::App* cmd = tool.add("synth", "write activations with planted linear structure (and random output projections)",
                           [o] {
                             SynthConfig& c = o->c;
                             const std::string& dt = o->dtype;
                             if (dt != "f32" && dt != "f16" && dt != "bf16")
                               detail::fail("--dtype must be f32, f16 or bf16, got ", dt);
                             c.dtype = dt == "f32" ? DType::f32 : dt == "f16" ? DType::f16 : DType::bf16;
                             if (c.spec.noise < 0) detail::fail("--noise must be >= 0, got ", c.spec.noise);
                             check_output_path("--out", c.out);
                             if (!c.projections.empty()) {
                               if (c.projections == c.out) detail::fail("--projections and --out name the same file");
                               check_output_path("--projections", c.projections, {c.out});
                             }
                             run_synth(c, std::cout);
                             return 0;
                           });
  cmd->add_option("--out", c.out, "activations file to write")->required();
  cmd->add_option("--layers", c.spec.n_layers, "layers")->check(integer_in(1, 1024));
  cmd->add_option("--heads", c.spec.n_heads, "K/V heads per layer")->check(integer_in(1, 1024));
  cmd->add_option("--q-per-kv", c.spec.q_per_kv, "query heads per K/V head")->check(integer_in(1, 64));
  cmd->add_option("--dim", c.spec.head_dim, "head dimension")->check(integer_in(1, 1024));
  cmd->add_option("--tokens", c.tokens, "tokens")->check(integer_in(1, 1LL << 32));
  cmd->add_option("--seq-len", c.seq_len, "sequence length (positions restart)")->check(integer_in(1, 1LL << 32));
  cmd->add_option("--noise", c.spec.noise, "noise added to the planted maps")->check(finite());
  cmd->add_option("--seed", c.spec.seed, "seed")->check(integer_in(0, 1LL << 40));
  cmd->add_option("--dtype", o->dtype, "f32|f16|bf16");
  cmd->add_option("--projections", c.projections, "also write random output projections here (strategy loss)");
}

}  // namespace headrecon::cli
