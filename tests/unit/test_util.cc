// Implementation of the shared test helpers.
#include "test_util.h"

#include <gtest/gtest.h>

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <random>
#include <vector>

namespace kite::test {
namespace {

std::string env_or(const char* name, const std::string& fallback) {
  const char* value = std::getenv(name);
  return value && *value ? value : fallback;
}

struct TempDirs {
  std::vector<std::string> paths;
  ~TempDirs() {
    std::error_code ignored;
    for (const auto& path : paths) std::filesystem::remove_all(path, ignored);
  }
};

}  // namespace

#ifndef KITE_TEST_SOURCE_DIR
#define KITE_TEST_SOURCE_DIR "."
#endif
#ifndef KITE_TEST_DATA_DIR
#define KITE_TEST_DATA_DIR ""
#endif
#ifndef KITE_TEST_BINARY
#define KITE_TEST_BINARY "kite"
#endif

std::string source_dir() {
  return env_or("KITE_SOURCE_DIR", KITE_TEST_SOURCE_DIR);
}
std::string data_dir() {
  const std::string built_in = KITE_TEST_DATA_DIR;
  return env_or("KITE_DATA_DIR", built_in.empty() ? source_dir() + "/../shared/data" : built_in);
}

std::string temp_dir() {
  static TempDirs dirs;
  std::random_device random;
  const auto path = std::filesystem::temp_directory_path() /
                    ("kite_test_" + std::to_string(random()) + std::to_string(random()));
  std::filesystem::create_directories(path);
  dirs.paths.push_back(path.string());
  return path.string();
}

CommandResult run_kite(const std::string& arguments) {
  const std::string command = env_or("KITE_BINARY", KITE_TEST_BINARY) + " " + arguments + " 2>&1";
  CommandResult result;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (!pipe) return result;
  std::array<char, 4096> buffer;
  size_t n;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0)
    result.output.append(buffer.data(), n);
  const int status = ::pclose(pipe);
  if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) result.signal = WTERMSIG(status);
  return result;
}

std::string make_tiny_checkpoint(const std::string& dtype) {
  const std::string fixture = source_dir() + "/tests/fixtures/tiny_llama";
  const std::string model_dir = temp_dir();
  for (const char* name : {"config.json", "tokenizer.json", "tokenizer_config.json"}) {
    std::filesystem::copy_file(fixture + "/" + name, model_dir + "/" + name);
  }
  const std::string checkpoint = temp_dir() + "/checkpoint";
  const CommandResult convert = run_kite("convert --random --dtype " + dtype + " --model_dir " +
                                         model_dir + " --output_dir " + checkpoint);
  EXPECT_EQ(convert.exit_code, 0) << convert.output;
  return convert.exit_code == 0 ? checkpoint : "";
}

std::string demo_model() {
  const std::string gguf = source_dir() + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  return std::filesystem::exists(gguf) ? gguf : "";
}

std::string convert_demo_model(const std::string& dtype) {
  const std::string checkpoint = temp_dir() + "/ckpt";
  const CommandResult convert = run_kite("convert --gguf " + demo_model() + " --output_dir " +
                                         checkpoint + " --dtype " + dtype);
  EXPECT_EQ(convert.exit_code, 0) << convert.output;
  return convert.exit_code == 0 ? checkpoint : "";
}

std::string build_engine(const std::string& checkpoint, const std::string& build_flags) {
  const std::string engine = temp_dir() + "/engine";
  const CommandResult build = run_kite("build --checkpoint_dir " + checkpoint + " --output_dir " +
                                       engine + " " + build_flags);
  EXPECT_EQ(build.exit_code, 0) << build.output;
  return build.exit_code == 0 ? engine : "";
}

}  // namespace kite::test
