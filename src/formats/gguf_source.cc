// A llama-family GGUF file (general.architecture "llama" or "qwen2") seen as a Hugging Face
// model: llama.* metadata becomes a config.json object, GGUF tensor names become HF names, dims
// are reversed into row-major order, quantized tensors are dequantized to float32, and the row
// permutation llama.cpp's converter applies to llama's attn_q / attn_k is undone.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <numbers>
#include <optional>

#include "core/file.h"
#include "formats/gguf.h"
#include "formats/gguf_dequant.h"
#include "formats/gguf_tokenizer.h"
#include "formats/model_config.h"
#include "formats/model_source.h"

namespace kite {
namespace {

using json = nlohmann::json;

// How a GGUF tensor's rows relate to the HF tensor's.
enum class RowOrder {
  kSame,
  // convert_hf_to_gguf.py's LlamaModel.permute(w, n_head): within each head of `head_dim` rows,
  // HF row (half * head_dim / 2 + i) is stored at row (2 i + half), interleaving the two rotary
  // halves the way ggml's RoPE pairs adjacent elements.
  kInterleavedHeads,
};

struct MappedTensor {
  size_t index;  // into GgufFile::tensors()
  RowOrder row_order = RowOrder::kSame;
  int64_t heads = 0;  // for kInterleavedHeads
};

struct Architecture {
  std::string_view gguf_name;
  std::string_view model_type;
  std::string_view hf_class;
  bool permuted_query_key;  // llama.cpp permutes attn_q/attn_k for "llama" only
};

constexpr Architecture kArchitectures[] = {
    {"llama", "llama", "LlamaForCausalLM", true},
    {"qwen2", "qwen2", "Qwen2ForCausalLM", false},
};

// GGUF per-layer tensor names (after "blk.N.") and their HF names (after "model.layers.N.").
struct LayerTensorName {
  std::string_view gguf;
  std::string_view hf;
};
constexpr LayerTensorName kLayerTensors[] = {
    {"attn_norm.weight", "input_layernorm.weight"},
    {"ffn_norm.weight", "post_attention_layernorm.weight"},
    {"attn_q.weight", "self_attn.q_proj.weight"},
    {"attn_q.bias", "self_attn.q_proj.bias"},
    {"attn_k.weight", "self_attn.k_proj.weight"},
    {"attn_k.bias", "self_attn.k_proj.bias"},
    {"attn_v.weight", "self_attn.v_proj.weight"},
    {"attn_v.bias", "self_attn.v_proj.bias"},
    {"attn_output.weight", "self_attn.o_proj.weight"},
    {"ffn_gate.weight", "mlp.gate_proj.weight"},
    {"ffn_up.weight", "mlp.up_proj.weight"},
    {"ffn_down.weight", "mlp.down_proj.weight"},
};

constexpr std::string_view kRopeFrequencyFactors = "rope_freqs.weight";

// Reads the optional metadata of one architecture ("llama.rope.freq_base" etc.).
class Metadata {
 public:
  Metadata(const GgufFile& file, std::string_view prefix) : file_(file), prefix_(prefix) {}

  std::string key(std::string_view name) const { return prefix_ + "." + std::string(name); }
  bool has(std::string_view name) const { return file_.contains(key(name)); }
  Result<uint64_t> uint(std::string_view name) const { return file_.get_uint(key(name)); }
  Result<double> number(std::string_view name) const { return file_.get_float(key(name)); }
  Result<uint64_t> uint_or(std::string_view name, uint64_t fallback) const {
    return has(name) ? uint(name) : Result<uint64_t>(fallback);
  }
  Result<double> number_or(std::string_view name, double fallback) const {
    return has(name) ? number(name) : Result<double>(fallback);
  }

 private:
  const GgufFile& file_;
  std::string prefix_;
};

// A float32 metadata value as the decimal its author wrote (1e-05, not 9.999999747378752e-06):
// the shortest decimal that reads back as the same float.
double float_for_json(double value) {
  const float single = float(value);
  for (int digits = 1; digits <= 9; ++digits) {
    char text[32];
    std::snprintf(text, sizeof(text), "%.*g", digits, double(single));
    const double parsed = std::strtod(text, nullptr);
    if (float(parsed) == single) return parsed;
  }
  return double(single);
}

// Splits "blk.<layer>.<rest>"; false for other names.
bool split_layer_name(const std::string& name, uint64_t* layer, std::string* rest) {
  constexpr std::string_view kPrefix = "blk.";
  if (!name.starts_with(kPrefix)) return false;
  size_t at = kPrefix.size();
  uint64_t value = 0;
  const size_t digits_start = at;
  while (at < name.size() && name[at] >= '0' && name[at] <= '9' && at - digits_start < 9) {
    value = value * 10 + uint64_t(name[at] - '0');
    ++at;
  }
  if (at == digits_start || at >= name.size() || name[at] != '.') return false;
  *layer = value;
  *rest = name.substr(at + 1);
  return true;
}

class GgufModelSource : public ModelSource {
 public:
  static Result<std::unique_ptr<ModelSource>> open(const std::string& path) {
    KITE_ASSIGN_OR_RETURN(GgufFile file, GgufFile::open(path));
    auto source = std::unique_ptr<GgufModelSource>(new GgufModelSource(std::move(file)));
    KITE_RETURN_IF_ERROR(source->build());
    return std::unique_ptr<ModelSource>(std::move(source));
  }

  std::string description() const override { return "GGUF file " + file_.path(); }
  const json& hf_config() const override { return config_; }

  std::vector<std::string> tensor_names() const override {
    std::vector<std::string> names;
    names.reserve(tensors_.size());
    for (const auto& entry : tensors_) names.push_back(entry.first);
    return names;  // std::map keeps them sorted
  }

  Result<Shape> tensor_shape(const std::string& hf_name) const override {
    KITE_ASSIGN_OR_RETURN(const MappedTensor* mapped, find(hf_name));
    return file_.tensors()[mapped->index].row_major_shape();
  }

  Result<Tensor> load_tensor(const std::string& hf_name) const override {
    KITE_ASSIGN_OR_RETURN(const MappedTensor* mapped, find(hf_name));
    const GgufTensorInfo& info = file_.tensors()[mapped->index];
    Tensor tensor;
    if (info.type == GgmlType::kF32 || info.type == GgmlType::kF16 ||
        info.type == GgmlType::kBF16) {
      const DType dtype = info.type == GgmlType::kF32   ? DType::kF32
                          : info.type == GgmlType::kF16 ? DType::kF16
                                                        : DType::kBF16;
      tensor = Tensor::copy_of(
          TensorView{dtype, info.row_major_shape(), file_.tensor_data(info).data()});
    } else {
      KITE_ASSIGN_OR_RETURN(tensor, dequantize_tensor(file_, info));
    }
    if (mapped->row_order == RowOrder::kInterleavedHeads) {
      tensor = deinterleave_heads(tensor, mapped->heads);
    }
    return tensor;
  }

  Status write_tokenizer_files(const std::string& output_dir) const override {
    KITE_ASSIGN_OR_RETURN(const json tokenizer, tokenizer_json_from_gguf(file_));
    KITE_ASSIGN_OR_RETURN(const json tokenizer_config, tokenizer_config_from_gguf(file_));
    json generation_config = json::object();
    for (const char* key : {"bos_token_id", "eos_token_id", "pad_token_id"}) {
      if (config_.contains(key)) generation_config[key] = config_[key];
    }
    KITE_RETURN_IF_ERROR(create_directories(output_dir));
    KITE_RETURN_IF_ERROR(write_file(output_dir + "/tokenizer.json", tokenizer.dump(2)));
    KITE_RETURN_IF_ERROR(
        write_file(output_dir + "/tokenizer_config.json", tokenizer_config.dump(2)));
    return write_file(output_dir + "/generation_config.json", generation_config.dump(2));
  }

 private:
  explicit GgufModelSource(GgufFile file) : file_(std::move(file)) {}

  Status error(const std::string& problem) const { return corrupt(file_.path() + ": " + problem); }

  Result<const MappedTensor*> find(const std::string& hf_name) const {
    const auto it = tensors_.find(hf_name);
    if (it == tensors_.end()) {
      return not_found(description() + " has no tensor '" + hf_name + "'");
    }
    return &it->second;
  }

  // Undoes RowOrder::kInterleavedHeads on the rows of a 1-D (bias) or 2-D tensor.
  static Tensor deinterleave_heads(const Tensor& stored, int64_t heads) {
    const int64_t rows = stored.shape()[0];
    const int64_t head_dim = rows / heads;
    const int64_t half = head_dim / 2;
    const size_t row_bytes = stored.byte_size() / size_t(rows);
    Tensor restored(stored.dtype(), stored.shape());
    for (int64_t head = 0; head < heads; ++head) {
      for (int64_t which_half = 0; which_half < 2; ++which_half) {
        for (int64_t i = 0; i < half; ++i) {
          const int64_t hf_row = head * head_dim + which_half * half + i;
          const int64_t gguf_row = head * head_dim + 2 * i + which_half;
          std::memcpy(restored.data() + size_t(hf_row) * row_bytes,
                      stored.data() + size_t(gguf_row) * row_bytes, row_bytes);
        }
      }
    }
    return restored;
  }

  Status build() {
    KITE_ASSIGN_OR_RETURN(const std::string arch_name, file_.get_string("general.architecture"));
    const Architecture* architecture = nullptr;
    for (const Architecture& candidate : kArchitectures) {
      if (candidate.gguf_name == arch_name) architecture = &candidate;
    }
    if (!architecture) {
      return unsupported(file_.path() + ": GGUF architecture '" + arch_name +
                         "' is not supported (Kite converts 'llama' and 'qwen2' GGUF files)");
    }
    KITE_RETURN_IF_ERROR(build_config(*architecture));
    KITE_RETURN_IF_ERROR(map_tensors(*architecture));
    return check_shapes();
  }

  Status build_config(const Architecture& architecture) {
    const Metadata meta(file_, architecture.gguf_name);
    KITE_ASSIGN_OR_RETURN(hidden_size_, meta.uint("embedding_length"));
    KITE_ASSIGN_OR_RETURN(intermediate_size_, meta.uint("feed_forward_length"));
    KITE_ASSIGN_OR_RETURN(layer_count_, meta.uint("block_count"));
    KITE_ASSIGN_OR_RETURN(head_count_, meta.uint("attention.head_count"));
    KITE_ASSIGN_OR_RETURN(kv_head_count_, meta.uint_or("attention.head_count_kv", head_count_));
    KITE_ASSIGN_OR_RETURN(const uint64_t context_length, meta.uint("context_length"));
    KITE_ASSIGN_OR_RETURN(const double rms_norm_eps,
                          meta.number("attention.layer_norm_rms_epsilon"));
    KITE_ASSIGN_OR_RETURN(const double rope_theta, meta.number_or("rope.freq_base", 10000.0));
    if (!(rms_norm_eps > 0.0) || !std::isfinite(rms_norm_eps) || !(rope_theta > 0.0) ||
        !std::isfinite(rope_theta)) {
      return error(meta.key("attention.layer_norm_rms_epsilon") + " and " +
                   meta.key("rope.freq_base") + " must be positive and finite");
    }
    const auto positive = [&](uint64_t value, std::string_view name) -> Status {
      if (value == 0 || value > (uint64_t(1) << 32)) {
        return error(meta.key(name) + " is " + std::to_string(value) + ", not a sane size");
      }
      return Status::ok();
    };
    KITE_RETURN_IF_ERROR(positive(hidden_size_, "embedding_length"));
    KITE_RETURN_IF_ERROR(positive(intermediate_size_, "feed_forward_length"));
    KITE_RETURN_IF_ERROR(positive(layer_count_, "block_count"));
    KITE_RETURN_IF_ERROR(positive(head_count_, "attention.head_count"));
    KITE_RETURN_IF_ERROR(positive(kv_head_count_, "attention.head_count_kv"));
    if (head_count_ % kv_head_count_ != 0) {
      return error("attention.head_count " + std::to_string(head_count_) +
                   " is not a multiple of attention.head_count_kv " +
                   std::to_string(kv_head_count_));
    }
    if (meta.has("attention.key_length")) {
      KITE_ASSIGN_OR_RETURN(head_dim_, meta.uint("attention.key_length"));
    } else {
      if (hidden_size_ % head_count_ != 0) {
        return error("embedding_length " + std::to_string(hidden_size_) +
                     " is not a multiple of attention.head_count " + std::to_string(head_count_));
      }
      head_dim_ = hidden_size_ / head_count_;
    }
    KITE_RETURN_IF_ERROR(positive(head_dim_, "attention.key_length"));
    if (head_dim_ % 2 != 0)
      return error("the attention head size " + std::to_string(head_dim_) + " is odd");
    KITE_ASSIGN_OR_RETURN(const uint64_t value_length,
                          meta.uint_or("attention.value_length", head_dim_));
    KITE_ASSIGN_OR_RETURN(const uint64_t rope_dims,
                          meta.uint_or("rope.dimension_count", head_dim_));
    if (value_length != head_dim_ || rope_dims != head_dim_) {
      return unsupported(file_.path() + ": heads with key size " + std::to_string(head_dim_) +
                         ", value size " + std::to_string(value_length) + " and " +
                         std::to_string(rope_dims) +
                         " rotary dimensions are not supported (Llama rotates whole heads of "
                         "equal key and value size)");
    }

    const GgufTensorInfo* embedding = file_.find_tensor("token_embd.weight");
    if (!embedding || embedding->dims.size() != 2) {
      return error("tensor token_embd.weight is missing or not 2-D");
    }
    vocab_size_ = uint64_t(embedding->dims[1]);

    config_ = json::object();
    config_["architectures"] = {architecture.hf_class};
    config_["model_type"] = architecture.model_type;
    config_["hidden_size"] = hidden_size_;
    config_["intermediate_size"] = intermediate_size_;
    config_["num_hidden_layers"] = layer_count_;
    config_["num_attention_heads"] = head_count_;
    config_["num_key_value_heads"] = kv_head_count_;
    config_["head_dim"] = head_dim_;
    config_["hidden_act"] = "silu";
    config_["max_position_embeddings"] = context_length;
    config_["rms_norm_eps"] = float_for_json(rms_norm_eps);
    config_["rope_theta"] = float_for_json(rope_theta);
    config_["vocab_size"] = vocab_size_;
    config_["tie_word_embeddings"] = file_.find_tensor("output.weight") == nullptr;
    config_["attention_bias"] = file_.find_tensor("blk.0.attn_q.bias") != nullptr;
    config_["mlp_bias"] = false;
    config_["torch_dtype"] = torch_dtype();
    for (const auto& [gguf_key, hf_key] :
         {std::pair{"tokenizer.ggml.bos_token_id", "bos_token_id"},
          std::pair{"tokenizer.ggml.eos_token_id", "eos_token_id"},
          std::pair{"tokenizer.ggml.padding_token_id", "pad_token_id"}}) {
      if (file_.contains(gguf_key)) {
        KITE_ASSIGN_OR_RETURN(const uint64_t id, file_.get_uint(gguf_key));
        config_[hf_key] = id;
      }
    }
    KITE_ASSIGN_OR_RETURN(json rope_scaling, rope_scaling_config(meta));
    if (!rope_scaling.is_null()) config_["rope_scaling"] = std::move(rope_scaling);
    return Status::ok();
  }

  // The dtype load_tensor() returns for the bulk of the weights: the stored type when the 2-D
  // weights are all F16 (or all BF16), float32 otherwise.
  std::string torch_dtype() const {
    std::optional<GgmlType> common;
    for (const GgufTensorInfo& info : file_.tensors()) {
      if (info.dims.size() != 2) continue;
      if (common && *common != info.type) return "float32";
      common = info.type;
    }
    if (common == GgmlType::kF16) return "float16";
    if (common == GgmlType::kBF16) return "bfloat16";
    return "float32";
  }

  Result<json> rope_scaling_config(const Metadata& meta) const {
    std::string type = "none";
    if (meta.has("rope.scaling.type")) {
      KITE_ASSIGN_OR_RETURN(type, file_.get_string(meta.key("rope.scaling.type")));
    } else if (meta.has("rope.scale_linear")) {  // the key older files use
      type = "linear";
    }
    if (type == "none") return llama3_rope_scaling();
    double factor = 1.0;
    if (meta.has("rope.scaling.factor")) {
      KITE_ASSIGN_OR_RETURN(factor, meta.number("rope.scaling.factor"));
    } else if (meta.has("rope.scale_linear")) {
      KITE_ASSIGN_OR_RETURN(factor, meta.number("rope.scale_linear"));
    }
    if (!(factor > 0.0) || !std::isfinite(factor)) {
      return error("the RoPE scaling factor " + std::to_string(factor) + " is not positive");
    }
    json scaling = {{"rope_type", type}, {"factor", float_for_json(factor)}};
    if (type == "linear") return scaling;
    if (type == "yarn") {
      KITE_ASSIGN_OR_RETURN(const uint64_t original,
                            meta.uint("rope.scaling.original_context_length"));
      scaling["original_max_position_embeddings"] = original;
      for (const auto& [gguf_key, hf_key] :
           {std::pair{"rope.scaling.yarn_beta_fast", "beta_fast"},
            std::pair{"rope.scaling.yarn_beta_slow", "beta_slow"}}) {
        if (meta.has(gguf_key)) {
          KITE_ASSIGN_OR_RETURN(const double value, meta.number(gguf_key));
          scaling[hf_key] = float_for_json(value);
        }
      }
      // llama.cpp scales cos and sin by transformers' attention factor (derived from the factor,
      // and yarn_log_multiplier as mscale_all_dim) times rope.scaling.attn_factor; its
      // yarn_attn_factor key is recomputed at load, so not read here.
      double log_multiplier = 0.0, multiplier = 1.0;
      if (meta.has("rope.scaling.yarn_log_multiplier")) {
        KITE_ASSIGN_OR_RETURN(log_multiplier, meta.number("rope.scaling.yarn_log_multiplier"));
      }
      if (meta.has("rope.scaling.attn_factor")) {
        KITE_ASSIGN_OR_RETURN(multiplier, meta.number("rope.scaling.attn_factor"));
      }
      if (log_multiplier != 0.0 || multiplier != 1.0) {
        const double derived =
            yarn_attention_factor(factor, log_multiplier != 0.0 ? 1.0 : 0.0, log_multiplier);
        scaling["attention_factor"] = float_for_json(derived * multiplier);
      }
      return scaling;
    }
    return unsupported(file_.path() + ": RoPE scaling type '" + type +
                       "' is not supported (Kite converts none, linear, yarn and Llama 3 scaling)");
  }

  // Llama 3.1+ GGUFs carry their RoPE scaling as per-frequency divisors in rope_freqs.weight
  // rather than as metadata. Recover Meta's parameters (factor, low_freq_factor 1,
  // high_freq_factor 4, original context 8192, the values every Llama 3 release uses) and check
  // that they reproduce the stored divisors.
  Result<json> llama3_rope_scaling() const {
    const GgufTensorInfo* info = file_.find_tensor(kRopeFrequencyFactors);
    if (!info) return json(nullptr);
    if (info->type != GgmlType::kF32 || info->element_count() != int64_t(head_dim_ / 2)) {
      return error("rope_freqs.weight should hold " + std::to_string(head_dim_ / 2) +
                   " float32 values");
    }
    std::vector<float> divisors(head_dim_ / 2);
    std::memcpy(divisors.data(), file_.tensor_data(*info).data(), divisors.size() * sizeof(float));
    const float factor = *std::max_element(divisors.begin(), divisors.end());
    if (factor == 1.0f) return json(nullptr);
    constexpr double kLowFrequencyFactor = 1.0, kHighFrequencyFactor = 4.0, kOriginalContext = 8192;
    const double rope_theta = config_["rope_theta"].get<double>();
    for (size_t i = 0; i < divisors.size(); ++i) {
      const double frequency = 1.0 / std::pow(rope_theta, double(2 * i) / double(head_dim_));
      const double wavelength = 2.0 * std::numbers::pi / frequency;
      double expected = 1.0;
      if (wavelength > kOriginalContext / kLowFrequencyFactor) {
        expected = factor;
      } else if (wavelength >= kOriginalContext / kHighFrequencyFactor) {
        const double smooth = (kOriginalContext / wavelength - kLowFrequencyFactor) /
                              (kHighFrequencyFactor - kLowFrequencyFactor);
        expected = 1.0 / ((1.0 - smooth) / factor + smooth);
      }
      if (std::fabs(double(divisors[i]) - expected) > 1e-4 * expected) {
        return unsupported(file_.path() + ": rope_freqs.weight does not follow Llama 3's RoPE " +
                           "scaling rule (divisor " + std::to_string(i) + " is " +
                           std::to_string(divisors[i]) + ", the rule gives " +
                           std::to_string(expected) + "); Kite cannot express it");
      }
    }
    return json{{"rope_type", "llama3"},
                {"factor", float_for_json(factor)},
                {"low_freq_factor", kLowFrequencyFactor},
                {"high_freq_factor", kHighFrequencyFactor},
                {"original_max_position_embeddings", int64_t(kOriginalContext)}};
  }

  Status map_tensors(const Architecture& architecture) {
    const auto& infos = file_.tensors();
    for (size_t index = 0; index < infos.size(); ++index) {
      const std::string& name = infos[index].name;
      MappedTensor mapped{index};
      std::string hf_name;
      uint64_t layer = 0;
      std::string suffix;
      if (name == "token_embd.weight") {
        hf_name = "model.embed_tokens.weight";
      } else if (name == "output_norm.weight") {
        hf_name = "model.norm.weight";
      } else if (name == "output.weight") {
        hf_name = "lm_head.weight";
      } else if (name == kRopeFrequencyFactors) {
        continue;  // folded into config.json's rope_scaling
      } else if (split_layer_name(name, &layer, &suffix)) {
        if (layer >= layer_count_) {
          return error("tensor '" + name + "' belongs to layer " + std::to_string(layer) +
                       " but the model has " + std::to_string(layer_count_) + " layers");
        }
        for (const LayerTensorName& layer_tensor : kLayerTensors) {
          if (layer_tensor.gguf == suffix) {
            hf_name = "model.layers." + std::to_string(layer) + "." + std::string(layer_tensor.hf);
          }
        }
        if (architecture.permuted_query_key && suffix.starts_with("attn_q.")) {
          mapped.row_order = RowOrder::kInterleavedHeads;
          mapped.heads = int64_t(head_count_);
        } else if (architecture.permuted_query_key && suffix.starts_with("attn_k.")) {
          mapped.row_order = RowOrder::kInterleavedHeads;
          mapped.heads = int64_t(kv_head_count_);
        }
      }
      if (hf_name.empty()) {
        return unsupported(file_.path() + ": tensor '" + name + "' has no Hugging Face " +
                           std::string(architecture.hf_class) +
                           " equivalent (mixture-of-experts and other variants of the "
                           "architecture are not supported)");
      }
      const GgufTensorInfo& info = infos[index];
      if (info.type != GgmlType::kF16 && info.type != GgmlType::kBF16 &&
          !ggml_type_dequantizable(info.type)) {
        return unsupported(file_.path() + ": tensor '" + name + "' has type " +
                           ggml_type_name(info.type) + ", which Kite cannot dequantize (it reads " +
                           dequantizable_type_names() + ")");
      }
      tensors_.emplace(hf_name, mapped);
    }
    return Status::ok();
  }

  // Every tensor must have the shape the config implies; this also guarantees the row counts
  // that deinterleave_heads() relies on.
  Status check_shapes() const {
    const int64_t hidden = int64_t(hidden_size_), intermediate = int64_t(intermediate_size_);
    const int64_t query = int64_t(head_count_ * head_dim_);
    const int64_t key_value = int64_t(kv_head_count_ * head_dim_);
    const int64_t vocab = int64_t(vocab_size_);
    const std::map<std::string, Shape> layer_shapes = {
        {"input_layernorm.weight", {hidden}},
        {"post_attention_layernorm.weight", {hidden}},
        {"self_attn.q_proj.weight", {query, hidden}},
        {"self_attn.q_proj.bias", {query}},
        {"self_attn.k_proj.weight", {key_value, hidden}},
        {"self_attn.k_proj.bias", {key_value}},
        {"self_attn.v_proj.weight", {key_value, hidden}},
        {"self_attn.v_proj.bias", {key_value}},
        {"self_attn.o_proj.weight", {hidden, query}},
        {"mlp.gate_proj.weight", {intermediate, hidden}},
        {"mlp.up_proj.weight", {intermediate, hidden}},
        {"mlp.down_proj.weight", {hidden, intermediate}},
    };
    for (const auto& [hf_name, mapped] : tensors_) {
      const GgufTensorInfo& info = file_.tensors()[mapped.index];
      Shape expected;
      if (hf_name == "model.embed_tokens.weight" || hf_name == "lm_head.weight") {
        expected = {vocab, hidden};
      } else if (hf_name == "model.norm.weight") {
        expected = {hidden};
      } else {
        // "model.layers.N.<suffix>"
        const size_t suffix_start = hf_name.find('.', std::string_view("model.layers.").size());
        expected = layer_shapes.at(hf_name.substr(suffix_start + 1));
      }
      if (info.row_major_shape() != expected) {
        return error("tensor '" + info.name + "' has shape " +
                     shape_to_string(info.row_major_shape()) + " but the metadata implies " +
                     shape_to_string(expected));
      }
    }
    if (!file_.find_tensor("output_norm.weight")) {
      return error("the model has no output_norm.weight tensor");
    }
    return Status::ok();
  }

  GgufFile file_;
  json config_;
  std::map<std::string, MappedTensor> tensors_;  // by HF name
  uint64_t hidden_size_ = 0, intermediate_size_ = 0, layer_count_ = 0;
  uint64_t head_count_ = 0, kv_head_count_ = 0, head_dim_ = 0, vocab_size_ = 0;
};

}  // namespace

Result<std::unique_ptr<ModelSource>> open_gguf_model(const std::string& path) {
  return GgufModelSource::open(path);
}

}  // namespace kite
