#include "runtime/summarize.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "core/file.h"

namespace kite {
namespace {

using Json = nlohmann::json;

// The example of one JSON object; `where` names it in messages.
Result<SummarizationExample> read_example(const Json& object, const std::string& input_key,
                                          const std::string& output_key, const std::string& where) {
  if (!object.is_object()) return corrupt(where + " is not a JSON object");
  SummarizationExample example;
  for (const auto& [key, field] :
       {std::pair{&input_key, &example.article}, std::pair{&output_key, &example.summary}}) {
    const auto found = object.find(*key);
    if (found == object.end() || !found->is_string()) {
      return corrupt(where + " has no string \"" + *key +
                     "\" (name the fields with --dataset_input_key and --dataset_output_key)");
    }
    *field = found->get<std::string>();
  }
  return example;
}

void add_scores(RougeScore& sum, const RougeScore& score) {
  sum.precision += score.precision;
  sum.recall += score.recall;
  sum.fmeasure += score.fmeasure;
}

void divide_scores(RougeScore& score, double count) {
  score.precision /= count;
  score.recall /= count;
  score.fmeasure /= count;
}

}  // namespace

Result<std::vector<SummarizationExample>> read_summarization_dataset(
    const std::string& path, const std::string& input_key, const std::string& output_key) {
  KITE_ASSIGN_OR_RETURN(const std::string text, read_file(path));
  std::vector<SummarizationExample> examples;
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && text[first] == '[') {
    const Json array = Json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (array.is_discarded() || !array.is_array()) {
      return corrupt(path + " is not a JSON array of examples (or JSON Lines)");
    }
    for (size_t i = 0; i < array.size(); ++i) {
      KITE_ASSIGN_OR_RETURN(
          SummarizationExample example,
          read_example(array[i], input_key, output_key, path + ": element " + std::to_string(i)));
      examples.push_back(std::move(example));
    }
  } else {
    size_t start = 0;
    for (int64_t line_number = 1; start < text.size(); ++line_number) {
      size_t end = text.find('\n', start);
      if (end == std::string::npos) end = text.size();
      const std::string line = text.substr(start, end - start);
      start = end + 1;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const std::string where = path + ": line " + std::to_string(line_number);
      const Json object = Json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (object.is_discarded()) return corrupt(where + " is not valid JSON");
      KITE_ASSIGN_OR_RETURN(SummarizationExample example,
                            read_example(object, input_key, output_key, where));
      examples.push_back(std::move(example));
    }
  }
  if (examples.empty()) return invalid_argument(path + " holds no examples");
  return examples;
}

std::string summarization_prompt(const std::string& article) {
  std::string prompt = article + " TL;DR: ";
  const size_t first = prompt.find_first_not_of(" \t\r\n\v\f");
  const size_t last = prompt.find_last_not_of(" \t\r\n\v\f");
  prompt = first == std::string::npos ? "" : prompt.substr(first, last - first + 1);
  for (size_t at; (at = prompt.find(" n't")) != std::string::npos;) prompt.erase(at, 1);
  return prompt;
}

int64_t summarized_count(size_t available, const SummarizeOptions& options) {
  return options.max_examples > 0 ? std::min<int64_t>(options.max_examples, int64_t(available))
                                  : int64_t(available);
}

Result<SummarizeResult> evaluate_summarization(
    Engine& engine, const std::vector<SummarizationExample>& examples,
    const SummarizeOptions& options,
    const std::function<void(int64_t done, int64_t total)>& on_progress) {
  const BuildLimits& limits = engine.config().limits;
  if (options.output_len < 1 || options.output_len >= limits.max_seq_len) {
    return invalid_argument("--output_len " + std::to_string(options.output_len) +
                            " must be between 1 and the engine's max_seq_len - 1 (" +
                            std::to_string(limits.max_seq_len - 1) + ")");
  }
  if (options.max_input_len < 1) {
    return invalid_argument("--max_input_len must be positive");
  }
  if (options.batch_size < 0 || options.batch_size > limits.max_batch_size) {
    return invalid_argument("--batch_size " + std::to_string(options.batch_size) +
                            " must be between 1 and the engine's max_batch_size (" +
                            std::to_string(limits.max_batch_size) + "), or 0 for it");
  }
  // The longest prompt the engine takes with output_len tokens after it.
  const int64_t input_len = std::min(
      {options.max_input_len, limits.max_input_len, limits.max_seq_len - options.output_len});
  const int64_t batch_size = options.batch_size > 0 ? options.batch_size : limits.max_batch_size;
  const int64_t total = summarized_count(examples.size(), options);
  if (total == 0) return invalid_argument("no examples to summarize");
  const Tokenizer& tokenizer = engine.tokenizer();

  SummarizeResult result;
  for (int64_t begin = 0; begin < total; begin += batch_size) {
    const int64_t end = std::min(total, begin + batch_size);
    GenerationRequest request;
    request.sampling.temperature = 0.0f;  // greedy, as summarize.py runs by default
    request.stop.max_output_len = options.output_len;
    request.stop.end_ids = engine.default_end_ids();
    for (int64_t i = begin; i < end; ++i) {
      std::vector<int32_t> ids =
          tokenizer.encode(summarization_prompt(examples[size_t(i)].article));
      SummarizedExample& summarized = result.examples.emplace_back();
      summarized.truncated = int64_t(ids.size()) > input_len;
      if (summarized.truncated) ids.resize(size_t(input_len));
      if (ids.empty()) {
        return invalid_argument("article " + std::to_string(i) +
                                " has no tokens (and the vocabulary adds none)");
      }
      summarized.prompt_tokens = int64_t(ids.size());
      request.prompts.push_back(std::move(ids));
    }
    KITE_ASSIGN_OR_RETURN(std::vector<GenerationResult> generated, generate(engine, request));
    for (int64_t i = begin; i < end; ++i) {
      SummarizedExample& summarized = result.examples[size_t(i)];
      std::vector<int32_t>& ids = generated[size_t(i - begin)].output_ids;
      if (generated[size_t(i - begin)].finish_reason == FinishReason::kEndId && !ids.empty()) {
        ids.pop_back();  // the end id
      }
      summarized.prediction = tokenizer.decode(ids);
      summarized.scores = rouge_scores(summarized.prediction, examples[size_t(i)].summary);
      add_scores(result.mean.rouge1, summarized.scores.rouge1);
      add_scores(result.mean.rouge2, summarized.scores.rouge2);
      add_scores(result.mean.rouge_l, summarized.scores.rouge_l);
      add_scores(result.mean.rouge_lsum, summarized.scores.rouge_lsum);
    }
    if (on_progress) on_progress(end, total);
  }
  for (RougeScore* score :
       {&result.mean.rouge1, &result.mean.rouge2, &result.mean.rouge_l, &result.mean.rouge_lsum}) {
    divide_scores(*score, double(total));
  }
  return result;
}

}  // namespace kite
