// The compute interface of Kite (STYLE.md, principle 3): the model's forward function calls these
// ops and never knows which backend runs them. A backend is chosen once at start-up
// (make_backend in kernels/); the CPU backend is the reference every CUDA kernel is tested against.
//
// Conventions for every op:
//  - Tensors are row-major and contiguous; "[T, H]" means T rows of H elements.
//  - T is the number of tokens in the step (prefill and decode tokens of all sequences together).
//  - Activations are in the backend's activation dtype (CPU: float32; CUDA: bfloat16 or float16);
//    weights are in the engine's weight dtype; accumulation is always in float32.
//  - Pointers in DeviceTensor and in the batch structs point into the backend's memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"
#include "core/tensor.h"
#include "formats/gemm_choice.h"
#include "formats/quantization.h"
#include "model/batch.h"

namespace kite {

enum class BackendKind { kCpu, kCuda };
std::string_view backend_kind_name(BackendKind kind);

// A tensor in a backend's memory (host memory for the CPU backend, GPU memory for CUDA).
struct DeviceTensor {
  DType dtype = DType::kF32;
  Shape shape;
  void* data = nullptr;

  int64_t numel() const { return shape_numel(shape); }
  size_t byte_size() const { return size_t(numel()) * dtype_size(dtype); }
  int64_t rows() const { return shape.empty() ? 0 : shape_numel(shape) / shape.back(); }
  int64_t cols() const { return shape.empty() ? 0 : shape.back(); }
};

// The most rows of x for which the CUDA backend's linear_weight_only streams the quantized weight
// (a GEMV); larger steps multiply a dequantized 16-bit copy of it (memory plans count that copy).
inline constexpr int64_t kWeightOnlyGemvMaxTokens = 8;

// A linear layer's weight, logically [N, K]: floating (`weight` holds it and `scales` is empty),
// or weight-only quantized (W8A16 / W4A16, formats/quantization.h): `weight` holds the int8 values
// [N, K] or the packed int4 values [N, K / 2], and w[n, k] = value[n, k] * scales[n, k / group],
// with scales [N, K / group] floating.
struct LinearWeight {
  DeviceTensor weight;
  DeviceTensor scales;
  WeightOnlyConfig quantization;

  bool quantized() const { return quantization.enabled(); }
  int64_t out_features() const { return weight.shape.at(0); }
  int64_t in_features() const {
    return quantization.precision == WeightOnlyPrecision::kInt4 ? 2 * weight.shape.at(1)
                                                                : weight.shape.at(1);
  }
};

// Memory owned by a backend; freed when the buffer dies. Move-only.
class DeviceBuffer {
 public:
  using Deleter = void (*)(void*);
  DeviceBuffer() = default;
  DeviceBuffer(void* data, size_t size, Deleter deleter)
      : data_(data), size_(size), deleter_(deleter) {}
  DeviceBuffer(DeviceBuffer&& other) noexcept { *this = std::move(other); }
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      reset();
      data_ = other.data_;
      size_ = other.size_;
      deleter_ = other.deleter_;
      other.data_ = nullptr;
      other.size_ = 0;
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { reset(); }

  void* data() const { return data_; }
  size_t size() const { return size_; }
  void reset() {
    if (data_ && deleter_) deleter_(data_);
    data_ = nullptr;
    size_ = 0;
  }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
  Deleter deleter_ = nullptr;
};

// Rotary position embedding parameters for one model (HF "rotate_half" layout: element i pairs
// with element i + head_dim/2). inv_freq already includes linear / llama3 / dynamic-NTK scaling.
struct RopeParams {
  const float* inv_freq = nullptr;  // [rotary_dim / 2], in backend memory
  int64_t rotary_dim = 0;           // == head_dim for the Llama family
  float attention_scaling = 1.0f;   // multiplies cos and sin (1 except for YaRN-style scalings)
};

// How a backend is set up for one engine. The CPU backend uses only device_index (0).
struct BackendOptions {
  int device_index = 0;
  DType activation_dtype = DType::kF32;  // CUDA: float16 or bfloat16, the engine's weight dtype
  std::vector<GemmChoice> gemm_choices;  // CUDA: tuned kernels; shapes without one get a default
  bool multi_block_mode = true;          // CUDA: split-KV decode attention when it pays
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual BackendKind kind() const = 0;
  // The dtype of activations between ops.
  virtual DType activation_dtype() const = 0;

  // ---- memory ----
  virtual Result<DeviceBuffer> allocate(size_t bytes) = 0;
  virtual void upload(void* device_destination, const void* host_source, size_t bytes) = 0;
  virtual void download(void* host_destination, const void* device_source, size_t bytes) = 0;
  // Waits for every op issued so far (no-op on the CPU).
  virtual void synchronize() = 0;
  // Memory in use now, for reports such as kite bench's peak memory: on CUDA the device's total
  // minus free memory (as nvidia-smi counts it), on the CPU this process's resident memory.
  virtual size_t memory_in_use_bytes() const = 0;

  // ---- graphs: a sequence of ops recorded once and replayed (CUDA graphs) ----
  // Starts recording the ops issued from now on instead of running them; false (and nothing
  // recorded) when this backend has no graphs, as on the CPU.
  virtual bool begin_graph_capture() { return false; }
  // Stops recording; the id of the graph for replay_graph.
  virtual Result<int64_t> end_graph_capture() { return unsupported("this backend has no graphs"); }
  // Runs a recorded graph again: the same ops on the same buffers, reading their current contents.
  virtual void replay_graph(int64_t /*graph*/) { KITE_CHECK(false); }
  virtual void destroy_graph(int64_t /*graph*/) {}
  // Changes whenever the backend reallocates scratch memory that recorded graphs may point into
  // (its own workspaces, grown by a larger step): graphs recorded before must be recorded again.
  virtual int64_t graph_epoch() const { return 0; }
  // Replaces the tuned GEMM choices (BackendOptions::gemm_choices) between steps, for timing
  // choices in a running model (`kite build --tune_decode`); recorded graphs are recorded again.
  virtual Status set_gemm_choices(const std::vector<GemmChoice>& /*choices*/) {
    return unsupported("this backend has no tuned GEMM choices");
  }

  // ---- ops of the Llama family ----
  // out[t, :] = table[ids[t], :]            table [V, H], ids [T] (backend memory), out [T, H]
  virtual void embedding(const DeviceTensor& table, const int32_t* ids, DeviceTensor& out) = 0;
  // out = x / rms(x) * weight (weight without data: no scale)     x, out [T, H], weight [H]
  virtual void rms_norm(const DeviceTensor& x, const DeviceTensor& weight, float eps,
                        DeviceTensor& out) = 0;
  // residual += x; out = residual / rms(residual) * weight     (all [T, H], weight [H])
  virtual void add_rms_norm(DeviceTensor& residual, const DeviceTensor& x,
                            const DeviceTensor& weight, float eps, DeviceTensor& out) = 0;
  // out = x @ weight^T (+ bias)             x [T, K], weight [N, K], bias [N] or null, out [T, N]
  virtual void linear(const DeviceTensor& x, const DeviceTensor& weight, const DeviceTensor* bias,
                      DeviceTensor& out) = 0;
  // Whether linear_weight_only runs weights quantized as `config`.
  virtual bool supports_weight_only(const WeightOnlyConfig& /*config*/) const { return false; }
  // Sets aside what linear_weight_only needs beyond its operands for steps of up to `tokens` rows
  // and quantized weights of up to `weight_elements` values (CUDA: the dequantized copy of a
  // weight for steps past kWeightOnlyGemvMaxTokens), so that no step allocates. Engines call it at
  // load, before the KV cache takes the memory left.
  virtual Status reserve_weight_only(int64_t /*tokens*/, int64_t /*weight_elements*/) {
    return Status::ok();
  }
  // out = x @ dequantize(weight)^T (+ bias) for a quantized weight (LinearWeight), without
  // materialising the floating weight.   x [T, K], bias [N] or null, out [T, N]
  virtual void linear_weight_only(const DeviceTensor& /*x*/, const LinearWeight& /*weight*/,
                                  const DeviceTensor* /*bias*/, DeviceTensor& /*out*/) {
    KITE_CHECK(false && "this backend has no weight-only quantized linear");
  }
  // Applies RoPE at each token's position to its query and key heads, writes the rotated queries
  // to q and stores the rotated keys and the values into the paged cache at each token's slot.
  //                                        qkv [T, Hq*D + 2*Hkv*D] (q | k | v), q [T, Hq*D]
  virtual void rope_and_store_kv(const DeviceTensor& qkv, const RopeParams& rope,
                                 const AttentionBatch& batch, const KvCacheView& cache,
                                 int64_t layer, DeviceTensor& q) = 0;
  // Causal attention of each new token over its sequence's cached keys/values (positions
  // <= its own, and > position - sliding_window when sliding_window > 0); GQA by head groups.
  //                                        q [T, Hq*D], out [T, Hq*D]
  virtual void attention(const DeviceTensor& q, const AttentionBatch& batch,
                         const KvCacheView& cache, int64_t layer, float scale,
                         int64_t sliding_window, DeviceTensor& out) = 0;
  // rope_and_store_kv then attention: q = rope(q), cache[slot] = (rope(k), v), out = attention.
  // Backends that fuse the two (CUDA in decode steps) leave `q` untouched; the others compute q.
  //                                        qkv [T, Hq*D + 2*Hkv*D], q [T, Hq*D], out [T, Hq*D]
  virtual void rope_attention(const DeviceTensor& qkv, const RopeParams& rope,
                              const AttentionBatch& batch, const KvCacheView& cache, int64_t layer,
                              float scale, int64_t sliding_window, DeviceTensor& q,
                              DeviceTensor& out) {
    rope_and_store_kv(qkv, rope, batch, cache, layer, q);
    attention(q, batch, cache, layer, scale, sliding_window, out);
  }
  // out = silu(gate) * up, with gate_up[t] = [gate (F) | up (F)]    gate_up [T, 2F], out [T, F]
  virtual void silu_mul(const DeviceTensor& gate_up, DeviceTensor& out) = 0;
  // out = silu_mul(gate_up) @ weight^T       gate_up [T, 2F], weight [N, F], out [T, N]
  // Backends that fuse the two (CUDA at decode sizes) leave `hidden` [T, F] untouched; the others
  // compute silu_mul into it first.
  virtual void silu_mul_linear(const DeviceTensor& gate_up, const DeviceTensor& weight,
                               DeviceTensor& hidden, DeviceTensor& out) {
    silu_mul(gate_up, hidden);
    linear(hidden, weight, nullptr, out);
  }

  // ---- a layer's ops with the norm scales folded into the weights ----
  // When each RMSNorm's scale is folded into the columns of the linear layer after it (engines
  // `kite build` makes for CUDA; folded_norm_of, model/llama.h), the forward pass runs the three
  // ops below instead of add_rms_norm and linear: CUDA's decode GEMVs then add to the residual
  // stream and normalise by themselves, which saves both residual add + RMSNorm kernels a layer.
  // out = (x / rms(x)) @ weight^T (+ bias): an RMSNorm without its scale, then a linear layer.
  // Backends that do not fuse them write x / rms(x) into `normed` first.
  //                                        x [T, K], weight [N, K], normed [T, K], out [T, N]
  virtual void rms_norm_linear(const DeviceTensor& x, float eps, const DeviceTensor& weight,
                               const DeviceTensor* bias, DeviceTensor& normed,
                               DeviceTensor& out) = 0;
  // residual += x @ weight^T (+ bias). Backends that do not fuse them write the product into
  // `scratch` first.                      x [T, K], weight [N, K], scratch and residual [T, N]
  virtual void linear_add(const DeviceTensor& x, const DeviceTensor& weight,
                          const DeviceTensor* bias, DeviceTensor& scratch,
                          DeviceTensor& residual) = 0;
  // residual += silu_mul(gate_up) @ weight^T, with `hidden` [T, F] and `scratch` [T, N] as in
  // silu_mul_linear and linear_add.       gate_up [T, 2F], weight [N, F], residual [T, N]
  virtual void silu_mul_linear_add(const DeviceTensor& gate_up, const DeviceTensor& weight,
                                   DeviceTensor& hidden, DeviceTensor& scratch,
                                   DeviceTensor& residual) = 0;

  // out[i, :] = x[indices[i], :]            x [T, H], indices [R] (backend memory), out [R, H]
  virtual void gather_rows(const DeviceTensor& x, const int32_t* indices, DeviceTensor& out) = 0;
  // Converts between dtypes element-wise (e.g. activations to float32 logits).
  virtual void convert(const DeviceTensor& source, DeviceTensor& destination) = 0;
  // Copies whole KV cache blocks, every layer's keys and values: for each (from, to) pair, block
  // `from` onto block `to` (beam search gives a beam its own copy of a block it shares). In stream
  // order with the steps around it.
  virtual void copy_kv_blocks(const KvCacheView& cache,
                              std::span<const std::pair<int32_t, int32_t>> copies) = 0;

  // ---- logit bias and bad words ----
  // logits[row, token] += bias for the first *count entries (row, token, bias): OpenAI's
  // logit_bias, and bad words as a bias of -inf (the token may not be picked this step). logits
  // [R, V] float32; entries [max_count] LogitBiasEntry, each (row, token) in [0, R) x [0, V) and
  // at most once; count [1] in [0, max_count]; all in backend memory. The count is read when the
  // op runs, not when it is issued, so a recorded graph applies each replay's entries; max_count
  // fixes the work issued.
  virtual void add_logit_bias(DeviceTensor& logits, const LogitBiasEntry* entries,
                              const int32_t* count, int64_t max_count) = 0;

  // ---- sampling on the backend (optional) ----
  // Whether sample() exists; without it the runtime samples the downloaded logits on the host.
  virtual bool has_sampling() const { return false; }
  // out_ids[r] = the token row r of logits picks under rows[r] (SamplingRow). logits [R, V]
  // float32, modified in place by the repetition penalty; history [R, history_stride] holds each
  // row's sequence so far and history_length [R] its length (both null when no row has a
  // penalty). All pointers in backend memory.
  virtual void sample(DeviceTensor& /*logits*/, const SamplingRow* /*rows*/,
                      const int32_t* /*history*/, const int32_t* /*history_length*/,
                      int64_t /*history_stride*/, int32_t* /*out_ids*/) {
    KITE_CHECK(false && "this backend does not sample");
  }
};

}  // namespace kite
