// The "pattern" of tokenizer.json's Split pre-tokenizer and Replace normalizer and decoder:
// {"String": "..."} (a literal) or {"Regex": "..."} (an Oniguruma regex).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/status.h"
#include "tokenizer/regex.h"

namespace kite {

// A piece of text that a pattern matched or that lies between matches.
struct PatternSpan {
  size_t start;
  size_t end;
  bool is_match;
};

class Pattern {
 public:
  static Result<Pattern> from_json(const nlohmann::json& spec, std::string_view where);
  // A literal string pattern.
  static Result<Pattern> literal(std::string_view text);

  // Spans covering all of `text` in order, matches flagged (tokenizers' Pattern::find_matches):
  // an empty text gives one empty unmatched span.
  void find_matches(std::string_view text, std::vector<PatternSpan>& spans) const;
  // Replaces every match (empty matches included) by `content`.
  std::string replace_all(std::string_view text, std::string_view content) const;

 private:
  explicit Pattern(Regex regex) : regex_(std::move(regex)) {}
  Regex regex_;  // a literal becomes an escaped regex, as in the Rust library
};

}  // namespace kite
