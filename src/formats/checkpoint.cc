// Kite checkpoint config (schema version 1), parallel-mapping checks and the checkpoint reader.
#include "formats/checkpoint.h"

#include <set>

#include "core/file.h"

namespace kite {
namespace {

std::string join(const std::vector<int64_t>& values) {
  std::string text;
  for (size_t i = 0; i < values.size(); ++i) text += (i ? ", " : "") + std::to_string(values[i]);
  return text;
}

bool tp_splits(const ModelConfig& model, int64_t tp) {
  // Key/value heads are split when there are enough of them and replicated otherwise (each rank
  // keeps a copy of its group's head), as TensorRT-LLM does for grouped-query attention.
  const bool kv_ok = model.num_key_value_heads % tp == 0 || tp % model.num_key_value_heads == 0;
  return model.num_attention_heads % tp == 0 && kv_ok && model.intermediate_size % tp == 0;
}

std::vector<int64_t> working_tp_sizes(const ModelConfig& model) {
  std::vector<int64_t> sizes;
  for (int64_t tp = 1; tp <= model.num_attention_heads; ++tp) {
    if (tp_splits(model, tp)) sizes.push_back(tp);
  }
  return sizes;
}

std::vector<int64_t> working_pp_sizes(const ModelConfig& model) {
  std::vector<int64_t> sizes;
  for (int64_t pp = 1; pp <= model.num_hidden_layers; ++pp) {
    if (model.num_hidden_layers % pp == 0) sizes.push_back(pp);
  }
  return sizes;
}

Result<int> positive_int(const nlohmann::json& object, const char* key, const std::string& source) {
  const auto found = object.find(key);
  if (found == object.end() || !found->is_number_integer() || found->get<int64_t>() < 1 ||
      found->get<int64_t>() > (1 << 20)) {
    return corrupt(source + ": mapping." + key + " must be a positive integer");
  }
  return int(found->get<int64_t>());
}

}  // namespace

DType auto_weight_dtype(const CheckpointConfig& config, bool cuda) {
  if (!cuda || config.weight_only.enabled()) return config.dtype;
  return config.dtype == DType::kF32 || config.source_format == "gguf" ? DType::kBF16
                                                                       : config.dtype;
}

nlohmann::ordered_json checkpoint_config_to_json(const CheckpointConfig& config) {
  // Keys in reading order: version, what the model is, its sizes, then how it is stored.
  nlohmann::ordered_json json = {{"kite_checkpoint_version", kCheckpointVersion}};
  const nlohmann::ordered_json model = model_config_to_json(config.model);
  json["architecture"] = model.at("architecture");
  json["dtype"] = dtype_name(config.dtype);
  for (const auto& [key, value] : model.items()) json[key] = value;
  json["mapping"] = {{"world_size", config.mapping.world_size},
                     {"tp_size", config.mapping.tp_size},
                     {"pp_size", config.mapping.pp_size}};
  json["quantization"] = {
      {"weight_only", weight_only_config_to_json(config.weight_only)},
      {"kv_cache", config.kv_cache_dtype
                       ? nlohmann::ordered_json(dtype_name(*config.kv_cache_dtype))
                       : nlohmann::ordered_json(nullptr)}};
  json["converted_from"] = config.converted_from;
  json["source_format"] = config.source_format;
  json["random_weights"] = config.random_weights;
  return json;
}

Result<CheckpointConfig> checkpoint_config_from_json(const nlohmann::json& json,
                                                     const std::string& source) {
  if (!json.is_object()) return corrupt(source + " is not a JSON object");
  const auto version = json.find("kite_checkpoint_version");
  if (version == json.end()) {
    return corrupt(source +
                   " is not a Kite checkpoint config (no kite_checkpoint_version); make a "
                   "checkpoint with kite convert");
  }
  if (!version->is_number_integer()) return corrupt(source + ": bad kite_checkpoint_version");
  if (version->get<int64_t>() != kCheckpointVersion) {
    return unsupported(source + " is a version " + std::to_string(version->get<int64_t>()) +
                       " checkpoint; this Kite reads version " +
                       std::to_string(kCheckpointVersion) + ": convert the model again");
  }
  CheckpointConfig config;
  KITE_ASSIGN_OR_RETURN(config.model, model_config_from_json(json, source));

  const auto dtype = json.find("dtype");
  if (dtype == json.end() || !dtype->is_string()) return corrupt(source + " lacks \"dtype\"");
  Result<DType> parsed = parse_dtype_name(dtype->get<std::string>());
  if (!parsed.is_ok() ||
      (*parsed != DType::kF32 && *parsed != DType::kF16 && *parsed != DType::kBF16)) {
    return corrupt(source + ": dtype '" + dtype->get<std::string>() +
                   "' is not one of float32, float16, bfloat16");
  }
  config.dtype = *parsed;

  const auto mapping = json.find("mapping");
  if (mapping == json.end() || !mapping->is_object())
    return corrupt(source + " lacks the \"mapping\" object");
  KITE_ASSIGN_OR_RETURN(config.mapping.world_size, positive_int(*mapping, "world_size", source));
  KITE_ASSIGN_OR_RETURN(config.mapping.tp_size, positive_int(*mapping, "tp_size", source));
  KITE_ASSIGN_OR_RETURN(config.mapping.pp_size, positive_int(*mapping, "pp_size", source));
  if (config.mapping.world_size != config.mapping.tp_size * config.mapping.pp_size) {
    return corrupt(source + ": mapping.world_size " + std::to_string(config.mapping.world_size) +
                   " is not tp_size x pp_size");
  }

  // Any quantization this version does not know would be silently misread as plain weights.
  const auto quantization = json.find("quantization");
  if (quantization != json.end() && !quantization->is_null()) {
    if (!quantization->is_object()) return corrupt(source + ": \"quantization\" is not an object");
    for (const auto& [key, value] : quantization->items()) {
      if (value.is_null()) continue;
      if (key == "weight_only") {
        KITE_ASSIGN_OR_RETURN(config.weight_only, weight_only_config_from_json(value, source));
        continue;
      }
      if (key == "kv_cache" && value == dtype_name(DType::kF8E4M3)) {
        config.kv_cache_dtype = DType::kF8E4M3;
        continue;
      }
      return unsupported(source + ": quantization " + key + " = " + value.dump() +
                         " is not supported by this version of Kite");
    }
  }
  KITE_RETURN_IF_ERROR(check_weight_only(config.model, config.weight_only).with_context(source));
  const auto from = json.find("converted_from");
  if (from != json.end() && from->is_string()) config.converted_from = from->get<std::string>();
  const auto format = json.find("source_format");
  if (format != json.end() && format->is_string())
    config.source_format = format->get<std::string>();
  const auto random = json.find("random_weights");
  if (random != json.end() && random->is_boolean()) config.random_weights = random->get<bool>();
  return config;
}

Result<CheckpointConfig> read_checkpoint_config(const std::string& checkpoint_dir) {
  if (!is_directory(checkpoint_dir))
    return not_found("checkpoint folder " + checkpoint_dir + " does not exist");
  const std::string path = checkpoint_dir + "/config.json";
  if (!path_exists(path)) {
    return not_found(checkpoint_dir +
                     " has no config.json; is it a Kite checkpoint (made by kite "
                     "convert)?");
  }
  KITE_ASSIGN_OR_RETURN(std::string text, read_file(path));
  const nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) return corrupt(path + " is not valid JSON");
  return checkpoint_config_from_json(json, path);
}

Status write_checkpoint_config(const std::string& checkpoint_dir, const CheckpointConfig& config) {
  return write_file(checkpoint_dir + "/config.json",
                    checkpoint_config_to_json(config).dump(2) + "\n");
}

std::string checkpoint_rank_path(const std::string& checkpoint_dir, int rank) {
  return checkpoint_dir + "/rank" + std::to_string(rank) + ".safetensors";
}

Status check_parallel_mapping(const ModelConfig& model, int tp_size, int pp_size) {
  if (tp_size < 1 || pp_size < 1) {
    return invalid_argument("--tp_size and --pp_size must be at least 1 (got " +
                            std::to_string(tp_size) + " and " + std::to_string(pp_size) + ")");
  }
  if (!tp_splits(model, tp_size)) {
    std::string reason;
    if (model.num_attention_heads % tp_size != 0) {
      reason = "num_attention_heads " + std::to_string(model.num_attention_heads) +
               " is not a multiple of it";
    } else if (model.intermediate_size % tp_size != 0) {
      reason = "intermediate_size " + std::to_string(model.intermediate_size) +
               " is not a multiple of it";
    } else {
      reason = "num_key_value_heads " + std::to_string(model.num_key_value_heads) +
               " neither divides it nor is a multiple of it";
    }
    return invalid_argument("--tp_size " + std::to_string(tp_size) + " cannot split this model: " +
                            reason + "; tp sizes that work: " + join(working_tp_sizes(model)));
  }
  if (model.num_hidden_layers % pp_size != 0) {
    return invalid_argument(
        "--pp_size " + std::to_string(pp_size) + " cannot split this model: num_hidden_layers " +
        std::to_string(model.num_hidden_layers) +
        " is not a multiple of it; pp sizes that work: " + join(working_pp_sizes(model)));
  }
  return Status::ok();
}

Result<Checkpoint> Checkpoint::open(const std::string& checkpoint_dir, int rank) {
  Checkpoint checkpoint;
  checkpoint.directory_ = checkpoint_dir;
  KITE_ASSIGN_OR_RETURN(checkpoint.config_, read_checkpoint_config(checkpoint_dir));
  const ParallelMapping& mapping = checkpoint.config_.mapping;
  if (mapping.world_size != 1) {
    return unsupported(checkpoint_dir + " is split over " + std::to_string(mapping.world_size) +
                       " ranks; this version of Kite reads single-rank checkpoints");
  }
  if (rank < 0 || rank >= mapping.world_size) {
    return invalid_argument("rank " + std::to_string(rank) + " is outside the checkpoint's " +
                            std::to_string(mapping.world_size) + " ranks");
  }
  const std::string path = checkpoint_rank_path(checkpoint_dir, rank);
  KITE_ASSIGN_OR_RETURN(checkpoint.file_, SafetensorsFile::open(path));

  std::set<std::string> expected;
  const CheckpointConfig& config = checkpoint.config_;
  for (const StoredWeight& weight :
       stored_weights(config.model, config.dtype, config.weight_only)) {
    const SafetensorsEntry* entry = checkpoint.file_.entry(weight.name);
    if (!entry) {
      return corrupt(path + " lacks weight '" + weight.name +
                     "' that config.json implies; convert the model again");
    }
    if (entry->dtype != weight.dtype || entry->shape != weight.shape) {
      return corrupt(path + ": weight '" + weight.name + "' is " +
                     std::string(dtype_name(entry->dtype)) + " " + shape_to_string(entry->shape) +
                     " but config.json implies " + std::string(dtype_name(weight.dtype)) + " " +
                     shape_to_string(weight.shape));
    }
    expected.insert(weight.name);
  }
  for (const std::string& name : checkpoint.file_.names()) {
    if (!expected.count(name)) {
      return corrupt(path + " has weight '" + name +
                     "' that config.json does not describe; convert the model again");
    }
  }
  return checkpoint;
}

}  // namespace kite
