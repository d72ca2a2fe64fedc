#pragma once
/// @file safetensors.hpp
/// The safetensors container: an 8-byte little-endian header length N, N bytes
/// of JSON (tensor name -> dtype, shape, data_offsets; optional __metadata__),
/// then the data buffer. Reading is lazy (pread); writing streams to PATH.tmp
/// and renames it to PATH on finish().

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "headrecon/detail/json.hpp"
#include "headrecon/dtype.hpp"
#include "headrecon/error.hpp"

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__)
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "headrecon's safetensors I/O assumes a little-endian host");
#endif

namespace headrecon {

/// Size in bytes of one element of the safetensors dtype `name` ("F32",
/// "I64", ...), or 0 when the dtype is unknown or not byte-sized.
inline std::size_t safetensors_dtype_size(std::string_view name) {
  static constexpr std::pair<std::string_view, std::size_t> table[] = {
      {"BOOL", 1},    {"U8", 1},      {"I8", 1},       {"F8_E5M2", 1}, {"F8_E4M3", 1},
      {"F8_E8M0", 1}, {"I16", 2},     {"U16", 2},      {"F16", 2},     {"BF16", 2},
      {"I32", 4},     {"U32", 4},     {"F32", 4},      {"I64", 8},     {"U64", 8},
      {"F64", 8},     {"C64", 8},
  };
  for (const auto& [n, size] : table)
    if (n == name) return size;
  return 0;
}

/// The safetensors dtype name of C++ element type T (`safetensors_dtype<T>::name`).
template <class T>
struct safetensors_dtype;
#define HEADRECON_ST_DTYPE(T, N)                   \
  template <>                                      \
  struct safetensors_dtype<T> {                    \
    static constexpr std::string_view name = N;    \
  }
HEADRECON_ST_DTYPE(std::uint8_t, "U8");
HEADRECON_ST_DTYPE(std::int8_t, "I8");
HEADRECON_ST_DTYPE(std::uint16_t, "U16");
HEADRECON_ST_DTYPE(std::int16_t, "I16");
HEADRECON_ST_DTYPE(std::uint32_t, "U32");
HEADRECON_ST_DTYPE(std::int32_t, "I32");
HEADRECON_ST_DTYPE(std::uint64_t, "U64");
HEADRECON_ST_DTYPE(std::int64_t, "I64");
HEADRECON_ST_DTYPE(float, "F32");
HEADRECON_ST_DTYPE(double, "F64");
HEADRECON_ST_DTYPE(f16_t, "F16");
HEADRECON_ST_DTYPE(bf16_t, "BF16");
#undef HEADRECON_ST_DTYPE

/// One tensor of a safetensors file; begin/end are byte offsets into the data
/// buffer (which starts right after the header).
struct TensorInfo {
  std::string name;
  std::string dtype;
  std::vector<std::uint64_t> shape;
  std::uint64_t begin = 0, end = 0;

  /// Size of the tensor's data in bytes.
  std::uint64_t bytes() const { return end - begin; }
  /// Number of elements (product of the shape; 1 for a scalar).
  std::uint64_t numel() const {
    std::uint64_t n = 1;
    for (auto s : shape) n *= s;
    return n;
  }
};

namespace detail {

/// Largest header the reader accepts (the reference implementation's limit).
inline constexpr std::uint64_t safetensors_max_header = 100'000'000;

inline std::string shape_str(const std::vector<std::uint64_t>& shape) {
  std::ostringstream os;
  os << '[';
  for (std::size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

/// Bytes needed by `shape` of elements of `esize` bytes; false on uint64 overflow.
inline bool shape_bytes(const std::vector<std::uint64_t>& shape, std::uint64_t esize,
                        std::uint64_t& out) {
  std::uint64_t n = esize;
  bool zero = esize == 0;
  bool overflow = false;
  for (auto s : shape) {
    if (s == 0) zero = true;
    if (!overflow && s != 0 && n > std::numeric_limits<std::uint64_t>::max() / s) overflow = true;
    if (!overflow) n *= s;
  }
  if (zero) {
    out = 0;
    return true;
  }
  out = n;
  return !overflow;
}

inline std::string errno_str(int e) { return std::strerror(e); }

/// pread exactly n bytes at `off`; throws Error naming `path` on failure or EOF.
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
    if (r == 0)
      fail(path, ": short read: end of file at byte ", off, " with ", n,
           " bytes still expected (file truncated?)");
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

/// A set of disjoint half-open ranges [lo, hi), merged when they touch; tracks
/// which rows or bytes of a streamed tensor have been written.
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

/// The metadata value of `key`; throws Error "PATH: missing metadata key 'KEY'".
inline const std::string& meta_get(const std::map<std::string, std::string>& md,
                                   const std::string& path, const std::string& key) {
  const auto it = md.find(key);
  if (it == md.end()) fail(path, ": missing metadata key '", key, "'");
  return it->second;
}

/// Parses a decimal index (digits only, no sign, no spaces); false when
/// malformed or above `max`.
inline bool parse_decimal(std::string_view s, std::uint64_t max, std::uint64_t& out) {
  if (s.empty() || s.size() > 20) return false;
  std::uint64_t v = 0;
  for (const char c : s) {
    if (c < '0' || c > '9') return false;
    const std::uint64_t d = std::uint64_t(c - '0');
    if (d > max || v > (max - d) / 10) return false;
    v = v * 10 + d;
  }
  out = v;
  return true;
}

/// The metadata value of `key` as an integer in [lo, hi]; throws Error naming
/// the file, key and value when it is absent, not fully a decimal number, or
/// out of range.
inline std::uint64_t meta_uint(const std::map<std::string, std::string>& md,
                               const std::string& path, const std::string& key, std::uint64_t lo,
                               std::uint64_t hi) {
  const std::string& s = meta_get(md, path, key);
  std::uint64_t v = 0;
  const bool digits = !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
  if (!digits) fail(path, ": metadata '", key, "' = '", s, "' is not a non-negative integer");
  if (!parse_decimal(s, std::numeric_limits<std::uint64_t>::max(), v) || v < lo || v > hi)
    fail(path, ": metadata '", key, "' = '", s, "' is out of range [", lo, ", ", hi, "]");
  return v;
}

/// The metadata value of `key` as "true" or "false"; throws Error otherwise.
inline bool meta_bool(const std::map<std::string, std::string>& md, const std::string& path,
                      const std::string& key) {
  const std::string& s = meta_get(md, path, key);
  if (s == "true") return true;
  if (s == "false") return false;
  fail(path, ": metadata '", key, "' = '", s, "' is not 'true' or 'false'");
}

/// Checks metadata `format` and `version`; throws Error naming the file.
inline void meta_check_format(const std::map<std::string, std::string>& md,
                              const std::string& path, std::string_view format,
                              std::string_view version) {
  const std::string& f = meta_get(md, path, "format");
  if (f != format) fail(path, ": metadata format is '", f, "', expected '", format, "'");
  const std::string& v = meta_get(md, path, "version");
  if (v != version)
    fail(path, ": unsupported ", format, " version '", v, "' (expected ", version, ")");
}

}  // namespace detail

/// A safetensors file opened for reading. The header is parsed and fully
/// validated by the constructor; tensor data is read on demand with pread.
class SafetensorsFile {
 public:
  /// Opens and validates `path`; throws Error naming the file, the tensor and
  /// the numbers involved for any malformation (bad header length, bad JSON,
  /// bad entries, unknown dtype, size mismatch, overlaps, holes, trailing bytes).
  explicit SafetensorsFile(std::string path) : path_(std::move(path)) {
    fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) detail::fail(path_, ": cannot open: ", detail::errno_str(errno));
    try {
      load();
    } catch (...) {
      ::close(fd_);
      fd_ = -1;
      throw;
    }
  }
  ~SafetensorsFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  SafetensorsFile(SafetensorsFile&& o) noexcept
      : path_(std::move(o.path_)),
        fd_(std::exchange(o.fd_, -1)),
        file_size_(o.file_size_),
        data_offset_(o.data_offset_),
        metadata_(std::move(o.metadata_)),
        tensors_(std::move(o.tensors_)),
        index_(std::move(o.index_)) {}
  SafetensorsFile& operator=(SafetensorsFile&& o) noexcept {
    if (this != &o) {
      if (fd_ >= 0) ::close(fd_);
      path_ = std::move(o.path_);
      fd_ = std::exchange(o.fd_, -1);
      file_size_ = o.file_size_;
      data_offset_ = o.data_offset_;
      metadata_ = std::move(o.metadata_);
      tensors_ = std::move(o.tensors_);
      index_ = std::move(o.index_);
    }
    return *this;
  }

  /// The path the file was opened with.
  const std::string& path() const { return path_; }
  /// Size of the whole file in bytes.
  std::uint64_t file_size() const { return file_size_; }
  /// Offset of the data buffer in the file (8 + header length).
  std::uint64_t data_offset() const { return data_offset_; }
  /// The string map of "__metadata__" (empty when absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  /// All tensors, in header order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }

  /// The tensor called `name`, or nullptr.
  const TensorInfo* find(std::string_view name) const {
    const auto it = index_.find(name);
    return it == index_.end() ? nullptr : &tensors_[it->second];
  }
  /// The tensor called `name`; throws Error "PATH: missing tensor NAME".
  const TensorInfo& get(std::string_view name) const {
    if (const TensorInfo* t = find(name)) return *t;
    detail::fail(path_, ": missing tensor ", name);
  }

  /// Reads bytes [offset, offset + n) of tensor `t` into dst. Throws Error
  /// naming the file and tensor when the range is outside the tensor, and on
  /// read errors or short reads.
  void read_bytes(const TensorInfo& t, std::uint64_t offset, std::uint64_t n, void* dst) const {
    if (t.end < t.begin || t.end > file_size_ - data_offset_)
      detail::fail(path_, ": tensor '", t.name, "': data_offsets [", t.begin, ", ", t.end,
                   "] are not inside the data buffer of ", file_size_ - data_offset_, " bytes");
    if (offset > t.bytes() || n > t.bytes() - offset)
      detail::fail(path_, ": tensor '", t.name, "': read of bytes [", offset, ", +", n,
                   ") is outside its ", t.bytes(), " bytes");
    if (n == 0) return;
    if (dst == nullptr) detail::fail(path_, ": tensor '", t.name, "': null destination");
    try {
      detail::pread_all(fd_, path_, dst, n, data_offset_ + t.begin + offset);
    } catch (const Error& e) {
      detail::fail(e.what(), " (tensor '", t.name, "')");
    }
  }

  /// Reads all of tensor `name` as elements of type T; throws Error when the
  /// tensor is missing or its dtype is not safetensors_dtype<T>::name.
  template <class T>
  std::vector<T> read_all(std::string_view name) const {
    const TensorInfo& t = get(name);
    if (t.dtype != safetensors_dtype<T>::name)
      detail::fail(path_, ": tensor '", t.name, "' has dtype ", t.dtype, ", expected ",
                   safetensors_dtype<T>::name);
    std::vector<T> out(std::size_t(t.bytes() / sizeof(T)));
    read_bytes(t, 0, t.bytes(), out.data());
    return out;
  }

 private:
  template <class... Parts>
  [[noreturn]] void bad(const Parts&... parts) const {
    detail::fail(path_, ": ", parts...);
  }

  void load() {
    struct stat st;
    if (::fstat(fd_, &st) != 0) bad("cannot stat: ", detail::errno_str(errno));
    if (!S_ISREG(st.st_mode)) bad("not a regular file");
    file_size_ = std::uint64_t(st.st_size);
    if (file_size_ < 8)
      bad("file is ", file_size_, " bytes, too short for the 8-byte header length");
    unsigned char len_bytes[8];
    detail::pread_all(fd_, path_, len_bytes, 8, 0);
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];
    if (n == 0) bad("header length is 0");
    if (n > file_size_ - 8)
      bad("header length ", n, " exceeds the ", file_size_ - 8,
          " bytes that follow the length field");
    if (n > detail::safetensors_max_header)
      bad("header length ", n, " exceeds the limit of ", detail::safetensors_max_header, " bytes");
    data_offset_ = 8 + n;
    std::string text(std::size_t(n), '\0');
    detail::pread_all(fd_, path_, text.data(), n, 8);

    detail::json::Value root;
    try {
      root = detail::json::parse(text);
    } catch (const Error& e) {
      bad("header: ", e.what());
    }
    if (!root.is_object())
      bad("header is a JSON ", detail::json::type_name(root.type()), ", expected an object");

    const std::uint64_t data_size = file_size_ - data_offset_;
    for (const auto& [name, entry] : root.as_object()) {
      if (name == "__metadata__") {
        parse_metadata(entry);
        continue;
      }
      tensors_.push_back(parse_entry(name, entry, data_size));
    }
    for (std::size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
    check_coverage(data_size);
  }

  void parse_metadata(const detail::json::Value& v) {
    if (v.is_null()) return;
    if (!v.is_object())
      bad("__metadata__ is a JSON ", detail::json::type_name(v.type()), ", expected an object");
    for (const auto& [key, val] : v.as_object()) {
      if (!val.is_string())
        bad("__metadata__ value of key '", key, "' is a JSON ", detail::json::type_name(val.type()),
            ", expected a string");
      metadata_.emplace(key, val.as_string());
    }
  }

  TensorInfo parse_entry(const std::string& name, const detail::json::Value& v,
                         std::uint64_t data_size) const {
    using detail::json::type_name;
    if (!v.is_object())
      bad("tensor '", name, "': entry is a JSON ", type_name(v.type()), ", expected an object");
    const auto field = [&](const char* key) -> const detail::json::Value& {
      const detail::json::Value* f = v.find(key);
      if (!f) bad("tensor '", name, "': missing field \"", key, "\"");
      return *f;
    };
    const auto uint_at = [&](const detail::json::Value& x, const char* what,
                             std::size_t i) -> std::uint64_t {
      if (!x.is_integer() || x.is_negative_integer()) {
        std::string shown = x.is_integer() ? detail::json::dump(x) : type_name(x.type());
        bad("tensor '", name, "': ", what, "[", i, "] is ", shown,
            ", expected a non-negative integer");
      }
      return x.magnitude();
    };
    TensorInfo t;
    t.name = name;
    const auto& dtype = field("dtype");
    if (!dtype.is_string())
      bad("tensor '", name, "': field \"dtype\" is a JSON ", type_name(dtype.type()),
          ", expected a string");
    t.dtype = dtype.as_string();
    const std::size_t esize = safetensors_dtype_size(t.dtype);
    if (esize == 0) bad("tensor '", name, "': unknown dtype '", t.dtype, "'");
    const auto& shape = field("shape");
    if (!shape.is_array())
      bad("tensor '", name, "': field \"shape\" is a JSON ", type_name(shape.type()),
          ", expected an array");
    for (std::size_t i = 0; i < shape.as_array().size(); ++i)
      t.shape.push_back(uint_at(shape.as_array()[i], "shape", i));
    const auto& offs = field("data_offsets");
    if (!offs.is_array())
      bad("tensor '", name, "': field \"data_offsets\" is a JSON ", type_name(offs.type()),
          ", expected an array");
    if (offs.as_array().size() != 2)
      bad("tensor '", name, "': data_offsets has ", offs.as_array().size(),
          " elements, expected 2 [begin, end]");
    t.begin = uint_at(offs.as_array()[0], "data_offsets", 0);
    t.end = uint_at(offs.as_array()[1], "data_offsets", 1);
    if (t.end < t.begin)
      bad("tensor '", name, "': data_offsets [", t.begin, ", ", t.end, "] end before they begin");
    if (t.end > data_size)
      bad("tensor '", name, "': data_offsets [", t.begin, ", ", t.end,
          "] extend past the data buffer of ", data_size, " bytes");
    std::uint64_t need = 0;
    if (!detail::shape_bytes(t.shape, esize, need))
      bad("tensor '", name, "': shape ", detail::shape_str(t.shape), " of ", t.dtype,
          " overflows 64-bit byte counts");
    if (need != t.end - t.begin)
      bad("tensor '", name, "': shape ", detail::shape_str(t.shape), " of ", t.dtype, " needs ",
          need, " bytes but data_offsets [", t.begin, ", ", t.end, "] span ", t.end - t.begin);
    return t;
  }

  void check_coverage(std::uint64_t data_size) const {
    std::vector<const TensorInfo*> order;
    for (const auto& t : tensors_) order.push_back(&t);
    std::sort(order.begin(), order.end(), [](const TensorInfo* a, const TensorInfo* b) {
      return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
    });
    std::uint64_t covered = 0;
    const TensorInfo* prev = nullptr;
    for (const TensorInfo* t : order) {
      if (t->begin > covered)
        bad("hole in the data buffer: bytes [", covered, ", ", t->begin,
            ") belong to no tensor (next tensor '", t->name, "')");
      if (t->begin < covered)
        bad("tensor '", t->name, "' data_offsets [", t->begin, ", ", t->end, "] overlap tensor '",
            prev->name, "' [", prev->begin, ", ", prev->end, "]");
      covered = t->end;
      prev = t;
    }
    if (covered != data_size)
      bad(data_size - covered, " trailing bytes after the last tensor (data buffer is ", data_size,
          " bytes, tensors cover ", covered, ")");
  }

  std::string path_;
  int fd_ = -1;
  std::uint64_t file_size_ = 0;
  std::uint64_t data_offset_ = 0;
  std::map<std::string, std::string> metadata_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::size_t, std::less<>> index_;
};

/// Writes a safetensors file. Declare every tensor first, with add() (data kept
/// in memory) or reserve() (data streamed later); begin_stream() writes the
/// header and the in-memory data; write_rows() then fills reserved tensors at
/// any byte offset; finish() checks every reserved byte was written exactly
/// once and renames PATH.tmp to PATH. Without finish(), PATH.tmp is removed.
class SafetensorsWriter {
 public:
  /// Prepares to write `path` (nothing touches the disk before begin_stream()).
  explicit SafetensorsWriter(std::string path) : path_(std::move(path)), tmp_(path_ + ".tmp") {}
  ~SafetensorsWriter() { abandon(); }
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;
  SafetensorsWriter(SafetensorsWriter&& o) noexcept
      : path_(std::move(o.path_)),
        tmp_(std::move(o.tmp_)),
        state_(std::exchange(o.state_, State::finished)),
        fd_(std::exchange(o.fd_, -1)),
        data_offset_(o.data_offset_),
        metadata_(std::move(o.metadata_)),
        entries_(std::move(o.entries_)),
        index_(std::move(o.index_)) {}
  SafetensorsWriter& operator=(SafetensorsWriter&&) = delete;

  /// The final path.
  const std::string& path() const { return path_; }

  /// Sets (or replaces) metadata key -> value (valid UTF-8); only before begin_stream().
  void set_metadata(std::string key, std::string value) {
    require(State::declaring, "set_metadata");
    for (const std::string* s : {&key, &value})
      if (detail::json::impl::invalid_utf8(*s) != std::string::npos)
        detail::fail(path_, ": metadata '", key, "': key and value must be valid UTF-8");
    metadata_[std::move(key)] = std::move(value);
  }

  /// Declares a tensor and copies its `bytes` bytes of data, which must equal
  /// the size implied by dtype and shape. Only before begin_stream().
  void add(std::string name, std::string dtype, std::vector<std::uint64_t> shape,
           const void* data, std::uint64_t bytes) {
    require(State::declaring, "add");
    const std::uint64_t need = check_decl(name, dtype, shape);
    if (bytes != need)
      detail::fail(path_, ": tensor '", name, "': shape ", detail::shape_str(shape), " of ", dtype,
                   " needs ", need, " bytes, got ", bytes);
    if (bytes && !data) detail::fail(path_, ": tensor '", name, "': null data");
    const auto* p = static_cast<const std::byte*>(data);
    declare(std::move(name), std::move(dtype), std::move(shape)).data.assign(p, p + bytes);
  }

  /// Declares a tensor whose data will be written with write_rows().
  void reserve(std::string name, std::string dtype, std::vector<std::uint64_t> shape) {
    require(State::declaring, "reserve");
    declare(std::move(name), std::move(dtype), std::move(shape)).streamed = true;
  }

  /// Fixes the layout (tensors ordered by element size, largest first, so each
  /// is aligned), writes the header and in-memory data to PATH.tmp.
  void begin_stream() {
    require(State::declaring, "begin_stream");
    std::vector<std::size_t> order(entries_.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      return safetensors_dtype_size(entries_[a].info.dtype) >
             safetensors_dtype_size(entries_[b].info.dtype);
    });
    std::uint64_t off = 0;
    for (std::size_t i : order) {
      TensorInfo& t = entries_[i].info;
      const std::uint64_t n = t.end;  // declare() stored the size in end
      if (off > std::numeric_limits<std::uint64_t>::max() - n)
        detail::fail(path_, ": total data size overflows 64 bits");
      t.begin = off;
      t.end = off + n;
      off += n;
    }
    const std::uint64_t data_size = off;

    using detail::json::Value;
    Value::Object root;
    if (!metadata_.empty()) {
      Value::Object meta;
      for (const auto& [k, v] : metadata_) meta.emplace_back(k, Value(v));
      root.emplace_back("__metadata__", Value(std::move(meta)));
    }
    for (std::size_t i : order) {
      const TensorInfo& t = entries_[i].info;
      Value::Array shape;
      for (auto s : t.shape) shape.emplace_back(s);
      Value::Object obj;
      obj.emplace_back("dtype", Value(t.dtype));
      obj.emplace_back("shape", Value(std::move(shape)));
      obj.emplace_back("data_offsets", Value(Value::Array{Value(t.begin), Value(t.end)}));
      root.emplace_back(t.name, Value(std::move(obj)));
    }
    std::string header;
    try {
      header = detail::json::dump(Value(std::move(root)));
    } catch (const Error& e) {
      detail::fail(path_, ": cannot write header: ", e.what());
    }
    while (header.size() % 8 != 0) header += ' ';  // data buffer starts 8-byte aligned
    data_offset_ = 8 + header.size();

    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) detail::fail(tmp_, ": cannot create: ", detail::errno_str(errno));
    state_ = State::streaming;
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(header.size() >> (8 * i));
    detail::pwrite_all(fd_, tmp_, len, 8, 0);
    detail::pwrite_all(fd_, tmp_, header.data(), header.size(), 8);
    for (Entry& e : entries_) {
      if (e.streamed) continue;
      detail::pwrite_all(fd_, tmp_, e.data.data(), e.data.size(), data_offset_ + e.info.begin);
      e.data = {};
    }
    if (::ftruncate(fd_, off_t(data_offset_ + data_size)) != 0)
      detail::fail(tmp_, ": cannot set the file size: ", detail::errno_str(errno));
  }

  /// Writes `n` bytes at byte `offset_bytes` of reserved tensor `name`. Throws
  /// Error for unknown or non-reserved tensors, out-of-range or overlapping
  /// writes. Only between begin_stream() and finish().
  void write_rows(std::string_view name, std::uint64_t offset_bytes, const void* data,
                  std::uint64_t n) {
    require(State::streaming, "write_rows");
    const auto it = index_.find(name);
    if (it == index_.end()) detail::fail(path_, ": write to undeclared tensor '", name, "'");
    Entry& e = entries_[it->second];
    if (!e.streamed)
      detail::fail(path_, ": tensor '", name, "' was added with data, not reserve()d");
    if (offset_bytes > e.info.bytes() || n > e.info.bytes() - offset_bytes)
      detail::fail(path_, ": tensor '", name, "': write of bytes [", offset_bytes, ", +", n,
                   ") is outside its ", e.info.bytes(), " bytes");
    if (n == 0) return;
    if (!data) detail::fail(path_, ": tensor '", name, "': null data");
    const std::uint64_t lo = offset_bytes, hi = offset_bytes + n;
    std::uint64_t olo = 0, ohi = 0;
    if (e.written.overlaps(lo, hi, olo, ohi))
      detail::fail(path_, ": tensor '", name, "': write of bytes [", lo, ", ", hi,
                   ") overlaps bytes already written [", olo, ", ", ohi, ")");
    detail::pwrite_all(fd_, tmp_, data, n, data_offset_ + e.info.begin + offset_bytes);
    e.written.insert(lo, hi);
  }

  /// Writes the header if not yet done, checks every reserved tensor was
  /// fully written, syncs and renames PATH.tmp to PATH. Throws Error otherwise
  /// (PATH is then left untouched and PATH.tmp removed on destruction).
  void finish() {
    if (state_ == State::declaring) begin_stream();
    require(State::streaming, "finish");
    for (const Entry& e : entries_) {
      if (!e.streamed || e.written.total() == e.info.bytes()) continue;
      detail::fail(path_, ": tensor '", e.info.name, "': only ", e.written.total(), " of ",
                   e.info.bytes(), " bytes were written (bytes [", e.written.first_gap(), ", ",
                   e.written.gap_end(e.info.bytes()), ") are missing)");
    }
    if (::fsync(fd_) != 0) detail::fail(tmp_, ": fsync failed: ", detail::errno_str(errno));
    const int fd = std::exchange(fd_, -1);
    if (::close(fd) != 0) detail::fail(tmp_, ": close failed: ", detail::errno_str(errno));
    if (std::rename(tmp_.c_str(), path_.c_str()) != 0)
      detail::fail(tmp_, ": cannot rename to ", path_, ": ", detail::errno_str(errno));
    state_ = State::finished;
  }

  /// The layout of tensor `name` (offsets are final only after begin_stream()).
  const TensorInfo& info(std::string_view name) const {
    const auto it = index_.find(name);
    if (it == index_.end()) detail::fail(path_, ": no tensor '", name, "' was declared");
    return entries_[it->second].info;
  }

 private:
  enum class State : std::uint8_t { declaring, streaming, finished };
  struct Entry {
    TensorInfo info;
    std::vector<std::byte> data;
    bool streamed = false;
    detail::IntervalSet written;  // bytes of a reserved tensor written so far
  };

  void require(State s, const char* what) const {
    if (state_ == s) return;
    static constexpr const char* names[] = {"before begin_stream()", "while streaming",
                                            "after finish()"};
    detail::fail(path_, ": ", what, "() called ", names[int(state_)]);
  }

  /// Checks a declaration (unique valid name, known dtype, no overflow) and
  /// returns its size in bytes.
  std::uint64_t check_decl(const std::string& name, const std::string& dtype,
                           const std::vector<std::uint64_t>& shape) const {
    if (name == "__metadata__") detail::fail(path_, ": '__metadata__' is not a valid tensor name");
    if (index_.count(name)) detail::fail(path_, ": duplicate tensor name '", name, "'");
    if (const std::size_t bad = detail::json::impl::invalid_utf8(name); bad != std::string::npos)
      detail::fail(path_, ": tensor name '", name, "' is not valid UTF-8 (byte ", bad, ")");
    const std::size_t esize = safetensors_dtype_size(dtype);
    if (esize == 0) detail::fail(path_, ": tensor '", name, "': unknown dtype '", dtype, "'");
    std::uint64_t bytes = 0;
    if (!detail::shape_bytes(shape, esize, bytes))
      detail::fail(path_, ": tensor '", name, "': shape ", detail::shape_str(shape), " of ", dtype,
                   " overflows 64-bit byte counts");
    return bytes;
  }

  Entry& declare(std::string name, std::string dtype, std::vector<std::uint64_t> shape) {
    const std::uint64_t bytes = check_decl(name, dtype, shape);
    Entry e;
    e.info.name = std::move(name);
    e.info.dtype = std::move(dtype);
    e.info.shape = std::move(shape);
    e.info.begin = 0;
    e.info.end = bytes;  // relocated by begin_stream()
    entries_.push_back(std::move(e));
    index_.emplace(entries_.back().info.name, entries_.size() - 1);
    return entries_.back();
  }

  void abandon() noexcept {
    if (state_ != State::streaming) return;
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    ::unlink(tmp_.c_str());
    state_ = State::finished;
  }

  std::string path_;
  std::string tmp_;
  State state_ = State::declaring;
  int fd_ = -1;
  std::uint64_t data_offset_ = 0;
  std::map<std::string, std::string> metadata_;
  std::vector<Entry> entries_;
  std::map<std::string, std::size_t, std::less<>> index_;
};

}  // namespace headrecon
