#pragma once
// A weight matrix of the example engine kept in its GGUF storage type: rows
// of ggml blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) or of F16 / BF16 / F32
// values, row-major [rows][cols] (GGUF ne[0] = cols). Block rows are stored
// with their fields gathered by kind (RowLayout in quant_matvec_args.hpp:
// the same bytes, reordered), which the kernels (quant_matvec.hpp) read
// directly; any other GGUF type (the K-quants, F64) is dequantized to F32 at
// load, so every model this engine reads still runs, without the saving.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "gguf.hpp"
#include "quant_matvec_args.hpp"

namespace headrecon_engine {

/// True for the ggml types the engine's kernels read without dequantizing first.
inline bool kernel_type(std::uint32_t type) {
  switch (GgmlType(type)) {
    case GgmlType::F32: case GgmlType::F16: case GgmlType::BF16: case GgmlType::Q4_0:
    case GgmlType::Q4_1: case GgmlType::Q5_0: case GgmlType::Q5_1: case GgmlType::Q8_0:
      return true;
    default:
      return false;
  }
}

class QuantMatrix {
 public:
  QuantMatrix() = default;

  /// The tensor's bytes copied in its own type when the kernels read it, else
  /// dequantized to F32. `rows` × `cols` must equal its element count and
  /// `cols` its row length ne[0] (checked by the caller's shape check).
  static QuantMatrix from_tensor(const GgufTensor& t, const std::string& what) {
    QuantMatrix m;
    m.cols_ = std::size_t(t.ne[0]);
    m.rows_ = std::size_t(t.n_elements / t.ne[0]);
    if (kernel_type(t.type) && GgmlType(t.type) != GgmlType::F32) {
      m.type_ = GgmlType(t.type);
      m.set_geometry();
      if (m.row_bytes_ * m.rows_ != t.n_bytes) fail(what, ": byte size ", t.n_bytes, " does not match its shape");
      m.bytes_.assign(t.data, t.data + t.n_bytes);
      m.repack();
    } else {
      m.type_ = GgmlType::F32;
      m.set_geometry();
      m.f32_.resize(std::size_t(t.n_elements));
      dequantize(t.type, t.data, m.f32_.data(), t.n_elements, what);
    }
    return m;
  }

  /// An F32 matrix holding `values` (rows × cols, row-major).
  static QuantMatrix from_f32(std::size_t rows, std::size_t cols, std::vector<float> values) {
    if (values.size() != rows * cols)
      fail("QuantMatrix::from_f32: ", values.size(), " values for a ", rows, " x ", cols, " matrix");
    QuantMatrix m;
    m.rows_ = rows;
    m.cols_ = cols;
    m.type_ = GgmlType::F32;
    m.set_geometry();
    m.f32_ = std::move(values);
    return m;
  }

  /// A matrix of `type` (a kernel type) from GGUF row bytes (rows × row_bytes).
  static QuantMatrix from_bytes(GgmlType type, std::size_t rows, std::size_t cols, std::vector<std::uint8_t> bytes) {
    if (!kernel_type(std::uint32_t(type)) || type == GgmlType::F32)
      fail("QuantMatrix::from_bytes: type ", ggml_type_name(std::uint32_t(type)), " is not a block or 16-bit type");
    if (cols % ggml_type_info(std::uint32_t(type)).block != 0)
      fail("QuantMatrix::from_bytes: ", cols, " columns are not whole ", ggml_type_name(std::uint32_t(type)),
           " blocks");
    QuantMatrix m;
    m.rows_ = rows;
    m.cols_ = cols;
    m.type_ = type;
    m.set_geometry();
    if (bytes.size() != rows * m.row_bytes_)
      fail("QuantMatrix::from_bytes: ", bytes.size(), " bytes for ", rows, " rows of ", m.row_bytes_);
    m.bytes_ = std::move(bytes);
    m.repack();
    return m;
  }

  bool empty() const { return rows_ == 0; }
  std::size_t rows() const { return rows_; }
  std::size_t cols() const { return cols_; }
  GgmlType type() const { return type_; }
  std::size_t row_bytes() const { return row_bytes_; }
  /// Bytes a full matrix-vector product reads.
  std::size_t storage_bytes() const { return rows_ * row_bytes_; }
  /// Row r in storage (block types: RowLayout order; F32: its floats as bytes).
  const std::uint8_t* row(std::size_t r) const {
    return type_ == GgmlType::F32 ? reinterpret_cast<const std::uint8_t*>(f32_.data() + r * cols_)
                                  : bytes_.data() + r * row_bytes_;
  }
  /// The F32 storage (empty unless type() is F32).
  const std::vector<float>& f32() const { return f32_; }

  /// Rows [r0, r0 + n) as float into out (n × cols), with the scalar dequantizer of gguf.hpp.
  void dequantize_rows(std::size_t r0, std::size_t n, float* out) const {
    if (r0 > rows_ || n > rows_ - r0) fail("QuantMatrix: rows ", r0, "..", r0 + n, " of ", rows_);
    if (type_ == GgmlType::F32) {
      std::memcpy(out, f32_.data() + r0 * cols_, n * cols_ * sizeof(float));
      return;
    }
    if (!repacked_type(std::uint32_t(type_))) {
      dequantize(std::uint32_t(type_), bytes_.data() + r0 * row_bytes_, out, std::uint64_t(n * cols_), "QuantMatrix");
      return;
    }
    std::vector<std::uint8_t> row(row_bytes_);
    for (std::size_t r = 0; r < n; ++r) {
      convert_row(std::uint32_t(type_), cols_, bytes_.data() + (r0 + r) * row_bytes_, row.data(), false);
      dequantize(std::uint32_t(type_), row.data(), out + r * cols_, std::uint64_t(cols_), "QuantMatrix");
    }
  }
  std::vector<float> to_f32() const {
    std::vector<float> out(rows_ * cols_);
    if (rows_) dequantize_rows(0, rows_, out.data());
    return out;
  }

 private:
  void repack() {
    if (!repacked_type(std::uint32_t(type_))) return;
    std::vector<std::uint8_t> row(row_bytes_);
    for (std::size_t r = 0; r < rows_; ++r) {
      std::uint8_t* p = bytes_.data() + r * row_bytes_;
      convert_row(std::uint32_t(type_), cols_, p, row.data(), true);
      std::memcpy(p, row.data(), row_bytes_);
    }
  }
  void set_geometry() {
    const GgmlTypeInfo info = ggml_type_info(std::uint32_t(type_));
    row_bytes_ = cols_ / info.block * info.bytes;
  }

  std::size_t rows_ = 0, cols_ = 0, row_bytes_ = 0;
  GgmlType type_ = GgmlType::F32;
  std::vector<std::uint8_t> bytes_;  // block and 16-bit types
  std::vector<float> f32_;           // F32
};

}  // namespace headrecon_engine
