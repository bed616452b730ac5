#!/usr/bin/env python3
"""Writes the seed corpus of fuzz/gguf_fuzzer.cc into fuzz/corpus/gguf_fuzzer/: small GGUF files
(a few KB at most) that between them reach every part of the reader, the dequantizers and the
tokenizer conversion:

  metadata.gguf       every metadata value type, nested arrays, a custom alignment, no tensors
  tensors.gguf        one small tensor of each type Kite dequantizes, plus an undecodable Q2_K
  vocab_gpt2.gguf     a byte-level BPE vocabulary (tokens, types, merges, pre, special ids)
  vocab_llama.gguf    a SentencePiece vocabulary with scores and byte tokens, no merges
  tiny_model.gguf     a one-layer llama model with a vocabulary and a chat template

Deterministic. Usage: pip install gguf numpy; python scripts/make_gguf_fuzz_corpus.py
"""

from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V
from gguf.quants import quantize

OUT = Path(__file__).resolve().parent.parent / "fuzz/corpus/gguf_fuzzer"


def finish(writer: gguf.GGUFWriter, name: str) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"wrote {OUT / name} ({(OUT / name).stat().st_size} bytes)")


def metadata() -> None:
    writer = gguf.GGUFWriter(str(OUT / "metadata.gguf"), arch="llama")
    writer.add_uint32("general.alignment", 64)
    writer.add_key_value("u8", 200, V.UINT8)
    writer.add_key_value("i8", -100, V.INT8)
    writer.add_key_value("u16", 60000, V.UINT16)
    writer.add_key_value("i16", -30000, V.INT16)
    writer.add_key_value("u32", 4000000000, V.UINT32)
    writer.add_key_value("i32", -2000000000, V.INT32)
    writer.add_key_value("f32", 0.25, V.FLOAT32)
    writer.add_key_value("bool", True, V.BOOL)
    writer.add_key_value("string", "h\u00e9llo", V.STRING)
    writer.add_key_value("u64", 2**63, V.UINT64)
    writer.add_key_value("i64", -(2**62), V.INT64)
    writer.add_key_value("f64", 2.5, V.FLOAT64)
    writer.add_key_value("strings", ["a", "", "ccc"], V.ARRAY)
    writer.add_key_value("floats", [0.5, -1.0], V.ARRAY, sub_type=V.FLOAT32)
    writer.add_key_value("nested", [[1, 2], [3]], V.ARRAY)
    finish(writer, "metadata.gguf")


def tensors() -> None:
    rng = np.random.default_rng(1)
    writer = gguf.GGUFWriter(str(OUT / "tensors.gguf"), arch="llama")
    data32 = rng.standard_normal((1, 32)).astype(np.float32)
    writer.add_tensor("F32", data32)
    writer.add_tensor("F16", data32.astype(np.float16))
    writer.add_tensor("BF16", quantize(data32, T.BF16), raw_dtype=T.BF16)
    writer.add_tensor("F64", data32.astype(np.float64)[:, :4])
    for qtype in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0):
        writer.add_tensor(qtype.name, quantize(data32, qtype), raw_dtype=qtype)
    for qtype in (T.Q4_K, T.Q5_K, T.Q6_K, T.Q2_K):
        _, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
        block = rng.integers(0, 256, size=(1, block_bytes), dtype=np.uint8)
        writer.add_tensor(qtype.name, block, raw_dtype=qtype)
    finish(writer, "tensors.gguf")


def vocab_gpt2() -> None:
    writer = gguf.GGUFWriter(str(OUT / "vocab_gpt2.gguf"), arch="llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama-bpe")
    tokens = ["h", "e", "l", "o", "he", "ll", "hell", "hello", "\u0120", "\u0120hello", "<|begin|>", "<|end|>", "<think>"]
    writer.add_token_list(tokens)
    writer.add_token_types([1] * 10 + [3, 3, 4])
    writer.add_token_merges(["h e", "l l", "he ll", "hell o", "\u0120 hello"])
    writer.add_bos_token_id(10)
    writer.add_eos_token_id(11)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(True)
    finish(writer, "vocab_gpt2.gguf")


def vocab_llama() -> None:
    writer = gguf.GGUFWriter(str(OUT / "vocab_llama.gguf"), arch="llama")
    writer.add_tokenizer_model("llama")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(8)]
    pieces = ["\u2581", "a", "b", "c", "\u2581a", "ab", "\u2581ab", "bc", "abc", "\u2581abc", "\u00e9", "\u2581\u00e9"]
    tokens += pieces
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * 11 + [-float(i) for i in range(len(pieces))])
    writer.add_token_types([2, 3, 3] + [6] * 8 + [1] * len(pieces))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_space_prefix(True)
    finish(writer, "vocab_llama.gguf")


def tiny_model() -> None:
    rng = np.random.default_rng(2)
    hidden, heads, kv_heads, intermediate, vocab = 8, 2, 1, 16, 4
    writer = gguf.GGUFWriter(str(OUT / "tiny_model.gguf"), arch="llama")
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_block_count(1)
    writer.add_feed_forward_length(intermediate)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(["a", "b", "ab", "<s>"])
    writer.add_token_types([1, 1, 1, 3])
    writer.add_token_merges(["a b"])
    writer.add_bos_token_id(3)
    writer.add_chat_template("{{ messages[0]['content'] }}")
    kv = hidden // heads * kv_heads

    def add(name, shape):
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float16))

    add("token_embd.weight", (vocab, hidden))
    add("blk.0.attn_norm.weight", (hidden,))
    add("blk.0.attn_q.weight", (hidden, hidden))
    add("blk.0.attn_k.weight", (kv, hidden))
    add("blk.0.attn_v.weight", (kv, hidden))
    add("blk.0.attn_output.weight", (hidden, hidden))
    add("blk.0.ffn_norm.weight", (hidden,))
    add("blk.0.ffn_gate.weight", (intermediate, hidden))
    add("blk.0.ffn_up.weight", (intermediate, hidden))
    add("blk.0.ffn_down.weight", (hidden, intermediate))
    add("output_norm.weight", (hidden,))
    finish(writer, "tiny_model.gguf")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    metadata()
    tensors()
    vocab_gpt2()
    vocab_llama()
    tiny_model()


if __name__ == "__main__":
    main()
