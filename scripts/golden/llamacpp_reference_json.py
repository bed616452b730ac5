#!/usr/bin/env python3
"""JSON steps of scripts/golden/llamacpp_reference.sh (standard library only).

  llamacpp_reference_json.py format-prompts PROMPTS_JSON INFO_JSON OUT_JSON
      Formats the chat prompts with SmolLM2's ChatML template and writes [{name, kind, text, ...}].
  llamacpp_reference_json.py assemble WORK_DIR OUT_DIR
      Checks the runs in WORK_DIR against each other and writes OUT_DIR/smollm2_reference.json and
      OUT_DIR/smollm2_wikitext2_tokens.json.
"""
import hashlib
import json
import os
import re
import sys

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def fail(message: str) -> None:
    print(f"[llamacpp_reference] error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def chatml(messages) -> str:
    """SmolLM2-Instruct's template (tokenizer.chat_template in its GGUF and tokenizer_config.json)
    with add_generation_prompt=True."""
    text = ""
    if messages[0]["role"] != "system":
        text += "<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n"
    for message in messages:
        text += "<|im_start|>" + message["role"] + "\n" + message["content"] + "<|im_end|>\n"
    return text + "<|im_start|>assistant\n"


def format_prompts(prompts_path: str, info_path: str, out_path: str) -> None:
    spec = json.load(open(prompts_path, encoding="utf-8"))
    template = json.load(open(info_path, encoding="utf-8"))["chat_template"]
    if not template:
        fail(f"the model has no tokenizer.chat_template ({info_path})")
    try:
        import jinja2
        # The settings transformers uses for chat templates.
        renderer = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(template)
    except ImportError:
        renderer = None
        print("[llamacpp_reference] jinja2 not installed: the ChatML formatting is not re-checked "
              "against the model's template", flush=True)
    out = []
    for prompt in spec["prompts"]:
        record = dict(prompt)
        if prompt["kind"] == "chat":
            record["text"] = chatml(prompt["messages"])
            if renderer is not None:
                rendered = renderer.render(messages=prompt["messages"], add_generation_prompt=True)
                if rendered != record["text"]:
                    fail(f"prompt {prompt['name']}: ChatML formatting {record['text']!r} differs "
                         f"from the model's template {rendered!r}")
        elif prompt["kind"] != "plain":
            fail(f"prompt {prompt['name']}: unknown kind {prompt['kind']!r}")
        out.append(record)
    json.dump(out, open(out_path, "w", encoding="utf-8"), ensure_ascii=False, indent=1)
    print(f"[llamacpp_reference] formatted {len(out)} prompts"
          + (" (ChatML checked with jinja2)" if renderer is not None else ""), flush=True)


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_llama_perplexity(log_path: str):
    text = open(log_path, encoding="utf-8", errors="replace").read()
    match = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", text)
    if match is None:
        fail(f"no 'Final estimate: PPL = ...' line in {log_path}")
    return float(match.group(1)), float(match.group(2))


def assemble(work: str, out_dir: str) -> None:
    meta = json.load(open(os.path.join(work, "meta.json"), encoding="utf-8"))
    greedy = json.load(open(os.path.join(work, "greedy.json"), encoding="utf-8"))
    ppl = json.load(open(os.path.join(work, "perplexity.json"), encoding="utf-8"))
    f32_ppl, f32_error = parse_llama_perplexity(os.path.join(work, "llama-perplexity-f32.log"))
    q41_ppl, q41_error = parse_llama_perplexity(os.path.join(work, "llama-perplexity-q4_1.log"))

    # llama-perplexity prints PPL with 4 decimals; the recomputation must agree with it.
    if abs(ppl["perplexity"] - f32_ppl) > 1e-4 * f32_ppl + 5e-5:
        fail(f"the recomputed perplexity {ppl['perplexity']:.6f} disagrees with llama-perplexity's "
             f"{f32_ppl}")
    for record in greedy["prompts"]:
        if len(record["greedy_tokens"]) != meta["new_tokens"]:
            fail(f"prompt {record['name']}: {len(record['greedy_tokens'])} tokens generated")
    if len({tuple(r["greedy_tokens"]) for r in greedy["prompts"]}) != len(greedy["prompts"]):
        fail("two prompts have the same continuation: something is wrong with the prompts")

    tokens_file = "smollm2_wikitext2_tokens.json"
    data_file = meta["data_file"]
    reference = {
        "model": {
            "gguf": os.path.basename(meta["model"]),
            "gguf_sha256": sha256(meta["model"]),
            "reference_weights": "the GGUF dequantized to float32 by llama-quantize "
                                 "--allow-requantize MODEL OUT F32 (every tensor f32: "
                                 + json.dumps(meta["f32_tensor_types"]) + ")",
            "f32_gguf_sha256": sha256(meta["f32_model"]),
            "description": greedy["model_description"],
            "n_vocab": greedy["n_vocab"],
            "add_bos": greedy["add_bos"],
            "bos_id": greedy["bos_id"],
            "eos_id": greedy["eos_id"],
            "chat_template": greedy["chat_template"],
        },
        "llama_cpp": {
            "source": meta["llama_cpp_source"],
            "commit": meta["llama_cpp_commit"],
            "version": meta["llama_cpp_version"],
            "system_info": meta["system_info"],
            "compiler": meta["compiler"],
            "threads": meta["threads"],
        },
        "greedy": {
            "method": "libllama through scripts/golden/llamacpp_reference.cpp on the f32 GGUF: "
                      "prompt text tokenized by llama_tokenize(add_special=true, "
                      "parse_special=true) (SmolLM2 adds no BOS; ChatML markers become special "
                      "tokens), the prompt decoded in one batch at positions 0.., then one token "
                      "a step; each new token is the argmax of the raw logits (lowest id on ties), "
                      "with no sampler, no repetition penalty, and no stop at end-of-generation "
                      "tokens (first_eog_step records where the first came). KV cache float32, "
                      "flash attention off, CPU.",
            "new_tokens": meta["new_tokens"],
            "context": greedy["context"],
            "prompts": greedy["prompts"],
        },
        "perplexity": {
            "method": "llama-perplexity's definition (tools/perplexity/perplexity.cpp, without "
                      "--ppl-stride): the file's bytes as they are (wiki.test.raw has CRLF line "
                      "ends, and they stay), minus one final '\\n' (the '\\r' before it "
                      "stays), are tokenized whole with add_special=true, parse_special=false; "
                      "the token list is cut "
                      "into consecutive chunks of n_ctx tokens (the first n_chunks chunks are "
                      "used; with add_bos the first token of every chunk would be replaced by "
                      "BOS, SmolLM2 adds none); each chunk is evaluated from an empty KV cache at "
                      "positions 0..n_ctx-1, and the logits at positions j = n_ctx/2 .. n_ctx-2 "
                      "score token j+1 (n_ctx - 1 - n_ctx/2 = 255 tokens a chunk for n_ctx 512). "
                      "nll = log(sum(exp(logit - max))) + max - logit[token]; "
                      "perplexity = exp(sum(nll) / count).",
            "data_file": os.path.relpath(data_file, meta["data_dir"]),
            "data_sha256": sha256(data_file),
            "n_ctx": ppl["n_ctx"],
            "n_chunks": ppl["n_chunks"],
            "tokens_evaluated": ppl["n_ctx"] * ppl["n_chunks"],
            "scored_tokens": ppl["count"],
            "file_tokens": ppl["file_tokens"],
            "perplexity_f32": ppl["perplexity"],
            "nll_sum_f32": ppl["nll_sum"],
            "chunks_f32": ppl["chunks"],
            "llama_perplexity_f32": {"ppl": f32_ppl, "plus_minus": f32_error,
                                     "command": meta["perplexity_command_f32"]},
            "llama_perplexity_q4_1": {"ppl": q41_ppl, "plus_minus": q41_error,
                                      "command": meta["perplexity_command_q4_1"],
                                      "note": "the original Q4_1 GGUF run by llama.cpp's own "
                                              "quantized kernels (activations quantized to Q8_1 "
                                              "for the dot products): informative only"},
            "tokens_file": tokens_file,
        },
    }
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "smollm2_reference.json"), "w", encoding="utf-8") as f:
        json.dump(reference, f, ensure_ascii=False, indent=1)
        f.write("\n")
    with open(os.path.join(out_dir, tokens_file), "w", encoding="utf-8") as f:
        json.dump({"data_file": reference["perplexity"]["data_file"],
                   "description": "the first n_ctx * n_chunks tokens of the tokenized file, the "
                                  "ones the perplexity reference evaluates",
                   "n_ctx": ppl["n_ctx"], "n_chunks": ppl["n_chunks"], "tokens": ppl["tokens"]},
                  f, separators=(",", ":"))
        f.write("\n")
    eog = [r["first_eog_step"] for r in greedy["prompts"]]
    print(f"[llamacpp_reference] perplexity f32 {ppl['perplexity']:.4f} (llama-perplexity "
          f"{f32_ppl} +/- {f32_error}), q4_1 {q41_ppl}; first EOG steps {eog}", flush=True)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "format-prompts":
        format_prompts(sys.argv[2], sys.argv[3], sys.argv[4])
    elif len(sys.argv) == 4 and sys.argv[1] == "assemble":
        assemble(sys.argv[2], sys.argv[3])
    else:
        fail(__doc__)


if __name__ == "__main__":
    main()
