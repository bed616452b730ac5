// Stop texts found as the output grows (stop_text.h).
#include "runtime/stop_text.h"

#include <algorithm>

namespace kite {

StopTextScanner::StopTextScanner(const Tokenizer& tokenizer,
                                 const std::vector<std::string>& stop_texts)
    : decoder_(tokenizer) {
  for (const std::string& stop : stop_texts) longest_ = std::max(longest_, stop.size());
}

void StopTextScanner::push(int32_t id) {
  // Every stop text in the text before this id was looked for then (the caller checks after each
  // id and stops at the first), and its final part is unchanged: a stop text found now ends past
  // it.
  const size_t searched_final = final_size_;
  text_.resize(final_size_);
  text_ += decoder_.push(id);
  final_size_ = text_.size();
  text_ += decoder_.pending();
  tail_offset_ =
      std::min(searched_final >= longest_ ? searched_final - longest_ + 1 : 0, text_.size());
}

}  // namespace kite
