#!/usr/bin/env python3
"""Writes a llama.cpp GGUF (architecture llama, F16 weights, F32 norms) of a Hugging Face
config.json's shape with random weights and no tokenizer (tokenizer.ggml.model "none" with
llama.vocab_size dummy tokens), for llama-bench: speed does not depend on weight values. The
weights are one random block of N(0, 0.02^2) values repeated, so that the file is written at disk
speed. Needs numpy and the gguf-py package from llama.cpp's sources (PYTHONPATH=.../gguf-py).

usage: write_random_gguf.py CONFIG.json OUT.gguf
"""
import json
import sys

import numpy as np

import gguf


def main():
    config_path, out_path = sys.argv[1], sys.argv[2]
    with open(config_path) as file:
        c = json.load(file)
    hidden, ffn, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    heads, kv_heads, vocab = c["num_attention_heads"], c["num_key_value_heads"], c["vocab_size"]
    head_dim = c.get("head_dim") or hidden // heads
    writer = gguf.GGUFWriter(out_path, "llama")
    writer.add_context_length(c.get("max_position_embeddings", 8192))
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(float(c.get("rope_theta", 10000.0)))
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(float(c.get("rms_norm_eps", 1e-5)))
    writer.add_vocab_size(vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("none")

    # (name, numpy shape [rows, cols] as PyTorch stores it, dtype)
    tensors = [("token_embd.weight", (vocab, hidden), np.float16)]
    for i in range(layers):
        p = f"blk.{i}."
        tensors += [
            (p + "attn_norm.weight", (hidden,), np.float32),
            (p + "attn_q.weight", (heads * head_dim, hidden), np.float16),
            (p + "attn_k.weight", (kv_heads * head_dim, hidden), np.float16),
            (p + "attn_v.weight", (kv_heads * head_dim, hidden), np.float16),
            (p + "attn_output.weight", (hidden, heads * head_dim), np.float16),
            (p + "ffn_norm.weight", (hidden,), np.float32),
            (p + "ffn_gate.weight", (ffn, hidden), np.float16),
            (p + "ffn_up.weight", (ffn, hidden), np.float16),
            (p + "ffn_down.weight", (hidden, ffn), np.float16),
        ]
    tensors += [("output_norm.weight", (hidden,), np.float32)]
    if not c.get("tie_word_embeddings", False):  # tied: llama.cpp reads token_embd for the head
        tensors += [("output.weight", (vocab, hidden), np.float16)]
    for name, shape, dtype in tensors:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        writer.add_tensor_info(name, shape, np.dtype(dtype), nbytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    block = (np.random.default_rng(0).standard_normal(1 << 22) * 0.02).astype(np.float16)
    for name, shape, dtype in tensors:
        count = int(np.prod(shape))
        if dtype == np.float32:
            data = np.ones(count, dtype=np.float32)
        else:
            data = np.resize(block, count)
        writer.write_tensor_data(data.reshape(shape))
    writer.close()
    print(f"wrote {out_path}: {len(tensors)} tensors")


if __name__ == "__main__":
    main()
