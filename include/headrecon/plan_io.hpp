#pragma once
/// @file plan_io.hpp
/// Saving and loading a Plan as a `headrecon.plan` safetensors file.
///
/// Metadata: format = headrecon.plan, version = 2, head_dim, n_layers,
/// post_rope (true/false), sink_tokens, kinds ("k,v"), {kind}.n_heads,
/// {kind}.n_latent (latent streams of the kind over all layers).
/// Tensors per target {kind}.{layer}.{head}: .weight F32 [k*d, d], .bias F32
/// [d], .refs I32 [k, 2] (layer, head), .r2 F32 [1]. A reference names a
/// cached head (0 <= head < n_heads) or latent stream j of that layer
/// (head = n_heads + j). Tensors per latent stream {kind}.{layer}.latent.{j}:
/// F32 [n_heads*d, d], the projection z = Pᵀ x of the layer's heads
/// concatenated (version 2; streams of a layer numbered 0..m−1 without gaps,
/// m <= n_heads). Version 1 files (no latent streams) still load.
///
/// Limits (limits.hpp): head_dim <= 4096, n_layers <= 4096, n_heads <= 4096
/// per kind; every weight, bias, projection and R² finite. A reader checks
/// each number before it allocates anything for it.

#include <array>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "headrecon/error.hpp"
#include "headrecon/limits.hpp"
#include "headrecon/plan.hpp"
#include "headrecon/safetensors.hpp"

namespace headrecon {

namespace detail {
inline constexpr std::string_view plan_format = "headrecon.plan";
inline constexpr std::string_view plan_version = "2";
/// The tensors of one target, in the order of a PlanSlots array.
inline constexpr std::array<std::string_view, 4> plan_fields = {"weight", "bias", "refs", "r2"};
using PlanSlots = std::array<const TensorInfo*, plan_fields.size()>;

inline bool plan_reserved_key(const std::string& key) {
  static constexpr std::string_view fixed[] = {"format",      "version",  "head_dim", "n_layers",
                                               "post_rope",   "sink_tokens", "kinds"};
  for (auto k : fixed)
    if (key == k) return true;
  for (auto k : {"q", "k", "v"})
    if (key == std::string(k) + ".n_heads" || key == std::string(k) + ".n_latent") return true;
  return false;
}

inline std::string target_prefix(Kind kind, std::int64_t layer, std::int64_t head) {
  return std::string(kind_name(kind)) + "." + std::to_string(layer) + "." + std::to_string(head);
}

/// Writes the plan-wide metadata (everything but the targets).
inline void write_plan_metadata(SafetensorsWriter& w, const Plan& plan) {
  w.set_metadata("format", std::string(plan_format));
  w.set_metadata("version", std::string(plan_version));
  w.set_metadata("head_dim", std::to_string(plan.head_dim));
  w.set_metadata("n_layers", std::to_string(plan.n_layers));
  w.set_metadata("post_rope", plan.post_rope ? "true" : "false");
  w.set_metadata("sink_tokens", std::to_string(plan.sink_tokens));
  std::string kinds;
  for (const KindPlan& kp : plan.kinds) {
    if (!kinds.empty()) kinds += ',';
    kinds += kind_name(kp.kind);
    w.set_metadata(std::string(kind_name(kp.kind)) + ".n_heads", std::to_string(kp.n_heads));
    std::size_t n_latent = 0;
    for (const auto& l : kp.latent) n_latent += l.size();
    w.set_metadata(std::string(kind_name(kp.kind)) + ".n_latent", std::to_string(n_latent));
  }
  w.set_metadata("kinds", kinds);
}

/// The plan-wide metadata as a Plan with its kinds and empty layers; every
/// number is checked against limits.hpp before the layers are allocated.
inline Plan read_plan_metadata(const Metadata& md, const std::string& path) {
  const auto v = md.find("version");
  const bool v1 = v != md.end() && v->second == "1";
  meta_check_format(md, path, plan_format, v1 ? std::string_view("1") : plan_version);
  constexpr std::uint64_t i32max = std::uint64_t(std::numeric_limits<std::int32_t>::max());
  Plan plan;
  plan.head_dim = std::int32_t(meta_uint(md, path, "head_dim", 1, limits::max_head_dim));
  plan.n_layers = std::int32_t(meta_uint(md, path, "n_layers", 1, limits::max_layers));
  plan.post_rope = meta_bool(md, path, "post_rope");
  plan.sink_tokens = std::int32_t(meta_uint(md, path, "sink_tokens", 0, i32max));
  const std::string& kinds = meta_get(md, path, "kinds");
  if (kinds.empty()) return plan;
  for (std::size_t start = 0;;) {
    const std::size_t comma = kinds.find(',', start);
    const std::string name = kinds.substr(start, comma == std::string::npos ? comma : comma - start);
    Kind kind = Kind::k;
    try {
      kind = parse_kind(name);
    } catch (const Error& e) {
      fail(path, ": metadata 'kinds' = '", kinds, "': ", e.what());
    }
    if (plan.find(kind)) fail(path, ": metadata 'kinds' = '", kinds, "' lists ", name, " twice");
    KindPlan kp;
    kp.kind = kind;
    kp.n_heads = std::int32_t(meta_uint(md, path, name + ".n_heads", 1, limits::max_heads));
    kp.layers.resize(std::size_t(plan.n_layers));
    if (!v1 && meta_uint(md, path, name + ".n_latent", 0, std::uint64_t(plan.n_layers) * std::uint64_t(kp.n_heads)) > 0)
      kp.latent.resize(std::size_t(plan.n_layers));
    plan.kinds.push_back(std::move(kp));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return plan;
}

/// Where a tensor KIND.LAYER.HEAD.FIELD belongs.
struct PlanTensorName {
  std::size_t kind_index = 0;  // into Plan::kinds
  std::int32_t layer = 0, head = 0;  // latent: head = the stream's index j
  std::size_t field = 0;  // into plan_fields
  bool latent = false;    // KIND.LAYER.latent.J
};

/// Parses tensor name `name` against the kinds and counts of `plan`; throws
/// Error naming the file and tensor when it does not fit.
inline PlanTensorName parse_plan_tensor_name(const Plan& plan, const std::string& kinds, const std::string& path,
                                             const std::string& name) {
  const auto bad = [&](const auto&... why) {
    fail(path, ": unexpected tensor '", name, "': ", why...,
         " (expected KIND.LAYER.HEAD.{weight,bias,refs,r2} or KIND.LAYER.latent.J)");
  };
  std::vector<std::string_view> parts;
  std::string_view rest = name;
  for (;;) {
    const std::size_t dot = rest.find('.');
    parts.push_back(rest.substr(0, dot));
    if (dot == std::string_view::npos || parts.size() > 4) break;
    rest.remove_prefix(dot + 1);
  }
  if (parts.size() != 4) bad("not four dot-separated parts");
  PlanTensorName out;
  out.kind_index = plan.kinds.size();
  for (std::size_t i = 0; i < plan.kinds.size(); ++i)
    if (kind_name(plan.kinds[i].kind) == parts[0]) out.kind_index = i;
  if (out.kind_index == plan.kinds.size()) bad("kind '", parts[0], "' is not in 'kinds' (", kinds, ")");
  const KindPlan& kp = plan.kinds[out.kind_index];
  std::uint64_t layer = 0, head = 0;
  if (!parse_decimal(parts[1], std::uint64_t(plan.n_layers), layer) || layer >= std::uint64_t(plan.n_layers))
    bad("layer '", parts[1], "' is not an integer in [0, ", plan.n_layers, ")");
  out.layer = std::int32_t(layer);
  if (parts[2] == "latent") {
    if (kp.latent.empty()) bad("latent streams in a file whose metadata '", kind_name(kp.kind), ".n_latent' is absent or 0");
    std::uint64_t j = 0;
    if (!parse_decimal(parts[3], std::uint64_t(kp.n_heads), j) || j >= std::uint64_t(kp.n_heads))
      bad("latent stream '", parts[3], "' is not an integer in [0, ", kp.n_heads, ")");
    if (std::string(kind_name(kp.kind)) + "." + std::to_string(layer) + ".latent." + std::to_string(j) != name)
      bad("layer and stream must be written without leading zeros");
    out.head = std::int32_t(j);
    out.latent = true;
    return out;
  }
  if (!parse_decimal(parts[2], std::uint64_t(kp.n_heads), head) || head >= std::uint64_t(kp.n_heads))
    bad("head '", parts[2], "' is not an integer in [0, ", kp.n_heads, ")");
  if (target_prefix(kp.kind, std::int64_t(layer), std::int64_t(head)) + "." + std::string(parts[3]) != name)
    bad("layer and head must be written without leading zeros");
  out.head = std::int32_t(head);
  out.field = plan_fields.size();
  for (std::size_t i = 0; i < plan_fields.size(); ++i)
    if (plan_fields[i] == parts[3]) out.field = i;
  if (out.field == plan_fields.size()) bad("unknown field '", parts[3], "'");
  return out;
}

/// Checks the dtypes and shapes of one target's tensors (head_dim d, at most
/// max_refs references) and reads them.
inline TargetMap read_plan_target(const SafetensorsFile& f, const PlanSlots& slots, std::int32_t layer,
                                  std::int32_t head, std::uint64_t d, std::uint64_t max_refs,
                                  const std::string& prefix) {
  const std::string& path = f.path();
  for (std::size_t i = 0; i < slots.size(); ++i)
    if (!slots[i]) fail(path, ": target ", prefix, " is missing tensor '", prefix, ".", plan_fields[i], "'");
  const auto check = [&](const TensorInfo& t, std::string_view dtype, const std::vector<std::uint64_t>& shape,
                         const char* shape_desc) {
    if (t.dtype != dtype) fail(path, ": tensor '", t.name, "' has dtype ", t.dtype, ", expected ", dtype);
    if (t.shape != shape)
      fail(path, ": tensor '", t.name, "' has shape ", shape_str(t.shape), ", expected ", shape_desc, " = ",
           shape_str(shape));
  };
  const TensorInfo& refs_t = *slots[2];
  if (refs_t.dtype != "I32") fail(path, ": tensor '", refs_t.name, "' has dtype ", refs_t.dtype, ", expected I32");
  if (refs_t.shape.size() != 2 || refs_t.shape[1] != 2 || refs_t.shape[0] == 0)
    fail(path, ": tensor '", refs_t.name, "' has shape ", shape_str(refs_t.shape), ", expected [k, 2] with k >= 1");
  const std::uint64_t k = refs_t.shape[0];
  if (k > max_refs)
    fail(path, ": tensor '", refs_t.name, "' lists ", k, " references, more than the ", max_refs,
         " heads and latent streams of layers 0..", layer);
  check(*slots[0], "F32", {k * d, d}, "[k*d, d]");
  check(*slots[1], "F32", {d}, "[d]");
  check(*slots[3], "F32", {1}, "[1]");

  TargetMap tm;
  tm.target = HeadId{layer, head};
  const auto refs = f.read_all<std::int32_t>(refs_t.name);
  for (std::size_t r = 0; r < k; ++r) tm.refs.push_back(HeadId{refs[2 * r], refs[2 * r + 1]});
  tm.weight = f.read_all<float>(slots[0]->name);
  tm.bias = f.read_all<float>(slots[1]->name);
  tm.r2_heldout = f.read_all<float>(slots[3]->name)[0];
  return tm;
}
}  // namespace detail

/// Validates `plan` and writes it to `path` (atomically, via PATH.tmp).
/// `extra_metadata` adds free-form keys; a key the format reserves is an Error.
inline void save_plan(const Plan& plan, const std::string& path,
                      const std::map<std::string, std::string>& extra_metadata = {}) {
  try {
    plan.validate();
  } catch (const Error& e) {
    detail::fail(path, ": cannot save an invalid plan: ", e.what());
  }
  SafetensorsWriter w(path);
  for (const auto& [k, v] : extra_metadata) {
    if (detail::plan_reserved_key(k))
      detail::fail(path, ": extra metadata key '", k, "' is reserved by the plan format");
    w.set_metadata(k, v);
  }
  detail::write_plan_metadata(w, plan);

  const std::uint64_t d = std::uint64_t(plan.head_dim);
  for (const KindPlan& kp : plan.kinds)
    for (const auto& layer : kp.layers)
      for (const TargetMap& t : layer) {
        const std::string p = detail::target_prefix(kp.kind, t.target.layer, t.target.head);
        const std::uint64_t k = t.refs.size();
        w.reserve(p + ".weight", "F32", {k * d, d});
        w.reserve(p + ".bias", "F32", {d});
        std::vector<std::int32_t> refs;
        for (const HeadId& r : t.refs) refs.insert(refs.end(), {r.layer, r.head});
        w.add(p + ".refs", "I32", {k, 2}, refs.data(), refs.size() * sizeof(std::int32_t));
        w.add(p + ".r2", "F32", {1}, &t.r2_heldout, sizeof(float));
      }
  const auto latent_name = [](const KindPlan& kp, std::size_t l, std::size_t j) {
    return std::string(kind_name(kp.kind)) + "." + std::to_string(l) + ".latent." + std::to_string(j);
  };
  for (const KindPlan& kp : plan.kinds)
    for (std::size_t l = 0; l < kp.latent.size(); ++l)
      for (std::size_t j = 0; j < kp.latent[l].size(); ++j)
        w.reserve(latent_name(kp, l, j), "F32", {std::uint64_t(kp.n_heads) * d, d});
  w.begin_stream();
  for (const KindPlan& kp : plan.kinds)
    for (std::size_t l = 0; l < kp.latent.size(); ++l)
      for (std::size_t j = 0; j < kp.latent[l].size(); ++j) {
        const auto& pr = kp.latent[l][j].projection;
        w.write_rows(latent_name(kp, l, j), 0, pr.data(), pr.size() * sizeof(float));
      }
  for (const KindPlan& kp : plan.kinds)
    for (const auto& layer : kp.layers)
      for (const TargetMap& t : layer) {
        const std::string p = detail::target_prefix(kp.kind, t.target.layer, t.target.head);
        w.write_rows(p + ".weight", 0, t.weight.data(), t.weight.size() * sizeof(float));
        w.write_rows(p + ".bias", 0, t.bias.data(), t.bias.size() * sizeof(float));
      }
  w.finish();
}

/// Reads a plan written by save_plan(). Checks format and version, every
/// metadata number (against limits.hpp, before allocating), every tensor name,
/// dtype and shape, that each target has all four tensors, and finally
/// Plan::validate() (references, finite values); throws Error naming the file
/// and the offending key or tensor. Unknown metadata keys are ignored.
inline Plan load_plan(const std::string& path) {
  const SafetensorsFile f(path);
  Plan plan = detail::read_plan_metadata(f.metadata(), path);
  const std::string& kinds = f.metadata().at("kinds");

  // Group tensors by target (kind index, layer, head); slots follow plan_fields.
  using Key = std::tuple<std::size_t, std::int32_t, std::int32_t>;
  std::map<Key, detail::PlanSlots> targets;
  std::map<Key, const TensorInfo*> latent;
  for (const TensorInfo& t : f.tensors()) {
    const detail::PlanTensorName n = detail::parse_plan_tensor_name(plan, kinds, path, t.name);
    if (n.latent)
      latent[Key{n.kind_index, n.layer, n.head}] = &t;
    else
      targets[Key{n.kind_index, n.layer, n.head}][n.field] = &t;  // a new entry starts all null
  }
  for (const auto& [key, info] : latent) {  // map order: by kind, layer, stream
    const auto& [kind_index, layer, j] = key;
    KindPlan& kp = plan.kinds[kind_index];
    auto& streams = kp.latent[std::size_t(layer)];
    if (std::size_t(j) != streams.size())
      detail::fail(path, ": tensor '", info->name, "': latent streams of layer ", layer, " must be numbered 0..m-1 (stream ",
                   streams.size(), " is missing)");
    const std::uint64_t d = std::uint64_t(plan.head_dim);
    if (info->dtype != "F32") detail::fail(path, ": tensor '", info->name, "' has dtype ", info->dtype, ", expected F32");
    if (info->shape != std::vector<std::uint64_t>{std::uint64_t(kp.n_heads) * d, d})
      detail::fail(path, ": tensor '", info->name, "' has shape ", detail::shape_str(info->shape),
                   ", expected [n_heads*d, d] = [", std::uint64_t(kp.n_heads) * d, ", ", d, "]");
    streams.push_back(LatentStream{f.read_all<float>(info->name)});
  }
  for (const KindPlan& kp : plan.kinds) {
    if (kp.latent.empty()) continue;
    std::size_t n = 0;
    for (const auto& l : kp.latent) n += l.size();
    const std::string key = std::string(kind_name(kp.kind)) + ".n_latent";
    const std::uint64_t want = detail::meta_uint(f.metadata(), path, key, 0, std::numeric_limits<std::uint32_t>::max());
    if (n != want) detail::fail(path, ": metadata '", key, "' = ", want, " but the file holds ", n, " latent streams");
  }
  for (const auto& [key, slots] : targets) {
    const auto& [kind_index, layer, head] = key;
    KindPlan& kp = plan.kinds[kind_index];
    const std::string prefix = detail::target_prefix(kp.kind, layer, head);
    std::uint64_t max_refs = 0;  // every head and latent stream of layers 0..layer (latent streams are read above)
    for (std::int32_t l = 0; l <= layer; ++l) max_refs += std::uint64_t(kp.n_heads) + kp.n_latent(l);
    kp.layers[std::size_t(layer)].push_back(  // map order: sorted by head
        detail::read_plan_target(f, slots, layer, head, std::uint64_t(plan.head_dim), max_refs, prefix));
  }

  try {
    plan.validate();
  } catch (const Error& e) {
    detail::fail(path, ": ", e.what());
  }
  return plan;
}

}  // namespace headrecon
