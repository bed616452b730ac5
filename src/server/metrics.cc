// The metrics registry and its Prometheus text rendering.
#include "server/metrics.h"

#include <charconv>
#include <cmath>

#include "core/status.h"

namespace kite::server {
namespace {

bool is_valid_name(const std::string& name, bool allow_colon) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool letter =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (allow_colon && c == ':');
    if (!letter && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

// Label values escape backslash, double quote and line feed; help texts backslash and line feed.
std::string escape(const std::string& text, bool quote) {
  std::string escaped;
  for (const char c : text) {
    if (c == '\\') {
      escaped += "\\\\";
    } else if (c == '\n') {
      escaped += "\\n";
    } else if (c == '"' && quote) {
      escaped += "\\\"";
    } else {
      escaped += c;
    }
  }
  return escaped;
}

// {a="x",b="y"}, with an optional extra label last (a histogram bucket's "le").
std::string render_labels(const MetricLabels& labels, const std::string& extra_name = "",
                          const std::string& extra_value = "") {
  if (labels.empty() && extra_name.empty()) return "";
  std::string text = "{";
  for (const auto& [name, value] : labels) {
    if (text.size() > 1) text += ',';
    text += name + "=\"" + escape(value, true) + "\"";
  }
  if (!extra_name.empty()) {
    if (text.size() > 1) text += ',';
    text += extra_name + "=\"" + escape(extra_value, true) + "\"";
  }
  return text + "}";
}

}  // namespace

std::string format_metric_value(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  if (value == std::floor(value) && std::fabs(value) < 9007199254740992.0) {
    return std::to_string(static_cast<long long>(value));
  }
  char buffer[64];
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  return std::string(buffer, result.ptr);
}

void Counter::increment(double amount) {
  KITE_CHECK(amount >= 0);
  value_.fetch_add(amount);
}

Histogram::Histogram(std::vector<double> upper_bounds)
    : upper_bounds_(std::move(upper_bounds)),
      bucket_counts_(new std::atomic<uint64_t>[upper_bounds_.size() + 1]) {
  for (size_t i = 0; i <= upper_bounds_.size(); ++i) bucket_counts_[i].store(0);
}

void Histogram::observe(double value) {
  size_t bucket = 0;
  while (bucket < upper_bounds_.size() && value > upper_bounds_[bucket]) ++bucket;
  bucket_counts_[bucket].fetch_add(1);
  sum_.fetch_add(value);
}

std::vector<uint64_t> Histogram::cumulative_counts() const {
  std::vector<uint64_t> counts(upper_bounds_.size() + 1);
  uint64_t total = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    total += bucket_counts_[i].load();
    counts[i] = total;
  }
  return counts;
}

MetricsRegistry::Series& MetricsRegistry::series(const std::string& name, const std::string& help,
                                                 Type type, const std::vector<double>& upper_bounds,
                                                 const MetricLabels& labels) {
  std::lock_guard<std::mutex> lock(mutex_);
  Family* family = nullptr;
  if (auto found = families_by_name_.find(name); found != families_by_name_.end()) {
    family = found->second;
    KITE_CHECK(family->type == type);
    KITE_CHECK(family->upper_bounds == upper_bounds);
  } else {
    KITE_CHECK(is_valid_name(name, true));
    for (size_t i = 1; i < upper_bounds.size(); ++i) {
      KITE_CHECK(upper_bounds[i - 1] < upper_bounds[i]);
    }
    families_.push_back(std::make_unique<Family>(Family{name, help, type, upper_bounds, {}}));
    family = families_.back().get();
    families_by_name_[name] = family;
  }
  for (const auto& existing : family->series) {
    if (existing->labels == labels) return *existing;
  }
  for (const auto& [label_name, value] : labels) {
    KITE_CHECK(is_valid_name(label_name, false) && !label_name.starts_with("__"));
    KITE_CHECK(!(type == Type::kHistogram && label_name == "le"));
  }
  auto created = std::make_unique<Series>();
  created->labels = labels;
  switch (type) {
    case Type::kCounter:
      created->counter = std::make_unique<Counter>();
      break;
    case Type::kGauge:
      created->gauge = std::make_unique<Gauge>();
      break;
    case Type::kHistogram:
      created->histogram = std::make_unique<Histogram>(upper_bounds);
      break;
  }
  family->series.push_back(std::move(created));
  return *family->series.back();
}

Counter& MetricsRegistry::counter(const std::string& name, const std::string& help,
                                  const MetricLabels& labels) {
  return *series(name, help, Type::kCounter, {}, labels).counter;
}

Gauge& MetricsRegistry::gauge(const std::string& name, const std::string& help,
                              const MetricLabels& labels) {
  return *series(name, help, Type::kGauge, {}, labels).gauge;
}

Histogram& MetricsRegistry::histogram(const std::string& name, const std::string& help,
                                      const std::vector<double>& upper_bounds,
                                      const MetricLabels& labels) {
  return *series(name, help, Type::kHistogram, upper_bounds, labels).histogram;
}

std::string MetricsRegistry::render() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::string text;
  for (const auto& family : families_) {
    static const char* const kTypeNames[] = {"counter", "gauge", "histogram"};
    text += "# HELP " + family->name + " " + escape(family->help, false) + "\n";
    text += "# TYPE " + family->name + " " + kTypeNames[int(family->type)] + "\n";
    for (const auto& series : family->series) {
      switch (family->type) {
        case Type::kCounter:
          text += family->name + render_labels(series->labels) + " " +
                  format_metric_value(series->counter->value()) + "\n";
          break;
        case Type::kGauge:
          text += family->name + render_labels(series->labels) + " " +
                  format_metric_value(series->gauge->value()) + "\n";
          break;
        case Type::kHistogram: {
          const Histogram& histogram = *series->histogram;
          const std::vector<uint64_t> counts = histogram.cumulative_counts();
          for (size_t i = 0; i < counts.size(); ++i) {
            const std::string bound = i < histogram.upper_bounds().size()
                                          ? format_metric_value(histogram.upper_bounds()[i])
                                          : "+Inf";
            text += family->name + "_bucket" + render_labels(series->labels, "le", bound) + " " +
                    std::to_string(counts[i]) + "\n";
          }
          text += family->name + "_sum" + render_labels(series->labels) + " " +
                  format_metric_value(histogram.sum()) + "\n";
          text += family->name + "_count" + render_labels(series->labels) + " " +
                  std::to_string(counts.back()) + "\n";
          break;
        }
      }
    }
  }
  return text;
}

}  // namespace kite::server
