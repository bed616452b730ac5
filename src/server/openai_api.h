// OpenAI's API: /v1/completions and /v1/chat/completions request bodies into GenerationSpecs
// (checked against the model's limits), and the responses back: one JSON object, or server-sent
// event chunks in OpenAI's format ending with "data: [DONE]". docs/serving.md lists the fields.
#pragma once

#include <cstdint>
#include <ctime>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "server/generation.h"
#include "server/request_fields.h"
#include "server/served_model.h"

namespace kite::server {

// OpenAI's limit on `n`.
inline constexpr int64_t kMaxChoices = 128;

struct OpenAiRequest {
  bool chat = false;
  // Choice i is generation.request run on its own, its sampling seed + i (so that sampled choices
  // differ and a seeded request repeats itself).
  GenerationSpec generation;
  int64_t n = 1;
  // Completions' best_of (>= n): that many choices are generated (seeds + 0 .. best_of - 1) and
  // the n of highest summed log-probability returned, most likely first.
  int64_t best_of = 1;
  // vLLM's beam search extension (use_beam_search): one request of beam width n, whose n beams are
  // the choices; generation.request.stop_words holds the stop texts as token sequences, and each
  // beam's text is cut before the first stop text (generation.stop_texts) afterwards.
  bool beam_search = false;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool log_probs = false;      // return the chosen tokens' log-probabilities
  int64_t top_log_probs = 0;   // and this many most likely tokens' at each position
  // Completions with `echo`: the prompt (as sent, or its ids decoded), before each choice's text.
  std::string echo_text;
  // Completions with `echo` and `logprobs`: each choice's log-probs begin with the prompt's tokens
  // (the first without a log-probability), as OpenAI's legacy completions return them.
  bool prompt_log_probs = false;
  // vLLM's prompt_logprobs N (-1: not asked): each prompt token's log-probability and rank, and
  // the N most likely tokens at its position, as a choice's (chat: the response's)
  // "prompt_logprobs".
  int64_t vllm_prompt_log_probs = -1;
  int64_t truncate_prompt_tokens = 0;  // vLLM's: above 0, only the prompt's last this many tokens
};

// Parses and validates a request body. `random_seed` seeds sampling when the request has no
// "seed" (OpenAI's requests without one are not reproducible).
std::optional<ApiError> parse_completion_request(const std::string& body, const ServedModel& model,
                                                 uint64_t random_seed, OpenAiRequest* request);
std::optional<ApiError> parse_chat_request(const std::string& body, const ServedModel& model,
                                           uint64_t random_seed, OpenAiRequest* request);

// The whole output of one choice, for the non-streaming response.
struct GenerationOutput {
  std::string text;
  std::vector<TokenLogProb> log_probs;
  std::vector<TokenLogProb> prompt_log_probs;  // with OpenAiRequest::prompt_log_probs
  std::string finish_reason;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

// Writes one request's response objects ("cmpl-..." or "chatcmpl-..." ids).
class OpenAiFormatter {
 public:
  OpenAiFormatter(const OpenAiRequest& request, std::string id, std::string model,
                  std::time_t created);

  // One choice per output, in order; the usage counts the prompt once and every choice's tokens,
  // plus those of choices generated but not returned (best_of).
  nlohmann::ordered_json response(const std::vector<GenerationOutput>& outputs,
                                  int64_t unreturned_completion_tokens = 0) const;
  // Server-sent events: the first (chat: the assistant role of each choice), one per update of a
  // choice with text or log-probs, each choice's finish reason, and at the very end the usage when
  // asked for and [DONE].
  std::string stream_start() const;
  std::string stream_update(const GenerationUpdate& update, int64_t choice = 0) const;
  std::string stream_choice_end(const std::string& finish_reason, int64_t choice = 0) const;
  std::string stream_done(int64_t prompt_tokens, int64_t completion_tokens) const;
  // An error after the stream began: an error event, then [DONE].
  std::string stream_error(const ApiError& error) const;

 private:
  nlohmann::ordered_json chunk(nlohmann::ordered_json choice) const;
  // `prompt`: the prompt's tokens, before the output's (completions with echo and logprobs).
  nlohmann::ordered_json log_probs_json(const std::vector<TokenLogProb>& log_probs,
                                        const std::vector<TokenLogProb>& prompt = {}) const;
  static nlohmann::ordered_json usage_json(int64_t prompt_tokens, int64_t completion_tokens);
  // vLLM's prompt_logprobs: null for the first token, then {"<id>": {"logprob", "rank",
  // "decoded_token"}} of the prompt token and the N most likely ones.
  nlohmann::ordered_json vllm_prompt_log_probs_json(const std::vector<TokenLogProb>& prompt) const;

  bool chat_;
  int64_t choices_;
  bool include_usage_;
  bool log_probs_;
  int64_t top_log_probs_;
  std::string echo_text_;
  bool prompt_log_probs_;
  int64_t vllm_prompt_log_probs_;
  std::string id_;
  std::string model_;
  std::time_t created_;
};

// GET /v1/models: the one model served.
nlohmann::ordered_json models_list_json(const ServedModel& model);
nlohmann::ordered_json model_json(const ServedModel& model);

}  // namespace kite::server
