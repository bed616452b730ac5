// The Executor (include/kite/executor.h) on a CPU engine of a random tiny Llama: many concurrent
// requests, streamed or not, give the greedy tokens of the same requests run one at a time;
// cancellation frees the blocks; refused requests get an error response; stop words, bad words,
// log-probs, seeds, beam search and statistics.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "engine_test_util.h"
#include "kite/executor.h"
#include "runtime/beam_search.h"
#include "runtime/engine.h"
#include "runtime/serve_benchmark.h"
#include "test_util.h"

namespace kite {
namespace {

using executor::Executor;
using executor::ExecutorConfig;
using executor::FinishReason;
using executor::Request;
using executor::RequestId;
using executor::Response;
using executor::Result;

class ExecutorTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // Small steps (12 tokens) so that prompts are prefilled in chunks beside running decodes.
    engine_ = new std::string(test::build_engine(test::make_tiny_checkpoint(),
                                                 "--max_batch_size 4 --max_input_len 24 "
                                                 "--max_seq_len 48 --tokens_per_block 4 "
                                                 "--max_num_tokens 12"));
  }
  static std::string* engine_;

  static std::unique_ptr<Executor> make(const ExecutorConfig& config = {}) {
    std::string error;
    auto made = Executor::create(*engine_, config, &error);
    EXPECT_TRUE(made) << error;
    return made;
  }

  // Random prompts of 1..24 tokens over the tiny vocabulary.
  static std::vector<std::vector<int32_t>> prompts(size_t count, uint32_t seed, int32_t vocab) {
    std::mt19937 generator(seed);
    std::vector<std::vector<int32_t>> result;
    for (size_t i = 0; i < count; ++i) {
      std::vector<int32_t> prompt(1 + generator() % 24);
      for (int32_t& id : prompt) id = int32_t(generator() % uint32_t(vocab));
      result.push_back(prompt);
    }
    return result;
  }

  // The greedy output of each prompt run alone through generate().
  static std::vector<std::vector<int32_t>> alone(const std::vector<std::vector<int32_t>>& inputs,
                                                 int64_t max_new_tokens) {
    auto engine = Engine::load(*engine_).value();
    std::vector<std::vector<int32_t>> outputs;
    for (const auto& prompt : inputs) {
      GenerationRequest request;
      request.prompts = {prompt};
      request.sampling.temperature = 0.0f;
      request.stop.max_output_len = max_new_tokens;
      request.stop.end_ids = engine->default_end_ids();
      outputs.push_back(generate(*engine, request).value().front().output_ids);
    }
    return outputs;
  }

  // A greedy request of `prompt` ending at `end_ids` (none: only at max_new_tokens).
  static Request greedy_request(const std::vector<int32_t>& prompt, int64_t max_new_tokens,
                                std::vector<int32_t> end_ids = {}) {
    Request request;
    request.input_ids = prompt;
    request.max_new_tokens = max_new_tokens;
    request.sampling.temperature = 0.0f;
    request.end_ids = std::move(end_ids);
    return request;
  }

  // Collects every request's responses until all are final: output ids concatenated, and the
  // prompt log-probs, which only a request's first response may carry.
  static std::map<RequestId, Response> collect(Executor& executor, size_t requests) {
    std::map<RequestId, Response> done;
    std::map<RequestId, std::vector<int32_t>> streamed;
    std::map<RequestId, Result> prompt_parts;
    std::set<RequestId> answered;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (done.size() < requests && std::chrono::steady_clock::now() < deadline) {
      for (Response& response : executor.await_responses(std::chrono::milliseconds(100))) {
        EXPECT_FALSE(done.contains(response.request_id)) << "a response after the final one";
        auto& tokens = streamed[response.request_id];
        tokens.insert(tokens.end(), response.result.output_ids.begin(),
                      response.result.output_ids.end());
        const bool first = answered.insert(response.request_id).second;
        if (!first) {
          EXPECT_TRUE(response.result.prompt_log_probs.empty() &&
                      response.result.prompt_ranks.empty() &&
                      response.result.prompt_top_log_probs.empty())
              << "prompt log-probs after the first response";
        } else {
          prompt_parts[response.request_id] = response.result;
        }
        if (response.result.is_final) {
          const Result& first_result = prompt_parts[response.request_id];
          response.result.output_ids = tokens;
          response.result.prompt_log_probs = first_result.prompt_log_probs;
          response.result.prompt_ranks = first_result.prompt_ranks;
          response.result.prompt_top_log_probs = first_result.prompt_top_log_probs;
          done[response.request_id] = std::move(response);
        }
      }
    }
    EXPECT_EQ(done.size(), requests) << "requests unfinished after 60 s";
    return done;
  }
};
std::string* ExecutorTest::engine_ = nullptr;

constexpr int32_t kVocab = 64;  // the tiny fixture's vocabulary is at least this large

TEST_F(ExecutorTest, ConcurrentRequestsGiveTheTokensOfRequestsRunAlone) {
  const auto inputs = prompts(14, 3, kVocab);
  const auto expected = alone(inputs, 20);
  for (const bool streaming : {false, true}) {
    auto executor = make();
    ASSERT_TRUE(executor);
    std::map<RequestId, size_t> index;
    for (size_t i = 0; i < inputs.size(); ++i) {
      Request request;
      request.input_ids = inputs[i];
      request.max_new_tokens = 20;
      request.sampling.temperature = 0.0f;
      request.streaming = streaming;
      index[executor->enqueue_request(request)] = i;
    }
    const auto done = collect(*executor, inputs.size());
    for (const auto& [id, response] : done) {
      ASSERT_FALSE(response.error) << *response.error;
      EXPECT_EQ(response.result.output_ids, expected[index.at(id)])
          << "prompt " << index.at(id) << (streaming ? " streamed" : "");
      EXPECT_NE(response.result.finish_reason, FinishReason::kNotFinished);
    }
    const executor::ExecutorStats stats = executor->stats();
    EXPECT_EQ(stats.completed_requests, int64_t(inputs.size()));
    EXPECT_EQ(stats.kv_cache.used_blocks, 0);
    EXPECT_EQ(stats.active_requests + stats.queued_requests + stats.paused_requests, 0);
    EXPECT_GT(stats.kv_cache.total_blocks, 0);
    EXPECT_FALSE(stats.recent_iterations.empty());
  }
}

TEST_F(ExecutorTest, CancellingFreesTheBlocksAndSaysCancelled) {
  auto executor = make();
  ASSERT_TRUE(executor);
  // Four long requests fill the batch; a fifth waits behind them. One of the four (running, or
  // about to) and the waiting one are cancelled at once.
  Request request;
  request.input_ids = {1, 2, 3, 4, 5};
  request.max_new_tokens = 40;
  request.end_ids = std::vector<int32_t>{};  // no early end
  request.streaming = true;
  std::vector<RequestId> ids;
  for (int i = 0; i < 5; ++i) ids.push_back(executor->enqueue_request(request));
  executor->cancel_request(ids[1]);
  executor->cancel_request(ids[4]);
  const auto done = collect(*executor, ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const Response& response = done.at(ids[i]);
    ASSERT_FALSE(response.error) << *response.error;
    const bool cancelled = i == 1 || i == 4;
    EXPECT_EQ(response.result.finish_reason,
              cancelled ? FinishReason::kCancelled : FinishReason::kLength)
        << "request " << i;
    if (cancelled) {
      EXPECT_LT(response.result.output_ids.size(), 40u) << "request " << i;
    } else {
      EXPECT_EQ(response.result.output_ids.size(), 40u) << "request " << i;
    }
  }
  EXPECT_TRUE(done.at(ids[4]).result.output_ids.empty());
  EXPECT_EQ(executor->stats().kv_cache.used_blocks, 0);
  executor->cancel_request(ids[0]);  // finished: ignored
  executor->cancel_request(424242);  // unknown: ignored
  EXPECT_TRUE(executor->await_responses(std::chrono::milliseconds(50)).empty());
}

TEST_F(ExecutorTest, RefusedRequestsGetOneErrorResponse) {
  auto executor = make();
  ASSERT_TRUE(executor);
  Request empty;
  EXPECT_TRUE(executor->check_request(empty));
  Request too_long;
  too_long.input_ids.assign(25, 1);
  Request too_many_tokens;
  too_many_tokens.input_ids = {1, 2};
  too_many_tokens.max_new_tokens = 47;
  Request bad_id;
  bad_id.input_ids = {1, -3};
  Request bad_sampling;
  bad_sampling.input_ids = {1};
  bad_sampling.sampling.top_p = 0.0f;
  for (const Request& request : {empty, too_long, too_many_tokens, bad_id, bad_sampling}) {
    const std::optional<std::string> problem = executor->check_request(request);
    ASSERT_TRUE(problem);
    const RequestId id = executor->enqueue_request(request);
    const std::vector<Response> responses = executor->await_responses(id, std::chrono::seconds(5));
    ASSERT_EQ(responses.size(), 1u);
    ASSERT_TRUE(responses.front().error);
    EXPECT_EQ(*responses.front().error, *problem);
    EXPECT_TRUE(responses.front().result.is_final);
  }
  std::string error;
  EXPECT_FALSE(Executor::create(test::temp_dir() + "/missing", {}, &error));
  EXPECT_FALSE(error.empty());
  ExecutorConfig too_big;
  too_big.max_batch_size = 5;
  EXPECT_FALSE(Executor::create(*engine_, too_big, &error));
  EXPECT_NE(error.find("max_batch_size"), std::string::npos) << error;
}

// Prompt log-probs: each prompt token's log-probability given the tokens before it, as one
// prefill of the prompt alone gives them (here in chunks of at most the engine's 4 logit rows,
// beside other requests), in the first response only, with the most likely tokens when asked;
// also for a prompt whose blocks the prefix cache holds. The outputs do not change.
TEST_F(ExecutorTest, PromptLogProbsAreThoseOfThePromptAlone) {
  std::vector<std::vector<int32_t>> inputs = prompts(8, 21, kVocab);
  inputs.push_back({5});  // one token: nothing to report
  const auto expected_outputs = alone(inputs, 6);
  auto engine = Engine::load(*engine_).value();
  const size_t vocab = size_t(engine->config().model.vocab_size);
  // log_softmax of each prompt position's logits, from one prefill alone.
  std::vector<std::vector<std::vector<double>>> expected(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    std::vector<int32_t> rows;
    for (size_t p = 0; p + 1 < inputs[i].size(); ++p) rows.push_back(int32_t(p));
    if (rows.empty()) continue;
    const std::vector<float> logits = test::forward_from_scratch(*engine, inputs[i], rows);
    for (size_t r = 0; r < rows.size(); ++r) {
      const float* row = logits.data() + r * vocab;
      const double maximum = *std::max_element(row, row + vocab);
      double total = 0;
      for (size_t v = 0; v < vocab; ++v) total += std::exp(double(row[v]) - maximum);
      std::vector<double> log_softmax(vocab);
      for (size_t v = 0; v < vocab; ++v)
        log_softmax[v] = double(row[v]) - maximum - std::log(total);
      expected[i].push_back(std::move(log_softmax));
    }
  }
  engine.reset();

  auto executor = make();
  ASSERT_TRUE(executor);
  for (int round = 0; round < 2; ++round) {  // the second round finds the prompts cached
    std::map<RequestId, size_t> index;
    for (size_t i = 0; i < inputs.size(); ++i) {
      Request request = greedy_request(inputs[i], 6);
      request.return_prompt_log_probs = true;
      request.top_prompt_log_probs = i % 2 ? 3 : 0;
      request.streaming = i % 3 == 0;
      index[executor->enqueue_request(request)] = i;
      executor->enqueue_request(greedy_request(inputs[(i + 1) % inputs.size()], 6));  // beside
    }
    const auto done = collect(*executor, 2 * inputs.size());
    for (const auto& [id, i] : index) {
      const Result& result = done.at(id).result;
      const std::string what = "prompt " + std::to_string(i) + " round " + std::to_string(round);
      ASSERT_FALSE(done.at(id).error) << *done.at(id).error;
      EXPECT_EQ(result.output_ids, expected_outputs[i]) << what;
      ASSERT_EQ(result.prompt_log_probs.size(), inputs[i].size() - 1) << what;
      ASSERT_EQ(result.prompt_ranks.size(), inputs[i].size() - 1) << what;
      ASSERT_EQ(result.prompt_top_log_probs.size(), i % 2 ? inputs[i].size() - 1 : 0) << what;
      for (size_t p = 0; p + 1 < inputs[i].size(); ++p) {
        const std::vector<double>& log_softmax = expected[i][p];
        const double chosen = log_softmax[size_t(inputs[i][p + 1])];
        EXPECT_NEAR(result.prompt_log_probs[p], chosen, 1e-4) << what << " position " << p;
        // 1 + the tokens more likely (within the rounding of the two computations).
        const auto above = [&](double margin) {
          return 1 +
                 std::ranges::count_if(log_softmax, [&](double v) { return v > chosen + margin; });
        };
        EXPECT_GE(result.prompt_ranks[p], above(1e-4)) << what << " position " << p;
        EXPECT_LE(result.prompt_ranks[p], above(-1e-4)) << what << " position " << p;
        if (i % 2 == 0) continue;
        const auto& top = result.prompt_top_log_probs[p];
        ASSERT_EQ(top.size(), 3u) << what;
        const double best = *std::max_element(log_softmax.begin(), log_softmax.end());
        EXPECT_NEAR(top[0].log_prob, best, 1e-4) << what;
        for (size_t k = 0; k < top.size(); ++k) {
          EXPECT_NEAR(top[k].log_prob, log_softmax[size_t(top[k].token)], 1e-4) << what;
          if (k > 0) {
            EXPECT_LE(top[k].log_prob, top[k - 1].log_prob) << what;
          }
        }
      }
    }
    for (const auto& [id, response] : done) {
      if (!index.contains(id)) {
        EXPECT_TRUE(response.result.prompt_log_probs.empty());
      }
    }
  }
}

// What prompt log-probs refuse: top_prompt_log_probs without them or over the limit, beam search,
// and, without chunked prefill, a prompt of more positions than a step has logit rows (4 here).
TEST_F(ExecutorTest, PromptLogProbRefusals) {
  auto executor = make();
  ASSERT_TRUE(executor);
  Request top_alone = greedy_request({1, 2, 3}, 2);
  top_alone.top_prompt_log_probs = 2;
  EXPECT_EQ(executor->check_request(top_alone),
            "top_prompt_log_probs needs return_prompt_log_probs");
  Request too_many = top_alone;
  too_many.return_prompt_log_probs = true;
  too_many.top_prompt_log_probs = 21;
  EXPECT_TRUE(executor->check_request(too_many));
  Request beams = greedy_request({1, 2, 3}, 2);
  beams.return_prompt_log_probs = true;
  beams.sampling.beam_width = 2;
  EXPECT_TRUE(executor->check_request(beams));

  ExecutorConfig whole;
  whole.enable_chunked_prefill = false;
  auto unchunked = make(whole);
  ASSERT_TRUE(unchunked);
  Request five = greedy_request({1, 2, 3, 4, 5}, 2);
  five.return_prompt_log_probs = true;
  const std::optional<std::string> problem = unchunked->check_request(five);
  ASSERT_TRUE(problem);
  EXPECT_NE(problem->find("enable chunked prefill"), std::string::npos) << *problem;
  Request four = five;
  four.input_ids.pop_back();
  EXPECT_FALSE(unchunked->check_request(four));
  const RequestId id = unchunked->enqueue_request(four);
  const auto done = collect(*unchunked, 1);
  ASSERT_FALSE(done.at(id).error) << *done.at(id).error;
  EXPECT_EQ(done.at(id).result.prompt_log_probs.size(), 3u);
}

// Beam searches through the executor (each step a request per beam, its prompt and output so far
// computed again where the prefix cache does not hold it) beside greedy requests, in steps of 12
// tokens: the beams of the engine's own beam_search (the beams sharing blocks, one sequence each).
TEST_F(ExecutorTest, BeamSearchGivesTheBeamsOfTheEngineBeamSearch) {
  auto executor = make();
  ASSERT_TRUE(executor);
  struct Case {
    std::vector<int32_t> prompt;
    int64_t width;
    float length_penalty;
    bool early_stopping;
    std::vector<std::vector<int32_t>> stop_words = {};
  };
  const std::vector<Case> cases = {{{5, 9, 2, 7, 11}, 3, 0.8f, false},
                                   {{3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9}, 4, 1.0f, false},
                                   {{8}, 2, 1.0f, true},
                                   {{2, 7, 1, 8, 2, 8}, 1, 1.0f, false},
                                   {{6, 6, 1}, 3, 1.0f, false, {{3}, {12, 5}, {9}}}};
  const std::vector<std::vector<int32_t>> greedy_prompts = prompts(3, 31, kVocab);
  std::vector<RequestId> beam_ids, greedy_ids;
  for (const Case& c : cases) {
    Request request;
    request.input_ids = c.prompt;
    request.max_new_tokens = 10;
    request.end_ids = std::vector<int32_t>{7};
    request.sampling.beam_width = c.width;
    request.sampling.length_penalty = c.length_penalty;
    request.sampling.early_stopping = c.early_stopping;
    request.sampling.temperature = 0.0f;
    request.stop_words = c.stop_words;
    beam_ids.push_back(executor->enqueue_request(request));
  }
  for (const auto& prompt : greedy_prompts) {
    Request request;
    request.input_ids = prompt;
    request.max_new_tokens = 8;
    request.sampling.temperature = 0.0f;
    greedy_ids.push_back(executor->enqueue_request(request));
  }
  const auto done = collect(*executor, beam_ids.size() + greedy_ids.size());

  auto engine = Engine::load(*engine_).value();
  for (size_t i = 0; i < cases.size(); ++i) {
    const Response& response = done.at(beam_ids[i]);
    ASSERT_FALSE(response.error) << *response.error;
    StopConditions stop;
    stop.max_output_len = 10;
    stop.end_ids = {7};
    stop.stop_sequences = cases[i].stop_words;
    const BeamSearchOptions options{cases[i].width, cases[i].length_penalty,
                                    cases[i].early_stopping};
    const std::vector<BeamHypothesis> expected =
        beam_search(*engine, cases[i].prompt, options, stop).value();
    if (cases[i].width == 1) {  // an ordinary request: one output, no beams
      EXPECT_TRUE(response.result.beams.empty());
      EXPECT_EQ(response.result.output_ids, expected.front().output_ids);
      continue;
    }
    ASSERT_EQ(response.result.beams.size(), expected.size()) << "case " << i;
    for (size_t b = 0; b < expected.size(); ++b) {
      const executor::Beam& beam = response.result.beams[b];
      EXPECT_EQ(beam.output_ids, expected[b].output_ids) << "case " << i << " beam " << b;
      EXPECT_NEAR(beam.score, expected[b].score, 1e-4) << "case " << i << " beam " << b;
      EXPECT_NEAR(beam.cum_log_prob, expected[b].cum_log_prob, 1e-4)
          << "case " << i << " beam " << b;
      EXPECT_EQ(executor::finish_reason_name(beam.finish_reason),
                kite::finish_reason_name(expected[b].finish_reason))
          << "case " << i << " beam " << b;
    }
    EXPECT_EQ(response.result.output_ids, response.result.beams.front().output_ids);
    EXPECT_EQ(response.result.finish_reason, response.result.beams.front().finish_reason);
  }
  const std::vector<std::vector<int32_t>> expected_greedy = alone(greedy_prompts, 8);
  for (size_t i = 0; i < greedy_ids.size(); ++i) {
    EXPECT_EQ(done.at(greedy_ids[i]).result.output_ids, expected_greedy[i]) << "request " << i;
  }
  const executor::ExecutorStats stats = executor->stats();
  EXPECT_EQ(stats.kv_cache.used_blocks, 0);
  EXPECT_EQ(stats.completed_requests, int64_t(cases.size() + greedy_ids.size()));
  EXPECT_EQ(stats.active_requests, 0);
}

TEST_F(ExecutorTest, BeamSearchRefusalsAndCancellation) {
  auto executor = make();
  ASSERT_TRUE(executor);
  Request beams;
  beams.input_ids = {1, 2, 3};
  beams.max_new_tokens = 40;
  beams.end_ids = std::vector<int32_t>{};
  beams.sampling.beam_width = 3;
  for (auto [change, fragment] : std::vector<std::pair<std::function<void(Request&)>, std::string>>{
           {[](Request& r) { r.streaming = true; }, "streaming"},
           {[](Request& r) { r.return_log_probs = true; }, "log-probs"},
           {[](Request& r) { r.sampling.beam_width = 5; }, "max_batch_size"},
           {[](Request& r) { r.sampling.beam_width = 0; }, "beam_width"},
           {[](Request& r) { r.sampling.length_penalty = NAN; }, "length_penalty"}}) {
    Request refused = beams;
    change(refused);
    const std::optional<std::string> problem = executor->check_request(refused);
    ASSERT_TRUE(problem) << fragment;
    EXPECT_NE(problem->find(fragment), std::string::npos) << *problem;
  }
  // Without chunked prefill a beam's last step holds its prompt and output: at most 12 tokens.
  ExecutorConfig unchunked;
  unchunked.enable_chunked_prefill = false;
  auto whole_steps = make(unchunked);
  ASSERT_TRUE(whole_steps);
  Request long_beams = beams;
  long_beams.max_new_tokens = 11;  // 3 + 11 - 1 = 13 tokens
  const std::optional<std::string> too_long = whole_steps->check_request(long_beams);
  ASSERT_TRUE(too_long);
  EXPECT_NE(too_long->find("max_num_tokens 12"), std::string::npos) << *too_long;
  long_beams.max_new_tokens = 10;  // 12 tokens
  EXPECT_FALSE(whole_steps->check_request(long_beams));

  // A long search, cancelled while it runs: a final cancelled response, and no block held. The
  // search is 40 steps of a tiny model, milliseconds: on a loaded machine the test's thread may
  // sleep through all of them and cancel a finished request; then again with a fresh executor, up
  // to five times.
  for (int attempt = 0;; ++attempt) {
    auto running = make();
    ASSERT_TRUE(running);
    const RequestId id = running->enqueue_request(beams);
    for (int i = 0; i < 5000 && running->stats().recent_iterations.size() < 3; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    running->cancel_request(id);
    const std::vector<executor::IterationStats> iterations = running->stats().recent_iterations;
    const auto done = collect(*running, 1);
    const Response& response = done.at(id);
    ASSERT_FALSE(response.error) << *response.error;
    if (response.result.finish_reason != FinishReason::kCancelled && attempt < 4) continue;
    // Its first step is the prompt alone, once; then a request per beam.
    ASSERT_GE(iterations.size(), 2u);
    EXPECT_EQ(iterations[0].scheduled_requests, 1);
    EXPECT_EQ(iterations[0].context_tokens, 3);
    EXPECT_EQ(iterations[1].scheduled_requests, 3);
    EXPECT_EQ(response.result.finish_reason, FinishReason::kCancelled);
    EXPECT_TRUE(response.result.beams.empty());
    for (int i = 0; i < 100 && running->stats().kv_cache.used_blocks != 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_EQ(running->stats().kv_cache.used_blocks, 0);
    EXPECT_EQ(running->stats().active_requests, 0);
    break;
  }
}

TEST_F(ExecutorTest, StopWordsLogProbsAndSeeds) {
  const std::vector<int32_t> prompt = {7, 8, 9, 10};
  const std::vector<int32_t> greedy = alone({prompt}, 12).front();
  ASSERT_GE(greedy.size(), 6u);
  auto executor = make();
  ASSERT_TRUE(executor);

  // The output stops after the first occurrence of the stop word (tokens 3 and 4 of the greedy
  // output), stop word included.
  Request stopped = greedy_request(prompt, 12);
  stopped.stop_words = {{greedy[3], greedy[4]}};
  size_t stop_at = 5;
  for (size_t i = 1; i < greedy.size(); ++i) {
    if (greedy[i - 1] == greedy[3] && greedy[i] == greedy[4]) {
      stop_at = i + 1;
      break;
    }
  }
  // Log-probabilities: one per token, each <= 0; the 5 most likely tokens of each step, the first
  // being the greedy choice.
  Request with_log_probs = stopped;
  with_log_probs.stop_words.clear();
  with_log_probs.return_log_probs = true;
  with_log_probs.top_log_probs = 5;
  // Seeds: the same seed gives the same tokens, beside other requests.
  Request seeded;
  seeded.input_ids = prompt;
  seeded.max_new_tokens = 12;
  seeded.sampling.temperature = 1.5f;
  seeded.sampling.seed = 11;
  const RequestId stop_id = executor->enqueue_request(stopped);
  const RequestId log_id = executor->enqueue_request(with_log_probs);
  const RequestId seed_a = executor->enqueue_request(seeded);
  const RequestId seed_b = executor->enqueue_request(seeded);
  const auto done = collect(*executor, 4);
  const Response& stop_response = done.at(stop_id);
  EXPECT_EQ(stop_response.result.finish_reason, FinishReason::kStopWords);
  EXPECT_EQ(stop_response.result.output_ids,
            std::vector<int32_t>(greedy.begin(), greedy.begin() + ptrdiff_t(stop_at)));
  const Response& log_response = done.at(log_id);
  ASSERT_EQ(log_response.result.log_probs.size(), log_response.result.output_ids.size());
  for (float log_probability : log_response.result.log_probs) EXPECT_LE(log_probability, 0.0f);
  EXPECT_EQ(log_response.result.output_ids, std::vector<int32_t>(greedy.begin(), greedy.end()));
  ASSERT_EQ(log_response.result.top_log_probs.size(), log_response.result.output_ids.size());
  for (size_t i = 0; i < log_response.result.top_log_probs.size(); ++i) {
    const std::vector<kite::executor::TopLogProb>& top = log_response.result.top_log_probs[i];
    ASSERT_EQ(top.size(), 5u);
    EXPECT_EQ(top[0].token, log_response.result.output_ids[i]);
    EXPECT_EQ(top[0].log_prob, log_response.result.log_probs[i]);
    double probability = 0;
    for (size_t k = 0; k < top.size(); ++k) {
      if (k > 0) {
        EXPECT_LE(top[k].log_prob, top[k - 1].log_prob);
      }
      probability += std::exp(double(top[k].log_prob));
    }
    EXPECT_LE(probability, 1.0 + 1e-6);
  }
  EXPECT_TRUE(done.at(stop_id).result.top_log_probs.empty());
  EXPECT_EQ(done.at(seed_a).result.output_ids, done.at(seed_b).result.output_ids);
}

// min_new_tokens: with the greedy output's first tokens as end ids, a request ends at once; with
// min_new_tokens N it runs at least N tokens, none of the first N - 1 an end id (the N-th may be
// one, and ends it), and a stop word before the N-th token does not end it. Beam searches keep
// the minimum too; more than max_new_tokens is refused.
TEST_F(ExecutorTest, MinNewTokensHoldsOffEndIdsAndStopWords) {
  const std::vector<int32_t> prompt = {3, 1, 4, 1, 5};
  const std::vector<int32_t> greedy = alone({prompt}, 8).front();
  ASSERT_GE(greedy.size(), 2u);
  auto executor = make();
  ASSERT_TRUE(executor);
  const Request plain = greedy_request(prompt, 16, {greedy[0], greedy[1]});
  Request held = plain;
  held.min_new_tokens = 6;
  Request stop_word = plain;
  stop_word.end_ids = std::vector<int32_t>{};
  stop_word.stop_words = {{greedy[0]}};
  stop_word.min_new_tokens = 4;
  Request beams = plain;
  beams.sampling.beam_width = 2;
  beams.min_new_tokens = 5;
  Request sampled = plain;
  sampled.sampling.temperature = 1.0f;
  sampled.sampling.seed = 3;
  sampled.min_new_tokens = 7;
  const RequestId plain_id = executor->enqueue_request(plain);
  const RequestId held_id = executor->enqueue_request(held);
  const RequestId stop_id = executor->enqueue_request(stop_word);
  const RequestId beams_id = executor->enqueue_request(beams);
  const RequestId sampled_id = executor->enqueue_request(sampled);
  const auto done = collect(*executor, 5);

  EXPECT_EQ(done.at(plain_id).result.output_ids, std::vector<int32_t>{greedy[0]});
  EXPECT_EQ(done.at(plain_id).result.finish_reason, FinishReason::kEndId);
  for (const RequestId id : {held_id, sampled_id}) {
    const Request& request = id == held_id ? held : sampled;
    const std::vector<int32_t>& output = done.at(id).result.output_ids;
    ASSERT_GE(int64_t(output.size()), request.min_new_tokens) << "request " << id;
    for (int64_t i = 0; i + 1 < request.min_new_tokens; ++i) {
      EXPECT_NE(output[size_t(i)], greedy[0]) << "request " << id << ", token " << i;
      EXPECT_NE(output[size_t(i)], greedy[1]) << "request " << id << ", token " << i;
    }
  }
  const std::vector<int32_t>& stopped = done.at(stop_id).result.output_ids;
  ASSERT_GE(stopped.size(), 4u);
  if (done.at(stop_id).result.finish_reason == FinishReason::kStopWords) {
    EXPECT_EQ(stopped.back(), greedy[0]);
  }
  EXPECT_EQ(stopped.front(), greedy[0]) << "the stop word is the first token, and did not end it";
  const Response& beam_response = done.at(beams_id);
  ASSERT_FALSE(beam_response.error) << *beam_response.error;
  ASSERT_FALSE(beam_response.result.beams.empty());
  for (const executor::Beam& beam : beam_response.result.beams) {
    EXPECT_GE(beam.output_ids.size(), 5u);
    for (size_t i = 0; i + 1 < 5 && i < beam.output_ids.size(); ++i) {
      EXPECT_NE(beam.output_ids[i], greedy[0]);
      EXPECT_NE(beam.output_ids[i], greedy[1]);
    }
  }

  Request too_many = plain;
  too_many.min_new_tokens = 17;
  ASSERT_TRUE(executor->check_request(too_many));
  EXPECT_NE(executor->check_request(too_many)->find("min_new_tokens"), std::string::npos);
}

TEST_F(ExecutorTest, BadWordsAreNeverProducedAndChangeTheOutputWhereTheyWouldBe) {
  const std::vector<int32_t> prompt = {7, 8, 9, 10};
  const int64_t length = 12;
  auto executor = make();
  ASSERT_TRUE(executor);
  auto request_with = [&](std::vector<std::vector<int32_t>> bad_words) {
    Request request;
    request.input_ids = prompt;
    request.max_new_tokens = length;
    request.sampling.temperature = 0.0f;
    request.end_ids = std::vector<int32_t>{};  // every output runs to its length
    request.bad_words = std::move(bad_words);
    return request;
  };
  const RequestId plain_id = executor->enqueue_request(request_with({}));
  const std::vector<int32_t> greedy = collect(*executor, 1).at(plain_id).result.output_ids;
  ASSERT_EQ(greedy.size(), size_t(length));

  // The first output index at which `word` would complete in the greedy sequence.
  std::vector<int32_t> sequence = prompt;
  sequence.insert(sequence.end(), greedy.begin(), greedy.end());
  auto first_completion = [&](const std::vector<int32_t>& word) {
    for (size_t i = 0; i < greedy.size(); ++i) {
      const size_t end = prompt.size() + i + 1;
      if (end >= word.size() &&
          std::equal(word.begin(), word.end(), sequence.begin() + ptrdiff_t(end - word.size()))) {
        return i;
      }
    }
    return greedy.size();
  };
  const std::vector<std::vector<int32_t>> words = {
      {greedy[2]},                // one token: never produced
      {greedy[1], greedy[2]},     // two tokens: the second never right after the first
      {prompt.back(), greedy[0]}  // a word that starts in the prompt
  };
  std::vector<RequestId> ids;
  for (const std::vector<int32_t>& word : words) {
    ids.push_back(executor->enqueue_request(request_with({word})));
  }
  // Beside them, a request without bad words still gives the greedy tokens (rows of one step
  // with and without bans).
  ids.push_back(executor->enqueue_request(request_with({})));
  auto done = collect(*executor, ids.size());
  for (size_t w = 0; w < words.size(); ++w) {
    const Response& response = done.at(ids[w]);
    ASSERT_FALSE(response.error) << *response.error;
    const std::vector<int32_t>& output = response.result.output_ids;
    ASSERT_EQ(output.size(), size_t(length)) << "word " << w;
    // Up to where the word would complete, the greedy tokens; there, another token.
    const size_t at = first_completion(words[w]);
    ASSERT_LT(at, greedy.size()) << "word " << w;
    EXPECT_TRUE(std::equal(greedy.begin(), greedy.begin() + ptrdiff_t(at), output.begin()))
        << "word " << w;
    EXPECT_NE(output[at], greedy[at]) << "word " << w;
    // Nowhere in the output does the word complete.
    std::vector<int32_t> produced = prompt;
    produced.insert(produced.end(), output.begin(), output.end());
    const std::vector<int32_t>& word = words[w];
    for (size_t end = prompt.size() + 1; end <= produced.size(); ++end) {
      EXPECT_FALSE(
          end >= word.size() &&
          std::equal(word.begin(), word.end(), produced.begin() + ptrdiff_t(end - word.size())))
          << "word " << w << " completes at output token " << end - prompt.size() - 1;
    }
  }
  EXPECT_EQ(done.at(ids.back()).result.output_ids, greedy);

  // Sampling (at a low temperature, so that the greedy token would nearly always come) never
  // draws a banned token either.
  Request sampled = request_with({{greedy[0]}});
  sampled.sampling.temperature = 0.01f;
  sampled.sampling.seed = 5;
  const RequestId sampled_id = executor->enqueue_request(sampled);
  const std::vector<int32_t> sampled_output =
      collect(*executor, 1).at(sampled_id).result.output_ids;
  ASSERT_EQ(sampled_output.size(), size_t(length));
  EXPECT_EQ(std::ranges::count(sampled_output, greedy[0]), 0);

  // Every token banned: nothing crashes; the row picks token 0, greedy or sampled.
  const int64_t vocab = Engine::load(*engine_).value()->config().model.vocab_size;
  std::vector<std::vector<int32_t>> everything;
  for (int32_t id = 0; id < vocab; ++id) everything.push_back({id});
  Request all_banned = request_with(everything);
  Request all_banned_sampled = all_banned;
  all_banned_sampled.sampling.temperature = 1.0f;
  all_banned_sampled.return_log_probs = true;
  const RequestId all_id = executor->enqueue_request(all_banned);
  const RequestId all_sampled_id = executor->enqueue_request(all_banned_sampled);
  done = collect(*executor, 2);
  for (const RequestId id : {all_id, all_sampled_id}) {
    ASSERT_FALSE(done.at(id).error) << *done.at(id).error;
    EXPECT_EQ(done.at(id).result.output_ids, std::vector<int32_t>(size_t(length), 0));
  }
  for (float log_probability : done.at(all_sampled_id).result.log_probs) {
    EXPECT_TRUE(std::isinf(log_probability) && log_probability < 0) << log_probability;
  }
  EXPECT_EQ(done.at(all_sampled_id).result.log_probs.size(), size_t(length));

  // Refused: an empty word, an id outside the vocabulary.
  std::optional<std::string> problem = executor->check_request(request_with({{1}, {}}));
  ASSERT_TRUE(problem);
  EXPECT_EQ(*problem, "a bad word is empty");
  problem = executor->check_request(request_with({{1, int32_t(vocab)}}));
  ASSERT_TRUE(problem);
  EXPECT_EQ(*problem, "bad word token id " + std::to_string(vocab) +
                          " is outside the vocabulary of " + std::to_string(vocab));
}

// A logit bias moves greedy decoding: +100 on one token makes it every output token (its
// log-probability under the biased logits near 0), -100 on the greedy first token makes the first
// token another; a request without a bias in the same steps keeps the greedy tokens. Ids outside the
// vocabulary and biases that are not finite are refused.
TEST_F(ExecutorTest, LogitBiasForcesAndAvoidsTokens) {
  auto executor = make();
  ASSERT_TRUE(executor);
  const int64_t length = 8;
  Request plain;
  plain.input_ids = {3, 1, 4, 1, 5};
  plain.max_new_tokens = length;
  plain.end_ids = std::vector<int32_t>{};
  plain.sampling.temperature = 0.0f;
  plain.return_log_probs = true;
  const RequestId plain_id = executor->enqueue_request(plain);
  const auto greedy = collect(*executor, 1).at(plain_id).result;
  ASSERT_EQ(greedy.output_ids.size(), size_t(length));

  Request forced = plain;
  const int32_t favourite = greedy.output_ids[0] == 9 ? 10 : 9;
  forced.logit_bias = {{favourite, 100.0f}};
  Request avoided = plain;
  avoided.logit_bias = {{greedy.output_ids[0], -100.0f}, {kVocab - 1, 0.5f}};
  Request sampled = forced;  // at temperature 1 the +100 token still always comes
  sampled.sampling.temperature = 1.0f;
  sampled.sampling.seed = 3;
  const RequestId forced_id = executor->enqueue_request(forced);
  const RequestId avoided_id = executor->enqueue_request(avoided);
  const RequestId sampled_id = executor->enqueue_request(sampled);
  const RequestId again_id = executor->enqueue_request(plain);
  auto done = collect(*executor, 4);
  for (const RequestId id : {forced_id, avoided_id, sampled_id, again_id}) {
    ASSERT_FALSE(done.at(id).error) << *done.at(id).error;
  }
  EXPECT_EQ(done.at(forced_id).result.output_ids, std::vector<int32_t>(size_t(length), favourite));
  EXPECT_EQ(done.at(sampled_id).result.output_ids,
            std::vector<int32_t>(size_t(length), favourite));
  for (const float log_probability : done.at(forced_id).result.log_probs) {
    EXPECT_GT(log_probability, -1e-3f);  // all but certain under the biased logits
  }
  const auto& other = done.at(avoided_id).result;
  EXPECT_NE(other.output_ids[0], greedy.output_ids[0]);
  EXPECT_EQ(done.at(again_id).result.output_ids, greedy.output_ids);

  Request refused = plain;
  refused.logit_bias = {{kVocab + 1000, 1.0f}};
  std::optional<std::string> problem = executor->check_request(refused);
  ASSERT_TRUE(problem);
  EXPECT_NE(problem->find("logit bias token id"), std::string::npos) << *problem;
  for (const float bias : {std::numeric_limits<float>::infinity(), 2e6f, -1.5e6f,
                           std::numeric_limits<float>::quiet_NaN()}) {
    refused.logit_bias = {{1, bias}};
    problem = executor->check_request(refused);
    ASSERT_TRUE(problem) << bias;
    EXPECT_EQ(*problem, "the logit bias of token 1 must be a number between -1e6 and 1e6");
  }
  refused.logit_bias.clear();
  for (int32_t id = 0; id <= int32_t(executor::kMaxLogitBiasTokens); ++id) refused.logit_bias[id % 64] = 1;
  EXPECT_FALSE(executor->check_request(refused));  // ids repeat: 64 entries
  for (int32_t id = 0; id <= int32_t(executor::kMaxLogitBiasTokens); ++id) refused.logit_bias[id] = 1;
  problem = executor->check_request(refused);
  ASSERT_TRUE(problem);
  EXPECT_EQ(*problem, "a logit bias of 1025 tokens; at most 1024 are allowed");
}

// Large presence and frequency penalties make greedy decoding avoid every token it has produced
// (the prompt's tokens stay free), in flight beside a request without them.
TEST_F(ExecutorTest, FrequencyPenaltyKeepsGreedyOutputsFromRepeating) {
  auto executor = make();
  const std::vector<int32_t> prompt = {5, 6, 7, 5, 6, 7};
  Request plain;
  plain.input_ids = prompt;
  plain.max_new_tokens = 40;
  plain.end_ids = std::vector<int32_t>{};
  plain.sampling.temperature = 0.0f;
  Request penalized = plain;
  penalized.sampling.frequency_penalty = 2.0f;
  penalized.sampling.presence_penalty = 100.0f;
  const RequestId plain_id = executor->enqueue_request(plain);
  const RequestId penalized_id = executor->enqueue_request(penalized);
  const RequestId again_id = executor->enqueue_request(penalized);
  auto done = collect(*executor, 3);
  const std::vector<int32_t>& output = done[penalized_id].result.output_ids;
  ASSERT_EQ(output.size(), 40u);
  EXPECT_EQ(std::set<int32_t>(output.begin(), output.end()).size(), 40u)
      << "a token repeated despite the penalty";
  EXPECT_EQ(done[again_id].result.output_ids, output);
  const std::vector<int32_t>& unpenalized = done[plain_id].result.output_ids;
  EXPECT_NE(unpenalized, output) << "the penalties changed nothing";
}

TEST_F(ExecutorTest, ManyThreadsEnqueueAndAwaitTheirOwnRequests) {
  auto executor = make();
  ASSERT_TRUE(executor);
  const auto inputs = prompts(8, 5, kVocab);
  const auto expected = alone(inputs, 8);
  std::vector<std::thread> clients;
  std::vector<std::vector<int32_t>> outputs(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    clients.emplace_back([&, i] {
      Request request;
      request.input_ids = inputs[i];
      request.max_new_tokens = 8;
      request.sampling.temperature = 0.0f;
      request.streaming = i % 2 == 0;
      const RequestId id = executor->enqueue_request(request);
      for (bool final = false; !final;) {
        for (const Response& response : executor->await_responses(id, std::chrono::seconds(1))) {
          outputs[i].insert(outputs[i].end(), response.result.output_ids.begin(),
                            response.result.output_ids.end());
          final = response.result.is_final;
        }
      }
    });
  }
  for (std::thread& client : clients) client.join();
  for (size_t i = 0; i < inputs.size(); ++i) EXPECT_EQ(outputs[i], expected[i]) << "prompt " << i;
}

TEST(ServeBenchmark, NearestRankPercentiles) {
  std::vector<double> values;
  for (int i = 100; i >= 1; --i) values.push_back(i);
  const LatencyPercentiles percentiles = latency_percentiles(values);
  EXPECT_DOUBLE_EQ(percentiles.p50, 50);
  EXPECT_DOUBLE_EQ(percentiles.p90, 90);
  EXPECT_DOUBLE_EQ(percentiles.p99, 99);
  EXPECT_DOUBLE_EQ(percentiles.mean, 50.5);
  EXPECT_DOUBLE_EQ(latency_percentiles({7}).p99, 7);
  EXPECT_DOUBLE_EQ(latency_percentiles({}).p50, 0);
}

TEST_F(ExecutorTest, ServeBenchmarkRunsEveryRequestToItsLength) {
  auto executor = make();
  ASSERT_TRUE(executor);
  const auto inputs = prompts(5, 9, kVocab);
  for (const auto& [rate, concurrency] :
       {std::pair{0.0, int64_t(0)}, {0.0, int64_t(2)}, {500.0, int64_t(0)}}) {
    ServeBenchmarkOptions options{.num_requests = 12,
                                  .input_length = 8,
                                  .output_length = 6,
                                  .request_rate = rate,
                                  .concurrency = concurrency};
    int64_t last_done = 0;
    const auto result =
        run_serve_benchmark(*executor, inputs, options, [&](int64_t done) { last_done = done; });
    ASSERT_TRUE(result.is_ok()) << result.status().message();
    EXPECT_EQ(result->errors, 0);
    EXPECT_EQ(result->completed, 12);
    EXPECT_EQ(result->output_tokens, 12 * 6);
    EXPECT_EQ(last_done, 12);
    EXPECT_GT(result->output_tokens_per_second, 0);
    EXPECT_LE(result->time_to_first_token.p50, result->request_latency.p50);
    EXPECT_NE(serve_benchmark_line(*result).find("[BENCHMARK] mode serve requests 12"),
              std::string::npos);
  }
  ServeBenchmarkOptions too_long{.num_requests = 1, .input_length = 8, .output_length = 100};
  EXPECT_FALSE(run_serve_benchmark(*executor, inputs, too_long).is_ok());
}

}  // namespace
}  // namespace kite
