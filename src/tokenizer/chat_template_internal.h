// The pieces of Kite's chat-template interpreter shared by its three files: the limits and errors,
// Python's str semantics (chat_template_python.cc), and the syntax tree that the lexer and parser
// (chat_template_parser.cc) make and the renderer (chat_template.cc) walks.
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace kite::chat_template_internal {

using Json = nlohmann::ordered_json;

// Templates come from model files and conversations from requests: neither is trusted. These
// bound the stack, time and memory that one parse or render may take.
inline constexpr int kMaxParseNesting = 100;     // parser recursion: nested blocks and brackets
inline constexpr int kMaxExpressionDepth = 128;  // an expression tree's depth (a + b + ... chains)
inline constexpr int kMaxRenderDepth = 500;      // evaluation recursion, macro calls included
inline constexpr int kMaxDataDepth = 200;        // nesting of data that is copied or printed
inline constexpr int64_t kMaxSteps = 1'000'000;  // loop iterations and macro calls in one render
inline constexpr size_t kMaxStringBytes = 32 << 20;  // the output, and any string made on the way
inline constexpr size_t kMaxValueBytes = 64 << 20;   // a list or dict the template makes (roughly)

// Errors inside the interpreter are thrown, and become a Status with the line at the API
// boundary: nearly every step of an evaluation can fail, and a Result at each would double it.
struct TemplateError {
  StatusCode code;
  std::string message;
};

[[noreturn]] inline void fail(std::string message, StatusCode code = StatusCode::kInvalidArgument) {
  throw TemplateError{code, std::move(message)};
}
[[noreturn]] inline void fail_limit(const std::string& what) {
  fail(what + " (a limit of Kite's chat templates)", StatusCode::kOutOfRange);
}
[[noreturn]] inline void fail_unsupported(const std::string& what) {
  fail(what + " is not supported in Kite's chat templates", StatusCode::kUnsupported);
}
inline void check_size(size_t bytes) {
  if (bytes > kMaxStringBytes) fail_limit("a string past 32 MiB");
}

// ---- Python's str over UTF-8 (chat_template_python.cc). Strings are valid UTF-8 (nlohmann's
// parser and ChatTemplate::parse see to it); a stray byte counts as one character, and is never
// read past.

// The character at `position`, which moves past it.
char32_t decode_one(std::string_view text, size_t& position);
std::u32string decode(std::string_view text);
std::string encode(std::u32string_view characters);
size_t character_count(std::string_view text);
// str.isspace(): what strip() and split() remove, and jinja2's \s.
bool is_space(char32_t c);
inline bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

enum class Side { kLeft, kRight, kBoth };
// str.strip(chars), lstrip(chars) and rstrip(chars); null `chars` strips whitespace.
std::string strip(std::string_view text, Side side, const std::string* chars = nullptr);

enum class Case { kUpper, kLower, kCapitalize, kTitle, kTitleWords };
// str.upper(), lower(), capitalize() and title(); kTitleWords is jinja2's title filter, whose
// words start after whitespace or "-({[<" rather than after any uncased character.
std::string change_case(std::string_view text, Case mode);

// str.replace(old, new, count); count < 0 replaces all.
std::string replace(const std::string& text, const std::string& old, const std::string& with,
                    int64_t count);
// str.split(separator, max_splits); a null separator splits at runs of whitespace.
Json split(const std::string& text, const std::string* separator, int64_t max_splits);

// ---- Python's repr() and json.dumps().

// float.__repr__.
std::string python_float(double value);
// An int as str() writes it, a float as python_float.
std::string number_text(const Json& value);

// The arguments of json.dumps that transformers' tojson filter passes on.
struct JsonFormat {
  std::optional<std::string> indent;  // per level; none writes one line
  std::string item_separator = ", ";
  std::string key_separator = ": ";
  bool sort_keys = false;
  bool ensure_ascii = false;
};

// A string as repr() quotes it (with `json` null) or as json.dumps does.
void append_quoted(std::string& out, std::string_view text, const JsonFormat* json);
// repr(value), as {{ }} prints lists and dicts, with `json` null; else json.dumps(value, ...).
void append_value(std::string& out, const Json& value, const JsonFormat* json, int depth = 0);
// str(value)
std::string python_str(const Json& value);

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

inline constexpr std::string_view kFilters[] = {
    "capitalize", "count",  "d",          "default", "first", "int",    "items",      "join",
    "last",       "length", "list",       "lower",   "map",   "reject", "rejectattr", "replace",
    "safe",       "select", "selectattr", "string",  "title", "tojson", "trim",       "upper"};
inline constexpr std::string_view kTests[] = {
    "boolean", "callable",  "defined", "divisibleby", "eq",      "equalto",  "even",     "false",
    "float",   "ge",        "gt",      "in",          "integer", "iterable", "le",       "lt",
    "mapping", "ne",        "none",    "number",      "odd",     "sameas",   "sequence", "string",
    "true",    "undefined", "==",      "!=",          "<",       "<=",       ">",        ">="};
inline constexpr std::string_view kFunctions[] = {"namespace", "raise_exception", "range",
                                                  "strftime_now"};

template <typename Names>
bool listed(const Names& names, std::string_view name) {
  return std::find(std::begin(names), std::end(names), name) != std::end(names);
}
inline bool listed(std::initializer_list<std::string_view> names, std::string_view name) {
  return listed<decltype(names)>(names, name);
}

// Parses a template (valid UTF-8) into its statements. A syntax error, or a feature outside Kite's
// subset, is thrown as a TemplateError, with `error_line` set to its line.
std::vector<Stmt> parse_template(std::string_view source, int& error_line);

}  // namespace kite::chat_template_internal
