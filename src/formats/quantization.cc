// Weight-only quantization: the stored layout, the quantizer and the dequantizer.
#include "formats/quantization.h"

#include <algorithm>
#include <atomic>
#include <cmath>

#include "core/half.h"
#include "core/parallel.h"

namespace kite {
namespace {

int quantized_max(WeightOnlyPrecision precision) {
  return precision == WeightOnlyPrecision::kInt8 ? 127 : 7;
}

// `value` as `dtype` stores it (float32, float16 or bfloat16), read back as float.
float round_to(float value, DType dtype) {
  uint8_t stored[4];
  store_float(dtype, stored, 0, value);
  return load_float(dtype, stored, 0);
}

}  // namespace

std::string_view weight_only_precision_name(WeightOnlyPrecision precision) {
  switch (precision) {
    case WeightOnlyPrecision::kInt8:
      return "int8";
    case WeightOnlyPrecision::kInt4:
      return "int4";
    case WeightOnlyPrecision::kNone:
      break;
  }
  return "none";
}

Result<WeightOnlyPrecision> parse_weight_only_precision(std::string_view name) {
  if (name == "int8") return WeightOnlyPrecision::kInt8;
  if (name == "int4") return WeightOnlyPrecision::kInt4;
  return invalid_argument("weight-only precision '" + std::string(name) +
                          "' is not one of int8, int4");
}

nlohmann::json weight_only_config_to_json(const WeightOnlyConfig& config) {
  if (!config.enabled()) return nullptr;
  return {{"precision", weight_only_precision_name(config.precision)},
          {"group_size", config.group_size}};
}

Result<WeightOnlyConfig> weight_only_config_from_json(const nlohmann::json& json,
                                                      const std::string& source) {
  const std::string what = source + ": quantization.weight_only";
  if (json.is_null()) return WeightOnlyConfig{};
  if (!json.is_object()) return corrupt(what + " is not an object");
  const auto precision = json.find("precision");
  const auto group_size = json.find("group_size");
  if (precision == json.end() || !precision->is_string())
    return corrupt(what + " lacks \"precision\"");
  if (group_size == json.end() || !group_size->is_number_integer())
    return corrupt(what + " lacks an integer \"group_size\"");
  WeightOnlyConfig config;
  Result<WeightOnlyPrecision> parsed = parse_weight_only_precision(precision->get<std::string>());
  if (!parsed.is_ok()) {
    return unsupported(what + ".precision '" + precision->get<std::string>() +
                       "' is not supported by this version of Kite (int8, int4)");
  }
  config.precision = *parsed;
  config.group_size = group_size->get<int64_t>();
  return config;
}

std::string describe_weight_only(const WeightOnlyConfig& config) {
  if (!config.enabled()) return "none";
  std::string text(weight_only_precision_name(config.precision));
  if (config.group_size > 0) return text + ", groups of " + std::to_string(config.group_size);
  return text + " per channel";
}

bool is_weight_only_quantized(const WeightInfo& weight, const WeightOnlyConfig& config) {
  return config.enabled() && weight.role == WeightRole::kLinear && weight.name != "lm_head.weight";
}

std::string weight_scale_name(const std::string& weight_name) {
  return weight_name + "_scale";
}

Status check_weight_only(const ModelConfig& model, const WeightOnlyConfig& config) {
  if (!config.enabled()) return Status::ok();
  if (config.group_size < 0 || config.group_size % 2 != 0) {
    return invalid_argument("--group_size " + std::to_string(config.group_size) +
                            " must be a positive even number (64 and 128 are usual)");
  }
  for (const WeightInfo& weight : model_weights(model)) {
    if (!is_weight_only_quantized(weight, config)) continue;
    const int64_t columns = weight.shape[1];
    if (config.precision == WeightOnlyPrecision::kInt4 && columns % 2 != 0) {
      return unsupported("int4 weight-only quantization packs two columns to a byte, but '" +
                         weight.name + "' has " + std::to_string(columns) +
                         " columns; use --weight_only_precision int8");
    }
    if (config.group_size > 0 && columns % config.group_size != 0) {
      return invalid_argument("--group_size " + std::to_string(config.group_size) +
                              " does not divide the " + std::to_string(columns) + " columns of '" +
                              weight.name + "'; choose a divisor of " + std::to_string(columns) +
                              " or leave out --per_group");
    }
  }
  return Status::ok();
}

std::vector<StoredWeight> stored_weights(const ModelConfig& model, DType dtype,
                                         const WeightOnlyConfig& config) {
  std::vector<StoredWeight> stored;
  for (const WeightInfo& weight : model_weights(model)) {
    if (!is_weight_only_quantized(weight, config)) {
      stored.push_back({weight.name, dtype, weight.shape});
      continue;
    }
    const int64_t rows = weight.shape[0], columns = weight.shape[1];
    if (config.precision == WeightOnlyPrecision::kInt8) {
      stored.push_back({weight.name, DType::kI8, {rows, columns}});
    } else {
      stored.push_back({weight.name, DType::kU8, {rows, columns / 2}});
    }
    stored.push_back({weight_scale_name(weight.name),
                      dtype,
                      {rows, columns / config.columns_per_scale(columns)}});
  }
  return stored;
}

Result<QuantizedWeight> quantize_weight_only(const TensorView& weight, DType scale_dtype,
                                             const WeightOnlyConfig& config) {
  KITE_CHECK(config.enabled() && weight.shape.size() == 2);
  const int64_t rows = weight.shape[0], columns = weight.shape[1];
  const int64_t group = config.columns_per_scale(columns);
  KITE_CHECK(group > 0 && columns % group == 0);
  KITE_ASSIGN_OR_RETURN(std::vector<float> values, to_float32(weight));
  const bool int4 = config.precision == WeightOnlyPrecision::kInt4;
  KITE_CHECK(!int4 || columns % 2 == 0);
  const int limit = quantized_max(config.precision);
  const int lowest = int4 ? -8 : -127;

  QuantizedWeight quantized;
  quantized.values = Tensor(int4 ? DType::kU8 : DType::kI8, {rows, int4 ? columns / 2 : columns});
  quantized.scales = Tensor(scale_dtype, {rows, columns / group});
  uint8_t* packed = quantized.values.data();
  std::memset(packed, 0, quantized.values.byte_size());
  // Rows on every core; a row that is not finite is noted (the first one found is reported).
  std::atomic<int64_t> bad_row{-1}, bad_column{-1};
  parallel_for(size_t(rows), 64, [&](size_t first_row, size_t end_row) {
    for (int64_t row = int64_t(first_row); row < int64_t(end_row); ++row) {
      for (int64_t start = 0; start < columns; start += group) {
        const float* source = values.data() + row * columns + start;
        float largest = 0.0f;
        for (int64_t i = 0; i < group; ++i) {
          if (!std::isfinite(source[i])) {
            int64_t none = -1;
            if (bad_row.compare_exchange_strong(none, row)) bad_column = start + i;
            return;
          }
          largest = std::max(largest, std::fabs(source[i]));
        }
        const float scale = round_to(largest / float(limit), scale_dtype);
        store_float(scale_dtype, quantized.scales.data(),
                    size_t(row * (columns / group) + start / group), scale);
        for (int64_t i = 0; i < group; ++i) {
          const int64_t column = start + i;
          const float ratio = scale > 0.0f ? source[i] / scale : 0.0f;
          const int level = int(std::clamp(std::nearbyint(ratio), float(lowest), float(limit)));
          if (int4) {
            const uint8_t nibble = uint8_t(level) & 0x0fu;
            packed[row * (columns / 2) + column / 2] |= column % 2 ? uint8_t(nibble << 4) : nibble;
          } else {
            packed[row * columns + column] = uint8_t(int8_t(level));
          }
        }
      }
    }
  });
  if (bad_row >= 0) {
    return corrupt("row " + std::to_string(bad_row.load()) + " column " +
                   std::to_string(bad_column.load()) +
                   " is not a finite number; it cannot be quantized");
  }
  return quantized;
}

Tensor dequantize_weight_only(const TensorView& values, const TensorView& scales,
                              const WeightOnlyConfig& config) {
  KITE_CHECK(config.enabled() && values.shape.size() == 2 && scales.shape.size() == 2);
  const bool int4 = config.precision == WeightOnlyPrecision::kInt4;
  const int64_t rows = values.shape[0];
  const int64_t columns = int4 ? values.shape[1] * 2 : values.shape[1];
  const int64_t group = config.columns_per_scale(columns);
  KITE_CHECK(scales.shape[0] == rows && scales.shape[1] * group == columns);
  const std::vector<float> scale_values = to_float32(scales).value();
  Tensor weight(DType::kF32, {rows, columns});
  float* out = weight.data_as<float>();
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t column = 0; column < columns; ++column) {
      int level;
      if (int4) {
        level = int4_level(values.data[row * (columns / 2) + column / 2], column % 2);
      } else {
        level = int8_t(values.data[row * columns + column]);
      }
      out[row * columns + column] =
          float(level) * scale_values[size_t(row * (columns / group) + column / group)];
    }
  }
  return weight;
}

}  // namespace kite
