// Conversion of a model (HF folder, GGUF file, or a config with random weights) into a Kite
// checkpoint, streamed tensor by tensor so memory stays around one tensor whatever the model size.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "core/dtype.h"
#include "core/status.h"
#include "core/tensor.h"
#include "formats/model_config.h"
#include "formats/quantization.h"

namespace kite {

struct ConvertRequest {
  // Exactly one input: a HF folder, a GGUF file, or (with `random`) a HF config.json file.
  std::string model_dir;
  std::string gguf_path;
  std::string config_path;
  std::string output_dir;
  // Defaults to the model's torch_dtype when that is float32/float16/bfloat16, else float16.
  std::optional<DType> dtype;
  // Weights drawn from N(0, 0.02^2) (norm weights 1) instead of read: for speed tests of shapes
  // one does not have the weights of. Only the config is read.
  bool random = false;
  uint64_t seed = 0;
  int tp_size = 1;
  int pp_size = 1;
  // --use_weight_only: the decoder's linear weights quantized to int8 / int4 (W8A16 / W4A16).
  WeightOnlyConfig weight_only;
  // --fp8_kv_cache: engines default to a float8_e4m3 KV cache (CheckpointConfig::kv_cache_dtype).
  bool fp8_kv_cache = false;
  bool show_progress = true;
};

struct ConvertSummary {
  std::string output_dir;
  std::string converted_from;
  DType dtype = DType::kF16;
  WeightOnlyConfig weight_only;
  size_t tensor_count = 0;
  uint64_t parameter_count = 0;
  uint64_t bytes_written = 0;
  bool tokenizer_copied = false;
};

Result<ConvertSummary> convert_to_checkpoint(const ConvertRequest& request);

// The random weight `convert --random` writes for `weight`: every element is a function of
// (seed, weight name, element index) only, so the values do not depend on thread count or on the
// other weights of the model.
Tensor random_weight(const WeightInfo& weight, DType dtype, uint64_t seed);

}  // namespace kite
