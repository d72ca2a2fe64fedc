#pragma once
// Helpers of the fuzz targets: the input as a file the readers can open (an
// in-memory memfd, reused across inputs), and the contract every target
// checks -- a parser either succeeds or throws headrecon::Error; anything
// else (another exception, a crash, a sanitizer report, a failed property)
// is a finding.

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "headrecon/error.hpp"

namespace headrecon_fuzz {

/// Writes `data` into this process's memfd and returns a path that opens it.
inline const std::string& as_file(const std::uint8_t* data, std::size_t size) {
  static const int fd = [] {
    const int f = ::memfd_create("headrecon-fuzz-input", MFD_CLOEXEC);
    if (f < 0) {
      std::perror("memfd_create");
      std::abort();
    }
    return f;
  }();
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
  if (::ftruncate(fd, 0) != 0 || (size && ::pwrite(fd, data, size, 0) != ssize_t(size))) {
    std::perror("memfd write");
    std::abort();
  }
  return path;
}

/// Stops the run when a property does not hold (a finding, like a crash).
inline void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz property failed: %s\n", what);
    std::abort();
  }
}

}  // namespace headrecon_fuzz
