#include <catch2/catch.hpp>

#include <cstdint>
#include <limits>
#include <string>

#include "headrecon/detail/json.hpp"

using headrecon::Error;
using namespace headrecon::detail::json;
using Catch::Contains;

TEST_CASE("json: scalars", "[json]") {
  CHECK(parse("null").is_null());
  CHECK(parse("true").as_bool());
  CHECK_FALSE(parse(" false ").as_bool());
  CHECK(parse("0").as_int64() == 0);
  CHECK(parse("-0").as_int64() == 0);
  CHECK_FALSE(parse("-0").is_negative_integer());
  CHECK(parse("123").as_uint64() == 123u);
  CHECK(parse("-123").as_int64() == -123);
  CHECK(parse("9223372036854775807").as_int64() == std::numeric_limits<std::int64_t>::max());
  CHECK(parse("-9223372036854775808").as_int64() == std::numeric_limits<std::int64_t>::min());
  CHECK(parse("18446744073709551615").as_uint64() == std::numeric_limits<std::uint64_t>::max());
  CHECK(parse("1.5").as_double() == 1.5);
  CHECK(parse("-2.5e3").as_double() == -2500.0);
  CHECK(parse("1E2").type() == Type::number);
  CHECK(parse("1e-2").as_double() == 0.01);
  CHECK(parse("7").as_double() == 7.0);
}

TEST_CASE("json: integer range errors", "[json]") {
  REQUIRE_THROWS_WITH(parse("18446744073709551616"), Contains("out of range"));
  REQUIRE_THROWS_WITH(parse("-9223372036854775809"), Contains("out of range"));
  REQUIRE_THROWS_WITH(parse("99999999999999999999999"), Contains("at byte 0"));
  REQUIRE_THROWS_WITH(parse("1e999"), Contains("out of range (double)"));
  REQUIRE_THROWS_WITH(parse("18446744073709551615").as_int64(), Contains("outside the int64 range"));
  REQUIRE_THROWS_WITH(parse("-1").as_uint64(), Contains("negative"));
  REQUIRE_THROWS_WITH(parse("1.0").as_uint64(), Contains("expected integer"));
}

TEST_CASE("json: strings and escapes", "[json]") {
  CHECK(parse(R"("a\"b\\c\/d\b\f\n\r\t")").as_string() == "a\"b\\c/d\b\f\n\r\t");
  CHECK(parse(R"("\u00e9")").as_string() == "\xc3\xa9");
  CHECK(parse(R"("\u20AC")").as_string() == "\xe2\x82\xac");
  CHECK(parse(R"("\ud83d\ude00")").as_string() == "\xf0\x9f\x98\x80");
  CHECK(parse(R"("\u0000")").as_string() == std::string(1, '\0'));
  CHECK(parse("\"\xf0\x9f\x98\x80 raw\"").as_string() == "\xf0\x9f\x98\x80 raw");
  CHECK(parse("\"\"").as_string().empty());
}

TEST_CASE("json: string rejections", "[json]") {
  REQUIRE_THROWS_WITH(parse(R"("\ud83d")"), Contains("low surrogate"));
  REQUIRE_THROWS_WITH(parse(R"("\ud83dx")"), Contains("low surrogate"));
  REQUIRE_THROWS_WITH(parse(R"("\ud83d\u0041")"), Contains("low surrogate"));
  REQUIRE_THROWS_WITH(parse(R"("\ude00")"), Contains("high surrogate"));
  REQUIRE_THROWS_WITH(parse(R"("\x")"), Contains("valid escape"));
  REQUIRE_THROWS_WITH(parse(R"("\u12G4")"), Contains("hex digit"));
  REQUIRE_THROWS_WITH(parse(R"("\u12")"), Contains("hex digit"));
  REQUIRE_THROWS_WITH(parse("\"a\nb\""), Contains("control character"));
  REQUIRE_THROWS_WITH(parse("\"a\tb\""), Contains("control character"));
  REQUIRE_THROWS_WITH(parse("\"a\x01\""), Contains("at byte 2"));
  REQUIRE_THROWS_WITH(parse("\"abc"), Contains("close the string"));
  REQUIRE_THROWS_WITH(parse("\"\xff\""), Contains("invalid UTF-8"));
  REQUIRE_THROWS_WITH(parse("\"\xc0\x80\""), Contains("invalid UTF-8"));      // overlong
  REQUIRE_THROWS_WITH(parse("\"\xed\xa0\x80\""), Contains("invalid UTF-8"));  // surrogate
  REQUIRE_THROWS_WITH(parse("\"\xf4\x90\x80\x80\""), Contains("invalid UTF-8"));  // > U+10FFFF
  REQUIRE_THROWS_WITH(parse("\"\xe2\x82\""), Contains("invalid UTF-8"));          // truncated
}

TEST_CASE("json: objects keep order, reject duplicates", "[json]") {
  const Value v = parse(R"({"z": 1, "a": [true, null, "s"], "m": {"x": -1}})");
  REQUIRE(v.is_object());
  const auto& o = v.as_object();
  REQUIRE(o.size() == 3);
  CHECK(o[0].first == "z");
  CHECK(o[1].first == "a");
  CHECK(o[2].first == "m");
  CHECK(v.find("a")->as_array().size() == 3);
  CHECK(v.find("m")->find("x")->as_int64() == -1);
  CHECK(v.find("nope") == nullptr);
  REQUIRE_THROWS_WITH(parse(R"({"a": 1, "b": 2, "a": 3})"), Contains("duplicate key \"a\""));
  REQUIRE_THROWS_WITH(parse(R"({"a": 1, "b": 2, "a": 3})"), Contains("at byte 17"));
  CHECK(parse(R"({"a": {"a": 1}})").is_object());  // same key at different levels is fine
  CHECK(parse("{}").as_object().empty());
  CHECK(parse("[]").as_array().empty());
  REQUIRE_THROWS_WITH(parse("[1]").find("a"), Contains("expected object"));
}

TEST_CASE("json: nesting limit", "[json]") {
  const auto nested = [](int depth) {
    return std::string(std::size_t(depth), '[') + std::string(std::size_t(depth), ']');
  };
  CHECK_NOTHROW(parse(nested(max_depth)));
  REQUIRE_THROWS_WITH(parse(nested(max_depth + 1)), Contains("nesting deeper than 64"));
  std::string objs;
  for (int i = 0; i < max_depth + 1; ++i) objs += "{\"a\":";
  objs += "1" + std::string(std::size_t(max_depth + 1), '}');
  REQUIRE_THROWS_WITH(parse(objs), Contains("nesting deeper"));
}

TEST_CASE("json: syntax errors name the byte and the expectation", "[json]") {
  REQUIRE_THROWS_WITH(parse(""), Contains("expected a value, found end of input"));
  REQUIRE_THROWS_WITH(parse("   "), Contains("at byte 3"));
  REQUIRE_THROWS_WITH(parse("{} x"), Contains("expected end of input"));
  REQUIRE_THROWS_WITH(parse("{} x"), Contains("at byte 3"));
  REQUIRE_THROWS_WITH(parse("1 2"), Contains("expected end of input"));
  REQUIRE_THROWS_WITH(parse("[1,]"), Contains("expected a value"));
  REQUIRE_THROWS_WITH(parse("[1, x]"), Contains("at byte 4"));
  REQUIRE_THROWS_WITH(parse("[1 2]"), Contains("expected ',' or ']'"));
  REQUIRE_THROWS_WITH(parse("[1"), Contains("expected ',' or ']' in array, found end of input"));
  REQUIRE_THROWS_WITH(parse(R"({"a" 1})"), Contains("expected ':'"));
  REQUIRE_THROWS_WITH(parse(R"({"a":1,})"), Contains("expected a string key"));
  REQUIRE_THROWS_WITH(parse(R"({1:2})"), Contains("expected a string key"));
  REQUIRE_THROWS_WITH(parse(R"({"a":1 "b":2})"), Contains("expected ',' or '}'"));
  REQUIRE_THROWS_WITH(parse("01"), Contains("leading zeros"));
  REQUIRE_THROWS_WITH(parse("-"), Contains("expected a digit"));
  REQUIRE_THROWS_WITH(parse("+1"), Contains("expected a value"));
  REQUIRE_THROWS_WITH(parse("1."), Contains("expected a digit after '.'"));
  REQUIRE_THROWS_WITH(parse(".5"), Contains("expected a value"));
  REQUIRE_THROWS_WITH(parse("1e"), Contains("exponent"));
  REQUIRE_THROWS_WITH(parse("tru"), Contains("expected 'true'"));
  REQUIRE_THROWS_WITH(parse("nul"), Contains("expected 'null'"));
  REQUIRE_THROWS_WITH(parse("NaN"), Contains("expected a value"));
  REQUIRE_THROWS_WITH(parse("[1]\x01"), Contains("byte 0x1"));
  REQUIRE_THROWS_AS(parse("{"), Error);
}

TEST_CASE("json: dump is compact and round-trips", "[json]") {
  Value::Object o;
  o.emplace_back("b", Value(true));
  o.emplace_back("n", Value());
  o.emplace_back("i", Value(-42));
  o.emplace_back("u", Value(std::numeric_limits<std::uint64_t>::max()));
  o.emplace_back("d", Value(0.1));
  o.emplace_back("s", Value("q\"\\\n\x01\xc3\xa9"));
  o.emplace_back("a", Value(Value::Array{Value(1), Value(2.5), Value("x")}));
  const Value v(o);
  const std::string text = dump(v);
  CHECK(text ==
        "{\"b\":true,\"n\":null,\"i\":-42,\"u\":18446744073709551615,\"d\":0.10000000000000001,"
        "\"s\":\"q\\\"\\\\\\n\\u0001\xc3\xa9\",\"a\":[1,2.5,\"x\"]}");
  CHECK(parse(text) == v);
  CHECK(parse(text).find("d")->as_double() == 0.1);
  CHECK(dump(Value(1.0)) == "1.0");
  CHECK(parse(dump(Value(1.0))).type() == Type::number);
  CHECK(dump(Value(-1e300)) == "-1.0000000000000001e+300");
  CHECK(dump(Value(std::numeric_limits<std::int64_t>::min())) == "-9223372036854775808");
  CHECK(dump(Value("\b\f\r\t\x1f")) == "\"\\b\\f\\r\\t\\u001f\"");
  const std::string doc = R"({"a":[{"b":[]},{}],"c":"\u00e9\ud83d\ude00"})";
  CHECK(dump(parse(doc)) == "{\"a\":[{\"b\":[]},{}],\"c\":\"\xc3\xa9\xf0\x9f\x98\x80\"}");
  CHECK(parse(dump(parse(doc))) == parse(doc));
}

TEST_CASE("json: dump rejections", "[json]") {
  REQUIRE_THROWS_WITH(dump(Value(std::numeric_limits<double>::infinity())), Contains("non-finite"));
  REQUIRE_THROWS_WITH(dump(Value(std::numeric_limits<double>::quiet_NaN())), Contains("non-finite"));
  REQUIRE_THROWS_WITH(dump(Value("a\xff")), Contains("invalid UTF-8 at byte 1"));
  Value::Object o;
  o.emplace_back("\xc0", Value(1));
  REQUIRE_THROWS_WITH(dump(Value(o)), Contains("invalid UTF-8"));
}

TEST_CASE("json: accessor type errors", "[json]") {
  REQUIRE_THROWS_WITH(parse("1").as_string(), Contains("JSON value is integer, expected string"));
  REQUIRE_THROWS_WITH(parse("\"x\"").as_array(), Contains("expected array"));
  REQUIRE_THROWS_WITH(parse("null").as_bool(), Contains("expected boolean"));
  CHECK(parse("[1,2]") != parse("[1,3]"));
  CHECK(parse("1") != parse("1.0"));
}
