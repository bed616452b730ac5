// Progress reporting for long work (convert, build, eval, bench): a redrawn bar on a terminal (at
// most ten redraws a second), plain lines (at most one per 10% or per 5 s) when stderr is a file
// or a pipe.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace kite {

class Progress {
 public:
  // `total` units of work (tensors, bytes, requests); `label` says what is being done.
  Progress(std::string label, int64_t total);
  ~Progress();

  // Marks `done` units finished; `detail` (a tensor name, say) is shown beside the bar.
  void update(int64_t done, const std::string& detail = "");
  // Prints the final state and elapsed time. Call it when the work succeeded; a Progress destroyed
  // without it just clears its bar.
  void finish();

 private:
  std::string label_;
  int64_t total_;
  bool terminal_;
  bool finished_ = false;
  int last_percent_printed_ = -1;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_print_;
  bool drawn_ = false;       // terminal: the bar has been drawn once
  std::string last_detail_;  // terminal: the detail last drawn
};

}  // namespace kite
