// A Jinja2 interpreter for chat templates. The source is lexed as jinja2's lexer does with
// trim_blocks and lstrip_blocks (whitespace control is applied there, to the text tokens), parsed
// with jinja2's grammar, and evaluated over JSON values with Python's semantics: str() and repr(),
// int and float arithmetic, strings indexed by code point, and jinja2's undefined values (printed
// as nothing, an error when used).
//
// Supported: {{ }}, {# #}, "-" and "+" whitespace control; if/elif/else; for (several targets, an
// `if` filter, else, loop.index/index0/revindex/revindex0/first/last/length/previtem/nextitem);
// set (several targets, namespace attributes, the block form); macro; break and continue;
// transformers' generation tag. Literals, lists, dicts, + - * / // % **, comparisons (chained),
// and/or/not, in/not in, ~, `a if b else c`, attributes, items, slices, the builtins
// raise_exception, strftime_now, namespace, range and dict, and the filters, tests and methods
// listed in kFilters, kTests and Renderer::method. Not supported: {% raw %}, call, filter, include,
// import, extends, recursive loops, *args, `%` string formatting. Tuples are lists.
#include "tokenizer/chat_template.h"

#include <utf8proc.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <map>
#include <unordered_map>
#include <vector>

#include "tokenizer/unicode.h"

namespace kite {
namespace {

using Json = nlohmann::ordered_json;

// Templates come from model files and conversations from requests: neither is trusted. These
// bound the stack, time and memory that one parse or render may take.
constexpr int kMaxParseNesting = 100;         // parser recursion: nested blocks and brackets
constexpr int kMaxExpressionDepth = 128;      // an expression tree's depth (a + b + ... chains)
constexpr int kMaxRenderDepth = 500;          // evaluation recursion, macro calls included
constexpr int kMaxDataDepth = 200;            // nesting of data that is copied or printed
constexpr int64_t kMaxSteps = 1'000'000;      // loop iterations and macro calls in one render
constexpr size_t kMaxStringBytes = 32 << 20;  // the output, and any string made on the way
constexpr size_t kMaxValueBytes = 64 << 20;   // a list or dict the template makes (roughly)

// Errors inside the interpreter are thrown, and become a Status with the line at the API
// boundary: nearly every step of an evaluation can fail, and a Result at each would double it.
struct TemplateError {
  StatusCode code;
  std::string message;
};

[[noreturn]] void fail(std::string message, StatusCode code = StatusCode::kInvalidArgument) {
  throw TemplateError{code, std::move(message)};
}
[[noreturn]] void fail_limit(const std::string& what) {
  fail(what + " (a limit of Kite's chat templates)", StatusCode::kOutOfRange);
}
[[noreturn]] void fail_unsupported(const std::string& what) {
  fail(what + " is not supported in Kite's chat templates", StatusCode::kUnsupported);
}
void check_size(size_t bytes) {
  if (bytes > kMaxStringBytes) fail_limit("a string past 32 MiB");
}

// ---- Python's str over UTF-8. Strings are valid UTF-8 (nlohmann's parser and ChatTemplate::parse
// see to it); a stray byte would count as one character, and is never read past.

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

enum class Side { kLeft, kRight, kBoth };

// str.strip(chars), lstrip(chars) and rstrip(chars); null `chars` strips whitespace.
std::string strip(std::string_view text, Side side, const std::string* chars = nullptr) {
  const std::u32string characters = decode(text);
  const std::u32string set = chars ? decode(*chars) : U"";
  auto strippable = [&](char32_t c) { return chars ? set.find(c) != set.npos : is_space(c); };
  size_t begin = 0;
  size_t end = characters.size();
  while (side != Side::kRight && begin < end && strippable(characters[begin])) ++begin;
  while (side != Side::kLeft && end > begin && strippable(characters[end - 1])) --end;
  return encode(std::u32string_view(characters).substr(begin, end - begin));
}

enum class Case { kUpper, kLower, kCapitalize, kTitle, kTitleWords };

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
    return out + digits[0] + (size > 1 ? "." + digits.substr(1) : "") + text;
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

// The arguments of json.dumps that transformers' tojson filter passes on.
struct JsonFormat {
  std::optional<std::string> indent;  // per level; none writes one line
  std::string item_separator = ", ";
  std::string key_separator = ": ";
  bool sort_keys = false;
  bool ensure_ascii = false;
};

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
void append_value(std::string& out, const Json& value, const JsonFormat* json, int depth = 0) {
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
    std::string newline;  // with an indent: a newline and the next level's indentation
    for (int i = 0; json && json->indent && i <= depth; ++i) newline += *json->indent;
    if (json && json->indent) newline.insert(0, "\n");
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

// ---- Lexer.

enum class TokenKind : uint8_t {
  kText,
  kBlockBegin,
  kBlockEnd,
  kVariableBegin,
  kVariableEnd,
  kName,
  kString,
  kInteger,
  kFloat,
  kOperator,
  kEnd,
};

struct Token {
  TokenKind kind;
  std::string text;  // kText, kString: the text; else as written ("%}" for kBlockEnd)
  int line = 0;
};

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
bool is_name_char(char c) {
  return ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') || c == '_' || is_digit(c);
}
bool is_one_of(char c, std::string_view set) {
  return c != 0 && set.find(c) != set.npos;
}

// Splits a template into text and tag tokens as jinja2's lexer does, and applies its whitespace
// control to the text: "{%-" and "-%}" strip all whitespace on their side, trim_blocks drops the
// newline after a block or comment tag, lstrip_blocks the indentation before one.
class Lexer {
 public:
  explicit Lexer(std::string_view source) {
    // jinja2 reads "\r\n" and "\r" as "\n", and drops one newline at the end of the template.
    for (size_t i = 0; i < source.size(); ++i) {
      source_ += source[i] == '\r' ? '\n' : source[i];
      if (source[i] == '\r' && i + 1 < source.size() && source[i + 1] == '\n') ++i;
    }
    if (source_.ends_with('\n')) source_.pop_back();
  }

  std::vector<Token> run() {
    while (pos_ < source_.size()) {
      size_t start = source_.find('{', pos_);
      while (start != source_.npos && !is_one_of(source_[start + 1], "{%#")) {
        start = source_.find('{', start + 1);  // source_[size] is '\0'
      }
      std::string text = source_.substr(pos_, start - pos_);
      if (start == source_.npos) {
        tokens_.push_back({TokenKind::kText, std::move(text), line_});
        advance_to(source_.size());
        break;
      }
      const char kind = source_[start + 1];
      const char sign =
          source_[start + 2] == '-' || source_[start + 2] == '+' ? source_[start + 2] : 0;
      const size_t line_begin = text.rfind('\n') + 1;  // 0 without a newline
      if (sign == '-') {
        text = strip(text, Side::kRight);
      } else if (sign != '+' && kind != '{' && (line_begin > 0 || line_starting_) &&
                 line_begin < text.size() && strip(text.substr(line_begin), Side::kLeft).empty()) {
        text.resize(line_begin);  // lstrip_blocks
      }
      if (!text.empty()) tokens_.push_back({TokenKind::kText, std::move(text), line_});
      advance_to(start + 2 + (sign ? 1 : 0));
      if (kind != '#') {
        tag(kind == '%');
        continue;
      }
      const size_t end = source_.find("#}", pos_);
      if (end == source_.npos) fail("a comment without its '#}'");
      const char end_sign = end > pos_ && is_one_of(source_[end - 1], "-+") ? source_[end - 1] : 0;
      advance_to(end + 2);
      end_of_tag(end_sign, true);
    }
    tokens_.push_back({TokenKind::kEnd, "", line_});
    return std::move(tokens_);
  }

  int line() const { return line_; }

 private:
  void advance_to(size_t position) {
    line_ += static_cast<int>(std::count(source_.begin() + pos_, source_.begin() + position, '\n'));
    pos_ = position;
  }

  // The whitespace control after "%}", "}}" or "#}", or their "-" and "+" forms.
  void end_of_tag(char sign, bool trim_newline) {
    size_t end = pos_;
    for (size_t next = end;
         sign == '-' && end < source_.size() && is_space(decode_one(source_, next));) {
      end = next;
    }
    if (sign == 0 && trim_newline && source_[end] == '\n') ++end;
    line_starting_ = end > pos_ && source_[end - 1] == '\n';
    advance_to(end);
  }

  void tag(bool is_block) {
    tokens_.push_back({is_block ? TokenKind::kBlockBegin : TokenKind::kVariableBegin,
                       is_block ? "{%" : "{{", line_});
    const std::string end = is_block ? "%}" : "}}";
    std::string closers;  // of the open brackets, innermost last: the tag ends outside them
    while (true) {
      while (pos_ < source_.size() && is_one_of(source_[pos_], " \t\n\r\f\v")) advance_to(pos_ + 1);
      if (pos_ == source_.size()) fail("a tag without its '" + end + "'");
      const std::string_view rest = std::string_view(source_).substr(pos_);
      const bool signed_end =
          (rest[0] == '-' || (is_block && rest[0] == '+')) && rest.substr(1).starts_with(end);
      if (closers.empty() && (signed_end || rest.starts_with(end))) {
        advance_to(pos_ + (signed_end ? 3 : 2));
        tokens_.push_back({is_block ? TokenKind::kBlockEnd : TokenKind::kVariableEnd, end, line_});
        return end_of_tag(signed_end ? rest[0] : 0, is_block);
      }
      const auto [kind, text, length] = lex_token(rest, closers);
      tokens_.push_back({kind, text, line_});
      advance_to(pos_ + length);
    }
  }

  struct Lexeme {
    TokenKind kind;
    std::string text;
    size_t length;
  };

  Lexeme lex_token(std::string_view rest, std::string& closers) const {
    const char c = rest[0];
    size_t length = 1;
    if (is_digit(c)) {
      while (length < rest.size() && is_digit(rest[length])) ++length;
      bool is_float = false;
      if (pos_ == 0 || source_[pos_ - 1] != '.') {  // "foo.0.1" is two items, not a float
        if (length + 1 < rest.size() && rest[length] == '.' && is_digit(rest[length + 1])) {
          for (is_float = true, ++length; length < rest.size() && is_digit(rest[length]);) ++length;
        }
        size_t mark = length + 1;
        if (length < rest.size() && (rest[length] | 0x20) == 'e') {
          if (mark < rest.size() && (rest[mark] == '+' || rest[mark] == '-')) ++mark;
          for (; mark < rest.size() && is_digit(rest[mark]); ++mark)
            length = mark + 1, is_float = true;
        }
      }
      return {is_float ? TokenKind::kFloat : TokenKind::kInteger,
              std::string(rest.substr(0, length)), length};
    }
    if (is_name_char(c)) {
      while (length < rest.size() && is_name_char(rest[length])) ++length;
      return {TokenKind::kName, std::string(rest.substr(0, length)), length};
    }
    if (c == '\'' || c == '"') {
      std::string value;
      for (; length < rest.size() && rest[length] != c; ++length) {
        if (rest[length] != '\\')
          value += rest[length];
        else if (++length < rest.size())
          length = unescape(rest, length, value);
      }
      if (length >= rest.size()) fail("a string without its closing quote");
      return {TokenKind::kString, std::move(value), length + 1};
    }
    for (const std::string_view op : {"//", "**", "==", "!=", ">=", "<="}) {
      if (rest.starts_with(op)) return {TokenKind::kOperator, std::string(op), 2};
    }
    if (!is_one_of(c, "+-*/%~[](){}<>=.:|,;")) {
      fail(std::string("unexpected character '") + c + "' in a tag");
    }
    if (const size_t open = std::string_view("([{").find(c); open != std::string_view::npos) {
      closers += ")]}"[open];
    } else if (is_one_of(c, ")]}")) {
      if (closers.empty() || closers.back() != c) fail(std::string("unexpected '") + c + "'");
      closers.pop_back();
    }
    return {TokenKind::kOperator, std::string(1, c), 1};
  }

  // Python's escapes (no octal ones); rest[i] follows the backslash. Returns the escape's end.
  static size_t unescape(std::string_view rest, size_t i, std::string& value) {
    static constexpr std::string_view kNames = "\\'\"nrtabfv0";
    static constexpr std::string_view kMeanings("\\'\"\n\r\t\a\b\f\v\0", 11);
    if (const size_t simple = kNames.find(rest[i]); simple != kNames.npos)
      value += kMeanings[simple];
    const size_t digits = rest[i] == 'x' ? 2 : rest[i] == 'u' ? 4 : rest[i] == 'U' ? 8 : 0;
    if (digits == 0 && rest[i] != '\n' && kNames.find(rest[i]) == kNames.npos) {
      value += '\\';  // an unknown escape stays as written, as in Python
      value += rest[i];
    }
    if (digits == 0) return i;  // ("\\\n" is a line continuation)
    uint32_t code = 0;
    const char* begin = rest.data() + i + 1;
    const auto parsed =
        std::from_chars(begin, rest.data() + std::min(rest.size(), i + 1 + digits), code, 16);
    if (parsed.ptr != begin + digits || code > 0x10FFFF)
      fail(std::string("a bad \\") + rest[i] + " escape");
    unicode::append_utf8(value,
                         code >= 0xD800 && code <= 0xDFFF ? unicode::kReplacementCharacter : code);
    return i + digits;
  }

  std::string source_;
  size_t pos_ = 0;
  int line_ = 1;
  bool line_starting_ = true;  // the last tag ended its line (for lstrip_blocks)
  std::vector<Token> tokens_;
};

// ---- Syntax tree.

enum class Op : uint8_t {
  kLiteral,
  kName,
  kList,
  kDict,
  kAttribute,
  kItem,
  kSlice,
  kCall,
  kFilter,
  kTest,
  kNot,
  kNegate,
  kPlus,
  kAnd,
  kOr,
  kArithmetic,
  kCompare,
  kConcat,
  kConditional,
};

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  Op op;
  int line = 0;
  int depth = 1;
  std::string name;  // kName, kAttribute, kFilter, kTest: the name; kArithmetic: the operator
  std::shared_ptr<const Json> literal;  // kLiteral
  // kAttribute, kItem, kSlice, kCall, kFilter, kTest: the subject, then the key, the bounds or
  // the positional arguments; kDict: keys and values in turn; kConditional: the value, the
  // condition, the alternative. Absent operands are null.
  std::vector<ExprPtr> args;
  // kCall, kFilter, kTest: the keyword arguments; kCompare: each operator and right operand.
  std::vector<std::pair<std::string, ExprPtr>> keywords;
};

enum class StmtKind : uint8_t {
  kText,
  kOutput,
  kIf,
  kFor,
  kSet,
  kSetBlock,
  kMacro,
  kBreak,
  kContinue,
  kScope
};

struct Stmt {
  StmtKind kind;
  int line = 0;
  std::string text;                // kText: the text; kSet: a namespace attribute; kMacro: the name
  std::vector<std::string> names;  // kFor, kSet, kSetBlock: the targets; kMacro: the parameters
  // kOutput, kSet: the value; kIf: a condition per branch; kFor: the iterable and its filter;
  // kMacro: the parameters' defaults. Absent ones are null.
  std::vector<ExprPtr> exprs;
  // kIf: a body per condition, then the else body; kFor: the body, then the else body; kSetBlock,
  // kMacro, kScope: the body.
  std::vector<std::vector<Stmt>> bodies;
};

constexpr std::string_view kFilters[] = {
    "capitalize", "count",  "d",          "default", "first", "int",    "items",      "join",
    "last",       "length", "list",       "lower",   "map",   "reject", "rejectattr", "replace",
    "safe",       "select", "selectattr", "string",  "title", "tojson", "trim",       "upper"};
constexpr std::string_view kTests[] = {
    "boolean", "callable",  "defined", "divisibleby", "eq",      "equalto",  "even",     "false",
    "float",   "ge",        "gt",      "in",          "integer", "iterable", "le",       "lt",
    "mapping", "ne",        "none",    "number",      "odd",     "sameas",   "sequence", "string",
    "true",    "undefined", "==",      "!=",          "<",       "<=",       ">",        ">="};
constexpr std::string_view kFunctions[] = {"namespace", "raise_exception", "range", "strftime_now"};

template <typename Names>
bool listed(const Names& names, std::string_view name) {
  return std::find(std::begin(names), std::end(names), name) != std::end(names);
}
bool listed(std::initializer_list<std::string_view> names, std::string_view name) {
  return listed<decltype(names)>(names, name);
}

// ---- Parser: jinja2's grammar, by recursive descent.

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

  std::vector<Stmt> parse_template() { return parse_statements({}); }
  int line() const { return current().line; }

 private:
  struct Nesting {
    explicit Nesting(Parser& parser) : parser_(parser) {
      if (++parser_.nesting_ > kMaxParseNesting) fail_limit("blocks or brackets nested 100 deep");
    }
    ~Nesting() { --parser_.nesting_; }
    Parser& parser_;
  };

  const Token& current() const { return tokens_[position_]; }
  const Token& ahead() const { return tokens_[std::min(position_ + 1, tokens_.size() - 1)]; }
  void advance() { position_ = std::min(position_ + 1, tokens_.size() - 1); }
  bool at(TokenKind kind, std::string_view text) const {
    return current().kind == kind && current().text == text;
  }
  bool at_operator(std::string_view op) const { return at(TokenKind::kOperator, op); }
  bool at_name(std::string_view name) const { return at(TokenKind::kName, name); }
  bool skip(TokenKind kind, std::string_view text) { return at(kind, text) && (advance(), true); }
  bool skip_operator(std::string_view op) { return skip(TokenKind::kOperator, op); }
  std::string describe() const {
    const Token& token = current();
    if (token.kind == TokenKind::kEnd) return "the end of the template";
    return token.kind == TokenKind::kText     ? "text"
           : token.kind == TokenKind::kString ? "a string"
                                              : "'" + token.text + "'";
  }
  void expect(TokenKind kind, std::string_view text) {
    if (!skip(kind, text)) fail("expected '" + std::string(text) + "', got " + describe());
  }
  void expect_operator(std::string_view op) { expect(TokenKind::kOperator, op); }
  void expect_block_end() { expect(TokenKind::kBlockEnd, "%}"); }
  std::string expect_name() {
    if (current().kind != TokenKind::kName) fail("expected a name, got " + describe());
    std::string name = current().text;
    advance();
    return name;
  }

  static ExprPtr make(Op op, int line, std::vector<ExprPtr> args = {}, std::string name = {},
                      std::vector<std::pair<std::string, ExprPtr>> keywords = {}) {
    auto expr = std::make_unique<Expr>(
        Expr{op, line, 1, std::move(name), nullptr, std::move(args), std::move(keywords)});
    for (const ExprPtr& arg : expr->args)
      expr->depth = std::max(expr->depth, arg ? arg->depth + 1 : 1);
    for (const auto& keyword : expr->keywords)
      expr->depth = std::max(expr->depth, keyword.second->depth + 1);
    if (expr->depth > kMaxExpressionDepth) fail_limit("an expression nested 128 deep");
    return expr;
  }
  static ExprPtr literal(int line, Json value) {
    ExprPtr expr = make(Op::kLiteral, line);
    expr->literal = std::make_shared<const Json>(std::move(value));
    return expr;
  }
  template <typename... Operands>
  static std::vector<ExprPtr> operands(Operands&&... operand) {
    std::vector<ExprPtr> list;
    (list.push_back(std::forward<Operands>(operand)), ...);
    return list;
  }

  // Statements up to a block tag named in `end_tags` (the first one is the closing tag), which
  // the stream is left after; end_tag_ says which it was.
  std::vector<Stmt> parse_statements(std::initializer_list<std::string_view> end_tags) {
    Nesting nesting(*this);
    std::vector<Stmt> body;
    while (true) {
      const Token& token = current();
      if (token.kind == TokenKind::kEnd) {
        if (end_tags.size() > 0) fail("missing {% " + std::string(*end_tags.begin()) + " %}");
        return body;
      }
      advance();
      if (token.kind == TokenKind::kText) {
        body.push_back(Stmt{StmtKind::kText, token.line, token.text});
      } else if (token.kind == TokenKind::kVariableBegin) {
        body.push_back(Stmt{StmtKind::kOutput, token.line});
        body.back().exprs.push_back(parse_tuple(true));
        expect(TokenKind::kVariableEnd, "}}");
      } else {
        const int line = current().line;
        std::string tag = expect_name();
        if (listed(end_tags, tag)) {
          end_tag_ = std::move(tag);
          return body;
        }
        body.push_back(parse_statement(tag, line));
      }
    }
  }

  // The body of a block statement, up to and past its end tag.
  std::vector<Stmt> parse_body(std::initializer_list<std::string_view> end_tags) {
    std::vector<Stmt> body = parse_statements(end_tags);
    if (end_tag_ == *end_tags.begin()) expect_block_end();
    return body;
  }

  Stmt parse_statement(const std::string& tag, int line) {
    Stmt stmt{StmtKind::kText, line};
    if (tag == "if") {
      stmt.kind = StmtKind::kIf;
      do {
        stmt.exprs.push_back(parse_tuple(false));
        expect_block_end();
        stmt.bodies.push_back(parse_body({"endif", "elif", "else"}));
      } while (end_tag_ == "elif");
      if (end_tag_ == "else") expect_block_end(), stmt.bodies.push_back(parse_body({"endif"}));
    } else if (tag == "for") {
      stmt.kind = StmtKind::kFor;
      do stmt.names.push_back(expect_name());
      while (skip_operator(","));
      expect(TokenKind::kName, "in");
      stmt.exprs.push_back(parse_tuple(false));
      stmt.exprs.push_back(skip(TokenKind::kName, "if") ? parse_expression() : nullptr);
      if (at_name("recursive")) fail_unsupported("a recursive loop");
      expect_block_end();
      ++loop_depth_;
      stmt.bodies.push_back(parse_body({"endfor", "else"}));
      --loop_depth_;
      if (end_tag_ == "else") expect_block_end(), stmt.bodies.push_back(parse_body({"endfor"}));
    } else if (tag == "set") {
      stmt.kind = StmtKind::kSet;
      stmt.names.push_back(expect_name());
      if (skip_operator(".")) stmt.text = expect_name();
      while (stmt.text.empty() && skip_operator(",")) stmt.names.push_back(expect_name());
      if (skip_operator("=")) {
        stmt.exprs.push_back(parse_tuple(true));
        expect_block_end();
      } else {
        if (stmt.names.size() > 1 || !stmt.text.empty()) fail("expected '=', got " + describe());
        expect_block_end();
        stmt.kind = StmtKind::kSetBlock;
        stmt.bodies.push_back(parse_body({"endset"}));
      }
    } else if (tag == "macro") {
      stmt.kind = StmtKind::kMacro;
      stmt.text = expect_name();
      expect_operator("(");
      while (!skip_operator(")")) {
        if (!stmt.names.empty()) expect_operator(",");
        stmt.names.push_back(expect_name());
        stmt.exprs.push_back(skip_operator("=") ? parse_expression() : nullptr);
      }
      expect_block_end();
      const int loop_depth = std::exchange(loop_depth_, 0);
      stmt.bodies.push_back(parse_body({"endmacro"}));
      loop_depth_ = loop_depth;
    } else if (tag == "break" || tag == "continue") {
      if (loop_depth_ == 0) fail("'" + tag + "' outside a loop");
      stmt.kind = tag == "break" ? StmtKind::kBreak : StmtKind::kContinue;
      expect_block_end();
    } else if (tag == "generation") {  // transformers marks the assistant's text with it
      stmt.kind = StmtKind::kScope;
      expect_block_end();
      stmt.bodies.push_back(parse_body({"endgeneration"}));
    } else if (listed({"raw", "call", "filter", "with", "include", "import", "from", "extends",
                       "block", "do"},
                      tag)) {
      fail_unsupported("the '" + tag + "' tag");
    } else {
      fail("unknown tag '" + tag + "'");
    }
    return stmt;
  }

  // An expression, or several separated by commas: a tuple (a list here).
  ExprPtr parse_tuple(bool with_condition) {
    const int line = current().line;
    std::vector<ExprPtr> items;
    while (items.empty() || skip_operator(",")) {
      const TokenKind kind = current().kind;
      if (kind == TokenKind::kVariableEnd || kind == TokenKind::kBlockEnd || at_operator(")"))
        break;
      items.push_back(with_condition ? parse_expression() : parse_or());
      if (items.size() == 1 && !at_operator(",")) return std::move(items[0]);
    }
    if (items.empty() && !at_operator(")")) fail("expected an expression, got " + describe());
    return make(Op::kList, line, std::move(items));
  }

  ExprPtr parse_expression() {
    Nesting nesting(*this);
    ExprPtr value = parse_or();
    while (at_name("if")) {
      const int line = current().line;
      advance();
      ExprPtr condition = parse_or();
      ExprPtr alternative = skip(TokenKind::kName, "else") ? parse_expression() : nullptr;
      value = make(Op::kConditional, line,
                   operands(std::move(value), std::move(condition), std::move(alternative)));
    }
    return value;
  }

  // Left-associative binary operators over the operands `next` parses.
  ExprPtr parse_binary(Op op, std::initializer_list<std::string_view> operators,
                       ExprPtr (Parser::*next)()) {
    ExprPtr left = (this->*next)();
    while (true) {
      const Token& token = current();
      const bool is_name = op == Op::kAnd || op == Op::kOr;
      if (token.kind != (is_name ? TokenKind::kName : TokenKind::kOperator) ||
          !listed(operators, token.text)) {
        return left;
      }
      std::string name = token.text;
      advance();
      left = make(op, token.line, operands(std::move(left), (this->*next)()), std::move(name));
    }
  }
  ExprPtr parse_or() { return parse_binary(Op::kOr, {"or"}, &Parser::parse_and); }
  ExprPtr parse_and() { return parse_binary(Op::kAnd, {"and"}, &Parser::parse_not); }
  ExprPtr parse_not() {
    if (!at_name("not")) return parse_compare();
    Nesting nesting(*this);
    const int line = current().line;
    advance();
    return make(Op::kNot, line, operands(parse_not()));
  }
  ExprPtr parse_compare() {
    const int line = current().line;
    ExprPtr left = parse_sum();
    std::vector<std::pair<std::string, ExprPtr>> comparisons;
    while (true) {
      const bool not_in =
          at_name("not") && ahead().kind == TokenKind::kName && ahead().text == "in";
      const bool is_operator = current().kind == TokenKind::kOperator &&
                               listed({"==", "!=", "<", "<=", ">", ">="}, current().text);
      if (!not_in && !is_operator && !at_name("in")) break;
      std::string op = not_in ? "not in" : current().text;
      advance();
      if (not_in) advance();
      comparisons.emplace_back(std::move(op), parse_sum());
    }
    if (comparisons.empty()) return left;
    return make(Op::kCompare, line, operands(std::move(left)), {}, std::move(comparisons));
  }
  ExprPtr parse_sum() { return parse_binary(Op::kArithmetic, {"+", "-"}, &Parser::parse_concat); }
  ExprPtr parse_concat() {
    const int line = current().line;
    std::vector<ExprPtr> parts = operands(parse_product());
    while (skip_operator("~")) parts.push_back(parse_product());
    return parts.size() == 1 ? std::move(parts[0]) : make(Op::kConcat, line, std::move(parts));
  }
  ExprPtr parse_product() {
    return parse_binary(Op::kArithmetic, {"*", "/", "//", "%"}, &Parser::parse_power);
  }
  ExprPtr parse_power() { return parse_binary(Op::kArithmetic, {"**"}, &Parser::parse_unary); }

  // A unary operation, a primary with its postfixes and (with `with_filters`) filters and tests.
  ExprPtr parse_unary() { return parse_unary_of(true); }
  ExprPtr parse_unary_of(bool with_filters) {
    Nesting nesting(*this);
    const int line = current().line;
    ExprPtr node;
    if (at_operator("-") || at_operator("+")) {
      const Op op = at_operator("-") ? Op::kNegate : Op::kPlus;
      advance();
      node = make(op, line, operands(parse_unary_of(false)));
    } else {
      node = parse_primary();
    }
    node = parse_postfix(std::move(node));
    while (with_filters && (at_operator("|") || at_name("is") || at_operator("("))) {
      if (at_operator("(")) {
        node = parse_arguments(Op::kCall, current().line, std::move(node), {});
        continue;
      }
      const bool is_filter = current().text == "|";
      advance();
      node = is_filter ? parse_filter(std::move(node)) : parse_test(std::move(node));
    }
    return node;
  }

  ExprPtr parse_primary() {
    const Token token = current();
    advance();
    if (token.kind == TokenKind::kName) {
      if (listed({"true", "True", "false", "False"}, token.text))
        return literal(token.line, token.text[0] % 32 == 't' % 32);
      if (token.text == "none" || token.text == "None") return literal(token.line, nullptr);
      return make(Op::kName, token.line, {}, token.text);
    }
    if (token.kind == TokenKind::kString) {
      std::string text = token.text;
      for (; current().kind == TokenKind::kString; advance()) text += current().text;
      return literal(token.line, std::move(text));
    }
    if (token.kind == TokenKind::kInteger) {
      int64_t value = 0;
      const auto parsed =
          std::from_chars(token.text.data(), token.text.data() + token.text.size(), value);
      if (parsed.ec != std::errc()) fail_limit("the integer " + token.text + " (64 bits at most)");
      return literal(token.line, value);
    }
    if (token.kind == TokenKind::kFloat)
      return literal(token.line, std::strtod(token.text.c_str(), nullptr));
    if (token.kind == TokenKind::kOperator && token.text == "(") {
      ExprPtr inner = parse_tuple(true);
      expect_operator(")");
      return inner;
    }
    if (token.kind != TokenKind::kOperator || (token.text != "[" && token.text != "{")) {
      if (token.kind != TokenKind::kEnd) --position_;  // back to the token, for the message
      fail("unexpected " + describe());
    }
    const bool is_list = token.text == "[";
    const char* close = is_list ? "]" : "}";
    std::vector<ExprPtr> items;
    while (!skip_operator(close)) {
      if (!items.empty() && (expect_operator(","), skip_operator(close)))
        break;  // a trailing comma
      items.push_back(parse_expression());
      if (is_list) continue;
      expect_operator(":");
      items.push_back(parse_expression());
    }
    return make(is_list ? Op::kList : Op::kDict, token.line, std::move(items));
  }

  ExprPtr parse_postfix(ExprPtr node) {
    while (true) {
      const int line = current().line;
      if (skip_operator(".")) {
        node = current().kind == TokenKind::kInteger
                   ? make(Op::kItem, line, operands(std::move(node), parse_primary()))
                   : make(Op::kAttribute, line, operands(std::move(node)), expect_name());
      } else if (skip_operator("[")) {
        ExprPtr start = at_operator(":") ? nullptr : parse_expression();
        if (skip_operator(":")) {
          ExprPtr stop = at_operator(":") || at_operator("]") ? nullptr : parse_expression();
          ExprPtr step = skip_operator(":") && !at_operator("]") ? parse_expression() : nullptr;
          node =
              make(Op::kSlice, line,
                   operands(std::move(node), std::move(start), std::move(stop), std::move(step)));
        } else {
          node = make(Op::kItem, line, operands(std::move(node), std::move(start)));
        }
        expect_operator("]");
      } else if (at_operator("(")) {
        node = parse_arguments(Op::kCall, line, std::move(node), {});
      } else {
        return node;
      }
    }
  }

  // "(a, b, key=c)" after a callee, filter or test: its arguments, after `subject`.
  ExprPtr parse_arguments(Op op, int line, ExprPtr subject, std::string name) {
    std::vector<ExprPtr> args = operands(std::move(subject));
    std::vector<std::pair<std::string, ExprPtr>> keywords;
    for (bool open = skip_operator("("); open && !skip_operator(")");) {
      if ((args.size() > 1 || !keywords.empty()) && (expect_operator(","), skip_operator(")")))
        break;  // a trailing comma
      if (at_operator("*") || at_operator("**")) fail_unsupported("*args or **kwargs");
      if (current().kind == TokenKind::kName && ahead().kind == TokenKind::kOperator &&
          ahead().text == "=") {
        std::string keyword = expect_name();
        advance();
        keywords.emplace_back(std::move(keyword), parse_expression());
      } else {
        if (!keywords.empty()) fail("a positional argument after a keyword argument");
        args.push_back(parse_expression());
      }
    }
    return make(op, line, std::move(args), std::move(name), std::move(keywords));
  }
  ExprPtr parse_filter(ExprPtr subject) {
    const int line = current().line;
    std::string name = expect_name();
    if (!listed(kFilters, name)) fail_unsupported("the filter '" + name + "'");
    return parse_arguments(Op::kFilter, line, std::move(subject), std::move(name));
  }
  ExprPtr parse_test(ExprPtr subject) {  // after "is"
    const int line = current().line;
    const bool negated = skip(TokenKind::kName, "not");
    std::string name = expect_name();
    if (!listed(kTests, name)) fail_unsupported("the test '" + name + "'");
    if (at_name("is")) fail("tests cannot be chained with 'is'");
    const TokenKind kind = current().kind;
    ExprPtr test;
    if (kind == TokenKind::kString || kind == TokenKind::kInteger || kind == TokenKind::kFloat ||
        at_operator("[") || at_operator("{") ||
        (kind == TokenKind::kName && !listed({"else", "or", "and"}, current().text))) {
      // An argument without parentheses: "x is divisibleby 3".
      test = make(Op::kTest, line, operands(std::move(subject), parse_postfix(parse_primary())),
                  std::move(name));
    } else {
      test = parse_arguments(Op::kTest, line, std::move(subject), std::move(name));
    }
    return negated ? make(Op::kNot, line, operands(std::move(test))) : std::move(test);
  }

  std::vector<Token> tokens_;
  size_t position_ = 0;
  std::string end_tag_;  // the tag that ended the last parse_statements
  int nesting_ = 0;
  int loop_depth_ = 0;  // loops around the statement being parsed, for break and continue
};

// ---- Values.

struct Value;
using Namespace = std::map<std::string, Value>;

// A template value: data (JSON, shared and never changed: the sandbox transformers uses forbids
// changing lists and dicts, so an element can share its parent's storage), or one of jinja2's
// other kinds.
struct Value {
  enum class Kind : uint8_t { kUndefined, kData, kNamespace, kMacro, kFunction };
  Kind kind = Kind::kUndefined;
  std::shared_ptr<const Json> data;       // kData
  std::shared_ptr<Namespace> attributes;  // kNamespace: namespace() and loop
  const Stmt* macro = nullptr;            // kMacro
  std::string name;  // kFunction: the builtin; kUndefined: what was missing, for the error

  static Value of(Json json) {
    return {Kind::kData, std::make_shared<const Json>(std::move(json))};
  }
  // `json` for the length of a render, not owned.
  static Value borrowed(const Json& json) {
    return {Kind::kData, std::shared_ptr<const Json>(std::shared_ptr<const Json>(), &json)};
  }
  static Value element(const Value& parent, const Json& child) {
    return {Kind::kData, std::shared_ptr<const Json>(parent.data, &child)};
  }
  static Value undefined(std::string why) { return {Kind::kUndefined, {}, {}, {}, std::move(why)}; }
  static Value new_namespace() { return {Kind::kNamespace, {}, std::make_shared<Namespace>()}; }

  bool defined() const { return kind != Kind::kUndefined; }
  const Json* json() const {
    return kind == Kind::kData ? data.get() : nullptr;
  }  // null if no data
};

bool is_integer(const Json& json) {
  return json.is_number_integer() || json.is_boolean();
}  // as bool is in Python
bool is_numeric(const Json& json) {
  return json.is_number() || json.is_boolean();
}
int64_t to_int64(const Json& json) {
  return json.is_boolean() ? json.get<bool>() : json.get<int64_t>();
}
double to_double(const Json& json) {
  return json.is_boolean() ? json.get<bool>() : json.get<double>();
}

std::string type_name(const Value& value) {
  const Json* json = value.json();
  if (json == nullptr) {
    static constexpr const char* kNames[] = {"Undefined", "", "Namespace", "Macro",
                                             "builtin_function"};
    return kNames[static_cast<int>(value.kind)];
  }
  if (json->is_null() || json->is_boolean()) return json->is_null() ? "NoneType" : "bool";
  if (json->is_number()) return json->is_number_integer() ? "int" : "float";
  return json->is_string() ? "str" : json->is_array() ? "list" : "dict";
}

bool truthy(const Value& value) {
  const Json* json = value.json();
  if (json == nullptr) return value.defined();
  if (is_numeric(*json)) return to_double(*json) != 0;
  if (json->is_string()) return !json->get_ref<const std::string&>().empty();
  return !json->is_null() && !json->empty();  // nlohmann's empty() holds for containers only
}

std::string to_string(const Value& value) {  // str(value), as {{ }} prints it
  if (const Json* json = value.json()) return python_str(*json);
  if (value.kind == Value::Kind::kNamespace) return "<Namespace>";
  if (value.kind == Value::Kind::kMacro) return "<Macro '" + value.macro->text + "'>";
  return value.defined() ? "<built-in function " + value.name + ">" : "";
}

// Roughly the bytes `json` takes, counted until they pass `limit`.
size_t weight(const Json& json, size_t limit, int depth = 0) {
  if (depth > kMaxDataDepth) fail_limit("data nested more than 200 deep");
  size_t total = 16 + (json.is_string() ? json.get_ref<const std::string&>().size() : 0);
  for (auto it = json.begin(); json.is_structured() && it != json.end() && total <= limit; ++it) {
    total += weight(*it, limit, depth + 1) + (json.is_object() ? it.key().size() : 0);
  }
  return total;
}

// A call's arguments, bound to parameters as Python binds them.
struct Arguments {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keywords;

  // One entry per parameter of `function`, null where no argument was given.
  std::vector<const Value*> bind(const std::string& function,
                                 std::initializer_list<std::string_view> names) const {
    if (positional.size() > names.size()) {
      fail(function + "() takes at most " + std::to_string(names.size()) + " arguments (" +
           std::to_string(positional.size()) + " given)");
    }
    std::vector<const Value*> bound(names.size(), nullptr);
    for (size_t i = 0; i < positional.size(); ++i) bound[i] = &positional[i];
    for (const auto& [name, value] : keywords) {
      const auto found = std::find(names.begin(), names.end(), name);
      if (found == names.end())
        fail(function + "() got an unexpected keyword argument '" + name + "'");
      bound[found - names.begin()] = &value;
    }
    return bound;
  }
};

// ---- Evaluation.

using Scope = std::unordered_map<std::string, Value>;

class Renderer {
 public:
  explicit Renderer(const ChatTemplateContext& context) : context_(context) {}

  std::string run(const std::vector<Stmt>& program, Scope& globals) {
    std::string output;
    out_ = &output;
    scopes_ = {&globals};
    exec(program);
    return output;
  }
  int line() const { return line_; }

 private:
  enum class Flow { kNext, kBreak, kContinue };

  struct Frame {
    explicit Frame(Renderer& renderer) : renderer_(renderer) {
      if (++renderer_.depth_ > kMaxRenderDepth) fail_limit("evaluation nested 500 deep");
    }
    ~Frame() { --renderer_.depth_; }
    Renderer& renderer_;
  };

  void count_step() {
    if (++steps_ > kMaxSteps) fail_limit("more than 1000000 loop iterations and macro calls");
  }

  // The data of `value`; an undefined value fails with what made it undefined.
  static const Json& data(const Value& value) {
    if (const Json* json = value.json()) return *json;
    if (!value.defined()) fail(value.name);
    fail("expected a value, got a " + type_name(value));
  }
  static const std::string& string(const Value& value, const std::string& what) {
    const Json& json = data(value);
    if (!json.is_string()) fail(what + " must be a string, not " + type_name(value));
    return json.get_ref<const std::string&>();
  }
  static int64_t integer(const Value& value, const std::string& what) {
    const Json& json = data(value);
    if (!is_integer(json)) fail(what + " must be an integer, not " + type_name(value));
    return to_int64(json);
  }
  static const Value& required(const std::vector<const Value*>& bound, size_t index) {
    if (bound[index] == nullptr) fail("a call is missing an argument");
    return *bound[index];
  }
  static bool is_none(const Value* value) {
    return !value || (value->json() && value->json()->is_null());
  }

  // A copy of `value`'s data for a list or dict being made, charged to its allowance `budget`: a
  // template could double a list at each loop iteration.
  static Json copy_into(const Value& value, size_t& budget) {
    const Json& json = data(value);
    const size_t size = weight(json, budget);
    if (size > budget) fail_limit("a list or dict past 64 MiB");
    budget -= size;
    return json;
  }

  Value lookup(const std::string& name) const {
    for (auto scope = scopes_.rbegin(); scope != scopes_.rend(); ++scope) {
      if (const auto found = (*scope)->find(name); found != (*scope)->end()) return found->second;
    }
    if (listed(kFunctions, name)) return {Value::Kind::kFunction, {}, {}, {}, name};
    return Value::undefined("'" + name + "' is undefined");
  }

  static std::vector<Value> iterate(const Value& value) {
    std::vector<Value> items;
    if (!value.defined()) return items;  // jinja2's undefined iterates as empty
    const Json& json = data(value);
    if (json.is_object()) {
      for (auto it = json.begin(); it != json.end(); ++it) items.push_back(Value::of(it.key()));
    } else if (json.is_string()) {
      for (const char32_t c : decode(json.get_ref<const std::string&>()))
        items.push_back(Value::of(encode({&c, 1})));
    } else if (json.is_array()) {
      for (const Json& element : json) items.push_back(Value::element(value, element));
    } else {
      fail("'" + type_name(value) + "' object is not iterable");
    }
    return items;
  }

  static Value attribute(const Value& subject, const std::string& name) {
    if (subject.kind == Value::Kind::kNamespace) {
      const auto found = subject.attributes->find(name);
      if (found != subject.attributes->end()) return found->second;
    } else if (const Json& json = data(subject); json.is_object()) {
      if (const auto found = json.find(name); found != json.end())
        return Value::element(subject, *found);
    }
    return Value::undefined("'" + type_name(subject) + " object' has no attribute '" + name + "'");
  }

  static Value item(const Value& subject, const Value& key) {
    const Json* index = key.json();
    if (index && index->is_string()) return attribute(subject, index->get<std::string>());
    const Json& json = data(subject);
    if ((json.is_array() || json.is_string()) && index && is_integer(*index)) {
      const std::u32string characters =
          json.is_string() ? decode(json.get_ref<const std::string&>()) : U"";
      const auto size = static_cast<int64_t>(json.is_string() ? characters.size() : json.size());
      const int64_t position = to_int64(*index) < 0 ? to_int64(*index) + size : to_int64(*index);
      if (position >= 0 && position < size && json.is_array())
        return Value::element(subject, json[static_cast<size_t>(position)]);
      if (position >= 0 && position < size) return Value::of(encode({&characters[position], 1}));
    }
    return Value::undefined("'" + type_name(subject) + " object' has no element " + to_string(key));
  }

  Value slice(const Expr& expr) {
    const Value subject = eval(*expr.args[0]);
    std::optional<int64_t> bounds[3];
    for (size_t i = 0; i < 3; ++i) {
      const Value bound = expr.args[i + 1] ? eval(*expr.args[i + 1]) : Value::of(nullptr);
      if (!is_none(&bound)) bounds[i] = integer(bound, "a slice index");
    }
    const Json& json = data(subject);
    if (!json.is_array() && !json.is_string())
      fail("'" + type_name(subject) + "' object is not subscriptable");
    const std::u32string characters =
        json.is_string() ? decode(json.get_ref<const std::string&>()) : U"";
    const auto length = static_cast<int64_t>(json.is_string() ? characters.size() : json.size());
    // Python's slice.indices(length).
    if (bounds[2] == 0) fail("slice step cannot be zero");
    const int64_t step = std::clamp<int64_t>(bounds[2].value_or(1), -length - 1, length + 1);
    const int64_t lower = step > 0 ? 0 : -1;
    const int64_t upper = step > 0 ? length : length - 1;
    auto clamp = [&](std::optional<int64_t> bound, int64_t fallback) {
      return bound ? std::clamp(*bound < 0 ? *bound + length : *bound, lower, upper) : fallback;
    };
    const int64_t stop = clamp(bounds[1], step > 0 ? upper : lower);
    Json list = Json::array();
    std::u32string text;
    size_t budget = kMaxValueBytes;
    for (int64_t i = clamp(bounds[0], step > 0 ? lower : upper); step > 0 ? i < stop : i > stop;
         i += step) {
      if (json.is_string()) text += characters[i];
      if (json.is_array())
        list.push_back(copy_into(Value::element(subject, json[static_cast<size_t>(i)]), budget));
    }
    return Value::of(json.is_string() ? Json(encode(text)) : std::move(list));
  }

  static bool equal(const Value& a, const Value& b) {
    const Json* x = a.json();
    const Json* y = b.json();
    if (!x || !y) {
      return a.kind == b.kind && (!a.defined() || (a.attributes == b.attributes &&
                                                   a.macro == b.macro && a.name == b.name));
    }
    if (!is_numeric(*x) || !is_numeric(*y)) return *x == *y;
    return is_integer(*x) && is_integer(*y) ? to_int64(*x) == to_int64(*y)
                                            : to_double(*x) == to_double(*y);
  }

  static bool contains(const Value& container, const Value& item) {
    if (!container.defined()) return false;
    const Json& json = data(container);
    if (json.is_string())
      return json.get_ref<const std::string&>().find(string(item, "'in <string>'")) !=
             std::string::npos;
    if (json.is_object())
      return item.json() && item.json()->is_string() &&
             json.contains(item.json()->get<std::string>());
    if (!json.is_array()) fail("argument of type '" + type_name(container) + "' is not iterable");
    return std::any_of(json.begin(), json.end(), [&](const Json& element) {
      return equal(Value::element(container, element), item);
    });
  }

  static bool compare(const std::string& op, const Value& a, const Value& b) {
    if (op == "==" || op == "!=") return equal(a, b) == (op == "==");
    if (op == "in" || op == "not in") return contains(b, a) == (op == "in");
    const Json& x = data(a);
    const Json& y = data(b);
    int order = 0;
    if (is_integer(x) && is_integer(y)) {
      order = (to_int64(x) > to_int64(y)) - (to_int64(x) < to_int64(y));
    } else if (is_numeric(x) && is_numeric(y)) {
      order = (to_double(x) > to_double(y)) - (to_double(x) < to_double(y));
    } else if (x.is_string() && y.is_string()) {  // UTF-8 bytes sort as code points do
      order = x.get_ref<const std::string&>().compare(y.get_ref<const std::string&>());
    } else {
      fail("'" + op + "' not supported between instances of '" + type_name(a) + "' and '" +
           type_name(b) + "'");
    }
    return op == "<" ? order < 0 : op == "<=" ? order <= 0 : op == ">" ? order > 0 : order >= 0;
  }

  static Value arithmetic(const std::string& op, const Value& a, const Value& b) {
    const Json& x = data(a);
    const Json& y = data(b);
    if (!is_numeric(x) || !is_numeric(y)) return sequence_arithmetic(op, a, b);
    if (is_integer(x) && is_integer(y) && op != "/") {
      const int64_t i = to_int64(x);
      const int64_t j = to_int64(y);
      int64_t result = 1;
      bool overflow = false;
      if (op == "+") overflow = __builtin_add_overflow(i, j, &result);
      if (op == "-") overflow = __builtin_sub_overflow(i, j, &result);
      if (op == "*") overflow = __builtin_mul_overflow(i, j, &result);
      if (op == "//" || op == "%") {
        if (j == 0) fail("integer division or modulo by zero");
        overflow = i == INT64_MIN && j == -1;
        const int64_t quotient =
            overflow ? 0 : i / j - (i % j != 0 && (i < 0) != (j < 0));  // floor
        result = op == "//" ? quotient : i - quotient * j;
      }
      if (op == "**" && j < 0)
        return Value::of(std::pow(static_cast<double>(i), static_cast<double>(j)));
      for (int64_t base = i, exponent = op == "**" ? j : 0; exponent > 0 && !overflow;
           exponent >>= 1) {
        if (exponent & 1) overflow = __builtin_mul_overflow(result, base, &result);  // by squaring
        if (exponent > 1) overflow = overflow || __builtin_mul_overflow(base, base, &base);
      }
      if (overflow) fail("integer overflow in " + op, StatusCode::kOutOfRange);
      return Value::of(result);
    }
    const double i = to_double(x);
    const double j = to_double(y);
    if (j == 0 && (op == "/" || op == "//" || op == "%")) fail("float division by zero");
    if (op == "+" || op == "-") return Value::of(op == "+" ? i + j : i - j);
    if (op == "*" || op == "/") return Value::of(op == "*" ? i * j : i / j);
    if (op == "//" || op == "**") return Value::of(op == "//" ? std::floor(i / j) : std::pow(i, j));
    const double remainder = std::fmod(i, j);  // Python's % takes the sign of j
    return Value::of(remainder != 0 && (remainder < 0) != (j < 0) ? remainder + j : remainder);
  }

  // + on strings or lists, * of a string or list by an integer.
  static Value sequence_arithmetic(const std::string& op, const Value& a, const Value& b) {
    const Json& x = data(a);
    const Json& y = data(b);
    size_t budget = kMaxValueBytes;
    if (op == "+" && x.type() == y.type() && (x.is_string() || x.is_array())) {
      Json sum = copy_into(a, budget);
      const Json tail = copy_into(b, budget);
      if (x.is_string()) return Value::of(sum.get<std::string>() + tail.get<std::string>());
      sum.insert(sum.end(), tail.begin(), tail.end());
      return Value::of(std::move(sum));
    }
    const Json& sequence = is_integer(x) ? y : x;
    if (op == "*" && (is_integer(x) || is_integer(y)) &&
        (sequence.is_string() || sequence.is_array())) {
      const int64_t count = std::max<int64_t>(0, to_int64(is_integer(x) ? x : y));
      if (count > 0 && weight(sequence, kMaxValueBytes) > kMaxValueBytes / count)
        fail_limit("a list or string past 64 MiB");
      Json product = sequence.is_string() ? Json("") : Json::array();
      for (int64_t i = 0; i < count && sequence.is_string(); ++i)
        product.get_ref<std::string&>() += sequence.get_ref<const std::string&>();
      for (int64_t i = 0; i < count && sequence.is_array(); ++i)
        product.insert(product.end(), sequence.begin(), sequence.end());
      return Value::of(std::move(product));
    }
    fail("unsupported operand type(s) for " + op + ": '" + type_name(a) + "' and '" + type_name(b) +
         "'");
  }

  Arguments arguments(const Expr& expr) {
    Arguments result;
    for (size_t i = 1; i < expr.args.size(); ++i) result.positional.push_back(eval(*expr.args[i]));
    for (const auto& [name, value] : expr.keywords)
      result.keywords.emplace_back(name, eval(*value));
    return result;
  }

  Value eval(const Expr& expr) {
    Frame frame(*this);
    line_ = expr.line;
    const std::vector<ExprPtr>& args = expr.args;
    switch (expr.op) {
      case Op::kLiteral:
        return {Value::Kind::kData, expr.literal};
      case Op::kName:
        return lookup(expr.name);
      case Op::kList:
      case Op::kDict: {
        Json container = expr.op == Op::kList ? Json::array() : Json::object();
        size_t budget = kMaxValueBytes;
        for (size_t i = 0; i < args.size(); ++i) {
          const Value value = eval(*args[i]);
          if (expr.op == Op::kList) container.push_back(copy_into(value, budget));
          if (expr.op == Op::kDict)
            container[string(value, "a dict key")] = copy_into(eval(*args[++i]), budget);
        }
        return Value::of(std::move(container));
      }
      case Op::kAttribute:
        return attribute(eval(*args[0]), expr.name);
      case Op::kItem: {
        const Value subject = eval(*args[0]);
        return item(subject, eval(*args[1]));
      }
      case Op::kSlice:
        return slice(expr);
      case Op::kCall:
        return call(expr);
      case Op::kFilter:
      case Op::kTest: {
        const Value subject = eval(*args[0]);
        if (expr.op == Op::kFilter) return filter(expr.name, subject, arguments(expr));
        return Value::of(test(expr.name, subject, arguments(expr)));
      }
      case Op::kNot:
        return Value::of(!truthy(eval(*args[0])));
      case Op::kNegate:
      case Op::kPlus: {
        const Value operand = eval(*args[0]);
        const Json& json = data(operand);
        if (json.is_number_float())
          return Value::of(expr.op == Op::kNegate ? -json.get<double>() : json.get<double>());
        if (!is_integer(json)) fail("bad operand type for unary -/+: '" + type_name(operand) + "'");
        return arithmetic(expr.op == Op::kNegate ? "-" : "+", Value::of(0), operand);
      }
      case Op::kAnd:
      case Op::kOr: {  // Python's and/or give one of their operands
        Value left = eval(*args[0]);
        return truthy(left) == (expr.op == Op::kAnd) ? eval(*args[1]) : left;
      }
      case Op::kArithmetic: {
        const Value left = eval(*args[0]);
        return arithmetic(expr.name, left, eval(*args[1]));
      }
      case Op::kCompare: {
        Value left = eval(*args[0]);
        for (const auto& [op, operand] : expr.keywords) {
          Value right = eval(*operand);
          if (!compare(op, left, right)) return Value::of(false);
          left = std::move(right);
        }
        return Value::of(true);
      }
      case Op::kConcat: {
        std::string text;
        for (const ExprPtr& part : args) check_size((text += to_string(eval(*part))).size());
        return Value::of(std::move(text));
      }
      case Op::kConditional:
        if (truthy(eval(*args[1]))) return eval(*args[0]);
        return args[2] ? eval(*args[2])
                       : Value::undefined("an if-expression without else gave nothing");
    }
    fail("unknown expression");
  }

  Value call(const Expr& expr) {
    const Expr& callee = *expr.args[0];
    if (callee.op == Op::kAttribute) {  // a method: "text.strip()", "message.items()"
      const Value subject = eval(*callee.args[0]);
      if (subject.json()) return method(subject, callee.name, arguments(expr));
    }
    const Value function = eval(callee);
    const Arguments args = arguments(expr);
    if (function.kind == Value::Kind::kMacro) return call_macro(*function.macro, args);
    if (function.kind == Value::Kind::kFunction) return call_function(function.name, args);
    fail(function.defined() ? "'" + type_name(function) + "' object is not callable"
                            : function.name);
  }

  Value call_macro(const Stmt& macro, const Arguments& args) {
    count_step();
    const std::vector<std::string>& names = macro.names;
    if (args.positional.size() > names.size())
      fail("too many arguments for macro '" + macro.text + "'");
    Scope local;
    for (size_t i = 0; i < args.positional.size(); ++i) local[names[i]] = args.positional[i];
    for (const auto& [keyword, value] : args.keywords) {
      if (!listed(names, keyword))
        fail("macro '" + macro.text + "' has no parameter '" + keyword + "'");
      local[keyword] = value;
    }
    // The macro sees the template's globals and its parameters, not the caller's variables.
    const std::vector<Scope*> caller_scopes = std::exchange(scopes_, {scopes_.front(), &local});
    for (size_t i = 0; i < names.size(); ++i) {
      if (local.contains(names[i])) continue;
      local[names[i]] = macro.exprs[i] ? eval(*macro.exprs[i])
                                       : Value::undefined("'" + names[i] + "' is undefined");
    }
    Value output = capture(macro.bodies[0]);
    scopes_ = caller_scopes;
    return output;
  }

  Value capture(const std::vector<Stmt>& body) {  // the output of `body`, as a string
    std::string output;
    std::string* caller_output = std::exchange(out_, &output);
    exec(body);
    out_ = caller_output;
    return Value::of(std::move(output));
  }

  Value call_function(const std::string& name, const Arguments& args) {
    if (name == "raise_exception") fail(to_string(required(args.bind(name, {"message"}), 0)));
    if (name == "strftime_now") {
      const std::string format = string(required(args.bind(name, {"format"}), 0), "the format");
      if (format.size() > 1024) fail_limit("a strftime_now format past 1024 bytes");
      const std::time_t now = context_.now.value_or(std::time(nullptr));
      std::tm local{};
      localtime_r(&now, &local);
      std::string text(256 + 16 * format.size(), '\0');
      text.resize(std::strftime(text.data(), text.size(), format.c_str(), &local));
      return Value::of(std::move(text));
    }
    if (name == "range") {
      const auto bound = args.bind(name, {"start", "stop", "step"});
      int64_t range[3] = {0, 0, 1};
      for (size_t i = 0; i < 3; ++i) {
        if (bound[i])
          range[args.positional.size() == 1 ? 1 : i] = integer(*bound[i], "a range() argument");
      }
      if (range[2] == 0) fail("range() arg 3 must not be zero");
      const double count =
          std::ceil((static_cast<double>(range[1]) - range[0]) / static_cast<double>(range[2]));
      if (count > kMaxSteps) fail_limit("a range past 1000000 numbers");
      Json numbers = Json::array();
      for (int64_t i = 0; i < count; ++i) numbers.push_back(range[0] + i * range[2]);
      return Value::of(std::move(numbers));
    }
    if (!args.positional.empty()) fail("namespace() takes keyword arguments only");
    Value space = Value::new_namespace();
    for (const auto& [key, value] : args.keywords) (*space.attributes)[key] = value;
    return space;
  }

  // Python's methods of str and dict (lists have none that do not change them).
  Value method(const Value& subject, const std::string& name, const Arguments& args) {
    const Json& self = data(subject);
    const std::string* text = self.is_string() ? &self.get_ref<const std::string&>() : nullptr;
    auto optional_string = [](const Value* value) {
      return is_none(value) ? nullptr : &string(*value, "an argument");
    };
    static const std::map<std::string, Case, std::less<>> kCases = {
        {"upper", Case::kUpper},
        {"lower", Case::kLower},
        {"capitalize", Case::kCapitalize},
        {"title", Case::kTitle}};
    if (text && (name == "strip" || name == "lstrip" || name == "rstrip")) {
      const Side side = name[0] == 'l' ? Side::kLeft : name[0] == 'r' ? Side::kRight : Side::kBoth;
      return Value::of(strip(*text, side, optional_string(args.bind(name, {"chars"})[0])));
    }
    if (const auto mode = kCases.find(name); text && mode != kCases.end()) {
      args.bind(name, {});
      return Value::of(change_case(*text, mode->second));
    }
    if (text && (name == "startswith" || name == "endswith")) {
      const Value affix = required(args.bind(name, {"prefix"}), 0);
      const std::vector<Value> candidates =
          data(affix).is_array() ? iterate(affix) : std::vector<Value>{affix};
      return Value::of(
          std::any_of(candidates.begin(), candidates.end(), [&](const Value& candidate) {
            const std::string part = string(candidate, "the prefix");
            return name[0] == 's' ? text->starts_with(part) : text->ends_with(part);
          }));
    }
    if (text && name == "split") {
      const auto bound = args.bind(name, {"sep", "maxsplit"});
      return Value::of(
          split(*text, optional_string(bound[0]), bound[1] ? integer(*bound[1], "maxsplit") : -1));
    }
    if (text && name == "replace") {
      const auto bound = args.bind(name, {"old", "new", "count"});
      return Value::of(replace(*text, string(required(bound, 0), "old"),
                               string(required(bound, 1), "new"),
                               bound[2] ? integer(*bound[2], "count") : -1));
    }
    if (self.is_object() && (name == "items" || name == "keys" || name == "values")) {
      args.bind(name, {});
      Json list = Json::array();
      size_t budget = kMaxValueBytes;
      for (auto it = self.begin(); it != self.end(); ++it) {
        if (name == "keys") list.push_back(it.key());
        if (name == "keys") continue;
        Json value = copy_into(Value::element(subject, *it), budget);
        list.push_back(name == "values" ? std::move(value)
                                        : Json::array({it.key(), std::move(value)}));
      }
      return Value::of(std::move(list));
    }
    if (self.is_object() && name == "get") {
      const auto bound = args.bind(name, {"key", "default"});
      const Value found = attribute(subject, string(required(bound, 0), "the key"));
      return found.defined() ? found : bound[1] ? *bound[1] : Value::of(nullptr);
    }
    fail_unsupported("the method " + type_name(subject) + "." + name + "()");
  }

  // jinja2's attribute paths, as selectattr, map and join take them: "function.name", "0".
  static Value attribute_path(Value value, const std::string& path) {
    for (const Json& part : split(path, &kDot, -1)) {
      const std::string& name = part.get_ref<const std::string&>();
      const bool digits = !name.empty() && std::all_of(name.begin(), name.end(), is_digit);
      value = digits ? item(value, Value::of(std::stoll(name))) : attribute(value, name);
    }
    return value;
  }
  inline static const std::string kDot = ".";

  Value filter(const std::string& name, const Value& subject, const Arguments& args) {
    if (name == "default" || name == "d") {
      const auto bound = args.bind(name, {"default_value", "boolean"});
      const bool use_default =
          !subject.defined() || (bound[1] && truthy(*bound[1]) && !truthy(subject));
      return !use_default ? subject : bound[0] ? *bound[0] : Value::of("");
    }
    if (name == "safe") return subject;
    if (name == "length" || name == "count") {
      const Json* json = subject.json();
      if (!subject.defined()) return Value::of(0);
      if (json && json->is_string())
        return Value::of(character_count(json->get_ref<const std::string&>()));
      if (!json || !json->is_structured())
        fail("object of type '" + type_name(subject) + "' has no len()");
      return Value::of(json->size());
    }
    if (name == "string") return Value::of(to_string(subject));
    static const std::map<std::string, std::string, std::less<>> kMethods = {
        {"trim", "strip"},
        {"upper", "upper"},
        {"lower", "lower"},
        {"capitalize", "capitalize"},
        {"replace", "replace"}};
    if (const auto found = kMethods.find(name); found != kMethods.end()) {
      return method(Value::of(to_string(subject)), found->second,
                    args);  // str(subject).upper() ...
    }
    if (name == "title") return Value::of(change_case(to_string(subject), Case::kTitleWords));
    if (name == "tojson")
      return to_json(subject,
                     args.bind(name, {"ensure_ascii", "indent", "separators", "sort_keys"}));
    if (name == "first" || name == "last") {
      const std::vector<Value> items = iterate(subject);
      if (items.empty()) return Value::undefined("no " + name + " item of an empty sequence");
      return name == "first" ? items.front() : items.back();
    }
    if (name == "join") {
      const auto bound = args.bind(name, {"d", "attribute"});
      std::string joined;
      bool first = true;
      for (const Value& element : iterate(subject)) {
        if (!std::exchange(first, false) && bound[0]) joined += to_string(*bound[0]);
        joined += to_string(bound[1] ? attribute_path(element, to_string(*bound[1])) : element);
        check_size(joined.size());
      }
      return Value::of(std::move(joined));
    }
    if (name == "int") return integer_filter(subject, args.bind(name, {"default"})[0]);
    if (name == "items") {
      if (!subject.defined()) return Value::of(Json::array());
      if (!data(subject).is_object()) fail("items() takes a dict, not " + type_name(subject));
      return method(subject, "items", {});
    }
    // The filters that make a list of the subject's items.
    std::vector<Value> items = iterate(subject);
    if (name == "map") {  // map(attribute="a", default=d)
      const auto bound = args.bind(name, {"attribute", "default"});
      for (Value& element : items) {
        element = attribute_path(element, to_string(required(bound, 0)));
        if (!element.defined() && bound[1]) element = *bound[1];
      }
    }
    if (name.starts_with("select") || name.starts_with("reject")) {
      const bool by_attribute = name.ends_with("attr");
      const size_t test_index = by_attribute ? 1 : 0;
      if (!args.keywords.empty() || args.positional.size() < test_index)
        fail(name + "() takes an attribute or a test");
      const std::string test_name =
          test_index < args.positional.size() ? to_string(args.positional[test_index]) : "";
      if (!test_name.empty() && !listed(kTests, test_name))
        fail_unsupported("the test '" + test_name + "'");
      Arguments test_args;
      for (size_t i = test_index + 1; i < args.positional.size(); ++i)
        test_args.positional.push_back(args.positional[i]);
      std::erase_if(items, [&](const Value& element) {
        const Value tested =
            by_attribute ? attribute_path(element, to_string(args.positional[0])) : element;
        return (test_name.empty() ? truthy(tested) : test(test_name, tested, test_args)) !=
               name.starts_with("select");
      });
    }
    Json list = Json::array();
    size_t budget = kMaxValueBytes;
    for (const Value& element : items) list.push_back(copy_into(element, budget));
    return Value::of(std::move(list));
  }

  // transformers' tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False).
  static Value to_json(const Value& subject, const std::vector<const Value*>& bound) {
    JsonFormat format;
    format.ensure_ascii = bound[0] && truthy(*bound[0]);
    if (!is_none(bound[1])) {
      const bool text = data(*bound[1]).is_string();
      const int64_t width = text ? 0 : std::clamp<int64_t>(integer(*bound[1], "indent"), 0, 64);
      format.indent = text ? string(*bound[1], "indent") : std::string(width, ' ');
      format.item_separator = ",";
    }
    if (!is_none(bound[2])) {
      const std::vector<Value> separators = iterate(*bound[2]);
      if (separators.size() != 2) fail("separators must be an (item, key) pair");
      format.item_separator = string(separators[0], "a separator");
      format.key_separator = string(separators[1], "a separator");
    }
    format.sort_keys = bound[3] && truthy(*bound[3]);
    std::string text;
    append_value(text, data(subject), &format);
    return Value::of(std::move(text));
  }

  // jinja2's int(default=0) filter: Python's int(), or int(float(text)) for a string int() refuses.
  static Value integer_filter(const Value& subject, const Value* fallback) {
    const Json* json = subject.json();
    std::optional<double> number;
    if (json && is_integer(*json)) return Value::of(to_int64(*json));
    if (json && is_numeric(*json)) number = to_double(*json);
    if (json && json->is_string()) {
      const std::string text = strip(json->get_ref<const std::string&>(), Side::kBoth);
      const char* begin = text.data() + text.starts_with('+');
      int64_t whole = 0;
      const auto parsed = std::from_chars(begin, text.data() + text.size(), whole);
      if (parsed.ec == std::errc() && parsed.ptr == text.data() + text.size())
        return Value::of(whole);
      char* end = nullptr;
      const double value = std::strtod(text.c_str(), &end);
      if (!text.empty() && end == text.data() + text.size() &&
          text.find_first_of("xX") == text.npos)
        number = value;
    }
    if (number && std::isfinite(*number) && std::fabs(*number) < 9.2e18)
      return Value::of(static_cast<int64_t>(*number));
    return fallback ? *fallback : Value::of(0);
  }

  bool test(const std::string& name, const Value& value, const Arguments& args) {
    const Json* json = value.json();
    if (name == "defined" || name == "undefined") return value.defined() == (name == "defined");
    if (name == "none") return json && json->is_null();
    if (name == "boolean") return json && json->is_boolean();
    if (name == "true" || name == "false")
      return json && json->is_boolean() && json->get<bool>() == (name == "true");
    if (name == "integer") return json && json->is_number_integer();
    if (name == "float") return json && json->is_number_float();
    if (name == "number") return json && is_numeric(*json);
    if (name == "string") return json && json->is_string();
    if (name == "mapping") return json && json->is_object();
    if (name == "iterable" || name == "sequence")
      return !value.defined() || (json && (json->is_string() || json->is_structured()));
    if (name == "callable")
      return value.kind == Value::Kind::kMacro || value.kind == Value::Kind::kFunction;
    if (name == "odd" || name == "even") return (integer(value, name) % 2 != 0) == (name == "odd");
    const Value other = required(args.bind(name, {"other"}), 0);
    if (name == "divisibleby") return arithmetic("%", value, other).json()->get<int64_t>() == 0;
    if (name == "sameas")
      return json && other.json() ? *json == *other.json() && json->type() == other.json()->type()
                                  : equal(value, other);
    if (name == "in") return contains(other, value);
    static const std::map<std::string, std::string, std::less<>> kOperators = {
        {"eq", "=="}, {"equalto", "=="}, {"ne", "!="}, {"lt", "<"},
        {"le", "<="}, {"gt", ">"},       {"ge", ">="}};
    const auto found = kOperators.find(name);
    return compare(found != kOperators.end() ? found->second : name, value, other);
  }

  Flow exec(const std::vector<Stmt>& body) {
    for (const Stmt& stmt : body) {
      if (const Flow flow = exec(stmt); flow != Flow::kNext) return flow;
    }
    return Flow::kNext;
  }

  Flow exec(const Stmt& stmt) {
    Frame frame(*this);
    line_ = stmt.line;
    switch (stmt.kind) {
      case StmtKind::kText:
        check_size(out_->append(stmt.text).size());
        break;
      case StmtKind::kOutput: {
        const Value value = eval(*stmt.exprs[0]);
        const Json* json = value.json();
        check_size(out_->append(json && json->is_string() ? json->get_ref<const std::string&>()
                                                          : to_string(value))
                       .size());
        break;
      }
      case StmtKind::kIf:
        for (size_t i = 0; i < stmt.bodies.size(); ++i) {
          if (i == stmt.exprs.size() || truthy(eval(*stmt.exprs[i]))) return exec(stmt.bodies[i]);
        }
        break;
      case StmtKind::kFor:
        return exec_for(stmt);
      case StmtKind::kSet:
        assign(stmt, eval(*stmt.exprs[0]));
        break;
      case StmtKind::kSetBlock:
        assign(stmt, capture(stmt.bodies[0]));
        break;
      case StmtKind::kMacro:
        (*scopes_.back())[stmt.text] = {Value::Kind::kMacro, {}, {}, &stmt};
        break;
      case StmtKind::kBreak:
        return Flow::kBreak;
      case StmtKind::kContinue:
        return Flow::kContinue;
      case StmtKind::kScope:
        return exec_scoped(stmt.bodies[0], Scope());
    }
    return Flow::kNext;
  }

  Flow exec_scoped(const std::vector<Stmt>& body, Scope scope) {
    scopes_.push_back(&scope);
    const Flow flow = exec(body);
    scopes_.pop_back();
    return flow;
  }

  static void bind_targets(Scope& scope, const std::vector<std::string>& names,
                           const Value& value) {
    if (names.size() == 1) {
      scope[names[0]] = value;
      return;
    }
    const std::vector<Value> items = iterate(value);
    if (items.size() != names.size()) {
      fail("cannot unpack " + std::to_string(items.size()) + " values into " +
           std::to_string(names.size()));
    }
    for (size_t i = 0; i < names.size(); ++i) scope[names[i]] = items[i];
  }

  // A set inside a loop or macro stays there, as in jinja2: each loop iteration is a scope.
  void assign(const Stmt& stmt, const Value& value) {
    if (stmt.text.empty()) return bind_targets(*scopes_.back(), stmt.names, value);
    const Value target = lookup(stmt.names[0]);
    if (target.kind != Value::Kind::kNamespace)
      fail("cannot set an attribute of '" + stmt.names[0] + "', not a namespace");
    (*target.attributes)[stmt.text] = value;
  }

  Flow exec_for(const Stmt& stmt) {
    std::vector<Value> items = iterate(eval(*stmt.exprs[0]));
    if (stmt.exprs[1]) {  // "for x in xs if test": the loop sees only the items that pass
      std::erase_if(items, [&](const Value& element) {
        count_step();
        Scope scope;
        bind_targets(scope, stmt.names, element);
        scopes_.push_back(&scope);
        const bool passed = truthy(eval(*stmt.exprs[1]));
        scopes_.pop_back();
        return !passed;
      });
    }
    if (items.empty() && stmt.bodies.size() > 1) return exec_scoped(stmt.bodies[1], Scope());
    const auto length = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < length; ++i) {
      count_step();
      Scope scope;
      bind_targets(scope, stmt.names, items[i]);
      Value loop = Value::new_namespace();
      for (const auto& [key, count] : {std::pair<const char*, int64_t>{"index0", i},
                                       {"index", i + 1},
                                       {"revindex0", length - i - 1},
                                       {"revindex", length - i},
                                       {"length", length},
                                       {"depth", 1},
                                       {"depth0", 0}}) {
        (*loop.attributes)[key] = Value::of(count);
      }
      (*loop.attributes)["first"] = Value::of(i == 0);
      (*loop.attributes)["last"] = Value::of(i == length - 1);
      if (i > 0) (*loop.attributes)["previtem"] = items[i - 1];
      if (i + 1 < length) (*loop.attributes)["nextitem"] = items[i + 1];
      scope["loop"] = std::move(loop);
      if (exec_scoped(stmt.bodies[0], std::move(scope)) == Flow::kBreak) break;
    }
    return Flow::kNext;
  }

  const ChatTemplateContext& context_;
  std::vector<Scope*> scopes_;  // innermost last; scopes_[0] holds the globals
  std::string* out_ = nullptr;
  int line_ = 0;
  int depth_ = 0;
  int64_t steps_ = 0;
};

}  // namespace

struct ChatTemplate::Program {
  std::vector<Stmt> body;
};

Result<ChatTemplate> ChatTemplate::parse(std::string_view source) {
  // Python holds a template as a str: invalid UTF-8 could not reach jinja2.
  Lexer lexer(unicode::sanitize_utf8(source));
  std::optional<Parser> parser;
  try {
    parser.emplace(lexer.run());
    return ChatTemplate(std::make_shared<Program>(Program{parser->parse_template()}));
  } catch (const TemplateError& error) {
    const StatusCode code =
        error.code == StatusCode::kInvalidArgument ? StatusCode::kCorrupt : error.code;
    const int line = parser ? parser->line() : lexer.line();
    return Status(code, "chat template line " + std::to_string(line) + ": " + error.message);
  }
}

Result<std::string> ChatTemplate::render(const nlohmann::ordered_json& messages,
                                         const ChatTemplateContext& context) const {
  if (!messages.is_array())
    return invalid_argument("chat template: the messages must be a JSON array");
  if (!context.extra_variables.is_object())
    return invalid_argument("chat template: extra_variables must be an object");
  // What apply_chat_template passes: the special tokens, then its keyword arguments, then these.
  Scope globals = {{"bos_token", Value::of(context.bos_token)},
                   {"eos_token", Value::of(context.eos_token)}};
  const Value extra = Value::borrowed(context.extra_variables);
  for (auto it = context.extra_variables.begin(); it != context.extra_variables.end(); ++it) {
    globals[it.key()] = Value::element(extra, *it);
  }
  globals["messages"] = Value::borrowed(messages);
  globals["tools"] = context.tools ? Value::borrowed(*context.tools) : Value::of(nullptr);
  globals["documents"] = Value::of(nullptr);
  globals["add_generation_prompt"] = Value::of(context.add_generation_prompt);
  Renderer renderer(context);
  std::string where = "chat template line ";
  try {
    return renderer.run(program_->body, globals);
  } catch (const TemplateError& error) {
    return Status(error.code, where + std::to_string(renderer.line()) + ": " + error.message);
  } catch (const std::bad_alloc&) {
    return out_of_range(where + std::to_string(renderer.line()) + ": out of memory");
  } catch (const nlohmann::json::exception& error) {
    return internal_error(where + std::to_string(renderer.line()) + ": " + error.what());
  }
}

}  // namespace kite
