// Token embedding lookup (with conversion of the table's dtype to float32) and row gathers.
#include "kernels/cpu/embedding.h"

#include <cstring>

#include "kernels/cpu/float_types.h"
#include "kernels/cpu/threading.h"

namespace kite::cpu {

void embedding(const DeviceTensor& table, const int32_t* ids, DeviceTensor& out) {
  KITE_CHECK(is_cpu_float_dtype(table.dtype) && table.shape.size() == 2);
  KITE_CHECK(out.dtype == DType::kF32 && out.cols() == table.cols());
  const int64_t tokens = out.rows();
  const int64_t vocabulary_size = table.rows();
  const int64_t hidden_size = table.cols();
  KITE_CHECK(tokens == 0 || ids != nullptr);
  for (int64_t t = 0; t < tokens; ++t) KITE_CHECK(ids[t] >= 0 && ids[t] < vocabulary_size);
  auto* output = static_cast<float*>(out.data);
  dispatch_float_dtype(table.dtype, [&](auto element) {
    using Element = decltype(element);
    const auto* rows = static_cast<const typename Element::Storage*>(table.data);
#pragma omp parallel for schedule(static) if (tokens * hidden_size >= kMinParallelWork)
    for (int64_t t = 0; t < tokens; ++t) {
      const auto* source = rows + int64_t(ids[t]) * hidden_size;
      float* destination = output + t * hidden_size;
      for (int64_t i = 0; i < hidden_size; ++i) destination[i] = Element::load(source[i]);
    }
  });
}

void gather_rows(const DeviceTensor& x, const int32_t* indices, DeviceTensor& out) {
  KITE_CHECK(out.dtype == x.dtype && out.cols() == x.cols());
  KITE_CHECK(out.data != x.data || out.rows() == 0);
  const int64_t count = out.rows();
  const int64_t source_rows = x.rows();
  KITE_CHECK(count == 0 || indices != nullptr);
  for (int64_t i = 0; i < count; ++i) KITE_CHECK(indices[i] >= 0 && indices[i] < source_rows);
  const size_t row_bytes = size_t(x.cols()) * dtype_size(x.dtype);
  const auto* source = static_cast<const uint8_t*>(x.data);
  auto* destination = static_cast<uint8_t*>(out.data);
  for (int64_t i = 0; i < count; ++i) {
    std::memcpy(destination + size_t(i) * row_bytes, source + size_t(indices[i]) * row_bytes,
                row_bytes);
  }
}

}  // namespace kite::cpu
