#!/usr/bin/env python3
"""Writes tests/fixtures/gguf/dequant_reference.gguf: for each tensor type Kite dequantizes, a
2 x 256 tensor named after the type (F32, Q4_K, ...) and a tensor "<type>.expected" holding
gguf-py's reference dequantization of it as F32. tests/unit/gguf_dequant_test.cc compares Kite's
decoding against it bit for bit.

Types gguf-py can quantize are made by quantizing random data; the k-quants, which it can only
decode, get random blocks with small, sane super-block scales. Deterministic (fixed seed).

Usage: pip install gguf numpy; python scripts/make_gguf_dequant_fixture.py [output.gguf]
"""

import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

ROWS, COLUMNS = 2, 256
QUANTIZED = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
K_QUANTS = [T.Q4_K, T.Q5_K, T.Q6_K]


def half_bytes(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16).view(np.uint8)


def random_k_blocks(rng: np.random.Generator, qtype: T, count: int) -> np.ndarray:
    """Random k-quant blocks whose fp16 scales are small and finite."""
    block_size, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(count, block_bytes), dtype=np.uint8)
    if qtype in (T.Q4_K, T.Q5_K):
        # d and dmin lead the block.
        blocks[:, 0:2] = half_bytes(rng.uniform(1e-4, 1e-2, size=(count, 1)))
        blocks[:, 2:4] = half_bytes(rng.uniform(1e-4, 1e-2, size=(count, 1)))
    else:  # Q6_K: d trails the block.
        blocks[:, -2:] = half_bytes(rng.uniform(1e-4, 1e-2, size=(count, 1)))
    return blocks


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    output = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "tests/fixtures/gguf/dequant_reference.gguf"
    output.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240611)
    writer = gguf.GGUFWriter(str(output), arch="dequant-fixture")

    def add(name: str, stored: np.ndarray, qtype: T, expected: np.ndarray) -> None:
        assert expected.shape == (ROWS, COLUMNS) and expected.dtype == np.float32, name
        writer.add_tensor(name, stored, raw_dtype=qtype)
        writer.add_tensor(name + ".expected", expected, raw_dtype=T.F32)

    data = rng.standard_normal((ROWS, COLUMNS)).astype(np.float32)
    add("F32", data, T.F32, dequantize(data.view(np.uint8), T.F32).reshape(ROWS, COLUMNS))

    # F16 with its edge cases: infinities, the largest value, subnormals, signed zero.
    halves = data.astype(np.float16)
    halves.flat[:6] = [np.inf, -np.inf, 65504.0, 6e-8, -0.0, 1e-5]
    add("F16", halves, T.F16, dequantize(halves.view(np.uint8), T.F16).reshape(ROWS, COLUMNS))

    bf16 = quantize(data, T.BF16)
    add("BF16", bf16, T.BF16, dequantize(bf16, T.BF16).reshape(ROWS, COLUMNS))

    doubles = rng.standard_normal((ROWS, COLUMNS)).astype(np.float64)
    add("F64", doubles, T.F64, doubles.astype(np.float32))

    for qtype in QUANTIZED:
        blocks = quantize(data, qtype)
        add(qtype.name, blocks, qtype, dequantize(blocks, qtype).reshape(ROWS, COLUMNS))

    for qtype in K_QUANTS:
        _, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
        blocks = random_k_blocks(rng, qtype, ROWS * COLUMNS // 256).reshape(ROWS, -1)
        add(qtype.name, blocks, qtype, dequantize(blocks, qtype).reshape(ROWS, COLUMNS))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"wrote {output} ({output.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
