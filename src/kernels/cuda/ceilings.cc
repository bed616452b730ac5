// Measuring the GPU's copy bandwidth and bf16 GEMM rate (see ceilings.h).
#include "kernels/cuda/ceilings.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <vector>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/linear.h"

namespace kite::cuda {
namespace {

// The median time in seconds of `repeats` runs of `work` on `stream`, after `warmups` untimed.
template <typename Work>
double median_seconds(cudaStream_t stream, int warmups, int repeats, const Work& work) {
  for (int i = 0; i < warmups; ++i) work();
  cudaEvent_t start, stop;
  KITE_CUDA_CHECK(cudaEventCreate(&start));
  KITE_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<float> milliseconds;
  for (int i = 0; i < repeats; ++i) {
    KITE_CUDA_CHECK(cudaEventRecord(start, stream));
    work();
    KITE_CUDA_CHECK(cudaEventRecord(stop, stream));
    KITE_CUDA_CHECK(cudaEventSynchronize(stop));
    float elapsed = 0;
    KITE_CUDA_CHECK(cudaEventElapsedTime(&elapsed, start, stop));
    milliseconds.push_back(elapsed);
  }
  KITE_CUDA_CHECK(cudaEventDestroy(start));
  KITE_CUDA_CHECK(cudaEventDestroy(stop));
  std::nth_element(milliseconds.begin(), milliseconds.begin() + repeats / 2, milliseconds.end());
  return double(milliseconds[size_t(repeats / 2)]) * 1e-3;
}

// Device memory freed on scope exit.
struct Scratch {
  void* data = nullptr;
  ~Scratch() {
    if (data) cudaFree(data);
  }
};

// Fills bf16 memory with small non-zero values (a GEMM on zeros runs faster than on real data).
void fill_bf16(void* data, size_t count, cudaStream_t stream) {
  std::vector<uint16_t> pattern(4096);
  for (size_t i = 0; i < pattern.size(); ++i) {
    // bf16 bits of values in about [-1, 1], varied.
    pattern[i] = uint16_t(0x3c00 + (i * 2654435761u >> 20) % 0x380) | uint16_t((i & 1) << 15);
  }
  for (size_t offset = 0; offset < count; offset += pattern.size()) {
    const size_t n = std::min(pattern.size(), count - offset);
    KITE_CUDA_CHECK(cudaMemcpyAsync(static_cast<uint16_t*>(data) + offset, pattern.data(), n * 2,
                                    cudaMemcpyHostToDevice, stream));
  }
  KITE_CUDA_CHECK(cudaStreamSynchronize(stream));
}

}  // namespace

Result<GpuCeilings> measure_ceilings() {
  GpuCeilings ceilings;
  cudaStream_t stream = nullptr;
  KITE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  {
    constexpr size_t kCopyBytes = size_t(1) << 30;
    Scratch source, destination;
    if (cudaMalloc(&source.data, kCopyBytes) != cudaSuccess ||
        cudaMalloc(&destination.data, kCopyBytes) != cudaSuccess) {
      cudaGetLastError();
      KITE_CUDA_CHECK(cudaStreamDestroy(stream));
      return out_of_range("measuring the copy bandwidth needs 2 GiB of free GPU memory");
    }
    KITE_CUDA_CHECK(cudaMemsetAsync(source.data, 1, kCopyBytes, stream));
    const double seconds = median_seconds(stream, 3, 20, [&] {
      KITE_CUDA_CHECK(cudaMemcpyAsync(destination.data, source.data, kCopyBytes,
                                      cudaMemcpyDeviceToDevice, stream));
    });
    ceilings.copy_bytes_per_second = 2.0 * double(kCopyBytes) / seconds;
  }
  {
    constexpr int64_t kSize = 8192;
    const size_t count = size_t(kSize * kSize);
    Scratch a, b, c;
    if (cudaMalloc(&a.data, count * 2) != cudaSuccess ||
        cudaMalloc(&b.data, count * 2) != cudaSuccess ||
        cudaMalloc(&c.data, count * 2) != cudaSuccess) {
      cudaGetLastError();
      KITE_CUDA_CHECK(cudaStreamDestroy(stream));
      return out_of_range("measuring the GEMM rate needs 400 MiB of free GPU memory");
    }
    fill_bf16(a.data, count, stream);
    fill_bf16(b.data, count, stream);
    KITE_ASSIGN_OR_RETURN(std::unique_ptr<GemmRunner> runner, GemmRunner::create());
    const DeviceTensor x{DType::kBF16, {kSize, kSize}, a.data};
    const DeviceTensor weight{DType::kBF16, {kSize, kSize}, b.data};
    DeviceTensor out{DType::kBF16, {kSize, kSize}, c.data};
    const GemmTactic tactic = runner->default_tactic(kSize, kSize, kSize);
    const double seconds = median_seconds(
        stream, 3, 20, [&] { runner->linear(x, weight, nullptr, out, tactic, stream); });
    ceilings.bf16_gemm_flops_per_second = 2.0 * double(kSize) * kSize * kSize / seconds;
  }
  KITE_CUDA_CHECK(cudaStreamDestroy(stream));
  return ceilings;
}

}  // namespace kite::cuda
