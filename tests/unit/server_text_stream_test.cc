// Incremental detokenization for streaming responses (server/text_stream.h): pieces are whole
// UTF-8 characters and add up to the text decoded at once, for byte-level and byte-fallback
// (SentencePiece-like) tokenizers; stop texts cut the output even when they span tokens, with the
// text that might start one held back and released once it cannot.
#include "server/text_stream.h"

#include <gtest/gtest.h>

#include "test_util.h"
#include "tokenizer/unicode.h"

namespace kite::server {
namespace {

Tokenizer load(const std::string& path) {
  auto tokenizer = Tokenizer::from_file(test::source_dir() + "/tests/fixtures/" + path);
  EXPECT_TRUE(tokenizer.is_ok()) << tokenizer.status().message();
  return std::move(*tokenizer);
}

struct Streamed {
  std::vector<std::string> pieces;
  std::string text;
  bool stopped = false;
};

Streamed stream_all(const Tokenizer& tokenizer, const std::vector<int32_t>& ids,
                    std::vector<std::string> stops = {}, bool include_stop = false) {
  TextStream stream(tokenizer, {.stop_texts = std::move(stops), .include_stop_text = include_stop});
  Streamed result;
  for (const int32_t id : ids) {
    result.pieces.push_back(stream.push(id));
    result.text += result.pieces.back();
  }
  result.pieces.push_back(stream.finish());
  result.text += result.pieces.back();
  result.stopped = stream.stopped();
  return result;
}

class TextStreamTest : public ::testing::TestWithParam<std::string> {};

TEST_P(TextStreamTest, PiecesAreWholeCharactersAndAddUpToTheDecodedText) {
  const Tokenizer tokenizer = load(GetParam());
  const std::string text = "Héllo wörld, 你好 😀 — e\u0301 done.  Two  spaces";
  const std::vector<int32_t> ids = tokenizer.encode(text, false);
  ASSERT_GT(ids.size(), 10u);
  const Streamed streamed = stream_all(tokenizer, ids);
  EXPECT_EQ(streamed.text, tokenizer.decode(ids));
  for (const std::string& piece : streamed.pieces) {
    EXPECT_TRUE(unicode::is_valid_utf8(piece)) << "piece splits a character";
  }
  EXPECT_FALSE(streamed.stopped);
}

TEST_P(TextStreamTest, StopTextSpanningTokensCutsTheOutput) {
  const Tokenizer tokenizer = load(GetParam());
  const std::string text = "one two three four five six";
  const std::vector<int32_t> ids = tokenizer.encode(text, false);
  const std::string full = tokenizer.decode(ids);
  for (const std::string stop : {"three f", "o t", "six", "e"}) {
    SCOPED_TRACE(stop);
    const Streamed cut = stream_all(tokenizer, ids, {stop});
    EXPECT_TRUE(cut.stopped);
    EXPECT_EQ(cut.text, full.substr(0, full.find(stop)));
    const Streamed kept = stream_all(tokenizer, ids, {stop}, true);
    EXPECT_EQ(kept.text, full.substr(0, full.find(stop) + stop.size()));
  }
  // The earliest of several stop texts wins, whatever their order.
  EXPECT_EQ(stream_all(tokenizer, ids, {"five", "two"}).text, full.substr(0, full.find("two")));
  // A stop text that never appears changes nothing, though its start ("fi") is held back a while.
  const Streamed absent = stream_all(tokenizer, ids, {"fix"});
  EXPECT_FALSE(absent.stopped);
  EXPECT_EQ(absent.text, full);
}

TEST_P(TextStreamTest, HoldsBackOnlyWhatCouldStartAStopText) {
  const Tokenizer tokenizer = load(GetParam());
  for (const std::string text : {"abc ab", "abc ab zzz"}) {
    SCOPED_TRACE(text);
    const std::vector<int32_t> ids = tokenizer.encode(text, false);
    const std::string full = tokenizer.decode(ids);
    TextStream stream(tokenizer, {.stop_texts = {"abx"}});
    std::string emitted;
    for (const int32_t id : ids) emitted += stream.push(id);
    EXPECT_TRUE(full.starts_with(emitted));
    if (text == "abc ab") {
      EXPECT_LE(emitted.size(), full.size() - 2);  // the final "ab" may still become "abx"
    } else {
      EXPECT_TRUE(emitted.starts_with("abc ab"));  // " z" settled it
    }
    emitted += stream.finish();
    EXPECT_EQ(emitted, full);
  }
}

TEST_P(TextStreamTest, IdsAfterTheStopAddNothing) {
  const Tokenizer tokenizer = load(GetParam());
  const std::vector<int32_t> ids = tokenizer.encode("stop here and more", false);
  TextStream stream(tokenizer, {.stop_texts = {"here"}});
  std::string emitted;
  for (const int32_t id : ids) emitted += stream.push(id);
  emitted += stream.finish();
  EXPECT_EQ(emitted, "stop ");
  EXPECT_TRUE(stream.stopped());
  EXPECT_EQ(stream.push(ids[0]), "");
}

TEST_P(TextStreamTest, CountsDecodedCharacters) {
  const Tokenizer tokenizer = load(GetParam());
  const std::vector<int32_t> ids = tokenizer.encode("añb 日本", false);
  TextStream stream(tokenizer, {});
  for (const int32_t id : ids) (void)stream.push(id);
  (void)stream.finish();
  EXPECT_EQ(stream.decoded_characters(), count_characters(tokenizer.decode(ids)));
}

// With the prompt as context, the output's text is what decoding prompt and output together gives
// after the prompt's text: a byte-fallback (SentencePiece) tokenizer keeps the first output
// token's leading space, which decoding the output alone strips. Stop texts still cut it.
TEST_P(TextStreamTest, PromptContextKeepsTheFirstTokensSpace) {
  const Tokenizer tokenizer = load(GetParam());
  const std::vector<int32_t> prompt = tokenizer.encode("Hello", false);
  const std::vector<int32_t> all = tokenizer.encode("Hello world again", false);
  ASSERT_GT(all.size(), prompt.size());
  const std::vector<int32_t> output(all.begin() + int64_t(prompt.size()), all.end());
  for (const bool stop : {false, true}) {
    TextStream stream(tokenizer, {.stop_texts = stop ? std::vector<std::string>{" again"}
                                                     : std::vector<std::string>{},
                                  .context = prompt});
    std::string emitted;
    for (const int32_t id : output) emitted += stream.push(id);
    emitted += stream.finish();
    EXPECT_EQ(emitted, stop ? " world" : " world again");
    EXPECT_EQ(stream.stopped(), stop);
  }
}

// min_tokens: a stop text in the first min_tokens tokens' text does not stop the output; one
// after them does.
TEST_P(TextStreamTest, StopTextsWaitForMinTokens) {
  const Tokenizer tokenizer = load(GetParam());
  const std::vector<int32_t> ids = tokenizer.encode("stop here and stop there at last", false);
  const std::string full = tokenizer.decode(ids);
  // The first "stop here"'s tokens (a prefix of the text's, both tokenizers split at spaces).
  const int64_t min_tokens = int64_t(tokenizer.encode("stop here", false).size());
  ASSERT_TRUE(std::equal(ids.begin(), ids.begin() + min_tokens,
                         tokenizer.encode("stop here", false).begin()));
  TextStream stream(tokenizer, {.stop_texts = {"stop"}, .min_tokens = min_tokens});
  std::string emitted;
  for (const int32_t id : ids) emitted += stream.push(id);
  emitted += stream.finish();
  EXPECT_TRUE(stream.stopped());
  EXPECT_EQ(emitted, full.substr(0, full.rfind("stop")));
  TextStream unlimited(tokenizer, {.stop_texts = {"stop"}});
  std::string first;
  for (const int32_t id : ids) first += unlimited.push(id);
  first += unlimited.finish();
  EXPECT_EQ(first, "");
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, TextStreamTest,
                         ::testing::Values("tiny_llama/tokenizer.json", "tokenizer/llama2.json"),
                         [](const ::testing::TestParamInfo<std::string>& test) {
                           return test.param.starts_with("tiny") ? std::string("byte_level")
                                                                 : std::string("byte_fallback");
                         });

TEST(TextStream, FindsTheEarliestStopTextTheLongerOnTies) {
  const std::vector<std::string> stops = {"cd", "b", "bc"};
  EXPECT_EQ(find_stop_text("abcd", stops).at, 1u);
  EXPECT_EQ(find_stop_text("abcd", stops).length, 2u);  // "bc" over "b"
  EXPECT_EQ(find_stop_text("xcd", stops).at, 1u);
  EXPECT_EQ(find_stop_text("xyz", stops).at, std::string::npos);
  EXPECT_EQ(find_stop_text("abc", {}).at, std::string::npos);
}

TEST(TextStream, CountsCharacters) {
  EXPECT_EQ(count_characters(""), 0);
  EXPECT_EQ(count_characters("abc"), 3);
  EXPECT_EQ(count_characters("é日😀"), 3);
}

}  // namespace
}  // namespace kite::server
