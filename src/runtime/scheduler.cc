// In-flight batching: admission by policy, pauses under kMaxUtilization, chunked prefill under a
// token budget, and the bookkeeping after each step.
#include "runtime/scheduler.h"

#include <algorithm>
#include <string>

namespace kite {
namespace {

std::string str(int64_t value) {
  return std::to_string(value);
}

}  // namespace

Result<Scheduler> Scheduler::create(const SchedulerConfig& config) {
  if (config.max_batch_size < 1) return invalid_argument("max_batch_size must be >= 1");
  if (config.max_num_tokens < 1) return invalid_argument("max_num_tokens must be >= 1");
  if (config.max_input_len < 1) return invalid_argument("max_input_len must be >= 1");
  if (config.max_logit_rows != 0 && config.max_logit_rows < config.max_batch_size) {
    return invalid_argument("max_logit_rows (" + str(config.max_logit_rows) +
                            ") must be >= max_batch_size (" + str(config.max_batch_size) + ")");
  }
  if (config.max_seq_len < config.max_input_len) {
    return invalid_argument("max_seq_len (" + str(config.max_seq_len) +
                            ") must be >= max_input_len (" + str(config.max_input_len) + ")");
  }
  if (config.kv_cache.block_size < 1) return invalid_argument("tokens_per_block must be >= 1");
  if (config.kv_cache.num_blocks < 1 || config.kv_cache.num_blocks > INT32_MAX) {
    return invalid_argument("the KV cache needs between 1 and 2^31 - 1 blocks, not " +
                            str(config.kv_cache.num_blocks));
  }
  if (config.kv_cache.block_hash == nullptr) return invalid_argument("no KV block hash function");
  return Scheduler(config);
}

Scheduler::Scheduler(const SchedulerConfig& config) : config_(config), kv_cache_(config.kv_cache) {}

Scheduler::Request& Scheduler::request_at(int64_t request_id) {
  const auto found = requests_.find(request_id);
  KITE_CHECK(found != requests_.end());
  return found->second;
}

const Scheduler::Request& Scheduler::request_at(int64_t request_id) const {
  const auto found = requests_.find(request_id);
  KITE_CHECK(found != requests_.end());
  return found->second;
}

Status Scheduler::add_request(NewRequest new_request) {
  const std::string name = "request " + str(new_request.id);
  const int64_t prompt_length = int64_t(new_request.prompt.size());
  const int64_t max_new_tokens = new_request.max_new_tokens;
  if (requests_.count(new_request.id)) return invalid_argument(name + ": the id is in use");
  if (prompt_length == 0) return invalid_argument(name + ": the prompt is empty");
  if (max_new_tokens < 1) return invalid_argument(name + ": max_new_tokens must be >= 1");
  if (prompt_length > config_.max_input_len) {
    return out_of_range(name + ": the prompt has " + str(prompt_length) +
                        " tokens, more than max_input_len " + str(config_.max_input_len));
  }
  if (prompt_length + max_new_tokens > config_.max_seq_len) {
    return out_of_range(name + ": the prompt (" + str(prompt_length) +
                        " tokens) + max_new_tokens " + str(max_new_tokens) +
                        " exceed max_seq_len " + str(config_.max_seq_len));
  }
  const int64_t kv_tokens = prompt_length + max_new_tokens - 1;
  const int64_t blocks = kv_cache_.blocks_for_tokens(kv_tokens);
  if (blocks > config_.kv_cache.num_blocks) {
    return out_of_range(name + " needs " + str(blocks) +
                        " KV cache blocks, more than the cache has (" +
                        str(config_.kv_cache.num_blocks) +
                        "): lower max_new_tokens or give the KV cache more memory");
  }
  if (!config_.enable_chunked_prefill) {
    // Every prompt position's row, the last one's sampling, in the step that computes them.
    if (new_request.prompt_logits && prompt_length > logit_row_limit()) {
      return out_of_range(name + ": the logits of its " + str(prompt_length) +
                          " prompt positions exceed a step's " + str(logit_row_limit()) +
                          " logit rows (enable chunked prefill)");
    }
    if (prompt_length > config_.max_num_tokens) {
      return out_of_range(name + ": the prompt has " + str(prompt_length) +
                          " tokens, more than max_num_tokens " + str(config_.max_num_tokens) +
                          " (enable chunked prefill or raise max_num_tokens)");
    }
    // A paused request recomputes its prompt and output so far in one step.
    if (config_.policy == SchedulerPolicy::kMaxUtilization && kv_tokens > config_.max_num_tokens) {
      return out_of_range(
          name + ": once paused it would recompute up to " + str(kv_tokens) +
          " tokens in one step, more than max_num_tokens " + str(config_.max_num_tokens) +
          " (enable chunked prefill, raise max_num_tokens or lower max_new_tokens)");
    }
  }
  Request& added = requests_[new_request.id];
  added.id = new_request.id;
  added.arrival = next_arrival_++;
  added.tokens = std::move(new_request.prompt);
  added.prompt_length = prompt_length;
  added.max_new_tokens = max_new_tokens;
  added.end_ids = std::move(new_request.end_ids);
  added.first_in_line = new_request.first_in_line;
  added.prompt_logits = new_request.prompt_logits;
  // After the others first in line; the rest in arrival order.
  const auto position =
      added.first_in_line
          ? std::ranges::find_if(waiting_,
                                 [&](int64_t queued) { return !request_at(queued).first_in_line; })
          : waiting_.end();
  waiting_.insert(position, added.id);
  return Status::ok();
}

int64_t Scheduler::outstanding_blocks() const {
  int64_t blocks = 0;
  for (int64_t id : running_) {
    blocks += kv_cache_.blocks_needed(id, max_kv_tokens(request_at(id)));
  }
  return blocks;
}

int64_t Scheduler::logit_rows(const Request& request, int64_t position, int64_t count) {
  const int64_t end = position + count;
  const int64_t prompt_rows =
      request.prompt_logits
          ? std::clamp<int64_t>(std::min(end, request.prompt_length - 1) - position, 0, count)
          : 0;
  return prompt_rows + (end == int64_t(request.tokens.size()) ? 1 : 0);
}

int64_t Scheduler::fit_logit_rows(const Request& request, int64_t position, int64_t count,
                                  int64_t rows_left) const {
  if (logit_rows(request, position, count) <= rows_left) return count;
  if (!config_.enable_chunked_prefill) return 0;
  // Rows grow one a token up to the prompt's last position, then by the sampling row at the end.
  const int64_t prompt_positions =
      request.prompt_logits ? std::max<int64_t>(0, request.prompt_length - 1 - position) : 0;
  return rows_left < prompt_positions ? rows_left : count - 1;
}

StepPlan Scheduler::schedule() {
  KITE_CHECK(!in_flight_);
  StepPlan plan;
  int64_t token_budget = config_.max_num_tokens;
  // 1. Running requests in arrival order, which puts the decodes first (check_invariants).
  const std::vector<int64_t> running = running_;  // pauses shrink running_
  for (int64_t id : running) {
    const Request& next = request_at(id);
    if (next.state == RequestState::kPaused) continue;  // paused for an earlier request
    const int64_t remaining = int64_t(next.tokens.size()) - next.num_computed;
    int64_t count = config_.enable_chunked_prefill ? std::min(remaining, token_budget) : remaining;
    if (count == 0 || count > token_budget) continue;  // the budget is spent; next step
    count = fit_logit_rows(next, next.num_computed, count, logit_row_limit() - plan.logit_rows);
    if (count == 0) continue;  // the logit rows are spent; next step
    const int64_t end = next.num_computed + count;
    if (!make_room(next, end, plan)) continue;
    KITE_CHECK(kv_cache_.reserve(id, end));
    plan.sequences.push_back({id, next.num_computed, count, end == int64_t(next.tokens.size())});
    plan.logit_rows += logit_rows(next, next.num_computed, count);
    token_budget -= count;
  }
  // 2. Admission, unless this step had to pause: it would only pause again.
  if (plan.paused.empty()) admit(plan, token_budget);
  plan.num_tokens = config_.max_num_tokens - token_budget;
  if (!plan.sequences.empty()) {
    ++stats_.steps;
    in_flight_ = plan;
  }
  return plan;
}

bool Scheduler::make_room(const Request& request, int64_t num_tokens, StepPlan& plan) {
  while (!kv_cache_.can_reserve(request.id, num_tokens)) {
    // kGuaranteedNoEvict admitted nobody whose blocks were not guaranteed.
    KITE_CHECK(config_.policy == SchedulerPolicy::kMaxUtilization);
    // Never one planned already: planning goes front to back.
    const int64_t victim = running_.back();
    pause(request_at(victim));
    plan.paused.push_back(victim);
    if (victim == request.id) return false;
  }
  return true;
}

void Scheduler::admit(StepPlan& plan, int64_t& token_budget) {
  while (int64_t(running_.size()) < config_.max_batch_size && token_budget > 0) {
    const bool resuming = !paused_.empty();
    if (!resuming && waiting_.empty()) return;
    Request& next = request_at(resuming ? paused_.front() : waiting_.front());
    const int64_t length = int64_t(next.tokens.size());
    const std::span<const int32_t> lookup = cached_prefix_lookup(next);
    const int64_t reused = kv_cache_.reusable_tokens(lookup);
    const int64_t remaining = length - reused;
    int64_t count = config_.enable_chunked_prefill ? std::min(remaining, token_budget) : remaining;
    if (count > token_budget) return;
    count = fit_logit_rows(next, reused, count, logit_row_limit() - plan.logit_rows);
    if (count == 0) return;
    const int64_t blocks =
        config_.policy == SchedulerPolicy::kGuaranteedNoEvict
            ? kv_cache_.blocks_needed_to_add(lookup, max_kv_tokens(next)) + outstanding_blocks()
            : kv_cache_.blocks_needed_to_add(lookup, reused + count);
    if (blocks > kv_cache_.num_free_blocks()) return;
    const std::optional<int64_t> added = kv_cache_.add_sequence(next.id, lookup, reused + count);
    KITE_CHECK(added && *added == reused);
    if (resuming) {
      paused_.erase(paused_.begin());
      ++stats_.resumptions;
    } else {
      waiting_.pop_front();
      // Running, it is the newest request (a request first in line may have overtaken earlier
      // ones): running_ stays in admission order, which puts the decodes first.
      next.arrival = next_arrival_++;
    }
    insert_by_arrival(running_, next.id);
    next.state = RequestState::kPrefill;
    next.num_computed = reused;
    plan.sequences.push_back({next.id, reused, count, reused + count == length});
    plan.logit_rows += logit_rows(next, reused, count);
    token_budget -= count;
  }
}

void Scheduler::pause(Request& request) {
  kv_cache_.free_sequence(request.id);
  std::erase(running_, request.id);
  insert_by_arrival(paused_, request.id);
  request.state = RequestState::kPaused;
  request.num_computed = 0;
  ++stats_.preemptions;
}

void Scheduler::insert_by_arrival(std::vector<int64_t>& queue, int64_t request_id) const {
  const uint64_t arrival = request_at(request_id).arrival;
  const auto position = std::ranges::find_if(
      queue, [&](int64_t queued) { return request_at(queued).arrival > arrival; });
  queue.insert(position, request_id);
}

std::vector<FinishedRequest> Scheduler::on_step_done(std::span<const StepResult> results) {
  KITE_CHECK(in_flight_);
  const StepPlan plan = std::move(*in_flight_);
  in_flight_.reset();
  std::unordered_map<int64_t, const StepResult*> result_of;
  for (const StepResult& result : results) {
    const auto planned =
        std::ranges::find(plan.sequences, result.request_id, &ScheduledSequence::request_id);
    KITE_CHECK(planned != plan.sequences.end() && planned->samples);
    KITE_CHECK(result_of.emplace(result.request_id, &result).second);
  }
  std::vector<FinishedRequest> finished;
  for (const ScheduledSequence& scheduled : plan.sequences) {
    const auto found = requests_.find(scheduled.request_id);
    // Cancelled during the step (and maybe added again since).
    if (found == requests_.end() || (found->second.state != RequestState::kPrefill &&
                                     found->second.state != RequestState::kDecode)) {
      continue;
    }
    Request& ran = found->second;
    KITE_CHECK(ran.num_computed == scheduled.position);
    kv_cache_.commit(ran.id,
                     std::span<const int32_t>(ran.tokens)
                         .subspan(size_t(scheduled.position), size_t(scheduled.num_tokens)));
    ran.num_computed += scheduled.num_tokens;
    if (!scheduled.samples) continue;
    const auto result = result_of.find(ran.id);
    KITE_CHECK(result != result_of.end());
    const int32_t token = result->second->token;
    ran.tokens.push_back(token);
    ran.state = RequestState::kDecode;
    FinishReason reason = result->second->finish_reason;
    if (std::ranges::find(ran.end_ids, token) != ran.end_ids.end()) {
      reason = FinishReason::kEndId;
    } else if (reason == FinishReason::kNotFinished &&
               int64_t(ran.tokens.size()) - ran.prompt_length >= ran.max_new_tokens) {
      reason = FinishReason::kLength;
    }
    if (reason != FinishReason::kNotFinished) finished.push_back(finish(ran, reason));
  }
  return finished;
}

FinishedRequest Scheduler::finish(Request& request, FinishReason reason) {
  FinishedRequest done{
      request.id,
      std::vector<int32_t>(request.tokens.begin() + request.prompt_length, request.tokens.end()),
      reason};
  kv_cache_.free_sequence(request.id);
  std::erase(running_, request.id);
  requests_.erase(request.id);
  ++stats_.finished;
  return done;
}

Status Scheduler::cancel(int64_t request_id) {
  const auto found = requests_.find(request_id);
  if (found == requests_.end()) {
    return not_found("request " + str(request_id) +
                     " is not known (finished, cancelled or never added)");
  }
  switch (found->second.state) {
    case RequestState::kWaiting:
      std::erase(waiting_, request_id);
      break;
    case RequestState::kPaused:
      std::erase(paused_, request_id);
      break;
    case RequestState::kPrefill:
    case RequestState::kDecode:
      kv_cache_.free_sequence(request_id);
      std::erase(running_, request_id);
      break;
  }
  requests_.erase(found);
  ++stats_.cancelled;
  return Status::ok();
}

std::optional<RequestState> Scheduler::state(int64_t request_id) const {
  const auto found = requests_.find(request_id);
  if (found == requests_.end()) return std::nullopt;
  return found->second.state;
}

const std::vector<int32_t>& Scheduler::tokens(int64_t request_id) const {
  return request_at(request_id).tokens;
}

Status Scheduler::check_invariants() const {
  KITE_RETURN_IF_ERROR(kv_cache_.check_invariants());
  auto fail = [](int64_t id, const std::string& what) {
    return internal_error("request " + str(id) + ": " + what);
  };
  if (requests_.size() != waiting_.size() + running_.size() + paused_.size()) {
    return internal_error("requests missing from the queues or queued twice");
  }
  if (int64_t(running_.size()) > config_.max_batch_size) {
    return internal_error("more requests running than max_batch_size");
  }
  if (kv_cache_.num_sequences() != int64_t(running_.size())) {
    return internal_error("KV cache sequences that are not running requests");
  }
  // `ordered_by_line`: the waiting queue, whose requests first in line come first.
  auto check_queue = [&](const auto& queue, auto accepts, bool ordered_by_line = false) -> Status {
    for (size_t i = 0; i < queue.size(); ++i) {
      const auto found = requests_.find(queue[i]);
      if (found == requests_.end()) return fail(queue[i], "queued but unknown");
      const Request& queued = found->second;
      if (!accepts(queued.state)) return fail(queued.id, "in the wrong queue");
      if (i > 0) {
        const Request& before = request_at(queue[i - 1]);
        const bool line_break = ordered_by_line && before.first_in_line && !queued.first_in_line;
        if (ordered_by_line && !before.first_in_line && queued.first_in_line) {
          return fail(queued.id, "first in line but queued after another request");
        }
        if (!line_break && before.arrival >= queued.arrival) {
          return fail(queued.id, "queued out of arrival order");
        }
      }
      const bool running =
          queued.state == RequestState::kPrefill || queued.state == RequestState::kDecode;
      if (running != kv_cache_.has_sequence(queued.id)) {
        return fail(queued.id,
                    running ? "running without blocks" : "holds blocks while not running");
      }
      if (running ? kv_cache_.num_tokens(queued.id) != queued.num_computed
                  : queued.num_computed != 0) {
        return fail(queued.id, "computed tokens disagree with the KV cache");
      }
      if (queued.num_computed >= int64_t(queued.tokens.size())) {
        return fail(queued.id, "nothing left to compute");
      }
    }
    return Status::ok();
  };
  KITE_RETURN_IF_ERROR(check_queue(
      waiting_, [](RequestState state) { return state == RequestState::kWaiting; }, true));
  KITE_RETURN_IF_ERROR(
      check_queue(paused_, [](RequestState state) { return state == RequestState::kPaused; }));
  KITE_RETURN_IF_ERROR(check_queue(running_, [](RequestState state) {
    return state == RequestState::kPrefill || state == RequestState::kDecode;
  }));
  // A prefill chunk takes all the budget its decodes leave unless it is its last, so no later
  // request finishes its prefill first: the decodes come before the prefills in arrival order.
  const auto first_prefill = std::ranges::find_if(
      running_, [&](int64_t id) { return request_at(id).state == RequestState::kPrefill; });
  if (std::any_of(first_prefill, running_.end(),
                  [&](int64_t id) { return request_at(id).state == RequestState::kDecode; })) {
    return internal_error("a running decode arrived after a running prefill");
  }
  if (config_.policy == SchedulerPolicy::kGuaranteedNoEvict &&
      outstanding_blocks() > kv_cache_.num_free_blocks()) {
    return internal_error("the running requests may need more blocks than are free");
  }
  return Status::ok();
}

}  // namespace kite
