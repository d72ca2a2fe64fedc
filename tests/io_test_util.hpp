#pragma once
// Helpers shared by the file-format tests: a unique temporary directory and
// raw safetensors byte builders for crafting malformed files.

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <stdexcept>
#include <string>
#include <system_error>

namespace headrecon_test {

/// A fresh directory under temp_directory_path(), removed with its contents.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    const auto base = std::filesystem::temp_directory_path();
    for (int attempt = 0; attempt < 100; ++attempt) {
      const auto p = base / ("headrecon-test-" + std::to_string(::getpid()) + "-" +
                             std::to_string(rd()) + "-" + std::to_string(attempt));
      std::error_code ec;
      if (std::filesystem::create_directory(p, ec) && !ec) {
        path_ = p;
        return;
      }
    }
    throw std::runtime_error("cannot create a temporary directory");
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  /// Path of `name` inside the directory.
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

/// Writes `bytes` to `path`, replacing it.
inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream os(path, std::ios::binary | std::ios::trunc);
  os.write(bytes.data(), std::streamsize(bytes.size()));
  if (!os) throw std::runtime_error("cannot write " + path);
}

/// The 8-byte little-endian encoding of n.
inline std::string le64(std::uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[std::size_t(i)] = char((n >> (8 * i)) & 0xff);
  return s;
}

/// A safetensors file: length of `header`, `header`, `data`.
inline std::string raw_safetensors(const std::string& header, const std::string& data) {
  return le64(header.size()) + header + data;
}

}  // namespace headrecon_test
