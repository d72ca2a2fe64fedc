#pragma once
/// @file interval_set.hpp
/// A set of disjoint half-open ranges [lo, hi): which rows or bytes of a
/// streamed tensor have been written, and where the first gap is.

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <map>

namespace headrecon::detail {

/// Disjoint half-open ranges [lo, hi), merged when they touch.
class IntervalSet {
 public:
  /// True when [lo, hi) shares an element with the set; reports one such
  /// overlap as [olo, ohi).
  bool overlaps(std::uint64_t lo, std::uint64_t hi, std::uint64_t& olo, std::uint64_t& ohi) const {
    if (lo >= hi) return false;
    auto next = ranges_.lower_bound(hi);
    if (next == ranges_.begin()) return false;
    const auto prev = std::prev(next);
    if (prev->second <= lo) return false;
    olo = std::max(lo, prev->first);
    ohi = std::min(hi, prev->second);
    return true;
  }
  /// Adds [lo, hi), which must not overlap the set.
  void insert(std::uint64_t lo, std::uint64_t hi) {
    if (lo >= hi) return;
    total_ += hi - lo;
    auto next = ranges_.lower_bound(hi);
    if (next != ranges_.end() && next->first == hi) {
      hi = next->second;
      next = ranges_.erase(next);
    }
    if (next != ranges_.begin()) {
      const auto prev = std::prev(next);
      if (prev->second == lo) {
        lo = prev->first;
        ranges_.erase(prev);
      }
    }
    ranges_.emplace(lo, hi);
  }
  /// Total length of the set.
  std::uint64_t total() const { return total_; }
  /// The first element >= 0 not in the set.
  std::uint64_t first_gap() const {
    const auto it = ranges_.begin();
    return it != ranges_.end() && it->first == 0 ? it->second : 0;
  }
  /// The end of the gap that starts at first_gap() (or `limit`).
  std::uint64_t gap_end(std::uint64_t limit) const {
    const std::uint64_t g = first_gap();
    const auto it = ranges_.upper_bound(g);
    return it == ranges_.end() ? limit : it->first;
  }

 private:
  std::map<std::uint64_t, std::uint64_t> ranges_;
  std::uint64_t total_ = 0;
};

}  // namespace headrecon::detail
