// An Executor for the server's tests: every request's output is the same script of token ids,
// one token per step of a background thread, each with log-probability -0.25 * (its index + 1).
// It keeps the Executor's contract (streaming responses, end ids, max_new_tokens, cancellation,
// shutdown) and records what the server asked of it.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "kite/executor.h"

namespace kite::test {

class FakeExecutor final : public executor::Executor {
 public:
  explicit FakeExecutor(std::vector<int32_t> script,
                        std::chrono::milliseconds step = std::chrono::milliseconds(1))
      : script_(std::move(script)), step_(step) {
    thread_ = std::thread([this] { run(); });
  }
  ~FakeExecutor() override { shutdown(); }

  static constexpr int64_t kMaxInputLen = 64;
  static constexpr int64_t kMaxSeqLen = 128;
  static constexpr int32_t kEndId = 2;
  static constexpr int64_t kTotalBlocks = 100;

  std::optional<std::string> check_request(const executor::Request& request) const override {
    if (request.input_ids.empty()) return "empty prompt";
    if (int64_t(request.input_ids.size()) > kMaxInputLen) return "prompt too long";
    if (int64_t(request.input_ids.size()) + request.max_new_tokens > kMaxSeqLen) {
      return "prompt + max_new_tokens over max_seq_len";
    }
    if (request.max_new_tokens < 1) return "max_new_tokens < 1";
    if (request.sampling.temperature < 0) return "negative temperature";
    return std::nullopt;
  }

  executor::RequestId enqueue_request(const executor::Request& request) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const executor::RequestId id = next_id_++;
    requests_seen_.push_back(request);
    if (auto error = check_request(request)) {
      executor::Response response{.request_id = id, .error = *error};
      response.result.is_final = true;
      push(std::move(response));
      return id;
    }
    active_[id] = Active{request, 0};
    return id;
  }

  void cancel_request(executor::RequestId id) override {
    std::lock_guard<std::mutex> lock(mutex_);
    cancel_calls_.insert(id);
    const auto found = active_.find(id);
    if (found == active_.end()) return;
    active_.erase(found);
    cancelled_.insert(id);
    executor::Response response{.request_id = id};
    response.result.finish_reason = executor::FinishReason::kCancelled;
    response.result.is_final = true;
    push(std::move(response));
  }

  std::vector<executor::Response> await_responses(std::chrono::milliseconds timeout) override {
    std::unique_lock<std::mutex> lock(mutex_);
    ready_.wait_for(lock, timeout, [&] { return !responses_.empty(); });
    std::vector<executor::Response> taken(responses_.begin(), responses_.end());
    responses_.clear();
    return taken;
  }

  std::vector<executor::Response> await_responses(executor::RequestId,
                                                  std::chrono::milliseconds) override {
    ADD_FAILURE() << "the server must await the responses of every request in one thread";
    return {};
  }

  executor::ExecutorStats stats() const override {
    std::lock_guard<std::mutex> lock(mutex_);
    executor::ExecutorStats stats;
    stats.active_requests = int64_t(active_.size());
    stats.kv_cache.total_blocks = kTotalBlocks;
    stats.kv_cache.used_blocks = int64_t(active_.size());
    stats.kv_cache.free_blocks = kTotalBlocks - int64_t(active_.size());
    return stats;
  }

  int64_t max_input_len() const override { return kMaxInputLen; }
  int64_t max_seq_len() const override { return kMaxSeqLen; }
  std::vector<int32_t> end_ids() const override { return {kEndId}; }

  void shutdown() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stopping_) return;
      stopping_ = true;
      for (const auto& [id, active] : active_) {
        executor::Response response{.request_id = id, .error = "shut down"};
        response.result.is_final = true;
        push(std::move(response));
      }
      active_.clear();
    }
    thread_.join();
  }

  // What the server did.
  std::set<executor::RequestId> cancelled() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return cancelled_;
  }
  std::vector<executor::Request> requests_seen() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return requests_seen_;
  }
  size_t active_requests() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return active_.size();
  }

 private:
  struct Active {
    executor::Request request;
    size_t produced = 0;
    std::vector<int32_t> output;  // beam search: held back for the final response
  };

  void push(executor::Response response) {
    responses_.push_back(std::move(response));
    ready_.notify_all();
  }

  // One step: every active request gets its next script token.
  void run() {
    for (;;) {
      std::this_thread::sleep_for(step_);
      std::lock_guard<std::mutex> lock(mutex_);
      if (stopping_) return;
      for (auto it = active_.begin(); it != active_.end();) {
        Active& active = it->second;
        const int32_t token = script_[active.produced % script_.size()];
        executor::Response response{.request_id = it->first};
        response.result.output_ids = {token};
        if (active.produced == 0 && active.request.return_prompt_log_probs) {
          // Prompt token p (p >= 1): -0.5 p, rank p, and the next ids down, each 1 less likely.
          const std::vector<int32_t>& prompt = active.request.input_ids;
          for (size_t p = 1; p < prompt.size(); ++p) {
            response.result.prompt_log_probs.push_back(-0.5f * float(p));
            response.result.prompt_ranks.push_back(int32_t(p));
            if (active.request.top_prompt_log_probs == 0) continue;
            std::vector<executor::TopLogProb> top;
            for (int64_t k = 0; k < active.request.top_prompt_log_probs; ++k) {
              top.push_back({prompt[p] - int32_t(k), -0.5f * float(p) - float(k)});
            }
            response.result.prompt_top_log_probs.push_back(std::move(top));
          }
        }
        if (active.request.return_log_probs) {
          response.result.log_probs = {-0.25f * float(active.produced + 1)};
          // The script's token first, then the next ids down, each 1 less likely.
          if (active.request.top_log_probs > 0) {
            std::vector<executor::TopLogProb> top;
            for (int64_t k = 0; k < active.request.top_log_probs; ++k) {
              top.push_back({token - int32_t(k), response.result.log_probs[0] - float(k)});
            }
            response.result.top_log_probs = {top};
          }
        }
        ++active.produced;
        const std::vector<int32_t> ends = active.request.end_ids.value_or(end_ids());
        if (std::find(ends.begin(), ends.end(), token) != ends.end()) {
          response.result.finish_reason = executor::FinishReason::kEndId;
        } else if (int64_t(active.produced) >= active.request.max_new_tokens) {
          response.result.finish_reason = executor::FinishReason::kLength;
        }
        const bool is_final = response.result.finish_reason != executor::FinishReason::kNotFinished;
        response.result.is_final = is_final;
        if (active.request.sampling.beam_width > 1) {
          // A beam search answers once: the script as its best beam, and beam b that output
          // without its last b tokens.
          active.output.push_back(token);
          if (!is_final) {
            ++it;
            continue;
          }
          response.result.output_ids = active.output;
          for (int64_t b = 0; b < active.request.sampling.beam_width; ++b) {
            executor::Beam beam;
            beam.output_ids.assign(
                active.output.begin(),
                active.output.end() - std::min<ptrdiff_t>(b, ptrdiff_t(active.output.size())));
            beam.cum_log_prob = -float(b + 1);
            beam.score = beam.cum_log_prob;
            beam.finish_reason = response.result.finish_reason;
            response.result.beams.push_back(std::move(beam));
          }
        }
        push(std::move(response));
        it = is_final ? active_.erase(it) : std::next(it);
      }
    }
  }

  std::vector<int32_t> script_;
  std::chrono::milliseconds step_;
  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<executor::Response> responses_;
  std::map<executor::RequestId, Active> active_;
  std::set<executor::RequestId> cancelled_;
  std::set<executor::RequestId> cancel_calls_;
  std::vector<executor::Request> requests_seen_;
  executor::RequestId next_id_ = 1;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace kite::test
