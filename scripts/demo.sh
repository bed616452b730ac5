#!/usr/bin/env bash
# Kite's main job on a machine set up by scripts/setup.sh: convert the demo model
# (SmolLM2-135M-Instruct, Q4_1 GGUF) to a Kite checkpoint and tokenize a sentence with it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
kite="$root/build/kite"
checkpoint="$root/models/smollm2-135m-instruct-ckpt"
"$kite" convert --gguf "$root/models/SmolLM2-135M-Instruct.Q4_1.gguf" --output_dir "$checkpoint" \
  --dtype float32
"$kite" tokenize --tokenizer_dir "$checkpoint" --json --text "Kite turns a model into tokens/s."
