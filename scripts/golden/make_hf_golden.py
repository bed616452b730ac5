#!/usr/bin/env python3
"""Builds tiny random Hugging Face models with transformers and records reference outputs for them:
full-prompt logits and greedy continuations, for Kite's end-to-end golden tests.

Usage: python3 scripts/golden/make_hf_golden.py OUT_DIR [--only NAME[,NAME...]]
Needs: torch, transformers 5, safetensors, tokenizers (runs on the CPU, float32, fixed seeds).

For each model it writes OUT_DIR/<name>/: config.json, model.safetensors (and whatever else
save_pretrained writes, e.g. generation_config.json), tokenizer.json (bytes as tokens: id b is
byte b; the prompts are ids, the tokenizer only makes the folder a complete HF model),
reference.json (prompts, greedy tokens, top-2 margins, settings, versions) and
reference.safetensors (logits_<i>: float32 [prompt_length, vocab]).
Exits non-zero, with a message, when anything fails or a self-check does not hold.
"""
import argparse
import json
import os
import platform
import sys
import time

PROMPT_LENGTHS = [5, 17, 33, 60]
NEW_TOKENS = 32
PROMPT_SEED = 1234
WEIGHT_SEED = 20240601
# Standard deviation of the random weights. transformers' default (0.02) gives nearly uniform logits
# on a model this small, so greedy decoding would hinge on rounding noise.
WEIGHT_STD = 0.2
VOCAB = 256


def log(message: str) -> None:
    print(f"[make_hf_golden] {message}", flush=True)


def fail(message: str) -> None:
    print(f"[make_hf_golden] error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def base_config(**overrides):
    config = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                  rms_norm_eps=1e-5, hidden_act="silu", initializer_range=WEIGHT_STD,
                  tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
                  pad_token_id=None, use_cache=True)
    config.update(overrides)
    return config


# name -> (model_type, config arguments, description, name of the feature the self-check disables)
MODELS = {
    "llama_mha": ("llama", base_config(),
                  "Llama, multi-head attention (4 query heads, 4 KV heads), plain RoPE", None),
    "llama_gqa_llama3": ("llama", base_config(
        num_attention_heads=8, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 32}),
        "Llama, grouped-query attention (8 query heads, 2 KV heads, head_dim 16 != hidden/heads), "
        "llama3 RoPE scaling (factor 8, low 1, high 4, original context 32)", "rope"),
    "mistral_sliding_window": ("mistral", base_config(num_key_value_heads=2, sliding_window=8),
                               "Mistral, GQA (4/2), sliding window 8 (shorter than 3 of the 4 "
                               "prompts)", "sliding_window"),
    "qwen2_bias": ("qwen2", base_config(num_key_value_heads=2, use_sliding_window=False),
                   "Qwen2, GQA (4/2), q/k/v projection biases (random, non-zero), no sliding "
                   "window", None),
    "llama_tied": ("llama", base_config(tie_word_embeddings=True),
                   "Llama, output projection tied to the token embedding (no lm_head.weight in "
                   "the file)", None),
    "llama_rope_linear": ("llama", base_config(
        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),
        "Llama, linear RoPE scaling (positions divided by 2)", "rope"),
    "llama_rope_dynamic": ("llama", base_config(
        max_position_embeddings=48,
        rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}),
        "Llama, dynamic NTK RoPE scaling (factor 2, max_position_embeddings 48: the 60-token "
        "prompt and the continuations of the 17-, 33- and 60-token prompts go past it)", "rope"),
    "qwen2_yarn": ("qwen2", base_config(
        num_key_value_heads=2, use_sliding_window=False, max_position_embeddings=256,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                         "original_max_position_embeddings": 64}),
        "Qwen2, YaRN RoPE scaling (factor 4, original context 64; cos and sin scaled by the "
        "attention factor 0.1 ln 4 + 1)", "rope"),
}

DYNAMIC_NOTE = (
    "transformers' dynamic NTK RoPE is stateful: each forward pass uses inverse frequencies "
    "1 / base'^(2i/d) with base' = rope_theta * ((factor * s / max_position_embeddings) - "
    "(factor - 1))^(d/(d-2)) where s = max(max_position_embeddings, 1 + the largest position in "
    "that pass), the frequencies only grow within one model instance, and keys already in the KV "
    "cache keep the rotation of the pass that wrote them. Here every prompt is run on a freshly "
    "loaded model: the full-prompt logits are one pass over the prompt (s = max(48, length)), "
    "generation is one prefill pass then one pass per new token at position p (s = max(48, p + 1)). "
    "A cache-free recomputation therefore differs past position 48, and is not checked.")


def set_weights(torch, model) -> None:
    """Gives every parameter deterministic random values: weights and biases N(0, WEIGHT_STD^2),
    RMSNorm scales uniform in [0.5, 1.5] (transformers initialises biases to 0 and norms to 1, which
    would hide a missing bias or norm scale)."""
    generator = torch.Generator().manual_seed(WEIGHT_SEED)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters(), key=lambda item: item[0]):
            if name.endswith("norm.weight"):
                values = 0.5 + torch.rand(parameter.shape, generator=generator)
            else:
                values = torch.randn(parameter.shape, generator=generator) * WEIGHT_STD
            parameter.copy_(values.to(parameter.dtype))


def byte_level_characters():
    """GPT-2's byte-to-character table of byte-level BPE: byte b -> its printable stand-in."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1))
                 + list(range(ord("\u00ae"), ord("\u00ff") + 1)))
    characters = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in characters:
            characters[b] = chr(256 + extra)
            extra += 1
    return characters


def write_byte_tokenizer(folder: str) -> None:
    """tokenizer.json of a byte-level BPE without merges: token id b is byte b, so the 256-entry
    vocabulary covers any text and the models need no real tokenizer (engines that require
    tokenizer.json, such as `kite convert`, get one)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    characters = byte_level_characters()
    tokenizer = Tokenizer(models.BPE(vocab={characters[b]: b for b in range(VOCAB)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    sample = "Kite \u00e9\u00e8 \u6771\u4eac\n"
    if tokenizer.encode(sample).ids != list(sample.encode("utf-8")):
        fail("the byte tokenizer does not map bytes to their values")
    tokenizer.save(os.path.join(folder, "tokenizer.json"))


def make_prompts(torch):
    generator = torch.Generator().manual_seed(PROMPT_SEED)
    return [torch.randint(0, VOCAB, (length,), generator=generator).tolist()
            for length in PROMPT_LENGTHS]


def load(transformers, folder):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype="float32", attn_implementation="eager")
    model.eval()
    return model


def top2(torch, logits):
    values, ids = torch.topk(logits, 2)
    return ([int(ids[0]), int(ids[1])], [float(values[0]), float(values[1])],
            float(values[0] - values[1]))


def greedy_manual(torch, transformers, folder, prompt):
    """Greedy decoding with an explicit cache loop; cross-checks model.generate."""
    model = load(transformers, folder)
    cache = transformers.DynamicCache(config=model.config)
    tokens = list(prompt)
    next_input = torch.tensor([prompt])
    generated = []
    with torch.no_grad():
        for step in range(NEW_TOKENS):
            position = len(tokens) - next_input.shape[1]
            positions = torch.arange(position, len(tokens)).unsqueeze(0)
            out = model(input_ids=next_input, past_key_values=cache, use_cache=True,
                        position_ids=positions)
            cache = out.past_key_values
            token = int(torch.argmax(out.logits[0, -1]))
            generated.append(token)
            tokens.append(token)
            next_input = torch.tensor([[token]])
    return generated


def run_model(torch, transformers, safetensors_torch, name, model_type, config_args, description,
              ablation, out_dir, prompts):
    folder = os.path.join(out_dir, name)
    os.makedirs(folder, exist_ok=True)
    config = transformers.AutoConfig.for_model(model_type, **json.loads(json.dumps(config_args)))
    torch.manual_seed(WEIGHT_SEED)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                                          attn_implementation="eager")
    set_weights(torch, model)
    model.eval()
    model.save_pretrained(folder)
    write_byte_tokenizer(folder)
    weights_file = os.path.join(folder, "model.safetensors")
    if not os.path.isfile(weights_file):
        fail(f"{name}: save_pretrained wrote no model.safetensors in {folder} "
             f"(found {sorted(os.listdir(folder))})")
    saved_config = json.load(open(os.path.join(folder, "config.json")))
    saved_tensors = safetensors_torch.load_file(weights_file)
    if model_type == "qwen2" and not any(key.endswith("q_proj.bias") for key in saved_tensors):
        fail(f"{name}: no q_proj.bias in {weights_file}")
    if config_args.get("tie_word_embeddings") and "lm_head.weight" in saved_tensors:
        log(f"{name}: note: lm_head.weight is stored although the embeddings are tied")

    reference_tensors = {}
    records = []
    max_cache_free_diff = 0.0
    ablation_diff = None
    for index, prompt in enumerate(prompts):
        # A freshly loaded model for every pass: dynamic RoPE keeps state between calls.
        model = load(transformers, folder)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt])).logits[0].float().contiguous()
        if not torch.isfinite(logits).all():
            fail(f"{name}: non-finite prompt logits for prompt {index}")
        reference_tensors[f"logits_{index}"] = logits

        model = load(transformers, folder)
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor([prompt]),
                                 attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 do_sample=False, num_beams=1, max_new_tokens=NEW_TOKENS,
                                 min_new_tokens=NEW_TOKENS, eos_token_id=None, pad_token_id=None,
                                 output_logits=True, return_dict_in_generate=True)
        generated = out.sequences[0, len(prompt):].tolist()
        if len(generated) != NEW_TOKENS:
            fail(f"{name}: generate returned {len(generated)} new tokens for prompt {index}, "
                 f"expected {NEW_TOKENS}")
        steps = []
        for step, step_logits in enumerate(out.logits):
            ids, values, margin = top2(torch, step_logits[0].float())
            if ids[0] != generated[step]:
                fail(f"{name}: prompt {index} step {step}: generate chose {generated[step]} but the "
                     f"largest logit is token {ids[0]}")
            steps.append({"top2_ids": ids, "top2_logits": values, "margin": margin})

        manual = greedy_manual(torch, transformers, folder, prompt)
        if manual != generated:
            fail(f"{name}: prompt {index}: generate {generated} differs from the explicit cache "
                 f"loop {manual}")

        # The first generated token is the argmax of the last full-prompt logit row.
        if int(torch.argmax(logits[-1])) != generated[0]:
            fail(f"{name}: prompt {index}: first greedy token disagrees with the prompt logits")

        if name != "llama_rope_dynamic":
            # A cache-free pass over prompt + continuation must reproduce the per-step logits.
            model = load(transformers, folder)
            with torch.no_grad():
                full = model(input_ids=torch.tensor([prompt + generated[:-1]])).logits[0]
            for step, step_logits in enumerate(out.logits):
                row = full[len(prompt) - 1 + step]
                max_cache_free_diff = max(max_cache_free_diff,
                                          float((row - step_logits[0]).abs().max()))

        distinct = len(set(generated))
        records.append({"prompt": prompt, "greedy_tokens": generated, "steps": steps,
                        "min_margin": min(step["margin"] for step in steps),
                        "distinct_tokens": distinct})
        log(f"{name}: prompt {index} (length {len(prompt)}): {distinct} distinct tokens, "
            f"minimum top-2 margin {records[-1]['min_margin']:.4g}")

    if max_cache_free_diff > 1e-3:
        fail(f"{name}: cached and cache-free logits differ by {max_cache_free_diff}")
    all_generated = [token for record in records for token in record["greedy_tokens"]]
    if len(set(all_generated)) < 8 or min(r["distinct_tokens"] for r in records) < 3:
        fail(f"{name}: greedy continuations are degenerate "
             f"({[r['distinct_tokens'] for r in records]} distinct tokens per prompt)")
    spread = float(torch.stack([t.std() for t in reference_tensors.values()]).mean())
    if spread < 0.3:
        fail(f"{name}: logits are nearly uniform (mean standard deviation {spread:.3g})")

    if ablation is not None:
        # Self-check that the feature under test changes the outputs on these prompts.
        plain_args = dict(config_args)
        if ablation == "rope":
            plain_args["rope_parameters"] = {"rope_type": "default",
                                             "rope_theta": config_args["rope_parameters"]["rope_theta"]}
        elif ablation == "sliding_window":
            plain_args["sliding_window"] = None
        plain = transformers.AutoConfig.for_model(model_type, **plain_args)
        plain_model = transformers.AutoModelForCausalLM.from_config(
            plain, dtype=torch.float32, attn_implementation="eager")
        plain_model.load_state_dict(load(transformers, folder).state_dict())
        plain_model.eval()
        with torch.no_grad():
            plain_logits = plain_model(input_ids=torch.tensor([prompts[-1]])).logits[0]
        ablation_diff = float((plain_logits - reference_tensors[f"logits_{len(prompts) - 1}"])
                              .abs().max())
        if ablation_diff < 1e-2:
            fail(f"{name}: disabling '{ablation}' changes the longest prompt's logits by only "
                 f"{ablation_diff}: the feature is not exercised")
        log(f"{name}: disabling '{ablation}' changes the longest prompt's logits by "
            f"{ablation_diff:.3g}")

    safetensors_torch.save_file(reference_tensors, os.path.join(folder, "reference.safetensors"),
                                metadata={"format": "pt"})
    reference = {
        "model": name,
        "description": description,
        "model_type": model_type,
        "config_arguments": config_args,
        "saved_config": saved_config,
        "weights": "every parameter random: weights and biases N(0, %g^2), RMSNorm scales "
                   "U[0.5, 1.5], torch.Generator seed %d, in sorted parameter-name order"
                   % (WEIGHT_STD, WEIGHT_SEED),
        "dtype": "float32",
        "device": "cpu",
        "attention_implementation": "eager",
        "prompt_seed": PROMPT_SEED,
        "new_tokens": NEW_TOKENS,
        "greedy": "model.generate(do_sample=False, num_beams=1, max_new_tokens=min_new_tokens=%d, "
                  "eos_token_id=None): argmax of the raw logits at every step, never stopping; "
                  "each prompt alone, no padding, positions from 0" % NEW_TOKENS,
        "logits": "reference.safetensors logits_<i>: float32 [prompt_length, vocab], one forward "
                  "pass over prompt i without cache; row j predicts the token after position j",
        "margins": "steps[k].margin = largest - second largest logit at generated step k (raw "
                   "logits); a step whose margin is below the comparison's logit error may "
                   "legitimately flip",
        "max_abs_diff_cached_vs_cache_free": None if name == "llama_rope_dynamic"
        else max_cache_free_diff,
        "feature_check": None if ablation is None else {
            "disabled": ablation, "max_abs_logit_change_on_longest_prompt": ablation_diff},
        "prompts": records,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
    }
    if model_type == "mistral":
        reference["sliding_window_semantics"] = (
            "query at position i attends to keys at positions j with i - sliding_window < j <= i "
            "(the window holds sliding_window tokens, the query's own included)")
    if name == "llama_rope_dynamic":
        reference["dynamic_rope_semantics"] = DYNAMIC_NOTE
    with open(os.path.join(folder, "reference.json"), "w") as f:
        json.dump(reference, f, indent=1)
        f.write("\n")
    size = sum(os.path.getsize(os.path.join(folder, entry)) for entry in os.listdir(folder))
    log(f"{name}: wrote {folder} ({size / 1024:.0f} KiB)")
    return size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="folder to write the model folders into")
    parser.add_argument("--only", default="", help="comma-separated model names (default: all)")
    args = parser.parse_args()
    try:
        import torch
        import transformers
        import safetensors.torch as safetensors_torch
        import tokenizers  # noqa: F401  (for tokenizer.json)
    except ImportError as error:
        fail(f"missing Python package: {error} (needs torch, transformers 5, safetensors and "
             "tokenizers)")
    if int(transformers.__version__.split(".")[0]) < 5:
        fail(f"transformers {transformers.__version__} found; this script is written for "
             "transformers 5 (rope_parameters, DynamicCache(config=...))")
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    names = [n for n in args.only.split(",") if n] or list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        fail(f"unknown model name(s) {unknown}; known: {list(MODELS)}")
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"python {platform.python_version()}; writing to {args.out_dir}")
    os.makedirs(args.out_dir, exist_ok=True)
    prompts = make_prompts(torch)
    start = time.time()
    total = 0
    for name in names:
        model_type, config_args, description, ablation = MODELS[name]
        total += run_model(torch, transformers, safetensors_torch, name, model_type,
                           json.loads(json.dumps(config_args)), description, ablation,
                           args.out_dir, prompts)
    index_path = os.path.join(args.out_dir, "index.json")
    index = json.load(open(index_path)) if os.path.exists(index_path) else {}
    index.update({name: MODELS[name][2] for name in names})
    with open(index_path, "w") as f:
        json.dump(dict(sorted(index.items())), f, indent=1)
        f.write("\n")
    log(f"done: {len(names)} models, {total / 1024:.0f} KiB in all, {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
