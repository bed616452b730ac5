// The served model of the server's tests: the tiny fixture tokenizer (byte-level BPE) with a
// ChatML chat template, limits of FakeExecutor (64 input tokens, 128 in all).
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "core/file.h"
#include "fake_executor.h"
#include "server/served_model.h"
#include "test_util.h"

namespace kite::test {

inline constexpr const char* kChatTemplate =
    "{% for message in messages %}{{ bos_token + message['role'] + '\\n' + message['content'] + "
    "eos_token + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ bos_token + 'assistant\\n' "
    "}}{% endif %}";

// A folder with tokenizer.json and a tokenizer_config.json holding `config_json`.
inline std::string served_model_dir(const std::string& config_json) {
  const std::string directory = temp_dir();
  std::filesystem::copy_file(source_dir() + "/tests/fixtures/tiny_llama/tokenizer.json",
                             directory + "/tokenizer.json");
  EXPECT_TRUE(write_file(directory + "/tokenizer_config.json", config_json).is_ok());
  return directory;
}

inline std::string default_tokenizer_config() {
  nlohmann::json config = {{"bos_token", "<s>"}, {"eos_token", "</s>"}};
  config["chat_template"] = kChatTemplate;
  return config.dump();
}

inline server::ServedModel test_served_model(const std::string& name = "tiny") {
  auto model = server::load_served_model(served_model_dir(default_tokenizer_config()), name,
                                         FakeExecutor::kMaxInputLen, FakeExecutor::kMaxSeqLen);
  EXPECT_TRUE(model.is_ok()) << model.status().message();
  return std::move(*model);
}

}  // namespace kite::test
