// Kite's tokenizer against Hugging Face `tokenizers`, for every GGUF vocabulary we can obtain, on
// every line of WikiText-2 (test), every MMLU question and hand-written hard cases, with fixtures
// made by scripts/make_tokenizer_conformance.py (tests/fixtures/tokenizer_conformance/README.md).
// Each vocabulary is checked twice: loading the tokenizer.json that transformers built from the
// GGUF (the reference), and converting the GGUF with Kite's own tokenizer_json_from_gguf, which is
// held to the original model's tokenizer (the manifest's gguf_check says how, per vocabulary).
#include <lzma.h>

#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "core/csv.h"
#include "core/file.h"
#include "formats/gguf.h"
#include "formats/gguf_tokenizer.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace kite {
namespace {

using nlohmann::json;

// Every vocabulary of the fixtures; a test checks that the manifest lists exactly these.
constexpr std::array<std::string_view, 17> kVocabularies = {
    "smollm2", "aquila", "baichuan", "command-r", "deepseek-coder", "deepseek-llm",
    "falcon",  "gpt-2",  "gpt-neox", "llama-bpe", "llama-spm",      "mpt",
    "phi-3",   "qwen2",  "qwen35",   "refact",    "starcoder"};
constexpr int kMaxReportedFailures = 5;  // per test, so that one bug does not flood the log

// ---- Fixture files ---------------------------------------------------------------------------

std::string fixtures_dir() {
  return test::source_dir() + "/tests/fixtures/tokenizer_conformance";
}

std::string env_or(const char* name, const std::string& fallback) {
  const char* value = std::getenv(name);
  return value && *value ? value : fallback;
}

// Decompresses a whole .xz file (the fixtures are xz-compressed to keep the repository small).
Result<std::string> read_xz_file(const std::string& path) {
  KITE_ASSIGN_OR_RETURN(std::string compressed, read_file(path));
  lzma_stream stream = LZMA_STREAM_INIT;
  if (lzma_stream_decoder(&stream, UINT64_MAX, 0) != LZMA_OK) {
    return internal_error("cannot start an xz decoder for " + path);
  }
  stream.next_in = reinterpret_cast<const uint8_t*>(compressed.data());
  stream.avail_in = compressed.size();
  std::string output;
  std::array<uint8_t, 1 << 16> buffer;
  lzma_ret code;
  do {
    stream.next_out = buffer.data();
    stream.avail_out = buffer.size();
    code = lzma_code(&stream, LZMA_FINISH);
    output.append(reinterpret_cast<const char*>(buffer.data()), buffer.size() - stream.avail_out);
  } while (code == LZMA_OK);
  lzma_end(&stream);
  if (code != LZMA_STREAM_END) {
    return corrupt(path + ": not a complete xz file (liblzma error " + std::to_string(code) + ")");
  }
  return output;
}

Result<json> parse_json(const std::string& text, const std::string& source) {
  try {
    return json::parse(text);
  } catch (const json::exception& error) {
    return corrupt(source + ": " + error.what());
  }
}

Result<json> read_json_file(const std::string& path) {
  const bool compressed = path.ends_with(".xz");
  KITE_ASSIGN_OR_RETURN(std::string text, compressed ? read_xz_file(path) : read_file(path));
  return parse_json(text, path);
}

const json& manifest() {
  static const json value = [] {
    auto parsed = read_json_file(fixtures_dir() + "/manifest.json");
    KITE_CHECK(parsed.is_ok());  // the fixtures are part of the source tree
    return *parsed;
  }();
  return value;
}

const json* manifest_entry(std::string_view vocabulary) {
  for (const json& entry : manifest().at("vocabularies")) {
    if (entry.at("name").get<std::string>() == vocabulary) return &entry;
  }
  return nullptr;
}

// ---- Hashes and text helpers -----------------------------------------------------------------

constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ull;
constexpr uint64_t kFnvPrime = 0x100000001b3ull;

uint64_t fnv1a64(std::string_view bytes, uint64_t hash = kFnvOffset) {
  for (unsigned char byte : bytes) hash = (hash ^ byte) * kFnvPrime;
  return hash;
}

// FNV-1a 64 over the ids, each as 4 little-endian bytes (as the fixture script hashes them).
uint64_t fnv1a64_ids(const std::vector<int32_t>& ids) {
  uint64_t hash = kFnvOffset;
  for (int32_t id : ids) {
    const auto value = static_cast<uint32_t>(id);
    for (int shift = 0; shift < 32; shift += 8)
      hash = (hash ^ ((value >> shift) & 0xff)) * kFnvPrime;
  }
  return hash;
}

struct ExpectedIds {
  uint64_t hash = 0;
  size_t count = 0;
};

// Lines of "<16 hex digits> <count>".
Result<std::vector<ExpectedIds>> parse_expected_lines(const std::string& text,
                                                      const std::string& source) {
  std::vector<ExpectedIds> result;
  std::istringstream stream(text);
  std::string line;
  while (std::getline(stream, line)) {
    ExpectedIds expected;
    unsigned long long hash = 0, count = 0;
    if (std::sscanf(line.c_str(), "%16llx %llu", &hash, &count) != 2) {
      return corrupt(source + ": line " + std::to_string(result.size() + 1) +
                     " is not '<hash> <count>'");
    }
    expected.hash = hash;
    expected.count = count;
    result.push_back(expected);
  }
  return result;
}

Result<std::vector<ExpectedIds>> read_expected_lines(const std::string& relative_path) {
  const std::string path = fixtures_dir() + "/" + relative_path;
  KITE_ASSIGN_OR_RETURN(std::string text, read_xz_file(path));
  return parse_expected_lines(text, path);
}

std::string hex64(uint64_t value) {
  char buffer[17];
  std::snprintf(buffer, sizeof buffer, "%016llx", static_cast<unsigned long long>(value));
  return buffer;
}

// Printable text for failure messages: escapes, and cut to `limit` bytes.
std::string printable(std::string_view text, size_t limit = 240) {
  std::string out = "\"";
  for (size_t i = 0; i < text.size() && i < limit; ++i) {
    const unsigned char c = text[i];
    if (c == '\n')
      out += "\\n";
    else if (c == '\r')
      out += "\\r";
    else if (c == '\t')
      out += "\\t";
    else if (c == '"')
      out += "\\\"";
    else if (c < 0x20 || c == 0x7f) {
      char buffer[8];
      std::snprintf(buffer, sizeof buffer, "\\x%02x", c);
      out += buffer;
    } else {
      out += static_cast<char>(c);
    }
  }
  out += text.size() > limit ? "\"..." : "\"";
  return out;
}

std::string ids_text(const std::vector<int32_t>& ids, size_t limit = 64) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size() && i < limit; ++i) {
    if (i > 0) out += ' ';
    out += std::to_string(ids[i]);
  }
  return out + (ids.size() > limit ? " ...]" : "]");
}

std::string from_hex(std::string_view hex) {
  std::string bytes;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    bytes.push_back(static_cast<char>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16)));
  }
  return bytes;
}

// WikiText lines as the fixture script reads them: the bytes before each "\n" (the file's "\r"
// stays at the end of each line); a final empty piece after the last "\n" is not a line.
std::vector<std::string_view> split_lines(std::string_view text) {
  std::vector<std::string_view> lines;
  size_t start = 0;
  while (start < text.size()) {
    const size_t end = text.find('\n', start);
    if (end == std::string_view::npos) {
      lines.push_back(text.substr(start));
      break;
    }
    lines.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return lines;
}

// One MMLU row as the prompt text of Hendrycks' evaluate.py (without the answer).
std::string mmlu_prompt(const CsvRow& row) {
  return row[0] + "\nA. " + row[1] + "\nB. " + row[2] + "\nC. " + row[3] + "\nD. " + row[4] +
         "\nAnswer:";
}

double megabytes_per_second(size_t bytes, std::chrono::steady_clock::duration elapsed) {
  const double seconds = std::chrono::duration<double>(elapsed).count();
  return seconds > 0 ? bytes / seconds / 1e6 : 0.0;
}

// ---- The parameterized test ------------------------------------------------------------------

enum class TokenizerSource {
  kReferenceJson,  // the tokenizer.json transformers built from the GGUF
  kKiteGguf,       // Kite's own conversion of the GGUF
};

struct ConformanceParam {
  std::string vocabulary;
  TokenizerSource source;
};

void PrintTo(const ConformanceParam& param, std::ostream* out) {
  *out << param.vocabulary
       << (param.source == TokenizerSource::kReferenceJson ? " (reference tokenizer.json)"
                                                           : " (Kite's GGUF conversion)");
}

std::vector<ConformanceParam> all_params() {
  std::vector<ConformanceParam> params;
  for (std::string_view name : kVocabularies) {
    params.push_back({std::string(name), TokenizerSource::kReferenceJson});
    params.push_back({std::string(name), TokenizerSource::kKiteGguf});
  }
  return params;
}

std::string param_name(const testing::TestParamInfo<ConformanceParam>& info) {
  std::string name = info.param.vocabulary;
  for (char& c : name) {
    if (c == '-') c = '_';
  }
  return name +
         (info.param.source == TokenizerSource::kReferenceJson ? "_reference_json" : "_gguf");
}

class TokenizerConformanceTest : public testing::TestWithParam<ConformanceParam> {
 protected:
  void SetUp() override {
    entry_ = manifest_entry(GetParam().vocabulary);
    ASSERT_NE(entry_, nullptr) << GetParam().vocabulary << " is not in the fixture manifest";
    if (GetParam().source == TokenizerSource::kReferenceJson) {
      load_reference_json();
    } else {
      load_from_gguf();
    }
  }

  // What the printed rates and failure messages call this tokenizer.
  std::string label() const {
    return GetParam().vocabulary + (GetParam().source == TokenizerSource::kReferenceJson
                                        ? " (reference tokenizer.json)"
                                        : " (Kite's GGUF conversion)");
  }

  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const json& entry() const { return *entry_; }
  bool kite_gguf() const { return GetParam().source == TokenizerSource::kKiteGguf; }

  // Kite's GGUF conversion follows the ORIGINAL tokenizer, which transformers' conversion (the
  // reference) does not always rebuild; the manifest's gguf_check says what it is held to.
  const json& gguf_check() const { return entry().at("gguf_check"); }
  bool corrected() const {
    return kite_gguf() && gguf_check().at("mode").get<std::string>() == "corrected_reference";
  }
  // Why the texts are not compared for this tokenizer (only llama.cpp's vectors), or "".
  std::string texts_not_compared_reason() const {
    if (!kite_gguf() || gguf_check().at("mode").get<std::string>() != "llama_cpp_vectors_only")
      return "";
    return "Kite's GGUF conversion of " + GetParam().vocabulary +
           " is checked on llama.cpp's vectors only: " +
           gguf_check().at("reason").get<std::string>();
  }
  bool compare_special_tokens() const {
    return !kite_gguf() || gguf_check().at("compare_special_tokens").get<bool>();
  }
  std::string hard_cases_file() const {
    return fixtures_dir() + "/" +
           (corrected() ? gguf_check() : entry().at("files")).at("hard_cases").get<std::string>();
  }
  const json& wikitext_whole() const {
    return (corrected() ? gguf_check() : entry()).at("wikitext_whole");
  }

  // The expected "<hash> <count>" per text of a corpus ("wikitext_lines" or "mmlu_rows"), with the
  // corrected reference's overrides ("<line> <hash> <count>") applied for Kite's GGUF conversion.
  Result<std::vector<ExpectedIds>> expected_lines(const std::string& corpus) const {
    KITE_ASSIGN_OR_RETURN(auto expected,
                          read_expected_lines(entry().at("files").at(corpus).get<std::string>()));
    if (!corrected()) return expected;
    const std::string path =
        fixtures_dir() + "/" + gguf_check().at("overrides").at(corpus).get<std::string>();
    KITE_ASSIGN_OR_RETURN(std::string text, read_xz_file(path));
    std::istringstream lines(text);
    std::string line;
    while (std::getline(lines, line)) {
      const size_t space = line.find(' ');
      const size_t index = space == std::string::npos ? 0 : std::strtoul(line.c_str(), nullptr, 10);
      if (index == 0 || index > expected.size())
        return corrupt(path + ": malformed line '" + line + "'");
      KITE_ASSIGN_OR_RETURN(auto parsed, parse_expected_lines(line.substr(space + 1), path));
      if (parsed.size() != 1) return corrupt(path + ": malformed line '" + line + "'");
      expected[index - 1] = parsed[0];
    }
    return expected;
  }

  void print_rate(const std::string& what, size_t bytes,
                  std::chrono::steady_clock::duration elapsed) {
    const double rate = megabytes_per_second(bytes, elapsed);
    std::cout << "[ RATE     ] " << label() << ": " << what << " " << rate << " MB/s\n";
    RecordProperty("encode_megabytes_per_second", std::to_string(rate));
  }

 private:
  void load_reference_json() {
    const json& committed = entry().at("files").at("tokenizer_json");
    std::string path, text;
    if (!committed.is_null()) {
      path = fixtures_dir() + "/" + committed.get<std::string>();
      auto read = read_xz_file(path);
      ASSERT_TRUE(read.is_ok()) << read.status().message();
      text = std::move(*read);
    } else {
      // Too big to commit: scripts/make_tokenizer_conformance.py writes it here.
      const std::string directory = env_or("KITE_TOKENIZER_REFERENCE_DIR",
                                           test::source_dir() + "/.cache/tokenizer_conformance");
      path = directory + "/" + GetParam().vocabulary + "/tokenizer.json";
      if (!path_exists(path)) {
        GTEST_SKIP()
            << "the reference tokenizer.json of " << GetParam().vocabulary
            << " is not committed (size); make it with scripts/make_tokenizer_conformance.py"
            << " (it writes " << path << ")";
      }
      auto read = read_file(path);
      ASSERT_TRUE(read.is_ok()) << read.status().message();
      text = std::move(*read);
    }
    // The same JSON the expected ids were made with (fixtures and tokenizer.json not out of step).
    ASSERT_EQ(hex64(fnv1a64(text)), entry().at("reference_json_fnv1a64").get<std::string>())
        << path << " is not the tokenizer.json the fixtures were made with; regenerate both";
    auto tokenizer = Tokenizer::from_json(text, path);
    ASSERT_TRUE(tokenizer.is_ok()) << tokenizer.status().message();
    tokenizer_.emplace(std::move(*tokenizer));
  }

  void load_from_gguf() {
    const std::string file = entry().at("gguf").get<std::string>();
    const std::string path =
        GetParam().vocabulary == "smollm2"
            ? env_or("KITE_SMOLLM2_GGUF", test::source_dir() + "/models/" + file)
            : env_or("KITE_LLAMA_CPP_VOCAB_DIR", test::source_dir() + "/models/llama.cpp-vocab") +
                  "/" + file;
    if (!path_exists(path)) {
      GTEST_SKIP() << path << " is not here; get it with "
                   << (GetParam().vocabulary == "smollm2" ? "scripts/fetch_demo_model.sh"
                                                          : "scripts/fetch_tokenizer_vocabs.sh");
    }
    std::error_code error;
    ASSERT_EQ(std::filesystem::file_size(path, error), entry().at("gguf_size").get<uint64_t>())
        << path << " is not the GGUF the fixtures were made from (size differs)";
    auto gguf = GgufFile::open(path);
    ASSERT_TRUE(gguf.is_ok()) << gguf.status().message();
    auto converted = tokenizer_json_from_gguf(*gguf);
    ASSERT_TRUE(converted.is_ok()) << converted.status().message();
    std::string text;
    try {
      text = converted->dump();
    } catch (const json::exception& exception) {
      FAIL() << path << ": the converted tokenizer.json cannot be written: " << exception.what();
    }
    auto tokenizer = Tokenizer::from_json(text, path);
    ASSERT_TRUE(tokenizer.is_ok()) << tokenizer.status().message();
    tokenizer_.emplace(std::move(*tokenizer));
  }

  const json* entry_ = nullptr;
  std::optional<Tokenizer> tokenizer_;
};

// Hand-written hard cases: full ids with and without special tokens, and decoding.
TEST_P(TokenizerConformanceTest, HardCases) {
  if (const std::string reason = texts_not_compared_reason(); !reason.empty())
    GTEST_SKIP() << reason;
  auto texts = read_json_file(fixtures_dir() + "/hard_cases.json");
  ASSERT_TRUE(texts.is_ok()) << texts.status().message();
  auto expected = read_json_file(hard_cases_file());
  ASSERT_TRUE(expected.is_ok()) << expected.status().message();
  const json& cases = texts->at("cases");
  const json& results = expected->at("cases");
  ASSERT_EQ(cases.size(), results.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string name = cases[i].at("name").get<std::string>();
    ASSERT_EQ(results[i].at("name").get<std::string>(), name);
    // Invalid UTF-8 cases give the raw bytes; the reference saw them decoded with
    // errors="replace", which Tokenizer::encode must do itself.
    const std::string input = cases[i].contains("bytes_hex")
                                  ? from_hex(cases[i].at("bytes_hex").get<std::string>())
                                  : cases[i].at("text").get<std::string>();
    SCOPED_TRACE("hard case " + name + ": " + printable(input));
    const auto want_ids = results[i].at("ids").get<std::vector<int32_t>>();
    const auto want_with_special =
        results[i].at("ids_with_special_tokens").get<std::vector<int32_t>>();
    const std::vector<int32_t> ids = tokenizer().encode(input, /*add_special_tokens=*/false);
    EXPECT_EQ(ids, want_ids);
    if (compare_special_tokens()) {
      EXPECT_EQ(tokenizer().encode(input, /*add_special_tokens=*/true), want_with_special);
    }
    EXPECT_EQ(tokenizer().decode(want_ids, /*skip_special_tokens=*/false),
              results[i].at("decoded").get<std::string>());
    EXPECT_EQ(tokenizer().decode(want_with_special, /*skip_special_tokens=*/true),
              results[i].at("decoded_skipping_special_tokens").get<std::string>());
  }
}

// Every line of wiki.test.raw, each encoded on its own.
TEST_P(TokenizerConformanceTest, WikiTextLines) {
  if (const std::string reason = texts_not_compared_reason(); !reason.empty())
    GTEST_SKIP() << reason;
  const std::string path = test::data_dir() + "/wikitext-2-raw/wiki.test.raw";
  auto text = read_file(path);
  ASSERT_TRUE(text.is_ok()) << text.status().message();
  ASSERT_EQ(hex64(fnv1a64(*text)), manifest().at("wikitext").at("fnv1a64").get<std::string>())
      << path << " is not the file the fixtures were made from";
  const auto lines = split_lines(*text);
  auto expected = expected_lines("wikitext_lines");
  ASSERT_TRUE(expected.is_ok()) << expected.status().message();
  ASSERT_EQ(lines.size(), expected->size());

  int failures = 0;
  std::chrono::steady_clock::duration encoding{};
  for (size_t i = 0; i < lines.size(); ++i) {
    const auto start = std::chrono::steady_clock::now();
    const std::vector<int32_t> ids = tokenizer().encode(lines[i], /*add_special_tokens=*/false);
    encoding += std::chrono::steady_clock::now() - start;
    const ExpectedIds& want = (*expected)[i];
    if (fnv1a64_ids(ids) == want.hash && ids.size() == want.count) continue;
    if (++failures <= kMaxReportedFailures) {
      ADD_FAILURE() << "wiki.test.raw line " << i + 1 << " " << printable(lines[i]) << ": got "
                    << ids.size() << " ids " << ids_text(ids) << " (hash "
                    << hex64(fnv1a64_ids(ids)) << "), Hugging Face gives " << want.count
                    << " ids (hash " << hex64(want.hash) << ")";
    }
  }
  EXPECT_EQ(failures, 0) << failures << " of " << lines.size() << " lines differ";
  print_rate("wiki.test.raw line by line", text->size(), encoding);
}

// The whole of wiki.test.raw as one text, as perplexity evaluation tokenizes it.
TEST_P(TokenizerConformanceTest, WikiTextWholeFile) {
  if (const std::string reason = texts_not_compared_reason(); !reason.empty())
    GTEST_SKIP() << reason;
  const std::string path = test::data_dir() + "/wikitext-2-raw/wiki.test.raw";
  auto text = read_file(path);
  ASSERT_TRUE(text.is_ok()) << text.status().message();
  ASSERT_EQ(hex64(fnv1a64(*text)), manifest().at("wikitext").at("fnv1a64").get<std::string>());
  const auto start = std::chrono::steady_clock::now();
  const std::vector<int32_t> ids = tokenizer().encode(*text, /*add_special_tokens=*/false);
  const auto elapsed = std::chrono::steady_clock::now() - start;
  const json& want = wikitext_whole();
  EXPECT_EQ(ids.size(), want.at("count").get<size_t>());
  EXPECT_EQ(hex64(fnv1a64_ids(ids)), want.at("fnv1a64").get<std::string>());
  print_rate("wiki.test.raw as one text", text->size(), elapsed);
}

// Every MMLU question (dev, val and test), read with Kite's CSV reader and formatted as a prompt.
TEST_P(TokenizerConformanceTest, MmluRows) {
  if (const std::string reason = texts_not_compared_reason(); !reason.empty())
    GTEST_SKIP() << reason;
  auto index = read_file(fixtures_dir() + "/mmlu_files.txt");
  ASSERT_TRUE(index.is_ok()) << index.status().message();
  auto expected = expected_lines("mmlu_rows");
  ASSERT_TRUE(expected.is_ok()) << expected.status().message();

  size_t next_expected = 0;
  int failures = 0;
  std::istringstream files(*index);
  std::string relative;
  size_t row_count = 0;
  std::string texts_hash;
  while (files >> relative >> row_count >> texts_hash) {
    const std::string path = test::data_dir() + "/mmlu/" + relative;
    auto rows = read_csv_file(path);
    ASSERT_TRUE(rows.is_ok()) << rows.status().message();
    ASSERT_EQ(rows->size(), row_count) << path << ": Kite's CSV reader and Python's csv module "
                                       << "disagree on the number of rows";
    std::vector<std::string> prompts;
    uint64_t hash = kFnvOffset;
    for (size_t r = 0; r < rows->size(); ++r) {
      ASSERT_EQ((*rows)[r].size(), 6u) << path << " row " << r + 1;
      prompts.push_back(mmlu_prompt((*rows)[r]));
      hash = fnv1a64(std::string_view(prompts.back().c_str(), prompts.back().size() + 1), hash);
    }
    ASSERT_EQ(hex64(hash), texts_hash)
        << path << ": the prompt texts differ from Python's (CSV reading or formatting)";
    ASSERT_LE(next_expected + prompts.size(), expected->size());
    for (size_t r = 0; r < prompts.size(); ++r) {
      const std::vector<int32_t> ids = tokenizer().encode(prompts[r], /*add_special_tokens=*/false);
      const ExpectedIds& want = (*expected)[next_expected++];
      if (fnv1a64_ids(ids) == want.hash && ids.size() == want.count) continue;
      if (++failures <= kMaxReportedFailures) {
        ADD_FAILURE() << "mmlu/" << relative << " row " << r + 1 << " " << printable(prompts[r])
                      << ": got " << ids.size() << " ids " << ids_text(ids) << " (hash "
                      << hex64(fnv1a64_ids(ids)) << "), Hugging Face gives " << want.count
                      << " ids (hash " << hex64(want.hash) << ")";
      }
    }
  }
  EXPECT_EQ(next_expected, expected->size()) << "mmlu_files.txt lists fewer rows than expected";
  EXPECT_EQ(next_expected, manifest().at("mmlu").at("rows").get<size_t>());
  EXPECT_EQ(failures, 0) << failures << " of " << next_expected << " MMLU rows differ";
}

// llama.cpp's own test vectors for the vocabulary (from the original Hugging Face tokenizer).
// Where transformers' conversion of the GGUF tokenizes a text differently from the original
// tokenizer, the manifest lists it and the reference tokenizer.json is held to its own ids there.
TEST_P(TokenizerConformanceTest, LlamaCppVectors) {
  if (!entry().contains("llama_cpp_vectors")) {
    GTEST_SKIP() << "llama.cpp ships no test vectors for " << GetParam().vocabulary;
  }
  const json& vectors = entry().at("llama_cpp_vectors");
  auto inputs = read_file(fixtures_dir() + "/" + vectors.at("inp").get<std::string>());
  ASSERT_TRUE(inputs.is_ok()) << inputs.status().message();
  auto outputs = read_file(fixtures_dir() + "/" + vectors.at("out").get<std::string>());
  ASSERT_TRUE(outputs.is_ok()) << outputs.status().message();

  const std::string separator = "\n__ggml_vocab_test__\n";
  std::vector<std::string> texts;
  for (size_t start = 0; start < inputs->size();) {
    const size_t end = inputs->find(separator, start);
    ASSERT_NE(end, std::string::npos) << "the .inp file must end with the separator";
    texts.push_back(inputs->substr(start, end - start));
    start = end + separator.size();
  }
  std::vector<std::vector<int32_t>> expected;
  std::istringstream out_lines(*outputs);
  std::string line;
  while (expected.size() < texts.size() && std::getline(out_lines, line)) {
    std::istringstream numbers(line);
    std::vector<int32_t> ids;
    for (int32_t id; numbers >> id;) ids.push_back(id);
    expected.push_back(std::move(ids));
  }
  ASSERT_EQ(texts.size(), vectors.at("count").get<size_t>());
  ASSERT_EQ(expected.size(), texts.size());
  // The reference json is held to its own ids where it departs from the original; Kite's GGUF
  // conversion is held to the original tokenizer's ids, all of them.
  for (const json& difference : kite_gguf() ? json::array() : vectors.at("reference_differs")) {
    expected.at(difference.at("index").get<size_t>()) =
        difference.at("reference_ids").get<std::vector<int32_t>>();
  }
  for (size_t i = 0; i < texts.size(); ++i) {
    EXPECT_EQ(tokenizer().encode(texts[i], /*add_special_tokens=*/false), expected[i])
        << "llama.cpp test " << i << " " << printable(texts[i]);
  }
}

INSTANTIATE_TEST_SUITE_P(Vocabularies, TokenizerConformanceTest, testing::ValuesIn(all_params()),
                         param_name);

// The list above and the fixtures must not drift apart.
TEST(TokenizerConformanceManifest, ListsExactlyTheTestedVocabularies) {
  std::vector<std::string> listed;
  for (const json& entry : manifest().at("vocabularies")) listed.push_back(entry.at("name"));
  EXPECT_EQ(listed, std::vector<std::string>(kVocabularies.begin(), kVocabularies.end()));
}

}  // namespace
}  // namespace kite
