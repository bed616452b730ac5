// The CUDA backend's device discovery and its checks of an engine's options: must answer on
// machines with and without a GPU.
#include <gtest/gtest.h>

#include "kernels/backend_factory.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/linear.h"

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

// An engine that names a small-M GEMM configuration this build lacks (built by a Kite with more of
// them, or an edited config.json) is refused with a message, before any GPU is touched, rather than
// run through cuBLASLt unnoticed.
TEST(CudaDevice, RefusesAnUnknownGemvConfiguration) {
  BackendOptions options;
  options.activation_dtype = DType::kBF16;
  options.gemm_choices = {GemmChoice{1, 4096, 4096, 1, cuda::kGemvVariantCount, 15.0f, false}};
  const auto backend = make_backend(BackendKind::kCuda, options);
  ASSERT_FALSE(backend.is_ok());
  EXPECT_EQ(backend.status().code(), StatusCode::kUnsupported);
  EXPECT_NE(backend.status().message().find("4096 x 4096 names small-M kernel configuration " +
                                            std::to_string(cuda::kGemvVariantCount)),
            std::string::npos)
      << backend.status().message();
  EXPECT_NE(backend.status().message().find("build the engine again"), std::string::npos);
}

}  // namespace
}  // namespace kite
