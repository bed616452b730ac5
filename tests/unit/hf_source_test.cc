// Tests for the Hugging Face folder source: config, tensors by HF name, tokenizer files, errors.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "core/file.h"
#include "formats/model_source.h"
#include "formats/safetensors.h"
#include "test_util.h"

namespace kite {
namespace {

std::string tiny_fixture() {
  return test::source_dir() + "/tests/fixtures/tiny_llama";
}

// A folder with the tiny fixture's config and tokenizer files and the given weights.
std::string make_folder(const std::vector<std::pair<std::string, Tensor>>& tensors) {
  const std::string directory = test::temp_dir();
  for (const char* name :
       {"config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"}) {
    std::filesystem::copy_file(tiny_fixture() + "/" + name, directory + "/" + name);
  }
  KITE_CHECK(write_safetensors(directory + "/model.safetensors", tensors).is_ok());
  return directory;
}

Tensor filled(DType dtype, Shape shape, uint8_t value) {
  Tensor tensor(dtype, std::move(shape));
  std::memset(tensor.data(), value, tensor.byte_size());
  return tensor;
}

TEST(HfSource, ReadsConfigTensorsAndTokenizer) {
  const std::string directory =
      make_folder({{"model.norm.weight", filled(DType::kBF16, {64}, 0x3f)},
                   {"model.embed_tokens.weight", filled(DType::kF32, {320, 64}, 1)}});
  Result<std::unique_ptr<ModelSource>> source = open_hf_directory(directory);
  ASSERT_TRUE(source.is_ok()) << source.status().message();
  EXPECT_EQ((*source)->description(), "HF folder " + directory);
  EXPECT_EQ((*source)->hf_config()["hidden_size"], 64);
  EXPECT_EQ((*source)->tensor_names(),
            std::vector<std::string>({"model.embed_tokens.weight", "model.norm.weight"}));
  EXPECT_EQ(*(*source)->tensor_shape("model.embed_tokens.weight"), Shape({320, 64}));
  EXPECT_EQ((*source)->tensor_shape("lm_head.weight").status().code(), StatusCode::kNotFound);

  Result<Tensor> norm = (*source)->load_tensor("model.norm.weight");
  ASSERT_TRUE(norm.is_ok()) << norm.status().message();
  EXPECT_EQ(norm->dtype(), DType::kBF16);  // as stored
  EXPECT_EQ(norm->shape(), Shape({64}));
  EXPECT_EQ(norm->data()[0], 0x3f);
  EXPECT_EQ((*source)->load_tensor("nope").status().code(), StatusCode::kNotFound);

  const std::string output = test::temp_dir();
  ASSERT_TRUE((*source)->write_tokenizer_files(output).is_ok());
  for (const char* name : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"}) {
    EXPECT_EQ(*read_file(output + "/" + name), *read_file(tiny_fixture() + "/" + name)) << name;
  }
  EXPECT_FALSE(path_exists(output + "/special_tokens_map.json"));  // absent in the source
}

TEST(HfSource, RefusesQuantizedTensors) {
  const std::string directory = make_folder({{"w", filled(DType::kI8, {4}, 1)}});
  Result<std::unique_ptr<ModelSource>> source = open_hf_directory(directory);
  ASSERT_TRUE(source.is_ok()) << source.status().message();
  const Status status = (*source)->load_tensor("w").status();
  EXPECT_EQ(status.code(), StatusCode::kUnsupported);
  EXPECT_NE(status.message().find("I8"), std::string::npos) << status.message();
}

TEST(HfSource, MissingTokenizerNamesFolderAndFile) {
  const std::string directory = make_folder({{"w", filled(DType::kF16, {4}, 1)}});
  std::filesystem::remove(directory + "/tokenizer.json");
  Result<std::unique_ptr<ModelSource>> source = open_hf_directory(directory);
  ASSERT_TRUE(source.is_ok()) << source.status().message();
  const Status status = (*source)->write_tokenizer_files(test::temp_dir());
  EXPECT_EQ(status.code(), StatusCode::kNotFound);
  EXPECT_NE(status.message().find(directory + " has no tokenizer.json"), std::string::npos)
      << status.message();
}

TEST(HfSource, FolderErrors) {
  Status status = open_hf_directory("/nonexistent/kite/model").status();
  EXPECT_EQ(status.code(), StatusCode::kNotFound);
  EXPECT_NE(status.message().find("/nonexistent/kite/model"), std::string::npos);

  const std::string file = test::temp_dir() + "/model.gguf";
  ASSERT_TRUE(write_file(file, "GGUF").is_ok());
  EXPECT_EQ(open_hf_directory(file).status().code(), StatusCode::kInvalidArgument);

  std::string directory = make_folder({{"w", filled(DType::kF16, {4}, 1)}});
  std::filesystem::remove(directory + "/config.json");
  status = open_hf_directory(directory).status();
  EXPECT_EQ(status.code(), StatusCode::kNotFound);
  EXPECT_NE(status.message().find(directory + " has no config.json"), std::string::npos);

  ASSERT_TRUE(write_file(directory + "/config.json", "{\"hidden_size\": 6").is_ok());
  status = open_hf_directory(directory).status();
  EXPECT_EQ(status.code(), StatusCode::kCorrupt);
  EXPECT_NE(status.message().find(directory + "/config.json"), std::string::npos);

  directory = make_folder({});
  std::filesystem::remove(directory + "/model.safetensors");
  status = open_hf_directory(directory).status();
  EXPECT_EQ(status.code(), StatusCode::kNotFound);
  EXPECT_NE(status.message().find("no model.safetensors"), std::string::npos);
  ASSERT_TRUE(write_file(directory + "/pytorch_model.bin", "pickle").is_ok());
  status = open_hf_directory(directory).status();
  EXPECT_EQ(status.code(), StatusCode::kUnsupported);
  EXPECT_NE(status.message().find("safe_serialization"), std::string::npos);

  directory = make_folder({});
  ASSERT_TRUE(write_file(directory + "/model.safetensors", "garbage!garbage!").is_ok());
  status = open_hf_directory(directory).status();
  EXPECT_EQ(status.code(), StatusCode::kCorrupt);
  EXPECT_NE(status.message().find(directory + "/model.safetensors"), std::string::npos);
}

}  // namespace
}  // namespace kite
