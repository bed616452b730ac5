#include "runtime/rouge.h"

#include <algorithm>
#include <cstddef>
#include <map>
#include <set>
#include <unordered_map>

namespace kite {
namespace {

using Tokens = std::vector<std::string>;

RougeScore score(double overlap, double predicted, double referenced) {
  RougeScore score;
  score.precision = overlap / std::max(predicted, 1.0);
  score.recall = overlap / std::max(referenced, 1.0);
  const double sum = score.precision + score.recall;
  score.fmeasure = sum > 0 ? 2 * score.precision * score.recall / sum : 0.0;
  return score;
}

// ROUGE-N: n-grams in common (each counted as often as it occurs in both) over the prediction's
// n-grams (precision) and the reference's (recall).
RougeScore rouge_n(const Tokens& prediction, const Tokens& reference, size_t n) {
  auto ngrams = [n](const Tokens& tokens) {
    std::map<std::vector<std::string>, int64_t> counts;
    for (size_t i = 0; i + n <= tokens.size(); ++i) {
      ++counts[std::vector<std::string>(tokens.begin() + std::ptrdiff_t(i),
                                        tokens.begin() + std::ptrdiff_t(i + n))];
    }
    return counts;
  };
  const auto predicted = ngrams(prediction), referenced = ngrams(reference);
  int64_t overlap = 0, predicted_count = 0, referenced_count = 0;
  for (const auto& [ngram, count] : predicted) predicted_count += count;
  for (const auto& [ngram, count] : referenced) {
    referenced_count += count;
    const auto found = predicted.find(ngram);
    if (found != predicted.end()) overlap += std::min(count, found->second);
  }
  return score(double(overlap), double(predicted_count), double(referenced_count));
}

// table[i][j]: the LCS length of reference[0, i) and candidate[0, j).
std::vector<std::vector<int32_t>> lcs_table(const Tokens& reference, const Tokens& candidate) {
  std::vector<std::vector<int32_t>> table(reference.size() + 1,
                                          std::vector<int32_t>(candidate.size() + 1, 0));
  for (size_t i = 1; i <= reference.size(); ++i) {
    for (size_t j = 1; j <= candidate.size(); ++j) {
      table[i][j] = reference[i - 1] == candidate[j - 1]
                        ? table[i - 1][j - 1] + 1
                        : std::max(table[i - 1][j], table[i][j - 1]);
    }
  }
  return table;
}

// The reference positions of one LCS, walking the table back from its end; on a tie it moves
// along the reference, as rouge_score does (which LCS is found matters for ROUGE-Lsum's union).
std::vector<size_t> lcs_positions(const Tokens& reference, const Tokens& candidate) {
  const auto table = lcs_table(reference, candidate);
  std::vector<size_t> positions;
  size_t i = reference.size(), j = candidate.size();
  while (i > 0 && j > 0) {
    if (reference[i - 1] == candidate[j - 1]) {
      positions.push_back(i - 1);
      --i;
      --j;
    } else if (table[i][j - 1] > table[i - 1][j]) {
      --j;
    } else {
      --i;
    }
  }
  std::reverse(positions.begin(), positions.end());
  return positions;
}

RougeScore rouge_l(const Tokens& prediction, const Tokens& reference) {
  if (prediction.empty() || reference.empty()) return {};
  const double common = lcs_table(reference, prediction).back().back();
  return score(common, double(prediction.size()), double(reference.size()));
}

// The non-empty lines of `text`, each tokenized (a line may have no tokens).
std::vector<Tokens> sentence_tokens(std::string_view text) {
  std::vector<Tokens> sentences;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    if (end > start) sentences.push_back(rouge_tokens(text.substr(start, end - start)));
    start = end + 1;
  }
  return sentences;
}

// ROUGE-Lsum: for each reference sentence, the union of its LCS positions with every predicted
// sentence; a token counts as a hit while both texts have an unmatched occurrence of it left.
RougeScore rouge_lsum(std::string_view prediction, std::string_view reference) {
  const std::vector<Tokens> predicted = sentence_tokens(prediction);
  const std::vector<Tokens> referenced = sentence_tokens(reference);
  if (predicted.empty() || referenced.empty()) return {};
  std::unordered_map<std::string, int64_t> predicted_left, referenced_left;
  size_t predicted_tokens = 0, referenced_tokens = 0;
  for (const Tokens& sentence : predicted) {
    predicted_tokens += sentence.size();
    for (const std::string& token : sentence) ++predicted_left[token];
  }
  for (const Tokens& sentence : referenced) {
    referenced_tokens += sentence.size();
    for (const std::string& token : sentence) ++referenced_left[token];
  }
  if (predicted_tokens == 0 || referenced_tokens == 0) return {};
  int64_t hits = 0;
  for (const Tokens& sentence : referenced) {
    std::set<size_t> union_positions;
    for (const Tokens& candidate : predicted) {
      for (size_t position : lcs_positions(sentence, candidate)) union_positions.insert(position);
    }
    for (size_t position : union_positions) {
      const std::string& token = sentence[position];
      int64_t& in_prediction = predicted_left[token];
      int64_t& in_reference = referenced_left[token];
      if (in_prediction > 0 && in_reference > 0) {
        ++hits;
        --in_prediction;
        --in_reference;
      }
    }
  }
  return score(double(hits), double(predicted_tokens), double(referenced_tokens));
}

}  // namespace

std::vector<std::string> rouge_tokens(std::string_view text) {
  std::vector<std::string> tokens;
  std::string token;
  for (const char c : text) {
    const char lower = c >= 'A' && c <= 'Z' ? char(c - 'A' + 'a') : c;
    if ((lower >= 'a' && lower <= 'z') || (lower >= '0' && lower <= '9')) {
      token.push_back(lower);
    } else if (!token.empty()) {
      tokens.push_back(std::move(token));
      token.clear();
    }
  }
  if (!token.empty()) tokens.push_back(std::move(token));
  return tokens;
}

RougeScores rouge_scores(std::string_view prediction, std::string_view reference) {
  const Tokens predicted = rouge_tokens(prediction), referenced = rouge_tokens(reference);
  RougeScores scores;
  scores.rouge1 = rouge_n(predicted, referenced, 1);
  scores.rouge2 = rouge_n(predicted, referenced, 2);
  scores.rouge_l = rouge_l(predicted, referenced);
  scores.rouge_lsum = rouge_lsum(prediction, reference);
  return scores;
}

}  // namespace kite
