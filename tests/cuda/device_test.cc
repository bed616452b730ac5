// The CUDA backend's device discovery: must answer on machines with and without a GPU.
#include <gtest/gtest.h>

#include "kernels/cuda/device.h"

namespace kite {
namespace {

TEST(CudaDevice, ListsDevicesOrNone) {
  auto devices = cuda_devices();
  ASSERT_TRUE(devices.is_ok()) << devices.status().message();
  if (devices->empty()) GTEST_SKIP() << "no GPU on this machine";
  for (const CudaDeviceInfo& device : *devices) {
    EXPECT_FALSE(device.name.empty());
    EXPECT_GE(device.compute_capability, 50);
    EXPECT_GT(device.total_memory_bytes, size_t{0});
  }
}

}  // namespace
}  // namespace kite
