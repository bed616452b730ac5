#!/usr/bin/env python3
"""The GEMM choices that make a CUDA engine's batch-1 decode fastest, measured in the decode step
itself. `kite build` times each GEMM alone, back to back with itself; a kernel that overlaps the
tail of its predecessor (programmatic dependent launch) then looks better, or worse, than it is
after the kernel that really precedes it (docs/perf/cuda_llama3_8b.md, "The H200 again"). This
tries, one shape after the other, every candidate for that shape on an engine copy
(scripts/gpu/engine_tactics.py), runs `kite bench` on it, keeps the fastest and goes on to the next
shape with it (coordinate descent), then measures the engine's own choices again to show drift.

Usage: python3 scripts/gpu/insitu_search.py ENGINE_DIR [--kite BINARY] [--shapes NxK[/gated],...]
           [--candidates CHOICE,...] [--case IN,OUT] [--runs R] [--output_dir DIR]
  --shapes      the shapes to search, in order (default: every shape the engine tuned at its
                smallest row bucket, gated ones last)
  --candidates  the choices to try (default gemv:0..gemv:7 and cublaslt:0; on a gated shape
                cublaslt:0 stands for the SwiGLU kernel and the plain shape's choice, and other
                cuBLASLt choices are left out)
  --case        kite bench's --input_output_len (default 128,128); decode tokens/s is judged
  --runs        bench runs per candidate, averaged (default 1)
  --output_dir  also write an engine copy with the best choices there
Prints every measurement, then the best settings as engine_tactics.py's --set arguments. A staged
build (scripts/gpu/stage_prebuilt.sh) finds its libraries after `source scripts/gpu/env.sh`.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

from engine_config import read_cuda_engine_config
from engine_tactics import shape_name

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHMARK = re.compile(r"\[BENCHMARK\].*output_length (\d+) latency\(ms\) ([\d.]+) .*"
                       r"first_token_latency\(ms\) ([\d.]+)")


def decode_tokens_per_second(output: str):
    """The mean decode tokens/s of a sequence over the [BENCHMARK] lines, None if there are none."""
    rates = []
    for match in BENCHMARK.finditer(output):
        length, latency, first = int(match[1]), float(match[2]), float(match[3])
        if length > 1 and latency > first:
            rates.append((length - 1) / ((latency - first) / 1000.0))
    return sum(rates) / len(rates) if rates else None


def smallest_bucket(config) -> int:
    return min(t["max_tokens"] for t in config["cuda"]["gemm_tactics"])


def default_shapes(config):
    bucket = smallest_bucket(config)
    names = [shape_name(t) for t in config["cuda"]["gemm_tactics"] if t["max_tokens"] == bucket]
    return sorted(dict.fromkeys(names), key=lambda name: name.endswith("/gated"))


def set_words(settings, bucket):
    """engine_tactics.py's arguments for {shape: choice} at row bucket `bucket`."""
    return [w for shape, choice in settings.items() for w in ("--set", f"{shape}@{bucket}={choice}")]


def copy_engine(engine_dir, copy_dir, settings, bucket, quiet):
    """Runs engine_tactics.py; its result (stdout and stderr captured when quiet)."""
    return subprocess.run([sys.executable, os.path.join(HERE, "engine_tactics.py"), engine_dir,
                           copy_dir, *set_words(settings, bucket)],
                          capture_output=quiet, text=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine_dir")
    parser.add_argument("--kite", default=os.path.join(HERE, "..", "..", "build-gpu", "kite"))
    parser.add_argument("--shapes", default="")
    parser.add_argument("--candidates",
                        default=",".join([f"gemv:{v}" for v in range(8)] + ["cublaslt:0"]))
    parser.add_argument("--case", default="128,128")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--output_dir", default="")
    args = parser.parse_args()
    config = read_cuda_engine_config(args.engine_dir, "insitu_search.py")
    if config is None:
        return 2
    shapes = [s for s in args.shapes.split(",") if s] or default_shapes(config)
    candidates = [c for c in args.candidates.split(",") if c]
    for shape in shapes:
        if not re.fullmatch(r"\d+x\d+(/gated)?", shape):
            print(f"insitu_search.py: --shapes {shape}: want NxK or NxK/gated", file=sys.stderr)
            return 2
    for candidate in candidates:
        if not re.fullmatch(r"(gemv|cublaslt):\d+", candidate):
            print(f"insitu_search.py: --candidates {candidate}: want gemv:V or cublaslt:V",
                  file=sys.stderr)
            return 2
    if not os.access(args.kite, os.X_OK):
        print(f"insitu_search.py: {args.kite} is not an executable kite (pass --kite)",
              file=sys.stderr)
        return 2
    if args.runs < 1:
        print("insitu_search.py: --runs must be at least 1", file=sys.stderr)
        return 2

    bucket = smallest_bucket(config)
    work = tempfile.TemporaryDirectory(prefix="insitu-")
    copies = 0

    def measure(settings):
        """Decode tokens/s of the engine with `settings` ({shape: choice}), None if a run failed."""
        nonlocal copies
        engine = args.engine_dir
        if settings:
            copies += 1
            engine = os.path.join(work.name, f"copy{copies}")
            made = copy_engine(args.engine_dir, engine, settings, bucket, quiet=True)
            if made.returncode != 0:
                print(made.stderr.strip(), file=sys.stderr)
                return None
        rates = []
        for _ in range(args.runs):
            run = subprocess.run([args.kite, "bench", "--engine_dir", engine, "--batch_size", "1",
                                  "--input_output_len", args.case], capture_output=True, text=True)
            rate = decode_tokens_per_second(run.stdout + run.stderr)
            if run.returncode != 0 or rate is None:
                print(f"  kite bench failed (exit {run.returncode}) on {settings}: "
                      f"{(run.stdout + run.stderr).strip()[-300:]}", file=sys.stderr)
                return None
            rates.append(rate)
        return sum(rates) / len(rates)

    print(f"{config['cuda']['gpu_name']}: batch 1, {args.case}, decode tokens/s "
          f"(mean of {args.runs} run(s) each)")
    baseline = measure({})
    if baseline is None:
        return 1
    print(f"  the engine's own choices: {baseline:.2f}")
    best_settings, best = {}, baseline
    for shape in shapes:
        for candidate in candidates:
            if shape.endswith("/gated") and candidate.startswith("cublaslt:") \
                    and candidate != "cublaslt:0":
                continue
            trial = dict(best_settings)
            trial[shape] = candidate
            rate = measure(trial)
            shown = "failed" if rate is None else f"{rate:.2f} ({100 * (rate / baseline - 1):+.2f}%)"
            print(f"  {shape:>18} {candidate:>11}: {shown}")
            if rate is not None and rate > best:
                best_settings, best = trial, rate
    again = measure({})
    print(f"  the engine's own choices again: "
          + ("failed" if again is None else f"{again:.2f}"))
    words = " ".join(set_words(best_settings, bucket))
    print(f"best: {best:.2f} ({100 * (best / baseline - 1):+.2f}% against the engine's own "
          f"choices): {words or 'the engine as it is'}")
    if args.output_dir:
        if not best_settings:
            print("insitu_search.py: the engine's own choices are the best: no copy written")
            return 0
        return copy_engine(args.engine_dir, args.output_dir, best_settings, bucket,
                           quiet=False).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
