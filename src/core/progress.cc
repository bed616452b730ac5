// Terminal-aware progress output on stderr.
#include "core/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

namespace kite {
namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

Progress::Progress(std::string label, int64_t total)
    : label_(std::move(label)),
      total_(std::max<int64_t>(total, 1)),
      terminal_(::isatty(STDERR_FILENO) == 1),
      start_(std::chrono::steady_clock::now()),
      last_print_(start_) {}

Progress::~Progress() {
  // Work that ended without finish() (an error on the way) is not reported done: clear the bar.
  if (!finished_ && terminal_) {
    std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
  }
}

void Progress::update(int64_t done, const std::string& detail) {
  if (finished_) return;
  done = std::clamp<int64_t>(done, 0, total_);
  const int percent = int(done * 100 / total_);
  if (terminal_) {
    // At most ten redraws a second while only the count moves: a benchmark updates every step of
    // a few milliseconds. A new detail or the end is drawn at once.
    if (drawn_ && done < total_ && detail == last_detail_ && seconds_since(last_print_) < 0.1) {
      return;
    }
    drawn_ = true;
    last_detail_ = detail;
    last_print_ = std::chrono::steady_clock::now();
    constexpr int kWidth = 30;
    const int filled = int(done * kWidth / total_);
    std::string bar(size_t(filled), '#');
    bar.resize(kWidth, '.');
    std::string shown = detail.size() > 40 ? "..." + detail.substr(detail.size() - 37) : detail;
    std::fprintf(stderr, "\r\033[K%s [%s] %3d%% %5.1fs %s", label_.c_str(), bar.c_str(), percent,
                 seconds_since(start_), shown.c_str());
    std::fflush(stderr);
    return;
  }
  const bool step = percent / 10 > last_percent_printed_ / 10;
  const bool slow = seconds_since(last_print_) >= 5.0;
  if (step || slow) {
    std::fprintf(stderr, "%s: %d%% (%lld/%lld) %s\n", label_.c_str(), percent, (long long)done,
                 (long long)total_, detail.c_str());
    last_percent_printed_ = percent;
    last_print_ = std::chrono::steady_clock::now();
  }
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  if (terminal_) std::fprintf(stderr, "\r\033[K");
  std::fprintf(stderr, "%s: done in %.2fs\n", label_.c_str(), seconds_since(start_));
}

}  // namespace kite
