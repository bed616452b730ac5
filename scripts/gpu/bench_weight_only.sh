#!/usr/bin/env bash
# Weight-only quantized CUDA engines against the 16-bit one, in one call: for each FORMAT a
# random-weight checkpoint of a config (default: Llama-3-8B; the same seed, so the same weights
# before quantization) converted with that format, a CUDA engine built from it, and `kite bench
# --ceilings` at batch 1 and 8 (128 / 128) and a 2048-token prefill. Logs go to LOG_DIR.
# FORMAT: bf16, int8 (per channel), int4 (per channel), int8_gG or int4_gG (groups of G columns).
# --ab NAME=BINARY[,VARIABLE=VALUE...] (repeatable): also runs that `kite` (with those environment
# variables) on each engine at batch 1 and 8, 128 / 128, after the first binary and again after
# all of them (A/B on one engine; a baseline staged by stage_prebuilt.sh --extra, or a switch).
# Usage: bash scripts/gpu/bench_weight_only.sh LOG_DIR [--config CONFIG.json] [--ab ...]... FORMAT...
#   e.g. bash scripts/gpu/bench_weight_only.sh /tmp/wo bf16 int8 int4_g128
#        bash scripts/gpu/bench_weight_only.sh /tmp/wo --ab old=build-gpu/kite-old \
#          --ab v2=build-gpu/kite,KITE_WEIGHT_ONLY_VARIANT=2 int8 int4_g128
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
log_dir="${1:?usage: bench_weight_only.sh LOG_DIR [--config CONFIG.json] FORMAT...}"
shift
config="$root/tests/fixtures/hf_configs/llama-3-8b.json"
ab=()
while [[ "${1:-}" == --* ]]; do
  case "$1" in
    --config) config="$2"; shift 2 ;;
    --ab)
      [[ "${2:-}" =~ ^[A-Za-z0-9_.-]+=[^,]+(,[A-Za-z_][A-Za-z0-9_]*=[^,]*)*$ ]] ||
        { echo "bench_weight_only.sh: --ab wants NAME=BINARY[,VARIABLE=VALUE...]" >&2; exit 2; }
      ab+=("$2"); shift 2 ;;
    *) echo "bench_weight_only.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
(($#)) || { echo "bench_weight_only.sh: name at least one FORMAT (bf16, int8, int4_g128, ...)" >&2; exit 2; }
for format in "$@"; do
  [[ "$format" =~ ^(bf16|int8|int4)(_g[0-9]+)?$ && "$format" != bf16_g* ]] ||
    { echo "bench_weight_only.sh: unknown FORMAT $format (bf16, int8, int4, int8_gG, int4_gG)" >&2; exit 2; }
done
mkdir -p "$log_dir"
cd "$root"
source scripts/gpu/env.sh
kite=build-gpu/kite
[[ -x "$kite" ]] || bash scripts/gpu/build_kite.sh "$log_dir/build.log"
work="${KITE_BENCH_DIR:-/tmp/kite-weight-only}"
mkdir -p "$work/model"
cp "$config" "$work/model/config.json"
cp tests/fixtures/golden/hf/llama_mha/tokenizer.json "$work/model/tokenizer.json"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "commit: ${KITE_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv
} | tee "$log_dir/machine.txt"
limits=(--max_batch_size 8 --max_input_len 2048 --max_seq_len 2304 --max_num_tokens 2048)
for format in "$@"; do
  flags=()
  case "$format" in
    int8*) flags=(--use_weight_only --weight_only_precision int8) ;;
    int4*) flags=(--use_weight_only --weight_only_precision int4) ;;
  esac
  [[ "$format" == *_g* ]] && flags+=(--per_group --group_size "${format#*_g}")
  checkpoint="$work/checkpoint-$format" engine="$work/engine-$format"
  rm -rf "$checkpoint" "$engine"
  echo "== $format: kite convert --random ${flags[*]}"
  /usr/bin/time -f "convert: %e s" "$kite" convert --random --model_dir "$work/model" \
    --output_dir "$checkpoint" --dtype bfloat16 "${flags[@]}" > "$log_dir/convert-$format.log" 2>&1
  tail -1 "$log_dir/convert-$format.log"
  /usr/bin/time -f "build: %e s" "$kite" build --checkpoint_dir "$checkpoint" --output_dir "$engine" \
    --device cuda "${limits[@]}" > "$log_dir/build-$format.log" 2>&1
  grep -E "memory plan|build: " "$log_dir/build-$format.log"
  rm -rf "$checkpoint"  # the engine holds the weights; the disk holds one checkpoint at a time
  "$kite" bench --engine_dir "$engine" --ceilings --batch_size "1;8" \
    --input_output_len "128,128;2048,1" 2>&1 | tee "$log_dir/bench-$format.log" |
    grep -E "^\[(BENCHMARK|CEILING|ROOFLINE)\]"
  # A/B: each other binary, then the first one again, on this engine.
  if ((${#ab[@]})); then
    for entry in "${ab[@]}" "first=$kite"; do
      name="${entry%%=*}" rest="${entry#*=}"
      IFS=, read -r -a parts <<< "$rest"
      binary="${parts[0]}"
      [[ -x "$binary" ]] || { echo "bench_weight_only.sh: --ab $entry: $binary is not executable" >&2; exit 2; }
      env "${parts[@]:1}" "$binary" bench --engine_dir "$engine" --batch_size "1;8" \
        --input_output_len "128,128" 2>&1 | tee "$log_dir/bench-$format-$name.log" |
        grep -E "^\[BENCHMARK\]" | sed "s/^/$format $name /"
    done
  fi
  rm -rf "$engine"
done
