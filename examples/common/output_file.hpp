#pragma once
// Output files of the tools: checked before any work (not an input, not a
// directory, in a writable directory) and written through PATH.tmp, renamed
// to PATH when complete, so a failed run leaves no partial output.

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>
#include <vector>

#include "headrecon/error.hpp"

namespace headrecon::cli {

/// Throws Error naming `option` and `path` unless `path` can be written
/// without harm: it is none of `inputs` (same name or same file), not a
/// directory, and its directory exists and is writable. Call before any work.
inline void check_output_path(const std::string& option, const std::string& path,
                              const std::vector<std::string>& inputs = {}) {
  namespace fs = std::filesystem;
  if (path.empty()) detail::fail(option, ": empty path");
  std::error_code ec;
  const fs::path p(path);
  for (const std::string& in : inputs) {
    if (in.empty()) continue;
    if (in == path || fs::equivalent(p, fs::path(in), ec))
      detail::fail(option, " ", path, " names the input file ", in, ": it would be overwritten");
  }
  if (fs::is_directory(p, ec)) detail::fail(option, " ", path, ": is a directory");
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  if (!fs::is_directory(dir, ec)) detail::fail(option, " ", path, ": directory ", dir.string(), " does not exist");
  if (::access(dir.c_str(), W_OK) != 0)
    detail::fail(option, " ", path, ": directory ", dir.string(), " is not writable (", std::strerror(errno), ")");
}

/// Writes `path` atomically: `write(tmp)` writes the file PATH.tmp, which is
/// then renamed to PATH. If `write` throws, PATH.tmp is removed and PATH is
/// left as it was.
template <class Write>
void write_atomically(const std::string& path, Write&& write) {
  const std::string tmp = path + ".tmp";
  try {
    write(tmp);
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    detail::fail(tmp, ": cannot rename to ", path, ": ", std::strerror(err));
  }
}

/// write_atomically for a text or binary stream: `write(os)` fills it; a
/// stream failure is an Error naming PATH.
template <class Write>
void write_stream_atomically(const std::string& path, Write&& write, std::ios::openmode mode = std::ios::out) {
  write_atomically(path, [&](const std::string& tmp) {
    std::ofstream os(tmp, mode | std::ios::trunc);
    if (!os) detail::fail(path, ": cannot open ", tmp, " for writing");
    write(os);
    os.close();
    if (!os) detail::fail(path, ": write failed");
  });
}

}  // namespace headrecon::cli
