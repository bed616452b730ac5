// `kite bench`: the speed of an engine. Static batches (--mode static, like TensorRT-LLM's
// gptSessionBenchmark): one [BENCHMARK] line (or JSON object with --json) per (batch size, input,
// output length) case. In-flight batching (--mode serve, like benchmark_serving): requests at a
// Poisson rate or a fixed concurrency through the Executor, or with --url through a running server
// over HTTP, one line per (lengths, concurrency). Results on stdout, progress on stderr.
#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "core/file.h"
#include "core/progress.h"
#include "kernels/backend_factory.h"
#include "runtime/benchmark.h"
#include "runtime/serve_benchmark.h"
#include "server/http_benchmark.h"
#include "tokenizer/tokenizer.h"
#include "tools/command.h"

namespace kite::tools {
namespace {

struct BenchFlags {
  std::string engine_dir;
  std::string batch_sizes;
  std::string input_output_lengths;
  int64_t warm_up = 1;
  int64_t num_runs = 3;
  double duration = 0;
  bool json = false;
  std::string output_json;
  bool ceilings = false;
  LoadOptions load;
  std::string multi_block_mode;  // "", "true" or "false": overrides the engine's
  // --mode serve
  std::string mode = "static";
  int64_t num_requests = 100;
  double request_rate = 0;
  std::string concurrency = "0";
  std::string scheduler_policy = "max_utilization";
  int64_t max_batch_size = 0;
  // --mode serve --url: a running server instead of the in-process Executor
  std::string url;
  std::string api_key;
  std::string model;
  // Flags of the in-process engine given on the command line.
  std::vector<std::string> engine_flags_given;
};

// Prompt ids over HTTP without --engine_dir: every real tokenizer has ordinary tokens here.
constexpr int32_t kUrlPromptFirstId = 100;
constexpr int32_t kUrlPromptEndId = 1000;

// "0;16;64" -> {0, 16, 64}: non-negative integers.
Result<std::vector<int64_t>> parse_concurrencies(const std::string& text) {
  std::vector<int64_t> values;
  size_t begin = 0;
  while (begin <= text.size()) {
    const size_t end = std::min(text.find(';', begin), text.size());
    const std::string piece = text.substr(begin, end - begin);
    char* parsed_end = nullptr;
    const long long value = std::strtoll(piece.c_str(), &parsed_end, 10);
    if (piece.empty() || *parsed_end != '\0' || value < 0) {
      return invalid_argument("--concurrency \"" + text + "\": \"" + piece +
                              "\" is not a non-negative integer (e.g. \"1;16;64\", 0: no limit)");
    }
    values.push_back(value);
    begin = end + 1;
  }
  return values;
}

using PromptSource =
    std::function<Result<std::vector<std::vector<int32_t>>>(int64_t count, int64_t length)>;
using ServeCaseRunner = std::function<Result<ServeBenchmarkResult>(
    const std::vector<std::vector<int32_t>>& prompts, const ServeBenchmarkOptions& options,
    const std::function<void(int64_t)>& on_done)>;

// Runs and prints every (lengths, concurrency) case. Every record is printed; then a case whose
// requests all failed ends the run. In process any failure does (the requests were checked against
// the engine, so a failure is a fault); a server may refuse some requests under load: counted, and
// a warning.
Status run_serve_cases(const BenchFlags& flags, const std::vector<InputOutputLength>& lengths,
                       const PromptSource& make_prompts, const ServeCaseRunner& run_case) {
  KITE_ASSIGN_OR_RETURN(std::vector<int64_t> concurrencies, parse_concurrencies(flags.concurrency));
  const bool over_http = !flags.url.empty();
  nlohmann::ordered_json all_results = nlohmann::ordered_json::array();
  for (const InputOutputLength& length : lengths) {
    KITE_ASSIGN_OR_RETURN(std::vector<std::vector<int32_t>> prompts,
                          make_prompts(flags.num_requests, length.input_length));
    for (const int64_t concurrency : concurrencies) {
      ServeBenchmarkOptions options{.num_requests = flags.num_requests,
                                    .input_length = length.input_length,
                                    .output_length = length.output_length,
                                    .request_rate = flags.request_rate,
                                    .concurrency = concurrency};
      char label[128];
      std::snprintf(label, sizeof(label), "serve %lld requests, %lld+%lld tokens",
                    static_cast<long long>(options.num_requests),
                    static_cast<long long>(options.input_length),
                    static_cast<long long>(options.output_length));
      Progress progress(label, options.num_requests);
      KITE_ASSIGN_OR_RETURN(
          ServeBenchmarkResult result,
          run_case(prompts, options, [&](int64_t done) { progress.update(done, "requests"); }));
      progress.finish();
      const nlohmann::ordered_json record = serve_benchmark_json(result);
      std::printf("%s\n",
                  flags.json ? record.dump().c_str() : serve_benchmark_line(result).c_str());
      std::fflush(stdout);
      all_results.push_back(record);
      const std::string failed = std::to_string(result.errors) + " of " +
                                 std::to_string(options.num_requests) +
                                 " requests failed, the first with: " + result.first_error;
      if (result.completed == 0 || (result.errors > 0 && !over_http)) {
        if (!flags.output_json.empty()) {
          KITE_RETURN_IF_ERROR(write_file(flags.output_json, all_results.dump(1) + "\n"));
        }
        return over_http ? io_error(failed) : internal_error(failed);
      }
      if (result.errors > 0) std::fprintf(stderr, "kite bench: warning: %s\n", failed.c_str());
      if (result.output_tokens != result.completed * options.output_length) {
        std::fprintf(stderr,
                     "kite bench: warning: %lld requests returned %lld output tokens, not %lld "
                     "each: does the server honour max_tokens and ignore_eos?\n",
                     static_cast<long long>(result.completed),
                     static_cast<long long>(result.output_tokens),
                     static_cast<long long>(options.output_length));
      }
    }
  }
  if (!flags.output_json.empty()) {
    KITE_RETURN_IF_ERROR(write_file(flags.output_json, all_results.dump(1) + "\n"));
  }
  return Status::ok();
}

// The in-process Executor over --engine_dir.
Status run_serve(const BenchFlags& flags, const std::vector<InputOutputLength>& lengths,
                 const EngineConfig& config) {
  executor::ExecutorConfig executor_config;
  const auto policy = executor::scheduler_policy_from_name(flags.scheduler_policy);
  if (!policy) {
    return invalid_argument("--scheduler_policy must be guaranteed_no_evict or max_utilization");
  }
  executor_config.policy = *policy;
  executor_config.max_batch_size = flags.max_batch_size;
  executor_config.kv_cache_free_gpu_mem_fraction = flags.load.kv_cache_free_gpu_mem_fraction;
  executor_config.device_index = flags.load.device_index;
  KITE_ASSIGN_OR_RETURN(Tokenizer tokenizer, Tokenizer::from_directory(flags.engine_dir));
  std::string error;
  std::unique_ptr<executor::Executor> server =
      executor::Executor::create(flags.engine_dir, executor_config, &error);
  if (!server) return invalid_argument(error);
  return run_serve_cases(
      flags, lengths,
      [&](int64_t count, int64_t length) {
        return benchmark_prompts(config.model, tokenizer, count, length, flags.engine_dir);
      },
      [&](const std::vector<std::vector<int32_t>>& prompts, const ServeBenchmarkOptions& options,
          const std::function<void(int64_t)>& on_done) {
        return run_serve_benchmark(*server, prompts, options, on_done);
      });
}

// A running server at --url. The prompts come from --engine_dir's tokenizer when given (the same
// prompts as in process), otherwise they are ids in [kUrlPromptFirstId, kUrlPromptEndId).
Status run_serve_url(const BenchFlags& flags, const std::vector<InputOutputLength>& lengths) {
  KITE_ASSIGN_OR_RETURN(server::ServerUrl url, server::parse_server_url(flags.url));
  if (!flags.engine_flags_given.empty()) {
    return invalid_argument(flags.engine_flags_given.front() +
                            " configures the in-process engine; with --url the server's own "
                            "settings apply");
  }
  KITE_ASSIGN_OR_RETURN(std::vector<int64_t> concurrencies, parse_concurrencies(flags.concurrency));
  for (const int64_t concurrency : concurrencies) {
    if (concurrency > server::kMaxBenchmarkConnections) {
      return invalid_argument("--concurrency " + std::to_string(concurrency) + ": at most " +
                              std::to_string(server::kMaxBenchmarkConnections) +
                              " requests in flight with --url");
    }
    if (concurrency == 0 && flags.num_requests > server::kMaxBenchmarkConnections) {
      std::fprintf(stderr,
                   "kite bench: note: with --url, --concurrency 0 keeps at most %lld "
                   "requests in flight (one connection each)\n",
                   static_cast<long long>(server::kMaxBenchmarkConnections));
    }
  }
  std::optional<EngineConfig> config;
  std::optional<Tokenizer> tokenizer;
  if (!flags.engine_dir.empty()) {
    KITE_ASSIGN_OR_RETURN(config, read_engine_config(flags.engine_dir));
    KITE_ASSIGN_OR_RETURN(tokenizer, Tokenizer::from_directory(flags.engine_dir));
  }
  const PromptSource make_prompts =
      [&](int64_t count, int64_t length) -> Result<std::vector<std::vector<int32_t>>> {
    if (tokenizer) {
      return benchmark_prompts(config->model, *tokenizer, count, length, flags.engine_dir);
    }
    std::vector<int32_t> ids;
    for (int32_t id = kUrlPromptFirstId; id < kUrlPromptEndId; ++id) ids.push_back(id);
    return draw_prompts(ids, count, length);
  };
  // A server that closes a connection must not kill this process with SIGPIPE.
  std::signal(SIGPIPE, SIG_IGN);
  const server::HttpBenchmarkTarget target{
      .url = std::move(url), .api_key = flags.api_key, .model = flags.model};
  return run_serve_cases(
      flags, lengths, make_prompts,
      [&](const std::vector<std::vector<int32_t>>& prompts, const ServeBenchmarkOptions& options,
          const std::function<void(int64_t)>& on_done) {
        return server::run_http_serve_benchmark(target, prompts, options, on_done);
      });
}

Status run(const BenchFlags& flags) {
  if (!flags.url.empty() && flags.mode != "serve") {
    return invalid_argument("--url measures a server under a stream of requests: add --mode serve");
  }
  if (flags.engine_dir.empty() && flags.url.empty()) {
    return invalid_argument("--engine_dir is required (or, with --mode serve, --url)");
  }
  if (flags.mode == "serve") {
    if (flags.input_output_lengths.empty()) {
      return invalid_argument("--input_output_len is required (e.g. \"128,128\")");
    }
    KITE_ASSIGN_OR_RETURN(std::vector<InputOutputLength> lengths,
                          parse_input_output_lengths(flags.input_output_lengths));
    if (!flags.url.empty()) return run_serve_url(flags, lengths);
    KITE_ASSIGN_OR_RETURN(EngineConfig config, read_engine_config(flags.engine_dir));
    return run_serve(flags, lengths, config);
  }
  if (flags.mode != "static") return invalid_argument("--mode takes static or serve");
  if (flags.batch_sizes.empty()) {
    return invalid_argument(
        "--batch_size is required (batch sizes separated by ';', e.g. \"1;8\")");
  }
  if (flags.input_output_lengths.empty()) {
    return invalid_argument(
        "--input_output_len is required (INPUT,OUTPUT pairs separated by ';', e.g. "
        "\"128,128;2048,128\")");
  }
  if (flags.warm_up < 0) return invalid_argument("--warm_up must be >= 0");
  if (flags.num_runs < 1) return invalid_argument("--num_runs must be >= 1");
  if (!(flags.duration >= 0)) return invalid_argument("--duration must be >= 0 seconds");
  KITE_ASSIGN_OR_RETURN(std::vector<int64_t> batch_sizes, parse_batch_sizes(flags.batch_sizes));
  KITE_ASSIGN_OR_RETURN(std::vector<InputOutputLength> lengths,
                        parse_input_output_lengths(flags.input_output_lengths));
  const std::vector<BenchmarkCase> cases = benchmark_cases(batch_sizes, lengths);
  // Every case is checked before the (possibly slow) load and before anything runs.
  KITE_ASSIGN_OR_RETURN(EngineConfig config, read_engine_config(flags.engine_dir));
  KITE_RETURN_IF_ERROR(check_benchmark_cases(config.limits, cases));
  LoadOptions load = flags.load;
  if (flags.multi_block_mode == "true" || flags.multi_block_mode == "false") {
    load.multi_block_mode = flags.multi_block_mode == "true";
  } else if (!flags.multi_block_mode.empty()) {
    return invalid_argument("--multi_block_mode takes true or false");
  }
  std::optional<GpuCeilings> ceilings;
  if (flags.ceilings) {
    // The GPU's own limits, measured in the same run as the cases they bound.
    if (config.device != "cuda") return invalid_argument("--ceilings measures GPUs: a cuda engine");
    KITE_ASSIGN_OR_RETURN(GpuIdentity gpu, gpu_identity(load.device_index));
    KITE_ASSIGN_OR_RETURN(ceilings, measure_gpu_ceilings(load.device_index));
    std::printf("[CEILING] device \"%s\" copy_bandwidth(GB/s) %.1f bf16_gemm(TFLOP/s) %.1f\n",
                gpu.name.c_str(), ceilings->copy_bytes_per_second / 1e9,
                ceilings->bf16_gemm_flops_per_second / 1e12);
    std::fflush(stdout);
  }
  KITE_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::load(flags.engine_dir, load));

  const BenchmarkOptions options{.warm_up_runs = flags.warm_up,
                                 .min_runs = flags.num_runs,
                                 .min_duration_seconds = flags.duration};
  nlohmann::ordered_json all_results = nlohmann::ordered_json::array();
  for (const BenchmarkCase& benchmark_case : cases) {
    // One bar per case, finished before its result line so the two never share a terminal line.
    // Counted in generation steps; runs beyond --num_runs (for --duration) stay at 100%.
    char label[128];
    std::snprintf(label, sizeof(label), "bench batch %lld, %lld+%lld tokens",
                  static_cast<long long>(benchmark_case.batch_size),
                  static_cast<long long>(benchmark_case.input_length),
                  static_cast<long long>(benchmark_case.output_length));
    Progress progress(label,
                      (options.warm_up_runs + options.min_runs) * benchmark_case.output_length);
    int64_t steps = 0;
    KITE_ASSIGN_OR_RETURN(
        BenchmarkResult result,
        run_benchmark_case(*engine, benchmark_case, options, [&](const std::string& run_label) {
          progress.update(++steps, run_label);
        }));
    progress.finish();
    nlohmann::ordered_json record = benchmark_json(result);
    // With --ceilings, the case against its floors (benchmark_work): a [ROOFLINE] line after it.
    std::optional<Roofline> roofline;
    if (ceilings) {
      roofline =
          benchmark_roofline(result, benchmark_work(config, benchmark_case),
                             ceilings->copy_bytes_per_second, ceilings->bf16_gemm_flops_per_second);
      record["roofline"] = roofline_json(*roofline);
    }
    if (flags.json) {
      std::printf("%s\n", record.dump().c_str());
    } else {
      std::printf("%s\n", benchmark_line(result).c_str());
      if (roofline) std::printf("%s\n", roofline_line(result, *roofline).c_str());
    }
    std::fflush(stdout);
    all_results.push_back(record);
  }
  if (!flags.output_json.empty()) {
    KITE_RETURN_IF_ERROR(write_file(flags.output_json, all_results.dump(1) + "\n"));
  }
  return Status::ok();
}

}  // namespace

Command add_bench_command(CLI::App& kite) {
  auto flags = std::make_shared<BenchFlags>();
  CLI::App* app = kite.add_subcommand(
      "bench",
      "Measure an engine's (or with --url a server's) latency and throughput on synthetic prompts");
  app->add_option("--engine_dir", flags->engine_dir,
                  "Engine folder (kite build); with --url optional, for its prompts");
  app->add_option("--batch_size", flags->batch_sizes, "Batch sizes separated by ';' (\"1;8;64\")");
  app->add_option("--input_output_len", flags->input_output_lengths,
                  "INPUT,OUTPUT token counts separated by ';' (\"128,128;2048,128\")");
  app->add_option("--warm_up", flags->warm_up, "Untimed runs per case first (1)");
  app->add_option("--num_runs", flags->num_runs, "Timed runs per case, at least (3)");
  app->add_option("--duration", flags->duration,
                  "Keep running a case until its timed runs take this many seconds (0)");
  app->add_flag("--json", flags->json,
                "Print one JSON object per case instead of [BENCHMARK] lines");
  app->add_option("--output_json", flags->output_json, "Write every case's results here (array)");
  app->add_flag("--ceilings", flags->ceilings,
                "First measure the GPU's copy bandwidth and bf16 GEMM rate ([CEILING] line), then "
                "give each case's decode and prefill against the floors they set ([ROOFLINE])");
  app->add_option("--multi_block_mode", flags->multi_block_mode,
                  "true or false: override the engine's split-KV decode attention");
  app->add_option("--kv_cache_free_gpu_mem_fraction", flags->load.kv_cache_free_gpu_mem_fraction,
                  "Share of the free GPU memory the KV cache takes (0.9)");
  app->add_option("--mode", flags->mode,
                  "static (fixed batches) or serve (in-flight batching of a stream of requests)");
  app->add_option("--num_requests", flags->num_requests, "serve: requests per case (100)");
  app->add_option("--request_rate", flags->request_rate,
                  "serve: Poisson arrivals per second; 0 sends them all at once (0)");
  app->add_option("--concurrency", flags->concurrency,
                  "serve: requests in flight at most, cases separated by ';' (\"1;16;64\"); 0: no "
                  "limit (0)");
  app->add_option("--scheduler_policy", flags->scheduler_policy,
                  "serve: guaranteed_no_evict or max_utilization (max_utilization)");
  app->add_option("--max_batch_size", flags->max_batch_size,
                  "serve: requests per step at most; 0: the engine's (0)");
  app->add_option("--url", flags->url,
                  "serve: measure the OpenAI-compatible server at this address (kite serve, vLLM, "
                  "...) instead of an in-process engine, e.g. http://127.0.0.1:8000");
  app->add_option("--api_key", flags->api_key, "serve --url: sent as 'Authorization: Bearer KEY'")
      ->envname("KITE_API_KEY");
  app->add_option("--model", flags->model,
                  "serve --url: the requests' model name (default: none, the server's own)");
  return Command{
      app, [flags, app] {
        // In-process engine settings that mean nothing to a server at --url.
        for (const char* name : {"--scheduler_policy", "--max_batch_size",
                                 "--kv_cache_free_gpu_mem_fraction", "--multi_block_mode"}) {
          if (app->count(name) > 0) flags->engine_flags_given.push_back(name);
        }
        return run(*flags);
      }};
}

}  // namespace kite::tools
