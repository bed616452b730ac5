#!/usr/bin/env python3
"""Builds the small tokenizer.json fixtures in tests/fixtures/tokenizer/ and the ids the Hugging
Face `tokenizers` library gives for a set of hard strings (expected.json), which
tests/unit/tokenizer_test.cc checks Kite against.

Each fixture is a BPE trained here on a slice of WikiText-2 plus the hard strings, in the layout of
a model family:
  gpt2.json      ByteLevel pre-tokenizer / decoder, <|endoftext|>          (GPT-2, SmolLM)
  llama3.json    Split(Llama-3 regex) + ByteLevel, ignore_merges, BOS template (Llama 3)
  qwen2.json     NFC, Split(Qwen2 regex) + ByteLevel, chat special tokens       (Qwen2)
  digits.json    Digits(individual) + ByteLevel                                (StarCoder, SmolLM2)
  llama2.json    Prepend + Replace normalizer, byte fallback, unk, Strip decoder (Llama 2)
  metaspace.json Metaspace(prepend_scheme first) pre-tokenizer and decoder      (Llama 2, legacy=false)
  bert.json      BertNormalizer, BertPreTokenizer, ## prefix, WordPiece decoder, BertProcessing
  misc.json      NFKD/StripAccents/Lowercase/Strip, Punctuation/Digits/WhitespaceSplit, </w>
                 suffix, unk, added tokens with lstrip/rstrip/single_word/normalized, Roberta

Inputs are stored as hex bytes; for each fixture the encoding of the whole WikiText-2 test file is
stored as its length and FNV-1a hash. The reference ids for invalid UTF-8 are those of the text Python
gets from bytes.decode("utf-8", errors="replace"), which is what Kite's encode does with such bytes.

Usage: scripts/make_tokenizer_fixtures.py [--data ../shared/data] [--out tests/fixtures/tokenizer]
"""
import argparse
import json
import os
import random

from tokenizers import (Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers,
                        processors, trainers)

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

HARD_STRINGS = [
    "",
    "Hello world",
    "Hello, world! How's it going? I'm fine; they'll've done it, we'd DON'T YOU'RE",
    "'s'S'll'LL'd 's 'x ſ K",
    "  leading spaces",
    "trailing spaces   ",
    "multiple     spaces    inside  text",
    "\t\ttabs\tand\nnewlines\n\n\nmore\r\nwindows\rcarriage",
    " " * 100 + "x",
    "\n" * 40 + "end",
    " \t \n \u00a0 \u0085 \u2028 \u3000 mixed whitespace",
    "digits 1234567890 3.14159 1,000,000 -42 007 ٣٤٥ ²³ ½ Ⅻ",
    "emoji 😀 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ 🥰🤖",
    "你好，世界！ 日本語のテキスト 한국어 텍스트",
    "combining e\u0301 cafe\u0301 A\u030a n\u0303 vs é Å ñ \u0301alone",
    "compatibility ﬁ ﬃ ① Ⅻ ｆｕｌｌｗｉｄｔｈ ㍿ ℌ",
    "Ελληνικά Русский текст العربية עברית हिन्दी ภาษาไทย",
    "new Unicode \u1c89\u1c8a \U00031350\U00031351 \U0002ebf0 \U00011f04",
    "def f(x):\n    return x**2  # square\n\n\tif x >= 0 and y != 1: pass\n",
    "https://example.com/path?q=1&r=2#frag user@mail.org",
    "a" * 300,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "control \x00 \x01 \x7f \u200b zero\u200dwidth",
    "İstanbul ΣΑΣ straße ẞ",
    "___---===***!!!???...",
    "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX.",
]

INVALID_UTF8 = [
    b"abc\xff\xfedef",
    b"\xe4\xbd",
    b"caf\xc3",
    b"\xed\xa0\x80 surrogate",
    b"\xf4\x90\x80\x80 too big",
    b"\xc0\xaf overlong",
    b"\xe2\x82\xe2\x82\xac mixed",
]


def special_strings(specials):
    """Hard strings built around a fixture's special tokens."""
    if not specials:
        return []
    a, b = specials[0], specials[-1]
    return [
        f"{a}hello{a} world",
        f"text {a} more {b}",
        f"{a}{b}{a}",
        f"{a[:-1]} partial",
        f"  {a}  spaced  {b}  ",
        f"{a}\n{b}\nline",
    ]


def corpus(data_dir):
    path = os.path.join(data_dir, "wikitext-2-raw", "wiki.test.raw")
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f.read(400_000).splitlines() if line.strip()]
    return lines + HARD_STRINGS * 3


def train(tokenizer, lines, vocab_size, special_tokens, **options):
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                  show_progress=False, **options)
    tokenizer.train_from_iterator(lines, trainer)
    return tokenizer


def byte_level(lines, pre_tokenizer, vocab_size=900, specials=("<|endoftext|>",), **model):
    tokenizer = Tokenizer(models.BPE(**model))
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    return train(tokenizer, lines, vocab_size, list(specials),
                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet())


def make_gpt2(lines):
    tokenizer = byte_level(lines, pre_tokenizers.ByteLevel(add_prefix_space=False))
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    return tokenizer


def make_llama3(lines):
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eot_id|>"]
    tokenizer = byte_level(lines, pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
        specials=specials, ignore_merges=True)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", tokenizer.token_to_id("<|begin_of_text|>"))])
    return tokenizer


def make_qwen2(lines):
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = byte_level(lines, pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), specials=specials)
    tokenizer.normalizer = normalizers.NFC()
    return tokenizer


def make_digits(lines):
    return byte_level(lines, pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)]), specials=["<|endoftext|>", "<|im_start|>"])


def spm_vocabulary(tokenizer, specials):
    """Llama 2's layout: special tokens, the 256 byte tokens, then the learned tokens."""
    model = json.loads(tokenizer.to_str())["model"]
    learned = sorted(model["vocab"].items(), key=lambda item: item[1])
    vocab = {token: i for i, token in enumerate(specials)}
    for byte in range(256):
        vocab["<0x%02X>" % byte] = len(vocab)
    for token, _ in learned:
        if token not in vocab:
            vocab[token] = len(vocab)
    return vocab, model["merges"]


def make_llama2(lines):
    specials = ["<unk>", "<s>", "</s>"]
    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
    train(trained, lines, 700, specials)
    vocab, merges = spm_vocabulary(trained, specials)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m) for m in merges],
                                     unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tokenizer.add_special_tokens(specials)
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                                 normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                           decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return tokenizer


def make_metaspace(lines):
    specials = ["<unk>", "<s>", "</s>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=True)
    tokenizer.decoder = decoders.Sequence([decoders.ByteFallback(),
                                           decoders.Metaspace(prepend_scheme="first")])
    train(tokenizer, lines, 700, specials)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B", special_tokens=[("<s>", 1), ("</s>", 2)])
    return tokenizer


def make_bert(lines):
    specials = ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    train(tokenizer, lines, 900, specials, continuing_subword_prefix="##",
          limit_alphabet=200)
    tokenizer.post_processor = processors.BertProcessing(
        ("[SEP]", tokenizer.token_to_id("[SEP]")), ("[CLS]", tokenizer.token_to_id("[CLS]")))
    return tokenizer


def make_misc(lines):
    from tokenizers import AddedToken
    specials = ["<unk>", "<pad>", "<cls>", "<sep>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", end_of_word_suffix="</w>"))
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase(),
        normalizers.Strip(left=True, right=True),
        normalizers.Replace(Regex(r"\d{5,}"), "#")])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.Split("-", behavior="merged_with_previous"),
        pre_tokenizers.Split(Regex("x+"), behavior="merged_with_next", invert=False),
        pre_tokenizers.Split(Regex("[aeiou]{2}"), behavior="contiguous", invert=True)])
    tokenizer.decoder = decoders.BPEDecoder(suffix="</w>")
    train(tokenizer, lines, 900, specials, end_of_word_suffix="</w>", limit_alphabet=150)
    tokenizer.add_tokens([
        AddedToken("<mask>", lstrip=True, rstrip=True, normalized=False, special=False),
        AddedToken("ony", single_word=True, normalized=True),
        AddedToken("Hello", normalized=True),
        AddedToken("[[", rstrip=True, normalized=False),
    ])
    tokenizer.post_processor = processors.RobertaProcessing(("<sep>", 3), ("<cls>", 2))
    return tokenizer


def make_whitespace(lines):
    specials = ["[UNK]"]
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]", fuse_unk=True))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Whitespace(),
        pre_tokenizers.Split(Regex(r"(?i)th|\bin\b|[[:punct:]]+|\d+$"), behavior="isolated")])
    train(tokenizer, lines, 800, specials, limit_alphabet=120)
    return tokenizer


FIXTURES = {
    "gpt2": make_gpt2,
    "llama3": make_llama3,
    "qwen2": make_qwen2,
    "digits": make_digits,
    "llama2": make_llama2,
    "metaspace": make_metaspace,
    "bert": make_bert,
    "misc": make_misc,
    "whitespace": make_whitespace,
}


def fnv1a64(ids):
    """FNV-1a (64 bit) over the ids as little-endian int32: a compact fingerprint of a long
    encoding that the C++ test recomputes."""
    value = 0xCBF29CE484222325
    for token_id in ids:
        for byte in token_id.to_bytes(4, "little"):
            value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % value


def expected_cases(tokenizer, specials, rng, wikitext):
    inputs = [s.encode("utf-8") for s in HARD_STRINGS + special_strings(specials)]
    inputs += INVALID_UTF8
    cases = []
    for raw in inputs:
        text = raw.decode("utf-8", errors="replace")
        with_special = tokenizer.encode(text, add_special_tokens=True).ids
        case = {"hex": raw.hex()}
        if raw == text.encode("utf-8"):
            case["text"] = text
        case["ids"] = with_special
        case["ids_no_special"] = tokenizer.encode(text, add_special_tokens=False).ids
        case["decoded"] = tokenizer.decode(with_special, skip_special_tokens=True)
        case["decoded_with_special"] = tokenizer.decode(with_special, skip_special_tokens=False)
        cases.append(case)
    # Decoding arbitrary id sequences: byte tokens out of order, specials, unknown ids.
    size = tokenizer.get_vocab_size()
    decodes = []
    for length in [1, 2, 3, 5, 8, 13, 40]:
        ids = [rng.randrange(size + 3) for _ in range(length)]
        decodes.append({"ids": ids,
                        "text": tokenizer.decode(ids, skip_special_tokens=True),
                        "text_with_special": tokenizer.decode(ids, skip_special_tokens=False)})
    # The whole WikiText-2 test file, encoded in one call.
    ids = tokenizer.encode(wikitext, add_special_tokens=True).ids
    wiki = {"ids": len(ids), "fnv1a64": fnv1a64(ids),
            "round_trip": tokenizer.decode(ids, skip_special_tokens=True) == wikitext}
    return {"cases": cases, "decodes": decodes, "vocab_size": size, "wikitext": wiki}


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(root, "..", "shared", "data"))
    parser.add_argument("--out", default=os.path.join(root, "tests", "fixtures", "tokenizer"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    lines = corpus(args.data)
    with open(os.path.join(args.data, "wikitext-2-raw", "wiki.test.raw"), encoding="utf-8",
              newline="") as f:
        wikitext = f.read()
    rng = random.Random(1234)
    expected = {}
    for name, make in FIXTURES.items():
        tokenizer = make(lines)
        path = os.path.join(args.out, name + ".json")
        tokenizer.save(path, pretty=False)
        # Reload from the file so the expectations come from exactly what was written.
        tokenizer = Tokenizer.from_file(path)
        specials = [t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special]
        expected[name] = expected_cases(tokenizer, specials, rng, wikitext)
        print(f"{name}: {os.path.getsize(path)} bytes, vocab {tokenizer.get_vocab_size()}")
    with open(os.path.join(args.out, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, separators=(",", ":"))


if __name__ == "__main__":
    main()
