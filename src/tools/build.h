// `kite build` as a function: a Kite checkpoint -> an engine folder, for the build command and for
// the commands that build a model in one step (`--model`, model_cache.h).
#pragma once

#include <string>

#include "core/status.h"
#include "formats/engine_file.h"

namespace kite::tools {

struct BuildRequest {
  std::string checkpoint_dir;
  std::string output_dir;
  std::string device = "cpu";  // "cpu" or "cuda"
  BuildLimits limits;
  bool multi_block_mode = true;
  int gpu = 0;  // the GPU the kernels are tuned on
  // auto (CPU: float32, CUDA: the weights' dtype), float32, float16, bfloat16 or fp8 (e4m3; CPU).
  std::string kv_cache_dtype = "auto";
  // The engine's weights: auto (the checkpoint's; for CUDA a float32 or GGUF checkpoint's become
  // bfloat16), float32, float16 or bfloat16. Converted at build, after the norm-scale fold.
  std::string dtype = "auto";
  // Where to write every candidate kernel's time of the GEMM tuning as CSV (CUDA; empty: nowhere).
  std::string tuning_log;
  // CUDA: after the GEMM tuning, time the one-row GEMMs' best candidates in the batch-1 decode
  // step itself and keep the fastest (tune_decode_step).
  bool tune_decode = false;
};

// Whether `name` is a weight dtype BuildRequest::dtype takes (auto, float32, float16, bfloat16):
// kInvalidArgument naming --dtype otherwise.
Status check_weight_dtype_name(const std::string& name);

// Checks the limits, plans memory, tunes the GEMMs (CUDA) and writes the engine, printing the plan
// and a summary line.
Status build_engine(const BuildRequest& request);

}  // namespace kite::tools
