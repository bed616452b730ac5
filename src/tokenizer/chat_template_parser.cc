// The chat-template lexer and parser: jinja2's lexer (trim_blocks, lstrip_blocks) and grammar, by
// recursive descent, into the syntax tree of chat_template_internal.h.
#include <charconv>
#include <optional>

#include "tokenizer/chat_template_internal.h"
#include "tokenizer/unicode.h"

namespace kite::chat_template_internal {
namespace {

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

}  // namespace

std::vector<Stmt> parse_template(std::string_view source, int& error_line) {
  Lexer lexer(source);
  std::optional<Parser> parser;
  try {
    parser.emplace(lexer.run());
    return parser->parse_template();
  } catch (const TemplateError&) {
    error_line = parser ? parser->line() : lexer.line();
    throw;
  }
}

}  // namespace kite::chat_template_internal
