// Weight-only quantization (W8A16 / W4A16, as TensorRT-LLM's --use_weight_only): the decoder's
// linear weights stored as symmetric int8 or int4 with a floating scale per output row (per
// channel) or per group of input columns, and everything else in the checkpoint's dtype. This
// file holds the stored layout (docs/checkpoint.md), the quantizer `kite convert` runs and the
// dequantizer the tests and the CPU backend's reference use.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"
#include "core/tensor.h"
#include "formats/model_config.h"

namespace kite {

enum class WeightOnlyPrecision : uint8_t { kNone, kInt8, kInt4 };

// "int8", "int4" ("none" for kNone).
std::string_view weight_only_precision_name(WeightOnlyPrecision precision);
Result<WeightOnlyPrecision> parse_weight_only_precision(std::string_view name);

struct WeightOnlyConfig {
  WeightOnlyPrecision precision = WeightOnlyPrecision::kNone;
  // Input columns per scale; 0: one scale per output row (per channel).
  int64_t group_size = 0;

  bool enabled() const { return precision != WeightOnlyPrecision::kNone; }
  // Columns per scale of a weight with `in_features` columns.
  int64_t columns_per_scale(int64_t in_features) const {
    return group_size > 0 ? group_size : in_features;
  }
  bool operator==(const WeightOnlyConfig&) const = default;
};

// quantization.weight_only as config.json writes it: {"precision": "int8", "group_size": 0}
// (0: per channel), or null when the weights are not quantized. Checkpoints and engines share it.
nlohmann::json weight_only_config_to_json(const WeightOnlyConfig& config);
Result<WeightOnlyConfig> weight_only_config_from_json(const nlohmann::json& json,
                                                      const std::string& source);

// A one-line description: "int8 per channel", "int4, groups of 128".
std::string describe_weight_only(const WeightOnlyConfig& config);

// Whether `weight` is stored quantized under `config`: the linear weights of the decoder layers.
// The LM head stays floating (as in TensorRT-LLM's default), and so do embeddings, norms, biases.
bool is_weight_only_quantized(const WeightInfo& weight, const WeightOnlyConfig& config);

// "<module>.weight" -> "<module>.weight_scale": where a quantized weight's scales are stored.
std::string weight_scale_name(const std::string& weight_name);

// Refuses configs that cannot quantize this model: int4 needs an even number of input columns,
// and a group size must be positive, even and divide every quantized weight's input columns.
Status check_weight_only(const ModelConfig& model, const WeightOnlyConfig& config);

// One tensor as a checkpoint or an engine stores it.
struct StoredWeight {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
};
// Every tensor stored for `model` in floating `dtype`: model_weights() in order, each quantized
// weight [N, K] as its values (int8 [N, K], or int4 packed two to a byte as uint8 [N, K / 2]: the
// even column in the low nibble, both two's complement) followed by its scales [N, K / group]
// ("<module>.weight_scale", in `dtype`).
std::vector<StoredWeight> stored_weights(const ModelConfig& model, DType dtype,
                                         const WeightOnlyConfig& config);

struct QuantizedWeight {
  Tensor values;  // int8 [N, K] or uint8 [N, K / 2]
  Tensor scales;  // [N, K / group] in the scale dtype
};
// Symmetric quantization of a floating [N, K] weight: each group's scale is its largest magnitude
// over 127 (int8) or 7 (int4), rounded to `scale_dtype` first, and each value round(w / scale)
// clamped to [-127, 127] or [-8, 7], so that values x scales is the stored weight. Non-finite
// weights are refused.
Result<QuantizedWeight> quantize_weight_only(const TensorView& weight, DType scale_dtype,
                                             const WeightOnlyConfig& config);
// values x scales as float32 [N, K]: what every backend's quantized linear multiplies by.
Tensor dequantize_weight_only(const TensorView& values, const TensorView& scales,
                              const WeightOnlyConfig& config);

}  // namespace kite
