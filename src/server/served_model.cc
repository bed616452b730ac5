// Loading the served model's tokenizer and chat template.
#include "server/served_model.h"

#include "core/file.h"

namespace kite::server {
namespace {

// A special token in tokenizer_config.json: "<s>" or {"content": "<s>", ...} (older files).
std::string special_token(const nlohmann::json& config, const char* key) {
  if (!config.contains(key)) return "";
  const nlohmann::json& value = config.at(key);
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value.at("content").is_string()) {
    return value.at("content").get<std::string>();
  }
  return "";
}

// The chat template source: a string, or [{"name": "default", "template": ...}, ...].
std::optional<std::string> chat_template_source(const nlohmann::json& config) {
  if (!config.contains("chat_template")) return std::nullopt;
  const nlohmann::json& value = config.at("chat_template");
  if (value.is_string()) return value.get<std::string>();
  if (value.is_array()) {
    for (const nlohmann::json& entry : value) {
      if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
          entry.at("template").is_string()) {
        return entry.at("template").get<std::string>();
      }
    }
  }
  return std::nullopt;
}

}  // namespace

Result<std::string> ServedModel::render_chat(const nlohmann::ordered_json& messages) const {
  if (!chat_template && !chat_template_error.empty()) return invalid_argument(chat_template_error);
  if (!chat_template) {
    return invalid_argument(
        "the model has no chat template (tokenizer_config.json has no "
        "chat_template); use /v1/completions with a formatted prompt");
  }
  ChatTemplateContext context;
  context.bos_token = bos_token;
  context.eos_token = eos_token;
  context.add_generation_prompt = true;
  return chat_template->render(messages, context);
}

Result<ServedModel> load_served_model(const std::string& engine_dir, const std::string& name,
                                      int64_t max_input_len, int64_t max_seq_len) {
  KITE_ASSIGN_OR_RETURN(Tokenizer tokenizer, Tokenizer::from_directory(engine_dir));
  ServedModel model{.name = name,
                    .tokenizer = std::move(tokenizer),
                    .max_input_len = max_input_len,
                    .max_seq_len = max_seq_len,
                    .created = std::time(nullptr)};
  const std::string config_path = engine_dir + "/tokenizer_config.json";
  if (!path_exists(config_path)) return model;
  KITE_ASSIGN_OR_RETURN(std::string text, read_file(config_path));
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& error) {
    return corrupt(config_path + " is not valid JSON: " + error.what());
  }
  if (!config.is_object()) return corrupt(config_path + " is not a JSON object");
  model.bos_token = special_token(config, "bos_token");
  model.eos_token = special_token(config, "eos_token");
  if (std::optional<std::string> source = chat_template_source(config)) {
    Result<ChatTemplate> parsed = ChatTemplate::parse(*source);
    if (parsed.is_ok()) {
      model.chat_template = std::move(*parsed);
    } else {
      model.chat_template_error =
          "the chat template of " + config_path + " cannot be used: " + parsed.status().message();
    }
  }
  return model;
}

}  // namespace kite::server
