// `kite bench` and the static-batch benchmark under it: parsing the case lists, checking them
// against the engine's limits, synthetic prompts, and timed runs on a tiny random engine.
#include "runtime/benchmark.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "core/file.h"
#include "formats/model_config.h"
#include "test_util.h"

namespace kite {
namespace {

TEST(BenchmarkParse, BatchSizes) {
  EXPECT_EQ(parse_batch_sizes("1;8;64").value(), (std::vector<int64_t>{1, 8, 64}));
  EXPECT_EQ(parse_batch_sizes("4").value(), (std::vector<int64_t>{4}));
  EXPECT_EQ(parse_batch_sizes(" 2 ; 3").value(), (std::vector<int64_t>{2, 3}));
  for (const char* bad :
       {"", "1;x", "1;;8", "8;", "0", "-1", "1.5", "2a", "99999999999999999999"}) {
    const Result<std::vector<int64_t>> parsed = parse_batch_sizes(bad);
    ASSERT_FALSE(parsed.is_ok()) << bad;
    EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(parsed.status().message().find("--batch_size"), std::string::npos)
        << parsed.status().message();
  }
}

TEST(BenchmarkParse, InputOutputLengths) {
  EXPECT_EQ(parse_input_output_lengths("128,128;2048,128").value(),
            (std::vector<InputOutputLength>{{128, 128}, {2048, 128}}));
  EXPECT_EQ(parse_input_output_lengths("512,1").value(),
            (std::vector<InputOutputLength>{{512, 1}}));
  for (const char* bad :
       {"", "128", "128,", ",5", "1,2,3", "0,5", "5,0", "5,-1", "a,b", "128,128;", "128;128"}) {
    const Result<std::vector<InputOutputLength>> parsed = parse_input_output_lengths(bad);
    ASSERT_FALSE(parsed.is_ok()) << bad;
    EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(parsed.status().message().find("--input_output_len"), std::string::npos)
        << parsed.status().message();
  }
}

TEST(BenchmarkParse, CasesTakeLengthsOuterBatchSizesInner) {
  const std::vector<BenchmarkCase> cases = benchmark_cases({1, 8}, {{128, 128}, {512, 1}});
  EXPECT_EQ(cases,
            (std::vector<BenchmarkCase>{{1, 128, 128}, {8, 128, 128}, {1, 512, 1}, {8, 512, 1}}));
}

// The floors of docs/perf/cuda_llama3_8b.md, counted from the engine: a batch-1 decode step of the
// Llama-3-8B shape reads 15.01 GB of bf16 weights (all but the embedding table) and the KV cache of
// its mean context (128 KiB a token); a 2048-token prefill does 28.59 TFLOP of GEMMs.
TEST(BenchmarkRoofline, WorkOfTheLlama3Shape) {
  EngineConfig config;
  config.model =
      read_hf_config(test::source_dir() + "/tests/fixtures/hf_configs/llama-3-8b.json").value();
  config.weight_dtype = DType::kBF16;
  for (const WeightInfo& weight : model_weights(config.model)) {
    config.memory.weights_bytes += shape_numel(weight.shape) * 2;
  }
  config.memory.kv_cache_bytes_per_token = 2 * 32 * 8 * 128 * 2;
  EXPECT_NEAR(double(config.memory.weights_bytes), 16.06e9, 0.01e9);

  const BenchmarkWork decode = benchmark_work(config, {1, 128, 128});
  EXPECT_NEAR(decode.decode_step_bytes, 15.01e9 + 192 * 131072.0, 0.005e9);
  const BenchmarkWork prefill = benchmark_work(config, {1, 2048, 1});
  EXPECT_NEAR(prefill.prefill_gemm_flops, 28.59e12, 0.005e12);
  // Batch 64: the weights once a step, 64 embedding rows, 64 sequences' caches.
  const BenchmarkWork batch = benchmark_work(config, {64, 128, 128});
  EXPECT_NEAR(batch.decode_step_bytes - decode.decode_step_bytes, 63 * (4096 * 2 + 192 * 131072.0),
              1.0);
  EXPECT_NEAR(batch.prefill_gemm_flops, 64 * benchmark_work(config, {1, 128, 1}).prefill_gemm_flops,
              1e6);

  // A tied LM head reads the whole table every step.
  config.model.tie_word_embeddings = true;
  config.memory.weights_bytes -= config.model.vocab_size * config.model.hidden_size * 2;
  EXPECT_NEAR(benchmark_work(config, {1, 128, 128}).decode_step_bytes,
              double(config.memory.weights_bytes) + 192 * 131072.0, 1.0);
  // An engine without a recorded memory plan has no decode floor.
  config.memory = {};
  EXPECT_EQ(benchmark_work(config, {1, 128, 128}).decode_step_bytes, 0.0);
}

TEST(BenchmarkRoofline, MeasuredAgainstTheFloors) {
  BenchmarkResult result;
  result.benchmark_case = {2, 100, 100};
  result.latency_ms = 1000.0;
  result.first_token_latency_ms = 10.0;
  const BenchmarkWork work{.decode_step_bytes = 15e9, .prefill_gemm_flops = 1e12};
  const Roofline roofline = benchmark_roofline(result, work, 3e12, 1e14);
  EXPECT_DOUBLE_EQ(roofline.decode_tokens_per_second, 100.0);  // 99 steps in 0.99 s
  EXPECT_DOUBLE_EQ(roofline.decode_floor_tokens_per_second, 200.0);
  EXPECT_DOUBLE_EQ(roofline.prefill_tokens_per_second, 20000.0);  // 200 tokens in 10 ms
  EXPECT_DOUBLE_EQ(roofline.prefill_floor_tokens_per_second, 20000.0);
  EXPECT_EQ(roofline_line(result, roofline),
            "[ROOFLINE] batch_size 2 input_length 100 output_length 100 decode_tokensPerSec "
            "100.00 decode_floor 200.00 decode_share 50.0% prefill_tokensPerSec 20000.00 "
            "prefill_floor 20000.00 prefill_share 100.0%");
  EXPECT_EQ(roofline_json(roofline).at("decode_floor_tokens_per_second"), 200.0);

  // One output token: no decode step, and the line leaves the phase out.
  result.benchmark_case.output_length = 1;
  result.latency_ms = 10.0;
  const Roofline prefill_only = benchmark_roofline(result, work, 3e12, 1e14);
  EXPECT_EQ(prefill_only.decode_tokens_per_second, 0.0);
  EXPECT_EQ(roofline_line(result, prefill_only).find("decode"), std::string::npos);
}

TEST(BenchmarkLimits, RefusesCasesBeyondTheEngine) {
  const BuildLimits limits{.max_batch_size = 2, .max_input_len = 16, .max_seq_len = 40};
  EXPECT_TRUE(check_benchmark_cases(limits, {{1, 16, 24}, {2, 1, 1}}).is_ok());
  struct Case {
    BenchmarkCase benchmark_case;
    std::string limit;
  };
  for (const Case& c : std::vector<Case>{{{3, 8, 8}, "max_batch_size 2"},
                                         {{1, 17, 1}, "max_input_len 16"},
                                         {{1, 16, 25}, "max_seq_len 40"}}) {
    // A bad case after a good one is still found: all cases are checked up front.
    const Status status = check_benchmark_cases(limits, {{1, 4, 4}, c.benchmark_case});
    EXPECT_EQ(status.code(), StatusCode::kOutOfRange) << c.limit;
    EXPECT_NE(status.message().find(c.limit), std::string::npos) << status.message();
  }
}

// ---- on a random tiny Llama with the tiny fixture tokenizer ----
class BenchmarkEngine : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    engine_dir_ =
        new std::string(test::build_engine(test::make_tiny_checkpoint(),
                                           "--max_batch_size 2 --max_input_len 16 --max_seq_len 40 "
                                           "--tokens_per_block 4"));
  }
  static std::string* engine_dir_;
};
std::string* BenchmarkEngine::engine_dir_ = nullptr;

TEST_F(BenchmarkEngine, PromptsAreOrdinaryTokensAndRepeat) {
  std::unique_ptr<Engine> engine = std::move(Engine::load(*engine_dir_).value());
  const auto prompts = benchmark_prompts(*engine, {2, 16, 1}).value();
  ASSERT_EQ(prompts.size(), 2u);
  const ModelConfig& model = engine->config().model;
  for (const std::vector<int32_t>& prompt : prompts) {
    ASSERT_EQ(prompt.size(), 16u);
    for (int32_t id : prompt) {
      EXPECT_GE(id, 0);
      EXPECT_LT(id, model.vocab_size);
      EXPECT_FALSE(engine->tokenizer().is_special(id)) << id;
      EXPECT_NE(id, model.bos_token_id.value());
      EXPECT_NE(id, model.pad_token_id.value());
      for (int64_t eos : model.eos_token_ids) EXPECT_NE(id, eos);
    }
  }
  EXPECT_NE(prompts[0], prompts[1]);
  EXPECT_EQ(benchmark_prompts(*engine, {2, 16, 1}).value(), prompts);
  // A sequence's prompt does not depend on the batch size.
  EXPECT_EQ(benchmark_prompts(*engine, {1, 16, 1}).value()[0], prompts[0]);
}

TEST_F(BenchmarkEngine, RunGeneratesEveryTokenOfEveryRun) {
  std::unique_ptr<Engine> engine = std::move(Engine::load(*engine_dir_).value());
  std::vector<std::string> steps;
  const BenchmarkCase benchmark_case{2, 8, 5};
  const Result<BenchmarkResult> run =
      run_benchmark_case(*engine, benchmark_case, {.warm_up_runs = 1, .min_runs = 2},
                         [&](const std::string& label) { steps.push_back(label); });
  ASSERT_TRUE(run.is_ok()) << run.status().message();
  const BenchmarkResult& result = *run;
  // One callback per step: output_length steps in each of the warm-up and timed runs.
  ASSERT_EQ(steps.size(), 15u);
  EXPECT_EQ(std::count(steps.begin(), steps.end(), "warm-up 1/1"), 5);
  EXPECT_EQ(std::count(steps.begin(), steps.end(), "run 1/2"), 5);
  EXPECT_EQ(std::count(steps.begin(), steps.end(), "run 2/2"), 5);
  EXPECT_EQ(result.benchmark_case, benchmark_case);
  EXPECT_EQ(result.runs, 2);
  EXPECT_EQ(result.tokens_per_run, 10);
  EXPECT_EQ(result.backend, BackendKind::kCpu);
  EXPECT_GT(result.latency_ms, 0);
  EXPECT_GT(result.first_token_latency_ms, 0);
  EXPECT_LT(result.first_token_latency_ms, result.latency_ms);
  EXPECT_NEAR(result.tokens_per_second, 10 / (result.latency_ms / 1e3),
              1e-9 * result.tokens_per_second);
  // Resident memory of this process: at least the engine's weights and KV cache, well under 10 GB.
  EXPECT_GT(result.peak_memory_gb, 1e-4);
  EXPECT_LT(result.peak_memory_gb, 10);
  // The KV cache blocks went back after every run.
  EXPECT_EQ(engine->kv_cache().free_blocks(), engine->kv_cache().view().num_blocks);
}

TEST_F(BenchmarkEngine, DurationAddsRuns) {
  std::unique_ptr<Engine> engine = std::move(Engine::load(*engine_dir_).value());
  const Result<BenchmarkResult> run = run_benchmark_case(
      *engine, {1, 4, 2}, {.warm_up_runs = 0, .min_runs = 1, .min_duration_seconds = 0.2});
  ASSERT_TRUE(run.is_ok()) << run.status().message();
  const BenchmarkResult& result = *run;
  EXPECT_GE(result.runs * result.latency_ms, 200.0);
  EXPECT_GT(result.runs, 1);
}

TEST_F(BenchmarkEngine, RunRefusesCaseBeyondLimits) {
  std::unique_ptr<Engine> engine = std::move(Engine::load(*engine_dir_).value());
  const Result<BenchmarkResult> result = run_benchmark_case(*engine, {3, 4, 2}, {});
  ASSERT_FALSE(result.is_ok());
  EXPECT_NE(result.status().message().find("max_batch_size"), std::string::npos);
}

TEST_F(BenchmarkEngine, CommandPrintsOneLinePerCase) {
  const test::CommandResult bench =
      test::run_kite("bench --engine_dir " + *engine_dir_ +
                     " --batch_size '1;2' --input_output_len '8,4;4,2' --num_runs 2");
  ASSERT_EQ(bench.exit_code, 0) << bench.output;
  const std::regex line_pattern(
      R"(\[BENCHMARK\] batch_size (\d+) input_length (\d+) output_length (\d+) latency\(ms\) )"
      R"(([0-9.]+) tokensPerSec ([0-9.]+) first_token_latency\(ms\) ([0-9.]+) )"
      R"(peak_mem\(gb\) ([0-9.]+))");
  std::vector<BenchmarkCase> seen;
  std::istringstream lines(bench.output);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("[BENCHMARK]", 0) != 0) continue;
    std::smatch match;
    ASSERT_TRUE(std::regex_match(line, match, line_pattern)) << line;
    const BenchmarkCase benchmark_case{std::stoll(match[1]), std::stoll(match[2]),
                                       std::stoll(match[3])};
    seen.push_back(benchmark_case);
    const double latency = std::stod(match[4]);
    const double tokens_per_second = std::stod(match[5]);
    const double first_token = std::stod(match[6]);
    ASSERT_GT(latency, 0.0) << line;
    // The printed latency is rounded to 0.01 ms.
    const double tokens = double(benchmark_case.batch_size * benchmark_case.output_length);
    EXPECT_GE(tokens_per_second, tokens * 1e3 / (latency + 0.005) - 0.01) << line;
    EXPECT_LE(tokens_per_second, tokens * 1e3 / std::max(latency - 0.005, 1e-3) + 0.01) << line;
    EXPECT_LE(first_token, latency) << line;
    EXPECT_GE(std::stod(match[7]), 0.0) << line;
  }
  EXPECT_EQ(seen, (std::vector<BenchmarkCase>{{1, 8, 4}, {2, 8, 4}, {1, 4, 2}, {2, 4, 2}}))
      << bench.output;
  // stderr is a pipe here: plain progress lines, one "done" per case.
  EXPECT_NE(bench.output.find("bench batch 2, 4+2 tokens: done in"), std::string::npos)
      << bench.output;
}

TEST_F(BenchmarkEngine, CommandJsonOutput) {
  const std::string json_path = test::temp_dir() + "/bench.json";
  const test::CommandResult bench =
      test::run_kite("bench --engine_dir " + *engine_dir_ +
                     " --batch_size '2;1' --input_output_len '6,3' --warm_up 0 --num_runs 1"
                     " --json --output_json " +
                     json_path);
  ASSERT_EQ(bench.exit_code, 0) << bench.output;
  EXPECT_EQ(bench.output.find("[BENCHMARK]"), std::string::npos) << bench.output;
  std::vector<nlohmann::json> printed;
  std::istringstream lines(bench.output);
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty() && line[0] == '{') printed.push_back(nlohmann::json::parse(line));
  }
  ASSERT_EQ(printed.size(), 2u) << bench.output;
  const nlohmann::json file = nlohmann::json::parse(read_file(json_path).value());
  ASSERT_TRUE(file.is_array());
  ASSERT_EQ(file.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    const nlohmann::json& record = printed[i];
    EXPECT_EQ(record.at("device"), "cpu");
    EXPECT_EQ(record.at("batch_size"), i == 0 ? 2 : 1);
    EXPECT_EQ(record.at("input_length"), 6);
    EXPECT_EQ(record.at("output_length"), 3);
    EXPECT_EQ(record.at("runs"), 1);
    const double latency = record.at("latency_ms").get<double>();
    EXPECT_GT(latency, 0);
    EXPECT_NEAR(record.at("tokens_per_second").get<double>(),
                record.at("batch_size").get<double>() * 3 * 1e3 / latency, 1e-6 * 1e3 / latency);
    EXPECT_GT(record.at("first_token_latency_ms").get<double>(), 0);
    EXPECT_GT(record.at("peak_memory_gb").get<double>(), 1e-4);
    EXPECT_EQ(file[i], record);
  }
}

TEST_F(BenchmarkEngine, CommandRefusesBadFlagsAndLimits) {
  const std::string bench = "bench --engine_dir " + *engine_dir_;
  struct Case {
    std::string arguments;
    int exit_code;
    std::string message;
  };
  for (const Case& c : std::vector<Case>{
           {" --batch_size '1;x' --input_output_len 4,2", 2, "--batch_size"},
           {" --batch_size 0 --input_output_len 4,2", 2, "--batch_size"},
           {" --batch_size 1 --input_output_len 128", 2, "--input_output_len"},
           {" --batch_size 1 --input_output_len 4,-1", 2, "--input_output_len"},
           {" --input_output_len 4,2", 2, "--batch_size"},
           {" --batch_size 1", 2, "--input_output_len"},
           {" --batch_size 1 --input_output_len 4,2 --num_runs 0", 2, "--num_runs"},
           {" --batch_size 1 --input_output_len 4,2 --warm_up -1", 2, "--warm_up"},
           {" --batch_size 1 --input_output_len 4,2 --duration -1", 2, "--duration"},
           {" --batch_size '1;3' --input_output_len 4,2", 1, "max_batch_size 2"},
           {" --batch_size 1 --input_output_len '4,2;17,1'", 1, "max_input_len 16"},
           {" --batch_size 1 --input_output_len 16,25", 1, "max_seq_len 40"},
       }) {
    const test::CommandResult result = test::run_kite(bench + c.arguments);
    EXPECT_EQ(result.exit_code, c.exit_code) << c.arguments << "\n" << result.output;
    EXPECT_NE(result.output.find(c.message), std::string::npos) << c.arguments << "\n"
                                                                << result.output;
    // Checked before anything runs: no case was measured.
    EXPECT_EQ(result.output.find("[BENCHMARK]"), std::string::npos) << result.output;
  }
  const test::CommandResult missing = test::run_kite("bench --engine_dir " + test::temp_dir() +
                                                     " --batch_size 1 --input_output_len 4,2");
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.output.find("kite build"), std::string::npos) << missing.output;
}

}  // namespace
}  // namespace kite
