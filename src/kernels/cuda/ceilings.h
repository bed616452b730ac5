// The GPU's own ceilings, measured so that benchmark figures can be read against them in the same
// run: device-to-device copy bandwidth (what decode, a stream of weight reads, can reach) and the
// dense bf16 GEMM rate through cuBLASLt (what prefill, a stream of large GEMMs, can reach).
#pragma once

#include "core/status.h"

namespace kite::cuda {

struct GpuCeilings {
  double copy_bytes_per_second = 0;  // (bytes read + bytes written) / time of a 1 GiB cudaMemcpy
  double bf16_gemm_flops_per_second = 0;  // 2 M N K / time, M = N = K = 8192, bf16 in and out
};

// Measures both on the current device: warm-up, then the median of several timed runs (CUDA
// events); allocates about 2.4 GiB for the duration.
Result<GpuCeilings> measure_ceilings();

}  // namespace kite::cuda
