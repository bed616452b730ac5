// Host sampling, following the order and the tie rules of transformers' logits processors so that
// a seeded greedy or filtered run can be compared with Hugging Face.
#include "runtime/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <unordered_map>
#include <unordered_set>

namespace kite {
namespace {

constexpr float kRemoved = -std::numeric_limits<float>::infinity();

int32_t argmax(std::span<const float> scores) {
  return int32_t(std::max_element(scores.begin(), scores.end()) - scores.begin());
}

// probabilities = softmax(scores), in double for a stable cumulative sum.
std::vector<double> softmax(std::span<const float> scores) {
  const float largest = *std::max_element(scores.begin(), scores.end());
  std::vector<double> probabilities(scores.size());
  double total = 0;
  for (size_t i = 0; i < scores.size(); ++i) {
    probabilities[i] = scores[i] == kRemoved ? 0.0 : std::exp(double(scores[i]) - largest);
    total += probabilities[i];
  }
  if (total == 0) return probabilities;  // every score removed (all banned): zeros, not NaNs
  for (double& probability : probabilities) probability /= total;
  return probabilities;
}

}  // namespace

double log_sum_exp(std::span<const float> logits) {
  const float maximum = *std::max_element(logits.begin(), logits.end());
  if (std::isinf(maximum) && maximum < 0) return maximum;
  double sum = 0;
  for (float value : logits) sum += std::exp(double(value) - double(maximum));
  return double(maximum) + std::log(sum);
}

void log_softmax(std::span<float> logits) {
  const double log_total = log_sum_exp(logits);
  if (std::isinf(log_total)) return;  // every logit -inf (every token banned): they stay so
  for (float& value : logits) value = float(double(value) - log_total);
}

Status validate_sampling_config(const SamplingConfig& config) {
  if (!(config.temperature >= 0.0f) || !std::isfinite(config.temperature))
    return invalid_argument("--temperature must be >= 0 (0 means greedy)");
  if (config.top_k < 0) return invalid_argument("--top_k must be >= 0 (0 means off)");
  if (!(config.top_p > 0.0f && config.top_p <= 1.0f))
    return invalid_argument("--top_p must be in (0, 1] (1 means off)");
  if (!(config.min_p >= 0.0f && config.min_p <= 1.0f))
    return invalid_argument("--min_p must be in [0, 1] (0 means off)");
  if (!(config.repetition_penalty > 0.0f) || !std::isfinite(config.repetition_penalty))
    return invalid_argument("--repetition_penalty must be > 0 (1 means off)");
  if (!std::isfinite(config.presence_penalty))
    return invalid_argument("--presence_penalty must be a finite number (0 means off)");
  if (!std::isfinite(config.frequency_penalty))
    return invalid_argument("--frequency_penalty must be a finite number (0 means off)");
  return Status::ok();
}

std::vector<int32_t> banned_next_tokens(std::span<const int32_t> sequence,
                                        const std::vector<std::vector<int32_t>>& bad_words) {
  std::vector<int32_t> banned;
  for (const std::vector<int32_t>& word : bad_words) {
    if (word.empty()) continue;
    const size_t prefix = word.size() - 1;
    if (prefix <= sequence.size() &&
        std::equal(word.begin(), word.end() - 1, sequence.end() - ptrdiff_t(prefix))) {
      banned.push_back(word.back());
    }
  }
  std::sort(banned.begin(), banned.end());
  banned.erase(std::unique(banned.begin(), banned.end()), banned.end());
  return banned;
}

void apply_repetition_penalty(std::span<float> logits, std::span<const int32_t> previous_tokens,
                              float penalty) {
  if (penalty == 1.0f) return;
  // Each distinct token once, as HF's gather/scatter does.
  std::unordered_set<int32_t> seen(previous_tokens.begin(), previous_tokens.end());
  for (int32_t token : seen) {
    if (token < 0 || size_t(token) >= logits.size()) continue;
    float& score = logits[size_t(token)];
    score = score < 0 ? score * penalty : score / penalty;
  }
}

void apply_presence_frequency_penalties(std::span<float> logits,
                                        std::span<const int32_t> output_tokens, float presence,
                                        float frequency) {
  if (presence == 0.0f && frequency == 0.0f) return;
  std::unordered_map<int32_t, int32_t> counts;
  for (int32_t token : output_tokens) ++counts[token];
  for (const auto& [token, count] : counts) {
    if (token < 0 || size_t(token) >= logits.size()) continue;
    const float product = float(count) * frequency;
    const float penalty = product + presence;
    logits[size_t(token)] -= penalty;
  }
}

Sampler::Sampler(const SamplingConfig& config) : config_(config), generator_(config.seed) {}

double Sampler::uniform() {
  return double(generator_() >> 11) * 0x1.0p-53;
}

std::vector<double> sampling_distribution(std::span<const float> logits,
                                          const SamplingConfig& config,
                                          std::span<const int32_t> previous_tokens,
                                          size_t output_start) {
  KITE_CHECK(!logits.empty() && output_start <= previous_tokens.size());
  std::vector<float> scores(logits.begin(), logits.end());
  apply_repetition_penalty(scores, previous_tokens, config.repetition_penalty);
  apply_presence_frequency_penalties(scores, previous_tokens.subspan(output_start),
                                     config.presence_penalty, config.frequency_penalty);
  const size_t vocab = scores.size();
  if (config.greedy()) {
    std::vector<double> one_hot(vocab, 0.0);
    one_hot[size_t(argmax(scores))] = 1.0;
    return one_hot;
  }

  // scores /= temperature
  for (float& score : scores) score /= config.temperature;
  // top-k: keep scores >= the k-th largest (ties at the boundary stay, as in HF).
  if (config.top_k > 0 && size_t(config.top_k) < vocab) {
    std::vector<float> sorted = scores;
    std::nth_element(sorted.begin(), sorted.begin() + (config.top_k - 1), sorted.end(),
                     std::greater<float>());
    const float threshold = sorted[size_t(config.top_k - 1)];
    for (float& score : scores)
      if (score < threshold) score = kRemoved;
  }
  // top-p: sort ascending, drop tokens whose cumulative probability is <= 1 - top_p; the most
  // likely token always stays.
  if (config.top_p < 1.0f) {
    const std::vector<double> probabilities = softmax(scores);
    std::vector<int32_t> order(vocab);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return scores[size_t(a)] < scores[size_t(b)]; });
    double cumulative = 0;
    for (size_t i = 0; i + 1 < vocab; ++i) {
      cumulative += probabilities[size_t(order[i])];
      if (cumulative <= 1.0 - double(config.top_p)) scores[size_t(order[i])] = kRemoved;
    }
  }
  // min-p: drop tokens less likely than min_p times the most likely one.
  if (config.min_p > 0.0f) {
    const std::vector<double> probabilities = softmax(scores);
    const double threshold =
        double(config.min_p) * *std::max_element(probabilities.begin(), probabilities.end());
    for (size_t i = 0; i < vocab; ++i)
      if (probabilities[i] < threshold) scores[i] = kRemoved;
  }
  return softmax(scores);
}

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> previous_tokens,
                        size_t output_start) {
  const std::vector<double> probabilities =
      sampling_distribution(logits, config_, previous_tokens, output_start);
  const int32_t most_likely =
      int32_t(std::max_element(probabilities.begin(), probabilities.end()) - probabilities.begin());
  if (config_.greedy()) return most_likely;
  // Draw by walking the vocabulary in index order.
  const double target = uniform();
  double cumulative = 0;
  int32_t last_possible = most_likely;
  for (size_t i = 0; i < probabilities.size(); ++i) {
    if (probabilities[i] == 0.0) continue;
    last_possible = int32_t(i);
    cumulative += probabilities[i];
    if (target < cumulative) return int32_t(i);
  }
  return last_possible;  // rounding left the sum a hair below the draw
}

std::string_view finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNotFinished:
      return "not_finished";
    case FinishReason::kEndId:
      return "end_id";
    case FinishReason::kStopWords:
      return "stop_words";
    case FinishReason::kLength:
      return "length";
  }
  return "unknown";
}

StopCheck check_stop(const StopConditions& conditions, std::span<const int32_t> output_ids,
                     std::string_view output_text, size_t text_offset) {
  StopCheck check;
  if (int64_t(output_ids.size()) < conditions.min_output_len) return check;
  if (!output_ids.empty()) {
    const int32_t last = output_ids.back();
    if (std::find(conditions.end_ids.begin(), conditions.end_ids.end(), last) !=
        conditions.end_ids.end()) {
      check.reason = FinishReason::kEndId;
      return check;
    }
    for (const std::vector<int32_t>& sequence : conditions.stop_sequences) {
      if (!sequence.empty() && sequence.size() <= output_ids.size() &&
          std::equal(sequence.begin(), sequence.end(),
                     output_ids.end() - int64_t(sequence.size()))) {
        check.reason = FinishReason::kStopWords;
        return check;
      }
    }
  }
  for (const std::string& stop : conditions.stop_texts) {
    if (stop.empty()) continue;
    const size_t found = output_text.find(stop);
    if (found != std::string_view::npos) {
      check.reason = FinishReason::kStopWords;
      check.text_length = std::min(check.text_length, text_offset + found);
    }
  }
  if (check.reason != FinishReason::kNotFinished) return check;
  if (int64_t(output_ids.size()) >= conditions.max_output_len) check.reason = FinishReason::kLength;
  return check;
}

}  // namespace kite
