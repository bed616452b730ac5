#!/usr/bin/env python3
"""YaRN RoPE references for tests/unit/llama_test.cc: the inverse frequencies and attention factor
of transformers' _compute_yarn_parameters (transformers 5.17, modeling_rope_utils.py) for a few
configs, in its float32 steps (numpy float32 for torch float32). With torch and transformers
installed it also runs transformers' own function and checks that both agree.

Usage: python3 scripts/golden/yarn_reference.py   (prints C++ initializers for the test)
"""
import math
import sys

import numpy as np

# (head_dim, rope_theta, max_position_embeddings, rope_parameters)
CASES = [
    (64, 1000000.0, 32768, {"rope_type": "yarn", "factor": 4.0,
                            "original_max_position_embeddings": 8192}),
    (128, 10000.0, 4096, {"rope_type": "yarn", "factor": 16.0,
                          "original_max_position_embeddings": 4096, "beta_fast": 16.0,
                          "beta_slow": 2.0, "mscale": 0.707, "mscale_all_dim": 1.0,
                          "truncate": False}),
    (32, 500000.0, 2048, {"rope_type": "yarn", "factor": 2.0, "attention_factor": 1.25,
                          "original_max_position_embeddings": 1024}),
]


def yarn(head_dim, base, max_position_embeddings, parameters):
    dim = head_dim
    factor = parameters.get("factor")
    original = parameters.get("original_max_position_embeddings", max_position_embeddings)
    if factor is None:
        factor = max_position_embeddings / original
    attention_factor = parameters.get("attention_factor")
    mscale = parameters.get("mscale")
    mscale_all_dim = parameters.get("mscale_all_dim")

    def get_mscale(scale, weight=1):
        return 1.0 if scale <= 1 else 0.1 * weight * math.log(scale) + 1.0

    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = float(get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim))
        else:
            attention_factor = get_mscale(factor)
    beta_fast = parameters.get("beta_fast") or 32
    beta_slow = parameters.get("beta_slow") or 1

    def correction_dim(rotations):
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if parameters.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    f32 = np.float32
    pos_freqs = np.power(f32(base), np.arange(0, dim, 2).astype(f32) / f32(dim)).astype(f32)
    extrapolation = (f32(1.0) / pos_freqs).astype(f32)
    interpolation = (f32(1.0) / (f32(factor) * pos_freqs)).astype(f32)
    ramp = np.clip((np.arange(dim // 2).astype(f32) - f32(low)) / f32(high - low), 0, 1).astype(f32)
    extrapolation_factor = (f32(1) - ramp).astype(f32)
    inv_freq = (interpolation * (f32(1) - extrapolation_factor) +
                extrapolation * extrapolation_factor).astype(f32)
    return inv_freq, attention_factor


def transformers_yarn(head_dim, base, max_position_embeddings, parameters):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    config = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
                         max_position_embeddings=max_position_embeddings,
                         rope_parameters=dict(parameters, rope_theta=base))
    inv_freq, factor = ROPE_INIT_FUNCTIONS["yarn"](config, "cpu")
    return inv_freq.numpy(), factor


def main():
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
        check = True
    except ImportError:
        check = False
        print("// torch or transformers missing: transcription only", file=sys.stderr)
    for head_dim, base, max_positions, parameters in CASES:
        inv_freq, attention_factor = yarn(head_dim, base, max_positions, parameters)
        if check:
            theirs, their_factor = transformers_yarn(head_dim, base, max_positions, parameters)
            # torch's float32 pow may round differently from numpy's in the last bit.
            worst = float(np.max(np.abs(theirs - inv_freq) / np.abs(theirs)))
            print(f"// transformers' own function: largest relative difference {worst:.3g}, "
                  f"attention factor {float(their_factor)!r}", file=sys.stderr)
            if worst > 4e-7 or abs(float(their_factor) - attention_factor) > 1e-7:
                sys.exit(f"transcription differs from transformers for {parameters}")
        values = ", ".join(f"{v:.9g}f" for v in inv_freq)
        print(f"// head_dim {head_dim}, rope_theta {base}, max_position_embeddings "
              f"{max_positions}, {parameters}")
        print(f"attention factor {attention_factor!r}")
        print(f"{{{values}}}")


if __name__ == "__main__":
    main()
