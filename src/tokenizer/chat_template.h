// Chat templates: the Jinja2 program in a model's tokenizer_config.json ("chat_template") or GGUF
// metadata ("tokenizer.chat_template") that turns a conversation into prompt text. Kite renders it
// as Hugging Face transformers' apply_chat_template does (jinja2 with trim_blocks, lstrip_blocks
// and loop controls, plus raise_exception, strftime_now, and tojson as Python's json.dumps), with
// its own interpreter for the part of Jinja2 that chat templates use (chat_template.cc lists it).
#pragma once

#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace kite {

// What apply_chat_template hands the template besides the messages.
struct ChatTemplateContext {
  std::string bos_token;
  std::string eos_token;
  bool add_generation_prompt = true;
  // The request's tool schemas ([{"type": "function", "function": {...}}, ...]). Absent, the
  // template sees `tools` as none, as transformers passes tools=None.
  std::optional<nlohmann::ordered_json> tools;
  // More template variables (a JSON object), like apply_chat_template's keyword arguments
  // ("date_string", "enable_thinking", ...); they may replace bos_token and eos_token.
  nlohmann::ordered_json extra_variables = nlohmann::ordered_json::object();
  // The time strftime_now formats, as local time; unset means the time of the call.
  std::optional<std::time_t> now;
};

// A parsed chat template. Immutable: render may run on many threads at once.
class ChatTemplate {
 public:
  // Syntax errors, and Jinja2 features outside Kite's subset, are reported here with their line.
  static Result<ChatTemplate> parse(std::string_view source);

  // Renders `messages`, a JSON array of message objects; ordered_json keeps the keys in the
  // request's order, which tojson shows. A raise_exception in the template, or an error the
  // template runs into (an undefined value used, a type mismatch), gives an invalid-argument
  // status with its message and line; a render past Kite's limits on output size, loop
  // iterations or recursion (templates come from model files: untrusted) gives out-of-range.
  Result<std::string> render(const nlohmann::ordered_json& messages,
                             const ChatTemplateContext& context) const;

 private:
  struct Program;
  explicit ChatTemplate(std::shared_ptr<const Program> program) : program_(std::move(program)) {}
  std::shared_ptr<const Program> program_;
};

}  // namespace kite
