// Static-batch benchmark: parsing the case lists, checking them against the engine's limits, and
// timing generate() on synthetic prompts.
#include "runtime/benchmark.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <random>

#include "formats/model_config.h"

namespace kite {
namespace {

// Splits on `separator`, keeping empty pieces (so "1;;8" has an empty one to complain about).
std::vector<std::string_view> split(std::string_view text, char separator) {
  std::vector<std::string_view> pieces;
  while (true) {
    const size_t end = text.find(separator);
    pieces.push_back(text.substr(0, end));
    if (end == std::string_view::npos) return pieces;
    text.remove_prefix(end + 1);
  }
}

std::string_view trim(std::string_view text) {
  while (!text.empty() && text.front() == ' ') text.remove_prefix(1);
  while (!text.empty() && text.back() == ' ') text.remove_suffix(1);
  return text;
}

// A whole piece of text that is a positive integer, or 0.
int64_t parse_positive(std::string_view text) {
  text = trim(text);
  int64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size() || value <= 0) return 0;
  return value;
}

std::string quoted(std::string_view text) {
  std::string result(1, '"');
  result.append(text);
  result.push_back('"');
  return result;
}

std::string describe(const BenchmarkCase& benchmark_case) {
  return "case batch_size " + std::to_string(benchmark_case.batch_size) + " input_length " +
         std::to_string(benchmark_case.input_length) + " output_length " +
         std::to_string(benchmark_case.output_length);
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

Result<std::vector<int64_t>> parse_batch_sizes(std::string_view text) {
  const std::string usage = " (expected positive integers separated by ';', e.g. \"1;8;64\")";
  std::vector<int64_t> sizes;
  for (std::string_view piece : split(text, ';')) {
    const int64_t size = parse_positive(piece);
    if (size == 0) {
      return invalid_argument("--batch_size " + quoted(text) + ": " + quoted(trim(piece)) +
                              " is not a positive integer" + usage);
    }
    sizes.push_back(size);
  }
  return sizes;
}

Result<std::vector<InputOutputLength>> parse_input_output_lengths(std::string_view text) {
  const std::string usage =
      " (expected INPUT,OUTPUT pairs of positive integers separated by ';', e.g. "
      "\"128,128;2048,128\")";
  std::vector<InputOutputLength> lengths;
  for (std::string_view piece : split(text, ';')) {
    const std::vector<std::string_view> fields = split(piece, ',');
    const int64_t input = fields.size() == 2 ? parse_positive(fields[0]) : 0;
    const int64_t output = fields.size() == 2 ? parse_positive(fields[1]) : 0;
    if (input == 0 || output == 0) {
      return invalid_argument("--input_output_len " + quoted(text) + ": " + quoted(trim(piece)) +
                              " is not INPUT,OUTPUT" + usage);
    }
    lengths.push_back({input, output});
  }
  return lengths;
}

std::vector<BenchmarkCase> benchmark_cases(const std::vector<int64_t>& batch_sizes,
                                           const std::vector<InputOutputLength>& lengths) {
  std::vector<BenchmarkCase> cases;
  for (const InputOutputLength& length : lengths) {
    for (int64_t batch_size : batch_sizes) {
      cases.push_back({batch_size, length.input_length, length.output_length});
    }
  }
  return cases;
}

Status check_benchmark_cases(const BuildLimits& limits, const std::vector<BenchmarkCase>& cases) {
  for (const BenchmarkCase& benchmark_case : cases) {
    const std::string name = describe(benchmark_case);
    if (benchmark_case.batch_size > limits.max_batch_size) {
      return out_of_range(name + ": batch_size exceeds the engine's max_batch_size " +
                          std::to_string(limits.max_batch_size) +
                          " (pass a smaller --batch_size or build the engine with a larger "
                          "--max_batch_size)");
    }
    if (benchmark_case.input_length > limits.max_input_len) {
      return out_of_range(name + ": input_length exceeds the engine's max_input_len " +
                          std::to_string(limits.max_input_len) +
                          " (pass a shorter input in --input_output_len or build the engine with a "
                          "larger --max_input_len)");
    }
    if (benchmark_case.input_length + benchmark_case.output_length > limits.max_seq_len) {
      return out_of_range(name +
                          ": input_length + output_length exceeds the engine's max_seq_len " +
                          std::to_string(limits.max_seq_len) +
                          " (pass shorter lengths in --input_output_len or build the engine with a "
                          "larger --max_seq_len)");
    }
  }
  return Status::ok();
}

Result<std::vector<std::vector<int32_t>>> benchmark_prompts(const Engine& engine,
                                                            const BenchmarkCase& benchmark_case) {
  return benchmark_prompts(engine.config().model, engine.tokenizer(), benchmark_case.batch_size,
                           benchmark_case.input_length, engine.directory());
}

Result<std::vector<std::vector<int32_t>>> benchmark_prompts(const ModelConfig& model,
                                                            const Tokenizer& tokenizer,
                                                            int64_t count, int64_t length,
                                                            const std::string& source) {
  std::vector<int64_t> excluded = model.eos_token_ids;
  if (model.bos_token_id) excluded.push_back(*model.bos_token_id);
  if (model.pad_token_id) excluded.push_back(*model.pad_token_id);
  std::vector<int32_t> candidates;
  const int64_t vocab = std::min<int64_t>(model.vocab_size, tokenizer.vocab_size());
  for (int32_t id = 0; id < vocab; ++id) {
    if (tokenizer.is_special(id) || !tokenizer.id_to_token(id)) continue;
    if (std::find(excluded.begin(), excluded.end(), id) != excluded.end()) continue;
    candidates.push_back(id);
  }
  if (candidates.empty()) {
    return unsupported("the tokenizer of " + source +
                       " has no ordinary (non-special) token to build benchmark prompts from");
  }
  return draw_prompts(candidates, count, length);
}

std::vector<std::vector<int32_t>> draw_prompts(const std::vector<int32_t>& candidates,
                                               int64_t count, int64_t length) {
  std::vector<std::vector<int32_t>> prompts;
  for (int64_t sequence = 0; sequence < count; ++sequence) {
    // A seed per sequence: prompt i is the same whatever the batch size. The modulo (not
    // std::uniform_int_distribution) gives the same ids with every standard library.
    std::mt19937_64 generator(0x6b697465ull + uint64_t(sequence));
    std::vector<int32_t> prompt(static_cast<size_t>(length));
    for (int32_t& id : prompt) id = candidates[generator() % candidates.size()];
    prompts.push_back(std::move(prompt));
  }
  return prompts;
}

Result<BenchmarkResult> run_benchmark_case(Engine& engine, const BenchmarkCase& benchmark_case,
                                           const BenchmarkOptions& options,
                                           const BenchmarkStepCallback& on_step) {
  KITE_RETURN_IF_ERROR(check_benchmark_cases(engine.config().limits, {benchmark_case}));
  GenerationRequest request;
  KITE_ASSIGN_OR_RETURN(request.prompts, benchmark_prompts(engine, benchmark_case));
  request.sampling.temperature = 0.0f;
  // No end ids: every sequence runs to output_length.
  request.stop.max_output_len = benchmark_case.output_length;

  Backend& backend = engine.backend();
  size_t peak_bytes = backend.memory_in_use_bytes();
  const int64_t expected_tokens = benchmark_case.batch_size * benchmark_case.output_length;
  // One generate() call; returns its wall time and adds its prefill time to `prefill_seconds`.
  auto run_once = [&](const std::string& label, double& prefill_seconds) -> Result<double> {
    int64_t tokens = 0;
    int64_t steps = 0;
    const TokenCallback on_token = [&](size_t sequence, int32_t) {
      ++tokens;
      // Every sequence is active in every step and sequence 0 comes first: once per step.
      if (sequence == 0) {
        // Memory grows in the first steps (the prefill's workspace, the decode graph) and is
        // sampled again after the run: a driver query every step would be host time inside the
        // timed loop.
        if (++steps <= 2) peak_bytes = std::max(peak_bytes, backend.memory_in_use_bytes());
        if (on_step) on_step(label);
      }
    };
    GenerationStats stats;
    const auto start = std::chrono::steady_clock::now();
    KITE_ASSIGN_OR_RETURN(std::vector<GenerationResult> results,
                          generate(engine, request, on_token, &stats));
    backend.synchronize();
    const double seconds = seconds_since(start);
    peak_bytes = std::max(peak_bytes, backend.memory_in_use_bytes());
    for (size_t sequence = 0; sequence < results.size(); ++sequence) {
      const size_t generated = results[sequence].output_ids.size();
      if (int64_t(generated) != benchmark_case.output_length) {
        std::string message = describe(benchmark_case);
        message += ": sequence " + std::to_string(sequence) + " generated ";
        message += std::to_string(generated) + " tokens instead of output_length";
        return internal_error(message);
      }
    }
    if (tokens != expected_tokens) {
      std::string message = describe(benchmark_case);
      message += ": the token callback saw " + std::to_string(tokens) + " tokens instead of ";
      message += std::to_string(expected_tokens);
      return internal_error(message);
    }
    prefill_seconds += stats.prefill_seconds;
    return seconds;
  };

  double unused_prefill_seconds = 0;
  for (int64_t run = 1; run <= options.warm_up_runs; ++run) {
    char label[64];
    std::snprintf(label, sizeof(label), "warm-up %lld/%lld", static_cast<long long>(run),
                  static_cast<long long>(options.warm_up_runs));
    KITE_ASSIGN_OR_RETURN(double seconds, run_once(label, unused_prefill_seconds));
    (void)seconds;
  }
  BenchmarkResult result;
  result.benchmark_case = benchmark_case;
  result.backend = backend.kind();
  result.tokens_per_run = expected_tokens;
  double total_seconds = 0;
  double prefill_seconds = 0;
  while (result.runs < options.min_runs || total_seconds < options.min_duration_seconds) {
    char label[96];
    if (options.min_duration_seconds > 0) {
      std::snprintf(label, sizeof(label), "run %lld (%.0f of %.0f s)",
                    static_cast<long long>(result.runs + 1), total_seconds,
                    options.min_duration_seconds);
    } else {
      std::snprintf(label, sizeof(label), "run %lld/%lld", static_cast<long long>(result.runs + 1),
                    static_cast<long long>(options.min_runs));
    }
    KITE_ASSIGN_OR_RETURN(double seconds, run_once(label, prefill_seconds));
    total_seconds += seconds;
    ++result.runs;
  }
  result.latency_ms = total_seconds * 1e3 / double(result.runs);
  result.tokens_per_second = double(expected_tokens) / (result.latency_ms / 1e3);
  result.first_token_latency_ms = prefill_seconds * 1e3 / double(result.runs);
  result.peak_memory_gb = double(peak_bytes) / 1e9;
  return result;
}

std::string benchmark_line(const BenchmarkResult& result) {
  const BenchmarkCase& benchmark_case = result.benchmark_case;
  const char* memory_field =
      result.backend == BackendKind::kCuda ? "gpu_peak_mem(gb)" : "peak_mem(gb)";
  char line[512];
  std::snprintf(line, sizeof(line),
                "[BENCHMARK] batch_size %lld input_length %lld output_length %lld latency(ms) "
                "%.2f tokensPerSec %.2f first_token_latency(ms) %.2f %s %.2f",
                static_cast<long long>(benchmark_case.batch_size),
                static_cast<long long>(benchmark_case.input_length),
                static_cast<long long>(benchmark_case.output_length), result.latency_ms,
                result.tokens_per_second, result.first_token_latency_ms, memory_field,
                result.peak_memory_gb);
  return line;
}

nlohmann::ordered_json benchmark_json(const BenchmarkResult& result) {
  const BenchmarkCase& benchmark_case = result.benchmark_case;
  return {{"device", std::string(backend_kind_name(result.backend))},
          {"batch_size", benchmark_case.batch_size},
          {"input_length", benchmark_case.input_length},
          {"output_length", benchmark_case.output_length},
          {"runs", result.runs},
          {"latency_ms", result.latency_ms},
          {"tokens_per_second", result.tokens_per_second},
          {"first_token_latency_ms", result.first_token_latency_ms},
          {"peak_memory_gb", result.peak_memory_gb}};
}

BenchmarkWork benchmark_work(const EngineConfig& config, const BenchmarkCase& benchmark_case) {
  const double batch = double(benchmark_case.batch_size);
  const ModelConfig& model = config.model;
  double decoder_linear_parameters = 0;
  double embedding_bytes = 0;
  for (const WeightInfo& weight : model_weights(model)) {
    if (weight.role == WeightRole::kEmbedding) {
      embedding_bytes = double(shape_numel(weight.shape)) * double(dtype_size(config.weight_dtype));
    } else if (weight.role == WeightRole::kLinear && weight.name != "lm_head.weight") {
      decoder_linear_parameters += double(shape_numel(weight.shape));
    }
  }
  const double lm_head_parameters = double(model.vocab_size) * double(model.hidden_size);
  BenchmarkWork work;
  work.prefill_gemm_flops =
      2.0 * batch *
      (double(benchmark_case.input_length) * decoder_linear_parameters + lm_head_parameters);
  if (config.memory.weights_bytes > 0) {
    const double row_bytes = embedding_bytes / double(model.vocab_size);
    const double table_bytes =
        model.tie_word_embeddings ? 0.0 : embedding_bytes - batch * row_bytes;
    const double mean_context =
        double(benchmark_case.input_length) + double(benchmark_case.output_length) / 2.0;
    work.decode_step_bytes = double(config.memory.weights_bytes) - table_bytes +
                             batch * mean_context * double(config.memory.kv_cache_bytes_per_token);
  }
  return work;
}

Roofline benchmark_roofline(const BenchmarkResult& result, const BenchmarkWork& work,
                            double copy_bytes_per_second, double gemm_flops_per_second) {
  const BenchmarkCase& benchmark_case = result.benchmark_case;
  Roofline roofline;
  const double decode_seconds = (result.latency_ms - result.first_token_latency_ms) / 1e3;
  if (benchmark_case.output_length > 1 && decode_seconds > 0 && work.decode_step_bytes > 0) {
    roofline.decode_tokens_per_second = double(benchmark_case.output_length - 1) / decode_seconds;
    roofline.decode_floor_tokens_per_second = copy_bytes_per_second / work.decode_step_bytes;
  }
  const double prefill_tokens = double(benchmark_case.batch_size * benchmark_case.input_length);
  if (result.first_token_latency_ms > 0 && work.prefill_gemm_flops > 0) {
    roofline.prefill_tokens_per_second = prefill_tokens / (result.first_token_latency_ms / 1e3);
    roofline.prefill_floor_tokens_per_second =
        prefill_tokens / (work.prefill_gemm_flops / gemm_flops_per_second);
  }
  return roofline;
}

std::string roofline_line(const BenchmarkResult& result, const Roofline& roofline) {
  const BenchmarkCase& benchmark_case = result.benchmark_case;
  char line[512];
  int length = std::snprintf(line, sizeof(line),
                             "[ROOFLINE] batch_size %lld input_length %lld output_length %lld",
                             static_cast<long long>(benchmark_case.batch_size),
                             static_cast<long long>(benchmark_case.input_length),
                             static_cast<long long>(benchmark_case.output_length));
  auto phase = [&](const char* name, double measured, double floor) {
    if (measured <= 0 || floor <= 0) return;
    length += std::snprintf(line + length, sizeof(line) - size_t(length),
                            " %s_tokensPerSec %.2f %s_floor %.2f %s_share %.1f%%", name, measured,
                            name, floor, name, 100.0 * measured / floor);
  };
  phase("decode", roofline.decode_tokens_per_second, roofline.decode_floor_tokens_per_second);
  phase("prefill", roofline.prefill_tokens_per_second, roofline.prefill_floor_tokens_per_second);
  return line;
}

nlohmann::ordered_json roofline_json(const Roofline& roofline) {
  return {{"decode_tokens_per_second", roofline.decode_tokens_per_second},
          {"decode_floor_tokens_per_second", roofline.decode_floor_tokens_per_second},
          {"prefill_tokens_per_second", roofline.prefill_tokens_per_second},
          {"prefill_floor_tokens_per_second", roofline.prefill_floor_tokens_per_second}};
}

}  // namespace kite
