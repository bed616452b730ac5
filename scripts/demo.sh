#!/usr/bin/env bash
# Kite's main job on a machine set up by scripts/setup.sh: convert the demo model
# (SmolLM2-135M-Instruct, Q4_1 GGUF) to a Kite checkpoint, build a CPU engine from it and
# answer a prompt.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
kite="$root/build/kite"
checkpoint="$root/models/smollm2-135m-instruct-ckpt"
engine="$root/models/smollm2-135m-instruct-engine-cpu"
prompt="${1:-What is the capital of France?}"
"$kite" convert --gguf "$root/models/SmolLM2-135M-Instruct.Q4_1.gguf" --output_dir "$checkpoint" \
  --dtype bfloat16
"$kite" build --checkpoint_dir "$checkpoint" --output_dir "$engine" --device cpu
"$kite" tokenize --tokenizer_dir "$checkpoint" --json --text "$prompt"
"$kite" run --engine_dir "$engine" --chat --input_text "$prompt" --max_output_len 100
