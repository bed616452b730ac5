#!/usr/bin/env python3
"""Writes a tiny llama-architecture GGUF and the Hugging Face tensors it was made from:

  tests/fixtures/gguf/tiny_llama.gguf     the model as llama.cpp's convert_hf_to_gguf.py lays it
                                          out: GGUF names, attn_q/attn_k rows permuted with its
                                          `permute` formula, a mix of F32, F16 and Q8_0 tensors,
                                          llama.* metadata and a small byte-level vocabulary;
  tests/fixtures/gguf/tiny_llama_hf.gguf  the same weights under their HF names, unpermuted, as
                                          F32 (quantized ones as their dequantized values), the
                                          answer tests/unit/gguf_source_test.cc expects from
                                          Kite's GGUF model source.

4 query heads and 2 key/value heads, so that the key permutation uses the kv head count.
Deterministic (fixed seed). Usage: pip install gguf numpy; python scripts/make_gguf_llama_fixture.py
"""

from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

HIDDEN, HEADS, KV_HEADS, INTERMEDIATE, VOCAB, LAYERS = 32, 4, 2, 64, 8, 2
HEAD_DIM = HIDDEN // HEADS


def permute(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: interleaves the two rotary halves of each head."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    out_dir = root / "tests/fixtures/gguf"
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)

    model = gguf.GGUFWriter(str(out_dir / "tiny_llama.gguf"), arch="llama")
    model.add_name("tiny llama")
    model.add_context_length(256)
    model.add_embedding_length(HIDDEN)
    model.add_block_count(LAYERS)
    model.add_feed_forward_length(INTERMEDIATE)
    model.add_head_count(HEADS)
    model.add_head_count_kv(KV_HEADS)
    model.add_rope_dimension_count(HEAD_DIM)
    model.add_rope_freq_base(50000.0)
    model.add_layer_norm_rms_eps(1e-6)
    model.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    model.add_rope_scaling_factor(2.0)
    model.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    # A byte-level vocabulary of 8 tokens: "a", "b", "ab", "Ġ", "Ġab", "<s>", "</s>", "<pad>".
    model.add_tokenizer_model("gpt2")
    model.add_tokenizer_pre("smollm")
    model.add_token_list(["a", "b", "ab", "\u0120", "\u0120ab", "<s>", "</s>", "<pad>"])
    model.add_token_types([1, 1, 1, 1, 1, 3, 3, 3])
    model.add_token_merges(["a b", "\u0120 ab"])
    model.add_bos_token_id(5)
    model.add_eos_token_id(6)
    model.add_pad_token_id(7)
    model.add_add_bos_token(True)
    model.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")

    hf = gguf.GGUFWriter(str(out_dir / "tiny_llama_hf.gguf"), arch="reference")

    def add(gguf_name: str, hf_name: str, weights: np.ndarray, qtype: T, rows_permuted_by=None):
        stored = weights if rows_permuted_by is None else permute(weights, HEADS, rows_permuted_by)
        if qtype == T.F32:
            model.add_tensor(gguf_name, stored.astype(np.float32))
            expected = weights
        elif qtype == T.F16:
            model.add_tensor(gguf_name, stored.astype(np.float16))
            expected = weights.astype(np.float16).astype(np.float32)
        else:
            blocks = quantize(stored.astype(np.float32), qtype)
            model.add_tensor(gguf_name, blocks, raw_dtype=qtype)
            decoded = dequantize(blocks, qtype).reshape(weights.shape)
            # What the model source must return: the decoded values with the permutation undone.
            expected = decoded if rows_permuted_by is None else unpermute(decoded, rows_permuted_by)
        hf.add_tensor(hf_name, np.ascontiguousarray(expected, dtype=np.float32))

    def unpermute(weights: np.ndarray, heads: int) -> np.ndarray:
        # Find the inverse by permuting row indices (independent of the code under test).
        index = permute(np.arange(weights.shape[0]), HEADS, heads)
        restored = np.empty_like(weights)
        restored[index] = weights
        return restored

    def matrix(rows: int, cols: int) -> np.ndarray:
        return rng.standard_normal((rows, cols)).astype(np.float32)

    add("token_embd.weight", "model.embed_tokens.weight", matrix(VOCAB, HIDDEN), T.F32)
    for layer in range(LAYERS):
        gguf_prefix, hf_prefix = f"blk.{layer}.", f"model.layers.{layer}."
        quantized = T.Q8_0 if layer == 1 else T.F16
        add(gguf_prefix + "attn_norm.weight", hf_prefix + "input_layernorm.weight", matrix(1, HIDDEN)[0], T.F32)
        add(gguf_prefix + "attn_q.weight", hf_prefix + "self_attn.q_proj.weight", matrix(HIDDEN, HIDDEN), quantized, HEADS)
        add(gguf_prefix + "attn_k.weight", hf_prefix + "self_attn.k_proj.weight", matrix(KV_HEADS * HEAD_DIM, HIDDEN), T.F32, KV_HEADS)
        add(gguf_prefix + "attn_v.weight", hf_prefix + "self_attn.v_proj.weight", matrix(KV_HEADS * HEAD_DIM, HIDDEN), quantized)
        add(gguf_prefix + "attn_output.weight", hf_prefix + "self_attn.o_proj.weight", matrix(HIDDEN, HIDDEN), T.F16)
        add(gguf_prefix + "ffn_norm.weight", hf_prefix + "post_attention_layernorm.weight", matrix(1, HIDDEN)[0], T.F32)
        add(gguf_prefix + "ffn_gate.weight", hf_prefix + "mlp.gate_proj.weight", matrix(INTERMEDIATE, HIDDEN), quantized)
        add(gguf_prefix + "ffn_up.weight", hf_prefix + "mlp.up_proj.weight", matrix(INTERMEDIATE, HIDDEN), T.F16)
        add(gguf_prefix + "ffn_down.weight", hf_prefix + "mlp.down_proj.weight", matrix(HIDDEN, INTERMEDIATE), quantized)
    add("output_norm.weight", "model.norm.weight", matrix(1, HIDDEN)[0], T.F32)
    add("output.weight", "lm_head.weight", matrix(VOCAB, HIDDEN), T.F16)

    for writer in (model, hf):
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    for name in ("tiny_llama.gguf", "tiny_llama_hf.gguf"):
        print(f"wrote {out_dir / name} ({(out_dir / name).stat().st_size} bytes)")


if __name__ == "__main__":
    main()
