// A small Prometheus metrics registry for `kite serve`: counters, gauges and histograms, each a
// family of series told apart by their labels, rendered in the Prometheus text exposition format
// (version 0.0.4) for GET /metrics. Every member function is thread-safe.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace kite::server {

// Label names and values of one series, in the order they are rendered.
using MetricLabels = std::vector<std::pair<std::string, std::string>>;

class Counter {
 public:
  void increment(double amount = 1.0);
  double value() const { return value_.load(); }

 private:
  std::atomic<double> value_{0.0};
};

class Gauge {
 public:
  void set(double value) { value_.store(value); }
  double value() const { return value_.load(); }

 private:
  std::atomic<double> value_{0.0};
};

class Histogram {
 public:
  // `upper_bounds`: the buckets' inclusive upper bounds, increasing; +Inf is implied.
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double value);
  // Observations <= each bound (cumulative, as rendered), then the count of all of them.
  std::vector<uint64_t> cumulative_counts() const;
  double sum() const { return sum_.load(); }
  const std::vector<double>& upper_bounds() const { return upper_bounds_; }

 private:
  std::vector<double> upper_bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> bucket_counts_;  // one per bound, then +Inf
  std::atomic<double> sum_{0.0};
};

class MetricsRegistry {
 public:
  // The series of family `name` with `labels`, created on first use. A family keeps the help text
  // and type of its first use; asking for one name with another type, an invalid name or label
  // name, or histogram buckets that are not increasing is a programming error (KITE_CHECK).
  Counter& counter(const std::string& name, const std::string& help,
                   const MetricLabels& labels = {});
  Gauge& gauge(const std::string& name, const std::string& help, const MetricLabels& labels = {});
  Histogram& histogram(const std::string& name, const std::string& help,
                       const std::vector<double>& upper_bounds, const MetricLabels& labels = {});

  // Every family in the order of first use, its series in the order of their creation.
  std::string render() const;

 private:
  enum class Type { kCounter, kGauge, kHistogram };
  struct Series {
    MetricLabels labels;
    std::unique_ptr<Counter> counter;
    std::unique_ptr<Gauge> gauge;
    std::unique_ptr<Histogram> histogram;
  };
  struct Family {
    std::string name;
    std::string help;
    Type type;
    std::vector<double> upper_bounds;  // histograms
    std::vector<std::unique_ptr<Series>> series;
  };
  Series& series(const std::string& name, const std::string& help, Type type,
                 const std::vector<double>& upper_bounds, const MetricLabels& labels);

  mutable std::mutex mutex_;
  std::vector<std::unique_ptr<Family>> families_;
  std::map<std::string, Family*> families_by_name_;
};

// Prometheus's rendering of a sample value: integers without a fraction, "+Inf", "NaN".
std::string format_metric_value(double value);

}  // namespace kite::server
