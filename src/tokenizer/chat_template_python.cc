// Python's str, repr() and json.dumps() semantics for the chat-template interpreter: what the
// renderer's string methods and filters compute, and how values print.
#include <utf8proc.h>

#include <charconv>
#include <cmath>
#include <cstdio>

#include "tokenizer/chat_template_internal.h"
#include "tokenizer/unicode.h"

namespace kite::chat_template_internal {

char32_t decode_one(std::string_view text, size_t& position) {
  const auto lead = static_cast<unsigned char>(text[position]);
  const size_t length = unicode::character_length(lead);
  if (length == 1 || position + length > text.size()) return ++position, lead;
  char32_t c = lead & (0x7F >> length);
  for (size_t i = 1; i < length; ++i) c = (c << 6) | (text[position + i] & 0x3F);
  position += length;
  return c;
}

std::u32string decode(std::string_view text) {
  std::u32string characters;
  for (size_t position = 0; position < text.size();) characters += decode_one(text, position);
  return characters;
}

std::string encode(std::u32string_view characters) {
  std::string text;
  for (const char32_t c : characters) unicode::append_utf8(text, c);
  return text;
}

size_t character_count(std::string_view text) {
  return std::count_if(text.begin(), text.end(), [](char c) { return (c & 0xC0) != 0x80; });
}

// str.isspace(): what strip() and split() remove, and jinja2's \s.
bool is_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

// str.strip(chars), lstrip(chars) and rstrip(chars); null `chars` strips whitespace.
std::string strip(std::string_view text, Side side, const std::string* chars) {
  const std::u32string characters = decode(text);
  const std::u32string set = chars ? decode(*chars) : U"";
  auto strippable = [&](char32_t c) { return chars ? set.find(c) != set.npos : is_space(c); };
  size_t begin = 0;
  size_t end = characters.size();
  while (side != Side::kRight && begin < end && strippable(characters[begin])) ++begin;
  while (side != Side::kLeft && end > begin && strippable(characters[end - 1])) --end;
  return encode(std::u32string_view(characters).substr(begin, end - begin));
}

// str.upper(), lower(), capitalize() and title(); kTitleWords is jinja2's title filter, whose
// words start after whitespace or "-({[<" rather than after any uncased character. Upper and
// title case are Unicode's simple mappings (Python's full ones differ for a few, like ß).
std::string change_case(std::string_view text, Case mode) {
  std::string out;
  bool word_start = true;
  for (const char32_t c : decode(text)) {
    const auto code = static_cast<utf8proc_int32_t>(c);
    if (mode == Case::kUpper && c == U'ß') {
      out += "SS";
    } else if (mode == Case::kUpper || (mode != Case::kLower && word_start)) {
      const auto mapped = mode == Case::kUpper ? utf8proc_toupper(code) : utf8proc_totitle(code);
      unicode::append_utf8(out, static_cast<char32_t>(mapped));
    } else {
      unicode::append_lowercase(out, c);
    }
    const auto category = utf8proc_category(code);
    const bool cased = category == UTF8PROC_CATEGORY_LU || category == UTF8PROC_CATEGORY_LL ||
                       category == UTF8PROC_CATEGORY_LT;
    if (mode == Case::kCapitalize) word_start = false;
    if (mode == Case::kTitle) word_start = !cased;
    if (mode == Case::kTitleWords)
      word_start =
          is_space(c) || std::u32string_view(U"-({[<").find(c) != std::u32string_view::npos;
  }
  return out;
}

// str.replace(old, new, count); count < 0 replaces all.
std::string replace(const std::string& text, const std::string& old, const std::string& with,
                    int64_t count) {
  if (count < 0) count = INT64_MAX;
  std::string out;
  if (old.empty()) {  // Python puts `with` before each character and at the end
    const std::u32string characters = decode(text);
    check_size(text.size() + (characters.size() + 1) * with.size());
    for (size_t i = 0; i <= characters.size(); ++i) {
      if (static_cast<int64_t>(i) < count) out += with;
      if (i < characters.size()) unicode::append_utf8(out, characters[i]);
    }
    return out;
  }
  size_t position = 0;
  for (int64_t done = 0; done < count; ++done) {
    const size_t found = text.find(old, position);
    if (found == text.npos) break;
    out.append(text, position, found - position).append(with);
    position = found + old.size();
    check_size(out.size());
  }
  return out.append(text, position);
}

// str.split(separator, max_splits); a null separator splits at runs of whitespace.
Json split(const std::string& text, const std::string* separator, int64_t max_splits) {
  Json parts = Json::array();
  auto may_split = [&] { return max_splits < 0 || std::ssize(parts) < max_splits; };
  if (separator == nullptr) {
    const std::u32string characters = decode(text);
    for (size_t i = 0;;) {
      while (i < characters.size() && is_space(characters[i])) ++i;
      if (i == characters.size()) break;
      const size_t begin = i;
      while (may_split() && i < characters.size() && !is_space(characters[i])) ++i;
      if (!may_split()) i = characters.size();  // the rest, trailing whitespace and all
      parts.push_back(encode(std::u32string_view(characters).substr(begin, i - begin)));
    }
    return parts;
  }
  if (separator->empty()) fail("empty separator");
  size_t position = 0;
  for (size_t found; may_split() && (found = text.find(*separator, position)) != text.npos;) {
    parts.push_back(text.substr(position, found - position));
    position = found + separator->size();
  }
  parts.push_back(text.substr(position));
  return parts;
}

// ---- Python's repr() and json.dumps().

// float.__repr__: the shortest digits that read back the same, positional when the decimal
// exponent is in [-4, 16), else d.ddde+XX.
std::string python_float(double value) {
  if (std::isnan(value) || std::isinf(value))
    return std::isnan(value) ? "nan" : value > 0 ? "inf" : "-inf";
  char buffer[64];
  const auto end = std::to_chars(buffer, buffer + 64, value, std::chars_format::scientific).ptr;
  std::string digits(buffer, end);  // "-1.2345e-05"
  std::string out = digits[0] == '-' ? "-" : "";
  const size_t e = digits.find('e');
  const int exponent = std::stoi(digits.substr(e + 1));
  digits.resize(e);
  std::erase_if(digits, [](char c) { return c == '-' || c == '.'; });
  const auto size = static_cast<int>(digits.size());
  if (exponent < -4 || exponent >= 16) {
    char text[16];
    std::snprintf(text, sizeof text, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    out += digits[0];
    if (size > 1) out.append(".").append(digits, 1);
    return out + text;
  }
  if (exponent < 0) return out + "0." + std::string(-exponent - 1, '0') + digits;
  if (size <= exponent + 1) return out + digits + std::string(exponent + 1 - size, '0') + ".0";
  return out + digits.substr(0, exponent + 1) + "." + digits.substr(exponent + 1);
}

std::string number_text(const Json& value) {
  if (value.is_number_unsigned()) return std::to_string(value.get<uint64_t>());
  if (value.is_number_integer()) return std::to_string(value.get<int64_t>());
  return python_float(value.get<double>());
}

// A string as repr() quotes it (with `json` null) or as json.dumps does.
void append_quoted(std::string& out, std::string_view text, const JsonFormat* json) {
  const bool apostrophe = text.find('\'') != text.npos && text.find('"') == text.npos;
  const char quote = json || apostrophe ? '"' : '\'';
  out += quote;
  for (const char32_t c : decode(text)) {
    static constexpr std::string_view kControls = "\n\r\t\b\f";
    const size_t named =
        c < 0x80 ? kControls.substr(0, json ? 5 : 3).find(static_cast<char>(c)) : kControls.npos;
    char escape[16] = "";
    if (c == static_cast<char32_t>(quote) || c == '\\') {
      escape[0] = '\\', escape[1] = static_cast<char>(c);
    } else if (named != kControls.npos) {
      escape[0] = '\\', escape[1] = "nrtbf"[named];
    } else if (json && c > 0xFFFF && json->ensure_ascii) {
      std::snprintf(escape, 16, "\\u%04x\\u%04x", 0xD800 + ((c - 0x10000) >> 10),
                    0xDC00 + ((c - 0x10000) & 0x3FF));
    } else if (json && (c < 0x20 || (json->ensure_ascii && c >= 0x7F))) {
      std::snprintf(escape, 16, "\\u%04x", static_cast<unsigned>(c));
    } else if (!json && (c < 0x20 || (c >= 0x7F && c <= 0xA0))) {
      std::snprintf(escape, 16, "\\x%02x", static_cast<unsigned>(c));
    }
    escape[0] ? void(out += escape) : unicode::append_utf8(out, c);
  }
  out += quote;
}

// repr(value), as {{ }} prints lists and dicts, with `json` null; else json.dumps(value, ...).
void append_value(std::string& out, const Json& value, const JsonFormat* json, int depth) {
  if (depth > kMaxDataDepth) fail_limit("data nested more than 200 deep");
  check_size(out.size());
  if (value.is_null() || value.is_boolean()) {
    const std::string text = value.is_null() ? "None" : value.get<bool>() ? "True" : "False";
    out += json ? (value.is_null() ? "null" : value.get<bool>() ? "true" : "false") : text;
  } else if (json && value.is_number_float() && !std::isfinite(value.get<double>())) {
    out += std::isnan(value.get<double>()) ? "NaN" : value > 0 ? "Infinity" : "-Infinity";
  } else if (value.is_number()) {
    out += number_text(value);
  } else if (value.is_string()) {
    append_quoted(out, value.get_ref<const std::string&>(), json);
  } else if (value.empty()) {
    out += value.is_array() ? "[]" : "{}";
  } else {
    // With an indent: a newline and the next level's indentation.
    std::string newline = json && json->indent ? "\n" : "";
    for (int i = 0; json && json->indent && i <= depth; ++i) newline += *json->indent;
    std::vector<Json::const_iterator> members;
    for (auto it = value.begin(); it != value.end(); ++it) members.push_back(it);
    if (json && json->sort_keys && value.is_object()) {
      std::stable_sort(members.begin(), members.end(),
                       [](auto a, auto b) { return a.key() < b.key(); });
    }
    out += value.is_array() ? '[' : '{';
    for (size_t i = 0; i < members.size(); ++i) {
      out += (i == 0 ? "" : json ? json->item_separator : ", ") + newline;
      if (value.is_object()) append_quoted(out, members[i].key(), json);
      if (value.is_object()) out += json ? json->key_separator : ": ";
      append_value(out, *members[i], json, depth + 1);
    }
    if (!newline.empty()) out += newline.substr(0, newline.size() - json->indent->size());
    out += value.is_array() ? ']' : '}';
  }
}

std::string python_str(const Json& value) {  // str(value)
  if (value.is_string()) return value.get<std::string>();
  std::string out;
  append_value(out, value, nullptr);
  return out;
}

}  // namespace kite::chat_template_internal
