// A model to convert, seen through the Hugging Face layout whatever its file format: the HF
// config.json object, tensors under their HF names (e.g. "model.layers.0.self_attn.q_proj.weight"),
// and tokenizer files. `kite convert` reads every input through this interface.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace kite {

class ModelSource {
 public:
  virtual ~ModelSource() = default;

  // Where the model came from, for messages ("a HF folder /x", "GGUF file /y.gguf").
  virtual std::string description() const = 0;
  // The model's configuration as a Hugging Face config.json object.
  virtual const nlohmann::json& hf_config() const = 0;
  // HF tensor names, sorted.
  virtual std::vector<std::string> tensor_names() const = 0;
  virtual Result<Shape> tensor_shape(const std::string& hf_name) const = 0;
  // The tensor in a floating dtype: as stored for F32/F16/BF16 sources, float32 for quantized
  // GGUF tensors (dequantized), with any layout change of the source format undone.
  virtual Result<Tensor> load_tensor(const std::string& hf_name) const = 0;
  // Writes tokenizer.json (and tokenizer_config.json / generation_config.json where known) into
  // `output_dir`.
  virtual Status write_tokenizer_files(const std::string& output_dir) const = 0;
};

// A Hugging Face model folder: config.json, *.safetensors (single or sharded), tokenizer files.
Result<std::unique_ptr<ModelSource>> open_hf_directory(const std::string& directory);
// Copies tokenizer.json and, when present, tokenizer_config.json, generation_config.json and
// special_tokens_map.json from a HF folder into `output_dir`. Returns whether tokenizer.json was
// there; without it, an error when `required`.
Result<bool> copy_hf_tokenizer_files(const std::string& model_dir, const std::string& output_dir,
                                     bool required);
// A GGUF file of a supported architecture (llama family), mapped to the HF Llama layout.
Result<std::unique_ptr<ModelSource>> open_gguf_model(const std::string& path);

}  // namespace kite
