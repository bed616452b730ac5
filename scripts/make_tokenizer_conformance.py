#!/usr/bin/env python3
"""Builds the tokenizer conformance fixtures (tests/fixtures/tokenizer_conformance/): for every
GGUF vocabulary we can obtain, the tokenizer.json that Hugging Face transformers builds from it and
the ids that the Hugging Face `tokenizers` library gives on WikiText-2, MMLU and hand-written hard
cases. The C++ test tests/conformance/tokenizer_conformance_test.cc checks Kite against them.

Usage (from the repository root, with the venv of scripts/requirements-conformance.txt):
  bash scripts/fetch_demo_model.sh && bash scripts/fetch_tokenizer_vocabs.sh
  .venv/bin/python scripts/make_tokenizer_conformance.py                # writes the fixtures
  .venv/bin/python scripts/make_tokenizer_conformance.py --timing-only  # HF single-thread MB/s
  .venv/bin/python scripts/make_tokenizer_conformance.py --check-json-dir DIR
      # checks DIR/<vocabulary>/tokenizer.json made by Kite's GGUF conversion, with HF tokenizers

See tests/fixtures/tokenizer_conformance/README.md for what each file holds and why.
"""

import os

# Single-threaded, so that the rates printed here compare with Kite's single-threaded encode.
# Both must be set before `tokenizers` is imported.
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is read from local files

import argparse
import csv
import importlib.metadata
import hashlib
import json
import lzma
import shutil
import struct
import sys
import time
import types
import unicodedata
from pathlib import Path

import gguf
import tokenizers

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "tokenizer_conformance"
FORMAT_VERSION = 1

# Reference tokenizer.json files are committed (xz-compressed) for these vocabularies only; every one
# is written to --reference-dir. See the README for the choice.
COMMITTED_REFERENCES = {"smollm2", "llama-spm", "phi-3", "deepseek-coder", "qwen2"}
# Only these llama.cpp tokenizer models are byte-level BPE ("gpt2") or SentencePiece BPE ("llama").
SUPPORTED_GGUF_MODELS = {"gpt2", "llama"}
SKIP_REASONS = {
    "bert": "WordPiece (BERT) vocabulary: Kite's tokenizer implements BPE only",
    "t5": "Unigram (SentencePiece unigram, T5) vocabulary: Kite's tokenizer implements BPE only",
    "gemma4": "Gemma 4 vocabulary (tokenizer.ggml.model \"gemma4\"), not a gpt2 or llama BPE vocabulary",
}

# What Kite's own GGUF -> tokenizer.json conversion is held to (the `gguf_check` of the manifest).
# transformers' GGUF conversion, our reference, does not always rebuild the model's ORIGINAL
# tokenizer: llama.cpp's test vectors (made with the original Hugging Face tokenizer) show where.
# Kite's conversion follows the original tokenizer (as llama.cpp does), so for those vocabularies
# it is checked against the reference with a documented correction, validated here against every
# llama.cpp vector, or, where no correction is established, against llama.cpp's vectors only.
_DIGITS_REASON = (
    "transformers keeps GPT-2's split for tokenizer.ggml.pre {pre!r}, but the original splits every "
    "digit (\\p{{N}}) on its own (llama.cpp's pre-tokenizer class of starcoder, refact, command-r and "
    "smollm); correction: pre_tokenizer Digits(individual_digits) + ByteLevel"
)
CORRECTIONS = {
    "smollm2": "digits",
    "starcoder": "digits",
    "refact": "digits",
    "command-r": "digits",
    "llama-bpe": "ignore_merges",
    "llama-spm": "llama2_prefix",
    "baichuan": "llama2_prefix",
}
CORRECTION_REASONS = {
    "digits": _DIGITS_REASON,
    "ignore_merges": (
        "the original (Llama 3) BPE model has ignore_merges: a word that is a whole token is not "
        "merged piece by piece; transformers' GGUF conversion leaves it out and adds an "
        "'<|endoftext|>' token the GGUF does not have; correction: ignore_merges, that token removed"
    ),
    "llama2_prefix": (
        "the original SentencePiece tokenizer puts '\u2581' before the text even when it starts "
        "with a space (Llama 2's tokenizer.json: Prepend + Replace normalizers, no pre-tokenizer); "
        "transformers' LlamaTokenizer uses Metaspace(prepend_scheme='first'), which does not; "
        "correction: the Llama 2 normalizers (baichuan is built by the same LlamaTokenizer path as "
        "llama-spm, whose vectors show the difference)"
    ),
}
# Vocabularies without llama.cpp vectors of their own whose reference is known not to be the original.
UNFAITHFUL_WITHOUT_VECTORS = {
    "gpt-neox": (
        "same tokens as mpt, whose llama.cpp vectors show that transformers' conversion merges its "
        "multi-space tokens into others (its vocabulary shrinks from 50432 to 50409 entries); "
        "no correction established and no vectors of its own"
    ),
}


def corrected_reference_json(reference_json, kind, gguf_token_count):
    """The reference tokenizer.json with one of the CORRECTIONS applied."""
    config = json.loads(reference_json)
    if kind == "digits":
        config["pre_tokenizer"] = {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            ],
        }
    elif kind == "ignore_merges":
        config["model"]["ignore_merges"] = True
        config["added_tokens"] = [token for token in config["added_tokens"] if token["id"] < gguf_token_count]
    elif kind == "llama2_prefix":
        config["normalizer"] = {
            "type": "Sequence",
            "normalizers": [
                {"type": "Prepend", "prepend": "\u2581"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
            ],
        }
        config["pre_tokenizer"] = None
    else:
        raise ValueError(kind)
    return json.dumps(config, ensure_ascii=False)


FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK64 = (1 << 64) - 1


def fnv1a64_ids(ids):
    """FNV-1a (64-bit) over the ids, each as 4 little-endian bytes of an int32."""
    return fnv1a64_bytes(struct.pack(f"<{len(ids)}i", *ids))


def fnv1a64_bytes(data):
    h = FNV_OFFSET
    for byte in data:
        h ^= byte
        h = (h * FNV_PRIME) & MASK64
    return h


# ---------------------------------------------------------------------------------------------
# GGUF -> Hugging Face fast tokenizer, through transformers' own GGUF conversion.


def install_torch_free_gguf_reader():
    """transformers' GGUF metadata reader (transformers.integrations.gguf.reader) imports torch at
    module level for its tensor code, and torch is not installed here. The tokenizer conversion only
    needs `read_gguf_metadata(path, string_arrays) -> (metadata, tensor_names)`, so we register a
    module with that one function, reading the file with gguf-py, before transformers imports it.
    Our reader returns every array in full (transformers' returns a count for string arrays it was
    not asked for); the tokenizer code only reads the ones it asks for."""

    def read_gguf_metadata(gguf_path, string_arrays=()):
        del string_arrays
        reader = gguf.GGUFReader(gguf_path)
        metadata = {
            key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")
        }
        return metadata, tuple(tensor.name for tensor in reader.tensors)

    module = types.ModuleType("transformers.integrations.gguf.reader")
    module.read_gguf_metadata = read_gguf_metadata
    sys.modules["transformers.integrations.gguf.reader"] = module


def hf_tokenizer_from_gguf(gguf_path):
    """The tokenizer `PreTrainedTokenizerFast.from_pretrained(dir, gguf_file=name)` builds: the
    backend from transformers.integrations.gguf.convert_gguf_tokenizer, with the post-processor
    (BOS/EOS) that the GGUF's tokenizer.ggml.add_bos_token / add_eos_token ask for."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(name_or_path=str(gguf_path.parent), gguf_file=gguf_path.name)


def gguf_tokenizer_fields(path):
    reader = gguf.GGUFReader(str(path))

    def get(key):
        field = reader.fields.get(key)
        return None if field is None else field.contents()

    return {
        "architecture": get("general.architecture"),
        "model": get("tokenizer.ggml.model"),
        "pre": get("tokenizer.ggml.pre"),
        "tokens": len(reader.fields["tokenizer.ggml.tokens"].data),
        "add_bos_token": get("tokenizer.ggml.add_bos_token"),
    }


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Texts.


def wikitext_lines(path):
    """Each line of the file without its "\\n"; the file has CRLF line ends, so every line keeps
    its "\\r" (the bytes are tokenized exactly as they are in the file)."""
    data = path.read_bytes()
    pieces = data.split(b"\n")
    if pieces and pieces[-1] == b"":
        pieces.pop()
    return [piece.decode("utf-8") for piece in pieces], data.decode("utf-8")


def mmlu_prompt(row):
    """One MMLU row as text, the way Hendrycks' evaluate.py formats a question (without the
    answer): question, the four choices as "\\nA. ...", then "\\nAnswer:". Fields are verbatim."""
    question, a, b, c, d = row[:5]
    return f"{question}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer:"


def mmlu_files(data_dir):
    """The MMLU csv files in the order the fixtures use: dev, val, test; by name within a split."""
    files = []
    for split in ("dev", "val", "test"):
        names = sorted(os.listdir(data_dir / "mmlu" / split), key=lambda name: name.encode("utf-8"))
        files += [f"{split}/{name}" for name in names if name.endswith(".csv")]
    return files


def mmlu_rows(data_dir):
    """[(relative file, [prompt texts])]: rows read with Python's csv module (RFC 4180 quoting)."""
    result = []
    for relative in mmlu_files(data_dir):
        with open(data_dir / "mmlu" / relative, newline="", encoding="utf-8") as file:
            rows = list(csv.reader(file))
        for index, row in enumerate(rows):
            if len(row) != 6:
                sys.exit(f"error: mmlu/{relative} row {index + 1} has {len(row)} fields, expected 6")
        result.append((relative, [mmlu_prompt(row) for row in rows]))
    return result


def hard_cases():
    """[(name, text str, raw bytes or None)]. For invalid UTF-8 the reference text is the bytes
    decoded with errors="replace" (each maximal invalid subpart becomes one U+FFFD, as Unicode 3.9
    recommends and Python does); the C++ test feeds the raw bytes to Tokenizer::encode, which must
    replace them the same way."""
    cafe = "Café naïve résumé Ångström Việt Nam São Paulo Ærøskøbing"
    korean = "안녕하세요, 세계! 한국어 토큰화 테스트입니다."
    long_word = "Pneumonoultramicroscopicsilicovolcanoconiosis" * 40
    # A 3000-letter word with no repeats a BPE vocabulary would know: a fixed linear congruential
    # sequence over a-z, so it is the same on every run.
    state, letters = 12345, []
    for _ in range(3000):
        state = (state * 1103515245 + 12345) % (1 << 31)
        letters.append(chr(ord("a") + (state >> 16) % 26))
    text_cases = [
        ("empty", ""),
        ("single_space", " "),
        ("two_spaces", "  "),
        ("leading_space", " Hello world"),
        ("leading_spaces", "    leading spaces"),
        ("leading_newline", "\nHello"),
        ("trailing_spaces", "trailing   "),
        ("plain_sentence", "The quick brown fox jumps over the lazy dog."),
        ("emoji", "I like 🍕 and 🚀! 😀😁😂🤣"),
        ("emoji_zwj_family", "👨‍👩‍👧‍👦 family and 👩‍❤️‍💋‍👨 kiss"),
        ("emoji_zwj_professions", "👩🏽‍💻 coder, 🧑‍🚀 astronaut, 🏳️‍🌈 flag, 😶‍🌫️ fog"),
        ("emoji_flags", "🇺🇸🇯🇵🇩🇪 flags 🇫🇷 and 🏴󠁧󠁢󠁳󠁣󠁴󠁿"),
        ("emoji_skin_tones", "👍🏻👍🏼👍🏽👍🏾👍🏿 ✌️ ❤️"),
        ("emoji_keycaps", "1️⃣ 2️⃣ #️⃣ *️⃣"),
        ("chinese", "我想在apple工作1314151天～ 中文分词测试。"),
        ("japanese", "日本語のテキスト、カタカナとひらがな。東京タワー"),
        ("korean_nfc", korean),
        ("korean_nfd_jamo", unicodedata.normalize("NFD", korean)),
        ("arabic", "مرحبا بالعالم! هذا اختبار للترميز."),
        ("arabic_diacritics", "اَلْعَرَبِيَّةُ"),
        ("hebrew", "שלום עולם, זהו מבחן."),
        ("mixed_rtl_ltr", "abc שלום def مرحبا 123 ghi"),
        ("combining_marks", "e\u0301 a\u0300 n\u0303 o\u0308\u0304 Z\u0351\u0352\u0353\u0354algo"),
        ("latin_nfc", unicodedata.normalize("NFC", cafe)),
        ("latin_nfd", unicodedata.normalize("NFD", cafe)),
        ("devanagari", "हिन्दी पाठ और संख्या १२३"),
        ("thai", "ภาษาไทยไม่มีช่องว่างระหว่างคำ"),
        ("khmer", "កាន់តែពិសេសអាចខលចេញ"),
        ("cyrillic_greek", "нещо на Български; Ελληνικά κείμενα"),
        ("math_symbols", "∀x∈ℝ: x² ≥ 0, ∑ᵢ aᵢ, ∫ f dx, √2, ½ ⅓ ¼, ≠ ≤ ∞"),
        ("astral_letters", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕋𝕖𝕩𝕥 𓀀 🀄 𠀀𠀁"),
        ("spaces_run", "a" + " " * 17 + "b" + " " * 2 + "c"),
        ("spaces_only_long", " " * 300),
        ("tabs", "\t\t\tindented\t\tand\ttabs\t"),
        ("newlines", "line1\n\n\n\nline2\n"),
        ("newlines_only_long", "\n" * 100),
        ("crlf", "line1\r\nline2\r\n\r\nline3\r\n"),
        ("carriage_returns", "a\rb\r\rc\r"),
        ("no_break_spaces", "non\u00a0breaking\u00a0\u00a0\u00a0space\u00a0"),
        ("ideographic_spaces", "全角\u3000スペース\u3000\u3000end\u3000"),
        ("mixed_whitespace_run", " \t \n \r\n\u00a0\u3000\u2003\u2009\u200a x \u2028 y \u2029 z \u0085 w"),
        ("digits", " ".join("1234567890"[: n % 10 + 1] * (n // 10 + 1) for n in range(25))),
        ("digits_in_text", "In 2023, 3.14159 and 1,000,000 and 0x1F and 007 and 1e-10."),
        ("digits_unicode", "٠١٢٣ ४५६ ①②③ ½ ¹²³ ０１２"),
        ("contractions", "it's I'M we'LL they'Ve don't He'd you're 'T 's 'LL 'd"),
        ("contractions_upper", "IT'S WE'LL DON'T THEY'RE"),
        ("apostrophe_variants", "it’s don’t ‘quoted’ “double”"),
        ("code_python", 'def f(x):\n    return x ** 2  # square\n\n\nprint(f(3), end="")\n'),
        ("code_cpp", "int main() {\n\tstd::vector<int> v{1, 2, 3};\n\treturn v[0] != 1 ? -1 : 0;\n}\n"),
        ("code_json", '{"key": [1, 2.5e-3, null, true], "nested": {"a": "b\\n"}}'),
        ("url", "https://example.com/path/to/page?query=1&x=y#frag and http://127.0.0.1:8080/"),
        ("email", "contact: first.last+tag@example.org"),
        ("chatml_special_tokens", "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"),
        ("sentencepiece_special_tokens", "<s> text </s> <unk> <pad> <s>[INST] hi [/INST]"),
        ("endoftext_inside_text", "a<|endoftext|>b <|endoftext|> c<|endoftext|>"),
        ("llama3_special_tokens", "<|begin_of_text|><|start_header_id|>user<|end_header_id|>Hi<|eot_id|>"),
        ("partial_special_tokens", "<|im_start <|im_end| <s </s <|endoftext"),
        ("punctuation_runs", "!!!!!! ???? ...... ----- ===== ~~~~ ,,,, ;;;"),
        ("repeated_letter", "a" * 64),
        ("long_word", long_word),
        ("long_random_word", "".join(letters)),
        ("control_characters", "a\x00b\x01c\x1fd\x7fe\x0bf\x0cg"),
        ("zero_width_characters", "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom\u2060"),
        ("private_use", "\ue000 \U000f0000 \U0010fffd"),
        ("replacement_character", "\ufffd literal"),
        ("byte_level_letters", "õ÷ÁýÀ ĠĊ Ġhello"),
        ("metaspace_character", "▁word ▁▁ two▁"),
    ]
    byte_cases = [
        ("invalid_lone_continuation", b"abc\x80def"),
        ("invalid_truncated_two_byte", b"caf\xc3"),
        ("invalid_truncated_three_byte", b"x\xe2\x82y"),
        ("invalid_truncated_four_byte", b"\xf0\x9f\x98 end"),
        ("invalid_overlong", b"\xc0\xaf \xe0\x80\xaf \xc1\xbf"),
        ("invalid_surrogates", b"\xed\xa0\x80\xed\xbf\xbf ok"),
        ("invalid_above_unicode", b"\xf4\x90\x80\x80 \xf8\x88\x80\x80\x80"),
        ("invalid_ff_fe", b"\xff\xfe text \xf5"),
        ("invalid_mixed", b"ok \xe4\xb8 \xe4\xb8\xad \x80\x80 emoji\xf0\x9f\x8d"),
    ]
    cases = [(name, text, None) for name, text in text_cases]
    cases += [(name, raw.decode("utf-8", errors="replace"), raw) for name, raw in byte_cases]
    names = [name for name, _, _ in cases]
    assert len(names) == len(set(names)), "hard case names must be unique"
    return cases


def llama_cpp_vectors(gguf_path):
    """llama.cpp's test vectors beside a vocab GGUF: <gguf>.inp holds the texts, each followed by
    "\\n__ggml_vocab_test__\\n"; <gguf>.out one line per text, the ids separated by spaces. They come
    from convert_hf_to_gguf_update.py: AutoTokenizer of the ORIGINAL Hugging Face repo,
    encode(text, add_special_tokens=False). None when the files are not there."""
    inp, out = Path(f"{gguf_path}.inp"), Path(f"{gguf_path}.out")
    if not inp.exists() or not out.exists():
        return None
    texts = inp.read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    if texts[-1] != "":
        sys.exit(f"error: {inp} does not end with the test separator")
    texts.pop()
    lines = out.read_text(encoding="utf-8").split("\n")
    if len(lines) < len(texts) or any(line.strip() for line in lines[len(texts):]):
        sys.exit(f"error: {out} has a different number of tests than {inp}")
    return inp, out, texts, [[int(x) for x in line.split()] for line in lines[: len(texts)]]


# ---------------------------------------------------------------------------------------------
# Fixture generation.


def discover_vocabularies(vocab_dir, smollm2):
    """[(name, gguf path, fields)] of the usable vocabularies, and [(file, reason)] skipped."""
    usable, skipped = [], []
    if smollm2 is not None:
        usable.append(("smollm2", smollm2, gguf_tokenizer_fields(smollm2)))
    if vocab_dir is not None:
        paths = sorted(vocab_dir.glob("ggml-vocab-*.gguf"))
        if not paths:
            sys.exit(f"error: no ggml-vocab-*.gguf files in {vocab_dir}")
        for path in paths:
            fields = gguf_tokenizer_fields(path)
            name = path.name[len("ggml-vocab-") : -len(".gguf")]
            if fields["model"] in SUPPORTED_GGUF_MODELS:
                usable.append((name, path, fields))
            else:
                reason = SKIP_REASONS.get(fields["model"], f"tokenizer.ggml.model {fields['model']!r}")
                skipped.append((path.name, fields["model"], reason))
    return usable, skipped


class FixtureWriter:
    """Writes xz-compressed fixture files, storing each distinct content once: a vocabulary whose
    file would equal an earlier vocabulary's (gpt-neox and mpt share a tokenizer.json; qwen2 and
    qwen35 tokenize both corpora alike) points to the earlier file in the manifest instead."""

    def __init__(self):
        self.by_content = {}

    def write(self, relative, text):
        data = text.encode("utf-8")
        digest = hashlib.sha256(data).hexdigest()
        if digest in self.by_content:
            return self.by_content[digest]
        path = FIXTURES / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        # The xz container has no timestamps, so the output is identical from run to run.
        path.write_bytes(lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=9))
        self.by_content[digest] = relative
        return relative


def encode_ids(tokenizer, text, add_special_tokens=False):
    return tokenizer.encode(text, add_special_tokens=add_special_tokens).ids


def hash_lines(tokenizer, texts):
    """One line per text: the FNV-1a 64 hash of its ids (16 hex digits) and the id count."""
    lines = []
    for text in texts:
        ids = encode_ids(tokenizer, text)
        lines.append(f"{fnv1a64_ids(ids):016x} {len(ids)}\n")
    return "".join(lines)


def hard_case_results(tokenizer, cases):
    results = []
    for case_name, text, _ in cases:
        ids = encode_ids(tokenizer, text)
        with_special = encode_ids(tokenizer, text, add_special_tokens=True)
        results.append(
            {
                "name": case_name,
                "ids": ids,
                "ids_with_special_tokens": with_special,
                # decode(ids, skip_special_tokens=False), and
                # decode(ids_with_special_tokens, skip_special_tokens=True).
                "decoded": tokenizer.decode(ids, skip_special_tokens=False),
                "decoded_skipping_special_tokens": tokenizer.decode(with_special, skip_special_tokens=True),
            }
        )
    return results


def build_vocabulary(name, gguf_path, fields, corpora, cases, writer, args):
    """Writes one vocabulary's fixtures; returns its manifest entry."""
    wrapper = hf_tokenizer_from_gguf(gguf_path)
    reference_json = wrapper.backend_tokenizer.to_str()
    # The reference is what `tokenizers` does with this JSON alone, exactly what the C++ test loads.
    reference = tokenizers.Tokenizer.from_str(reference_json)
    for probe in ("Hello world", " <s>x", "日本"):
        for add_special in (False, True):
            wrapped = wrapper.encode(probe, add_special_tokens=add_special)
            if wrapped != encode_ids(reference, probe, add_special):
                sys.exit(f"error: {name}: transformers and its saved tokenizer.json disagree on {probe!r}")

    reference_dir = args.reference_dir / name
    reference_dir.mkdir(parents=True, exist_ok=True)
    (reference_dir / "tokenizer.json").write_text(reference_json, encoding="utf-8")
    files = {"tokenizer_json": None}
    if name in COMMITTED_REFERENCES:
        files["tokenizer_json"] = writer.write(f"{name}/tokenizer.json.xz", reference_json)

    wiki_lines, wiki_text = corpora["wikitext"]
    files["wikitext_lines"] = writer.write(f"{name}/wikitext_lines.txt.xz", hash_lines(reference, wiki_lines))
    whole_ids = encode_ids(reference, wiki_text)
    mmlu_hashes = "".join(hash_lines(reference, texts) for _, texts in corpora["mmlu"])
    files["mmlu_rows"] = writer.write(f"{name}/mmlu_rows.txt.xz", mmlu_hashes)

    case_results = hard_case_results(reference, cases)
    files["hard_cases"] = writer.write(
        f"{name}/hard_cases.json.xz", json.dumps({"cases": case_results}, ensure_ascii=False) + "\n"
    )

    entry = {
        "name": name,
        "gguf": gguf_path.name,
        "gguf_sha256": sha256_file(gguf_path),
        "gguf_size": gguf_path.stat().st_size,
        "gguf_architecture": fields["architecture"],
        "gguf_tokenizer_model": fields["model"],
        "gguf_tokenizer_pre": fields["pre"],
        "vocab_size": reference.get_vocab_size(with_added_tokens=True),
        # FNV-1a 64 of the UTF-8 bytes: the C++ test checks it has the JSON the ids were made with.
        "reference_json_fnv1a64": f"{fnv1a64_bytes(reference_json.encode('utf-8')):016x}",
        "files": files,
        "wikitext_whole": {"fnv1a64": f"{fnv1a64_ids(whole_ids):016x}", "count": len(whole_ids)},
    }

    vectors = llama_cpp_vectors(gguf_path)
    if vectors is not None:
        inp, outp, texts, expected = vectors
        llama_dir = FIXTURES / "llama_cpp"
        llama_dir.mkdir(exist_ok=True)
        shutil.copyfile(inp, llama_dir / f"{name}.inp")
        shutil.copyfile(outp, llama_dir / f"{name}.out")
        differences = []
        for index, (text, want) in enumerate(zip(texts, expected)):
            got = encode_ids(reference, text)
            if got != want:
                differences.append({"index": index, "text": text, "reference_ids": got})
        entry["llama_cpp_vectors"] = {
            "inp": f"llama_cpp/{name}.inp",
            "out": f"llama_cpp/{name}.out",
            "count": len(texts),
            "reference_differs": differences,
        }
    entry["gguf_check"] = gguf_check(name, entry, reference_json, reference, fields, vectors, corpora, cases, writer)
    return entry


def gguf_check(name, entry, reference_json, reference, fields, vectors, corpora, cases, writer):
    """What Kite's GGUF conversion of this vocabulary is compared with (see CORRECTIONS)."""
    differing = entry.get("llama_cpp_vectors", {}).get("reference_differs", [])
    check = {
        # With no tokenizer.ggml.add_bos_token the BOS policy is a default, and transformers'
        # default (no BOS for gpt2 vocabularies) is not llama.cpp's, so ids with special tokens
        # are only compared when the file states it.
        "compare_special_tokens": fields["add_bos_token"] is not None,
    }
    if name in CORRECTIONS:
        kind = CORRECTIONS[name]
        corrected_json = corrected_reference_json(reference_json, kind, fields["tokens"])
        corrected = tokenizers.Tokenizer.from_str(corrected_json)
        if vectors is not None:
            _, _, texts, expected = vectors
            wrong = [index for index, (text, want) in enumerate(zip(texts, expected)) if encode_ids(corrected, text) != want]
            if wrong:
                sys.exit(f"error: {name}: the {kind} correction misses llama.cpp vectors {wrong}")
        wiki_lines, wiki_text = corpora["wikitext"]
        mmlu_texts = [text for _, file_texts in corpora["mmlu"] for text in file_texts]
        overrides = {}
        for key, lines in (("wikitext_lines", wiki_lines), ("mmlu_rows", mmlu_texts)):
            base = lzma.decompress((FIXTURES / entry["files"][key]).read_bytes()).decode("utf-8").splitlines()
            new = hash_lines(corrected, lines).splitlines()
            changed = "".join(f"{index + 1} {line}\n" for index, (old, line) in enumerate(zip(base, new)) if old != line)
            overrides[key] = writer.write(f"{name}/gguf_{key}_overrides.txt.xz", changed)
        whole = encode_ids(corrected, wiki_text)
        check.update(
            {
                "mode": "corrected_reference",
                "correction": kind,
                "reason": CORRECTION_REASONS[kind].format(pre=fields["pre"]),
                "corrected_json_fnv1a64": f"{fnv1a64_bytes(corrected_json.encode('utf-8')):016x}",
                "hard_cases": writer.write(
                    f"{name}/gguf_hard_cases.json.xz",
                    json.dumps({"cases": hard_case_results(corrected, cases)}, ensure_ascii=False) + "\n",
                ),
                "overrides": overrides,
                "wikitext_whole": {"fnv1a64": f"{fnv1a64_ids(whole):016x}", "count": len(whole)},
            }
        )
    elif differing:
        check.update(
            {
                "mode": "llama_cpp_vectors_only",
                "reason": f"transformers' conversion differs from the original tokenizer on {len(differing)} of "
                f"llama.cpp's {entry['llama_cpp_vectors']['count']} vectors (first: {differing[0]['text'][:40]!r}) "
                "and no correction is established",
            }
        )
    elif name in UNFAITHFUL_WITHOUT_VECTORS:
        check.update({"mode": "llama_cpp_vectors_only", "reason": UNFAITHFUL_WITHOUT_VECTORS[name]})
    else:
        check["mode"] = "reference"
    return check


def read_fixture_lines(relative):
    return lzma.decompress((FIXTURES / relative).read_bytes()).decode("utf-8").splitlines()


def expected_for_gguf_conversion(entry):
    """(hard-case results, wikitext line hashes, mmlu row hashes, whole-file hash) that Kite's GGUF
    conversion must give, or None for llama_cpp_vectors_only: the reference with its corrections."""
    check, files = entry["gguf_check"], entry["files"]
    if check["mode"] == "llama_cpp_vectors_only":
        return None
    corrected = check["mode"] == "corrected_reference"
    hard = json.loads(lzma.decompress((FIXTURES / (check["hard_cases"] if corrected else files["hard_cases"])).read_bytes()))
    lines = {}
    for key in ("wikitext_lines", "mmlu_rows"):
        lines[key] = read_fixture_lines(files[key])
        if corrected:
            for override in read_fixture_lines(check["overrides"][key]):
                index, rest = override.split(" ", 1)
                lines[key][int(index) - 1] = rest
    whole = (check if corrected else entry)["wikitext_whole"]["fnv1a64"]
    return hard["cases"], lines["wikitext_lines"], lines["mmlu_rows"], whole


def check_json_dir(json_dir, corpora, cases):
    """Tokenizes everything with Hugging Face `tokenizers` on <json_dir>/<vocabulary>/tokenizer.json,
    made by Kite's GGUF conversion, and counts the texts whose ids differ from what the fixtures
    expect of that conversion (the manifest's gguf_check). Checks the conversion without Kite's
    tokenizer. Returns the number of vocabularies with differences."""
    manifest = json.loads((FIXTURES / "manifest.json").read_text(encoding="utf-8"))
    texts = {name: text for name, text, _ in cases}
    wiki_lines, wiki_text = corpora["wikitext"]
    mmlu_texts = [text for _, file_texts in corpora["mmlu"] for text in file_texts]
    failing = 0
    for entry in manifest["vocabularies"]:
        name, check = entry["name"], entry["gguf_check"]
        path = json_dir / name / "tokenizer.json"
        if not path.exists():
            print(f"{name}: no {path}")
            continue
        tokenizer = tokenizers.Tokenizer.from_file(str(path))
        report = {}
        expected = expected_for_gguf_conversion(entry)
        if expected is not None:
            hard, wiki_want, mmlu_want, whole_want = expected
            report["hard cases"] = [c["name"] for c in hard if encode_ids(tokenizer, texts[c["name"]]) != c["ids"]]
            if check["compare_special_tokens"]:
                report["hard cases, special tokens added"] = [
                    c["name"] for c in hard
                    if encode_ids(tokenizer, texts[c["name"]], True) != c["ids_with_special_tokens"]
                ]
            for label, lines, want in (("wikitext lines", wiki_lines, wiki_want), ("mmlu rows", mmlu_texts, mmlu_want)):
                got = hash_lines(tokenizer, lines).splitlines()
                report[label] = [index + 1 for index, (a, b) in enumerate(zip(got, want)) if a != b]
            if f"{fnv1a64_ids(encode_ids(tokenizer, wiki_text)):016x}" != whole_want:
                report["wikitext whole file"] = ["differs"]
        vectors = entry.get("llama_cpp_vectors")
        if vectors is not None:
            inp_texts = (FIXTURES / vectors["inp"]).read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
            out_lines = (FIXTURES / vectors["out"]).read_text(encoding="utf-8").split("\n")
            report["llama.cpp vectors"] = [
                index for index, text in enumerate(inp_texts)
                if encode_ids(tokenizer, text) != [int(x) for x in out_lines[index].split()]
            ]
        bad = {label: items for label, items in report.items() if items}
        failing += bool(bad)
        summary = "; ".join(f"{label}: {len(items)} differ (first {items[:3]})" for label, items in bad.items())
        print(f"{name} [{check['mode']}]: {'as expected' if not bad else summary}", flush=True)
    return failing


def time_encode(reference, wiki_lines, wiki_text, repeats):
    """Best-of-`repeats` single-thread MB/s (10^6 bytes/s) for the whole file and line by line."""
    size = len(wiki_text.encode("utf-8"))
    best_whole = best_lines = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        reference.encode(wiki_text, add_special_tokens=False)
        best_whole = min(best_whole, time.perf_counter() - start)
        start = time.perf_counter()
        for line in wiki_lines:
            reference.encode(line, add_special_tokens=False)
        best_lines = min(best_lines, time.perf_counter() - start)
    return size / best_whole / 1e6, size / best_lines / 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--vocab-dir",
        type=Path,
        default=ROOT / "models" / "llama.cpp-vocab",
        help="llama.cpp's ggml-vocab-*.gguf with their .inp/.out (scripts/fetch_tokenizer_vocabs.sh)",
    )
    parser.add_argument("--smollm2", type=Path, default=ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument(
        "--reference-dir",
        type=Path,
        default=ROOT / ".cache" / "tokenizer_conformance",
        help="where every reference tokenizer.json is written (committed or not)",
    )
    parser.add_argument("--timing-only", action="store_true", help="print HF encode rates, write nothing")
    parser.add_argument("--timing-repeats", type=int, default=3)
    parser.add_argument(
        "--check-json-dir",
        type=Path,
        help="check <dir>/<vocabulary>/tokenizer.json files (e.g. Kite's GGUF conversion) against the "
        "committed fixtures with Hugging Face tokenizers, write nothing",
    )
    args = parser.parse_args()

    wiki_path = args.data_dir / "wikitext-2-raw" / "wiki.test.raw"
    if not wiki_path.exists():
        sys.exit(f"error: {wiki_path} does not exist (--data-dir)")
    wiki_lines, wiki_text = wikitext_lines(wiki_path)
    if args.check_json_dir is not None:
        corpora = {"wikitext": (wiki_lines, wiki_text), "mmlu": mmlu_rows(args.data_dir)}
        sys.exit(1 if check_json_dir(args.check_json_dir, corpora, hard_cases()) else 0)

    for path in [args.smollm2] + ([args.vocab_dir] if args.vocab_dir else []):
        if not path.exists():
            sys.exit(f"error: {path} does not exist")
    install_torch_free_gguf_reader()
    usable, skipped = discover_vocabularies(args.vocab_dir, args.smollm2)

    if args.timing_only:
        print(f"Hugging Face tokenizers {tokenizers.__version__}, single thread, {wiki_path.name} "
              f"({len(wiki_text.encode('utf-8'))} bytes), best of {args.timing_repeats}")
        print(f"{'vocabulary':16s} {'whole file MB/s':>16s} {'line by line MB/s':>18s}")
        for name, path, _ in usable:
            reference = tokenizers.Tokenizer.from_str(hf_tokenizer_from_gguf(path).backend_tokenizer.to_str())
            whole, lines = time_encode(reference, wiki_lines, wiki_text, args.timing_repeats)
            print(f"{name:16s} {whole:16.2f} {lines:18.2f}", flush=True)
        return

    corpora = {"wikitext": (wiki_lines, wiki_text), "mmlu": mmlu_rows(args.data_dir)}
    cases = hard_cases()
    # Everything here is generated, except the README.
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for path in FIXTURES.iterdir():
        if path.is_dir():
            shutil.rmtree(path)
        elif path.name != "README.md":
            path.unlink()

    # Texts shared by every vocabulary.
    case_texts = []
    for name, text, raw in cases:
        item = {"name": name, "text": text}
        if raw is not None:
            item["bytes_hex"] = raw.hex()
        case_texts.append(item)
    (FIXTURES / "hard_cases.json").write_text(
        json.dumps({"cases": case_texts}, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    with open(FIXTURES / "mmlu_files.txt", "w", encoding="utf-8") as file:
        for relative, texts in corpora["mmlu"]:
            # FNV-1a 64 over the UTF-8 of each row's text followed by a NUL byte.
            text_hash = fnv1a64_bytes("".join(text + "\0" for text in texts).encode("utf-8"))
            file.write(f"{relative} {len(texts)} {text_hash:016x}\n")

    writer = FixtureWriter()
    entries = []
    for name, path, fields in usable:
        start = time.perf_counter()
        entry = build_vocabulary(name, path, fields, corpora, cases, writer, args)
        entries.append(entry)
        differing = entry.get("llama_cpp_vectors", {}).get("reference_differs")
        note = "" if differing is None else f", llama.cpp vectors: {len(differing)} differ from the reference"
        print(f"{name}: done in {time.perf_counter() - start:.1f} s{note}", flush=True)

    wiki_bytes = wiki_path.read_bytes()
    manifest = {
        "format_version": FORMAT_VERSION,
        "generated_with": {
            package: importlib.metadata.version(package) for package in ("transformers", "tokenizers", "gguf")
        },
        "wikitext": {
            "file": "wikitext-2-raw/wiki.test.raw",
            "sha256": hashlib.sha256(wiki_bytes).hexdigest(),
            "fnv1a64": f"{fnv1a64_bytes(wiki_bytes):016x}",
            "lines": len(wiki_lines),
        },
        "mmlu": {"rows": sum(len(texts) for _, texts in corpora["mmlu"]), "files": len(corpora["mmlu"])},
        "vocabularies": entries,
        "skipped": [{"gguf": file, "tokenizer_model": model, "reason": reason} for file, model, reason in skipped],
    }
    (FIXTURES / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    total = sum(path.stat().st_size for path in FIXTURES.rglob("*") if path.is_file())
    print(f"fixtures: {FIXTURES} ({total / 1e6:.2f} MB); every reference tokenizer.json: {args.reference_dir}")


if __name__ == "__main__":
    main()
