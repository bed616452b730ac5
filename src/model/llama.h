// The Llama family (Llama 1/2/3, Mistral, Qwen2, SmolLM2): the weights as the forward pass uses
// them, the host-side RoPE frequencies, and one forward function over a batch of sequences
// (prefill chunks and decode tokens mixed) written against the Backend interface.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "formats/model_config.h"
#include "model/backend.h"
#include "model/batch.h"

namespace kite {

// Shapes below: H = hidden_size, Q = num_attention_heads * head_dim, KV = num_key_value_heads *
// head_dim, F = intermediate_size, V = vocab_size. Linear weights are [out, in] as in PyTorch,
// floating or weight-only quantized (LinearWeight; the rows of fused weights and their scales
// are stacked alike).
struct LlamaLayerWeights {
  DeviceTensor input_layernorm;           // [H]
  LinearWeight qkv_proj;                  // [Q + 2 KV, H]: q_proj, k_proj, v_proj rows stacked
  std::optional<DeviceTensor> qkv_bias;   // [Q + 2 KV] (Qwen2, attention_bias)
  LinearWeight o_proj;                    // [H, Q]
  std::optional<DeviceTensor> o_bias;     // [H] (Llama with attention_bias)
  DeviceTensor post_attention_layernorm;  // [H]
  LinearWeight gate_up_proj;              // [2 F, H]: gate_proj rows, then up_proj rows
  LinearWeight down_proj;                 // [H, F]
};

struct LlamaWeights {
  DeviceTensor embed_tokens;  // [V, H]
  std::vector<LlamaLayerWeights> layers;
  DeviceTensor norm;     // [H] final RMSNorm
  DeviceTensor lm_head;  // [V, H]; the same memory as embed_tokens when tie_word_embeddings
  // Whether each layer's qkv_proj holds Wqkv diag(input_layernorm) and gate_up_proj holds
  // Wgu diag(post_attention_layernorm): the forward pass then runs the backend's fused ops
  // (rms_norm_linear, linear_add, silu_mul_linear_add). The norm tensors keep their values.
  bool norm_scales_folded = false;
  // The backend memory every tensor above points into.
  std::vector<DeviceBuffer> storage;
};

// Looks up a weight by its Hugging Face name ("model.layers.0.self_attn.q_proj.weight").
using WeightLookup = std::function<Result<TensorView>(const std::string& name)>;

// Uploads every weight of `config` (stored_weights() names, dtypes and shapes) to the backend,
// fusing q/k/v and gate/up. Floating weights must share one dtype; `weight_only` says which are
// quantized (the backend must support it); `source` names them in messages.
// `norm_scales_folded`: the q/k/v and gate/up weights `lookup` gives hold the layers' RMSNorm
// scales already (folded_norm_of; engines built so), and the model runs the fused ops
// (LlamaWeights::norm_scales_folded). Floating weights only.
Result<LlamaWeights> load_llama_weights(Backend& backend, const ModelConfig& config,
                                        const WeightLookup& lookup, const std::string& source,
                                        const WeightOnlyConfig& weight_only = {},
                                        bool norm_scales_folded = false);

// The norm scales folded into the projections after them: rms_norm(x) W^T = (x / rms(x))
// (W diag(norm))^T. The RMSNorm weight whose scale multiplies the columns of weight `name`: the
// layer's input_layernorm for q/k/v_proj, its post_attention_layernorm for gate/up_proj; empty for
// every other weight.
std::string folded_norm_of(const std::string& name);

// RoPE inverse frequencies [head_dim / 2] as Hugging Face transformers computes them
// (ROPE_INIT_FUNCTIONS: default, linear, dynamic, llama3, yarn), in float32 like PyTorch. For
// dynamic NTK scaling, `sequence_length` is the longest sequence of the step: beyond
// max_position_embeddings the base grows with it (transformers' dynamic_rope_update); other types
// ignore it.
std::vector<float> rope_inverse_frequencies(const ModelConfig& config, int64_t sequence_length);
// What cos and sin are multiplied by (transformers' attention_scaling): YaRN's attention factor,
// else 1.
float rope_attention_scaling(const ModelConfig& config);

// One forward step, in host memory; the model uploads it. Sequence s owns tokens
// [query_start[s], query_start[s + 1]); see AttentionBatch for the meaning of every field.
struct StepInput {
  std::vector<int32_t> token_ids;       // [T]
  std::vector<int32_t> positions;       // [T]
  std::vector<int32_t> slot_mapping;    // [T] cache slot (block * block_size + offset) per token
  std::vector<int32_t> query_start;     // [S + 1]
  std::vector<int32_t> context_length;  // [S] tokens in the cache after this step
  std::vector<int32_t> block_table;     // [S * max_blocks_per_sequence]
  int64_t max_blocks_per_sequence = 0;
  std::vector<int32_t> logit_rows;  // [R] rows of the step (0 <= row < T) that need logits
  // Additions to the logits before sampling: logits[row, token] += bias for each entry, row
  // indexing logit_rows (OpenAI's logit_bias; bad words as -inf: the row may not pick the token).
  // A (row, token) that comes more than once gets the sum of its biases. Usually empty, which adds
  // no op to the step.
  std::vector<LogitBiasEntry> logit_bias;
};

class LlamaModel {
 public:
  LlamaModel(Backend& backend, ModelConfig config, LlamaWeights weights);
  ~LlamaModel();
  LlamaModel(const LlamaModel&) = delete;
  LlamaModel& operator=(const LlamaModel&) = delete;

  const ModelConfig& config() const { return config_; }
  Backend& backend() const { return *backend_; }

  // Runs the step, writing keys and values into `cache`, and returns float32 logits [R, V] row
  // by row in the order of step.logit_rows, with step.logit_bias added. Decode steps replay a
  // captured graph on backends that have graphs (the cache's buffer must then stay the same from
  // step to step). When KITE_DUMP=<dir> is set, every named intermediate of the step is also
  // written to <dir>/step_<n>.safetensors.
  Result<std::vector<float>> forward(const StepInput& step, const KvCacheView& cache);

  // Like forward(), then picks one token per logit row on the backend (Backend::has_sampling
  // must hold; never a token step.logit_bias bans unless the row bans all), so that only the ids
  // come back: rows[r] is row r's sampling; history[r] its sequence so far, for the repetition
  // penalty (empty: no row has a penalty).
  Result<std::vector<int32_t>> forward_and_sample(const StepInput& step, const KvCacheView& cache,
                                                  const std::vector<SamplingRow>& rows,
                                                  const std::vector<std::vector<int32_t>>& history);

  // Allocates activations and step metadata for steps up to these sizes, so that steps within them
  // allocate nothing (forward grows the buffers for larger steps). Engines call it at load time,
  // before the KV cache takes the rest of the memory.
  Status reserve_workspace(int64_t tokens, int64_t logit_rows, int64_t sequences,
                           int64_t block_table_entries);
  // The activations of a step of `tokens` tokens with `logit_rows` rows of logits: what
  // reserve_workspace allocates for them (the step metadata comes on top, 4 bytes a token or
  // table entry).
  static size_t activation_bytes(const ModelConfig& config, int64_t tokens, int64_t logit_rows,
                                 DType activation_dtype);

 private:
  // Where the sampling op of a step reads and writes (backend memory).
  struct SamplingInputs {
    const SamplingRow* rows = nullptr;
    const int32_t* history = nullptr;  // null: no repetition penalty
    const int32_t* history_length = nullptr;
    int64_t history_stride = 0;
    int32_t* out_ids = nullptr;
  };
  // Uploads the step, runs (or replays) its ops, and returns the float32 logits [R, V] in backend
  // memory, after sampling into sampling->out_ids when `sampling` is given.
  Result<DeviceTensor> run_step(const StepInput& step, const KvCacheView& cache,
                                const SamplingInputs* sampling);
  Status check_step(const StepInput& step, const KvCacheView& cache) const;
  // Uploads the count and the entries of step.logit_bias (each (row, token) once, biases summed)
  // into logit_bias_, growing it (and dropping the graphs that read it) when they do not fit.
  Status upload_logit_bias(const std::vector<LogitBiasEntry>& entries);
  void drop_graphs();
  // drop_graphs() when the backend's graph_epoch() moved since they were recorded.
  void drop_stale_graphs();

  Backend* backend_;
  ModelConfig config_;
  LlamaWeights weights_;
  DeviceBuffer inverse_frequencies_;  // [head_dim / 2] float32
  std::vector<float> uploaded_frequencies_;
  DeviceBuffer workspace_;  // activations of the largest step so far
  int64_t workspace_tokens_ = 0;
  int64_t workspace_logit_rows_ = 0;
  DeviceBuffer metadata_;  // the step's int32 metadata (ids, positions, slots, tables, rows)
  std::vector<int32_t> host_metadata_;
  DeviceBuffer sampling_rows_;     // [R] SamplingRow
  DeviceBuffer sampled_ids_;       // [R] int32
  DeviceBuffer sampling_history_;  // [R] lengths, then [R, stride] tokens
  // The step's count of logit bias entries (int32, padded to an entry's size), then
  // logit_bias_capacity_ entries. Graphs of steps with a bias capture its address and capacity and
  // read the count at replay, so the entries may change from step to step.
  DeviceBuffer logit_bias_;
  int64_t logit_bias_capacity_ = 0;
  int64_t step_counter_ = 0;  // names dump files
  // Captured decode steps by (sequences, max_blocks_per_sequence, sampling mode, any logit bias):
  // what fixes a graph.
  using GraphKey = std::tuple<int64_t, int64_t, int64_t, bool>;
  std::map<GraphKey, int64_t> graphs_;
  int64_t graph_epoch_ = 0;  // the backend's graph_epoch() when graphs_ were recorded
};

}  // namespace kite
