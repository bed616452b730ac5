// Tests for `kite convert` (through the binary) and the checkpoint it writes: values in every
// dtype, random weights, and the errors a user can run into.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "core/file.h"
#include "core/half.h"
#include "formats/checkpoint.h"
#include "formats/convert.h"
#include "formats/engine_file.h"
#include "formats/model_config.h"
#include "formats/quantization.h"
#include "formats/safetensors.h"
#include "model/llama.h"
#include "test_util.h"

namespace kite {
namespace {

std::string tiny_fixture() {
  return test::source_dir() + "/tests/fixtures/tiny_llama";
}

ModelConfig tiny_config() {
  Result<ModelConfig> config = read_hf_config(tiny_fixture() + "/config.json");
  KITE_CHECK(config.is_ok());
  return *config;
}

// A HF folder holding the tiny fixture's config and tokenizer and weights of `dtype` with
// reproducible random values; returns the folder, and the weights through `weights`.
std::string make_hf_folder(DType dtype, std::map<std::string, Tensor>* weights = nullptr,
                           const std::vector<std::string>& skip = {}) {
  const std::string directory = test::temp_dir();
  for (const char* name :
       {"config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"}) {
    std::filesystem::copy_file(tiny_fixture() + "/" + name, directory + "/" + name);
  }
  std::mt19937 generator(1234);
  std::normal_distribution<float> normal(0.0f, 0.5f);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const WeightInfo& weight : model_weights(tiny_config())) {
    if (std::find(skip.begin(), skip.end(), weight.name) != skip.end()) continue;
    Tensor values(DType::kF32, weight.shape);
    for (int64_t i = 0; i < values.numel(); ++i) values.data_as<float>()[i] = normal(generator);
    Tensor stored = *convert_dtype(values.view(), dtype);
    if (weights) (*weights)[weight.name] = Tensor::copy_of(stored.view());
    tensors.emplace_back(weight.name, std::move(stored));
  }
  KITE_CHECK(write_safetensors(directory + "/model.safetensors", tensors).is_ok());
  return directory;
}

void expect_failure(const test::CommandResult& result, int exit_code,
                    const std::vector<std::string>& texts) {
  EXPECT_EQ(result.signal, 0);
  EXPECT_EQ(result.exit_code, exit_code) << result.output;
  for (const std::string& text : texts)
    EXPECT_NE(result.output.find(text), std::string::npos) << "no '" << text << "' in\n"
                                                           << result.output;
}

TEST(Convert, EveryDtypeKeepsTheValues) {
  std::map<std::string, Tensor> source;
  const std::string model_dir = make_hf_folder(DType::kF32, &source);
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    const std::string output = test::temp_dir() + "/ckpt";
    const test::CommandResult result =
        test::run_kite("convert --model_dir " + model_dir + " --output_dir " + output +
                       " --dtype " + std::string(dtype_name(dtype)));
    ASSERT_EQ(result.exit_code, 0) << result.output;
    EXPECT_NE(result.output.find("wrote checkpoint " + output), std::string::npos);

    Result<Checkpoint> checkpoint = Checkpoint::open(output);
    ASSERT_TRUE(checkpoint.is_ok()) << checkpoint.status().message();
    EXPECT_EQ(checkpoint->config().dtype, dtype);
    EXPECT_EQ(checkpoint->config().model, tiny_config());
    EXPECT_FALSE(checkpoint->config().random_weights);
    EXPECT_EQ(checkpoint->config().converted_from, "HF folder " + model_dir);
    EXPECT_EQ(checkpoint->config().source_format, "huggingface");
    EXPECT_EQ(checkpoint->file().names().size(), source.size());
    for (const auto& [name, expected] : source) {
      Result<TensorView> weight = checkpoint->weight(name);
      ASSERT_TRUE(weight.is_ok()) << weight.status().message();
      EXPECT_EQ(weight->dtype, dtype);
      EXPECT_EQ(weight->shape, expected.shape());
      // Bit-exact: the cast is the one convert_dtype does (round to nearest even).
      const Tensor cast = *convert_dtype(expected.view(), dtype);
      ASSERT_EQ(weight->byte_size(), cast.byte_size());
      EXPECT_EQ(std::memcmp(weight->data, cast.data(), cast.byte_size()), 0) << name;
    }
    for (const char* name : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"})
      EXPECT_EQ(*read_file(output + "/" + name), *read_file(tiny_fixture() + "/" + name));
  }
}

TEST(Convert, WidensBf16SourceExactlyAndDefaultsToTorchDtype) {
  std::map<std::string, Tensor> source;
  const std::string model_dir = make_hf_folder(DType::kBF16, &source);
  std::string output = test::temp_dir() + "/f32";
  ASSERT_EQ(test::run_kite("convert --model_dir " + model_dir + " --output_dir " + output +
                           " --dtype float32")
                .exit_code,
            0);
  Result<Checkpoint> checkpoint = Checkpoint::open(output);
  ASSERT_TRUE(checkpoint.is_ok()) << checkpoint.status().message();
  const std::string name = "model.layers.1.mlp.down_proj.weight";
  const std::vector<float> widened = *to_float32(*checkpoint->weight(name));
  const std::vector<float> original = *to_float32(source.at(name).view());
  EXPECT_EQ(widened, original);

  // No --dtype: the config's torch_dtype (bfloat16) is kept, so the bytes are copied unchanged.
  output = test::temp_dir() + "/default";
  ASSERT_EQ(
      test::run_kite("convert --model_dir " + model_dir + " --output_dir " + output).exit_code, 0);
  checkpoint = Checkpoint::open(output);
  ASSERT_TRUE(checkpoint.is_ok()) << checkpoint.status().message();
  EXPECT_EQ(checkpoint->config().dtype, DType::kBF16);
  const TensorView copied = *checkpoint->weight(name);
  EXPECT_EQ(std::memcmp(copied.data, source.at(name).data(), copied.byte_size()), 0);
}

TEST(Convert, ReplacesAnEarlierCheckpoint) {
  const std::string model_dir = make_hf_folder(DType::kF32);
  const std::string output = test::temp_dir();
  ASSERT_EQ(test::run_kite("convert --model_dir " + model_dir + " --output_dir " + output +
                           " --dtype float32")
                .exit_code,
            0);
  ASSERT_EQ(test::run_kite("convert --model_dir " + model_dir + " --output_dir " + output +
                           " --dtype float16")
                .exit_code,
            0);
  EXPECT_EQ(Checkpoint::open(output)->config().dtype, DType::kF16);
}

uint64_t file_hash(const std::string& path) {
  const std::string bytes = *read_file(path);
  return std::hash<std::string>()(bytes);
}

TEST(Convert, RandomWeightsAreSeededAndNeedOnlyTheConfig) {
  // A folder with config.json alone: no tensor file is read.
  const std::string model_dir = test::temp_dir();
  std::filesystem::copy_file(tiny_fixture() + "/config.json", model_dir + "/config.json");
  const std::string first = test::temp_dir() + "/a";
  const std::string second = test::temp_dir() + "/b";
  const std::string other_seed = test::temp_dir() + "/c";
  const std::string common = " --random --dtype float32 --model_dir " + model_dir;
  test::CommandResult result =
      test::run_kite("convert" + common + " --seed 7 --output_dir " + first);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("no tokenizer"), std::string::npos) << result.output;
  ASSERT_EQ(test::run_kite("convert" + common + " --seed 7 --output_dir " + second).exit_code, 0);
  ASSERT_EQ(test::run_kite("convert" + common + " --seed 8 --output_dir " + other_seed).exit_code,
            0);
  EXPECT_EQ(file_hash(checkpoint_rank_path(first, 0)), file_hash(checkpoint_rank_path(second, 0)));
  EXPECT_NE(file_hash(checkpoint_rank_path(first, 0)),
            file_hash(checkpoint_rank_path(other_seed, 0)));

  Result<Checkpoint> checkpoint = Checkpoint::open(first);
  ASSERT_TRUE(checkpoint.is_ok()) << checkpoint.status().message();
  EXPECT_TRUE(checkpoint->config().random_weights);
  EXPECT_EQ(checkpoint->config().source_format, "random");
  for (const WeightInfo& weight : model_weights(tiny_config())) {
    const std::vector<float> values = *to_float32(*checkpoint->weight(weight.name));
    if (weight.role == WeightRole::kNorm) {
      for (float value : values) ASSERT_EQ(value, 1.0f) << weight.name;
      continue;
    }
    double sum = 0, squares = 0;
    for (float value : values) {
      sum += value;
      squares += double(value) * value;
    }
    const double mean = sum / double(values.size());
    const double deviation = std::sqrt(squares / double(values.size()) - mean * mean);
    EXPECT_NEAR(mean, 0.0, 0.003) << weight.name;
    EXPECT_NEAR(deviation, 0.02, 0.002) << weight.name;
  }

  // The same weight gets the same values whatever the dtype (up to its rounding) and model.
  const WeightInfo weight = model_weights(tiny_config())[2];
  const std::vector<float> in_f32 = *to_float32(random_weight(weight, DType::kF32, 7).view());
  const std::vector<float> in_bf16 = *to_float32(random_weight(weight, DType::kBF16, 7).view());
  for (size_t i = 0; i < in_f32.size(); ++i) EXPECT_NEAR(in_f32[i], in_bf16[i], 0.001f);
  EXPECT_EQ(in_f32, *to_float32(*checkpoint->weight(weight.name)));

  // --config FILE works without any folder.
  const std::string from_config = test::temp_dir() + "/d";
  ASSERT_EQ(test::run_kite("convert --random --dtype float32 --seed 7 --config " + model_dir +
                           "/config.json --output_dir " + from_config)
                .exit_code,
            0);
  EXPECT_EQ(file_hash(checkpoint_rank_path(first, 0)),
            file_hash(checkpoint_rank_path(from_config, 0)));
}

TEST(Convert, RandomCopiesTokenizerWhenPresent) {
  const std::string model_dir = test::temp_dir();
  for (const char* name : {"config.json", "tokenizer.json"})
    std::filesystem::copy_file(tiny_fixture() + "/" + name, model_dir + "/" + name);
  const std::string output = test::temp_dir();
  const test::CommandResult result =
      test::run_kite("convert --random --model_dir " + model_dir + " --output_dir " + output);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("with tokenizer"), std::string::npos);
  EXPECT_TRUE(path_exists(output + "/tokenizer.json"));
}

// --use_weight_only: each decoder linear weight becomes its quantized values and scales, exactly
// as quantize_weight_only makes them from the converted weight; everything else is converted as
// usual. The engine built from it records the quantization and runs on the CPU; CUDA refuses one
// with float32 scales.
TEST(Convert, WeightOnlyQuantizesTheDecoderLinearWeights) {
  std::map<std::string, Tensor> weights;
  const std::string model_dir = make_hf_folder(DType::kF32, &weights);
  for (const auto& [flags, expected] : std::vector<std::pair<std::string, WeightOnlyConfig>>{
           {"--use_weight_only", {WeightOnlyPrecision::kInt8, 0}},
           {"--use_weight_only --weight_only_precision int4 --per_group --group_size 32",
            {WeightOnlyPrecision::kInt4, 32}}}) {
    const std::string output = test::temp_dir() + "/quantized";
    const test::CommandResult convert =
        test::run_kite("convert --model_dir " + model_dir + " --output_dir " + output +
                       " --dtype bfloat16 " + flags);
    ASSERT_EQ(convert.exit_code, 0) << convert.output;
    EXPECT_NE(convert.output.find("linear weights " + describe_weight_only(expected)),
              std::string::npos)
        << convert.output;
    const Checkpoint checkpoint = Checkpoint::open(output).value();
    EXPECT_EQ(checkpoint.config().weight_only, expected);
    EXPECT_EQ(checkpoint.config().dtype, DType::kBF16);
    for (const WeightInfo& info : model_weights(tiny_config())) {
      const TensorView stored = checkpoint.weight(info.name).value();
      const Tensor converted = convert_dtype(weights.at(info.name).view(), DType::kBF16).value();
      if (!is_weight_only_quantized(info, expected)) {
        EXPECT_EQ(stored.dtype, DType::kBF16) << info.name;
        EXPECT_EQ(std::memcmp(stored.data, converted.data(), converted.byte_size()), 0)
            << info.name;
        continue;
      }
      const QuantizedWeight want =
          quantize_weight_only(weights.at(info.name).view(), DType::kBF16, expected).value();
      const TensorView scales = checkpoint.weight(weight_scale_name(info.name)).value();
      ASSERT_EQ(stored.shape, want.values.shape()) << info.name;
      ASSERT_EQ(scales.shape, want.scales.shape()) << info.name;
      EXPECT_EQ(std::memcmp(stored.data, want.values.data(), want.values.byte_size()), 0)
          << info.name;
      EXPECT_EQ(std::memcmp(scales.data, want.scales.data(), want.scales.byte_size()), 0)
          << info.name;
    }
    EXPECT_EQ(checkpoint.weight("lm_head.weight")->dtype, DType::kBF16);

    const std::string engine = test::build_engine(output,
                                                  "--max_batch_size 1 --max_seq_len 64 "
                                                  "--max_input_len 32");
    const EngineConfig engine_config = read_engine_config(engine).value();
    EXPECT_EQ(engine_config.weight_only, expected);
    const test::CommandResult run =
        test::run_kite("run --engine_dir " + engine + " --input_text 'hello' --max_output_len 4");
    EXPECT_EQ(run.exit_code, 0) << run.output;
    // CUDA engines run bfloat16 or float16 scales: a float32 quantized checkpoint is refused
    // before any GPU is looked for, with the conversion that makes one it runs.
    const std::string float32 = test::temp_dir() + "/quantized_f32";
    ASSERT_EQ(test::run_kite("convert --model_dir " + model_dir + " --output_dir " + float32 +
                             " --dtype float32 " + flags)
                  .exit_code,
              0);
    expect_failure(test::run_kite("build --checkpoint_dir " + float32 + " --output_dir " +
                                  test::temp_dir() + "/gpu --device cuda"),
                   1, {"float32 scales", "--dtype bfloat16 --use_weight_only"});
  }
}

// `kite run --model`: a Hugging Face folder is converted and built with the default limits once,
// then found in the cache by its content; the outputs are those of the three-command workflow, and
// a changed weight file makes a new engine.
TEST(OneStepRun, BuildsOnceCachesByContentAndMatchesConvertBuildRun) {
  std::map<std::string, Tensor> weights;
  const std::string model_dir = make_hf_folder(DType::kF32, &weights);
  const std::string cache = test::temp_dir();
  ASSERT_EQ(setenv("KITE_CACHE_DIR", cache.c_str(), 1), 0);
  const std::string prompt = " --input_text 'hello world' --max_output_len 6 --output_json ";
  auto output_ids = [](const std::string& json_path) {
    return nlohmann::json::parse(read_file(json_path).value()).at(0).at("output_ids");
  };
  const std::string first_json = test::temp_dir() + "/first.json";
  const test::CommandResult first =
      test::run_kite("run --model " + model_dir + " --device cpu" + prompt + first_json);
  ASSERT_EQ(first.exit_code, 0) << first.output;
  EXPECT_NE(first.output.find("building an engine of " + model_dir), std::string::npos)
      << first.output;
  const std::string second_json = test::temp_dir() + "/second.json";
  const test::CommandResult second =
      test::run_kite("run --model " + model_dir + " --device cpu" + prompt + second_json);
  ASSERT_EQ(second.exit_code, 0) << second.output;
  EXPECT_NE(second.output.find("from the cache"), std::string::npos) << second.output;
  EXPECT_EQ(second.output.find("building"), std::string::npos) << second.output;
  EXPECT_EQ(output_ids(first_json), output_ids(second_json));

  const std::string checkpoint = test::temp_dir() + "/ckpt";
  ASSERT_EQ(
      test::run_kite("convert --model_dir " + model_dir + " --output_dir " + checkpoint).exit_code,
      0);
  const std::string engine = test::build_engine(checkpoint, "");
  const std::string three_json = test::temp_dir() + "/three.json";
  ASSERT_EQ(test::run_kite("run --engine_dir " + engine + prompt + three_json).exit_code, 0);
  EXPECT_EQ(output_ids(first_json), output_ids(three_json));

  // Other weights, same file names and sizes: another key, another engine.
  std::vector<std::pair<std::string, Tensor>> changed;
  for (auto& [name, tensor] : weights) {
    Tensor copy = Tensor::copy_of(tensor.view());
    copy.data_as<float>()[0] += 1.0f;
    changed.emplace_back(name, std::move(copy));
  }
  ASSERT_TRUE(write_safetensors(model_dir + "/model.safetensors", changed).is_ok());
  const test::CommandResult third =
      test::run_kite("run --model " + model_dir + " --device cpu" + prompt + first_json);
  ASSERT_EQ(third.exit_code, 0) << third.output;
  EXPECT_NE(third.output.find("building an engine"), std::string::npos) << third.output;
  size_t engines = 0;
  for (const auto& entry : std::filesystem::directory_iterator(cache + "/engines")) {
    EXPECT_EQ(entry.path().string().find(".building"), std::string::npos) << entry.path();
    ++engines;
  }
  EXPECT_EQ(engines, 2u);

  // --dtype is the build's: the checkpoint keeps a float32 model's precision and the engine
  // converts after the norm-scale fold, so a folded weight is bf16(W w) of the float32 values,
  // rounded once.
  nlohmann::json hf_config = nlohmann::json::parse(read_file(model_dir + "/config.json").value());
  hf_config["torch_dtype"] = "float32";
  ASSERT_TRUE(write_file(model_dir + "/config.json", hf_config.dump()).is_ok());
  ASSERT_EQ(setenv("KITE_FOLD_NORM_SCALES", "1", 1), 0);
  const test::CommandResult bf16 = test::run_kite(
      "run --model " + model_dir + " --device cpu --dtype bfloat16" + prompt + first_json);
  unsetenv("KITE_FOLD_NORM_SCALES");
  ASSERT_EQ(bf16.exit_code, 0) << bf16.output;
  const size_t at = bf16.output.find("cached in ");
  ASSERT_NE(at, std::string::npos) << bf16.output;
  const std::string bf16_engine = bf16.output.substr(at + 10, bf16.output.find(')', at) - at - 10);
  const EngineConfig bf16_config = read_engine_config(bf16_engine).value();
  EXPECT_EQ(bf16_config.weight_dtype, DType::kBF16);
  EXPECT_TRUE(bf16_config.norm_scales_folded);
  std::map<std::string, const float*> sources;
  for (const auto& [name, tensor] : changed) sources[name] = tensor.data_as<float>();
  const EngineFile file = EngineFile::open(engine_rank_path(bf16_engine, 0)).value();
  const std::string q = "model.layers.0.self_attn.q_proj.weight";
  const TensorView stored = file.tensor(q).value();
  const float* norm = sources.at(folded_norm_of(q));
  const int64_t columns = stored.shape.back();
  for (int64_t i = 0; i < stored.numel(); ++i) {
    const float expected = bf16_to_float(float_to_bf16(sources.at(q)[i] * norm[i % columns]));
    ASSERT_EQ(load_float(DType::kBF16, stored.data, size_t(i)), expected) << "element " << i;
  }

  const std::string run = "run --input_text hi ";
  expect_failure(test::run_kite(run + "--model " + model_dir + " --dtype int8"), 2,
                 {"choose auto, float32, float16 or bfloat16"});
  expect_failure(test::run_kite(run + "--model " + model_dir + " --engine_dir " + engine), 2,
                 {"not both"});
  expect_failure(test::run_kite(run + "--model " + model_dir + "/nothing"), 1, {"does not exist"});
  expect_failure(test::run_kite(run + "--model " + model_dir + " --device tpu"), 2,
                 {"choose cpu or cuda"});
  expect_failure(test::run_kite(run + "--engine_dir " + engine + " --dtype float16"), 2,
                 {"go with --model"});
  expect_failure(test::run_kite(run), 2, {"--engine_dir", "--model"});
  expect_failure(test::run_kite("serve --model " + model_dir + " --engine_dir " + engine), 2,
                 {"not both"});
  unsetenv("KITE_CACHE_DIR");
}

TEST(ConvertErrors, WeightOnlyFlags) {
  const std::string model_dir = make_hf_folder(DType::kF32);
  const std::string output = test::temp_dir() + "/out";
  const std::string base = "convert --model_dir " + model_dir + " --output_dir " + output;
  expect_failure(test::run_kite(base + " --use_weight_only --weight_only_precision int3"), 2,
                 {"'int3' is not one of int8, int4"});
  expect_failure(test::run_kite(base + " --per_group"), 2, {"with --use_weight_only"});
  // The tiny model's linear weights have 64 and 160 columns.
  expect_failure(test::run_kite(base + " --use_weight_only --per_group --group_size 48"), 2,
                 {"--group_size 48 does not divide the 64 columns"});
  expect_failure(test::run_kite(base + " --use_weight_only --per_group --group_size 0"), 2,
                 {"--group_size must be positive"});
  EXPECT_FALSE(path_exists(output + "/config.json"));
}

TEST(ConvertErrors, MissingInputs) {
  const std::string output = test::temp_dir() + "/out";
  expect_failure(test::run_kite("convert --model_dir /nonexistent/model --output_dir " + output), 1,
                 {"kite convert: error:", "/nonexistent/model", "does not exist"});

  std::string model_dir = make_hf_folder(DType::kF32);
  std::filesystem::remove(model_dir + "/config.json");
  expect_failure(test::run_kite("convert --model_dir " + model_dir + " --output_dir " + output), 1,
                 {model_dir + " has no config.json"});
  expect_failure(
      test::run_kite("convert --random --model_dir " + model_dir + " --output_dir " + output), 1,
      {model_dir + " has no config.json"});

  model_dir = make_hf_folder(DType::kF32);
  std::filesystem::remove(model_dir + "/tokenizer.json");
  expect_failure(test::run_kite("convert --model_dir " + model_dir + " --output_dir " + output), 1,
                 {model_dir + " has no tokenizer.json"});

  model_dir = make_hf_folder(DType::kF32, nullptr, {"model.layers.1.mlp.up_proj.weight"});
  expect_failure(test::run_kite("convert --model_dir " + model_dir + " --output_dir " + output), 1,
                 {"lacks tensor 'model.layers.1.mlp.up_proj.weight'"});
  EXPECT_FALSE(path_exists(output + "/config.json"));
}

TEST(ConvertErrors, UnsupportedArchitectureListsSupportedOnes) {
  const std::string model_dir = make_hf_folder(DType::kF32);
  nlohmann::json config = nlohmann::json::parse(*read_file(model_dir + "/config.json"));
  config["model_type"] = "gpt_neox";
  config["architectures"] = {"GPTNeoXForCausalLM"};
  ASSERT_TRUE(write_file(model_dir + "/config.json", config.dump()).is_ok());
  expect_failure(
      test::run_kite("convert --model_dir " + model_dir + " --output_dir " + test::temp_dir()), 1,
      {"unsupported architecture 'gpt_neox' in " + model_dir +
       "/config.json; Kite supports: llama, mistral, qwen2"});
}

TEST(ConvertErrors, CorruptOrMismatchedSafetensors) {
  std::string model_dir = make_hf_folder(DType::kF32);
  const std::string weights = model_dir + "/model.safetensors";
  std::string bytes = *read_file(weights);
  bytes.resize(bytes.size() / 2);
  ASSERT_TRUE(write_file(weights, bytes).is_ok());
  expect_failure(
      test::run_kite("convert --model_dir " + model_dir + " --output_dir " + test::temp_dir()), 1,
      {weights, "out of range"});

  // A tensor the architecture does not have (a Qwen3-style q_norm in a llama folder).
  model_dir = make_hf_folder(DType::kF32);
  std::vector<std::pair<std::string, Tensor>> tensors;
  const SafetensorsFile file = SafetensorsFile::open(model_dir + "/model.safetensors").value();
  for (const std::string& name : file.names())
    tensors.emplace_back(name, Tensor::copy_of(*file.tensor(name)));
  tensors.emplace_back("model.layers.0.self_attn.q_norm.weight", Tensor(DType::kF32, {16}));
  ASSERT_TRUE(write_safetensors(model_dir + "/model.safetensors", tensors).is_ok());
  expect_failure(
      test::run_kite("convert --model_dir " + model_dir + " --output_dir " + test::temp_dir()), 1,
      {"'model.layers.0.self_attn.q_norm.weight'", "does not use"});

  // A tensor whose shape disagrees with config.json.
  tensors.pop_back();
  tensors[0].second = Tensor(DType::kF32, {320, 32});
  ASSERT_TRUE(write_safetensors(model_dir + "/model.safetensors", tensors).is_ok());
  expect_failure(
      test::run_kite("convert --model_dir " + model_dir + " --output_dir " + test::temp_dir()), 1,
      {"has shape [320, 32] but config.json implies"});
}

TEST(ConvertErrors, BadFlagsExitWithTwo) {
  const std::string model_dir = make_hf_folder(DType::kF32);
  const std::string output = test::temp_dir() + "/out";
  const std::string base = "convert --model_dir " + model_dir + " --output_dir " + output;
  expect_failure(test::run_kite(base + " --dtype float64"), 2, {"--dtype 'float64'"});
  expect_failure(test::run_kite(base + " --dtype int8"), 2, {"--dtype 'int8'"});
  expect_failure(test::run_kite("convert --output_dir " + output), 2, {"--model_dir"});
  expect_failure(test::run_kite("convert --model_dir " + model_dir), 2, {"--output_dir"});
  expect_failure(test::run_kite(base + " --gguf x.gguf"), 2, {"give one of"});
  expect_failure(test::run_kite(base + " --config " + model_dir + "/config.json"), 2,
                 {"--config is only for --random"});
  expect_failure(test::run_kite(base + " --seed banana"), 2, {});
  expect_failure(test::run_kite(base + " --no_such_flag"), 2, {});
  expect_failure(test::run_kite("convert --model_dir " + model_dir + " --output_dir " + model_dir),
                 2, {"model folder itself"});
  EXPECT_FALSE(path_exists(output));
}

TEST(ConvertErrors, ParallelSizes) {
  const std::string model_dir = make_hf_folder(DType::kF32);
  const std::string base =
      "convert --model_dir " + model_dir + " --output_dir " + test::temp_dir() + "/out";
  // The tiny model has 4 heads, 2 key/value heads, intermediate 160 and 2 layers.
  expect_failure(test::run_kite(base + " --tp_size 3"), 2,
                 {"--tp_size 3 cannot split this model", "tp sizes that work: 1, 2, 4"});
  expect_failure(test::run_kite(base + " --pp_size 3"), 2, {"pp sizes that work: 1, 2"});
  expect_failure(test::run_kite(base + " --tp_size 0"), 2, {"at least 1"});
  expect_failure(test::run_kite(base + " --tp_size 2"), 1,
                 {"tensor/pipeline parallel conversion is not supported yet; use --tp_size 1"});
}

TEST(ConvertErrors, UnwritableOutput) {
  const std::string model_dir = make_hf_folder(DType::kF32);
  // A path below a regular file cannot be created, even by root.
  const std::string blocker = test::temp_dir() + "/file";
  ASSERT_TRUE(write_file(blocker, "x").is_ok());
  expect_failure(
      test::run_kite("convert --model_dir " + model_dir + " --output_dir " + blocker + "/ckpt"), 1,
      {"cannot create directory " + blocker + "/ckpt"});
  expect_failure(test::run_kite("convert --model_dir " + model_dir + " --output_dir " + blocker), 2,
                 {blocker + " is a file"});

  // A folder holding some other config.json (a HF model) is not overwritten.
  const std::string other_model = make_hf_folder(DType::kF32);
  const std::string before = *read_file(other_model + "/config.json");
  expect_failure(
      test::run_kite("convert --model_dir " + model_dir + " --output_dir " + other_model), 2,
      {"not a Kite checkpoint"});
  EXPECT_EQ(*read_file(other_model + "/config.json"), before);
}

TEST(Checkpoint, RefusesBrokenCheckpoints) {
  const std::string model_dir = make_hf_folder(DType::kF32);
  const std::string output = test::temp_dir();
  ASSERT_EQ(test::run_kite("convert --model_dir " + model_dir + " --output_dir " + output +
                           " --dtype float16")
                .exit_code,
            0);
  const std::string config_path = output + "/config.json";
  const nlohmann::json good = nlohmann::json::parse(*read_file(config_path));
  EXPECT_EQ(good["kite_checkpoint_version"], 1);
  EXPECT_EQ(good["mapping"], nlohmann::json({{"world_size", 1}, {"tp_size", 1}, {"pp_size", 1}}));
  EXPECT_TRUE(good["quantization"]["weight_only"].is_null());

  auto open_with = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json config = good;
    edit(config);
    KITE_CHECK(write_file(config_path, config.dump()).is_ok());
    return Checkpoint::open(output).status();
  };
  Status status = open_with([](nlohmann::json& config) { config["kite_checkpoint_version"] = 2; });
  EXPECT_EQ(status.code(), StatusCode::kUnsupported);
  EXPECT_NE(status.message().find("version 2"), std::string::npos);
  status = open_with([](nlohmann::json& config) { config.erase("kite_checkpoint_version"); });
  EXPECT_NE(status.message().find("kite convert"), std::string::npos);
  // Quantizations this version does not know, and weight-only entries it cannot read.
  status = open_with([](nlohmann::json& config) {
    config["quantization"]["smoothquant"] = {{"alpha", 0.5}};
  });
  EXPECT_EQ(status.code(), StatusCode::kUnsupported);
  status = open_with([](nlohmann::json& config) {
    config["quantization"]["weight_only"] = {{"precision", "int2"}, {"group_size", 0}};
  });
  EXPECT_EQ(status.code(), StatusCode::kUnsupported);
  status =
      open_with([](nlohmann::json& config) { config["quantization"]["weight_only"] = "int4"; });
  EXPECT_EQ(status.code(), StatusCode::kCorrupt);
  // Float weights under a config saying they are quantized.
  status = open_with([](nlohmann::json& config) {
    config["quantization"]["weight_only"] = {{"precision", "int8"}, {"group_size", 0}};
  });
  EXPECT_EQ(status.code(), StatusCode::kCorrupt);
  EXPECT_NE(status.message().find("config.json implies int8"), std::string::npos)
      << status.message();
  status = open_with([](nlohmann::json& config) { config["mapping"]["world_size"] = 3; });
  EXPECT_EQ(status.code(), StatusCode::kCorrupt);
  status = open_with([](nlohmann::json& config) { config["dtype"] = "int8"; });
  EXPECT_EQ(status.code(), StatusCode::kCorrupt);
  // A weight of another dtype than config.json says.
  status = open_with([](nlohmann::json& config) { config["dtype"] = "bfloat16"; });
  EXPECT_EQ(status.code(), StatusCode::kCorrupt);
  EXPECT_NE(status.message().find("config.json implies bfloat16"), std::string::npos);
  // A config describing a bigger model than the weights.
  status = open_with([](nlohmann::json& config) { config["num_hidden_layers"] = 3; });
  EXPECT_NE(status.message().find("lacks weight 'model.layers.2.input_layernorm.weight'"),
            std::string::npos);
  status = open_with([](nlohmann::json& config) { config["tie_word_embeddings"] = true; });
  EXPECT_NE(status.message().find("'lm_head.weight' that config.json does not describe"),
            std::string::npos);

  ASSERT_TRUE(write_file(config_path, good.dump()).is_ok());
  EXPECT_TRUE(Checkpoint::open(output).is_ok());
  std::filesystem::remove(checkpoint_rank_path(output, 0));
  EXPECT_EQ(Checkpoint::open(output).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(Checkpoint::open(output + "/missing").status().code(), StatusCode::kNotFound);
}

TEST(Checkpoint, ParallelMappingListsWorkingSizes) {
  const ModelConfig llama =
      *read_hf_config(test::source_dir() + "/tests/fixtures/hf_configs/llama-3-8b.json");
  EXPECT_TRUE(check_parallel_mapping(llama, 8, 4).is_ok());
  Status status = check_parallel_mapping(llama, 3, 1);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("tp sizes that work: 1, 2, 4, 8, 16, 32"), std::string::npos)
      << status.message();
  status = check_parallel_mapping(llama, 1, 5);
  EXPECT_NE(status.message().find("pp sizes that work: 1, 2, 4, 8, 16, 32"), std::string::npos)
      << status.message();

  // SmolLM2-135M: 9 heads, 3 key/value heads, intermediate 1536 = 2^9 * 3.
  const ModelConfig smol =
      *read_hf_config(test::source_dir() + "/tests/fixtures/hf_configs/smollm2-135m.json");
  status = check_parallel_mapping(smol, 2, 1);
  EXPECT_NE(status.message().find("num_attention_heads 9"), std::string::npos);
  EXPECT_NE(status.message().find("tp sizes that work: 1, 3"), std::string::npos)
      << status.message();
}

}  // namespace
}  // namespace kite
