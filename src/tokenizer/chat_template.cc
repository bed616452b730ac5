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
//
// This file holds the values and the renderer; the lexer and parser are chat_template_parser.cc,
// Python's string semantics chat_template_python.cc.
#include "tokenizer/chat_template.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <map>
#include <unordered_map>
#include <vector>

#include "tokenizer/chat_template_internal.h"
#include "tokenizer/unicode.h"

namespace kite {
namespace {

using namespace chat_template_internal;

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
  int line = 0;
  try {
    return ChatTemplate(
        std::make_shared<Program>(Program{parse_template(unicode::sanitize_utf8(source), line)}));
  } catch (const TemplateError& error) {
    const StatusCode code =
        error.code == StatusCode::kInvalidArgument ? StatusCode::kCorrupt : error.code;
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
