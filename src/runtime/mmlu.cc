// MMLU prompts, categories and scoring (mmlu.h).
#include "runtime/mmlu.h"

#include <algorithm>
#include <filesystem>
#include <utility>

#include "core/csv.h"
#include "core/file.h"

namespace kite {
namespace {

constexpr std::string_view kLetters = "ABCD";

// The paper's subject -> subcategory table (hendrycks/test categories.py).
constexpr std::pair<std::string_view, std::string_view> kSubcategories[] = {
    {"abstract_algebra", "math"},
    {"anatomy", "health"},
    {"astronomy", "physics"},
    {"business_ethics", "business"},
    {"clinical_knowledge", "health"},
    {"college_biology", "biology"},
    {"college_chemistry", "chemistry"},
    {"college_computer_science", "computer science"},
    {"college_mathematics", "math"},
    {"college_medicine", "health"},
    {"college_physics", "physics"},
    {"computer_security", "computer science"},
    {"conceptual_physics", "physics"},
    {"econometrics", "economics"},
    {"electrical_engineering", "engineering"},
    {"elementary_mathematics", "math"},
    {"formal_logic", "philosophy"},
    {"global_facts", "other"},
    {"high_school_biology", "biology"},
    {"high_school_chemistry", "chemistry"},
    {"high_school_computer_science", "computer science"},
    {"high_school_european_history", "history"},
    {"high_school_geography", "geography"},
    {"high_school_government_and_politics", "politics"},
    {"high_school_macroeconomics", "economics"},
    {"high_school_mathematics", "math"},
    {"high_school_microeconomics", "economics"},
    {"high_school_physics", "physics"},
    {"high_school_psychology", "psychology"},
    {"high_school_statistics", "math"},
    {"high_school_us_history", "history"},
    {"high_school_world_history", "history"},
    {"human_aging", "health"},
    {"human_sexuality", "culture"},
    {"international_law", "law"},
    {"jurisprudence", "law"},
    {"logical_fallacies", "philosophy"},
    {"machine_learning", "computer science"},
    {"management", "business"},
    {"marketing", "business"},
    {"medical_genetics", "health"},
    {"miscellaneous", "other"},
    {"moral_disputes", "philosophy"},
    {"moral_scenarios", "philosophy"},
    {"nutrition", "health"},
    {"philosophy", "philosophy"},
    {"prehistory", "history"},
    {"professional_accounting", "other"},
    {"professional_law", "law"},
    {"professional_medicine", "health"},
    {"professional_psychology", "psychology"},
    {"public_relations", "politics"},
    {"security_studies", "politics"},
    {"sociology", "culture"},
    {"us_foreign_policy", "politics"},
    {"virology", "health"},
    {"world_religions", "philosophy"},
};

// Subcategory -> category.
constexpr std::pair<std::string_view, std::string_view> kCategories[] = {
    {"physics", "STEM"},
    {"chemistry", "STEM"},
    {"biology", "STEM"},
    {"computer science", "STEM"},
    {"math", "STEM"},
    {"engineering", "STEM"},
    {"history", "humanities"},
    {"philosophy", "humanities"},
    {"law", "humanities"},
    {"politics", "social sciences"},
    {"culture", "social sciences"},
    {"economics", "social sciences"},
    {"geography", "social sciences"},
    {"psychology", "social sciences"},
    {"other", "other (business, health, misc.)"},
    {"business", "other (business, health, misc.)"},
    {"health", "other (business, health, misc.)"},
};

// A question to ask: its prompt's tokens, and which subject and question it is.
struct Prompt {
  std::vector<int32_t> tokens;
  size_t subject = 0;
  char answer = 'A';
};

}  // namespace

Result<std::vector<MmluQuestion>> read_mmlu_questions(const std::string& path) {
  KITE_ASSIGN_OR_RETURN(const std::vector<CsvRow> rows, read_csv_file(path));
  std::vector<MmluQuestion> questions;
  for (size_t r = 0; r < rows.size(); ++r) {
    const CsvRow& row = rows[r];
    if (row.empty()) continue;  // a blank line
    const bool letter =
        row.size() == 6 && row[5].size() == 1 && kLetters.find(row[5][0]) != std::string_view::npos;
    if (!letter) {
      return corrupt(path + " row " + std::to_string(r + 1) +
                     ": expected 6 fields (question, A, B, C, D, answer letter A-D)");
    }
    questions.push_back(MmluQuestion{row[0], {row[1], row[2], row[3], row[4]}, row[5][0]});
  }
  return questions;
}

Result<std::vector<std::string>> mmlu_subjects(const std::string& data_dir,
                                               const std::string& split) {
  const std::filesystem::path folder = std::filesystem::path(data_dir) / split;
  std::error_code error;
  if (!std::filesystem::is_directory(folder, error)) {
    return not_found(folder.string() + " is not a folder: give --data_dir the MMLU folder (with " +
                     "dev/, val/ and test/)");
  }
  const std::string suffix = "_" + split + ".csv";
  std::vector<std::string> subjects;
  for (const auto& entry : std::filesystem::directory_iterator(folder, error)) {
    const std::string name = entry.path().filename().string();
    if (name.size() > suffix.size() && name.ends_with(suffix)) {
      subjects.push_back(name.substr(0, name.size() - suffix.size()));
    }
  }
  if (error) return not_found("cannot list " + folder.string() + ": " + error.message());
  if (subjects.empty()) return not_found("no *" + suffix + " files in " + folder.string());
  std::sort(subjects.begin(), subjects.end());
  return subjects;
}

std::string mmlu_example(const MmluQuestion& question, bool with_answer) {
  std::string text = question.question;
  for (size_t i = 0; i < 4; ++i) {
    text.append("\n").append(1, kLetters[i]).append(". ").append(question.choices[i]);
  }
  text += "\nAnswer:";
  if (with_answer) text.append(" ").append(1, question.answer).append("\n\n");
  return text;
}

std::string mmlu_prompt(std::string_view subject, std::span<const MmluQuestion> shots,
                        const MmluQuestion& question) {
  // mmlu.py's format_subject puts a space before every word, after the header's own space.
  std::string words;
  size_t begin = 0;
  while (begin <= subject.size()) {
    const size_t end = std::min(subject.find('_', begin), subject.size());
    words.append(" ").append(subject.substr(begin, end - begin));
    begin = end + 1;
  }
  std::string prompt = "The following are multiple choice questions (with answers) about ";
  prompt.append(words).append(".\n\n");
  for (const MmluQuestion& shot : shots) prompt += mmlu_example(shot, true);
  return prompt + mmlu_example(question, false);
}

MmluCategory mmlu_category(std::string_view subject) {
  for (const auto& [name, subcategory] : kSubcategories) {
    if (name != subject) continue;
    for (const auto& [sub, category] : kCategories) {
      if (sub == subcategory) return {subcategory, category};
    }
  }
  return {};
}

Result<std::array<int32_t, 4>> mmlu_answer_tokens(const Tokenizer& tokenizer) {
  const std::vector<int32_t> before = tokenizer.encode("Answer:", false);
  std::array<int32_t, 4> tokens{};
  for (size_t i = 0; i < 4; ++i) {
    const std::vector<int32_t> with =
        tokenizer.encode(std::string("Answer: ") + kLetters[i], false);
    if (with.size() != before.size() + 1 ||
        !std::equal(before.begin(), before.end(), with.begin())) {
      return unsupported(std::string("this tokenizer does not make \" ") + kLetters[i] +
                         "\" one token after \"Answer:\"; MMLU scores the letters' tokens");
    }
    tokens[i] = with.back();
  }
  return tokens;
}

int64_t MmluResult::correct() const {
  int64_t sum = 0;
  for (const MmluSubjectResult& subject : subjects) sum += subject.correct;
  return sum;
}

int64_t MmluResult::total() const {
  int64_t sum = 0;
  for (const MmluSubjectResult& subject : subjects) sum += subject.total;
  return sum;
}

double MmluResult::accuracy() const {
  return total() > 0 ? double(correct()) / double(total()) : 0.0;
}

Result<MmluResult> evaluate_mmlu(Engine& engine, const std::string& data_dir,
                                 const MmluOptions& options, const MmluProgress& on_step) {
  if (options.shots < 0) return invalid_argument("--ntrain must be 0 or more");
  if (options.max_questions < 0) return invalid_argument("--max_questions must be 0 or more");
  std::vector<std::string> subjects = options.subjects;
  if (subjects.empty()) {
    KITE_ASSIGN_OR_RETURN(subjects, mmlu_subjects(data_dir, options.split));
  }
  const Tokenizer& tokenizer = engine.tokenizer();
  using LetterTokens = std::array<int32_t, 4>;
  KITE_ASSIGN_OR_RETURN(const LetterTokens letter_tokens, mmlu_answer_tokens(tokenizer));
  const BuildLimits& limits = engine.config().limits;
  const int64_t longest = std::min(limits.max_input_len, limits.max_num_tokens);

  // Every prompt first: a missing file or a question too long for the engine stops the run
  // before any forward step.
  MmluResult result;
  std::vector<Prompt> prompts;
  for (const std::string& subject : subjects) {
    const std::string dev_path = data_dir + "/dev/" + subject + "_dev.csv";
    const std::string path =
        data_dir + "/" + options.split + "/" + subject + "_" + options.split + ".csv";
    if (!path_exists(path)) {
      return not_found(path + " does not exist: no subject \"" + subject + "\" in the " +
                       options.split + " split of " + data_dir);
    }
    KITE_ASSIGN_OR_RETURN(const std::vector<MmluQuestion> dev, read_mmlu_questions(dev_path));
    KITE_ASSIGN_OR_RETURN(std::vector<MmluQuestion> questions, read_mmlu_questions(path));
    if (options.max_questions > 0 && int64_t(questions.size()) > options.max_questions) {
      questions.resize(size_t(options.max_questions));
    }
    MmluSubjectResult& scores = result.subjects.emplace_back();
    scores.subject = subject;
    const int64_t most_shots = std::min<int64_t>(options.shots, int64_t(dev.size()));
    for (size_t q = 0; q < questions.size(); ++q) {
      int64_t shots = most_shots;
      std::vector<int32_t> tokens;
      for (;; --shots) {
        tokens = tokenizer.encode(
            mmlu_prompt(subject, std::span(dev).first(size_t(shots)), questions[q]));
        if (int64_t(tokens.size()) <= longest || shots == 0) break;
      }
      if (int64_t(tokens.size()) > longest) {
        return out_of_range(subject + " question " + std::to_string(q + 1) + " takes " +
                            std::to_string(tokens.size()) +
                            " tokens even without shots, more than the engine's max_input_len / "
                            "max_num_tokens (" +
                            std::to_string(longest) + "): build it with larger ones");
      }
      if (shots < most_shots) ++scores.fewer_shots;
      prompts.push_back(Prompt{std::move(tokens), result.subjects.size() - 1, questions[q].answer});
    }
  }

  // Forward steps of as many prompts as fit; the logits after each prompt's last token.
  KvCache& cache = engine.kv_cache();
  const int64_t block_size = cache.view().block_size;
  const int64_t vocab = engine.config().model.vocab_size;
  const int64_t total = int64_t(prompts.size());
  for (int64_t first = 0; first < total;) {
    StepBlocks blocks(cache);
    StepInput step;
    step.query_start.push_back(0);
    int64_t widest = 1;
    std::vector<std::vector<int32_t>> tables;
    int64_t next = first;
    for (; next < total && next - first < limits.max_batch_size; ++next) {
      const std::vector<int32_t>& tokens = prompts[size_t(next)].tokens;
      const int64_t needed = (int64_t(tokens.size()) + block_size - 1) / block_size;
      if (next > first && (int64_t(step.token_ids.size() + tokens.size()) > limits.max_num_tokens ||
                           needed > cache.free_blocks())) {
        break;
      }
      KITE_ASSIGN_OR_RETURN(std::vector<int32_t> table, blocks.allocate(needed));
      append_sequence_start(step, tokens, table, block_size);
      step.logit_rows.push_back(int32_t(step.token_ids.size()) - 1);
      step.query_start.push_back(int32_t(step.token_ids.size()));
      step.context_length.push_back(int32_t(tokens.size()));
      widest = std::max(widest, needed);
      tables.push_back(std::move(table));
    }
    step.max_blocks_per_sequence = widest;
    for (std::vector<int32_t>& table : tables) {
      table.resize(size_t(widest), 0);  // rows of the block table are padded to one width
      step.block_table.insert(step.block_table.end(), table.begin(), table.end());
    }
    KITE_ASSIGN_OR_RETURN(const std::vector<float> logits,
                          engine.model().forward(step, cache.view()));
    for (int64_t p = first; p < next; ++p) {
      const float* row = logits.data() + (p - first) * vocab;
      size_t best = 0;  // the first of equal scores, as numpy's argmax
      for (size_t i = 1; i < 4; ++i) {
        if (row[letter_tokens[i]] > row[letter_tokens[best]]) best = i;
      }
      const Prompt& prompt = prompts[size_t(p)];
      MmluSubjectResult& scores = result.subjects[prompt.subject];
      scores.answers += kLetters[best];
      scores.correct += kLetters[best] == prompt.answer ? 1 : 0;
      ++scores.total;
    }
    first = next;
    if (on_step) on_step(first, total);
  }
  return result;
}

}  // namespace kite
