#pragma once
/// @file file_io.hpp
/// Whole-range pread/pwrite on POSIX file descriptors, retried on EINTR and
/// short transfers; errors are Error naming the path.

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

#include "headrecon/error.hpp"

namespace headrecon::detail {

inline std::string errno_str(int e) { return std::strerror(e); }

/// pread exactly n bytes at `off`; throws Error naming `path` on failure, and
/// "short read ... truncated" when the file ends first.
inline void pread_all(int fd, const std::string& path, void* dst, std::uint64_t n,
                      std::uint64_t off) {
  auto* p = static_cast<unsigned char*>(dst);
  while (n > 0) {
    const std::size_t chunk = std::size_t(std::min<std::uint64_t>(n, std::uint64_t(1) << 30));
    const ssize_t r = ::pread(fd, p, chunk, off_t(off));
    if (r < 0) {
      if (errno == EINTR) continue;
      fail(path, ": read error at byte ", off, ": ", errno_str(errno));
    }
    if (r == 0) {
      struct stat st {};
      const bool sized = ::fstat(fd, &st) == 0;
      fail(path, ": short read: the file is truncated: it ends at byte ", off, " with ", n,
           " bytes still expected (expected at least ", off + n, " bytes",
           sized ? ", file is now " + std::to_string(st.st_size) + " bytes" : std::string(), ")");
    }
    p += r;
    n -= std::uint64_t(r);
    off += std::uint64_t(r);
  }
}

/// pwrite exactly n bytes at `off`; throws Error naming `path` on failure.
inline void pwrite_all(int fd, const std::string& path, const void* src, std::uint64_t n,
                       std::uint64_t off) {
  const auto* p = static_cast<const unsigned char*>(src);
  while (n > 0) {
    const std::size_t chunk = std::size_t(std::min<std::uint64_t>(n, std::uint64_t(1) << 30));
    const ssize_t r = ::pwrite(fd, p, chunk, off_t(off));
    if (r < 0) {
      if (errno == EINTR) continue;
      fail(path, ": write error at byte ", off, ": ", errno_str(errno));
    }
    if (r == 0) fail(path, ": write made no progress at byte ", off);
    p += r;
    n -= std::uint64_t(r);
    off += std::uint64_t(r);
  }
}

}  // namespace headrecon::detail
