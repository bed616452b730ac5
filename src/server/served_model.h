// What the server knows of the model it serves besides the Executor: its public name, the
// tokenizer (prompts in, text out), the chat template and special tokens of tokenizer_config.json,
// and the engine's length limits.
#pragma once

#include <cstdint>
#include <ctime>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "core/status.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace kite::server {

struct ServedModel {
  std::string name;  // the id clients put in "model" and in /v2/models/{name}
  Tokenizer tokenizer;
  std::optional<ChatTemplate> chat_template;  // none: /v1/chat/completions answers 400
  std::string chat_template_error;            // why there is none though the config has one
  std::string bos_token;
  std::string eos_token;
  int64_t max_input_len = 0;
  int64_t max_seq_len = 0;
  std::time_t created = 0;  // when the server loaded it (OpenAI's "created")

  // Renders a conversation (validated messages) into the prompt text, with the generation prompt.
  Result<std::string> render_chat(const nlohmann::ordered_json& messages) const;
};

// Reads `engine_dir`/tokenizer.json and, when present, tokenizer_config.json (chat_template: a
// string, or a list of named templates of which "default" is used; bos_token and eos_token: strings
// or {"content": ...} objects). A chat template that does not parse leaves chat_template empty
// and says why in chat_template_error: completions still work.
Result<ServedModel> load_served_model(const std::string& engine_dir, const std::string& name,
                                      int64_t max_input_len, int64_t max_seq_len);

}  // namespace kite::server
