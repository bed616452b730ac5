// The configuration of a Llama-family model (Llama 1/2/3, Mistral, Qwen2, SmolLM2, ...): parsed
// from a Hugging Face config.json, validated once, and stored in Kite's own checkpoint schema
// (docs/checkpoint.md). Also lists the weights such a model has, under their Hugging Face names.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace kite {

enum class Architecture { kLlama, kMistral, kQwen2 };

// "llama", "mistral", "qwen2": the Hugging Face model_type, also used in Kite's checkpoints.
std::string_view architecture_name(Architecture architecture);
Result<Architecture> parse_architecture_name(std::string_view name, const std::string& source);

enum class RopeScalingType {
  kNone,     // plain RoPE (HF "default" or no rope_scaling)
  kLinear,   // positions divided by factor
  kDynamic,  // NTK-aware: base grows with the sequence beyond max_position_embeddings
  kLlama3,   // Llama 3.1 frequency-dependent interpolation
  kYarn,  // YaRN: interpolation ramped over the dimensions, cos and sin scaled (attention factor)
};

std::string_view rope_scaling_type_name(RopeScalingType type);

// transformers' YaRN attention factor when none is given: get_mscale(factor, mscale) /
// get_mscale(factor, mscale_all_dim) when both are given (non-zero), else get_mscale(factor), with
// get_mscale(s, m) = 0.1 m ln(s) + 1 (1 for s <= 1).
double yarn_attention_factor(double factor, double mscale, double mscale_all_dim);

struct RopeScaling {
  RopeScalingType type = RopeScalingType::kNone;
  double factor = 1.0;
  // Llama 3 only.
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 0;
  // YaRN only (transformers' names and defaults; 0: not given).
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 0.0;
  double mscale_all_dim = 0.0;
  double attention_factor = 0.0;  // 0: derived from factor (and mscale, mscale_all_dim)
  bool truncate = true;

  bool operator==(const RopeScaling&) const = default;
};

struct ModelConfig {
  Architecture architecture = Architecture::kLlama;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;  // hidden_size / num_attention_heads unless the config says otherwise
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;  // lm_head shares model.embed_tokens.weight
  // Attention sees at most this many previous tokens (itself included), in every layer.
  std::optional<int64_t> sliding_window;
  bool attention_bias = false;         // q_proj, k_proj, v_proj have biases (Qwen2: always)
  bool attention_output_bias = false;  // o_proj has a bias (Llama with attention_bias = true)
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;  // config.json may give one id or a list
  std::optional<int64_t> pad_token_id;
  std::string torch_dtype;  // the dtype the weights were published in ("bfloat16"); may be empty

  bool operator==(const ModelConfig&) const = default;

  int64_t q_size() const { return num_attention_heads * head_dim; }
  int64_t kv_size() const { return num_key_value_heads * head_dim; }
};

// Checks sizes and their relations (heads divide evenly, head_dim even, ids in the vocabulary).
Status validate_model_config(const ModelConfig& config, const std::string& source);

// Reads a Hugging Face config.json (model_type llama, mistral or qwen2). `source` names the file
// in messages. Missing optional fields take the defaults of the transformers config classes; the
// sizes (hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, vocab_size) are
// required. Returns kUnsupported for other architectures and for features Kite does not run.
Result<ModelConfig> parse_hf_config(const nlohmann::json& config, const std::string& source);
// The same for a config.json on disk.
Result<ModelConfig> read_hf_config(const std::string& path);

// Kite's schema (docs/checkpoint.md): the fields of ModelConfig under the same names, with
// "architecture" as a name, "rope_scaling" as an object or null and "eos_token_id" as a list.
// Keys come in the order of the struct.
nlohmann::ordered_json model_config_to_json(const ModelConfig& config);
// Reads what model_config_to_json wrote (other keys of `json` are ignored) and validates it.
Result<ModelConfig> model_config_from_json(const nlohmann::json& json, const std::string& source);

// One parameter tensor of the model.
enum class WeightRole { kEmbedding, kNorm, kLinear, kBias };
struct WeightInfo {
  std::string name;  // Hugging Face name, e.g. "model.layers.0.self_attn.q_proj.weight"
  Shape shape;       // as in PyTorch: linear weights are [out_features, in_features]
  WeightRole role;
};

// Every weight of the model in execution order: embeddings, then each layer, the final norm and,
// unless tied, lm_head.weight.
std::vector<WeightInfo> model_weights(const ModelConfig& config);

}  // namespace kite
