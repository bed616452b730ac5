// String and regex patterns (see pattern.h).
#include "tokenizer/pattern.h"

#include <cctype>

#include "tokenizer/json_fields.h"

namespace kite {

Result<Pattern> Pattern::from_json(const nlohmann::json& spec, std::string_view where) {
  if (spec.is_object() && spec.size() == 1) {
    if (const auto it = spec.find("String"); it != spec.end() && it->is_string()) {
      return literal(it->get<std::string>());
    }
    if (const auto it = spec.find("Regex"); it != spec.end() && it->is_string()) {
      Result<Regex> regex = Regex::from_oniguruma(it->get<std::string>());
      if (!regex.is_ok()) return regex.status().with_context(std::string(where));
      return Pattern(std::move(regex).value());
    }
  }
  return corrupt(std::string(where) +
                 ": field 'pattern' must be {\"String\": \"...\"} or {\"Regex\": \"...\"}");
}

Result<Pattern> Pattern::literal(std::string_view text) {
  // Escape every ASCII punctuation character; other characters stand for themselves.
  std::string escaped;
  for (char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x80 && !std::isalnum(byte)) {
      if (byte < 0x20 || byte == 0x7F) {
        static const char kHex[] = "0123456789ABCDEF";
        escaped += "\\x{";
        escaped += kHex[byte >> 4];
        escaped += kHex[byte & 15];
        escaped += '}';
        continue;
      }
      escaped += '\\';
    }
    escaped += c;
  }
  KITE_ASSIGN_OR_RETURN(Regex regex, Regex::from_pcre2(escaped));
  return Pattern(std::move(regex));
}

void Pattern::find_matches(std::string_view text, std::vector<PatternSpan>& spans) const {
  if (text.empty()) {
    spans.push_back({0, 0, false});
    return;
  }
  thread_local std::vector<MatchSpan> matches;
  matches.clear();
  regex_.find_all(text, matches);
  size_t previous = 0;
  for (const auto& [start, end] : matches) {
    if (previous != start) spans.push_back({previous, start, false});
    spans.push_back({start, end, true});
    previous = end;
  }
  if (previous != text.size()) spans.push_back({previous, text.size(), false});
}

std::string Pattern::replace_all(std::string_view text, std::string_view content) const {
  thread_local std::vector<MatchSpan> matches;
  matches.clear();
  regex_.find_all(text, matches);
  if (matches.empty()) return std::string(text);
  std::string out;
  out.reserve(text.size() + matches.size() * content.size());
  size_t previous = 0;
  for (const auto& [start, end] : matches) {
    out.append(text.substr(previous, start - previous));
    out.append(content);
    previous = end;
  }
  out.append(text.substr(previous));
  return out;
}

}  // namespace kite
