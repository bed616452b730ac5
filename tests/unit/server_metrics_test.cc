// The Prometheus metrics registry: exact text exposition output, label escaping, cumulative
// histogram buckets, counts from many threads, and the server's metric names.
#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "server/metrics.h"
#include "server/server_metrics.h"

namespace kite::server {
namespace {

TEST(MetricsRegistry, RendersCountersGaugesAndHistogramsInTextFormat) {
  MetricsRegistry registry;
  registry.counter("requests_total", "Requests.", {{"endpoint", "/a"}, {"status", "200"}})
      .increment();
  registry.counter("requests_total", "Requests.", {{"endpoint", "/a"}, {"status", "200"}})
      .increment(2);
  registry.counter("requests_total", "Requests.", {{"endpoint", "/b"}, {"status", "400"}})
      .increment();
  registry.gauge("queue_length", "Queued.").set(7);
  Histogram& latency = registry.histogram("latency_seconds", "Latency.", {0.125, 1.0});
  latency.observe(0.0625);
  latency.observe(0.125);  // bounds are inclusive
  latency.observe(0.5);
  latency.observe(3.0);
  EXPECT_EQ(registry.render(),
            "# HELP requests_total Requests.\n"
            "# TYPE requests_total counter\n"
            "requests_total{endpoint=\"/a\",status=\"200\"} 3\n"
            "requests_total{endpoint=\"/b\",status=\"400\"} 1\n"
            "# HELP queue_length Queued.\n"
            "# TYPE queue_length gauge\n"
            "queue_length 7\n"
            "# HELP latency_seconds Latency.\n"
            "# TYPE latency_seconds histogram\n"
            "latency_seconds_bucket{le=\"0.125\"} 2\n"
            "latency_seconds_bucket{le=\"1\"} 3\n"
            "latency_seconds_bucket{le=\"+Inf\"} 4\n"
            "latency_seconds_sum 3.6875\n"
            "latency_seconds_count 4\n");
}

TEST(MetricsRegistry, HistogramLabelsComeBeforeLe) {
  MetricsRegistry registry;
  registry.histogram("h", "H.", {1.0}, {{"model", "m"}}).observe(2);
  const std::string text = registry.render();
  EXPECT_NE(text.find("h_bucket{model=\"m\",le=\"1\"} 0\n"), std::string::npos) << text;
  EXPECT_NE(text.find("h_bucket{model=\"m\",le=\"+Inf\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("h_sum{model=\"m\"} 2\n"), std::string::npos) << text;
  EXPECT_NE(text.find("h_count{model=\"m\"} 1\n"), std::string::npos) << text;
}

TEST(MetricsRegistry, EscapesLabelValuesAndHelp) {
  MetricsRegistry registry;
  registry.gauge("g", "line one\nback\\slash", {{"path", "a\"b\\c\nd"}}).set(1);
  EXPECT_EQ(registry.render(),
            "# HELP g line one\\nback\\\\slash\n"
            "# TYPE g gauge\n"
            "g{path=\"a\\\"b\\\\c\\nd\"} 1\n");
}

TEST(MetricsRegistry, FormatsValues) {
  EXPECT_EQ(format_metric_value(0), "0");
  EXPECT_EQ(format_metric_value(42), "42");
  EXPECT_EQ(format_metric_value(-3), "-3");
  EXPECT_EQ(format_metric_value(0.25), "0.25");
  EXPECT_EQ(format_metric_value(1e300), "1e+300");
  EXPECT_EQ(format_metric_value(1.0 / 0.0), "+Inf");
  EXPECT_EQ(format_metric_value(-1.0 / 0.0), "-Inf");
  EXPECT_EQ(format_metric_value(0.0 / 0.0), "NaN");
}

TEST(MetricsRegistry, SameSeriesForSameLabels) {
  MetricsRegistry registry;
  Counter& first = registry.counter("c", "C.", {{"a", "1"}});
  Counter& again = registry.counter("c", "C.", {{"a", "1"}});
  Counter& other = registry.counter("c", "C.", {{"a", "2"}});
  EXPECT_EQ(&first, &again);
  EXPECT_NE(&first, &other);
}

TEST(MetricsRegistry, CountsFromManyThreads) {
  MetricsRegistry registry;
  Counter& counter = registry.counter("c", "C.");
  Histogram& histogram = registry.histogram("h", "H.", {0.5});
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 10000; ++i) {
        counter.increment();
        histogram.observe(t % 2 == 0 ? 0.25 : 1.0);
        // New series while others count and render.
        if (i % 1000 == 0) {
          registry.counter("c", "C.", {{"thread", std::to_string(t)}}).increment();
          (void)registry.render();
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(counter.value(), 80000);
  EXPECT_EQ(histogram.cumulative_counts(), (std::vector<uint64_t>{40000, 80000}));
  EXPECT_DOUBLE_EQ(histogram.sum(), 40000 * 0.25 + 40000 * 1.0);
}

TEST(MetricsRegistryDeathTest, RefusesMisuse) {
  MetricsRegistry registry;
  registry.counter("c", "C.");
  EXPECT_DEATH(registry.gauge("c", "C."), "check failed");
  EXPECT_DEATH(registry.counter("bad name", "B."), "check failed");
  EXPECT_DEATH(registry.counter("d", "D.", {{"__reserved", "x"}}), "check failed");
  EXPECT_DEATH(registry.histogram("h", "H.", {1.0, 0.5}), "check failed");
  EXPECT_DEATH(registry.histogram("h2", "H.", {1.0}, {{"le", "x"}}), "check failed");
  EXPECT_DEATH(registry.counter("c", "C.").increment(-1), "check failed");
}

TEST(ServerMetrics, ExportsTheServerMetricNames) {
  ServerMetrics metrics;
  metrics.count_request("/v1/completions", 200);
  metrics.count_finished("length");
  metrics.prompt_tokens.increment(5);
  metrics.generation_tokens.increment(3);
  metrics.time_to_first_token.observe(0.01);
  executor::ExecutorStats stats;
  stats.queued_requests = 2;
  stats.active_requests = 3;
  stats.kv_cache.total_blocks = 10;
  stats.kv_cache.used_blocks = 4;
  stats.kv_cache.free_blocks = 6;
  const std::string text = metrics.render(stats);
  for (const char* line :
       {"kite_http_requests_total{endpoint=\"/v1/completions\",status=\"200\"} 1\n",
        "kite_requests_finished_total{finish_reason=\"length\"} 1\n",
        "kite_prompt_tokens_total 5\n", "kite_generation_tokens_total 3\n",
        "kite_time_to_first_token_seconds_count 1\n", "kite_inter_token_latency_seconds_count 0\n",
        "kite_request_latency_seconds_count 0\n", "kite_num_requests_waiting 2\n",
        "kite_num_requests_running 3\n", "kite_kv_cache_total_blocks 10\n",
        "kite_kv_cache_used_blocks 4\n", "kite_kv_cache_free_blocks 6\n"}) {
    EXPECT_NE(text.find(line), std::string::npos) << line << "\n" << text;
  }
}

TEST(ServerMetrics, EndpointLabelsAreBounded) {
  EXPECT_EQ(endpoint_label("/v1/completions"), "/v1/completions");
  EXPECT_EQ(endpoint_label("/v2/models/tiny/generate"), "/v2/models/{name}/generate");
  EXPECT_EQ(endpoint_label("/v2/models/tiny/generate_stream"), "/v2/models/{name}/generate_stream");
  EXPECT_EQ(endpoint_label("/v1/models/tiny"), "/v1/models/{name}");
  EXPECT_EQ(endpoint_label("/wp-admin/login.php"), "other");
}

}  // namespace
}  // namespace kite::server
