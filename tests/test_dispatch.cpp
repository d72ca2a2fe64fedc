// Runtime dispatch (headrecon::dispatch, built once for every target) gives
// the same results as the static-dispatch front doors.
#include <catch2/catch.hpp>

#include <random>
#include <string>
#include <vector>

#include "headrecon/cpu/attention.hpp"
#include "headrecon/cpu/dispatch.hpp"
#include "headrecon/cpu/kv_attention.hpp"
#include "headrecon/cpu/reconstruct.hpp"
#include "headrecon/kv_pool.hpp"
#include "headrecon/kv_store.hpp"
#include "headrecon/thread_pool.hpp"

using namespace headrecon;

TEST_CASE("runtime dispatch matches static dispatch", "[kernel][dispatch]") {
  const std::string target = dispatch::target_name();
  WARN("runtime dispatch chose " << target << ", static target is " << hwy::TargetName(HWY_STATIC_TARGET));
  REQUIRE(!target.empty());
  const std::size_t d = 64, T = 50, H = 2;
  std::mt19937 rng(4);
  std::normal_distribution<float> g;
  std::vector<float> kv(2 * T * H * d), w(d * d), b(d, 0.5f), q(4 * d), o1(4 * d), o2(4 * d), y1(T * d), y2(T * d);
  for (auto& x : kv) x = g(rng);
  for (auto& x : w) x = g(rng) / 8.f;
  for (auto& x : q) x = g(rng);
  std::vector<HeadStream> ks, vs;
  for (std::size_t h = 0; h < H; ++h) {
    ks.push_back({kv.data(), DType::f32, std::ptrdiff_t(h * d), std::ptrdiff_t(H * d), nullptr, 0, 0});
    vs.push_back({kv.data(), DType::f32, std::ptrdiff_t(T * H * d + h * d), std::ptrdiff_t(H * d), nullptr, 0, 0});
  }
  const AttentionLayerPlan plan = full_attention_plan(4, H, d);
  std::vector<float> work(decode_attention_workspace_floats(plan));
  DecodeAttentionArgs a{&plan, q.data(), 0.125f, 0, nullptr, nullptr, T, ks.data(), vs.data(), o1.data(), work.data(), work.size()};
  decode_attention(a);
  a.out = o2.data();
  dispatch::decode_attention(a);
  for (std::size_t i = 0; i < o1.size(); ++i) REQUIRE(o1[i] == Approx(o2[i]).margin(1e-5));
  const std::uint32_t ref = 0;
  ReconTarget t1{w.data(), b.data(), &ref, 1, {y1.data(), DType::f32, 0, std::ptrdiff_t(d), nullptr, 0, 0}};
  ReconTarget t2 = t1;
  t2.out.base = y2.data();
  std::vector<float> rw(reconstruct_workspace_floats(1, d));
  reconstruct({d, 0, T, ks.data(), 1, &t1, 1, rw.data(), rw.size()});
  dispatch::reconstruct({d, 0, T, ks.data(), 1, &t2, 1, rw.data(), rw.size()});
  for (std::size_t i = 0; i < y1.size(); ++i) REQUIRE(y1[i] == Approx(y2[i]).margin(1e-4));
}

TEST_CASE("attend() with dispatch::attention matches the static kernel over a KvStore", "[kernel][dispatch][store]") {
  // SmolLM2's shape: 3 KV heads of 64, 9 query heads; head 2 rebuilt (K and V)
  // from heads 0 and 1, so each reference stream is read by 6 query vectors
  // (the AMX tiles for bf16 where the CPU has them, the FMA tiles for f32).
  constexpr std::size_t d = 64, kv = 3, H = 9, T = 300;
  std::mt19937 rng(5);
  std::normal_distribution<float> g;
  auto target = [&] {
    TargetMap t;
    t.target = {0, 2};
    t.refs = {{0, 0}, {0, 1}};
    t.weight.resize(2 * d * d);
    for (auto& w : t.weight) w = g(rng) / 12.f;
    t.bias.assign(d, 0.25f);
    return t;
  };
  Plan plan;
  plan.head_dim = d;
  plan.n_layers = 1;
  plan.sink_tokens = 4;
  plan.kinds = {KindPlan{Kind::k, kv, {{target()}}, {}}, KindPlan{Kind::v, kv, {{target()}}, {}}};
  plan.validate();
  const RefCacheLayout layout(plan, kv);
  std::vector<float> k(T * kv * d), v(T * kv * d), q(H * d), o1(H * d), o2(H * d);
  for (auto& x : k) x = g(rng);
  for (auto& x : v) x = g(rng);
  for (auto& x : q) x = g(rng);
  for (const DType dt : {DType::f32, DType::bf16}) {
    KvStoreOptions opt;
    opt.n_q_heads = H;
    opt.dtype = dt;
    opt.n_blocks = T / 16 + 1;
    KvPool pool(KvStore::pool_bytes(layout, opt));
    KvStore store(layout, opt, pool.data(), pool.size());
    const SequenceId s = store.add_sequence();
    const std::size_t pos = store.extend(s, T);
    store.append(s, 0, pos, erase(make_view(k.data(), k.size(), Extents3{T, kv, d}, Layout::token_major)),
                 erase(make_view(v.data(), v.size(), Extents3{T, kv, d}, Layout::token_major)));
    AttentionLimits lim;
    lim.max_tokens = T;
    lim.split_tokens = 64;  // several split-K tasks
    lim.workers = 2;
    AttentionWorkspace ws(store, lim);
    ThreadPool threads(2);
    attend(store, 0, {{s, T - 1, 1, q.data(), o1.data()}}, ws, threads.parallel_for());
    attend(store, 0, {{s, T - 1, 1, q.data(), o2.data()}}, ws, threads.parallel_for(), dispatch::attention);
    for (std::size_t i = 0; i < o1.size(); ++i) REQUIRE(o1[i] == Approx(o2[i]).margin(1e-5));
  }
}
