#pragma once
/// @file safetensors.hpp
/// The safetensors container: an 8-byte little-endian header length N, N bytes
/// of JSON (tensor name -> dtype, shape, data_offsets; optional __metadata__),
/// then the data buffer. Reading is lazy (pread); writing streams to PATH.tmp
/// and renames it to PATH on finish(). The pieces live in detail/: the dtype
/// table (safetensors_dtype.hpp), the header (safetensors_header.hpp), file
/// I/O (file_io.hpp), written-range tracking (interval_set.hpp) and typed
/// metadata reads (safetensors_metadata.hpp).

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "headrecon/detail/file_io.hpp"
#include "headrecon/detail/interval_set.hpp"
#include "headrecon/detail/json.hpp"
#include "headrecon/detail/safetensors_dtype.hpp"
#include "headrecon/detail/safetensors_header.hpp"
#include "headrecon/detail/safetensors_metadata.hpp"
#include "headrecon/dtype.hpp"
#include "headrecon/error.hpp"

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__)
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "headrecon's safetensors I/O assumes a little-endian host");
#endif

namespace headrecon {

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
      bad("file is ", file_size_, " bytes, too short for the 8-byte header length (empty or truncated file)");
    unsigned char len_bytes[8];
    detail::pread_all(fd_, path_, len_bytes, 8, 0);
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];
    if (n == 0) bad("header length is 0");
    if (n > detail::safetensors_max_header)
      bad("header length ", n, " exceeds the limit of ", detail::safetensors_max_header, " bytes");
    if (n > file_size_ - 8)
      bad("header length ", n, " exceeds the ", file_size_ - 8, " bytes that follow the length field: the file is "
          "truncated (its header alone needs ", 8 + n, " bytes, the file has ", file_size_, ")");
    data_offset_ = 8 + n;
    std::string text(std::size_t(n), '\0');  // n <= file size and <= safetensors_max_header
    detail::pread_all(fd_, path_, text.data(), n, 8);
    detail::SafetensorsHeader h;
    try {
      h = detail::parse_safetensors_header(text, data_offset_, file_size_);
    } catch (const Error& e) {
      bad(e.what());
    }
    metadata_ = std::move(h.metadata);
    tensors_ = std::move(h.tensors);
    for (std::size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
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
    try {
      detail::json::check_utf8(key, "key");
      detail::json::check_utf8(value, "value");
    } catch (const Error& e) {
      detail::fail(path_, ": metadata '", key, "': ", e.what());
    }
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

    std::vector<const TensorInfo*> layout;
    layout.reserve(order.size());
    for (std::size_t i : order) layout.push_back(&entries_[i].info);
    std::string header;
    try {
      header = detail::safetensors_header_json(metadata_, layout);
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
    try {
      detail::json::check_utf8(name, "it");
    } catch (const Error& e) {
      detail::fail(path_, ": tensor name '", name, "': ", e.what());
    }
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
