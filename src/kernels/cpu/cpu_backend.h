// The CPU backend: host memory and float32 activations, one OpenMP-parallel host function per op
// (the files beside this one). It is the reference every CUDA kernel is tested against, so its ops
// are deterministic: the same inputs give bit-identical outputs for any number of threads.
#pragma once

#include "kernels/cpu/cpu_features.h"
#include "model/backend.h"

namespace kite {

class CpuBackend final : public Backend {
 public:
  // Uses the best instruction set of this machine; tests pass Isa::kScalar to check the fallback.
  CpuBackend() : CpuBackend(cpu::detect_isa()) {}
  explicit CpuBackend(cpu::Isa isa) : isa_(isa) {}

  cpu::Isa isa() const { return isa_; }

  BackendKind kind() const override { return BackendKind::kCpu; }
  DType activation_dtype() const override { return DType::kF32; }

  // Memory is 64-byte aligned (one cache line, two AVX2 vectors).
  Result<DeviceBuffer> allocate(size_t bytes) override;
  void upload(void* device_destination, const void* host_source, size_t bytes) override;
  void download(void* host_destination, const void* device_source, size_t bytes) override;
  void synchronize() override {}
  size_t memory_in_use_bytes() const override;

  void embedding(const DeviceTensor& table, const int32_t* ids, DeviceTensor& out) override;
  void rms_norm(const DeviceTensor& x, const DeviceTensor& weight, float eps,
                DeviceTensor& out) override;
  void add_rms_norm(DeviceTensor& residual, const DeviceTensor& x, const DeviceTensor& weight,
                    float eps, DeviceTensor& out) override;
  void linear(const DeviceTensor& x, const DeviceTensor& weight, const DeviceTensor* bias,
              DeviceTensor& out) override;
  bool supports_weight_only(const WeightOnlyConfig& config) const override {
    return config.enabled();
  }
  void linear_weight_only(const DeviceTensor& x, const LinearWeight& weight,
                          const DeviceTensor* bias, DeviceTensor& out) override;
  void rope_and_store_kv(const DeviceTensor& qkv, const RopeParams& rope,
                         const AttentionBatch& batch, const KvCacheView& cache, int64_t layer,
                         DeviceTensor& q) override;
  void attention(const DeviceTensor& q, const AttentionBatch& batch, const KvCacheView& cache,
                 int64_t layer, float scale, int64_t sliding_window, DeviceTensor& out) override;
  void silu_mul(const DeviceTensor& gate_up, DeviceTensor& out) override;
  void rms_norm_linear(const DeviceTensor& x, float eps, const DeviceTensor& weight,
                       const DeviceTensor* bias, DeviceTensor& normed, DeviceTensor& out) override;
  void linear_add(const DeviceTensor& x, const DeviceTensor& weight, const DeviceTensor* bias,
                  DeviceTensor& scratch, DeviceTensor& residual) override;
  void silu_mul_linear_add(const DeviceTensor& gate_up, const DeviceTensor& weight,
                           DeviceTensor& hidden, DeviceTensor& scratch,
                           DeviceTensor& residual) override;
  void gather_rows(const DeviceTensor& x, const int32_t* indices, DeviceTensor& out) override;
  void convert(const DeviceTensor& source, DeviceTensor& destination) override;
  void copy_kv_blocks(const KvCacheView& cache,
                      std::span<const std::pair<int32_t, int32_t>> copies) override;
  void add_logit_bias(DeviceTensor& logits, const LogitBiasEntry* entries, const int32_t* count,
                      int64_t max_count) override;

 private:
  cpu::Isa isa_;
};

}  // namespace kite
