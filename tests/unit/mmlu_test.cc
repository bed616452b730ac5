// kite eval mmlu (runtime/mmlu.h): mmlu.py's prompt text, the data files and their categories,
// and SmolLM2-135M answering a few questions, batched as one at a time.
#include "runtime/mmlu.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/file.h"
#include "test_util.h"

namespace kite {
namespace {

TEST(MmluPrompt, IsMmluPysText) {
  const std::vector<MmluQuestion> shots = {
      {"What is 1 + 1?", {"1", "2", "3", "4"}, 'B'},
      {"Which is a vector?", {"mass", "speed", "velocity", "energy"}, 'C'},
  };
  const MmluQuestion question{"What is g, roughly?", {"9.8 m/s^2", "1 m/s", "0", "3e8 m/s"}, 'A'};
  // mmlu.py's format_subject gives " high school physics", after the header's own space.
  EXPECT_EQ(mmlu_prompt("high_school_physics", shots, question),
            "The following are multiple choice questions (with answers) about  high school "
            "physics.\n\n"
            "What is 1 + 1?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n"
            "Which is a vector?\nA. mass\nB. speed\nC. velocity\nD. energy\nAnswer: C\n\n"
            "What is g, roughly?\nA. 9.8 m/s^2\nB. 1 m/s\nC. 0\nD. 3e8 m/s\nAnswer:");
  EXPECT_EQ(mmlu_prompt("virology", {}, question),
            "The following are multiple choice questions (with answers) about  virology.\n\n"
            "What is g, roughly?\nA. 9.8 m/s^2\nB. 1 m/s\nC. 0\nD. 3e8 m/s\nAnswer:");
}

TEST(MmluData, EverySubjectHasItsCategoryAndFiveShots) {
  const std::string mmlu = test::data_dir() + "/mmlu";
  if (!path_exists(mmlu + "/test")) GTEST_SKIP() << "MMLU not found: " << mmlu;
  const std::vector<std::string> subjects = mmlu_subjects(mmlu, "test").value();
  ASSERT_EQ(subjects.size(), 57u);
  size_t questions = 0;
  int stem = 0;
  for (const std::string& subject : subjects) {
    SCOPED_TRACE(subject);
    const MmluCategory category = mmlu_category(subject);
    EXPECT_FALSE(category.subcategory.empty());
    EXPECT_FALSE(category.category.empty());
    stem += category.category == "STEM";
    EXPECT_EQ(read_mmlu_questions(mmlu + "/dev/" + subject + "_dev.csv")->size(), 5u);
    questions += read_mmlu_questions(mmlu + "/test/" + subject + "_test.csv")->size();
  }
  EXPECT_EQ(stem, 18);
  EXPECT_EQ(questions, 14'079u);  // the data's README
  EXPECT_EQ(mmlu_category("not_a_subject").category, "");
}

TEST(MmluData, RefusesMalformedFilesAndFolders) {
  const std::string path = test::temp_dir() + "/broken_test.csv";
  ASSERT_TRUE(write_file(path, "Q?,a,b,c,d,B\nQ2?,a,b,c,d,E\n").is_ok());
  const auto questions = read_mmlu_questions(path);
  ASSERT_FALSE(questions.is_ok());
  EXPECT_EQ(questions.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(questions.status().message().find("row 2"), std::string::npos);
  EXPECT_EQ(mmlu_subjects(test::temp_dir() + "/nowhere", "test").status().code(),
            StatusCode::kNotFound);
}

// ---- SmolLM2-135M-Instruct (bf16, CPU) ----
class MmluSmolLM2 : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (test::demo_model().empty() || !path_exists(test::data_dir() + "/mmlu/test")) return;
    const std::string checkpoint = test::convert_demo_model("bfloat16");
    if (checkpoint.empty()) return;
    // Steps of up to 3 questions (and at most 2048 tokens), and of one question.
    const std::string limits = " --max_input_len 1536 --max_seq_len 1600 --max_num_tokens 2048";
    engine_ = new std::string(test::build_engine(checkpoint, "--max_batch_size 3" + limits));
    single_engine_ = new std::string(test::build_engine(checkpoint, "--max_batch_size 1" + limits));
  }
  void SetUp() override {
    if (!engine_) GTEST_SKIP() << "the demo model or MMLU is missing";
    ASSERT_FALSE(engine_->empty() || single_engine_->empty());
  }
  static std::string* engine_;
  static std::string* single_engine_;
};
std::string* MmluSmolLM2::engine_ = nullptr;
std::string* MmluSmolLM2::single_engine_ = nullptr;

TEST_F(MmluSmolLM2, BatchedAnswersAreThoseOfOneQuestionAtATime) {
  const std::string mmlu = test::data_dir() + "/mmlu";
  std::unique_ptr<Engine> engine = Engine::load(*engine_).value();
  const std::array<int32_t, 4> letters = mmlu_answer_tokens(engine->tokenizer()).value();
  EXPECT_EQ(engine->tokenizer().decode(std::vector<int32_t>{letters[0]}), " A");
  MmluOptions options;
  options.subjects = {"high_school_geography", "marketing"};
  options.max_questions = 4;
  options.shots = 2;
  const MmluResult batched = evaluate_mmlu(*engine, mmlu, options).value();
  std::unique_ptr<Engine> single_engine = Engine::load(*single_engine_).value();
  const MmluResult single = evaluate_mmlu(*single_engine, mmlu, options).value();
  ASSERT_EQ(batched.subjects.size(), 2u);
  ASSERT_EQ(single.subjects.size(), 2u);
  for (size_t s = 0; s < 2; ++s) {
    const MmluSubjectResult& subject = batched.subjects[s];
    SCOPED_TRACE(subject.subject);
    ASSERT_EQ(subject.total, 4);
    EXPECT_EQ(subject.answers, single.subjects[s].answers);
    const std::vector<MmluQuestion> questions =
        read_mmlu_questions(mmlu + "/test/" + subject.subject + "_test.csv").value();
    int64_t correct = 0;
    for (size_t q = 0; q < 4; ++q) correct += subject.answers[q] == questions[q].answer;
    EXPECT_EQ(subject.correct, correct);
  }
  EXPECT_EQ(batched.total(), 8);
}

TEST_F(MmluSmolLM2, CommandPrintsLikeMmluPyAndWritesJson) {
  const std::string json_path = test::temp_dir() + "/mmlu.json";
  const test::CommandResult run = test::run_kite(
      "eval mmlu --engine_dir " + *engine_ + " --data_dir " + test::data_dir() +
      "/mmlu --subjects anatomy,astronomy --max_questions 2 --ntrain 1 --output_json " + json_path);
  ASSERT_EQ(run.exit_code, 0) << run.output;
  for (const char* line :
       {"Average accuracy ", " - anatomy\n", " - astronomy\n", " - health\n", " - physics\n",
        " - STEM\n", " - other (business, health, misc.)\n", "Average accuracy: "}) {
    EXPECT_NE(run.output.find(line), std::string::npos) << line << "\n" << run.output;
  }
  const auto record = nlohmann::json::parse(read_file(json_path).value());
  EXPECT_EQ(record.at("total"), 4);
  EXPECT_EQ(record.at("shots"), 1);
  EXPECT_EQ(record.at("subjects").size(), 2u);
  EXPECT_EQ(record.at("subjects")[0].at("answers").get<std::string>().size(), 2u);

  // Errors are one line, exit 1.
  const test::CommandResult unknown =
      test::run_kite("eval mmlu --engine_dir " + *engine_ + " --data_dir " + test::data_dir() +
                     "/mmlu --subjects astrology");
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_NE(unknown.output.find("no subject \"astrology\""), std::string::npos) << unknown.output;
  const test::CommandResult no_data =
      test::run_kite("eval mmlu --engine_dir " + *engine_ + " --data_dir " + test::temp_dir());
  EXPECT_EQ(no_data.exit_code, 1);
  EXPECT_NE(no_data.output.find("give --data_dir the MMLU folder"), std::string::npos)
      << no_data.output;
}

}  // namespace
}  // namespace kite
