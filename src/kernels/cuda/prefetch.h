// Bringing a weight into the L2 cache ahead of the kernel that reads it. A batch-1 decode layer
// reads 436 MB of weights (Llama-3-8B) at the memory's rate, except while its attention runs: a
// few microseconds of round trips that leave the memory idle. Prefetched during the attention,
// the output projection's weight (33.5 MB; the L2 holds 50) is read from L2 by its GEMV. A hint:
// nothing is written, results do not change (the CPU twin is to do nothing).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

namespace kite::cuda {

enum class L2Prefetch {
  kOff = 0,
  kBulkEvictLast = 1,    // cp.async.bulk.prefetch.L2 (the TMA unit), lines kept before others
  kBulkEvictNormal = 2,  // the same, normal eviction priority
  kLinesEvictLast = 3,   // prefetch.global.L2::evict_last, one 128-byte line per instruction
};

// Asks the L2 for the first `bytes` of `data` (16-byte aligned; a multiple of 16 bytes is
// prefetched, the tail left out), from one CTA per SM. Launched with PDL (launch.cuh): the
// prefetches are issued as soon as the kernel starts, during the previous kernel, and the kernel
// then waits for that one like every kernel. Needs compute capability 9.0 for the bulk modes.
void prefetch_l2(const void* data, size_t bytes, L2Prefetch mode, cudaStream_t stream);

}  // namespace kite::cuda
