// Oniguruma -> PCRE2 translation and match iteration (see regex.h).
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/regex.h"

#include <pcre2.h>

#include <cctype>
#include <cstdio>

#include "tokenizer/unicode.h"

namespace kite {
namespace {

bool is_hex_digit(char c) {
  return std::isxdigit(static_cast<unsigned char>(c)) != 0;
}

std::string pcre2_error_message(int error_code) {
  PCRE2_UCHAR buffer[256];
  pcre2_get_error_message(error_code, buffer, sizeof(buffer));
  return reinterpret_cast<const char*>(buffer);
}

std::string hex(char32_t value) {
  char buffer[16];
  std::snprintf(buffer, sizeof(buffer), "%X", unsigned(value));
  return buffer;
}

// "\p{X}" followed by the code points that newer Unicode versions add to X: class contents.
std::string property_contents(std::string_view pcre2_property) {
  std::string out = "\\p{" + std::string(pcre2_property) + "}";
  for (const auto& range : unicode::newer_regex_property_additions(pcre2_property)) {
    out += "\\x{" + hex(range.first) + "}";
    if (range.last != range.first) out += "-\\x{" + hex(range.last) + "}";
  }
  return out;
}

// Oniguruma's \w: Alphabetic, marks, decimal digits, connector punctuation, and (from its
// Latin-1 table) the superscript digits and vulgar fractions.
std::string oniguruma_word_contents() {
  return property_contents("Alphabetic") + property_contents("M") + property_contents("Nd") +
         property_contents("Pc") + "\\x{B2}\\x{B3}\\x{B9}\\x{BC}-\\x{BE}";
}

bool is_script_name(const std::string& name) {
  const std::string probe = "\\p{sc:" + name + "}";
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(probe.data()), probe.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
  pcre2_code_free(code);
  return code != nullptr;
}

// Class contents (no brackets) for an Oniguruma property name, which is matched loosely.
Result<std::string> property_class_contents(std::string_view written_name) {
  std::string name;
  for (char c : written_name) {
    if (c == ' ' || c == '_' || c == '-') continue;
    name += char(std::tolower(static_cast<unsigned char>(c)));
  }
  static const char* const kCategories[] = {
      "c",  "cc", "cf", "cn", "co", "cs", "l",  "ll", "lm", "lo", "lt", "lu", "m",
      "mc", "me", "mn", "n",  "nd", "nl", "no", "p",  "pc", "pd", "pe", "pf", "pi",
      "po", "ps", "s",  "sc", "sk", "sm", "so", "z",  "zl", "zp", "zs"};
  for (const char* category : kCategories) {
    if (name == category) {
      std::string pcre2_name = name;
      pcre2_name[0] = char(std::toupper(static_cast<unsigned char>(pcre2_name[0])));
      return property_contents(pcre2_name);
    }
  }
  if (name == "letter") return property_contents("L");
  if (name == "mark") return property_contents("M");
  if (name == "number") return property_contents("N");
  if (name == "punctuation") return property_contents("P");
  if (name == "symbol") return property_contents("S");
  if (name == "separator") return property_contents("Z");
  if (name == "alpha" || name == "alphabetic") return property_contents("Alphabetic");
  if (name == "upper" || name == "uppercase") return property_contents("Uppercase");
  if (name == "lower" || name == "lowercase") return property_contents("Lowercase");
  if (name == "space" || name == "whitespace") return property_contents("White_Space");
  if (name == "digit") return property_contents("Nd");
  if (name == "alnum") return property_contents("Alphabetic") + property_contents("Nd");
  if (name == "punct") return property_contents("P") + property_contents("S");
  if (name == "word") return oniguruma_word_contents();
  if (name == "xdigit") return std::string("0-9A-Fa-f");
  if (name == "cntrl") return std::string("\\p{Cc}");
  if (name == "blank") return std::string("\\p{Zs}\\t");
  if (name == "any") return std::string("\\x{0}-\\x{10FFFF}");
  if (name == "han") return property_contents("sc:Han");
  // Oniguruma's script properties cover the Script value only; PCRE2's plain \p{Script} also
  // takes Script_Extensions, hence the sc: prefix.
  if (is_script_name(std::string(written_name))) {
    return "\\p{sc:" + std::string(written_name) + "}";
  }
  return unsupported("unknown Unicode property " + unicode::quoted(written_name));
}

// Emits a class (given by its contents) positively or negated, inside or outside brackets.
Result<std::string> emit_class(const std::string& contents, bool negated, bool in_class,
                               std::string_view what) {
  if (!in_class) return (negated ? "[^" : "[") + contents + "]";
  if (!negated) return contents;
  // A negated set inside a class has no PCRE2 spelling unless it is one plain property.
  if (contents.rfind("\\p{", 0) == 0 && contents.find('}') == contents.size() - 1) {
    return "\\P" + contents.substr(2);
  }
  return unsupported(std::string(what) + " inside a character class");
}

}  // namespace

Result<std::string> translate_oniguruma_pattern(std::string_view pattern) {
  const std::string word = oniguruma_word_contents();
  std::string out;
  out.reserve(pattern.size() + 32);
  bool in_class = false;
  size_t class_start = 0;  // index in `pattern` just after the opening '[' (and '^')
  size_t i = 0;
  const size_t n = pattern.size();
  while (i < n) {
    const char c = pattern[i];
    if (c == '\\') {
      if (i + 1 >= n) return unsupported("pattern ends with a lone backslash");
      const char escaped = pattern[i + 1];
      i += 2;
      std::string piece;
      switch (escaped) {
        case 's':  // Oniguruma's \s is the White_Space property (PCRE2's misses U+0085)
        case 'S':
          piece = escaped == 's' ? "\\p{White_Space}" : "\\P{White_Space}";
          break;
        case 'w':
        case 'W': {
          KITE_ASSIGN_OR_RETURN(piece, emit_class(word, escaped == 'W', in_class, "\\W"));
          break;
        }
        case 'd':
        case 'D': {
          KITE_ASSIGN_OR_RETURN(
              piece, emit_class(property_contents("Nd"), escaped == 'D', in_class, "\\D"));
          break;
        }
        case 'h':  // hexadecimal digit in Oniguruma (horizontal space in PCRE2)
        case 'H': {
          KITE_ASSIGN_OR_RETURN(piece, emit_class("0-9A-Fa-f", escaped == 'H', in_class, "\\H"));
          break;
        }
        case 'b':  // word boundary, with Oniguruma's word characters
          if (in_class) {
            piece = "\\x{08}";
          } else {
            piece =
                "(?:(?<=[" + word + "])(?![" + word + "])|(?<![" + word + "])(?=[" + word + "]))";
          }
          break;
        case 'B':
          if (in_class) return unsupported("\\B inside a character class");
          piece = "(?:(?<=[" + word + "])(?=[" + word + "])|(?<![" + word + "])(?![" + word + "]))";
          break;
        case 'v':  // vertical tab in Oniguruma (vertical space class in PCRE2)
          piece = "\\x{0B}";
          break;
        case 'u':
          if (i + 4 <= n && is_hex_digit(pattern[i]) && is_hex_digit(pattern[i + 1]) &&
              is_hex_digit(pattern[i + 2]) && is_hex_digit(pattern[i + 3])) {
            piece = "\\x{" + std::string(pattern.substr(i, 4)) + "}";
            i += 4;
          } else {
            return unsupported("\\u escape without 4 hexadecimal digits");
          }
          break;
        case 'p':
        case 'P': {
          bool negated = escaped == 'P';
          std::string_view name;
          if (i < n && pattern[i] == '{') {
            const size_t close = pattern.find('}', i);
            if (close == std::string_view::npos) return unsupported("unterminated \\p{");
            name = pattern.substr(i + 1, close - i - 1);
            i = close + 1;
            if (!name.empty() && name[0] == '^') {
              negated = !negated;
              name.remove_prefix(1);
            }
          } else if (i < n) {
            name = pattern.substr(i, 1);
            i += 1;
          } else {
            return unsupported("\\p without a property name");
          }
          KITE_ASSIGN_OR_RETURN(std::string contents, property_class_contents(name));
          KITE_ASSIGN_OR_RETURN(piece, emit_class(contents, negated, in_class, "negated \\p"));
          break;
        }
        default:
          piece = {c, escaped};
          break;
      }
      out += piece;
      continue;
    }
    if (in_class) {
      if (c == '[') {
        if (i + 1 < n && pattern[i + 1] == ':') {
          const size_t close = pattern.find(":]", i + 2);
          if (close == std::string_view::npos) return unsupported("unterminated POSIX class");
          std::string_view name = pattern.substr(i + 2, close - i - 2);
          if (!name.empty() && name[0] == '^') return unsupported("negated POSIX class");
          KITE_ASSIGN_OR_RETURN(std::string contents, property_class_contents(name));
          out += contents;
          i = close + 2;
          continue;
        }
        return unsupported("nested character class");
      }
      if (c == '&' && i + 1 < n && pattern[i + 1] == '&') {
        return unsupported("character class intersection (&&)");
      }
      if (c == ']' && i != class_start) in_class = false;
      out += c;
      ++i;
      continue;
    }
    if (c == '[') {
      in_class = true;
      out += c;
      ++i;
      if (i < n && pattern[i] == '^') {
        out += '^';
        ++i;
      }
      class_start = i;
      continue;
    }
    if (c == '(' && i + 2 < n && pattern[i + 1] == '?') {
      // An option group such as (?i) or (?mi-x:...). Ruby's "m" is PCRE2's "s" (dot matches
      // newline); ^ and $ always work per line in Ruby, which PCRE2_MULTILINE provides.
      size_t j = i + 2;
      while (j < n &&
             (pattern[j] == 'i' || pattern[j] == 'm' || pattern[j] == 'x' || pattern[j] == '-')) {
        ++j;
      }
      if (j > i + 2 && j < n && (pattern[j] == ':' || pattern[j] == ')')) {
        out += "(?";
        for (size_t k = i + 2; k < j; ++k) out += pattern[k] == 'm' ? 's' : pattern[k];
        i = j;
        continue;
      }
    }
    if (c == '{' && i + 1 < n && pattern[i + 1] == ',') {
      // Oniguruma reads {,n} as {0,n}.
      size_t j = i + 2;
      while (j < n && std::isdigit(static_cast<unsigned char>(pattern[j]))) ++j;
      if (j > i + 2 && j < n && pattern[j] == '}') {
        out += "{0";
        ++i;
        continue;
      }
    }
    out += c;
    ++i;
  }
  if (in_class) return unsupported("unterminated character class");
  return out;
}

std::string rust_regex_word_class_contents() {
  return property_contents("Alphabetic") + property_contents("M") + property_contents("Nd") +
         property_contents("Pc") + "\\p{Join_Control}";
}

struct Regex::Compiled {
  pcre2_code* code = nullptr;
  bool jit = false;
  ~Compiled() { pcre2_code_free(code); }
};

namespace {

// Per-thread matching state shared by all patterns: compiled patterns are read-only and can be
// used from any thread, match data and the JIT stack cannot.
struct ThreadMatchState {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  pcre2_match_context* context = pcre2_match_context_create(nullptr);
  pcre2_jit_stack* jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
  ThreadMatchState() {
    KITE_CHECK(data != nullptr && context != nullptr && jit_stack != nullptr);
    pcre2_jit_stack_assign(context, nullptr, jit_stack);
  }
  ~ThreadMatchState() {
    pcre2_jit_stack_free(jit_stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
};

ThreadMatchState& thread_match_state() {
  thread_local ThreadMatchState state;
  return state;
}

}  // namespace

Result<Regex> Regex::compile(std::string pcre2_pattern, std::string_view original) {
  pcre2_compile_context* context = pcre2_compile_context_create(nullptr);
  pcre2_set_newline(context, PCRE2_NEWLINE_LF);
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pcre2_pattern.data()), pcre2_pattern.size(),
                    PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE, &error_code, &error_offset, context);
  pcre2_compile_context_free(context);
  if (code == nullptr) {
    return unsupported("regex " + unicode::quoted(original) +
                       " cannot be compiled: " + pcre2_error_message(error_code));
  }
  auto compiled = std::make_shared<Compiled>();
  compiled->code = code;
  compiled->jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  Regex regex;
  regex.compiled_ = std::move(compiled);
  return regex;
}

Result<Regex> Regex::from_oniguruma(std::string_view pattern) {
  Result<std::string> translated = translate_oniguruma_pattern(pattern);
  if (!translated.is_ok()) {
    return unsupported("regex " + unicode::quoted(pattern) +
                       " uses a construct Kite does not support: " + translated.status().message());
  }
  return compile(std::move(translated).value(), pattern);
}

Result<Regex> Regex::from_pcre2(std::string_view pattern) {
  return compile(std::string(pattern), pattern);
}

bool Regex::search(std::string_view text, size_t start, MatchSpan& match) const {
  ThreadMatchState& state = thread_match_state();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  int rc = PCRE2_ERROR_NOMATCH;
  bool done = false;
  if (compiled_->jit) {
    rc =
        pcre2_jit_match(compiled_->code, subject, text.size(), start, 0, state.data, state.context);
    // Past the JIT's resource limits, the interpreter (with its own heap) gets a try.
    done = rc >= 0 || rc == PCRE2_ERROR_NOMATCH;
  }
  if (!done) {
    rc = pcre2_match(compiled_->code, subject, text.size(), start,
                     PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, state.data, state.context);
  }
  // A match that ran out of resources on pathological input ends the search: the rest of the
  // text counts as unmatched rather than stopping the program.
  if (rc < 0) return false;
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(state.data);
  match = {ovector[0], ovector[1]};
  return match.first <= match.second && match.second <= text.size();
}

bool Regex::Matches::next(MatchSpan& match) {
  // Oniguruma's iterator: search from the end of the last match; an empty match right where the
  // previous match ended is skipped by moving one character forward.
  while (last_end_ <= text_.size()) {
    if (!regex_.search(text_, last_end_, match)) {
      last_end_ = text_.size() + 1;
      return false;
    }
    if (match.first == match.second && has_last_match_ && last_match_end_ == match.second) {
      last_end_ += last_end_ < text_.size()
                       ? unicode::character_length(static_cast<unsigned char>(text_[last_end_]))
                       : 1;
      continue;
    }
    last_end_ = match.second;
    has_last_match_ = true;
    last_match_end_ = match.second;
    return true;
  }
  return false;
}

void Regex::find_all(std::string_view text, std::vector<MatchSpan>& matches) const {
  Matches iterator(*this, text);
  MatchSpan match;
  while (iterator.next(match)) matches.push_back(match);
}

bool Regex::matches_at_start(std::string_view text) const {
  MatchSpan match;
  return search(text, 0, match) && match.first == 0;
}

}  // namespace kite
