// Kernel launches with programmatic dependent launch (PDL, Hopper and later).
//
// A decode step is a chain of ~10 kernels per layer, most of them short (the batch-1 GEMV of a
// 4096 x 4096 weight is ~12 us, an RMSNorm ~2 us), so the gap between one kernel's last CTA and
// the next kernel's first (launch latency plus ramp-up) is a visible share of the step. With PDL
// the next kernel in the stream is launched while the current one still runs: every Kite kernel
//   1. calls pdl_launch_dependents() first, which lets the GPU schedule the next kernel's CTAs as
//      soon as all CTAs of this one have started, and
//   2. calls pdl_wait() before it reads anything an earlier kernel wrote (and before any early
//      return), which blocks until the previous kernel has finished and its writes are visible.
// Work that needs nothing from earlier kernels (a GEMV's first weight loads) goes between the
// two, overlapping the previous kernel's tail: weights, what was copied to the GPU before the
// step's first kernel (a memcpy is never overlapped, so the step's metadata), and what earlier
// steps wrote (the KV cache of earlier positions: the host waits for each step's sampled ids).
// Writes always come after pdl_wait(): a kernel may start while kernels before its predecessor
// still run. A kernel launched without the attribute (cuBLASLt's)
// simply runs after its predecessor as usual, and pdl_wait() returns at once in a kernel that was
// launched without it. Since every kernel waits before it finishes, "finished" stays transitive
// along the stream: a kernel's predecessors have all finished when pdl_wait() returns.
//
// launch_kernel() sets the attribute when the GPU has PDL (compute capability 9.0+) and the
// environment does not say KITE_ENABLE_PDL=0 (for A/B measurements); it works inside CUDA graph
// capture (the edges become programmatic). Included only by .cu files.
#pragma once

#include <cuda_runtime_api.h>

#include <utility>

#include "kernels/cuda/cuda_check.h"

namespace kite::cuda {

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Whether launch_kernel asks for programmatic dependent launch on the current device.
bool programmatic_launch_enabled();
// The shared-memory carveout of launch_kernel's launches: the percent of each SM's unified L1 /
// shared storage configured as shared memory (28: 64 KiB of an H100's 228), the same for every
// kernel it launches, because an SM changes its split only once its running CTAs have drained:
// consecutive kernels with different splits do not overlap, and programmatic dependent launch
// loses its effect. Left to the driver, each kernel got the split of its own needs and a batch-1
// decode step changed splits several times a layer; with one split for all it runs 4.5% faster
// (H100, Llama-3-8B: 172.7 against 165.2 tokens/s, docs/perf/cuda_llama3_8b.md). 64 KiB leaves
// the GEMV's in-flight loads their L1 (the whole storage as shared memory costs it 17%). The
// attention kernels keep the driver's split (launch_kernel_own_carveout): they need more shared
// memory for two CTAs an SM, which a 64 KiB split halves at large batches. KITE_SHARED_CARVEOUT
// overrides the percent, -1 for the driver's choice (A/B measurements).
inline constexpr int kUniformCarveout = 28;
int uniform_carveout();
// The current device's SM count (cached).
int current_multiprocessor_count();
// Sets `kernel`'s preferred carveout on the current device unless already set there (cached).
void prefer_carveout(const void* kernel, int percent);

// launch_kernel without the uniform carveout: for kernels whose occupancy needs more shared
// memory than it leaves (the attention kernels).
template <typename... Parameters, typename... Arguments>
void launch_kernel_own_carveout(void (*kernel)(Parameters...), dim3 grid, dim3 block,
                                size_t shared_bytes, cudaStream_t stream,
                                Arguments&&... arguments) {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = programmatic_launch_enabled() ? 1 : 0;
  KITE_CUDA_CHECK(
      cudaLaunchKernelEx(&config, kernel, Parameters(std::forward<Arguments>(arguments))...));
}

// Gives `kernel` the uniform carveout (unless KITE_SHARED_CARVEOUT leaves it to the driver), as
// launch_kernel does before each launch; also before asking for its occupancy.
template <typename... Parameters>
void prefer_uniform_carveout(void (*kernel)(Parameters...)) {
  if (const int carveout = uniform_carveout(); carveout >= 0) {
    prefer_carveout(reinterpret_cast<const void*>(kernel), carveout);
  }
}

// kernel<<<grid, block, shared_bytes, stream>>>(arguments...), with PDL when enabled and the
// uniform carveout; checks the launch. The kernel must follow the rules above.
template <typename... Parameters, typename... Arguments>
void launch_kernel(void (*kernel)(Parameters...), dim3 grid, dim3 block, size_t shared_bytes,
                   cudaStream_t stream, Arguments&&... arguments) {
  prefer_uniform_carveout(kernel);
  launch_kernel_own_carveout(kernel, grid, block, shared_bytes, stream,
                             std::forward<Arguments>(arguments)...);
}

}  // namespace kite::cuda
