// The strict JSON layer over nlohmann-json (detail/json.hpp): what the
// safetensors reader relies on beyond RFC 8259 parsing.
#include <catch2/catch.hpp>

#include <cstdint>
#include <limits>
#include <string>

#include "headrecon/detail/json.hpp"

using headrecon::Error;
using namespace headrecon::detail::json;
using Catch::Contains;

TEST_CASE("json: integers are exact in the int64 and uint64 ranges", "[json]") {
  CHECK(parse("0").is_number_unsigned());
  CHECK(parse("-0").get<std::int64_t>() == 0);
  CHECK(parse("123").get<std::uint64_t>() == 123u);
  CHECK(parse("-123").get<std::int64_t>() == -123);
  CHECK(parse("9223372036854775807").get<std::int64_t>() == std::numeric_limits<std::int64_t>::max());
  CHECK(parse("-9223372036854775808").get<std::int64_t>() == std::numeric_limits<std::int64_t>::min());
  CHECK(parse("18446744073709551615").get<std::uint64_t>() == std::numeric_limits<std::uint64_t>::max());
  CHECK(parse("18446744073709551614").get<std::uint64_t>() == std::numeric_limits<std::uint64_t>::max() - 1);
  CHECK(parse("1.5").get<double>() == 1.5);
  CHECK(parse("-2.5e3").get<double>() == -2500.0);
  CHECK(std::string(type_name(parse("7"))) == "integer");
  CHECK(std::string(type_name(parse("-7"))) == "integer");
  CHECK(std::string(type_name(parse("7.0"))) == "number");
  CHECK(std::string(type_name(parse("1E2"))) == "number");
  CHECK(std::string(type_name(parse("null"))) == "null");
  CHECK(std::string(type_name(parse("true"))) == "boolean");
  CHECK(std::string(type_name(parse("\"s\""))) == "string");
  CHECK(std::string(type_name(parse("[]"))) == "array");
  CHECK(std::string(type_name(parse("{}"))) == "object");
}

TEST_CASE("json: integers outside int64/uint64 are rejected, not rounded", "[json]") {
  // nlohmann alone would return these as doubles.
  REQUIRE_THROWS_WITH(parse("18446744073709551616"),
                      Contains("integer 18446744073709551616 is out of range (int64 / uint64)"));
  REQUIRE_THROWS_WITH(parse("-9223372036854775809"), Contains("out of range"));
  REQUIRE_THROWS_WITH(parse("[0, 99999999999999999999999]"), Contains("integer 99999999999999999999999"));
  REQUIRE_THROWS_WITH(parse("1e999"), Contains("number overflow"));
  REQUIRE_THROWS_AS(parse("{\"a\":-1e400}"), Error);
  CHECK(parse("1e300").get<double>() == 1e300);
}

TEST_CASE("json: strings, escapes and UTF-8", "[json]") {
  CHECK(parse(R"("a\"b\\c\/d\b\f\n\r\t")").get<std::string>() == "a\"b\\c/d\b\f\n\r\t");
  CHECK(parse(R"("\u00e9")").get<std::string>() == "\xc3\xa9");
  CHECK(parse(R"("\ud83d\ude00")").get<std::string>() == "\xf0\x9f\x98\x80");
  CHECK(parse(R"("\u0000")").get<std::string>() == std::string(1, '\0'));
  CHECK(parse("\"\xf0\x9f\x98\x80 raw\"").get<std::string>() == "\xf0\x9f\x98\x80 raw");
  REQUIRE_THROWS_WITH(parse(R"("\ud83d")"), Contains("surrogate"));
  REQUIRE_THROWS_WITH(parse(R"("\ude00")"), Contains("surrogate"));
  REQUIRE_THROWS_WITH(parse(R"("\x")"), Contains("invalid JSON at byte"));
  REQUIRE_THROWS_WITH(parse(R"("\u12G4")"), Contains("hex digits"));
  REQUIRE_THROWS_WITH(parse("\"a\nb\""), Contains("control character"));
  REQUIRE_THROWS_WITH(parse("\"abc"), Contains("missing closing quote"));
  for (const char* bad : {"\"\xff\"", "\"\xc0\x80\"", "\"\xed\xa0\x80\"", "\"\xf4\x90\x80\x80\"", "\"\xe2\x82\""}) {
    INFO("input " << bad);
    REQUIRE_THROWS_WITH(parse(bad), Contains("ill-formed UTF-8"));
  }
  REQUIRE_THROWS_WITH(parse("\xEF\xBB\xBF{}"), Contains("byte order mark"));
}

TEST_CASE("json: objects keep file order and reject duplicate keys, naming the object", "[json]") {
  const Json v = parse(R"({"z": 1, "a": [true, null, "s"], "m": {"x": -1}})");
  REQUIRE(v.is_object());
  std::string order;
  for (const auto& [k, x] : v.items()) order += k;
  CHECK(order == "zam");
  CHECK(v.at("a").size() == 3);
  CHECK(v.at("m").at("x").get<int>() == -1);
  REQUIRE_THROWS_WITH(parse(R"({"a": 1, "b": 2, "a": 3})"),
                      Contains("duplicate key \"a\" in the top-level object"));
  REQUIRE_THROWS_WITH(parse(R"({"t": {"dtype": "F32", "dtype": "F16"}})"),
                      Contains("duplicate key \"dtype\" in object \"t\""));
  REQUIRE_THROWS_WITH(parse(R"([{"k": 1, "k": 1}])"), Contains("duplicate key \"k\" in an object in an array"));
  CHECK(parse(R"({"a": {"a": 1}, "b": {"a": 2}})").is_object());  // same key in different objects
  // Many members: duplicate detection is not quadratic and order survives.
  std::string big = "{";
  for (int i = 0; i < 20000; ++i) big += (i ? ",\"" : "\"") + std::to_string(i) + "\":" + std::to_string(i);
  const Json b = parse(big + "}");
  CHECK(b.size() == 20000);
  CHECK(b.begin().key() == "0");
  CHECK((--b.end()).key() == "19999");
  REQUIRE_THROWS_WITH(parse(big + ",\"7\":0}"), Contains("duplicate key \"7\""));
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
  REQUIRE_THROWS_WITH(parse(std::string(100000, '[')), Contains("nesting deeper"));
}

TEST_CASE("json: syntax errors name the byte", "[json]") {
  REQUIRE_THROWS_WITH(parse("{\"a\":"), Contains("invalid JSON at byte 5") && Contains("unexpected end of input"));
  REQUIRE_THROWS_WITH(parse("{} x"), Contains("at byte 3") && Contains("expected end of input"));
  REQUIRE_THROWS_WITH(parse(""), Contains("at byte 0"));
  REQUIRE_THROWS_WITH(parse("[1,]"), Contains("at byte 3"));
  REQUIRE_THROWS_WITH(parse("01"), Contains("expected end of input"));
  for (const char* bad : {"[1 2]", R"({"a" 1})", R"({"a":1,})", R"({1:2})", "-", "+1", "1.", ".5", "1e", "tru",
                          "NaN", "Infinity", "[1]\x01", "{", "// c\n1", "'a'"}) {
    INFO("input " << bad);
    REQUIRE_THROWS_WITH(parse(bad), Contains("invalid JSON at byte"));
  }
}

TEST_CASE("json: dump is compact and round-trips; bad UTF-8 is an Error", "[json]") {
  Json o = Json::object();
  append_member(o, "b", true);
  append_member(o, "n", nullptr);
  append_member(o, "i", -42);
  append_member(o, "u", std::numeric_limits<std::uint64_t>::max());
  append_member(o, "d", 0.1);
  append_member(o, "s", "q\"\\\n\x01\xc3\xa9");
  append_member(o, "a", Json::array({1, 2.5, "x"}));
  const std::string text = dump(o);
  CHECK(text ==
        "{\"b\":true,\"n\":null,\"i\":-42,\"u\":18446744073709551615,\"d\":0.1,"
        "\"s\":\"q\\\"\\\\\\n\\u0001\xc3\xa9\",\"a\":[1,2.5,\"x\"]}");
  CHECK(parse(text) == o);
  CHECK(dump(Json(1.0)) == "1.0");
  REQUIRE_THROWS_WITH(dump(Json("a\xff")), Contains("JSON dump") && Contains("invalid UTF-8 byte at index 1"));
  CHECK_NOTHROW(check_utf8("h\xc3\xa9llo", "name"));
  REQUIRE_THROWS_WITH(check_utf8("\xc0", "tensor name"), Contains("tensor name is not valid UTF-8"));
}
