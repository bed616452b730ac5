// GPU discovery through the CUDA runtime.
#include <cuda_runtime.h>

#include "kernels/cuda/device.h"

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
                                     properties.totalGlobalMem, properties.multiProcessorCount});
  }
  return devices;
}

Result<CudaDeviceInfo> cuda_device(int index) {
  KITE_ASSIGN_OR_RETURN(std::vector<CudaDeviceInfo> devices, cuda_devices());
  if (devices.empty()) {
    return unsupported("no CUDA GPU is visible on this machine (check the driver with "
                       "nvidia-smi and CUDA_VISIBLE_DEVICES); use --device cpu engines here");
  }
  if (index < 0 || size_t(index) >= devices.size()) {
    return invalid_argument("GPU " + std::to_string(index) + " does not exist; " +
                            std::to_string(devices.size()) + " GPU(s) are visible");
  }
  return devices[size_t(index)];
}

}  // namespace kite
