// Pre-tokenizers: ByteLevel, Split, Metaspace, Digits, Whitespace, WhitespaceSplit, Punctuation,
// BertPreTokenizer, CharDelimiterSplit and Sequence, with the split behaviors of the Rust
// library (Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous).
#include "tokenizer/pre_tokenizer.h"

#include <algorithm>
#include <functional>
#include <utility>

#include "tokenizer/json_fields.h"
#include "tokenizer/pattern.h"
#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"

namespace kite {
namespace {

using tokenizer_json::Json;

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

Result<SplitBehavior> parse_behavior(const Json& spec, std::string_view where) {
  KITE_ASSIGN_OR_RETURN(const std::string name,
                        tokenizer_json::string_field(spec, "behavior", where));
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  return corrupt(std::string(where) + ": unknown split behavior " + unicode::quoted(name));
}

// Rewrites the spans (covering a text, matches flagged) the way SplitDelimiterBehavior does.
void apply_behavior(std::vector<PatternSpan>& spans, SplitBehavior behavior) {
  std::vector<PatternSpan> out;
  out.reserve(spans.size());
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      return;
    case SplitBehavior::kRemoved:
      for (const auto& span : spans) {
        if (!span.is_match) out.push_back(span);
      }
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (const auto& span : spans) {
        if (span.is_match && !previous_match && !out.empty()) {
          out.back().end = span.end;
        } else {
          out.push_back(span);
        }
        previous_match = span.is_match;
      }
      break;
    case SplitBehavior::kMergedWithNext:
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !out.empty()) {
          out.back().start = it->start;
        } else {
          out.push_back(*it);
        }
        previous_match = it->is_match;
      }
      std::reverse(out.begin(), out.end());
      break;
    case SplitBehavior::kContiguous:
      for (const auto& span : spans) {
        if (span.is_match == previous_match && !out.empty()) {
          out.back().end = span.end;
        } else {
          out.push_back(span);
        }
        previous_match = span.is_match;
      }
      break;
  }
  spans = std::move(out);
}

// Passes on the non-empty pieces of `piece` that `spans` delimit.
void emit_spans(const Piece& piece, const std::vector<PatternSpan>& spans, const PieceSink& sink) {
  for (const auto& span : spans) {
    if (span.end <= span.start) continue;
    sink(Piece{piece.text.substr(span.start, span.end - span.start),
               piece.at_text_start && span.start == 0});
  }
}

// Spans where every character satisfying `predicate` is a match of its own (tokenizers'
// Pattern for `Fn(char) -> bool`).
template <typename Predicate>
void find_character_matches(std::string_view text, Predicate predicate,
                            std::vector<PatternSpan>& spans) {
  if (text.empty()) {
    spans.push_back({0, 0, false});
    return;
  }
  size_t last_offset = 0;
  size_t position = 0;
  while (position < text.size()) {
    const size_t start = position;
    const char32_t c = unicode::next_character(text, position);
    if (predicate(c)) {
      if (last_offset < start) spans.push_back({last_offset, start, false});
      spans.push_back({start, position, true});
      last_offset = position;
    }
  }
  if (last_offset < text.size()) spans.push_back({last_offset, text.size(), false});
}

void split_by_character(const Piece& piece, const std::function<bool(char32_t)>& predicate,
                        SplitBehavior behavior, const PieceSink& sink) {
  // Local, not shared: the sink may run further steps that split with their own spans.
  std::vector<PatternSpan> spans;
  find_character_matches(piece.text, predicate, spans);
  apply_behavior(spans, behavior);
  emit_spans(piece, spans, sink);
}

// GPT-2's word pattern, as the ByteLevel pre-tokenizer hard-codes it.
constexpr std::string_view kByteLevelPattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::optional<Regex> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}

  void split(const Piece& piece, const PieceSink& sink) const override {
    const auto& byte_map = unicode::byte_to_characters();
    std::string prefixed;
    std::string_view text = piece.text;
    if (add_prefix_space_ && !text.empty() && text[0] != ' ') {
      prefixed = " ";
      prefixed += text;
      text = prefixed;
    }
    const auto emit = [&](size_t start, size_t end) {
      if (end <= start) return;
      Piece word{std::string(), piece.at_text_start && start == 0};
      word.text.reserve((end - start) * 2);
      for (size_t i = start; i < end; ++i) word.text += byte_map[static_cast<uint8_t>(text[i])];
      sink(std::move(word));
    };
    if (!regex_) {
      emit(0, text.size());
      return;
    }
    // Isolated split: matches and the gaps between them all become words.
    Regex::Matches matches(*regex_, text);
    MatchSpan match;
    size_t previous = 0;
    while (matches.next(match)) {
      emit(previous, match.first);
      emit(match.first, match.second);
      previous = match.second;
    }
    emit(previous, text.size());
  }

 private:
  bool add_prefix_space_;
  std::optional<Regex> regex_;
};

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(Pattern pattern, SplitBehavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}

  void split(const Piece& piece, const PieceSink& sink) const override {
    std::vector<PatternSpan> spans;
    pattern_.find_matches(piece.text, spans);
    if (invert_) {
      for (auto& span : spans) span.is_match = !span.is_match;
    }
    apply_behavior(spans, behavior_);
    emit_spans(piece, spans, sink);
  }

 private:
  Pattern pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

enum class PrependScheme { kAlways, kFirst, kNever };

class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  MetaspacePreTokenizer(char32_t replacement, PrependScheme scheme, bool split)
      : replacement_(replacement),
        replacement_text_(unicode::to_utf8(replacement)),
        scheme_(scheme),
        split_(split) {}

  void split(const Piece& piece, const PieceSink& sink) const override {
    Piece replaced{std::string(), piece.at_text_start};
    replaced.text.reserve(piece.text.size() + 8);
    for (char c : piece.text) {
      if (c == ' ') {
        replaced.text += replacement_text_;
      } else {
        replaced.text += c;
      }
    }
    const bool starts_with_replacement = replaced.text.starts_with(replacement_text_);
    if (!replaced.text.empty() && !starts_with_replacement &&
        (scheme_ == PrependScheme::kAlways ||
         (scheme_ == PrependScheme::kFirst && piece.at_text_start))) {
      replaced.text.insert(0, replacement_text_);
    }
    if (!split_) {
      if (!replaced.text.empty()) sink(std::move(replaced));
      return;
    }
    std::vector<PatternSpan> spans;
    find_character_matches(
        replaced.text, [&](char32_t c) { return c == replacement_; }, spans);
    apply_behavior(spans, SplitBehavior::kMergedWithNext);
    emit_spans(replaced, spans, sink);
  }

 private:
  char32_t replacement_;
  std::string replacement_text_;
  PrependScheme scheme_;
  bool split_;
};

class CharacterClassPreTokenizer final : public PreTokenizer {
 public:
  CharacterClassPreTokenizer(std::function<bool(char32_t)> predicate, SplitBehavior behavior)
      : predicate_(std::move(predicate)), behavior_(behavior) {}
  void split(const Piece& piece, const PieceSink& sink) const override {
    split_by_character(piece, predicate_, behavior_, sink);
  }

 private:
  std::function<bool(char32_t)> predicate_;
  SplitBehavior behavior_;
};

// Keeps the matches of a regex and drops the rest (Whitespace: \w+|[^\w\s]+).
class RegexKeepPreTokenizer final : public PreTokenizer {
 public:
  explicit RegexKeepPreTokenizer(Regex regex) : regex_(std::move(regex)) {}
  void split(const Piece& piece, const PieceSink& sink) const override {
    Regex::Matches matches(regex_, piece.text);
    MatchSpan match;
    while (matches.next(match)) {
      if (match.second > match.first) {
        sink(Piece{piece.text.substr(match.first, match.second - match.first),
                   piece.at_text_start && match.first == 0});
      }
    }
  }

 private:
  Regex regex_;
};

// Whitespace removed, then punctuation isolated.
class BertPreTokenizer final : public PreTokenizer {
 public:
  void split(const Piece& piece, const PieceSink& sink) const override {
    auto isolate_punctuation = [&](Piece&& word) {
      split_by_character(word, unicode::is_punctuation, SplitBehavior::kIsolated, sink);
    };
    split_by_character(piece, unicode::is_whitespace, SplitBehavior::kRemoved,
                       PieceSink(isolate_punctuation));
  }
};

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  void split(const Piece& piece, const PieceSink& sink) const override { run(0, piece, sink); }

 private:
  // Runs steps [step, end) on `piece`, each split going straight on to the next step.
  void run(size_t step, const Piece& piece, const PieceSink& sink) const {
    if (step == steps_.size()) {
      sink(Piece(piece));
      return;
    }
    auto next = [&](Piece&& split) {
      if (step + 1 == steps_.size()) {
        sink(std::move(split));
      } else {
        run(step + 1, split, sink);
      }
    };
    steps_[step]->split(piece, PieceSink(next));
  }

  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

// Builds a component as a pointer to its interface (one conversion away from a Result).
template <typename T, typename... Args>
std::unique_ptr<PreTokenizer> make(Args&&... args) {
  return std::make_unique<T>(std::forward<Args>(args)...);
}

// A JSON string holding exactly one character.
Result<char32_t> single_character_field(const Json& spec, std::string_view key,
                                        std::string_view where) {
  KITE_ASSIGN_OR_RETURN(const std::string text, tokenizer_json::string_field(spec, key, where));
  size_t position = 0;
  const char32_t c = text.empty() ? 0 : unicode::next_character(text, position);
  if (text.empty() || position != text.size()) {
    return tokenizer_json::field_error(where, key, "must be a single character");
  }
  return c;
}

Result<std::unique_ptr<PreTokenizer>> parse_metaspace(const Json& spec, const std::string& where) {
  using namespace tokenizer_json;
  KITE_ASSIGN_OR_RETURN(const char32_t replacement,
                        single_character_field(spec, "replacement", where));
  KITE_ASSIGN_OR_RETURN(const bool split, bool_field(spec, "split", where, true));
  // Files written before prepend_scheme existed carry add_prefix_space instead.
  PrependScheme scheme = PrependScheme::kAlways;
  KITE_ASSIGN_OR_RETURN(auto scheme_name, optional_string_field(spec, "prepend_scheme", where));
  if (scheme_name) {
    if (*scheme_name == "always") {
      scheme = PrependScheme::kAlways;
    } else if (*scheme_name == "first") {
      scheme = PrependScheme::kFirst;
    } else if (*scheme_name == "never") {
      scheme = PrependScheme::kNever;
    } else {
      return field_error(where, "prepend_scheme", "must be \"always\", \"first\" or \"never\"");
    }
  }
  if (const Json* add_prefix_space = optional_field(spec, "add_prefix_space")) {
    if (!add_prefix_space->is_boolean()) {
      return field_error(where, "add_prefix_space", "must be true or false");
    }
    if (!add_prefix_space->get<bool>()) {
      if (scheme_name && scheme != PrependScheme::kNever) {
        return corrupt(where + ": add_prefix_space false contradicts prepend_scheme " +
                       unicode::quoted(*scheme_name));
      }
      scheme = PrependScheme::kNever;
    }
  }
  return make<MetaspacePreTokenizer>(replacement, scheme, split);
}

}  // namespace

Result<std::unique_ptr<PreTokenizer>> parse_pre_tokenizer(const nlohmann::json& spec) {
  const tokenizer_json::NestingGuard nesting;
  KITE_RETURN_IF_ERROR(nesting.check("pre_tokenizer"));
  using namespace tokenizer_json;
  KITE_ASSIGN_OR_RETURN(const std::string type, component_type(spec, "pre_tokenizer"));
  const std::string where = "pre_tokenizer " + type;
  if (type == "ByteLevel") {
    KITE_ASSIGN_OR_RETURN(const bool add_prefix_space,
                          bool_field(spec, "add_prefix_space", where, true));
    KITE_ASSIGN_OR_RETURN(const bool use_regex, bool_field(spec, "use_regex", where, true));
    std::optional<Regex> regex;
    if (use_regex) {
      KITE_ASSIGN_OR_RETURN(Regex compiled, Regex::from_oniguruma(kByteLevelPattern));
      regex = std::move(compiled);
    }
    return make<ByteLevelPreTokenizer>(add_prefix_space, std::move(regex));
  }
  if (type == "Split") {
    KITE_ASSIGN_OR_RETURN(const Json* pattern_spec, required_field(spec, "pattern", where));
    KITE_ASSIGN_OR_RETURN(Pattern pattern, Pattern::from_json(*pattern_spec, where));
    KITE_ASSIGN_OR_RETURN(const SplitBehavior behavior, parse_behavior(spec, where));
    KITE_ASSIGN_OR_RETURN(const bool invert, bool_field(spec, "invert", where, false));
    return make<SplitPreTokenizer>(std::move(pattern), behavior, invert);
  }
  if (type == "Metaspace") return parse_metaspace(spec, where);
  if (type == "Digits") {
    KITE_ASSIGN_OR_RETURN(const bool individual,
                          bool_field(spec, "individual_digits", where, false));
    return make<CharacterClassPreTokenizer>(
        unicode::is_numeric, individual ? SplitBehavior::kIsolated : SplitBehavior::kContiguous);
  }
  if (type == "Whitespace") {
    const std::string word = rust_regex_word_class_contents();
    KITE_ASSIGN_OR_RETURN(Regex regex,
                          Regex::from_pcre2("[" + word + "]+|[^" + word + "\\p{White_Space}]+"));
    return make<RegexKeepPreTokenizer>(std::move(regex));
  }
  if (type == "WhitespaceSplit") {
    return make<CharacterClassPreTokenizer>(unicode::is_whitespace, SplitBehavior::kRemoved);
  }
  if (type == "Punctuation") {
    SplitBehavior behavior = SplitBehavior::kIsolated;
    if (optional_field(spec, "behavior") != nullptr) {
      KITE_ASSIGN_OR_RETURN(behavior, parse_behavior(spec, where));
    }
    return make<CharacterClassPreTokenizer>(unicode::is_punctuation, behavior);
  }
  if (type == "CharDelimiterSplit") {
    KITE_ASSIGN_OR_RETURN(const char32_t delimiter,
                          single_character_field(spec, "delimiter", where));
    return make<CharacterClassPreTokenizer>([delimiter](char32_t c) { return c == delimiter; },
                                            SplitBehavior::kRemoved);
  }
  if (type == "BertPreTokenizer") return make<BertPreTokenizer>();
  if (type == "Sequence") {
    KITE_ASSIGN_OR_RETURN(auto steps, parse_component_list<PreTokenizer>(
                                          spec, "pretokenizers", where, [](const Json& item) {
                                            return parse_pre_tokenizer(item);
                                          }));
    return make<SequencePreTokenizer>(std::move(steps));
  }
  return unsupported("pre_tokenizer type " + unicode::quoted(type) +
                     " is not supported (supported: ByteLevel, Split, Metaspace, Digits, "
                     "Whitespace, WhitespaceSplit, Punctuation, CharDelimiterSplit, "
                     "BertPreTokenizer, Sequence)");
}

}  // namespace kite
