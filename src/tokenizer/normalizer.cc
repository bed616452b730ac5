// Normalizers: Unicode normal forms (utf8proc), Lowercase, Strip, StripAccents, Prepend, Replace,
// BertNormalizer, ByteLevel and Sequence, each as the Rust tokenizers library applies it.
#include "tokenizer/normalizer.h"

#include <utf8proc.h>

#include <cstdlib>
#include <vector>

#include "tokenizer/json_fields.h"
#include "tokenizer/pattern.h"
#include "tokenizer/unicode.h"

namespace kite {
namespace {

using tokenizer_json::Json;

bool is_ascii(const std::string& text) {
  for (char c : text) {
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  }
  return true;
}

// Applies `transform` to each character, which appends its replacement to the output.
template <typename Transform>
void map_characters(std::string& text, Transform transform) {
  std::string out;
  out.reserve(text.size());
  size_t position = 0;
  while (position < text.size()) transform(out, unicode::next_character(text, position));
  text = std::move(out);
}

enum class NormalForm { kNfc, kNfd, kNfkc, kNfkd };

// utf8proc's normal form of `text`.
std::string utf8proc_normal_form(std::string_view text, int options) {
  utf8proc_uint8_t* result = nullptr;
  const utf8proc_ssize_t length =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                   utf8proc_ssize_t(text.size()), &result, utf8proc_option_t(options));
  // Only an allocation failure can fail on valid UTF-8; the text then stays as it was.
  std::string out = length >= 0 ? std::string(reinterpret_cast<const char*>(result), size_t(length))
                                : std::string(text);
  std::free(result);
  return out;
}

class UnicodeNormalizer final : public Normalizer {
 public:
  explicit UnicodeNormalizer(NormalForm form) : form_(form) {}
  void normalize(std::string& text) const override { apply_normal_form(text, form_); }

  static void apply_normal_form(std::string& text, NormalForm form) {
    if (is_ascii(text)) return;  // ASCII is invariant under every normal form
    int options = UTF8PROC_STABLE;
    std::string_view name;
    switch (form) {
      case NormalForm::kNfc:
        options |= UTF8PROC_COMPOSE;
        name = "NFC";
        break;
      case NormalForm::kNfd:
        options |= UTF8PROC_DECOMPOSE;
        name = "NFD";
        break;
      case NormalForm::kNfkc:
        options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
        name = "NFKC";
        break;
      case NormalForm::kNfkd:
        options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
        name = "NFKD";
        break;
    }
    // ASCII is invariant and never combines with what precedes it, so only the runs of
    // non-ASCII characters (with the ASCII character before each, which may compose with them)
    // go through utf8proc.
    const auto exceptions = unicode::normal_form_exceptions(name);
    std::string out;
    out.reserve(text.size() + 16);
    size_t position = 0;
    while (position < text.size()) {
      size_t run = position;
      while (run < text.size() && static_cast<unsigned char>(text[run]) < 0x80) ++run;
      if (run == text.size()) {
        out.append(text, position, run - position);
        break;
      }
      const size_t start = run > position ? run - 1 : run;
      out.append(text, position, start - position);
      size_t end = run;
      while (end < text.size() && static_cast<unsigned char>(text[end]) >= 0x80) ++end;
      normalize_segment(std::string_view(text).substr(start, end - start), options, exceptions,
                        out);
      position = end;
    }
    text = std::move(out);
  }

 private:
  // Characters whose decomposition the library does not know yet stay as they are; they are
  // starters, so normalizing the text between them separately gives the same result.
  static void normalize_segment(std::string_view segment, int options,
                                std::span<const unicode::CodePointRange> exceptions,
                                std::string& out) {
    size_t segment_start = 0;
    size_t position = 0;
    while (position < segment.size() && !exceptions.empty()) {
      const size_t start = position;
      const char32_t c = unicode::next_character(segment, position);
      if (c >= 0x80 && unicode::contains(exceptions, c)) {
        out += utf8proc_normal_form(segment.substr(segment_start, start - segment_start), options);
        out.append(segment.substr(start, position - start));
        segment_start = position;
      }
    }
    out += utf8proc_normal_form(segment.substr(segment_start), options);
  }

  NormalForm form_;
};

class LowercaseNormalizer final : public Normalizer {
 public:
  void normalize(std::string& text) const override {
    if (is_ascii(text)) {
      for (char& c : text) {
        if (c >= 'A' && c <= 'Z') c = char(c + 32);
      }
      return;
    }
    map_characters(text, unicode::append_lowercase);
  }
};

// Removes leading and/or trailing whitespace (Rust's char::is_whitespace).
void strip_whitespace(std::string& text, bool left, bool right) {
  size_t begin = 0, end = text.size();
  if (left) {
    while (begin < end) {
      size_t next = begin;
      if (!unicode::is_whitespace(unicode::next_character(text, next))) break;
      begin = next;
    }
  }
  if (right) {
    while (end > begin) {
      size_t start = end - 1;
      while (start > begin && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
      size_t position = start;
      if (!unicode::is_whitespace(unicode::next_character(text, position))) break;
      end = start;
    }
  }
  text = text.substr(begin, end - begin);
}

class StripNormalizer final : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void normalize(std::string& text) const override { strip_whitespace(text, left_, right_); }

 private:
  bool left_, right_;
};

class StripAccentsNormalizer final : public Normalizer {
 public:
  void normalize(std::string& text) const override {
    if (is_ascii(text)) return;
    map_characters(text, [](std::string& out, char32_t c) {
      if (!unicode::is_combining_mark(c)) unicode::append_utf8(out, c);
    });
  }
};

class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void normalize(std::string& text) const override {
    if (!text.empty()) text.insert(0, prefix_);
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(Pattern pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void normalize(std::string& text) const override {
    if (!text.empty()) text = pattern_.replace_all(text, content_);
  }

 private:
  Pattern pattern_;
  std::string content_;
};

class BertNormalizer final : public Normalizer {
 public:
  BertNormalizer(bool clean_text, bool handle_chinese_characters, bool strip_accents,
                 bool lowercase)
      : clean_text_(clean_text),
        handle_chinese_characters_(handle_chinese_characters),
        strip_accents_(strip_accents),
        lowercase_(lowercase) {}

  void normalize(std::string& text) const override {
    if (clean_text_) {
      map_characters(text, [](std::string& out, char32_t c) {
        const bool kept_control = c == '\t' || c == '\n' || c == '\r';
        if (c == 0 || c == unicode::kReplacementCharacter ||
            (!kept_control && unicode::is_control(c))) {
          return;
        }
        if (kept_control || unicode::is_whitespace(c)) {
          out.push_back(' ');
        } else {
          unicode::append_utf8(out, c);
        }
      });
    }
    if (handle_chinese_characters_) {
      map_characters(text, [](std::string& out, char32_t c) {
        if (unicode::is_chinese_character(c)) {
          out.push_back(' ');
          unicode::append_utf8(out, c);
          out.push_back(' ');
        } else {
          unicode::append_utf8(out, c);
        }
      });
    }
    if (strip_accents_) {
      UnicodeNormalizer::apply_normal_form(text, NormalForm::kNfd);
      map_characters(text, [](std::string& out, char32_t c) {
        if (!unicode::is_nonspacing_mark(c)) unicode::append_utf8(out, c);
      });
    }
    if (lowercase_) LowercaseNormalizer().normalize(text);
  }

 private:
  bool clean_text_, handle_chinese_characters_, strip_accents_, lowercase_;
};

// Maps every byte to its GPT-2 alphabet character.
class ByteLevelNormalizer final : public Normalizer {
 public:
  void normalize(std::string& text) const override {
    const auto& table = unicode::byte_to_characters();
    std::string out;
    out.reserve(text.size() * 2);
    for (char c : text) out += table[static_cast<unsigned char>(c)];
    text = std::move(out);
  }
};

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> normalizers)
      : normalizers_(std::move(normalizers)) {}
  void normalize(std::string& text) const override {
    for (const auto& normalizer : normalizers_) normalizer->normalize(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> normalizers_;
};

// Builds a component as a pointer to its interface (one conversion away from a Result).
template <typename T, typename... Args>
std::unique_ptr<Normalizer> make(Args&&... args) {
  return std::make_unique<T>(std::forward<Args>(args)...);
}

}  // namespace

Result<std::unique_ptr<Normalizer>> parse_normalizer(const nlohmann::json& spec) {
  const tokenizer_json::NestingGuard nesting;
  KITE_RETURN_IF_ERROR(nesting.check("normalizer"));
  using namespace tokenizer_json;
  KITE_ASSIGN_OR_RETURN(const std::string type, component_type(spec, "normalizer"));
  const std::string where = "normalizer " + type;
  if (type == "NFC") return make<UnicodeNormalizer>(NormalForm::kNfc);
  if (type == "NFD") return make<UnicodeNormalizer>(NormalForm::kNfd);
  if (type == "NFKC") return make<UnicodeNormalizer>(NormalForm::kNfkc);
  if (type == "NFKD") return make<UnicodeNormalizer>(NormalForm::kNfkd);
  if (type == "Lowercase") return make<LowercaseNormalizer>();
  if (type == "StripAccents") return make<StripAccentsNormalizer>();
  if (type == "ByteLevel") return make<ByteLevelNormalizer>();
  if (type == "Strip") {
    KITE_ASSIGN_OR_RETURN(const bool left, bool_field(spec, "strip_left", where, true));
    KITE_ASSIGN_OR_RETURN(const bool right, bool_field(spec, "strip_right", where, true));
    return make<StripNormalizer>(left, right);
  }
  if (type == "Prepend") {
    KITE_ASSIGN_OR_RETURN(std::string prefix, string_field(spec, "prepend", where));
    return make<PrependNormalizer>(std::move(prefix));
  }
  if (type == "Replace") {
    KITE_ASSIGN_OR_RETURN(const Json* pattern_spec, required_field(spec, "pattern", where));
    KITE_ASSIGN_OR_RETURN(Pattern pattern, Pattern::from_json(*pattern_spec, where));
    KITE_ASSIGN_OR_RETURN(std::string content, string_field(spec, "content", where));
    return make<ReplaceNormalizer>(std::move(pattern), std::move(content));
  }
  if (type == "BertNormalizer") {
    KITE_ASSIGN_OR_RETURN(const bool clean_text, bool_field(spec, "clean_text", where, true));
    KITE_ASSIGN_OR_RETURN(const bool chinese,
                          bool_field(spec, "handle_chinese_chars", where, true));
    KITE_ASSIGN_OR_RETURN(const bool lowercase, bool_field(spec, "lowercase", where, true));
    // strip_accents: null means "same as lowercase".
    KITE_ASSIGN_OR_RETURN(const bool strip_accents,
                          bool_field(spec, "strip_accents", where, lowercase));
    return make<BertNormalizer>(clean_text, chinese, strip_accents, lowercase);
  }
  if (type == "Sequence") {
    KITE_ASSIGN_OR_RETURN(auto steps, parse_component_list<Normalizer>(
                                          spec, "normalizers", where,
                                          [](const Json& item) { return parse_normalizer(item); }));
    return make<SequenceNormalizer>(std::move(steps));
  }
  return unsupported("normalizer type " + unicode::quoted(type) +
                     " is not supported (supported: NFC, NFD, NFKC, NFKD, Lowercase, Strip, "
                     "StripAccents, Prepend, Replace, BertNormalizer, ByteLevel, Sequence)");
}

}  // namespace kite
