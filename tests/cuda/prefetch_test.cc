// The L2 prefetch (kernels/cuda/prefetch.h) on ranges of every alignment, eagerly and inside a
// recorded graph: it must run without a fault and leave every byte as it was. Skips without a GPU.
#include <gtest/gtest.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "cuda_test_util.h"
#include "kernels/cuda/prefetch.h"

namespace kite {
namespace {

TEST(CudaPrefetch, AnyRangeRunsAndChangesNothing) {
  KITE_REQUIRE_GPU();
  constexpr size_t kBytes = size_t(9) << 20;  // past one CTA's share of chunks (128 x 16 KiB)
  std::vector<uint8_t> pattern(kBytes);
  for (size_t i = 0; i < kBytes; ++i) pattern[i] = uint8_t(i * 131 + 7);
  test::GpuTensor buffer(DType::kI32, {int64_t(kBytes / 4)});
  auto* base = buffer.as<uint8_t>();
  ASSERT_EQ(cudaMemcpy(base, pattern.data(), kBytes, cudaMemcpyHostToDevice), cudaSuccess);
  // (offset, bytes): empty, inside one 16-byte unit, unaligned both ends, one chunk and a bit,
  // the whole buffer less a byte at each end.
  const std::vector<std::pair<size_t, size_t>> ranges = {
      {0, 0}, {5, 9}, {3, 100}, {16, (16 << 10) + 48}, {1, kBytes - 2}, {0, kBytes}};
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  for (const auto& [offset, bytes] : ranges) cuda::prefetch_to_l2(base + offset, bytes, stream);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);

  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  for (const auto& [offset, bytes] : ranges) cuda::prefetch_to_l2(base + offset, bytes, stream);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t executable = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&executable, graph, 0), cudaSuccess);
  for (int replay = 0; replay < 3; ++replay) {
    ASSERT_EQ(cudaGraphLaunch(executable, stream), cudaSuccess);
  }
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  cudaGraphExecDestroy(executable);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);

  std::vector<uint8_t> after(kBytes);
  ASSERT_EQ(cudaMemcpy(after.data(), base, kBytes, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_TRUE(after == pattern);
}

}  // namespace
}  // namespace kite
