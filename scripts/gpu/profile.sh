#!/usr/bin/env bash
# Per-kernel GPU time of `kite bench` on an engine: with Nsight Systems when the machine has it
# (kernels inside CUDA graphs traced one by one, so the sum per step shows the gaps as well), else
# with Nsight Compute (each kernel timed alone; slower, no gaps). Prints the kernels by total time.
# When .deps/trace/libkite_trace.so exists (scripts/gpu/trace/build.sh), first a kernel timeline
# of a warmed-up run as it really runs (CUPTI): busy and idle GPU time, and what the gaps sit
# between (scripts/gpu/trace/timeline.py).
# KITE_NCU_FULL=REGEX[:COUNT[:SKIP]]: then Nsight Compute's full set of sections for COUNT
# (default 1) launches of kernels whose name matches REGEX, after the first SKIP (default 0) of
# them, into LOG_DIR/ncu_full.txt, with the KV cache at 5% of the free memory: ncu saves and restores the
# GPU's memory around each of its ~40 replay passes, which for a 90% cache takes minutes a kernel.
# Usage: bash scripts/gpu/profile.sh LOG_DIR ENGINE_DIR [BATCH] [INPUT,OUTPUT]
#   e.g. bash scripts/gpu/profile.sh /tmp/prof /tmp/kite-bench/engine 1 128,32
#        KITE_NCU_FULL=weight_only_gemv:4:8 bash scripts/gpu/profile.sh /tmp/prof ENGINE 1 128,8
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
log_dir="${1:?usage: profile.sh LOG_DIR ENGINE_DIR [BATCH] [INPUT,OUTPUT]}"
engine="${2:?usage: profile.sh LOG_DIR ENGINE_DIR [BATCH] [INPUT,OUTPUT]}"
batch="${3:-1}"
lengths="${4:-128,32}"
mkdir -p "$log_dir"
cd "$root"
kite=build-gpu/kite
bench=("$kite" bench --engine_dir "$engine" --batch_size "$batch" --input_output_len "$lengths"
       --warm_up 0 --num_runs 1)
summarize=(python3 scripts/gpu/kernel_summary.py)
if [[ -f .deps/trace/libkite_trace.so ]]; then
  KITE_TRACE_FILE="$log_dir/trace.csv" LD_PRELOAD="$root/.deps/trace/libkite_trace.so" \
    "$kite" bench --engine_dir "$engine" --batch_size "$batch" --input_output_len "$lengths" \
    --warm_up 1 --num_runs 1 > "$log_dir/trace_run.log" 2>&1 || echo "traced run failed: $log_dir/trace_run.log"
  python3 scripts/gpu/trace/timeline.py "$log_dir/trace.csv" || echo "no timeline"
  echo
fi
if command -v nsys > /dev/null; then
  nsys profile --cuda-graph-trace=node --trace=cuda --force-overwrite=true \
    -o "$log_dir/profile" "${bench[@]}" > "$log_dir/profile_run.log" 2>&1
  nsys stats --report cuda_gpu_kern_sum --format csv --output "$log_dir/kernels" \
    "$log_dir/profile.nsys-rep" > /dev/null 2>&1
  "${summarize[@]}" nsys "$log_dir"/kernels*.csv
else
  ncu --graph-profiling node --metrics gpu__time_duration.sum --cache-control none \
    --clock-control none --csv "${bench[@]}" > "$log_dir/ncu.csv" 2> "$log_dir/profile_run.log"
  "${summarize[@]}" ncu "$log_dir/ncu.csv"
fi
if [[ -n "${KITE_NCU_FULL:-}" ]]; then
  IFS=: read -r regex count skip <<< "$KITE_NCU_FULL"
  ncu --set full --graph-profiling node -k "regex:$regex" -s "${skip:-0}" -c "${count:-1}" \
    "${bench[@]}" --kv_cache_free_gpu_mem_fraction 0.05 > "$log_dir/ncu_full.txt" 2>&1 ||
    echo "ncu --set full failed: $log_dir/ncu_full.txt"
  grep -E "^  [a-z].*\(|Duration|DRAM Throughput|Issue Slots Busy|Eligible Warps|Warp Cycles Per Issued" \
    "$log_dir/ncu_full.txt" || true
fi
