// Beam search: the selection on hand-made log-probabilities (worked through by hand, in the
// order transformers' _beam_search takes its steps), and the search on a tiny engine against the
// same selection over logits recomputed from scratch for every beam at every step (no shared KV
// blocks), which checks the sharing and copying of blocks; `kite run --num_beams`.
#include "runtime/beam_search.h"

#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "core/file.h"
#include "engine_test_util.h"
#include "kite/executor.h"
#include "runtime/engine.h"
#include "test_util.h"

namespace kite {
namespace {

constexpr float kNone = -1.0e9f;  // a log-probability no beam should take

// Stops at token `end`.
BeamStopCheck end_at(int32_t end) {
  return [end](int64_t /*parent*/, std::span<const int32_t> output) {
    StopCheck check;
    if (!output.empty() && output.back() == end) check.reason = FinishReason::kEndId;
    return check;
  };
}

// The same row for every beam (before the first step every beam is the prompt).
std::vector<float> repeated(const std::vector<float>& row, int64_t beams) {
  std::vector<float> rows;
  for (int64_t b = 0; b < beams; ++b) rows.insert(rows.end(), row.begin(), row.end());
  return rows;
}

TEST(BeamSearchSelection, KeepsTheBestBeamsAndFinishesAtTheEndIdAndTheLength) {
  // 2 beams over tokens {0, 1, 2, 3}, end id 3, 3 new tokens at most: 4 candidates per step.
  BeamSearch search({.beam_width = 2}, 3, 1);
  const std::vector<float> first = {std::log(0.5f), std::log(0.3f), std::log(0.1f), std::log(0.1f)};
  // Step 1: the best candidates all extend beam 0 (beam 1 scores -1e9): 0 and 1 run on; the end
  // id ranks 4th, below the 2 places that may finish.
  EXPECT_EQ(search.step(repeated(first, 2), 4, end_at(3)), (std::vector<int64_t>{0, 0}));
  EXPECT_EQ(search.running(), (std::vector<std::vector<int32_t>>{{0}, {1}}));
  EXPECT_FALSE(search.done());
  // Step 2: beam 0 ends (3 at 0.7), best of all: finished with score (ln .5 + ln .7) / 2; both
  // running beams now extend beam 1.
  const std::vector<float> second = {std::log(0.1f), std::log(0.1f), std::log(0.1f),
                                     std::log(0.7f), std::log(0.6f), std::log(0.2f),
                                     std::log(0.1f), std::log(0.1f)};
  EXPECT_EQ(search.step(second, 4, end_at(3)), (std::vector<int64_t>{1, 1}));
  EXPECT_EQ(search.running(), (std::vector<std::vector<int32_t>>{{1, 0}, {1, 1}}));
  EXPECT_FALSE(search.done());
  // Step 3 reaches the length: beam 0's four continuations tie at ln .3 + ln .6 + ln .25, and the
  // two best (lower token first) finish; the first finished beam stays the best.
  std::vector<float> third = repeated({std::log(0.25f)}, 4);
  for (float p : {0.4f, 0.3f, 0.2f, 0.1f}) third.push_back(std::log(p));
  search.step(third, 4, end_at(3));
  EXPECT_TRUE(search.done());
  const std::vector<BeamHypothesis> results = search.results();
  ASSERT_EQ(results.size(), 2u);
  EXPECT_EQ(results[0].output_ids, (std::vector<int32_t>{0, 3}));
  EXPECT_EQ(results[0].finish_reason, FinishReason::kEndId);
  EXPECT_NEAR(results[0].cum_log_prob, std::log(0.5) + std::log(0.7), 1e-5);
  EXPECT_NEAR(results[0].score, (std::log(0.5) + std::log(0.7)) / 2, 1e-5);
  EXPECT_EQ(results[1].output_ids, (std::vector<int32_t>{1, 0, 0}));
  EXPECT_EQ(results[1].finish_reason, FinishReason::kLength);
  EXPECT_NEAR(results[1].score, (std::log(0.3) + std::log(0.6) + std::log(0.25)) / 3, 1e-5);
}

// Tokens {0, 1, 2}, end id 2, 2 beams: after step 2 both places hold finished beams, yet the best
// running beam (-1.6 over 2 tokens) could still beat the worse of them (-1.0 over 1 token).
void run_until_both_places_finish(BeamSearch& search) {
  EXPECT_EQ(search.step(repeated({-1.1f, -1.3f, -1.0f}, 2), 3, end_at(2)),
            (std::vector<int64_t>{0, 0}));
  EXPECT_EQ(search.step(std::vector<float>{-0.5f, -3.0f, -0.1f, -3.0f, -3.0f, -3.0f}, 3, end_at(2)),
            (std::vector<int64_t>{0, 0}));
  EXPECT_EQ(search.running(), (std::vector<std::vector<int32_t>>{{0, 0}, {0, 1}}));
}

TEST(BeamSearchSelection, EarlyStoppingEndsOnceEveryPlaceHasFinished) {
  BeamSearch search({.beam_width = 2, .early_stopping = true}, 5, 1);
  run_until_both_places_finish(search);
  EXPECT_TRUE(search.done());
  const std::vector<BeamHypothesis> results = search.results();
  ASSERT_EQ(results.size(), 2u);
  EXPECT_EQ(results[0].output_ids, (std::vector<int32_t>{0, 2}));
  EXPECT_NEAR(results[0].score, -0.6f, 1e-6);
  EXPECT_EQ(results[1].output_ids, (std::vector<int32_t>{2}));
  EXPECT_NEAR(results[1].score, -1.0f, 1e-6);
}

TEST(BeamSearchSelection, WithoutEarlyStoppingABetterLaterBeamTakesAPlace) {
  BeamSearch search({.beam_width = 2}, 5, 1);
  run_until_both_places_finish(search);
  EXPECT_FALSE(search.done());
  // Step 3: [0, 0, 2] finishes at -1.7 / 3, better than both; the running beams (-3.6 / 3 at
  // best) can no longer beat the worse kept one (-0.6), so the search ends.
  search.step(std::vector<float>{-2.0f, -2.0f, -0.1f, -1.0f, -1.0f, -1.0f}, 3, end_at(2));
  EXPECT_TRUE(search.done());
  const std::vector<BeamHypothesis> results = search.results();
  ASSERT_EQ(results.size(), 2u);
  EXPECT_EQ(results[0].output_ids, (std::vector<int32_t>{0, 0, 2}));
  EXPECT_NEAR(results[0].score, -1.7f / 3, 1e-6);
  EXPECT_EQ(results[1].output_ids, (std::vector<int32_t>{0, 2}));
}

TEST(BeamSearchSelection, LengthPenaltyDividesByThePowerOfTheLength) {
  // One beam, no end id: it runs to the length; score = sum / 3^2.
  BeamSearch search({.beam_width = 1, .length_penalty = 2.0f}, 3, 0);
  for (int step = 0; step < 3; ++step)
    search.step(std::vector<float>{-1.0f, -0.5f, kNone}, 3, end_at(-1));
  ASSERT_TRUE(search.done());
  const std::vector<BeamHypothesis> results = search.results();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].output_ids, (std::vector<int32_t>{1, 1, 1}));
  EXPECT_NEAR(results[0].cum_log_prob, -1.5f, 1e-6);
  EXPECT_NEAR(results[0].score, -1.5f / 9, 1e-6);
}

TEST(BeamSearchSelection, ValidatesItsOptions) {
  EXPECT_FALSE(validate_beam_search_options({.beam_width = 0}).is_ok());
  EXPECT_FALSE(validate_beam_search_options({.beam_width = 2, .length_penalty = NAN}).is_ok());
  EXPECT_TRUE(validate_beam_search_options({.beam_width = 4, .length_penalty = -0.5f}).is_ok());
}

// ---- on a tiny engine ----

class BeamSearchEngine : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string checkpoint = test::make_tiny_checkpoint();
    // 4-token blocks: beams share and copy blocks often.
    engine_dir_ = new std::string(test::build_engine(
        checkpoint, "--max_batch_size 4 --max_input_len 16 --max_seq_len 40 --tokens_per_block 4"));
  }
  static std::string* engine_dir_;
};
std::string* BeamSearchEngine::engine_dir_ = nullptr;

// log softmax of the last position's logits for `tokens` computed alone in fresh blocks.
std::vector<float> log_probs_from_scratch(Engine& engine, const std::vector<int32_t>& tokens) {
  std::vector<float> logits =
      test::forward_from_scratch(engine, tokens, {int32_t(tokens.size()) - 1});
  log_softmax(logits);
  return logits;
}

// The beams of the selection alone, every beam's row recomputed from scratch at every step.
std::vector<BeamHypothesis> beams_from_scratch(Engine& engine, const std::vector<int32_t>& prompt,
                                               const BeamSearchOptions& options,
                                               const StopConditions& stop,
                                               const BeamStopCheck& stops) {
  BeamSearch search(options, stop.max_output_len, int64_t(stop.end_ids.size()));
  const int64_t vocab = engine.config().model.vocab_size;
  std::vector<float> rows = repeated(log_probs_from_scratch(engine, prompt), options.beam_width);
  while (true) {
    search.step(rows, vocab, stops);
    if (search.done()) return search.results();
    rows.clear();
    for (const std::vector<int32_t>& output : search.running()) {
      std::vector<int32_t> tokens = prompt;
      tokens.insert(tokens.end(), output.begin(), output.end());
      const std::vector<float> row = log_probs_from_scratch(engine, tokens);
      rows.insert(rows.end(), row.begin(), row.end());
    }
  }
}

TEST_F(BeamSearchEngine, SharedBlocksGiveTheBeamsOfRecomputingEveryBeam) {
  std::unique_ptr<Engine> engine = Engine::load(*engine_dir_).value();
  const int64_t free_before = engine->kv_cache().free_blocks();
  for (const auto& [prompt, width] : std::vector<std::pair<std::vector<int32_t>, int64_t>>{
           {{5, 9, 2, 7, 11}, 3}, {{3, 1, 4, 1}, 4}, {{8}, 2}}) {
    StopConditions stop;
    stop.max_output_len = 12;
    stop.end_ids = {7};
    const BeamSearchOptions options{.beam_width = width, .length_penalty = 0.8f};
    const std::vector<BeamHypothesis> beams = beam_search(*engine, prompt, options, stop).value();

    const BeamStopCheck stops = [&](int64_t /*parent*/, std::span<const int32_t> output) {
      return check_stop(stop, output, "");
    };
    const std::vector<BeamHypothesis> expected =
        beams_from_scratch(*engine, prompt, options, stop, stops);
    ASSERT_EQ(beams.size(), expected.size());
    ASSERT_EQ(beams.size(), size_t(width));
    for (size_t b = 0; b < beams.size(); ++b) {
      EXPECT_EQ(beams[b].output_ids, expected[b].output_ids) << "beam " << b;
      EXPECT_NEAR(beams[b].score, expected[b].score, 1e-4) << "beam " << b;
      EXPECT_EQ(beams[b].finish_reason, expected[b].finish_reason) << "beam " << b;
    }
    EXPECT_EQ(engine->kv_cache().free_blocks(), free_before);  // every block given back
  }
}

// Stop texts: beam_search (a scanner per beam, searched where a stop text can newly end) against
// the selection checked on each candidate's whole decoded output, with stop texts cut from the
// middle of the beams' outputs without them (so that they end some beams, spanning tokens).
TEST_F(BeamSearchEngine, StopTextsEndTheBeamsWhereTheyAppear) {
  std::unique_ptr<Engine> engine = Engine::load(*engine_dir_).value();
  const Tokenizer& tokenizer = engine->tokenizer();
  const std::vector<int32_t> prompt = {5, 9, 2, 7, 11};
  const BeamSearchOptions options{.beam_width = 3};
  StopConditions free_run;
  free_run.max_output_len = 16;
  const std::vector<BeamHypothesis> unstopped =
      beam_search(*engine, prompt, options, free_run).value();
  int stopped_beams = 0;
  for (const BeamHypothesis& beam : unstopped) {
    const std::string text = tokenizer.decode(beam.output_ids);
    if (text.size() < 8) continue;
    // Three bytes from the middle, widened to whole UTF-8 characters.
    size_t begin = text.size() / 2, end = begin + 3;
    auto continues = [&](size_t i) { return i < text.size() && (text[i] & 0xC0) == 0x80; };
    while (begin > 0 && continues(begin)) --begin;
    while (continues(end)) ++end;
    StopConditions stop = free_run;
    stop.stop_texts = {text.substr(begin, end - begin), "no such text in the output"};
    SCOPED_TRACE("stop text '" + stop.stop_texts.front() + "'");
    const std::vector<BeamHypothesis> beams = beam_search(*engine, prompt, options, stop).value();

    const BeamStopCheck stops = [&](int64_t /*parent*/, std::span<const int32_t> output) {
      return check_stop(stop, output, tokenizer.decode(output));
    };
    const std::vector<BeamHypothesis> expected =
        beams_from_scratch(*engine, prompt, options, stop, stops);
    ASSERT_EQ(beams.size(), expected.size());
    for (size_t b = 0; b < beams.size(); ++b) {
      EXPECT_EQ(beams[b].output_ids, expected[b].output_ids) << "beam " << b;
      EXPECT_EQ(beams[b].finish_reason, expected[b].finish_reason) << "beam " << b;
      EXPECT_EQ(beams[b].text_length, expected[b].text_length) << "beam " << b;
      stopped_beams += beams[b].finish_reason == FinishReason::kStopWords;
    }
  }
  EXPECT_GT(stopped_beams, 0) << "no stop text ended a beam: the test checks nothing";
}

TEST_F(BeamSearchEngine, OneBeamWithoutEndIdsIsGreedy) {
  std::unique_ptr<Engine> engine = Engine::load(*engine_dir_).value();
  GenerationRequest request;
  request.prompts = {{4, 8, 15, 16, 23}};
  request.sampling.temperature = 0.0f;
  request.stop.max_output_len = 10;
  const std::vector<int32_t> greedy = generate(*engine, request).value().front().output_ids;
  const std::vector<BeamHypothesis> beams =
      beam_search(*engine, request.prompts.front(), {.beam_width = 1}, request.stop).value();
  ASSERT_EQ(beams.size(), 1u);
  EXPECT_EQ(beams[0].output_ids, greedy);
  EXPECT_EQ(beams[0].finish_reason, FinishReason::kLength);
}

TEST_F(BeamSearchEngine, RefusesWhatTheEngineCannotHold) {
  std::unique_ptr<Engine> engine = Engine::load(*engine_dir_).value();
  StopConditions stop;
  stop.max_output_len = 4;
  const std::vector<int32_t> prompt = {1, 2, 3};
  const Status too_wide = beam_search(*engine, prompt, {.beam_width = 5}, stop).status();
  EXPECT_EQ(too_wide.code(), StatusCode::kOutOfRange);
  EXPECT_NE(too_wide.message().find("max_beam_width 4"), std::string::npos) << too_wide.message();
  stop.max_output_len = 38;
  EXPECT_FALSE(beam_search(*engine, prompt, {.beam_width = 2}, stop).is_ok());  // > max_seq_len
  stop.max_output_len = 4;
  EXPECT_FALSE(beam_search(*engine, {}, {.beam_width = 2}, stop).is_ok());
  EXPECT_FALSE(beam_search(*engine, prompt, {.beam_width = 0}, stop).is_ok());
}

TEST_F(BeamSearchEngine, RunPrintsEveryBeamAndRecordsThem) {
  const std::string json_path = test::temp_dir() + "/beams.json";
  const test::CommandResult run = test::run_kite(
      "run --engine_dir " + *engine_dir_ +
      " --input_text 'hello' --num_beams 3 --max_output_len 6 --output_json " + json_path);
  ASSERT_EQ(run.exit_code, 0) << run.output;
  for (const char* line : {"Output [Text 0 Beam 0]: ", "Output [Text 0 Beam 2]: "}) {
    EXPECT_NE(run.output.find(line), std::string::npos) << run.output;
  }
  const nlohmann::json record = nlohmann::json::parse(read_file(json_path).value());
  ASSERT_EQ(record.size(), 1u);
  ASSERT_EQ(record[0]["beams"].size(), 3u);
  EXPECT_EQ(record[0]["output_ids"], record[0]["beams"][0]["output_ids"]);
  EXPECT_GE(record[0]["beams"][0]["score"].get<float>(),
            record[0]["beams"][1]["score"].get<float>());

  for (const auto& [flags, message] : std::vector<std::pair<std::string, std::string>>{
           {"--num_beams 2 --temperature 0.7", "drop the sampling options"},
           {"--num_beams 2 --streaming", "--num_beams 1 only"},
           {"--num_beams 0", "--num_beams must be >= 1"},
           {"--length_penalty 0.5", "need --num_beams above 1"},
           {"--num_beams 9", "exceeds the engine's max_beam_width 4"}}) {
    const test::CommandResult refused = test::run_kite(
        "run --engine_dir " + *engine_dir_ + " --input_text hi --max_output_len 6 " + flags);
    EXPECT_NE(refused.exit_code, 0) << flags;
    EXPECT_NE(refused.output.find(message), std::string::npos) << flags << ": " << refused.output;
  }
}

// kite build --max_beam_width: recorded in the engine (default: max_batch_size), wider beam
// searches refused by kite run; above --max_batch_size refused by the build.
TEST(BeamSearchLimit, BuildRecordsTheWidestBeamSearch) {
  const std::string checkpoint = test::make_tiny_checkpoint();
  const std::string limits = "--max_batch_size 4 --max_input_len 16 --max_seq_len 40";
  const std::string narrow = test::build_engine(checkpoint, limits + " --max_beam_width 2");
  EXPECT_EQ(read_engine_config(narrow).value().limits.max_beam_width, 2);
  const std::string wide_default = test::build_engine(checkpoint, limits);
  EXPECT_EQ(read_engine_config(wide_default).value().limits.max_beam_width, 4);
  const std::string run = "run --engine_dir " + narrow + " --input_text hi --max_output_len 4 ";
  EXPECT_EQ(test::run_kite(run + "--num_beams 2").exit_code, 0);
  const test::CommandResult wide = test::run_kite(run + "--num_beams 3");
  EXPECT_NE(wide.exit_code, 0);
  EXPECT_NE(wide.output.find("exceeds the engine's max_beam_width 2"), std::string::npos)
      << wide.output;
  std::string error;
  const auto executor = executor::Executor::create(narrow, {}, &error);
  ASSERT_TRUE(executor) << error;
  executor::Request beams;
  beams.input_ids = {1, 2};
  beams.max_new_tokens = 3;
  beams.sampling.beam_width = 3;
  const std::optional<std::string> problem = executor->check_request(beams);
  ASSERT_TRUE(problem);
  EXPECT_NE(problem->find("exceeds the engine's max_beam_width 2"), std::string::npos) << *problem;
  beams.sampling.beam_width = 2;
  EXPECT_FALSE(executor->check_request(beams));
  const test::CommandResult too_wide =
      test::run_kite("build --checkpoint_dir " + checkpoint + " --output_dir " + test::temp_dir() +
                     "/too_wide " + limits + " --max_beam_width 5");
  EXPECT_NE(too_wide.exit_code, 0);
  EXPECT_NE(too_wide.output.find("--max_beam_width 5 must be between 1 and --max_batch_size (4)"),
            std::string::npos)
      << too_wide.output;
}

}  // namespace
}  // namespace kite
