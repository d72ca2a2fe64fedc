// Embedding headrecon in an engine (the README walks through this file): load
// a plan, make a KV store, append each layer's K/V, attend. The engine's K/V
// and queries come from an activations file here; the run checks the result
// against a full cache of the same tokens and exits non-zero if they differ.
#include <cmath>
#include <cstdio>
#include <vector>

#include "headrecon/cpu/kv_attention.hpp"
#include "headrecon/headrecon.hpp"

using namespace headrecon;

int main(int argc, char** argv) {
  if (argc != 3) return std::fprintf(stderr, "usage: embed_engine PLAN ACTIVATIONS\n"), 2;
  const Plan plan = load_plan(argv[1]);  // 1. a plan fitted offline (headrecon fit)
  ActivationReader acts(argv[2]);        //    stands in for the engine's forward pass (f32 Q, K, V)
  if (acts.dtype(Kind::q, 0) != DType::f32) return std::fprintf(stderr, "embed_engine: needs f32 activations\n"), 2;
  const auto n_kv = std::int32_t(acts.n_heads(Kind::k));
  const std::size_t T = std::min<std::size_t>(acts.n_tokens(), 1000), H = acts.n_heads(Kind::q), d = acts.head_dim();
  const Plan no_plan = Plan::none(plan.n_layers, plan.head_dim);  // the same model without reconstruction
  const RefCacheLayout layout(plan, n_kv), full_layout(no_plan, n_kv);

  KvStoreOptions opt;  // 2. a paged store: blocks of 16 positions from a pool the engine owns
  opt.n_q_heads = H;
  opt.block_tokens = 16;
  opt.n_blocks = T / 16 + 1;
  KvPool pool(KvStore::pool_bytes(layout, opt)), full_pool(KvStore::pool_bytes(full_layout, opt));  // huge pages
  KvStore store(layout, opt, pool.data(), pool.size()), full(full_layout, opt, full_pool.data(), full_pool.size());
  AttentionLimits limits;
  limits.max_tokens = T;
  AttentionWorkspace ws(store, limits), full_ws(full, limits);
  const SequenceId seq = store.add_sequence(), full_seq = full.add_sequence();

  std::vector<std::byte> kb, vb, qb;
  std::vector<float> out(H * d), want(H * d);
  double err = 0, norm = 0;
  for (std::size_t t = 0; t < T; ++t) {  // 3. per token (or chunk of tokens): extend, then per layer append + attend
    const std::size_t pos = store.extend(seq, 1);
    full.extend(full_seq, 1);
    for (std::size_t layer = 0; layer < std::size_t(plan.n_layers); ++layer) {
      const AnyHeadsView k = acts.read(layer, Kind::k, t, 1, kb), v = acts.read(layer, Kind::v, t, 1, vb);
      const float* q = static_cast<const float*>(acts.read(layer, Kind::q, t, 1, qb).data);
      store.append(seq, layer, pos, k, v);  // keeps what the plan caches, in the store's dtype
      attend(store, layer, {{seq, pos, 1, q, out.data()}}, ws);
      full.append(full_seq, layer, pos, k, v);
      attend(full, layer, {{full_seq, pos, 1, q, want.data()}}, full_ws);
      for (std::size_t i = 0; i < out.size(); ++i) err += std::pow(out[i] - want[i], 2), norm += std::pow(want[i], 2);
    }
  }
  std::printf("KV bytes per token: %zu reference-only vs %zu full; relative error vs the full cache %.2e\n",
              store.bytes_per_token(), full.bytes_per_token(), std::sqrt(err / norm));
  return std::sqrt(err / norm) < 1e-3 ? 0 : 1;
}
