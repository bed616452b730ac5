// The CUDA backend's device discovery and its checks of an engine's options: must answer on
// machines with and without a GPU.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <numeric>
#include <thread>
#include <vector>

#include "cuda_test_util.h"
#include "kernels/backend_factory.h"
#include "kernels/cuda/cuda_backend.h"
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

// Small copies go through the backend's pinned staging buffer. Three times more upload bytes than
// it holds, queued behind a stalled stream with the source reused at once, must all land, in order
// (an overwrite of an earlier region wins): a slot is reused only once its copy has read it.
// Downloads small (staged) and large (direct) read them back.
TEST(CudaDevice, SmallCopiesThroughTheStagingBufferLandInOrder) {
  KITE_REQUIRE_GPU();
  BackendOptions options;
  options.activation_dtype = DType::kBF16;
  auto backend = make_backend(BackendKind::kCuda, options);
  ASSERT_TRUE(backend.is_ok()) << backend.status().message();
  constexpr size_t kInts = 1000;    // 4,000 bytes a copy: not a multiple of the 16-byte slots
  constexpr size_t kCopies = 3200;  // 12.8 MB in all
  auto buffer = (*backend)->allocate(kCopies * kInts * sizeof(int32_t));
  ASSERT_TRUE(buffer.is_ok()) << buffer.status().message();
  auto* device = static_cast<int32_t*>(buffer->data());
  auto* cuda = dynamic_cast<CudaBackend*>(backend->get());
  ASSERT_NE(cuda, nullptr);
  // The copies queue up while the stream waits for this.
  ASSERT_EQ(
      cudaLaunchHostFunc(
          cuda->stream(),
          [](void*) { std::this_thread::sleep_for(std::chrono::milliseconds(100)); }, nullptr),
      cudaSuccess);
  std::vector<int32_t> host(kInts);
  for (size_t copy = 0; copy < kCopies; ++copy) {
    std::iota(host.begin(), host.end(), int32_t(copy * kInts));
    (*backend)->upload(device + copy * kInts, host.data(), kInts * sizeof(int32_t));
  }
  // Copy 7 again, negated: the later upload lands last.
  std::iota(host.begin(), host.end(), int32_t(7 * kInts));
  for (int32_t& value : host) value = -value;
  (*backend)->upload(device + 7 * kInts, host.data(), kInts * sizeof(int32_t));

  std::vector<int32_t> all(kCopies * kInts);
  (*backend)->download(all.data(), device, all.size() * sizeof(int32_t));
  size_t wrong = 0;
  for (size_t i = 0; i < all.size(); ++i) {
    const int32_t expected = i / kInts == 7 ? -int32_t(i) : int32_t(i);
    wrong += all[i] != expected;
  }
  EXPECT_EQ(wrong, 0u);
  for (const size_t copy : {size_t(0), size_t(7), kCopies - 1}) {
    std::vector<int32_t> one(kInts, 0);
    (*backend)->download(one.data(), device + copy * kInts, kInts * sizeof(int32_t));
    EXPECT_EQ(one[1], copy == 7 ? -int32_t(copy * kInts + 1) : int32_t(copy * kInts + 1));
    EXPECT_EQ(one.back(),
              copy == 7 ? -int32_t(copy * kInts + kInts - 1) : int32_t(copy * kInts + kInts - 1));
  }
}

}  // namespace
}  // namespace kite
