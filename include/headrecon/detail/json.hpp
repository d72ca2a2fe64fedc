#pragma once
/// @file json.hpp
/// A small strict JSON (RFC 8259) parser and compact writer, enough for
/// safetensors headers. Objects keep their members in file order.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <locale>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "headrecon/error.hpp"

namespace headrecon::detail::json {

/// The JSON type of a Value.
enum class Type : std::uint8_t { null, boolean, integer, number, string, array, object };

/// "null", "boolean", "integer", "number", "string", "array" or "object".
constexpr const char* type_name(Type t) {
  switch (t) {
    case Type::null: return "null";
    case Type::boolean: return "boolean";
    case Type::integer: return "integer";
    case Type::number: return "number";
    case Type::string: return "string";
    case Type::array: return "array";
    case Type::object: return "object";
  }
  return "?";
}

/// Greatest nesting depth of arrays and objects that parse() accepts.
inline constexpr int max_depth = 64;

/// A JSON value. Integers (no fraction, no exponent) keep their exact value in
/// the int64 and uint64 ranges; other numbers are doubles.
class Value {
 public:
  using Array = std::vector<Value>;
  using Object = std::vector<std::pair<std::string, Value>>;

  /// null; the other constructors make the value of the matching JSON type
  /// (any integral type except bool gives an integer).
  Value() = default;
  Value(std::nullptr_t) {}
  Value(bool b) : type_(Type::boolean), bool_(b) {}
  template <class I, std::enable_if_t<std::is_integral_v<I> && !std::is_same_v<I, bool>, int> = 0>
  Value(I v) : type_(Type::integer) {
    if constexpr (std::is_signed_v<I>) {
      neg_ = v < 0;
      mag_ = neg_ ? std::uint64_t(0) - std::uint64_t(std::int64_t(v)) : std::uint64_t(v);
    } else {
      mag_ = std::uint64_t(v);
    }
  }
  Value(double d) : type_(Type::number), num_(d) {}
  Value(std::string s) : type_(Type::string), str_(std::move(s)) {}
  Value(std::string_view s) : type_(Type::string), str_(s) {}
  Value(const char* s) : type_(Type::string), str_(s) {}
  Value(Array a) : type_(Type::array), arr_(std::move(a)) {}
  Value(Object o) : type_(Type::object), obj_(std::move(o)) {}

  /// The integer -magnitude (negative) or +magnitude; throws Error below INT64_MIN.
  static Value integer(bool negative, std::uint64_t magnitude) {
    if (negative && magnitude > (std::uint64_t(1) << 63))
      fail("JSON integer -", magnitude, " is below the int64 range");
    Value v;
    v.type_ = Type::integer;
    v.neg_ = negative && magnitude != 0;
    v.mag_ = magnitude;
    return v;
  }

  /// The JSON type; the is_* predicates test it, the as_* accessors throw
  /// Error "JSON value is X, expected Y" on a mismatch.
  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::null; }
  bool is_bool() const { return type_ == Type::boolean; }
  bool is_integer() const { return type_ == Type::integer; }
  /// True for integers and other numbers alike.
  bool is_number() const { return type_ == Type::integer || type_ == Type::number; }
  bool is_string() const { return type_ == Type::string; }
  bool is_array() const { return type_ == Type::array; }
  bool is_object() const { return type_ == Type::object; }

  bool as_bool() const {
    expect(Type::boolean);
    return bool_;
  }
  /// True for a negative integer.
  bool is_negative_integer() const { return type_ == Type::integer && neg_; }
  /// The magnitude of an integer (its absolute value).
  std::uint64_t magnitude() const {
    expect(Type::integer);
    return mag_;
  }
  /// The integer as int64; throws Error when it is not an integer or out of range.
  std::int64_t as_int64() const {
    expect(Type::integer);
    if (neg_) return mag_ == (std::uint64_t(1) << 63) ? std::numeric_limits<std::int64_t>::min()
                                                       : -std::int64_t(mag_);
    if (mag_ > std::uint64_t(std::numeric_limits<std::int64_t>::max()))
      fail("JSON integer ", mag_, " is outside the int64 range");
    return std::int64_t(mag_);
  }
  /// The integer as uint64; throws Error when it is not a non-negative integer.
  std::uint64_t as_uint64() const {
    expect(Type::integer);
    if (neg_) fail("JSON integer -", mag_, " is negative, expected a non-negative integer");
    return mag_;
  }
  /// Any number (integers are converted) as a double.
  double as_double() const {
    if (type_ == Type::integer) return neg_ ? -double(mag_) : double(mag_);
    expect(Type::number);
    return num_;
  }
  const std::string& as_string() const {
    expect(Type::string);
    return str_;
  }
  const Array& as_array() const {
    expect(Type::array);
    return arr_;
  }
  Array& as_array() {
    expect(Type::array);
    return arr_;
  }
  const Object& as_object() const {
    expect(Type::object);
    return obj_;
  }
  Object& as_object() {
    expect(Type::object);
    return obj_;
  }
  /// The member `key` of an object, or nullptr when absent; throws for non-objects.
  const Value* find(std::string_view key) const {
    for (const auto& kv : as_object())
      if (kv.first == key) return &kv.second;
    return nullptr;
  }

  /// Structural equality; object members compare in order. Integers equal
  /// only integers, numbers only numbers.
  friend bool operator==(const Value& a, const Value& b) {
    if (a.type_ != b.type_) return false;
    switch (a.type_) {
      case Type::null: return true;
      case Type::boolean: return a.bool_ == b.bool_;
      case Type::integer: return a.neg_ == b.neg_ && a.mag_ == b.mag_;
      case Type::number: return a.num_ == b.num_;
      case Type::string: return a.str_ == b.str_;
      case Type::array: return a.arr_ == b.arr_;
      case Type::object: return a.obj_ == b.obj_;
    }
    return false;
  }
  friend bool operator!=(const Value& a, const Value& b) { return !(a == b); }

 private:
  void expect(Type t) const {
    if (type_ != t) fail("JSON value is ", type_name(type_), ", expected ", type_name(t));
  }

  Type type_ = Type::null;
  bool bool_ = false;
  bool neg_ = false;
  std::uint64_t mag_ = 0;
  double num_ = 0.0;
  std::string str_;
  Array arr_;
  Object obj_;
};

namespace impl {

/// Offset of the first byte of `s` that is not part of valid UTF-8 (no
/// overlong forms, no surrogates, at most U+10FFFF), or npos.
inline std::size_t invalid_utf8(std::string_view s) {
  std::size_t i = 0;
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  while (i < s.size()) {
    const unsigned c = byte(i);
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len;
    unsigned lo = 0x80, hi = 0xbf;  // range of the second byte
    if (c >= 0xc2 && c <= 0xdf) {
      len = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
      len = 3;
      if (c == 0xe0) lo = 0xa0;
      if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      len = 4;
      if (c == 0xf0) lo = 0x90;
      if (c == 0xf4) hi = 0x8f;
    } else {
      return i;
    }
    if (s.size() - i < len) return i;
    if (byte(i + 1) < lo || byte(i + 1) > hi) return i;
    for (std::size_t k = 2; k < len; ++k)
      if ((byte(i + k) & 0xc0) != 0x80) return i;
    i += len;
  }
  return std::string_view::npos;
}

inline void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xc0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += char(0xe0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3f));
    out += char(0x80 | (cp & 0x3f));
  } else {
    out += char(0xf0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3f));
    out += char(0x80 | ((cp >> 6) & 0x3f));
    out += char(0x80 | (cp & 0x3f));
  }
}

class Parser {
 public:
  explicit Parser(std::string_view text) : s_(text) {}

  Value parse_document() {
    skip_ws();
    Value v = parse_value(0);
    skip_ws();
    if (pos_ != s_.size()) error(pos_, "expected end of input after the value, found ", found());
    return v;
  }

 private:
  template <class... Parts>
  [[noreturn]] void error(std::size_t at, const Parts&... parts) const {
    fail("invalid JSON at byte ", at, ": ", parts...);
  }

  /// Describes the byte at pos_ for error messages.
  std::string found() const {
    if (pos_ >= s_.size()) return "end of input";
    const unsigned char c = static_cast<unsigned char>(s_[pos_]);
    if (c >= 0x20 && c < 0x7f) return std::string("'") + char(c) + "'";
    std::ostringstream os;
    os << "byte 0x" << std::hex << unsigned(c);
    return os.str();
  }

  void skip_ws() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r'))
      ++pos_;
  }

  bool at(char c) const { return pos_ < s_.size() && s_[pos_] == c; }

  Value parse_value(int depth) {
    if (pos_ >= s_.size()) error(pos_, "expected a value, found end of input");
    switch (s_[pos_]) {
      case '{': return parse_object(depth + 1);
      case '[': return parse_array(depth + 1);
      case '"': return Value(parse_string());
      case 't': literal("true"); return Value(true);
      case 'f': literal("false"); return Value(false);
      case 'n': literal("null"); return Value();
      default:
        if (s_[pos_] == '-' || (s_[pos_] >= '0' && s_[pos_] <= '9')) return parse_number();
        error(pos_, "expected a value, found ", found());
    }
  }

  void literal(std::string_view word) {
    if (s_.substr(pos_, word.size()) != word) error(pos_, "expected '", word, "'");
    pos_ += word.size();
  }

  Value parse_object(int depth) {
    if (depth > max_depth) error(pos_, "nesting deeper than ", max_depth, " levels");
    ++pos_;  // '{'
    Value::Object members;
    std::set<std::string, std::less<>> keys;
    skip_ws();
    if (at('}')) {
      ++pos_;
      return Value(std::move(members));
    }
    for (;;) {
      skip_ws();
      if (!at('"')) error(pos_, "expected a string key in object, found ", found());
      const std::size_t key_pos = pos_;
      std::string key = parse_string();
      if (!keys.insert(key).second) error(key_pos, "duplicate key \"", key, "\" in object");
      skip_ws();
      if (!at(':')) error(pos_, "expected ':' after object key, found ", found());
      ++pos_;
      skip_ws();
      Value v = parse_value(depth);
      members.emplace_back(std::move(key), std::move(v));
      skip_ws();
      if (at(',')) {
        ++pos_;
        continue;
      }
      if (at('}')) {
        ++pos_;
        return Value(std::move(members));
      }
      error(pos_, "expected ',' or '}' in object, found ", found());
    }
  }

  Value parse_array(int depth) {
    if (depth > max_depth) error(pos_, "nesting deeper than ", max_depth, " levels");
    ++pos_;  // '['
    Value::Array items;
    skip_ws();
    if (at(']')) {
      ++pos_;
      return Value(std::move(items));
    }
    for (;;) {
      skip_ws();
      items.push_back(parse_value(depth));
      skip_ws();
      if (at(',')) {
        ++pos_;
        continue;
      }
      if (at(']')) {
        ++pos_;
        return Value(std::move(items));
      }
      error(pos_, "expected ',' or ']' in array, found ", found());
    }
  }

  static std::string hex_word(std::uint32_t v) {
    static constexpr char digits[] = "0123456789ABCDEF";
    std::string h(4, '0');
    for (int k = 3; k >= 0; --k, v >>= 4) h[std::size_t(k)] = digits[v & 15];
    return h;
  }

  std::uint32_t hex4() {
    if (s_.size() - pos_ < 4) error(pos_, "expected 4 hex digits after \\u");
    std::uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = s_[pos_ + std::size_t(k)];
      std::uint32_t d;
      if (c >= '0' && c <= '9') d = std::uint32_t(c - '0');
      else if (c >= 'a' && c <= 'f') d = std::uint32_t(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') d = std::uint32_t(c - 'A' + 10);
      else error(pos_ + std::size_t(k), "expected a hex digit in \\u escape");
      v = v * 16 + d;
    }
    pos_ += 4;
    return v;
  }

  std::string parse_string() {
    ++pos_;  // opening quote
    std::string out;
    for (;;) {
      if (pos_ >= s_.size()) error(pos_, "expected '\"' to close the string, found end of input");
      const unsigned char c = static_cast<unsigned char>(s_[pos_]);
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (c < 0x20) error(pos_, "control character ", found(), " in string (must be escaped)");
      if (c == '\\') {
        const std::size_t esc = pos_++;
        if (pos_ >= s_.size()) error(pos_, "expected an escape character, found end of input");
        const char e = s_[pos_++];
        switch (e) {
          case '"': out += '"'; break;
          case '\\': out += '\\'; break;
          case '/': out += '/'; break;
          case 'b': out += '\b'; break;
          case 'f': out += '\f'; break;
          case 'n': out += '\n'; break;
          case 'r': out += '\r'; break;
          case 't': out += '\t'; break;
          case 'u': {
            std::uint32_t cp = hex4();
            if (cp >= 0xdc00 && cp <= 0xdfff)
              error(esc, "expected a high surrogate before low surrogate \\u", hex_word(cp));
            if (cp >= 0xd800 && cp <= 0xdbff) {
              if (s_.substr(pos_, 2) != "\\u")
                error(pos_, "expected a \\u low surrogate after high surrogate \\u", hex_word(cp));
              pos_ += 2;
              const std::uint32_t lo = hex4();
              if (lo < 0xdc00 || lo > 0xdfff)
                error(pos_ - 6, "expected a low surrogate (\\uDC00-\\uDFFF) after \\u",
                      hex_word(cp));
              cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            }
            append_utf8(out, cp);
            break;
          }
          default:
            pos_ = esc + 1;
            error(esc, "expected a valid escape (\\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u), found ",
                  found());
        }
        continue;
      }
      if (c < 0x80) {
        out += char(c);
        ++pos_;
        continue;
      }
      // Multi-byte UTF-8: validate the sequence that starts here.
      std::size_t len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
      const std::string_view seq = s_.substr(pos_, len);
      if (seq.size() != len || invalid_utf8(seq) != std::string_view::npos)
        error(pos_, "invalid UTF-8 in string");
      out.append(seq.data(), seq.size());
      pos_ += len;
    }
  }

  Value parse_number() {
    const std::size_t start = pos_;
    const bool neg = at('-');
    if (neg) ++pos_;
    const auto digit = [&] { return pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9'; };
    if (!digit()) error(pos_, "expected a digit, found ", found());
    const std::size_t int_begin = pos_;
    if (s_[pos_] == '0') {
      ++pos_;
      if (digit()) error(int_begin, "leading zeros are not allowed in numbers");
    } else {
      while (digit()) ++pos_;
    }
    const std::size_t int_end = pos_;
    bool is_int = true;
    if (at('.')) {
      is_int = false;
      ++pos_;
      if (!digit()) error(pos_, "expected a digit after '.', found ", found());
      while (digit()) ++pos_;
    }
    if (at('e') || at('E')) {
      is_int = false;
      ++pos_;
      if (at('+') || at('-')) ++pos_;
      if (!digit()) error(pos_, "expected a digit in the exponent, found ", found());
      while (digit()) ++pos_;
    }
    if (is_int) {
      std::uint64_t mag = 0;
      for (std::size_t k = int_begin; k < int_end; ++k) {
        const std::uint64_t d = std::uint64_t(s_[k] - '0');
        if (mag > (std::numeric_limits<std::uint64_t>::max() - d) / 10)
          error(start, "integer ", s_.substr(start, int_end - start),
                " is out of range (int64 / uint64)");
        mag = mag * 10 + d;
      }
      if (neg && mag > (std::uint64_t(1) << 63))
        error(start, "integer ", s_.substr(start, int_end - start), " is out of range (int64)");
      return Value::integer(neg, mag);
    }
    std::istringstream is(std::string(s_.substr(start, pos_ - start)));
    is.imbue(std::locale::classic());
    double d = 0.0;
    is >> d;
    if (is.fail() || !std::isfinite(d))
      error(start, "number ", s_.substr(start, pos_ - start), " is out of range (double)");
    return Value(d);
  }

  std::string_view s_;
  std::size_t pos_ = 0;
};

inline void dump_string(std::string_view s, std::string& out) {
  if (const std::size_t bad = invalid_utf8(s); bad != std::string_view::npos)
    fail("JSON dump: string has invalid UTF-8 at byte ", bad);
  static constexpr char hex[] = "0123456789abcdef";
  out += '"';
  for (const char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out += hex[c >> 4];
          out += hex[c & 15];
        } else {
          out += ch;
        }
    }
  }
  out += '"';
}

}  // namespace impl

/// Parses one JSON document (surrounding whitespace allowed). Throws Error
/// "invalid JSON at byte N: expected ..." on malformed input, trailing
/// garbage, duplicate keys, nesting deeper than max_depth, bad UTF-8.
inline Value parse(std::string_view text) { return impl::Parser(text).parse_document(); }

/// Appends the compact JSON text of `v` to `out`; throws Error for
/// non-finite numbers and strings that are not valid UTF-8.
inline void dump(const Value& v, std::string& out) {
  switch (v.type()) {
    case Type::null: out += "null"; return;
    case Type::boolean: out += v.as_bool() ? "true" : "false"; return;
    case Type::integer:
      if (v.is_negative_integer()) out += '-';
      out += std::to_string(v.magnitude());
      return;
    case Type::number: {
      const double d = v.as_double();
      if (!std::isfinite(d)) fail("JSON dump: non-finite number ", d);
      std::ostringstream os;
      os.imbue(std::locale::classic());
      os.precision(std::numeric_limits<double>::max_digits10);
      os << d;
      std::string s = os.str();
      if (s.find_first_of(".eE") == std::string::npos) s += ".0";  // stays a number
      out += s;
      return;
    }
    case Type::string: impl::dump_string(v.as_string(), out); return;
    case Type::array: {
      out += '[';
      bool first = true;
      for (const Value& item : v.as_array()) {
        if (!first) out += ',';
        first = false;
        dump(item, out);
      }
      out += ']';
      return;
    }
    case Type::object: {
      out += '{';
      bool first = true;
      for (const auto& [key, item] : v.as_object()) {
        if (!first) out += ',';
        first = false;
        impl::dump_string(key, out);
        out += ':';
        dump(item, out);
      }
      out += '}';
      return;
    }
  }
}

/// The compact JSON text of `v` (no whitespace); see dump(v, out).
inline std::string dump(const Value& v) {
  std::string out;
  dump(v, out);
  return out;
}

}  // namespace headrecon::detail::json
