// Tests of weight-only quantization's stored layout, quantizer and dequantizer: error bounds,
// the int4 nibble order, scales rounded before the values are chosen, refusals of shapes and
// values that cannot be quantized, and the config's JSON form.
#include "formats/quantization.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/half.h"

namespace kite {
namespace {

Tensor random_weight(int64_t rows, int64_t columns, uint32_t seed) {
  std::mt19937 generator(seed);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  Tensor weight(DType::kF32, {rows, columns});
  for (int64_t i = 0; i < weight.numel(); ++i) weight.data_as<float>()[i] = normal(generator);
  return weight;
}

ModelConfig small_model() {
  ModelConfig model;
  model.hidden_size = 64;
  model.intermediate_size = 96;
  model.num_attention_heads = 4;
  model.num_key_value_heads = 2;
  model.head_dim = 16;
  model.num_hidden_layers = 2;
  model.vocab_size = 100;
  return model;
}

// Every value is within half a step of the original, and the scale of each group is its largest
// magnitude over the largest level, as stored (rounded to the scale dtype).
void expect_quantized_within_half_a_step(WeightOnlyConfig config, DType scale_dtype) {
  const int64_t rows = 9, columns = 128;
  const Tensor weight = random_weight(rows, columns, 3);
  const QuantizedWeight quantized =
      quantize_weight_only(weight.view(), scale_dtype, config).value();
  const int64_t group = config.columns_per_scale(columns);
  ASSERT_EQ(quantized.scales.shape(), (Shape{rows, columns / group}));
  const Tensor dequantized =
      dequantize_weight_only(quantized.values.view(), quantized.scales.view(), config);
  const std::vector<float> scales = to_float32(quantized.scales.view()).value();
  const float levels = config.precision == WeightOnlyPrecision::kInt8 ? 127.0f : 7.0f;
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t start = 0; start < columns; start += group) {
      const float scale = scales[size_t(row * (columns / group) + start / group)];
      float largest = 0.0f;
      for (int64_t i = start; i < start + group; ++i) {
        largest = std::max(largest, std::fabs(weight.data_as<float>()[row * columns + i]));
      }
      EXPECT_NEAR(scale, largest / levels, largest / levels * 0.01f);
      for (int64_t i = start; i < start + group; ++i) {
        const float original = weight.data_as<float>()[row * columns + i];
        const float restored = dequantized.data_as<float>()[row * columns + i];
        // Half a step, plus the step the clamp may add where the rounded scale came out small.
        const float bound = std::fabs(original) == largest ? scale : 0.5f * scale * 1.0001f;
        EXPECT_LE(std::fabs(original - restored), bound)
            << describe_weight_only(config) << " row " << row << " column " << i;
      }
    }
  }
}

TEST(WeightOnlyQuantization, Int8PerChannelWithinHalfAStep) {
  expect_quantized_within_half_a_step({WeightOnlyPrecision::kInt8, 0}, DType::kF32);
  expect_quantized_within_half_a_step({WeightOnlyPrecision::kInt8, 0}, DType::kBF16);
}

TEST(WeightOnlyQuantization, Int4GroupsWithinHalfAStep) {
  expect_quantized_within_half_a_step({WeightOnlyPrecision::kInt4, 32}, DType::kF16);
  expect_quantized_within_half_a_step({WeightOnlyPrecision::kInt4, 0}, DType::kBF16);
  expect_quantized_within_half_a_step({WeightOnlyPrecision::kInt8, 64}, DType::kF32);
}

TEST(WeightOnlyQuantization, Int4PacksTheEvenColumnInTheLowNibble) {
  // One row whose largest magnitude is 7: the scale is 1 and the levels are the values.
  Tensor weight(DType::kF32, {1, 8});
  const float values[8] = {-7, 7, 1, -1, 0, 3, -4, 2};
  std::memcpy(weight.data(), values, sizeof(values));
  const WeightOnlyConfig config{WeightOnlyPrecision::kInt4, 0};
  const QuantizedWeight quantized =
      quantize_weight_only(weight.view(), DType::kF32, config).value();
  ASSERT_EQ(quantized.values.dtype(), DType::kU8);
  ASSERT_EQ(quantized.values.shape(), (Shape{1, 4}));
  EXPECT_EQ(quantized.scales.data_as<float>()[0], 1.0f);
  const uint8_t* packed = quantized.values.data();
  EXPECT_EQ(packed[0], 0x79);  // -7 = 0x9 low, 7 high
  EXPECT_EQ(packed[1], 0xf1);  // 1 low, -1 = 0xf high
  EXPECT_EQ(packed[2], 0x30);
  EXPECT_EQ(packed[3], 0x2c);  // -4 = 0xc low, 2 high
  const Tensor restored =
      dequantize_weight_only(quantized.values.view(), quantized.scales.view(), config);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(restored.data_as<float>()[i], values[i]) << i;
}

TEST(WeightOnlyQuantization, ScalesAreRoundedBeforeTheValuesAreChosen) {
  // A bfloat16 scale is not largest / 127 exactly; the values are chosen against the stored
  // scale, so that value x scale reproduces the weight to half a step of that scale.
  Tensor weight(DType::kF32, {1, 4});
  const float values[4] = {1.0f, -0.3f, 0.77f, 0.001f};
  std::memcpy(weight.data(), values, sizeof(values));
  const WeightOnlyConfig config{WeightOnlyPrecision::kInt8, 0};
  const QuantizedWeight quantized =
      quantize_weight_only(weight.view(), DType::kBF16, config).value();
  const float scale = bf16_to_float(quantized.scales.data_as<uint16_t>()[0]);
  EXPECT_EQ(scale, bf16_to_float(float_to_bf16(1.0f / 127.0f)));
  const auto* levels = quantized.values.data_as<int8_t>();
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(levels[i], int8_t(std::clamp(std::nearbyint(values[i] / scale), -127.0f, 127.0f)));
  }
}

TEST(WeightOnlyQuantization, ZeroGroupsAndNonFiniteWeights) {
  Tensor zeros(DType::kF32, {2, 4});
  const WeightOnlyConfig config{WeightOnlyPrecision::kInt8, 0};
  const QuantizedWeight quantized = quantize_weight_only(zeros.view(), DType::kF32, config).value();
  const Tensor restored =
      dequantize_weight_only(quantized.values.view(), quantized.scales.view(), config);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(restored.data_as<float>()[i], 0.0f);

  Tensor bad(DType::kF32, {1, 4});
  bad.data_as<float>()[2] = std::nanf("");
  const Result<QuantizedWeight> refused = quantize_weight_only(bad.view(), DType::kF32, config);
  ASSERT_FALSE(refused.is_ok());
  EXPECT_NE(refused.status().message().find("column 2 is not a finite number"), std::string::npos);
}

TEST(WeightOnlyQuantization, StoredWeightsListValuesThenScalesOfTheDecoderLinears) {
  const ModelConfig model = small_model();
  const std::vector<StoredWeight> plain = stored_weights(model, DType::kBF16, {});
  ASSERT_EQ(plain.size(), model_weights(model).size());
  for (const StoredWeight& weight : plain) EXPECT_EQ(weight.dtype, DType::kBF16) << weight.name;

  const std::vector<StoredWeight> int4 =
      stored_weights(model, DType::kBF16, {WeightOnlyPrecision::kInt4, 32});
  // 7 linear weights a layer gain a scale each; lm_head (untied here) stays floating.
  ASSERT_EQ(int4.size(), plain.size() + 7 * 2);
  auto find = [&](const std::string& name) {
    for (const StoredWeight& weight : int4) {
      if (weight.name == name) return weight;
    }
    ADD_FAILURE() << name << " not stored";
    return StoredWeight{};
  };
  const StoredWeight down = find("model.layers.1.mlp.down_proj.weight");
  EXPECT_EQ(down.dtype, DType::kU8);
  EXPECT_EQ(down.shape, (Shape{64, 48}));
  const StoredWeight down_scale = find("model.layers.1.mlp.down_proj.weight_scale");
  EXPECT_EQ(down_scale.dtype, DType::kBF16);
  EXPECT_EQ(down_scale.shape, (Shape{64, 3}));
  EXPECT_EQ(find("lm_head.weight").dtype, DType::kBF16);
  EXPECT_EQ(find("model.embed_tokens.weight").dtype, DType::kBF16);
  for (size_t i = 0; i + 1 < int4.size(); ++i) {
    if (int4[i].dtype == DType::kU8) {
      EXPECT_EQ(int4[i + 1].name, int4[i].name + "_scale");
    }
  }
  const std::vector<StoredWeight> int8 =
      stored_weights(model, DType::kF16, {WeightOnlyPrecision::kInt8, 0});
  EXPECT_EQ(int8[2].name, "model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(int8[2].dtype, DType::kI8);
  EXPECT_EQ(int8[2].shape, (Shape{64, 64}));
  EXPECT_EQ(int8[3].shape, (Shape{64, 1}));  // per channel: one scale a row
}

TEST(WeightOnlyQuantization, RefusesGroupsThatDoNotDivideAndOddColumnsForInt4) {
  ModelConfig model = small_model();
  EXPECT_TRUE(check_weight_only(model, {WeightOnlyPrecision::kInt4, 32}).is_ok());
  const Status uneven = check_weight_only(model, {WeightOnlyPrecision::kInt8, 40});
  ASSERT_FALSE(uneven.is_ok());
  EXPECT_NE(uneven.message().find("does not divide the 64 columns"), std::string::npos);
  EXPECT_FALSE(check_weight_only(model, {WeightOnlyPrecision::kInt8, 7}).is_ok());
  EXPECT_FALSE(check_weight_only(model, {WeightOnlyPrecision::kInt8, -2}).is_ok());
  model.intermediate_size = 95;
  const Status odd = check_weight_only(model, {WeightOnlyPrecision::kInt4, 0});
  ASSERT_FALSE(odd.is_ok());
  EXPECT_NE(odd.message().find("use --weight_only_precision int8"), std::string::npos);
  EXPECT_TRUE(check_weight_only(model, {WeightOnlyPrecision::kInt8, 0}).is_ok());
}

TEST(WeightOnlyQuantization, ConfigJsonRoundTripsAndRefusesUnknownPrecisions) {
  for (const WeightOnlyConfig& config :
       {WeightOnlyConfig{}, WeightOnlyConfig{WeightOnlyPrecision::kInt8, 0},
        WeightOnlyConfig{WeightOnlyPrecision::kInt4, 128}}) {
    const nlohmann::json json = weight_only_config_to_json(config);
    EXPECT_EQ(weight_only_config_from_json(json, "c").value(), config) << json.dump();
  }
  EXPECT_TRUE(weight_only_config_to_json({}).is_null());
  const Result<WeightOnlyConfig> fp2 = weight_only_config_from_json(
      nlohmann::json{{"precision", "fp2"}, {"group_size", 0}}, "c.json");
  ASSERT_FALSE(fp2.is_ok());
  EXPECT_NE(fp2.status().message().find("'fp2' is not supported"), std::string::npos);
  EXPECT_FALSE(weight_only_config_from_json(nlohmann::json{{"precision", "int8"}}, "c").is_ok());
  EXPECT_FALSE(weight_only_config_from_json(nlohmann::json::array(), "c").is_ok());
}

}  // namespace
}  // namespace kite
