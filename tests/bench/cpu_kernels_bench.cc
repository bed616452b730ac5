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

#if KITE_HAS_AVX2_KERNELS
#include <immintrin.h>
#endif

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
  for (int round = 0; round < 10; ++round) {
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < calls; ++i) function();
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = std::min(best, elapsed / calls);
  }
  return best;
}

#if KITE_HAS_AVX2_KERNELS
// Sums a buffer with 8 independent AVX2 accumulators: the read bandwidth any GEMV can hope for.
KITE_TARGET_AVX2 float sum_floats(const float* data, int64_t count) {
  __m256 sums[8];
  for (__m256& sum : sums) sum = _mm256_setzero_ps();
  for (int64_t i = 0; i + 64 <= count; i += 64) {
    for (int j = 0; j < 8; ++j) sums[j] = _mm256_add_ps(sums[j], _mm256_loadu_ps(data + i + 8 * j));
  }
  for (int j = 1; j < 8; ++j) sums[0] = _mm256_add_ps(sums[0], sums[j]);
  float lanes[8];
  _mm256_storeu_ps(lanes, sums[0]);
  return lanes[0] + lanes[1] + lanes[2] + lanes[3] + lanes[4] + lanes[5] + lanes[6] + lanes[7];
}

// 12 independent FMA chains in registers: the float32 FLOP/s ceiling of one core, times threads.
KITE_TARGET_AVX2 float fma_chains(int64_t iterations, float seed) {
  __m256 chains[12];
  for (int j = 0; j < 12; ++j) chains[j] = _mm256_set1_ps(seed + float(j));
  const __m256 multiplier = _mm256_set1_ps(0.999f), addend = _mm256_set1_ps(0.001f);
  for (int64_t i = 0; i < iterations; ++i) {
    for (__m256& chain : chains) chain = _mm256_fmadd_ps(chain, multiplier, addend);
  }
  for (int j = 1; j < 12; ++j) chains[0] = _mm256_add_ps(chains[0], chains[j]);
  return _mm256_cvtss_f32(chains[0]);
}

void bench_fma_peak() {
  const int64_t iterations = 1 << 20;
  volatile float sink = 0.0f;
  const double seconds = seconds_per_call([&] {
    float total = 0.0f;
#pragma omp parallel reduction(+ : total)
    total += fma_chains(iterations, float(omp_get_thread_num()));
    sink = total;
  });
  const double flops = double(iterations) * 12 * 8 * 2 * omp_get_max_threads();
  std::printf("fma peak                                                        %7.1f GFLOP/s\n",
              flops / seconds / 1e9);
}

void bench_read_bandwidth(size_t bytes) {
  std::vector<float> data(bytes / sizeof(float), 1.0f);
  const int64_t count = int64_t(data.size());
  volatile float sink = 0.0f;
  const double seconds = seconds_per_call([&] {
    float total = 0.0f;
#pragma omp parallel for reduction(+ : total) schedule(static)
    for (int64_t chunk = 0; chunk < 64; ++chunk) {
      const int64_t begin = count * chunk / 64, end = count * (chunk + 1) / 64;
      total += sum_floats(data.data() + begin, end - begin);
    }
    sink = total;
  });
  std::printf("read bandwidth  %8.1f MB                     %7.1f GB/s\n", double(bytes) / 1e6,
              double(bytes) / seconds / 1e9);
}
#endif

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
#if KITE_HAS_AVX2_KERNELS
  kite::bench_fma_peak();
  kite::bench_read_bandwidth(576 * 1536 * 2);
  kite::bench_read_bandwidth(size_t(576) * 49152 * 2);
#endif
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
