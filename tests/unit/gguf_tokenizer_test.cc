// Tests for the GGUF vocabulary -> tokenizer.json conversion on small hand-made vocabularies.
// The conversion is checked against Hugging Face `tokenizers` and llama.cpp's test vectors by
// scripts/check_gguf_tokenizer_json.py, which drives the export test at the end of this file.
#include "formats/gguf_tokenizer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "core/file.h"
#include "gguf_test_builder.h"
#include "test_util.h"

namespace kite {
namespace {

using json = nlohmann::json;
using test::GgufBuilder;

const std::string kSpace = "\xe2\x96\x81";  // U+2581

Result<GgufFile> open_vocabulary(const GgufBuilder& builder, const std::string& name = "vocab.gguf") {
  const std::string path = test::temp_dir() + "/" + name;
  EXPECT_TRUE(write_file(path, builder.build()).is_ok());
  return GgufFile::open(path);
}

// A byte-level vocabulary: "h", "i", "hi", "Ġ", "Ġhi", a control token and a user-defined one.
GgufBuilder byte_level_builder(const std::string& pre) {
  GgufBuilder builder;
  builder.add_string("general.architecture", "llama")
      .add_uint32("llama.context_length", 4096)
      .add_string("tokenizer.ggml.model", "gpt2")
      .add_string("tokenizer.ggml.pre", pre)
      .add_string_array("tokenizer.ggml.tokens",
                        {"h", "i", "hi", "\xc4\xa0", "\xc4\xa0hi", "<|begin|>", "<think>"})
      .add_int32_array("tokenizer.ggml.token_type", {1, 1, 1, 1, 1, 3, 4})
      .add_string_array("tokenizer.ggml.merges", {"h i", "\xc4\xa0 hi"})
      .add_uint32("tokenizer.ggml.bos_token_id", 5)
      .add_uint32("tokenizer.ggml.eos_token_id", 5);
  return builder;
}

TEST(GgufTokenizer, ByteLevelVocabulary) {
  auto file = open_vocabulary(byte_level_builder("llama-bpe"));
  ASSERT_TRUE(file.is_ok()) << file.status().message();
  auto tokenizer = tokenizer_json_from_gguf(*file);
  ASSERT_TRUE(tokenizer.is_ok()) << tokenizer.status().message();
  const json& model = (*tokenizer)["model"];
  EXPECT_EQ(model["type"], "BPE");
  EXPECT_EQ(model["vocab"]["\xc4\xa0hi"], 4);
  EXPECT_EQ(model["vocab"].size(), 7u);
  EXPECT_EQ(model["merges"], json::parse(R"([["h","i"],["\u0120","hi"]])"));
  EXPECT_EQ(model["ignore_merges"], true);  // llama-bpe, as llama.cpp's LLAMA3 pre-tokenizer
  EXPECT_EQ(model["byte_fallback"], false);
  EXPECT_TRUE(model["unk_token"].is_null());

  const json& pre = (*tokenizer)["pre_tokenizer"];
  EXPECT_EQ(pre["type"], "Sequence");
  ASSERT_EQ(pre["pretokenizers"].size(), 2u);
  EXPECT_EQ(pre["pretokenizers"][0]["type"], "Split");
  EXPECT_EQ(pre["pretokenizers"][0]["behavior"], "Isolated");
  EXPECT_EQ(pre["pretokenizers"][0]["pattern"]["Regex"].get<std::string>().substr(0, 40),
            R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L})");
  EXPECT_EQ(pre["pretokenizers"][1]["type"], "ByteLevel");
  EXPECT_EQ(pre["pretokenizers"][1]["use_regex"], false);
  EXPECT_EQ((*tokenizer)["decoder"]["type"], "ByteLevel");
  EXPECT_TRUE((*tokenizer)["normalizer"].is_null());

  const json& added = (*tokenizer)["added_tokens"];
  ASSERT_EQ(added.size(), 2u);
  EXPECT_EQ(added[0]["id"], 5);
  EXPECT_EQ(added[0]["content"], "<|begin|>");
  EXPECT_EQ(added[0]["special"], true);
  EXPECT_EQ(added[0]["normalized"], false);
  EXPECT_EQ(added[1]["content"], "<think>");
  EXPECT_EQ(added[1]["special"], false);

  // llama-bpe adds BOS when the file does not say otherwise.
  const json& post = (*tokenizer)["post_processor"];
  EXPECT_EQ(post["type"], "TemplateProcessing");
  EXPECT_EQ(post["single"][0]["SpecialToken"]["id"], "<|begin|>");
  EXPECT_EQ(post["single"][1]["Sequence"]["id"], "A");
  EXPECT_EQ(post["special_tokens"]["<|begin|>"]["ids"], json::array({5}));
}

TEST(GgufTokenizer, PreTokenizerNamesFollowLlamaCpp) {
  struct Case {
    std::string pre;
    size_t splits;
    bool ignore_merges;
    bool adds_bos;
  };
  const Case cases[] = {{"gpt-2", 1, false, false},        {"smollm", 2, false, false},
                        {"starcoder", 2, false, false},    {"falcon", 3, false, false},
                        {"default", 4, false, false},      {"qwen2", 1, false, false},
                        {"deepseek-llm", 6, false, false}, {"tekken", 1, true, true}};
  for (const Case& c : cases) {
    auto file = open_vocabulary(byte_level_builder(c.pre));
    ASSERT_TRUE(file.is_ok());
    auto tokenizer = tokenizer_json_from_gguf(*file);
    ASSERT_TRUE(tokenizer.is_ok()) << c.pre << ": " << tokenizer.status().message();
    EXPECT_EQ((*tokenizer)["pre_tokenizer"]["pretokenizers"].size(), c.splits + 1) << c.pre;
    EXPECT_EQ((*tokenizer)["model"]["ignore_merges"], c.ignore_merges) << c.pre;
    EXPECT_EQ((*tokenizer)["post_processor"].is_null(), !c.adds_bos) << c.pre;
  }
  auto smollm = open_vocabulary(byte_level_builder("smollm"));
  const json splits = (*tokenizer_json_from_gguf(*smollm))["pre_tokenizer"]["pretokenizers"];
  EXPECT_EQ(splits[0]["pattern"]["Regex"], R"(\p{N})");
}

TEST(GgufTokenizer, FileFlagsOverrideDefaults) {
  GgufBuilder builder = byte_level_builder("llama-bpe");
  builder.add_bool("tokenizer.ggml.add_bos_token", false)
      .add_bool("tokenizer.ggml.add_eos_token", true);
  auto file = open_vocabulary(builder);
  auto tokenizer = tokenizer_json_from_gguf(*file);
  ASSERT_TRUE(tokenizer.is_ok()) << tokenizer.status().message();
  const json& single = (*tokenizer)["post_processor"]["single"];
  ASSERT_EQ(single.size(), 2u);
  EXPECT_EQ(single[0]["Sequence"]["id"], "A");
  EXPECT_EQ(single[1]["SpecialToken"]["id"], "<|begin|>");
  const json& pair = (*tokenizer)["post_processor"]["pair"];
  ASSERT_EQ(pair.size(), 4u);
  EXPECT_EQ(pair[3]["SpecialToken"]["type_id"], 1);
}

// A SentencePiece vocabulary without merges: they are derived from the scores.
GgufBuilder sentencepiece_builder() {
  GgufBuilder builder;
  builder.add_string("general.architecture", "llama")
      .add_string("tokenizer.ggml.model", "llama")
      .add_string_array("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>", "<0x0A>", kSpace, "a",
                                                  "b", kSpace + "a", "ab", kSpace + "ab", "ba"})
      .add_float32_array("tokenizer.ggml.scores", {0, 0, 0, 0, -1, -2, -3, -4, -5, -4, -6})
      .add_int32_array("tokenizer.ggml.token_type", {2, 3, 3, 6, 1, 1, 1, 1, 1, 1, 1})
      .add_uint32("tokenizer.ggml.bos_token_id", 1)
      .add_uint32("tokenizer.ggml.eos_token_id", 2)
      .add_uint32("tokenizer.ggml.unknown_token_id", 0)
      .add_string("tokenizer.chat_template", "{{ messages }}");
  return builder;
}

TEST(GgufTokenizer, SentencePieceVocabulary) {
  auto file = open_vocabulary(sentencepiece_builder());
  ASSERT_TRUE(file.is_ok());
  auto tokenizer = tokenizer_json_from_gguf(*file);
  ASSERT_TRUE(tokenizer.is_ok()) << tokenizer.status().message();
  const json& model = (*tokenizer)["model"];
  EXPECT_EQ(model["unk_token"], "<unk>");
  EXPECT_EQ(model["byte_fallback"], true);
  EXPECT_EQ(model["fuse_unk"], true);
  // Every split of a token into two tokens, best merged score first; equal scores (-4: "▁a" and
  // "▁ab") keep the longer left piece first, then vocabulary order.
  //   ▁ab (-4): "▁a"+"b" (left 2 chars), "▁"+"ab" (left 1 char)
  //   ▁a  (-4): "▁"+"a"
  //   ab  (-5): "a"+"b";   ba (-6): "b"+"a"
  const json expected = json::parse(R"([["▁a","b"],["▁","ab"],["▁","a"],["a","b"],["b","a"]])");
  EXPECT_EQ(model["merges"], expected) << model["merges"].dump();

  const json& normalizers = (*tokenizer)["normalizer"]["normalizers"];
  ASSERT_EQ(normalizers.size(), 2u);
  EXPECT_EQ(normalizers[0]["type"], "Prepend");
  EXPECT_EQ(normalizers[0]["prepend"], kSpace);
  EXPECT_EQ(normalizers[1]["type"], "Replace");
  EXPECT_TRUE((*tokenizer)["pre_tokenizer"].is_null());
  const json& decoders = (*tokenizer)["decoder"]["decoders"];
  ASSERT_EQ(decoders.size(), 4u);
  EXPECT_EQ(decoders[1]["type"], "ByteFallback");
  EXPECT_EQ(decoders[3]["type"], "Strip");

  // <unk> (unknown), <s> and </s> (control) are special; the byte token is not added.
  const json& added = (*tokenizer)["added_tokens"];
  ASSERT_EQ(added.size(), 3u);
  EXPECT_EQ(added[0]["content"], "<unk>");
  EXPECT_EQ(added[2]["content"], "</s>");
  // SentencePiece vocabularies add BOS unless told otherwise.
  EXPECT_EQ((*tokenizer)["post_processor"]["single"][0]["SpecialToken"]["id"], "<s>");
}

TEST(GgufTokenizer, SentencePieceWithoutPrefixSpace) {
  GgufBuilder builder = sentencepiece_builder();
  builder.add_bool("tokenizer.ggml.add_space_prefix", false);
  auto file = open_vocabulary(builder);
  auto tokenizer = tokenizer_json_from_gguf(*file);
  ASSERT_TRUE(tokenizer.is_ok()) << tokenizer.status().message();
  EXPECT_EQ((*tokenizer)["normalizer"]["normalizers"].size(), 1u);
  EXPECT_EQ((*tokenizer)["decoder"]["decoders"].size(), 3u);
}

TEST(GgufTokenizer, TokenizerConfig) {
  auto file = open_vocabulary(sentencepiece_builder());
  auto config = tokenizer_config_from_gguf(*file);
  ASSERT_TRUE(config.is_ok()) << config.status().message();
  EXPECT_EQ((*config)["bos_token"], "<s>");
  EXPECT_EQ((*config)["eos_token"], "</s>");
  EXPECT_EQ((*config)["unk_token"], "<unk>");
  EXPECT_TRUE((*config)["pad_token"].is_null());
  EXPECT_EQ((*config)["add_bos_token"], true);
  EXPECT_EQ((*config)["add_eos_token"], false);
  EXPECT_EQ((*config)["chat_template"], "{{ messages }}");
  EXPECT_FALSE(config->contains("model_max_length"));

  auto byte_level = open_vocabulary(byte_level_builder("smollm"));
  auto byte_config = tokenizer_config_from_gguf(*byte_level);
  ASSERT_TRUE(byte_config.is_ok());
  EXPECT_EQ((*byte_config)["model_max_length"], 4096);
  EXPECT_EQ((*byte_config)["add_bos_token"], false);
  EXPECT_EQ((*byte_config)["clean_up_tokenization_spaces"], false);  // smollm, as llama.cpp
}

void expect_vocabulary_refused(const GgufBuilder& builder, StatusCode code,
                               const std::string& fragment) {
  auto file = open_vocabulary(builder, "refused.gguf");
  ASSERT_TRUE(file.is_ok()) << file.status().message();
  auto tokenizer = tokenizer_json_from_gguf(*file);
  ASSERT_FALSE(tokenizer.is_ok()) << fragment;
  EXPECT_EQ(tokenizer.status().code(), code) << tokenizer.status().message();
  EXPECT_NE(tokenizer.status().message().find("refused.gguf: "), std::string::npos)
      << tokenizer.status().message();
  EXPECT_NE(tokenizer.status().message().find(fragment), std::string::npos)
      << tokenizer.status().message();
}

TEST(GgufTokenizer, RefusesWhatItCannotConvert) {
  GgufBuilder bert;
  bert.add_string("tokenizer.ggml.model", "bert").add_string_array("tokenizer.ggml.tokens", {"a"});
  expect_vocabulary_refused(bert, StatusCode::kUnsupported,
                            "tokenizer model 'bert' is not supported");

  expect_vocabulary_refused(byte_level_builder("kimi-k2"), StatusCode::kUnsupported,
                            "pre-tokenizer 'kimi-k2' (tokenizer.ggml.pre) is not supported");

  GgufBuilder no_vocab;
  no_vocab.add_string("tokenizer.ggml.model", "gpt2");
  expect_vocabulary_refused(no_vocab, StatusCode::kCorrupt, "'tokenizer.ggml.tokens' is missing");

  GgufBuilder no_merges;
  no_merges.add_string("tokenizer.ggml.model", "gpt2")
      .add_string_array("tokenizer.ggml.tokens", {"a"});
  expect_vocabulary_refused(no_merges, StatusCode::kCorrupt, "tokenizer.ggml.merges is missing");

  GgufBuilder no_scores;
  no_scores.add_string("tokenizer.ggml.model", "llama")
      .add_string_array("tokenizer.ggml.tokens", {"a"});
  expect_vocabulary_refused(no_scores, StatusCode::kCorrupt, "needs tokenizer.ggml.scores");

  GgufBuilder invalid;
  invalid.add_string("tokenizer.ggml.model", "llama")
      .add_string_array("tokenizer.ggml.tokens", {"a", "\xc3\x28"})
      .add_float32_array("tokenizer.ggml.scores", {0, 0});
  expect_vocabulary_refused(invalid, StatusCode::kCorrupt, "token 1 is not valid UTF-8");

  GgufBuilder short_types;
  short_types.add_string("tokenizer.ggml.model", "llama")
      .add_string_array("tokenizer.ggml.tokens", {"a", "b"})
      .add_float32_array("tokenizer.ggml.scores", {0, 0})
      .add_int32_array("tokenizer.ggml.token_type", {1});
  expect_vocabulary_refused(short_types, StatusCode::kCorrupt,
                            "token_type has 1 entries for 2 tokens");

  GgufBuilder nan_scores;
  nan_scores.add_string("tokenizer.ggml.model", "llama")
      .add_string_array("tokenizer.ggml.tokens", {"a", "b"})
      .add_float32_array("tokenizer.ggml.scores", {0, std::nanf("")});
  expect_vocabulary_refused(nan_scores, StatusCode::kCorrupt, "scores holds NaN");

  GgufBuilder spaceless;
  spaceless.add_string("tokenizer.ggml.model", "gpt2")
      .add_string_array("tokenizer.ggml.tokens", {"a"})
      .add_string_array("tokenizer.ggml.merges", {"ab"});
  expect_vocabulary_refused(spaceless, StatusCode::kCorrupt, "merge 0 is not two UTF-8 pieces");

  GgufBuilder bos_without_id;
  bos_without_id.add_string("tokenizer.ggml.model", "gpt2")
      .add_string("tokenizer.ggml.pre", "llama-bpe")
      .add_string_array("tokenizer.ggml.tokens", {"a"})
      .add_string_array("tokenizer.ggml.merges", {})
      .add_uint32("tokenizer.ggml.bos_token_id", 7);
  expect_vocabulary_refused(bos_without_id, StatusCode::kCorrupt, "no valid bos_token_id");
}

// The fuzzer's vocabulary seeds convert, and the model seed opens as a model source.
TEST(GgufTokenizer, FuzzSeedVocabulariesConvert) {
  const std::string corpus = test::source_dir() + "/fuzz/corpus/gguf_fuzzer/";
  for (const char* name : {"vocab_gpt2.gguf", "vocab_llama.gguf", "tiny_model.gguf"}) {
    auto file = GgufFile::open(corpus + name);
    ASSERT_TRUE(file.is_ok()) << file.status().message();
    auto tokenizer = tokenizer_json_from_gguf(*file);
    ASSERT_TRUE(tokenizer.is_ok()) << tokenizer.status().message();
    auto config = tokenizer_config_from_gguf(*file);
    ASSERT_TRUE(config.is_ok()) << config.status().message();
  }
  auto vocab = GgufFile::open(corpus + "vocab_llama.gguf");
  const json merges = (*tokenizer_json_from_gguf(*vocab))["model"]["merges"];
  EXPECT_GT(merges.size(), 5u);  // derived from the scores
}

// Not a check by itself: with KITE_GGUF_EXPORT_SOURCES (GGUF paths separated by ':') and
// KITE_GGUF_EXPORT_DIR set, writes <dir>/<file name>.tokenizer.json (or .error with the message)
// for each source. scripts/check_gguf_tokenizer_json.py runs this and checks the results with
// Hugging Face tokenizers.
TEST(GgufTokenizerExport, WritesTokenizerJsonForRequestedFiles) {
  const char* sources = std::getenv("KITE_GGUF_EXPORT_SOURCES");
  const char* output_dir = std::getenv("KITE_GGUF_EXPORT_DIR");
  if (!sources || !output_dir) GTEST_SKIP() << "KITE_GGUF_EXPORT_SOURCES/_DIR not set";
  std::string remaining = sources;
  while (!remaining.empty()) {
    const size_t colon = remaining.find(':');
    const std::string path = remaining.substr(0, colon);
    remaining = colon == std::string::npos ? "" : remaining.substr(colon + 1);
    const std::string base =
        std::string(output_dir) + "/" + std::filesystem::path(path).filename().string();
    auto file = GgufFile::open(path);
    Result<json> tokenizer = file.is_ok() ? tokenizer_json_from_gguf(*file) : file.status();
    if (tokenizer.is_ok()) {
      ASSERT_TRUE(write_file(base + ".tokenizer.json", tokenizer->dump()).is_ok());
    } else {
      ASSERT_TRUE(write_file(base + ".error", tokenizer.status().message()).is_ok());
    }
  }
}

}  // namespace
}  // namespace kite
