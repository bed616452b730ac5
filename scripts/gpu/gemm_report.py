#!/usr/bin/env python3
"""The GEMMs a CUDA engine's build tuned for its smallest row bucket (decode at batch 1), each with
the time the tuning measured and the weight bandwidth that time means: weight bytes / time, against
a copy rate if given (kite bench --ceilings prints one). The GEMV's bandwidth alone, on the GPU the
engine was built on, with no extra GPU time.

Usage: python3 scripts/gpu/gemm_report.py ENGINE_DIR [--copy_gbs GB_PER_S] [--max_tokens N]
"""
import argparse
import sys

from engine_config import read_cuda_engine_config

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine_dir")
    parser.add_argument("--copy_gbs", type=float, default=0.0,
                        help="the GPU's copy rate in GB/s, for each GEMM's share of it")
    parser.add_argument("--max_tokens", type=int, default=0,
                        help="the row bucket to list (default: the smallest tuned)")
    args = parser.parse_args()
    config = read_cuda_engine_config(args.engine_dir, "gemm_report.py")
    if config is None:
        return 2
    tactics = config["cuda"]["gemm_tactics"]
    bucket = args.max_tokens or min(t["max_tokens"] for t in tactics)
    element_bytes = DTYPE_BYTES.get(config.get("weight_dtype"), 2)
    if config.get("weight_only"):
        print("weight-only engine: bytes below count 16-bit weights, not the packed ones",
              file=sys.stderr)
    print(f"{config['cuda']['gpu_name']}, GEMMs of up to {bucket} rows:")
    print(f"{'n x k':>14} {'kernel':>16} {'us':>9} {'weight MB':>10} {'GB/s':>8}"
          + (f" {'of copy':>8}" if args.copy_gbs else ""))
    for tactic in tactics:
        if tactic["max_tokens"] != bucket:
            continue
        kernel = (("small-M" if tactic["algorithm"] == 1 else "cuBLASLt")
                  + f" {tactic['variant']}" + (" gated" if tactic.get("gated") else ""))
        # The gated kernel reads a [n, k] weight like the plain one (its input is [rows, 2k]).
        weight_bytes = tactic["n"] * tactic["k"] * element_bytes
        microseconds = tactic.get("microseconds", 0)
        rate = weight_bytes / microseconds / 1e3 if microseconds else 0.0
        line = (f"{tactic['n']:>6} x {tactic['k']:<6} {kernel:>16} {microseconds:9.2f} "
                f"{weight_bytes / 1e6:10.1f} {rate:8.1f}")
        if args.copy_gbs and rate:
            line += f" {100 * rate / args.copy_gbs:7.1f}%"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
