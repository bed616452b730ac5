#!/usr/bin/env python3
"""A copy of a CUDA engine with some of its tuned GEMM choices replaced, for measuring one GEMM
shape's kernel in the decode step (KITE_GEMV_VARIANT forces every shape at once). The copy links the
engine's weights and files and writes its own config.json, so it costs no disk; `kite bench
--engine_dir COPY` then runs it.

Usage: python3 scripts/gpu/engine_tactics.py ENGINE_DIR COPY_DIR --set WHAT=CHOICE [--set ...]
  WHAT    NxK (the weight's rows x columns), or NxK/gated for the MLP's down projection with
          SwiGLU fused into the small-M kernel: every row bucket of that shape gets CHOICE
          (NxK@M, NxK/gated@M: only the bucket of up to M rows);
          or a CHOICE: every entry the engine has with it gets the new one (shapes named
          explicitly keep what their own --set gives them)
  CHOICE  gemv:V (the small-M kernel's configuration V, src/kernels/cuda/gemv.cu) or cublaslt:V
          (the V-th of cuBLASLt's heuristic results), as in docs/engine.md's gemm_tactics
e.g. python3 scripts/gpu/engine_tactics.py /tmp/e /tmp/e-o2 --set 4096x4096=gemv:2
     python3 scripts/gpu/engine_tactics.py /tmp/e /tmp/e-1 --set gemv:4=gemv:0 --set gemv:5=gemv:1
"""
import argparse
import json
import os
import re
import sys

from engine_config import read_cuda_engine_config

ALGORITHMS = {"cublaslt": 0, "gemv": 1}


def parse_setting(text: str):
    """(what, algorithm, variant) from WHAT=CHOICE, where what is ("shape", n, k, gated, bucket:
    max_tokens or None for all) or ("choice", algorithm, variant); None if the text is neither."""
    choice = r"(cublaslt|gemv):(\d+)"
    match = re.fullmatch(r"(\d+)x(\d+)(/gated)?(?:@(\d+))?=" + choice, text)
    if match:
        n, k, gated, bucket, algorithm, variant = match.groups()
        return (("shape", int(n), int(k), bool(gated), int(bucket) if bucket else None),
                ALGORITHMS[algorithm], int(variant))
    match = re.fullmatch(choice + "=" + choice, text)
    if match:
        old_algorithm, old_variant, algorithm, variant = match.groups()
        return (("choice", ALGORITHMS[old_algorithm], int(old_variant)), ALGORITHMS[algorithm],
                int(variant))
    return None


def shape_name(tactic) -> str:
    return f"{tactic['n']}x{tactic['k']}" + ("/gated" if tactic.get("gated") else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine_dir")
    parser.add_argument("copy_dir")
    parser.add_argument("--set", dest="settings", action="append", required=True,
                        metavar="WHAT=CHOICE",
                        help="e.g. 4096x4096=gemv:2, 4096x4096@1=gemv:2 or gemv:4=gemv:0")
    args = parser.parse_args()
    settings = []
    for text in args.settings:
        setting = parse_setting(text)
        if setting is None:
            print(f"engine_tactics.py: --set {text}: want NxK[/gated][@M]=CHOICE or CHOICE=CHOICE, "
                  "a CHOICE being gemv:V or cublaslt:V", file=sys.stderr)
            return 2
        settings.append(setting)
    engine = os.path.abspath(args.engine_dir)
    copy = os.path.abspath(args.copy_dir)
    if os.path.realpath(copy) == os.path.realpath(engine):
        print("engine_tactics.py: the copy must go to another folder", file=sys.stderr)
        return 2
    config = read_cuda_engine_config(engine, "engine_tactics.py")
    if config is None:
        return 2
    tactics = config["cuda"]["gemm_tactics"]
    # Choice settings apply to the engine's own choices (they do not chain); shape settings come
    # after them, so that a shape named explicitly gets what it is given.
    original = [(t["algorithm"], t["variant"]) for t in tactics]
    for what, algorithm, variant in sorted(settings, key=lambda setting: setting[0][0] == "shape"):
        if what[0] == "shape":
            _, n, k, gated, bucket = what
            matching = [t for t in tactics
                        if t["n"] == n and t["k"] == k and bool(t.get("gated")) == gated
                        and bucket in (None, t["max_tokens"])]
            if not matching:
                shapes = sorted({shape_name(t) for t in tactics})
                name = f"{n}x{k}{'/gated' if gated else ''}" + (f"@{bucket}" if bucket else "")
                print(f"engine_tactics.py: no tuned GEMM of shape {name} in {engine}; it has "
                      f"{', '.join(shapes)}", file=sys.stderr)
                return 2
        else:
            # A choice no entry has changes nothing: the tuner may not have picked it here.
            matching = [t for t, before in zip(tactics, original) if before == what[1:]]
        for tactic in matching:
            tactic["algorithm"] = algorithm
            tactic["variant"] = variant
    if os.path.exists(copy) and not os.path.isdir(copy):
        print(f"engine_tactics.py: {copy} is a file: give a new folder", file=sys.stderr)
        return 2
    # An earlier copy (links and a config.json) may be replaced; anything else is not touched.
    own_files = [name for name in (os.listdir(copy) if os.path.isdir(copy) else [])
                 if name != "config.json" and not os.path.islink(os.path.join(copy, name))]
    if own_files:
        print(f"engine_tactics.py: {copy} holds files of its own (an engine?): give a new folder",
              file=sys.stderr)
        return 2
    os.makedirs(copy, exist_ok=True)
    for name in os.listdir(engine):
        if name == "config.json":
            continue
        link = os.path.join(copy, name)
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(os.path.join(engine, name), link)
    # config.json last, as kite build writes it: a folder without it is an unfinished engine.
    with open(os.path.join(copy, "config.json"), "w") as file:
        json.dump(config, file, indent=2)
    print(f"{copy}: {engine} with " + ", ".join(args.settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
