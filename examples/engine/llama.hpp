#pragma once
// A small f32 forward pass of the Llama family (GGUF architectures "llama" and
// "qwen2") for the example engine: token embedding, RMSNorm, RoPE, grouped-
// query causal attention over a KV cache, SwiGLU FFN, final norm, logits.
// Weight matrices stay in their GGUF types (quant_matrix.hpp); their products
// run on the engine's threads (matmul.hpp): quantized matrix-vector kernels
// for a few tokens, dequantized panels and sgemm for many. Hooks expose each
// layer's Q, K, V before and/or after RoPE.
//
// RoPE layout: llama.cpp rotates adjacent pairs (x[2i], x[2i+1]) for
// LLM_ARCH_LLAMA (the converter permutes the Q/K weight rows of HF checkpoints
// so that this equals HF's rotate_half on the original rows) and halves
// (x[i], x[i + n_rot/2]) ("NEOX") for qwen2. Captured Q/K are in the GGUF row
// order of the weights: for llama that is the permuted order, a fixed
// permutation of HF's components within each head.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <random>

#include "gguf.hpp"
#include "headrecon/parallel.hpp"
#include "kv_cache.hpp"
#include "matmul.hpp"
#include "quant_matrix.hpp"

namespace headrecon_engine {

/// Hyperparameters read from the GGUF metadata.
struct LlamaConfig {
  std::string arch;
  std::size_t n_layer = 0, n_embd = 0, n_head = 0, n_head_kv = 0, head_dim = 0, n_ff = 0,
              n_vocab = 0, n_ctx_train = 0, n_rot = 0;
  double rope_base = 10000.0, rms_eps = 1e-5;
  bool rope_neox = false;  // false: pairs (2i, 2i+1); true: (i, i + n_rot/2)
  bool tied_output = false;

  std::size_t q_dim() const { return n_head * head_dim; }
  std::size_t kv_dim() const { return n_head_kv * head_dim; }
};

/// The model's weights: matrices row-major [out][in] (GGUF ne[0] = in) in
/// their GGUF types, norm weights and biases as float.
class LlamaModel {
 public:
  struct Layer {
    std::vector<float> attn_norm, bq, bk, bv, ffn_norm;
    QuantMatrix wq, wk, wv, wo, w_gate, w_up, w_down;
  };

  explicit LlamaModel(const GgufFile& f) : path_(f.path()) {
    LlamaConfig& c = cfg_;
    c.arch = f.get_string("general.architecture");
    if (c.arch == "llama")
      c.rope_neox = false;
    else if (c.arch == "qwen2")
      c.rope_neox = true;
    else
      fail(path_, ": architecture '", c.arch, "' is not supported (supported: llama, qwen2)");
    const std::string a = c.arch + ".";
    c.n_layer = f.get_uint(a + "block_count");
    c.n_embd = f.get_uint(a + "embedding_length");
    c.n_ff = f.get_uint(a + "feed_forward_length");
    c.n_head = f.get_uint(a + "attention.head_count");
    c.n_head_kv = f.get_uint(a + "attention.head_count_kv", c.n_head);
    c.n_ctx_train = f.get_uint(a + "context_length", 0);
    if (c.n_layer == 0 || c.n_embd == 0 || c.n_head == 0 || c.n_head_kv == 0 || c.n_ff == 0)
      fail(path_, ": zero block_count, embedding_length, head_count, head_count_kv or feed_forward_length");
    if (c.n_head % c.n_head_kv != 0)
      fail(path_, ": head_count ", c.n_head, " is not a multiple of head_count_kv ", c.n_head_kv);
    c.head_dim = f.get_uint(a + "attention.key_length", c.n_embd / c.n_head);
    if (f.get_uint(a + "attention.value_length", c.head_dim) != c.head_dim)
      fail(path_, ": attention.value_length differs from key_length (not supported)");
    c.n_rot = f.get_uint(a + "rope.dimension_count", c.head_dim);
    if (c.n_rot > c.head_dim || c.n_rot % 2 != 0)
      fail(path_, ": rope.dimension_count ", c.n_rot, " must be even and <= head_dim ", c.head_dim);
    c.rope_base = f.get_float(a + "rope.freq_base", 10000.0);
    c.rms_eps = f.get_float(a + "attention.layer_norm_rms_epsilon");
    if (f.find(a + "rope.scaling.type") && f.get_string(a + "rope.scaling.type") != "none")
      fail(path_, ": rope scaling '", f.get_string(a + "rope.scaling.type"), "' is not supported");

    const GgufTensor& emb = f.tensor("token_embd.weight");
    if (emb.n_dims != 2 || emb.ne[0] != c.n_embd)
      fail(path_, ": tensor 'token_embd.weight' has shape ", emb.shape_str(), ", expected [", c.n_embd, ", n_vocab]");
    c.n_vocab = emb.ne[1];
    if (f.find(a + "vocab_size") && f.get_uint(a + "vocab_size") != c.n_vocab)
      fail(path_, ": ", a, "vocab_size = ", f.get_uint(a + "vocab_size"), " but token_embd.weight has ",
           c.n_vocab, " rows");
    tok_embd_ = load_matrix(f, "token_embd.weight", {c.n_embd, c.n_vocab});
    output_norm_ = load(f, "output_norm.weight", {c.n_embd});
    c.tied_output = f.find_tensor("output.weight") == nullptr;
    if (!c.tied_output) output_ = load_matrix(f, "output.weight", {c.n_embd, c.n_vocab});

    layers_.resize(c.n_layer);
    for (std::size_t l = 0; l < c.n_layer; ++l) {
      const std::string p = "blk." + std::to_string(l) + ".";
      Layer& L = layers_[l];
      L.attn_norm = load(f, p + "attn_norm.weight", {c.n_embd});
      L.wq = load_matrix(f, p + "attn_q.weight", {c.n_embd, c.q_dim()});
      L.wk = load_matrix(f, p + "attn_k.weight", {c.n_embd, c.kv_dim()});
      L.wv = load_matrix(f, p + "attn_v.weight", {c.n_embd, c.kv_dim()});
      L.wo = load_matrix(f, p + "attn_output.weight", {c.q_dim(), c.n_embd});
      if (f.find_tensor(p + "attn_q.bias")) {
        L.bq = load(f, p + "attn_q.bias", {c.q_dim()});
        L.bk = load(f, p + "attn_k.bias", {c.kv_dim()});
        L.bv = load(f, p + "attn_v.bias", {c.kv_dim()});
      }
      L.ffn_norm = load(f, p + "ffn_norm.weight", {c.n_embd});
      L.w_gate = load_matrix(f, p + "ffn_gate.weight", {c.n_embd, c.n_ff});
      L.w_up = load_matrix(f, p + "ffn_up.weight", {c.n_embd, c.n_ff});
      L.w_down = load_matrix(f, p + "ffn_down.weight", {c.n_ff, c.n_embd});
    }
  }

  const LlamaConfig& config() const { return cfg_; }
  const std::string& path() const { return path_; }
  AttentionShape attention_shape() const { return {cfg_.n_layer, cfg_.n_head, cfg_.n_head_kv, cfg_.head_dim}; }

  /// Replaces every weight by a random one of matching scale, keeping the
  /// architecture: each matrix (embedding, Q/K/V/O, FFN, untied output) by
  /// i.i.d. N(0, s²) with s the RMS of the trained matrix; norm weights by 1
  /// and biases by 0, as at initialization. Deterministic in `seed`.
  void randomize(std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    auto fill = [&](QuantMatrix& m) {
      if (m.empty()) return;
      std::vector<float> w = m.to_f32();
      double ss = 0;
      for (float x : w) ss += double(x) * x;
      std::normal_distribution<float> g(0.f, float(std::sqrt(ss / double(w.size()))));
      for (float& x : w) x = g(rng);
      m = QuantMatrix::from_f32(m.rows(), m.cols(), std::move(w));
    };
    fill(tok_embd_);
    if (!cfg_.tied_output) fill(output_);
    std::fill(output_norm_.begin(), output_norm_.end(), 1.f);
    for (Layer& L : layers_) {
      for (auto* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) fill(*w);
      for (auto* b : {&L.bq, &L.bk, &L.bv}) std::fill(b->begin(), b->end(), 0.f);
      std::fill(L.attn_norm.begin(), L.attn_norm.end(), 1.f);
      std::fill(L.ffn_norm.begin(), L.ffn_norm.end(), 1.f);
    }
    randomized_ = true;
  }
  bool randomized() const { return randomized_; }
  /// Mutable access to a layer's weights (tests plant structure with it).
  Layer& mutable_layer(std::size_t l) { return layers_.at(l); }
  const Layer& layer(std::size_t l) const { return layers_[l]; }
  /// [n_vocab][n_embd]
  const QuantMatrix& token_embedding() const { return tok_embd_; }
  const std::vector<float>& output_norm() const { return output_norm_; }
  /// [n_vocab][n_embd]: output.weight, or the token embedding when tied.
  const QuantMatrix& output() const { return cfg_.tied_output ? tok_embd_ : output_; }
  /// How many tensors of each ggml type were loaded.
  const std::map<std::string, std::size_t>& tensor_types() const { return types_; }
  std::size_t n_params() const { return n_params_; }
  /// Bytes of all weight matrices in storage (what one decoded token reads).
  std::size_t weight_bytes() const {
    std::size_t b = tok_embd_.storage_bytes() + output_.storage_bytes();
    for (const Layer& L : layers_)
      for (const QuantMatrix* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) b += w->storage_bytes();
    return b;
  }

 private:
  std::vector<float> load(const GgufFile& f, const std::string& name, std::vector<std::uint64_t> shape) {
    return f.dequantize(checked(f, name, shape));
  }
  QuantMatrix load_matrix(const GgufFile& f, const std::string& name, std::vector<std::uint64_t> shape) {
    return QuantMatrix::from_tensor(checked(f, name, shape), path_ + ": tensor '" + name + "'");
  }
  const GgufTensor& checked(const GgufFile& f, const std::string& name, const std::vector<std::uint64_t>& shape) {
    const GgufTensor& t = f.tensor(name);
    bool ok = t.n_dims == shape.size();
    for (std::size_t d = 0; ok && d < shape.size(); ++d) ok = t.ne[d] == shape[d];
    if (!ok) {
      std::string want = "[";
      for (std::size_t d = 0; d < shape.size(); ++d) want += (d ? ", " : "") + std::to_string(shape[d]);
      fail(path_, ": tensor '", name, "' has shape ", t.shape_str(), ", expected ", want, "]");
    }
    ++types_[ggml_type_name(t.type)];
    n_params_ += t.n_elements;
    return t;
  }

  std::string path_;
  LlamaConfig cfg_;
  QuantMatrix tok_embd_, output_;
  std::vector<float> output_norm_;
  std::vector<Layer> layers_;
  std::map<std::string, std::size_t> types_;
  std::size_t n_params_ = 0;
  bool randomized_ = false;
};

/// One layer's Q, K, V for a batch of tokens, packed [token][head][head_dim].
struct QkvBatch {
  std::size_t layer = 0, n_tokens = 0;
  std::size_t pos0 = 0;  // position of the first token in its sequence
  bool post_rope = true;
  std::size_t n_head = 0, n_head_kv = 0, head_dim = 0;
  const float *q = nullptr, *k = nullptr, *v = nullptr;
};

/// Which stage(s) the capture hook sees.
enum class CaptureStage { pre_rope, post_rope, both };
/// Which logits forward() computes.
enum class LogitsMode { none, last, all };

/// Runs the forward pass; owns scratch buffers (not thread-safe).
class LlamaEngine {
 public:
  using Hook = std::function<void(const QkvBatch&)>;

  /// Runs its weight products and attention on `pf` (default: the
  /// process-wide engine pool, engine_pool()); `pf` must outlive the engine.
  explicit LlamaEngine(const LlamaModel& m, headrecon::ParallelFor pf = engine_parallel_for())
      : m_(m), mm_(pf), pf_(std::move(pf)) {}

  /// The weight products (tests choose their path through it).
  MatMul& matmul() { return mm_; }

  /// Calls `hook` for every layer of every forward() at `stage`; an empty hook disables.
  void set_hook(Hook hook, CaptureStage stage = CaptureStage::post_rope) {
    hook_ = std::move(hook);
    stage_ = stage;
  }

  /// Called for every layer of every forward() after RoPE, before K/V are
  /// stored or attended: may rewrite k and v ([n][n_head_kv][head_dim], token
  /// t at position pos0 + t) in place - e.g. to simulate reconstruction by
  /// writing predicted K/V into a full cache. Empty: disabled.
  using KvTransform = std::function<void(std::size_t layer, std::size_t pos0, std::size_t n, float* k, float* v)>;
  void set_kv_transform(KvTransform f) { kv_transform_ = std::move(f); }

  /// Processes tokens[0..n) at positions cache.size() + i: appends their K/V
  /// to the cache (only the heads it stores), attends over it (token t sees
  /// positions 0..pos0+t) and, per `mode`, writes logits to `logits`: n ×
  /// n_vocab (all) or n_vocab (last), row-major. Long inputs run in chunks of
  /// KvCache::kMaxRows tokens (chunked prefill).
  void forward(const std::int32_t* tokens, std::size_t n, KvCache& cache, LogitsMode mode,
               std::vector<float>* logits) {
    const LlamaConfig& c = m_.config();
    const headrecon::RefCacheLayout& lay = cache.layout();
    if (std::size_t(lay.n_layers()) != c.n_layer || std::size_t(lay.n_kv_heads()) != c.n_head_kv ||
        std::size_t(lay.head_dim()) != c.head_dim)
      fail("forward: the KV cache was made for another model shape");
    if (n == 0) return;
    if (cache.size() + n > cache.capacity())
      fail("forward: ", cache.size() + n, " positions exceed the KV cache capacity ", cache.capacity());
    if (mode == LogitsMode::all && logits) logits->resize(n * c.n_vocab);
    std::vector<float>* chunk_logits = mode == LogitsMode::all ? &chunk_logits_ : logits;
    for (std::size_t t0 = 0; t0 < n; t0 += KvCache::kMaxRows) {
      const std::size_t m = std::min(KvCache::kMaxRows, n - t0);
      const bool last = t0 + m == n;
      const LogitsMode cm = mode == LogitsMode::all ? LogitsMode::all : last ? mode : LogitsMode::none;
      run(tokens + t0, m, cache, cm, chunk_logits);
      if (mode == LogitsMode::all && logits)
        std::copy(chunk_logits_.begin(), chunk_logits_.end(), logits->begin() + std::ptrdiff_t(t0 * c.n_vocab));
    }
  }

 private:
  void run(const std::int32_t* tokens, std::size_t n, KvCache& cache, LogitsMode mode, std::vector<float>* logits) {
    const LlamaConfig& c = m_.config();
    const std::size_t pos0 = cache.extend(n);
    const std::size_t E = c.n_embd, QD = c.q_dim(), KD = c.kv_dim(), F = c.n_ff;
    x_.resize(n * E);
    xn_.resize(n * E);
    q_.resize(n * QD);
    o_.resize(n * QD);
    g_.resize(n * F);
    u_.resize(n * F);
    h_.resize(n * F);
    for (std::size_t t = 0; t < n; ++t) {
      if (tokens[t] < 0 || std::size_t(tokens[t]) >= c.n_vocab)
        fail("forward: token id ", tokens[t], " at index ", t, " is outside the vocabulary of ", c.n_vocab);
      m_.token_embedding().dequantize_rows(std::size_t(tokens[t]), 1, x_.data() + t * E);
    }
    const bool pre = hook_ && stage_ != CaptureStage::post_rope;
    const bool post = hook_ && stage_ != CaptureStage::pre_rope;
    kb_.resize(n * KD);
    vb_.resize(n * KD);
    float* kc = kb_.data();
    float* vc = vb_.data();
    for (std::size_t l = 0; l < c.n_layer; ++l) {
      const LlamaModel::Layer& L = m_.layer(l);
      rms_norm(x_.data(), L.attn_norm.data(), xn_.data(), n, E, float(c.rms_eps));
      mm_.run(xn_.data(), n, E, {{&L.wq, q_.data(), QD}, {&L.wk, kc, KD}, {&L.wv, vc, KD}});
      if (!L.bq.empty()) {
        add_bias(q_.data(), L.bq.data(), n, QD);
        add_bias(kc, L.bk.data(), n, KD);
        add_bias(vc, L.bv.data(), n, KD);
      }
      if (pre) hook_(batch(l, n, pos0, false, kc, vc));
      rope(q_.data(), n, c.n_head, pos0);
      rope(kc, n, c.n_head_kv, pos0);
      if (post) hook_(batch(l, n, pos0, true, kc, vc));
      if (kv_transform_) kv_transform_(l, pos0, n, kc, vc);

      cache.append(l, pos0, n, kc, vc);
      cache.attend(l, pos0, n, q_.data(), o_.data(), pf_);
      mm_.run(o_.data(), n, QD, {{&L.wo, x_.data(), E, true}});  // x += o · Woᵀ

      rms_norm(x_.data(), L.ffn_norm.data(), xn_.data(), n, E, float(c.rms_eps));
      mm_.swiglu(xn_.data(), n, E, L.w_gate, L.w_up, h_.data(), g_.data(), u_.data());  // SiLU(gate) * up
      mm_.run(h_.data(), n, F, {{&L.w_down, x_.data(), E, true}});
    }
    if (mode == LogitsMode::none || !logits) return;
    const std::size_t first = mode == LogitsMode::last ? n - 1 : 0, rows = n - first;
    rms_norm(x_.data() + first * E, m_.output_norm().data(), xn_.data(), rows, E, float(c.rms_eps));
    logits->resize(rows * c.n_vocab);
    mm_.run(xn_.data(), rows, E, {{&m_.output(), logits->data(), c.n_vocab}});
  }

  QkvBatch batch(std::size_t l, std::size_t n, std::size_t pos0, bool post_rope, const float* k,
                 const float* v) const {
    const LlamaConfig& c = m_.config();
    QkvBatch b;
    b.layer = l;
    b.n_tokens = n;
    b.pos0 = pos0;
    b.post_rope = post_rope;
    b.n_head = c.n_head;
    b.n_head_kv = c.n_head_kv;
    b.head_dim = c.head_dim;
    b.q = q_.data();
    b.k = k;
    b.v = v;
    return b;
  }

  static void rms_norm(const float* x, const float* w, float* y, std::size_t n, std::size_t E, float eps) {
    for (std::size_t t = 0; t < n; ++t) {
      const float* xr = x + t * E;
      double ss = 0;
      for (std::size_t i = 0; i < E; ++i) ss += double(xr[i]) * xr[i];
      const float s = float(1.0 / std::sqrt(ss / double(E) + double(eps)));
      for (std::size_t i = 0; i < E; ++i) y[t * E + i] = xr[i] * s * w[i];
    }
  }
  static void add_bias(float* x, const float* b, std::size_t n, std::size_t d) {
    for (std::size_t t = 0; t < n; ++t)
      for (std::size_t i = 0; i < d; ++i) x[t * d + i] += b[i];
  }

  /// Rotates the first n_rot components of every head of rows [0, n) (row t
  /// at position pos0 + t) in place.
  void rope(float* x, std::size_t n, std::size_t heads, std::size_t pos0) {
    const LlamaConfig& c = m_.config();
    const std::size_t hd = c.head_dim, half = c.n_rot / 2;
    if (inv_freq_.size() != half) {
      inv_freq_.resize(half);
      for (std::size_t i = 0; i < half; ++i)
        inv_freq_[i] = std::pow(c.rope_base, -2.0 * double(i) / double(c.n_rot));
    }
    cs_.resize(2 * half);
    for (std::size_t t = 0; t < n; ++t) {
      const double pos = double(pos0 + t);
      for (std::size_t i = 0; i < half; ++i) {
        const double th = pos * inv_freq_[i];
        cs_[2 * i] = float(std::cos(th));
        cs_[2 * i + 1] = float(std::sin(th));
      }
      for (std::size_t h = 0; h < heads; ++h) {
        float* v = x + (t * heads + h) * hd;
        for (std::size_t i = 0; i < half; ++i) {
          float& a = c.rope_neox ? v[i] : v[2 * i];
          float& b = c.rope_neox ? v[i + half] : v[2 * i + 1];
          const float co = cs_[2 * i], si = cs_[2 * i + 1];
          const float a0 = a, b0 = b;
          a = a0 * co - b0 * si;
          b = a0 * si + b0 * co;
        }
      }
    }
  }

  const LlamaModel& m_;
  MatMul mm_;
  Hook hook_;
  KvTransform kv_transform_;
  CaptureStage stage_ = CaptureStage::post_rope;
  headrecon::ParallelFor pf_;
  std::vector<float> x_, xn_, q_, o_, g_, u_, h_, cs_, kb_, vb_, chunk_logits_;
  std::vector<double> inv_freq_;
};

/// Natural-log probability of `target` under one row of logits (double accumulation).
inline double log_prob(const float* logits, std::size_t n_vocab, std::int32_t target) {
  float mx = logits[0];
  for (std::size_t i = 1; i < n_vocab; ++i) mx = std::max(mx, logits[i]);
  double sum = 0;  // float exp (each term has a relative error ~1e-7), double sum
  for (std::size_t i = 0; i < n_vocab; ++i) sum += double(std::exp(logits[i] - mx));
  return double(logits[std::size_t(target)]) - double(mx) - std::log(sum);
}

}  // namespace headrecon_engine
