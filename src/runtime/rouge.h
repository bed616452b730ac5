// ROUGE (Lin, 2004) as Google's rouge_score package computes it, which Hugging Face `evaluate`'s
// "rouge" metric and TensorRT-LLM's examples/summarize.py report: ROUGE-1 and ROUGE-2 (n-gram
// overlap), ROUGE-L (longest common subsequence of the whole texts) and ROUGE-Lsum (summary-level:
// the union of each reference sentence's LCS with every predicted sentence, sentences split at
// newlines), over rouge_score's tokens without stemming (evaluate's default).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace kite {

struct RougeScore {
  double precision = 0;
  double recall = 0;
  double fmeasure = 0;  // 2 P R / (P + R); 0 when both are 0
};

struct RougeScores {
  RougeScore rouge1, rouge2, rouge_l, rouge_lsum;
};

// rouge_score's tokens: the text lowercased (ASCII), every run of characters other than a-z and
// 0-9 a separator.
std::vector<std::string> rouge_tokens(std::string_view text);

// The four scores of `prediction` against `reference`.
RougeScores rouge_scores(std::string_view prediction, std::string_view reference);

}  // namespace kite
