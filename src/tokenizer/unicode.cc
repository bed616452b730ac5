// UTF-8 helpers, the GPT-2 byte alphabet and character properties (see unicode.h).
#include "tokenizer/unicode.h"

#include <utf8proc.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

namespace kite::unicode {
namespace {

// The ranges of a generated table (empty when the generator found no difference).
std::span<const CodePointRange> table(std::string_view name) {
  for (const auto& entry : version_tables()) {
    if (entry.name == name) return entry.ranges;
  }
  return {};
}

bool in_ranges(std::span<const CodePointRange> ranges, char32_t character) {
  const auto it = std::upper_bound(
      ranges.begin(), ranges.end(), character,
      [](char32_t value, const CodePointRange& range) { return value < range.first; });
  return it != ranges.begin() && character <= std::prev(it)->last;
}

// A utf8proc-based property corrected by the generated "<name>:add" / "<name>:remove" tables.
struct CorrectedProperty {
  std::span<const CodePointRange> added;
  std::span<const CodePointRange> removed;
  explicit CorrectedProperty(std::string_view name)
      : added(table(std::string(name) + ":add")), removed(table(std::string(name) + ":remove")) {}
  bool apply(bool baseline, char32_t character) const {
    if (baseline) return !in_ranges(removed, character);
    return in_ranges(added, character);
  }
};

bool is_continuation(unsigned char byte) {
  return (byte & 0xC0) == 0x80;
}

// Length of the valid UTF-8 character at bytes[position], or 0 when the bytes there are not a
// complete valid character. `maximal_subpart` receives the length of the ill-formed prefix that
// Unicode (and Python) replace by a single U+FFFD.
size_t valid_character_length(std::string_view bytes, size_t position, size_t& maximal_subpart) {
  const auto byte_at = [&](size_t i) { return static_cast<unsigned char>(bytes[position + i]); };
  const size_t available = bytes.size() - position;
  const unsigned char lead = byte_at(0);
  maximal_subpart = 1;
  if (lead < 0x80) return 1;
  size_t length = 0;
  unsigned char second_low = 0x80, second_high = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    if (lead == 0xE0) second_low = 0xA0;
    if (lead == 0xED) second_high = 0x9F;  // no surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    if (lead == 0xF0) second_low = 0x90;
    if (lead == 0xF4) second_high = 0x8F;  // nothing above U+10FFFF
  } else {
    return 0;
  }
  for (size_t i = 1; i < length; ++i) {
    if (i >= available) return 0;
    const unsigned char byte = byte_at(i);
    const bool ok = i == 1 ? (byte >= second_low && byte <= second_high) : is_continuation(byte);
    if (!ok) return 0;
    maximal_subpart = i + 1;
  }
  return length;
}

std::array<std::string, 256> make_byte_to_characters() {
  std::array<std::string, 256> table;
  int next_extra = 256;
  for (int byte = 0; byte < 256; ++byte) {
    const bool printable = (byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) ||
                           (byte >= 0xAE && byte <= 0xFF);
    table[byte] = to_utf8(printable ? char32_t(byte) : char32_t(next_extra++));
  }
  return table;
}

}  // namespace

char32_t next_character(std::string_view text, size_t& position) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(text[position + i]); };
  const unsigned char lead = byte(0);
  if (lead < 0x80) {
    position += 1;
    return lead;
  }
  const size_t length = character_length(lead);
  if (position + length > text.size()) {  // not reached with sanitized text; stay safe anyway
    position = text.size();
    return kReplacementCharacter;
  }
  char32_t character;
  if (length == 2) {
    character = (char32_t(lead & 0x1F) << 6) | (byte(1) & 0x3F);
  } else if (length == 3) {
    character = (char32_t(lead & 0x0F) << 12) | (char32_t(byte(1) & 0x3F) << 6) | (byte(2) & 0x3F);
  } else if (length == 4) {
    character = (char32_t(lead & 0x07) << 18) | (char32_t(byte(1) & 0x3F) << 12) |
                (char32_t(byte(2) & 0x3F) << 6) | (byte(3) & 0x3F);
  } else {
    character = kReplacementCharacter;
  }
  position += length;
  return character;
}

void append_utf8(std::string& out, char32_t character) {
  if (character < 0x80) {
    out.push_back(char(character));
  } else if (character < 0x800) {
    out.push_back(char(0xC0 | (character >> 6)));
    out.push_back(char(0x80 | (character & 0x3F)));
  } else if (character < 0x10000) {
    out.push_back(char(0xE0 | (character >> 12)));
    out.push_back(char(0x80 | ((character >> 6) & 0x3F)));
    out.push_back(char(0x80 | (character & 0x3F)));
  } else {
    out.push_back(char(0xF0 | (character >> 18)));
    out.push_back(char(0x80 | ((character >> 12) & 0x3F)));
    out.push_back(char(0x80 | ((character >> 6) & 0x3F)));
    out.push_back(char(0x80 | (character & 0x3F)));
  }
}

std::string to_utf8(char32_t character) {
  std::string out;
  append_utf8(out, character);
  return out;
}

bool is_valid_utf8(std::string_view bytes) {
  size_t position = 0;
  while (position < bytes.size()) {
    if (static_cast<unsigned char>(bytes[position]) < 0x80) {
      ++position;
      continue;
    }
    size_t subpart;
    const size_t length = valid_character_length(bytes, position, subpart);
    if (length == 0) return false;
    position += length;
  }
  return true;
}

std::string sanitize_utf8(std::string_view bytes) {
  if (is_valid_utf8(bytes)) return std::string(bytes);
  std::string out;
  out.reserve(bytes.size() + 16);
  size_t position = 0;
  while (position < bytes.size()) {
    size_t subpart;
    const size_t length = valid_character_length(bytes, position, subpart);
    if (length == 0) {
      append_utf8(out, kReplacementCharacter);
      position += subpart;
    } else {
      out.append(bytes.substr(position, length));
      position += length;
    }
  }
  return out;
}

const std::array<std::string, 256>& byte_to_characters() {
  static const std::array<std::string, 256> table = make_byte_to_characters();
  return table;
}

int character_to_byte(char32_t character) {
  if ((character >= '!' && character <= '~') || (character >= 0xA1 && character <= 0xAC) ||
      (character >= 0xAE && character <= 0xFF)) {
    return int(character);
  }
  // The other 68 bytes map, in increasing order, to U+0100..U+0143.
  static const std::array<int, 68> extra_bytes = [] {
    std::array<int, 68> bytes{};
    int next = 0;
    for (int byte = 0; byte < 256; ++byte) {
      const bool printable = (byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) ||
                             (byte >= 0xAE && byte <= 0xFF);
      if (!printable) bytes[next++] = byte;
    }
    return bytes;
  }();
  if (character >= 0x100 && character < 0x100 + extra_bytes.size()) {
    return extra_bytes[character - 0x100];
  }
  return -1;
}

std::span<const CodePointRange> newer_regex_property_additions(std::string_view property) {
  return table("regex:" + std::string(property));
}

bool is_whitespace(char32_t c) {
  static const CorrectedProperty corrections("whitespace");
  const bool baseline = (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 ||
                        c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
                        c == 0x202F || c == 0x205F || c == 0x3000;
  return corrections.apply(baseline, c);
}

bool is_numeric(char32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  static const CorrectedProperty corrections("numeric");
  const auto category = utf8proc_category(utf8proc_int32_t(c));
  return corrections.apply(category == UTF8PROC_CATEGORY_ND || category == UTF8PROC_CATEGORY_NL ||
                               category == UTF8PROC_CATEGORY_NO,
                           c);
}

bool is_punctuation(char32_t c) {
  if (c < 0x80) {
    return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
           (c >= 0x7B && c <= 0x7E);
  }
  static const CorrectedProperty corrections("punctuation");
  const auto category = utf8proc_category(utf8proc_int32_t(c));
  return corrections.apply(category >= UTF8PROC_CATEGORY_PC && category <= UTF8PROC_CATEGORY_PO, c);
}

bool is_control(char32_t c) {
  static const CorrectedProperty corrections("control");
  const auto category = utf8proc_category(utf8proc_int32_t(c));
  return corrections.apply(category == UTF8PROC_CATEGORY_CC || category == UTF8PROC_CATEGORY_CF ||
                               category == UTF8PROC_CATEGORY_CO || category == UTF8PROC_CATEGORY_CS,
                           c);
}

bool is_nonspacing_mark(char32_t c) {
  if (c < 0x80) return false;
  static const CorrectedProperty corrections("nonspacing_mark");
  return corrections.apply(utf8proc_category(utf8proc_int32_t(c)) == UTF8PROC_CATEGORY_MN, c);
}

bool is_combining_mark(char32_t c) {
  if (c < 0x80) return false;
  static const CorrectedProperty corrections("combining_mark");
  const auto category = utf8proc_category(utf8proc_int32_t(c));
  return corrections.apply(category == UTF8PROC_CATEGORY_MN || category == UTF8PROC_CATEGORY_MC ||
                               category == UTF8PROC_CATEGORY_ME,
                           c);
}

std::span<const CodePointRange> normal_form_exceptions(std::string_view form) {
  return table("keep:" + std::string(form));
}

bool contains(std::span<const CodePointRange> ranges, char32_t character) {
  return in_ranges(ranges, character);
}

bool is_chinese_character(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
         (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
         (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

std::string quoted(std::string_view text) {
  constexpr size_t kMaxCharacters = 80;
  const std::string valid = sanitize_utf8(text);
  std::string out = "'";
  size_t position = 0;
  size_t count = 0;
  while (position < valid.size()) {
    if (++count > kMaxCharacters) {
      out += "...";
      break;
    }
    const char32_t c = next_character(valid, position);
    if (c < 0x20 || c == 0x7F || c == 0x85 || c == 0x2028 || c == 0x2029) {
      char escaped[16];
      std::snprintf(escaped, sizeof(escaped), c == '\n' ? "\\n" : "\\x{%X}", unsigned(c));
      out += escaped;
    } else {
      append_utf8(out, c);
    }
  }
  return out + "'";
}

void append_lowercase(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(char(c >= 'A' && c <= 'Z' ? c + 32 : c));
    return;
  }
  // The one unconditional multi-character lowercase mapping in SpecialCasing.txt.
  if (c == 0x130) {
    out += "i\xCC\x87";
    return;
  }
  static const auto& overrides = lowercase_overrides();
  const auto it =
      std::lower_bound(overrides.begin(), overrides.end(), std::make_pair(c, char32_t(0)));
  if (it != overrides.end() && it->first == c) {
    append_utf8(out, it->second);
    return;
  }
  append_utf8(out, char32_t(utf8proc_tolower(utf8proc_int32_t(c))));
}

}  // namespace kite::unicode
