// `kite convert`: a Hugging Face folder or a GGUF file (or a config with random weights) to a Kite
// checkpoint. Flag names follow TensorRT-LLM's convert_checkpoint.py.
#include <cstdio>
#include <memory>

#include "formats/convert.h"
#include "tools/command.h"

namespace kite::tools {
namespace {

struct ConvertFlags {
  ConvertRequest request;
  std::string dtype;
  bool use_weight_only = false;
  std::string weight_only_precision = "int8";
  bool per_group = false;
  int64_t group_size = 128;
};

Status run_convert(ConvertFlags& flags) {
  if (!flags.dtype.empty()) {
    if (flags.dtype != "float32" && flags.dtype != "float16" && flags.dtype != "bfloat16") {
      return invalid_argument("--dtype '" + flags.dtype +
                              "' is not one of float32, float16, bfloat16");
    }
    flags.request.dtype = *parse_dtype_name(flags.dtype);
  }
  if (flags.use_weight_only) {
    KITE_ASSIGN_OR_RETURN(flags.request.weight_only.precision,
                          parse_weight_only_precision(flags.weight_only_precision));
    if (flags.per_group && flags.group_size < 1) {
      return invalid_argument("--group_size must be positive (64 and 128 are usual)");
    }
    flags.request.weight_only.group_size = flags.per_group ? flags.group_size : 0;
  } else if (flags.per_group) {
    return invalid_argument("--per_group quantizes weights only with --use_weight_only");
  }
  KITE_ASSIGN_OR_RETURN(ConvertSummary summary, convert_to_checkpoint(flags.request));
  std::string dtype(dtype_name(summary.dtype));
  if (summary.weight_only.enabled()) {
    dtype += ", linear weights " + describe_weight_only(summary.weight_only);
  }
  if (flags.request.fp8_kv_cache) dtype += ", fp8 KV cache";
  std::printf("wrote checkpoint %s: %zu tensors, %.1fM parameters, %s, %.1f MB%s\n",
              summary.output_dir.c_str(), summary.tensor_count,
              double(summary.parameter_count) / 1e6, dtype.c_str(),
              double(summary.bytes_written) / 1e6,
              summary.tokenizer_copied ? ", with tokenizer" : ", no tokenizer");
  std::printf("from %s\n", summary.converted_from.c_str());
  return Status::ok();
}

}  // namespace

Command add_convert_command(CLI::App& kite) {
  auto flags = std::make_shared<ConvertFlags>();
  CLI::App* app = kite.add_subcommand(
      "convert", "Convert a Hugging Face folder or a GGUF file into a Kite checkpoint");
  ConvertRequest& request = flags->request;
  app->add_option("--model_dir", request.model_dir,
                  "Hugging Face model folder (config.json, *.safetensors, tokenizer.json)");
  app->add_option("--gguf", request.gguf_path, "GGUF file (llama.cpp format)");
  app->add_option("--config", request.config_path,
                  "A Hugging Face config.json, for --random without a model folder");
  app->add_option("--output_dir", request.output_dir, "Checkpoint folder to write");
  app->add_option("--dtype", flags->dtype,
                  "float32, float16 or bfloat16 (default: the model's torch_dtype if one of "
                  "these, else float16)");
  app->add_flag("--random", request.random,
                "Random weights of the model's config instead of its weights (speed tests)");
  app->add_option("--seed", request.seed, "Seed of --random (default 0)");
  app->add_option("--tp_size", request.tp_size, "Tensor parallel size (default 1)");
  app->add_option("--pp_size", request.pp_size, "Pipeline parallel size (default 1)");
  app->add_flag("--use_weight_only", flags->use_weight_only,
                "Quantize the decoder's linear weights (W8A16 / W4A16); the rest stays in --dtype");
  app->add_option("--weight_only_precision", flags->weight_only_precision,
                  "int8 (default) or int4, with --use_weight_only");
  app->add_flag("--per_group", flags->per_group,
                "A scale per --group_size input columns instead of one per output row");
  app->add_option("--group_size", flags->group_size, "Columns per scale with --per_group (128)");
  app->add_flag("--fp8_kv_cache", request.fp8_kv_cache,
                "Engines of the checkpoint default to an fp8 (e4m3) KV cache (kite build "
                "--kv_cache_dtype auto; CPU engines)");
  return Command{app, [flags] { return run_convert(*flags); }};
}

}  // namespace kite::tools
