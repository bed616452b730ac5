// The Kite checkpoint (docs/checkpoint.md): a folder with config.json (model, dtype, parallel
// mapping, quantization), rank{i}.safetensors holding the weights under their Hugging Face names,
// and the tokenizer files. `kite convert` writes it; `kite build` reads it.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "core/dtype.h"
#include "core/status.h"
#include "formats/model_config.h"
#include "formats/quantization.h"
#include "formats/safetensors.h"

namespace kite {

inline constexpr int kCheckpointVersion = 1;

// How the model is split over ranks: world_size = tp_size * pp_size.
struct ParallelMapping {
  int world_size = 1;
  int tp_size = 1;  // tensor parallel: heads and MLP columns/rows split over ranks
  int pp_size = 1;  // pipeline parallel: layers split into stages

  bool operator==(const ParallelMapping&) const = default;
};

struct CheckpointConfig {
  ModelConfig model;
  DType dtype = DType::kF16;  // of every weight (and scale): float32, float16 or bfloat16
  ParallelMapping mapping;
  // The decoder's linear weights stored as int8 / int4 with scales (stored_weights()), or not.
  WeightOnlyConfig weight_only;
  // The KV cache dtype engines of this checkpoint default to (kite convert --fp8_kv_cache:
  // float8_e4m3), or none: the build's choice.
  std::optional<DType> kv_cache_dtype;
  // Informational: where the weights came from ("HF folder /x", "random (seed 0)").
  std::string converted_from;
  // What kite convert read: "huggingface", "gguf" or "random" ("" in checkpoints written before
  // the key); auto_weight_dtype reads it.
  std::string source_format;
  bool random_weights = false;
};

// The weight dtype of an engine built with `kite build --dtype auto`: the checkpoint's, except
// that CUDA engines (`cuda`), which compute in their weight dtype, get bfloat16 for a float32
// checkpoint and for a GGUF's whatever its dtype (an F16 GGUF says little about the model's range:
// llama.cpp's converter writes F16 from bfloat16 models too). Weight-only quantized checkpoints
// keep theirs.
DType auto_weight_dtype(const CheckpointConfig& config, bool cuda);

nlohmann::ordered_json checkpoint_config_to_json(const CheckpointConfig& config);
// Refuses other schema versions and quantizations this version cannot read.
Result<CheckpointConfig> checkpoint_config_from_json(const nlohmann::json& json,
                                                     const std::string& source);
Result<CheckpointConfig> read_checkpoint_config(const std::string& checkpoint_dir);
Status write_checkpoint_config(const std::string& checkpoint_dir, const CheckpointConfig& config);

// "<dir>/rank<rank>.safetensors"
std::string checkpoint_rank_path(const std::string& checkpoint_dir, int rank);

// Checks that `tp_size` x `pp_size` can split the model (heads, key/value heads and the MLP width
// divisible by tp; layers by pp). The error lists the sizes that would work.
Status check_parallel_mapping(const ModelConfig& model, int tp_size, int pp_size);

// A checkpoint opened for one rank, with every tensor stored_weights() lists present, of the
// dtype and shape its config implies.
class Checkpoint {
 public:
  static Result<Checkpoint> open(const std::string& checkpoint_dir, int rank = 0);

  const std::string& directory() const { return directory_; }
  const CheckpointConfig& config() const { return config_; }
  // A tensor by its Hugging Face name (or weight_scale_name()); the view lives as long as this
  // Checkpoint.
  Result<TensorView> weight(const std::string& name) const { return file_.tensor(name); }
  const SafetensorsFile& file() const { return file_; }

 private:
  std::string directory_;
  CheckpointConfig config_;
  SafetensorsFile file_;
};

}  // namespace kite
