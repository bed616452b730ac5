// Tests for the GGUF model source: llama metadata as an HF config, GGUF tensor names and layouts
// as HF ones (including undoing llama.cpp's Q/K row permutation), tokenizer files, refusals.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <numbers>
#include <set>

#include "core/file.h"
#include "core/half.h"
#include "formats/checkpoint.h"
#include "formats/gguf.h"
#include "formats/gguf_dequant.h"
#include "formats/model_source.h"
#include "gguf_test_builder.h"
#include "test_util.h"

namespace kite {
namespace {

using json = nlohmann::json;
using test::GgufBuilder;

std::string fixture(const std::string& name) {
  return test::source_dir() + "/tests/fixtures/gguf/" + name;
}

std::vector<float> as_floats(const Tensor& tensor) {
  auto values = to_float32(tensor.view());
  EXPECT_TRUE(values.is_ok());
  return values.is_ok() ? *values : std::vector<float>{};
}

// tiny_llama.gguf (scripts/make_gguf_llama_fixture.py) was written the way llama.cpp's converter
// writes a llama model, attn_q/attn_k permuted by its Python formula; tiny_llama_hf.gguf holds the
// original HF tensors. Every tensor the source hands out must equal the original.
TEST(GgufSource, TinyLlamaMatchesTheHfTensorsItWasMadeFrom) {
  auto source = open_gguf_model(fixture("tiny_llama.gguf"));
  ASSERT_TRUE(source.is_ok()) << source.status().message();
  auto reference = GgufFile::open(fixture("tiny_llama_hf.gguf"));
  ASSERT_TRUE(reference.is_ok()) << reference.status().message();

  std::set<std::string> expected_names;
  for (const GgufTensorInfo& info : reference->tensors()) expected_names.insert(info.name);
  const std::vector<std::string> names = (*source)->tensor_names();
  EXPECT_EQ(std::set<std::string>(names.begin(), names.end()), expected_names);
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  EXPECT_EQ(names.size(), 21u);

  for (const GgufTensorInfo& info : reference->tensors()) {
    auto expected = dequantize_tensor(*reference, info);
    ASSERT_TRUE(expected.is_ok());
    auto shape = (*source)->tensor_shape(info.name);
    ASSERT_TRUE(shape.is_ok()) << shape.status().message();
    EXPECT_EQ(*shape, expected->shape()) << info.name;
    auto tensor = (*source)->load_tensor(info.name);
    ASSERT_TRUE(tensor.is_ok()) << tensor.status().message();
    EXPECT_EQ(tensor->shape(), expected->shape()) << info.name;
    EXPECT_EQ(as_floats(*tensor), as_floats(*expected)) << info.name;
  }

  // Stored types come back as stored, quantized ones as float32.
  EXPECT_EQ((*source)->load_tensor("model.layers.0.self_attn.q_proj.weight")->dtype(), DType::kF16);
  EXPECT_EQ((*source)->load_tensor("model.layers.1.self_attn.q_proj.weight")->dtype(), DType::kF32);
  EXPECT_EQ((*source)->load_tensor("model.layers.0.self_attn.k_proj.weight")->dtype(), DType::kF32);
}

// Guards the test above against passing vacuously: the rows as stored differ from the HF rows.
TEST(GgufSource, TinyLlamaStoresKeyRowsPermuted) {
  auto model = GgufFile::open(fixture("tiny_llama.gguf"));
  auto reference = GgufFile::open(fixture("tiny_llama_hf.gguf"));
  ASSERT_TRUE(model.is_ok() && reference.is_ok());
  auto stored = dequantize_tensor(*model, *model->find_tensor("blk.0.attn_k.weight"));
  auto original = dequantize_tensor(
      *reference, *reference->find_tensor("model.layers.0.self_attn.k_proj.weight"));
  ASSERT_TRUE(stored.is_ok() && original.is_ok());
  EXPECT_NE(as_floats(*stored), as_floats(*original));
  // Head 0, rows 0..7 hold HF rows 0, 4, 1, 5, 2, 6, 3, 7 (two rotary halves interleaved).
  const std::vector<float> stored_values = as_floats(*stored);
  const std::vector<float> original_values = as_floats(*original);
  const int columns = 32;
  const int hf_row_of[8] = {0, 4, 1, 5, 2, 6, 3, 7};
  for (int row = 0; row < 8; ++row) {
    EXPECT_EQ(stored_values[size_t(row * columns)],
              original_values[size_t(hf_row_of[row] * columns)])
        << row;
  }
}

TEST(GgufSource, TinyLlamaConfig) {
  auto source = open_gguf_model(fixture("tiny_llama.gguf"));
  ASSERT_TRUE(source.is_ok()) << source.status().message();
  const json& config = (*source)->hf_config();
  EXPECT_EQ(config["model_type"], "llama");
  EXPECT_EQ(config["architectures"], json::array({"LlamaForCausalLM"}));
  EXPECT_EQ(config["hidden_size"], 32);
  EXPECT_EQ(config["intermediate_size"], 64);
  EXPECT_EQ(config["num_hidden_layers"], 2);
  EXPECT_EQ(config["num_attention_heads"], 4);
  EXPECT_EQ(config["num_key_value_heads"], 2);
  EXPECT_EQ(config["head_dim"], 8);
  EXPECT_EQ(config["max_position_embeddings"], 256);
  EXPECT_EQ(config["vocab_size"], 8);
  EXPECT_EQ(config["rms_norm_eps"], 1e-6);
  EXPECT_EQ(config["rope_theta"], 50000.0);
  EXPECT_EQ(config["tie_word_embeddings"], false);
  EXPECT_EQ(config["attention_bias"], false);
  EXPECT_EQ(config["hidden_act"], "silu");
  EXPECT_EQ(config["bos_token_id"], 5);
  EXPECT_EQ(config["eos_token_id"], 6);
  EXPECT_EQ(config["pad_token_id"], 7);
  EXPECT_EQ(config["rope_scaling"], json::parse(R"({"rope_type": "linear", "factor": 2.0})"));
  EXPECT_EQ(config["torch_dtype"], "float32");  // F16 and Q8_0 weights mixed
  EXPECT_NE((*source)->description().find("tiny_llama.gguf"), std::string::npos);
}

TEST(GgufSource, WritesTokenizerFiles) {
  auto source = open_gguf_model(fixture("tiny_llama.gguf"));
  ASSERT_TRUE(source.is_ok());
  const std::string dir = test::temp_dir() + "/out/tokenizer";
  const Status status = (*source)->write_tokenizer_files(dir);
  ASSERT_TRUE(status.is_ok()) << status.message();
  const json tokenizer = json::parse(*read_file(dir + "/tokenizer.json"));
  EXPECT_EQ(tokenizer["model"]["vocab"].size(), 8u);
  EXPECT_EQ(tokenizer["model"]["merges"].size(), 2u);
  EXPECT_EQ(tokenizer["post_processor"]["single"][0]["SpecialToken"]["id"], "<s>");
  const json config = json::parse(*read_file(dir + "/tokenizer_config.json"));
  EXPECT_EQ(config["bos_token"], "<s>");
  EXPECT_EQ(config["eos_token"], "</s>");
  EXPECT_EQ(config["pad_token"], "<pad>");
  EXPECT_EQ(config["add_bos_token"], true);
  EXPECT_EQ(config["model_max_length"], 256);
  EXPECT_EQ(config["chat_template"], "{% for m in messages %}{{ m['content'] }}{% endfor %}");
  const json generation = json::parse(*read_file(dir + "/generation_config.json"));
  EXPECT_EQ(generation,
            json::parse(R"({"bos_token_id": 5, "eos_token_id": 6, "pad_token_id": 7})"));
}

// --- Small models built in the test ------------------------------------------------------------

std::string f32_bytes(const std::vector<float>& values) {
  std::string bytes(values.size() * 4, '\0');
  std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

// Values that identify the tensor (`tag`) and the element.
std::vector<float> tagged(int tag, int64_t count) {
  std::vector<float> values(size_t(count), 0.0f);
  for (int64_t i = 0; i < count; ++i) values[size_t(i)] = float(tag * 1000 + i);
  return values;
}

struct ModelSize {
  int64_t hidden, heads, kv_heads, intermediate, vocab;
};

// One layer of float32 tensors tagged 1, 2, ... in file order.
GgufBuilder model_builder(const std::string& architecture, ModelSize size, bool with_biases) {
  GgufBuilder builder;
  builder.add_string("general.architecture", architecture)
      .add_uint32(architecture + ".context_length", 64)
      .add_uint32(architecture + ".embedding_length", uint32_t(size.hidden))
      .add_uint32(architecture + ".feed_forward_length", uint32_t(size.intermediate))
      .add_uint32(architecture + ".block_count", 1)
      .add_uint32(architecture + ".attention.head_count", uint32_t(size.heads))
      .add_uint32(architecture + ".attention.head_count_kv", uint32_t(size.kv_heads))
      .add_float32(architecture + ".attention.layer_norm_rms_epsilon", 1e-5f);
  const int64_t key_value = size.hidden / size.heads * size.kv_heads;
  int tag = 1;
  const auto add = [&](const std::string& name, std::vector<int64_t> dims) {
    int64_t count = 1;
    for (int64_t dim : dims) count *= dim;
    builder.add_tensor({name, dims, 0, f32_bytes(tagged(tag++, count))});
  };
  add("token_embd.weight", {size.hidden, size.vocab});
  add("blk.0.attn_norm.weight", {size.hidden});
  add("blk.0.attn_q.weight", {size.hidden, size.hidden});
  add("blk.0.attn_k.weight", {size.hidden, key_value});
  add("blk.0.attn_v.weight", {size.hidden, key_value});
  if (with_biases) {
    add("blk.0.attn_q.bias", {size.hidden});
    add("blk.0.attn_k.bias", {key_value});
    add("blk.0.attn_v.bias", {key_value});
  }
  add("blk.0.attn_output.weight", {size.hidden, size.hidden});
  add("blk.0.ffn_norm.weight", {size.hidden});
  add("blk.0.ffn_gate.weight", {size.hidden, size.intermediate});
  add("blk.0.ffn_up.weight", {size.hidden, size.intermediate});
  add("blk.0.ffn_down.weight", {size.intermediate, size.hidden});
  add("output_norm.weight", {size.hidden});
  return builder;
}

// Hidden 4, 2 query heads and 1 kv head of size 2, intermediate 6, vocabulary 3.
GgufBuilder small_model(const std::string& architecture, bool with_biases = false) {
  return model_builder(architecture, {4, 2, 1, 6, 3}, with_biases);
}

Result<std::unique_ptr<ModelSource>> open_built(const GgufBuilder& builder,
                                                const std::string& name = "model.gguf") {
  const std::string path = test::temp_dir() + "/" + name;
  EXPECT_TRUE(write_file(path, builder.build()).is_ok());
  return open_gguf_model(path);
}

TEST(GgufSource, LlamaQueryAndKeyRowsAreRestored) {
  auto source = open_built(small_model("llama"));
  ASSERT_TRUE(source.is_ok()) << source.status().message();
  EXPECT_EQ((*source)->hf_config()["tie_word_embeddings"], true);
  EXPECT_EQ((*source)->hf_config()["torch_dtype"], "float32");
  EXPECT_FALSE((*source)->hf_config().contains("rope_scaling"));
  // q has 2 heads of 2 rows: a head of size 2 has one row per rotary half, so the permutation is
  // the identity; k likewise. The rows come back in stored order.
  auto query = (*source)->load_tensor("model.layers.0.self_attn.q_proj.weight");
  ASSERT_TRUE(query.is_ok());
  EXPECT_EQ(query->shape(), (Shape{4, 4}));
  EXPECT_EQ(as_floats(*query), tagged(3, 16));
  auto embed = (*source)->load_tensor("model.embed_tokens.weight");
  EXPECT_EQ(embed->shape(), (Shape{3, 4}));
  EXPECT_EQ((*source)->tensor_shape("model.layers.0.mlp.down_proj.weight").value(), (Shape{4, 6}));
  EXPECT_EQ((*source)->tensor_shape("model.layers.0.mlp.gate_proj.weight").value(), (Shape{6, 4}));
  EXPECT_FALSE((*source)->tensor_shape("lm_head.weight").is_ok());
  EXPECT_EQ((*source)->load_tensor("lm_head.weight").status().code(), StatusCode::kNotFound);
}

TEST(GgufSource, Qwen2KeepsRowsAndMapsBiases) {
  auto source = open_built(small_model("qwen2", /*with_biases=*/true));
  ASSERT_TRUE(source.is_ok()) << source.status().message();
  const json& config = (*source)->hf_config();
  EXPECT_EQ(config["model_type"], "qwen2");
  EXPECT_EQ(config["architectures"], json::array({"Qwen2ForCausalLM"}));
  EXPECT_EQ(config["attention_bias"], true);
  auto bias = (*source)->load_tensor("model.layers.0.self_attn.k_proj.bias");
  ASSERT_TRUE(bias.is_ok()) << bias.status().message();
  EXPECT_EQ(as_floats(*bias), tagged(7, 2));
  auto query = (*source)->load_tensor("model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(as_floats(*query), tagged(3, 16));
}

// The Llama 3 divisors as llama.cpp's converter computes them (conversion/llama.py).
std::vector<float> llama3_divisors(double theta, int head_dim, double factor) {
  std::vector<float> divisors;
  const double low_freq_wavelen = 8192 / 1.0, high_freq_wavelen = 8192 / 4.0;
  for (int i = 0; i < head_dim; i += 2) {
    const float frequency = float(1.0 / std::pow(theta, double(i) / head_dim));
    const double wavelen = 2 * std::numbers::pi / frequency;
    if (wavelen < high_freq_wavelen) {
      divisors.push_back(1.0f);
    } else if (wavelen > low_freq_wavelen) {
      divisors.push_back(float(factor));
    } else {
      const double smooth = (8192 / wavelen - 1.0) / (4.0 - 1.0);
      divisors.push_back(float(1 / ((1 - smooth) / factor + smooth)));
    }
  }
  return divisors;
}

GgufBuilder llama3_model(const std::vector<float>& divisors) {
  // One head of 64 so that the frequencies span all three bands of the rule.
  GgufBuilder builder = model_builder("llama", {64, 1, 1, 32, 2}, false);
  builder.add_float32("llama.rope.freq_base", 500000.0f);
  builder.add_tensor({"rope_freqs.weight", {int64_t(divisors.size())}, 0, f32_bytes(divisors)});
  return builder;
}

TEST(GgufSource, Llama3RopeFrequencyFactorsBecomeRopeScaling) {
  const std::vector<float> divisors = llama3_divisors(500000.0, 64, 8.0);
  auto source = open_built(llama3_model(divisors));
  ASSERT_TRUE(source.is_ok()) << source.status().message();
  EXPECT_EQ((*source)->hf_config()["rope_scaling"],
            json::parse(R"({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})"));
  for (const std::string& name : (*source)->tensor_names()) EXPECT_NE(name, "rope_freqs.weight");

  std::vector<float> other = divisors;
  other[20] *= 1.5f;
  auto refused = open_built(llama3_model(other), "other.gguf");
  ASSERT_FALSE(refused.is_ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kUnsupported);
  EXPECT_NE(refused.status().message().find("does not follow Llama 3's RoPE scaling rule"),
            std::string::npos)
      << refused.status().message();
}

void expect_refused(const GgufBuilder& builder, StatusCode code, const std::string& fragment) {
  auto source = open_built(builder, "refused.gguf");
  ASSERT_FALSE(source.is_ok()) << fragment;
  EXPECT_EQ(source.status().code(), code) << source.status().message();
  EXPECT_NE(source.status().message().find("refused.gguf: "), std::string::npos)
      << source.status().message();
  EXPECT_NE(source.status().message().find(fragment), std::string::npos)
      << source.status().message();
}

TEST(GgufSource, RefusesWhatItCannotMap) {
  expect_refused(small_model("gpt2"), StatusCode::kUnsupported,
                 "GGUF architecture 'gpt2' is not supported");

  GgufBuilder experts = small_model("llama");
  experts.add_tensor({"blk.0.ffn_gate_exps.weight", {4}, 0, f32_bytes({1, 2, 3, 4})});
  expect_refused(experts, StatusCode::kUnsupported,
                 "tensor 'blk.0.ffn_gate_exps.weight' has no Hugging Face LlamaForCausalLM");

  GgufBuilder extra_layer = small_model("llama");
  extra_layer.add_tensor({"blk.1.attn_norm.weight", {4}, 0, f32_bytes({1, 2, 3, 4})});
  expect_refused(extra_layer, StatusCode::kCorrupt, "belongs to layer 1 but the model has 1");

  GgufBuilder wrong_shape = small_model("llama");
  wrong_shape.add_tensor({"output.weight", {4, 5}, 0, f32_bytes(std::vector<float>(20, 0.0f))});
  expect_refused(wrong_shape, StatusCode::kCorrupt,
                 "tensor 'output.weight' has shape [5, 4] but the metadata implies [3, 4]");

  GgufBuilder quantized = small_model("llama");
  quantized.add_tensor(
      {"output.weight", {256, 3}, uint32_t(GgmlType::kQ2_K), std::string(3 * 84, '\0')});
  expect_refused(quantized, StatusCode::kUnsupported,
                 "has type Q2_K, which Kite cannot dequantize");

  GgufBuilder no_heads;
  no_heads.add_string("general.architecture", "llama").add_uint32("llama.embedding_length", 4);
  expect_refused(no_heads, StatusCode::kCorrupt, "'llama.feed_forward_length' is missing");

  GgufBuilder odd_heads = small_model("llama");
  odd_heads.add_uint32("llama.attention.key_length", 3);
  expect_refused(odd_heads, StatusCode::kCorrupt, "head size 3 is odd");

  GgufBuilder partial_rotary = small_model("llama");
  partial_rotary.add_uint32("llama.rope.dimension_count", 1);
  expect_refused(partial_rotary, StatusCode::kUnsupported, "1 rotary dimensions are not supported");

  GgufBuilder longrope = small_model("llama");
  longrope.add_string("llama.rope.scaling.type", "longrope")
      .add_float32("llama.rope.scaling.factor", 4);
  expect_refused(longrope, StatusCode::kUnsupported,
                 "RoPE scaling type 'longrope' is not supported");

  auto missing = open_gguf_model(test::temp_dir() + "/absent.gguf");
  ASSERT_FALSE(missing.is_ok());
  EXPECT_NE(missing.status().message().find("absent.gguf"), std::string::npos);
}

TEST(GgufSource, YarnScaling) {
  GgufBuilder yarn = small_model("llama");
  yarn.add_string("llama.rope.scaling.type", "yarn")
      .add_float32("llama.rope.scaling.factor", 4)
      .add_uint32("llama.rope.scaling.original_context_length", 32768)
      .add_float32("llama.rope.scaling.yarn_beta_fast", 32)
      .add_float32("llama.rope.scaling.yarn_attn_factor", 0.5);  // llama.cpp recomputes it
  auto source = open_built(yarn);
  ASSERT_TRUE(source.is_ok()) << source.status().message();
  EXPECT_EQ((*source)->hf_config()["rope_scaling"],
            json::parse(R"({"rope_type": "yarn", "factor": 4.0,
                            "original_max_position_embeddings": 32768, "beta_fast": 32.0})"));
  // rope.scaling.attn_factor multiplies the attention factor derived from the factor.
  yarn.add_float32("llama.rope.scaling.attn_factor", 2);
  source = open_built(yarn);
  ASSERT_TRUE(source.is_ok()) << source.status().message();
  EXPECT_NEAR((*source)->hf_config()["rope_scaling"]["attention_factor"].get<double>(),
              2.0 * (0.1 * std::log(4.0) + 1.0), 1e-6);
}

TEST(GgufSource, OpensTheFuzzSeedModel) {
  auto source = open_gguf_model(test::source_dir() + "/fuzz/corpus/gguf_fuzzer/tiny_model.gguf");
  ASSERT_TRUE(source.is_ok()) << source.status().message();
  EXPECT_EQ((*source)->hf_config()["torch_dtype"], "float16");
  EXPECT_EQ((*source)->tensor_names().size(), 11u);
}

// The demo model, when present (it is not committed): the HF SmolLM2-135M layout.
TEST(GgufSource, DemoModelWhenPresent) {
  const std::string path = test::source_dir() + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!path_exists(path)) GTEST_SKIP() << path << " is absent";
  auto source = open_gguf_model(path);
  ASSERT_TRUE(source.is_ok()) << source.status().message();
  const json& config = (*source)->hf_config();
  EXPECT_EQ(config["model_type"], "llama");
  EXPECT_EQ(config["hidden_size"], 576);
  EXPECT_EQ(config["intermediate_size"], 1536);
  EXPECT_EQ(config["num_hidden_layers"], 30);
  EXPECT_EQ(config["num_attention_heads"], 9);
  EXPECT_EQ(config["num_key_value_heads"], 3);
  EXPECT_EQ(config["head_dim"], 64);
  EXPECT_EQ(config["vocab_size"], 49152);
  EXPECT_EQ(config["max_position_embeddings"], 8192);
  EXPECT_EQ(config["rope_theta"], 100000.0);
  EXPECT_EQ(config["rms_norm_eps"], 1e-5);
  EXPECT_EQ(config["tie_word_embeddings"], true);
  EXPECT_EQ(config["bos_token_id"], 1);
  EXPECT_EQ(config["eos_token_id"], 2);

  const std::vector<std::string> names = (*source)->tensor_names();
  EXPECT_EQ(names.size(), 2u + 30u * 9u);
  const std::map<std::string, Shape> expected = {
      {"model.embed_tokens.weight", {49152, 576}},
      {"model.norm.weight", {576}},
      {"model.layers.0.self_attn.q_proj.weight", {576, 576}},
      {"model.layers.0.self_attn.k_proj.weight", {192, 576}},
      {"model.layers.0.self_attn.v_proj.weight", {192, 576}},
      {"model.layers.0.self_attn.o_proj.weight", {576, 576}},
      {"model.layers.29.mlp.gate_proj.weight", {1536, 576}},
      {"model.layers.29.mlp.up_proj.weight", {1536, 576}},
      {"model.layers.29.mlp.down_proj.weight", {576, 1536}},
      {"model.layers.29.input_layernorm.weight", {576}},
      {"model.layers.29.post_attention_layernorm.weight", {576}},
  };
  for (const auto& [name, shape] : expected) {
    EXPECT_EQ((*source)->tensor_shape(name).value(), shape) << name;
  }
  auto key = (*source)->load_tensor("model.layers.0.self_attn.k_proj.weight");
  ASSERT_TRUE(key.is_ok()) << key.status().message();
  EXPECT_EQ(key->dtype(), DType::kF32);
  EXPECT_EQ(key->shape(), (Shape{192, 576}));
  auto norm = (*source)->load_tensor("model.norm.weight");
  ASSERT_TRUE(norm.is_ok());
  EXPECT_EQ(norm->dtype(), DType::kF32);
}

// A checkpoint converted from a GGUF says so, and `kite build --dtype auto` builds CUDA engines of
// it in bfloat16 whatever its dtype (an F16 GGUF may come from a bfloat16 model); the CPU keeps
// the checkpoint's dtype, and so do CUDA engines of other sources.
TEST(GgufSource, CheckpointRecordsItsSourceForTheBuildsDtype) {
  const std::string output = test::temp_dir() + "/ckpt";
  const test::CommandResult convert =
      test::run_kite("convert --gguf " + fixture("tiny_llama.gguf") + " --output_dir " + output);
  ASSERT_EQ(convert.exit_code, 0) << convert.output;
  Result<CheckpointConfig> config = read_checkpoint_config(output);
  ASSERT_TRUE(config.is_ok()) << config.status().message();
  EXPECT_EQ(config->source_format, "gguf");

  for (DType dtype : {DType::kF16, DType::kBF16, DType::kF32}) {
    CheckpointConfig checkpoint = *config;
    checkpoint.dtype = dtype;
    const std::string what = std::string(dtype_name(dtype));
    EXPECT_EQ(auto_weight_dtype(checkpoint, /*cuda=*/true), DType::kBF16) << what;
    EXPECT_EQ(auto_weight_dtype(checkpoint, /*cuda=*/false), dtype) << what;
    for (const char* format : {"huggingface", ""}) {  // "": written before the key
      checkpoint.source_format = format;
      EXPECT_EQ(auto_weight_dtype(checkpoint, /*cuda=*/true),
                dtype == DType::kF32 ? DType::kBF16 : dtype)
          << what << " " << format;
    }
  }
}

}  // namespace
}  // namespace kite
