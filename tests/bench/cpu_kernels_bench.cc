// Speed of the CPU backend's hot ops on the shapes of SmolLM2-135M: GEMV (decode) in GB/s of
// weights streamed, GEMM (prefill) in GFLOP/s, decode attention in microseconds. Not a test: run it
// by hand, e.g. `OMP_NUM_THREADS=2 build/kite_cpu_kernels_bench`.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "core/half.h"
#include "kernels/cpu/cpu_backend.h"

namespace kite {
namespace {

struct HostTensor {
  DeviceBuffer buffer;
  DeviceTensor tensor;
};

HostTensor random_tensor(Backend& backend, DType dtype, Shape shape, uint32_t seed) {
  HostTensor result;
  result.tensor.dtype = dtype;
  result.tensor.shape = std::move(shape);
  result.buffer = std::move(backend.allocate(result.tensor.byte_size()).value());
  result.tensor.data = result.buffer.data();
  std::mt19937 generator(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t count = result.tensor.numel();
  for (int64_t i = 0; i < count; ++i) {
    const float value = normal(generator);
    if (dtype == DType::kF32) static_cast<float*>(result.tensor.data)[i] = value;
    if (dtype == DType::kF16) static_cast<uint16_t*>(result.tensor.data)[i] = float_to_fp16(value);
    if (dtype == DType::kBF16) static_cast<uint16_t*>(result.tensor.data)[i] = float_to_bf16(value);
  }
  return result;
}

// Seconds per call: the best of several rounds, each long enough to time reliably.
template <typename Function>
double seconds_per_call(Function&& function) {
  function();
  int calls = 1;
  for (;;) {
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < calls; ++i) function();
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (elapsed > 0.05) break;
    calls *= 2;
  }
  double best = 1e30;
  for (int round = 0; round < 5; ++round) {
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < calls; ++i) function();
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = std::min(best, elapsed / calls);
  }
  return best;
}

void bench_linear(CpuBackend& backend, DType weight_dtype, int64_t tokens, int64_t k_size,
                  int64_t n_size) {
  HostTensor x = random_tensor(backend, DType::kF32, {tokens, k_size}, 1);
  HostTensor weight = random_tensor(backend, weight_dtype, {n_size, k_size}, 2);
  HostTensor out = random_tensor(backend, DType::kF32, {tokens, n_size}, 3);
  const double seconds =
      seconds_per_call([&] { backend.linear(x.tensor, weight.tensor, nullptr, out.tensor); });
  const double weight_bytes = double(weight.tensor.byte_size());
  const double flops = 2.0 * double(tokens) * double(k_size) * double(n_size);
  std::printf("linear %-8s T=%-4lld K=%-5lld N=%-6lld %9.1f us  %7.1f GB/s  %7.1f GFLOP/s\n",
              std::string(dtype_name(weight_dtype)).c_str(), (long long)tokens, (long long)k_size,
              (long long)n_size, seconds * 1e6, weight_bytes / seconds / 1e9,
              flops / seconds / 1e9);
}

}  // namespace
}  // namespace kite

int main() {
  using kite::DType;
  kite::CpuBackend backend;
  std::printf("isa %s, %d OpenMP threads\n",
              std::string(kite::cpu::isa_name(backend.isa())).c_str(), omp_get_max_threads());
  for (DType dtype : {DType::kBF16, DType::kF16, DType::kF32}) {
    kite::bench_linear(backend, dtype, 1, 576, 1536);
    kite::bench_linear(backend, dtype, 1, 1536, 576);
    kite::bench_linear(backend, dtype, 1, 576, 49152);
  }
  for (DType dtype : {DType::kBF16, DType::kF32}) {
    kite::bench_linear(backend, dtype, 512, 576, 1536);
    kite::bench_linear(backend, dtype, 512, 1536, 576);
    kite::bench_linear(backend, dtype, 512, 576, 3072);
  }
  return 0;
}
