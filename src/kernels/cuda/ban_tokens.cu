// Banning tokens: one thread per possible (row, token) pair, those past the step's count idle.
#include <cmath>

#include "kernels/cuda/ban_tokens.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch.cuh"

namespace kite::cuda {
namespace {

constexpr int kThreads = 256;

// logits[row, token] = -inf for the first *count (row, token) pairs
__global__ void ban_tokens_kernel(float* logits, const int32_t* pairs, const int32_t* count,
                                  int64_t max_count, int64_t rows, int64_t vocab) {
  pdl_launch_dependents();
  pdl_wait();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= max_count || i >= int64_t(*count)) return;
  const int32_t row = pairs[2 * i], token = pairs[2 * i + 1];
  if (row < 0 || row >= rows || token < 0 || token >= vocab) return;
  logits[int64_t(row) * vocab + token] = -INFINITY;
}

}  // namespace

void ban_tokens(DeviceTensor& logits, const int32_t* pairs, const int32_t* count, int64_t max_count,
                cudaStream_t stream) {
  KITE_CHECK(logits.dtype == DType::kF32 && count != nullptr && max_count >= 0);
  if (max_count == 0 || logits.numel() == 0) return;
  const int64_t blocks = (max_count + kThreads - 1) / kThreads;
  KITE_CHECK(blocks <= INT32_MAX);
  launch_kernel(ban_tokens_kernel, unsigned(blocks), kThreads, 0, stream,
                static_cast<float*>(logits.data), pairs, count, max_count, logits.rows(),
                logits.cols());
}

}  // namespace kite::cuda
