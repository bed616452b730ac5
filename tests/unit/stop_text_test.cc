// StopTextScanner: the same stop decisions as decoding the whole output after every id.
#include "runtime/stop_text.h"

#include <gtest/gtest.h>

#include <random>
#include <span>
#include <string>
#include <vector>

#include "runtime/sampling.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace kite {
namespace {

Tokenizer load_tokenizer(const std::string& name) {
  Result<Tokenizer> tokenizer =
      Tokenizer::from_file(test::source_dir() + "/tests/fixtures/tokenizer/" + name + ".json");
  EXPECT_TRUE(tokenizer.is_ok()) << tokenizer.status().message();
  KITE_CHECK(tokenizer.is_ok());
  return std::move(tokenizer).value();
}

// Generates `ids` one at a time as the generation loop does, checking after each id with the
// scanner and with the whole output decoded, until either says the output is finished.
void expect_same_decisions(const Tokenizer& tokenizer, const std::vector<int32_t>& ids,
                           const StopConditions& conditions, const std::string& what) {
  StopTextScanner scanner(tokenizer, conditions.stop_texts);
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::span<const int32_t> output(ids.data(), i + 1);
    scanner.push(ids[i]);
    const std::string whole = tokenizer.decode(output);
    ASSERT_EQ(scanner.text(), whole) << what << ", id " << i;
    const StopCheck expected = check_stop(conditions, output, whole);
    const StopCheck actual = check_stop(conditions, output, scanner.tail(), scanner.tail_offset());
    ASSERT_EQ(actual.reason, expected.reason) << what << ", id " << i;
    ASSERT_EQ(actual.text_length, expected.text_length) << what << ", id " << i;
    if (expected.reason != FinishReason::kNotFinished) return;
  }
}

TEST(StopTextScanner, FindsWhatDecodingEverythingFinds) {
  for (const std::string name : {"gpt2", "llama3", "llama2", "metaspace", "qwen2", "misc"}) {
    const Tokenizer tokenizer = load_tokenizer(name);
    std::mt19937 random(7);
    std::uniform_int_distribution<int32_t> any_id(0, tokenizer.vocab_size() - 1);
    // Real text (stop texts inside it, over token boundaries, with multi-byte characters) and
    // random ids (stop texts taken from their decoded text).
    const std::string sentence = "Hello world. User: héllo 你好 😀 again\nUser: done.";
    std::vector<std::vector<int32_t>> outputs = {tokenizer.encode(sentence)};
    for (int round = 0; round < 40; ++round) {
      std::vector<int32_t> ids(size_t(1 + random() % 40));
      for (int32_t& id : ids) id = any_id(random);
      outputs.push_back(ids);
    }
    for (size_t o = 0; o < outputs.size(); ++o) {
      const std::string text = tokenizer.decode(outputs[o]);
      std::vector<std::vector<std::string>> stop_sets = {{"User:"}, {"😀", "\n"}, {"zzzz"}};
      if (text.size() > 4) {
        const size_t at = size_t(random() % (text.size() - 3));
        stop_sets.push_back({text.substr(at, 1 + random() % 3), "never here"});
      }
      for (const std::vector<std::string>& stops : stop_sets) {
        StopConditions conditions;
        conditions.stop_texts = stops;
        conditions.max_output_len = int64_t(outputs[o].size()) + 1;
        expect_same_decisions(tokenizer, outputs[o], conditions,
                              name + " output " + std::to_string(o) + " stop " + stops[0]);
        if (HasFatalFailure()) return;
      }
    }
  }
}

TEST(StopTextScanner, TailIsShortAndCountsFromTheStart) {
  const Tokenizer tokenizer = load_tokenizer("gpt2");
  StopTextScanner scanner(tokenizer, {"abc"});
  const std::vector<int32_t> ids = tokenizer.encode(std::string(500, 'x') + " then abc");
  for (const int32_t id : ids) scanner.push(id);
  EXPECT_EQ(scanner.text(), tokenizer.decode(ids));
  EXPECT_LT(scanner.tail().size(), 64u);  // the last ids' text and two bytes before it
  EXPECT_EQ(scanner.tail_offset() + scanner.tail().size(), scanner.text().size());
  StopConditions conditions;
  conditions.stop_texts = {"abc"};
  const StopCheck check = check_stop(conditions, ids, scanner.tail(), scanner.tail_offset());
  EXPECT_EQ(check.reason, FinishReason::kStopWords);
  EXPECT_EQ(check.text_length, scanner.text().size() - 3);
}

}  // namespace
}  // namespace kite
