#pragma once
/// @file projections_io.hpp
/// A model's attention output projections as a `headrecon.output_projections`
/// safetensors file, for the value metric (loss_metric.hpp).
///
/// Metadata: format = headrecon.output_projections, version = 1, n_layers,
/// n_kv_heads, head_dim (plus free-form keys). Tensors `layers.{L}.attn_output`
/// F32 [n_embd, n_q_heads·head_dim] for L = 0..n_layers-1: row-major as the
/// model applies it (x += W_o · o, o the concatenated query-head outputs).

#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "headrecon/error.hpp"
#include "headrecon/loss_metric.hpp"
#include "headrecon/safetensors.hpp"

namespace headrecon {

inline constexpr std::string_view projections_format = "headrecon.output_projections";

/// Output projections of every layer and the KV head count they go with.
struct OutputProjections {
  std::int32_t n_kv_heads = 0;
  std::vector<OutputProjection> layers;
};

/// "layers.{layer}.attn_output".
inline std::string projection_name(std::size_t layer) { return "layers." + std::to_string(layer) + ".attn_output"; }

/// Writes `p` to `path` (through PATH.tmp, renamed when complete).
inline void save_output_projections(const OutputProjections& p, const std::string& path,
                                    const std::map<std::string, std::string>& extra_metadata = {}) {
  if (p.layers.empty()) detail::fail(path, ": no output projections to write");
  for (std::size_t l = 0; l < p.layers.size(); ++l) p.layers[l].validate(l);
  detail::gqa_group(std::int32_t(p.layers[0].n_q_heads), p.n_kv_heads);
  SafetensorsWriter w(path);
  for (const auto& [k, v] : extra_metadata) w.set_metadata(k, v);
  w.set_metadata("format", std::string(projections_format));
  w.set_metadata("version", "1");
  w.set_metadata("n_layers", std::to_string(p.layers.size()));
  w.set_metadata("n_kv_heads", std::to_string(p.n_kv_heads));
  w.set_metadata("head_dim", std::to_string(p.layers[0].head_dim));
  for (std::size_t l = 0; l < p.layers.size(); ++l) {
    const OutputProjection& o = p.layers[l];
    if (o.head_dim != p.layers[0].head_dim || o.n_q_heads != p.layers[0].n_q_heads || o.n_embd != p.layers[0].n_embd)
      detail::fail(path, ": layer ", l, " has another shape than layer 0");
    w.add(projection_name(l), "F32", {o.n_embd, o.n_q_heads * o.head_dim}, o.weight.data(),
          o.weight.size() * sizeof(float));
  }
  w.begin_stream();
  w.finish();
}

/// Reads and validates a projections file; throws Error naming the file,
/// tensor or key. Shapes come from the tensors (checked against the file's
/// size by the container) and must agree with the metadata and each other.
inline OutputProjections load_output_projections(const std::string& path) {
  const SafetensorsFile f(path);
  const auto& md = f.metadata();
  detail::meta_check_format(md, path, projections_format, "1");
  const std::uint64_t n_tensors = f.tensors().size();
  const auto n_layers = std::size_t(detail::meta_uint(md, path, "n_layers", 1, std::max<std::uint64_t>(n_tensors, 1)));
  const auto n_kv = std::int32_t(detail::meta_uint(md, path, "n_kv_heads", 1, 1u << 20));
  const auto head_dim = std::size_t(detail::meta_uint(md, path, "head_dim", 1, 1u << 20));
  if (n_tensors != n_layers)
    detail::fail(path, ": ", n_tensors, " tensors, expected one layers.L.attn_output per layer (n_layers = ",
                 n_layers, ")");
  OutputProjections out;
  out.n_kv_heads = n_kv;
  for (std::size_t l = 0; l < n_layers; ++l) {
    const std::string name = projection_name(l);
    const TensorInfo& t = f.get(name);
    if (t.dtype != "F32") detail::fail(path, ": tensor '", name, "' has dtype ", t.dtype, ", expected F32");
    if (t.shape.size() != 2 || t.shape[0] == 0 || t.shape[1] == 0 || t.shape[1] % head_dim != 0)
      detail::fail(path, ": tensor '", name, "' has shape ", detail::shape_str(t.shape),
                   ", expected [n_embd, n_q_heads * head_dim] with head_dim = ", head_dim);
    OutputProjection o;
    o.n_embd = std::size_t(t.shape[0]);
    o.head_dim = head_dim;
    o.n_q_heads = std::size_t(t.shape[1]) / head_dim;
    if (l > 0 && (o.n_embd != out.layers[0].n_embd || o.n_q_heads != out.layers[0].n_q_heads))
      detail::fail(path, ": tensor '", name, "' has shape ", detail::shape_str(t.shape), ", layer 0 has [",
                   out.layers[0].n_embd, ", ", out.layers[0].n_q_heads * head_dim, "]");
    o.weight = f.read_all<float>(name);
    try {
      o.validate(l);
      detail::gqa_group(std::int32_t(o.n_q_heads), n_kv);
    } catch (const Error& e) {
      detail::fail(path, ": ", e.what());
    }
    out.layers.push_back(std::move(o));
  }
  return out;
}

}  // namespace headrecon
