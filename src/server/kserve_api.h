// The KServe v2 / Triton generate API with the field names of Triton's TensorRT-LLM backend:
// POST /v2/models/{name}/generate and /generate_stream take {"text_input", "max_tokens",
// "bad_words", "stop_words", "temperature", "top_k", "top_p", ...} and answer {"model_name",
// "model_version", "text_output"} (one object, or one server-sent event per piece of text).
// Errors are Triton's {"error": "message"}.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "server/generation.h"
#include "server/request_fields.h"
#include "server/served_model.h"

namespace kite::server {

struct KServeRequest {
  GenerationSpec generation;
  std::string text_input;
  bool stream = false;                   // per-token events (generate_stream's default)
  bool exclude_input_in_output = false;  // else text_output starts with text_input (not streamed)
  bool return_log_probs = false;         // output_log_probs and cum_log_probs
};

// `streaming_endpoint`: the request came to generate_stream.
std::optional<ApiError> parse_kserve_request(const std::string& body, const ServedModel& model,
                                             bool streaming_endpoint, KServeRequest* request);

// {"model_name", "model_version", "text_output"[, "output_log_probs", "cum_log_probs"]};
// with beam texts (beam search), text_output is their list, best first.
nlohmann::ordered_json kserve_output_json(const ServedModel& model, const std::string& text,
                                          const std::vector<TokenLogProb>* log_probs,
                                          const std::vector<std::string>* beam_texts = nullptr);
// {"error": "message"}.
nlohmann::ordered_json kserve_error_json(const std::string& message);

}  // namespace kite::server
