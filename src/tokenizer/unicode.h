// UTF-8 encoding and decoding, the GPT-2 byte <-> character alphabet, and the character
// properties (from Rust's `char` methods) that the Hugging Face tokenizers components rely on.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "tokenizer/unicode_tables.h"

namespace kite::unicode {

constexpr char32_t kReplacementCharacter = 0xFFFD;

// Decodes the character starting at text[position] and advances position past it. Requires
// valid UTF-8 (see sanitize_utf8); the tokenizer only ever decodes sanitized text.
char32_t next_character(std::string_view text, size_t& position);
// Number of bytes of the UTF-8 character whose first byte is `lead` (1 for stray bytes).
inline size_t character_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xF0) return 4;
  if (lead >= 0xE0) return 3;
  if (lead >= 0xC0) return 2;
  return 1;
}
void append_utf8(std::string& out, char32_t character);
std::string to_utf8(char32_t character);

bool is_valid_utf8(std::string_view bytes);
// Replaces each invalid sequence by U+FFFD the way Python's bytes.decode("utf-8",
// errors="replace") does (one replacement per maximal ill-formed subpart).
std::string sanitize_utf8(std::string_view bytes);

// GPT-2's reversible map from bytes to printable characters (the ByteLevel alphabet): UTF-8 of
// the character standing for each byte, and the byte for a character (-1 when none).
const std::array<std::string, 256>& byte_to_characters();
int character_to_byte(char32_t character);

// Code points that the Oniguruma of the Hugging Face tokenizers library puts in a regex
// property (named as PCRE2 spells it: "L", "Nd", "Alphabetic", "sc:Han") and PCRE2's older
// Unicode tables do not. Empty for other names.
std::span<const CodePointRange> newer_regex_property_additions(std::string_view property);

// Character classes exactly as the components of the tokenizers library see them (its
// crates carry different Unicode versions; unicode_tables.cc reconciles them).
bool is_whitespace(char32_t character);         // Rust char::is_whitespace (White_Space)
bool is_numeric(char32_t character);            // Rust char::is_numeric (Nd, Nl, No): Digits
bool is_punctuation(char32_t character);        // ASCII punctuation or P*: Punctuation, BERT
bool is_control(char32_t character);            // Cc, Cf, Co, Cs: BertNormalizer's clean_text
bool is_nonspacing_mark(char32_t character);    // Mn: BertNormalizer's strip_accents
bool is_combining_mark(char32_t character);     // M*: the StripAccents normalizer
bool is_chinese_character(char32_t character);  // BertNormalizer's CJK blocks
// Code points the library's normalization leaves as they are under `form` ("NFC", "NFD", "NFKC",
// "NFKD") where utf8proc, knowing newer decompositions, would change them.
std::span<const CodePointRange> normal_form_exceptions(std::string_view form);
bool contains(std::span<const CodePointRange> ranges, char32_t character);
// `text` for an error message, in single quotes: control characters escaped (messages stay on
// one line), invalid UTF-8 replaced, long text cut.
std::string quoted(std::string_view text);

// Appends Rust's `character.to_lowercase()` (full Unicode lowercase mapping).
void append_lowercase(std::string& out, char32_t character);

}  // namespace kite::unicode
