// Dtype conversion: a grid-stride loop, one element per thread and step.
#include <algorithm>

#include "kernels/cuda/convert.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/dispatch.cuh"
#include "kernels/cuda/launch.cuh"

namespace kite::cuda {
namespace {

template <typename Source, typename Destination>
__global__ void convert_kernel(const Source* source, Destination* destination, int64_t count) {
  pdl_launch_dependents();
  pdl_wait();
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x) {
    destination[i] = from_float<Destination>(to_float(source[i]));
  }
}

}  // namespace

void convert(const DeviceTensor& source, DeviceTensor& destination, cudaStream_t stream) {
  const int64_t count = source.numel();
  KITE_CHECK(destination.numel() == count);
  if (count == 0) return;
  constexpr int kThreads = 256;
  const unsigned blocks = unsigned(std::min<int64_t>((count + kThreads - 1) / kThreads, 65535));
  dispatch_float(source.dtype, [&](auto source_element) {
    using Source = decltype(source_element);
    dispatch_float(destination.dtype, [&](auto destination_element) {
      using Destination = decltype(destination_element);
      launch_kernel(convert_kernel<Source, Destination>, blocks, kThreads, 0, stream,
                    static_cast<const Source*>(source.data),
                    static_cast<Destination*>(destination.data), count);
    });
  });
}

}  // namespace kite::cuda
