// The in-flight batching scheduler driven by a fake model whose next token is a hash of the context
// it reads back from a simulated KV cache through the block table: a wrong position, block table,
// shared block or recomputation after a pause changes the output, which every test compares with
// the request run alone.
#include "runtime/scheduler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <string>
#include <utility>

namespace kite {
namespace {

constexpr int32_t kVocabSize = 32;
constexpr int32_t kEndId = 0;
constexpr int32_t kStopToken = 1;  // the fake caller's stop word

int32_t next_token(std::span<const int32_t> context) {
  uint64_t hash = 1469598103934665603ull;
  for (int32_t token : context) hash = (hash ^ uint32_t(token)) * 1099511628211ull;
  return int32_t((hash >> 20) % kVocabSize);
}

// The output of a request run alone: stops at an end id, at a stop token when `stop_tokens`, or at
// max_new_tokens.
FinishedRequest run_alone(int64_t id, std::vector<int32_t> tokens, int64_t max_new_tokens,
                          const std::vector<int32_t>& end_ids, bool stop_tokens = false) {
  FinishedRequest result{id, {}, FinishReason::kLength};
  while (int64_t(result.output_ids.size()) < max_new_tokens) {
    const int32_t token = next_token(tokens);
    tokens.push_back(token);
    result.output_ids.push_back(token);
    if (std::ranges::find(end_ids, token) != end_ids.end()) {
      result.finish_reason = FinishReason::kEndId;
      break;
    }
    if (stop_tokens && token == kStopToken) {
      result.finish_reason = FinishReason::kStopWords;
      break;
    }
  }
  return result;
}

// The model: a cache of one token per slot. A step first writes every scheduled token into its
// slot, then each sampling sequence reads its whole context back through its block table.
class FakeModel {
 public:
  explicit FakeModel(const SchedulerConfig& config, bool stop_tokens = false)
      : block_size_(config.kv_cache.block_size),
        slots_(size_t(config.kv_cache.num_blocks * config.kv_cache.block_size), -1),
        stop_tokens_(stop_tokens) {}

  std::vector<StepResult> run(const Scheduler& scheduler, const StepPlan& plan) {
    for (const ScheduledSequence& scheduled : plan.sequences) {
      const std::vector<int32_t>& tokens = scheduler.tokens(scheduled.request_id);
      const std::vector<int32_t>& table = scheduler.block_table(scheduled.request_id);
      for (int64_t p = scheduled.position; p < scheduled.position + scheduled.num_tokens; ++p) {
        slots_[slot(table, p)] = tokens[size_t(p)];
      }
    }
    std::vector<StepResult> results;
    for (const ScheduledSequence& scheduled : plan.sequences) {
      if (!scheduled.samples) continue;
      const std::vector<int32_t>& table = scheduler.block_table(scheduled.request_id);
      std::vector<int32_t> context;
      for (int64_t p = 0; p < scheduled.position + scheduled.num_tokens; ++p) {
        context.push_back(slots_[slot(table, p)]);
      }
      const int32_t token = next_token(context);
      results.push_back({scheduled.request_id, token,
                         stop_tokens_ && token == kStopToken ? FinishReason::kStopWords
                                                             : FinishReason::kNotFinished});
    }
    return results;
  }

 private:
  size_t slot(const std::vector<int32_t>& table, int64_t position) const {
    return size_t(table.at(size_t(position / block_size_)) * block_size_ + position % block_size_);
  }

  int64_t block_size_;
  std::vector<int32_t> slots_;
  bool stop_tokens_;
};

SchedulerConfig make_config(int64_t max_batch_size, int64_t max_num_tokens, int64_t num_blocks,
                            int64_t block_size, SchedulerPolicy policy, bool chunked) {
  SchedulerConfig config;
  config.max_batch_size = max_batch_size;
  config.max_num_tokens = max_num_tokens;
  config.max_input_len = 64;
  config.max_seq_len = 128;
  config.policy = policy;
  config.enable_chunked_prefill = chunked;
  config.kv_cache.num_blocks = num_blocks;
  config.kv_cache.block_size = block_size;
  return config;
}

Scheduler make_scheduler(const SchedulerConfig& config) {
  Result<Scheduler> scheduler = Scheduler::create(config);
  KITE_CHECK(scheduler.is_ok());
  return std::move(scheduler).value();
}

std::vector<int32_t> make_prompt(int32_t seed, size_t length) {
  std::vector<int32_t> prompt;
  for (size_t i = 0; i < length; ++i) prompt.push_back(int32_t(2 + (seed * 7 + i * 3) % 30));
  return prompt;
}

// "id@position+count" per sequence, '*' when it samples.
std::string describe(const StepPlan& plan) {
  std::string text;
  for (const ScheduledSequence& s : plan.sequences) {
    if (!text.empty()) text += ' ';
    text += std::to_string(s.request_id) + '@' + std::to_string(s.position) + '+' +
            std::to_string(s.num_tokens) + (s.samples ? "*" : "");
  }
  return text;
}

::testing::AssertionResult consistent(const Scheduler& scheduler) {
  const Status status = scheduler.check_invariants();
  if (status.is_ok()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << status.message();
}

// The limits every plan must respect: batch size, token budget, one entry per request, decodes
// before prefill chunks, chunks only when enabled.
void check_plan(const Scheduler& scheduler, const StepPlan& plan) {
  const SchedulerConfig& config = scheduler.config();
  EXPECT_LE(int64_t(plan.sequences.size()), config.max_batch_size);
  int64_t tokens = 0;
  bool prefill_seen = false;
  std::set<int64_t> ids;
  for (const ScheduledSequence& s : plan.sequences) {
    tokens += s.num_tokens;
    EXPECT_GE(s.num_tokens, 1);
    EXPECT_TRUE(ids.insert(s.request_id).second);
    const std::optional<RequestState> state = scheduler.state(s.request_id);
    ASSERT_TRUE(state == RequestState::kDecode || state == RequestState::kPrefill);
    const int64_t length = int64_t(scheduler.tokens(s.request_id).size());
    EXPECT_EQ(s.samples, s.position + s.num_tokens == length);
    if (!config.enable_chunked_prefill) {
      EXPECT_TRUE(s.samples);
    }
    if (*state == RequestState::kDecode) {
      EXPECT_FALSE(prefill_seen) << describe(plan);
      EXPECT_EQ(s.num_tokens, 1);
    } else {
      prefill_seen = true;
    }
  }
  EXPECT_EQ(tokens, plan.num_tokens);
  EXPECT_LE(tokens, config.max_num_tokens);
  // A row per sampling sequence at least; within the limit.
  EXPECT_GE(plan.logit_rows, std::ranges::count_if(plan.sequences, &ScheduledSequence::samples));
  EXPECT_LE(plan.logit_rows,
            config.max_logit_rows > 0 ? config.max_logit_rows : config.max_batch_size);
}

struct Driver {
  // Called before each schedule(), with the step number (adds requests, cancels).
  std::function<void(int64_t step)> before_schedule;
  // Called with each plan after the model ran it, before on_step_done (cancels during a step).
  std::function<void(int64_t step, const StepPlan& plan)> after_run;
  bool stop_tokens = false;
  std::map<int64_t, FinishedRequest> finished;
  std::vector<StepPlan> plans;
  int64_t min_steps = 0;  // keeps stepping while requests may still arrive
  int64_t max_steps = 20000;
};

// Runs schedule -> model -> on_step_done until no request is left (and min_steps are done),
// checking every plan and the invariants after every step, and that an empty plan never happens
// twice in a row (no request stuck).
void drive(Scheduler& scheduler, Driver& driver) {
  FakeModel model(scheduler.config(), driver.stop_tokens);
  int idle_steps = 0;
  std::set<int64_t> scheduled;  // every request scheduled so far
  for (int64_t step = 0;; ++step) {
    ASSERT_LT(step, driver.max_steps) << "the requests never finish";
    if (driver.before_schedule) driver.before_schedule(step);
    if (!scheduler.has_unfinished()) {
      if (step >= driver.min_steps) return;
      continue;
    }
    std::set<int64_t> running_before;
    for (int64_t id : scheduled) {
      const std::optional<RequestState> state = scheduler.state(id);
      if (state == RequestState::kPrefill || state == RequestState::kDecode) {
        running_before.insert(id);
      }
    }
    const StepPlan plan = scheduler.schedule();
    ASSERT_NO_FATAL_FAILURE(check_plan(scheduler, plan));
    if (!plan.paused.empty()) {
      // A step that had to pause admits nobody (not even the paused, which would only churn).
      for (const ScheduledSequence& s : plan.sequences) {
        EXPECT_TRUE(running_before.count(s.request_id)) << describe(plan);
        EXPECT_EQ(std::ranges::count(plan.paused, s.request_id), 0) << describe(plan);
      }
    }
    for (const ScheduledSequence& s : plan.sequences) scheduled.insert(s.request_id);
    ASSERT_TRUE(consistent(scheduler)) << "after schedule() of step " << step;
    driver.plans.push_back(plan);
    if (plan.sequences.empty()) {
      ASSERT_LT(++idle_steps, 2) << "nothing scheduled twice in a row at step " << step;
      continue;
    }
    idle_steps = 0;
    const std::vector<StepResult> results = model.run(scheduler, plan);
    if (driver.after_run) driver.after_run(step, plan);
    for (FinishedRequest& done : scheduler.on_step_done(results)) {
      ASSERT_FALSE(scheduler.state(done.request_id).has_value());
      ASSERT_TRUE(driver.finished.emplace(done.request_id, std::move(done)).second);
    }
    ASSERT_TRUE(consistent(scheduler)) << "after step " << step;
  }
}

void expect_same(const FinishedRequest& actual, const FinishedRequest& expected) {
  EXPECT_EQ(actual.request_id, expected.request_id);
  EXPECT_EQ(actual.output_ids, expected.output_ids) << "request " << expected.request_id;
  EXPECT_EQ(actual.finish_reason, expected.finish_reason) << "request " << expected.request_id;
}

// Adds the requests, runs them all and checks each output against the request run alone.
void run_and_compare(Scheduler& scheduler, Driver& driver,
                     const std::vector<NewRequest>& requests) {
  for (const NewRequest& request : requests) ASSERT_TRUE(scheduler.add_request(request).is_ok());
  ASSERT_NO_FATAL_FAILURE(drive(scheduler, driver));
  ASSERT_EQ(driver.finished.size(), requests.size());
  for (const NewRequest& request : requests) {
    expect_same(driver.finished.at(request.id),
                run_alone(request.id, request.prompt, request.max_new_tokens, request.end_ids));
  }
  EXPECT_EQ(scheduler.kv_cache().stats().used_blocks, 0);
}

TEST(Scheduler, RejectsInvalidConfigs) {
  const SchedulerConfig good = make_config(4, 16, 8, 4, SchedulerPolicy::kGuaranteedNoEvict, false);
  EXPECT_TRUE(Scheduler::create(good).is_ok());
  SchedulerConfig bad = good;
  bad.max_batch_size = 0;
  EXPECT_EQ(Scheduler::create(bad).status().code(), StatusCode::kInvalidArgument);
  bad = good;
  bad.max_num_tokens = 0;
  EXPECT_EQ(Scheduler::create(bad).status().code(), StatusCode::kInvalidArgument);
  bad = good;
  bad.max_seq_len = bad.max_input_len - 1;
  EXPECT_NE(Scheduler::create(bad).status().message().find("max_seq_len"), std::string::npos);
  bad = good;
  bad.kv_cache.block_size = 0;
  EXPECT_EQ(Scheduler::create(bad).status().code(), StatusCode::kInvalidArgument);
  bad = good;
  bad.kv_cache.num_blocks = 0;
  EXPECT_EQ(Scheduler::create(bad).status().code(), StatusCode::kInvalidArgument);
}

TEST(Scheduler, RejectsRequestsThatCanNeverRun) {
  // 4 blocks of 4 tokens; one step takes 12 tokens; no chunking.
  SchedulerConfig config = make_config(4, 12, 4, 4, SchedulerPolicy::kMaxUtilization, false);
  config.max_input_len = 16;
  config.max_seq_len = 24;
  Scheduler scheduler = make_scheduler(config);
  auto refusal = [&scheduler](int64_t id, size_t prompt_length, int64_t max_new_tokens) {
    return scheduler.add_request({id, make_prompt(1, prompt_length), max_new_tokens, {}});
  };
  auto expect_refused = [](const Status& status, StatusCode code, const std::string& names) {
    EXPECT_EQ(status.code(), code) << status.message();
    EXPECT_NE(status.message().find(names), std::string::npos) << status.message();
  };
  expect_refused(refusal(1, 0, 4), StatusCode::kInvalidArgument, "empty");
  expect_refused(refusal(1, 4, 0), StatusCode::kInvalidArgument, "max_new_tokens");
  expect_refused(refusal(1, 17, 1), StatusCode::kOutOfRange, "max_input_len");
  expect_refused(refusal(1, 16, 9), StatusCode::kOutOfRange, "max_seq_len");
  expect_refused(refusal(1, 10, 10), StatusCode::kOutOfRange, "blocks");  // 19 tokens: 5 blocks
  expect_refused(refusal(1, 13, 1), StatusCode::kOutOfRange, "max_num_tokens");
  // Once paused it would recompute 8 + 5 tokens in one step.
  expect_refused(refusal(1, 8, 6), StatusCode::kOutOfRange, "paused");
  EXPECT_EQ(scheduler.num_waiting(), 0);
  EXPECT_TRUE(refusal(1, 8, 5).is_ok());
  expect_refused(refusal(1, 4, 1), StatusCode::kInvalidArgument, "in use");
  EXPECT_EQ(scheduler.num_waiting(), 1);

  // With chunked prefill, a long prompt runs over several steps.
  config.enable_chunked_prefill = true;
  Scheduler chunked = make_scheduler(config);
  EXPECT_TRUE(chunked.add_request({1, make_prompt(1, 13), 1, {}}).is_ok());
  EXPECT_TRUE(chunked.add_request({2, make_prompt(1, 8), 6, {}}).is_ok());
}

TEST(Scheduler, AdmissionRespectsTheBatchSizeAndTheTokenBudget) {
  {
    Scheduler scheduler =
        make_scheduler(make_config(2, 64, 32, 4, SchedulerPolicy::kGuaranteedNoEvict, false));
    std::vector<NewRequest> requests;
    for (int64_t id = 1; id <= 3; ++id)
      requests.push_back({id, make_prompt(int32_t(id), 4), 2, {}});
    Driver driver;
    ASSERT_NO_FATAL_FAILURE(run_and_compare(scheduler, driver, requests));
    EXPECT_EQ(describe(driver.plans[0]), "1@0+4* 2@0+4*");
    EXPECT_EQ(describe(driver.plans[1]), "1@4+1* 2@4+1*");
    EXPECT_EQ(describe(driver.plans[2]), "3@0+4*");  // 1 and 2 finished with 2 tokens
  }
  {
    Scheduler scheduler =
        make_scheduler(make_config(4, 10, 32, 4, SchedulerPolicy::kGuaranteedNoEvict, false));
    Driver driver;
    ASSERT_NO_FATAL_FAILURE(run_and_compare(scheduler, driver,
                                            {{1, make_prompt(1, 6), 3, {}},
                                             {2, make_prompt(2, 6), 3, {}},
                                             {3, make_prompt(3, 2), 3, {}}}));
    // 12 tokens exceed the budget of 10; 3 would fit but does not overtake 2.
    EXPECT_EQ(describe(driver.plans[0]), "1@0+6*");
    EXPECT_EQ(describe(driver.plans[1]), "1@6+1* 2@0+6* 3@0+2*");
  }
}

TEST(Scheduler, ChunkedPrefillSplitsALongPromptOverStepsBetweenDecodes) {
  Scheduler scheduler =
      make_scheduler(make_config(4, 8, 32, 4, SchedulerPolicy::kGuaranteedNoEvict, true));
  Driver driver;
  ASSERT_NO_FATAL_FAILURE(run_and_compare(
      scheduler, driver, {{1, make_prompt(1, 3), 10, {}}, {2, make_prompt(2, 20), 2, {}}}));
  ASSERT_GE(driver.plans.size(), 5u);
  EXPECT_EQ(describe(driver.plans[0]), "1@0+3* 2@0+5");
  EXPECT_EQ(describe(driver.plans[1]), "1@3+1* 2@5+7");
  EXPECT_EQ(describe(driver.plans[2]), "1@4+1* 2@12+7");
  EXPECT_EQ(describe(driver.plans[3]), "1@5+1* 2@19+1*");
  EXPECT_EQ(describe(driver.plans[4]), "1@6+1* 2@20+1*");
}

// Three requests of 4 + 8 tokens need 6 blocks of 2 tokens each, and 8 blocks exist.
std::vector<NewRequest> pressure_requests() {
  std::vector<NewRequest> requests;
  for (int64_t id = 1; id <= 3; ++id) requests.push_back({id, make_prompt(int32_t(id), 4), 8, {}});
  return requests;
}

TEST(Scheduler, MaxUtilizationPausesTheLatestAndResumesWithTheSameTokens) {
  for (bool reuse : {true, false}) {
    SchedulerConfig config = make_config(4, 64, 8, 2, SchedulerPolicy::kMaxUtilization, false);
    config.kv_cache.enable_prefix_reuse = reuse;
    Scheduler scheduler = make_scheduler(config);
    Driver driver;
    ASSERT_NO_FATAL_FAILURE(run_and_compare(scheduler, driver, pressure_requests()));
    EXPECT_EQ(describe(driver.plans[0]), "1@0+4* 2@0+4* 3@0+4*");  // 6 of the 8 blocks
    std::vector<int64_t> paused;
    for (const StepPlan& plan : driver.plans) {
      paused.insert(paused.end(), plan.paused.begin(), plan.paused.end());
    }
    ASSERT_FALSE(paused.empty());
    EXPECT_EQ(paused[0], 3);                      // the most recently admitted
    EXPECT_EQ(std::ranges::count(paused, 1), 0);  // the first never
    EXPECT_EQ(scheduler.stats().preemptions, int64_t(paused.size()));
    EXPECT_EQ(scheduler.stats().resumptions, scheduler.stats().preemptions);
    // Resuming shares the paused request's blocks that are still cached.
    EXPECT_EQ(scheduler.kv_cache().stats().reused_tokens > 0, reuse);
  }
}

TEST(Scheduler, PausedRequestsResumeBeforeNewOnes) {
  Scheduler scheduler =
      make_scheduler(make_config(4, 64, 8, 2, SchedulerPolicy::kMaxUtilization, false));
  Driver driver;
  std::optional<int64_t> added_at;
  driver.before_schedule = [&](int64_t step) {
    if (!added_at && scheduler.num_paused() > 0) {
      ASSERT_TRUE(scheduler.add_request({4, make_prompt(4, 2), 2, {}}).is_ok());
      added_at = step;
    }
  };
  for (const NewRequest& request : pressure_requests()) {
    ASSERT_TRUE(scheduler.add_request(request).is_ok());
  }
  ASSERT_NO_FATAL_FAILURE(drive(scheduler, driver));
  ASSERT_TRUE(added_at.has_value());
  // (step, place in the plan) where `id` is first scheduled from step `from` on.
  auto first_entry_of = [&](int64_t id, size_t from) {
    for (size_t step = from; step < driver.plans.size(); ++step) {
      const std::vector<ScheduledSequence>& sequences = driver.plans[step].sequences;
      for (size_t i = 0; i < sequences.size(); ++i) {
        if (sequences[i].request_id == id) return std::pair(step, i);
      }
    }
    return std::pair(driver.plans.size(), size_t(0));
  };
  const auto resumed = first_entry_of(3, size_t(*added_at));
  ASSERT_LT(resumed.first, driver.plans.size());
  EXPECT_LT(resumed, first_entry_of(4, 0));
  ASSERT_EQ(driver.finished.size(), 4u);
  expect_same(driver.finished.at(4), run_alone(4, make_prompt(4, 2), 2, {}));
  expect_same(driver.finished.at(3), run_alone(3, make_prompt(3, 4), 8, {}));
}

// A request first in line (a beam search's next step) is admitted before the waiting requests
// that came earlier, after the other such ones, and runs as the newest once admitted: with two
// running at once, a request it overtook joins while it decodes, behind it (drive() checks that
// the decodes stay first).
TEST(Scheduler, FirstInLineRequestsAreAdmittedBeforeEarlierWaitingOnes) {
  for (const int64_t batch : {1, 2}) {
    for (const SchedulerPolicy policy :
         {SchedulerPolicy::kGuaranteedNoEvict, SchedulerPolicy::kMaxUtilization}) {
      // 8 tokens a step: request 3's prompt of 10 is chunked, so that with batch 2 it is still
      // computing its prompt while request 4, first in line, decodes.
      Scheduler scheduler = make_scheduler(make_config(batch, 8, 32, 2, policy, true));
      Driver driver;
      std::vector<NewRequest> requests = {{1, make_prompt(1, 5), 3, {}},
                                          {2, make_prompt(2, 3), 3, {}},
                                          {3, make_prompt(3, 10), 2, {}},
                                          {6, make_prompt(6, 2), 3, {}}};
      for (const NewRequest& request : requests) {
        ASSERT_TRUE(scheduler.add_request(request).is_ok());
      }
      const NewRequest line_a{4, make_prompt(4, 3), 4, {}, true};
      const NewRequest line_b{5, make_prompt(5, 3), 1, {}, true};
      driver.before_schedule = [&](int64_t step) {
        if (step == 1) {
          ASSERT_TRUE(scheduler.add_request(line_a).is_ok());
          ASSERT_TRUE(scheduler.add_request(line_b).is_ok());
        }
      };
      ASSERT_NO_FATAL_FAILURE(drive(scheduler, driver));
      std::vector<int64_t> admitted;
      for (const StepPlan& plan : driver.plans) {
        for (const ScheduledSequence& sequence : plan.sequences) {
          if (std::ranges::find(admitted, sequence.request_id) == admitted.end()) {
            admitted.push_back(sequence.request_id);
          }
        }
      }
      // Batch 1: 1 runs alone; batch 2: 1 and 2 from the start.
      const std::vector<int64_t> expected = batch == 1 ? std::vector<int64_t>{1, 4, 5, 2, 3, 6}
                                                       : std::vector<int64_t>{1, 2, 4, 5, 3, 6};
      EXPECT_EQ(admitted, expected) << "batch " << batch;
      requests.push_back(line_a);
      requests.push_back(line_b);
      ASSERT_EQ(driver.finished.size(), requests.size());
      for (const NewRequest& request : requests) {
        expect_same(driver.finished.at(request.id),
                    run_alone(request.id, request.prompt, request.max_new_tokens, request.end_ids));
      }
    }
  }
}

TEST(Scheduler, GuaranteedNoEvictNeverPauses) {
  Scheduler scheduler =
      make_scheduler(make_config(4, 64, 8, 2, SchedulerPolicy::kGuaranteedNoEvict, false));
  Driver driver;
  int64_t most_running = 0;
  driver.after_run = [&](int64_t, const StepPlan& plan) {
    EXPECT_TRUE(plan.paused.empty());
    most_running = std::max(most_running, scheduler.num_running());
  };
  ASSERT_NO_FATAL_FAILURE(run_and_compare(scheduler, driver, pressure_requests()));
  EXPECT_EQ(scheduler.stats().preemptions, 0);
  EXPECT_EQ(most_running, 1);  // a second request's 6 blocks are never guaranteed alongside
  EXPECT_EQ(describe(driver.plans[0]), "1@0+4*");
}

TEST(Scheduler, CancelsAWaitingPrefillingOrDecodingRequest) {
  Scheduler scheduler =
      make_scheduler(make_config(2, 8, 16, 2, SchedulerPolicy::kGuaranteedNoEvict, true));
  ASSERT_TRUE(scheduler.add_request({1, make_prompt(1, 3), 10, {}}).is_ok());
  ASSERT_TRUE(scheduler.add_request({2, make_prompt(2, 12), 4, {}}).is_ok());
  ASSERT_TRUE(scheduler.add_request({3, make_prompt(3, 3), 4, {}}).is_ok());
  FakeModel model(scheduler.config());
  StepPlan plan = scheduler.schedule();
  EXPECT_EQ(describe(plan), "1@0+3* 2@0+5");
  EXPECT_TRUE(scheduler.on_step_done(model.run(scheduler, plan)).empty());
  EXPECT_EQ(scheduler.state(1), RequestState::kDecode);
  EXPECT_EQ(scheduler.state(2), RequestState::kPrefill);
  EXPECT_EQ(scheduler.state(3), RequestState::kWaiting);
  EXPECT_GT(scheduler.kv_cache().stats().used_blocks, 0);

  EXPECT_TRUE(scheduler.cancel(3).is_ok());
  EXPECT_FALSE(scheduler.state(3).has_value());
  EXPECT_EQ(scheduler.num_waiting(), 0);
  const int64_t used_by_first = int64_t(scheduler.block_table(1).size());
  EXPECT_TRUE(scheduler.cancel(2).is_ok());
  EXPECT_EQ(scheduler.kv_cache().stats().used_blocks, used_by_first);
  EXPECT_TRUE(scheduler.cancel(1).is_ok());
  EXPECT_EQ(scheduler.kv_cache().stats().used_blocks, 0);
  EXPECT_FALSE(scheduler.has_unfinished());
  EXPECT_EQ(scheduler.cancel(1).code(), StatusCode::kNotFound);
  EXPECT_EQ(scheduler.cancel(99).code(), StatusCode::kNotFound);
  EXPECT_EQ(scheduler.stats().cancelled, 3);
  EXPECT_TRUE(consistent(scheduler));
  EXPECT_TRUE(scheduler.schedule().sequences.empty());
}

TEST(Scheduler, CancelsAPausedRequest) {
  Scheduler scheduler =
      make_scheduler(make_config(4, 64, 8, 2, SchedulerPolicy::kMaxUtilization, false));
  Driver driver;
  bool cancelled = false;
  driver.before_schedule = [&](int64_t) {
    if (!cancelled && scheduler.num_paused() > 0) {
      EXPECT_EQ(scheduler.state(3), RequestState::kPaused);
      EXPECT_TRUE(scheduler.cancel(3).is_ok());
      cancelled = true;
    }
  };
  for (const NewRequest& request : pressure_requests()) {
    ASSERT_TRUE(scheduler.add_request(request).is_ok());
  }
  ASSERT_NO_FATAL_FAILURE(drive(scheduler, driver));
  ASSERT_TRUE(cancelled);
  EXPECT_EQ(driver.finished.count(3), 0u);
  ASSERT_EQ(driver.finished.size(), 2u);
  for (int64_t id : {1, 2}) {
    expect_same(driver.finished.at(id), run_alone(id, make_prompt(int32_t(id), 4), 8, {}));
  }
  EXPECT_EQ(scheduler.kv_cache().stats().used_blocks, 0);
}

TEST(Scheduler, IgnoresTheResultOfARequestCancelledDuringItsStep) {
  Scheduler scheduler =
      make_scheduler(make_config(4, 64, 16, 2, SchedulerPolicy::kGuaranteedNoEvict, false));
  Driver driver;
  driver.after_run = [&](int64_t step, const StepPlan&) {
    if (step == 2) {
      EXPECT_TRUE(scheduler.cancel(1).is_ok());
    }
  };
  ASSERT_TRUE(scheduler.add_request({1, make_prompt(1, 4), 6, {}}).is_ok());
  ASSERT_TRUE(scheduler.add_request({2, make_prompt(2, 4), 6, {}}).is_ok());
  ASSERT_NO_FATAL_FAILURE(drive(scheduler, driver));
  ASSERT_EQ(driver.finished.size(), 1u);
  expect_same(driver.finished.at(2), run_alone(2, make_prompt(2, 4), 6, {}));
  EXPECT_EQ(scheduler.kv_cache().stats().used_blocks, 0);
}

TEST(Scheduler, FinishesAtAnEndIdMaxNewTokensOrTheCallersWord) {
  // An end id: the third token of request 1's unconstrained output.
  const std::vector<int32_t> prompt = make_prompt(1, 5);
  const std::vector<int32_t> free_run = run_alone(1, prompt, 12, {}).output_ids;
  const std::vector<int32_t> end_ids = {free_run[2]};
  const FinishedRequest expected_end = run_alone(1, prompt, 12, end_ids);
  ASSERT_EQ(expected_end.finish_reason, FinishReason::kEndId);
  ASSERT_LE(expected_end.output_ids.size(), 3u);
  {
    Scheduler scheduler =
        make_scheduler(make_config(4, 64, 32, 4, SchedulerPolicy::kGuaranteedNoEvict, false));
    Driver driver;
    ASSERT_NO_FATAL_FAILURE(run_and_compare(
        scheduler, driver, {{1, prompt, 12, end_ids}, {2, make_prompt(2, 5), 7, {}}}));
    EXPECT_EQ(driver.finished.at(2).output_ids.size(), 7u);
    EXPECT_EQ(driver.finished.at(2).finish_reason, FinishReason::kLength);
    EXPECT_EQ(scheduler.stats().finished, 2);
  }
  // The caller's stop word.
  std::optional<NewRequest> stopping;
  for (int32_t seed = 0; seed < 200 && !stopping; ++seed) {
    const FinishedRequest alone = run_alone(3, make_prompt(seed, 6), 40, {}, true);
    if (alone.finish_reason == FinishReason::kStopWords) {
      stopping = NewRequest{3, make_prompt(seed, 6), 40, {}};
    }
  }
  ASSERT_TRUE(stopping.has_value());
  Scheduler scheduler =
      make_scheduler(make_config(4, 64, 32, 4, SchedulerPolicy::kGuaranteedNoEvict, false));
  ASSERT_TRUE(scheduler.add_request(*stopping).is_ok());
  Driver driver;
  driver.stop_tokens = true;
  ASSERT_NO_FATAL_FAILURE(drive(scheduler, driver));
  expect_same(driver.finished.at(3), run_alone(3, stopping->prompt, 40, {}, true));
  EXPECT_EQ(scheduler.kv_cache().stats().used_blocks, 0);
}

TEST(Scheduler, NewRequestsStartAfterACachedPromptPrefix) {
  for (bool reuse : {true, false}) {
    SchedulerConfig config = make_config(4, 64, 32, 4, SchedulerPolicy::kGuaranteedNoEvict, false);
    config.kv_cache.enable_prefix_reuse = reuse;
    Scheduler scheduler = make_scheduler(config);
    const std::vector<int32_t> shared = make_prompt(5, 10);
    std::vector<int32_t> longer = shared;
    longer.insert(longer.end(), {7, 8, 9});
    Driver driver;
    driver.before_schedule = [&](int64_t step) {
      // While request 1 decodes, its two full prompt blocks are cached.
      if (step == 2) {
        ASSERT_TRUE(scheduler.add_request({2, longer, 4, {}}).is_ok());
      }
      if (step == 4) {
        ASSERT_TRUE(scheduler.add_request({3, shared, 4, {}}).is_ok());
      }
    };
    ASSERT_TRUE(scheduler.add_request({1, shared, 6, {}}).is_ok());
    ASSERT_NO_FATAL_FAILURE(drive(scheduler, driver));
    ASSERT_EQ(driver.finished.size(), 3u);
    expect_same(driver.finished.at(1), run_alone(1, shared, 6, {}));
    expect_same(driver.finished.at(2), run_alone(2, longer, 4, {}));
    expect_same(driver.finished.at(3), run_alone(3, shared, 4, {}));
    const int64_t start = reuse ? 8 : 0;
    EXPECT_EQ(describe(driver.plans[2]),
              "1@11+1* 2@" + std::to_string(start) + "+" + std::to_string(13 - start) + "*");
    const KvCacheStats stats = scheduler.kv_cache().stats();
    EXPECT_EQ(stats.reused_tokens, reuse ? 16 : 0);
    EXPECT_EQ(stats.reused_blocks, reuse ? 4 : 0);
  }
}

// A request that needs its prompt's logits: a step's logit rows (one per sampling sequence, one per
// such prompt position but the last) stay within the limit (max_batch_size, 2 here), its prompt
// going in shorter chunks; its prompt is never taken from the prefix cache; without chunked
// prefill a prompt of more positions than rows is refused.
TEST(Scheduler, PromptLogitsKeepStepsWithinTheLogitRows) {
  {
    Scheduler scheduler =
        make_scheduler(make_config(2, 16, 32, 4, SchedulerPolicy::kGuaranteedNoEvict, true));
    NewRequest logits{2, make_prompt(2, 7), 2, {}};
    logits.prompt_logits = true;
    Driver driver;
    ASSERT_NO_FATAL_FAILURE(
        run_and_compare(scheduler, driver, {{1, make_prompt(1, 6), 3, {}}, logits}));
    ASSERT_EQ(driver.plans.size(), 6u);
    const std::vector<std::string> expected = {"1@0+6* 2@0+1", "1@6+1* 2@1+1", "1@7+1* 2@2+1",
                                               "2@3+2",        "2@5+2*",       "2@7+1*"};
    const std::vector<int64_t> rows = {2, 2, 2, 2, 2, 1};
    for (size_t i = 0; i < expected.size(); ++i) {
      EXPECT_EQ(describe(driver.plans[i]), expected[i]) << "step " << i;
      EXPECT_EQ(driver.plans[i].logit_rows, rows[i]) << "step " << i;
    }
  }
  {
    Scheduler scheduler =
        make_scheduler(make_config(4, 64, 32, 4, SchedulerPolicy::kGuaranteedNoEvict, true));
    const std::vector<int32_t> shared = make_prompt(5, 10);
    Driver driver;
    driver.before_schedule = [&](int64_t step) {
      if (step != 2) return;  // request 1 decodes: its two full prompt blocks are cached
      NewRequest logits{2, shared, 2, {}};
      logits.prompt_logits = true;
      ASSERT_TRUE(scheduler.add_request(logits).is_ok());
      ASSERT_TRUE(scheduler.add_request({3, shared, 2, {}}).is_ok());
    };
    ASSERT_TRUE(scheduler.add_request({1, shared, 6, {}}).is_ok());
    ASSERT_NO_FATAL_FAILURE(drive(scheduler, driver));
    // Request 2's 9 prompt rows go 3 at a time beside the decode's row; request 3 starts after
    // the cached 8 tokens, short of its sampling row this step.
    EXPECT_EQ(describe(driver.plans[2]), "1@11+1* 2@0+3 3@8+1");
    expect_same(driver.finished.at(2), run_alone(2, shared, 2, {}));
    expect_same(driver.finished.at(3), run_alone(3, shared, 2, {}));
    EXPECT_EQ(scheduler.kv_cache().stats().reused_tokens, 8);  // request 3's only
  }
  Scheduler whole =
      make_scheduler(make_config(2, 16, 32, 4, SchedulerPolicy::kGuaranteedNoEvict, false));
  NewRequest three{1, make_prompt(1, 3), 2, {}};
  three.prompt_logits = true;
  const Status refused = whole.add_request(three);
  EXPECT_EQ(refused.code(), StatusCode::kOutOfRange);
  EXPECT_NE(refused.message().find("enable chunked prefill"), std::string::npos)
      << refused.message();
  NewRequest two{2, make_prompt(1, 2), 2, {}};
  two.prompt_logits = true;
  EXPECT_TRUE(whole.add_request(two).is_ok());
}

// Many requests with random lengths and common prefixes arriving over time, random cancellations
// (some during a step), some needing their prompt's logits, under every policy and option: every
// request that is neither refused nor cancelled finishes with its output run alone, and refusals
// are exactly the impossible requests.
TEST(Scheduler, RandomWorkloadsGiveTheOutputsOfRequestsRunAlone) {
  uint32_t case_number = 0;
  for (SchedulerPolicy policy :
       {SchedulerPolicy::kGuaranteedNoEvict, SchedulerPolicy::kMaxUtilization}) {
    for (bool chunked : {false, true}) {
      for (bool reuse : {false, true}) {
        // What the cases of this combination went through, to check they test something.
        int64_t accepted_total = 0, refused = 0, cancelled_total = 0, preemptions = 0;
        int64_t reused_tokens = 0, partial_chunks = 0, most_running = 0;
        for (int seed = 0; seed < 6; ++seed) {
          SCOPED_TRACE("policy " + std::to_string(int(policy)) + " chunked " +
                       std::to_string(chunked) + " reuse " + std::to_string(reuse) + " seed " +
                       std::to_string(seed));
          std::mt19937 random(1000 + case_number++);
          auto uniform = [&random](int64_t low, int64_t high) {
            return std::uniform_int_distribution<int64_t>(low, high)(random);
          };
          const int64_t block_size = uniform(1, 4) * 2;
          SchedulerConfig config =
              make_config(uniform(1, 6), uniform(8, 48), uniform(24, 100) / block_size, block_size,
                          policy, chunked);
          config.max_input_len = 24;
          config.max_seq_len = 40;
          config.kv_cache.enable_prefix_reuse = reuse;
          Scheduler scheduler = make_scheduler(config);
          const std::vector<std::vector<int32_t>> prefixes = {make_prompt(11, 16),
                                                              make_prompt(12, 9)};
          std::map<int64_t, NewRequest> accepted;
          std::set<int64_t> cancelled;
          int64_t next_id = 0;
          auto add_some = [&](int64_t count) {
            for (int64_t i = 0; i < count; ++i) {
              NewRequest request{next_id++, {}, uniform(1, 16), {kEndId}};
              request.first_in_line = uniform(0, 4) == 0;  // some overtake the waiting ones
              // Some need their prompt's logits: logit rows per step, no prefix reuse.
              request.prompt_logits = request.id % 5 == 0;
              if (uniform(0, 2) > 0) {
                request.prompt = prefixes[size_t(uniform(0, 1))];
                request.prompt.resize(size_t(uniform(1, int64_t(request.prompt.size()))));
              }
              for (int64_t n = uniform(request.prompt.empty() ? 1 : 0, 10); n > 0; --n) {
                request.prompt.push_back(int32_t(uniform(2, kVocabSize - 1)));
              }
              const int64_t length = int64_t(request.prompt.size());
              const int64_t kv_tokens = length + request.max_new_tokens - 1;
              const bool impossible =
                  length > config.max_input_len ||
                  length + request.max_new_tokens > config.max_seq_len ||
                  (kv_tokens + block_size - 1) / block_size > config.kv_cache.num_blocks ||
                  (!chunked && length > config.max_num_tokens) ||
                  (!chunked && policy == SchedulerPolicy::kMaxUtilization &&
                   kv_tokens > config.max_num_tokens) ||
                  (!chunked && request.prompt_logits && length > config.max_batch_size);
              const Status status = scheduler.add_request(request);
              ASSERT_EQ(status.is_ok(), !impossible) << status.message();
              if (status.is_ok()) {
                accepted.emplace(request.id, request);
              } else {
                ++refused;
              }
            }
          };
          auto cancel_one = [&] {
            std::vector<int64_t> live;
            for (const auto& [id, request] : accepted) {
              if (scheduler.state(id)) live.push_back(id);
            }
            if (live.empty()) return;
            const int64_t id = live[size_t(uniform(0, int64_t(live.size()) - 1))];
            ASSERT_TRUE(scheduler.cancel(id).is_ok());
            cancelled.insert(id);
          };
          Driver driver;
          driver.min_steps = 100;
          driver.before_schedule = [&](int64_t step) {
            if (step < driver.min_steps) add_some(uniform(0, 2));
            if (uniform(0, 99) < 4) cancel_one();
          };
          driver.after_run = [&](int64_t, const StepPlan& plan) {
            for (const ScheduledSequence& s : plan.sequences) partial_chunks += !s.samples;
            most_running = std::max(most_running, scheduler.num_running());
            if (uniform(0, 99) < 2) cancel_one();
          };
          ASSERT_NO_FATAL_FAILURE(drive(scheduler, driver));
          EXPECT_EQ(driver.finished.size() + cancelled.size(), accepted.size());
          for (const auto& [id, request] : accepted) {
            if (cancelled.count(id)) {
              EXPECT_EQ(driver.finished.count(id), 0u);
              continue;
            }
            ASSERT_EQ(driver.finished.count(id), 1u) << "request " << id;
            expect_same(driver.finished.at(id),
                        run_alone(id, request.prompt, request.max_new_tokens, request.end_ids));
          }
          const KvCacheStats stats = scheduler.kv_cache().stats();
          EXPECT_EQ(stats.used_blocks, 0);
          EXPECT_EQ(stats.free_blocks, stats.total_blocks);
          accepted_total += int64_t(accepted.size());
          cancelled_total += int64_t(cancelled.size());
          preemptions += scheduler.stats().preemptions;
          reused_tokens += stats.reused_tokens;
        }
        SCOPED_TRACE("policy " + std::to_string(int(policy)) + " chunked " +
                     std::to_string(chunked) + " reuse " + std::to_string(reuse));
        EXPECT_GT(accepted_total, 200);
        EXPECT_GT(refused, 0);
        EXPECT_GT(cancelled_total, 10);
        EXPECT_GT(most_running, 3);
        EXPECT_EQ(preemptions > 0, policy == SchedulerPolicy::kMaxUtilization);
        EXPECT_EQ(reused_tokens > 0, reuse);
        EXPECT_EQ(partial_chunks > 0, chunked);
      }
    }
  }
}

}  // namespace
}  // namespace kite
