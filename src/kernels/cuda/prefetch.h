// Moving weights from device memory into the L2 cache ahead of the GEMM that reads them. No CPU
// twin: it changes no value, only where the next kernel finds its bytes.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

namespace kite::cuda {

// Asks the memory system to bring [data, data + bytes) into L2 and returns without waiting for it
// (the loads finish in the background). The range's 16-byte-aligned interior is fetched; bytes
// past the range are never touched. The kernel follows launch.cuh's rules: it issues the
// prefetches before pdl_wait (weights are never written by earlier kernels) and finishes after
// its predecessor, so the stream's order is unchanged. On GPUs before Hopper it does nothing.
void prefetch_to_l2(const void* data, size_t bytes, cudaStream_t stream);

}  // namespace kite::cuda
