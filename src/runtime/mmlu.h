// MMLU (Hendrycks et al., 2021) as TensorRT-LLM's examples/mmlu.py, after the original
// evaluate.py, asks it: each test question follows `shots` solved questions of the dev split of
// its subject under "The following are multiple choice questions (with answers) about ...", and
// the model's answer is the letter A-D whose token it rates highest after the final "Answer:".
// Accuracy per subject, per subcategory and category of the MMLU paper, and over all questions.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "runtime/engine.h"
#include "tokenizer/tokenizer.h"

namespace kite {

struct MmluQuestion {
  std::string question;
  std::array<std::string, 4> choices;
  char answer = 'A';  // 'A' to 'D'
};

// One subject's questions from a file such as "<data_dir>/test/anatomy_test.csv": rows of
// question, the four choices and the answer letter, no header; the fields as written.
Result<std::vector<MmluQuestion>> read_mmlu_questions(const std::string& path);

// The subjects of a split ("dev", "val", "test"), sorted: the names of its files
// "<data_dir>/<split>/<subject>_<split>.csv".
Result<std::vector<std::string>> mmlu_subjects(const std::string& data_dir,
                                               const std::string& split);

// mmlu.py's texts: a question with its lettered choices and "Answer:" (and " X\n\n" with the
// answer), and a whole prompt: the header naming the subject, the solved shots, the question.
std::string mmlu_example(const MmluQuestion& question, bool with_answer);
std::string mmlu_prompt(std::string_view subject, std::span<const MmluQuestion> shots,
                        const MmluQuestion& question);

// The subject's subcategory and category in the MMLU paper's grouping ("math", "STEM"); both
// empty for a subject outside its 57.
struct MmluCategory {
  std::string_view subcategory;
  std::string_view category;
};
MmluCategory mmlu_category(std::string_view subject);

// The ids of the answer letters as they follow "Answer:" (" A" ... " D"); an error when a letter
// is not one token there.
Result<std::array<int32_t, 4>> mmlu_answer_tokens(const Tokenizer& tokenizer);

struct MmluOptions {
  std::string split = "test";
  int64_t shots = 5;                  // mmlu.py's --ntrain
  int64_t max_questions = 0;          // per subject, the first ones; 0: all
  std::vector<std::string> subjects;  // empty: every subject of the split
};

struct MmluSubjectResult {
  std::string subject;
  int64_t correct = 0;
  int64_t total = 0;
  int64_t fewer_shots = 0;  // questions whose prompt had to drop shots to fit the engine
  std::string answers;      // the model's letter for each question
  double accuracy() const { return total > 0 ? double(correct) / double(total) : 0.0; }
};

struct MmluResult {
  std::vector<MmluSubjectResult> subjects;
  int64_t correct() const;
  int64_t total() const;
  double accuracy() const;  // over all questions (mmlu.py's weighted average)
};

// Called after each forward step with the questions answered so far and in all.
using MmluProgress = std::function<void(int64_t done, int64_t total)>;

// Asks every question of the chosen subjects, as many per forward step as the engine's limits
// and free KV cache blocks allow. A prompt longer than the engine's max_input_len (or
// max_num_tokens) drops shots, as mmlu.py does; one that does not fit without any is an error
// saying how to rebuild.
Result<MmluResult> evaluate_mmlu(Engine& engine, const std::string& data_dir,
                                 const MmluOptions& options, const MmluProgress& on_step = {});

}  // namespace kite
