// Parsing Hugging Face config.json files of the Llama family into ModelConfig, validating them, and
// reading and writing Kite's own config schema.
#include "formats/model_config.h"

#include <cmath>
#include <tuple>

#include "core/file.h"

namespace kite {
namespace {

constexpr const char* kSupportedArchitectures = "llama, mistral, qwen2";
constexpr const char* kSupportedRopeScaling = "default, linear, dynamic, llama3, yarn";

// Typed access to the fields of one JSON object, with messages that name the file and the field.
class FieldReader {
 public:
  FieldReader(const nlohmann::json& object, std::string source)
      : object_(object), source_(std::move(source)) {}

  bool has(const char* key) const {
    const auto found = object_.find(key);
    return found != object_.end() && !found->is_null();
  }
  const nlohmann::json& at(const char* key) const { return object_.at(key); }

  Status integer(const char* key, int64_t* out) const {
    if (!has(key)) return corrupt(source_ + " lacks \"" + key + "\"");
    return integer_value(key, object_.at(key), out);
  }
  Status integer_or(const char* key, int64_t fallback, int64_t* out) const {
    if (!has(key)) {
      *out = fallback;
      return Status::ok();
    }
    return integer(key, out);
  }
  Status optional_integer(const char* key, std::optional<int64_t>* out) const {
    out->reset();
    if (!has(key)) return Status::ok();
    int64_t value = 0;
    KITE_RETURN_IF_ERROR(integer(key, &value));
    *out = value;
    return Status::ok();
  }
  Status number(const char* key, double* out) const {
    if (!has(key)) return corrupt(source_ + " lacks \"" + key + "\"");
    const nlohmann::json& value = object_.at(key);
    if (!value.is_number()) return wrong_type(key, "a number", value);
    *out = value.get<double>();
    return Status::ok();
  }
  Status number_or(const char* key, double fallback, double* out) const {
    if (!has(key)) {
      *out = fallback;
      return Status::ok();
    }
    return number(key, out);
  }
  Status boolean_or(const char* key, bool fallback, bool* out) const {
    if (!has(key)) {
      *out = fallback;
      return Status::ok();
    }
    const nlohmann::json& value = object_.at(key);
    if (!value.is_boolean()) return wrong_type(key, "true or false", value);
    *out = value.get<bool>();
    return Status::ok();
  }
  Status string_or(const char* key, std::string fallback, std::string* out) const {
    if (!has(key)) {
      *out = std::move(fallback);
      return Status::ok();
    }
    const nlohmann::json& value = object_.at(key);
    if (!value.is_string()) return wrong_type(key, "a string", value);
    *out = value.get<std::string>();
    return Status::ok();
  }
  // One id or a list of ids (eos_token_id).
  Status integer_list(const char* key, std::vector<int64_t>* out) const {
    out->clear();
    if (!has(key)) return Status::ok();
    const nlohmann::json& value = object_.at(key);
    if (!value.is_array()) {
      int64_t single = 0;
      KITE_RETURN_IF_ERROR(integer_value(key, value, &single));
      out->push_back(single);
      return Status::ok();
    }
    for (const nlohmann::json& element : value) {
      int64_t item = 0;
      KITE_RETURN_IF_ERROR(integer_value(key, element, &item));
      out->push_back(item);
    }
    return Status::ok();
  }

  const std::string& source() const { return source_; }

 private:
  Status integer_value(const char* key, const nlohmann::json& value, int64_t* out) const {
    if (value.is_number_integer()) {
      if (value.is_number_unsigned() && value.get<uint64_t>() > uint64_t(INT64_MAX))
        return wrong_type(key, "an integer in range", value);
      *out = value.get<int64_t>();
      return Status::ok();
    }
    // Some tools write whole numbers as floats ("max_position_embeddings": 4096.0).
    if (value.is_number_float()) {
      const double number = value.get<double>();
      if (std::floor(number) == number && std::fabs(number) < 9.0e15) {
        *out = int64_t(number);
        return Status::ok();
      }
    }
    return wrong_type(key, "an integer", value);
  }
  Status wrong_type(const char* key, const char* expected, const nlohmann::json& value) const {
    return corrupt(source_ + ": \"" + key + "\" must be " + expected + ", not " +
                   (value.is_structured() ? std::string(value.type_name()) : value.dump()));
  }

  const nlohmann::json& object_;
  std::string source_;
};

Status parse_rope_scaling(const nlohmann::json& scaling, const std::string& source,
                          RopeScaling* out) {
  *out = RopeScaling{};
  if (scaling.is_null()) return Status::ok();
  if (!scaling.is_object()) return corrupt(source + ": \"rope_scaling\" must be an object or null");
  const FieldReader reader(scaling, source + " rope_scaling");
  std::string type;
  // transformers >= 4.43 writes "rope_type"; older configs write "type".
  KITE_RETURN_IF_ERROR(reader.string_or("rope_type", "", &type));
  if (type.empty()) KITE_RETURN_IF_ERROR(reader.string_or("type", "default", &type));
  if (type == "default") return Status::ok();
  if (type == "linear") {
    out->type = RopeScalingType::kLinear;
  } else if (type == "dynamic") {
    out->type = RopeScalingType::kDynamic;
  } else if (type == "llama3") {
    out->type = RopeScalingType::kLlama3;
  } else if (type == "yarn") {
    out->type = RopeScalingType::kYarn;
  } else {
    return unsupported(source + ": rope_scaling type '" + type +
                       "' is not supported; Kite supports: " + kSupportedRopeScaling);
  }
  if (out->type == RopeScalingType::kYarn) {
    // transformers: factor may be left out (then max_position_embeddings over the original).
    KITE_RETURN_IF_ERROR(reader.number_or("factor", 0.0, &out->factor));
    KITE_RETURN_IF_ERROR(reader.integer_or("original_max_position_embeddings", 0,
                                           &out->original_max_position_embeddings));
    KITE_RETURN_IF_ERROR(reader.number_or("beta_fast", 32.0, &out->beta_fast));
    KITE_RETURN_IF_ERROR(reader.number_or("beta_slow", 1.0, &out->beta_slow));
    KITE_RETURN_IF_ERROR(reader.number_or("mscale", 0.0, &out->mscale));
    KITE_RETURN_IF_ERROR(reader.number_or("mscale_all_dim", 0.0, &out->mscale_all_dim));
    KITE_RETURN_IF_ERROR(reader.number_or("attention_factor", 0.0, &out->attention_factor));
    KITE_RETURN_IF_ERROR(reader.boolean_or("truncate", true, &out->truncate));
    // transformers treats 0 as "not given" for the betas.
    if (out->beta_fast == 0.0) out->beta_fast = 32.0;
    if (out->beta_slow == 0.0) out->beta_slow = 1.0;
    return Status::ok();
  }
  KITE_RETURN_IF_ERROR(reader.number("factor", &out->factor));
  if (out->type == RopeScalingType::kLlama3) {
    KITE_RETURN_IF_ERROR(reader.number("low_freq_factor", &out->low_freq_factor));
    KITE_RETURN_IF_ERROR(reader.number("high_freq_factor", &out->high_freq_factor));
    KITE_RETURN_IF_ERROR(
        reader.integer("original_max_position_embeddings", &out->original_max_position_embeddings));
  } else {
    KITE_RETURN_IF_ERROR(reader.integer_or("original_max_position_embeddings", 0,
                                           &out->original_max_position_embeddings));
  }
  return Status::ok();
}

struct ArchitectureDefaults {
  int64_t max_position_embeddings;
  std::optional<int64_t> bos_token_id;
  std::optional<int64_t> eos_token_id;
};

// The defaults of transformers' LlamaConfig, MistralConfig and Qwen2Config for fields a
// config.json may leave out.
ArchitectureDefaults defaults_of(Architecture architecture) {
  switch (architecture) {
    case Architecture::kLlama:
      return {2048, 1, 2};
    case Architecture::kMistral:
      return {4096 * 32, 1, 2};
    case Architecture::kQwen2:
      return {32768, std::nullopt, std::nullopt};
  }
  KITE_CHECK(false);
  return {};
}

Result<Architecture> architecture_of_class(const std::string& class_name) {
  if (class_name == "LlamaForCausalLM") return Architecture::kLlama;
  if (class_name == "MistralForCausalLM") return Architecture::kMistral;
  if (class_name == "Qwen2ForCausalLM") return Architecture::kQwen2;
  return unsupported(class_name);
}

Status check_positive(int64_t value, const char* name, const std::string& source) {
  if (value <= 0) {
    return corrupt(source + ": " + name + " must be positive, not " + std::to_string(value));
  }
  return Status::ok();
}

Status check_token_id(std::optional<int64_t> id, const char* name, const ModelConfig& config,
                      const std::string& source) {
  if (id && (*id < 0 || *id >= config.vocab_size)) {
    return corrupt(source + ": " + name + " " + std::to_string(*id) +
                   " is outside the vocabulary (vocab_size " + std::to_string(config.vocab_size) +
                   ")");
  }
  return Status::ok();
}

nlohmann::ordered_json optional_to_json(const std::optional<int64_t>& value) {
  return value ? nlohmann::ordered_json(*value) : nlohmann::ordered_json(nullptr);
}

}  // namespace

std::string_view architecture_name(Architecture architecture) {
  switch (architecture) {
    case Architecture::kLlama:
      return "llama";
    case Architecture::kMistral:
      return "mistral";
    case Architecture::kQwen2:
      return "qwen2";
  }
  KITE_CHECK(false);
  return "";
}

Result<Architecture> parse_architecture_name(std::string_view name, const std::string& source) {
  for (Architecture architecture :
       {Architecture::kLlama, Architecture::kMistral, Architecture::kQwen2}) {
    if (architecture_name(architecture) == name) return architecture;
  }
  return unsupported("unsupported architecture '" + std::string(name) + "' in " + source +
                     "; Kite supports: " + kSupportedArchitectures);
}

double yarn_attention_factor(double factor, double mscale, double mscale_all_dim) {
  auto get_mscale = [&](double weight) {
    return factor <= 1.0 ? 1.0 : 0.1 * weight * std::log(factor) + 1.0;
  };
  if (mscale != 0.0 && mscale_all_dim != 0.0)
    return get_mscale(mscale) / get_mscale(mscale_all_dim);
  return get_mscale(1.0);
}

std::string_view rope_scaling_type_name(RopeScalingType type) {
  switch (type) {
    case RopeScalingType::kNone:
      return "default";
    case RopeScalingType::kLinear:
      return "linear";
    case RopeScalingType::kDynamic:
      return "dynamic";
    case RopeScalingType::kLlama3:
      return "llama3";
    case RopeScalingType::kYarn:
      return "yarn";
  }
  KITE_CHECK(false);
  return "";
}

Status validate_model_config(const ModelConfig& config, const std::string& source) {
  KITE_RETURN_IF_ERROR(check_positive(config.hidden_size, "hidden_size", source));
  KITE_RETURN_IF_ERROR(check_positive(config.intermediate_size, "intermediate_size", source));
  KITE_RETURN_IF_ERROR(check_positive(config.num_hidden_layers, "num_hidden_layers", source));
  KITE_RETURN_IF_ERROR(check_positive(config.num_attention_heads, "num_attention_heads", source));
  KITE_RETURN_IF_ERROR(check_positive(config.num_key_value_heads, "num_key_value_heads", source));
  KITE_RETURN_IF_ERROR(check_positive(config.head_dim, "head_dim", source));
  KITE_RETURN_IF_ERROR(check_positive(config.vocab_size, "vocab_size", source));
  KITE_RETURN_IF_ERROR(
      check_positive(config.max_position_embeddings, "max_position_embeddings", source));
  // Bounds that keep every weight's element count far from overflow, yet well above any real
  // model (the largest published hidden sizes are ~25k, vocabularies ~260k, depths ~130 layers).
  constexpr int64_t kMaxDimension = int64_t(1) << 24;
  constexpr int64_t kMaxLayers = int64_t(1) << 16;
  for (const auto& [value, name, limit] :
       {std::tuple{config.hidden_size, "hidden_size", kMaxDimension},
        {config.intermediate_size, "intermediate_size", kMaxDimension},
        {config.num_hidden_layers, "num_hidden_layers", kMaxLayers},
        {config.num_attention_heads, "num_attention_heads", kMaxDimension},
        {config.num_key_value_heads, "num_key_value_heads", kMaxDimension},
        {config.head_dim, "head_dim", kMaxDimension},
        {config.vocab_size, "vocab_size", kMaxDimension}}) {
    if (value > limit) {
      return corrupt(source + ": " + name + " is implausibly large (" + std::to_string(value) +
                     ")");
    }
  }
  if (config.q_size() > kMaxDimension) {
    return corrupt(source + ": num_attention_heads * head_dim is implausibly large (" +
                   std::to_string(config.q_size()) + ")");
  }
  if (config.num_attention_heads % config.num_key_value_heads != 0) {
    return corrupt(source + ": num_attention_heads (" + std::to_string(config.num_attention_heads) +
                   ") is not a multiple of num_key_value_heads (" +
                   std::to_string(config.num_key_value_heads) + ")");
  }
  if (config.head_dim % 2 != 0) {
    return corrupt(source + ": head_dim " + std::to_string(config.head_dim) +
                   " is odd; rotary embeddings rotate pairs of dimensions");
  }
  if (!(config.rms_norm_eps > 0) || !std::isfinite(config.rms_norm_eps))
    return corrupt(source + ": rms_norm_eps must be a positive number");
  if (!(config.rope_theta > 0) || !std::isfinite(config.rope_theta))
    return corrupt(source + ": rope_theta must be a positive number");
  const RopeScaling& scaling = config.rope_scaling;
  if (scaling.type != RopeScalingType::kNone &&
      (!(scaling.factor > 0) || !std::isfinite(scaling.factor))) {
    return corrupt(source + ": rope_scaling factor must be a positive number");
  }
  if (scaling.type == RopeScalingType::kLlama3) {
    if (!(scaling.low_freq_factor > 0) || !(scaling.high_freq_factor > scaling.low_freq_factor) ||
        !std::isfinite(scaling.high_freq_factor)) {
      return corrupt(source + ": llama3 rope_scaling needs 0 < low_freq_factor < high_freq_factor");
    }
    KITE_RETURN_IF_ERROR(check_positive(scaling.original_max_position_embeddings,
                                        "rope_scaling original_max_position_embeddings", source));
  }
  if (scaling.type == RopeScalingType::kYarn) {
    KITE_RETURN_IF_ERROR(check_positive(scaling.original_max_position_embeddings,
                                        "rope_scaling original_max_position_embeddings", source));
    for (const double value : {scaling.beta_fast, scaling.beta_slow}) {
      if (!(value > 0) || !std::isfinite(value))
        return corrupt(source + ": yarn rope_scaling beta_fast and beta_slow must be positive");
    }
    for (const double value : {scaling.mscale, scaling.mscale_all_dim, scaling.attention_factor}) {
      if (!(value >= 0) || !std::isfinite(value)) {
        return corrupt(source +
                       ": yarn rope_scaling mscale, mscale_all_dim and attention_factor must be "
                       "non-negative numbers");
      }
    }
  }
  if (scaling.original_max_position_embeddings < 0)
    return corrupt(source + ": rope_scaling original_max_position_embeddings is negative");
  if (config.sliding_window) {
    KITE_RETURN_IF_ERROR(check_positive(*config.sliding_window, "sliding_window", source));
  }
  KITE_RETURN_IF_ERROR(check_token_id(config.bos_token_id, "bos_token_id", config, source));
  KITE_RETURN_IF_ERROR(check_token_id(config.pad_token_id, "pad_token_id", config, source));
  for (int64_t id : config.eos_token_ids)
    KITE_RETURN_IF_ERROR(check_token_id(id, "eos_token_id", config, source));
  return Status::ok();
}

Result<ModelConfig> parse_hf_config(const nlohmann::json& json, const std::string& source) {
  if (!json.is_object()) return corrupt(source + " is not a JSON object");
  const FieldReader reader(json, source);
  ModelConfig config;

  // The architecture comes from model_type; architectures[] must then name the causal LM class,
  // since the same model_type also covers classifiers and other heads.
  std::string model_type;
  KITE_RETURN_IF_ERROR(reader.string_or("model_type", "", &model_type));
  std::vector<std::string> classes;
  if (reader.has("architectures")) {
    const nlohmann::json& list = reader.at("architectures");
    if (!list.is_array()) return corrupt(source + ": \"architectures\" must be a list of names");
    for (const nlohmann::json& name : list) {
      if (!name.is_string()) return corrupt(source + ": \"architectures\" must be a list of names");
      classes.push_back(name.get<std::string>());
    }
  }
  if (model_type.empty()) {
    if (classes.empty())
      return corrupt(source + " has neither \"model_type\" nor \"architectures\"");
    Result<Architecture> from_class = architecture_of_class(classes[0]);
    if (!from_class.is_ok()) {
      return unsupported("unsupported architecture '" + classes[0] + "' in " + source +
                         "; Kite supports: " + kSupportedArchitectures);
    }
    model_type = std::string(architecture_name(*from_class));
  }
  KITE_ASSIGN_OR_RETURN(config.architecture, parse_architecture_name(model_type, source));
  if (!classes.empty()) {
    bool causal = false;
    for (const std::string& name : classes) causal |= architecture_of_class(name).is_ok();
    if (!causal) {
      return unsupported(source + ": architectures lists " + classes[0] +
                         ", which is not a causal language model Kite runs (LlamaForCausalLM, "
                         "MistralForCausalLM, Qwen2ForCausalLM)");
    }
  }
  const ArchitectureDefaults defaults = defaults_of(config.architecture);

  KITE_RETURN_IF_ERROR(reader.integer("hidden_size", &config.hidden_size));
  KITE_RETURN_IF_ERROR(reader.integer("intermediate_size", &config.intermediate_size));
  KITE_RETURN_IF_ERROR(reader.integer("num_hidden_layers", &config.num_hidden_layers));
  KITE_RETURN_IF_ERROR(reader.integer("num_attention_heads", &config.num_attention_heads));
  KITE_RETURN_IF_ERROR(reader.integer("vocab_size", &config.vocab_size));
  // Llama 1 and 2 configs predate grouped-query attention and omit the key/value head count.
  KITE_RETURN_IF_ERROR(reader.integer_or("num_key_value_heads", config.num_attention_heads,
                                         &config.num_key_value_heads));
  KITE_RETURN_IF_ERROR(reader.integer_or("max_position_embeddings",
                                         defaults.max_position_embeddings,
                                         &config.max_position_embeddings));
  if (reader.has("head_dim")) {
    KITE_RETURN_IF_ERROR(reader.integer("head_dim", &config.head_dim));
  } else {
    KITE_RETURN_IF_ERROR(check_positive(config.num_attention_heads, "num_attention_heads", source));
    if (config.hidden_size % config.num_attention_heads != 0) {
      return corrupt(source + ": hidden_size (" + std::to_string(config.hidden_size) +
                     ") is not a multiple of num_attention_heads (" +
                     std::to_string(config.num_attention_heads) + ") and no head_dim is given");
    }
    config.head_dim = config.hidden_size / config.num_attention_heads;
  }
  KITE_RETURN_IF_ERROR(reader.number_or("rms_norm_eps", 1e-6, &config.rms_norm_eps));

  std::string activation;
  KITE_RETURN_IF_ERROR(reader.string_or("hidden_act", "silu", &activation));
  if (activation != "silu" && activation != "swish") {
    return unsupported(source + ": hidden_act '" + activation +
                       "' is not supported; the Llama family uses silu");
  }
  bool mlp_bias = false;
  KITE_RETURN_IF_ERROR(reader.boolean_or("mlp_bias", false, &mlp_bias));
  if (mlp_bias) return unsupported(source + ": mlp_bias = true is not supported");

  // transformers 5 moves rope_theta and the scaling into one "rope_parameters" object.
  const bool has_rope_parameters = reader.has("rope_parameters");
  if (has_rope_parameters && !reader.at("rope_parameters").is_object())
    return corrupt(source + ": \"rope_parameters\" must be an object");
  if (reader.has("rope_theta") || !has_rope_parameters) {
    KITE_RETURN_IF_ERROR(reader.number_or("rope_theta", 10000.0, &config.rope_theta));
  } else {
    const FieldReader parameters(reader.at("rope_parameters"), source + " rope_parameters");
    KITE_RETURN_IF_ERROR(parameters.number_or("rope_theta", 10000.0, &config.rope_theta));
  }
  if (reader.has("rope_scaling")) {
    KITE_RETURN_IF_ERROR(
        parse_rope_scaling(reader.at("rope_scaling"), source, &config.rope_scaling));
  } else if (has_rope_parameters) {
    KITE_RETURN_IF_ERROR(
        parse_rope_scaling(reader.at("rope_parameters"), source, &config.rope_scaling));
  }

  KITE_RETURN_IF_ERROR(
      reader.boolean_or("tie_word_embeddings", false, &config.tie_word_embeddings));

  switch (config.architecture) {
    case Architecture::kLlama:
      // Llama's attention_bias puts biases on all four attention projections.
      KITE_RETURN_IF_ERROR(reader.boolean_or("attention_bias", false, &config.attention_bias));
      config.attention_output_bias = config.attention_bias;
      break;
    case Architecture::kMistral: {
      // MistralConfig defaults to a 4096-token window; configs disable it with null.
      const auto found = json.find("sliding_window");
      if (found == json.end()) {
        config.sliding_window = 4096;
      } else {
        KITE_RETURN_IF_ERROR(reader.optional_integer("sliding_window", &config.sliding_window));
      }
      break;
    }
    case Architecture::kQwen2: {
      // Qwen2 always has q/k/v biases and no o_proj bias. Its window applies only when
      // use_sliding_window is true, and then only to layers >= max_window_layers.
      config.attention_bias = true;
      bool use_sliding_window = false;
      KITE_RETURN_IF_ERROR(reader.boolean_or("use_sliding_window", false, &use_sliding_window));
      if (use_sliding_window && reader.has("sliding_window")) {
        int64_t window = 0;
        int64_t max_window_layers = 0;
        KITE_RETURN_IF_ERROR(reader.integer("sliding_window", &window));
        KITE_RETURN_IF_ERROR(reader.integer_or("max_window_layers", 28, &max_window_layers));
        if (max_window_layers <= 0) {
          config.sliding_window = window;
        } else if (max_window_layers < config.num_hidden_layers) {
          return unsupported(source +
                             ": a sliding window on only some layers (use_sliding_window "
                             "with max_window_layers " +
                             std::to_string(max_window_layers) + " of " +
                             std::to_string(config.num_hidden_layers) + ") is not supported");
        }
      }
      break;
    }
  }

  KITE_RETURN_IF_ERROR(reader.optional_integer("bos_token_id", &config.bos_token_id));
  if (!json.contains("bos_token_id")) config.bos_token_id = defaults.bos_token_id;
  KITE_RETURN_IF_ERROR(reader.integer_list("eos_token_id", &config.eos_token_ids));
  if (!json.contains("eos_token_id") && defaults.eos_token_id)
    config.eos_token_ids = {*defaults.eos_token_id};
  KITE_RETURN_IF_ERROR(reader.optional_integer("pad_token_id", &config.pad_token_id));
  // Some converted Llama configs write -1 for "no padding token".
  if (config.pad_token_id && *config.pad_token_id < 0) config.pad_token_id.reset();

  // transformers 5 renamed torch_dtype to dtype.
  KITE_RETURN_IF_ERROR(reader.string_or("torch_dtype", "", &config.torch_dtype));
  if (config.torch_dtype.empty())
    KITE_RETURN_IF_ERROR(reader.string_or("dtype", "", &config.torch_dtype));

  // YaRN's defaults in transformers: the original context is max_position_embeddings, and a
  // missing factor is the ratio of the two.
  RopeScaling& scaling = config.rope_scaling;
  if (scaling.type == RopeScalingType::kYarn) {
    if (scaling.original_max_position_embeddings == 0)
      scaling.original_max_position_embeddings = config.max_position_embeddings;
    if (scaling.factor == 0.0 && scaling.original_max_position_embeddings > 0) {
      scaling.factor =
          double(config.max_position_embeddings) / double(scaling.original_max_position_embeddings);
    }
  }

  KITE_RETURN_IF_ERROR(validate_model_config(config, source));
  return config;
}

Result<ModelConfig> read_hf_config(const std::string& path) {
  KITE_ASSIGN_OR_RETURN(std::string text, read_file(path));
  const nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) return corrupt(path + " is not valid JSON");
  return parse_hf_config(json, path);
}

nlohmann::ordered_json model_config_to_json(const ModelConfig& config) {
  nlohmann::ordered_json rope_scaling = nullptr;
  if (config.rope_scaling.type != RopeScalingType::kNone) {
    rope_scaling = {{"type", rope_scaling_type_name(config.rope_scaling.type)},
                    {"factor", config.rope_scaling.factor}};
    if (config.rope_scaling.type == RopeScalingType::kLlama3) {
      rope_scaling["low_freq_factor"] = config.rope_scaling.low_freq_factor;
      rope_scaling["high_freq_factor"] = config.rope_scaling.high_freq_factor;
    }
    if (config.rope_scaling.original_max_position_embeddings > 0) {
      rope_scaling["original_max_position_embeddings"] =
          config.rope_scaling.original_max_position_embeddings;
    }
    if (config.rope_scaling.type == RopeScalingType::kYarn) {
      const RopeScaling& yarn = config.rope_scaling;
      rope_scaling["beta_fast"] = yarn.beta_fast;
      rope_scaling["beta_slow"] = yarn.beta_slow;
      rope_scaling["mscale"] = yarn.mscale;
      rope_scaling["mscale_all_dim"] = yarn.mscale_all_dim;
      rope_scaling["attention_factor"] = yarn.attention_factor;
      rope_scaling["truncate"] = yarn.truncate;
    }
  }
  return {
      {"architecture", architecture_name(config.architecture)},
      {"hidden_size", config.hidden_size},
      {"intermediate_size", config.intermediate_size},
      {"num_hidden_layers", config.num_hidden_layers},
      {"num_attention_heads", config.num_attention_heads},
      {"num_key_value_heads", config.num_key_value_heads},
      {"head_dim", config.head_dim},
      {"vocab_size", config.vocab_size},
      {"max_position_embeddings", config.max_position_embeddings},
      {"rms_norm_eps", config.rms_norm_eps},
      {"rope_theta", config.rope_theta},
      {"rope_scaling", rope_scaling},
      {"tie_word_embeddings", config.tie_word_embeddings},
      {"sliding_window", optional_to_json(config.sliding_window)},
      {"attention_bias", config.attention_bias},
      {"attention_output_bias", config.attention_output_bias},
      {"bos_token_id", optional_to_json(config.bos_token_id)},
      {"eos_token_id", config.eos_token_ids},
      {"pad_token_id", optional_to_json(config.pad_token_id)},
      {"torch_dtype",
       config.torch_dtype.empty() ? nlohmann::json(nullptr) : nlohmann::json(config.torch_dtype)},
  };
}

Result<ModelConfig> model_config_from_json(const nlohmann::json& json, const std::string& source) {
  if (!json.is_object()) return corrupt(source + " is not a JSON object");
  const FieldReader reader(json, source);
  ModelConfig config;
  std::string architecture;
  KITE_RETURN_IF_ERROR(reader.string_or("architecture", "", &architecture));
  if (architecture.empty()) return corrupt(source + " lacks \"architecture\"");
  KITE_ASSIGN_OR_RETURN(config.architecture, parse_architecture_name(architecture, source));
  KITE_RETURN_IF_ERROR(reader.integer("hidden_size", &config.hidden_size));
  KITE_RETURN_IF_ERROR(reader.integer("intermediate_size", &config.intermediate_size));
  KITE_RETURN_IF_ERROR(reader.integer("num_hidden_layers", &config.num_hidden_layers));
  KITE_RETURN_IF_ERROR(reader.integer("num_attention_heads", &config.num_attention_heads));
  KITE_RETURN_IF_ERROR(reader.integer("num_key_value_heads", &config.num_key_value_heads));
  KITE_RETURN_IF_ERROR(reader.integer("head_dim", &config.head_dim));
  KITE_RETURN_IF_ERROR(reader.integer("vocab_size", &config.vocab_size));
  KITE_RETURN_IF_ERROR(reader.integer("max_position_embeddings", &config.max_position_embeddings));
  KITE_RETURN_IF_ERROR(reader.number("rms_norm_eps", &config.rms_norm_eps));
  KITE_RETURN_IF_ERROR(reader.number("rope_theta", &config.rope_theta));
  if (reader.has("rope_scaling")) {
    KITE_RETURN_IF_ERROR(
        parse_rope_scaling(reader.at("rope_scaling"), source, &config.rope_scaling));
  }
  KITE_RETURN_IF_ERROR(
      reader.boolean_or("tie_word_embeddings", false, &config.tie_word_embeddings));
  KITE_RETURN_IF_ERROR(reader.optional_integer("sliding_window", &config.sliding_window));
  KITE_RETURN_IF_ERROR(reader.boolean_or("attention_bias", false, &config.attention_bias));
  KITE_RETURN_IF_ERROR(
      reader.boolean_or("attention_output_bias", false, &config.attention_output_bias));
  KITE_RETURN_IF_ERROR(reader.optional_integer("bos_token_id", &config.bos_token_id));
  KITE_RETURN_IF_ERROR(reader.integer_list("eos_token_id", &config.eos_token_ids));
  KITE_RETURN_IF_ERROR(reader.optional_integer("pad_token_id", &config.pad_token_id));
  KITE_RETURN_IF_ERROR(reader.string_or("torch_dtype", "", &config.torch_dtype));
  KITE_RETURN_IF_ERROR(validate_model_config(config, source));
  return config;
}

std::vector<WeightInfo> model_weights(const ModelConfig& config) {
  const int64_t hidden = config.hidden_size;
  const int64_t intermediate = config.intermediate_size;
  std::vector<WeightInfo> weights;
  weights.push_back(
      {"model.embed_tokens.weight", {config.vocab_size, hidden}, WeightRole::kEmbedding});
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    const std::string prefix = "model.layers." + std::to_string(layer) + ".";
    weights.push_back({prefix + "input_layernorm.weight", {hidden}, WeightRole::kNorm});
    for (const auto& [projection, rows] : {std::pair{"q_proj", config.q_size()},
                                           {"k_proj", config.kv_size()},
                                           {"v_proj", config.kv_size()}}) {
      const std::string name = prefix + "self_attn." + projection;
      weights.push_back({name + ".weight", {rows, hidden}, WeightRole::kLinear});
      if (config.attention_bias) weights.push_back({name + ".bias", {rows}, WeightRole::kBias});
    }
    weights.push_back(
        {prefix + "self_attn.o_proj.weight", {hidden, config.q_size()}, WeightRole::kLinear});
    if (config.attention_output_bias)
      weights.push_back({prefix + "self_attn.o_proj.bias", {hidden}, WeightRole::kBias});
    weights.push_back({prefix + "post_attention_layernorm.weight", {hidden}, WeightRole::kNorm});
    weights.push_back(
        {prefix + "mlp.gate_proj.weight", {intermediate, hidden}, WeightRole::kLinear});
    weights.push_back({prefix + "mlp.up_proj.weight", {intermediate, hidden}, WeightRole::kLinear});
    weights.push_back(
        {prefix + "mlp.down_proj.weight", {hidden, intermediate}, WeightRole::kLinear});
  }
  weights.push_back({"model.norm.weight", {hidden}, WeightRole::kNorm});
  if (!config.tie_word_embeddings)
    weights.push_back({"lm_head.weight", {config.vocab_size, hidden}, WeightRole::kLinear});
  return weights;
}

}  // namespace kite
