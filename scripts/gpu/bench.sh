#!/usr/bin/env bash
# The GPU performance table of docs/perf/cuda_llama3_8b.md in one call: builds Kite (as run.sh),
# measures the GPU's ceilings, makes a random-weight Llama-3-8B checkpoint (bf16), builds a CUDA
# engine (with GEMM tuning) and runs `kite bench` on the cases of the table, then Hugging Face
# transformers on the same shape and cases, then llama.cpp (scripts/gpu/llamacpp_bench.sh) when
# .deps/llama.cpp-bin.tar.xz or .deps/llama.cpp.tar.xz exists.
# Usage: bash scripts/gpu/bench.sh LOG_DIR [--skip-hf] [--skip-llamacpp] [--cases quick]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
log_dir="${1:?usage: bench.sh LOG_DIR [--skip-hf] [--cases quick]}"
shift
run_hf=1
run_llamacpp=1
quick=0
while (($#)); do
  case "$1" in
    --skip-hf) run_hf=0; shift ;;
    --skip-llamacpp) run_llamacpp=0; shift ;;
    --cases) [[ "$2" == quick ]] && quick=1; shift 2 ;;
    *) echo "bench.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$log_dir"
cd "$root"
# llama.cpp's column needs its prebuilt tarball or its sources (scripts/gpu/llamacpp_bench.sh).
[[ -f .deps/llama.cpp-bin.tar.xz || -f .deps/llama.cpp.tar.xz ]] || run_llamacpp=0
source scripts/gpu/env.sh
bash scripts/gpu/build_kite.sh "$log_dir/build.log"
kite=build-gpu/kite
work="${KITE_BENCH_DIR:-/tmp/kite-bench}"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "commit: ${KITE_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv
} | tee "$log_dir/machine.txt"

# Llama-3-8B shape, random bf16 weights.
limits=(--max_batch_size 64 --max_input_len 8192 --max_seq_len 8448 --max_num_tokens 8192)
if ((quick)); then
  limits=(--max_batch_size 64 --max_input_len 2048 --max_seq_len 2304 --max_num_tokens 2048)
fi
# llama.cpp's build (~5 minutes) and GGUF beside Kite's engine build; done before any timing.
llamacpp_prepare=""
if ((run_llamacpp)); then
  bash scripts/gpu/llamacpp_bench.sh "$log_dir" --prepare > "$log_dir/llamacpp_prepare.log" 2>&1 &
  llamacpp_prepare=$!
fi
bash scripts/gpu/make_engine.sh "$work/engine" -- "${limits[@]}"
if [[ -n "$llamacpp_prepare" ]]; then
  wait "$llamacpp_prepare" || { echo "llama.cpp: build or GGUF failed (llamacpp_prepare.log)"; run_llamacpp=0; }
fi
bench=("$kite" bench --engine_dir "$work/engine" --ceilings)
{
  if ((quick)); then
    "${bench[@]}" --batch_size "1" --input_output_len "128,128;2048,1"
    "$kite" bench --engine_dir "$work/engine" --batch_size "64" --input_output_len "128,128"
  else
    "${bench[@]}" --batch_size "1" --input_output_len "128,128;2048,1;8192,256"
    "${bench[@]}" --batch_size "1" --input_output_len "8192,256" --multi_block_mode false
    "${bench[@]}" --batch_size "64" --input_output_len "128,128;2048,128"
  fi
} 2>&1 | tee "$log_dir/kite_bench.log" | grep -E "BENCHMARK|ROOFLINE|CEILING|KV cache|error"
if ((run_hf)); then
  PYTHONUNBUFFERED=1 python3 scripts/gpu/hf_bench.py --config tests/fixtures/hf_configs/llama-3-8b.json \
    --batch_size "1;64" --input_output_len "128,128;2048,128" 2>&1 | tee "$log_dir/hf_bench.log" |
    grep -E "HF"
fi
if ((run_llamacpp)); then
  bash scripts/gpu/llamacpp_bench.sh "$log_dir"
fi
