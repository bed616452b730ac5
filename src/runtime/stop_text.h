// Stop texts found as the output grows: the decoded output kept up to date id by id
// (StreamingDecoder) instead of decoding the whole output after every token, which made a long
// generation with stop texts quadratic in its length.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace kite {

// One sequence's output text, and the part of it a stop text can newly appear in after each id:
// check_stop(conditions, output_ids, tail(), tail_offset()) then answers what it answers on the
// whole text decoded at once, for work that does not grow with the output.
class StopTextScanner {
 public:
  // `stop_texts`: those check_stop will look for (empty ones are ignored).
  StopTextScanner(const Tokenizer& tokenizer, const std::vector<std::string>& stop_texts);

  // Adds the next output id.
  void push(int32_t id);
  // The output decoded so far (as Tokenizer::decode gives it for all ids at once).
  const std::string& text() const { return text_; }
  // The text from tail_offset() on: a stop text not found after the previous id ends in it.
  std::string_view tail() const { return std::string_view(text_).substr(tail_offset_); }
  size_t tail_offset() const { return tail_offset_; }

 private:
  StreamingDecoder decoder_;
  std::string text_;       // the text no later id changes, then what the decoder holds back
  size_t final_size_ = 0;  // bytes of the first part
  size_t tail_offset_ = 0;
  size_t longest_ = 0;  // bytes of the longest stop text
};

}  // namespace kite
