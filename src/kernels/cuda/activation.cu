// SwiGLU: a grid-stride loop over output elements, 8 at a time when the rows allow it.
#include "kernels/cuda/activation.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/dispatch.cuh"
#include "kernels/cuda/launch.cuh"

namespace kite::cuda {
namespace {

constexpr int kThreads = 256;

// out = silu(g) * u for kWidth consecutive elements of one row.
template <typename T, int kWidth>
__global__ void silu_mul_kernel(const T* gate_up, T* out, int64_t rows, int64_t width) {
  pdl_launch_dependents();
  pdl_wait();
  using Vector = Pack<T, kWidth>;
  const int64_t vectors_per_row = width / kWidth;
  const int64_t total = rows * vectors_per_row;
  for (int64_t index = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; index < total;
       index += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = index / vectors_per_row, column = index % vectors_per_row;
    const T* row_data = gate_up + row * 2 * width;
    const Vector gate = reinterpret_cast<const Vector*>(row_data)[column];
    const Vector up = reinterpret_cast<const Vector*>(row_data + width)[column];
    Vector result;
#pragma unroll
    for (int j = 0; j < kWidth; ++j)
      result.values[j] = silu_mul_element(gate.values[j], up.values[j]);
    reinterpret_cast<Vector*>(out + row * width)[column] = result;
  }
}

}  // namespace

void silu_mul(const DeviceTensor& gate_up, DeviceTensor& out, cudaStream_t stream) {
  const int64_t rows = out.rows(), width = out.cols();
  KITE_CHECK(gate_up.dtype == out.dtype && gate_up.rows() == rows && gate_up.cols() == 2 * width);
  if (rows == 0) return;
  const bool vectorized = width % 8 == 0 && reinterpret_cast<uintptr_t>(gate_up.data) % 16 == 0 &&
                          reinterpret_cast<uintptr_t>(out.data) % 16 == 0;
  const int width_per_thread = vectorized ? 8 : 1;
  const int64_t work = rows * width / width_per_thread;
  const unsigned blocks = unsigned(std::min<int64_t>((work + kThreads - 1) / kThreads, 65535));
  dispatch_half(out.dtype, [&](auto element) {
    using T = decltype(element);
    const auto* input = static_cast<const T*>(gate_up.data);
    auto* output = static_cast<T*>(out.data);
    if (vectorized) {
      launch_kernel(silu_mul_kernel<T, 8>, blocks, kThreads, 0, stream, input, output, rows, width);
    } else {
      launch_kernel(silu_mul_kernel<T, 1>, blocks, kThreads, 0, stream, input, output, rows, width);
    }
  });
}

}  // namespace kite::cuda
