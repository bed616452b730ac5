// `kite convert`'s pipeline: read the model's HF config, check the request, then stream every
// weight (read and cast, or drawn at random) into rank0.safetensors, and write config.json last so
// an interrupted conversion never looks like a complete checkpoint.
#include "formats/convert.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <vector>

#include "core/file.h"
#include "core/half.h"
#include "core/parallel.h"
#include "core/progress.h"
#include "formats/checkpoint.h"
#include "formats/model_source.h"
#include "formats/safetensors.h"

namespace kite {
namespace {

constexpr float kRandomStddev = 0.02f;

uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t fnv1a(const std::string& text) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (unsigned char c : text) hash = (hash ^ c) * 0x100000001b3ull;
  return hash;
}

// Writes value as element `index` of a float32/float16/bfloat16 buffer.
template <DType kDType>
void store(uint8_t* data, size_t index, float value) {
  if constexpr (kDType == DType::kF32) {
    std::memcpy(data + index * 4, &value, 4);
  } else {
    const uint16_t bits = kDType == DType::kF16 ? float_to_fp16(value) : float_to_bf16(value);
    std::memcpy(data + index * 2, &bits, 2);
  }
}

// Box-Muller over a counter-based generator: pair p of a tensor comes from mix64(key + p), so any
// range of elements can be produced independently.
template <DType kDType>
void fill_normal(uint8_t* data, size_t count, uint64_t key, float scale) {
  const size_t pairs = (count + 1) / 2;
  parallel_for(pairs, size_t{1} << 18, [&](size_t begin, size_t end) {
    constexpr float kTwoPi = 6.28318530717958647692f;
    constexpr float kTwoToMinus24 = 1.0f / 16777216.0f;
    for (size_t pair = begin; pair < end; ++pair) {
      const uint64_t bits = mix64(key + (pair + 1) * 0x9e3779b97f4a7c15ull);
      const float uniform1 = (float(bits >> 40) + 0.5f) * kTwoToMinus24;  // in (0, 1)
      const float uniform2 = float(bits & 0xffffff) * kTwoToMinus24;      // in [0, 1)
      const float radius = std::sqrt(-2.0f * std::log(uniform1)) * scale;
      const float angle = kTwoPi * uniform2;
      store<kDType>(data, 2 * pair, radius * std::cos(angle));
      if (2 * pair + 1 < count) store<kDType>(data, 2 * pair + 1, radius * std::sin(angle));
    }
  });
}

template <DType kDType>
void fill_constant(uint8_t* data, size_t count, float value) {
  for (size_t i = 0; i < count; ++i) store<kDType>(data, i, value);
}

template <DType kDType>
void fill_random_weight(const WeightInfo& weight, uint64_t seed, Tensor* tensor) {
  const size_t count = size_t(tensor->numel());
  if (weight.role == WeightRole::kNorm) {
    fill_constant<kDType>(tensor->data(), count, 1.0f);
  } else {
    fill_normal<kDType>(tensor->data(), count, mix64(seed) ^ fnv1a(weight.name), kRandomStddev);
  }
}

// Source tensors a Llama-family model does not need but that some exports carry.
bool is_ignorable_extra(const std::string& name, const ModelConfig& config) {
  const std::string suffix = ".rotary_emb.inv_freq";  // a buffer older transformers saved
  if (name.size() > suffix.size() && name.ends_with(suffix)) return true;
  return name == "lm_head.weight" && config.tie_word_embeddings;
}

Status check_source_tensors(const ModelSource& source, const ModelConfig& config,
                            const std::vector<WeightInfo>& weights) {
  std::set<std::string> expected;
  for (const WeightInfo& weight : weights) {
    expected.insert(weight.name);
    Result<Shape> shape = source.tensor_shape(weight.name);
    if (!shape.is_ok()) {
      if (shape.status().code() != StatusCode::kNotFound) return shape.status();
      return corrupt(source.description() + " lacks tensor '" + weight.name + "' that a " +
                     std::string(architecture_name(config.architecture)) +
                     " model with its config.json needs");
    }
    if (*shape != weight.shape) {
      return corrupt(source.description() + ": tensor '" + weight.name + "' has shape " +
                     shape_to_string(*shape) + " but config.json implies " +
                     shape_to_string(weight.shape));
    }
  }
  std::vector<std::string> unknown;
  for (const std::string& name : source.tensor_names()) {
    if (!expected.count(name) && !is_ignorable_extra(name, config)) unknown.push_back(name);
  }
  if (!unknown.empty()) {
    return unsupported(source.description() + " has " + std::to_string(unknown.size()) +
                       " tensor(s) a " + std::string(architecture_name(config.architecture)) +
                       " model does not use (first: '" + unknown.front() +
                       "'); its config.json does not describe these weights");
  }
  return Status::ok();
}

DType default_dtype(const ModelConfig& config) {
  if (config.torch_dtype == "float32") return DType::kF32;
  if (config.torch_dtype == "bfloat16") return DType::kBF16;
  return DType::kF16;
}

Result<nlohmann::json> read_json_file(const std::string& path) {
  KITE_ASSIGN_OR_RETURN(std::string text, read_file(path));
  nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) return corrupt(path + " is not valid JSON");
  return json;
}

Status check_request(const ConvertRequest& request) {
  const int inputs = int(!request.model_dir.empty()) + int(!request.gguf_path.empty()) +
                     int(!request.config_path.empty());
  if (!request.config_path.empty() && !request.random) {
    return invalid_argument(
        "--config is only for --random (random weights of a config); to convert a model use "
        "--model_dir DIR or --gguf FILE");
  }
  if (inputs != 1) {
    return invalid_argument(request.random
                                ? "give one of --model_dir DIR, --config FILE or --gguf FILE"
                                : "give one of --model_dir DIR (a Hugging Face folder) or --gguf "
                                  "FILE");
  }
  if (request.output_dir.empty()) return invalid_argument("--output_dir is required");
  if (request.dtype && *request.dtype != DType::kF32 && *request.dtype != DType::kF16 &&
      *request.dtype != DType::kBF16) {
    return invalid_argument("--dtype must be float32, float16 or bfloat16");
  }
  if (path_exists(request.output_dir) && !is_directory(request.output_dir))
    return invalid_argument("--output_dir " + request.output_dir + " is a file, not a folder");
  if (!request.model_dir.empty() && is_directory(request.model_dir) &&
      is_directory(request.output_dir)) {
    std::error_code error;
    if (std::filesystem::equivalent(request.model_dir, request.output_dir, error)) {
      return invalid_argument(
          "--output_dir is the model folder itself; choose another folder "
          "(the checkpoint's config.json would replace the model's)");
    }
  }
  return Status::ok();
}

// Creates the output folder. An earlier checkpoint there is replaced: its config.json goes first,
// so a conversion that fails half-way leaves no config.json describing other weights. Any other
// config.json (a HF model folder, say) is left alone and the conversion refused.
Status prepare_output_dir(const std::string& output_dir) {
  const std::string config_path = output_dir + "/config.json";
  if (path_exists(config_path)) {
    Result<nlohmann::json> existing = read_json_file(config_path);
    if (!existing.is_ok() || !existing->is_object() ||
        !existing->contains("kite_checkpoint_version")) {
      return invalid_argument("--output_dir " + output_dir +
                              " holds a config.json that is not a Kite checkpoint's; choose an "
                              "empty or new folder");
    }
    std::error_code error;
    if (!std::filesystem::remove(config_path, error) || error)
      return io_error("cannot replace " + config_path + ": " + error.message());
  }
  return create_directories(output_dir);
}

}  // namespace

Tensor random_weight(const WeightInfo& weight, DType dtype, uint64_t seed) {
  Tensor tensor(dtype, weight.shape);
  switch (dtype) {
    case DType::kF32:
      fill_random_weight<DType::kF32>(weight, seed, &tensor);
      break;
    case DType::kF16:
      fill_random_weight<DType::kF16>(weight, seed, &tensor);
      break;
    case DType::kBF16:
      fill_random_weight<DType::kBF16>(weight, seed, &tensor);
      break;
    default:
      KITE_CHECK(false && "random weights are float32, float16 or bfloat16");
  }
  return tensor;
}

Result<ConvertSummary> convert_to_checkpoint(const ConvertRequest& request) {
  KITE_RETURN_IF_ERROR(check_request(request));

  // The HF config and, unless the weights are random, the model to read them from.
  std::unique_ptr<ModelSource> source;
  nlohmann::json hf_config;
  std::string config_source;
  if (!request.gguf_path.empty()) {
    KITE_ASSIGN_OR_RETURN(source, open_gguf_model(request.gguf_path));
    hf_config = source->hf_config();
    config_source = source->description();
  } else if (request.random) {
    // Random weights need the config only: no tensor file is opened, so a folder holding just
    // config.json (or a lone config file) is enough.
    config_source = request.config_path;
    if (config_source.empty()) {
      if (!is_directory(request.model_dir))
        return not_found("model folder " + request.model_dir + " does not exist");
      config_source = request.model_dir + "/config.json";
      if (!path_exists(config_source)) return not_found(request.model_dir + " has no config.json");
    }
    KITE_ASSIGN_OR_RETURN(hf_config, read_json_file(config_source));
  } else {
    KITE_ASSIGN_OR_RETURN(source, open_hf_directory(request.model_dir));
    hf_config = source->hf_config();
    config_source = request.model_dir + "/config.json";
  }
  KITE_ASSIGN_OR_RETURN(ModelConfig model, parse_hf_config(hf_config, config_source));
  KITE_RETURN_IF_ERROR(check_parallel_mapping(model, request.tp_size, request.pp_size));
  KITE_RETURN_IF_ERROR(check_weight_only(model, request.weight_only));
  if (request.tp_size > 1 || request.pp_size > 1) {
    return unsupported(
        "tensor/pipeline parallel conversion is not supported yet; use --tp_size 1 --pp_size 1");
  }

  const std::vector<WeightInfo> weights = model_weights(model);
  if (!request.random) KITE_RETURN_IF_ERROR(check_source_tensors(*source, model, weights));

  CheckpointConfig checkpoint;
  checkpoint.model = model;
  checkpoint.dtype = request.dtype.value_or(default_dtype(model));
  checkpoint.weight_only = request.weight_only;
  if (request.fp8_kv_cache) checkpoint.kv_cache_dtype = DType::kF8E4M3;
  checkpoint.random_weights = request.random;
  checkpoint.source_format = request.random               ? "random"
                             : !request.gguf_path.empty() ? "gguf"
                                                          : "huggingface";
  checkpoint.converted_from =
      request.random
          ? "random weights (seed " + std::to_string(request.seed) + ") for " + config_source
          : source->description();

  KITE_RETURN_IF_ERROR(prepare_output_dir(request.output_dir));
  ConvertSummary summary;
  summary.output_dir = request.output_dir;
  summary.converted_from = checkpoint.converted_from;
  summary.dtype = checkpoint.dtype;
  summary.weight_only = checkpoint.weight_only;
  // Tokenizer files first: they are small, and a folder we cannot write to fails here at once.
  if (source) {
    const Status copied = source->write_tokenizer_files(request.output_dir);
    // Random weights do not need a tokenizer (benchmarks feed token ids).
    if (!copied.is_ok() && !(request.random && copied.code() == StatusCode::kNotFound))
      return copied;
    summary.tokenizer_copied = copied.is_ok();
  } else if (!request.model_dir.empty()) {
    KITE_ASSIGN_OR_RETURN(summary.tokenizer_copied,
                          copy_hf_tokenizer_files(request.model_dir, request.output_dir,
                                                  /*required=*/false));
  }

  // Each quantized weight is stored as two tensors, its values then its scales: stored[i] comes
  // from weights[source_index[i]].
  const std::vector<StoredWeight> stored =
      stored_weights(model, checkpoint.dtype, checkpoint.weight_only);
  std::vector<size_t> source_index;
  SafetensorsWriter writer;
  writer.set_metadata("format", "pt");  // lets transformers' safe_open load the file as torch
  writer.set_metadata("kite_checkpoint_version", std::to_string(kCheckpointVersion));
  for (size_t i = 0, weight = 0; i < stored.size(); ++i) {
    // The scales of the weight before.
    if (weight == weights.size() || stored[i].name != weights[weight].name) --weight;
    source_index.push_back(weight++);
    writer.declare(stored[i].name, stored[i].dtype, stored[i].shape);
    summary.bytes_written += uint64_t(shape_numel(stored[i].shape)) * dtype_size(stored[i].dtype);
  }
  for (const WeightInfo& weight : weights) {
    summary.parameter_count += uint64_t(shape_numel(weight.shape));
  }
  summary.tensor_count = stored.size();

  std::unique_ptr<Progress> progress;
  if (request.show_progress)
    progress = std::make_unique<Progress>("convert", int64_t(stored.size()));
  std::optional<Tensor> pending_scales;  // of the weight whose values were produced last
  auto produce = [&](size_t index) -> Result<Tensor> {
    const WeightInfo& weight = weights[source_index[index]];
    if (stored[index].name != weight.name) {
      KITE_CHECK(pending_scales.has_value());
      Tensor scales = std::move(*pending_scales);
      pending_scales.reset();
      return scales;
    }
    Tensor tensor;
    if (request.random) {
      tensor = random_weight(weight, checkpoint.dtype, request.seed);
    } else {
      KITE_ASSIGN_OR_RETURN(tensor, source->load_tensor(weight.name));
    }
    if (is_weight_only_quantized(weight, checkpoint.weight_only)) {
      Result<QuantizedWeight> quantized =
          quantize_weight_only(tensor.view(), checkpoint.dtype, checkpoint.weight_only);
      if (!quantized.is_ok())
        return quantized.status().with_context("weight '" + weight.name + "'");
      pending_scales = std::move(quantized->scales);
      return std::move(quantized->values);
    }
    if (tensor.dtype() == checkpoint.dtype) return tensor;
    return convert_dtype(tensor.view(), checkpoint.dtype);
  };
  auto on_progress = [&](size_t index) {
    if (progress) progress->update(int64_t(index + 1), stored[index].name);
  };
  KITE_RETURN_IF_ERROR(
      writer.write(checkpoint_rank_path(request.output_dir, 0), produce, on_progress));
  if (progress) progress->finish();
  KITE_RETURN_IF_ERROR(write_checkpoint_config(request.output_dir, checkpoint));
  return summary;
}

}  // namespace kite
