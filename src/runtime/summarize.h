// Summarization accuracy as TensorRT-LLM's examples/summarize.py measures it on CNN/DailyMail:
// each article followed by " TL;DR:" is the prompt (tokenized with the tokens the vocabulary adds,
// cut to max_input_len tokens), the engine continues it greedily for up to output_len tokens (until
// an end id), and the text it produced is scored against the reference summary with ROUGE
// (runtime/rouge.h); the scores are averaged over the articles.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/status.h"
#include "runtime/engine.h"
#include "runtime/rouge.h"

namespace kite {

struct SummarizationExample {
  std::string article;
  std::string summary;  // the reference
};

// A dataset file: JSON Lines (one object a line, blank lines skipped) or one JSON array of
// objects, each with the text under `input_key` and its reference summary under `output_key`
// (CNN/DailyMail's columns: "article", "highlights"). Refuses a missing file, malformed JSON, an
// object without either key, and a file without examples, naming the line or index.
Result<std::vector<SummarizationExample>> read_summarization_dataset(
    const std::string& path, const std::string& input_key = "article",
    const std::string& output_key = "highlights");

// summarize.py's prompt: article + " TL;DR: ", stripped of surrounding whitespace, with " n't"
// joined to its word.
std::string summarization_prompt(const std::string& article);

struct SummarizeOptions {
  int64_t max_input_len = 923;  // summarize.py's default; at most the engine's max_input_len
  int64_t output_len = 100;     // tokens generated at most
  int64_t batch_size = 0;       // articles a generation; 0: the engine's max_batch_size
  int64_t max_examples = 0;     // the first N; 0: all
};

// How many of `available` examples evaluate_summarization summarizes (options.max_examples).
int64_t summarized_count(size_t available, const SummarizeOptions& options);

struct SummarizedExample {
  std::string prediction;  // the generated text (end id and special tokens left out)
  RougeScores scores;
  int64_t prompt_tokens = 0;
  bool truncated = false;  // the prompt was cut to max_input_len tokens
};

struct SummarizeResult {
  std::vector<SummarizedExample> examples;
  RougeScores mean;  // each score averaged over the examples
};

// Generates and scores every example, `batch_size` articles a generation (the result is the same
// for any batch size); on_progress(done, total) after each batch. Refuses limits the engine cannot
// serve (output_len beyond max_seq_len - 1, for instance) with a message naming the option.
Result<SummarizeResult> evaluate_summarization(
    Engine& engine, const std::vector<SummarizationExample>& examples,
    const SummarizeOptions& options,
    const std::function<void(int64_t done, int64_t total)>& on_progress = {});

}  // namespace kite
