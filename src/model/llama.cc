// The Llama-family forward pass: weight loading with q/k/v and gate/up fused, Hugging Face's RoPE
// frequency rules, and the step function (embedding -> layers -> final norm -> logits).
#include "model/llama.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numbers>
#include <string_view>
#include <utility>

#include "formats/safetensors.h"

namespace kite {
namespace {

// Uploads the concatenation of `parts` (rows stacked) as one tensor of `shape`.
Result<DeviceTensor> upload_stacked(Backend& backend, const std::vector<TensorView>& parts,
                                    Shape shape, std::vector<DeviceBuffer>& storage) {
  DeviceTensor tensor{parts.front().dtype, std::move(shape), nullptr};
  KITE_ASSIGN_OR_RETURN(DeviceBuffer buffer, backend.allocate(tensor.byte_size()));
  size_t offset = 0;
  for (const TensorView& part : parts) {
    backend.upload(static_cast<uint8_t*>(buffer.data()) + offset, part.data, part.byte_size());
    offset += part.byte_size();
  }
  KITE_CHECK(offset == tensor.byte_size());
  tensor.data = buffer.data();
  storage.push_back(std::move(buffer));
  return tensor;
}

// Writes each named intermediate of one step to <KITE_DUMP>/step_<n>.safetensors, for diffing a
// run layer by layer against a reference. Does nothing when KITE_DUMP is unset.
class StepDump {
 public:
  explicit StepDump(Backend& backend) : backend_(backend) {
    const char* directory = std::getenv("KITE_DUMP");
    if (directory && *directory) directory_ = directory;
  }
  bool enabled() const { return !directory_.empty(); }

  void add(const std::string& name, const DeviceTensor& tensor) {
    if (!enabled()) return;
    backend_.synchronize();
    Tensor host(tensor.dtype, tensor.shape);
    backend_.download(host.data(), tensor.data, tensor.byte_size());
    tensors_.emplace_back(name, std::move(host));
  }

  Status write(int64_t step) const {
    if (!enabled()) return Status::ok();
    KITE_RETURN_IF_ERROR(create_directories(directory_));
    return write_safetensors(directory_ + "/step_" + std::to_string(step) + ".safetensors",
                             tensors_);
  }

 private:
  Backend& backend_;
  std::string directory_;
  std::vector<std::pair<std::string, Tensor>> tensors_;
};

// The tensor of an optional weight (a bias), or null.
const DeviceTensor* optional_tensor(const std::optional<DeviceTensor>& tensor) {
  return tensor ? &*tensor : nullptr;
}

// out = x @ weight^T (+ bias), floating or weight-only quantized.
void linear(Backend& backend, const DeviceTensor& x, const LinearWeight& weight,
            const std::optional<DeviceTensor>& bias, DeviceTensor& out) {
  const DeviceTensor* bias_tensor = optional_tensor(bias);
  if (weight.quantized()) {
    backend.linear_weight_only(x, weight, bias_tensor, out);
  } else {
    backend.linear(x, weight.weight, bias_tensor, out);
  }
}

}  // namespace

Result<LlamaWeights> load_llama_weights(Backend& backend, const ModelConfig& config,
                                        const WeightLookup& lookup, const std::string& source,
                                        const WeightOnlyConfig& weight_only,
                                        bool norm_scales_folded) {
  if (weight_only.enabled() && !backend.supports_weight_only(weight_only)) {
    return unsupported(source + " holds weight-only quantized weights (" +
                       describe_weight_only(weight_only) + "), which the " +
                       std::string(backend_kind_name(backend.kind())) +
                       " backend does not run; build the engine for the CPU");
  }
  KITE_RETURN_IF_ERROR(check_weight_only(config, weight_only).with_context(source));
  if (norm_scales_folded && weight_only.enabled()) {
    return unsupported(source + ": norm scales are folded only into floating weights, and these " +
                       "are quantized (" + describe_weight_only(weight_only) +
                       "); build the engine again");
  }
  // Every tensor is checked against the dtype and shape the config implies before anything is
  // uploaded. The floating ones (all but the quantized values) must share one dtype.
  std::unordered_map<std::string, TensorView> views;
  std::optional<DType> weight_dtype;
  for (const StoredWeight& stored : stored_weights(config, DType::kF32, weight_only)) {
    Result<TensorView> view = lookup(stored.name);
    if (!view.is_ok()) return view.status().with_context(source);
    if (view->shape != stored.shape) {
      return corrupt(source + ": weight '" + stored.name + "' has shape " +
                     shape_to_string(view->shape) + ", the config implies " +
                     shape_to_string(stored.shape));
    }
    const bool quantized_values = stored.dtype == DType::kI8 || stored.dtype == DType::kU8;
    if (quantized_values) {
      if (view->dtype != stored.dtype) {
        return corrupt(source + ": weight '" + stored.name + "' is " +
                       std::string(dtype_name(view->dtype)) + ", but " +
                       describe_weight_only(weight_only) + " stores it as " +
                       std::string(dtype_name(stored.dtype)));
      }
      views.emplace(stored.name, *view);
      continue;
    }
    if (view->dtype != DType::kF32 && view->dtype != DType::kF16 && view->dtype != DType::kBF16) {
      return unsupported(source + ": weight '" + stored.name + "' has dtype " +
                         std::string(dtype_name(view->dtype)) +
                         "; only float32, float16 and bfloat16 weights can run");
    }
    if (weight_dtype && *weight_dtype != view->dtype) {
      return unsupported(source + ": weight '" + stored.name + "' is " +
                         std::string(dtype_name(view->dtype)) + " but other weights are " +
                         std::string(dtype_name(*weight_dtype)) +
                         "; convert the checkpoint to one dtype");
    }
    weight_dtype = view->dtype;
    views.emplace(stored.name, *view);
  }

  const int64_t hidden = config.hidden_size;
  const int64_t qkv_rows = config.q_size() + 2 * config.kv_size();
  LlamaWeights weights;
  auto upload = [&](const std::vector<std::string>& names, Shape shape) {
    std::vector<TensorView> parts;
    for (const std::string& name : names) parts.push_back(views.at(name));
    return upload_stacked(backend, parts, std::move(shape), weights.storage);
  };
  // A linear weight [rows, columns] stacked from `names`, with its scales when quantized.
  auto upload_linear = [&](const std::vector<std::string>& names, int64_t rows,
                           int64_t columns) -> Result<LinearWeight> {
    LinearWeight linear;
    if (!weight_only.enabled()) {
      KITE_ASSIGN_OR_RETURN(linear.weight, upload(names, {rows, columns}));
      return linear;
    }
    linear.quantization = weight_only;
    const bool int4 = weight_only.precision == WeightOnlyPrecision::kInt4;
    KITE_ASSIGN_OR_RETURN(linear.weight, upload(names, {rows, int4 ? columns / 2 : columns}));
    std::vector<std::string> scale_names;
    for (const std::string& name : names) scale_names.push_back(weight_scale_name(name));
    KITE_ASSIGN_OR_RETURN(
        linear.scales,
        upload(scale_names, {rows, columns / weight_only.columns_per_scale(columns)}));
    return linear;
  };

  KITE_ASSIGN_OR_RETURN(weights.embed_tokens,
                        upload({"model.embed_tokens.weight"}, {config.vocab_size, hidden}));
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    const std::string prefix = "model.layers." + std::to_string(layer) + ".";
    const std::string attention = prefix + "self_attn.";
    LlamaLayerWeights& layer_weights = weights.layers.emplace_back();
    KITE_ASSIGN_OR_RETURN(layer_weights.input_layernorm,
                          upload({prefix + "input_layernorm.weight"}, {hidden}));
    KITE_ASSIGN_OR_RETURN(layer_weights.qkv_proj,
                          upload_linear({attention + "q_proj.weight", attention + "k_proj.weight",
                                         attention + "v_proj.weight"},
                                        qkv_rows, hidden));
    if (config.attention_bias) {
      KITE_ASSIGN_OR_RETURN(
          layer_weights.qkv_bias,
          upload({attention + "q_proj.bias", attention + "k_proj.bias", attention + "v_proj.bias"},
                 {qkv_rows}));
    }
    KITE_ASSIGN_OR_RETURN(layer_weights.o_proj,
                          upload_linear({attention + "o_proj.weight"}, hidden, config.q_size()));
    if (config.attention_output_bias) {
      KITE_ASSIGN_OR_RETURN(layer_weights.o_bias, upload({attention + "o_proj.bias"}, {hidden}));
    }
    KITE_ASSIGN_OR_RETURN(layer_weights.post_attention_layernorm,
                          upload({prefix + "post_attention_layernorm.weight"}, {hidden}));
    KITE_ASSIGN_OR_RETURN(
        layer_weights.gate_up_proj,
        upload_linear({prefix + "mlp.gate_proj.weight", prefix + "mlp.up_proj.weight"},
                      2 * config.intermediate_size, hidden));
    KITE_ASSIGN_OR_RETURN(layer_weights.down_proj, upload_linear({prefix + "mlp.down_proj.weight"},
                                                                 hidden, config.intermediate_size));
  }
  KITE_ASSIGN_OR_RETURN(weights.norm, upload({"model.norm.weight"}, {hidden}));
  if (config.tie_word_embeddings) {
    weights.lm_head = weights.embed_tokens;
  } else {
    KITE_ASSIGN_OR_RETURN(weights.lm_head, upload({"lm_head.weight"}, {config.vocab_size, hidden}));
  }
  weights.norm_scales_folded = norm_scales_folded;
  return weights;
}

std::string folded_norm_of(const std::string& name) {
  constexpr std::string_view kLayers = "model.layers.";
  if (!name.starts_with(kLayers)) return "";
  const size_t dot = name.find('.', kLayers.size());
  if (dot == std::string::npos) return "";
  const std::string prefix = name.substr(0, dot + 1);
  const std::string_view rest = std::string_view(name).substr(dot + 1);
  if (rest == "self_attn.q_proj.weight" || rest == "self_attn.k_proj.weight" ||
      rest == "self_attn.v_proj.weight") {
    return prefix + "input_layernorm.weight";
  }
  if (rest == "mlp.gate_proj.weight" || rest == "mlp.up_proj.weight") {
    return prefix + "post_attention_layernorm.weight";
  }
  return "";
}

float rope_attention_scaling(const ModelConfig& config) {
  const RopeScaling& scaling = config.rope_scaling;
  if (scaling.type != RopeScalingType::kYarn) return 1.0f;
  if (scaling.attention_factor > 0.0) return float(scaling.attention_factor);
  return float(yarn_attention_factor(scaling.factor, scaling.mscale, scaling.mscale_all_dim));
}

std::vector<float> rope_inverse_frequencies(const ModelConfig& config, int64_t sequence_length) {
  const RopeScaling& scaling = config.rope_scaling;
  const int64_t dim = config.head_dim;
  double base = config.rope_theta;
  if (scaling.type == RopeScalingType::kDynamic) {
    // transformers' dynamic_rope_update: the base is recomputed only past the original context.
    const int64_t original = scaling.original_max_position_embeddings > 0
                                 ? scaling.original_max_position_embeddings
                                 : config.max_position_embeddings;
    if (sequence_length > original) {
      base *= std::pow(
          scaling.factor * double(sequence_length) / double(original) - (scaling.factor - 1.0),
          double(dim) / double(dim - 2));
    }
  }
  // PyTorch computes 1 / base ** (arange(0, dim, 2) / dim) in float32.
  std::vector<float> inverse_frequencies(size_t(dim / 2));
  for (int64_t i = 0; i < dim / 2; ++i) {
    const float exponent = float(2 * i) / float(dim);
    inverse_frequencies[size_t(i)] = 1.0f / std::pow(float(base), exponent);
  }
  if (scaling.type == RopeScalingType::kLinear) {
    for (float& frequency : inverse_frequencies) frequency /= float(scaling.factor);
  } else if (scaling.type == RopeScalingType::kYarn) {
    // transformers' _compute_yarn_parameters, in its float32 steps: dimensions below `low`
    // keep their frequency (extrapolation), those above `high` are divided by the factor
    // (interpolation), a linear ramp in between. low and high are the dimensions that turn
    // beta_fast and beta_slow times over the original context.
    const double original = double(scaling.original_max_position_embeddings);
    auto correction_dimension = [&](double rotations) {
      return double(dim) * std::log(original / (rotations * 2.0 * std::numbers::pi)) /
             (2.0 * std::log(base));
    };
    double low = correction_dimension(scaling.beta_fast);
    double high = correction_dimension(scaling.beta_slow);
    if (scaling.truncate) {
      low = std::floor(low);
      high = std::ceil(high);
    }
    low = std::max(low, 0.0);
    high = std::min(high, double(dim - 1));
    if (low == high) high += 0.001;  // no division by zero
    const float factor = float(scaling.factor);
    for (size_t i = 0; i < inverse_frequencies.size(); ++i) {
      const float position_frequency = std::pow(float(base), float(2 * i) / float(dim));
      const float extrapolation = 1.0f / position_frequency;
      const float interpolation = 1.0f / (factor * position_frequency);
      const float ramp = std::clamp((float(i) - float(low)) / float(high - low), 0.0f, 1.0f);
      const float extrapolation_factor = 1.0f - ramp;
      inverse_frequencies[i] =
          interpolation * (1.0f - extrapolation_factor) + extrapolation * extrapolation_factor;
    }
  } else if (scaling.type == RopeScalingType::kLlama3) {
    // Long wavelengths are interpolated by `factor`, short ones kept, the band between smoothed.
    const float factor = float(scaling.factor);
    const float low_freq_factor = float(scaling.low_freq_factor);
    const float high_freq_factor = float(scaling.high_freq_factor);
    const float old_context = float(scaling.original_max_position_embeddings);
    const float low_freq_wavelength = old_context / low_freq_factor;
    const float high_freq_wavelength = old_context / high_freq_factor;
    for (float& frequency : inverse_frequencies) {
      const float wavelength = 2.0f * std::numbers::pi_v<float> / frequency;
      float scaled = wavelength > low_freq_wavelength ? frequency / factor : frequency;
      const bool medium =
          !(wavelength < high_freq_wavelength) && !(wavelength > low_freq_wavelength);
      if (medium) {
        const float smooth =
            (old_context / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor);
        scaled = (1.0f - smooth) * scaled / factor + smooth * scaled;
      }
      frequency = scaled;
    }
  }
  return inverse_frequencies;
}

LlamaModel::LlamaModel(Backend& backend, ModelConfig config, LlamaWeights weights)
    : backend_(&backend), config_(std::move(config)), weights_(std::move(weights)) {}

LlamaModel::~LlamaModel() {
  drop_graphs();
}

void LlamaModel::drop_stale_graphs() {
  if (backend_->graph_epoch() == graph_epoch_) return;
  drop_graphs();  // they may read scratch buffers the backend has since replaced
  graph_epoch_ = backend_->graph_epoch();
}

void LlamaModel::drop_graphs() {
  for (const auto& [key, graph] : graphs_) backend_->destroy_graph(graph);
  graphs_.clear();
}

Status LlamaModel::check_step(const StepInput& step, const KvCacheView& cache) const {
  const size_t tokens = step.token_ids.size();
  const size_t sequences = step.context_length.size();
  if (tokens == 0 || sequences == 0) return invalid_argument("a forward step needs tokens");
  if (step.positions.size() != tokens || step.slot_mapping.size() != tokens ||
      step.query_start.size() != sequences + 1 ||
      step.block_table.size() != sequences * size_t(step.max_blocks_per_sequence) ||
      step.query_start.front() != 0 || size_t(step.query_start.back()) != tokens) {
    return invalid_argument("inconsistent forward step sizes");
  }
  for (int32_t id : step.token_ids) {
    if (id < 0 || id >= config_.vocab_size) {
      return out_of_range("token id " + std::to_string(id) + " is outside the vocabulary of " +
                          std::to_string(config_.vocab_size));
    }
  }
  for (int32_t row : step.logit_rows) {
    if (row < 0 || size_t(row) >= tokens) return invalid_argument("logit row out of the step");
  }
  for (const LogitBiasEntry& entry : step.logit_bias) {
    if (entry.row < 0 || size_t(entry.row) >= step.logit_rows.size() || entry.token < 0 ||
        entry.token >= config_.vocab_size) {
      return invalid_argument("logit bias entry (" + std::to_string(entry.row) + ", " +
                              std::to_string(entry.token) + ") is outside the logits");
    }
    if (std::isnan(entry.bias) || entry.bias == std::numeric_limits<float>::infinity()) {
      return invalid_argument("logit bias of token " + std::to_string(entry.token) +
                              " is not a number or +inf");
    }
  }
  if (cache.num_layers != config_.num_hidden_layers ||
      cache.num_kv_heads != config_.num_key_value_heads || cache.head_dim != config_.head_dim) {
    return invalid_argument("the KV cache does not match the model's layers, heads or head_dim");
  }
  return Status::ok();
}

size_t LlamaModel::activation_bytes(const ModelConfig& c, int64_t tokens, int64_t logit_rows,
                                    DType activation_dtype) {
  // The buffers run_step carves, in its order: per token residual, normed, qkv, q, attended,
  // block_out, gate_up, mlp_hidden; per logit row last_hidden and logits, then float32 logits.
  const int64_t per_token = 2 * c.hidden_size + (c.q_size() + 2 * c.kv_size()) + c.q_size() +
                            c.q_size() + c.hidden_size + 2 * c.intermediate_size +
                            c.intermediate_size;
  const int64_t per_logit_row = c.hidden_size + c.vocab_size;
  return size_t(tokens * per_token + logit_rows * per_logit_row) * dtype_size(activation_dtype) +
         size_t(logit_rows * c.vocab_size) * sizeof(float);
}

Status LlamaModel::reserve_workspace(int64_t tokens, int64_t logit_rows, int64_t sequences,
                                     int64_t block_table_entries) {
  const size_t metadata_bytes =
      size_t(3 * tokens + 2 * sequences + 1 + block_table_entries + logit_rows) * sizeof(int32_t);
  if (metadata_bytes > metadata_.size()) {
    drop_graphs();            // they read the old buffers
    backend_->synchronize();  // steps in flight may still read the old buffer
    metadata_.reset();
    KITE_ASSIGN_OR_RETURN(metadata_, backend_->allocate(metadata_bytes));
  }
  if (tokens <= workspace_tokens_ && logit_rows <= workspace_logit_rows_) return Status::ok();
  tokens = std::max(tokens, workspace_tokens_);
  logit_rows = std::max(logit_rows, workspace_logit_rows_);
  const size_t bytes = activation_bytes(config_, tokens, logit_rows, backend_->activation_dtype());
  drop_graphs();
  backend_->synchronize();
  workspace_.reset();
  KITE_ASSIGN_OR_RETURN(workspace_, backend_->allocate(bytes));
  // The largest quantized layer weight: what a weight-only linear may dequantize at once.
  int64_t quantized_elements = 0;
  for (const LlamaLayerWeights& layer : weights_.layers) {
    for (const LinearWeight* weight :
         {&layer.qkv_proj, &layer.o_proj, &layer.gate_up_proj, &layer.down_proj}) {
      if (weight->quantized()) {
        quantized_elements =
            std::max(quantized_elements, weight->out_features() * weight->in_features());
      }
    }
  }
  if (quantized_elements > 0) {
    KITE_RETURN_IF_ERROR(backend_->reserve_weight_only(tokens, quantized_elements));
  }
  workspace_tokens_ = tokens;
  workspace_logit_rows_ = logit_rows;
  return Status::ok();
}

Status LlamaModel::upload_logit_bias(const std::vector<LogitBiasEntry>& entries) {
  // Each (row, token) once, its biases summed (-inf stays -inf): the op adds without atomics.
  std::vector<LogitBiasEntry> packed(1 + entries.size());  // packed[0].row: the count
  std::copy(entries.begin(), entries.end(), packed.begin() + 1);
  std::sort(packed.begin() + 1, packed.end(), [](const auto& a, const auto& b) {
    return std::pair(a.row, a.token) < std::pair(b.row, b.token);
  });
  size_t count = 0;
  for (size_t i = 1; i < packed.size(); ++i) {
    LogitBiasEntry& last = packed[count];
    if (count > 0 && last.row == packed[i].row && last.token == packed[i].token) {
      last.bias += packed[i].bias;
    } else {
      packed[++count] = packed[i];
    }
  }
  packed.resize(1 + count);
  packed[0] = LogitBiasEntry{int32_t(count), 0, 0.0f};
  if (int64_t(count) > logit_bias_capacity_) {
    drop_graphs();            // they read the old buffer
    backend_->synchronize();  // steps in flight may still read it
    logit_bias_.reset();
    logit_bias_capacity_ = 0;
    // Doubling keeps reallocations (and the graphs they drop) rare as requests come and go.
    const int64_t capacity = std::max<int64_t>(int64_t(std::bit_ceil(uint64_t(count))), 256);
    KITE_ASSIGN_OR_RETURN(logit_bias_,
                          backend_->allocate(size_t(1 + capacity) * sizeof(LogitBiasEntry)));
    logit_bias_capacity_ = capacity;
  }
  backend_->upload(logit_bias_.data(), packed.data(), packed.size() * sizeof(LogitBiasEntry));
  return Status::ok();
}

Result<std::vector<float>> LlamaModel::forward(const StepInput& step, const KvCacheView& cache) {
  KITE_ASSIGN_OR_RETURN(DeviceTensor logits, run_step(step, cache, nullptr));
  std::vector<float> host_logits(size_t(logits.numel()));
  backend_->download(host_logits.data(), logits.data, logits.byte_size());
  return host_logits;
}

Result<std::vector<int32_t>> LlamaModel::forward_and_sample(
    const StepInput& step, const KvCacheView& cache, const std::vector<SamplingRow>& rows,
    const std::vector<std::vector<int32_t>>& history) {
  KITE_CHECK(backend_->has_sampling());
  const size_t R = step.logit_rows.size();
  if (rows.size() != R || (!history.empty() && history.size() != R)) {
    return invalid_argument(
        "forward_and_sample needs a sampling row (and a history) per logit row");
  }
  // Upload the rows and, for the repetition penalty, the histories, into buffers that keep their
  // addresses (a captured graph reads them).
  const int64_t stride = step.max_blocks_per_sequence * cache.block_size;
  const size_t rows_bytes = std::max<size_t>(R, 1) * sizeof(SamplingRow);
  const size_t history_bytes = history.empty() ? 0 : R * size_t(stride + 1) * sizeof(int32_t);
  if (rows_bytes > sampling_rows_.size() || history_bytes > sampling_history_.size() ||
      R * sizeof(int32_t) > sampled_ids_.size()) {
    drop_graphs();
    backend_->synchronize();
    const size_t capacity = std::max<size_t>(R, size_t(workspace_logit_rows_));
    KITE_ASSIGN_OR_RETURN(sampling_rows_, backend_->allocate(capacity * sizeof(SamplingRow)));
    KITE_ASSIGN_OR_RETURN(sampled_ids_, backend_->allocate(capacity * sizeof(int32_t)));
    if (!history.empty()) {
      KITE_ASSIGN_OR_RETURN(sampling_history_,
                            backend_->allocate(capacity * size_t(stride + 1) * sizeof(int32_t)));
    }
  }
  backend_->upload(sampling_rows_.data(), rows.data(), R * sizeof(SamplingRow));
  SamplingInputs inputs{static_cast<const SamplingRow*>(sampling_rows_.data()), nullptr, nullptr,
                        stride, static_cast<int32_t*>(sampled_ids_.data())};
  if (!history.empty()) {
    // [R] lengths, then [R, stride] tokens.
    std::vector<int32_t> packed(R * size_t(stride + 1), -1);
    for (size_t r = 0; r < R; ++r) {
      if (int64_t(history[r].size()) > stride)
        return invalid_argument("history beyond max_seq_len");
      packed[r] = int32_t(history[r].size());
      std::copy(history[r].begin(), history[r].end(), packed.begin() + R + r * size_t(stride));
    }
    backend_->upload(sampling_history_.data(), packed.data(), packed.size() * sizeof(int32_t));
    inputs.history_length = static_cast<const int32_t*>(sampling_history_.data());
    inputs.history = inputs.history_length + R;
  }
  KITE_ASSIGN_OR_RETURN(DeviceTensor logits, run_step(step, cache, &inputs));
  (void)logits;
  std::vector<int32_t> ids(R);
  backend_->download(ids.data(), sampled_ids_.data(), R * sizeof(int32_t));
  return ids;
}

Result<DeviceTensor> LlamaModel::run_step(const StepInput& step, const KvCacheView& cache,
                                          const SamplingInputs* sampling) {
  KITE_RETURN_IF_ERROR(check_step(step, cache));
  Backend& backend = *backend_;
  const ModelConfig& c = config_;
  const int64_t T = int64_t(step.token_ids.size());
  const int64_t R = int64_t(step.logit_rows.size());
  const int64_t S = int64_t(step.context_length.size());
  const int64_t H = c.hidden_size, Q = c.q_size(), KV = c.kv_size(), F = c.intermediate_size;
  const int64_t V = c.vocab_size;
  const float eps = float(c.rms_norm_eps);

  // ---- step metadata, uploaded in one buffer ----
  std::vector<int32_t>& metadata = host_metadata_;
  metadata.clear();
  auto append = [&](const std::vector<int32_t>& values) {
    const size_t offset = metadata.size();
    metadata.insert(metadata.end(), values.begin(), values.end());
    return offset;
  };
  const size_t ids_at = append(step.token_ids), positions_at = append(step.positions);
  const size_t slots_at = append(step.slot_mapping), starts_at = append(step.query_start);
  const size_t lengths_at = append(step.context_length), blocks_at = append(step.block_table);
  const size_t rows_at = append(step.logit_rows);
  KITE_RETURN_IF_ERROR(reserve_workspace(T, R, S, int64_t(step.block_table.size())));
  backend.upload(metadata_.data(), metadata.data(), metadata.size() * sizeof(int32_t));
  const auto* device_metadata = static_cast<const int32_t*>(metadata_.data());
  // Logit bias and bad words: only steps that have some upload or run anything for them.
  const bool biased = !step.logit_bias.empty();
  if (biased) KITE_RETURN_IF_ERROR(upload_logit_bias(step.logit_bias));
  const auto* bias_entries = static_cast<const LogitBiasEntry*>(logit_bias_.data());

  AttentionBatch batch;
  batch.num_tokens = T;
  batch.num_sequences = S;
  batch.max_blocks_per_sequence = step.max_blocks_per_sequence;
  int32_t longest_sequence = 0;
  for (int64_t s = 0; s < S; ++s) {
    batch.max_query_length =
        std::max<int64_t>(batch.max_query_length, step.query_start[s + 1] - step.query_start[s]);
    longest_sequence = std::max(longest_sequence, step.context_length[size_t(s)]);
  }
  batch.max_context_length = longest_sequence;
  while (batch.num_leading_decodes < S &&
         step.query_start[size_t(batch.num_leading_decodes) + 1] -
                 step.query_start[size_t(batch.num_leading_decodes)] ==
             1) {
    ++batch.num_leading_decodes;
  }
  batch.positions = device_metadata + positions_at;
  batch.slot_mapping = device_metadata + slots_at;
  batch.query_start = device_metadata + starts_at;
  batch.context_length = device_metadata + lengths_at;
  batch.block_table = device_metadata + blocks_at;

  // ---- RoPE frequencies (they change with the sequence length only for dynamic NTK) ----
  int32_t longest_position = 0;
  for (int32_t position : step.positions) longest_position = std::max(longest_position, position);
  std::vector<float> frequencies = rope_inverse_frequencies(c, int64_t(longest_position) + 1);
  if (frequencies != uploaded_frequencies_) {
    if (!inverse_frequencies_.data()) {
      KITE_ASSIGN_OR_RETURN(inverse_frequencies_,
                            backend.allocate(frequencies.size() * sizeof(float)));
    }
    backend.upload(inverse_frequencies_.data(), frequencies.data(),
                   frequencies.size() * sizeof(float));
    uploaded_frequencies_ = std::move(frequencies);
  }
  const RopeParams rope{static_cast<const float*>(inverse_frequencies_.data()), c.head_dim,
                        rope_attention_scaling(c)};

  // ---- activations, carved from the workspace ----
  const DType act = backend.activation_dtype();
  auto* cursor = static_cast<uint8_t*>(workspace_.data());
  auto carve = [&](DType dtype, Shape shape) {
    DeviceTensor tensor{dtype, std::move(shape), cursor};
    cursor += tensor.byte_size();
    return tensor;
  };
  DeviceTensor residual = carve(act, {T, H});            // [T, H] the residual stream
  DeviceTensor normed = carve(act, {T, H});              // [T, H] RMSNorm output feeding each block
  DeviceTensor qkv = carve(act, {T, Q + 2 * KV});        // [T, Q + 2KV] q | k | v heads
  DeviceTensor q = carve(act, {T, Q});                   // [T, Q] queries after RoPE
  DeviceTensor attended = carve(act, {T, Q});            // [T, Q] attention output per head
  DeviceTensor block_out = carve(act, {T, H});           // [T, H] o_proj / down_proj output
  DeviceTensor gate_up = carve(act, {T, 2 * F});         // [T, 2F]
  DeviceTensor mlp_hidden = carve(act, {T, F});          // [T, F]
  DeviceTensor last_hidden = carve(act, {R, H});         // [R, H] rows that need logits
  DeviceTensor logits = carve(act, {R, V});              // [R, V]
  DeviceTensor logits_f32 = carve(DType::kF32, {R, V});  // [R, V]
  KITE_CHECK(cursor <= static_cast<uint8_t*>(workspace_.data()) + workspace_.size());
  const int32_t* device_ids = device_metadata + ids_at;
  const int32_t* device_logit_rows = device_metadata + rows_at;
  StepDump dump(backend);

  // Every op of the step, from the token ids to float32 logits. Decode steps (one new token per
  // sequence, logits for all) run as a graph captured the first time their shape comes (CUDA): the
  // same buffers every time, only the uploaded metadata changes.
  auto enqueue = [&] {
    // x = embed_tokens[ids]
    backend.embedding(weights_.embed_tokens, device_ids, residual);
    dump.add("embedding", residual);
    // h = rms_norm(x) * input_layernorm   (in the QKV projection when the scales are folded)
    const bool folded = weights_.norm_scales_folded;
    // The residual adds go into the o and down projections when the scales are folded; a dump
    // keeps them apart and computes each norm as the checkpoint has it, so that it shows every
    // intermediate of the unfolded form (the projections still use the folded weights).
    const bool separate_adds = !folded || dump.enabled();
    if (separate_adds) {
      backend.rms_norm(residual, weights_.layers.front().input_layernorm, eps, normed);
    }
    // out = h @ W^T (+ b), h = rms_norm(x) * norm;  folded: (x / rms(x)) @ (W diag(norm))^T (+ b)
    auto normed_linear = [&](const LinearWeight& weight, const std::optional<DeviceTensor>& bias,
                             DeviceTensor& out) {
      if (folded) {
        backend.rms_norm_linear(residual, eps, weight.weight, optional_tensor(bias), normed, out);
      } else {
        linear(backend, normed, weight, bias, out);
      }
    };

    const float scale = 1.0f / std::sqrt(float(c.head_dim));
    const int64_t sliding_window = c.sliding_window.value_or(0);
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      const LlamaLayerWeights& w = weights_.layers[size_t(l)];
      const std::string name = "layers." + std::to_string(l) + ".";
      if (separate_adds) dump.add(name + "input_norm", normed);
      // [q | k | v] = h @ [Wq; Wk; Wv]^T (+ b)
      normed_linear(w.qkv_proj, w.qkv_bias, qkv);
      dump.add(name + "qkv", qkv);
      // q = rope(q); cache[slot] = (rope(k), v);
      // a = softmax(q k^T / sqrt(head_dim), causal, window) v   over the cached keys and values
      // (one kernel where the backend fuses them; apart when dumping, so that q can be dumped)
      if (dump.enabled()) {
        backend.rope_and_store_kv(qkv, rope, batch, cache, l, q);
        dump.add(name + "q_rope", q);
        backend.attention(q, batch, cache, l, scale, sliding_window, attended);
      } else {
        backend.rope_attention(qkv, rope, batch, cache, l, scale, sliding_window, q, attended);
      }
      dump.add(name + "attention", attended);
      if (separate_adds) {
        // o = a @ Wo^T (+ bo)
        linear(backend, attended, w.o_proj, w.o_bias, block_out);
        dump.add(name + "o_proj", block_out);
        // x += o; h = rms_norm(x) * post_attention_layernorm
        backend.add_rms_norm(residual, block_out, w.post_attention_layernorm, eps, normed);
        dump.add(name + "post_attention_norm", normed);
      } else {
        // x += a @ Wo^T (+ bo)
        backend.linear_add(attended, w.o_proj.weight, optional_tensor(w.o_bias), block_out,
                           residual);
      }
      // [g | u] = h @ [Wg; Wu]^T
      normed_linear(w.gate_up_proj, std::nullopt, gate_up);
      dump.add(name + "gate_up", gate_up);
      // m = silu(g) * u; d = m @ Wd^T   (one kernel where the backend fuses them; apart when
      // dumping, so that m can be dumped, and for quantized weights)
      if (separate_adds) {
        if (dump.enabled() || w.down_proj.quantized()) {
          backend.silu_mul(gate_up, mlp_hidden);
          dump.add(name + "silu_mul", mlp_hidden);
          linear(backend, mlp_hidden, w.down_proj, std::nullopt, block_out);
        } else {
          backend.silu_mul_linear(gate_up, w.down_proj.weight, mlp_hidden, block_out);
        }
        dump.add(name + "down_proj", block_out);
        // x += d; h = rms_norm(x) * (next layer's input_layernorm, or the final norm)
        const bool last_layer = l + 1 == c.num_hidden_layers;
        const DeviceTensor& next_norm =
            last_layer ? weights_.norm : weights_.layers[size_t(l) + 1].input_layernorm;
        backend.add_rms_norm(residual, block_out, next_norm, eps, normed);
      } else {
        // x += d
        backend.silu_mul_linear_add(gate_up, w.down_proj.weight, mlp_hidden, block_out, residual);
      }
      dump.add(name + "output", residual);
    }
    // h = rms_norm(x) * norm   (with the last layer's add when the adds are apart)
    if (!separate_adds) backend.rms_norm(residual, weights_.norm, eps, normed);
    dump.add("final_norm", normed);

    if (R > 0) {
      // only the rows that need logits: h_r = h[logit_rows]
      backend.gather_rows(normed, device_logit_rows, last_hidden);
      // logits = h_r @ lm_head^T   (lm_head may be embed_tokens)
      backend.linear(last_hidden, weights_.lm_head, nullptr, logits);
      backend.convert(logits, logits_f32);
      // logits[r, token] += bias for each entry (-inf: banned)
      if (biased) {
        backend.add_logit_bias(logits_f32, bias_entries + 1, &bias_entries->row,
                               logit_bias_capacity_);
      }
      // ids = sample(logits)   (backends that sample)
      if (sampling) {
        backend.sample(logits_f32, sampling->rows, sampling->history, sampling->history_length,
                       sampling->history_stride, sampling->out_ids);
      }
    }
  };
  const bool graphable = batch.max_query_length == 1 && R == T && !dump.enabled();
  const int64_t mode = !sampling ? 0 : sampling->history ? 2 : 1;
  const GraphKey key{S, step.max_blocks_per_sequence, mode, biased};
  drop_stale_graphs();
  const auto graph = graphable ? graphs_.find(key) : graphs_.end();
  if (graph != graphs_.end()) {
    backend.replay_graph(graph->second);
  } else {
    enqueue();
    drop_stale_graphs();  // this step may have grown a scratch buffer
    if (graphable && backend.begin_graph_capture()) {
      enqueue();
      KITE_ASSIGN_OR_RETURN(graphs_[key], backend.end_graph_capture());
    }
  }

  if (R > 0 && !sampling) dump.add("logits", logits_f32);
  KITE_RETURN_IF_ERROR(dump.write(step_counter_++));
  return logits_f32;
}

}  // namespace kite
