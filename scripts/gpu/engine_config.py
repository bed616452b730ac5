"""Reading a CUDA engine's config.json for the scripts beside this file."""
import json
import sys


def read_cuda_engine_config(engine_dir: str, tool: str):
    """The engine's config as a dict, if it is a CUDA engine with tuned GEMMs; else None, after a
    one-line message on stderr naming `tool`."""
    try:
        with open(f"{engine_dir}/config.json") as file:
            config = json.load(file)
    except (OSError, json.JSONDecodeError) as error:
        print(f"{tool}: cannot read {engine_dir}/config.json ({error}): give an engine folder of "
              "kite build", file=sys.stderr)
        return None
    if config.get("device") != "cuda":
        print(f"{tool}: {engine_dir} is not a CUDA engine (no tuned GEMMs)", file=sys.stderr)
        return None
    if not config.get("cuda", {}).get("gemm_tactics"):
        print(f"{tool}: {engine_dir} records no tuned GEMMs", file=sys.stderr)
        return None
    return config
