// Text <-> token ids, exactly as the Hugging Face `tokenizers` library does for the same
// tokenizer.json: normalizer, pre-tokenizer, model (BPE), post-processor, decoder, added tokens.
// The file's "truncation" and "padding" settings are ignored, as transformers' tokenizers do
// (callers limit lengths themselves); any component Kite does not implement is refused at load.
// A Tokenizer is immutable once loaded: encode and decode may run on many threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace kite {

class TokenizerImpl;

class Tokenizer {
 public:
  // Parses the contents of a tokenizer.json. `source` names the file in error messages.
  static Result<Tokenizer> from_json(std::string_view json_text, const std::string& source);
  static Result<Tokenizer> from_file(const std::string& tokenizer_json_path);
  // Reads `directory`/tokenizer.json.
  static Result<Tokenizer> from_directory(const std::string& directory);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Like tokenizers' `encode(text, add_special_tokens=...)` then `.ids`. Invalid UTF-8 in `text`
  // is replaced by U+FFFD first, as Python's str would hold it after a lossy decode.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;
  // Like tokenizers' `decode(ids, skip_special_tokens=...)`. Unknown ids are skipped.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = true) const;

  // Distinct tokens, added tokens included (get_vocab_size()). Ids can go higher when the
  // vocabulary has gaps; a model's embedding size comes from its config, not from here.
  int32_t vocab_size() const;
  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::optional<std::string> id_to_token(int32_t id) const;
  bool is_special(int32_t id) const;

 private:
  explicit Tokenizer(std::unique_ptr<TokenizerImpl> impl);
  friend class TokenizerImpl;
  friend class StreamingDecoder;
  std::unique_ptr<TokenizerImpl> impl_;
};

// Turns ids into text one at a time for streaming: emits only complete UTF-8 characters, and
// exactly the text that decoding all ids at once would give, piece by piece (the approach of
// text-generation-inference's incremental decoding: decode a window, emit the new suffix; a run
// of byte-fallback tokens is held until it ends, since a later byte can turn it invalid; with a
// decoder that renders the last token apart, text is emitted once a further id confirms it).
//
// `context`: ids that come before the first pushed one (a prompt), whose text is not emitted but
// shapes the new text as decoding everything at once would (vLLM's incremental detokenization
// does the same): with a decoder that strips the first token's leading space (SentencePiece), the
// first new token keeps its space after a prompt. Its last kContextIds ids are used; none when
// further ids could change their text (they end in a run of byte tokens, or the decoder renders
// the last token apart).
class StreamingDecoder {
 public:
  static constexpr size_t kContextIds = 6;
  explicit StreamingDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = true,
                            std::span<const int32_t> context = {});
  // Returns the new text this id completes (possibly empty).
  std::string push(int32_t id);
  // Returns whatever remains at the end (an incomplete character becomes U+FFFD).
  std::string finish();
  // What finish() would return now, without finishing: everything push() returned and this make
  // the text of all ids so far, as decoding them at once gives it.
  std::string pending() const;

 private:
  // decode(ids), cut back to the part that more ids cannot change.
  std::string stable_decode(std::span<const int32_t> ids) const;

  const Tokenizer& tokenizer_;
  bool skip_special_tokens_;
  std::vector<int32_t> ids_;
  size_t prefix_offset_ = 0;
  size_t read_offset_ = 0;
};

}  // namespace kite
