// Kite's runtime C++ API: an Executor serves many requests at once over one engine (in-flight
// batching). Requests join and leave the running batch at every step; the KV cache is paged and
// shared between requests with a common prefix; responses stream back token by token.
//
//   std::string error;
//   auto executor = kite::executor::Executor::create("engine_dir", {}, &error);
//   if (!executor) { std::cerr << error << "\n"; return 1; }
//   kite::executor::Request request;
//   request.input_ids = {1, 2, 3};
//   request.max_new_tokens = 32;
//   const kite::executor::RequestId id = executor->enqueue_request(request);
//   for (bool done = false; !done;) {
//     for (const auto& response : executor->await_responses(id, std::chrono::seconds(1))) {
//       if (response.error) { std::cerr << *response.error << "\n"; return 1; }
//       done = response.result.is_final;  // response.result.output_ids holds the tokens
//     }
//   }
//
// Modelled on TensorRT-LLM's executor API. All member functions are thread-safe: a server may
// enqueue from its connection threads while another thread awaits responses. The work itself runs
// on one background thread that owns the engine (and its GPU).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace kite::executor {

using RequestId = uint64_t;

struct SamplingConfig {
  float temperature = 1.0f;         // 0: greedy
  int64_t top_k = 0;                // 0: off
  float top_p = 1.0f;               // 1: off
  float min_p = 0.0f;               // 0: off
  float repetition_penalty = 1.0f;  // 1: off
  uint64_t seed = 0;                // the same seed gives the same tokens, whatever the batch
  // OpenAI's penalties over the output so far: a token that occurs count > 0 times in it loses
  // count * frequency_penalty + presence_penalty from its logit (after the repetition penalty).
  float presence_penalty = 0.0f;   // 0: off
  float frequency_penalty = 0.0f;  // 0: off
  // Beam search (TensorRT-LLM's beamWidth): above 1, the beam_width most likely continuations are
  // kept at every step, as Hugging Face transformers' generate(num_beams=...) keeps them, and the
  // final response carries every finished beam (Result::beams). The beams are chosen by the
  // model's log-probabilities (bad words banned): temperature, top-k/p, min-p, the penalties and
  // the seed do not apply. Needs streaming and return_log_probs off; at most the engine's
  // max_batch_size (each beam is a sequence of a step).
  int64_t beam_width = 1;
  // A finished beam's score: its summed log-probability / (output tokens ^ length_penalty).
  float length_penalty = 1.0f;
  // Stop once beam_width beams have finished, instead of once no running beam can beat them.
  bool early_stopping = false;
};

struct Request {
  std::vector<int32_t> input_ids;  // the prompt, as token ids
  int64_t max_new_tokens = 16;
  // The fewest new tokens (TensorRT-LLM's min_tokens, vLLM's min_tokens): until the output has
  // this many, the end ids are never picked and stop words do not end it. 0 to max_new_tokens.
  int64_t min_new_tokens = 0;
  SamplingConfig sampling;
  // Token sequences that end the output when it ends with one of them (included in the output).
  std::vector<std::vector<int32_t>> stop_words;
  // Token sequences the output must not produce (TensorRT-LLM's bad words): at every step, a
  // one-token word's token is never picked, and a longer word's last token is not picked when the
  // sequence so far (prompt and output) ends with the rest of the word. Greedy decoding then takes
  // the best token left. Should a step ban every token of the vocabulary, it picks token 0.
  std::vector<std::vector<int32_t>> bad_words;
  // Token id -> a bias in [-kMaxLogitBias, kMaxLogitBias] added to its logit at every step, before
  // the penalties, temperature and the rest of the sampling (OpenAI's logit_bias; TensorRT-LLM's
  // embedding bias): -100 all but bans a token, +100 all but forces it. At most
  // kMaxLogitBiasTokens tokens. Log-probabilities and beam search see the biased logits.
  std::map<int32_t, float> logit_bias;
  // Ids that end the output (included). Unset: the engine's end-of-sequence ids.
  std::optional<std::vector<int32_t>> end_ids;
  bool streaming = false;         // a response per step with the new tokens, or one at the end
  bool return_log_probs = false;  // the log-probability of each new token under the model
  // With return_log_probs: also the this many most likely tokens of each step, with their
  // log-probabilities (OpenAI's top_logprobs); 0 to kMaxTopLogProbs.
  int64_t top_log_probs = 0;
  // The log-probability of each prompt token after the first, given the tokens before it (vLLM's
  // prompt_logprobs, OpenAI's echo with logprobs, TensorRT-LLM's context logits): in
  // Result::prompt_log_probs of the request's first response. From the model's logits, before any
  // logit bias or sampling setting. Such a prompt is computed in full (never taken from the prefix
  // cache), in chunks of at most max_batch_size tokens.
  bool return_prompt_log_probs = false;
  // With return_prompt_log_probs: also the this many most likely tokens at each prompt position;
  // 0 to kMaxTopLogProbs.
  int64_t top_prompt_log_probs = 0;
};

inline constexpr int64_t kMaxTopLogProbs = 20;
// Request::logit_bias's limits: its size (each entry is applied to the request's row at every
// step) and each bias's magnitude (a larger one, divided by a small temperature, would overflow).
inline constexpr int64_t kMaxLogitBiasTokens = 1024;
inline constexpr float kMaxLogitBias = 1e6f;

// One of a step's most likely tokens.
struct TopLogProb {
  int32_t token = 0;
  float log_prob = 0;
};

enum class FinishReason { kNotFinished, kEndId, kStopWords, kLength, kCancelled };
// "not_finished", "end_id", "stop_words", "length", "cancelled".
const char* finish_reason_name(FinishReason reason);

// A finished beam of a beam search, best first in Result::beams.
struct Beam {
  std::vector<int32_t> output_ids;
  float cum_log_prob = 0;  // the sum of its tokens' log-probabilities
  float score = 0;         // cum_log_prob / output_ids.size() ^ length_penalty
  FinishReason finish_reason = FinishReason::kNotFinished;
};

struct Result {
  // New tokens: streaming, those since the previous response; otherwise the whole output.
  std::vector<int32_t> output_ids;
  std::vector<float> log_probs;  // one per output id when the request asked for them
  // One list per output id when the request asked for top_log_probs: the most likely tokens of
  // that step, most likely first (the lower id first on ties).
  std::vector<std::vector<TopLogProb>> top_log_probs;
  FinishReason finish_reason = FinishReason::kNotFinished;
  bool is_final = false;  // the last response of its request
  // Beam search (beam_width > 1): every finished beam, best first; output_ids and finish_reason
  // are the best one's.
  std::vector<Beam> beams;
  // With return_prompt_log_probs, in the first response: one per prompt token after the first,
  // its rank there (1: the most likely; 1 + the tokens more likely), and with top_prompt_log_probs
  // one list per such token (as top_log_probs).
  std::vector<float> prompt_log_probs;
  std::vector<int32_t> prompt_ranks;
  std::vector<std::vector<TopLogProb>> prompt_top_log_probs;
};

struct Response {
  RequestId request_id = 0;
  std::optional<std::string> error;  // set (and final) when the request failed or was refused
  Result result;
};

enum class SchedulerPolicy {
  kGuaranteedNoEvict,  // admit a request only when its whole output is sure to fit in the cache
  kMaxUtilization,     // admit while the next step fits; pause the newest requests when it does not
};
// "guaranteed_no_evict" or "max_utilization" (TensorRT-LLM's names); nothing for another name.
std::optional<SchedulerPolicy> scheduler_policy_from_name(const std::string& name);

struct ExecutorConfig {
  SchedulerPolicy policy = SchedulerPolicy::kGuaranteedNoEvict;
  int64_t max_batch_size = 0;  // requests per step; 0: the engine's max_batch_size
  int64_t max_num_tokens = 0;  // tokens per step; 0: the engine's max_num_tokens
  bool enable_chunked_prefill = true;
  bool enable_prefix_reuse = true;  // share cached KV blocks between requests with a common prefix
  double kv_cache_free_gpu_mem_fraction = 0.9;
  int device_index = 0;
};

struct KvCacheStats {
  int64_t total_blocks = 0;
  int64_t free_blocks = 0;    // free, including cached blocks no request holds
  int64_t used_blocks = 0;    // held by requests
  int64_t cached_blocks = 0;  // free but still holding a reusable prefix
  int64_t reused_blocks = 0;  // blocks found in the cache instead of computed, since the start
  int64_t tokens_per_block = 0;
};

struct IterationStats {
  int64_t iteration = 0;
  double seconds = 0;              // the step's time, scheduling and sampling included
  int64_t scheduled_requests = 0;  // requests in the step
  int64_t context_tokens = 0;      // prompt tokens computed (prefill chunks)
  int64_t generation_tokens = 0;   // tokens sampled
};

// A beam search counts as one request per beam of its current step (it runs as those).
struct ExecutorStats {
  int64_t queued_requests = 0;  // waiting to be admitted
  int64_t active_requests = 0;  // running
  int64_t paused_requests = 0;  // preempted (max_utilization), to resume
  int64_t completed_requests = 0;
  int64_t preemptions = 0;
  KvCacheStats kv_cache;
  std::vector<IterationStats> recent_iterations;  // the last 64 steps, oldest first
};

class Executor {
 public:
  // Loads the engine (on the GPU it was built for, or the CPU). nullptr and a one-line `error`
  // when the engine cannot be loaded or the configuration is invalid.
  static std::unique_ptr<Executor> create(const std::string& engine_dir,
                                          const ExecutorConfig& config, std::string* error);
  virtual ~Executor() = default;

  // Why the engine can never run `request` (empty prompt, prompt or prompt + max_new_tokens over
  // the engine's limits, ids outside the vocabulary, empty stop or bad words, bad sampling
  // values), or nothing when it can.
  virtual std::optional<std::string> check_request(const Request& request) const = 0;
  // Queues a request; its responses come through await_responses. A request check_request
  // refuses gets a single error response.
  virtual RequestId enqueue_request(const Request& request) = 0;
  // Stops a request: its blocks are freed and its final response says kCancelled. Unknown or
  // finished ids are ignored.
  virtual void cancel_request(RequestId id) = 0;
  // Responses ready now, waiting up to `timeout` for the first: of every request, or of one.
  virtual std::vector<Response> await_responses(std::chrono::milliseconds timeout) = 0;
  virtual std::vector<Response> await_responses(RequestId id,
                                                std::chrono::milliseconds timeout) = 0;
  virtual ExecutorStats stats() const = 0;

  // The engine's limits, for clients that validate before enqueueing.
  virtual int64_t max_input_len() const = 0;
  virtual int64_t max_seq_len() const = 0;
  virtual std::vector<int32_t> end_ids() const = 0;

  // Finishes the step in flight, fails every unfinished request with "shut down", and stops the
  // background thread. Called by the destructor.
  virtual void shutdown() = 0;
};

}  // namespace kite::executor
