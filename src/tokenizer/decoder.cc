// Decoders (see decoder.h).
#include "tokenizer/decoder.h"

#include "tokenizer/json_fields.h"
#include "tokenizer/pattern.h"
#include "tokenizer/unicode.h"

namespace kite {
namespace {

using tokenizer_json::Json;

// Bytes of the GPT-2 alphabet back to raw bytes; a token with a character outside the alphabet
// contributes its own UTF-8 bytes. The whole sequence is then decoded lossily.
class ByteLevelDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const std::string& token : tokens) {
      const size_t mark = bytes.size();
      size_t position = 0;
      bool all_mapped = true;
      while (position < token.size()) {
        const int byte = unicode::character_to_byte(unicode::next_character(token, position));
        if (byte < 0) {
          all_mapped = false;
          break;
        }
        bytes.push_back(char(byte));
      }
      if (!all_mapped) {
        bytes.resize(mark);
        bytes += token;
      }
    }
    tokens.assign(1, unicode::sanitize_utf8(bytes));
  }
};

class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(char32_t replacement, bool strip_first)
      : replacement_(replacement), strip_first_(strip_first) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string out;
      out.reserve(tokens[i].size());
      size_t position = 0;
      while (position < tokens[i].size()) {
        const char32_t c = unicode::next_character(tokens[i], position);
        if (c != replacement_) {
          unicode::append_utf8(out, c);
        } else if (!(i == 0 && strip_first_)) {
          out.push_back(' ');
        }
      }
      tokens[i] = std::move(out);
    }
  }

 private:
  char32_t replacement_;
  bool strip_first_;
};

class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(Pattern pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& token : tokens) token = pattern_.replace_all(token, content_);
  }

 private:
  Pattern pattern_;
  std::string content_;
};

// "<0xAB>" tokens become bytes; each run of them becomes text, or one U+FFFD per byte when the
// run is not valid UTF-8.
class ByteFallbackDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string pending;
    const auto flush = [&] {
      if (pending.empty()) return;
      if (unicode::is_valid_utf8(pending)) {
        out.push_back(pending);
      } else {
        for (size_t i = 0; i < pending.size(); ++i) out.push_back("\xEF\xBF\xBD");
      }
      pending.clear();
    };
    for (std::string& token : tokens) {
      const int byte = byte_of_token(token);
      if (byte >= 0) {
        pending.push_back(char(byte));
      } else {
        flush();
        out.push_back(std::move(token));
      }
    }
    flush();
    tokens = std::move(out);
  }
  bool joins_byte_tokens() const override { return true; }

  // The byte a "<0xNN>" token stands for, or -1.
  static int byte_of_token(std::string_view token) {
    if (token.size() != 6 || !token.starts_with("<0x") || token.back() != '>') return -1;
    return parse_hex_byte(token.substr(3, 2));
  }

 private:
  // Rust's u8::from_str_radix(text, 16): an optional '+' then hex digits.
  static int parse_hex_byte(std::string_view text) {
    if (!text.empty() && text[0] == '+') text.remove_prefix(1);
    if (text.empty()) return -1;
    int value = 0;
    for (char c : text) {
      int digit;
      if (c >= '0' && c <= '9') {
        digit = c - '0';
      } else if (c >= 'a' && c <= 'f') {
        digit = c - 'a' + 10;
      } else if (c >= 'A' && c <= 'F') {
        digit = c - 'A' + 10;
      } else {
        return -1;
      }
      value = value * 16 + digit;
    }
    return value;
  }
};

class FuseDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string joined;
    for (const std::string& token : tokens) joined += token;
    tokens.assign(1, std::move(joined));
  }
};

// Removes up to `start` leading and `stop` trailing `content` characters from every token.
class StripDecoder final : public Decoder {
 public:
  StripDecoder(char32_t content, size_t start, size_t stop)
      : content_(content), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::pair<size_t, char32_t>> characters;  // (byte offset, character)
    for (std::string& token : tokens) {
      characters.clear();
      size_t position = 0;
      while (position < token.size()) {
        const size_t offset = position;
        characters.emplace_back(offset, unicode::next_character(token, position));
      }
      size_t start_cut = 0;
      for (size_t i = 0; i < start_ && i < characters.size(); ++i) {
        if (characters[i].second != content_) break;
        start_cut = i + 1;
      }
      size_t stop_cut = characters.size();
      for (size_t i = 0; i < stop_ && i < characters.size(); ++i) {
        const size_t index = characters.size() - i - 1;
        if (characters[index].second != content_) break;
        stop_cut = index;
      }
      // The Rust library panics when the cuts cross; an empty token is the sane reading.
      if (stop_cut <= start_cut) {
        token.clear();
        continue;
      }
      const size_t begin = characters[start_cut].first;
      const size_t end = stop_cut < characters.size() ? characters[stop_cut].first : token.size();
      token = token.substr(begin, end - begin);
    }
  }

 private:
  char32_t content_;
  size_t start_, stop_;
};

class WordPieceDecoder final : public Decoder {
 public:
  WordPieceDecoder(std::string prefix, bool cleanup)
      : prefix_(std::move(prefix)), cleanup_(cleanup) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string& token = tokens[i];
      if (i != 0) {
        if (token.starts_with(prefix_)) {
          token.erase(0, prefix_.size());
        } else {
          token = " " + token;
        }
      }
      if (cleanup_) token = cleanup(token);
    }
  }

 private:
  static std::string replace_all(const std::string& text, std::string_view from,
                                 std::string_view to) {
    std::string out;
    size_t previous = 0, found;
    while ((found = text.find(from, previous)) != std::string::npos) {
      out.append(text, previous, found - previous);
      out.append(to);
      previous = found + from.size();
    }
    out.append(text, previous);
    return out;
  }
  static std::string cleanup(std::string text) {
    static const std::pair<std::string_view, std::string_view> kRules[] = {
        {" .", "."},   {" ?", "?"},     {" !", "!"},    {" ,", ","},
        {" ' ", "'"},  {" n't", "n't"}, {" 'm", "'m"},  {" do not", " don't"},
        {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
    for (const auto& [from, to] : kRules) text = replace_all(text, from, to);
    return text;
  }

  std::string prefix_;
  bool cleanup_;
};

// Word-final suffix (e.g. "</w>") becomes a space, except on the last token.
class BpeSuffixDecoder final : public Decoder {
 public:
  explicit BpeSuffixDecoder(std::string suffix) : suffix_(std::move(suffix)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    if (suffix_.empty()) return;
    for (size_t i = 0; i < tokens.size(); ++i) {
      const std::string replacement = i + 1 == tokens.size() ? "" : " ";
      std::string& token = tokens[i];
      std::string out;
      size_t previous = 0, found;
      while ((found = token.find(suffix_, previous)) != std::string::npos) {
        out.append(token, previous, found - previous);
        out += replacement;
        previous = found + suffix_.size();
      }
      out.append(token, previous);
      token = std::move(out);
    }
  }
  bool treats_last_token_apart() const override { return true; }

 private:
  std::string suffix_;
};

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps)
      : steps_(std::move(steps)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& step : steps_) step->decode_chain(tokens);
  }
  bool joins_byte_tokens() const override {
    for (const auto& step : steps_) {
      if (step->joins_byte_tokens()) return true;
    }
    return false;
  }
  bool treats_last_token_apart() const override {
    for (const auto& step : steps_) {
      if (step->treats_last_token_apart()) return true;
    }
    return false;
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

template <typename T, typename... Args>
std::unique_ptr<Decoder> make(Args&&... args) {
  return std::make_unique<T>(std::forward<Args>(args)...);
}

Result<char32_t> single_character(const Json& spec, std::string_view key, std::string_view where) {
  KITE_ASSIGN_OR_RETURN(const std::string text, tokenizer_json::string_field(spec, key, where));
  size_t position = 0;
  const char32_t c = text.empty() ? 0 : unicode::next_character(text, position);
  if (text.empty() || position != text.size()) {
    return tokenizer_json::field_error(where, key, "must be a single character");
  }
  return c;
}

Result<size_t> count_field(const Json& spec, std::string_view key, std::string_view where) {
  KITE_ASSIGN_OR_RETURN(const int64_t value, tokenizer_json::integer_field(spec, key, where, 0));
  if (value < 0) return tokenizer_json::field_error(where, key, "must not be negative");
  return size_t(value);
}

}  // namespace

bool is_byte_fallback_token(std::string_view token) {
  return ByteFallbackDecoder::byte_of_token(token) >= 0;
}

Result<std::unique_ptr<Decoder>> parse_decoder(const nlohmann::json& spec) {
  const tokenizer_json::NestingGuard nesting;
  KITE_RETURN_IF_ERROR(nesting.check("decoder"));
  using namespace tokenizer_json;
  KITE_ASSIGN_OR_RETURN(const std::string type, component_type(spec, "decoder"));
  const std::string where = "decoder " + type;
  if (type == "ByteLevel") return make<ByteLevelDecoder>();
  if (type == "ByteFallback") return make<ByteFallbackDecoder>();
  if (type == "Fuse") return make<FuseDecoder>();
  if (type == "Metaspace") {
    KITE_ASSIGN_OR_RETURN(const char32_t replacement, single_character(spec, "replacement", where));
    KITE_ASSIGN_OR_RETURN(auto scheme, optional_string_field(spec, "prepend_scheme", where));
    KITE_ASSIGN_OR_RETURN(const bool add_prefix_space,
                          bool_field(spec, "add_prefix_space", where, true));
    if (scheme && *scheme != "always" && *scheme != "first" && *scheme != "never") {
      return field_error(where, "prepend_scheme", "must be \"always\", \"first\" or \"never\"");
    }
    const bool never = scheme ? *scheme == "never" : !add_prefix_space;
    if (!add_prefix_space && scheme && *scheme != "never") {
      return corrupt(where + ": add_prefix_space false contradicts prepend_scheme " +
                     unicode::quoted(*scheme));
    }
    return make<MetaspaceDecoder>(replacement, !(never || !add_prefix_space));
  }
  if (type == "Replace") {
    KITE_ASSIGN_OR_RETURN(const Json* pattern_spec, required_field(spec, "pattern", where));
    KITE_ASSIGN_OR_RETURN(Pattern pattern, Pattern::from_json(*pattern_spec, where));
    KITE_ASSIGN_OR_RETURN(std::string content, string_field(spec, "content", where));
    return make<ReplaceDecoder>(std::move(pattern), std::move(content));
  }
  if (type == "Strip") {
    KITE_ASSIGN_OR_RETURN(const char32_t content, single_character(spec, "content", where));
    KITE_ASSIGN_OR_RETURN(const size_t start, count_field(spec, "start", where));
    KITE_ASSIGN_OR_RETURN(const size_t stop, count_field(spec, "stop", where));
    return make<StripDecoder>(content, start, stop);
  }
  if (type == "WordPiece") {
    KITE_ASSIGN_OR_RETURN(auto prefix, optional_string_field(spec, "prefix", where));
    KITE_ASSIGN_OR_RETURN(const bool cleanup, bool_field(spec, "cleanup", where, true));
    return make<WordPieceDecoder>(prefix.value_or("##"), cleanup);
  }
  if (type == "BPEDecoder") {
    KITE_ASSIGN_OR_RETURN(auto suffix, optional_string_field(spec, "suffix", where));
    return make<BpeSuffixDecoder>(suffix.value_or("</w>"));
  }
  if (type == "Sequence") {
    KITE_ASSIGN_OR_RETURN(
        auto steps, parse_component_list<Decoder>(spec, "decoders", where, [](const Json& item) {
          return parse_decoder(item);
        }));
    return make<SequenceDecoder>(std::move(steps));
  }
  return unsupported("decoder type " + unicode::quoted(type) +
                     " is not supported (supported: ByteLevel, Metaspace, Replace, ByteFallback, "
                     "Fuse, Strip, WordPiece, BPEDecoder, Sequence)");
}

}  // namespace kite
