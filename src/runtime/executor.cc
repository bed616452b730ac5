// The Executor (include/kite/executor.h): one background thread owns the engine and runs the
// in-flight batching loop — admit and cancel requests, ask the Scheduler for a step, turn its plan
// into the model's StepInput (each request's block table from the KV cache manager, the tokens its
// bad words ban), run the step with sampling on the backend where it has it, and hand the new
// tokens back as responses. A beam search runs each of its steps as requests of the scheduler of
// its own, one a running beam (BeamGroup).
#include "kite/executor.h"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <future>
#include <limits>
#include <mutex>
#include <numeric>
#include <thread>
#include <unordered_map>

#include "runtime/beam_search.h"
#include "runtime/engine.h"
#include "runtime/scheduler.h"

namespace kite::executor {

const char* finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::kCancelled:
      return "cancelled";
    case FinishReason::kNotFinished:  // the rest as the runtime names them (string literals)
      return kite::finish_reason_name(kite::FinishReason::kNotFinished).data();
    case FinishReason::kEndId:
      return kite::finish_reason_name(kite::FinishReason::kEndId).data();
    case FinishReason::kStopWords:
      return kite::finish_reason_name(kite::FinishReason::kStopWords).data();
    case FinishReason::kLength:
      return kite::finish_reason_name(kite::FinishReason::kLength).data();
  }
  return "unknown";
}

std::optional<SchedulerPolicy> scheduler_policy_from_name(const std::string& name) {
  if (name == "guaranteed_no_evict") return SchedulerPolicy::kGuaranteedNoEvict;
  if (name == "max_utilization") return SchedulerPolicy::kMaxUtilization;
  return std::nullopt;
}

namespace {

constexpr size_t kRecentIterations = 64;

FinishReason public_reason(kite::FinishReason reason) {
  switch (reason) {
    case kite::FinishReason::kNotFinished:
      return FinishReason::kNotFinished;
    case kite::FinishReason::kEndId:
      return FinishReason::kEndId;
    case kite::FinishReason::kStopWords:
      return FinishReason::kStopWords;
    case kite::FinishReason::kLength:
      return FinishReason::kLength;
  }
  return FinishReason::kNotFinished;
}

kite::SamplingConfig internal_sampling(const SamplingConfig& sampling) {
  kite::SamplingConfig config;
  config.temperature = sampling.temperature;
  config.top_k = sampling.top_k;
  config.top_p = sampling.top_p;
  config.min_p = sampling.min_p;
  config.repetition_penalty = sampling.repetition_penalty;
  config.seed = sampling.seed;
  config.presence_penalty = sampling.presence_penalty;
  config.frequency_penalty = sampling.frequency_penalty;
  return config;
}

// log softmax(logits)[token], in double; -inf when every logit is (every token banned).
float log_probability(std::span<const float> logits, int32_t token) {
  const double log_total = log_sum_exp(logits);
  if (std::isinf(log_total)) return float(log_total);
  return float(double(logits[size_t(token)]) - log_total);
}

// The n most likely tokens of a row and their log softmax, most likely first (lower id on ties).
std::vector<TopLogProb> top_log_probabilities(std::span<const float> logits, int64_t n) {
  std::vector<TopLogProb> top;
  const float maximum = *std::max_element(logits.begin(), logits.end());
  if (n <= 0 || (std::isinf(maximum) && maximum < 0)) return top;
  const double log_total = log_sum_exp(logits);
  std::vector<int32_t> ids(logits.size());
  std::iota(ids.begin(), ids.end(), 0);
  const auto count = std::min<ptrdiff_t>(ptrdiff_t(n), ptrdiff_t(ids.size()));
  std::partial_sort(ids.begin(), ids.begin() + count, ids.end(), [&](int32_t a, int32_t b) {
    return logits[size_t(a)] > logits[size_t(b)] ||
           (logits[size_t(a)] == logits[size_t(b)] && a < b);
  });
  for (ptrdiff_t i = 0; i < count; ++i) {
    top.push_back({ids[size_t(i)], float(double(logits[size_t(ids[size_t(i)])]) - log_total)});
  }
  return top;
}

class ExecutorImpl final : public Executor {
 public:
  ExecutorImpl() = default;
  ~ExecutorImpl() override { shutdown(); }

  // Starts the loop thread, which loads the engine; waits for the load.
  Status start(const std::string& engine_dir, const ExecutorConfig& config) {
    std::promise<Status> loaded;
    std::future<Status> load_status = loaded.get_future();
    thread_ = std::thread([this, engine_dir, config, &loaded] {
      Status status = load(engine_dir, config);
      const bool ok = status.is_ok();
      loaded.set_value(std::move(status));
      if (ok) loop();
    });
    Status status = load_status.get();
    if (!status.is_ok()) thread_.join();
    return status;
  }

  std::optional<std::string> check_request(const Request& request) const override {
    if (request.input_ids.empty()) return "the prompt is empty";
    if (request.max_new_tokens < 1) return "max_new_tokens must be at least 1";
    if (request.min_new_tokens < 0 || request.min_new_tokens > request.max_new_tokens) {
      return "min_new_tokens must be between 0 and max_new_tokens (" +
             std::to_string(request.max_new_tokens) + ")";
    }
    const int64_t length = int64_t(request.input_ids.size());
    if (length > max_input_len_) {
      return "the prompt has " + std::to_string(length) + " tokens, more than the engine's " +
             "max_input_len " + std::to_string(max_input_len_);
    }
    if (length + request.max_new_tokens > max_seq_len_) {
      return "the prompt (" + std::to_string(length) + " tokens) + max_new_tokens " +
             std::to_string(request.max_new_tokens) + " exceeds the engine's max_seq_len " +
             std::to_string(max_seq_len_);
    }
    for (int32_t id : request.input_ids) {
      if (id < 0 || id >= vocab_size_) {
        return "token id " + std::to_string(id) + " is outside the vocabulary of " +
               std::to_string(vocab_size_);
      }
    }
    for (const std::vector<int32_t>& words : request.stop_words) {
      if (words.empty()) return "a stop word is empty";
    }
    for (const std::vector<int32_t>& word : request.bad_words) {
      if (word.empty()) return "a bad word is empty";
      for (int32_t id : word) {
        if (id < 0 || id >= vocab_size_) {
          return "bad word token id " + std::to_string(id) + " is outside the vocabulary of " +
                 std::to_string(vocab_size_);
        }
      }
    }
    if (int64_t(request.logit_bias.size()) > kMaxLogitBiasTokens) {
      return "a logit bias of " + std::to_string(request.logit_bias.size()) + " tokens; at most " +
             std::to_string(kMaxLogitBiasTokens) + " are allowed";
    }
    for (const auto& [token, bias] : request.logit_bias) {
      if (token < 0 || token >= vocab_size_) {
        return "logit bias token id " + std::to_string(token) + " is outside the vocabulary of " +
               std::to_string(vocab_size_);
      }
      if (!(std::abs(bias) <= kMaxLogitBias)) {
        return "the logit bias of token " + std::to_string(token) +
               " must be a number between -1e6 and 1e6";
      }
    }
    if (request.top_log_probs < 0 || request.top_log_probs > kMaxTopLogProbs) {
      return "top_log_probs must be between 0 and " + std::to_string(kMaxTopLogProbs);
    }
    if (request.top_log_probs > 0 && !request.return_log_probs) {
      return "top_log_probs needs return_log_probs";
    }
    if (request.top_prompt_log_probs < 0 || request.top_prompt_log_probs > kMaxTopLogProbs) {
      return "top_prompt_log_probs must be between 0 and " + std::to_string(kMaxTopLogProbs);
    }
    if (request.top_prompt_log_probs > 0 && !request.return_prompt_log_probs) {
      return "top_prompt_log_probs needs return_prompt_log_probs";
    }
    // Every prompt position's logit row in the one step that computes the prompt.
    if (request.return_prompt_log_probs && !chunked_prefill_ && length > max_logit_rows_) {
      return "prompt log-probs of a " + std::to_string(length) + "-token prompt need " +
             std::to_string(length) + " logit rows in one step, more than the engine's " +
             std::to_string(max_logit_rows_) + ": enable chunked prefill";
    }
    const Status sampling = validate_sampling_config(internal_sampling(request.sampling));
    if (!sampling.is_ok()) return sampling.message();
    const SamplingConfig& beams = request.sampling;
    if (beams.beam_width < 1) return "beam_width must be at least 1";
    if (!std::isfinite(beams.length_penalty)) return "length_penalty must be a finite number";
    if (beams.beam_width > max_batch_size_) {
      return "beam_width " + std::to_string(beams.beam_width) + " exceeds max_batch_size " +
             std::to_string(max_batch_size_) + " (each beam is a sequence of a step)";
    }
    if (beams.beam_width > max_beam_width_) {
      return "beam_width " + std::to_string(beams.beam_width) +
             " exceeds the engine's max_beam_width " + std::to_string(max_beam_width_) +
             " (kite build --max_beam_width)";
    }
    if (beams.beam_width > 1 && request.streaming) {
      return "beam search answers once, with every beam: set streaming to false";
    }
    if (beams.beam_width > 1 && (request.return_log_probs || request.return_prompt_log_probs)) {
      return "beam search does not return log-probs per token (each beam has its cum_log_prob)";
    }
    // A beam's last step computes its prompt and output in one step without chunked prefill.
    if (beams.beam_width > 1 && !chunked_prefill_ &&
        length + request.max_new_tokens - 1 > max_num_tokens_) {
      return "beam search without chunked prefill computes up to the prompt + max_new_tokens - 1 "
             "(" +
             std::to_string(length + request.max_new_tokens - 1) +
             ") tokens in one step, more than max_num_tokens " + std::to_string(max_num_tokens_) +
             ": enable chunked prefill or lower max_new_tokens";
    }
    return std::nullopt;
  }

  RequestId enqueue_request(const Request& request) override {
    std::lock_guard lock(mutex_);
    const RequestId id = next_id_++;
    if (std::optional<std::string> problem = check_request(request); problem || stopping_) {
      Response response;
      response.request_id = id;
      response.error = problem ? *problem : "the executor is shut down";
      response.result.is_final = true;
      responses_.push_back(std::move(response));
      responses_ready_.notify_all();
      return id;
    }
    pending_.push_back({id, request});
    work_ready_.notify_one();
    return id;
  }

  void cancel_request(RequestId id) override {
    std::lock_guard lock(mutex_);
    cancelled_.push_back(id);
    work_ready_.notify_one();
  }

  std::vector<Response> await_responses(std::chrono::milliseconds timeout) override {
    std::unique_lock lock(mutex_);
    responses_ready_.wait_for(lock, timeout, [&] { return !responses_.empty(); });
    std::vector<Response> ready(std::make_move_iterator(responses_.begin()),
                                std::make_move_iterator(responses_.end()));
    responses_.clear();
    return ready;
  }

  std::vector<Response> await_responses(RequestId id, std::chrono::milliseconds timeout) override {
    std::unique_lock lock(mutex_);
    auto is_ours = [id](const Response& response) { return response.request_id == id; };
    responses_ready_.wait_for(lock, timeout,
                              [&] { return std::ranges::any_of(responses_, is_ours); });
    std::vector<Response> ready;
    std::deque<Response> others;
    for (Response& response : responses_) {
      (is_ours(response) ? ready.emplace_back(std::move(response))
                         : others.emplace_back(std::move(response)));
    }
    responses_ = std::move(others);
    return ready;
  }

  ExecutorStats stats() const override {
    std::lock_guard lock(mutex_);
    ExecutorStats stats = stats_;
    stats.recent_iterations.assign(iterations_.begin(), iterations_.end());
    stats.queued_requests += int64_t(pending_.size());
    return stats;
  }

  int64_t max_input_len() const override { return max_input_len_; }
  int64_t max_seq_len() const override { return max_seq_len_; }
  std::vector<int32_t> end_ids() const override { return end_ids_; }

  void shutdown() override {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
      work_ready_.notify_all();
    }
    if (thread_.joinable()) thread_.join();
  }

 private:
  // A request the loop has admitted to the scheduler.
  struct Active {
    Request request;
    Sampler sampler;              // the host sampler, when the backend does not sample
    std::vector<int32_t> output;  // tokens generated so far
    std::vector<int32_t> unsent;  // streaming: tokens not yet in a response
    std::vector<float> unsent_log_probs;
    std::vector<float> log_probs;  // all of them, for the final non-streaming response
    std::vector<std::vector<TopLogProb>> unsent_top_log_probs;  // likewise, when asked
    std::vector<std::vector<TopLogProb>> top_log_probs;
    // return_prompt_log_probs: those of prompt tokens 1, 2, ... so far (a paused request computes
    // its prompt again without adding to them), until its first response takes them.
    std::vector<float> prompt_log_probs;
    std::vector<int32_t> prompt_ranks;
    std::vector<std::vector<TopLogProb>> prompt_top_log_probs;
    int64_t prompt_rows_done = 0;
    bool prompt_log_probs_sent = false;
  };

  // A logit row, at token `index` of the step, for the log-probability of prompt token `target`
  // (return_prompt_log_probs).
  struct PromptRow {
    RequestId request = 0;
    int32_t index = 0;
    int32_t target = 0;
  };

  // A beam search (beam_width > 1). Each step enqueues a request of the scheduler per running
  // beam: its prompt and output so far, one new token, whose logit row comes back as
  // log-probabilities (the prefix cache keeps the blocks the beams share from being computed
  // again; only each beam's last, partial block is). Once every beam's row is in, BeamSearch
  // picks the next beams. The first step has one request (every beam is the prompt alone).
  struct BeamGroup {
    Request request;
    std::optional<BeamSearch> search;
    StopConditions stop;
    std::vector<float> rows;        // [beam_width, vocab] log-probabilities of this step
    std::vector<int64_t> step_ids;  // this step's requests (scheduler ids)
    int64_t outstanding = 0;        // how many of them have no row yet
  };

  Status load(const std::string& engine_dir, const ExecutorConfig& config) {
    LoadOptions options;
    options.kv_cache_free_gpu_mem_fraction = config.kv_cache_free_gpu_mem_fraction;
    options.device_index = config.device_index;
    KITE_ASSIGN_OR_RETURN(engine_, Engine::load(engine_dir, options));
    const BuildLimits& limits = engine_->config().limits;
    if (config.max_batch_size < 0 || config.max_batch_size > limits.max_batch_size ||
        config.max_num_tokens < 0 || config.max_num_tokens > limits.max_num_tokens) {
      return invalid_argument(
          "max_batch_size and max_num_tokens must be between 1 and the engine's limits (" +
          std::to_string(limits.max_batch_size) + " and " + std::to_string(limits.max_num_tokens) +
          ")");
    }
    SchedulerConfig scheduler;
    scheduler.max_batch_size =
        config.max_batch_size ? config.max_batch_size : limits.max_batch_size;
    scheduler.max_num_tokens =
        config.max_num_tokens ? config.max_num_tokens : limits.max_num_tokens;
    // A beam's next step is a request whose prompt holds the beam's output so far: the scheduler
    // checks prompts against max_seq_len; check_request holds users to max_input_len.
    scheduler.max_input_len = limits.max_seq_len;
    scheduler.max_seq_len = limits.max_seq_len;
    scheduler.policy = config.policy == SchedulerPolicy::kMaxUtilization
                           ? kite::SchedulerPolicy::kMaxUtilization
                           : kite::SchedulerPolicy::kGuaranteedNoEvict;
    scheduler.enable_chunked_prefill = config.enable_chunked_prefill;
    // The model's logits workspace, reserved at load, holds the engine's max_batch_size rows.
    scheduler.max_logit_rows = limits.max_batch_size;
    scheduler.kv_cache.num_blocks = engine_->kv_cache().num_blocks();
    scheduler.kv_cache.block_size = limits.tokens_per_block;
    scheduler.kv_cache.enable_prefix_reuse = config.enable_prefix_reuse;
    KITE_ASSIGN_OR_RETURN(Scheduler created, Scheduler::create(scheduler));
    scheduler_.emplace(std::move(created));
    max_input_len_ = limits.max_input_len;
    max_batch_size_ = scheduler.max_batch_size;
    max_logit_rows_ = scheduler.max_logit_rows;
    max_beam_width_ = limits.beam_width_limit();
    max_num_tokens_ = scheduler.max_num_tokens;
    chunked_prefill_ = scheduler.enable_chunked_prefill;
    max_seq_len_ = limits.max_seq_len;
    vocab_size_ = engine_->config().model.vocab_size;
    end_ids_ = engine_->default_end_ids();
    stats_.kv_cache.tokens_per_block = limits.tokens_per_block;
    publish_stats({});
    return Status::ok();
  }

  // Responses of the loop go out together at the end of its round, after the statistics that
  // account for them (a client that sees a final response sees its blocks freed).
  void respond(Response response) { outbox_.push_back(std::move(response)); }

  void flush(const IterationStats& iteration) {
    publish_stats(iteration);
    if (outbox_.empty()) return;
    std::lock_guard lock(mutex_);
    for (Response& response : outbox_) responses_.push_back(std::move(response));
    outbox_.clear();
    responses_ready_.notify_all();
  }

  void fail(RequestId id, const std::string& message) {
    Response response;
    response.request_id = id;
    response.error = message;
    response.result.is_final = true;
    respond(std::move(response));
  }

  void loop() {
    while (true) {
      std::deque<std::pair<RequestId, Request>> arrived;
      std::vector<RequestId> cancelled;
      {
        std::unique_lock lock(mutex_);
        work_ready_.wait(lock, [&] {
          return stopping_ || !pending_.empty() || !cancelled_.empty() ||
                 scheduler_->has_unfinished();
        });
        if (stopping_) break;
        arrived.swap(pending_);
        cancelled.swap(cancelled_);
      }
      for (auto& [id, request] : arrived) admit(id, std::move(request));
      for (RequestId id : cancelled) cancel(id);
      IterationStats iteration;
      if (scheduler_->has_unfinished()) iteration = step();
      flush(iteration);
    }
    for (auto& [id, active] : active_) {
      (void)scheduler_->cancel(int64_t(id));
      fail(id, "the executor is shut down");
    }
    active_.clear();
    for (auto& [id, group] : beam_groups_) {
      for (int64_t step_id : group.step_ids) (void)scheduler_->cancel(step_id);
      fail(id, "the executor is shut down");
    }
    beam_groups_.clear();
    beam_rows_.clear();
    flush({});
    std::lock_guard lock(mutex_);
    for (auto& [id, request] : pending_) {
      Response response;
      response.request_id = id;
      response.error = "the executor is shut down";
      response.result.is_final = true;
      responses_.push_back(std::move(response));
    }
    pending_.clear();
    responses_ready_.notify_all();
  }

  void admit(RequestId id, Request request) {
    if (request.sampling.beam_width > 1) {
      admit_beam_search(id, std::move(request));
      return;
    }
    NewRequest added;
    added.id = int64_t(id);
    added.prompt = request.input_ids;
    added.max_new_tokens = request.max_new_tokens;
    added.end_ids = end_ids_of(request);
    added.prompt_logits = request.return_prompt_log_probs;
    if (Status status = scheduler_->add_request(std::move(added)); !status.is_ok()) {
      fail(id, status.message());
      return;
    }
    Sampler sampler(internal_sampling(request.sampling));
    active_.emplace(id, Active{.request = std::move(request), .sampler = std::move(sampler)});
  }

  void cancel(RequestId id) {
    if (const auto group = beam_groups_.find(id); group != beam_groups_.end()) {
      end_beam_step(group->second);
      Response response;
      response.request_id = id;
      response.result.finish_reason = FinishReason::kCancelled;
      response.result.is_final = true;
      respond(std::move(response));
      beam_groups_.erase(group);
      return;
    }
    const auto found = active_.find(id);
    if (found == active_.end()) return;  // unknown, finished or refused
    KITE_CHECK(scheduler_->cancel(int64_t(id)).is_ok());
    finish(found->second, id, FinishReason::kCancelled, {});
    active_.erase(found);
  }

  // The final response of a request; `output` is its whole output (for non-streaming requests).
  void finish(Active& active, RequestId id, FinishReason reason, std::vector<int32_t> output) {
    Response response;
    response.request_id = id;
    response.result.finish_reason = reason;
    response.result.is_final = true;
    take_prompt_log_probs(active, response.result);
    if (active.request.streaming) {
      response.result.output_ids = std::move(active.unsent);
      response.result.log_probs = std::move(active.unsent_log_probs);
      response.result.top_log_probs = std::move(active.unsent_top_log_probs);
    } else {
      response.result.output_ids = std::move(output);
      if (active.request.return_log_probs) {
        response.result.log_probs = std::move(active.log_probs);
        response.result.top_log_probs = std::move(active.top_log_probs);
      }
    }
    respond(std::move(response));
  }

  void admit_beam_search(RequestId id, Request request) {
    // Its last step holds the prompt and all but the last output token, as a request would.
    const int64_t tokens = int64_t(request.input_ids.size()) + request.max_new_tokens - 1;
    const int64_t blocks = scheduler_->kv_cache().blocks_for_tokens(tokens);
    if (blocks > engine_->kv_cache().num_blocks()) {
      fail(id, "the beam search needs " + std::to_string(blocks) +
                   " KV cache blocks, more than the cache has (" +
                   std::to_string(engine_->kv_cache().num_blocks()) +
                   "): lower max_new_tokens or give the KV cache more memory");
      return;
    }
    BeamGroup& group = beam_groups_[id];
    const SamplingConfig& sampling = request.sampling;
    group.stop.end_ids = end_ids_of(request);
    group.stop.stop_sequences = request.stop_words;
    group.stop.max_output_len = request.max_new_tokens;
    group.stop.min_output_len = request.min_new_tokens;
    group.search.emplace(
        BeamSearchOptions{sampling.beam_width, sampling.length_penalty, sampling.early_stopping},
        request.max_new_tokens, int64_t(group.stop.end_ids.size()));
    group.request = std::move(request);
    start_beam_step(id, group);
  }

  // Enqueues a step's requests of `group`; fails the search (and drops it) when the scheduler
  // refuses one.
  void start_beam_step(RequestId id, BeamGroup& group) {
    // Before the first step every beam is the prompt alone (empty outputs): one request.
    const std::vector<std::vector<int32_t>>& running = group.search->running();
    const bool first = running.front().empty();
    const size_t beams = first ? 1 : running.size();
    group.rows.assign(size_t(group.search->beam_width()) * size_t(vocab_size_), 0.0f);
    group.outstanding = int64_t(beams);
    for (size_t beam = 0; beam < beams; ++beam) {
      NewRequest added;
      added.id = next_beam_request_--;
      added.prompt = group.request.input_ids;
      if (!first) {
        added.prompt.insert(added.prompt.end(), running[beam].begin(), running[beam].end());
      }
      added.max_new_tokens = 1;
      // The search is under way after its first step: its next steps do not queue again behind
      // the requests that came since.
      added.first_in_line = !first;
      if (Status status = scheduler_->add_request(std::move(added)); !status.is_ok()) {
        end_beam_step(group);
        fail(id, status.message());
        beam_groups_.erase(id);
        return;
      }
      group.step_ids.push_back(next_beam_request_ + 1);
      beam_rows_[next_beam_request_ + 1] = {id, int64_t(beam)};
    }
  }

  // Cancels the step's requests still in the scheduler.
  void end_beam_step(BeamGroup& group) {
    for (int64_t step_id : group.step_ids) {
      (void)scheduler_->cancel(step_id);  // NOT_FOUND for those already finished
      beam_rows_.erase(step_id);
    }
    group.step_ids.clear();
  }

  // A beam's log-probabilities of this step (the log softmax of its logit row) are in; once all
  // are, the search takes its step and either answers or enqueues the next one.
  void take_beam_row(int64_t step_id, std::span<const float> logits) {
    const auto found = beam_rows_.find(step_id);
    if (found == beam_rows_.end()) return;  // its search failed earlier in this step
    const auto [id, beam] = found->second;
    BeamGroup& group = beam_groups_.at(id);
    const size_t vocab = logits.size();
    std::span<float> row(group.rows.data() + size_t(beam) * vocab, vocab);
    std::copy(logits.begin(), logits.end(), row.begin());
    log_softmax(row);
    if (group.search->running().front().empty()) {
      // Before the first step every beam is the prompt (BeamSearch scores only the first).
      for (int64_t other = 1; other < group.search->beam_width(); ++other) {
        std::copy(row.begin(), row.end(), group.rows.begin() + ptrdiff_t(size_t(other) * vocab));
      }
    }
    if (--group.outstanding > 0) return;
    for (int64_t done : group.step_ids) beam_rows_.erase(done);
    group.step_ids.clear();
    const BeamStopCheck stops = [&](int64_t, std::span<const int32_t> output) {
      return check_stop(group.stop, output, {});
    };
    (void)group.search->step(group.rows, int64_t(vocab), stops);
    if (!group.search->done()) {
      start_beam_step(id, group);
      return;
    }
    Response response;
    response.request_id = id;
    response.result.is_final = true;
    for (const BeamHypothesis& hypothesis : group.search->results()) {
      response.result.beams.push_back({hypothesis.output_ids, hypothesis.cum_log_prob,
                                       hypothesis.score, public_reason(hypothesis.finish_reason)});
    }
    if (!response.result.beams.empty()) {
      response.result.output_ids = response.result.beams.front().output_ids;
      response.result.finish_reason = response.result.beams.front().finish_reason;
    }
    respond(std::move(response));
    ++completed_;
    beam_groups_.erase(id);
  }

  // The request (its bad words, sampling and log-probs options) behind a scheduler id.
  const Request& request_of(int64_t scheduler_id) const {
    if (const auto beam = beam_rows_.find(scheduler_id); beam != beam_rows_.end()) {
      return beam_groups_.at(beam->second.first).request;
    }
    return active_.at(RequestId(scheduler_id)).request;
  }

  // Runs one step; its statistics (iteration 0 when nothing ran).
  IterationStats step() {
    const auto started = std::chrono::steady_clock::now();
    const StepPlan plan = scheduler_->schedule();
    if (plan.sequences.empty()) {
      // Nothing fits this step (every running request waits for blocks): wait for a change.
      std::unique_lock lock(mutex_);
      work_ready_.wait_for(lock, std::chrono::milliseconds(1));
      return {};
    }
    const int64_t block_size = engine_->config().limits.tokens_per_block;
    int64_t longest = 0;
    for (const ScheduledSequence& sequence : plan.sequences) {
      longest = std::max(longest, sequence.position + sequence.num_tokens);
    }
    const int64_t max_blocks = engine_->config().limits.block_table_width(longest);
    StepInput input;
    input.max_blocks_per_sequence = max_blocks;
    input.query_start.push_back(0);
    std::vector<int64_t> sampled;  // request of each logit row
    // Prompt positions whose logits give prompt log-probs: their rows follow the sampled ones.
    std::vector<PromptRow> prompt_rows;
    int64_t context_tokens = 0;
    for (const ScheduledSequence& sequence : plan.sequences) {
      const std::vector<int32_t>& tokens = scheduler_->tokens(sequence.request_id);
      const std::vector<int32_t>& blocks = scheduler_->block_table(sequence.request_id);

      Active* wants_prompt = nullptr;
      if (sequence.request_id >= 0) {
        Active& active = active_.at(RequestId(sequence.request_id));
        if (active.request.return_prompt_log_probs) wants_prompt = &active;
      }
      for (int64_t position = sequence.position; position < sequence.position + sequence.num_tokens;
           ++position) {
        // Position p's logits predict token p + 1; each prompt position is recorded once.
        if (wants_prompt && position == wants_prompt->prompt_rows_done &&
            position + 1 < int64_t(wants_prompt->request.input_ids.size())) {
          prompt_rows.push_back({RequestId(sequence.request_id), int32_t(input.token_ids.size()),
                                 tokens[size_t(position) + 1]});
          ++wants_prompt->prompt_rows_done;
        }
        input.token_ids.push_back(tokens[size_t(position)]);
        input.positions.push_back(int32_t(position));
        input.slot_mapping.push_back(blocks[size_t(position / block_size)] * int32_t(block_size) +
                                     int32_t(position % block_size));
      }
      input.query_start.push_back(int32_t(input.token_ids.size()));
      input.context_length.push_back(int32_t(sequence.position + sequence.num_tokens));
      const size_t table_at = input.block_table.size();
      input.block_table.resize(table_at + size_t(max_blocks), 0);
      const int64_t used = (sequence.position + sequence.num_tokens + block_size - 1) / block_size;
      KITE_CHECK(used <= int64_t(blocks.size()) && used <= max_blocks);
      std::copy(blocks.begin(), blocks.begin() + used,
                input.block_table.begin() + ptrdiff_t(table_at));
      if (sequence.samples) {
        // The request's logit bias, and bad words: the tokens this row may not pick, given its
        // whole sequence so far.
        const int32_t row = int32_t(input.logit_rows.size());
        const Request& request = request_of(sequence.request_id);
        for (const auto& [token, bias] : request.logit_bias) {
          input.logit_bias.push_back({row, token, bias});
        }
        for (int32_t token : banned_next_tokens(tokens, request.bad_words)) {
          input.logit_bias.push_back({row, token, -std::numeric_limits<float>::infinity()});
        }
        // Short of min_new_tokens (the row picks output token tokens.size() - prompt): no end id.
        if (int64_t(tokens.size() - request.input_ids.size()) < request.min_new_tokens) {
          for (int32_t token : end_ids_of(request)) {
            input.logit_bias.push_back({row, token, -std::numeric_limits<float>::infinity()});
          }
        }
        input.logit_rows.push_back(int32_t(input.token_ids.size()) - 1);
        sampled.push_back(sequence.request_id);
      }
      if (!sequence.samples || sequence.num_tokens > 1) context_tokens += sequence.num_tokens;
    }

    for (const PromptRow& row : prompt_rows) input.logit_rows.push_back(row.index);
    std::vector<float> log_probs(sampled.size(), 0.0f);
    std::vector<std::vector<TopLogProb>> top_log_probs(sampled.size());
    kite::Result<std::vector<int32_t>> tokens =
        run(input, sampled, prompt_rows, log_probs, top_log_probs);
    if (!tokens.is_ok()) {
      // The step failed as a whole (e.g. out of memory): its requests fail, the rest go on.
      for (const ScheduledSequence& sequence : plan.sequences) {
        (void)scheduler_->cancel(sequence.request_id);
        if (sequence.request_id < 0) {  // a beam step's: its search fails (once)
          const auto beam = beam_rows_.find(sequence.request_id);
          if (beam == beam_rows_.end()) continue;
          const RequestId id = beam->second.first;
          end_beam_step(beam_groups_.at(id));
          fail(id, tokens.status().message());
          beam_groups_.erase(id);
          continue;
        }
        const RequestId id = RequestId(sequence.request_id);
        fail(id, tokens.status().message());
        active_.erase(id);
      }
      (void)scheduler_->on_step_done({});  // every request of the step is gone
      return {};
    }

    std::vector<StepResult> results;
    for (size_t row = 0; row < sampled.size(); ++row) {
      if (beam_rows_.contains(sampled[row])) {
        // The scheduler's request of one beam step ends with it; its row went to the search.
        results.push_back({sampled[row], (*tokens)[row], kite::FinishReason::kNotFinished});
        continue;
      }
      const RequestId id = RequestId(sampled[row]);
      Active& active = active_.at(id);
      const int32_t token = (*tokens)[row];
      active.output.push_back(token);
      active.unsent.push_back(token);
      if (active.request.return_log_probs) {
        active.unsent_log_probs.push_back(log_probs[row]);
        active.log_probs.push_back(log_probs[row]);
      }
      if (active.request.return_log_probs && active.request.top_log_probs > 0) {
        active.unsent_top_log_probs.push_back(top_log_probs[row]);
        active.top_log_probs.push_back(std::move(top_log_probs[row]));
      }
      StepResult result{int64_t(id), token, kite::FinishReason::kNotFinished};
      if (int64_t(active.output.size()) >= active.request.min_new_tokens &&
          ends_with_stop_word(active)) {
        result.finish_reason = kite::FinishReason::kStopWords;
      }
      results.push_back(result);
    }
    std::vector<FinishedRequest> finished = scheduler_->on_step_done(results);
    int64_t beam_steps_done = 0;
    for (FinishedRequest& done : finished) {
      if (done.request_id < 0) {  // a beam step's request: the search answers for it
        ++beam_steps_done;
        continue;
      }
      const RequestId id = RequestId(done.request_id);
      finish(active_.at(id), id, public_reason(done.finish_reason), std::move(done.output_ids));
      active_.erase(id);
    }
    // Streaming requests that go on: this step's tokens.
    for (int64_t request_id : sampled) {
      if (request_id < 0) continue;
      const auto found = active_.find(RequestId(request_id));
      if (found == active_.end() || !found->second.request.streaming) continue;
      Response response;
      response.request_id = RequestId(request_id);
      response.result.output_ids = std::move(found->second.unsent);
      response.result.log_probs = std::move(found->second.unsent_log_probs);
      response.result.top_log_probs = std::move(found->second.unsent_top_log_probs);
      take_prompt_log_probs(found->second, response.result);
      found->second.unsent.clear();
      found->second.unsent_log_probs.clear();
      found->second.unsent_top_log_probs.clear();
      respond(std::move(response));
    }
    IterationStats iteration;
    iteration.iteration = ++iterations_done_;
    iteration.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    iteration.scheduled_requests = int64_t(plan.sequences.size());
    iteration.context_tokens = context_tokens;
    iteration.generation_tokens = int64_t(sampled.size());
    completed_ += int64_t(finished.size()) - beam_steps_done;
    // The beam searches' rows of this step, now that their requests have left the scheduler (and
    // left their blocks in the prefix cache for the next step's).
    for (const auto& [step_id, logits] : beam_logits_) take_beam_row(step_id, logits);
    beam_logits_.clear();
    return iteration;
  }

  // The ids that end the request's output: its own, or the engine's.
  const std::vector<int32_t>& end_ids_of(const Request& request) const {
    return request.end_ids ? *request.end_ids : end_ids_;
  }

  // Whether the request's output now ends with one of its stop words.
  static bool ends_with_stop_word(const Active& active) {
    return std::ranges::any_of(active.request.stop_words, [&](const std::vector<int32_t>& words) {
      return words.size() <= active.output.size() &&
             std::equal(words.begin(), words.end(), active.output.end() - ptrdiff_t(words.size()));
    });
  }

  // Moves a request's prompt log-probs into its first response, once all are in (a request
  // cancelled during its prompt has none).
  static void take_prompt_log_probs(Active& active, Result& result) {
    if (!active.request.return_prompt_log_probs || active.prompt_log_probs_sent) return;
    if (active.prompt_rows_done + 1 < int64_t(active.request.input_ids.size())) return;
    result.prompt_log_probs = std::move(active.prompt_log_probs);
    result.prompt_ranks = std::move(active.prompt_ranks);
    result.prompt_top_log_probs = std::move(active.prompt_top_log_probs);
    active.prompt_log_probs_sent = true;
  }

  // Runs the step; the token of each sampled logit row (and its log-probability, and the most
  // likely tokens', when asked). The rows after those are `prompt_rows`, whose log-probabilities
  // go to their requests.
  kite::Result<std::vector<int32_t>> run(const StepInput& input,
                                         const std::vector<int64_t>& sampled,
                                         const std::vector<PromptRow>& prompt_rows,
                                         std::vector<float>& log_probs,
                                         std::vector<std::vector<TopLogProb>>& top_log_probs) {
    LlamaModel& model = engine_->model();
    const KvCacheView& cache = engine_->kv_cache().view();
    bool want_log_probs = !prompt_rows.empty();
    // A beam step's row goes back as logits (to become log-probabilities), so from the host.
    for (int64_t id : sampled) want_log_probs |= id < 0 || request_of(id).return_log_probs;
    if (engine_->backend().has_sampling() && !want_log_probs) {
      std::vector<SamplingRow> rows;
      std::vector<std::vector<int32_t>> history;
      bool penalty = false;
      for (int64_t id : sampled)
        penalty |= needs_history(internal_sampling(active_.at(RequestId(id)).request.sampling));
      for (int64_t id : sampled) {
        const Active& active = active_.at(RequestId(id));
        const SamplingConfig& sampling = active.request.sampling;
        const bool greedy = internal_sampling(sampling).greedy();
        rows.push_back(SamplingRow{greedy ? 0.0f : sampling.temperature, int32_t(sampling.top_k),
                                   sampling.top_p, sampling.min_p, sampling.repetition_penalty,
                                   sampling.seed, uint64_t(active.output.size()),
                                   sampling.presence_penalty, sampling.frequency_penalty,
                                   int32_t(active.request.input_ids.size())});
        if (penalty) history.push_back(scheduler_->tokens(id));
      }
      return model.forward_and_sample(input, cache, rows, history);
    }
    KITE_ASSIGN_OR_RETURN(std::vector<float> logits, model.forward(input, cache));
    const size_t vocab = size_t(engine_->config().model.vocab_size);
    std::vector<int32_t> tokens(sampled.size());
    for (size_t row = 0; row < sampled.size(); ++row) {
      const std::span<const float> row_logits(logits.data() + row * vocab, vocab);
      if (sampled[row] < 0) {
        beam_logits_.emplace_back(sampled[row],
                                  std::vector<float>(row_logits.begin(), row_logits.end()));
        tokens[row] = 0;  // the step's request ends with this token; the search picks the beams
        continue;
      }
      Active& active = active_.at(RequestId(sampled[row]));
      tokens[row] = active.sampler.sample(row_logits, scheduler_->tokens(sampled[row]),
                                          active.request.input_ids.size());
      if (active.request.return_log_probs) {
        log_probs[row] = log_probability(row_logits, tokens[row]);
        top_log_probs[row] = top_log_probabilities(row_logits, active.request.top_log_probs);
      }
    }
    for (size_t i = 0; i < prompt_rows.size(); ++i) {
      const std::span<const float> row_logits(logits.data() + (sampled.size() + i) * vocab, vocab);
      Active& active = active_.at(prompt_rows[i].request);
      const int32_t target = prompt_rows[i].target;
      active.prompt_log_probs.push_back(log_probability(row_logits, target));
      active.prompt_ranks.push_back(int32_t(1 + std::ranges::count_if(row_logits, [&](float logit) {
                                              return logit > row_logits[size_t(target)];
                                            })));
      if (active.request.top_prompt_log_probs > 0) {
        active.prompt_top_log_probs.push_back(
            top_log_probabilities(row_logits, active.request.top_prompt_log_probs));
      }
    }
    return tokens;
  }

  void publish_stats(const IterationStats& iteration) {
    const kite::KvCacheStats kv = scheduler_->kv_cache().stats();
    std::lock_guard lock(mutex_);
    stats_.queued_requests = scheduler_->num_waiting();
    stats_.active_requests = scheduler_->num_running();
    stats_.paused_requests = scheduler_->num_paused();
    stats_.completed_requests = completed_;
    stats_.preemptions = scheduler_->stats().preemptions;
    stats_.kv_cache.total_blocks = kv.total_blocks;
    stats_.kv_cache.free_blocks = kv.free_blocks;
    stats_.kv_cache.used_blocks = kv.used_blocks;
    stats_.kv_cache.cached_blocks = kv.cached_blocks;
    stats_.kv_cache.reused_blocks = kv.reused_blocks;
    if (iteration.iteration > 0) {
      iterations_.push_back(iteration);
      if (iterations_.size() > kRecentIterations) iterations_.pop_front();
    }
  }

  // Owned by the loop thread.
  std::unique_ptr<Engine> engine_;
  std::optional<Scheduler> scheduler_;
  std::unordered_map<RequestId, Active> active_;
  std::unordered_map<RequestId, BeamGroup> beam_groups_;
  // The scheduler requests of the beam searches' current steps: (search, beam). Their ids are
  // negative, apart from the public ones.
  std::unordered_map<int64_t, std::pair<RequestId, int64_t>> beam_rows_;
  int64_t next_beam_request_ = -1;
  std::vector<std::pair<int64_t, std::vector<float>>> beam_logits_;  // this step's beam rows
  std::vector<Response> outbox_;
  int64_t iterations_done_ = 0;
  int64_t completed_ = 0;
  // Fixed after load.
  int64_t max_input_len_ = 0, max_seq_len_ = 0, vocab_size_ = 0, max_batch_size_ = 0;
  int64_t max_num_tokens_ = 0, max_logit_rows_ = 0, max_beam_width_ = 0;
  bool chunked_prefill_ = true;
  std::vector<int32_t> end_ids_;
  // Shared, under mutex_.
  mutable std::mutex mutex_;
  std::condition_variable work_ready_, responses_ready_;
  bool stopping_ = false;
  RequestId next_id_ = 1;
  std::deque<std::pair<RequestId, Request>> pending_;
  std::vector<RequestId> cancelled_;
  std::deque<Response> responses_;
  ExecutorStats stats_;
  std::deque<IterationStats> iterations_;
  std::thread thread_;
};

}  // namespace

std::unique_ptr<Executor> Executor::create(const std::string& engine_dir,
                                           const ExecutorConfig& config, std::string* error) {
  auto executor = std::make_unique<ExecutorImpl>();
  Status status = executor->start(engine_dir, config);
  if (!status.is_ok()) {
    if (error) *error = status.message();
    return nullptr;
  }
  return executor;
}

}  // namespace kite::executor
