// Tests for ModelConfig: the config.json files of published models, defaults, unsupported
// architectures and features, validation, Kite's own schema and the weight list.
#include "formats/model_config.h"

#include <gtest/gtest.h>

#include "core/file.h"
#include "test_util.h"

namespace kite {
namespace {

std::string fixture(const std::string& name) {
  return test::source_dir() + "/tests/fixtures/hf_configs/" + name;
}

ModelConfig read_fixture(const std::string& name) {
  Result<ModelConfig> config = read_hf_config(fixture(name));
  EXPECT_TRUE(config.is_ok()) << config.status().message();
  return config.is_ok() ? *config : ModelConfig{};
}

nlohmann::json fixture_json(const std::string& name) {
  return nlohmann::json::parse(*read_file(fixture(name)));
}

Status parse_status(const nlohmann::json& json) {
  return parse_hf_config(json, "test/config.json").status();
}

TEST(ModelConfig, Llama3) {
  const ModelConfig config = read_fixture("llama-3-8b.json");
  EXPECT_EQ(config.architecture, Architecture::kLlama);
  EXPECT_EQ(config.hidden_size, 4096);
  EXPECT_EQ(config.intermediate_size, 14336);
  EXPECT_EQ(config.num_hidden_layers, 32);
  EXPECT_EQ(config.num_attention_heads, 32);
  EXPECT_EQ(config.num_key_value_heads, 8);
  EXPECT_EQ(config.head_dim, 128);
  EXPECT_EQ(config.vocab_size, 128256);
  EXPECT_EQ(config.max_position_embeddings, 8192);
  EXPECT_DOUBLE_EQ(config.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(config.rope_theta, 500000.0);
  EXPECT_EQ(config.rope_scaling.type, RopeScalingType::kNone);
  EXPECT_FALSE(config.tie_word_embeddings);
  EXPECT_FALSE(config.sliding_window);
  EXPECT_FALSE(config.attention_bias);
  EXPECT_FALSE(config.attention_output_bias);
  EXPECT_EQ(config.bos_token_id, 128000);
  EXPECT_EQ(config.eos_token_ids, std::vector<int64_t>({128001}));
  EXPECT_FALSE(config.pad_token_id);
  EXPECT_EQ(config.torch_dtype, "bfloat16");
}

TEST(ModelConfig, Llama31RopeScalingAndEosList) {
  const ModelConfig config = read_fixture("llama-3.1-8b-instruct.json");
  EXPECT_EQ(config.rope_scaling.type, RopeScalingType::kLlama3);
  EXPECT_DOUBLE_EQ(config.rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(config.rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(config.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(config.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(config.max_position_embeddings, 131072);
  EXPECT_EQ(config.eos_token_ids, std::vector<int64_t>({128001, 128008, 128009}));
}

TEST(ModelConfig, Llama2WithoutRopeTheta) {
  const ModelConfig config = read_fixture("llama-2-7b.json");
  EXPECT_EQ(config.num_key_value_heads, 32);
  EXPECT_EQ(config.head_dim, 128);
  EXPECT_DOUBLE_EQ(config.rope_theta, 10000.0);
  EXPECT_EQ(config.torch_dtype, "float16");
  EXPECT_EQ(config.bos_token_id, 1);
  EXPECT_EQ(config.eos_token_ids, std::vector<int64_t>({2}));
}

TEST(ModelConfig, MistralSlidingWindow) {
  ModelConfig config = read_fixture("mistral-7b-v0.1.json");
  EXPECT_EQ(config.architecture, Architecture::kMistral);
  EXPECT_EQ(config.sliding_window, 4096);
  EXPECT_EQ(config.num_key_value_heads, 8);
  EXPECT_EQ(config.max_position_embeddings, 32768);

  // v0.2 and later disable the window with null; MistralConfig's default (no key) is 4096.
  nlohmann::json json = fixture_json("mistral-7b-v0.1.json");
  json["sliding_window"] = nullptr;
  config = *parse_hf_config(json, "x");
  EXPECT_FALSE(config.sliding_window);
  json.erase("sliding_window");
  config = *parse_hf_config(json, "x");
  EXPECT_EQ(config.sliding_window, 4096);
}

TEST(ModelConfig, Qwen2) {
  const ModelConfig config = read_fixture("qwen2-0.5b.json");
  EXPECT_EQ(config.architecture, Architecture::kQwen2);
  EXPECT_EQ(config.hidden_size, 896);
  EXPECT_EQ(config.head_dim, 64);
  EXPECT_EQ(config.num_key_value_heads, 2);
  EXPECT_TRUE(config.attention_bias);
  EXPECT_FALSE(config.attention_output_bias);
  EXPECT_TRUE(config.tie_word_embeddings);
  EXPECT_FALSE(config.sliding_window);  // use_sliding_window is false
  EXPECT_DOUBLE_EQ(config.rms_norm_eps, 1e-6);
  EXPECT_EQ(config.bos_token_id, 151643);

  nlohmann::json json = fixture_json("qwen2-0.5b.json");
  json["use_sliding_window"] = true;  // max_window_layers (24) covers every layer: no window
  EXPECT_FALSE(parse_hf_config(json, "x")->sliding_window);
  json["max_window_layers"] = 0;
  EXPECT_EQ(parse_hf_config(json, "x")->sliding_window, 131072);
  json["max_window_layers"] = 12;
  const Status status = parse_status(json);
  EXPECT_EQ(status.code(), StatusCode::kUnsupported);
  EXPECT_NE(status.message().find("max_window_layers"), std::string::npos);
}

TEST(ModelConfig, SmolLM2) {
  const ModelConfig config = read_fixture("smollm2-135m.json");
  EXPECT_EQ(config.hidden_size, 576);
  EXPECT_EQ(config.num_hidden_layers, 30);
  EXPECT_EQ(config.num_attention_heads, 9);
  EXPECT_EQ(config.num_key_value_heads, 3);
  EXPECT_EQ(config.head_dim, 64);
  EXPECT_EQ(config.vocab_size, 49152);
  EXPECT_TRUE(config.tie_word_embeddings);
  EXPECT_EQ(config.pad_token_id, 2);
  EXPECT_DOUBLE_EQ(config.rope_theta, 100000.0);  // an integer in the file
}

TEST(ModelConfig, UnsupportedArchitectureListsSupportedOnes) {
  nlohmann::json json = fixture_json("llama-2-7b.json");
  json["model_type"] = "gpt_neox";
  json["architectures"] = {"GPTNeoXForCausalLM"};
  const Status status = parse_status(json);
  EXPECT_EQ(status.code(), StatusCode::kUnsupported);
  EXPECT_EQ(status.message(),
            "unsupported architecture 'gpt_neox' in test/config.json; Kite supports: llama, "
            "mistral, qwen2");

  json = fixture_json("llama-2-7b.json");
  json.erase("model_type");  // then architectures[0] decides
  EXPECT_TRUE(parse_hf_config(json, "x").is_ok());
  json["architectures"] = {"FalconForCausalLM"};
  EXPECT_NE(parse_status(json).message().find("'FalconForCausalLM'"), std::string::npos);

  json = fixture_json("llama-2-7b.json");
  json["architectures"] = {"LlamaForSequenceClassification"};
  EXPECT_EQ(parse_status(json).code(), StatusCode::kUnsupported);
  EXPECT_NE(parse_status(json).message().find("LlamaForSequenceClassification"), std::string::npos);
}

TEST(ModelConfig, RopeScalingVariants) {
  nlohmann::json json = fixture_json("llama-2-7b.json");
  json["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  ModelConfig config = *parse_hf_config(json, "x");
  EXPECT_EQ(config.rope_scaling.type, RopeScalingType::kLinear);
  EXPECT_DOUBLE_EQ(config.rope_scaling.factor, 4.0);
  json["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 2}};
  EXPECT_EQ(parse_hf_config(json, "x")->rope_scaling.type, RopeScalingType::kDynamic);
  json["rope_scaling"] = {{"rope_type", "default"}};
  EXPECT_EQ(parse_hf_config(json, "x")->rope_scaling.type, RopeScalingType::kNone);

  json["rope_scaling"] = {{"rope_type", "longrope"}, {"factor", 4.0}};
  Status status = parse_status(json);
  EXPECT_EQ(status.code(), StatusCode::kUnsupported);
  EXPECT_NE(status.message().find("'longrope'"), std::string::npos);
  EXPECT_NE(status.message().find("default, linear, dynamic, llama3, yarn"), std::string::npos);

  // YaRN with transformers' defaults: the original context is max_position_embeddings (4096 in
  // this fixture) unless given, a missing factor is the ratio of the two, betas 32 and 1.
  json["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}, {"mscale", nullptr}};
  config = *parse_hf_config(json, "x");
  EXPECT_EQ(config.rope_scaling.type, RopeScalingType::kYarn);
  EXPECT_DOUBLE_EQ(config.rope_scaling.factor, 4.0);
  EXPECT_EQ(config.rope_scaling.original_max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(config.rope_scaling.beta_fast, 32.0);
  EXPECT_DOUBLE_EQ(config.rope_scaling.beta_slow, 1.0);
  EXPECT_TRUE(config.rope_scaling.truncate);
  json["rope_scaling"] = {{"rope_type", "yarn"},   {"original_max_position_embeddings", 1024},
                          {"beta_fast", 8},        {"mscale", 0.7},
                          {"mscale_all_dim", 1.0}, {"truncate", false}};
  config = *parse_hf_config(json, "x");
  EXPECT_DOUBLE_EQ(config.rope_scaling.factor, 4.0);  // 4096 / 1024
  EXPECT_DOUBLE_EQ(config.rope_scaling.beta_fast, 8.0);
  EXPECT_DOUBLE_EQ(config.rope_scaling.mscale, 0.7);
  EXPECT_FALSE(config.rope_scaling.truncate);
  const nlohmann::json schema = model_config_to_json(config);
  EXPECT_EQ(*model_config_from_json(nlohmann::json::parse(schema.dump()), "x"), config);
  json["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}, {"beta_slow", -1}};
  EXPECT_EQ(parse_status(json).code(), StatusCode::kCorrupt);

  json["rope_scaling"] = {{"rope_type", "linear"}};  // factor missing
  EXPECT_EQ(parse_status(json).code(), StatusCode::kCorrupt);
  json["rope_scaling"] = {{"rope_type", "llama3"},
                          {"factor", 8.0},
                          {"low_freq_factor", 4.0},
                          {"high_freq_factor", 1.0},
                          {"original_max_position_embeddings", 8192}};
  EXPECT_EQ(parse_status(json).code(), StatusCode::kCorrupt);

  // transformers 5 layout: rope_parameters holds the base and the scaling.
  json = fixture_json("llama-3.1-8b-instruct.json");
  json["rope_parameters"] = json["rope_scaling"];
  json["rope_parameters"]["rope_theta"] = 500000.0;
  json.erase("rope_scaling");
  json.erase("rope_theta");
  config = *parse_hf_config(json, "x");
  EXPECT_DOUBLE_EQ(config.rope_theta, 500000.0);
  EXPECT_EQ(config.rope_scaling.type, RopeScalingType::kLlama3);
}

TEST(ModelConfig, ValidationNamesTheProblem) {
  const nlohmann::json base = fixture_json("llama-3-8b.json");
  struct Case {
    const char* field;
    nlohmann::json value;
    const char* expected;
  };
  const Case cases[] = {
      {"hidden_size", 0, "hidden_size must be positive"},
      {"hidden_size", 4001, "not a multiple of num_attention_heads"},
      {"num_key_value_heads", 5, "not a multiple of num_key_value_heads"},
      {"num_hidden_layers", -2, "num_hidden_layers must be positive"},
      {"vocab_size", "big", "\"vocab_size\" must be an integer"},
      {"head_dim", 127, "head_dim 127 is odd"},
      {"rms_norm_eps", 0, "rms_norm_eps"},
      {"eos_token_id", 200000, "outside the vocabulary"},
      {"bos_token_id", -5, "outside the vocabulary"},
      {"tie_word_embeddings", "yes", "true or false"},
      {"intermediate_size", int64_t(1) << 40, "implausibly large"},
      {"sliding_window", 8, nullptr},  // ignored for Llama
  };
  for (const Case& test_case : cases) {
    nlohmann::json json = base;
    json[test_case.field] = test_case.value;
    const Status status = parse_status(json);
    if (!test_case.expected) {
      EXPECT_TRUE(status.is_ok()) << status.message();
      continue;
    }
    EXPECT_EQ(status.code(), StatusCode::kCorrupt) << test_case.field;
    EXPECT_NE(status.message().find("test/config.json"), std::string::npos) << status.message();
    EXPECT_NE(status.message().find(test_case.expected), std::string::npos) << status.message();
  }
  nlohmann::json json = base;
  json.erase("num_hidden_layers");
  EXPECT_NE(parse_status(json).message().find("lacks \"num_hidden_layers\""), std::string::npos);
  json = base;
  json["hidden_act"] = "gelu";
  EXPECT_EQ(parse_status(json).code(), StatusCode::kUnsupported);
  json = base;
  json["mlp_bias"] = true;
  EXPECT_EQ(parse_status(json).code(), StatusCode::kUnsupported);
  EXPECT_EQ(parse_status(nlohmann::json::array()).code(), StatusCode::kCorrupt);

  const std::string path = test::temp_dir() + "/config.json";
  ASSERT_TRUE(write_file(path, "{\"model_type\": ").is_ok());
  EXPECT_EQ(read_hf_config(path).status().code(), StatusCode::kCorrupt);
  EXPECT_EQ(read_hf_config(path + ".missing").status().code(), StatusCode::kNotFound);
}

TEST(ModelConfig, LlamaAttentionBiasCoversOutputProjection) {
  nlohmann::json json = fixture_json("llama-2-7b.json");
  json["attention_bias"] = true;
  const ModelConfig config = *parse_hf_config(json, "x");
  EXPECT_TRUE(config.attention_bias);
  EXPECT_TRUE(config.attention_output_bias);
}

TEST(ModelConfig, ExplicitHeadDim) {
  nlohmann::json json = fixture_json("mistral-7b-v0.1.json");
  json["hidden_size"] = 5120;  // Mistral-Nemo: 32 heads of 128 with hidden 5120
  json["head_dim"] = 128;
  const ModelConfig config = *parse_hf_config(json, "x");
  EXPECT_EQ(config.head_dim, 128);
  EXPECT_EQ(config.q_size(), 4096);
}

TEST(ModelConfig, KiteSchemaRoundTrips) {
  for (const char* name : {"llama-3-8b.json", "llama-3.1-8b-instruct.json", "llama-2-7b.json",
                           "mistral-7b-v0.1.json", "qwen2-0.5b.json", "smollm2-135m.json"}) {
    const ModelConfig config = read_fixture(name);
    const nlohmann::json json = model_config_to_json(config);
    // Through text, as a checkpoint's config.json would be.
    Result<ModelConfig> back = model_config_from_json(nlohmann::json::parse(json.dump()), name);
    ASSERT_TRUE(back.is_ok()) << back.status().message();
    EXPECT_EQ(*back, config) << name;
  }
  const nlohmann::json json = model_config_to_json(read_fixture("llama-3.1-8b-instruct.json"));
  EXPECT_EQ(json["architecture"], "llama");
  EXPECT_EQ(json["rope_scaling"]["type"], "llama3");
  EXPECT_EQ(json["eos_token_id"], nlohmann::json({128001, 128008, 128009}));
  EXPECT_TRUE(json["sliding_window"].is_null());

  nlohmann::json broken = json;
  broken.erase("head_dim");
  EXPECT_EQ(model_config_from_json(broken, "ckpt/config.json").status().code(),
            StatusCode::kCorrupt);
  broken = json;
  broken["architecture"] = "falcon";
  EXPECT_EQ(model_config_from_json(broken, "ckpt/config.json").status().code(),
            StatusCode::kUnsupported);
}

TEST(ModelConfig, WeightList) {
  const ModelConfig smol = read_fixture("smollm2-135m.json");
  std::vector<WeightInfo> weights = model_weights(smol);
  ASSERT_EQ(weights.size(), 1 + 30 * 9 + 1u);  // tied: no lm_head
  EXPECT_EQ(weights.front().name, "model.embed_tokens.weight");
  EXPECT_EQ(weights.front().shape, Shape({49152, 576}));
  EXPECT_EQ(weights[1].name, "model.layers.0.input_layernorm.weight");
  EXPECT_EQ(weights[2].name, "model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(weights[2].shape, Shape({576, 576}));
  EXPECT_EQ(weights[3].shape, Shape({192, 576}));  // k_proj: 3 heads of 64
  EXPECT_EQ(weights.back().name, "model.norm.weight");
  int64_t parameters = 0;
  for (const WeightInfo& weight : weights) parameters += shape_numel(weight.shape);
  EXPECT_EQ(parameters, 134515008);  // SmolLM2-135M's published parameter count

  const ModelConfig qwen = read_fixture("qwen2-0.5b.json");
  weights = model_weights(qwen);
  ASSERT_EQ(weights.size(), 1 + 24 * 12 + 1u);  // q/k/v biases, tied embeddings
  EXPECT_EQ(weights[3].name, "model.layers.0.self_attn.q_proj.bias");
  EXPECT_EQ(weights[3].role, WeightRole::kBias);
  parameters = 0;
  for (const WeightInfo& weight : weights) parameters += shape_numel(weight.shape);
  EXPECT_EQ(parameters, 494032768);  // Qwen2-0.5B

  const ModelConfig llama = read_fixture("llama-3-8b.json");
  weights = model_weights(llama);
  EXPECT_EQ(weights.back().name, "lm_head.weight");
  parameters = 0;
  for (const WeightInfo& weight : weights) parameters += shape_numel(weight.shape);
  EXPECT_EQ(parameters, 8030261248);  // Llama-3-8B
}

}  // namespace
}  // namespace kite
