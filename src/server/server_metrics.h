// The metrics `kite serve` exports on /metrics (docs/serving.md lists them): HTTP requests by
// endpoint and status, token counts, latency histograms, and the Executor's queue and KV cache
// state, read when scraped.
#pragma once

#include <string>

#include "kite/executor.h"
#include "server/metrics.h"

namespace kite::server {

class ServerMetrics {
  // First: the references below point into it.
  MetricsRegistry registry_;

 public:
  ServerMetrics();

  MetricsRegistry& registry() { return registry_; }
  // The HTTP requests counter; `endpoint` is a route pattern ("/v1/completions",
  // "/v2/models/{name}/generate", or "other" for unknown paths, to bound the label's values).
  void count_request(const std::string& endpoint, int http_status);
  // Requests that ended: "stop", "length", "cancelled" (client gone), "error".
  void count_finished(const std::string& finish_reason);
  // Renders every metric, the Executor's gauges updated from `stats` first.
  std::string render(const executor::ExecutorStats& stats);

  Counter& prompt_tokens;
  Counter& generation_tokens;
  Histogram& time_to_first_token;
  Histogram& inter_token_latency;
  Histogram& request_latency;
};

// The /metrics label of a request path.
std::string endpoint_label(const std::string& path);

}  // namespace kite::server
