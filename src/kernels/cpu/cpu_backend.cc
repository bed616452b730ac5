// The CPU backend's memory functions, and the table from Backend ops to the CPU host functions.
#include "kernels/cpu/cpu_backend.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include <unistd.h>

#include "kernels/cpu/activation.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/convert.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/logit_bias.h"
#include "kernels/cpu/rms_norm.h"
#include "kernels/cpu/rope.h"

namespace kite {
namespace {

constexpr size_t kAlignment = 64;

void free_host_memory(void* data) {
  std::free(data);
}

}  // namespace

size_t CpuBackend::memory_in_use_bytes() const {
  // /proc/self/statm: total and resident sizes in pages.
  std::FILE* file = std::fopen("/proc/self/statm", "r");
  if (!file) return 0;
  unsigned long long total_pages = 0, resident_pages = 0;
  const int fields = std::fscanf(file, "%llu %llu", &total_pages, &resident_pages);
  std::fclose(file);
  if (fields != 2) return 0;
  return size_t(resident_pages) * size_t(sysconf(_SC_PAGESIZE));
}

Result<DeviceBuffer> CpuBackend::allocate(size_t bytes) {
  // aligned_alloc wants a multiple of the alignment; a zero-byte buffer still gets a valid pointer.
  const size_t rounded =
      std::max<size_t>(kAlignment, (bytes + kAlignment - 1) / kAlignment * kAlignment);
  if (rounded < bytes) return out_of_range("cannot allocate " + std::to_string(bytes) + " bytes");
  void* data = std::aligned_alloc(kAlignment, rounded);
  if (!data) {
    return out_of_range("out of host memory allocating " + std::to_string(bytes) +
                        " bytes; use a smaller model, batch or KV cache");
  }
  return DeviceBuffer(data, bytes, &free_host_memory);
}

void CpuBackend::upload(void* device_destination, const void* host_source, size_t bytes) {
  if (bytes > 0) std::memcpy(device_destination, host_source, bytes);
}

void CpuBackend::download(void* host_destination, const void* device_source, size_t bytes) {
  if (bytes > 0) std::memcpy(host_destination, device_source, bytes);
}

void CpuBackend::embedding(const DeviceTensor& table, const int32_t* ids, DeviceTensor& out) {
  cpu::embedding(table, ids, out);
}

void CpuBackend::rms_norm(const DeviceTensor& x, const DeviceTensor& weight, float eps,
                          DeviceTensor& out) {
  cpu::rms_norm(x, weight, eps, out);
}

void CpuBackend::add_rms_norm(DeviceTensor& residual, const DeviceTensor& x,
                              const DeviceTensor& weight, float eps, DeviceTensor& out) {
  cpu::add_rms_norm(residual, x, weight, eps, out);
}

void CpuBackend::linear(const DeviceTensor& x, const DeviceTensor& weight, const DeviceTensor* bias,
                        DeviceTensor& out) {
  cpu::linear(x, weight, bias, out, isa_);
}

void CpuBackend::linear_weight_only(const DeviceTensor& x, const LinearWeight& weight,
                                    const DeviceTensor* bias, DeviceTensor& out) {
  cpu::linear_weight_only(x, weight, bias, out, isa_);
}

void CpuBackend::rope_and_store_kv(const DeviceTensor& qkv, const RopeParams& rope,
                                   const AttentionBatch& batch, const KvCacheView& cache,
                                   int64_t layer, DeviceTensor& q) {
  cpu::rope_and_store_kv(qkv, rope, batch, cache, layer, q);
}

void CpuBackend::attention(const DeviceTensor& q, const AttentionBatch& batch,
                           const KvCacheView& cache, int64_t layer, float scale,
                           int64_t sliding_window, DeviceTensor& out) {
  cpu::attention(q, batch, cache, layer, scale, sliding_window, out, isa_);
}

void CpuBackend::silu_mul(const DeviceTensor& gate_up, DeviceTensor& out) {
  cpu::silu_mul(gate_up, out);
}

void CpuBackend::rms_norm_linear(const DeviceTensor& x, float eps, const DeviceTensor& weight,
                                 const DeviceTensor* bias, DeviceTensor& normed,
                                 DeviceTensor& out) {
  cpu::rms_norm(x, DeviceTensor{}, eps, normed);
  cpu::linear(normed, weight, bias, out, isa_);
}

void CpuBackend::linear_add(const DeviceTensor& x, const DeviceTensor& weight,
                            const DeviceTensor* bias, DeviceTensor& scratch,
                            DeviceTensor& residual) {
  KITE_CHECK(residual.dtype == DType::kF32 && scratch.dtype == DType::kF32);
  KITE_CHECK(scratch.numel() == residual.numel() && scratch.data != residual.data);
  cpu::linear(x, weight, bias, scratch, isa_);
  auto* sums = static_cast<float*>(residual.data);
  const auto* product = static_cast<const float*>(scratch.data);
  for (int64_t i = 0; i < residual.numel(); ++i) sums[i] += product[i];
}

void CpuBackend::silu_mul_linear_add(const DeviceTensor& gate_up, const DeviceTensor& weight,
                                     DeviceTensor& hidden, DeviceTensor& scratch,
                                     DeviceTensor& residual) {
  cpu::silu_mul(gate_up, hidden);
  linear_add(hidden, weight, nullptr, scratch, residual);
}

void CpuBackend::gather_rows(const DeviceTensor& x, const int32_t* indices, DeviceTensor& out) {
  cpu::gather_rows(x, indices, out);
}

void CpuBackend::convert(const DeviceTensor& source, DeviceTensor& destination) {
  cpu::convert(source, destination);
}

void CpuBackend::copy_kv_blocks(const KvCacheView& cache,
                                std::span<const std::pair<int32_t, int32_t>> copies) {
  const size_t element = dtype_size(cache.dtype);
  const size_t block_bytes = size_t(cache.block_elements()) * element;
  auto* data = static_cast<uint8_t*>(cache.data);
  for (const auto& [from, to] : copies) {
    for (int64_t layer = 0; layer < cache.num_layers; ++layer) {
      std::memcpy(data + size_t(cache.offset(layer, to, 0, 0, 0)) * element,
                  data + size_t(cache.offset(layer, from, 0, 0, 0)) * element, block_bytes);
    }
  }
}

void CpuBackend::add_logit_bias(DeviceTensor& logits, const LogitBiasEntry* entries,
                                const int32_t* count, int64_t max_count) {
  cpu::add_logit_bias(logits, entries, count, max_count);
}

}  // namespace kite
