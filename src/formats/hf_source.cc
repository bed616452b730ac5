// ModelSource over a Hugging Face model folder: config.json, model.safetensors or the shards of
// model.safetensors.index.json, and the tokenizer files that travel with the model.
#include <nlohmann/json.hpp>

#include "core/file.h"
#include "formats/model_source.h"
#include "formats/safetensors.h"

namespace kite {
namespace {

// Copied into checkpoints when present; tokenizer.json is the only one Kite cannot do without.
constexpr const char* kRequiredTokenizerFile = "tokenizer.json";
constexpr const char* kOptionalTokenizerFiles[] = {
    "tokenizer_config.json", "generation_config.json", "special_tokens_map.json"};

class HfDirectorySource final : public ModelSource {
 public:
  HfDirectorySource(std::string directory, nlohmann::json config, SafetensorsCollection weights)
      : directory_(std::move(directory)),
        config_(std::move(config)),
        weights_(std::move(weights)) {}

  std::string description() const override { return "HF folder " + directory_; }
  const nlohmann::json& hf_config() const override { return config_; }
  std::vector<std::string> tensor_names() const override { return weights_.names(); }

  Result<Shape> tensor_shape(const std::string& hf_name) const override {
    const SafetensorsEntry* entry = weights_.entry(hf_name);
    if (!entry) return not_found("no tensor '" + hf_name + "' in " + description());
    return entry->shape;
  }

  Result<Tensor> load_tensor(const std::string& hf_name) const override {
    const SafetensorsEntry* entry = weights_.entry(hf_name);
    if (!entry) return not_found("no tensor '" + hf_name + "' in " + description());
    if (entry->dtype != DType::kF32 && entry->dtype != DType::kF16 &&
        entry->dtype != DType::kBF16) {
      return unsupported("tensor '" + hf_name + "' in " + description() + " is " +
                         std::string(dtype_safetensors_name(entry->dtype)) +
                         "; Kite converts F32, F16 and BF16 weights (pre-quantized HF models are "
                         "not supported)");
    }
    KITE_ASSIGN_OR_RETURN(TensorView view, weights_.tensor(hf_name));
    return Tensor::copy_of(view);
  }

  Status write_tokenizer_files(const std::string& output_dir) const override {
    return copy_hf_tokenizer_files(directory_, output_dir, /*required=*/true).status();
  }

 private:
  std::string directory_;
  nlohmann::json config_;
  SafetensorsCollection weights_;
};

}  // namespace

Result<bool> copy_hf_tokenizer_files(const std::string& model_dir, const std::string& output_dir,
                                     bool required) {
  auto copy = [&](const std::string& name) -> Status {
    KITE_ASSIGN_OR_RETURN(std::string contents, read_file(model_dir + "/" + name));
    return write_file(output_dir + "/" + name, contents);
  };
  if (!path_exists(model_dir + "/" + kRequiredTokenizerFile)) {
    if (!required) return false;
    return not_found(model_dir + " has no " + kRequiredTokenizerFile +
                     "; copy it from the model's repository (Kite needs the fast-tokenizer "
                     "file, not only tokenizer.model)");
  }
  KITE_RETURN_IF_ERROR(copy(kRequiredTokenizerFile));
  for (const char* name : kOptionalTokenizerFiles) {
    if (path_exists(model_dir + "/" + name)) KITE_RETURN_IF_ERROR(copy(name));
  }
  return true;
}

Result<std::unique_ptr<ModelSource>> open_hf_directory(const std::string& directory) {
  if (!path_exists(directory)) return not_found("model folder " + directory + " does not exist");
  if (!is_directory(directory)) {
    return invalid_argument(directory +
                            " is a file, not a model folder (for a GGUF file use --gguf)");
  }
  const std::string config_path = directory + "/config.json";
  if (!path_exists(config_path)) {
    return not_found(directory +
                     " has no config.json; a Hugging Face model folder holds "
                     "config.json, *.safetensors and tokenizer.json");
  }
  KITE_ASSIGN_OR_RETURN(std::string config_text, read_file(config_path));
  nlohmann::json config = nlohmann::json::parse(config_text, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object())
    return corrupt(config_path + " is not a valid JSON object");

  const bool has_safetensors = path_exists(directory + "/model.safetensors") ||
                               path_exists(directory + "/model.safetensors.index.json");
  if (!has_safetensors && (path_exists(directory + "/pytorch_model.bin") ||
                           path_exists(directory + "/pytorch_model.bin.index.json"))) {
    return unsupported(directory +
                       " holds PyTorch .bin weights only; Kite reads safetensors: re-save the "
                       "model with save_pretrained(dir, safe_serialization=True)");
  }
  Result<SafetensorsCollection> weights = SafetensorsCollection::open_directory(directory);
  if (!weights.is_ok()) return weights.status();
  return std::unique_ptr<ModelSource>(std::make_unique<HfDirectorySource>(
      directory, std::move(config), std::move(weights).value()));
}

}  // namespace kite
