// The server's metric names, help texts and buckets.
#include "server/server_metrics.h"

namespace kite::server {
namespace {

const std::vector<double> kTimeToFirstTokenBuckets = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08,
                                                      0.1,   0.25,  0.5,  0.75, 1.0,  2.5,  5.0,
                                                      7.5,   10.0,  20.0, 40.0, 80.0};
const std::vector<double> kInterTokenLatencyBuckets = {
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05,
    0.075, 0.1,    0.15,  0.2,  0.3,   0.4,  0.5,   0.75, 1.0,  2.5};
const std::vector<double> kRequestLatencyBuckets = {0.05, 0.1,  0.25, 0.5,  1.0,  2.5,
                                                    5.0,  10.0, 15.0, 20.0, 30.0, 40.0,
                                                    50.0, 60.0, 120., 240., 480.};

}  // namespace

ServerMetrics::ServerMetrics()
    : prompt_tokens(
          registry_.counter("kite_prompt_tokens_total", "Prompt tokens of the requests enqueued.")),
      generation_tokens(
          registry_.counter("kite_generation_tokens_total", "Tokens generated for requests.")),
      time_to_first_token(
          registry_.histogram("kite_time_to_first_token_seconds",
                              "Seconds from a request's arrival to its first generated token.",
                              kTimeToFirstTokenBuckets)),
      inter_token_latency(registry_.histogram(
          "kite_inter_token_latency_seconds",
          "Seconds between consecutive generated tokens of a request.", kInterTokenLatencyBuckets)),
      request_latency(registry_.histogram(
          "kite_request_latency_seconds",
          "Seconds from a request's arrival to its last token (generation requests).",
          kRequestLatencyBuckets)) {
  // The gauges exist from the start, so a scrape before the first request shows them.
  render(executor::ExecutorStats{});
}

void ServerMetrics::count_request(const std::string& endpoint, int http_status) {
  registry_
      .counter("kite_http_requests_total", "HTTP requests answered, by endpoint and status.",
               {{"endpoint", endpoint}, {"status", std::to_string(http_status)}})
      .increment();
}

void ServerMetrics::count_finished(const std::string& finish_reason) {
  registry_
      .counter("kite_requests_finished_total",
               "Generation requests that ended, by reason: stop (end token or stop text), length, "
               "cancelled (the client went away), error.",
               {{"finish_reason", finish_reason}})
      .increment();
}

std::string ServerMetrics::render(const executor::ExecutorStats& stats) {
  registry_.gauge("kite_num_requests_waiting", "Requests queued, waiting to be admitted.")
      .set(double(stats.queued_requests));
  registry_.gauge("kite_num_requests_running", "Requests in the running batch.")
      .set(double(stats.active_requests));
  registry_.gauge("kite_num_requests_paused", "Requests preempted (max_utilization), to resume.")
      .set(double(stats.paused_requests));
  registry_.gauge("kite_kv_cache_total_blocks", "KV cache blocks in the pool.")
      .set(double(stats.kv_cache.total_blocks));
  registry_.gauge("kite_kv_cache_used_blocks", "KV cache blocks held by requests.")
      .set(double(stats.kv_cache.used_blocks));
  registry_
      .gauge("kite_kv_cache_free_blocks",
             "KV cache blocks free, including cached prefix blocks no request holds.")
      .set(double(stats.kv_cache.free_blocks));
  registry_
      .gauge("kite_kv_cache_cached_blocks", "Free KV cache blocks still holding a reusable prefix.")
      .set(double(stats.kv_cache.cached_blocks));
  return registry_.render();
}

std::string endpoint_label(const std::string& path) {
  static const char* const kFixed[] = {"/v1/completions",  "/v1/chat/completions", "/v1/models",
                                       "/v2/health/ready", "/v2/health/live",      "/health",
                                       "/metrics"};
  for (const char* fixed : kFixed) {
    if (path == fixed) return fixed;
  }
  if (path.starts_with("/v1/models/")) return "/v1/models/{name}";
  if (path.starts_with("/v2/models/")) {
    for (const char* action : {"/generate", "/generate_stream", "/ready"}) {
      if (path.ends_with(action)) return std::string("/v2/models/{name}") + action;
    }
  }
  return "other";
}

}  // namespace kite::server
