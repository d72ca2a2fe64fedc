#pragma once
/// @file safetensors_header.hpp
/// The JSON header of a safetensors file: parsed and validated against the
/// size of the data buffer (dtype, shape, exact uint64 offsets, coverage with
/// no overlap, hole or trailing byte, truncation), and written back.

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "headrecon/detail/json.hpp"
#include "headrecon/detail/safetensors_dtype.hpp"
#include "headrecon/error.hpp"

namespace headrecon {

/// One tensor of a safetensors file; begin/end are byte offsets into the data
/// buffer (which starts right after the header).
struct TensorInfo {
  std::string name;
  std::string dtype;
  std::vector<std::uint64_t> shape;
  std::uint64_t begin = 0, end = 0;

  /// Size of the tensor's data in bytes.
  std::uint64_t bytes() const { return end - begin; }
  /// Number of elements (product of the shape; 1 for a scalar).
  std::uint64_t numel() const {
    std::uint64_t n = 1;
    for (auto s : shape) n *= s;
    return n;
  }
};

namespace detail {

/// Largest header the reader accepts (the reference implementation's limit).
inline constexpr std::uint64_t safetensors_max_header = 100'000'000;

/// What a header holds: the "__metadata__" string map and the tensors in header order.
struct SafetensorsHeader {
  std::map<std::string, std::string> metadata;
  std::vector<TensorInfo> tensors;
};

namespace st_impl {

using json::Json;
using json::type_name;

inline void parse_metadata(const Json& v, std::map<std::string, std::string>& out) {
  if (v.is_null()) return;
  if (!v.is_object()) fail("__metadata__ is a JSON ", type_name(v), ", expected an object");
  for (const auto& [key, val] : v.items()) {
    if (!val.is_string())
      fail("__metadata__ value of key '", key, "' is a JSON ", type_name(val), ", expected a string");
    out.emplace(key, val.get_ref<const std::string&>());
  }
}

inline std::uint64_t uint_at(const std::string& name, const Json& x, const char* what, std::size_t i) {
  if (!x.is_number_unsigned()) {
    // Non-negative integers parse as unsigned; what is left is negative, fractional or not a number.
    const std::string shown = x.is_number_integer() ? x.dump() : type_name(x);
    fail("tensor '", name, "': ", what, "[", i, "] is ", shown, ", expected a non-negative integer");
  }
  return x.get<std::uint64_t>();
}

inline TensorInfo parse_entry(const std::string& name, const Json& v) {
  if (!v.is_object()) fail("tensor '", name, "': entry is a JSON ", type_name(v), ", expected an object");
  const auto field = [&](const char* key) -> const Json& {
    const auto it = v.find(key);
    if (it == v.end()) fail("tensor '", name, "': missing field \"", key, "\"");
    return *it;
  };
  TensorInfo t;
  t.name = name;
  const Json& dtype = field("dtype");
  if (!dtype.is_string())
    fail("tensor '", name, "': field \"dtype\" is a JSON ", type_name(dtype), ", expected a string");
  t.dtype = dtype.get<std::string>();
  const std::size_t esize = safetensors_dtype_size(t.dtype);
  if (esize == 0) fail("tensor '", name, "': unknown dtype '", t.dtype, "'");
  const Json& shape = field("shape");
  if (!shape.is_array())
    fail("tensor '", name, "': field \"shape\" is a JSON ", type_name(shape), ", expected an array");
  for (std::size_t i = 0; i < shape.size(); ++i) t.shape.push_back(uint_at(name, shape[i], "shape", i));
  const Json& offs = field("data_offsets");
  if (!offs.is_array())
    fail("tensor '", name, "': field \"data_offsets\" is a JSON ", type_name(offs), ", expected an array");
  if (offs.size() != 2)
    fail("tensor '", name, "': data_offsets has ", offs.size(), " elements, expected 2 [begin, end]");
  t.begin = uint_at(name, offs[0], "data_offsets", 0);
  t.end = uint_at(name, offs[1], "data_offsets", 1);
  if (t.end < t.begin) fail("tensor '", name, "': data_offsets [", t.begin, ", ", t.end, "] end before they begin");
  std::uint64_t need = 0;
  if (!shape_bytes(t.shape, esize, need))
    fail("tensor '", name, "': shape ", shape_str(t.shape), " of ", t.dtype, " overflows 64-bit byte counts");
  if (need != t.end - t.begin)
    fail("tensor '", name, "': shape ", shape_str(t.shape), " of ", t.dtype, " needs ", need,
         " bytes but data_offsets [", t.begin, ", ", t.end, "] span ", t.end - t.begin);
  return t;
}

/// Every byte of the data buffer belongs to exactly one tensor.
inline void check_coverage(const std::vector<TensorInfo>& tensors, std::uint64_t data_size) {
  std::vector<const TensorInfo*> order;
  order.reserve(tensors.size());
  for (const auto& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  std::uint64_t covered = 0;
  const TensorInfo* prev = nullptr;
  for (const TensorInfo* t : order) {
    if (t->begin > covered)
      fail("hole in the data buffer: bytes [", covered, ", ", t->begin, ") belong to no tensor (next tensor '",
           t->name, "')");
    if (t->begin < covered)
      fail("tensor '", t->name, "' data_offsets [", t->begin, ", ", t->end, "] overlap tensor '", prev->name, "' [",
           prev->begin, ", ", prev->end, "]");
    covered = t->end;
    prev = t;
  }
  if (covered != data_size)
    fail(data_size - covered, " trailing bytes after the last tensor (data buffer is ", data_size,
         " bytes, tensors cover ", covered, ")");
}

}  // namespace st_impl

/// Parses and validates the header `text` of a file of `file_size` bytes whose
/// data buffer starts at `data_offset`. Throws Error (without the path) naming
/// the tensor and the numbers for any malformation; a tensor that ends past
/// the end of the file is reported as a truncated file with both sizes.
inline SafetensorsHeader parse_safetensors_header(std::string_view text, std::uint64_t data_offset,
                                                  std::uint64_t file_size) {
  json::Json root;
  try {
    root = json::parse(text);
  } catch (const Error& e) {
    fail("header: ", e.what());
  }
  if (!root.is_object()) fail("header is a JSON ", json::type_name(root), ", expected an object");
  const std::uint64_t data_size = file_size - data_offset;
  SafetensorsHeader h;
  for (const auto& [name, entry] : root.items()) {
    if (name == "__metadata__") {
      st_impl::parse_metadata(entry, h.metadata);
      continue;
    }
    h.tensors.push_back(st_impl::parse_entry(name, entry));
  }
  const TensorInfo* last = nullptr;  // the tensor that ends furthest
  for (const TensorInfo& t : h.tensors)
    if (!last || t.end > last->end) last = &t;
  if (last && last->end > data_size)
    fail("tensor '", last->name, "': data_offsets [", last->begin, ", ", last->end, "] extend past the data buffer of ",
         data_size, " bytes: the file is truncated (its header describes ", data_offset + last->end,
         " bytes, the file has ", file_size, ")");
  st_impl::check_coverage(h.tensors, data_size);
  return h;
}

/// The compact header JSON of `metadata` (omitted when empty) and `tensors`
/// (unique names), in order.
inline std::string safetensors_header_json(const std::map<std::string, std::string>& metadata,
                                           const std::vector<const TensorInfo*>& tensors) {
  using json::Json;
  Json root = Json::object();
  if (!metadata.empty()) {
    Json meta = Json::object();
    for (const auto& [k, v] : metadata) json::append_member(meta, k, Json(v));
    json::append_member(root, "__metadata__", std::move(meta));
  }
  for (const TensorInfo* t : tensors) {
    Json obj = Json::object();
    json::append_member(obj, "dtype", Json(t->dtype));
    json::append_member(obj, "shape", Json(t->shape));
    json::append_member(obj, "data_offsets", Json::array({t->begin, t->end}));
    json::append_member(root, t->name, std::move(obj));  // names are unique (the writer checks)
  }
  return json::dump(root);
}

}  // namespace detail
}  // namespace headrecon
