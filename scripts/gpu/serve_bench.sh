#!/usr/bin/env bash
# The serving figures of docs/perf/cuda_serving.md in one call: builds Kite (as run.sh) unless
# built, a random-weight Llama-3-8B bf16 engine for in-flight batching (up to 1024 requests per
# step), then `kite bench --mode serve`: 1024 requests at 128/128 and at 2048/128 with as many in
# flight as fit, and time to first token at concurrency 1, 16 and 64.
# Usage: bash scripts/gpu/serve_bench.sh LOG_DIR [NUM_REQUESTS]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
log_dir="${1:?usage: serve_bench.sh LOG_DIR [NUM_REQUESTS]}"
requests="${2:-1024}"
mkdir -p "$log_dir"
cd "$root"
source scripts/gpu/env.sh
bash scripts/gpu/build_kite.sh "$log_dir/build.log"
engine="${KITE_SERVE_ENGINE:-/tmp/kite-serve/engine}"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "commit: ${KITE_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv
} | tee "$log_dir/machine.txt"
bash scripts/gpu/make_engine.sh "$engine" -- --max_batch_size 1024 --max_input_len 2048 \
  --max_seq_len 2304 --max_num_tokens 8192
serve=(build-gpu/kite bench --engine_dir "$engine" --mode serve --scheduler_policy max_utilization)
{
  "${serve[@]}" --input_output_len "128,128" --num_requests "$requests"
  "${serve[@]}" --input_output_len "2048,128" --num_requests "$requests"
  "${serve[@]}" --input_output_len "128,128" --num_requests 32 --concurrency "1;16;64"
  build-gpu/kite bench --engine_dir "$engine" --batch_size "1;16;64" --input_output_len "128,128" \
    --num_runs 2
} 2>&1 | tee "$log_dir/serve_bench.log" | grep -E "BENCHMARK|KV cache|rror"
