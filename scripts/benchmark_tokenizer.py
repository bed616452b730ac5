#!/usr/bin/env python3
"""Single-threaded encode speed of `kite tokenize` against the Hugging Face tokenizers library,
on one text file (by default WikiText-2's test split), and a check that both give the same ids.

The tokenizer is a tokenizer.json folder (--tokenizer_dir), or GPT-2's byte-level BPE (50,257
tokens) rebuilt from a GGUF vocabulary such as llama.cpp's models/ggml-vocab-gpt-2.gguf
(--gpt2_gguf). Kite's encode time is its run on the file minus its run on an empty text (the
load); the Hugging Face time covers encode() of the whole text and encode_batch() of its lines,
with RAYON_NUM_THREADS=1. Both wall-clock and CPU time are given: on a shared machine the CPU
time is the one that says how fast the code is.

Usage: scripts/benchmark_tokenizer.py (--tokenizer_dir D | --gpt2_gguf F) [--text FILE]
           [--kite build/kite] [--repeat 3]
"""
import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from tokenizers import Tokenizer  # noqa: E402  (after the thread settings)


def read_gguf_strings(path, wanted):
    """The string-array metadata `wanted` of a GGUF file (version 2 or 3)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"GGUF":
        sys.exit(f"{path} is not a GGUF file")
    offset = 8
    _, kv_count = struct.unpack_from("<QQ", data, offset)
    offset += 16
    scalar_sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def read_string(at):
        (length,) = struct.unpack_from("<Q", data, at)
        return data[at + 8:at + 8 + length].decode("utf-8"), at + 8 + length

    def skip_value(kind, at):
        if kind == 8:
            return read_string(at)[1]
        if kind == 9:
            item_kind, count = struct.unpack_from("<IQ", data, at)
            at += 12
            for _ in range(count):
                at = skip_value(item_kind, at)
            return at
        return at + scalar_sizes[kind]

    found = {}
    for _ in range(kv_count):
        key, offset = read_string(offset)
        (kind,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if key in wanted and kind == 9:
            item_kind, count = struct.unpack_from("<IQ", data, offset)
            offset += 12
            values = []
            for _ in range(count):
                value, offset = read_string(offset)
                values.append(value)
            found[key] = values
        else:
            offset = skip_value(kind, offset)
    return found


def gpt2_tokenizer_json(gguf_path):
    fields = read_gguf_strings(gguf_path, {"tokenizer.ggml.tokens", "tokenizer.ggml.merges"})
    tokens, merges = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.merges"]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}
    return {
        "version": "1.0",
        "added_tokens": [{"id": len(tokens) - 1, "content": tokens[-1], "single_word": False,
                          "lstrip": False, "rstrip": False, "normalized": False,
                          "special": True}],
        "normalizer": None, "pre_tokenizer": byte_level, "post_processor": byte_level,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {token: i for i, token in enumerate(tokens)}, "merges": merges},
    }


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def best_time(function, repeat, cpu_clock=time.process_time):
    """(best wall seconds, best CPU seconds, result) over `repeat` runs."""
    best_wall, best_cpu, result = float("inf"), float("inf"), None
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), cpu_clock()
        result = function()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, cpu_clock() - cpu)
    return best_wall, best_cpu, result


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--tokenizer_dir")
    source.add_argument("--gpt2_gguf")
    parser.add_argument("--text", default=os.path.join(root, "..", "shared", "data",
                                                       "wikitext-2-raw", "wiki.test.raw"))
    parser.add_argument("--kite", default=os.path.join(root, "build", "kite"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    directory = args.tokenizer_dir
    if args.gpt2_gguf:
        directory = tempfile.mkdtemp(prefix="kite_benchmark_")
        with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(gpt2_tokenizer_json(args.gpt2_gguf), f, ensure_ascii=False)
    with open(args.text, "rb") as f:
        raw = f.read()
    text = raw.decode("utf-8", errors="replace")
    megabytes = len(raw) / 1e6

    tokenizer = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
    hf_wall, hf_cpu, encoding = best_time(lambda: tokenizer.encode(text), args.repeat)
    lines = text.splitlines(keepends=True)
    batch_wall, batch_cpu, _ = best_time(lambda: tokenizer.encode_batch(lines), args.repeat)

    def run_kite(*extra):
        command = [args.kite, "tokenize", "--tokenizer_dir", directory, *extra]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode != 0:
            sys.exit(f"{' '.join(command)} failed: {completed.stderr.strip()}")
        return completed.stdout

    load_wall, load_cpu, _ = best_time(lambda: run_kite("--text", ""), args.repeat, children_cpu)
    total_wall, total_cpu, output = best_time(lambda: run_kite("--input_file", args.text),
                                              args.repeat, children_cpu)
    kite_ids = [int(token) for token in output.split()]
    kite_wall = max(total_wall - load_wall, 1e-9)
    kite_cpu = max(total_cpu - load_cpu, 1e-9)

    def line(name, wall, cpu, note=""):
        print(f"{name:30s} wall {wall:6.3f} s {megabytes / wall:7.2f} MB/s   "
              f"cpu {cpu:6.3f} s {megabytes / cpu:7.2f} MB/s  {note}")

    print(f"text: {args.text} ({megabytes:.2f} MB), vocabulary {tokenizer.get_vocab_size()}")
    line("Hugging Face encode()", hf_wall, hf_cpu)
    line("Hugging Face encode_batch()", batch_wall, batch_cpu, "(one line per item)")
    line("kite tokenize (encode only)", kite_wall, kite_cpu,
         f"(run minus load: wall {total_wall:.3f} - {load_wall:.3f} s)")
    same = kite_ids == encoding.ids
    print(f"ids identical: {same} ({len(kite_ids)} ids)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
