// In-flight batching: which requests run in the next forward step and how many of their tokens,
// under a batch size, a token budget and the KV cache blocks. Pure host logic, driven by a loop
// that runs the model: plan = schedule(); run it; on_step_done(new tokens).
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "core/status.h"
#include "runtime/kv_cache_manager.h"
#include "runtime/sampling.h"

namespace kite {

// TensorRT-LLM's CapacitySchedulerPolicy.
enum class SchedulerPolicy {
  // A request is admitted only when the blocks for its whole prompt + max_new_tokens are
  // guaranteed, counting what the running requests may still need. Never pauses a request.
  kGuaranteedNoEvict,
  // A request is admitted when the blocks for its next step exist. When a running request cannot
  // get the block for its next tokens, the most recently admitted running requests are paused
  // (their blocks freed) until it fits; they resume later by recomputing their prompt and output
  // so far as a new prefill (vLLM's preemption by recomputation), cheap when their full blocks
  // are still cached.
  kMaxUtilization,
};

struct SchedulerConfig {
  int64_t max_batch_size = 8;    // requests running at once, hence sequences in one step
  int64_t max_num_tokens = 512;  // tokens in one step, prefill chunks and decodes together
  int64_t max_input_len = 256;   // prompt tokens
  int64_t max_seq_len = 512;     // prompt + generated tokens
  SchedulerPolicy policy = SchedulerPolicy::kGuaranteedNoEvict;
  // Split prompts longer than the step's token budget over several steps, mixed with decodes.
  // Off: a prompt (or a paused request's recomputation) runs whole in one step.
  bool enable_chunked_prefill = false;
  // Logit rows one step may have (the model's logits workspace holds max_batch_size): a row for
  // each sequence that samples, and one for each prompt position of a request that needs its
  // prompt's logits (NewRequest::prompt_logits). 0: max_batch_size.
  int64_t max_logit_rows = 0;
  KvCacheManagerConfig kv_cache;
};

struct NewRequest {
  int64_t id = 0;  // chosen by the caller, unique among the requests not yet finished
  std::vector<int32_t> prompt;
  int64_t max_new_tokens = 16;
  std::vector<int32_t> end_ids;  // a generated end id finishes the request (and is kept)
  // Admitted before the waiting requests that came earlier (after the other such ones): work
  // already under way that would otherwise queue again behind every new arrival, as each step of a
  // beam search does. Once admitted it runs, and is paused, as the newest request.
  bool first_in_line = false;
  // The logits of every prompt position but the last (whose row samples), for the log-probability
  // of each prompt token after the first: the step that computes a position has its logit row,
  // within max_logit_rows (the prompt goes in smaller chunks when they would not fit), and the
  // prompt is never taken from the prefix cache.
  bool prompt_logits = false;
};

// A finished or cancelled request leaves the scheduler: it has no state.
enum class RequestState {
  kWaiting,  // not yet admitted; holds no blocks
  kPrefill,  // running: computing its prompt (or, after a pause, its prompt and output so far)
  kDecode,   // running: one token per step
  kPaused,   // was running, gave its blocks back; resumes before new requests are admitted
};

// One request's share of a step: tokens [position, position + num_tokens) of its tokens (prompt,
// then output) are computed, their keys and values written at those positions through its block
// table, which covers them. Decodes are 1 token; prefill chunks up to the budget.
struct ScheduledSequence {
  int64_t request_id = 0;
  int64_t position = 0;
  int64_t num_tokens = 0;
  // The last known token is among them: the step needs its logits, and on_step_done a new token.
  bool samples = false;
};

struct StepPlan {
  std::vector<ScheduledSequence> sequences;  // decodes, then prefill chunks, in arrival order
  int64_t num_tokens = 0;                    // over all sequences, <= max_num_tokens
  int64_t logit_rows = 0;  // samples and prompt positions of prompt_logits requests, <= the limit
  std::vector<int64_t> paused;               // requests paused by this step (kMaxUtilization)
};

// What the caller's step produced for a ScheduledSequence with `samples`.
struct StepResult {
  int64_t request_id = 0;
  int32_t token = 0;
  // The caller's own verdict (a stop word it found); end ids and max_new_tokens the scheduler
  // checks itself.
  FinishReason finish_reason = FinishReason::kNotFinished;
};

struct FinishedRequest {
  int64_t request_id = 0;
  std::vector<int32_t> output_ids;  // generated tokens
  FinishReason finish_reason = FinishReason::kNotFinished;
};

struct SchedulerStats {
  int64_t steps = 0;        // non-empty plans
  int64_t preemptions = 0;  // pauses
  int64_t resumptions = 0;
  int64_t finished = 0;
  int64_t cancelled = 0;
};

// The capacity scheduler (which requests hold KV cache blocks: admission by policy, pauses) and
// the micro-batch scheduler (which of them run this step, with how many tokens) of TensorRT-LLM's
// batch manager in one pass, as in vLLM's scheduler. Each schedule():
//  1. running requests in arrival order, each with the blocks for its tokens of the step
//     (kMaxUtilization pauses the most recently admitted running requests when blocks are short).
//     A prefill chunk takes all the budget left unless it ends the prompt, so requests finish
//     their prefill in arrival order: the decodes come first, and a long prompt never delays them;
//  2. unless step 1 paused someone, admission, paused requests first, then waiting ones (those
//     first in line, then the others, each in arrival order), while the batch size, the token
//     budget and the policy allow; the first that does not fit stops admission (no overtaking).
// A newly admitted request shares the cached blocks of its prompt's longest cached prefix and
// starts computing after them.
class Scheduler {
 public:
  // Checks the limits (messages name the option).
  static Result<Scheduler> create(const SchedulerConfig& config);

  // Queues a request, or refuses one that could never run: empty prompt, max_new_tokens < 1,
  // prompt beyond max_input_len, prompt + max_new_tokens beyond max_seq_len or more blocks than the
  // whole cache, a prompt (or a paused request's recomputation) beyond max_num_tokens without
  // chunked prefill, an id in use.
  Status add_request(NewRequest new_request);
  // The next step. Call on_step_done after running a non-empty plan, before the next schedule().
  StepPlan schedule();
  // Commits the step's tokens to the KV cache and appends each sampled token (one result for every
  // scheduled sequence with `samples`, none for others; results of requests cancelled during the
  // step are ignored). Returns the requests that finished, whose blocks are freed.
  std::vector<FinishedRequest> on_step_done(std::span<const StepResult> results);
  // Drops a waiting, running or paused request and frees its blocks; kNotFound when unknown. Safe
  // during a step: its result is then ignored.
  Status cancel(int64_t request_id);

  std::optional<RequestState> state(int64_t request_id) const;
  // Prompt, then generated tokens, of a request not finished.
  const std::vector<int32_t>& tokens(int64_t request_id) const;
  // The KV cache blocks of a running request.
  const std::vector<int32_t>& block_table(int64_t request_id) const {
    return kv_cache_.block_table(request_id);
  }
  int64_t num_waiting() const { return int64_t(waiting_.size()); }
  int64_t num_running() const { return int64_t(running_.size()); }
  int64_t num_paused() const { return int64_t(paused_.size()); }
  bool has_unfinished() const { return !requests_.empty(); }

  const SchedulerConfig& config() const { return config_; }
  const KvCacheManager& kv_cache() const { return kv_cache_; }
  const SchedulerStats& stats() const { return stats_; }
  // Checks that the queues, request states and KV cache agree (for tests).
  Status check_invariants() const;

 private:
  struct Request {
    int64_t id = 0;
    uint64_t arrival = 0;         // first come first served order
    std::vector<int32_t> tokens;  // prompt, then output
    int64_t prompt_length = 0;
    int64_t max_new_tokens = 0;
    std::vector<int32_t> end_ids;
    bool first_in_line = false;
    bool prompt_logits = false;
    RequestState state = RequestState::kWaiting;
    int64_t num_computed = 0;  // leading tokens whose KV is in the cache
  };

  explicit Scheduler(const SchedulerConfig& config);

  // Tokens whose KV a request may ever store: its last token is never fed back.
  static int64_t max_kv_tokens(const Request& request) {
    return request.prompt_length + request.max_new_tokens - 1;
  }
  // Blocks the running requests may still take (kGuaranteedNoEvict reserves them).
  int64_t outstanding_blocks() const;
  // Frees blocks for `request` to cover `num_tokens` by pausing running requests from the most
  // recently admitted; false when `request` itself had to be paused.
  bool make_room(const Request& request, int64_t num_tokens, StepPlan& plan);
  void admit(StepPlan& plan, int64_t& token_budget);
  int64_t logit_row_limit() const {
    return config_.max_logit_rows > 0 ? config_.max_logit_rows : config_.max_batch_size;
  }
  // Logit rows of tokens [position, position + count) of `request`: one if they end its known
  // tokens (it samples), one per prompt position before the last with prompt_logits.
  static int64_t logit_rows(const Request& request, int64_t position, int64_t count);
  // The most of `count` tokens from `position` whose logit rows fit `rows_left` (chunked prefill:
  // a shorter chunk; otherwise all or none).
  int64_t fit_logit_rows(const Request& request, int64_t position, int64_t count,
                         int64_t rows_left) const;
  // What a newly admitted request may find in the prefix cache: none of a prompt_logits request.
  static std::span<const int32_t> cached_prefix_lookup(const Request& request) {
    return request.prompt_logits ? std::span<const int32_t>() : std::span(request.tokens);
  }
  void pause(Request& request);
  FinishedRequest finish(Request& request, FinishReason reason);
  // Inserts into a queue kept in arrival order.
  void insert_by_arrival(std::vector<int64_t>& queue, int64_t request_id) const;
  Request& request_at(int64_t request_id);
  const Request& request_at(int64_t request_id) const;

  SchedulerConfig config_;
  KvCacheManager kv_cache_;
  std::unordered_map<int64_t, Request> requests_;
  std::deque<int64_t> waiting_;   // those first in line, then the others; each in arrival order
  std::vector<int64_t> running_;  // arrival order, which is admission order
  std::vector<int64_t> paused_;   // arrival order
  std::optional<StepPlan> in_flight_;
  uint64_t next_arrival_ = 0;
  SchedulerStats stats_;
};

}  // namespace kite
