// Tests of Kite's chat template interpreter: the Jinja2 language piece by piece (expected values
// from jinja2 3.1.6 in transformers' environment), its errors and its limits on untrusted
// templates, and golden tests that render real models' chat templates on several conversations
// and compare with jinja2 (tests/fixtures/chat_templates/, from
// scripts/golden/make_chat_template_fixtures.py).
#include "tokenizer/chat_template.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <thread>

#include "core/file.h"
#include "test_util.h"

namespace kite {
namespace {

using nlohmann::ordered_json;

constexpr std::time_t kNoonUtc = 1721995200;  // 2024-07-26 12:00:00 UTC: the same date everywhere

Result<std::string> try_render(std::string_view source,
                               const ordered_json& messages = ordered_json::array(),
                               const ChatTemplateContext& context = {}) {
  Result<ChatTemplate> parsed = ChatTemplate::parse(source);
  if (!parsed.is_ok()) return parsed.status();
  return parsed->render(messages, context);
}

// The rendered text, or "error: " and the message.
std::string render(std::string_view source, const ordered_json& messages = ordered_json::array(),
                   const ChatTemplateContext& context = {}) {
  Result<std::string> text = try_render(source, messages, context);
  return text.is_ok() ? *text : "error: " + text.status().message();
}

struct LanguageCase {
  const char* name;
  const char* source;
  const char* expected;  // what jinja2 renders
};

// Each source rendered by jinja2 in transformers' environment (messages=[], tools=None).
const LanguageCase kLanguageCases[] =
    {
        {"literals",
         R"jinja({{ 'a' ~ "b" }}{{ 1 }}{{ 1.5 }}{{ true }}{{ none }}{{ [1, 'x', none, true, 2.5] }}{{ {'k': 'v', "q": "it's"} }}{{ 'it''s' }}{{ 'tab\tnl\n\x41\u00e9' }})jinja",
         R"jinja(ab11.5TrueNone[1, 'x', None, True, 2.5]{'k': 'v', 'q': "it's"}itstab	nl
Aé)jinja"},
        {"floats",
         R"jinja({{ 1e16 }} {{ 1e15 }} {{ 0.0001 }} {{ 0.00001 }} {{ 0.1 + 0.2 }} {{ -0.0 }} {{ 3.0 }} {{ 1.5e300 * 1e10 }} {{ 123456789012345678.0 }})jinja",
         R"jinja(1e+16 1000000000000000.0 0.0001 1e-05 0.30000000000000004 -0.0 3.0 inf 1.2345678901234568e+17)jinja"},
        {"arithmetic",
         R"jinja({{ 3 / 2 }} {{ 7 // -2 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 2 ** -1 }} {{ 7.5 % 2 }} {{ -7.5 % 2 }} {{ 2 ** 3 ** 2 }} {{ 1 + 2.0 }} {{ true + 1 }} {{ 'ab' * 3 }} {{ [1] * 2 }} {{ 3 * 'a' }} {{ 'x' * -1 }}|{{ -(3) }} {{ 10 - 2 * 3 }} {{ [1] + [2] }} {{ -7 // 2 }})jinja",
         R"jinja(1.5 -4 2 1024 0.5 1.5 0.5 64 3.0 2 ababab [1, 1] aaa |-3 4 [1, 2] -4)jinja"},
        {"logic",
         R"jinja({{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 'a' < 'b' }} {{ 1 == 1.0 }} {{ 1 == true }} {{ [1] == [1] }} {{ none == none }} {{ 'a' in 'cat' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 'z' not in 'cat' }} {{ 0 or 'x' }} {{ 1 and 'y' }} {{ not '' }} {{ 'x' if false }}|{{ 1 if true else 2 }} {{ 'a' if none else 'b' if 0 else 'c' }})jinja",
         R"jinja(True False True True True True True True True True True x y True |1 c)jinja"},
        {"undefined",
         R"jinja({{ x }}|{{ x | length }}|{{ x is defined }}|{{ x is undefined }}|{{ x ~ 'a' }}|{{ x | default('d') }}|{% for i in x %}no{% endfor %}|{{ 'a' in x }}|{{ x == x }}|{{ {'a': 1}.b is defined }}|{{ [1][5] is defined }}|{{ loop }}|{{ x | trim }}|{{ none | trim }})jinja",
         R"jinja(|0|False|True|a|d||False|True|False|False|||None)jinja"},
        {"sequences",
         R"jinja({{ 'héllo'[1] }} {{ 'héllo' | length }} {{ 'héllo'[-3:] }} {{ 'hello'[::-1] }} {{ [1, 2, 3, 4, 5][1:4:2] }} {{ [1, 2, 3][-2:] }} {{ [1, 2, 3][5:] }} {{ [1, 2, 3][-1] }} {{ 'abc'[:-1] }} {{ [1, 2, 3][::-2] }} {{ {'a': {'b': [10, 20]}}.a.b.1 }})jinja",
         R"jinja(é 5 llo olleh [2, 4] [2, 3] [] 3 ab [3, 1] 20)jinja"},
        {"string_methods",
         R"jinja({{ '  a b  '.strip() }}|{{ 'xxhixx'.strip('x') }}|{{ 'hello'.lstrip('he') }}|{{ 'ab  '.rstrip() }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'a,b'.split(',', 1) }}|{{ 'a b c'.split(None, 1) }}|{{ 'abc'.startswith(('x', 'a')) }}|{{ 'abc'.endswith('bc') }}|{{ 'hello world'.title() }}|{{ "they're 1st".title() }}|{{ 'ÉCOLE'.lower() }}|{{ 'straße'.upper() }}|{{ 'aXbX'.replace('X', '-', 1) }}|{{ 'ab'.replace('', '-') }}|{{ 'hELLO wORLD'.capitalize() }}|{{ ' x '.strip() }}|{{ 'a</think>b'.split('</think>')[-1] }})jinja",
         R"jinja(a b|hi|llo|ab|['a', 'b', '', 'c']|['a', 'b']|['a', 'b']|['a', 'b c']|True|True|Hello World|They'Re 1St|école|STRASSE|a-bX|-a-b-|Hello world|x|b)jinja"},
        {"filters",
         R"jinja({{ '  x ' | trim }}|{{ 'xhix' | trim('x') }}|{{ 'Ab' | upper }}{{ 'Ab' | lower }}|{{ 'a-b c(d' | title }}|{{ 'hELLO' | capitalize }}|{{ '' | default('d', true) }}{{ '' | default('d') }}{{ none | default('d') }}|{{ [3, 4] | first }}{{ [3, 4] | last }}{{ 'abc' | last }}{{ {'a': 1, 'b': 2} | first }}|{{ [1, 2] | join }}{{ [1, 'a'] | join(', ') }}|{{ [{'n': 'x'}, {'n': 'y'}] | join('+', attribute='n') }}|{{ 'aaa' | replace('a', 'b', 2) }}|{{ 5 | string ~ true | string }}|{{ '42' | int }} {{ '4.7' | int }} {{ 'x' | int(5) }} {{ 3.9 | int }} {{ ' 7 ' | int }} {{ true | int }} {{ none | int }}|{% for k, v in {'a': 1, 'b': [2]} | items %}{{ k }}{{ v }}{% endfor %}|{{ 'ab' | list }}{{ {'a': 1} | list }}|{{ [1, 2] | length }}{{ {'a': 1} | count }}|{{ 'x' | safe }})jinja",
         R"jinja(x|hi|ABab|A-B C(D|Hello|dNone|34ca|121, a|x+y|bba|5True|42 4 5 3 7 1 0|a1b[2]|['a', 'b']['a']|21|x)jinja"},
        {"select_map",
         R"jinja({{ [{'a': 1}, {'a': 2}, {'b': 3}] | selectattr('a', 'defined') | map(attribute='a') | join(',') }}|{{ [1, 2, 3, 4] | select('odd') | list }}|{{ [1, 2, 3] | reject('equalto', 2) | list }}|{{ [{'r': 'user'}, {'r': 'tool'}] | rejectattr('r', 'eq', 'tool') | list }}|{{ [{'f': {'n': 'x'}}] | map(attribute='f.n') | list }}|{{ [0, 1, '', 'x'] | select | list }}|{{ [{'a': 1}, {}] | map(attribute='a', default=0) | list }})jinja",
         R"jinja(1,2|[1, 3]|[1, 3]|[{'r': 'user'}]|['x']|[1, 'x']|[1, 0])jinja"},
        {"tojson",
         R"jinja({{ {'b': 1, 'a': [1, 2.0, 'é"\\\n\t\u0001', none, true, 1e-7]} | tojson }}|{{ {'b': 1, 'a': [1, {}], 'c': []} | tojson(indent=2) }}|{{ {'b': 1, 'a': 'é'} | tojson(sort_keys=true, separators=(',', ':')) }}|{{ 'é😀' | tojson(ensure_ascii=true) }}|{{ [1, [2]] | tojson(indent='\t') }}|{{ 'x' | tojson }}{{ 5 | tojson }}{{ none | tojson }})jinja",
         R"jinja({"b": 1, "a": [1, 2.0, "é\"\\\n\t\u0001", null, true, 1e-07]}|{
  "b": 1,
  "a": [
    1,
    {}
  ],
  "c": []
}|{"a":"é","b":1}|"\u00e9\ud83d\ude00"|[
	1,
	[
		2
	]
]|"x"5null)jinja"},
        {"tests",
         R"jinja({{ none is none }} {{ 1 is number }} {{ true is number }} {{ true is integer }} {{ 1 is integer }} {{ 1.0 is float }} {{ 'a' is string }} {{ {} is mapping }} {{ [] is iterable }} {{ 'a' is iterable }} {{ x is iterable }} {{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 2 is eq 2 }} {{ 2 is equalto(3) }} {{ 1 is lt 2 }} {{ 2 is in [1, 2] }} {{ true is true }} {{ 1 is true }} {{ false is sameas false }} {{ 'x' is not string }} {{ true is boolean }} {{ range is callable }} {{ [] is sequence }} {{ 5 is ne 5 }} {{ 3 is ge 3 }} {{ 3 is gt 3 }} {{ 3 is le 2 }})jinja",
         R"jinja(True True True False True True True True True True True True True True True False True True True False True False True True True False True False False)jinja"},
        {"loops",
         R"jinja({% for x in ['a', 'b', 'c'] %}{{ loop.index0 }}{{ loop.index }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.previtem }}{{ loop.nextitem }};{% endfor %})jinja",
         R"jinja(0132TrueFalse3b;1221FalseFalse3ac;2310FalseTrue3b;)jinja"},
        {"loop_else_filter",
         R"jinja({% for x in [] %}a{% else %}empty{% endfor %}|{% for x in [1, 2, 3, 4] if x is even %}{{ loop.index }}/{{ loop.length }}:{{ x }} {% else %}none{% endfor %}|{% for a, b in [[1, 2], [3, 4]] %}{{ a }}{{ b }}{% endfor %}|{% for k in {'x': 1, 'y': 2} %}{{ k }}{% endfor %}|{% for k, v in {'x': 1, 'y': 2}.items() %}{{ k }}={{ v }}{% endfor %}|{% for c in 'hé' %}[{{ c }}]{% endfor %})jinja",
         R"jinja(empty|1/2:2 2/2:4 |1234|xy|x=1y=2|[h][é])jinja"},
        {"loop_controls",
         R"jinja({% for x in [1, 2, 3, 4] %}{% if x == 2 %}{% continue %}{% endif %}{{ x }}{% if x == 3 %}{% break %}{% endif %}{% endfor %}|{% for i in range(2) %}{% for j in range(3) %}{% if j == 1 %}{% break %}{% endif %}{{ i }}{{ j }}{{ loop.index }}{% endfor %}{{ loop.index }};{% endfor %}|{{ range(2, 10, 3) | list }} {{ range(3) | list }} {{ range(3, 0, -1) | list }})jinja", R"jinja(13|0011;1012;|[2, 5, 8] [0, 1, 2] [3, 2, 1])jinja"},
        {"scoping",
         R"jinja({% set x = 0 %}{% for i in [1, 2] %}{{ x }}{% set x = x + i %}{{ x }},{% endfor %}{{ x }}|{% for i in [1, 2] %}{% if i == 1 %}{% set y = 5 %}{% endif %}{{ y }},{% endfor %}[{{ y }}]|{% if true %}{% set z = 'kept' %}{% endif %}{{ z }}|{% set a, b = 1, 2 %}{{ a }}{{ b }}|{% set c %}x{{ a }}{% endset %}[{{ c }}])jinja",
         R"jinja(01,02,0|5,,[]|kept|12|[x1])jinja"},
        {"namespaces",
         R"jinja({% set ns = namespace(total=0, names='') %}{% for m in [{'n': 'a', 'v': 1}, {'n': 'b', 'v': 2}] %}{% set ns.total = ns.total + m.v %}{% set ns.names = ns.names ~ m.n %}{% endfor %}{{ ns.total }}{{ ns.names }}|{% set ns2 = namespace() %}{% set ns2.z = 5 %}{{ ns2.z }}{{ ns2.missing is defined }})jinja",
         R"jinja(3ab|5False)jinja"},
        {"macros",
         R"jinja({% macro greet(name, punctuation='!') %}Hi {{ name }}{{ punctuation }}{% endmacro %}{{ greet('Ann') }} {{ greet('Bob', punctuation='?') }} {{ greet(name='Cy') }}|{% macro count(n) %}{% if n > 0 %}{{ n }}{{ count(n - 1) }}{% endif %}{% endmacro %}{{ count(3) }}|{% set outer = 'o' %}{% macro see() %}{{ outer }}{{ inner is defined }}{% endmacro %}{% for inner in [1] %}{{ see() }}{% endfor %}|{% macro m(a, b) %}{{ a }}-{{ b is defined }}{% endmacro %}{{ m(1) }})jinja",
         R"jinja(Hi Ann! Hi Bob? Hi Cy!|321|oFalse|1-False)jinja"},
        {"whitespace",
         R"jinja(  {% if true %}
  x
  {% endif %}
  {{ 'y' }}
  {# c #}
z {%- if true -%}  w  {%- endif %}
{%+ if true %}p{% endif +%}
q {{- ' r ' -}} s
)jinja",
         R"jinja(  x
  y
zwp
q r s)jinja"},
        {"comments",
         R"jinja(a  {#- c -#}  b {# c #}
  c
  {# d #}
 e{# multi
line #}f)jinja",
         R"jinja(ab   c
 ef)jinja"},
        {"crlf",
         R"jinja({% if true %}
a
{% endif %}
b
)jinja",
         R"jinja(a
b)jinja"},
        {"dict_methods",
         R"jinja({{ {'a': 1}.get('b', 'z') }} {{ {'a': 1}.get('a') }} {{ {'a': 1}.get('q') }} {{ {'a': 1, 'b': 2}.keys() | list }} {{ {'a': 1, 'b': 2}.values() | list }} {{ ({'a': 1}.items() | list)[0][1] }})jinja",
         R"jinja(z 1 None ['a', 'b'] [1, 2] 1)jinja"},
};

TEST(ChatTemplateTest, RendersTheLanguageAsJinja2Does) {
  for (const LanguageCase& test_case : kLanguageCases) {
    EXPECT_EQ(render(test_case.source), test_case.expected) << test_case.name;
  }
}

TEST(ChatTemplateTest, GenerationTagRendersItsBody) {
  // transformers' {% generation %} marks the assistant's text; the text renders as usual.
  EXPECT_EQ(
      render("{% for m in ['a', 'b'] %}{% generation %}<{{ m }}>{% endgeneration %}{% endfor %}"),
      "<a><b>");
}

TEST(ChatTemplateTest, TuplesAreLists) {
  // Kite has no tuple type: (1, 2), dict.items() and "a, b" give lists, printed as lists.
  EXPECT_EQ(render("{{ (1, 2) }} {% set t = 3, 4 %}{{ t }} {{ {'a': 1}.items() | list }}"),
            "[1, 2] [3, 4] [['a', 1]]");
}

TEST(ChatTemplateTest, ContextVariables) {
  ChatTemplateContext context;
  context.bos_token = "<s>";
  context.eos_token = "</s>";
  context.add_generation_prompt = false;
  const ordered_json messages = ordered_json::parse(R"([{"role": "user", "content": "hi"}])");
  const std::string source =
      "{{ bos_token }}{{ messages[0].role }}:{{ messages[0]['content'] }}{{ eos_token }} {{ "
      "add_generation_prompt }} "
      "{{ tools is defined }} {{ tools is none }} {{ documents is none }} {{ custom is defined }}";
  EXPECT_EQ(render(source, messages, context), "<s>user:hi</s> False True True True False");
  context.tools = ordered_json::parse(R"([{"type": "function", "function": {"name": "f"}}])");
  context.extra_variables = {{"custom", 1}, {"eos_token", "<eos>"}};
  EXPECT_EQ(render(source, messages, context), "<s>user:hi<eos> False True False True True");
  EXPECT_EQ(render("{{ tools[0].function.name }}", messages, context), "f");
}

TEST(ChatTemplateTest, ToJsonKeepsTheRequestKeyOrder) {
  const ordered_json messages =
      ordered_json::parse(R"([{"role": "user", "z": 1, "a": {"y": 2, "b": 3}}])");
  EXPECT_EQ(render("{{ messages[0] | tojson }}", messages),
            R"({"role": "user", "z": 1, "a": {"y": 2, "b": 3}})");
  EXPECT_EQ(render("{{ messages[0] }}", messages),
            R"({'role': 'user', 'z': 1, 'a': {'y': 2, 'b': 3}})");
}

TEST(ChatTemplateTest, StrftimeNowFormatsTheContextTime) {
  ChatTemplateContext context;
  context.now = kNoonUtc;
  EXPECT_EQ(render("{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%Y-%m-%d') }}",
                   ordered_json::array(), context),
            "26 Jul 2024|2024-07-26");
  EXPECT_EQ(render("{{ strftime_now('%Y') | length }}"), "4");  // unset: now
}

TEST(ChatTemplateTest, RaiseExceptionGivesItsMessage) {
  Result<std::string> text = try_render("line one\n{{ raise_exception('Roles must alternate') }}");
  ASSERT_FALSE(text.is_ok());
  EXPECT_EQ(text.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(text.status().message(), "chat template line 2: Roles must alternate");
}

TEST(ChatTemplateTest, RuntimeErrorsNameTheProblem) {
  EXPECT_EQ(render("{{ x.y }}"), "error: chat template line 1: 'x' is undefined");
  EXPECT_EQ(render("\n{{ none + 'a' }}"),
            "error: chat template line 2: unsupported operand type(s) for +: 'NoneType' and 'str'");
  EXPECT_EQ(render("{{ x + 'a' }}"), "error: chat template line 1: 'x' is undefined");
  EXPECT_EQ(render("{{ [1][5].a }}"),
            "error: chat template line 1: 'list object' has no element 5");
  EXPECT_EQ(render("{{ 1 // 0 }}"),
            "error: chat template line 1: integer division or modulo by zero");
  EXPECT_EQ(render("{{ 1 < 'a' }}"),
            "error: chat template line 1: '<' not supported between instances of 'int' and 'str'");
  EXPECT_EQ(render("{% for a, b in [[1]] %}{% endfor %}"),
            "error: chat template line 1: cannot unpack 1 values into 2");
  EXPECT_EQ(render("{{ 'a'.nope() }}"),
            "error: chat template line 1: the method str.nope() is not supported in Kite's chat "
            "templates");
  EXPECT_EQ(render("{{ 'a' | trim(1, 2) }}"),
            "error: chat template line 1: strip() takes at most 1 arguments (2 given)");
  EXPECT_EQ(render("{% set x = 1 %}{% set x.a = 2 %}"),
            "error: chat template line 1: cannot set an attribute of 'x', not a namespace");
  EXPECT_EQ(render("{{ 9223372036854775807 + 1 }}"),
            "error: chat template line 1: integer overflow in +");
  EXPECT_EQ(render("{{ undefined_function() }}"),
            "error: chat template line 1: 'undefined_function' is undefined");
}

TEST(ChatTemplateTest, SyntaxErrorsNameTheLine) {
  Result<ChatTemplate> parsed = ChatTemplate::parse("ok\n{% if x %}\n{{ x ) }}\n{% endif %}");
  ASSERT_FALSE(parsed.is_ok());
  EXPECT_EQ(parsed.status().code(), StatusCode::kCorrupt);
  EXPECT_EQ(parsed.status().message(), "chat template line 3: unexpected ')'");
  EXPECT_EQ(render("{% for x in y %}"), "error: chat template line 1: missing {% endfor %}");
  EXPECT_EQ(render("{% endif %}"), "error: chat template line 1: unknown tag 'endif'");
  EXPECT_EQ(render("{% break %}"), "error: chat template line 1: 'break' outside a loop");
  EXPECT_EQ(render("\n\n{{ 'abc }}"),
            "error: chat template line 3: a string without its closing quote");
  EXPECT_EQ(render("{# never closed"), "error: chat template line 1: a comment without its '#}'");
  EXPECT_EQ(render("{{ 1 + }}"), "error: chat template line 1: unexpected '}}'");
}

TEST(ChatTemplateTest, FeaturesOutsideTheSubsetAreUnsupported) {
  for (const char* source :
       {"{{ x | wordcount }}", "{{ -1 | abs }}", "{{ x | indent }}", "{{ x is escaped }}",
        "{% raw %}{% endraw %}", "{% for x in y recursive %}{% endfor %}", "{{ f(*args) }}",
        "{% include 'x' %}"}) {
    Result<ChatTemplate> parsed = ChatTemplate::parse(source);
    ASSERT_FALSE(parsed.is_ok()) << source;
    EXPECT_EQ(parsed.status().code(), StatusCode::kUnsupported) << source;
  }
}

TEST(ChatTemplateTest, MalformedTemplatesFailCleanly) {
  for (const char* source : {"{{",
                             "{%",
                             "{{ x",
                             "{% if %}",
                             "{% for %}",
                             "{% for x in %}{% endfor %}",
                             "{{ (1 }}",
                             "{{ ) }}",
                             "{{ x[ }}",
                             "{{ [1, }}",
                             "{{ {1: }}",
                             "{% set %}",
                             "{% macro %}",
                             "{% if x %}{% else %}{% else %}{% endif %}",
                             "{{ 'a' is }}",
                             "{{ x.1.2 }}",
                             "{% %}",
                             "{{ \"\\x4\" }}",
                             "}}",
                             "{{ 1 !}}",
                             "{% set x = 1 %",
                             "{{- -}}",
                             "{{ a if }}",
                             "{{ 99999999999999999999 }}",
                             "{% macro m(a, a) %}{% endmacro %}{{ m(1, 2, 3) }}"}) {
    (void)render(source);  // any outcome but a crash; most are errors
  }
  EXPECT_EQ(render("}}"), "}}");
  EXPECT_EQ(render("{{ x.1.2 }}"), "error: chat template line 1: 'x' is undefined");
}

TEST(ChatTemplateTest, LimitsStopRunawayTemplates) {
  auto expect_limit = [](const std::string& source) {
    Result<std::string> text = try_render(source);
    ASSERT_FALSE(text.is_ok()) << source;
    EXPECT_EQ(text.status().code(), StatusCode::kOutOfRange)
        << source << ": " << text.status().message();
  };
  expect_limit("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}");  // output size
  expect_limit("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}");           // recursion
  expect_limit(
      "{% for i in range(1000) %}{% for j in range(1001) %}{% endfor %}{% endfor %}");  // iterations
  expect_limit("{{ range(10000000) | length }}");
  expect_limit(
      "{% set ns = namespace(x=[1, 2]) %}{% for i in range(40) %}{% set ns.x = ns.x + ns.x %}{% "
      "endfor %}");
  expect_limit(
      "{% set ns = namespace(x=[1]) %}{% for i in range(40) %}{% set ns.x = [ns.x, ns.x] %}{% "
      "endfor %}");
  expect_limit(
      "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% "
      "endfor %}");
  expect_limit("{{ 'x' * 100000000 }}");
  expect_limit("{{ 'x'.replace('', 'y' * 10000000) }}");
  expect_limit("{{ " + std::string(500, '(') + "1" + std::string(500, ')') +
               " }}");  // parser recursion
  std::string chain = "{{ 1";
  for (int i = 0; i < 500; ++i) chain += " + 1";
  expect_limit(chain + " }}");  // expression depth
  std::string nested;
  for (int i = 0; i < 200; ++i) nested += "{% if true %}";
  expect_limit(nested);
  // Deeply nested data from a request.
  ordered_json deep = ordered_json::array();
  for (int i = 0; i < 1000; ++i) deep = ordered_json::array({deep});
  Result<std::string> text = try_render("{{ messages | tojson }}", deep);
  ASSERT_FALSE(text.is_ok());
  EXPECT_EQ(text.status().code(), StatusCode::kOutOfRange);
}

TEST(ChatTemplateTest, RendersOnManyThreadsAtOnce) {
  Result<ChatTemplate> parsed = ChatTemplate::parse(
      "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{{ m.content | "
      "upper }}{% endfor %}{{ ns.n }}");
  ASSERT_TRUE(parsed.is_ok()) << parsed.status().message();
  const ordered_json messages = ordered_json::parse(R"([{"content": "a"}, {"content": "b"}])");
  std::vector<std::thread> threads;
  std::vector<std::string> outputs(8);
  for (size_t t = 0; t < outputs.size(); ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) outputs[t] = parsed->render(messages, {}).value();
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (const std::string& output : outputs) EXPECT_EQ(output, "AB2");
}

// ---- Golden tests against jinja2 on real chat templates.

std::string fixture_dir() {
  return test::source_dir() + "/tests/fixtures/chat_templates";
}

ordered_json load_fixture(const std::string& name) {
  Result<std::string> text = read_file(fixture_dir() + "/" + name + ".json");
  KITE_CHECK(text.is_ok());
  return ordered_json::parse(*text);
}

// The fixtures make_chat_template_fixtures.py writes (listed here so that test discovery needs no
// files; FixtureListMatchesDirectory keeps the list complete).
const std::vector<std::string> kTemplates = {
    "deepseek_r1_distill", "gemma",        "llama2",  "llama3", "llama3_2",
    "mistral_nemo",        "mistral_v0_1", "qwen2_5", "smollm2"};

TEST(ChatTemplateGoldenTest, FixtureListMatchesDirectory) {
  std::vector<std::string> found;
  for (const auto& entry : std::filesystem::directory_iterator(fixture_dir())) {
    if (entry.path().stem() != "conversations") found.push_back(entry.path().stem().string());
  }
  std::sort(found.begin(), found.end());
  EXPECT_EQ(found, kTemplates);
}

class ChatTemplateGoldenTest : public testing::TestWithParam<std::string> {};

TEST_P(ChatTemplateGoldenTest, RendersAsJinja2) {
  const ordered_json shared = load_fixture("conversations");
  const ordered_json fixture = load_fixture(GetParam());
  Result<ChatTemplate> chat_template = ChatTemplate::parse(fixture["template"].get<std::string>());
  ASSERT_TRUE(chat_template.is_ok()) << chat_template.status().message();
  int rendered = 0;
  for (const ordered_json& test_case : fixture["cases"]) {
    ChatTemplateContext context;
    context.bos_token = fixture["bos_token"];
    context.eos_token = fixture["eos_token"];
    context.add_generation_prompt = test_case["add_generation_prompt"];
    if (test_case["tools"].get<bool>()) context.tools = shared["tools"];
    context.extra_variables = test_case["extra_variables"];
    context.now = shared["now"].get<std::time_t>();
    const ordered_json& messages =
        shared["conversations"][test_case["conversation"].get<std::string>()];
    SCOPED_TRACE(test_case.dump().substr(0, 160));
    Result<std::string> text = chat_template->render(messages, context);
    if (test_case.contains("expected")) {
      ASSERT_TRUE(text.is_ok()) << text.status().message();
      EXPECT_EQ(*text, test_case["expected"].get<std::string>());
      ++rendered;
      continue;
    }
    ASSERT_FALSE(text.is_ok()) << "jinja2 raised " << test_case["error"]
                               << "; Kite rendered: " << *text;
    const std::string error = test_case["error"];
    const std::string raised = "TemplateError: ";  // a raise_exception: Kite must give its message
    if (error.starts_with(raised)) {
      EXPECT_NE(text.status().message().find(error.substr(raised.size())), std::string::npos)
          << text.status().message();
      EXPECT_EQ(text.status().code(), StatusCode::kInvalidArgument);
    }
  }
  EXPECT_GE(rendered, 6);
}

INSTANTIATE_TEST_SUITE_P(ChatTemplate, ChatTemplateGoldenTest, testing::ValuesIn(kTemplates),
                         [](const testing::TestParamInfo<std::string>& param) {
                           return param.param;
                         });

}  // namespace
}  // namespace kite
