#!/usr/bin/env python3
"""End-to-end test of `kite serve` (run by CTest, label `server`).

Builds a small random-weight CPU engine with the tiny fixture tokenizer and a ChatML chat template,
starts `kite serve` on a free port with an API key, and checks:
  - the official `openai` client: completions and chat, streaming and not, usage;
  - the KServe v2 / Triton generate API and health routes over plain HTTP (urllib);
  - bad words (KServe's bad_words, vLLM's on /v1/completions): a banned token of the greedy output
    is never produced, and the output changes where it came;
  - a load of 32 concurrent clients and 320 requests: no errors, every stream complete, and greedy
    outputs identical to the same requests run one at a time;
  - a client that disconnects mid-stream: its request is cancelled and /metrics shows no KV cache
    block in use afterwards;
  - bad requests get 400 and a missing or wrong API key 401;
  - SIGTERM stops the server with exit status 0.
Exits 77 (CTest's skip) when the `openai` package is missing.
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from kite_server import Server, check, convert_and_build, fail

API_KEY = "kite-test-key"
MODEL = "tiny"
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
MAX_SEQ_LEN = 1280


def build_engine(kite, source_dir, work):
    """A random Llama big enough that a long generation takes seconds (4 layers, hidden 512)."""
    model = os.path.join(work, "model")
    os.makedirs(model)
    fixture = os.path.join(source_dir, "tests", "fixtures", "tiny_llama")
    shutil.copy(os.path.join(fixture, "tokenizer.json"), model)
    with open(os.path.join(fixture, "config.json")) as f:
        config = json.load(f)
    config.update(hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048)
    with open(os.path.join(model, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(fixture, "tokenizer_config.json")) as f:
        tokenizer_config = json.load(f)
    tokenizer_config["chat_template"] = CHAT_TEMPLATE
    with open(os.path.join(model, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config, f)
    return convert_and_build(kite, model, work,
                             ["--max_batch_size", "16", "--max_input_len", "256",
                              "--max_seq_len", str(MAX_SEQ_LEN), "--tokens_per_block", "16"])


def http_request(server, method, path, body=None, key=API_KEY, raw_body=None):
    """(status, parsed JSON or text) of one request."""
    data = raw_body if raw_body is not None else (json.dumps(body).encode() if body else None)
    request = urllib.request.Request(server.url + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def sse_events(response):
    """The data of each server-sent event of an http.client response, as it arrives."""
    data = []
    for raw in response:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and data:
            yield "\n".join(data)
            data = []


def complete_stream(server, path, body):
    """Runs a streaming OpenAI request over raw HTTP; returns (text, finish_reason). Fails unless
    the stream is complete: JSON chunks, one finish reason, then [DONE]."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.request("POST", path, json.dumps(dict(body, stream=True)),
                           {"Content-Type": "application/json",
                            "Authorization": f"Bearer {API_KEY}"})
        response = connection.getresponse()
        if response.status != 200:
            fail(f"{path}: status {response.status}: {response.read()!r}")
        text, finish_reason, done = "", None, False
        for event in sse_events(response):
            check(not done, "an event after [DONE]")
            if event == "[DONE]":
                done = True
                continue
            chunk = json.loads(event)
            check("error" not in chunk, f"error event: {chunk}")
            for choice in chunk["choices"]:
                text += choice["delta"].get("content", "") if "delta" in choice else choice["text"]
                if choice["finish_reason"] is not None:
                    check(finish_reason is None, "two finish reasons")
                    finish_reason = choice["finish_reason"]
        check(done, "the stream ended without [DONE]")
        check(finish_reason in ("stop", "length"), f"finish_reason {finish_reason}")
        return text, finish_reason
    finally:
        connection.close()


def complete(server, path, body):
    status, response = http_request(server, "POST", path, body)
    check(status == 200, f"{path}: {status} {response}")
    choice = response["choices"][0]
    text = choice["message"]["content"] if "message" in choice else choice["text"]
    return text, choice["finish_reason"]


def test_openai_client(server):
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY)
    models = client.models.list()
    check([model.id for model in models.data] == [MODEL], f"models: {models}")

    completion = client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=12,
                                           temperature=0)
    check(completion.object == "text_completion", f"{completion}")
    usage = completion.usage
    check(usage.completion_tokens == 12 if completion.choices[0].finish_reason == "length"
          else 0 < usage.completion_tokens <= 12, f"usage {usage}")
    check(completion.usage.total_tokens ==
          completion.usage.prompt_tokens + completion.usage.completion_tokens, "total_tokens")
    streamed = ""
    usage = None
    for chunk in client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=12,
                                           temperature=0, stream=True,
                                           stream_options={"include_usage": True}):
        if chunk.choices:
            streamed += chunk.choices[0].text
        if chunk.usage:
            usage = chunk.usage
    check(streamed == completion.choices[0].text,
          f"streamed {streamed!r} != {completion.choices[0].text!r}")
    echoed = client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=12,
                                       temperature=0, echo=True)
    check(echoed.choices[0].text == "The quick brown fox" + completion.choices[0].text,
          f"echo: {echoed.choices[0].text!r}")
    check(usage is not None and usage.completion_tokens == completion.usage.completion_tokens,
          f"stream usage {usage}")
    # echo with logprobs: the prompt's tokens lead (the first without a log-probability), then
    # the output's; the text is unchanged.
    scored = client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=12,
                                       temperature=0, echo=True, logprobs=2)
    scored_logprobs = scored.choices[0].logprobs
    prompt_count = scored.usage.prompt_tokens
    check(scored.choices[0].text == echoed.choices[0].text, f"echo+logprobs: {scored}")
    check(len(scored_logprobs.token_logprobs) == prompt_count + scored.usage.completion_tokens,
          "a log-prob per prompt and output token")
    check(scored_logprobs.token_logprobs[0] is None and scored_logprobs.top_logprobs[0] is None,
          "the first prompt token has no log-prob")
    check(all(p <= 0.0 for p in scored_logprobs.token_logprobs[1:]), "log-probs <= 0")
    check("".join(scored_logprobs.tokens[:prompt_count]) == "The quick brown fox",
          f"prompt tokens {scored_logprobs.tokens[:prompt_count]}")
    # vLLM's prompt_logprobs: the same log-probabilities, with each token's rank.
    ranked = client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=2,
                                       temperature=0, extra_body={"prompt_logprobs": 1})
    positions = ranked.choices[0].model_dump()["prompt_logprobs"]
    check(len(positions) == prompt_count and positions[0] is None, f"prompt_logprobs {positions}")
    for position, expected in zip(positions[1:], scored_logprobs.token_logprobs[1:prompt_count]):
        chosen = [entry for entry in position.values()
                  if abs(entry["logprob"] - expected) < 1e-4]
        check(chosen and chosen[0]["rank"] >= 1, f"prompt_logprobs {position} vs {expected}")

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10,
                                          temperature=0, seed=1)
    check(chat.choices[0].message.role == "assistant", f"{chat}")
    streamed = ""
    for chunk in client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10,
                                                temperature=0, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            streamed += chunk.choices[0].delta.content
    check(streamed == chat.choices[0].message.content,
          f"chat streamed {streamed!r} != {chat.choices[0].message.content!r}")

    # Seeded sampling repeats; logprobs come back.
    sampled = [client.completions.create(model=MODEL, prompt="Once", max_tokens=8, temperature=1.0,
                                         top_p=0.9, seed=7, logprobs=1) for _ in range(2)]
    check(sampled[0].choices[0].text == sampled[1].choices[0].text, "seeded sampling differs")
    check(len(sampled[0].choices[0].logprobs.token_logprobs) == sampled[0].usage.completion_tokens,
          "one log-prob per token")
    # The most likely tokens of each position (greedy: the chosen one first).
    top = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                         max_tokens=6, temperature=0, logprobs=True,
                                         top_logprobs=3)
    content = top.choices[0].logprobs.content
    check(len(content) == top.usage.completion_tokens, "one log-prob entry per token")
    for entry in content:
        check(len(entry.top_logprobs) == 3, f"3 top log-probs, got {entry.top_logprobs}")
        check(entry.top_logprobs[0].logprob == entry.logprob, "greedy: the top token is the chosen")
        check(all(a.logprob >= b.logprob for a, b in zip(entry.top_logprobs, entry.top_logprobs[1:])),
              "top log-probs in order")

    # n choices, a request each with seeds seed, seed + 1, ...: choice 0 is the request alone,
    # sampled choices differ; streamed greedy choices are each the greedy text.
    several = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8,
                                        temperature=1.0, seed=3, n=3)
    check([choice.index for choice in several.choices] == [0, 1, 2], f"choices {several}")
    alone = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8,
                                      temperature=1.0, seed=3)
    check(several.choices[0].text == alone.choices[0].text,
          f"choice 0 {several.choices[0].text!r} != the request alone {alone.choices[0].text!r}")
    check(len({choice.text for choice in several.choices}) > 1, f"3 equal samples: {several}")
    check(several.usage.prompt_tokens == alone.usage.prompt_tokens and
          0 < several.usage.completion_tokens <= 24, f"usage {several.usage}")
    texts = ["", ""]
    finishes = [0, 0]
    for chunk in client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10,
                                                temperature=0, stream=True, n=2):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            finishes[choice.index] += choice.finish_reason is not None
    check(texts == [chat.choices[0].message.content] * 2 and finishes == [1, 1],
          f"streamed n=2 {texts} {finishes}")

    # Errors surface as the client's exceptions.
    for kwargs in ({"n": 0}, {"max_tokens": 100000}):
        try:
            client.completions.create(model=MODEL, prompt="x", **kwargs)
            fail(f"{kwargs} was accepted")
        except openai.BadRequestError:
            pass
    try:
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong").models.list()
        fail("a wrong API key was accepted")
    except openai.AuthenticationError:
        pass
    print("ok: openai client (completions, chat, streaming, usage, n choices, errors)")


def test_kserve(server):
    for path in ("/v2/health/ready", "/v2/health/live", "/health"):
        status, _ = http_request(server, "GET", path, key=None)  # no key needed
        check(status == 200, f"{path}: {status}")
    prompt = "Tell me"
    status, output = http_request(server, "POST", f"/v2/models/{MODEL}/generate",
                                  {"text_input": prompt, "max_tokens": 10, "bad_words": "",
                                   "stop_words": ""})
    check(status == 200, f"generate: {status} {output}")
    check(output["model_name"] == MODEL and output["model_version"] == "1", f"{output}")
    # Greedy by default, like the OpenAI API at temperature 0.
    text, _ = complete(server, "/v1/completions",
                       {"prompt": prompt, "max_tokens": 10, "temperature": 0})
    check(output["text_output"] == prompt + text, f"{output['text_output']!r} != {prompt + text!r}")

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.request("POST", f"/v2/models/{MODEL}/generate_stream",
                       json.dumps({"text_input": prompt, "max_tokens": 10}),
                       {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
    response = connection.getresponse()
    check(response.status == 200, f"generate_stream: {response.status}")
    streamed = "".join(json.loads(event)["text_output"] for event in sse_events(response))
    connection.close()
    check(streamed == text, f"generate_stream {streamed!r} != {text!r}")

    status, output = http_request(server, "POST", "/v2/models/other/generate",
                                  {"text_input": prompt})
    check(status == 404 and "error" in output, f"unknown model: {status} {output}")
    status, output = http_request(server, "POST", f"/v2/models/{MODEL}/generate",
                                  {"text_input": prompt, "bad_words": 5})
    check(status == 400 and "bad_words" in output["error"], f"bad_words: {status} {output}")
    print("ok: KServe generate, generate_stream, health")


def token_ids(server, text):
    """The ids of `text` tokenized alone, without special tokens (`kite tokenize`)."""
    result = subprocess.run([server.kite, "tokenize", "--engine_dir", server.engine, "--text", text,
                             "--no_special_tokens", "--json"], capture_output=True, text=True)
    check(result.returncode == 0, f"kite tokenize {text!r}: {result.stdout}{result.stderr}")
    return json.loads(result.stdout)["ids"]


def test_bad_words(server):
    """A token of the greedy output banned through bad_words: the output is the same up to where
    it came, then another (KServe); the token never comes (vLLM's bad_words on /v1/completions)."""
    prompt = "Tell me"
    greedy = {"prompt": prompt, "max_tokens": 16, "temperature": 0, "logprobs": 1}
    status, response = http_request(server, "POST", "/v1/completions", greedy)
    check(status == 200, f"completions: {status} {response}")
    tokens = response["choices"][0]["logprobs"]["tokens"]
    # A token that is a word of its own (no leading space, which vLLM strips, and one token when
    # tokenized alone) and new where it comes; after the first token if one is, so that the
    # output before it is seen unchanged.
    candidates = [i for i, token in enumerate(tokens)
                  if token and token == token.lstrip() and token not in tokens[:i] and
                  len(token_ids(server, token)) == 1]
    check(candidates, f"no token of the greedy output {tokens} to ban")
    at = next((i for i in candidates if i > 0), candidates[0])
    word = tokens[at]
    before = "".join(tokens[:at])

    status, output = http_request(server, "POST", f"/v2/models/{MODEL}/generate",
                                  {"text_input": prompt, "max_tokens": 16, "bad_words": [word],
                                   "exclude_input_in_output": True})
    check(status == 200, f"generate with bad_words: {status} {output}")
    banned_text = output["text_output"]
    check(banned_text.startswith(before) and banned_text != "".join(tokens),
          f"bad_words {word!r}: {banned_text!r}, greedy {''.join(tokens)!r}")
    check(not banned_text[len(before):].startswith(word),
          f"bad_words {word!r}: {banned_text!r} has it at token {at}")

    status, response = http_request(server, "POST", "/v1/completions",
                                    dict(greedy, bad_words=[word]))
    check(status == 200, f"completions with bad_words: {status} {response}")
    banned_tokens = response["choices"][0]["logprobs"]["tokens"]
    check(banned_tokens[:at] == tokens[:at] and word not in banned_tokens,
          f"bad_words {word!r}: {banned_tokens}, greedy {tokens}")
    print(f"ok: bad_words (KServe, vLLM's on /v1/completions): {word!r} banned at token {at}")


def test_logit_bias(server):
    """OpenAI's logit_bias through the official client: +100 on a token makes it every output token;
    -100 on the greedy first token changes it. KServe's embedding bias does the same."""
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY)
    prompt = "The capital of France is"
    greedy = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0,
                                       logprobs=1)
    first = greedy.choices[0].logprobs.tokens[0]
    word, ids = next(((word, ids) for word in ("the", "and", "a")
                      if len(ids := token_ids(server, word)) == 1), (None, None))
    check(word is not None, "no one-token word to bias")
    forced = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0.7,
                                       seed=3, logit_bias={str(ids[0]): 100})
    check(forced.choices[0].text == word * 4, f"logit_bias +100: {forced.choices[0].text!r}")
    avoided = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0,
                                        logprobs=1,
                                        logit_bias={str(i): -100 for i in token_ids(server, first)})
    check(avoided.choices[0].logprobs.tokens[0] != first,
          f"logit_bias -100 on {first!r}: {avoided.choices[0].logprobs.tokens}")
    status, output = http_request(server, "POST", f"/v2/models/{MODEL}/generate",
                                  {"text_input": prompt, "max_tokens": 3,
                                   "exclude_input_in_output": True,
                                   "embedding_bias_words": [word], "embedding_bias_weights": [100]})
    check(status == 200 and output["text_output"] == word * 3, f"embedding bias: {status} {output}")
    status, response = http_request(server, "POST", "/v1/completions",
                                    {"prompt": prompt, "logit_bias": {"1": 101}})
    check(status == 400 and response["error"]["param"] == "logit_bias",
          f"logit_bias 101: {status} {response}")
    print(f"ok: logit_bias (+100 forces {word!r}, -100 moves {first!r}); KServe embedding bias")


def test_beam_search(server):
    """vLLM's use_beam_search through the openai client: n distinct beams as the n choices, usage
    counting every beam's tokens; streaming it is refused."""
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY)
    prompt = "The capital of France is"
    completion = client.completions.create(model=MODEL, prompt=prompt, max_tokens=5, n=3,
                                           extra_body={"use_beam_search": True, "ignore_eos": True})
    texts = [choice.text for choice in completion.choices]
    check(len(texts) == 3 and len(set(texts)) == 3, f"beams: {texts}")
    check(completion.usage.completion_tokens == 15, f"usage: {completion.usage}")
    try:
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=5, n=2, stream=True,
                                  extra_body={"use_beam_search": True})
        fail("streamed beam search was not refused")
    except openai.BadRequestError:
        pass
    print(f"ok: use_beam_search (3 beams: {texts})")


def test_best_of(server):
    """best_of 4, n 2 through the openai client: the two of the four seeded samples (seed + i) with
    the highest summed log-probability, most likely first, as each sample run alone says."""
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY)
    prompt, seed = "Once upon a time", 21
    common = dict(model=MODEL, prompt=prompt, max_tokens=6, temperature=1.0,
                  extra_body={"ignore_eos": True})
    alone = []
    for i in range(4):
        sample = client.completions.create(seed=seed + i, logprobs=0, **common)
        alone.append((sum(sample.choices[0].logprobs.token_logprobs), i, sample.choices[0].text))
    best = client.completions.create(seed=seed, n=2, best_of=4, **common)
    ranked = sorted(alone, key=lambda entry: (-entry[0], entry[1]))
    texts = [choice.text for choice in best.choices]
    check(texts == [ranked[0][2], ranked[1][2]], f"best_of: {texts}, samples ranked {ranked}")
    check(best.usage.completion_tokens == 24, f"best_of usage: {best.usage}")
    print(f"ok: best_of 4, n 2 (scores {[round(entry[0], 3) for entry in ranked]})")


def test_errors(server):
    cases = [
        ("/v1/completions", b'{"prompt": "x", ', "malformed JSON"),
        ("/v1/completions", json.dumps({"prompt": "x", "max_tokens": "ten"}).encode(),
         "wrong type"),
        ("/v1/completions", json.dumps({"prompt": "x", "n": 0}).encode(), "n < 1"),
        ("/v1/completions", json.dumps({"prompt": "word " * 300}).encode(), "prompt too long"),
        ("/v1/completions", json.dumps({"prompt": "x", "max_tokens": MAX_SEQ_LEN}).encode(),
         "max_tokens over the limit"),
        ("/v1/chat/completions",
         json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode(), "unknown role"),
    ]
    for path, body, what in cases:
        status, response = http_request(server, "POST", path, raw_body=body)
        check(status == 400, f"{what}: {status} {response}")
        error = response["error"]
        check(error["type"] == "invalid_request_error" and error["message"] and
              set(error) == {"message", "type", "param", "code"}, f"{what}: {response}")
    status, response = http_request(server, "GET", "/v1/unknown")
    check(status == 404, f"unknown route: {status}")
    for key in (None, "wrong"):
        for method, path in (("POST", "/v1/completions"), ("GET", "/metrics"),
                             ("POST", f"/v2/models/{MODEL}/generate")):
            status, response = http_request(server, method, path, {"prompt": "x"}, key=key)
            check(status == 401, f"{path} with key {key}: {status}")
    status, _ = http_request(server, "POST", "/v1/completions",
                             raw_body=json.dumps({"prompt": "x" * (9 << 20)}).encode())
    check(status == 413, f"a 9 MiB body: {status}")
    print("ok: 400 for bad requests, 401 without the API key, 404, 413")


def test_load(server):
    """32 clients, 320 requests: no errors, complete streams, the greedy outputs of requests run
    one at a time."""
    cases = []
    for i in range(24):
        max_tokens = 4 + (i * 7) % 37
        if i % 3 == 2:
            body = {"messages": [{"role": "user", "content": f"Question {i}: why?"}],
                    "max_tokens": max_tokens, "temperature": 0}
            cases.append(("/v1/chat/completions", body))
        else:
            body = {"prompt": f"Request {i}: the rain in Spain", "max_tokens": max_tokens,
                    "temperature": 0}
            cases.append(("/v1/completions", body))
    # Shared prefixes, so the load exercises the KV cache's prefix reuse too.
    expected = [complete(server, path, body) for path, body in cases]

    errors = []
    lock = threading.Lock()

    def run(index):
        path, body = cases[index % len(cases)]
        try:
            got = (complete_stream(server, path, body) if index % 2 == 0
                   else complete(server, path, body))
            if got != expected[index % len(cases)]:
                raise AssertionError(f"{got!r} != {expected[index % len(cases)]!r}")
        except Exception as error:  # noqa: BLE001: every failure is collected and reported
            with lock:
                errors.append(f"request {index} ({path}): {error}")

    start = time.time()
    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(run, range(320)))
    seconds = time.time() - start
    check(not errors, f"{len(errors)} of 320 requests failed:\n" + "\n".join(errors[:10]))
    samples = server.metrics()
    check(samples["kite_kv_cache_used_blocks"] == 0, "KV cache blocks still used after the load")
    check(samples["kite_num_requests_running"] == 0, "requests still running after the load")
    print(f"ok: 320 requests from 32 clients in {seconds:.1f} s, "
          "outputs identical to one at a time")


def test_disconnect(server):
    """A client that goes away mid-stream: its request is cancelled and frees its blocks."""
    cancelled = 'kite_requests_finished_total{finish_reason="cancelled"}'
    before = server.metrics().get(cancelled, 0)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.request("POST", "/v1/completions",
                       json.dumps({"prompt": "Tell me a long story", "max_tokens": 1200,
                                   "ignore_eos": True, "stream": True}),
                       {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
    response = connection.getresponse()
    check(response.status == 200, f"status {response.status}")
    events = sse_events(response)
    for _ in range(3):
        next(events)
    check(server.metrics()["kite_kv_cache_used_blocks"] > 0, "the request holds no blocks")
    connection.sock.shutdown(2)
    connection.close()
    deadline = time.time() + 15
    while time.time() < deadline:
        samples = server.metrics()
        if (samples["kite_kv_cache_used_blocks"] == 0 and
                samples["kite_num_requests_running"] == 0 and samples.get(cancelled, 0) > before):
            print("ok: a client disconnecting mid-stream cancels its request; no KV blocks in use")
            return
        time.sleep(0.05)
    fail(f"after the disconnect: {samples}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kite", required=True, help="the kite binary")
    parser.add_argument("--source_dir", default=os.path.join(os.path.dirname(__file__), "..", ".."))
    args = parser.parse_args()
    try:
        import openai  # noqa: F401
    except ImportError:
        print("skipped: the openai package is not installed "
              "(pip install -r scripts/requirements.txt)")
        return 77

    # SIGTERM (timeout(1), a CTest timeout) unwinds like an error, so the server is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("serve_test.py: terminated"))
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="kite_serve_test_") as work:
        engine = build_engine(args.kite, args.source_dir, work)
        server = Server(args.kite, engine, work, API_KEY)
        try:
            test_openai_client(server)
            test_kserve(server)
            test_bad_words(server)
            test_logit_bias(server)
            test_beam_search(server)
            test_best_of(server)
            test_errors(server)
            test_load(server)
            test_disconnect(server)
        except BaseException:
            server.stop()
            print(server.log(), file=sys.stderr)
            raise
        status = server.stop()
        check(status == 0, f"kite serve exited with {status} after SIGTERM:\n{server.log()}")
        check("SIGTERM received, stopping" in server.log(), server.log())
        print("ok: SIGTERM stops the server (exit status 0)")
    print(f"all serve tests passed in {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
