// The engine cache of one-step runs: key = CRC-32 of every file of the model (names, sizes and
// contents) and of the settings that change the engine (Kite version, device, GPU, dtype, limits).
#include "tools/model_cache.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <vector>

#include "core/file.h"
#include "formats/convert.h"
#include "formats/model_config.h"
#include "kernels/backend_factory.h"
#include "tools/build.h"

namespace kite::tools {
namespace {

uint32_t crc_of_text(const std::string& text, uint32_t crc) {
  return crc32(reinterpret_cast<const uint8_t*>(text.data()), text.size(), crc);
}

// The model's files: a GGUF file alone, or every regular file at the top of a folder (weights,
// config, tokenizer), by name.
Result<std::vector<std::string>> model_files(const std::string& model) {
  if (!path_exists(model)) {
    return not_found("--model " + model +
                     " does not exist: give a Hugging Face folder or a .gguf file");
  }
  if (!is_directory(model)) return std::vector<std::string>{model};
  std::vector<std::string> files;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(model, error)) {
    if (entry.is_regular_file()) files.push_back(entry.path().string());
  }
  if (error) return io_error("cannot list " + model + ": " + error.message());
  std::sort(files.begin(), files.end());
  return files;
}

Result<std::string> cache_key(const ModelEngineRequest& request, const std::string& device,
                              const std::string& gpu) {
  KITE_ASSIGN_OR_RETURN(const std::vector<std::string> files, model_files(request.model));
  uint32_t crc = 0;
  for (const std::string& path : files) {
    KITE_ASSIGN_OR_RETURN(const MappedFile file, MappedFile::open(path));
    crc = crc_of_text(
        std::filesystem::path(path).filename().string() + "\n" + std::to_string(file.size()) + "\n",
        crc);
    crc = crc32_parallel(file.data(), file.size(), crc);
  }
  const BuildLimits& limits = request.limits;
  const std::string settings =
      std::string("kite ") + KITE_VERSION + " engine " + std::to_string(kEngineFormatVersion) +
      " device " + device + " gpu " + gpu + " dtype " +
      (request.dtype.empty() ? "auto" : request.dtype) + " limits " +
      std::to_string(limits.max_batch_size) + "," + std::to_string(limits.max_input_len) + "," +
      std::to_string(limits.max_seq_len) + "," + std::to_string(limits.max_num_tokens) + "," +
      std::to_string(limits.tokens_per_block);
  const uint32_t settings_crc = crc_of_text(settings, 0);
  char key[32];
  std::snprintf(key, sizeof(key), "%08x%08x", crc, settings_crc);
  return std::string(key);
}

}  // namespace

std::string model_cache_dir(const std::string& cache_dir) {
  if (!cache_dir.empty()) return cache_dir;
  const char* kite = std::getenv("KITE_CACHE_DIR");
  if (kite && *kite) return kite;
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  if (xdg && *xdg) return std::string(xdg) + "/kite";
  const char* home = std::getenv("HOME");
  return std::string(home && *home ? home : ".") + "/.cache/kite";
}

Result<std::string> engine_for_model(const ModelEngineRequest& request) {
  std::string device = request.device;
  if (device.empty()) device = gpu_identity(0).is_ok() ? "cuda" : "cpu";
  if (device != "cpu" && device != "cuda") {
    return invalid_argument("--device " + device + ": choose cpu or cuda");
  }
  // Checked before the (possibly long) conversion rather than by the build after it.
  const std::string& dtype = request.dtype;
  if (!dtype.empty()) KITE_RETURN_IF_ERROR(check_weight_dtype_name(dtype));
  std::string gpu;
  if (device == "cuda") {
    KITE_ASSIGN_OR_RETURN(const GpuIdentity identity, gpu_identity(0));
    gpu = identity.name + " sm_" + std::to_string(identity.compute_capability);
  }
  KITE_ASSIGN_OR_RETURN(const std::string key, cache_key(request, device, gpu));
  const std::string engines = model_cache_dir(request.cache_dir) + "/engines";
  const std::string engine = engines + "/" + key;
  if (path_exists(engine + "/config.json")) {
    std::fprintf(stderr, "kite: engine of %s from the cache: %s\n", request.model.c_str(),
                 engine.c_str());
    return engine;
  }

  // Built in a folder of this process's own, then renamed into place: a failed or concurrent
  // build never leaves a half-written engine under the key.
  const std::string work = engines + "/" + key + ".building." + std::to_string(::getpid());
  std::error_code error;
  std::filesystem::remove_all(work, error);
  auto built = [&]() -> Status {
    KITE_RETURN_IF_ERROR(create_directories(work));
    ConvertRequest convert;
    (is_directory(request.model) ? convert.model_dir : convert.gguf_path) = request.model;
    convert.output_dir = work + "/checkpoint";
    // The checkpoint keeps the model's precision and the build converts, after it folds the norm
    // scales into the weights (CUDA), so that a float32 or GGUF model's folded products are
    // rounded to 16 bits once (docs/engine.md, "One step"). A model without a torch_dtype
    // converts to float32 rather than kite convert's float16 default, for the same reason.
    if (!convert.model_dir.empty()) {
      Result<ModelConfig> config = read_hf_config(request.model + "/config.json");
      if (config.is_ok() && !parse_dtype_name(config->torch_dtype).is_ok()) {
        convert.dtype = DType::kF32;
      }
    }
    std::fprintf(stderr, "kite: building an engine of %s for %s (once; cached in %s)\n",
                 request.model.c_str(), device.c_str(), engine.c_str());
    KITE_RETURN_IF_ERROR(convert_to_checkpoint(convert).status());
    BuildRequest build;
    build.checkpoint_dir = convert.output_dir;
    build.output_dir = work + "/engine";
    build.device = device;
    build.limits = request.limits;
    if (!dtype.empty()) build.dtype = dtype;
    KITE_RETURN_IF_ERROR(build_engine(build));
    std::filesystem::rename(build.output_dir, engine, error);
    // Another process may have finished the same engine first: theirs is as good.
    if (error && !path_exists(engine + "/config.json")) {
      return io_error("cannot move the engine into " + engine + ": " + error.message());
    }
    return Status::ok();
  };
  const Status status = built();
  std::filesystem::remove_all(work, error);
  KITE_RETURN_IF_ERROR(status);
  return engine;
}

void add_model_options(CLI::App& app, ModelEngineRequest& request) {
  app.add_option("--model", request.model,
                 "Instead of --engine_dir: a Hugging Face folder or GGUF file, built into an "
                 "engine with the default limits the first time and cached");
  app.add_option("--device", request.device,
                 "With --model: cpu or cuda (default: cuda when a GPU is visible)");
  app.add_option("--dtype", request.dtype,
                 "With --model: auto, float32, float16 or bfloat16 (default auto: the model's; "
                 "bfloat16 for a float32 model or a GGUF file on CUDA)");
}

Result<std::string> resolve_engine_dir(const std::string& engine_dir,
                                       const ModelEngineRequest& request) {
  if (!engine_dir.empty() && !request.model.empty()) {
    return invalid_argument("give --engine_dir or --model, not both");
  }
  if (request.model.empty()) {
    if (!request.device.empty() || !request.dtype.empty()) {
      return invalid_argument("--device and --dtype go with --model (an engine has its own)");
    }
    if (engine_dir.empty()) {
      return invalid_argument(
          "--engine_dir (an engine of kite build) or --model (a Hugging Face folder or GGUF "
          "file) is required");
    }
    return engine_dir;
  }
  return engine_for_model(request);
}

}  // namespace kite::tools
