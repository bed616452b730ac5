// KServe v2 / Triton generate request parsing and output formatting.
#include "server/kserve_api.h"

#include <limits>

namespace kite::server {
namespace {

using Json = nlohmann::ordered_json;

std::optional<ApiError> bad_request(const std::string& param, const std::string& message) {
  return ApiError{.message = message, .param = param};
}

}  // namespace

std::optional<ApiError> parse_kserve_request(const std::string& body_text, const ServedModel& model,
                                             bool streaming_endpoint, KServeRequest* request) {
  ApiError error;
  const std::optional<Json> body = parse_json_object(body_text, &error);
  if (!body) return error;
  FieldReader fields(*body);
  if (!fields.has("text_input")) return bad_request("text_input", "'text_input' is required");
  fields.string("text_input", &request->text_input);

  int64_t max_tokens = 16;
  fields.integer("max_tokens", &max_tokens, 1, std::numeric_limits<int64_t>::max());
  // TensorRT-LLM's min_tokens (older backends: min_length): no end id or stop word before then.
  int64_t min_tokens = 0;
  const std::string min_tokens_param = fields.has("min_length") ? "min_length" : "min_tokens";
  fields.integer(min_tokens_param, &min_tokens, 0, std::numeric_limits<int64_t>::max());
  if (fields.ok() && min_tokens > max_tokens) {
    return bad_request(min_tokens_param, min_tokens_param + " (" + std::to_string(min_tokens) +
                                             ") must not exceed max_tokens (" +
                                             std::to_string(max_tokens) + ")");
  }
  std::vector<std::string> bad_words;
  fields.string_list("bad_words", &bad_words);
  fields.string_list("stop_words", &request->generation.stop_texts);
  // Triton's embedding bias: each word's weight added to the logit of each of its tokens.
  std::vector<std::string> bias_words;
  std::vector<double> bias_weights;
  fields.string_list("embedding_bias_words", &bias_words);
  fields.number_list("embedding_bias_weights", &bias_weights, -double(executor::kMaxLogitBias),
                     double(executor::kMaxLogitBias));
  request->generation.include_stop_text = true;  // TensorRT-LLM keeps the stop word in the output

  // As TensorRT-LLM: with none of temperature, top_k and top_p, decoding is greedy.
  executor::SamplingConfig& sampling = request->generation.request.sampling;
  const bool sampled = fields.has("temperature") || fields.has("top_k") || fields.has("top_p");
  double temperature = sampled ? 1.0 : 0.0;
  double top_p = 1.0;
  double repetition_penalty = 1.0;
  int64_t top_k = 0;
  int64_t seed = 0;
  fields.number("temperature", &temperature, 0.0, 100.0);
  fields.integer("top_k", &top_k, 0, std::numeric_limits<int32_t>::max());
  fields.number("top_p", &top_p, 0.0, 1.0);
  fields.number("repetition_penalty", &repetition_penalty, 0.01, 100.0);
  double presence_penalty = 0.0, frequency_penalty = 0.0;
  fields.number("presence_penalty", &presence_penalty, -2.0, 2.0);
  fields.number("frequency_penalty", &frequency_penalty, -2.0, 2.0);
  fields.integer("random_seed", &seed, std::numeric_limits<int64_t>::min(),
                 std::numeric_limits<int64_t>::max());
  sampling.temperature = float(temperature);
  sampling.top_k = top_k;
  sampling.top_p = top_p == 0.0 ? 1.0f : float(top_p);  // TensorRT-LLM's 0 means off
  sampling.repetition_penalty = float(repetition_penalty);
  sampling.presence_penalty = float(presence_penalty);
  sampling.frequency_penalty = float(frequency_penalty);
  sampling.seed = static_cast<uint64_t>(seed);

  fields.integer("beam_width", &sampling.beam_width, 1, std::numeric_limits<int32_t>::max());
  double length_penalty = 1.0;
  fields.number("length_penalty", &length_penalty, -100.0, 100.0);
  sampling.length_penalty = float(length_penalty);
  fields.boolean("early_stopping", &sampling.early_stopping);
  int64_t end_id = -1;
  fields.integer("end_id", &end_id, 0, std::numeric_limits<int32_t>::max());
  if (fields.has("end_id"))
    request->generation.request.end_ids = std::vector<int32_t>{int32_t(end_id)};
  fields.boolean("return_log_probs", &request->return_log_probs);
  fields.boolean("exclude_input_in_output", &request->exclude_input_in_output);
  request->stream = streaming_endpoint;
  fields.boolean("stream", &request->stream);
  if (!fields.ok()) return fields.error();
  if (bias_words.size() != bias_weights.size()) {
    return bad_request("embedding_bias_weights",
                       "'embedding_bias_words' (" + std::to_string(bias_words.size()) +
                           ") and 'embedding_bias_weights' (" +
                           std::to_string(bias_weights.size()) +
                           ") must have as many entries (empty words are not allowed)");
  }
  if (request->stream && !streaming_endpoint) {
    return bad_request("stream", "\"stream\": true needs /generate_stream");
  }
  const bool beams = sampling.beam_width > 1;
  if (beams && request->stream) {
    return bad_request("beam_width",
                       "beam search answers once, with every beam: use /generate or "
                       "\"stream\": false");
  }
  if (beams && request->return_log_probs) {
    return bad_request("return_log_probs", "return_log_probs is not supported with beam_width > 1");
  }

  executor::Request& executor_request = request->generation.request;
  executor_request.input_ids = model.tokenizer.encode(request->text_input);
  executor_request.bad_words = word_token_sequences(model.tokenizer, bad_words);
  // As Triton's preprocessing: a word's weight goes to every token of the word tokenized alone
  // (without special tokens); a token in several words gets their sum.
  executor_request.logit_bias.clear();
  for (size_t i = 0; i < bias_words.size(); ++i) {
    for (const int32_t id : model.tokenizer.encode(bias_words[i], false)) {
      executor_request.logit_bias[id] += float(bias_weights[i]);
    }
  }
  if (beams) {
    // The search ends beams at stop words itself, as token sequences.
    executor_request.stop_words =
        word_token_sequences(model.tokenizer, request->generation.stop_texts);
    request->generation.stop_texts.clear();
  }
  executor_request.return_log_probs = request->return_log_probs;
  executor_request.max_new_tokens = max_tokens;
  executor_request.min_new_tokens = min_tokens;
  const int64_t prompt_tokens = int64_t(executor_request.input_ids.size());
  if (prompt_tokens == 0) return bad_request("text_input", "'text_input' is empty");
  if (prompt_tokens > model.max_input_len) {
    return bad_request("text_input", "'text_input' has " + std::to_string(prompt_tokens) +
                                         " tokens, more than this model's maximum input length "
                                         "of " +
                                         std::to_string(model.max_input_len) + " tokens");
  }
  if (prompt_tokens + max_tokens > model.max_seq_len) {
    return bad_request("max_tokens", "'max_tokens' is " + std::to_string(max_tokens) +
                                         ", but the input's " + std::to_string(prompt_tokens) +
                                         " tokens leave room for at most " +
                                         std::to_string(model.max_seq_len - prompt_tokens) +
                                         " within this model's maximum sequence length of " +
                                         std::to_string(model.max_seq_len) + " tokens");
  }
  return std::nullopt;
}

Json kserve_output_json(const ServedModel& model, const std::string& text,
                        const std::vector<TokenLogProb>* log_probs,
                        const std::vector<std::string>* beam_texts) {
  Json body;
  body["model_name"] = model.name;
  body["model_version"] = "1";
  if (beam_texts && !beam_texts->empty()) {
    body["text_output"] = *beam_texts;
  } else {
    body["text_output"] = text;
  }
  if (log_probs) {
    Json values = Json::array();
    double sum = 0;
    for (const TokenLogProb& entry : *log_probs) {
      values.push_back(entry.log_prob);
      sum += entry.log_prob;
    }
    body["output_log_probs"] = values;
    body["cum_log_probs"] = sum;
  }
  return body;
}

Json kserve_error_json(const std::string& message) {
  return Json{{"error", message}};
}

}  // namespace kite::server
