// Speed of the CPU backend's hot ops on the shapes of SmolLM2-135M: GEMV (decode) in GB/s of
// weights streamed, GEMM (prefill) in GFLOP/s, decode attention in microseconds. Not a test: run it
// by hand, e.g. `OMP_NUM_THREADS=2 build/kite_cpu_kernels_bench`.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
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

// Attention of one sequence (SmolLM2 heads: 9 query, 3 kv, 64 dims) whose last `query_length`
// tokens are new, over a float32 cache of `context_length` tokens in blocks of 16.
void bench_attention(CpuBackend& backend, int64_t context_length, int64_t query_length) {
  const int64_t heads = 9, kv_heads = 3, head_dim = 64, block_size = 16;
  const int64_t blocks = (context_length + block_size - 1) / block_size;
  KvCacheView cache{nullptr, DType::kF32, 1, blocks, kv_heads, block_size, head_dim};
  HostTensor cache_storage = random_tensor(backend, DType::kF32, {cache.layer_elements()}, 2);
  cache.data = cache_storage.tensor.data;
  std::vector<int32_t> positions, slots;
  for (int64_t i = context_length - query_length; i < context_length; ++i) {
    positions.push_back(int32_t(i));
    slots.push_back(int32_t(i));
  }
  std::vector<int32_t> query_start = {0, int32_t(query_length)};
  std::vector<int32_t> context = {int32_t(context_length)};
  std::vector<int32_t> block_table(static_cast<size_t>(blocks));
  for (int64_t i = 0; i < blocks; ++i) block_table[size_t(i)] = int32_t(i);
  AttentionBatch batch{query_length,   1,
                       blocks,         query_length,
                       context_length, positions.data(),
                       slots.data(),   query_start.data(),
                       context.data(), block_table.data()};
  HostTensor q = random_tensor(backend, DType::kF32, {query_length, heads * head_dim}, 3);
  HostTensor out = random_tensor(backend, DType::kF32, {query_length, heads * head_dim}, 4);
  const double seconds = seconds_per_call(
      [&] { backend.attention(q.tensor, batch, cache, 0, 0.125f, 0, out.tensor); });
  // Scores and weighted values: 2 * 2 * D flops per (query head, visible key).
  double pairs = 0;
  for (int64_t i = 0; i < query_length; ++i) pairs += double(context_length - query_length + i + 1);
  const double flops = pairs * double(heads) * 4.0 * double(head_dim);
  std::printf("attention context %-5lld new tokens %-4lld       %9.1f us  %7.1f GFLOP/s\n",
              (long long)context_length, (long long)query_length, seconds * 1e6,
              flops / seconds / 1e9);
}

// One decode step of SmolLM2-135M (30 layers, hidden 576, 9 query / 3 kv heads of 64, MLP 1536,
// vocabulary 49152, bfloat16 weights) at batch 1, through the backend ops alone: the ceiling the
// CPU engine's decode speed can reach with these kernels.
void bench_smollm_decode(CpuBackend& backend, int64_t context_length) {
  const int64_t layers = 30, hidden = 576, heads = 9, kv_heads = 3, head_dim = 64;
  const int64_t mlp = 1536, vocabulary = 49152, block_size = 16;
  const int64_t qkv = (heads + 2 * kv_heads) * head_dim;
  struct Layer {
    HostTensor norm1, qkv, o, norm2, gate_up, down;
  };
  std::vector<Layer> weights;
  uint32_t seed = 10;
  for (int64_t i = 0; i < layers; ++i) {
    weights.push_back({random_tensor(backend, DType::kBF16, {hidden}, seed++),
                       random_tensor(backend, DType::kBF16, {qkv, hidden}, seed++),
                       random_tensor(backend, DType::kBF16, {hidden, hidden}, seed++),
                       random_tensor(backend, DType::kBF16, {hidden}, seed++),
                       random_tensor(backend, DType::kBF16, {2 * mlp, hidden}, seed++),
                       random_tensor(backend, DType::kBF16, {hidden, mlp}, seed++)});
  }
  HostTensor embedding = random_tensor(backend, DType::kBF16, {vocabulary, hidden}, seed++);
  HostTensor final_norm = random_tensor(backend, DType::kBF16, {hidden}, seed++);
  HostTensor residual = random_tensor(backend, DType::kF32, {1, hidden}, 1);
  HostTensor normed = random_tensor(backend, DType::kF32, {1, hidden}, 1);
  HostTensor qkv_out = random_tensor(backend, DType::kF32, {1, qkv}, 1);
  HostTensor attention_out = random_tensor(backend, DType::kF32, {1, heads * head_dim}, 1);
  HostTensor projected = random_tensor(backend, DType::kF32, {1, hidden}, 1);
  HostTensor gate_up = random_tensor(backend, DType::kF32, {1, 2 * mlp}, 1);
  HostTensor activated = random_tensor(backend, DType::kF32, {1, mlp}, 1);
  HostTensor logits = random_tensor(backend, DType::kF32, {1, vocabulary}, 1);
  HostTensor q_rotated = random_tensor(backend, DType::kF32, {1, heads * head_dim}, 1);
  DeviceTensor& q = q_rotated.tensor;

  const int64_t blocks = (context_length + block_size - 1) / block_size;
  KvCacheView cache{nullptr, DType::kF32, layers, blocks, kv_heads, block_size, head_dim};
  HostTensor cache_storage =
      random_tensor(backend, DType::kF32, {layers * cache.layer_elements()}, 2);
  cache.data = cache_storage.tensor.data;
  std::vector<int32_t> positions = {int32_t(context_length - 1)};
  std::vector<int32_t> slots = {int32_t(context_length - 1)};
  std::vector<int32_t> query_start = {0, 1};
  std::vector<int32_t> context = {int32_t(context_length)};
  std::vector<int32_t> block_table(static_cast<size_t>(blocks));
  for (int64_t i = 0; i < blocks; ++i) block_table[size_t(i)] = int32_t(i);
  AttentionBatch batch{1,
                       1,
                       blocks,
                       1,
                       context_length,
                       positions.data(),
                       slots.data(),
                       query_start.data(),
                       context.data(),
                       block_table.data()};
  std::vector<float> inv_freq(size_t(head_dim / 2));
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    inv_freq[size_t(i)] = 1.0f / std::pow(100000.0f, float(2 * i) / float(head_dim));
  }
  const RopeParams rope{inv_freq.data(), head_dim, 1.0f};
  const int32_t token = 42;

  const double seconds = seconds_per_call([&] {
    backend.embedding(embedding.tensor, &token, residual.tensor);
    backend.rms_norm(residual.tensor, weights[0].norm1.tensor, 1e-5f, normed.tensor);
    for (int64_t i = 0; i < layers; ++i) {
      Layer& layer = weights[size_t(i)];
      backend.linear(normed.tensor, layer.qkv.tensor, nullptr, qkv_out.tensor);
      backend.rope_and_store_kv(qkv_out.tensor, rope, batch, cache, i, q);
      backend.attention(q, batch, cache, i, 0.125f, 0, attention_out.tensor);
      backend.linear(attention_out.tensor, layer.o.tensor, nullptr, projected.tensor);
      backend.add_rms_norm(residual.tensor, projected.tensor, layer.norm2.tensor, 1e-5f,
                           normed.tensor);
      backend.linear(normed.tensor, layer.gate_up.tensor, nullptr, gate_up.tensor);
      backend.silu_mul(gate_up.tensor, activated.tensor);
      backend.linear(activated.tensor, layer.down.tensor, nullptr, projected.tensor);
      const DeviceTensor& next_norm =
          i + 1 < layers ? weights[size_t(i + 1)].norm1.tensor : final_norm.tensor;
      backend.add_rms_norm(residual.tensor, projected.tensor, next_norm, 1e-5f, normed.tensor);
    }
    backend.linear(normed.tensor, embedding.tensor, nullptr, logits.tensor);
  });
  std::printf("SmolLM2-135M bf16 decode step, context %-5lld %9.1f us  %7.1f tokens/s\n",
              (long long)context_length, seconds * 1e6, 1.0 / seconds);
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
  kite::bench_attention(backend, 256, 1);
  kite::bench_attention(backend, 2048, 1);
  kite::bench_attention(backend, 512, 512);
  kite::bench_smollm_decode(backend, 256);
  kite::bench_smollm_decode(backend, 2048);
  for (DType dtype : {DType::kBF16, DType::kF32}) {
    kite::bench_linear(backend, dtype, 512, 576, 1536);
    kite::bench_linear(backend, dtype, 512, 1536, 576);
    kite::bench_linear(backend, dtype, 512, 576, 3072);
  }
  return 0;
}
