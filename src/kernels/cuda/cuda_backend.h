// The CUDA backend: GPU memory, a stream (and a second one for attention), float16/bfloat16
// activations, and the table from Backend ops to the CUDA host entry points (one .cu file per op
// beside this one). Chosen once at start-up through make_backend; the model code never sees it.
#pragma once

#include <cuda_runtime_api.h>

#include <memory>
#include <vector>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/linear.h"
#include "model/backend.h"

namespace kite {

class CudaBackend final : public Backend {
 public:
  // On GPU options.device_index, which becomes the calling thread's current device. Fails with
  // kUnsupported when there is no such GPU.
  static Result<std::unique_ptr<CudaBackend>> create(const BackendOptions& options);
  ~CudaBackend() override;

  BackendKind kind() const override { return BackendKind::kCuda; }
  DType activation_dtype() const override { return options_.activation_dtype; }
  const CudaDeviceInfo& device() const { return device_; }
  cudaStream_t stream() const { return stream_; }

  // Memory is cudaMalloc'ed (256-byte aligned). upload() may return before the copy lands on the
  // GPU (later work on the stream sees it); download() waits for it.
  Result<DeviceBuffer> allocate(size_t bytes) override;
  void upload(void* device_destination, const void* host_source, size_t bytes) override;
  void download(void* host_destination, const void* device_source, size_t bytes) override;
  void synchronize() override;
  size_t memory_in_use_bytes() const override;

  // CUDA graphs of the ops issued on this backend's stream.
  bool begin_graph_capture() override;
  Result<int64_t> end_graph_capture() override;
  void replay_graph(int64_t graph) override;
  void destroy_graph(int64_t graph) override;

  void embedding(const DeviceTensor& table, const int32_t* ids, DeviceTensor& out) override;
  void rms_norm(const DeviceTensor& x, const DeviceTensor& weight, float eps,
                DeviceTensor& out) override;
  void add_rms_norm(DeviceTensor& residual, const DeviceTensor& x, const DeviceTensor& weight,
                    float eps, DeviceTensor& out) override;
  // Runs the kernel tuned for this shape at build time (BackendOptions::gemm_choices), or the
  // GEMM runner's default for shapes without one.
  void linear(const DeviceTensor& x, const DeviceTensor& weight, const DeviceTensor* bias,
              DeviceTensor& out) override;
  // Weight-only quantized layers (int8 / int4, kernels/cuda/weight_only.h): a GEMV over the
  // quantized weight up to kWeightOnlyGemvMaxTokens rows, else the weight dequantized into a
  // scratch copy (reserve_weight_only) and the GEMM tuned for its shape.
  bool supports_weight_only(const WeightOnlyConfig& config) const override {
    return config.enabled();
  }
  Status reserve_weight_only(int64_t tokens, int64_t weight_elements) override;
  void linear_weight_only(const DeviceTensor& x, const LinearWeight& weight,
                          const DeviceTensor* bias, DeviceTensor& out) override;
  void rope_and_store_kv(const DeviceTensor& qkv, const RopeParams& rope,
                         const AttentionBatch& batch, const KvCacheView& cache, int64_t layer,
                         DeviceTensor& q) override;
  // Decode steps split long contexts over several CTAs (multi-block mode) when the batch alone
  // cannot fill the GPU; the split count depends on the number of sequences only.
  void attention(const DeviceTensor& q, const AttentionBatch& batch, const KvCacheView& cache,
                 int64_t layer, float scale, int64_t sliding_window, DeviceTensor& out) override;
  // Decode steps: RoPE and the KV store inside the decode attention kernel.
  void rope_attention(const DeviceTensor& qkv, const RopeParams& rope, const AttentionBatch& batch,
                      const KvCacheView& cache, int64_t layer, float scale, int64_t sliding_window,
                      DeviceTensor& q, DeviceTensor& out) override;
  void silu_mul(const DeviceTensor& gate_up, DeviceTensor& out) override;
  // The three fused ops run one GEMV kernel each at decode sizes (the tuned GEMV configuration of
  // the shape, the SwiGLU one for silu_mul_linear_add); otherwise RMSNorm then cuBLASLt,
  // cuBLASLt adding into the residual (beta = 1), SwiGLU then cuBLASLt adding.
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
  // Sampling on the GPU (kernels/cuda/sampling.h): only the ids go back to the host.
  bool has_sampling() const override { return true; }
  void sample(DeviceTensor& logits, const SamplingRow* rows, const int32_t* history,
              const int32_t* history_length, int64_t history_stride, int32_t* out_ids) override;

 private:
  CudaBackend(BackendOptions options, CudaDeviceInfo device, cudaStream_t stream,
              std::unique_ptr<cuda::GemmRunner> gemm);
  // The tuned tactic of an m-row GEMM with a [n, k] weight (`gated`: SwiGLU fused in).
  cuda::GemmTactic tactic_for(int64_t m, int64_t n, int64_t k, bool gated = false) const;
  // Grows `buffer` to hold `bytes`, to the next power of two: a growth waits for the GPU and drops
  // every captured graph, and in serving the sampling workspace's row count rises a request at a
  // time (a traced 256-request run idled 55 times before its first sampling kernel, 29 ms in all,
  // when growth was exact); at most twice the memory, and exactly `bytes` where the GPU has no room
  // for the rounding. Never while the stream is being captured (the eager run of a shape sizes the
  // scratch buffers before its capture).
  void reserve_scratch(DeviceBuffer& buffer, size_t bytes);
  // What reserve_scratch does, to exactly `bytes` unless `round_up`, failing with the allocation's
  // status instead of stopping (reserve_weight_only, at load).
  Status grow_scratch(DeviceBuffer& buffer, size_t bytes, bool round_up);
  int64_t graph_epoch() const override { return graph_epoch_; }
  Status set_gemm_choices(const std::vector<GemmChoice>& choices) override;
  // The split count of a step's decode attention and its scratch, grown (never during capture).
  int decode_splits(const AttentionBatch& batch, const KvCacheView& cache, int64_t decodes) const;
  cuda::SplitWorkspace split_workspace(int64_t decodes, int64_t query_heads, int64_t head_dim,
                                       int splits);

  BackendOptions options_;
  CudaDeviceInfo device_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<cuda::GemmRunner> gemm_;
  // Split-KV partial results; grown outside graph capture (the first step of a shape).
  DeviceBuffer attention_workspace_;
  DeviceBuffer split_counters_;          // zeroed when allocated; the kernels leave them zero
  DeviceBuffer sampling_workspace_;      // likewise
  DeviceBuffer dequantized_weight_;      // linear_weight_only's 16-bit copy of a weight
  std::vector<cudaGraphExec_t> graphs_;  // by id; destroyed ones are null
  int64_t graph_epoch_ = 0;              // bumped when a scratch buffer moves
};

}  // namespace kite
