#pragma once
// Helpers of the engine tests: the GGUF writer of gguf_craft.hpp and a check
// that opening a file fails with a message naming the culprit.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "gguf.hpp"
#include "gguf_craft.hpp"
#include "io_test_util.hpp"

namespace headrecon_engine_test {

namespace he = headrecon_engine;
using headrecon_test::TempDir;

/// Expects opening `bytes` (written to a temp file) to throw an Error whose
/// message contains every one of `parts` and the file name.
inline void expect_reject(const std::string& bytes, const std::vector<std::string>& parts) {
  TempDir d;
  const std::string p = d.file("bad.gguf");
  headrecon_test::write_file(p, bytes);
  try {
    he::GgufFile f(p);
    FAIL("accepted a malformed file; expected an error mentioning '" << (parts.empty() ? "" : parts[0]) << "'");
  } catch (const headrecon::Error& e) {
    const std::string msg = e.what();
    INFO("message: " << msg);
    CHECK(msg.find(p) != std::string::npos);
    for (const auto& s : parts) CHECK(msg.find(s) != std::string::npos);
  }
}


}  // namespace headrecon_engine_test
