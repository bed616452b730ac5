#!/usr/bin/env python3
"""Checks the tokenizer.json Kite builds from GGUF vocabularies with Hugging Face `tokenizers`.

For each GGUF file it has Kite's unit-test binary export tokenizer.json (the
GgufTokenizerExport test), loads it with `tokenizers`, and checks:
  - vocabulary: every id maps back to the token string the GGUF stores (gguf-py reads those);
  - llama.cpp test vectors, when <file>.inp / <file>.out exist next to the GGUF (llama.cpp's
    models/ggml-vocab-*.gguf): each text encodes, without special tokens, to the expected ids,
    as tests/test-tokenizer-0.cpp checks llama.cpp itself;
  - with --text FILE: the lines of FILE encode identically with transformers' own GGUF tokenizer
    conversion (needs `pip install transformers`), reported as agreement counts;
  - with --text FILE and --llama-tokenize BIN (llama.cpp's llama-tokenize): the whole of FILE,
    read as bytes, encodes to exactly the ids llama.cpp gives it.

Usage:
  python scripts/check_gguf_tokenizer_json.py --tests build/tests/kite_unit_tests \
      --vocab-dir <llama.cpp>/models [--gguf model.gguf ...] [--text file.txt]
      [--llama-tokenize <llama.cpp build>/bin/llama-tokenize]
Exit status 1 when a test vector, a vocabulary entry or llama.cpp's tokenization disagrees.
"""

import argparse
import ast
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tokenizers import Tokenizer

SEPARATOR = "\n__ggml_vocab_test__\n"


def read_vectors(gguf_path: Path):
    """The (text, ids) pairs of llama.cpp's <vocab>.gguf.inp/.out, parsed as test-tokenizer-0.cpp does."""
    inp, out = Path(str(gguf_path) + ".inp"), Path(str(gguf_path) + ".out")
    if not inp.exists() or not out.exists():
        return None
    raw = inp.read_text(encoding="utf-8")
    texts, pos = [], 0
    while pos < len(raw):
        found = raw.find(SEPARATOR, pos)
        if found < 0:
            texts.append(raw[pos:])
            break
        texts.append(raw[pos:found])
        pos = found + len(SEPARATOR)
    lines = out.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline ending the last line, which std::getline does not count
    expected = [[int(x) for x in line.split()] for line in lines]
    if len(texts) != len(expected):
        raise SystemExit(f"{inp}: {len(texts)} texts but {len(expected)} expected lines")
    return list(zip(texts, expected))


def gguf_tokens(gguf_path: Path):
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))
    field = reader.fields["tokenizer.ggml.tokens"]
    return [bytes(field.parts[index]).decode("utf-8") for index in field.data]


def transformers_tokenizer(gguf_path: Path):
    """transformers' own GGUF tokenizer conversion. Its metadata reader needs torch, so the
    metadata is read here with gguf-py and renamed through transformers' own key table."""
    import gguf
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

    reader = gguf.GGUFReader(str(gguf_path))
    architecture = reader.fields["general.architecture"].contents()
    tokenizer_dict = {}
    for key, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items():
        field = reader.fields.get("tokenizer." + key)
        if field is not None:
            tokenizer_dict[name] = field.contents()
    backend, _ = convert_gguf_tokenizer(architecture, tokenizer_dict)
    return backend


def llama_cpp_ids(binary: str, gguf_path: Path, text_path: str):
    result = subprocess.run(
        [binary, "-m", str(gguf_path), "-f", text_path, "--ids", "--no-bos", "--log-disable"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"{binary} failed on {gguf_path}:\n{result.stderr}")
    return ast.literal_eval(result.stdout.strip())


def export(tests_binary: str, sources, output_dir: str) -> None:
    env = dict(os.environ, KITE_GGUF_EXPORT_SOURCES=":".join(str(s) for s in sources), KITE_GGUF_EXPORT_DIR=output_dir)
    result = subprocess.run(
        [tests_binary, "--gtest_filter=GgufTokenizerExport.*"], env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"export failed:\n{result.stdout}\n{result.stderr}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tests", default="build/tests/kite_unit_tests", help="kite_unit_tests binary")
    parser.add_argument("--vocab-dir", help="directory of ggml-vocab-*.gguf files (llama.cpp's models/)")
    parser.add_argument("--gguf", action="append", default=[], help="further GGUF files to check")
    parser.add_argument("--text", help="text file to compare with transformers' conversion / llama.cpp")
    parser.add_argument("--llama-tokenize", help="llama.cpp's llama-tokenize binary, to compare on --text")
    args = parser.parse_args()

    sources = [Path(p) for p in args.gguf]
    if args.vocab_dir:
        sources += sorted(Path(args.vocab_dir).glob("ggml-vocab-*.gguf"))
    if not sources:
        parser.error("give --vocab-dir or --gguf")
    text_lines = None
    if args.text:
        text_lines = [line for line in Path(args.text).read_text(encoding="utf-8").split("\n") if line.strip()]

    failures = 0
    with tempfile.TemporaryDirectory() as output_dir:
        export(args.tests, sources, output_dir)
        for source in sources:
            base = Path(output_dir) / source.name
            error = Path(str(base) + ".error")
            if error.exists():
                print(f"{source.name}: refused: {error.read_text()}")
                continue
            tokenizer = Tokenizer.from_file(str(base) + ".tokenizer.json")

            tokens = gguf_tokens(source)
            wrong_ids = [i for i, token in enumerate(tokens) if tokenizer.id_to_token(i) != token]
            duplicates = len(tokens) - len(set(tokens))
            vocab_note = f"vocab {len(tokens)} ids: {len(wrong_ids)} differ"
            if duplicates:
                vocab_note += f" ({duplicates} repeated token strings map to one id, as in any tokenizer.json)"
            if len(wrong_ids) > duplicates:
                failures += 1
                vocab_note += f" FAIL, first: {wrong_ids[:5]}"

            vectors = read_vectors(source)
            vector_note = "no test vectors"
            if vectors is not None:
                bad = []
                for text, expected in vectors:
                    got = tokenizer.encode(text, add_special_tokens=False).ids
                    if got != expected:
                        bad.append((text, expected, got))
                vector_note = f"test vectors {len(vectors) - len(bad)}/{len(vectors)} pass"
                if bad:
                    failures += 1
                    for text, expected, got in bad[:3]:
                        vector_note += f"\n    FAIL {text!r}: expected {expected}, got {got}"

            print(f"{source.name}: {vocab_note}; {vector_note}")

            if args.text and args.llama_tokenize:
                # Bytes as they are (no newline translation), as llama.cpp reads the file.
                whole = Path(args.text).read_bytes().decode("utf-8")
                ours = tokenizer.encode(whole, add_special_tokens=False).ids
                reference = llama_cpp_ids(args.llama_tokenize, source, args.text)
                if ours == reference:
                    print(f"    llama.cpp: identical, {len(ours)} tokens of {args.text}")
                else:
                    failures += 1
                    first = next((i for i, (a, b) in enumerate(zip(ours, reference)) if a != b), min(len(ours), len(reference)))
                    print(f"    llama.cpp: FAIL, first difference at token {first} ({len(ours)} vs {len(reference)} tokens)")

            if text_lines is not None:
                try:
                    reference = transformers_tokenizer(source)
                except Exception as exc:  # transformers refuses some vocabularies
                    print(f"    transformers: cannot convert ({type(exc).__name__}: {exc})")
                    continue
                same = sum(
                    tokenizer.encode(line, add_special_tokens=False).ids
                    == reference.encode(line, add_special_tokens=False).ids
                    for line in text_lines
                )
                print(f"    transformers' GGUF conversion agrees on {same}/{len(text_lines)} lines of {args.text}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
