// Perplexity (src/runtime/perplexity.h, `kite eval perplexity`): tokenizing and chunking as
// llama-perplexity does, the batched scoring against a plain one-chunk-at-a-time recomputation on a
// tiny random model, the command's errors, and the real check: SmolLM2-135M on WikiText-2 against
// llama.cpp's perplexity of the same float32 weights (tests/fixtures/golden/llamacpp).
#include "runtime/perplexity.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "core/file.h"
#include "test_util.h"

namespace kite {
namespace {

std::string tiny_model_dir() {
  const std::string fixture = test::source_dir() + "/tests/fixtures/tiny_llama";
  const std::string model_dir = test::temp_dir();
  for (const char* name : {"config.json", "tokenizer.json", "tokenizer_config.json"}) {
    std::filesystem::copy_file(fixture + "/" + name, model_dir + "/" + name);
  }
  return model_dir;
}

Tokenizer tiny_tokenizer() {
  return Tokenizer::from_directory(test::source_dir() + "/tests/fixtures/tiny_llama").value();
}

// The tiny tokenizer with a post-processor that adds <s> (id 1), as Llama 2's does.
Tokenizer tiny_tokenizer_adding_bos() {
  const std::string path = test::source_dir() + "/tests/fixtures/tiny_llama/tokenizer.json";
  auto json = nlohmann::json::parse(read_file(path).value());
  const nlohmann::json bos = {{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}};
  json["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", {bos, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
      {"pair",
       {bos,
        {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
        {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
      {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}};
  return Tokenizer::from_json(json.dump(), "bos tokenizer").value();
}

TEST(PerplexityTokens, DropOneFinalNewlineAndKeepCarriageReturns) {
  const Tokenizer tokenizer = tiny_tokenizer();
  const PerplexityTokens tokens = tokenize_for_perplexity(tokenizer, "one two\r\nthree\r\n\n");
  EXPECT_EQ(tokens.tokens, tokenizer.encode("one two\r\nthree\r\n", true));
  EXPECT_NE(tokens.tokens, tokenizer.encode("one two\r\nthree\r\n\n", true));
  EXPECT_FALSE(tokens.bos.has_value());
  EXPECT_EQ(tokens.special_tokens_in_text, 0);
  EXPECT_EQ(tokenize_for_perplexity(tokenizer, "a </s> b").special_tokens_in_text, 1);
}

TEST(PerplexityTokens, FindTheBosAVocabularyAdds) {
  const Tokenizer tokenizer = tiny_tokenizer_adding_bos();
  const PerplexityTokens tokens = tokenize_for_perplexity(tokenizer, "one two three\n");
  ASSERT_TRUE(tokens.bos.has_value());
  EXPECT_EQ(*tokens.bos, 1);
  EXPECT_EQ(tokens.tokens.front(), 1);
  EXPECT_EQ(std::vector<int32_t>(tokens.tokens.begin() + 1, tokens.tokens.end()),
            tokenizer.encode("one two three", false));
  // The added BOS is not a special token of the text.
  EXPECT_EQ(tokens.special_tokens_in_text, 0);
}

TEST(PerplexityChunks, CutConsecutiveChunksAndDropTheRest) {
  PerplexityTokens tokens;
  for (int32_t i = 0; i < 23; ++i) tokens.tokens.push_back(100 + i);
  const auto chunks = perplexity_chunks(tokens, {.chunk_size = 5}).value();
  ASSERT_EQ(chunks.size(), 4u);  // 3 tokens left over
  EXPECT_EQ(chunks[0], (std::vector<int32_t>{100, 101, 102, 103, 104}));
  EXPECT_EQ(chunks[3], (std::vector<int32_t>{115, 116, 117, 118, 119}));
  EXPECT_EQ(perplexity_chunks(tokens, {.chunk_size = 5, .max_tokens = 14}).value().size(), 2u);
  EXPECT_EQ(perplexity_chunks(tokens, {.chunk_size = 5, .max_tokens = 1000}).value().size(), 4u);

  // With a BOS-adding vocabulary each chunk starts with BOS in place of its first token.
  tokens.bos = 1;
  const auto with_bos = perplexity_chunks(tokens, {.chunk_size = 5}).value();
  EXPECT_EQ(with_bos[0], (std::vector<int32_t>{1, 101, 102, 103, 104}));
  EXPECT_EQ(with_bos[2], (std::vector<int32_t>{1, 111, 112, 113, 114}));
}

TEST(PerplexityChunks, RefuseTooSmallChunksAndTooShortTexts) {
  PerplexityTokens tokens;
  tokens.tokens.assign(10, 7);
  for (int64_t size : {-1, 0, 1, 2}) {
    const auto chunks = perplexity_chunks(tokens, {.chunk_size = size});
    ASSERT_FALSE(chunks.is_ok()) << size;
    EXPECT_NE(chunks.status().message().find("--chunk_size"), std::string::npos);
  }
  const auto too_short = perplexity_chunks(tokens, {.chunk_size = 11});
  ASSERT_FALSE(too_short.is_ok());
  EXPECT_NE(too_short.status().message().find("fewer than one chunk of 11"), std::string::npos)
      << too_short.status().message();
  const auto limited = perplexity_chunks(tokens, {.chunk_size = 5, .max_tokens = 4});
  ASSERT_FALSE(limited.is_ok());
  EXPECT_NE(limited.status().message().find("--max_tokens 4"), std::string::npos)
      << limited.status().message();
}

TEST(PerplexityScoring, ScoresTheSecondHalfOfEachChunk) {
  EXPECT_EQ(first_scored_position(512), 256);
  EXPECT_EQ(scored_tokens_per_chunk(512), 255);  // positions 256..510 predict 257..511
  EXPECT_EQ(scored_tokens_per_chunk(3), 1);
  EXPECT_EQ(scored_tokens_per_chunk(16), 7);
  const std::vector<float> logits = {1.0f, 2.0f, 3.0f};
  const double log_sum = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0));
  // exp in float, as llama.cpp computes it, summed in double.
  EXPECT_NEAR(token_nll(logits, 0), log_sum - 1.0, 1e-7);
  EXPECT_NEAR(token_nll(logits, 2), log_sum - 3.0, 1e-7);
  // Large logits: computed from the maximum, no overflow.
  EXPECT_NEAR(token_nll(std::vector<float>{1000.0f, 1000.0f}, 1), std::log(2.0), 1e-7);
}

// ---- a tiny random Llama engine, built by the kite binary ----
class PerplexityEngine : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string model_dir = tiny_model_dir();
    const std::string checkpoint = test::temp_dir() + "/checkpoint";
    const test::CommandResult convert =
        test::run_kite("convert --random --dtype float32 --model_dir " + model_dir +
                       " --output_dir " + checkpoint);
    ASSERT_EQ(convert.exit_code, 0) << convert.output;
    // Three chunks a step at most, with blocks of 4 tokens.
    engine_dir_ = new std::string(test::temp_dir() + "/engine");
    const test::CommandResult build = test::run_kite(
        "build --checkpoint_dir " + checkpoint + " --output_dir " + *engine_dir_ +
        " --max_batch_size 3 --max_input_len 16 --max_seq_len 20 --tokens_per_block 4");
    ASSERT_EQ(build.exit_code, 0) << build.output;
    small_engine_dir_ = new std::string(test::temp_dir() + "/small_engine");
    const test::CommandResult small = test::run_kite(
        "build --checkpoint_dir " + checkpoint + " --output_dir " + *small_engine_dir_ +
        " --max_batch_size 2 --max_input_len 8 --max_seq_len 12 --tokens_per_block 4");
    ASSERT_EQ(small.exit_code, 0) << small.output;
  }
  static std::string* engine_dir_;
  static std::string* small_engine_dir_;
};
std::string* PerplexityEngine::engine_dir_ = nullptr;
std::string* PerplexityEngine::small_engine_dir_ = nullptr;

// -log softmax(row)[token] in long double, written apart from token_nll.
long double reference_nll(const float* row, int64_t vocab, int32_t token) {
  long double sum = 0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp((long double)row[i]);
  return std::log(sum) - (long double)row[token];
}

// The chunk's NLL sum from a forward pass over that chunk alone, with logits at every position.
long double recompute_chunk_nll(Engine& engine, const std::vector<int32_t>& chunk) {
  KvCache& cache = engine.kv_cache();
  const int64_t block_size = cache.view().block_size;
  const int64_t length = int64_t(chunk.size());
  const int64_t block_count = (length + block_size - 1) / block_size;
  const std::vector<int32_t> blocks = cache.allocate_blocks(block_count).value();
  StepInput step;
  step.token_ids = chunk;
  for (int64_t position = 0; position < length; ++position) {
    step.positions.push_back(int32_t(position));
    step.slot_mapping.push_back(blocks[size_t(position / block_size)] * int32_t(block_size) +
                                int32_t(position % block_size));
    step.logit_rows.push_back(int32_t(position));
  }
  step.query_start = {0, int32_t(length)};
  step.context_length = {int32_t(length)};
  step.block_table = blocks;
  step.max_blocks_per_sequence = block_count;
  const std::vector<float> logits = engine.model().forward(step, cache.view()).value();
  cache.free_blocks(blocks);
  const int64_t vocab = engine.config().model.vocab_size;
  long double sum = 0;
  for (int64_t position = length / 2; position <= length - 2; ++position) {
    sum += reference_nll(logits.data() + position * vocab, vocab, chunk[size_t(position + 1)]);
  }
  return sum;
}

std::vector<std::vector<int32_t>> random_chunks(int count, int length, int32_t vocab) {
  std::mt19937 generator(11);
  std::vector<std::vector<int32_t>> chunks(static_cast<size_t>(count));
  for (auto& chunk : chunks) {
    for (int i = 0; i < length; ++i) chunk.push_back(int32_t(generator() % uint32_t(vocab)));
  }
  return chunks;
}

TEST_F(PerplexityEngine, BatchedScoresMatchOneChunkAtATime) {
  auto engine = Engine::load(*engine_dir_).value();
  const int64_t free_blocks = engine->kv_cache().free_blocks();
  const auto chunks = random_chunks(5, 16, int32_t(engine->config().model.vocab_size));
  std::vector<int64_t> progress;
  const PerplexityResult result =
      evaluate_perplexity(*engine, chunks, [&](int64_t done) { progress.push_back(done); }).value();
  // max_batch_size 3: two steps, of 3 and 2 chunks.
  EXPECT_EQ(progress, (std::vector<int64_t>{3, 5}));
  EXPECT_EQ(engine->kv_cache().free_blocks(), free_blocks);

  ASSERT_EQ(result.chunks.size(), chunks.size());
  EXPECT_EQ(result.scored_tokens, 5 * 7);
  long double total = 0;
  for (size_t c = 0; c < chunks.size(); ++c) {
    const long double expected = recompute_chunk_nll(*engine, chunks[c]);
    total += expected;
    EXPECT_EQ(result.chunks[c].count, 7);
    // A random model's NLL per token is around log(vocab) ~ 5.8: the sum is far from 0.
    EXPECT_GT(result.chunks[c].nll_sum, 7.0);
    EXPECT_NEAR(result.chunks[c].nll_sum, double(expected), 1e-6 * double(expected))
        << "chunk " << c;
  }
  EXPECT_NEAR(result.nll_sum, double(total), 1e-6 * double(total));
  EXPECT_NEAR(result.perplexity(), std::exp(double(total) / 35.0), 1e-6 * result.perplexity());

  // One chunk a step gives the same numbers.
  auto one_by_one = Engine::load(*small_engine_dir_).value();
  const auto short_chunks = random_chunks(3, 8, int32_t(engine->config().model.vocab_size));
  const PerplexityResult batched = evaluate_perplexity(*engine, short_chunks).value();
  for (size_t c = 0; c < short_chunks.size(); ++c) {
    const PerplexityResult alone = evaluate_perplexity(*one_by_one, {short_chunks[c]}).value();
    EXPECT_NEAR(alone.nll_sum, batched.chunks[c].nll_sum, 1e-6 * alone.nll_sum) << "chunk " << c;
  }
}

TEST_F(PerplexityEngine, BosReplacesTheFirstTokenOfEveryChunk) {
  auto engine = Engine::load(*engine_dir_).value();
  PerplexityTokens tokens;
  tokens.tokens = random_chunks(1, 32, int32_t(engine->config().model.vocab_size)).front();
  tokens.bos = 1;
  const auto chunks = perplexity_chunks(tokens, {.chunk_size = 16}).value();
  const PerplexityResult with_bos = evaluate_perplexity(*engine, chunks).value();
  for (size_t c = 0; c < chunks.size(); ++c) {
    std::vector<int32_t> expected(tokens.tokens.begin() + int64_t(c) * 16,
                                  tokens.tokens.begin() + int64_t(c + 1) * 16);
    expected.front() = 1;
    EXPECT_EQ(chunks[c], expected);
    const long double recomputed = recompute_chunk_nll(*engine, expected);
    EXPECT_NEAR(with_bos.chunks[c].nll_sum, double(recomputed), 1e-6 * double(recomputed));
  }
}

TEST_F(PerplexityEngine, RefusesAnEngineSmallerThanTheChunks) {
  auto engine = Engine::load(*small_engine_dir_).value();
  const Status status = check_perplexity_engine(*engine, 16);
  ASSERT_FALSE(status.is_ok());
  EXPECT_NE(status.message().find("--max_input_len 16"), std::string::npos) << status.message();
  EXPECT_TRUE(check_perplexity_engine(*engine, 8).is_ok());
  const auto result = evaluate_perplexity(*engine, random_chunks(2, 16, 100));
  EXPECT_FALSE(result.is_ok());
}

std::string write_text_file(const std::string& text) {
  const std::string path = test::temp_dir() + "/text.raw";
  EXPECT_TRUE(write_file(path, text).is_ok());
  return path;
}

// Some English text, a few hundred tokens for the tiny tokenizer.
std::string sample_text() {
  std::string text;
  for (int i = 0; i < 20; ++i) {
    text += " = Chapter " + std::to_string(i) +
            " = \r\n The quick brown fox jumps over the lazy dog , again and again .\r\n";
  }
  return text;
}

TEST_F(PerplexityEngine, CommandPrintsTheResultAndWritesJson) {
  const std::string dataset = write_text_file(sample_text());
  const std::string json_path = test::temp_dir() + "/ppl.json";
  const test::CommandResult run =
      test::run_kite("eval perplexity --engine_dir " + *engine_dir_ + " --dataset " + dataset +
                     " --chunk_size 16 --max_tokens 100 --output_json " + json_path);
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("over 42 tokens (6 chunks of 16)"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("kite eval perplexity"), std::string::npos) << run.output;  // progress

  // The same numbers as the runtime functions give in this process.
  auto engine = Engine::load(*engine_dir_).value();
  const PerplexityTokens tokens =
      tokenize_for_perplexity(engine->tokenizer(), read_file(dataset).value());
  const auto chunks = perplexity_chunks(tokens, {.chunk_size = 16, .max_tokens = 100}).value();
  const PerplexityResult expected = evaluate_perplexity(*engine, chunks).value();
  const auto record = nlohmann::json::parse(read_file(json_path).value());
  EXPECT_EQ(record.at("n_chunks").get<int64_t>(), 6);
  EXPECT_EQ(record.at("chunk_size").get<int64_t>(), 16);
  EXPECT_EQ(record.at("scored_tokens").get<int64_t>(), 42);
  EXPECT_EQ(record.at("tokens_evaluated").get<int64_t>(), 96);
  EXPECT_EQ(record.at("file_tokens").get<size_t>(), tokens.tokens.size());
  ASSERT_EQ(record.at("chunks").size(), 6u);
  for (size_t c = 0; c < 6; ++c) {
    EXPECT_EQ(record["chunks"][c].at("count").get<int64_t>(), 7);
    EXPECT_NEAR(record["chunks"][c].at("nll_sum").get<double>(), expected.chunks[c].nll_sum,
                1e-9 * expected.chunks[c].nll_sum);
  }
  EXPECT_NEAR(record.at("perplexity").get<double>(), expected.perplexity(),
              1e-9 * expected.perplexity());
  char line[64];
  std::snprintf(line, sizeof(line), "perplexity: %.4f over", expected.perplexity());
  EXPECT_NE(run.output.find(line), std::string::npos) << run.output;
}

TEST_F(PerplexityEngine, CommandErrorsAreOneLine) {
  const std::string dataset = write_text_file(sample_text());
  const std::string short_dataset = write_text_file("Just a few words.\n");
  const std::string common = "eval perplexity --engine_dir " + *engine_dir_;
  struct Case {
    std::string arguments;
    std::string message;
  };
  for (const Case& c : std::vector<Case>{
           {common + " --dataset " + test::temp_dir() + "/missing.raw", "does not exist"},
           {"eval perplexity --engine_dir " + *small_engine_dir_ + " --dataset " + dataset +
                " --chunk_size 16",
            "build it again with --max_input_len 16"},
           {common + " --dataset " + dataset + " --chunk_size 2", "--chunk_size"},
           {common + " --dataset " + dataset + " --chunk_size 1", "--chunk_size"},
           {common + " --dataset " + short_dataset + " --chunk_size 16",
            "fewer than one chunk of 16"},
           {common + " --dataset " + dataset + " --chunk_size 16 --max_tokens 10",
            "fewer than one chunk of 16"},
           {common + " --dataset " + dataset + " --max_tokens -5 --chunk_size 16", "--max_tokens"},
           {"eval perplexity --engine_dir " + test::temp_dir() + " --dataset " + dataset,
            "kite build"},
       }) {
    const test::CommandResult result = test::run_kite(c.arguments);
    EXPECT_NE(result.exit_code, 0) << c.arguments;
    EXPECT_EQ(result.signal, 0) << c.arguments;
    EXPECT_NE(result.output.find(c.message), std::string::npos) << c.arguments << "\n"
                                                                << result.output;
    EXPECT_EQ(std::count(result.output.begin(), result.output.end(), '\n'), 1)
        << c.arguments << "\n"
        << result.output;
  }
  // `kite eval` alone names what it can evaluate.
  const test::CommandResult bare = test::run_kite("eval");
  EXPECT_EQ(bare.exit_code, 2);
  EXPECT_NE(bare.output.find("kite eval perplexity"), std::string::npos) << bare.output;
}

// ---- SmolLM2-135M on WikiText-2 against llama.cpp ----
TEST(SmolLM2Perplexity, MatchesLlamaCppOnWikiText2) {
  if (test::demo_model().empty()) GTEST_SKIP() << "demo model not fetched";
  const std::string dataset = test::data_dir() + "/wikitext-2-raw/wiki.test.raw";
  if (!path_exists(dataset)) GTEST_SKIP() << "WikiText-2 not found: " << dataset;
  const std::string golden = test::source_dir() + "/tests/fixtures/golden/llamacpp";
  const auto reference =
      nlohmann::json::parse(read_file(golden + "/smollm2_reference.json").value()).at("perplexity");
  const auto reference_tokens =
      nlohmann::json::parse(read_file(golden + "/smollm2_wikitext2_tokens.json").value())
          .at("tokens")
          .get<std::vector<int32_t>>();
  ASSERT_EQ(reference_tokens.size(), 16384u);

  const auto started = std::chrono::steady_clock::now();
  const std::string checkpoint = test::convert_demo_model("float32");
  ASSERT_FALSE(checkpoint.empty());
  const std::string engine =
      test::build_engine(checkpoint, "--max_batch_size 4 --max_input_len 512 --max_seq_len 544");
  ASSERT_FALSE(engine.empty());
  const auto prepared = std::chrono::steady_clock::now();

  // The token ids must be llama.cpp's for the chunk boundaries to agree.
  const Tokenizer tokenizer = Tokenizer::from_directory(engine).value();
  const PerplexityTokens tokens = tokenize_for_perplexity(tokenizer, read_file(dataset).value());
  EXPECT_EQ(tokens.tokens.size(), reference.at("file_tokens").get<size_t>());
  EXPECT_FALSE(tokens.bos.has_value());
  ASSERT_GE(tokens.tokens.size(), reference_tokens.size());
  EXPECT_EQ(std::vector<int32_t>(tokens.tokens.begin(), tokens.tokens.begin() + 512),
            std::vector<int32_t>(reference_tokens.begin(), reference_tokens.begin() + 512))
      << "the first chunk's token ids differ from llama.cpp's";
  const auto mismatch =
      std::mismatch(reference_tokens.begin(), reference_tokens.end(), tokens.tokens.begin());
  EXPECT_EQ(mismatch.first, reference_tokens.end())
      << "first token id that differs from llama.cpp's: index "
      << mismatch.first - reference_tokens.begin();

  // The first 16 of the reference's 32 chunks (4080 scored tokens): the test's run time is halved,
  // and the reference perplexity is recomputed over those chunks from their NLL sums.
  constexpr size_t kChunks = 16;
  const std::string json_path = test::temp_dir() + "/perplexity.json";
  const auto evaluated = test::run_kite("eval perplexity --engine_dir " + engine + " --dataset " +
                                        dataset + " --max_tokens " + std::to_string(512 * kChunks) +
                                        " --output_json " + json_path);
  ASSERT_EQ(evaluated.exit_code, 0) << evaluated.output;
  const auto finished = std::chrono::steady_clock::now();
  EXPECT_NE(evaluated.output.find("over 4080 tokens (16 chunks of 512)"), std::string::npos)
      << evaluated.output;

  const auto record = nlohmann::json::parse(read_file(json_path).value());
  const double ours = record.at("perplexity").get<double>();
  const auto& chunks = record.at("chunks");
  const auto& expected_chunks = reference.at("chunks_f32");
  ASSERT_EQ(chunks.size(), kChunks);
  ASSERT_GE(expected_chunks.size(), kChunks);
  double expected_nll = 0, expected_count = 0;
  for (size_t c = 0; c < kChunks; ++c) {
    expected_nll += expected_chunks[c].at("nll_sum").get<double>();
    expected_count += expected_chunks[c].at("count").get<double>();
  }
  const double expected = std::exp(expected_nll / expected_count);
  const double relative = std::abs(ours - expected) / expected;
  double worst_chunk = 0;
  for (size_t c = 0; c < chunks.size(); ++c) {
    EXPECT_EQ(chunks[c].at("count"), expected_chunks[c].at("count")) << "chunk " << c;
    const double sum = chunks[c].at("nll_sum").get<double>();
    const double expected_sum = expected_chunks[c].at("nll_sum").get<double>();
    const double chunk_relative = std::abs(sum - expected_sum) / expected_sum;
    worst_chunk = std::max(worst_chunk, chunk_relative);
    EXPECT_LT(chunk_relative, 0.01) << "chunk " << c << ": " << sum << " vs " << expected_sum;
  }
  auto seconds = [](auto from, auto to) {
    return std::chrono::duration<double>(to - from).count();
  };
  std::printf(
      "[ PPL      ] kite %.6f, llama.cpp %.6f: relative difference %.2e (worst chunk NLL sum "
      "%.2e); convert + build %.1f s, eval %.1f s\n",
      ours, expected, relative, worst_chunk, seconds(started, prepared),
      seconds(prepared, finished));
  EXPECT_LT(relative, 0.01);
}

// ---- SmolLM2-135M weight-only quantized: perplexity near the unquantized model's ----
// The first 4 chunks of WikiText-2 (1020 scored tokens) through a bfloat16 engine and through
// int8 (per channel) and int4 (groups of 64) weight-only engines of the same conversion; the
// bounds leave about twice the change measured (docs/perf/weight_only.md).
constexpr double kInt8Bound = 0.01;  // relative change of the perplexity (measured 0.4%)
constexpr double kInt4Bound = 0.95;  // relative increase (measured 47.6%)
TEST(SmolLM2Perplexity, WeightOnlyQuantizedStaysNearTheUnquantizedModel) {
  if (test::demo_model().empty()) GTEST_SKIP() << "demo model not fetched";
  const std::string dataset = test::data_dir() + "/wikitext-2-raw/wiki.test.raw";
  if (!path_exists(dataset)) GTEST_SKIP() << "WikiText-2 not found: " << dataset;
  auto perplexity = [&](const std::string& convert_flags) {
    const std::string checkpoint = test::temp_dir() + "/ckpt";
    const auto convert = test::run_kite("convert --gguf " + test::demo_model() + " --output_dir " +
                                        checkpoint + " --dtype bfloat16 " + convert_flags);
    EXPECT_EQ(convert.exit_code, 0) << convert.output;
    const std::string engine =
        test::build_engine(checkpoint, "--max_batch_size 4 --max_input_len 512 --max_seq_len 544");
    const std::string json_path = test::temp_dir() + "/perplexity.json";
    const auto evaluated =
        test::run_kite("eval perplexity --engine_dir " + engine + " --dataset " + dataset +
                       " --max_tokens 2048 --output_json " + json_path);
    EXPECT_EQ(evaluated.exit_code, 0) << evaluated.output;
    if (evaluated.exit_code != 0) return 0.0;
    return nlohmann::json::parse(read_file(json_path).value()).at("perplexity").get<double>();
  };
  const double plain = perplexity("");
  const double int8 = perplexity("--use_weight_only");
  const double int4 = perplexity(
      "--use_weight_only --weight_only_precision int4 --per_group "
      "--group_size 64");
  std::printf("[ PPL      ] SmolLM2 bfloat16 %.4f, int8 %.4f, int4 (groups of 64) %.4f\n", plain,
              int8, int4);
  ASSERT_GT(plain, 1.0);
  EXPECT_NE(int8, plain);
  EXPECT_LT(std::abs(int8 - plain) / plain, kInt8Bound);
  EXPECT_GT(int4, plain);
  EXPECT_LT((int4 - plain) / plain, kInt4Bound);
}

}  // namespace
}  // namespace kite
