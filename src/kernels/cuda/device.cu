// GPU discovery through the CUDA runtime, and how kernels launch (PDL, the shared-memory carveout:
// launch.cuh).
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <mutex>
#include <set>
#include <string_view>
#include <tuple>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/launch.cuh"

namespace kite {

Result<std::vector<CudaDeviceInfo>> cuda_devices() {
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error == cudaErrorNoDevice || error == cudaErrorInsufficientDriver) {
    cudaGetLastError();  // clear the sticky error so later calls start clean
    return std::vector<CudaDeviceInfo>{};
  }
  if (error != cudaSuccess) {
    return internal_error(std::string("cudaGetDeviceCount failed: ") + cudaGetErrorString(error));
  }
  std::vector<CudaDeviceInfo> devices;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp properties;
    const cudaError_t property_error = cudaGetDeviceProperties(&properties, i);
    if (property_error != cudaSuccess) {
      return internal_error(std::string("cudaGetDeviceProperties failed: ") +
                            cudaGetErrorString(property_error));
    }
    devices.push_back(CudaDeviceInfo{i, properties.name, properties.major * 10 + properties.minor,
                                     properties.totalGlobalMem, properties.multiProcessorCount,
                                     size_t(properties.l2CacheSize)});
  }
  return devices;
}

Result<CudaDeviceInfo> cuda_device(int index) {
  KITE_ASSIGN_OR_RETURN(std::vector<CudaDeviceInfo> devices, cuda_devices());
  if (devices.empty()) {
    return unsupported(
        "no CUDA GPU is visible on this machine (check the driver with "
        "nvidia-smi and CUDA_VISIBLE_DEVICES); use --device cpu engines here");
  }
  if (index < 0 || size_t(index) >= devices.size()) {
    return invalid_argument("GPU " + std::to_string(index) + " does not exist; " +
                            std::to_string(devices.size()) + " GPU(s) are visible");
  }
  return devices[size_t(index)];
}

bool switched_off(const char* variable) {
  const char* setting = std::getenv(variable);
  return setting && std::string_view(setting) == "0";
}

int switch_setting(const char* variable, int fallback, int lowest, int highest) {
  const char* setting = std::getenv(variable);
  return setting ? std::clamp(std::atoi(setting), lowest, highest) : fallback;
}

}  // namespace kite

namespace kite::cuda {

bool programmatic_launch_enabled() {
  static const bool allowed = !switched_off("KITE_ENABLE_PDL");
  if (!allowed) return false;
  // Per device, asked once: 0 = not asked yet, 1 = no PDL, 2 = PDL (compute capability 9.0+).
  constexpr int kDevices = 64;
  static std::atomic<int> has_pdl[kDevices] = {};
  int device = 0;
  KITE_CUDA_CHECK(cudaGetDevice(&device));
  if (device < 0 || device >= kDevices) return false;
  int known = has_pdl[device].load(std::memory_order_relaxed);
  if (known == 0) {
    int major = 0;
    KITE_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    known = major >= 9 ? 2 : 1;
    has_pdl[device].store(known, std::memory_order_relaxed);
  }
  return known == 2;
}

int uniform_carveout() {
  static const int carveout = switch_setting("KITE_SHARED_CARVEOUT", kUniformCarveout, -1, 100);
  return carveout;
}

int current_multiprocessor_count() {
  constexpr int kDevices = 64;
  static std::atomic<int> counts[kDevices] = {};  // 0: not asked yet
  int device = 0;
  KITE_CUDA_CHECK(cudaGetDevice(&device));
  if (device < 0 || device >= kDevices) return 1;
  int count = counts[device].load(std::memory_order_relaxed);
  if (count == 0) {
    KITE_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    counts[device].store(count, std::memory_order_relaxed);
  }
  return count;
}

void prefer_carveout(const void* kernel, int percent) {
  int device = 0;
  KITE_CUDA_CHECK(cudaGetDevice(&device));
  static std::mutex mutex;
  static std::set<std::tuple<const void*, int, int>> done;
  std::lock_guard<std::mutex> lock(mutex);
  if (done.emplace(kernel, device, percent).second) {
    KITE_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, percent));
  }
}

}  // namespace kite::cuda
