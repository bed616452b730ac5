// Tests of the tokenizer against ids and texts produced by the Hugging Face tokenizers library
// (tests/fixtures/tokenizer/expected.json, from scripts/make_tokenizer_fixtures.py), plus the
// pieces that are Kite's own: UTF-8 handling, regex translation, streaming, errors.
#include "tokenizer/tokenizer.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <random>
#include <thread>

#include "core/file.h"
#include "test_util.h"
#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"

namespace kite {
namespace {

using nlohmann::json;

std::string fixture_dir() {
  return test::source_dir() + "/tests/fixtures/tokenizer";
}

const json& expected() {
  static const json data = [] {
    Result<std::string> text = read_file(fixture_dir() + "/expected.json");
    KITE_CHECK(text.is_ok());
    return json::parse(*text);
  }();
  return data;
}

Tokenizer load_fixture(const std::string& name) {
  Result<Tokenizer> tokenizer = Tokenizer::from_file(fixture_dir() + "/" + name + ".json");
  EXPECT_TRUE(tokenizer.is_ok()) << tokenizer.status().message();
  KITE_CHECK(tokenizer.is_ok());
  return std::move(tokenizer).value();
}

std::string from_hex(const std::string& hex) {
  std::string bytes;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    bytes.push_back(char(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return bytes;
}

// The fixtures scripts/make_tokenizer_fixtures.py writes (listed here, not read from
// expected.json, so that test discovery needs no files).
const std::vector<std::string> kFixtureNames = {
    "gpt2", "llama3", "qwen2", "digits", "llama2", "metaspace", "bert", "misc", "whitespace"};

TEST(FixtureListTest, MatchesExpectedJson) {
  std::vector<std::string> names;
  for (const auto& [name, value] : expected().items()) names.push_back(name);
  std::vector<std::string> listed = kFixtureNames;
  std::sort(listed.begin(), listed.end());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(listed, names);
}

uint64_t fnv1a64(const std::vector<int32_t>& ids) {
  uint64_t value = 0xCBF29CE484222325ull;
  for (const int32_t id : ids) {
    for (int shift = 0; shift < 32; shift += 8) {
      value = (value ^ ((uint32_t(id) >> shift) & 0xFF)) * 0x100000001B3ull;
    }
  }
  return value;
}

class FixtureTest : public ::testing::TestWithParam<std::string> {};

TEST_P(FixtureTest, EncodesAndDecodesLikeHuggingFace) {
  const Tokenizer tokenizer = load_fixture(GetParam());
  const json& fixture = expected()[GetParam()];
  EXPECT_EQ(tokenizer.vocab_size(), fixture["vocab_size"].get<int32_t>());
  for (const json& item : fixture["cases"]) {
    const std::string input = from_hex(item["hex"].get<std::string>());
    SCOPED_TRACE("input: " + item.value("text", "hex " + item["hex"].get<std::string>()));
    const std::vector<int32_t> ids = tokenizer.encode(input, /*add_special_tokens=*/true);
    EXPECT_EQ(ids, item["ids"].get<std::vector<int32_t>>());
    EXPECT_EQ(tokenizer.encode(input, /*add_special_tokens=*/false),
              item["ids_no_special"].get<std::vector<int32_t>>());
    EXPECT_EQ(tokenizer.decode(ids, /*skip_special_tokens=*/true),
              item["decoded"].get<std::string>());
    EXPECT_EQ(tokenizer.decode(ids, /*skip_special_tokens=*/false),
              item["decoded_with_special"].get<std::string>());
  }
  for (const json& item : fixture["decodes"]) {
    const auto ids = item["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tokenizer.decode(ids, true), item["text"].get<std::string>());
    EXPECT_EQ(tokenizer.decode(ids, false), item["text_with_special"].get<std::string>());
  }
}

TEST_P(FixtureTest, EncodesWikiTextLikeHuggingFace) {
  const std::string path = test::data_dir() + "/wikitext-2-raw/wiki.test.raw";
  if (!path_exists(path)) GTEST_SKIP() << "no evaluation data at " << path;
  const Tokenizer tokenizer = load_fixture(GetParam());
  const json& wiki = expected()[GetParam()]["wikitext"];
  const std::string text = *read_file(path);
  const std::vector<int32_t> ids = tokenizer.encode(text);
  EXPECT_EQ(ids.size(), wiki["ids"].get<size_t>());
  char hash[17];
  std::snprintf(hash, sizeof(hash), "%016llx", static_cast<unsigned long long>(fnv1a64(ids)));
  EXPECT_EQ(hash, wiki["fnv1a64"].get<std::string>());
  EXPECT_EQ(tokenizer.decode(ids) == text, wiki["round_trip"].get<bool>());
}

TEST_P(FixtureTest, StreamingMatchesDecodeAndNeverSplitsCharacters) {
  const Tokenizer tokenizer = load_fixture(GetParam());
  std::mt19937 random(42);
  std::uniform_int_distribution<int32_t> any_id(0, tokenizer.vocab_size() - 1);
  for (int round = 0; round < 200; ++round) {
    std::vector<int32_t> ids(size_t(random() % 24));
    for (auto& id : ids) id = any_id(random);
    for (const bool skip : {true, false}) {
      StreamingDecoder stream(tokenizer, skip);
      std::string streamed;
      for (size_t i = 0; i < ids.size(); ++i) {
        const std::string piece = stream.push(ids[i]);
        EXPECT_TRUE(unicode::is_valid_utf8(piece));
        streamed += piece;
        // What is held back completes the text of the ids so far.
        const std::span<const int32_t> so_far(ids.data(), i + 1);
        EXPECT_EQ(streamed + stream.pending(), tokenizer.decode(so_far, skip));
      }
      streamed += stream.finish();
      EXPECT_EQ(streamed, tokenizer.decode(ids, skip));
    }
  }
  // Real text, token by token.
  const std::string text = "Streaming: héllo wörld, 你好 😀 e\u0301 \xff end.";
  const std::vector<int32_t> ids = tokenizer.encode(text);
  StreamingDecoder stream(tokenizer);
  std::string streamed;
  for (const int32_t id : ids) streamed += stream.push(id);
  streamed += stream.finish();
  EXPECT_EQ(streamed, tokenizer.decode(ids));
}

// After a context (a prompt), the streamed text is what decoding context and ids at once gives
// past the context's own text, or, where the context is left out (its text ends in an incomplete
// character, or a further id could change it), the ids' own text; pieces are whole characters.
TEST_P(FixtureTest, StreamingAfterContextMatchesDecodingWithIt) {
  const Tokenizer tokenizer = load_fixture(GetParam());
  std::mt19937 random(7);
  std::uniform_int_distribution<int32_t> any_id(0, tokenizer.vocab_size() - 1);
  for (int round = 0; round < 200; ++round) {
    std::vector<int32_t> context(size_t(random() % 10)), ids(size_t(random() % 16));
    for (auto& id : context) id = any_id(random);
    for (auto& id : ids) id = any_id(random);
    StreamingDecoder stream(tokenizer, true, context);
    std::string streamed;
    for (const int32_t id : ids) {
      const std::string piece = stream.push(id);
      EXPECT_TRUE(unicode::is_valid_utf8(piece));
      streamed += piece;
    }
    streamed += stream.finish();
    const size_t used = std::min(context.size(), StreamingDecoder::kContextIds);
    std::vector<int32_t> joined(context.end() - int64_t(used), context.end());
    const std::string context_text = tokenizer.decode(joined);
    joined.insert(joined.end(), ids.begin(), ids.end());
    const std::string whole = tokenizer.decode(joined);
    const std::string alone = tokenizer.decode(ids);
    if (used == 0 || context_text.ends_with("\xEF\xBF\xBD")) {
      EXPECT_EQ(streamed, alone) << "round " << round;
    } else {
      EXPECT_TRUE(
          (whole.starts_with(context_text) && streamed == whole.substr(context_text.size())) ||
          streamed == alone)
          << "round " << round << ": " << streamed << " | ctx [" << context_text << "] whole ["
          << whole << "] alone [" << alone << "]";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FixtureTest, ::testing::ValuesIn(kFixtureNames),
                         [](const ::testing::TestParamInfo<std::string>& test) {
                           return test.param;
                         });

TEST(TokenizerTest, ByteLevelRoundTripIsLossless) {
  const Tokenizer tokenizer = load_fixture("gpt2");
  const std::string text = "  Mixed\ttext\n\n with 中文, emoji 🤖, \u0085 and e\u0301 ";
  EXPECT_EQ(tokenizer.decode(tokenizer.encode(text)), text);
  // Invalid bytes come back as U+FFFD, as Python's errors="replace" would give.
  EXPECT_EQ(tokenizer.decode(tokenizer.encode("a\xff\xe4\xbd")), "a\uFFFD\uFFFD");
}

// SentencePiece-style decoders strip the first token's leading space: after a prompt, the first
// output token keeps it, as in the text of prompt and output decoded together.
TEST(TokenizerTest, StreamingAfterPromptKeepsTheLeadingSpace) {
  for (const std::string name : {"llama2", "gpt2"}) {
    const Tokenizer tokenizer = load_fixture(name);
    const std::vector<int32_t> prompt = tokenizer.encode("Hello", false);
    const std::vector<int32_t> output = tokenizer.encode("Hello world again", false);
    const std::vector<int32_t> continuation(output.begin() + int64_t(prompt.size()), output.end());
    ASSERT_FALSE(continuation.empty()) << name;
    StreamingDecoder stream(tokenizer, true, prompt);
    std::string streamed;
    for (const int32_t id : continuation) streamed += stream.push(id);
    streamed += stream.finish();
    EXPECT_EQ(streamed, " world again") << name;
  }
}

TEST(TokenizerTest, VocabularyLookups) {
  const Tokenizer tokenizer = load_fixture("llama3");
  const std::optional<int32_t> bos = tokenizer.token_to_id("<|begin_of_text|>");
  ASSERT_TRUE(bos.has_value());
  EXPECT_TRUE(tokenizer.is_special(*bos));
  EXPECT_EQ(tokenizer.id_to_token(*bos), "<|begin_of_text|>");
  const std::optional<int32_t> letter = tokenizer.token_to_id("H");
  ASSERT_TRUE(letter.has_value());
  EXPECT_FALSE(tokenizer.is_special(*letter));
  EXPECT_FALSE(tokenizer.token_to_id("no such token").has_value());
  EXPECT_FALSE(tokenizer.id_to_token(-1).has_value());
  EXPECT_FALSE(tokenizer.id_to_token(tokenizer.vocab_size() + 10).has_value());
  // Unknown ids are skipped by decode, as in the Rust library.
  EXPECT_EQ(tokenizer.decode(std::vector<int32_t>{*letter, 1 << 30, -5}), "H");
}

TEST(TokenizerTest, EncodesFromManyThreadsAtOnce) {
  const Tokenizer tokenizer = load_fixture("qwen2");
  std::vector<std::string> texts;
  for (int i = 0; i < 64; ++i) {
    texts.push_back("thread text " + std::to_string(i * 7919) + " wörds <|im_start|> and more");
  }
  std::vector<std::vector<int32_t>> reference;
  for (const auto& text : texts) reference.push_back(tokenizer.encode(text));
  std::vector<std::thread> threads;
  std::vector<int> mismatches(8, 0);
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        for (size_t i = 0; i < texts.size(); ++i) {
          if (tokenizer.encode(texts[(i + size_t(t)) % texts.size()]) !=
              reference[(i + size_t(t)) % texts.size()]) {
            ++mismatches[size_t(t)];
          }
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (int count : mismatches) EXPECT_EQ(count, 0);
}

TEST(TokenizerTest, HandlesPathologicalInputs) {
  const Tokenizer tokenizer = load_fixture("llama3");
  // A megabyte of one character class: long regex matches and one enormous word.
  for (const std::string& text :
       {std::string(1 << 20, ' '), std::string(1 << 20, 'a'), std::string(1 << 18, '\n')}) {
    const std::vector<int32_t> ids = tokenizer.encode(text, false);
    EXPECT_FALSE(ids.empty());
    EXPECT_EQ(tokenizer.decode(ids), text);
  }
}

// --- UTF-8 and the byte alphabet ---

TEST(UnicodeTest, SanitizeReplacesLikePython) {
  // Expected values from Python's bytes.decode("utf-8", errors="replace").
  EXPECT_EQ(unicode::sanitize_utf8("abc"), "abc");
  EXPECT_EQ(unicode::sanitize_utf8("a\xff"
                                   "b"),
            "a\uFFFDb");
  EXPECT_EQ(unicode::sanitize_utf8("\xe4\xbd"), "\uFFFD");
  EXPECT_EQ(unicode::sanitize_utf8("\xe4\xbd"
                                   "a"),
            "\uFFFDa");
  EXPECT_EQ(unicode::sanitize_utf8("\xed\xa0\x80"), "\uFFFD\uFFFD\uFFFD");
  EXPECT_EQ(unicode::sanitize_utf8("\xf4\x90\x80\x80"), "\uFFFD\uFFFD\uFFFD\uFFFD");
  EXPECT_EQ(unicode::sanitize_utf8("\xc0\xaf"), "\uFFFD\uFFFD");
  EXPECT_EQ(unicode::sanitize_utf8("\xe2\x82\xe2\x82\xac"), "\uFFFD\u20AC");
  EXPECT_EQ(unicode::sanitize_utf8(std::string("\0", 1)), std::string("\0", 1));
}

TEST(UnicodeTest, ByteAlphabetIsABijection) {
  const auto& table = unicode::byte_to_characters();
  EXPECT_EQ(table[' '], "\u0120");  // the familiar Ġ
  EXPECT_EQ(table['\n'], "\u010A");
  EXPECT_EQ(table['A'], "A");
  for (int byte = 0; byte < 256; ++byte) {
    size_t position = 0;
    EXPECT_EQ(unicode::character_to_byte(unicode::next_character(table[byte], position)), byte);
  }
  EXPECT_EQ(unicode::character_to_byte(U'\u4E00'), -1);
}

TEST(UnicodeTest, PropertiesFollowTheLibrary) {
  EXPECT_TRUE(unicode::is_whitespace(0x85));
  EXPECT_FALSE(unicode::is_whitespace(0x180E));
  EXPECT_TRUE(unicode::is_numeric(U'²'));
  EXPECT_TRUE(unicode::is_punctuation('$'));  // ASCII punctuation includes symbols
  std::string lower;
  unicode::append_lowercase(lower, 0x130);   // İ -> i + combining dot
  unicode::append_lowercase(lower, 0x1C89);  // a Unicode 16 capital utf8proc does not know
  EXPECT_EQ(lower, "i\u0307\u1C8A");
}

// --- Regex translation (Oniguruma syntax on PCRE2) ---

std::vector<MatchSpan> all_matches(const std::string& pattern, std::string_view text) {
  Result<Regex> regex = Regex::from_oniguruma(pattern);
  EXPECT_TRUE(regex.is_ok()) << regex.status().message();
  std::vector<MatchSpan> matches;
  if (regex.is_ok()) regex->find_all(text, matches);
  return matches;
}

TEST(RegexTest, TranslatesConstructsPcre2ReadsDifferently) {
  // \s includes U+0085 (NEL) as in Oniguruma.
  EXPECT_EQ(all_matches("\\s", "a\u0085b").size(), 1u);
  // \h is a hex digit, \v a vertical tab, {,n} means {0,n}.
  EXPECT_EQ(all_matches("\\h+", "xyzBEEF").front(), MatchSpan(3, 7));
  EXPECT_EQ(all_matches("\\v", "a\vb\nc").size(), 1u);
  EXPECT_EQ(all_matches("a{,2}", "aaa").front(), MatchSpan(0, 2));
  // \uHHHH escapes and Ruby's (?m) (dot matches newline).
  EXPECT_EQ(all_matches("\\u00e9", "caf\u00e9").size(), 1u);
  EXPECT_EQ(all_matches("(?m:a.b)", "a\nb").size(), 1u);
  EXPECT_EQ(all_matches("a.b", "a\nb").size(), 0u);
  // ^ and $ always match at line boundaries in Ruby syntax.
  EXPECT_EQ(all_matches("^x", "x\nx").size(), 2u);
  // Case folding of the long s and the Kelvin sign, as in Oniguruma.
  EXPECT_EQ(all_matches("(?i:'s)", "'\u017f").size(), 1u);
  EXPECT_EQ(all_matches("(?i:k)", "\u212a").size(), 1u);
  // Letters newer than PCRE2's Unicode tables still count as \p{L}.
  EXPECT_EQ(all_matches("\\p{L}+", "a\u1C89\U00031350").front(), MatchSpan(0, 8));
  // Oniguruma's word characters include superscript digits.
  EXPECT_EQ(all_matches("\\w+", "x\u00b2").front(), MatchSpan(0, 3));
  EXPECT_EQ(all_matches("[[:punct:]]", "$").size(), 1u);
}

TEST(RegexTest, EmptyMatchesFollowOniguruma) {
  const std::vector<MatchSpan> expected = {{0, 0}, {1, 3}, {4, 5}};
  EXPECT_EQ(all_matches("x*", "axxbx"), expected);
}

TEST(RegexTest, RefusesWhatItCannotTranslate) {
  for (const char* pattern :
       {"[a-z&&[^aeiou]]", "[a[bc]]", "(?~abc)", "\\p{NoSuchProperty}", "(unclosed", "[\\W]"}) {
    Result<Regex> regex = Regex::from_oniguruma(pattern);
    EXPECT_FALSE(regex.is_ok()) << pattern;
    if (!regex.is_ok()) {
      EXPECT_NE(regex.status().message().find(pattern), std::string::npos);
    }
  }
}

// --- Errors in tokenizer.json ---

std::string minimal_json(const std::string& model_extra = "", const std::string& sections = "") {
  return R"({"version":"1.0",)" + sections +
         R"("model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":["a b"])" + model_extra +
         "}}";
}

Status load_error(const std::string& text) {
  Result<Tokenizer> tokenizer = Tokenizer::from_json(text, "test/tokenizer.json");
  EXPECT_FALSE(tokenizer.is_ok());
  if (tokenizer.is_ok()) return Status::ok();
  const std::string& message = tokenizer.status().message();
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  EXPECT_EQ(message.rfind("test/tokenizer.json: ", 0), 0u) << message;
  return tokenizer.status();
}

void expect_error(const std::string& text, StatusCode code, const std::string& fragment) {
  const Status status = load_error(text);
  EXPECT_EQ(status.code(), code) << status.message();
  EXPECT_NE(status.message().find(fragment), std::string::npos) << status.message();
}

TEST(TokenizerErrorTest, MinimalFileLoads) {
  Result<Tokenizer> tokenizer = Tokenizer::from_json(minimal_json(), "test/tokenizer.json");
  ASSERT_TRUE(tokenizer.is_ok()) << tokenizer.status().message();
  EXPECT_EQ(tokenizer->encode("ab"), std::vector<int32_t>({2}));
  EXPECT_EQ(tokenizer->decode(std::vector<int32_t>{0, 1}), "a b");  // no decoder: joined by spaces
}

TEST(TokenizerErrorTest, ReportsMalformedFiles) {
  const std::string good = minimal_json();
  expect_error(good.substr(0, good.size() / 2), StatusCode::kCorrupt, "not valid JSON");
  expect_error("[1, 2]", StatusCode::kCorrupt, "JSON object");
  expect_error(R"({"version":"1.0"})", StatusCode::kCorrupt, "'model'");
  expect_error(R"({"version":"2.0","model":{}})", StatusCode::kUnsupported, "version");
  expect_error(R"({"model":{"type":"BPE","vocab":[1,2],"merges":[]}})", StatusCode::kCorrupt,
               "vocab");
  expect_error(R"({"model":{"type":"BPE","vocab":{"a":"x"},"merges":[]}})", StatusCode::kCorrupt,
               "token id");
  expect_error(R"({"model":{"type":"BPE","vocab":{"a":0},"merges":["a"]}})", StatusCode::kCorrupt,
               "merge 1");
  expect_error(R"({"model":{"type":"BPE","vocab":{"a":0},"merges":["a b"]}})", StatusCode::kCorrupt,
               "'b'");
  expect_error(minimal_json(R"(,"unk_token":"<unk>")"), StatusCode::kCorrupt, "unk_token");
  expect_error(minimal_json(R"(,"dropout":0.1)"), StatusCode::kUnsupported, "dropout");
  expect_error(minimal_json(R"(,"byte_fallback":"yes")"), StatusCode::kCorrupt, "byte_fallback");
  expect_error(R"({"model":{"type":"WordPiece","vocab":{}}})", StatusCode::kUnsupported,
               "WordPiece");
  expect_error(R"({"model":{"type":"Unigram","vocab":[]}})", StatusCode::kUnsupported, "Unigram");
  expect_error(minimal_json("", R"("normalizer":{"type":"Precompiled"},)"),
               StatusCode::kUnsupported, "normalizer type 'Precompiled'");
  expect_error(minimal_json("", R"("pre_tokenizer":{"type":"UnicodeScripts"},)"),
               StatusCode::kUnsupported, "pre_tokenizer type 'UnicodeScripts'");
  expect_error(minimal_json("", R"("decoder":{"type":"CTC"},)"), StatusCode::kUnsupported,
               "decoder type 'CTC'");
  expect_error(minimal_json("", R"("post_processor":{"type":"Nope"},)"), StatusCode::kUnsupported,
               "post_processor type 'Nope'");
  expect_error(minimal_json("", R"("normalizer":{"no_type":1},)"), StatusCode::kCorrupt, "type");
  expect_error(minimal_json("", R"("pre_tokenizer":{"type":"Metaspace","replacement":"ab"},)"),
               StatusCode::kCorrupt, "single character");
  expect_error(
      minimal_json(
          "",
          R"("pre_tokenizer":{"type":"Split","pattern":{"Regex":"[a&&b]"},"behavior":"Isolated"},)"),
      StatusCode::kUnsupported, "[a&&b]");
  expect_error(
      minimal_json(
          "", R"("pre_tokenizer":{"type":"Split","pattern":{"Regex":"a"},"behavior":"Sideways"},)"),
      StatusCode::kCorrupt, "Sideways");
  expect_error(minimal_json("", R"("added_tokens":[{"id":0}],)"), StatusCode::kCorrupt, "content");
  expect_error(
      minimal_json(
          "",
          R"("post_processor":{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>","type_id":0}},{"Sequence":{"id":"A","type_id":0}}],"special_tokens":{}},)"),
      StatusCode::kCorrupt, "'<s>'");
}

TEST(TokenizerErrorTest, RefusesDeeplyNestedSequences) {
  std::string nested;
  for (int i = 0; i < 1000; ++i) nested += R"({"type":"Sequence","pretokenizers":[)";
  for (int i = 0; i < 1000; ++i) nested += "]}";
  expect_error(minimal_json("", "\"pre_tokenizer\":" + nested + ","), StatusCode::kCorrupt,
               "nested more than");
}

TEST(TokenizerErrorTest, MessagesStayOnOneLine) {
  // A token with a newline is escaped in the message.
  expect_error(R"({"model":{"type":"BPE","vocab":{"a":0},"merges":["a x\ny"]}})",
               StatusCode::kCorrupt, "\\n");
}

TEST(TokenizerErrorTest, FilesAndDirectories) {
  const std::string directory = test::temp_dir();
  EXPECT_EQ(Tokenizer::from_directory(directory + "/missing").status().code(),
            StatusCode::kNotFound);
  EXPECT_EQ(Tokenizer::from_directory(directory).status().code(), StatusCode::kNotFound);
  ASSERT_TRUE(write_file(directory + "/tokenizer.json", minimal_json()).is_ok());
  EXPECT_TRUE(Tokenizer::from_directory(directory).is_ok());
}

TEST(TokenizerTest, AddedTokenIdsFollowTheLibraryNotTheFile) {
  // The Rust library re-derives added-token ids: an existing vocabulary entry keeps its id and
  // a new token gets the next free id after the vocabulary, whatever the file says.
  Result<Tokenizer> tokenizer = Tokenizer::from_json(minimal_json("", R"("added_tokens":[
        {"id":1000,"content":"<x>","special":true},
        {"id":5,"content":"ab","special":false,"normalized":true},
        {"id":7,"content":"<y>","special":false,"normalized":false,"lstrip":true}],)"),
                                                     "test");
  ASSERT_TRUE(tokenizer.is_ok()) << tokenizer.status().message();
  EXPECT_EQ(tokenizer->token_to_id("<x>"), 3);
  EXPECT_EQ(tokenizer->token_to_id("ab"), 2);
  EXPECT_EQ(tokenizer->token_to_id("<y>"), 4);
  EXPECT_EQ(tokenizer->vocab_size(), 5);
  EXPECT_TRUE(tokenizer->is_special(3));
  EXPECT_FALSE(tokenizer->is_special(4));
  // "<y>" strips the spaces on its left; "<x>" splits words.
  EXPECT_EQ(tokenizer->encode("a  <y>b<x>ab"), std::vector<int32_t>({0, 4, 1, 3, 2}));
  EXPECT_EQ(tokenizer->decode(std::vector<int32_t>{0, 3, 1}, true), "a b");
}

}  // namespace
}  // namespace kite
