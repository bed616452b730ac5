// OpenAI request parsing and response formatting.
#include "server/openai_api.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <map>
#include <system_error>

namespace kite::server {
namespace {

constexpr int64_t kMaxLogProbs = 20;
constexpr size_t kMaxStopTexts = 32;

using Json = nlohmann::ordered_json;

std::optional<ApiError> bad_request(const std::string& param, const std::string& message,
                                    const std::string& code = "") {
  return ApiError{.message = message, .param = param, .code = code};
}

// Fields /v1/completions and /v1/chat/completions share. The prompt is parsed already.
std::optional<ApiError> parse_shared_fields(const Json& body, const ServedModel& model,
                                            uint64_t random_seed, FieldReader& fields,
                                            OpenAiRequest* request) {
  std::string model_name;
  fields.string("model", &model_name);
  if (fields.ok() && !model_name.empty() && model_name != model.name) {
    return ApiError{.http_status = 404,
                    .message = "The model `" + model_name +
                               "` does not exist; this server serves `" + model.name + "`.",
                    .param = "model",
                    .code = "model_not_found"};
  }
  fields.integer("n", &request->n, 1, kMaxChoices);
  request->best_of = request->n;
  // vLLM's beam search extension: n beams, scored by length_penalty.
  fields.boolean("use_beam_search", &request->beam_search);

  fields.boolean("stream", &request->stream);
  if (fields.ok() && fields.has("stream_options")) {
    const Json& options = body.at("stream_options");
    if (!options.is_object())
      return bad_request("stream_options", "'stream_options' must be an object");
    if (!request->stream) {
      return bad_request("stream_options",
                         "'stream_options' is only allowed when 'stream' is true");
    }
    FieldReader option_fields(options);
    option_fields.boolean("include_usage", &request->include_usage);
    if (!option_fields.ok()) {
      ApiError error = *option_fields.error();
      error.param = "stream_options." + error.param;
      return error;
    }
  }

  executor::SamplingConfig& sampling = request->generation.request.sampling;
  double temperature = 1.0;
  double top_p = 1.0;
  double min_p = 0.0;
  double repetition_penalty = 1.0;
  int64_t top_k = 0;
  fields.number("temperature", &temperature, 0.0, 2.0);
  fields.number("top_p", &top_p, 0.0, 1.0);
  if (fields.ok() && top_p <= 0.0) return bad_request("top_p", "'top_p' must be above 0");
  fields.integer("top_k", &top_k, -1, std::numeric_limits<int32_t>::max());
  fields.number("min_p", &min_p, 0.0, 1.0);
  fields.number("repetition_penalty", &repetition_penalty, 0.01, 100.0);
  sampling.temperature = float(temperature);
  sampling.top_p = float(top_p);
  sampling.top_k = top_k < 0 ? 0 : top_k;  // -1 (vLLM's "off") and 0 both mean off
  sampling.min_p = float(min_p);
  sampling.repetition_penalty = float(repetition_penalty);
  int64_t seed = 0;
  sampling.seed = random_seed;
  fields.integer("seed", &seed, std::numeric_limits<int64_t>::min(),
                 std::numeric_limits<int64_t>::max());
  if (fields.has("seed")) sampling.seed = static_cast<uint64_t>(seed);

  double presence_penalty = 0.0, frequency_penalty = 0.0;
  fields.number("presence_penalty", &presence_penalty, -2.0, 2.0);
  fields.number("frequency_penalty", &frequency_penalty, -2.0, 2.0);
  sampling.presence_penalty = float(presence_penalty);
  sampling.frequency_penalty = float(frequency_penalty);
  if (fields.ok() && fields.has("logit_bias") && !body.at("logit_bias").is_null()) {
    // {"token id": bias in [-100, 100]}, added to the token's logit at every step.
    const Json& biases = body.at("logit_bias");
    if (!biases.is_object()) return bad_request("logit_bias", "'logit_bias' must be an object");
    std::map<int32_t, float>& logit_bias = request->generation.request.logit_bias;
    for (const auto& [key, value] : biases.items()) {
      int32_t token = -1;
      const auto [end, error] = std::from_chars(key.data(), key.data() + key.size(), token);
      if (error != std::errc() || end != key.data() + key.size() || token < 0) {
        return bad_request("logit_bias", "'logit_bias' keys must be token ids, got '" + key + "'");
      }
      if (!value.is_number() || !(value.get<double>() >= -100.0 && value.get<double>() <= 100.0)) {
        return bad_request("logit_bias", "'logit_bias' values must be numbers from -100 to 100");
      }
      logit_bias[token] = value.get<float>();
    }
  }

  fields.string_list("stop", &request->generation.stop_texts);
  if (fields.ok() && request->generation.stop_texts.size() > kMaxStopTexts) {
    return bad_request("stop", "at most " + std::to_string(kMaxStopTexts) + " stop texts");
  }
  // vLLM's extension: words whose last token may not complete them. As vLLM, a word is banned as
  // written (leading spaces removed) and, where a space before it gives another first token of the
  // same count, inside the text too.
  std::vector<std::string> bad_words;
  fields.string_list("bad_words", &bad_words);
  std::vector<std::vector<int32_t>>& banned = request->generation.request.bad_words;
  banned.clear();
  for (const std::string& bad_word : bad_words) {
    const std::string word =
        bad_word.substr(std::min(bad_word.find_first_not_of(' '), bad_word.size()));
    std::vector<int32_t> ids = model.tokenizer.encode(word, false);
    if (ids.empty()) continue;
    std::vector<int32_t> spaced = model.tokenizer.encode(" " + word, false);
    banned.push_back(ids);
    if (spaced.size() == ids.size() && spaced.front() != ids.front())
      banned.push_back(std::move(spaced));
  }
  // vLLM's extension: no end of sequence and no stop text before this many tokens.
  fields.integer("min_tokens", &request->generation.request.min_new_tokens, 0,
                 std::numeric_limits<int64_t>::max());
  bool ignore_eos = false;
  fields.boolean("ignore_eos", &ignore_eos);
  if (ignore_eos) request->generation.request.end_ids = std::vector<int32_t>();

  double length_penalty = 1.0;
  fields.number("length_penalty", &length_penalty, -100.0, 100.0);
  sampling.length_penalty = float(length_penalty);
  fields.boolean("early_stopping", &sampling.early_stopping);
  if (fields.ok() && request->beam_search) {
    if (request->stream) {
      return bad_request("stream", "beam search answers once, with every beam: set 'stream' false");
    }
    sampling.beam_width = request->n;
    if (request->n == 1) sampling.temperature = 0.0f;  // a beam of one: greedy decoding
    // The search ends beams at stop texts as token sequences; the beams' texts are cut before
    // them afterwards.
    request->generation.request.stop_words =
        word_token_sequences(model.tokenizer, request->generation.stop_texts);
  }
  // vLLM's extensions: token ids that end the output (kept in it, as text unless special), the
  // stop text kept in the output, special tokens' text, and the prompt cut to its last tokens.
  std::vector<double> stop_token_ids;
  fields.number_list("stop_token_ids", &stop_token_ids, 0.0,
                     double(model.tokenizer.vocab_size() - 1));
  for (const double id : stop_token_ids) {
    if (id != std::floor(id))
      return bad_request("stop_token_ids", "'stop_token_ids' must be token ids");
    request->generation.request.stop_words.push_back({int32_t(id)});
  }
  fields.boolean("include_stop_str_in_output", &request->generation.include_stop_text);
  fields.boolean("skip_special_tokens", &request->generation.skip_special_tokens);
  if (fields.has("truncate_prompt_tokens") && !body.at("truncate_prompt_tokens").is_null()) {
    fields.integer("truncate_prompt_tokens", &request->truncate_prompt_tokens, 1,
                   std::numeric_limits<int64_t>::max());
  }
  // vLLM's prompt_logprobs: N (null: none).
  if (fields.has("prompt_logprobs") && !body.at("prompt_logprobs").is_null()) {
    fields.integer("prompt_logprobs", &request->vllm_prompt_log_probs, 0, kMaxLogProbs);
    if (fields.ok() && request->stream) {
      return bad_request("prompt_logprobs",
                         "'prompt_logprobs' cannot be streamed: set 'stream' false");
    }
  }
  return fields.error();
}

// The prompt length and max_tokens against the engine's limits. `max_tokens` 0: as many as fit.
std::optional<ApiError> check_lengths(const ServedModel& model, const std::string& prompt_param,
                                      const char* max_tokens_param, int64_t max_tokens,
                                      executor::Request* request) {
  const int64_t prompt_tokens = int64_t(request->input_ids.size());
  if (prompt_tokens == 0) return bad_request(prompt_param, "the prompt is empty");
  if (prompt_tokens > model.max_input_len) {
    return bad_request(prompt_param,
                       "the prompt has " + std::to_string(prompt_tokens) +
                           " tokens, more than this model's maximum input length of " +
                           std::to_string(model.max_input_len) + " tokens",
                       "context_length_exceeded");
  }
  const int64_t room = model.max_seq_len - prompt_tokens;
  if (max_tokens == 0) {
    if (room < 1) {
      return bad_request(prompt_param,
                         "the prompt's " + std::to_string(prompt_tokens) +
                             " tokens leave no room to generate within this model's maximum "
                             "sequence length of " +
                             std::to_string(model.max_seq_len) + " tokens",
                         "context_length_exceeded");
    }
    max_tokens = room;
  } else if (max_tokens > room) {
    return bad_request(max_tokens_param,
                       "'" + std::string(max_tokens_param) + "' is " + std::to_string(max_tokens) +
                           ", but the prompt's " + std::to_string(prompt_tokens) +
                           " tokens leave room for at most " + std::to_string(room) +
                           " within this model's maximum sequence length of " +
                           std::to_string(model.max_seq_len) + " tokens",
                       "context_length_exceeded");
  }
  request->max_new_tokens = max_tokens;
  if (request->min_new_tokens > max_tokens) {
    return bad_request("min_tokens", "'min_tokens' is " + std::to_string(request->min_new_tokens) +
                                         ", more than the " + std::to_string(max_tokens) +
                                         " tokens this request may generate");
  }
  return std::nullopt;
}

// What both parsers end with: the log-probabilities asked for (none with beam search), then the
// lengths.
std::optional<ApiError> finish_request(const ServedModel& model, const std::string& prompt_param,
                                       const char* max_tokens_param, int64_t max_tokens,
                                       int64_t top_log_probs, OpenAiRequest* request) {
  if (request->beam_search && request->log_probs) {
    return bad_request("logprobs", "'logprobs' is not supported with use_beam_search");
  }
  if (request->beam_search && request->vllm_prompt_log_probs >= 0) {
    return bad_request("prompt_logprobs",
                       "'prompt_logprobs' is not supported with use_beam_search");
  }
  std::vector<int32_t>& prompt = request->generation.request.input_ids;
  if (request->truncate_prompt_tokens > 0 &&
      int64_t(prompt.size()) > request->truncate_prompt_tokens) {
    prompt.erase(prompt.begin(), prompt.end() - request->truncate_prompt_tokens);
  }
  request->generation.request.return_log_probs = request->log_probs;
  request->top_log_probs = request->log_probs ? top_log_probs : 0;
  request->generation.request.top_log_probs = request->top_log_probs;
  // The most likely tokens at each prompt position: as many as either answer shows.
  executor::Request& executor_request = request->generation.request;
  executor_request.return_prompt_log_probs =
      request->prompt_log_probs || request->vllm_prompt_log_probs >= 0;
  executor_request.top_prompt_log_probs = std::max(
      request->prompt_log_probs ? request->top_log_probs : 0, request->vllm_prompt_log_probs);
  return check_lengths(model, prompt_param, max_tokens_param, max_tokens,
                       &request->generation.request);
}

// "prompt": a string, an array of token ids, or an array holding one of these.
std::optional<ApiError> parse_prompt(const Json& prompt, const ServedModel& model,
                                     std::vector<int32_t>* ids) {
  const auto token_ids = [&](const Json& array) -> std::optional<ApiError> {
    for (const Json& element : array) {
      if (!element.is_number_integer()) {
        return bad_request("prompt",
                           "'prompt' must be a string, an array of token ids, or an "
                           "array holding one of these");
      }
      const int64_t id = element.get<int64_t>();
      if (id < 0 || id > std::numeric_limits<int32_t>::max() ||
          !model.tokenizer.id_to_token(int32_t(id))) {
        return bad_request("prompt",
                           "token id " + std::to_string(id) + " is not in the vocabulary");
      }
      ids->push_back(int32_t(id));
    }
    return std::nullopt;
  };
  if (prompt.is_string()) {
    *ids = model.tokenizer.encode(prompt.get<std::string>());
    return std::nullopt;
  }
  if (!prompt.is_array() || prompt.empty()) {
    return bad_request("prompt",
                       "'prompt' must be a string, an array of token ids, or an array "
                       "holding one of these");
  }
  if (prompt.size() > 1 && (prompt[0].is_string() || prompt[0].is_array())) {
    return bad_request("prompt", "only one prompt per request is supported");
  }
  if (prompt[0].is_string()) {
    *ids = model.tokenizer.encode(prompt[0].get<std::string>());
    return std::nullopt;
  }
  if (prompt[0].is_array()) return token_ids(prompt[0]);
  return token_ids(prompt);
}

// A message's content: a string, or an array of {"type": "text", "text": ...} parts (joined).
std::optional<ApiError> message_content(const Json& message, size_t index, std::string* content) {
  const std::string param = "messages[" + std::to_string(index) + "].content";
  const auto found = message.find("content");
  if (found == message.end() || found->is_null()) {
    if (message.at("role") == "assistant") return std::nullopt;  // e.g. a turn of tool calls
    return bad_request(param, "the message has no content");
  }
  if (found->is_string()) {
    *content = found->get<std::string>();
    return std::nullopt;
  }
  if (!found->is_array())
    return bad_request(param, "content must be a string or an array of parts");
  for (const Json& part : *found) {
    if (!part.is_object() || !part.contains("type") || !part.at("type").is_string()) {
      return bad_request(param, "each content part must be an object with a 'type'");
    }
    if (part.at("type") != "text") {
      return bad_request(param, "content parts of type '" + part.at("type").get<std::string>() +
                                    "' are not supported (text only)");
    }
    if (!part.contains("text") || !part.at("text").is_string()) {
      return bad_request(param, "a text part needs a string 'text'");
    }
    *content += part.at("text").get<std::string>();
  }
  return std::nullopt;
}

// "messages" checked, with each content made a string, for the chat template.
std::optional<ApiError> parse_messages(const Json& body, Json* messages) {
  const auto found = body.find("messages");
  if (found == body.end() || found->is_null())
    return bad_request("messages", "'messages' is required");
  if (!found->is_array() || found->empty()) {
    return bad_request("messages", "'messages' must be a non-empty array of messages");
  }
  *messages = Json::array();
  for (size_t i = 0; i < found->size(); ++i) {
    const Json& message = (*found)[i];
    const std::string param = "messages[" + std::to_string(i) + "]";
    if (!message.is_object()) return bad_request(param, "each message must be an object");
    if (!message.contains("role") || !message.at("role").is_string()) {
      return bad_request(param + ".role", "each message needs a string 'role'");
    }
    const std::string role = message.at("role").get<std::string>();
    if (role != "system" && role != "user" && role != "assistant" && role != "tool") {
      return bad_request(param + ".role",
                         "unknown role '" + role + "' (system, user, assistant or tool)");
    }
    std::string content;
    if (auto error = message_content(message, i, &content)) return error;
    Json copy = message;
    copy["content"] = content;
    messages->push_back(std::move(copy));
  }
  return std::nullopt;
}

std::vector<int> utf8_bytes(const std::string& text) {
  std::vector<int> bytes;
  for (const char c : text) bytes.push_back(static_cast<unsigned char>(c));
  return bytes;
}

}  // namespace

std::optional<ApiError> parse_completion_request(const std::string& body_text,
                                                 const ServedModel& model, uint64_t random_seed,
                                                 OpenAiRequest* request) {
  ApiError error;
  const std::optional<Json> body = parse_json_object(body_text, &error);
  if (!body) return error;
  request->chat = false;
  FieldReader fields(*body);
  if (!fields.has("prompt")) return bad_request("prompt", "'prompt' is required");
  if (auto prompt_error =
          parse_prompt(body->at("prompt"), model, &request->generation.request.input_ids)) {
    return prompt_error;
  }
  if (auto shared = parse_shared_fields(*body, model, random_seed, fields, request)) return shared;
  bool echo = false;
  fields.boolean("echo", &echo);
  if (fields.ok() && echo) {
    // The prompt as sent: a string (or an array holding one), else its ids decoded.
    const Json& prompt = body->at("prompt");
    const Json& inner = prompt.is_array() && !prompt.empty() ? prompt[0] : prompt;
    request->echo_text = prompt.is_string() ? prompt.get<std::string>()
                         : inner.is_string()
                             ? inner.get<std::string>()
                             : model.tokenizer.decode(request->generation.request.input_ids);
  }
  fields.integer("best_of", &request->best_of, 1, kMaxChoices);
  if (fields.ok() && request->best_of < request->n) {
    return bad_request("best_of", "'best_of' must be at least 'n'");
  }
  if (fields.ok() && request->best_of > request->n) {
    if (request->stream) return bad_request("best_of", "'best_of' > 'n' cannot be streamed");
    if (request->beam_search) {
      return bad_request("best_of", "'best_of' does not apply to beam search: use 'n'");
    }
  }
  std::string suffix;
  fields.string("suffix", &suffix);
  if (!suffix.empty()) return bad_request("suffix", "'suffix' is not supported");
  // logprobs: N asks for the chosen token's log-probability and the N most likely tokens'.
  int64_t log_probs = 0;
  fields.integer("logprobs", &log_probs, 0, kMaxLogProbs);
  request->log_probs = fields.has("logprobs");  // null: none
  int64_t max_tokens = 16;
  fields.integer("max_tokens", &max_tokens, 1, std::numeric_limits<int64_t>::max());
  if (!fields.ok()) return fields.error();
  if (echo && request->log_probs && !request->beam_search) {
    // The prompt's log-probabilities come after its prefill, with the whole answer.
    if (request->stream) {
      return bad_request("echo", "'echo' with 'logprobs' cannot be streamed: set 'stream' false");
    }
    request->prompt_log_probs = true;
  }
  return finish_request(model, "prompt", "max_tokens", max_tokens, log_probs, request);
}

std::optional<ApiError> parse_chat_request(const std::string& body_text, const ServedModel& model,
                                           uint64_t random_seed, OpenAiRequest* request) {
  ApiError error;
  const std::optional<Json> body = parse_json_object(body_text, &error);
  if (!body) return error;
  request->chat = true;
  Json messages;
  if (auto messages_error = parse_messages(*body, &messages)) return messages_error;
  FieldReader fields(*body);
  if (auto shared = parse_shared_fields(*body, model, random_seed, fields, request)) return shared;
  if (fields.has("tools")) {
    const Json& tools = body->at("tools");
    if (!tools.is_array()) return bad_request("tools", "'tools' must be an array");
    if (!tools.empty()) return bad_request("tools", "tool calling is not supported");
  }
  if (fields.has("tool_choice") && body->at("tool_choice") != "none") {
    return bad_request("tool_choice", "tool calling is not supported");
  }
  if (fields.has("response_format")) {
    const Json& format = body->at("response_format");
    if (!format.is_object() || format.value("type", "") != "text") {
      return bad_request("response_format", "only {\"type\": \"text\"} is supported");
    }
  }
  fields.boolean("logprobs", &request->log_probs);
  int64_t top_log_probs = 0;
  fields.integer("top_logprobs", &top_log_probs, 0, kMaxLogProbs);
  if (fields.ok() && fields.has("top_logprobs") && !request->log_probs) {
    return bad_request("top_logprobs", "'top_logprobs' needs 'logprobs': true");
  }
  // max_completion_tokens replaced max_tokens in OpenAI's API; either is accepted.
  int64_t max_tokens = 0;
  const char* max_tokens_param =
      fields.has("max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  fields.integer(max_tokens_param, &max_tokens, 1, std::numeric_limits<int64_t>::max());
  if (!fields.ok()) return fields.error();

  Result<std::string> prompt = model.render_chat(messages);
  if (!prompt.is_ok()) return bad_request("messages", prompt.status().message());
  // The template writes the special tokens itself (as transformers' apply_chat_template).
  request->generation.request.input_ids = model.tokenizer.encode(*prompt, false);
  return finish_request(model, "messages", max_tokens_param, max_tokens, top_log_probs, request);
}

OpenAiFormatter::OpenAiFormatter(const OpenAiRequest& request, std::string id, std::string model,
                                 std::time_t created)
    : chat_(request.chat),
      choices_(request.n),
      include_usage_(request.include_usage),
      log_probs_(request.log_probs),
      top_log_probs_(request.top_log_probs),
      echo_text_(request.echo_text),
      prompt_log_probs_(request.prompt_log_probs),
      vllm_prompt_log_probs_(request.vllm_prompt_log_probs),
      id_(std::move(id)),
      model_(std::move(model)),
      created_(created) {}

Json OpenAiFormatter::usage_json(int64_t prompt_tokens, int64_t completion_tokens) {
  return Json{{"prompt_tokens", prompt_tokens},
              {"completion_tokens", completion_tokens},
              {"total_tokens", prompt_tokens + completion_tokens}};
}

Json OpenAiFormatter::vllm_prompt_log_probs_json(const std::vector<TokenLogProb>& prompt) const {
  Json positions = Json::array();
  for (size_t p = 0; p < prompt.size(); ++p) {
    if (p == 0) {
      positions.push_back(nullptr);
      continue;
    }
    const TokenLogProb& entry = prompt[p];
    Json tokens = Json::object();
    tokens[std::to_string(entry.id)] =
        Json{{"logprob", entry.log_prob}, {"rank", entry.rank}, {"decoded_token", entry.text}};
    for (size_t k = 0; k < entry.top.size() && int64_t(k) < vllm_prompt_log_probs_; ++k) {
      const std::string key = std::to_string(entry.top_ids[k]);
      if (tokens.contains(key)) continue;
      tokens[key] = Json{{"logprob", entry.top[k].second},
                         {"rank", int64_t(k) + 1},
                         {"decoded_token", entry.top[k].first}};
    }
    positions.push_back(std::move(tokens));
  }
  return positions;
}

Json OpenAiFormatter::log_probs_json(const std::vector<TokenLogProb>& log_probs,
                                     const std::vector<TokenLogProb>& prompt) const {
  if (!log_probs_) return nullptr;
  if (chat_) {
    Json content = Json::array();
    for (const TokenLogProb& entry : log_probs) {
      Json top = Json::array();
      for (const auto& [text, log_prob] : entry.top) {
        top.push_back(Json{{"token", text}, {"logprob", log_prob}, {"bytes", utf8_bytes(text)}});
      }
      content.push_back(Json{{"token", entry.text},
                             {"logprob", entry.log_prob},
                             {"bytes", utf8_bytes(entry.text)},
                             {"top_logprobs", top}});
    }
    return Json{{"content", content}};
  }
  Json tokens = Json::array();
  Json token_log_probs = Json::array();
  Json offsets = Json::array();
  Json top_log_probs = Json::array();
  auto add = [&](const TokenLogProb& entry, int64_t offset) {
    tokens.push_back(entry.text);
    token_log_probs.push_back(entry.log_prob);
    offsets.push_back(offset + entry.text_offset);
    // {text: log-probability}, most likely first; of two tokens with the same text, the likelier.
    // (A prompt position may hold more, for vLLM's prompt_logprobs.)
    Json top = Json::object();
    for (size_t k = 0; k < entry.top.size() && int64_t(k) < top_log_probs_; ++k) {
      const auto& [text, log_prob] = entry.top[k];
      if (!top.contains(text)) top[text] = log_prob;
    }
    top_log_probs.push_back(std::move(top));
  };
  // The prompt's tokens first, the first without a log-probability (null); then the output's,
  // whose offsets follow the echoed prompt.
  for (size_t i = 0; i < prompt.size(); ++i) {
    add(prompt[i], 0);
    if (i == 0) {
      token_log_probs.back() = nullptr;
      top_log_probs.back() = nullptr;
    }
  }
  const int64_t output_offset = prompt.empty() ? 0 : count_characters(echo_text_);
  for (const TokenLogProb& entry : log_probs) add(entry, output_offset);
  return Json{{"tokens", tokens},
              {"token_logprobs", token_log_probs},
              {"top_logprobs", top_log_probs_ > 0 ? top_log_probs : Json(nullptr)},
              {"text_offset", offsets}};
}

Json OpenAiFormatter::response(const std::vector<GenerationOutput>& outputs,
                               int64_t unreturned_completion_tokens) const {
  Json choices = Json::array();
  int64_t completion_tokens = unreturned_completion_tokens;
  for (size_t i = 0; i < outputs.size(); ++i) {
    const GenerationOutput& output = outputs[i];
    Json choice;
    choice["index"] = int64_t(i);
    if (chat_) {
      choice["message"] = Json{{"role", "assistant"}, {"content", output.text}};
    } else {
      choice["text"] = echo_text_ + output.text;
    }
    choice["logprobs"] =
        log_probs_json(output.log_probs,
                       prompt_log_probs_ ? output.prompt_log_probs : std::vector<TokenLogProb>());
    choice["finish_reason"] = output.finish_reason;
    if (!chat_ && vllm_prompt_log_probs_ >= 0) {
      choice["prompt_logprobs"] = vllm_prompt_log_probs_json(output.prompt_log_probs);
    }
    choices.push_back(std::move(choice));
    completion_tokens += output.completion_tokens;
  }
  Json body;
  body["id"] = id_;
  body["object"] = chat_ ? "chat.completion" : "text_completion";
  body["created"] = int64_t(created_);
  body["model"] = model_;
  body["choices"] = std::move(choices);
  if (chat_ && vllm_prompt_log_probs_ >= 0 && !outputs.empty()) {
    body["prompt_logprobs"] = vllm_prompt_log_probs_json(outputs.front().prompt_log_probs);
  }
  body["usage"] =
      usage_json(outputs.empty() ? 0 : outputs.front().prompt_tokens, completion_tokens);
  return body;
}

Json OpenAiFormatter::chunk(Json choice) const {
  Json body;
  body["id"] = id_;
  body["object"] = chat_ ? "chat.completion.chunk" : "text_completion";
  body["created"] = int64_t(created_);
  body["model"] = model_;
  body["choices"] = choice.is_null() ? Json::array() : Json::array({std::move(choice)});
  if (include_usage_) body["usage"] = nullptr;
  return body;
}

std::string OpenAiFormatter::stream_start() const {
  std::string events;
  if (!chat_) {
    // With echo, each choice's first chunk is the prompt.
    for (int64_t i = 0; i < choices_ && !echo_text_.empty(); ++i) {
      events += sse_event(dump_json(chunk(Json{
          {"index", i}, {"text", echo_text_}, {"logprobs", nullptr}, {"finish_reason", nullptr}})));
    }
    return events;
  }
  for (int64_t i = 0; i < choices_; ++i) {
    Json choice;
    choice["index"] = i;
    choice["delta"] = Json{{"role", "assistant"}, {"content", ""}};
    choice["logprobs"] = nullptr;
    choice["finish_reason"] = nullptr;
    events += sse_event(dump_json(chunk(std::move(choice))));
  }
  return events;
}

std::string OpenAiFormatter::stream_update(const GenerationUpdate& update, int64_t index) const {
  if (update.text.empty() && update.log_probs.empty()) return "";
  Json choice;
  choice["index"] = index;
  if (chat_) {
    choice["delta"] = Json{{"content", update.text}};
  } else {
    choice["text"] = update.text;
  }
  choice["logprobs"] = log_probs_json(update.log_probs);
  choice["finish_reason"] = nullptr;
  return sse_event(dump_json(chunk(std::move(choice))));
}

std::string OpenAiFormatter::stream_choice_end(const std::string& finish_reason,
                                               int64_t index) const {
  Json choice;
  choice["index"] = index;
  if (chat_) {
    choice["delta"] = Json::object();
  } else {
    choice["text"] = "";
  }
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = finish_reason;
  return sse_event(dump_json(chunk(std::move(choice))));
}

std::string OpenAiFormatter::stream_done(int64_t prompt_tokens, int64_t completion_tokens) const {
  std::string events;
  if (include_usage_) {
    Json usage_chunk = chunk(nullptr);
    usage_chunk["usage"] = usage_json(prompt_tokens, completion_tokens);
    events += sse_event(dump_json(usage_chunk));
  }
  return events + sse_event("[DONE]");
}

std::string OpenAiFormatter::stream_error(const ApiError& error) const {
  return sse_event(dump_json(openai_error_json(error))) + sse_event("[DONE]");
}

Json model_json(const ServedModel& model) {
  return Json{{"id", model.name},
              {"object", "model"},
              {"created", int64_t(model.created)},
              {"owned_by", "kite"},
              {"max_model_len", model.max_seq_len}};
}

Json models_list_json(const ServedModel& model) {
  return Json{{"object", "list"}, {"data", Json::array({model_json(model)})}};
}

}  // namespace kite::server
