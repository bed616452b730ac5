// Host sampling: greedy, the filters (top-k, top-p, min-p) against hand-computed distributions,
// HF's repetition penalty, seeded reproducibility, the tokens bad words ban, and the stop
// conditions.
#include "runtime/sampling.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>
#include <set>

namespace kite {
namespace {

// Draws many samples and returns the set of tokens that ever came out.
std::set<int32_t> support(const SamplingConfig& config, const std::vector<float>& logits,
                          const std::vector<int32_t>& previous = {}, int draws = 2000) {
  Sampler sampler(config);
  std::set<int32_t> seen;
  for (int i = 0; i < draws; ++i) seen.insert(sampler.sample(logits, previous, 0));
  return seen;
}

TEST(Sampling, GreedyTakesTheArgmax) {
  SamplingConfig config;
  config.temperature = 0.0f;
  Sampler sampler(config);
  EXPECT_EQ(sampler.sample(std::vector<float>{0.1f, 3.0f, -1.0f, 2.9f}, {}, 0), 1);
  config.temperature = 0.7f;
  config.top_k = 1;
  EXPECT_EQ(Sampler(config).sample(std::vector<float>{0.1f, 3.0f, -1.0f, 2.9f}, {}, 0), 1);
}

TEST(Sampling, LogSoftmaxOfABannedRowStaysMinusInfinity) {
  const float minus_infinity = -std::numeric_limits<float>::infinity();
  std::vector<float> row = {minus_infinity, minus_infinity, minus_infinity};
  log_softmax(row);
  for (float value : row) EXPECT_EQ(value, minus_infinity);
  std::vector<float> partly = {0.0f, minus_infinity};
  log_softmax(partly);
  EXPECT_FLOAT_EQ(partly[0], 0.0f);
  EXPECT_EQ(partly[1], minus_infinity);
}

TEST(Sampling, RepetitionPenaltyFollowsTransformers) {
  std::vector<float> logits = {2.0f, -2.0f, 1.0f, 4.0f};
  apply_repetition_penalty(logits, std::vector<int32_t>{0, 1, 1}, 2.0f);
  EXPECT_EQ(logits, (std::vector<float>{1.0f, -4.0f, 1.0f, 4.0f}));
  // Greedy with a penalty can change the choice.
  SamplingConfig config;
  config.temperature = 0.0f;
  config.repetition_penalty = 3.0f;
  Sampler sampler(config);
  EXPECT_EQ(sampler.sample(std::vector<float>{3.0f, 2.0f}, std::vector<int32_t>{0}, 0), 1);
}

TEST(Sampling, TopKKeepsTheKLargest) {
  SamplingConfig config;
  config.top_k = 2;
  EXPECT_EQ(support(config, {1.0f, 5.0f, 4.5f, 0.0f}), (std::set<int32_t>{1, 2}));
}

TEST(Sampling, TopPKeepsTheSmallestNucleus) {
  // probabilities ~ {0.5, 0.3, 0.15, 0.05}
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f),
                                     std::log(0.05f)};
  SamplingConfig config;
  config.top_p = 0.75f;  // 0.5 + 0.3 >= 0.75
  EXPECT_EQ(support(config, logits), (std::set<int32_t>{0, 1}));
  config.top_p = 0.85f;
  EXPECT_EQ(support(config, logits), (std::set<int32_t>{0, 1, 2}));
  config.top_p = 0.1f;  // the top token always stays
  EXPECT_EQ(support(config, logits), (std::set<int32_t>{0}));
}

TEST(Sampling, MinPDropsUnlikelyTokens) {
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f),
                                     std::log(0.05f)};
  SamplingConfig config;
  config.min_p = 0.35f;  // threshold 0.175
  EXPECT_EQ(support(config, logits), (std::set<int32_t>{0, 1}));
}

TEST(Sampling, TemperatureSharpensTheDistribution) {
  const std::vector<float> logits = {1.0f, 0.0f};
  auto share_of_first = [&](float temperature) {
    SamplingConfig config;
    config.temperature = temperature;
    config.seed = 11;
    Sampler sampler(config);
    int first = 0;
    for (int i = 0; i < 20000; ++i) first += sampler.sample(logits, {}, 0) == 0;
    return first / 20000.0;
  };
  EXPECT_NEAR(share_of_first(1.0f), 1.0 / (1.0 + std::exp(-1.0)), 0.02);
  EXPECT_NEAR(share_of_first(0.5f), 1.0 / (1.0 + std::exp(-2.0)), 0.02);
}

TEST(Sampling, DistributionIsWhatTheSamplerDrawsFrom) {
  // top-k 2 at temperature 0.5 over {1, 5, 4.5, 0}: softmax({5, 4.5} / 0.5) on tokens 1 and 2.
  SamplingConfig config;
  config.temperature = 0.5f;
  config.top_k = 2;
  const std::vector<double> top_two =
      sampling_distribution(std::vector<float>{1.0f, 5.0f, 4.5f, 0.0f}, config, {}, 0);
  const double first = 1.0 / (1.0 + std::exp(-1.0));
  EXPECT_EQ(top_two[0], 0.0);
  EXPECT_NEAR(top_two[1], first, 1e-9);
  EXPECT_NEAR(top_two[2], 1.0 - first, 1e-9);
  EXPECT_EQ(top_two[3], 0.0);
  // Greedy: all the mass on the lowest index among tied maxima.
  config = {};
  config.temperature = 0.0f;
  EXPECT_EQ(sampling_distribution(std::vector<float>{1.0f, 3.0f, 3.0f}, config, {}, 0),
            (std::vector<double>{0.0, 1.0, 0.0}));
  // Ten equal logits, top_p 0.35: the stable ascending sort drops the six lowest indices.
  config = {};
  config.top_p = 0.35f;
  const std::vector<double> ties =
      sampling_distribution(std::vector<float>(10, 1.0f), config, {}, 0);
  for (size_t i = 0; i < ties.size(); ++i) EXPECT_NEAR(ties[i], i >= 6 ? 0.25 : 0.0, 1e-12) << i;
  // The Sampler's frequencies follow it.
  config = {};
  config.top_p = 0.9f;
  config.min_p = 0.05f;
  config.seed = 3;
  std::vector<float> logits(50);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = 0.1f * float(i % 13);
  const std::vector<double> expected = sampling_distribution(logits, config, {}, 0);
  Sampler sampler(config);
  std::vector<int> counts(logits.size(), 0);
  constexpr int kDraws = 20000;
  for (int i = 0; i < kDraws; ++i) ++counts[size_t(sampler.sample(logits, {}, 0))];
  for (size_t i = 0; i < logits.size(); ++i)
    EXPECT_NEAR(double(counts[i]) / kDraws, expected[i], 0.015) << "token " << i;
}

TEST(Sampling, SameSeedSameOutput) {
  std::vector<float> logits(100);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = float(i % 7) * 0.3f;
  SamplingConfig config;
  config.seed = 42;
  config.top_p = 0.9f;
  auto draw = [&](uint64_t seed) {
    config.seed = seed;
    Sampler sampler(config);
    std::vector<int32_t> out;
    for (int i = 0; i < 50; ++i) out.push_back(sampler.sample(logits, out, 0));
    return out;
  };
  EXPECT_EQ(draw(42), draw(42));
  EXPECT_NE(draw(42), draw(43));
}

// OpenAI's penalties count the output only (from output_start): presence once per token,
// frequency once per occurrence, after the repetition penalty.
TEST(Sampling, PresenceAndFrequencyPenaltiesCountTheOutputOnly) {
  std::vector<float> logits = {1.0f, 1.0f, 1.0f, 1.0f};
  apply_presence_frequency_penalties(logits, std::vector<int32_t>{1, 1, 1, 2, -1, 9}, 0.5f, 0.25f);
  EXPECT_EQ(logits, (std::vector<float>{1.0f, -0.25f, 0.25f, 1.0f}));

  SamplingConfig config;
  config.temperature = 0.0f;
  config.presence_penalty = 0.5f;
  config.frequency_penalty = 0.25f;
  // Token 0 is best and repeated in the prompt only (positions 0-1): the penalties leave it.
  const std::vector<int32_t> history = {0, 0, 1, 1, 1, 2};
  EXPECT_EQ(Sampler(config).sample(std::vector<float>{1.0f, 1.1f, 1.0f}, history, 2), 0);
  // Counted from the start, token 0 would lose 1.0 and token 2 win.
  EXPECT_EQ(Sampler(config).sample(std::vector<float>{1.0f, 1.1f, 1.0f}, history, 0), 2);
  // After the repetition penalty: 4 / 2 = 2, then 2 - (1 * 1 + 0.5) = 0.5 for token 1.
  config.repetition_penalty = 2.0f;
  config.frequency_penalty = 1.0f;
  const std::vector<double> distribution =
      sampling_distribution(std::vector<float>{0.6f, 4.0f}, config, std::vector<int32_t>{1}, 0);
  EXPECT_EQ(distribution, (std::vector<double>{1.0, 0.0}));
  config.temperature = 1.0f;
  const std::vector<double> soft =
      sampling_distribution(std::vector<float>{0.6f, 4.0f}, config, std::vector<int32_t>{1}, 0);
  EXPECT_NEAR(soft[0], 1.0 / (1.0 + std::exp(0.5 - 0.6)), 1e-6);
}

TEST(Sampling, ValidatesOptions) {
  SamplingConfig config;
  config.top_p = 0.0f;
  EXPECT_NE(validate_sampling_config(config).message().find("--top_p"), std::string::npos);
  config = {};
  config.temperature = -1.0f;
  EXPECT_FALSE(validate_sampling_config(config).is_ok());
  config = {};
  config.repetition_penalty = 0.0f;
  EXPECT_FALSE(validate_sampling_config(config).is_ok());
  config = {};
  config.presence_penalty = std::nanf("");
  EXPECT_NE(validate_sampling_config(config).message().find("--presence_penalty"),
            std::string::npos);
  config = {};
  config.frequency_penalty = INFINITY;
  EXPECT_NE(validate_sampling_config(config).message().find("--frequency_penalty"),
            std::string::npos);
  config = {};
  config.presence_penalty = -1.5f;
  config.frequency_penalty = 2.0f;
  EXPECT_TRUE(validate_sampling_config(config).is_ok());
  EXPECT_TRUE(validate_sampling_config(SamplingConfig{}).is_ok());
}

TEST(BadWords, OneTokenWordsAreAlwaysBanned) {
  const std::vector<std::vector<int32_t>> words = {{9}, {4}, {9}};
  EXPECT_EQ(banned_next_tokens(std::vector<int32_t>{}, words), (std::vector<int32_t>{4, 9}));
  EXPECT_EQ(banned_next_tokens(std::vector<int32_t>{1, 2, 3}, words), (std::vector<int32_t>{4, 9}));
}

TEST(BadWords, LongerWordsBanTheirLastTokenAfterTheRest) {
  const std::vector<std::vector<int32_t>> words = {{5, 6, 7}, {6, 8}, {3, 5, 6, 1}};
  // Ends with 5 6: word 0 bans 7; word 1 needs a 6 last, so it bans 8 too; word 2 needs 3 5 6.
  EXPECT_EQ(banned_next_tokens(std::vector<int32_t>{1, 5, 6}, words), (std::vector<int32_t>{7, 8}));
  EXPECT_EQ(banned_next_tokens(std::vector<int32_t>{3, 5, 6}, words),
            (std::vector<int32_t>{1, 7, 8}));
  // The prefix must be the sequence's end, in order, not anywhere in it.
  EXPECT_TRUE(banned_next_tokens(std::vector<int32_t>{5, 6, 2}, words).empty());
  EXPECT_TRUE(banned_next_tokens(std::vector<int32_t>{6, 5}, words).empty());
  // Sequences shorter than the prefix match nothing; the whole sequence counts (prompt included).
  EXPECT_TRUE(banned_next_tokens(std::vector<int32_t>{}, words).empty());
  EXPECT_EQ(banned_next_tokens(std::vector<int32_t>{6}, words), (std::vector<int32_t>{8}));
  // Empty words ban nothing.
  EXPECT_TRUE(banned_next_tokens(std::vector<int32_t>{1}, {{}}).empty());
}

TEST(BadWords, EveryTokenBannedPicksTokenZeroWithoutGarbage) {
  const float minus_infinity = -std::numeric_limits<float>::infinity();
  const std::vector<float> logits(7, minus_infinity);
  SamplingConfig greedy;
  greedy.temperature = 0.0f;
  EXPECT_EQ(Sampler(greedy).sample(logits, {}, 0), 0);
  SamplingConfig filtered;
  filtered.temperature = 0.8f;
  filtered.top_k = 3;
  filtered.top_p = 0.9f;
  filtered.min_p = 0.1f;
  filtered.repetition_penalty = 1.3f;
  const std::vector<int32_t> previous = {1, 2};
  for (const SamplingConfig& config : {SamplingConfig{}, filtered}) {
    Sampler sampler(config);
    for (int draw = 0; draw < 20; ++draw) EXPECT_EQ(sampler.sample(logits, previous, 0), 0);
    for (double probability : sampling_distribution(logits, config, previous, 0)) {
      EXPECT_EQ(probability, 0.0);  // not NaN
    }
  }
  // Banning all but one token leaves that one, however the row samples.
  std::vector<float> one_left(7, minus_infinity);
  one_left[5] = -3.0f;
  EXPECT_EQ(support(filtered, one_left, {5}), (std::set<int32_t>{5}));
  EXPECT_EQ(Sampler(greedy).sample(one_left, {}, 0), 5);
}

TEST(StopConditions, EndIdsStopWordsAndLength) {
  StopConditions conditions;
  conditions.end_ids = {2};
  conditions.stop_sequences = {{7, 8}};
  conditions.stop_texts = {"\nUser:"};
  conditions.max_output_len = 5;
  EXPECT_EQ(check_stop(conditions, std::vector<int32_t>{5, 2}, "a").reason, FinishReason::kEndId);
  EXPECT_EQ(check_stop(conditions, std::vector<int32_t>{7, 8}, "a").reason,
            FinishReason::kStopWords);
  EXPECT_EQ(check_stop(conditions, std::vector<int32_t>{8, 7}, "a").reason,
            FinishReason::kNotFinished);
  const StopCheck text = check_stop(conditions, std::vector<int32_t>{4, 4}, "Hi\nUser: x");
  EXPECT_EQ(text.reason, FinishReason::kStopWords);
  EXPECT_EQ(text.text_length, 2u);
  EXPECT_EQ(check_stop(conditions, std::vector<int32_t>{1, 1, 1, 1, 1}, "ok").reason,
            FinishReason::kLength);
  // Shorter than min_output_len: nothing ends the output; from then on all of it does again.
  conditions.min_output_len = 3;
  EXPECT_EQ(check_stop(conditions, std::vector<int32_t>{5, 2}, "a").reason,
            FinishReason::kNotFinished);
  EXPECT_EQ(check_stop(conditions, std::vector<int32_t>{7, 8}, "a\nUser:").reason,
            FinishReason::kNotFinished);
  EXPECT_EQ(check_stop(conditions, std::vector<int32_t>{5, 5, 2}, "a").reason,
            FinishReason::kEndId);
  EXPECT_EQ(check_stop(conditions, std::vector<int32_t>{1, 7, 8}, "a").reason,
            FinishReason::kStopWords);
}

}  // namespace
}  // namespace kite
