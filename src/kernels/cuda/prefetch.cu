// L2 prefetch with Hopper's bulk prefetch (cp.async.bulk.prefetch.L2): one instruction per 16 KiB
// chunk. The chunks are spread over up to 128 single-warp CTAs, so that the copy engines of many
// multiprocessors issue them (one engine alone would not keep the memory busy): a 4096 x 4096
// bf16 weight (32 MiB) is 2048 chunks, 16 per CTA.
#include <algorithm>
#include <cstdint>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/prefetch.h"

namespace kite::cuda {
namespace {

constexpr uint32_t kChunkBytes = 16 << 10;
constexpr int kThreads = 32;
constexpr uint64_t kMaxBlocks = 128;

// Chunk i of [begin, begin + bytes) for i = thread, thread + threads, ...; begin and bytes are
// multiples of 16.
__global__ void prefetch_kernel(const unsigned char* begin, uint64_t bytes) {
  pdl_launch_dependents();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const uint64_t chunks = (bytes + kChunkBytes - 1) / kChunkBytes;
  for (uint64_t chunk = uint64_t(blockIdx.x) * blockDim.x + threadIdx.x; chunk < chunks;
       chunk += uint64_t(gridDim.x) * blockDim.x) {
    const uint64_t offset = chunk * kChunkBytes;
    const auto size = uint32_t(bytes - offset < kChunkBytes ? bytes - offset : kChunkBytes);
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(begin + offset), "r"(size)
                 : "memory");
  }
#endif
  pdl_wait();  // finished stays transitive along the stream (launch.cuh)
}

}  // namespace

void prefetch_to_l2(const void* data, size_t bytes, cudaStream_t stream) {
  const auto address = reinterpret_cast<uintptr_t>(data);
  const uintptr_t begin = (address + 15) & ~uintptr_t(15);
  const uintptr_t end = (address + bytes) & ~uintptr_t(15);
  if (bytes == 0 || end <= begin) return;
  const uint64_t chunks = (end - begin + kChunkBytes - 1) / kChunkBytes;
  const auto blocks = unsigned(std::min<uint64_t>(kMaxBlocks, (chunks + kThreads - 1) / kThreads));
  launch_kernel(prefetch_kernel, blocks, kThreads, 0, stream,
                reinterpret_cast<const unsigned char*>(begin), uint64_t(end - begin));
}

}  // namespace kite::cuda
