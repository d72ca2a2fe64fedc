#pragma once
/// @file safetensors_metadata.hpp
/// Typed reads of a safetensors file's "__metadata__" string map (decimal
/// integers, booleans, format and version), each error naming the file, the
/// key, the value and the accepted range.

#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <string_view>

#include "headrecon/error.hpp"

namespace headrecon::detail {

using Metadata = std::map<std::string, std::string>;

/// The metadata value of `key`; throws Error "PATH: missing metadata key 'KEY'".
inline const std::string& meta_get(const Metadata& md, const std::string& path, const std::string& key) {
  const auto it = md.find(key);
  if (it == md.end()) fail(path, ": missing metadata key '", key, "'");
  return it->second;
}

/// Parses a decimal index (digits only, no sign, no spaces); false when
/// malformed or above `max`.
inline bool parse_decimal(std::string_view s, std::uint64_t max, std::uint64_t& out) {
  if (s.empty() || s.size() > 20) return false;
  std::uint64_t v = 0;
  for (const char c : s) {
    if (c < '0' || c > '9') return false;
    const std::uint64_t d = std::uint64_t(c - '0');
    if (d > max || v > (max - d) / 10) return false;
    v = v * 10 + d;
  }
  out = v;
  return true;
}

/// `s` (the value of metadata `key`) as an integer in [lo, hi]; throws Error
/// naming the file, key and value when it is not fully a decimal number or
/// out of range.
inline std::uint64_t meta_uint_value(const std::string& s, const std::string& path, const std::string& key,
                                     std::uint64_t lo, std::uint64_t hi) {
  std::uint64_t v = 0;
  const bool digits = !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
  if (!digits) fail(path, ": metadata '", key, "' = '", s, "' is not a non-negative integer");
  if (!parse_decimal(s, std::numeric_limits<std::uint64_t>::max(), v) || v < lo || v > hi)
    fail(path, ": metadata '", key, "' = '", s, "' is out of range [", lo, ", ", hi, "]");
  return v;
}

/// The metadata value of `key` as an integer in [lo, hi]; throws Error naming
/// the file, key and value when it is absent, not a decimal number, or out of range.
inline std::uint64_t meta_uint(const Metadata& md, const std::string& path, const std::string& key,
                               std::uint64_t lo, std::uint64_t hi) {
  return meta_uint_value(meta_get(md, path, key), path, key, lo, hi);
}

/// The metadata value of `key` as "true" or "false"; throws Error otherwise.
inline bool meta_bool(const Metadata& md, const std::string& path, const std::string& key) {
  const std::string& s = meta_get(md, path, key);
  if (s == "true") return true;
  if (s == "false") return false;
  fail(path, ": metadata '", key, "' = '", s, "' is not 'true' or 'false'");
}

/// Checks metadata `format` and `version`; throws Error naming the file. A
/// missing `version` is accepted as `default_version` when one is given.
inline void meta_check_format(const Metadata& md, const std::string& path, std::string_view format,
                              std::string_view version, bool version_optional = false) {
  const std::string& f = meta_get(md, path, "format");
  if (f != format) fail(path, ": metadata format is '", f, "', expected '", format, "'");
  if (version_optional && md.find("version") == md.end()) return;
  const std::string& v = meta_get(md, path, "version");
  if (v != version) fail(path, ": unsupported ", format, " version '", v, "' (expected ", version, ")");
}

}  // namespace headrecon::detail
