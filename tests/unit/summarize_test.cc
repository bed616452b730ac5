// kite eval summarize (runtime/summarize.h, runtime/rouge.h): ROUGE against Google's rouge_score,
// summarize.py's prompt, the dataset files, and SmolLM2-135M summarizing a few articles, batched as
// one at a time.
#include "runtime/summarize.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/file.h"
#include "runtime/rouge.h"
#include "test_util.h"

namespace kite {
namespace {

void expect_score(const RougeScore& score, double precision, double recall, double fmeasure,
                  const std::string& what) {
  EXPECT_NEAR(score.precision, precision, 1e-12) << what;
  EXPECT_NEAR(score.recall, recall, 1e-12) << what;
  EXPECT_NEAR(score.fmeasure, fmeasure, 1e-12) << what;
}

// The expected values are rouge_score 0.1.2's (RougeScorer(["rouge1", "rouge2", "rougeL",
// "rougeLsum"], use_stemmer=False).score(reference, prediction)), printed with repr() by
// scripts/golden/rouge_reference.py.
TEST(Rouge, MatchesRougeScore) {
  struct Case {
    const char* prediction;
    const char* reference;
    double expected[4][3];  // rouge1, rouge2, rougeL, rougeLsum: precision, recall, F
  };
  const Case cases[] = {
      {"The cat sat on the mat.\nIt was happy.",
       "the cat was on the mat\nthe cat was happy",
       {{0.7777777777777778, 0.7, 0.7368421052631577},
        {0.5, 0.4444444444444444, 0.47058823529411764},
        {0.7777777777777778, 0.7, 0.7368421052631577},
        {0.7777777777777778, 0.7, 0.7368421052631577}}},
      // Punctuation, digits, several sentences: ROUGE-Lsum's union of LCSs differs from ROUGE-L.
      {"Police say 3 men were arrested in Paris on Monday.\nThe men, aged 20-25, face charges.",
       "Three men arrested in Paris, police say .\nThey are aged between 20 and 25 .\nCharges are "
       "expected on Monday .",
       {{0.7058823529411765, 0.631578947368421, 0.6666666666666667},
        {0.25, 0.2222222222222222, 0.23529411764705882},
        {0.47058823529411764, 0.42105263157894735, 0.4444444444444444},
        {0.5882352941176471, 0.5263157894736842, 0.5555555555555555}}},
      // Repeated tokens (counted once per occurrence in both) and an empty line.
      {"a b a c a b\n\nc a b",
       "a b c\na a b b\nc",
       {{0.8888888888888888, 1.0, 0.9411764705882353},
        {0.5, 0.5714285714285714, 0.5333333333333333},
        {0.6666666666666666, 0.75, 0.7058823529411765},
        {0.7777777777777778, 0.875, 0.823529411764706}}},
      {"", "Anything at all.", {}},
      {"No overlap here", "Something else entirely", {}},
      // Characters outside a-z and 0-9 (here UTF-8 letters) separate tokens.
      {"Caf\u00e9 d\u00e9j\u00e0 vu, 100%!",
       "cafe deja vu 100",
       {{0.4, 0.5, 0.4444444444444445},
        {0.25, 0.3333333333333333, 0.28571428571428575},
        {0.4, 0.5, 0.4444444444444445},
        {0.4, 0.5, 0.4444444444444445}}},
  };
  for (const Case& c : cases) {
    const RougeScores scores = rouge_scores(c.prediction, c.reference);
    const std::string what = c.prediction;
    expect_score(scores.rouge1, c.expected[0][0], c.expected[0][1], c.expected[0][2],
                 "rouge1 " + what);
    expect_score(scores.rouge2, c.expected[1][0], c.expected[1][1], c.expected[1][2],
                 "rouge2 " + what);
    expect_score(scores.rouge_l, c.expected[2][0], c.expected[2][1], c.expected[2][2],
                 "rougeL " + what);
    expect_score(scores.rouge_lsum, c.expected[3][0], c.expected[3][1], c.expected[3][2],
                 "rougeLsum " + what);
  }
  EXPECT_EQ(rouge_tokens("It's 9AM -- Dr. O'Neil!"),
            (std::vector<std::string>{"it", "s", "9am", "dr", "o", "neil"}));
}

TEST(SummarizePrompt, IsSummarizePysText) {
  EXPECT_EQ(summarization_prompt("  The council met on Monday.\n"),
            "The council met on Monday.\n TL;DR:");
  EXPECT_EQ(summarization_prompt("They do n't know and ca n't say"),
            "They don't know and can't say TL;DR:");
  EXPECT_EQ(summarization_prompt(""), "TL;DR:");
}

TEST(SummarizeData, ReadsJsonLinesAndArrays) {
  const std::string lines = test::temp_dir() + "/summaries.jsonl";
  ASSERT_TRUE(write_file(lines,
                         "{\"article\": \"A long text.\", \"highlights\": \"Short.\", \"id\": 1}\n"
                         "\n"
                         "{\"highlights\": \"Second.\", \"article\": \"Another text.\"}\n")
                  .is_ok());
  const auto examples = read_summarization_dataset(lines);
  ASSERT_TRUE(examples.is_ok()) << examples.status().message();
  ASSERT_EQ(examples->size(), 2u);
  EXPECT_EQ((*examples)[0].article, "A long text.");
  EXPECT_EQ((*examples)[0].summary, "Short.");
  EXPECT_EQ((*examples)[1].article, "Another text.");

  const std::string array = test::temp_dir() + "/summaries.json";
  ASSERT_TRUE(write_file(array, " [{\"document\": \"Text.\", \"summary\": \"Sum.\"}]").is_ok());
  const auto renamed = read_summarization_dataset(array, "document", "summary");
  ASSERT_TRUE(renamed.is_ok()) << renamed.status().message();
  ASSERT_EQ(renamed->size(), 1u);
  EXPECT_EQ((*renamed)[0].summary, "Sum.");
}

TEST(SummarizeData, RefusesMalformedFiles) {
  auto refused = [](const std::string& name, const std::string& text, StatusCode code,
                    const std::string& says) {
    const std::string path = test::temp_dir() + "/" + name;
    ASSERT_TRUE(write_file(path, text).is_ok());
    const auto examples = read_summarization_dataset(path);
    ASSERT_FALSE(examples.is_ok()) << name;
    EXPECT_EQ(examples.status().code(), code) << name;
    EXPECT_NE(examples.status().message().find(says), std::string::npos)
        << name << ": " << examples.status().message();
  };
  refused("bad_line.jsonl", "{\"article\": \"a\", \"highlights\": \"b\"}\n{\"article\": \n",
          StatusCode::kCorrupt, "line 2 is not valid JSON");
  refused("no_key.jsonl", "{\"article\": \"a\"}\n", StatusCode::kCorrupt,
          "line 1 has no string \"highlights\"");
  refused("not_object.json", "[1]", StatusCode::kCorrupt, "element 0 is not a JSON object");
  refused("bad_array.json", "[{\"article\": ", StatusCode::kCorrupt, "not a JSON array");
  refused("empty.jsonl", "\n\n", StatusCode::kInvalidArgument, "holds no examples");
  EXPECT_EQ(read_summarization_dataset(test::temp_dir() + "/nowhere.jsonl").status().code(),
            StatusCode::kNotFound);
}

// ---- SmolLM2-135M-Instruct (bf16, CPU) ----
class SummarizeSmolLM2 : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (test::demo_model().empty()) return;
    const std::string checkpoint = test::convert_demo_model("bfloat16");
    if (checkpoint.empty()) return;
    engine_ = new std::string(
        test::build_engine(checkpoint, "--max_batch_size 2 --max_input_len 256 --max_seq_len 320"));
  }
  void SetUp() override {
    if (!engine_) GTEST_SKIP() << "the demo model is missing";
    ASSERT_FALSE(engine_->empty());
  }
  static std::string* engine_;
};
std::string* SummarizeSmolLM2::engine_ = nullptr;

const std::vector<SummarizationExample>& articles() {
  static const std::vector<SummarizationExample> examples = {
      {"The city council voted on Monday to build a new bridge across the river. The bridge will "
       "cost 40 million dollars and should open in three years. Residents have asked for a second "
       "crossing for a decade, since the old bridge is often closed for repairs.",
       "Council approves new 40 million dollar bridge.\nIt should open in three years."},
      {"A local bakery won the national bread contest this weekend. Its sourdough loaf beat 200 "
       "other entries. The owner said the secret is a starter that is 30 years old.",
       "Local bakery wins national bread contest with its sourdough.\nThe starter is 30 years "
       "old."},
      {"Heavy snow closed schools across the region on Tuesday. Roads were icy and several "
       "flights were cancelled at the airport. Forecasters expect more snow later this week.",
       "Snow closes schools and cancels flights.\nMore snow is expected."},
  };
  return examples;
}

// Two articles a generation give the summaries of one at a time (greedy), each scored with
// rouge_scores, the mean their average; a prompt cut to --max_input_len is marked.
TEST_F(SummarizeSmolLM2, BatchedAsOneAtATime) {
  auto engine = Engine::load(*engine_);
  ASSERT_TRUE(engine.is_ok()) << engine.status().message();
  SummarizeOptions options;
  options.output_len = 24;
  options.batch_size = 2;
  const auto batched = evaluate_summarization(**engine, articles(), options);
  ASSERT_TRUE(batched.is_ok()) << batched.status().message();
  options.batch_size = 1;
  int64_t last_done = 0;
  const auto single =
      evaluate_summarization(**engine, articles(), options, [&](int64_t done, int64_t total) {
        EXPECT_EQ(total, 3);
        EXPECT_EQ(done, last_done + 1);
        last_done = done;
      });
  ASSERT_TRUE(single.is_ok()) << single.status().message();
  EXPECT_EQ(last_done, 3);
  ASSERT_EQ(batched->examples.size(), 3u);
  double rouge1 = 0;
  for (size_t i = 0; i < 3; ++i) {
    const SummarizedExample& example = batched->examples[i];
    EXPECT_EQ(example.prediction, single->examples[i].prediction) << i;
    EXPECT_FALSE(example.prediction.empty()) << i;
    EXPECT_FALSE(example.truncated);
    EXPECT_EQ(
        example.prompt_tokens,
        int64_t((*engine)->tokenizer().encode(summarization_prompt(articles()[i].article)).size()));
    const RougeScores scores = rouge_scores(example.prediction, articles()[i].summary);
    EXPECT_EQ(example.scores.rouge_lsum.fmeasure, scores.rouge_lsum.fmeasure) << i;
    rouge1 += scores.rouge1.fmeasure;
  }
  EXPECT_NEAR(batched->mean.rouge1.fmeasure, rouge1 / 3, 1e-12);
  // A summary of these news items shares words with the reference.
  EXPECT_GT(batched->mean.rouge1.fmeasure, 0.1);

  options.max_input_len = 20;
  options.max_examples = 2;
  const auto cut = evaluate_summarization(**engine, articles(), options);
  ASSERT_TRUE(cut.is_ok()) << cut.status().message();
  ASSERT_EQ(cut->examples.size(), 2u);
  EXPECT_TRUE(cut->examples[0].truncated);
  EXPECT_EQ(cut->examples[0].prompt_tokens, 20);
}

TEST_F(SummarizeSmolLM2, CommandPrintsScoresAndRefusesBadInput) {
  const std::string dataset = test::temp_dir() + "/summarize_cli.jsonl";
  std::string lines;
  for (const SummarizationExample& example : articles()) {
    lines +=
        nlohmann::json{{"article", example.article}, {"highlights", example.summary}}.dump() + "\n";
  }
  ASSERT_TRUE(write_file(dataset, lines).is_ok());
  const std::string json = test::temp_dir() + "/summarize_cli.json";
  const test::CommandResult run =
      test::run_kite("eval summarize --engine_dir " + *engine_ + " --dataset " + dataset +
                     " --output_len 16 --max_examples 2 --output_json " + json);
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("over 2 articles"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("  rougeLsum : "), std::string::npos) << run.output;
  const auto record = nlohmann::json::parse(read_file(json).value());
  EXPECT_EQ(record.at("articles"), 2);
  EXPECT_EQ(record.at("examples").size(), 2u);

  const test::CommandResult missing = test::run_kite("eval summarize --engine_dir " + *engine_ +
                                                     " --dataset " + dataset + ".missing");
  EXPECT_EQ(missing.exit_code, 1) << missing.output;
  EXPECT_NE(missing.output.find("does not exist"), std::string::npos) << missing.output;
  const test::CommandResult too_long = test::run_kite(
      "eval summarize --engine_dir " + *engine_ + " --dataset " + dataset + " --output_len 320");
  EXPECT_EQ(too_long.exit_code, 2) << too_long.output;
  EXPECT_NE(too_long.output.find("--output_len 320 must be between 1 and"), std::string::npos)
      << too_long.output;
}

}  // namespace
}  // namespace kite
