// The serving benchmark: one thread enqueues requests at their arrival times (or as slots free up
// under a concurrency limit), this thread collects the streamed responses and their timestamps.
#include "runtime/serve_benchmark.h"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>

namespace kite {

namespace {

double milliseconds(ServeClock::duration duration) {
  return std::chrono::duration<double, std::milli>(duration).count();
}

nlohmann::ordered_json percentiles_json(const LatencyPercentiles& value) {
  return {{"mean", value.mean}, {"p50", value.p50}, {"p90", value.p90}, {"p99", value.p99}};
}

}  // namespace

LatencyPercentiles latency_percentiles(std::vector<double> values) {
  LatencyPercentiles result;
  if (values.empty()) return result;
  std::sort(values.begin(), values.end());
  auto rank = [&](double percent) {
    const size_t index = size_t(std::ceil(percent / 100.0 * double(values.size())));
    return values[std::clamp<size_t>(index, 1, values.size()) - 1];
  };
  double sum = 0;
  for (double value : values) sum += value;
  result.mean = sum / double(values.size());
  result.p50 = rank(50);
  result.p90 = rank(90);
  result.p99 = rank(99);
  return result;
}

Status check_serve_benchmark_options(const ServeBenchmarkOptions& options) {
  if (options.num_requests < 1) return invalid_argument("--num_requests must be >= 1");
  if (options.input_length < 1) return invalid_argument("the input length must be >= 1");
  if (options.output_length < 1) return invalid_argument("the output length must be >= 1");
  if (!(options.request_rate >= 0)) return invalid_argument("--request_rate must be >= 0");
  if (options.concurrency < 0) return invalid_argument("--concurrency must be >= 0");
  return Status::ok();
}

std::vector<double> arrival_offsets(const ServeBenchmarkOptions& options) {
  std::vector<double> offsets(size_t(std::max<int64_t>(options.num_requests, 0)), 0.0);
  if (options.request_rate > 0) {
    std::mt19937_64 generator(options.seed);
    std::exponential_distribution<double> gap(options.request_rate);
    double at = 0;
    for (double& offset : offsets) {
      offset = at;
      at += gap(generator);
    }
  }
  return offsets;
}

ServeBenchmarkResult summarize_serve_benchmark(const ServeBenchmarkOptions& options,
                                               const std::vector<RequestTimeline>& timelines,
                                               double seconds) {
  ServeBenchmarkResult result;
  result.options = options;
  result.seconds = seconds;
  std::vector<double> first_token, inter_token, latency;
  const RequestTimeline* first_failed = nullptr;
  for (const RequestTimeline& timeline : timelines) {
    if (timeline.error) {
      ++result.errors;
      if (!first_failed || timeline.finished < first_failed->finished) first_failed = &timeline;
      continue;
    }
    ++result.completed;
    result.output_tokens += timeline.output_tokens;
    if (timeline.outputs.empty()) continue;
    first_token.push_back(milliseconds(timeline.outputs.front() - timeline.sent));
    latency.push_back(milliseconds(timeline.outputs.back() - timeline.sent));
    for (size_t k = 1; k < timeline.outputs.size(); ++k) {
      inter_token.push_back(milliseconds(timeline.outputs[k] - timeline.outputs[k - 1]));
    }
  }
  if (first_failed) result.first_error = *first_failed->error;
  result.output_tokens_per_second = seconds > 0 ? double(result.output_tokens) / seconds : 0;
  result.requests_per_second = seconds > 0 ? double(result.completed) / seconds : 0;
  result.time_to_first_token = latency_percentiles(first_token);
  result.inter_token_latency = latency_percentiles(inter_token);
  result.request_latency = latency_percentiles(latency);
  return result;
}

Result<ServeBenchmarkResult> run_serve_benchmark(executor::Executor& executor,
                                                 const std::vector<std::vector<int32_t>>& prompts,
                                                 const ServeBenchmarkOptions& options,
                                                 const std::function<void(int64_t)>& on_done) {
  KITE_RETURN_IF_ERROR(check_serve_benchmark_options(options));
  if (prompts.empty()) return invalid_argument("no benchmark prompts");

  std::vector<executor::Request> requests;
  for (int64_t i = 0; i < options.num_requests; ++i) {
    executor::Request request;
    request.input_ids = prompts[size_t(i) % prompts.size()];
    request.max_new_tokens = options.output_length;
    request.sampling.temperature = 0.0f;
    request.end_ids = std::vector<int32_t>{};  // exactly output_length tokens
    request.streaming = true;
    if (std::optional<std::string> problem = executor.check_request(request)) {
      return out_of_range("the benchmark requests do not fit the engine: " + *problem);
    }
    requests.push_back(std::move(request));
  }

  std::mutex mutex;
  std::condition_variable slot_free;
  std::vector<RequestTimeline> timelines(requests.size());
  std::unordered_map<executor::RequestId, size_t> request_index;
  int64_t in_flight = 0;
  const ServeClock::time_point start = ServeClock::now();
  const std::vector<double> arrivals = arrival_offsets(options);
  std::thread sender([&] {
    for (size_t i = 0; i < requests.size(); ++i) {
      std::this_thread::sleep_until(start + std::chrono::duration_cast<ServeClock::duration>(
                                                std::chrono::duration<double>(arrivals[i])));
      std::unique_lock lock(mutex);
      slot_free.wait(lock, [&] { return !options.concurrency || in_flight < options.concurrency; });
      ++in_flight;
      // Enqueued under the lock, so that the collector finds the timeline of every response.
      timelines[i].sent = ServeClock::now();
      request_index[executor.enqueue_request(requests[i])] = i;
    }
  });

  int64_t finished = 0;
  while (finished < options.num_requests) {
    std::vector<executor::Response> responses =
        executor.await_responses(std::chrono::milliseconds(100));
    const ServeClock::time_point now = ServeClock::now();
    std::lock_guard lock(mutex);
    for (const executor::Response& response : responses) {
      RequestTimeline& timeline = timelines[request_index.at(response.request_id)];
      const size_t tokens = response.result.output_ids.size();
      timeline.outputs.insert(timeline.outputs.end(), tokens, now);
      timeline.output_tokens += int64_t(tokens);
      if (response.error && !timeline.error) timeline.error = *response.error;
      if (response.result.is_final) {
        timeline.finished = now;
        ++finished;
        --in_flight;
        slot_free.notify_one();
        if (on_done) on_done(finished);
      }
    }
  }
  sender.join();
  const double seconds = std::chrono::duration<double>(ServeClock::now() - start).count();
  return summarize_serve_benchmark(options, timelines, seconds);
}

std::string serve_benchmark_line(const ServeBenchmarkResult& result) {
  const ServeBenchmarkOptions& o = result.options;
  const std::string target = result.url.empty() ? "" : " url " + result.url;
  char line[1024];
  std::snprintf(
      line, sizeof(line),
      "[BENCHMARK] mode serve%s requests %lld input_length %lld output_length %lld concurrency "
      "%lld request_rate %.2f errors %lld duration(s) %.2f tokensPerSec %.2f requestsPerSec %.3f "
      "ttft(ms) p50 %.2f p90 %.2f p99 %.2f itl(ms) p50 %.2f p90 %.2f p99 %.2f "
      "latency(ms) p50 %.2f p99 %.2f",
      target.c_str(), static_cast<long long>(o.num_requests),
      static_cast<long long>(o.input_length), static_cast<long long>(o.output_length),
      static_cast<long long>(o.concurrency), o.request_rate, static_cast<long long>(result.errors),
      result.seconds, result.output_tokens_per_second, result.requests_per_second,
      result.time_to_first_token.p50, result.time_to_first_token.p90,
      result.time_to_first_token.p99, result.inter_token_latency.p50,
      result.inter_token_latency.p90, result.inter_token_latency.p99, result.request_latency.p50,
      result.request_latency.p99);
  return line;
}

nlohmann::ordered_json serve_benchmark_json(const ServeBenchmarkResult& result) {
  const ServeBenchmarkOptions& o = result.options;
  nlohmann::ordered_json record = {{"mode", "serve"}};
  if (!result.url.empty()) record["url"] = result.url;
  record.update(nlohmann::ordered_json{
      {"num_requests", o.num_requests},
      {"input_length", o.input_length},
      {"output_length", o.output_length},
      {"concurrency", o.concurrency},
      {"request_rate", o.request_rate},
      {"completed", result.completed},
      {"errors", result.errors},
      {"duration_seconds", result.seconds},
      {"output_tokens", result.output_tokens},
      {"output_tokens_per_second", result.output_tokens_per_second},
      {"requests_per_second", result.requests_per_second},
      {"time_to_first_token_ms", percentiles_json(result.time_to_first_token)},
      {"inter_token_latency_ms", percentiles_json(result.inter_token_latency)},
      {"request_latency_ms", percentiles_json(result.request_latency)}});
  if (!result.first_error.empty()) record["first_error"] = result.first_error;
  return record;
}

}  // namespace kite
