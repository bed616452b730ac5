#!/usr/bin/env python3
"""Generates src/tokenizer/unicode_tables.cc: where the Unicode data Kite links (PCRE2 10.42,
utf8proc 2.8) disagrees with the Hugging Face tokenizers library, code point by code point.

The Rust library mixes several Unicode versions: Oniguruma's regex properties and Rust std's
char methods are recent, while the crates behind normalization, StripAccents and BERT's character
classes carry older tables. For each property Kite needs, this script asks the library (through
its Python binding) which code points have it, computes what Kite's baseline (PCRE2 or utf8proc)
says, and records the differences:
  regex:<P>        code points Oniguruma puts in \\p{P} and PCRE2 does not
  <property>:add   code points to add to Kite's utf8proc-based baseline
  <property>:remove code points to take out of it
  keep:<form>      code points the library leaves alone under a normal form (older data)
and the lowercase mappings that differ from utf8proc_tolower.

Usage: scripts/make_unicode_tables.py [output]   (needs the `tokenizers` Python package, libpcre2-8
and libutf8proc; run it again whenever one of them is upgraded).
"""
import ctypes
import ctypes.util
import sys

from tokenizers import Regex, normalizers, pre_tokenizers

REGEX_PROPERTIES = [(name, name) for name in [
    "L", "Lu", "Ll", "Lt", "Lm", "Lo", "M", "Mn", "Mc", "Me", "N", "Nd", "Nl", "No",
    "P", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "S", "Sm", "Sc", "Sk", "So",
    "Z", "Zs", "Zl", "Zp", "Alphabetic", "Uppercase", "Lowercase", "White_Space",
    "Join_Control"]] + [("sc:Han", "Han")]

CODE_POINTS = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
CHARS = [chr(c) for c in CODE_POINTS]
TEXT = "".join(CHARS)
UTF8 = TEXT.encode("utf-8")


class Pcre2:
    def __init__(self):
        lib = ctypes.CDLL(ctypes.util.find_library("pcre2-8"))
        lib.pcre2_compile_8.restype = ctypes.c_void_p
        lib.pcre2_compile_8.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint32,
                                        ctypes.POINTER(ctypes.c_int),
                                        ctypes.POINTER(ctypes.c_size_t), ctypes.c_void_p]
        lib.pcre2_match_data_create_8.restype = ctypes.c_void_p
        lib.pcre2_match_data_create_8.argtypes = [ctypes.c_uint32, ctypes.c_void_p]
        lib.pcre2_match_8.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t,
                                      ctypes.c_size_t, ctypes.c_uint32, ctypes.c_void_p,
                                      ctypes.c_void_p]
        lib.pcre2_get_ovector_pointer_8.restype = ctypes.POINTER(ctypes.c_size_t)
        lib.pcre2_get_ovector_pointer_8.argtypes = [ctypes.c_void_p]
        self.lib = lib
        self.data = lib.pcre2_match_data_create_8(1, None)

    def matched(self, name):
        pattern = ("\\p{%s}+" % name).encode()
        error, offset = ctypes.c_int(), ctypes.c_size_t()
        utf, ucp = 0x00080000, 0x00020000
        code = self.lib.pcre2_compile_8(pattern, len(pattern), utf | ucp, ctypes.byref(error),
                                        ctypes.byref(offset), None)
        assert code, name
        matched, start = set(), 0
        while self.lib.pcre2_match_8(code, UTF8, len(UTF8), start, 0, self.data, None) >= 0:
            ovector = self.lib.pcre2_get_ovector_pointer_8(self.data)
            begin, end = ovector[0], ovector[1]
            matched.update(ord(c) for c in UTF8[begin:end].decode("utf-8"))
            start = end
        return matched


class Utf8proc:
    CATEGORIES = ["Cn", "Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc",
                  "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp",
                  "Cc", "Cf", "Cs", "Co"]
    STABLE, COMPAT, COMPOSE, DECOMPOSE = 1 << 1, 1 << 2, 1 << 3, 1 << 4

    def __init__(self):
        lib = ctypes.CDLL(ctypes.util.find_library("utf8proc"))
        lib.utf8proc_category.restype = ctypes.c_int
        lib.utf8proc_category.argtypes = [ctypes.c_int32]
        lib.utf8proc_tolower.restype = ctypes.c_int32
        lib.utf8proc_tolower.argtypes = [ctypes.c_int32]
        lib.utf8proc_get_property.restype = ctypes.POINTER(ctypes.c_int16)
        lib.utf8proc_get_property.argtypes = [ctypes.c_int32]
        lib.utf8proc_map.restype = ctypes.c_ssize_t
        lib.utf8proc_map.argtypes = [ctypes.c_char_p, ctypes.c_ssize_t,
                                     ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
        self.lib = lib
        self.libc = ctypes.CDLL(None)

    def category(self, c):
        return self.CATEGORIES[self.lib.utf8proc_category(c)]

    def combining_class(self, c):
        return self.lib.utf8proc_get_property(c)[1]  # utf8proc_property_t.combining_class

    def lower(self, c):
        return "i\u0307" if c == 0x130 else chr(self.lib.utf8proc_tolower(c))

    def normalize(self, text, options):
        raw = text.encode("utf-8")
        out = ctypes.c_void_p()
        length = self.lib.utf8proc_map(raw, len(raw), ctypes.byref(out), options | self.STABLE)
        assert length >= 0
        result = ctypes.string_at(out, length).decode("utf-8")
        self.libc.free(out)
        return result


def oniguruma_set(name):
    # The pieces a "removed" split keeps are exactly the characters outside the property.
    probe = pre_tokenizers.Split(pattern=Regex("\\p{%s}" % name), behavior="removed")
    kept = set()
    for piece, _ in probe.pre_tokenize_str(TEXT):
        kept.update(piece)
    return {ord(c) for c in CHARS if c not in kept}


def isolated_set(pre_tokenizer):
    """Characters a pre-tokenizer isolates, probed between 'a' separators."""
    isolated = set()
    for piece, _ in pre_tokenizer.pre_tokenize_str("a".join(CHARS)):
        if len(piece) == 1 and piece != "a":
            isolated.add(ord(piece))
    return isolated


def removed_set(pre_tokenizer):
    kept = set()
    for piece, _ in pre_tokenizer.pre_tokenize_str(TEXT):
        kept.update(piece)
    return {ord(c) for c in CHARS if c not in kept}


def ranges(code_points):
    out = []
    for c in sorted(code_points):
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


def report(name, codes):
    print(f"{name}: {len(codes)} code points", file=sys.stderr)


def main():
    output = sys.argv[1] if len(sys.argv) > 1 else "src/tokenizer/unicode_tables.cc"
    pcre2, u = Pcre2(), Utf8proc()
    tables = []  # (name, set of code points)

    for pcre2_name, onig_name in REGEX_PROPERTIES:
        onig, ours = oniguruma_set(onig_name), pcre2.matched(pcre2_name)
        extra = ours - onig
        if extra:
            print(f"note: \\p{{{pcre2_name}}}: PCRE2 has {len(extra)} code points Oniguruma "
                  f"lacks: {[hex(c) for c in sorted(extra)][:10]}", file=sys.stderr)
        tables.append(("regex:" + pcre2_name, onig - ours))

    category = {c: u.category(c) for c in CODE_POINTS}

    def add_remove(name, reference, baseline):
        tables.append((name + ":add", reference - baseline))
        tables.append((name + ":remove", baseline - reference))

    # Rust's char::is_numeric, as the Digits pre-tokenizer uses it.
    add_remove("numeric", isolated_set(pre_tokenizers.Digits(individual_digits=True)),
               {c for c in CODE_POINTS if category[c] in ("Nd", "Nl", "No")})
    # The Punctuation pre-tokenizer: ASCII punctuation or general category P (older tables).
    ascii_punctuation = {c for c in range(0x80) if chr(c) in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"}
    add_remove("punctuation", isolated_set(pre_tokenizers.Punctuation(behavior="isolated")),
               ascii_punctuation | {c for c in CODE_POINTS if category[c].startswith("P")})
    # Rust's char::is_whitespace (WhitespaceSplit); Kite's baseline is a fixed list.
    whitespace = {0x9, 0xA, 0xB, 0xC, 0xD, 0x20, 0x85, 0xA0, 0x1680, 0x2028, 0x2029, 0x202F,
                  0x205F, 0x3000} | set(range(0x2000, 0x200B))
    add_remove("whitespace", removed_set(pre_tokenizers.WhitespaceSplit()), whitespace)

    # BertNormalizer's clean_text drops control characters (other than \t \n \r), NUL and U+FFFD.
    clean = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=False,
                                       strip_accents=False, lowercase=False)
    dropped = {c for c in CODE_POINTS if clean.normalize_str(chr(c)) == ""}
    add_remove("control", dropped - {0, 0xFFFD},
               {c for c in CODE_POINTS if category[c] in ("Cc", "Cf", "Co", "Cs")} -
               {0x9, 0xA, 0xD, 0} - whitespace)
    # BertNormalizer's strip_accents: NFD, then drop nonspacing marks (Mn, older tables). Only
    # characters NFD leaves alone tell the mark set apart.
    strip = normalizers.BertNormalizer(clean_text=False, handle_chinese_chars=False,
                                       strip_accents=True, lowercase=False)
    nfd = normalizers.NFD()
    plain = [c for c in CODE_POINTS if nfd.normalize_str(chr(c)) == chr(c)]
    add_remove("nonspacing_mark", {c for c in plain if strip.normalize_str(chr(c)) == ""},
               {c for c in plain if category[c] == "Mn"})
    # The StripAccents normalizer drops combining marks (general category M, older tables).
    strip_accents = normalizers.StripAccents()
    add_remove("combining_mark",
               {c for c in CODE_POINTS if strip_accents.normalize_str(chr(c)) == ""},
               {c for c in CODE_POINTS if category[c] in ("Mn", "Mc", "Me")})

    # Combining marks the library's normalization crate does not know yet are starters (class 0)
    # to it: no canonical reordering around them.
    nfd_reference = normalizers.NFD()
    unknown_marks = set()
    for c in CODE_POINTS:
        if u.combining_class(c) == 0 or nfd_reference.normalize_str(chr(c)) != chr(c):
            continue
        probes = [chr(c) + "\u0316", "\u0316" + chr(c), chr(c) + "\u0301", "\u0301" + chr(c)]
        if all(nfd_reference.normalize_str(p) == p for p in probes):
            unknown_marks.add(c)
    print(f"marks unknown to the normalization crate: {len(unknown_marks)}", file=sys.stderr)

    # Normal forms: the library's normalization crate predates some decompositions.
    forms = {"NFC": (normalizers.NFC(), u.COMPOSE), "NFD": (normalizers.NFD(), u.DECOMPOSE),
             "NFKC": (normalizers.NFKC(), u.COMPOSE | u.COMPAT),
             "NFKD": (normalizers.NFKD(), u.DECOMPOSE | u.COMPAT)}
    for form, (reference, options) in forms.items():
        keep, other = set(), []
        for c in CODE_POINTS:
            expected, ours = reference.normalize_str(chr(c)), u.normalize(chr(c), options)
            if expected != ours:
                (keep.add(c) if expected == chr(c) else other.append(hex(c)))
        if other:
            print(f"warning: {form}: {len(other)} code points differ in another way: {other[:10]}",
                  file=sys.stderr)
        tables.append(("keep:" + form, keep | unknown_marks))

    lowercase = normalizers.Lowercase()
    lower_overrides = []
    for c in CODE_POINTS:
        expected = lowercase.normalize_str(chr(c))
        if expected != u.lower(c):
            if len(expected) != 1:
                print(f"warning: lowercase of {hex(c)} is {len(expected)} characters",
                      file=sys.stderr)
                continue
            lower_overrides.append((c, ord(expected)))
    print(f"lowercase: {len(lower_overrides)} overrides", file=sys.stderr)

    lines = [
        "// Generated by scripts/make_unicode_tables.py: do not edit.",
        "// Where PCRE2's and utf8proc's Unicode data disagree with the Hugging Face tokenizers",
        "// library (see the script for what each table means).",
        '#include "tokenizer/unicode_tables.h"',
        "",
        "namespace kite::unicode {",
        "",
        "const std::vector<NamedRanges>& version_tables() {",
        "  static const std::vector<NamedRanges> tables = {",
    ]
    for name, codes in tables:
        report(name, codes)
        body = ", ".join("{0x%X, 0x%X}" % (a, b) for a, b in ranges(codes))
        lines.append('      {"%s", {%s}},' % (name, body))
    lines += ["  };", "  return tables;", "}", "",
              "const std::vector<std::pair<char32_t, char32_t>>& lowercase_overrides() {",
              "  static const std::vector<std::pair<char32_t, char32_t>> overrides = {"]
    lines.append("      " + ", ".join("{0x%X, 0x%X}" % pair for pair in lower_overrides))
    lines += ["  };", "  return overrides;", "}", "", "}  // namespace kite::unicode", ""]
    with open(output, "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
