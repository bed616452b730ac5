// GPU discovery. "No GPU" (no driver, no device) is an ordinary answer here, not an error,
// so that binaries and tests built with CUDA still run on machines without one.
#pragma once

#include <string>
#include <vector>

#include "core/status.h"

namespace kite {

struct CudaDeviceInfo {
  int index = 0;
  std::string name;
  int compute_capability = 0;  // 90 for sm_90
  size_t total_memory_bytes = 0;
  int multiprocessor_count = 0;
  size_t l2_cache_bytes = 0;
};

// The visible GPUs; empty when the driver reports none (cudaErrorNoDevice or
// cudaErrorInsufficientDriver, codes 100 and 35).
Result<std::vector<CudaDeviceInfo>> cuda_devices();

// GPU `index`: kUnsupported when no GPU is visible, kInvalidArgument for an index past the last.
Result<CudaDeviceInfo> cuda_device(int index);

// Whether environment variable `variable` is set to "0": the switches that turn a CUDA
// optimisation off for A/B measurements (KITE_ENABLE_PDL).
bool switched_off(const char* variable);
// Environment variable `variable` as an integer clamped to [lowest, highest], or `fallback` when it
// is unset: the switches that force a CUDA tuning choice for A/B measurements (all listed in
// docs/perf/cuda_kernels.md).
int switch_setting(const char* variable, int fallback, int lowest, int highest);

}  // namespace kite
