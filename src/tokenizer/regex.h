// Regular expressions for tokenizer.json patterns. The Rust tokenizers library compiles them with
// Oniguruma (Ruby syntax); Kite runs them on PCRE2 (UTF + UCP, JIT) after translating the
// constructs the two engines read differently, and reproduces Oniguruma's find_iter.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/status.h"

namespace kite {

// [start, end) byte offsets of one match.
using MatchSpan = std::pair<size_t, size_t>;

class Regex {
 public:
  // A pattern in Oniguruma's Ruby syntax, as found in tokenizer.json.
  static Result<Regex> from_oniguruma(std::string_view pattern);
  // A pattern already in PCRE2 syntax (Kite's own built-in patterns).
  static Result<Regex> from_pcre2(std::string_view pattern);

  // The matches in `text`, one at a time, in the order and with the empty-match rule of the Rust
  // `onig` crate's find_iter. `text` must be valid UTF-8 and outlive the iteration.
  class Matches {
   public:
    Matches(const Regex& regex, std::string_view text) : regex_(regex), text_(text) {}
    bool next(MatchSpan& match);

   private:
    const Regex& regex_;
    std::string_view text_;
    size_t last_end_ = 0;
    bool has_last_match_ = false;
    size_t last_match_end_ = 0;
  };
  // Appends every match in `text` (see Matches).
  void find_all(std::string_view text, std::vector<MatchSpan>& matches) const;
  // Whether the pattern matches at the very start of `text`.
  bool matches_at_start(std::string_view text) const;

 private:
  struct Compiled;
  static Result<Regex> compile(std::string pcre2_pattern, std::string_view original);
  // The first match at or after `start` (false when none).
  bool search(std::string_view text, size_t start, MatchSpan& match) const;

  std::shared_ptr<const Compiled> compiled_;
};

// Rewrites an Oniguruma (Ruby syntax) pattern into PCRE2 syntax with the same meaning, or says
// which construct Kite cannot translate. Exposed for tests.
Result<std::string> translate_oniguruma_pattern(std::string_view pattern);

// PCRE2 class contents (no brackets) for \\w of Rust's regex crate, which a few built-in
// patterns of the tokenizers library use: Alphabetic, marks, decimal digits, connector
// punctuation and the joiners.
std::string rust_regex_word_class_contents();

}  // namespace kite
