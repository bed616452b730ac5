#!/usr/bin/env python3
"""Renders real chat templates with jinja2 exactly as Hugging Face transformers' apply_chat_template
does, and writes the templates, conversations and expected prompts to tests/fixtures/chat_templates/
for tests/unit/chat_template_test.cc (Kite's own Jinja interpreter must give the same text).

The environment is transformers' (utils/chat_template_utils.py): ImmutableSandboxedEnvironment with
trim_blocks, lstrip_blocks and loop controls; raise_exception; tojson as json.dumps with
ensure_ascii=False; strftime_now, here at a fixed time (NOW, noon UTC, so the date is the same in
every time zone the test may run in). Templates get messages, tools (None when absent), documents
(None), add_generation_prompt, bos_token, eos_token and the case's extra variables.

Writes:
  conversations.json  the conversations and the tool schemas the cases use
  <template>.json     the template's text, where it comes from, its special tokens, and per case
                      the conversation, add_generation_prompt, tools, extra variables and either
                      the expected prompt or the error jinja2 raised ("TemplateError: message" for
                      raise_exception; the test then expects Kite to fail with that message)

Usage: scripts/golden/make_chat_template_fixtures.py [--gguf models/SmolLM2-135M-Instruct.Q4_1.gguf]
       [--out tests/fixtures/chat_templates]
Needs: jinja2 (scripts/requirements.txt); gguf, to read SmolLM2's template from the GGUF (without
--gguf, the template already in the fixture is kept).
"""
import argparse
import json
import os
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

NOW = 1721995200  # 2024-07-26 12:00:00 UTC

# The chat_template of each model's tokenizer_config.json (SmolLM2's comes from its GGUF).
TEMPLATES = {
    "llama3": {
        "source": "meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "template": "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
                    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | "
                    "trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
                    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
                    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
    },
    "llama3_2": {
        "source": "meta-llama/Llama-3.2-3B-Instruct tokenizer_config.json",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "template": r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
""",
    },
    "qwen2_5": {
        "source": "Qwen/Qwen2.5-7B-Instruct tokenizer_config.json",
        "bos_token": "",
        "eos_token": "<|im_end|>",
        "template": r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
""",
    },
    "mistral_v0_1": {
        "source": "mistralai/Mistral-7B-Instruct-v0.1 tokenizer_config.json",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "template": "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
                    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
                    "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
                    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
                    "{{ message['content'] + eos_token + ' ' }}{% else %}{{ raise_exception('Only user and "
                    "assistant roles are supported!') }}{% endif %}{% endfor %}",
    },
    "mistral_nemo": {
        "source": "mistralai/Mistral-Nemo-Instruct-2407 tokenizer_config.json",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "template": r"""{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS][" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val|tojson }}
                    {%- endif %}
                    {%- if not loop.last %}
                        {{- ", " }}
                    {%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- else %}
                    {{- "]" }}
                {%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
            {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST]" + system_message + "\n\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST]" + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif (message.tool_calls is defined and message.tool_calls is not none) %}
        {{- "[TOOL_CALLS][" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- else %}
                {{- "]" + eos_token }}
            {%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- message["content"] + eos_token}}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {%- if message.content is defined and message.content.content is defined %}
            {%- set content = message.content.content %}
        {%- else %}
            {%- set content = message.content %}
        {%- endif %}
        {{- '[TOOL_RESULTS]{"content": ' + content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
""",
    },
    "gemma": {
        "source": "google/gemma-7b-it tokenizer_config.json",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "template": "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
                    "supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != "
                    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
                    "user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}"
                    "{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
                    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
                    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}",
    },
    "llama2": {
        "source": "meta-llama/Llama-2-7b-chat-hf tokenizer_config.json",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "template": "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set "
                    "system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set "
                    "system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] "
                    "== 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
                    "user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != "
                    "false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + "
                    "message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if "
                    "message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif "
                    "message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
                    "{% endfor %}",
    },
    "deepseek_r1_distill": {
        "source": "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B tokenizer_config.json",
        "bos_token": "<｜begin▁of▁sentence｜>",
        "eos_token": "<｜end▁of▁sentence｜>",
        "template": r"""{% if not add_generation_prompt is defined %}
{% set add_generation_prompt = false %}
{% endif %}
{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='') %}
{%- for message in messages %}
{%- if message['role'] == 'system' %}
{% set ns.system_prompt = message['content'] %}
{%- endif %}
{%- endfor %}
{{bos_token}}
{{ns.system_prompt}}
{%- for message in messages %}
{%- if message['role'] == 'user' %}
{%- set ns.is_tool = false -%}
{{'<｜User｜>' + message['content']}}
{%- endif %}
{%- if message['role'] == 'assistant' and message['content'] is none %}
{%- set ns.is_tool = false -%}
{%- for tool in message['tool_calls']%}
{%- if not ns.is_first %}
{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' + tool['function']['arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}}
{%- set ns.is_first = true -%}
{%- else %}
{{'\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' + tool['function']['arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}}
{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}
{%- endif %}
{%- endfor %}
{%- endif %}
{%- if message['role'] == 'assistant' and message['content'] is not none %}
{%- if ns.is_tool %}
{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}
{%- set ns.is_tool = false -%}
{%- else %}
{% set content = message['content'] %}
{% if '</think>' in content %}
{% set content = content.split('</think>')[-1] %}
{% endif %}
{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}
{%- endif %}
{%- endif %}
{%- if message['role'] == 'tool' %}
{%- set ns.is_tool = true -%}
{%- if ns.is_output_first %}
{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}
{%- set ns.is_output_first = false %}
{%- else %}
{{'\n<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}
{%- endif %}
{%- endif %}
{%- endfor -%}
{% if ns.is_tool %}
{{'<｜tool▁outputs▁end｜>'}}
{% endif %}
{% if add_generation_prompt and not ns.is_tool %}
{{'<｜Assistant｜>'}}
{% endif %}""",
    },
}

SYSTEM = {"role": "system", "content": "You are a concise assistant. Answer in one sentence."}
QUESTION = {"role": "user", "content": "What is the capital of France?"}
ANSWER = {"role": "assistant", "content": "The capital of France is Paris."}
FOLLOW_UP = {"role": "user", "content": "And of Italy?"}
TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Température actuelle d'une ville — current weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city, e.g. \"Paris\""},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 16},
            },
            "required": ["city"],
        },
    },
}]
TOOL_CALL = {"id": "call12345", "type": "function", "function": {
    "name": "get_weather",
    "arguments": {"city": "Paris", "days": 3, "threshold": 0.5, "tiny": 1e-07, "huge": 1e16,
                  "precise": True, "note": None, "tags": ["a", "b"]},
}}
CONVERSATIONS = {
    "single_user": [QUESTION],
    "system_user": [SYSTEM, QUESTION],
    "multi_turn": [SYSTEM, QUESTION, ANSWER, FOLLOW_UP],
    "multi_turn_no_system": [QUESTION, ANSWER, FOLLOW_UP, {"role": "assistant", "content": "Rome."}],
    "whitespace_unicode": [
        {"role": "user", "content": "  Héllo 👋 — \"quotes\" and 'apostrophes'\n\tindented {{ not a tag }}\n"},
        {"role": "assistant", "content": "\n¡Hola! 你好 \\ backslash <think>hidden</think> shown  "},
        {"role": "user", "content": "Ünïcödé ñ ß ǅ\u00a0"},
    ],
    "tool_call": [
        SYSTEM,
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
        {"role": "tool", "tool_call_id": "call12345", "name": "get_weather",
         "content": "{\"temperature\": 22, \"unit\": \"celsius\"}"},
        {"role": "assistant", "content": "It is 22 °C in Paris."},
    ],
    "bad_alternation": [QUESTION, FOLLOW_UP],
    "empty": [],
}
# (conversation, with tools, extra variables) for every template; each renders with
# add_generation_prompt true and false.
COMMON_CASES = [(name, False, {}) for name in CONVERSATIONS] + [
    ("system_user", True, {}), ("tool_call", True, {})]
EXTRA_CASES = {
    "llama3_2": [("system_user", False, {"date_string": "01 Jan 2025"}),
                 ("tool_call", True, {"tools_in_user_message": False})],
}


def make_environment():
    """transformers' chat template environment (utils/chat_template_utils.py)."""
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.fromtimestamp(NOW).strftime(format)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[jinja2.ext.loopcontrols])
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = strftime_now
    return environment


def smollm2_template(gguf_path, out_dir):
    if gguf_path:
        from gguf import GGUFReader
        field = GGUFReader(gguf_path).fields["tokenizer.chat_template"]
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    with open(os.path.join(out_dir, "smollm2.json"), encoding="utf-8") as f:
        return json.load(f)["template"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gguf", help="SmolLM2-135M-Instruct GGUF to read its chat template from")
    parser.add_argument("--out", default="tests/fixtures/chat_templates")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    templates = dict(TEMPLATES)
    templates["smollm2"] = {
        "source": "HuggingFaceTB/SmolLM2-135M-Instruct, tokenizer.chat_template of its GGUF",
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "template": smollm2_template(args.gguf, args.out),
    }
    environment = make_environment()
    with open(os.path.join(args.out, "conversations.json"), "w", encoding="utf-8") as f:
        json.dump({"now": NOW, "tools": TOOLS, "conversations": CONVERSATIONS}, f,
                  ensure_ascii=False, indent=1)
        f.write("\n")
    for name, spec in sorted(templates.items()):
        template = environment.from_string(spec["template"])
        cases = []
        for conversation, with_tools, extra in COMMON_CASES + EXTRA_CASES.get(name, []):
            for add_generation_prompt in (True, False):
                case = {"conversation": conversation, "add_generation_prompt": add_generation_prompt,
                        "tools": with_tools, "extra_variables": extra}
                try:
                    case["expected"] = template.render(
                        messages=json.loads(json.dumps(CONVERSATIONS[conversation])),
                        tools=TOOLS if with_tools else None, documents=None,
                        add_generation_prompt=add_generation_prompt,
                        bos_token=spec["bos_token"], eos_token=spec["eos_token"], **extra)
                except Exception as error:  # noqa: BLE001: the fixture records what jinja2 raised
                    case["error"] = f"{type(error).__name__}: {error}"
                cases.append(case)
        fixture = {"source": spec["source"], "bos_token": spec["bos_token"],
                   "eos_token": spec["eos_token"], "template": spec["template"], "cases": cases}
        with open(os.path.join(args.out, name + ".json"), "w", encoding="utf-8") as f:
            json.dump(fixture, f, ensure_ascii=False, indent=1)
            f.write("\n")
        errors = sum("error" in case for case in cases)
        print(f"{name}: {len(cases)} cases, {errors} of them errors")
    print(f"jinja2 {jinja2.__version__}")


if __name__ == "__main__":
    main()
