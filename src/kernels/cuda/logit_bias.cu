// The logit bias: one thread per possible entry, those past the step's count idle. Each (row,
// token) comes at most once, so the additions need no atomics.
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/logit_bias.h"

namespace kite::cuda {
namespace {

constexpr int kThreads = 256;

// logits[row, token] += bias for the first *count entries
__global__ void add_logit_bias_kernel(float* logits, const LogitBiasEntry* entries,
                                      const int32_t* count, int64_t max_count, int64_t rows,
                                      int64_t vocab) {
  pdl_launch_dependents();
  pdl_wait();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= max_count || i >= int64_t(*count)) return;
  const LogitBiasEntry entry = entries[i];
  if (entry.row < 0 || entry.row >= rows || entry.token < 0 || entry.token >= vocab) return;
  logits[int64_t(entry.row) * vocab + entry.token] += entry.bias;
}

}  // namespace

void add_logit_bias(DeviceTensor& logits, const LogitBiasEntry* entries, const int32_t* count,
                    int64_t max_count, cudaStream_t stream) {
  KITE_CHECK(logits.dtype == DType::kF32 && count != nullptr && max_count >= 0);
  if (max_count == 0 || logits.numel() == 0) return;
  const int64_t blocks = (max_count + kThreads - 1) / kThreads;
  KITE_CHECK(blocks <= INT32_MAX);
  launch_kernel(add_logit_bias_kernel, unsigned(blocks), kThreads, 0, stream,
                static_cast<float*>(logits.data), entries, count, max_count, logits.rows(),
                logits.cols());
}

}  // namespace kite::cuda
