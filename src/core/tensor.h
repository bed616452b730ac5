// Host tensors: a dtype, a shape and bytes. TensorView borrows the bytes (from a mapped file, say);
// Tensor owns them. Row-major, no strides: layouts other kernels need are made at build time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace kite {

using Shape = std::vector<int64_t>;

inline int64_t shape_numel(const Shape& shape) {
  return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<int64_t>());
}
std::string shape_to_string(const Shape& shape);

struct TensorView {
  DType dtype = DType::kF32;
  Shape shape;
  const uint8_t* data = nullptr;

  int64_t numel() const { return shape_numel(shape); }
  size_t byte_size() const { return size_t(numel()) * dtype_size(dtype); }
  std::span<const uint8_t> bytes() const { return {data, byte_size()}; }
};

class Tensor {
 public:
  Tensor() = default;
  Tensor(DType dtype, Shape shape)
      : dtype_(dtype),
        shape_(std::move(shape)),
        bytes_(size_t(shape_numel(shape_)) * dtype_size(dtype)) {}
  static Tensor copy_of(const TensorView& view) {
    Tensor tensor(view.dtype, view.shape);
    if (view.byte_size() > 0) std::memcpy(tensor.bytes_.data(), view.data, view.byte_size());
    return tensor;
  }

  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int64_t numel() const { return shape_numel(shape_); }
  size_t byte_size() const { return bytes_.size(); }
  uint8_t* data() { return bytes_.data(); }
  const uint8_t* data() const { return bytes_.data(); }
  template <typename T>
  T* data_as() {
    return reinterpret_cast<T*>(bytes_.data());
  }
  template <typename T>
  const T* data_as() const {
    return reinterpret_cast<const T*>(bytes_.data());
  }
  TensorView view() const { return TensorView{dtype_, shape_, bytes_.data()}; }
  // Reinterprets the same bytes with another shape of the same element count.
  void reshape(Shape shape) {
    KITE_CHECK(shape_numel(shape) == numel());
    shape_ = std::move(shape);
  }

 private:
  DType dtype_ = DType::kF32;
  Shape shape_;
  std::vector<uint8_t> bytes_;
};

// Element `index` of an array of a floating dtype (F32, F16, BF16, F8_E4M3), as float32; and the
// store of a float32 into such an array (rounding to nearest even).
float load_float(DType dtype, const uint8_t* data, size_t index);
void store_float(DType dtype, uint8_t* data, size_t index, float value);

// Element-wise conversion between floating dtypes (F32, F16, BF16, F8_E4M3); integer dtypes
// convert only to themselves.
Result<Tensor> convert_dtype(const TensorView& source, DType target);
// Reads any floating dtype as float32 values.
Result<std::vector<float>> to_float32(const TensorView& source);

}  // namespace kite
