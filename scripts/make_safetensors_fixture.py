#!/usr/bin/env python3
"""Writes tests/fixtures/safetensors/reference.safetensors with the reference `safetensors`
library, so the unit tests can check that Kite reads files made by Hugging Face's writer exactly.

Usage: python scripts/make_safetensors_fixture.py [OUTPUT]   (needs: pip install safetensors numpy)
Values are simple formulas of the element index; tests/unit/safetensors_test.cc recomputes them.
"""
import os
import sys

import numpy as np
from safetensors import TensorSpec, serialize_file


def main() -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    output = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        root, "tests", "fixtures", "safetensors", "reference.safetensors")
    arrays = {
        # value[i] = (i - 3) * 0.25 for the floating tensors, exactly representable in every dtype.
        "f32": ((np.arange(12, dtype=np.float32) - 3) * 0.25).reshape(3, 4),
        "f16": ((np.arange(6, dtype=np.float16) - 3) * np.float16(0.25)).reshape(2, 3),
        # bfloat16 and float8_e4m3fn have no numpy dtype: their bit patterns are given directly.
        # bf16 bits of 1.0, -2.0, 0.5, 3.0; fp8 e4m3 bits of 1.0, -2.0, 0.5, 448.
        "bf16": np.array([0x3F80, 0xC000, 0x3F00, 0x4040], dtype=np.uint16).reshape(2, 2),
        "f8_e4m3": np.array([0x38, 0xC0, 0x30, 0x7E], dtype=np.uint8),
        "i8": np.array([-128, -1, 0, 127], dtype=np.int8),
        "u8": np.array([0, 1, 128, 255], dtype=np.uint8),
        "i32": np.array([[-2147483648, 0], [1, 2147483647]], dtype=np.int32),
        "i64": np.array([-(2**63), 2**40, 7], dtype=np.int64),
        "scalar": np.array(1.5, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }
    dtypes = {"bf16": "bfloat16", "f8_e4m3": "float8_e4m3fn"}
    specs = {}
    for name, array in arrays.items():
        array = array.astype(array.dtype.newbyteorder("<"), order="C")
        arrays[name] = array  # keeps the buffer alive during serialization
        specs[name] = TensorSpec(dtype=dtypes.get(name, array.dtype.name), shape=list(array.shape),
                                 data_ptr=array.ctypes.data, data_len=array.nbytes)
    serialize_file(specs, output, metadata={"format": "pt", "made_by": "safetensors-python"})
    print(f"wrote {output} ({os.path.getsize(output)} bytes)")


if __name__ == "__main__":
    main()
