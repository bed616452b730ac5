// L2 prefetch: each thread of a CTA-per-SM grid asks for one slice of the range.
#include <algorithm>
#include <cstdint>

#include "core/status.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/prefetch.h"

namespace kite::cuda {
namespace {

constexpr int kThreads = 32;
constexpr int64_t kLineBytes = 128;

// Thread i of the grid prefetches bytes [i slice, (i + 1) slice) of `data`.
__global__ void prefetch_l2_kernel(const uint8_t* data, int64_t bytes, int64_t slice, int mode) {
  pdl_launch_dependents();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const int64_t begin = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * slice;
  const int64_t end = std::min(begin + slice, bytes);
  if (mode == int(L2Prefetch::kLinesEvictLast)) {
    for (int64_t offset = begin; offset < end; offset += kLineBytes) {
      asm volatile("prefetch.global.L2::evict_last [%0];" ::"l"(data + offset) : "memory");
    }
  } else if (begin < end) {
    uint64_t policy;
    if (mode == int(L2Prefetch::kBulkEvictLast)) {
      asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(policy));
    } else {
      asm volatile("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;" : "=l"(policy));
    }
    asm volatile("cp.async.bulk.prefetch.L2.global.L2::cache_hint [%0], %1, %2;" ::"l"(data + begin),
                 "r"(uint32_t(end - begin)), "l"(policy)
                 : "memory");
  }
#endif
  pdl_wait();
}

}  // namespace

void prefetch_l2(const void* data, size_t bytes, L2Prefetch mode, cudaStream_t stream) {
  KITE_CHECK(reinterpret_cast<uintptr_t>(data) % 16 == 0);
  const int64_t size = int64_t(bytes) / 16 * 16;
  if (mode == L2Prefetch::kOff || size == 0) return;
  const int ctas = current_multiprocessor_count();
  // Whole lines for the line mode; 16-byte multiples (the bulk prefetch's unit) otherwise.
  const int64_t unit = mode == L2Prefetch::kLinesEvictLast ? kLineBytes : 16;
  const int64_t threads = int64_t(ctas) * kThreads;
  const int64_t slice = (size + threads * unit - 1) / (threads * unit) * unit;
  launch_kernel(prefetch_l2_kernel, unsigned(ctas), kThreads, 0, stream,
                static_cast<const uint8_t*>(data), size, slice, int(mode));
}

}  // namespace kite::cuda
