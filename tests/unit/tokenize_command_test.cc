// Tests of `kite tokenize`: output formats, both folder flags, and one-line errors with the
// documented exit codes for bad folders, bad tokenizer.json files and bad --ids lists.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <string>

#include "core/file.h"
#include "test_util.h"

namespace kite {
namespace {

using test::run_kite;

// A folder holding the given tokenizer.json text.
std::string folder_with(const std::string& tokenizer_json) {
  const std::string directory = test::temp_dir();
  KITE_CHECK(write_file(directory + "/tokenizer.json", tokenizer_json).is_ok());
  return directory;
}

std::string fixture_folder(const std::string& name) {
  return folder_with(
      *read_file(test::source_dir() + "/tests/fixtures/tokenizer/" + name + ".json"));
}

// The expected ids of one input of a fixture, from expected.json.
nlohmann::json expected_case(const std::string& fixture, const std::string& text) {
  const auto expected = nlohmann::json::parse(
      *read_file(test::source_dir() + "/tests/fixtures/tokenizer/expected.json"));
  for (const auto& item : expected[fixture]["cases"]) {
    if (item.value("text", "") == text) return item;
  }
  ADD_FAILURE() << "no case " << text;
  return {};
}

// "1 2 3" (separator " ") or "1,2,3" (separator ",").
std::string join_ids(const nlohmann::json& ids, const std::string& separator = " ") {
  std::string out;
  for (const auto& id : ids) {
    if (!out.empty()) out += separator;
    out += id.dump();
  }
  return out;
}

void expect_one_line_error(const test::CommandResult& result, int exit_code,
                           const std::string& fragment) {
  EXPECT_EQ(result.exit_code, exit_code) << result.output;
  EXPECT_EQ(result.signal, 0);
  EXPECT_EQ(result.output.rfind("kite tokenize: error: ", 0), 0u) << result.output;
  EXPECT_EQ(result.output.find('\n'), result.output.size() - 1) << result.output;
  EXPECT_NE(result.output.find(fragment), std::string::npos) << result.output;
}

TEST(TokenizeCommandTest, EncodesTextToIds) {
  const std::string folder = fixture_folder("llama3");
  const nlohmann::json item = expected_case("llama3", "Hello world");
  const auto result = run_kite("tokenize --tokenizer_dir " + folder + " --text 'Hello world'");
  EXPECT_EQ(result.exit_code, 0) << result.output;
  EXPECT_EQ(result.output, join_ids(item["ids"]) + "\n");

  const auto plain =
      run_kite("tokenize --tokenizer_dir " + folder + " --text 'Hello world' --no_special_tokens");
  EXPECT_EQ(plain.output, join_ids(item["ids_no_special"]) + "\n");
}

TEST(TokenizeCommandTest, PrintsJson) {
  const std::string folder = fixture_folder("gpt2");
  const auto result = run_kite("tokenize --tokenizer_dir " + folder + " --text 'Hi there' --json");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const auto output = nlohmann::json::parse(result.output);
  EXPECT_EQ(output["text"], "Hi there");
  ASSERT_EQ(output["ids"].size(), output["tokens"].size());
  std::string joined;
  for (const auto& token : output["tokens"]) joined += token.get<std::string>();
  EXPECT_EQ(joined, "Hi\u0120there");  // byte-level tokens spell the text with Ġ for spaces

  const auto decoded = run_kite("tokenize --tokenizer_dir " + folder + " --ids " +
                                join_ids(output["ids"], ",") + " --json");
  ASSERT_EQ(decoded.exit_code, 0) << decoded.output;
  EXPECT_EQ(nlohmann::json::parse(decoded.output)["text"], "Hi there");
}

TEST(TokenizeCommandTest, DecodesIdsWithAndWithoutSpecialTokens) {
  const std::string folder = fixture_folder("llama3");
  const nlohmann::json item = expected_case("llama3", "Hello world");
  const std::string list = join_ids(item["ids"], ", ");
  const auto all = run_kite("tokenize --tokenizer_dir " + folder + " --ids '" + list + "'");
  EXPECT_EQ(all.exit_code, 0) << all.output;
  EXPECT_EQ(all.output, "<|begin_of_text|>Hello world\n");
  const auto plain =
      run_kite("tokenize --tokenizer_dir " + folder + " --ids '" + list + "' --no_special_tokens");
  EXPECT_EQ(plain.output, "Hello world\n");
}

TEST(TokenizeCommandTest, EncodesAFileAndReadsEngineFolders) {
  const std::string folder = fixture_folder("qwen2");
  const std::string input = test::temp_dir() + "/input.txt";
  ASSERT_TRUE(write_file(input, "Hello world").is_ok());
  const auto from_file = run_kite("tokenize --engine_dir " + folder + " --input_file " + input);
  const auto from_text = run_kite("tokenize --tokenizer_dir " + folder + " --text 'Hello world'");
  EXPECT_EQ(from_file.exit_code, 0) << from_file.output;
  EXPECT_EQ(from_file.output, from_text.output);
  EXPECT_EQ(from_text.output, join_ids(expected_case("qwen2", "Hello world")["ids"]) + "\n");
  // An empty text is valid input.
  const auto empty = run_kite("tokenize --tokenizer_dir " + folder + " --text ''");
  EXPECT_EQ(empty.exit_code, 0) << empty.output;
  EXPECT_EQ(empty.output, "\n");
}

TEST(TokenizeCommandTest, RejectsBadFolders) {
  expect_one_line_error(run_kite("tokenize --tokenizer_dir /nonexistent/folder --text a"), 1,
                        "/nonexistent/folder");
  expect_one_line_error(run_kite("tokenize --engine_dir " + test::temp_dir() + " --text a"), 1,
                        "no tokenizer.json");
  expect_one_line_error(run_kite("tokenize --text a"), 2, "--tokenizer_dir");
  const std::string folder = fixture_folder("gpt2");
  expect_one_line_error(
      run_kite("tokenize --tokenizer_dir " + folder + " --engine_dir " + folder + " --text a"), 2,
      "exactly one");
  expect_one_line_error(run_kite("tokenize --tokenizer_dir " + folder), 2, "--text");
}

TEST(TokenizeCommandTest, RejectsBrokenTokenizerFiles) {
  const std::string good = *read_file(test::source_dir() + "/tests/fixtures/tokenizer/gpt2.json");
  expect_one_line_error(run_kite("tokenize --tokenizer_dir " +
                                 folder_with(good.substr(0, good.size() / 2)) + " --text a"),
                        1, "not valid JSON");
  expect_one_line_error(
      run_kite("tokenize --tokenizer_dir " +
               folder_with(R"({"model":{"type":"BPE","vocab":{"a":"zero"},"merges":[]}})") +
               " --text a"),
      1, "token id must be an integer");
  expect_one_line_error(
      run_kite("tokenize --tokenizer_dir " +
               folder_with(R"({"model":{"type":"BPE","vocab":{"a":0},"merges":{"a":1}}})") +
               " --text a"),
      1, "merges");
  expect_one_line_error(
      run_kite("tokenize --tokenizer_dir " +
               folder_with(R"({"model":{"type":"Unigram","vocab":[["a",0.0]]}})") + " --text a"),
      1, "model type 'Unigram' is not supported");
  expect_one_line_error(
      run_kite("tokenize --tokenizer_dir " + folder_with(R"({"model":[]})") + " --text a"), 1,
      "'model'");
  expect_one_line_error(run_kite("tokenize --tokenizer_dir " + folder_with("") + " --text a"), 1,
                        "not valid JSON");
}

TEST(TokenizeCommandTest, RejectsBadIdLists) {
  const std::string folder = fixture_folder("gpt2");
  for (const char* list : {"1,,2", "1,x", "-3", "1.5", "99999999", "''", "4294967297"}) {
    expect_one_line_error(run_kite("tokenize --tokenizer_dir " + folder + " --ids " + list), 2,
                          "--ids");
  }
}

}  // namespace
}  // namespace kite
