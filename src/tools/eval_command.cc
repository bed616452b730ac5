// `kite eval`: accuracy of an engine. `kite eval perplexity` scores a text file the way llama.cpp's
// llama-perplexity does (src/runtime/perplexity.h), so the two numbers can be compared; `kite eval
// mmlu` asks MMLU as TensorRT-LLM's mmlu.py does (src/runtime/mmlu.h) and prints as it does;
// `kite eval summarize` scores summaries with ROUGE as its summarize.py does
// (src/runtime/summarize.h).
#include <algorithm>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "core/file.h"
#include "core/progress.h"
#include "runtime/engine.h"
#include "runtime/mmlu.h"
#include "runtime/perplexity.h"
#include "runtime/summarize.h"
#include "tools/command.h"

namespace kite::tools {
namespace {

struct PerplexityFlags {
  std::string engine_dir;
  std::string dataset;
  PerplexityOptions options;
  std::string output_json;
};

Status run_perplexity(const PerplexityFlags& flags) {
  if (flags.engine_dir.empty()) return invalid_argument("--engine_dir is required");
  if (flags.dataset.empty()) return invalid_argument("--dataset is required");
  if (flags.options.chunk_size < 3) {
    return invalid_argument(
        "--chunk_size must be at least 3 (the second half of each chunk is "
        "scored); 512 is the usual size");
  }
  if (flags.options.max_tokens < 0) {
    return invalid_argument("--max_tokens must be positive (or 0 for the whole file)");
  }
  if (!path_exists(flags.dataset)) {
    return not_found("--dataset " + flags.dataset + " does not exist: give a text file");
  }
  KITE_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::load(flags.engine_dir));
  KITE_RETURN_IF_ERROR(check_perplexity_engine(*engine, flags.options.chunk_size));

  KITE_ASSIGN_OR_RETURN(const std::string text, read_file(flags.dataset));
  const PerplexityTokens tokens = tokenize_for_perplexity(engine->tokenizer(), text);
  if (tokens.special_tokens_in_text > 0) {
    std::fprintf(
        stderr,
        "kite eval perplexity: note: %lld special-token strings in %s were read as special "
        "tokens (llama.cpp reads them as text, so its perplexity is not comparable)\n",
        static_cast<long long>(tokens.special_tokens_in_text), flags.dataset.c_str());
  }
  Result<std::vector<std::vector<int32_t>>> chunks = perplexity_chunks(tokens, flags.options);
  if (!chunks.is_ok()) return chunks.status().with_context(flags.dataset);
  const int64_t chunk_size = flags.options.chunk_size;
  const int64_t chunk_count = int64_t(chunks->size());

  Progress progress("kite eval perplexity", chunk_count);
  KITE_ASSIGN_OR_RETURN(const PerplexityResult result,
                        evaluate_perplexity(*engine, *chunks, [&](int64_t chunks_done) {
                          progress.update(chunks_done, std::to_string(chunks_done) + " chunks");
                        }));
  progress.finish();

  std::printf("perplexity: %.4f over %lld tokens (%lld chunks of %lld)\n", result.perplexity(),
              static_cast<long long>(result.scored_tokens), static_cast<long long>(chunk_count),
              static_cast<long long>(chunk_size));
  std::fflush(stdout);
  if (!flags.output_json.empty()) {
    nlohmann::ordered_json per_chunk = nlohmann::ordered_json::array();
    for (const ChunkNll& chunk : result.chunks) {
      per_chunk.push_back({{"count", chunk.count}, {"nll_sum", chunk.nll_sum}});
    }
    const nlohmann::ordered_json record = {
        {"engine_dir", flags.engine_dir},
        {"dataset", flags.dataset},
        {"chunk_size", chunk_size},
        {"n_chunks", chunk_count},
        {"file_tokens", tokens.tokens.size()},
        {"tokens_evaluated", chunk_count * chunk_size},
        {"scored_tokens", result.scored_tokens},
        {"nll_sum", result.nll_sum},
        {"mean_nll", result.mean_nll()},
        {"perplexity", result.perplexity()},
        {"chunks", per_chunk},
    };
    KITE_RETURN_IF_ERROR(write_file(flags.output_json, record.dump(1) + "\n"));
  }
  return Status::ok();
}

struct MmluFlags {
  std::string engine_dir;
  std::string data_dir;
  std::string subjects;  // comma-separated; empty: all
  MmluOptions options;
  std::string output_json;
};

Status run_mmlu(MmluFlags flags) {
  if (flags.engine_dir.empty()) return invalid_argument("--engine_dir is required");
  if (flags.data_dir.empty()) return invalid_argument("--data_dir is required (the MMLU folder)");
  for (size_t begin = 0; begin < flags.subjects.size();) {
    const size_t end = std::min(flags.subjects.find(',', begin), flags.subjects.size());
    if (end > begin) flags.options.subjects.push_back(flags.subjects.substr(begin, end - begin));
    begin = end + 1;
  }
  KITE_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::load(flags.engine_dir));
  std::optional<Progress> progress;  // the question count is known after the first step
  KITE_ASSIGN_OR_RETURN(
      const MmluResult result,
      evaluate_mmlu(*engine, flags.data_dir, flags.options, [&](int64_t done, int64_t total) {
        if (!progress) progress.emplace("kite eval mmlu", total);
        progress->update(done, std::to_string(done) + " questions");
      }));
  if (progress) progress->finish();

  // mmlu.py's report: subjects, then subcategories and categories in order of appearance, then
  // the average over all questions.
  struct Tally {
    int64_t correct = 0, total = 0;
  };
  std::vector<std::pair<std::string, Tally>> subcategories, categories;
  auto add = [](std::vector<std::pair<std::string, Tally>>& tallies, std::string_view name,
                const MmluSubjectResult& subject) {
    if (name.empty()) return;
    auto found = std::find_if(tallies.begin(), tallies.end(),
                              [&](const auto& entry) { return entry.first == name; });
    if (found == tallies.end()) found = tallies.insert(tallies.end(), {std::string(name), {}});
    found->second.correct += subject.correct;
    found->second.total += subject.total;
  };
  for (const MmluSubjectResult& subject : result.subjects) {
    std::printf("Average accuracy %.3f - %s\n", subject.accuracy(), subject.subject.c_str());
    const MmluCategory category = mmlu_category(subject.subject);
    add(subcategories, category.subcategory, subject);
    add(categories, category.category, subject);
  }
  for (const auto* tallies : {&subcategories, &categories}) {
    for (const auto& [name, tally] : *tallies) {
      std::printf("Average accuracy %.3f - %s\n",
                  tally.total > 0 ? double(tally.correct) / double(tally.total) : 0.0,
                  name.c_str());
    }
  }
  std::printf("Average accuracy: %.3f (%lld of %lld questions, %lld-shot)\n", result.accuracy(),
              static_cast<long long>(result.correct()), static_cast<long long>(result.total()),
              static_cast<long long>(flags.options.shots));
  int64_t fewer_shots = 0;
  for (const MmluSubjectResult& subject : result.subjects) fewer_shots += subject.fewer_shots;
  if (fewer_shots > 0) {
    std::printf(
        "(%lld questions were asked with fewer shots: their prompts were longer than the "
        "engine's max_input_len)\n",
        static_cast<long long>(fewer_shots));
  }
  std::fflush(stdout);
  if (!flags.output_json.empty()) {
    nlohmann::ordered_json per_subject = nlohmann::ordered_json::array();
    for (const MmluSubjectResult& subject : result.subjects) {
      const MmluCategory category = mmlu_category(subject.subject);
      per_subject.push_back({{"subject", subject.subject},
                             {"subcategory", category.subcategory},
                             {"category", category.category},
                             {"correct", subject.correct},
                             {"total", subject.total},
                             {"accuracy", subject.accuracy()},
                             {"fewer_shots", subject.fewer_shots},
                             {"answers", subject.answers}});
    }
    const nlohmann::ordered_json record = {
        {"engine_dir", flags.engine_dir}, {"data_dir", flags.data_dir},
        {"split", flags.options.split},   {"shots", flags.options.shots},
        {"correct", result.correct()},    {"total", result.total()},
        {"accuracy", result.accuracy()},  {"subjects", per_subject}};
    KITE_RETURN_IF_ERROR(write_file(flags.output_json, record.dump(1) + "\n"));
  }
  return Status::ok();
}

struct SummarizeFlags {
  std::string engine_dir;
  std::string dataset;
  std::string input_key = "article";
  std::string output_key = "highlights";
  SummarizeOptions options;
  std::string output_json;
};

Status run_summarize(const SummarizeFlags& flags) {
  if (flags.engine_dir.empty()) return invalid_argument("--engine_dir is required");
  if (flags.dataset.empty()) return invalid_argument("--dataset is required");
  if (flags.options.max_examples < 0) {
    return invalid_argument("--max_examples must be positive (or 0 for the whole dataset)");
  }
  if (!path_exists(flags.dataset)) {
    return not_found("--dataset " + flags.dataset +
                     " does not exist: give a JSON Lines file of articles and summaries");
  }
  KITE_ASSIGN_OR_RETURN(
      const std::vector<SummarizationExample> examples,
      read_summarization_dataset(flags.dataset, flags.input_key, flags.output_key));
  KITE_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::load(flags.engine_dir));
  Progress progress("kite eval summarize", summarized_count(examples.size(), flags.options));
  KITE_ASSIGN_OR_RETURN(
      const SummarizeResult result,
      evaluate_summarization(*engine, examples, flags.options, [&](int64_t done, int64_t) {
        progress.update(done, std::to_string(done) + " articles");
      }));
  progress.finish();

  int64_t truncated = 0;
  for (const SummarizedExample& example : result.examples) truncated += example.truncated;
  // summarize.py's report: each F-measure in percent.
  std::printf("ROUGE F-measures (%%) over %zu articles (%lld prompts cut to --max_input_len):\n",
              result.examples.size(), static_cast<long long>(truncated));
  const std::pair<const char*, const RougeScore*> scores[] = {
      {"rouge1", &result.mean.rouge1},
      {"rouge2", &result.mean.rouge2},
      {"rougeL", &result.mean.rouge_l},
      {"rougeLsum", &result.mean.rouge_lsum}};
  for (const auto& [name, score] : scores)
    std::printf("  %s : %.4f\n", name, 100 * score->fmeasure);
  std::fflush(stdout);
  if (!flags.output_json.empty()) {
    auto to_json = [](const RougeScores& rouge) {
      auto one = [](const RougeScore& score) {
        return nlohmann::ordered_json{
            {"precision", score.precision}, {"recall", score.recall}, {"fmeasure", score.fmeasure}};
      };
      return nlohmann::ordered_json{{"rouge1", one(rouge.rouge1)},
                                    {"rouge2", one(rouge.rouge2)},
                                    {"rougeL", one(rouge.rouge_l)},
                                    {"rougeLsum", one(rouge.rouge_lsum)}};
    };
    nlohmann::ordered_json per_example = nlohmann::ordered_json::array();
    for (const SummarizedExample& example : result.examples) {
      per_example.push_back({{"prediction", example.prediction},
                             {"prompt_tokens", example.prompt_tokens},
                             {"truncated", example.truncated},
                             {"rouge", to_json(example.scores)}});
    }
    const nlohmann::ordered_json record = {{"engine_dir", flags.engine_dir},
                                           {"dataset", flags.dataset},
                                           {"max_input_len", flags.options.max_input_len},
                                           {"output_len", flags.options.output_len},
                                           {"articles", result.examples.size()},
                                           {"rouge", to_json(result.mean)},
                                           {"examples", per_example}};
    KITE_RETURN_IF_ERROR(write_file(flags.output_json, record.dump(1) + "\n"));
  }
  return Status::ok();
}

}  // namespace

Command add_eval_command(CLI::App& kite) {
  CLI::App* eval = kite.add_subcommand("eval", "Measure an engine's accuracy");
  eval->require_subcommand(0, 1);

  auto perplexity = std::make_shared<PerplexityFlags>();
  CLI::App* perplexity_app = eval->add_subcommand(
      "perplexity", "Perplexity over a text file, as llama.cpp's llama-perplexity defines it");
  perplexity_app->add_option("--engine_dir", perplexity->engine_dir, "Engine folder (kite build)");
  perplexity_app->add_option("--dataset", perplexity->dataset,
                             "Text file, e.g. wikitext-2-raw/wiki.test.raw");
  perplexity_app->add_option("--max_tokens", perplexity->options.max_tokens,
                             "Use only the first N tokens of the file (0, the default: all)");
  perplexity_app->add_option("--chunk_size", perplexity->options.chunk_size,
                             "Tokens per chunk; the second half of each is scored (512)");
  perplexity_app->add_option("--output_json", perplexity->output_json,
                             "Write the per-chunk NLL sums and the total here");

  auto mmlu = std::make_shared<MmluFlags>();
  CLI::App* mmlu_app = eval->add_subcommand(
      "mmlu", "MMLU accuracy, k-shot, per subject, category and overall (as mmlu.py)");
  mmlu_app->add_option("--engine_dir", mmlu->engine_dir, "Engine folder (kite build)");
  mmlu_app->add_option("--data_dir", mmlu->data_dir,
                       "The MMLU folder, holding dev/, val/ and test/ CSV files");
  mmlu_app->add_option("--ntrain", mmlu->options.shots,
                       "Solved dev questions before each question (5)");
  mmlu_app->add_option("--split", mmlu->options.split, "Questions to ask: test or val (test)");
  mmlu_app->add_option("--subjects", mmlu->subjects,
                       "Comma-separated subjects, e.g. anatomy,virology (default: all)");
  mmlu_app->add_option("--max_questions", mmlu->options.max_questions,
                       "Ask at most the first N questions of each subject (0, the default: all)");
  mmlu_app->add_option("--output_json", mmlu->output_json,
                       "Write per-subject results and every answer here");

  auto summarize = std::make_shared<SummarizeFlags>();
  CLI::App* summarize_app = eval->add_subcommand(
      "summarize", "ROUGE of greedy summaries (\"<article> TL;DR:\"), as summarize.py measures");
  summarize_app->add_option("--engine_dir", summarize->engine_dir, "Engine folder (kite build)");
  summarize_app->add_option("--dataset", summarize->dataset,
                            "JSON Lines (or a JSON array) of articles and reference summaries, "
                            "e.g. CNN/DailyMail's test split");
  summarize_app->add_option("--dataset_input_key", summarize->input_key,
                            "The field holding the article (article)");
  summarize_app->add_option("--dataset_output_key", summarize->output_key,
                            "The field holding the reference summary (highlights)");
  summarize_app->add_option("--max_input_len", summarize->options.max_input_len,
                            "Prompt tokens kept at most, the rest cut off (923)");
  summarize_app->add_option("--output_len", summarize->options.output_len,
                            "Summary tokens generated at most (100)");
  summarize_app->add_option("--batch_size", summarize->options.batch_size,
                            "Articles a generation (0, the default: the engine's max_batch_size)");
  summarize_app->add_option("--max_examples", summarize->options.max_examples,
                            "Summarize only the first N articles (0, the default: all)");
  summarize_app->add_option("--output_json", summarize->output_json,
                            "Write every summary and its scores here");

  return Command{
      eval, [perplexity, perplexity_app, mmlu, mmlu_app, summarize, summarize_app]() -> Status {
        if (perplexity_app->parsed()) return run_perplexity(*perplexity);
        if (mmlu_app->parsed()) return run_mmlu(*mmlu);
        if (summarize_app->parsed()) return run_summarize(*summarize);
        return invalid_argument(
            "name an evaluation: kite eval perplexity, kite eval mmlu or kite eval summarize");
      }};
}

}  // namespace kite::tools
