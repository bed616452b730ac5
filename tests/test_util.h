// Helpers shared by Kite's tests: locating the source tree, data and the kite binary, running it.
#pragma once

#include <cstdlib>
#include <string>

namespace kite::test {

// Directory of the source tree (tests/fixtures lives below it).
std::string source_dir();
// ../shared/data by default; KITE_DATA_DIR overrides.
std::string data_dir();
// A fresh empty directory under the system temp dir, removed at process exit.
std::string temp_dir();

struct CommandResult {
  int exit_code = -1;  // -1 when killed by a signal
  int signal = 0;
  std::string output;  // stdout and stderr together
};
// Runs `kite <arguments>` (arguments are passed to the shell as written).
CommandResult run_kite(const std::string& arguments);

// A random checkpoint of `dtype` ("float32", "bfloat16", ...) of the tiny fixture Llama
// (tests/fixtures/tiny_llama, with its tokenizer) made by `kite convert --random`; its directory,
// or "" (and a test failure) when a command fails.
std::string make_tiny_checkpoint(const std::string& dtype = "float32");
// The demo model, models/SmolLM2-135M-Instruct.Q4_1.gguf, or "" when it was not fetched.
std::string demo_model();
// The demo model converted to a checkpoint of `dtype` ("float32", "bfloat16"); its directory,
// or "" (and a test failure) when the command fails.
std::string convert_demo_model(const std::string& dtype);
// An engine of `checkpoint` built with `kite build ... <build_flags>` (a CPU one unless the
// flags say --device cuda); "" on failure.
std::string build_engine(const std::string& checkpoint, const std::string& build_flags);

}  // namespace kite::test
