// The CUDA backend's memory functions, and the table from Backend ops to the CUDA host functions.
#include "kernels/cuda/cuda_backend.h"

#include <algorithm>
#include <bit>
#include <string>

#include "kernels/cuda/activation.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/convert.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/logit_bias.h"
#include "kernels/cuda/rms_norm.h"
#include "kernels/cuda/rope.h"
#include "kernels/cuda/sampling.h"
#include "kernels/cuda/weight_only.h"

namespace kite {
namespace {

void free_device_memory(void* data) {
  KITE_CUDA_CHECK(cudaFree(data));
}

// Every small-M configuration the choices name exists in this Kite.
Status check_gemm_choices(const std::vector<GemmChoice>& choices) {
  for (const GemmChoice& choice : choices) {
    if (choice.algorithm == int32_t(cuda::GemmAlgorithm::kGemv) &&
        choice.variant >= cuda::kGemvVariantCount) {
      return unsupported("the engine's GEMM of " + std::to_string(choice.n) + " x " +
                         std::to_string(choice.k) + " names small-M kernel configuration " +
                         std::to_string(choice.variant) + ", which this Kite lacks (it has 0-" +
                         std::to_string(cuda::kGemvVariantCount - 1) +
                         "): build the engine again with this Kite");
    }
  }
  return Status::ok();
}

}  // namespace

Result<std::unique_ptr<CudaBackend>> CudaBackend::create(const BackendOptions& options) {
  if (options.activation_dtype != DType::kF16 && options.activation_dtype != DType::kBF16) {
    return invalid_argument("the CUDA backend computes in float16 or bfloat16, not " +
                            std::string(dtype_name(options.activation_dtype)));
  }
  KITE_RETURN_IF_ERROR(check_gemm_choices(options.gemm_choices));
  KITE_ASSIGN_OR_RETURN(CudaDeviceInfo device, cuda_device(options.device_index));
  KITE_CUDA_CHECK(cudaSetDevice(options.device_index));
  cudaStream_t stream = nullptr;
  KITE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  Result<std::unique_ptr<cuda::GemmRunner>> gemm = cuda::GemmRunner::create();
  if (!gemm.is_ok()) {
    KITE_CUDA_CHECK(cudaStreamDestroy(stream));
    return gemm.status();
  }
  return std::unique_ptr<CudaBackend>(
      new CudaBackend(options, std::move(device), stream, std::move(*gemm)));
}

CudaBackend::CudaBackend(BackendOptions options, CudaDeviceInfo device, cudaStream_t stream,
                         std::unique_ptr<cuda::GemmRunner> gemm)
    : options_(std::move(options)),
      device_(std::move(device)),
      stream_(stream),
      gemm_(std::move(gemm)) {}

CudaBackend::~CudaBackend() {
  for (cudaGraphExec_t graph : graphs_) {
    if (graph) cudaGraphExecDestroy(graph);
  }
  attention_workspace_.reset();
  split_counters_.reset();
  sampling_workspace_.reset();
  dequantized_weight_.reset();
  gemm_.reset();
  if (stream_) cudaStreamDestroy(stream_);
}

Result<DeviceBuffer> CudaBackend::allocate(size_t bytes) {
  void* data = nullptr;
  const cudaError_t error = cudaMalloc(&data, std::max<size_t>(bytes, 1));
  if (error != cudaSuccess) {
    cudaGetLastError();  // an allocation failure is not sticky; clear it
    size_t free_bytes = 0, total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    return out_of_range("out of GPU memory allocating " + std::to_string(bytes >> 20) + " MiB (" +
                        std::to_string(free_bytes >> 20) +
                        " MiB free); use a smaller model, batch, sequence length or KV cache "
                        "fraction");
  }
  return DeviceBuffer(data, bytes, &free_device_memory);
}

void CudaBackend::upload(void* device_destination, const void* host_source, size_t bytes) {
  if (bytes == 0) return;
  KITE_CUDA_CHECK(
      cudaMemcpyAsync(device_destination, host_source, bytes, cudaMemcpyHostToDevice, stream_));
  // Pageable host memory: the call returns once the source is staged, so the caller may reuse it.
}

void CudaBackend::download(void* host_destination, const void* device_source, size_t bytes) {
  if (bytes == 0) return;
  KITE_CUDA_CHECK(
      cudaMemcpyAsync(host_destination, device_source, bytes, cudaMemcpyDeviceToHost, stream_));
  KITE_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::synchronize() {
  KITE_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

size_t CudaBackend::memory_in_use_bytes() const {
  size_t free_bytes = 0, total_bytes = 0;
  KITE_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  return total_bytes - free_bytes;
}

bool CudaBackend::begin_graph_capture() {
  // Thread-local mode: other threads' CUDA calls (a progress bar, a tokenizer) stay legal.
  KITE_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  return true;
}

Result<int64_t> CudaBackend::end_graph_capture() {
  cudaGraph_t graph = nullptr;
  KITE_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
  cudaGraphExec_t executable = nullptr;
  const cudaError_t error = cudaGraphInstantiate(&executable, graph, 0);
  KITE_CUDA_CHECK(cudaGraphDestroy(graph));
  if (error != cudaSuccess) {
    cudaGetLastError();
    return internal_error(std::string("cudaGraphInstantiate failed: ") + cudaGetErrorString(error));
  }
  graphs_.push_back(executable);
  return int64_t(graphs_.size()) - 1;
}

void CudaBackend::replay_graph(int64_t graph) {
  KITE_CHECK(graph >= 0 && size_t(graph) < graphs_.size() && graphs_[size_t(graph)]);
  KITE_CUDA_CHECK(cudaGraphLaunch(graphs_[size_t(graph)], stream_));
}

void CudaBackend::destroy_graph(int64_t graph) {
  KITE_CHECK(graph >= 0 && size_t(graph) < graphs_.size());
  if (graphs_[size_t(graph)]) KITE_CUDA_CHECK(cudaGraphExecDestroy(graphs_[size_t(graph)]));
  graphs_[size_t(graph)] = nullptr;
}

void CudaBackend::embedding(const DeviceTensor& table, const int32_t* ids, DeviceTensor& out) {
  cuda::embedding(table, ids, out, stream_);
}

void CudaBackend::rms_norm(const DeviceTensor& x, const DeviceTensor& weight, float eps,
                           DeviceTensor& out) {
  cuda::rms_norm(x, weight, eps, out, stream_);
}

Status CudaBackend::set_gemm_choices(const std::vector<GemmChoice>& choices) {
  KITE_RETURN_IF_ERROR(check_gemm_choices(choices));
  synchronize();  // queued kernels were launched with the old choices; let them finish
  options_.gemm_choices = choices;
  ++graph_epoch_;  // recorded graphs hold the old kernels
  return Status::ok();
}

void CudaBackend::add_rms_norm(DeviceTensor& residual, const DeviceTensor& x,
                               const DeviceTensor& weight, float eps, DeviceTensor& out) {
  cuda::add_rms_norm(residual, x, weight, eps, out, stream_);
}

cuda::GemmTactic CudaBackend::tactic_for(int64_t m, int64_t n, int64_t k, bool gated) const {
  // The smallest tuned bucket that holds m rows.
  const GemmChoice* best = nullptr;
  for (const GemmChoice& choice : options_.gemm_choices) {
    if (choice.gated != gated || choice.n != n || choice.k != k || choice.max_tokens < m) continue;
    if (!best || choice.max_tokens < best->max_tokens) best = &choice;
  }
  // The fused kernel untuned (an engine built before it was tuned apart): the plain GEMM's choice.
  if (!best && gated) return tactic_for(m, n, k, false);
  if (!best) return gemm_->default_tactic(m, n, k);
  const auto algorithm = cuda::GemmAlgorithm(best->algorithm);
  // A cuBLASLt variant indexes the heuristic's list for the tuned row count; another row count
  // has another list, whose first entry is cuBLASLt's own pick.
  if (algorithm == cuda::GemmAlgorithm::kCublasLt && m != best->max_tokens) {
    return cuda::GemmTactic{algorithm, 0};
  }
  return cuda::GemmTactic{algorithm, best->variant};
}

void CudaBackend::linear(const DeviceTensor& x, const DeviceTensor& weight,
                         const DeviceTensor* bias, DeviceTensor& out) {
  gemm_->linear(x, weight, bias, out, tactic_for(x.rows(), weight.rows(), weight.cols()), stream_);
}

Status CudaBackend::reserve_weight_only(int64_t tokens, int64_t weight_elements) {
  if (tokens <= kWeightOnlyGemvMaxTokens) return Status::ok();
  // Exactly what the memory plan counts: this comes before the KV cache takes what is left.
  return grow_scratch(dequantized_weight_,
                      size_t(weight_elements) * dtype_size(options_.activation_dtype),
                      /*round_up=*/false);
}

void CudaBackend::linear_weight_only(const DeviceTensor& x, const LinearWeight& weight,
                                     const DeviceTensor* bias, DeviceTensor& out) {
  if (cuda::weight_only_gemv_applies(x, weight)) {
    cuda::weight_only_gemv(x, weight, bias, out, stream_);
    return;
  }
  const int64_t n = weight.out_features(), k = weight.in_features();
  reserve_scratch(dequantized_weight_, size_t(n * k) * dtype_size(x.dtype));
  DeviceTensor dense{x.dtype, {n, k}, dequantized_weight_.data()};
  cuda::dequantize_weight_only(weight, dense, stream_);
  linear(x, dense, bias, out);
}

void CudaBackend::rms_norm_linear(const DeviceTensor& x, float eps, const DeviceTensor& weight,
                                  const DeviceTensor* bias, DeviceTensor& normed,
                                  DeviceTensor& out) {
  const cuda::GemmTactic tactic = tactic_for(x.rows(), weight.rows(), weight.cols());
  if (!gemm_->linear_normed(x, weight, bias, eps, out, tactic, stream_)) {
    cuda::rms_norm(x, DeviceTensor{}, eps, normed, stream_);
    gemm_->linear(normed, weight, bias, out, tactic, stream_);
  }
}

void CudaBackend::linear_add(const DeviceTensor& x, const DeviceTensor& weight,
                             const DeviceTensor* bias, DeviceTensor& /*scratch*/,
                             DeviceTensor& residual) {
  gemm_->linear(x, weight, bias, residual, tactic_for(x.rows(), weight.rows(), weight.cols()),
                stream_, /*add=*/true);
}

void CudaBackend::silu_mul_linear_add(const DeviceTensor& gate_up, const DeviceTensor& weight,
                                      DeviceTensor& hidden, DeviceTensor& scratch,
                                      DeviceTensor& residual) {
  const cuda::GemmTactic tactic =
      tactic_for(gate_up.rows(), weight.rows(), weight.cols(), /*gated=*/true);
  if (!gemm_->linear_silu_mul_add(gate_up, weight, residual, tactic, stream_)) {
    cuda::silu_mul(gate_up, hidden, stream_);
    linear_add(hidden, weight, nullptr, scratch, residual);
  }
}

void CudaBackend::rope_and_store_kv(const DeviceTensor& qkv, const RopeParams& rope,
                                    const AttentionBatch& batch, const KvCacheView& cache,
                                    int64_t layer, DeviceTensor& q) {
  cuda::rope_and_store_kv(qkv, rope, batch, cache, layer, q, stream_);
}

int CudaBackend::decode_splits(const AttentionBatch& batch, const KvCacheView& cache,
                               int64_t decodes) const {
  if (decodes <= 0) return 1;
  // A/B switch: a fixed number of splits (1..64) for every decode step.
  static const int forced = switch_setting("KITE_DECODE_SPLITS", 0, 0, 64);
  if (forced > 0) return forced;
  // The table's width bounds every context of the step, and a graph is captured per width.
  const int64_t longest_possible = batch.max_blocks_per_sequence * cache.block_size;
  return cuda::choose_attention_splits(decodes, cache.num_kv_heads, longest_possible,
                                       device_.multiprocessor_count, options_.multi_block_mode);
}

cuda::SplitWorkspace CudaBackend::split_workspace(int64_t decodes, int64_t query_heads,
                                                  int64_t head_dim, int splits) {
  if (splits <= 1) return {};
  reserve_scratch(attention_workspace_,
                  cuda::attention_workspace_bytes(decodes, query_heads, head_dim, splits));
  const size_t counters = cuda::split_counter_count(decodes, query_heads);
  if (split_counters_.size() < counters * sizeof(int32_t)) {
    reserve_scratch(split_counters_, counters * sizeof(int32_t));
    KITE_CUDA_CHECK(cudaMemsetAsync(split_counters_.data(), 0, split_counters_.size(), stream_));
  }
  return {attention_workspace_.data(), attention_workspace_.size(),
          static_cast<int32_t*>(split_counters_.data()), split_counters_.size() / sizeof(int32_t)};
}

void CudaBackend::attention(const DeviceTensor& q, const AttentionBatch& batch,
                            const KvCacheView& cache, int64_t layer, float scale,
                            int64_t sliding_window, DeviceTensor& out) {
  const int64_t decodes =
      batch.max_query_length == 1 ? batch.num_sequences : batch.num_leading_decodes;
  const int splits = decode_splits(batch, cache, decodes);
  const cuda::SplitWorkspace workspace = split_workspace(
      std::max<int64_t>(decodes, 1), q.cols() / cache.head_dim, cache.head_dim, splits);
  cuda::attention(q, batch, cache, layer, scale, sliding_window, out, splits, workspace, stream_);
}

void CudaBackend::rope_attention(const DeviceTensor& qkv, const RopeParams& rope,
                                 const AttentionBatch& batch, const KvCacheView& cache,
                                 int64_t layer, float scale, int64_t sliding_window,
                                 DeviceTensor& q, DeviceTensor& out) {
  if (!cuda::decode_rope_attention_applies(batch, rope, cache.head_dim)) {
    Backend::rope_attention(qkv, rope, batch, cache, layer, scale, sliding_window, q, out);
    return;
  }
  const int splits = decode_splits(batch, cache, batch.num_sequences);
  const cuda::SplitWorkspace workspace =
      split_workspace(std::max<int64_t>(batch.num_sequences, 1), out.cols() / cache.head_dim,
                      cache.head_dim, splits);
  cuda::decode_rope_attention(qkv, rope, batch, cache, layer, scale, sliding_window, out, splits,
                              workspace, stream_);
}

Status CudaBackend::grow_scratch(DeviceBuffer& buffer, size_t bytes, bool round_up) {
  if (bytes <= buffer.size()) return Status::ok();
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  KITE_CUDA_CHECK(cudaStreamIsCapturing(stream_, &capture));
  KITE_CHECK(capture == cudaStreamCaptureStatusNone);
  synchronize();  // the old buffer may still be read by queued kernels
  buffer.reset();
  ++graph_epoch_;  // recorded graphs may point into the old buffer
  Result<DeviceBuffer> grown = round_up ? allocate(std::bit_ceil(bytes)) : allocate(bytes);
  if (!grown.is_ok() && round_up) grown = allocate(bytes);  // the rounding is a convenience
  KITE_RETURN_IF_ERROR(grown.status());
  buffer = std::move(*grown);
  return Status::ok();
}

void CudaBackend::reserve_scratch(DeviceBuffer& buffer, size_t bytes) {
  KITE_CHECK(grow_scratch(buffer, bytes, /*round_up=*/true).is_ok());
}

void CudaBackend::sample(DeviceTensor& logits, const SamplingRow* rows, const int32_t* history,
                         const int32_t* history_length, int64_t history_stride, int32_t* out_ids) {
  reserve_scratch(sampling_workspace_,
                  cuda::sampling_workspace_bytes(logits.rows(), logits.cols()));
  cuda::sample(logits, rows, history, history_length, history_stride, out_ids,
               sampling_workspace_.data(), sampling_workspace_.size(), stream_);
}

void CudaBackend::silu_mul(const DeviceTensor& gate_up, DeviceTensor& out) {
  cuda::silu_mul(gate_up, out, stream_);
}

void CudaBackend::gather_rows(const DeviceTensor& x, const int32_t* indices, DeviceTensor& out) {
  cuda::gather_rows(x, indices, out, stream_);
}

void CudaBackend::convert(const DeviceTensor& source, DeviceTensor& destination) {
  cuda::convert(source, destination, stream_);
}

void CudaBackend::copy_kv_blocks(const KvCacheView& cache,
                                 std::span<const std::pair<int32_t, int32_t>> copies) {
  // One strided copy per block: a row per layer, the layers a layer's elements apart.
  const size_t element = dtype_size(cache.dtype);
  const size_t block_bytes = size_t(cache.block_elements()) * element;
  const size_t layer_bytes = size_t(cache.layer_elements()) * element;
  auto* data = static_cast<uint8_t*>(cache.data);
  for (const auto& [from, to] : copies) {
    KITE_CUDA_CHECK(cudaMemcpy2DAsync(data + size_t(to) * block_bytes, layer_bytes,
                                      data + size_t(from) * block_bytes, layer_bytes, block_bytes,
                                      size_t(cache.num_layers), cudaMemcpyDeviceToDevice, stream_));
  }
}

void CudaBackend::add_logit_bias(DeviceTensor& logits, const LogitBiasEntry* entries,
                                 const int32_t* count, int64_t max_count) {
  cuda::add_logit_bias(logits, entries, count, max_count, stream_);
}

}  // namespace kite
