// Incremental detokenization with stop texts.
#include "server/text_stream.h"

#include <algorithm>

#include "core/status.h"

namespace kite::server {

int64_t count_characters(const std::string& text) {
  return std::count_if(text.begin(), text.end(),
                       [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; });
}

TextStream::TextStream(const Tokenizer& tokenizer, TextStreamOptions options)
    : decoder_(tokenizer, options.skip_special_tokens, options.context),
      stop_texts_(std::move(options.stop_texts)),
      include_stop_text_(options.include_stop_text),
      min_tokens_(options.min_tokens) {
  for (const std::string& stop : stop_texts_) KITE_CHECK(!stop.empty());
}

std::string TextStream::push(int32_t id) {
  if (stopped_ || finished_) return {};
  const std::string piece = decoder_.push(id);
  decoded_characters_ += count_characters(piece);
  held_ += piece;
  if (++pushed_ < min_tokens_) {
    // Short of min_tokens: nothing stops the output yet.
    std::string text = std::move(held_);
    held_.clear();
    return text;
  }
  return release(false);
}

std::string TextStream::finish() {
  if (stopped_ || finished_) return {};
  finished_ = true;
  const std::string piece = decoder_.finish();
  decoded_characters_ += count_characters(piece);
  held_ += piece;
  return release(true);
}

StopTextMatch find_stop_text(std::string_view text, const std::vector<std::string>& stop_texts) {
  StopTextMatch match;
  for (const std::string& stop : stop_texts) {
    const size_t at = text.find(stop);
    if (at == std::string_view::npos) continue;
    if (at < match.at || (at == match.at && stop.size() > match.length)) {
      match.at = at;
      match.length = stop.size();
    }
  }
  return match;
}

std::string TextStream::release(bool at_end) {
  // The earliest stop text in what is held (everything before held_ was checked to be free of the
  // start of one).
  if (const StopTextMatch stop = find_stop_text(held_, stop_texts_); stop.at != std::string::npos) {
    stopped_ = true;
    std::string text = held_.substr(0, include_stop_text_ ? stop.at + stop.length : stop.at);
    held_.clear();
    return text;
  }
  // Hold back the longest end of the text that is the beginning of a stop text. Stop texts are
  // whole characters and so is held_, so the cut falls between characters.
  size_t hold = 0;
  if (!at_end) {
    for (const std::string& stop : stop_texts_) {
      const size_t longest = std::min(stop.size() - 1, held_.size());
      for (size_t length = longest; length > hold; --length) {
        if (held_.compare(held_.size() - length, length, stop, 0, length) == 0) {
          hold = length;
          break;
        }
      }
    }
  }
  std::string text = held_.substr(0, held_.size() - hold);
  held_.erase(0, held_.size() - hold);
  return text;
}

}  // namespace kite::server
