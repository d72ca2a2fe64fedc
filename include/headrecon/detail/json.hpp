#pragma once
/// @file json.hpp
/// Strict JSON (RFC 8259) for safetensors headers, on nlohmann-json: a parse
/// that also rejects duplicate keys, integers outside int64/uint64, nesting
/// deeper than max_depth and a byte order mark; a compact dump. Objects keep
/// their members in file order (nlohmann::ordered_json).

#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "headrecon/error.hpp"

namespace headrecon::detail::json {

/// A parsed JSON value; objects keep file order.
using Json = nlohmann::ordered_json;

/// Greatest nesting depth of arrays and objects that parse() accepts.
inline constexpr int max_depth = 64;

/// "null", "boolean", "integer" (no fraction, no exponent), "number", "string",
/// "array" or "object".
inline const char* type_name(const Json& v) {
  switch (v.type()) {
    case Json::value_t::null: return "null";
    case Json::value_t::boolean: return "boolean";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned: return "integer";
    case Json::value_t::number_float: return "number";
    case Json::value_t::string: return "string";
    case Json::value_t::array: return "array";
    case Json::value_t::object: return "object";
    default: return "binary";
  }
}

/// nlohmann's message without its "[json.exception.X] parse error at line L, column C: " prefix.
inline std::string what_without_prefix(const std::exception& e) {
  std::string s = e.what();
  if (!s.empty() && s[0] == '[') {
    const std::size_t close = s.find("] ");
    if (close != std::string::npos) s.erase(0, close + 2);
  }
  if (s.rfind("parse error", 0) == 0) {
    const std::size_t colon = s.find(": ");
    if (colon != std::string::npos) s.erase(0, colon + 2);
  }
  return s;
}

/// Appends member (key, value) to object `obj` without ordered_json's linear
/// search for an existing key: the caller guarantees `key` is new. Returns the value.
inline Json& append_member(Json& obj, std::string key, Json value) {
  auto& members = static_cast<Json::object_t::Container&>(obj.get_ref<Json::object_t&>());
  members.emplace_back(std::move(key), std::move(value));
  return members.back().second;
}

namespace impl {

/// SAX handler that builds an ordered_json document, enforcing the extra rules.
class StrictBuilder : public nlohmann::json_sax<Json> {
 public:
  Json take() { return std::move(root_); }
  const std::string& error() const { return error_; }
  std::size_t error_byte() const { return error_byte_; }

  bool null() override { return place(Json()); }
  bool boolean(bool b) override { return place(Json(b)); }
  bool number_integer(number_integer_t v) override { return place(Json(v)); }
  bool number_unsigned(number_unsigned_t v) override { return place(Json(v)); }
  bool number_float(number_float_t v, const string_t& text) override {
    // nlohmann turns an integer literal outside int64/uint64 into a double:
    // reject it instead of rounding it.
    if (text.find_first_of(".eE") == string_t::npos)
      return reject("integer " + text + " is out of range (int64 / uint64)");
    return place(Json(v));
  }
  bool string(string_t& s) override { return place(Json(std::move(s))); }
  bool binary(binary_t&) override { return reject("binary values are not JSON"); }
  bool start_object(std::size_t) override { return open(Json::object()); }
  bool key(string_t& k) override {
    Open& o = open_.back();
    if (!o.keys.insert(k).second) {
      return reject("duplicate key \"" + k + "\" in " + where());
    }
    pending_key_ = std::move(k);
    return true;
  }
  bool end_object() override { return close(); }
  bool start_array(std::size_t) override { return open(Json::array()); }
  bool end_array() override { return close(); }
  bool parse_error(std::size_t position, const std::string&, const nlohmann::detail::exception& ex) override {
    error_ = what_without_prefix(ex);
    error_byte_ = position > 0 ? position - 1 : 0;  // nlohmann counts the byte it stopped after
    return false;
  }

 private:
  struct Open {
    Json* value;
    std::set<std::string, std::less<>> keys;  // objects: keys seen so far
    std::string key_of_child;                 // objects: key of the member being parsed
  };

  /// Names the innermost open object: "the top-level object", "object \"K\"" or "an object in an array".
  std::string where() const {
    if (open_.size() == 1) return "the top-level object";
    const Open& parent = open_[open_.size() - 2];
    if (parent.value->is_array()) return "an object in an array";
    return "object \"" + parent.key_of_child + "\"";
  }

  bool reject(std::string why) {
    error_ = std::move(why);
    error_byte_ = std::string::npos;
    return false;
  }

  /// Stores v where the parse stands (root, array element or object member).
  Json* store(Json v) {
    if (open_.empty()) {
      root_ = std::move(v);
      return &root_;
    }
    Open& top = open_.back();
    if (top.value->is_array()) {
      auto& a = top.value->get_ref<Json::array_t&>();
      a.push_back(std::move(v));
      return &a.back();
    }
    top.key_of_child = pending_key_;
    return &append_member(*top.value, std::move(pending_key_), std::move(v));  // key() checked it is new
  }
  bool place(Json v) {
    store(std::move(v));
    return true;
  }
  bool open(Json v) {
    if (int(open_.size()) >= max_depth)
      return reject("nesting deeper than " + std::to_string(max_depth) + " levels");
    Json* p = store(std::move(v));
    open_.push_back(Open{p, {}, {}});
    return true;
  }
  bool close() {
    open_.pop_back();
    return true;
  }

  Json root_;
  std::vector<Open> open_;  // containers being filled, outermost first
  std::string pending_key_;
  std::string error_;
  std::size_t error_byte_ = 0;
};

}  // namespace impl

/// Parses one JSON document (surrounding whitespace allowed). Throws Error
/// "invalid JSON at byte N: ..." for malformed input, trailing garbage and bad
/// UTF-8 or escapes, and "invalid JSON: ..." for duplicate keys (naming the
/// object), integers outside int64/uint64, nesting deeper than max_depth and a
/// byte order mark.
inline Json parse(std::string_view text) {
  if (text.substr(0, 3) == "\xEF\xBB\xBF") fail("invalid JSON: starts with a UTF-8 byte order mark");
  impl::StrictBuilder b;
  bool ok = false;
  try {
    ok = Json::sax_parse(text.begin(), text.end(), &b);
  } catch (const nlohmann::json::exception& e) {
    fail("invalid JSON: ", what_without_prefix(e));
  }
  if (!ok) {
    if (b.error_byte() == std::string::npos) fail("invalid JSON: ", b.error());
    fail("invalid JSON at byte ", b.error_byte(), ": ", b.error());
  }
  return b.take();
}

/// Throws Error "WHAT is not valid UTF-8 (...)" when `s` is not valid UTF-8.
inline void check_utf8(std::string_view s, std::string_view what) {
  try {
    (void)Json(std::string(s)).dump();
  } catch (const nlohmann::json::type_error& e) {
    fail(what, " is not valid UTF-8 (", what_without_prefix(e), ")");
  }
}

/// The compact JSON text of `v` (no whitespace, non-ASCII as raw UTF-8).
/// Throws Error for strings that are not valid UTF-8; non-finite numbers
/// become null (nlohmann's rule).
inline std::string dump(const Json& v) {
  try {
    return v.dump();
  } catch (const nlohmann::json::type_error& e) {
    fail("JSON dump: ", what_without_prefix(e));
  }
}

}  // namespace headrecon::detail::json
