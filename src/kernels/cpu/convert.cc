// Element-wise conversion between float32, float16 and bfloat16 (a copy when the dtypes match).
#include "kernels/cpu/convert.h"

#include <cstring>

#include "kernels/cpu/float_types.h"
#include "kernels/cpu/threading.h"

namespace kite::cpu {

void convert(const DeviceTensor& source, DeviceTensor& destination) {
  const int64_t count = source.numel();
  KITE_CHECK(destination.numel() == count);
  if (source.dtype == destination.dtype) {
    if (source.data != destination.data && count > 0) {
      std::memmove(destination.data, source.data, source.byte_size());
    }
    return;
  }
  KITE_CHECK(is_cpu_float_dtype(source.dtype) && is_cpu_float_dtype(destination.dtype));
  KITE_CHECK(source.data != destination.data || count == 0);
  dispatch_float_dtype(source.dtype, [&](auto source_element) {
    using Source = decltype(source_element);
    dispatch_float_dtype(destination.dtype, [&](auto destination_element) {
      using Destination = decltype(destination_element);
      const auto* input = static_cast<const typename Source::Storage*>(source.data);
      auto* output = static_cast<typename Destination::Storage*>(destination.data);
#pragma omp parallel for schedule(static) if (count >= kMinParallelWork)
      for (int64_t i = 0; i < count; ++i) output[i] = Destination::store(Source::load(input[i]));
    });
  });
}

}  // namespace kite::cpu
