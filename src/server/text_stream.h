// Turns a request's output ids into text as they arrive, for streaming responses: only complete
// UTF-8 characters, exactly the text that decoding all ids at once gives (StreamingDecoder decodes
// a window and emits the new suffix), and cut at the first stop text. A stop text can span several
// tokens, so the end of the text that could still grow into one is held back until later ids
// decide.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace kite::server {

struct TextStreamOptions {
  std::vector<std::string> stop_texts;  // not empty strings
  // The output keeps the stop text that ended it (Triton's stop_words) rather than ending just
  // before it (OpenAI's stop).
  bool include_stop_text = false;
  // The prompt's ids, which shape the first output token's text as decoding prompt and output at
  // once would (StreamingDecoder); they are not part of the output.
  std::vector<int32_t> context;
  // Stop texts are looked for only once this many ids were pushed, in the text from then on (as
  // vLLM's min_tokens).
  int64_t min_tokens = 0;
  bool skip_special_tokens = true;  // special tokens add no text
};

class TextStream {
 public:
  TextStream(const Tokenizer& tokenizer, TextStreamOptions options);

  // The new text `id` makes final (possibly empty). After a stop text is found, stopped() is true
  // and further ids add nothing.
  std::string push(int32_t id);
  // The rest of the text at the end of the output (what was held back).
  std::string finish();

  bool stopped() const { return stopped_; }
  // Characters (code points) of the whole decoded output so far, held-back text included: the
  // offset at which the next id's text starts.
  int64_t decoded_characters() const { return decoded_characters_; }

 private:
  // Emits what of held_ can no longer become part of a stop text (all of it `at_end`).
  std::string release(bool at_end);

  StreamingDecoder decoder_;
  std::vector<std::string> stop_texts_;
  bool include_stop_text_;
  int64_t min_tokens_;
  int64_t pushed_ = 0;
  std::string held_;  // decoded, not yet emitted
  bool stopped_ = false;
  bool finished_ = false;
  int64_t decoded_characters_ = 0;
};

// Where the earliest of `stop_texts` starts in `text` and its length (of two starting at the same
// place, the longer); {npos, 0} when none occurs. TextStream's search, for a finished text.
struct StopTextMatch {
  size_t at = std::string::npos;
  size_t length = 0;
};
StopTextMatch find_stop_text(std::string_view text, const std::vector<std::string>& stop_texts);

// Code points in UTF-8 `text` (bytes that do not continue a character).
int64_t count_characters(const std::string& text);

}  // namespace kite::server
