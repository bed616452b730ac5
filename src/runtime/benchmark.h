// Static-batch speed measurement (what `kite bench` runs, like TensorRT-LLM's
// gptSessionBenchmark): for each (batch size, input length, output length) case, generate exactly
// output_length tokens for batch_size synthetic prompts of input_length tokens, and report latency,
// tokens/s, first-token latency and peak memory. Written against Engine and Backend only, so it
// measures whichever backend the engine was built for.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "runtime/engine.h"

namespace kite {

struct BenchmarkCase {
  int64_t batch_size = 1;
  int64_t input_length = 1;   // prompt tokens of every sequence
  int64_t output_length = 1;  // tokens generated for every sequence

  bool operator==(const BenchmarkCase&) const = default;
};

// "1;8;64" -> {1, 8, 64}. Errors (kInvalidArgument) name --batch_size.
Result<std::vector<int64_t>> parse_batch_sizes(std::string_view text);

struct InputOutputLength {
  int64_t input_length = 0;
  int64_t output_length = 0;

  bool operator==(const InputOutputLength&) const = default;
};
// "128,128;2048,128" -> {{128, 128}, {2048, 128}}. Errors (kInvalidArgument) name
// --input_output_len.
Result<std::vector<InputOutputLength>> parse_input_output_lengths(std::string_view text);

// Every (input, output) length with every batch size, in gptSessionBenchmark's order: lengths
// outer, batch sizes inner.
std::vector<BenchmarkCase> benchmark_cases(const std::vector<int64_t>& batch_sizes,
                                           const std::vector<InputOutputLength>& lengths);

// Checks every case against the engine's build limits (max_batch_size, max_input_len,
// max_seq_len), so that a bad case is reported before anything runs. kOutOfRange, naming the case
// and the limit.
Status check_benchmark_cases(const BuildLimits& limits, const std::vector<BenchmarkCase>& cases);

// `batch_size` prompts of `input_length` token ids drawn deterministically (a fixed seed per
// sequence) from the vocabulary, avoiding special tokens and the model's bos/eos/pad ids.
Result<std::vector<std::vector<int32_t>>> benchmark_prompts(const Engine& engine,
                                                            const BenchmarkCase& benchmark_case);
// The same for `count` prompts of `length` tokens (prompt i is the same for every count); `source`
// names the tokenizer in errors.
Result<std::vector<std::vector<int32_t>>> benchmark_prompts(const ModelConfig& model,
                                                            const Tokenizer& tokenizer,
                                                            int64_t count, int64_t length,
                                                            const std::string& source);
// `count` prompts of `length` ids drawn from `candidates` (not empty), with the same seeds: prompt
// i is the same for every count.
std::vector<std::vector<int32_t>> draw_prompts(const std::vector<int32_t>& candidates,
                                               int64_t count, int64_t length);

struct BenchmarkOptions {
  int64_t warm_up_runs = 1;         // untimed runs first
  int64_t min_runs = 3;             // timed runs, at least
  double min_duration_seconds = 0;  // keep running until the timed runs add up to this much
};

struct BenchmarkResult {
  BenchmarkCase benchmark_case;
  int64_t runs = 0;                   // timed runs
  double latency_ms = 0;              // mean wall time of a timed run (prefill + all decode steps)
  double tokens_per_second = 0;       // batch_size * output_length / latency
  double first_token_latency_ms = 0;  // mean prefill step (the first token of every sequence)
  double peak_memory_gb = 0;   // Backend::memory_in_use_bytes() after each run's first two steps
                               // and after each run, the largest, in 1e9 B
  int64_t tokens_per_run = 0;  // tokens the runs generated, checked == batch * output
  BackendKind backend = BackendKind::kCpu;
};

// Called once per generation step (warm-up and timed runs alike); `run_label` says which run
// ("warm-up 1/1", "run 2/3").
using BenchmarkStepCallback = std::function<void(const std::string& run_label)>;

// Runs one case greedily with no end ids, so every sequence produces exactly output_length
// tokens; fails (kInternal) if a run produced any other number. The case must pass
// check_benchmark_cases.
Result<BenchmarkResult> run_benchmark_case(Engine& engine, const BenchmarkCase& benchmark_case,
                                           const BenchmarkOptions& options,
                                           const BenchmarkStepCallback& on_step = {});

// gptSessionBenchmark's line: "[BENCHMARK] batch_size 1 input_length 128 output_length 128
// latency(ms) ... tokensPerSec ... first_token_latency(ms) ... gpu_peak_mem(gb) ..." (the memory
// field is peak_mem(gb) on the CPU, where it is the process's resident memory).
std::string benchmark_line(const BenchmarkResult& result);
nlohmann::ordered_json benchmark_json(const BenchmarkResult& result);

// The least a case must move and compute, counted from the engine (the floors of docs/perf): a
// decode step reads every stored weight once, except that the embedding table gives one row a
// sequence (all of it when the LM head shares it), and the KV cache of every sequence's context,
// taken at the mean context of the decode steps (input + output / 2 tokens); the prefill multiplies
// every prompt token by the decoder's linear weights and each sequence's last token by the LM head
// (GEMM FLOPs only: attention is not counted, as the goals in docs/perf count it). Zero bytes for
// engines built before their memory plan was recorded.
struct BenchmarkWork {
  double decode_step_bytes = 0;
  double prefill_gemm_flops = 0;
};
BenchmarkWork benchmark_work(const EngineConfig& config, const BenchmarkCase& benchmark_case);

// A result against the GPU's ceilings measured in the same run (kite bench --ceilings): decode
// tokens/s of one sequence, (output_length - 1) / (latency - first-token latency), against the
// floor copy rate / decode_step_bytes; prefill tokens/s, batch * input / first-token latency,
// against the GEMM floor. A field is 0 where the case has no such phase (output_length 1: no
// decode step) or the engine does not say its size.
struct Roofline {
  double decode_tokens_per_second = 0;
  double decode_floor_tokens_per_second = 0;
  double prefill_tokens_per_second = 0;
  double prefill_floor_tokens_per_second = 0;
};
Roofline benchmark_roofline(const BenchmarkResult& result, const BenchmarkWork& work,
                            double copy_bytes_per_second, double gemm_flops_per_second);
// "[ROOFLINE] batch_size 1 input_length 128 output_length 128 decode_tokensPerSec 187.88
// decode_floor 201.24 decode_share 93.4% prefill_tokensPerSec ... prefill_floor ...
// prefill_share ...%" (a phase the case lacks is left out).
std::string roofline_line(const BenchmarkResult& result, const Roofline& roofline);
nlohmann::ordered_json roofline_json(const Roofline& roofline);

}  // namespace kite
