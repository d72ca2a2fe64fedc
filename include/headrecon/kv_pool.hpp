#pragma once
/// @file kv_pool.hpp
/// Memory for a KvStore's pool: one zero-filled anonymous mapping aligned to
/// 2 MiB, with transparent huge pages requested (Linux, madvise). A decode
/// step streams the whole cache, and a paged store's blocks of one layer are
/// far apart, so with 4 KiB pages nearly every block of rows starts in a page
/// the TLB has not seen. Measured on Emerald Rapids (8k tokens, 2 threads,
/// THP in "madvise" mode as Debian ships it; BENCHMARKS.md): a paged store's
/// full-cache attention 1.09-1.16x faster on 2 MiB pages, reference-only
/// 1.00-1.09x; a contiguous store (the example engine's) 1.01-1.12x. Where
/// the OS has no transparent huge pages (or they are set to "never") the
/// pool is an ordinary mapping.

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <utility>

#include "headrecon/error.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#define HEADRECON_KV_POOL_MMAP 1
#endif

namespace headrecon {

/// How a KvPool is allocated. Fill the fields by name.
struct KvPoolOptions {
  bool huge_pages = true;  ///< ask the OS for 2 MiB pages (madvise(MADV_HUGEPAGE); Linux only)
};

/// A caller-owned pool for KvStore (KvStore::pool_bytes bytes), zero-filled,
/// aligned to kAlign. Move-only; frees its memory when destroyed.
class KvPool {
 public:
  /// Alignment of data(): one huge page on x86-64 and arm64 Linux.
  static constexpr std::size_t kAlign = std::size_t(2) << 20;

  KvPool() = default;
  /// A pool of `bytes` (0: an empty pool, data() null). Throws Error naming the
  /// size when the OS refuses it; nothing is allocated then.
  explicit KvPool(std::size_t bytes, const KvPoolOptions& options = {}) : size_(bytes) {
    if (bytes == 0) return;
    if (bytes > std::numeric_limits<std::size_t>::max() / 2 - 2 * kAlign)
      detail::fail("KvPool: ", bytes, " bytes is not an allocatable size");
    mapped_ = round_up(bytes);
#ifdef HEADRECON_KV_POOL_MMAP
    // Map one alignment more than needed, then unmap the unaligned head and tail.
    const std::size_t over = mapped_ + kAlign;
    void* p = ::mmap(nullptr, over, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      const int e = errno;
      detail::fail("KvPool: cannot map ", bytes, " bytes: ", std::strerror(e));
    }
    const auto at = reinterpret_cast<std::uintptr_t>(p);
    const std::uintptr_t aligned = (at + kAlign - 1) & ~std::uintptr_t(kAlign - 1);
    if (aligned > at) ::munmap(p, aligned - at);
    if (at + over > aligned + mapped_)
      ::munmap(reinterpret_cast<void*>(aligned + mapped_), at + over - aligned - mapped_);
    data_ = reinterpret_cast<std::byte*>(aligned);
#if defined(MADV_HUGEPAGE)
    // Best effort: EINVAL where the kernel has no THP. Pages come zero-filled on first touch.
    huge_ = options.huge_pages && ::madvise(data_, mapped_, MADV_HUGEPAGE) == 0;
#else
    (void)options;
#endif
#else
    (void)options;
    data_ = static_cast<std::byte*>(::operator new(mapped_, std::align_val_t(kAlign)));
    std::memset(data_, 0, mapped_);
#endif
  }
  KvPool(const KvPool&) = delete;
  KvPool& operator=(const KvPool&) = delete;
  KvPool(KvPool&& o) noexcept { swap(o); }
  KvPool& operator=(KvPool&& o) noexcept {
    KvPool(std::move(o)).swap(*this);
    return *this;
  }
  ~KvPool() {
    if (!data_) return;
#ifdef HEADRECON_KV_POOL_MMAP
    ::munmap(data_, mapped_);
#else
    ::operator delete(data_, std::align_val_t(kAlign));
#endif
  }

  std::byte* data() { return data_; }
  const std::byte* data() const { return data_; }
  /// The bytes asked for (the mapping is rounded up to whole kAlign).
  std::size_t size() const { return size_; }
  /// Whether the OS accepted the huge-page request (it may still back some
  /// of the pool with 4 KiB pages when it has no free 2 MiB ones).
  bool huge_pages() const { return huge_; }

 private:
  static std::size_t round_up(std::size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
  void swap(KvPool& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    std::swap(mapped_, o.mapped_);
    std::swap(huge_, o.huge_);
  }

  std::byte* data_ = nullptr;
  std::size_t size_ = 0, mapped_ = 0;
  bool huge_ = false;
};

}  // namespace headrecon
