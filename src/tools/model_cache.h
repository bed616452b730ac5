// One-step runs (`kite run --model`, `kite serve --model`): a Hugging Face folder or a GGUF file is
// converted and built into an engine with default limits, and the engine kept in a cache folder
// under a key made of the model files' contents and the build settings, so that later runs of the
// same model start from the engine (docs/engine.md, "One step").
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "core/status.h"
#include "formats/engine_file.h"

namespace kite::tools {

struct ModelEngineRequest {
  std::string model;   // a Hugging Face folder or a .gguf file
  std::string device;  // "cpu" or "cuda"; empty: cuda when a GPU is visible, else cpu
  // The engine's weight dtype, as kite build --dtype; empty: auto (the model's; bfloat16 for a
  // float32 model or a GGUF file on CUDA).
  std::string dtype;
  // Empty: $KITE_CACHE_DIR, else $XDG_CACHE_HOME/kite, else ~/.cache/kite.
  std::string cache_dir;
  BuildLimits limits;
};

// The cache folder a request uses.
std::string model_cache_dir(const std::string& cache_dir);

// Adds --model, --device and --dtype (one-step runs) to a command that also takes --engine_dir.
void add_model_options(CLI::App& app, ModelEngineRequest& request);

// --engine_dir, or the engine of --model (engine_for_model); exactly one of the two must be given.
Result<std::string> resolve_engine_dir(const std::string& engine_dir,
                                       const ModelEngineRequest& request);

// The engine folder for the request: the cached one when the key matches, otherwise one built now
// (and cached; a failed build leaves nothing behind). Prints one line saying which.
Result<std::string> engine_for_model(const ModelEngineRequest& request);

}  // namespace kite::tools
