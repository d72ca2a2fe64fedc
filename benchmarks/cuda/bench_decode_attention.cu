// Decode attention on the GPU, Llama-3-8B shapes (32 query heads, 8 KV heads,
// head_dim 128, bf16 cache): a reference-only cache with 50% of the KV heads
// rebuilt (K and V; 4 cached heads, each target from `--refs` of them, 4 sink
// tokens exact) against plain full-cache attention, both through
// headrecon::cuda::decode_attention, at contexts 4k..128k and batches 1..64.
//
// Limits measured in the same run: a device-to-device cudaMemcpy (bytes read
// + bytes written per second). Each line reports time per call, bytes read
// (cache + sinks + maps), achieved GB/s and that as a fraction of the copy
// bandwidth, and the speedup of the reference-only cache over the full one.
//
//   bench_cuda_decode_attention [--contexts 4096,8192,...] [--batches 1,4,16,64]
//       [--refs 4] [--layout paged|token] [--math auto|simt|tc] [--min-ms 100]
//       [--json FILE]
//
// PyTorch's scaled_dot_product_attention on the same full cache shapes:
// benchmarks/cuda/sdpa_baseline.py.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "headrecon/cuda/cuda.cuh"
#include "headrecon/ref_cache.hpp"

namespace {
using namespace headrecon;
namespace hc = headrecon::cuda;

#define CUDA_CHECK(expr)                                                                                 \
  do {                                                                                                   \
    const cudaError_t e_ = (expr);                                                                       \
    if (e_ != cudaSuccess) {                                                                             \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_));        \
      std::exit(1);                                                                                      \
    }                                                                                                    \
  } while (0)

void status_check(const hc::Status& s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, s.message().c_str());
    std::exit(1);
  }
}

// Fills n bf16 values with a cheap hash-based pseudo-normal (sum of uniforms).
__global__ void fill_bf16(std::uint16_t* x, std::size_t n, std::uint32_t seed) {
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n; i += std::size_t(gridDim.x) * blockDim.x) {
    std::uint32_t h = std::uint32_t(i) * 2654435761u ^ seed ^ std::uint32_t(i >> 32) * 40503u;
    float s = 0.f;
    for (int k = 0; k < 4; ++k) {
      h ^= h >> 13;
      h *= 0x5bd1e995u;
      h ^= h >> 15;
      s += float(h & 0xffffu) / 65536.f - 0.5f;
    }
    x[i] = __bfloat16_as_ushort(__float2bfloat16_rn(s * 1.7f));
  }
}

struct Buf {
  void* p = nullptr;
  explicit Buf(std::size_t bytes) { CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 1)); }
  ~Buf() { cudaFree(p); }
  Buf(const Buf&) = delete;
  template <class T>
  T* as() const {
    return static_cast<T*>(p);
  }
};

template <class T>
void to_device(void* dst, const std::vector<T>& v) {
  CUDA_CHECK(cudaMemcpy(dst, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
}

std::vector<std::size_t> parse_list(const char* s) {
  std::vector<std::size_t> v;
  for (const char* p = s; *p;) {
    v.push_back(std::strtoull(p, nullptr, 10));
    p = std::strchr(p, ',');
    if (!p) break;
    ++p;
  }
  return v;
}

constexpr std::size_t kQ = 32, kKV = 8, kD = 128, kCached = 4, kSinks = 4, kPage = 16;

Plan llama_plan(std::size_t refs) {
  Plan plan;
  plan.head_dim = int(kD);
  plan.n_layers = 1;
  plan.sink_tokens = int(kSinks);
  std::mt19937 rng(7);
  std::normal_distribution<float> g;
  for (Kind k : {Kind::k, Kind::v}) {
    KindPlan kp{k, int(kKV), {{}}, {}};
    for (std::size_t h = kCached; h < kKV; ++h) {
      TargetMap t;
      t.target = {0, int(h)};
      for (std::size_t r = 0; r < refs; ++r) t.refs.push_back({0, int((h + r) % kCached)});
      t.weight.resize(refs * kD * kD);
      for (auto& w : t.weight) w = g(rng) / std::sqrt(float(refs * kD));
      t.bias.assign(kD, 0.1f);
      kp.layers[0].push_back(std::move(t));
    }
    plan.kinds.push_back(std::move(kp));
  }
  return plan;
}

// A K or V cache of `streams` heads for `batch` sequences of `tokens` tokens,
// paged (pages of 16 tokens [16][streams][d], shuffled) or token-major per
// sequence ([tokens][streams][d]); HeadStreams [batch × streams].
struct Cache {
  std::size_t streams, batch, tokens, pages_per_seq;
  bool paged;
  Buf data, table;
  std::vector<HeadStream> hs;
  Cache(std::size_t streams_, std::size_t batch_, std::size_t tokens_, bool paged_, std::mt19937& rng, std::uint32_t seed)
      : streams(streams_), batch(batch_), tokens(tokens_), pages_per_seq((tokens_ + kPage - 1) / kPage), paged(paged_),
        data(elems() * 2), table(batch_ * pages_per_seq * sizeof(std::int32_t)) {
    fill_bf16<<<1024, 256>>>(data.as<std::uint16_t>(), elems(), seed);
    CUDA_CHECK(cudaGetLastError());
    std::vector<std::int32_t> t(batch * pages_per_seq);
    std::iota(t.begin(), t.end(), 0);
    std::shuffle(t.begin(), t.end(), rng);
    to_device(table.p, t);
    for (std::size_t b = 0; b < batch; ++b)
      for (std::size_t s = 0; s < streams; ++s) {
        if (paged) {
          PagedCache pc;
          pc.pool = data.p;
          pc.dtype = DType::bf16;
          pc.block_table = table.as<std::int32_t>() + b * pages_per_seq;
          pc.block_tokens = kPage;
          pc.heads = streams;
          pc.head_dim = kD;
          hs.push_back(pc.stream(s));
        } else {
          HeadStream h;
          h.base = data.p;
          h.dtype = DType::bf16;
          h.offset = std::ptrdiff_t((b * tokens * streams + s) * kD);
          h.token_stride = std::ptrdiff_t(streams * kD);
          hs.push_back(h);
        }
      }
  }
  std::size_t elems() const { return batch * (paged ? pages_per_seq * kPage : tokens) * streams * kD; }
};

struct Runner {
  hc::DeviceAttentionPlan dp;
  Buf plan_buf, ws, streams, lens, out;
  hc::DecodeAttentionArgs a;
  Runner(const AttentionLayerPlan& ap, std::size_t batch, std::size_t tokens, std::size_t n_sink, const Cache* sink_k,
         const Cache* sink_v, const Cache& k, const Cache& v, const float* q, hc::Math math, int sms)
      : dp(build(ap)), plan_buf(dp.device_bytes()),
        ws(hc::decode_attention_workspace_bytes(dp, batch, tokens, hc::default_split_tokens(batch, tokens, sms))),
        streams(sizeof(HeadStream) * (k.hs.size() + v.hs.size() + (sink_k ? 2 * sink_k->hs.size() : 0))),
        lens(batch * sizeof(std::int32_t)), out(batch * kQ * kD * sizeof(float)) {
    status_check(dp.upload(plan_buf.p, dp.device_bytes()), "upload");
    std::vector<HeadStream> all = k.hs;
    all.insert(all.end(), v.hs.begin(), v.hs.end());
    if (sink_k) all.insert(all.end(), sink_k->hs.begin(), sink_k->hs.end()), all.insert(all.end(), sink_v->hs.begin(), sink_v->hs.end());
    to_device(streams.p, all);
    to_device(lens.p, std::vector<std::int32_t>(batch, std::int32_t(tokens)));
    const HeadStream* hs = streams.as<HeadStream>();
    a.plan = &dp;
    a.cache_dtype = DType::bf16;
    a.batch = batch;
    a.q = q;
    a.scale = 1.f / std::sqrt(float(kD));
    a.n_sink = n_sink;
    a.seq_lens = lens.as<std::int32_t>();
    a.max_seq_len = tokens;
    a.split_tokens = hc::default_split_tokens(batch, tokens, sms);
    a.k_streams = hs;
    a.v_streams = hs + k.hs.size();
    a.sink_k = sink_k ? hs + k.hs.size() + v.hs.size() : nullptr;
    a.sink_v = sink_k ? hs + k.hs.size() + v.hs.size() + sink_k->hs.size() : nullptr;
    a.out = out.as<float>();
    a.workspace = ws.p;
    a.workspace_bytes = hc::decode_attention_workspace_bytes(dp, batch, tokens, a.split_tokens);
    a.math = math;
  }
  static hc::DeviceAttentionPlan build(const AttentionLayerPlan& ap) {
    hc::DeviceAttentionPlan p;
    status_check(hc::DeviceAttentionPlan::build(ap, p), "build");
    return p;
  }
  void run() { status_check(hc::decode_attention(a, nullptr), "decode_attention"); }
  // Milliseconds per call: one warm-up, then enough calls for min_ms.
  double time_ms(double min_ms) {
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    run();
    CUDA_CHECK(cudaEventRecord(e0));
    run();
    CUDA_CHECK(cudaEventRecord(e1));
    CUDA_CHECK(cudaEventSynchronize(e1));
    float one = 0.f;
    CUDA_CHECK(cudaEventElapsedTime(&one, e0, e1));
    const int reps = std::clamp(int(min_ms / std::max(one, 1e-3f)), 5, 2000);
    CUDA_CHECK(cudaEventRecord(e0));
    for (int i = 0; i < reps; ++i) run();
    CUDA_CHECK(cudaEventRecord(e1));
    CUDA_CHECK(cudaEventSynchronize(e1));
    float total = 0.f;
    CUDA_CHECK(cudaEventElapsedTime(&total, e0, e1));
    CUDA_CHECK(cudaEventDestroy(e0));
    CUDA_CHECK(cudaEventDestroy(e1));
    return double(total) / reps;
  }
  bool finite() const {
    std::vector<float> o(a.batch * kQ * kD);
    CUDA_CHECK(cudaMemcpy(o.data(), out.p, o.size() * sizeof(float), cudaMemcpyDeviceToHost));
    for (float x : o)
      if (!std::isfinite(x)) return false;
    return true;
  }
};

// Device-to-device copy bandwidth: (read + written bytes) / s over `bytes`.
double copy_gbps(std::size_t bytes) {
  Buf a(bytes), b(bytes);
  CUDA_CHECK(cudaMemset(a.p, 1, bytes));
  cudaEvent_t e0, e1;
  CUDA_CHECK(cudaEventCreate(&e0));
  CUDA_CHECK(cudaEventCreate(&e1));
  CUDA_CHECK(cudaMemcpy(b.p, a.p, bytes, cudaMemcpyDeviceToDevice));
  const int reps = 20;
  CUDA_CHECK(cudaEventRecord(e0));
  for (int i = 0; i < reps; ++i) CUDA_CHECK(cudaMemcpyAsync(b.p, a.p, bytes, cudaMemcpyDeviceToDevice));
  CUDA_CHECK(cudaEventRecord(e1));
  CUDA_CHECK(cudaEventSynchronize(e1));
  float ms = 0.f;
  CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
  CUDA_CHECK(cudaEventDestroy(e0));
  CUDA_CHECK(cudaEventDestroy(e1));
  return 2.0 * double(bytes) * reps / (ms * 1e-3) / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::size_t> contexts = {4096, 8192, 16384, 32768, 65536, 131072}, batches = {1, 4, 16, 64};
  std::size_t refs = 4;
  bool paged = true;
  hc::Math math = hc::Math::automatic;
  double min_ms = 100;
  const char* json = nullptr;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : "";
    if (k == "--contexts") contexts = parse_list(v), ++i;
    else if (k == "--batches") batches = parse_list(v), ++i;
    else if (k == "--refs") refs = std::strtoull(v, nullptr, 10), ++i;
    else if (k == "--layout") paged = std::string(v) != "token", ++i;
    else if (k == "--math") math = std::string(v) == "simt" ? hc::Math::simt : std::string(v) == "tc" ? hc::Math::tensor_cores : hc::Math::automatic, ++i;
    else if (k == "--min-ms") min_ms = std::atof(v), ++i;
    else if (k == "--json") json = v, ++i;
    else {
      std::fprintf(stderr, "usage: %s [--contexts 4096,...] [--batches 1,...] [--refs 4] [--layout paged|token] [--math auto|simt|tc] [--min-ms 100] [--json FILE]\n", argv[0]);
      return 2;
    }
  }
  if (refs < 1 || refs > kCached) {
    std::fprintf(stderr, "--refs must be 1..%zu\n", kCached);
    return 2;
  }
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::fprintf(stderr, "no CUDA device\n");
    return 1;
  }
  int dev = 0, sms = 0;
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  const double copy = copy_gbps(std::size_t(1) << 30);
  std::printf("device: %s, %d SMs, %.1f GiB; D2D cudaMemcpy %.0f GB/s (read + write)\n", prop.name, sms,
              double(prop.totalGlobalMem) / (1u << 30), copy);
  std::printf("Llama-3-8B layer: %zu q heads, %zu KV heads, d=%zu, bf16 %s cache; reference-only: %zu of %zu KV heads "
              "rebuilt (K and V), %zu refs each, %zu sink tokens\n",
              kQ, kKV, kD, paged ? "paged (16-token pages)" : "token-major", kKV - kCached, kKV, refs, kSinks);
  std::printf("%8s %6s %10s %10s %8s %10s %10s %8s %8s\n", "context", "batch", "full ms", "ref ms", "speedup",
              "full GB/s", "ref GB/s", "full/cp", "ref/cp");

  const Plan plan = llama_plan(refs);
  const RefCacheLayout layout(plan, int(kKV));
  const AttentionLayerPlan ref_plan = make_attention_plan(layout, 0, kQ);
  const AttentionLayerPlan full_plan = full_attention_plan(kQ, kKV, kD);
  const std::size_t map_bytes = 2 * (kKV - kCached) * (refs * kD * kD + kD) * sizeof(float);
  std::mt19937 rng(1);
  std::string rows;
  for (std::size_t T : contexts)
    for (std::size_t B : batches) {
      const std::size_t full_bytes = B * T * 2 * kKV * kD * 2, ref_bytes = B * (T - kSinks) * 2 * kCached * kD * 2;
      std::size_t free_b = 0, total_b = 0;
      CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
      if (double(full_bytes + ref_bytes) * 1.05 + (1u << 30) > double(free_b)) {
        std::printf("%8zu %6zu   skipped: needs %.1f GB, %.1f GB free\n", T, B, double(full_bytes + ref_bytes) / 1e9,
                    double(free_b) / 1e9);
        continue;
      }
      Buf q(B * kQ * kD * sizeof(float));
      {
        std::vector<float> hq(B * kQ * kD);
        std::normal_distribution<float> g;
        for (auto& x : hq) x = g(rng);
        to_device(q.p, hq);
      }
      double t_full = 0, t_ref = 0;
      bool ok = true;
      {
        Cache fk(kKV, B, T, paged, rng, 1), fv(kKV, B, T, paged, rng, 2);
        Runner full(full_plan, B, T, 0, nullptr, nullptr, fk, fv, q.as<float>(), math, sms);
        t_full = full.time_ms(min_ms);
        ok = ok && full.finite();
      }
      {
        Cache rk(kCached, B, T - kSinks, paged, rng, 3), rv(kCached, B, T - kSinks, paged, rng, 4);
        Cache sk(kKV, B, kSinks, false, rng, 5), sv(kKV, B, kSinks, false, rng, 6);
        Runner ref(ref_plan, B, T, kSinks, &sk, &sv, rk, rv, q.as<float>(), math, sms);
        t_ref = ref.time_ms(min_ms);
        ok = ok && ref.finite();
      }
      const double ref_read = double(ref_bytes) + double(B * kSinks * 2 * kKV * kD * 2) + double(map_bytes);
      const double gf = double(full_bytes) / (t_full * 1e-3) / 1e9, gr = ref_read / (t_ref * 1e-3) / 1e9;
      std::printf("%8zu %6zu %10.3f %10.3f %7.2fx %10.0f %10.0f %8.2f %8.2f%s\n", T, B, t_full, t_ref, t_full / t_ref, gf,
                  gr, gf / copy, gr / copy, ok ? "" : "  NON-FINITE OUTPUT");
      char line[512];
      std::snprintf(line, sizeof line,
                    "%s{\"context\": %zu, \"batch\": %zu, \"full_ms\": %.6f, \"ref_ms\": %.6f, \"speedup\": %.4f, "
                    "\"full_gbps\": %.1f, \"ref_gbps\": %.1f, \"finite\": %s}",
                    rows.empty() ? "" : ",\n    ", T, B, t_full, t_ref, t_full / t_ref, gf, gr, ok ? "true" : "false");
      rows += line;
    }
  if (json) {
    FILE* f = std::fopen(json, "w");
    if (!f) {
      std::fprintf(stderr, "cannot write %s\n", json);
      return 1;
    }
    std::fprintf(f,
                 "{\n  \"device\": \"%s\", \"copy_gbps\": %.1f, \"q_heads\": %zu, \"kv_heads\": %zu, \"head_dim\": %zu, "
                 "\"rebuilt_kv_heads\": %zu, \"refs\": %zu, \"sinks\": %zu, \"layout\": \"%s\",\n  \"rows\": [\n    %s\n  ]\n}\n",
                 prop.name, copy, kQ, kKV, kD, kKV - kCached, refs, kSinks, paged ? "paged" : "token", rows.c_str());
    std::fclose(f);
  }
  return 0;
}
