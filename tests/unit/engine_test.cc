// Engines: the rank file format (round trip, truncation, corruption, versions), the KV cache
// block allocator, and the `kite build` / `kite run` commands on a tiny random model.
#include "runtime/engine.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <span>
#include <tuple>

#include "core/file.h"
#include "formats/checkpoint.h"
#include "formats/engine_file.h"
#include "kernels/backend_factory.h"
#include "model/llama.h"
#include "test_util.h"

namespace kite {
namespace {

TEST(EngineFile, Crc32MatchesZlib) {
  const std::string text = "123456789";
  EXPECT_EQ(crc32(reinterpret_cast<const uint8_t*>(text.data()), text.size()), 0xCBF43926u);
  // Slicing-by-8 and the threaded version (pieces combined) agree with byte-at-a-time over odd
  // sizes and offsets, large enough to use several threads.
  std::vector<uint8_t> data((size_t(200) << 20) + 13);
  for (size_t i = 0; i < data.size(); ++i) data[i] = uint8_t((i * 2654435761u) >> 13);
  for (size_t size : {size_t(0), size_t(1), size_t(7), size_t(8), size_t(1000003), data.size()}) {
    uint32_t bytewise = ~0u;
    for (size_t i = 0; i < size; ++i) {
      bytewise ^= data[i];
      for (int bit = 0; bit < 8; ++bit)
        bytewise = (bytewise & 1) ? 0xEDB88320u ^ (bytewise >> 1) : bytewise >> 1;
    }
    bytewise = ~bytewise;
    EXPECT_EQ(crc32(data.data(), size), bytewise) << size;
    EXPECT_EQ(crc32_parallel(data.data(), size, 0), bytewise) << size;
    EXPECT_EQ(crc32_parallel(data.data() + 3, size - std::min<size_t>(size, 3),
                             crc32(data.data(), std::min<size_t>(size, 3))),
              bytewise)
        << size;
  }
}

std::string write_small_engine_file() {
  const std::string path = test::temp_dir() + "/rank0.engine";
  std::vector<Tensor> tensors;
  tensors.emplace_back(DType::kF32, Shape{2, 3});
  tensors.emplace_back(DType::kBF16, Shape{5});
  for (int i = 0; i < 6; ++i) tensors[0].data_as<float>()[i] = float(i) + 0.5f;
  for (size_t i = 0; i < tensors[1].byte_size(); ++i) tensors[1].data()[i] = uint8_t(i * 7);
  const std::vector<EngineTensorInfo> infos = {{"a", DType::kF32, {2, 3}},
                                               {"b", DType::kBF16, {5}}};
  EXPECT_TRUE(write_engine_file(path, infos, [&](size_t i) -> Result<TensorView> {
                return tensors[i].view();
              }).is_ok());
  return path;
}

TEST(EngineFile, RoundTripsAlignedTensors) {
  const std::string path = write_small_engine_file();
  Result<EngineFile> file = EngineFile::open(path);
  ASSERT_TRUE(file.is_ok()) << file.status().message();
  EXPECT_EQ(file->names(), (std::vector<std::string>{"a", "b"}));
  const TensorView a = file->tensor("a").value();
  EXPECT_EQ(a.shape, (Shape{2, 3}));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data) % 64, 0u);
  EXPECT_EQ(reinterpret_cast<const float*>(a.data)[5], 5.5f);
  const TensorView b = file->tensor("b").value();
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data) % 64, 0u);
  EXPECT_EQ(b.data[3], 21);
  EXPECT_FALSE(file->tensor("c").is_ok());
}

TEST(EngineFile, RefusesTruncatedCorruptedAndOtherVersions) {
  const std::string path = write_small_engine_file();
  const std::string bytes = read_file(path).value();
  auto reopen_with = [&](const std::string& contents) {
    EXPECT_TRUE(write_file(path, contents).is_ok());
    Result<EngineFile> file = EngineFile::open(path);
    EXPECT_FALSE(file.is_ok());
    return file.is_ok() ? std::string() : file.status().message();
  };
  for (size_t length : {size_t(0), size_t(10), size_t(30), bytes.size() / 2, bytes.size() - 1}) {
    const std::string message = reopen_with(bytes.substr(0, length));
    EXPECT_NE(message.find(path), std::string::npos) << message;
  }
  std::string flipped = bytes;
  flipped[flipped.size() - 20] ^= 0x10;
  EXPECT_NE(reopen_with(flipped).find("CRC32"), std::string::npos);
  std::string other_version = bytes;
  other_version[8] = 9;
  EXPECT_NE(reopen_with(other_version).find("version 9"), std::string::npos);
}

TEST(KvCache, AllocatesAndFreesBlocks) {
  auto backend = std::move(make_backend(BackendKind::kCpu).value());
  ModelConfig model;
  model.num_hidden_layers = 2;
  model.num_key_value_heads = 2;
  model.head_dim = 4;
  KvCache cache = KvCache::allocate(*backend, model, DType::kF32, 8, 5).value();
  EXPECT_EQ(cache.free_blocks(), 5);
  const std::vector<int32_t> first = cache.allocate_blocks(3).value();
  EXPECT_EQ(first, (std::vector<int32_t>{0, 1, 2}));
  EXPECT_FALSE(cache.allocate_blocks(3).is_ok());
  cache.free_blocks(first);
  EXPECT_EQ(cache.free_blocks(), 5);
  EXPECT_EQ(cache.allocate_blocks(5).value().size(), 5u);
}

// Whether make_backend can open a GPU here.
bool cuda_devices_visible() {
  return gpu_identity(0).is_ok();
}

// ---- commands on a random tiny Llama with the tiny fixture tokenizer ----
class EngineCommands : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    checkpoint_ = new std::string(test::make_tiny_checkpoint());
    engine_ = new std::string(test::build_engine(
        *checkpoint_,
        "--max_batch_size 2 --max_input_len 16 --max_seq_len 40 --tokens_per_block 4"));
  }
  static std::string* checkpoint_;
  static std::string* engine_;
};
std::string* EngineCommands::checkpoint_ = nullptr;
std::string* EngineCommands::engine_ = nullptr;

TEST_F(EngineCommands, BuildWritesConfigAndTokenizer) {
  const EngineConfig config = read_engine_config(*engine_).value();
  EXPECT_EQ(config.limits.max_batch_size, 2);
  EXPECT_EQ(config.limits.tokens_per_block, 4);
  EXPECT_EQ(config.device, "cpu");
  EXPECT_TRUE(path_exists(*engine_ + "/tokenizer.json"));
  EXPECT_TRUE(Engine::load(*engine_).is_ok());
}

// A CUDA engine's tuned GEMM tactics, the SwiGLU-fused kernel's among them, survive config.json;
// an engine written before the fused kernel was tuned apart reads as having no fused entries.
TEST_F(EngineCommands, GemmTacticsRoundTrip) {
  EngineConfig config = read_engine_config(*engine_).value();
  config.device = "cuda";
  config.gpu_name = "NVIDIA H100 80GB HBM3";
  config.compute_capability = 90;
  config.gemm_choices = {GemmChoice{1, 4096, 14336, 1, 1, 40.5f, false},
                         GemmChoice{1, 4096, 14336, 1, 0, 41.0f, true},
                         GemmChoice{64, 4096, 14336, 0, 3, 120.0f, false}};
  const nlohmann::json json = engine_config_to_json(config);
  EXPECT_EQ(engine_config_from_json(json, "test").value().gemm_choices, config.gemm_choices);
  nlohmann::json older = json;
  for (auto& tactic : older["cuda"]["gemm_tactics"]) tactic.erase("gated");
  const std::vector<GemmChoice> read = engine_config_from_json(older, "test").value().gemm_choices;
  ASSERT_EQ(read.size(), 3u);
  for (const GemmChoice& choice : read) EXPECT_FALSE(choice.gated);
  // Entries no build writes are refused: an unknown algorithm, a negative index or size.
  for (const auto& [key, value] : std::vector<std::pair<std::string, int>>{
           {"algorithm", 2}, {"algorithm", -1}, {"variant", -1}, {"max_tokens", 0}, {"n", 0}}) {
    nlohmann::json edited = json;
    edited["cuda"]["gemm_tactics"][1][key] = value;
    const Result<EngineConfig> refused = engine_config_from_json(edited, "test");
    ASSERT_FALSE(refused.is_ok()) << key << " " << value;
    EXPECT_EQ(refused.status().code(), StatusCode::kCorrupt);
    EXPECT_NE(refused.status().message().find("cuda.gemm_tactics has an entry out of range"),
              std::string::npos)
        << refused.status().message();
  }
}

// A float32 checkpoint of a golden model, whose RMSNorm weights are random (a `--random` one's are
// all 1, which would fold into nothing), converted once.
const std::string& golden_checkpoint() {
  static const std::string checkpoint = [] {
    const std::string output = test::temp_dir() + "/golden_checkpoint";
    const test::CommandResult convert = test::run_kite(
        "convert --model_dir " + test::source_dir() + "/tests/fixtures/golden/hf/llama_mha" +
        " --output_dir " + output + " --dtype float32");
    EXPECT_EQ(convert.exit_code, 0) << convert.output;
    return output;
  }();
  return checkpoint;
}

// Every weight of the engine in `engine_dir` against the float32 checkpoint it was built from:
// stored in `dtype`, each value the checkpoint's (times its norm's scale, folded_norm_of, in
// float32, when `folded`) rounded once to `dtype`, bit for bit. Returns the weights' bytes.
int64_t expect_weights_built_from(const std::string& engine_dir, const Checkpoint& checkpoint,
                                  DType dtype, bool folded) {
  EXPECT_EQ(checkpoint.config().dtype, DType::kF32);
  int64_t scaled = 0;  // folded values whose scale is not 1: the fold changed something
  const EngineFile file = EngineFile::open(engine_rank_path(engine_dir, 0)).value();
  const size_t element_size = dtype_size(dtype);
  std::vector<uint8_t> expected(element_size);
  int64_t bytes = 0;
  for (const std::string& name : file.names()) {
    SCOPED_TRACE(name);
    const TensorView stored = file.tensor(name).value();
    EXPECT_EQ(stored.dtype, dtype);
    if (stored.dtype != dtype) continue;
    bytes += int64_t(stored.byte_size());
    const auto* originals = reinterpret_cast<const float*>(checkpoint.weight(name)->data);
    const std::string norm = folded ? folded_norm_of(name) : "";
    const auto* scale =
        norm.empty() ? nullptr : reinterpret_cast<const float*>(checkpoint.weight(norm)->data);
    const int64_t columns = stored.shape.back();
    for (int64_t i = 0; i < stored.numel(); ++i) {
      store_float(dtype, expected.data(), 0,
                  scale ? originals[i] * scale[i % columns] : originals[i]);
      scaled += scale && scale[i % columns] != 1.0f;
      if (std::memcmp(stored.data + size_t(i) * element_size, expected.data(), element_size)) {
        ADD_FAILURE() << "element " << i << " is " << load_float(dtype, stored.data, size_t(i))
                      << ", not " << load_float(dtype, expected.data(), 0);
        break;
      }
    }
  }
  EXPECT_EQ(scaled > 0, folded);
  return bytes;
}

// CUDA engines store the norm scales folded into the q/k/v and gate/up weights; the CPU's keep
// them apart unless KITE_FOLD_NORM_SCALES=1 says otherwise at build: then config.json says so, and
// those weights are the checkpoint's times the norm weight before them, column by column (the rest
// as they were), and the engine runs like the unfolded one (a golden model's random norms).
TEST_F(EngineCommands, BuildFoldsTheNormScalesWhenAsked) {
  const std::string limits = "--max_batch_size 2 --max_input_len 16 --max_seq_len 40";
  const std::string apart_dir = test::build_engine(golden_checkpoint(), limits);
  ASSERT_EQ(setenv("KITE_FOLD_NORM_SCALES", "1", 1), 0);
  const std::string folded_dir = test::build_engine(golden_checkpoint(), limits);
  unsetenv("KITE_FOLD_NORM_SCALES");
  ASSERT_FALSE(apart_dir.empty() || folded_dir.empty());
  EXPECT_FALSE(read_engine_config(apart_dir).value().norm_scales_folded);
  const EngineConfig config = read_engine_config(folded_dir).value();
  EXPECT_TRUE(config.norm_scales_folded);
  const Checkpoint checkpoint = Checkpoint::open(golden_checkpoint()).value();
  expect_weights_built_from(apart_dir, checkpoint, DType::kF32, /*folded=*/false);
  expect_weights_built_from(folded_dir, checkpoint, DType::kF32, /*folded=*/true);
  // Round trip, and a malformed flag refused.
  nlohmann::json json = engine_config_to_json(config);
  EXPECT_TRUE(engine_config_from_json(json, "test").value().norm_scales_folded);
  json["norm_scales_folded"] = "yes";
  EXPECT_EQ(engine_config_from_json(json, "test").status().code(), StatusCode::kCorrupt);

  const std::string run = " --input_text \"hello world\" --max_output_len 6";
  const test::CommandResult apart = test::run_kite("run --engine_dir " + apart_dir + run);
  const test::CommandResult folded = test::run_kite("run --engine_dir " + folded_dir + run);
  ASSERT_EQ(apart.exit_code, 0) << apart.output;
  ASSERT_EQ(folded.exit_code, 0) << folded.output;
  // The same output text (the timing line after it aside).
  const auto text = [](const std::string& output) {
    return output.substr(0, output.find("kite run:"));
  };
  EXPECT_EQ(text(folded.output), text(apart.output));
  EXPECT_NE(text(apart.output).find("Output [Text 0 Beam 0]"), std::string::npos) << apart.output;
}

// `kite build --dtype` converts the float32 checkpoint's weights as it writes them, after the
// norm-scale fold: the folded ones are bf16(W w) of the float32 values, rounded once; the others
// bf16(W). --dtype auto keeps the checkpoint's; a dtype that does not exist is refused.
TEST_F(EngineCommands, BuildConvertsTheWeightsAfterTheFold) {
  const std::string limits = "--max_batch_size 2 --max_input_len 16 --max_seq_len 40";
  ASSERT_EQ(setenv("KITE_FOLD_NORM_SCALES", "1", 1), 0);
  const std::string folded_dir =
      test::build_engine(golden_checkpoint(), "--dtype bfloat16 " + limits);
  unsetenv("KITE_FOLD_NORM_SCALES");
  ASSERT_FALSE(folded_dir.empty());
  const EngineConfig config = read_engine_config(folded_dir).value();
  EXPECT_EQ(config.weight_dtype, DType::kBF16);
  EXPECT_TRUE(config.norm_scales_folded);
  EXPECT_EQ(config.memory.weights_bytes,
            expect_weights_built_from(folded_dir, Checkpoint::open(golden_checkpoint()).value(),
                                      DType::kBF16, /*folded=*/true));
  const test::CommandResult run =
      test::run_kite("run --engine_dir " + folded_dir + " --input_text hello --max_output_len 4");
  EXPECT_EQ(run.exit_code, 0) << run.output;

  const std::string float16_dir =
      test::build_engine(golden_checkpoint(), "--dtype float16 " + limits);
  ASSERT_FALSE(float16_dir.empty());
  EXPECT_FALSE(read_engine_config(float16_dir)->norm_scales_folded);
  expect_weights_built_from(float16_dir, Checkpoint::open(golden_checkpoint()).value(), DType::kF16,
                            /*folded=*/false);
  EXPECT_EQ(read_engine_config(*engine_)->weight_dtype, DType::kF32);  // auto: the checkpoint's
  const test::CommandResult bogus =
      test::run_kite("build --checkpoint_dir " + *checkpoint_ + " --output_dir " +
                     test::temp_dir() + "/e --dtype float64");
  EXPECT_EQ(bogus.exit_code, 2) << bogus.output;
  EXPECT_NE(bogus.output.find("--dtype float64: choose auto, float32, float16 or bfloat16"),
            std::string::npos)
      << bogus.output;
}

TEST_F(EngineCommands, BuildRecordsItsMemoryPlan) {
  const EngineConfig config = read_engine_config(*engine_).value();
  // Weights: the bytes of rank0.engine's tensors.
  const EngineFile file = EngineFile::open(engine_rank_path(*engine_, 0)).value();
  int64_t weights_bytes = 0;
  for (const std::string& name : file.names()) {
    weights_bytes += int64_t(file.tensor(name)->byte_size());
  }
  EXPECT_GT(weights_bytes, 0);
  EXPECT_EQ(config.memory.weights_bytes, weights_bytes);
  // Activations: a step of max_num_tokens (8192 by default) tokens, a logit row per sequence, in
  // the CPU backend's float32; the load reserves exactly that (a larger step would not fit).
  EXPECT_EQ(config.memory.activation_bytes,
            int64_t(LlamaModel::activation_bytes(config.model, 8192, 2, DType::kF32)));
  EXPECT_EQ(config.memory.kv_cache_bytes_per_token,
            int64_t(KvCache::block_bytes(config.model, DType::kF32, 4) / 4));
  // Written, read back, the same.
  EXPECT_EQ(engine_config_from_json(engine_config_to_json(config), "test").value().memory,
            config.memory);
  nlohmann::json broken = engine_config_to_json(config);
  broken["memory"]["weights_bytes"] = "lots";
  EXPECT_EQ(engine_config_from_json(broken, "test").status().code(), StatusCode::kCorrupt);
  const test::CommandResult build = test::run_kite(
      "build --checkpoint_dir " + *checkpoint_ + " --output_dir " + test::temp_dir() +
      "/engine_plan --max_batch_size 2 --max_input_len 16 --max_seq_len 40");
  ASSERT_EQ(build.exit_code, 0) << build.output;
  EXPECT_NE(build.output.find("memory plan: weights"), std::string::npos) << build.output;
  EXPECT_NE(build.output.find("KV cache"), std::string::npos) << build.output;
}

TEST_F(EngineCommands, RunPrintsLikeRunPyAndWritesJson) {
  const std::string json_path = test::temp_dir() + "/out.json";
  const test::CommandResult run =
      test::run_kite("run --engine_dir " + *engine_ +
                     " --input_text 'hello world' --input_text 'the cat' --max_output_len 6"
                     " --output_json " +
                     json_path);
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("Input [Text 0]: \"hello world\""), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("Output [Text 1 Beam 0]: \""), std::string::npos) << run.output;
  const auto record = nlohmann::json::parse(read_file(json_path).value());
  ASSERT_EQ(record.size(), 2u);
  const auto output_ids = record[0].at("output_ids").get<std::vector<int32_t>>();
  EXPECT_GE(output_ids.size(), 1u);
  EXPECT_LE(output_ids.size(), 6u);
  // Greedy is deterministic, and a prompt's output does not depend on its batch neighbour.
  const std::string alone_path = test::temp_dir() + "/alone.json";
  ASSERT_EQ(
      test::run_kite("run --engine_dir " + *engine_ +
                     " --input_text 'hello world' --max_output_len 6 --output_json " + alone_path)
          .exit_code,
      0);
  const auto alone = nlohmann::json::parse(read_file(alone_path).value());
  EXPECT_EQ(alone[0].at("output_ids"), record[0].at("output_ids"));
}

// --input_file: a text file's lines (empty ones skipped) are the prompts, and a .csv file's rows
// their token ids; both give the outputs of --input_text. Bad files get one line that says why.
TEST_F(EngineCommands, RunTakesPromptsFromAFile) {
  const std::string dir = test::temp_dir();
  const std::string run = "run --engine_dir " + *engine_ + " --max_output_len 5 ";
  ASSERT_EQ(
      test::run_kite(run + "--input_text 'hello world' --input_text 'the cat' --output_json " +
                     dir + "/texts.json")
          .exit_code,
      0);
  const auto expected = nlohmann::json::parse(read_file(dir + "/texts.json").value());
  ASSERT_TRUE(write_file(dir + "/prompts.txt", "hello world\r\n\nthe cat\n").is_ok());
  const Tokenizer tokenizer = Tokenizer::from_directory(*engine_).value();
  std::string csv;
  for (const char* text : {"hello world", "the cat"}) {
    std::string row;
    for (const int32_t id : tokenizer.encode(text))
      row += (row.empty() ? "" : ",") + std::to_string(id);
    csv += row + "\n";
  }
  ASSERT_TRUE(write_file(dir + "/prompts.csv", csv).is_ok());
  for (const std::string file : {"prompts.txt", "prompts.csv"}) {
    const test::CommandResult result = test::run_kite(
        run + "--input_file " + dir + "/" + file + " --output_json " + dir + "/" + file + ".json");
    ASSERT_EQ(result.exit_code, 0) << file << ": " << result.output;
    const auto record = nlohmann::json::parse(read_file(dir + "/" + file + ".json").value());
    ASSERT_EQ(record.size(), 2u) << file;
    for (size_t i = 0; i < 2; ++i) {
      EXPECT_EQ(record[i].at("input_ids"), expected[i].at("input_ids")) << file;
      EXPECT_EQ(record[i].at("output_ids"), expected[i].at("output_ids")) << file;
    }
  }
  ASSERT_TRUE(write_file(dir + "/empty.txt", "\n\n").is_ok());
  ASSERT_TRUE(write_file(dir + "/bad.csv", "1,2\n3,x\n").is_ok());
  for (const auto& [arguments, message] : std::vector<std::pair<std::string, std::string>>{
           {"--input_file " + dir + "/empty.txt", "holds no prompts"},
           {"--input_file " + dir + "/bad.csv", "row 2: 'x' is not a token id"},
           {"--input_file " + dir + "/missing.txt", "missing.txt"},
           {"--input_file " + dir + "/prompts.txt --input_text hi", "not both"},
           {"", "--input_text or --input_file is required"}}) {
    const test::CommandResult refused = test::run_kite(run + arguments);
    EXPECT_NE(refused.exit_code, 0) << arguments << ": " << refused.output;
    EXPECT_EQ(refused.signal, 0) << arguments;
    EXPECT_NE(refused.output.find(message), std::string::npos)
        << arguments << ": " << refused.output;
  }
}

// Stop texts end generation at the token that completes them, wherever they fall in the text: the
// stop taken from the middle of an unstopped output cuts that output there, one prompt of a batch
// stops while the other runs on, and results are those of decoding the whole output each step.
TEST_F(EngineCommands, StopTextsEndTheOutputWhereTheyAppear) {
  Result<std::unique_ptr<Engine>> loaded = Engine::load(*engine_);
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().message();
  Engine& engine = **loaded;
  const Tokenizer& tokenizer = engine.tokenizer();
  GenerationRequest request;
  request.prompts = {tokenizer.encode("hello world"), tokenizer.encode("the cat")};
  request.stop.max_output_len = 20;
  const std::vector<GenerationResult> free_run = generate(engine, request).value();
  const std::vector<int32_t>& ids = free_run[0].output_ids;
  ASSERT_EQ(ids.size(), 20u);
  const std::string text = tokenizer.decode(ids);
  // The stop text: two bytes of the output past its first token's text (the first
  // occurrence of those bytes decides where the output stops).
  const size_t first_token = tokenizer.decode(std::span(ids.data(), 1)).size();
  ASSERT_GT(text.size(), first_token + 2);
  const std::string stop = text.substr(first_token, 2);
  size_t stop_after = 0;  // ids until the decoded output first holds the stop text
  while (tokenizer.decode(std::span(ids.data(), stop_after)).find(stop) == std::string::npos) {
    ++stop_after;
  }
  const size_t cut = tokenizer.decode(std::span(ids.data(), stop_after)).find(stop);
  request.stop.stop_texts = {stop};
  const std::vector<GenerationResult> stopped = generate(engine, request).value();
  EXPECT_EQ(stopped[0].finish_reason, FinishReason::kStopWords);
  EXPECT_EQ(stopped[0].text_length, cut);
  EXPECT_EQ(stopped[0].output_ids, std::vector<int32_t>(ids.begin(), ids.begin() + stop_after));
  // The other prompt stops where its own output first holds the stop text, or runs on.
  const std::vector<int32_t>& other = free_run[1].output_ids;
  size_t other_after = 1;
  while (other_after <= other.size() &&
         tokenizer.decode(std::span(other.data(), other_after)).find(stop) == std::string::npos) {
    ++other_after;
  }
  const size_t other_length = std::min(other_after, other.size());
  EXPECT_EQ(stopped[1].output_ids,
            std::vector<int32_t>(other.begin(), other.begin() + other_length));
}

// An engine whose steps hold at most 3 tokens prefills the prompts in chunks over several steps
// (and interleaves them with decode steps); greedy outputs must not change.
TEST_F(EngineCommands, ChunkedPrefillGivesTheSameTokens) {
  const std::string chunked = test::temp_dir() + "/chunked";
  const test::CommandResult build =
      test::run_kite("build --checkpoint_dir " + *checkpoint_ + " --output_dir " + chunked +
                     " --max_batch_size 2 --max_input_len 16 --max_seq_len 40 "
                     "--tokens_per_block 4 --max_num_tokens 3");
  ASSERT_EQ(build.exit_code, 0) << build.output;
  const std::string prompts =
      " --input_text 'hello world, the cat sat' --input_text 'the cat' --max_output_len 8";
  std::vector<nlohmann::json> records;
  for (const std::string& engine : {*engine_, chunked}) {
    const std::string json_path = test::temp_dir() + "/out.json";
    const test::CommandResult run =
        test::run_kite("run --engine_dir " + engine + prompts + " --output_json " + json_path);
    ASSERT_EQ(run.exit_code, 0) << run.output;
    records.push_back(nlohmann::json::parse(read_file(json_path).value()));
  }
  ASSERT_GT(records[0][0].at("input_ids").size(), 3u);  // the first prompt needs several steps
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(records[0][i].at("output_ids"), records[1][i].at("output_ids")) << "prompt " << i;
  }
  // Limits a build refuses before it reads anything: a step must fit a decode of every sequence,
  // and CUDA kernels take at most 65535 sequences a step.
  for (const auto& [limits, message] : std::vector<std::pair<std::string, std::string>>{
           {"--max_batch_size 4 --max_num_tokens 3",
            "--max_num_tokens (3) must be at least --max_batch_size"},
           {"--device cuda --max_batch_size 70000 --max_num_tokens 70000",
            "a CUDA engine takes at most 65535 sequences a step"},
           {"--tuning_log tuning.csv",
            "--tuning_log records the GEMM tuning of a CUDA engine: build with --device cuda"},
           {"--tune_decode",
            "--tune_decode times the decode step on a GPU: build with --device cuda"}}) {
    const test::CommandResult refused = test::run_kite("build --checkpoint_dir " + *checkpoint_ +
                                                       " --output_dir " + chunked + " " + limits);
    EXPECT_EQ(refused.exit_code, 2) << limits;
    EXPECT_NE(refused.output.find(message), std::string::npos) << refused.output;
  }
}

// --kv_cache_dtype: a CPU engine keeps its KV cache in float16, bfloat16 or float8 e4m3 (half and a
// quarter of float32's bytes per token), records it, and runs; unknown names and a CUDA engine's
// KV cache in another dtype than its weights' are refused.
TEST_F(EngineCommands, BuildTakesTheKvCacheDtype) {
  const EngineConfig float32 = read_engine_config(*engine_).value();
  EXPECT_EQ(float32.kv_cache_dtype, DType::kF32);
  for (const auto& [name, dtype, divisor] :
       std::vector<std::tuple<std::string, DType, int64_t>>{{"float16", DType::kF16, 2},
                                                            {"bfloat16", DType::kBF16, 2},
                                                            {"fp8", DType::kF8E4M3, 4}}) {
    const std::string output = test::temp_dir() + "/kv_" + name;
    const test::CommandResult build = test::run_kite(
        "build --checkpoint_dir " + *checkpoint_ + " --output_dir " + output +
        " --max_batch_size 2 --max_input_len 16 --max_seq_len 40 --tokens_per_block 4"
        " --kv_cache_dtype " +
        name);
    ASSERT_EQ(build.exit_code, 0) << build.output;
    const EngineConfig config = read_engine_config(output).value();
    EXPECT_EQ(config.kv_cache_dtype, dtype) << name;
    EXPECT_EQ(config.memory.kv_cache_bytes_per_token * divisor,
              float32.memory.kv_cache_bytes_per_token)
        << name;
    const test::CommandResult run = test::run_kite(
        "run --engine_dir " + output + " --input_text 'hello world' --max_output_len 6");
    EXPECT_EQ(run.exit_code, 0) << run.output;
    EXPECT_NE(run.output.find("Output [Text 0 Beam 0]"), std::string::npos) << run.output;
  }
  const std::string output = test::temp_dir() + "/kv_refused";
  const test::CommandResult unknown =
      test::run_kite("build --checkpoint_dir " + *checkpoint_ + " --output_dir " + output +
                     " --kv_cache_dtype int3");
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_NE(unknown.output.find("choose auto, float32, float16, bfloat16 or fp8"),
            std::string::npos)
      << unknown.output;
  // (For CUDA the checkpoint must be 16-bit; a float32 one is refused for that first.)
  const std::string bf16 = test::make_tiny_checkpoint("bfloat16");
  ASSERT_FALSE(bf16.empty());
  const test::CommandResult cuda =
      test::run_kite("build --checkpoint_dir " + bf16 + " --output_dir " + output +
                     " --device cuda --kv_cache_dtype fp8");
  EXPECT_EQ(cuda.exit_code, 1);
  EXPECT_NE(cuda.output.find("CUDA engines keep the KV cache in the weights' dtype"),
            std::string::npos)
      << cuda.output;
}

// kite convert --fp8_kv_cache: the checkpoint records it, a CPU build's "auto" takes it (an
// explicit
// --kv_cache_dtype wins), and a CUDA build, whose cache stays in the weights' dtype, refuses it
// with a message; a checkpoint asking for a KV cache this Kite does not know is refused.
TEST_F(EngineCommands, ConvertFp8KvCacheIsTheBuildsDefault) {
  const std::string fixture = test::source_dir() + "/tests/fixtures/tiny_llama";
  const std::string model_dir = test::temp_dir();
  for (const char* name : {"config.json", "tokenizer.json", "tokenizer_config.json"}) {
    std::filesystem::copy_file(fixture + "/" + name, model_dir + "/" + name);
  }
  const std::string checkpoint = test::temp_dir() + "/fp8_kv";
  const test::CommandResult convert =
      test::run_kite("convert --random --dtype bfloat16 --fp8_kv_cache --model_dir " + model_dir +
                     " --output_dir " + checkpoint);
  ASSERT_EQ(convert.exit_code, 0) << convert.output;
  EXPECT_NE(convert.output.find("fp8 KV cache"), std::string::npos) << convert.output;
  EXPECT_EQ(read_checkpoint_config(checkpoint).value().kv_cache_dtype, DType::kF8E4M3);
  const std::string limits = " --max_batch_size 2 --max_input_len 16 --max_seq_len 40";
  for (const auto& [flags, dtype] : std::vector<std::pair<std::string, DType>>{
           {"", DType::kF8E4M3}, {" --kv_cache_dtype bfloat16", DType::kBF16}}) {
    const std::string engine = test::temp_dir() + "/engine";
    const test::CommandResult build = test::run_kite("build --checkpoint_dir " + checkpoint +
                                                     " --output_dir " + engine + limits + flags);
    ASSERT_EQ(build.exit_code, 0) << build.output;
    EXPECT_EQ(read_engine_config(engine).value().kv_cache_dtype, dtype) << flags;
  }
  const test::CommandResult cuda =
      test::run_kite("build --checkpoint_dir " + checkpoint + " --output_dir " + test::temp_dir() +
                     "/cuda" + limits + " --device cuda");
  EXPECT_EQ(cuda.exit_code, 1);
  EXPECT_NE(cuda.output.find("asks for a float8_e4m3 KV cache"), std::string::npos) << cuda.output;
  nlohmann::json config = nlohmann::json::parse(read_file(checkpoint + "/config.json").value());
  config["quantization"]["kv_cache"] = "int8";
  EXPECT_EQ(checkpoint_config_from_json(config, "x").status().code(), StatusCode::kUnsupported);
}

// CUDA engines: float16/bfloat16 checkpoints only, a GPU to tune on, and known devices only.
TEST_F(EngineCommands, BuildForCudaRefusesWhatCannotRun) {
  const std::string output = test::temp_dir() + "/cuda_engine";
  // float32 weights do not run on CUDA (--dtype auto makes a float32 checkpoint's bfloat16).
  const test::CommandResult float32 =
      test::run_kite("build --checkpoint_dir " + *checkpoint_ + " --output_dir " + output +
                     " --device cuda --dtype float32");
  EXPECT_EQ(float32.exit_code, 1);
  EXPECT_NE(float32.output.find("--dtype float32: CUDA engines run float16 or bfloat16 weights; "
                                "build with --dtype bfloat16 (or auto)"),
            std::string::npos)
      << float32.output;
  const test::CommandResult unknown = test::run_kite("build --checkpoint_dir " + *checkpoint_ +
                                                     " --output_dir " + output + " --device tpu");
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_NE(unknown.output.find("choose cpu or cuda"), std::string::npos) << unknown.output;
  if (cuda_devices_visible()) GTEST_SKIP() << "this machine has a GPU";
  const test::CommandResult no_gpu = test::run_kite("build --checkpoint_dir " + *checkpoint_ +
                                                    " --output_dir " + output + " --device cuda");
  EXPECT_EQ(no_gpu.exit_code, 1);
  EXPECT_TRUE(no_gpu.output.find("no CUDA GPU") != std::string::npos ||
              no_gpu.output.find("built without CUDA") != std::string::npos)
      << no_gpu.output;
}

TEST_F(EngineCommands, SeededSamplingRepeats) {
  const std::string common = "run --engine_dir " + *engine_ +
                             " --input_text 'hello' --max_output_len 8 --temperature 1.0"
                             " --top_k 50 --top_p 0.95 --min_p 0.01 --repetition_penalty 1.1";
  const test::CommandResult first = test::run_kite(common + " --seed 3");
  const test::CommandResult second = test::run_kite(common + " --seed 3");
  ASSERT_EQ(first.exit_code, 0) << first.output;
  EXPECT_EQ(first.output.substr(0, first.output.find("kite run: prefill")),
            second.output.substr(0, second.output.find("kite run: prefill")));
}

TEST_F(EngineCommands, RunRefusesBadRequests) {
  const std::string run = "run --engine_dir " + *engine_;
  const std::string long_prompt(200, 'x');
  struct Case {
    std::string arguments;
    std::string message;
  };
  for (const Case& c : std::vector<Case>{
           {" --input_text ''", "empty"},
           {" --input_text a --input_text b --input_text c", "max_batch_size"},
           {" --input_text '" + long_prompt + " " + long_prompt + "'", "max_input_len"},
           {" --input_text hi --max_output_len 100", "max_seq_len"},
           {" --input_text hi --top_p 0", "--top_p"},
           {" --input_text hi --chat", "chat_template"},
       }) {
    const test::CommandResult result = test::run_kite(run + c.arguments);
    EXPECT_NE(result.exit_code, 0) << c.arguments;
    EXPECT_EQ(result.signal, 0) << c.arguments;
    EXPECT_NE(result.output.find(c.message), std::string::npos) << c.arguments << "\n"
                                                                << result.output;
  }
  const test::CommandResult missing =
      test::run_kite("run --engine_dir " + test::temp_dir() + " --input_text hi");
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_NE(missing.output.find("kite build"), std::string::npos) << missing.output;
}

TEST_F(EngineCommands, LoadRefusesCorruptedEngineAndOtherDevice) {
  const std::string copy = test::temp_dir() + "/engine";
  std::filesystem::copy(*engine_, copy);
  std::string bytes = read_file(copy + "/rank0.engine").value();
  bytes[bytes.size() / 2] ^= 1;
  ASSERT_TRUE(write_file(copy + "/rank0.engine", bytes).is_ok());
  const test::CommandResult corrupted =
      test::run_kite("run --engine_dir " + copy + " --input_text hi");
  EXPECT_EQ(corrupted.exit_code, 1);
  EXPECT_NE(corrupted.output.find("corrupted"), std::string::npos) << corrupted.output;

  const std::string config_text = read_file(*engine_ + "/config.json").value();
  auto config = nlohmann::json::parse(config_text);
  config["device"] = "cuda";
  ASSERT_TRUE(write_file(copy + "/config.json", config.dump()).is_ok());
  const test::CommandResult malformed =
      test::run_kite("run --engine_dir " + copy + " --input_text hi");
  EXPECT_EQ(malformed.exit_code, 1);
  EXPECT_NE(malformed.output.find("lacks \"cuda\""), std::string::npos) << malformed.output;
  // Built for a GPU generation this machine does not have (or no GPU at all here).
  config["cuda"] = {{"gpu_name", "Tesla T4"},
                    {"compute_capability", 75},
                    {"multi_block_mode", true},
                    {"gemm_tactics", nlohmann::json::array()}};
  ASSERT_TRUE(write_file(copy + "/config.json", config.dump()).is_ok());
  const test::CommandResult other_device =
      test::run_kite("run --engine_dir " + copy + " --input_text hi");
  EXPECT_EQ(other_device.exit_code, 1);
  EXPECT_TRUE(other_device.output.find("build the engine again on this GPU") != std::string::npos ||
              other_device.output.find("no CUDA GPU") != std::string::npos ||
              other_device.output.find("built without CUDA") != std::string::npos)
      << other_device.output;
  // A CUDA engine's KV cache in another dtype than its weights' (kite build never writes one).
  config["kv_cache"]["dtype"] = "float8_e4m3";
  ASSERT_TRUE(write_file(copy + "/config.json", config.dump()).is_ok());
  const test::CommandResult cache_dtype =
      test::run_kite("run --engine_dir " + copy + " --input_text hi");
  EXPECT_EQ(cache_dtype.exit_code, 1);
  EXPECT_NE(cache_dtype.output.find("KV cache must be in its weights' dtype"), std::string::npos)
      << cache_dtype.output;
  config["kv_cache"]["dtype"] = "float32";
  config["device"] = "cpu";
  // Built by another Kite release (the same format version).
  config["kite_version"] = "0.0.1";
  ASSERT_TRUE(write_file(copy + "/config.json", config.dump()).is_ok());
  const test::CommandResult other_kite =
      test::run_kite("run --engine_dir " + copy + " --input_text hi");
  EXPECT_EQ(other_kite.exit_code, 1);
  EXPECT_NE(other_kite.output.find("was built by Kite 0.0.1; this is Kite " KITE_VERSION
                                   ": build the engine again"),
            std::string::npos)
      << other_kite.output;
  config["kite_engine_version"] = 7;
  ASSERT_TRUE(write_file(copy + "/config.json", config.dump()).is_ok());
  const test::CommandResult other_version =
      test::run_kite("run --engine_dir " + copy + " --input_text hi");
  EXPECT_NE(other_version.output.find("version 7"), std::string::npos) << other_version.output;
}

}  // namespace
}  // namespace kite
