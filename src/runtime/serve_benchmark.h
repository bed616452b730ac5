// In-flight batching speed (what `kite bench --mode serve` runs, like TensorRT-LLM's
// benchmark_serving / trtllm-bench throughput): synthetic requests of fixed input and output
// lengths arrive at a Poisson rate or keep a fixed number in flight, all streamed through an
// Executor; reports output tokens/s, requests/s, time to first token and inter-token latency
// percentiles. The same workload over HTTP (--url) is server/http_benchmark.h, which shares the
// arrival times and the summary below.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "kite/executor.h"

namespace kite {

using ServeClock = std::chrono::steady_clock;

struct ServeBenchmarkOptions {
  int64_t num_requests = 100;
  int64_t input_length = 128;
  int64_t output_length = 128;
  // Arrivals: a Poisson process of this many requests per second; 0: all at once (or as
  // concurrency allows).
  double request_rate = 0;
  // Requests in flight at most; 0: no limit.
  int64_t concurrency = 0;
  uint64_t seed = 0;  // of the arrival times
};

struct LatencyPercentiles {
  double mean = 0, p50 = 0, p90 = 0, p99 = 0;  // milliseconds
};

struct ServeBenchmarkResult {
  ServeBenchmarkOptions options;
  std::string url;     // the server measured; empty: the in-process Executor
  double seconds = 0;  // first arrival to last response
  int64_t completed = 0;
  int64_t errors = 0;
  int64_t output_tokens = 0;
  double output_tokens_per_second = 0;
  double requests_per_second = 0;
  LatencyPercentiles time_to_first_token;  // arrival to first token
  LatencyPercentiles inter_token_latency;  // gaps between a request's consecutive outputs
  LatencyPercentiles request_latency;      // arrival to last token
  std::string first_error;                 // of the request that failed first
};

// What one request of the benchmark saw.
struct RequestTimeline {
  ServeClock::time_point sent;  // enqueued, or its HTTP request started
  // When output arrived: once per token in process; once per streamed chunk with text over HTTP.
  std::vector<ServeClock::time_point> outputs;
  int64_t output_tokens = 0;
  std::optional<std::string> error;  // the request failed
  ServeClock::time_point finished;   // its last response (orders the errors)
};

// Nearest-rank percentiles (and the mean) of `values`; zeros when empty.
LatencyPercentiles latency_percentiles(std::vector<double> values);

// kInvalidArgument naming the flag when the options cannot run.
Status check_serve_benchmark_options(const ServeBenchmarkOptions& options);

// When each request arrives, in seconds from the start: exponential gaps (a Poisson process
// seeded by options.seed) at request_rate, or all at 0.
std::vector<double> arrival_offsets(const ServeBenchmarkOptions& options);

// The result of `timelines` (one per request) that took `seconds` in all: requests with an error
// count as errors, the others as completed with their output tokens and latencies.
ServeBenchmarkResult summarize_serve_benchmark(const ServeBenchmarkOptions& options,
                                               const std::vector<RequestTimeline>& timelines,
                                               double seconds);

// Runs the benchmark with `prompts` (one per request, reused round robin when fewer); greedy, no
// end ids, so every request makes exactly output_length tokens. `on_done(n)` after each request.
Result<ServeBenchmarkResult> run_serve_benchmark(executor::Executor& executor,
                                                 const std::vector<std::vector<int32_t>>& prompts,
                                                 const ServeBenchmarkOptions& options,
                                                 const std::function<void(int64_t)>& on_done = {});

// "[BENCHMARK] mode serve requests 1024 input_length 128 ..." and the same as JSON; both name
// the url when there is one, and the JSON holds first_error when a request failed.
std::string serve_benchmark_line(const ServeBenchmarkResult& result);
nlohmann::ordered_json serve_benchmark_json(const ServeBenchmarkResult& result);

}  // namespace kite
