#!/usr/bin/env bash
# Makes a random-weight bf16 checkpoint of a config (default: Llama-3-8B) and builds a CUDA engine
# of it with the given limits, unless ENGINE_DIR already holds one. For the GPU benchmarks. Every
# candidate kernel's time of the build's GEMM tuning goes to ENGINE_DIR.tuning.csv (--tuning_log).
# KITE_ENGINE_BINARY: the `kite` that converts and builds (default build-gpu/kite).
# Usage: bash scripts/gpu/make_engine.sh ENGINE_DIR [CONFIG.json] -- [kite build limits...]
#   e.g. bash scripts/gpu/make_engine.sh /tmp/e -- --max_batch_size 64 --max_input_len 2048 ...
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
engine="${1:?usage: make_engine.sh ENGINE_DIR [CONFIG.json] -- [limits...]}"
shift
config="$root/tests/fixtures/hf_configs/llama-3-8b.json"
if (($#)) && [[ "$1" != "--" ]]; then config="$1"; shift; fi
[[ "${1:-}" == "--" ]] && shift
[[ -f "$engine/config.json" ]] && exit 0
kite="${KITE_ENGINE_BINARY:-$root/build-gpu/kite}"  # the binary that converts and builds
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/model"
cp "$config" "$work/model/config.json"
# kite bench's prompts are token ids: any tokenizer completes the folder; the golden byte-level one.
cp "$root/tests/fixtures/golden/hf/llama_mha/tokenizer.json" "$work/model/tokenizer.json"
# KITE_CHECKPOINT_DIR: where the checkpoint stays for the next engine of the same config (the
# conversion takes half a minute); without it the checkpoint goes when the engine is built.
checkpoint="${KITE_CHECKPOINT_DIR:-$work/ckpt}"
if ! cmp -s "$config" "$checkpoint/source_config.json"; then
  rm -rf "$checkpoint"
  /usr/bin/time -f "convert: %e s" "$kite" convert --random --model_dir "$work/model" \
    --output_dir "$checkpoint" --dtype bfloat16 2>&1 | tail -2
  cp "$config" "$checkpoint/source_config.json"
fi
log=()  # (a `kite` older than --tuning_log builds without it)
help="$("$kite" build --help 2>&1 || true)"
[[ "$help" == *--tuning_log* ]] && log=(--tuning_log "$engine.tuning.csv")
/usr/bin/time -f "build: %e s" "$kite" build --checkpoint_dir "$checkpoint" --output_dir "$engine" \
  --device cuda "${log[@]}" "$@" 2>&1 | grep -v -E "^tuning GEMM kernels: [0-9]+%" | tail -30
# What each small-M GEMM reached alone when the build timed it (weight bytes / time).
python3 "$root/scripts/gpu/gemm_report.py" "$engine" || true
# Every candidate at one row (decode at batch 1), fastest first per shape.
if ((${#log[@]})); then
  awk -F, 'NR == 1 || $1 == 1 { printf "%6s %6s %5s %5s %12s %12s %11s %6s %6s\n", $2, $3, $4, $5, $6, $7, $8, $9, $10 }' \
    "$engine.tuning.csv" || true
fi
