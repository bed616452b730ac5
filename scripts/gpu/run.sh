#!/usr/bin/env bash
# Builds Kite with the CUDA backend on a GPU machine and runs its tests, in one call.
# Usage: bash scripts/gpu/run.sh LOG_DIR [options]
#   --tests REGEX      which CTest tests to run (ctest -R); default: the CUDA tests (label cuda)
#   --all              run every CTest test (CPU and CUDA) instead
#   --sanitize FILTER  then run kite_cuda_tests under compute-sanitizer memcheck with this gtest
#                      filter (e.g. 'CudaElementwise*:CudaAttention*:CudaLinear*:CudaSampling*')
#   --data DIR         the evaluation data (MMLU, WikiText-2); default ../shared/data
#   --prebuilt         run build-gpu/tests/kite_cuda_tests as staged by scripts/gpu/stage_prebuilt.sh
#                      (no CMake, no compiling here); --tests then is a gtest filter
# Libraries the machine lacks come from .deps/ (scripts/gpu/fetch_deps.sh). The demo model is
# assembled from models/parts/smollm2.gguf.part* when models/ lacks it (split -b 32m: three parts;
# where a machine takes fewer bytes a call, the parts can arrive over several calls to a machine
# that keeps models/ between them, and join once all are there).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
log_dir="${1:?usage: run.sh LOG_DIR [--tests REGEX] [--all] [--sanitize FILTER] [--data DIR]}"
shift
ctest_args=(-L cuda)
sanitize=""
prebuilt=0
data_dir="$root/../shared/data"
while (($#)); do
  case "$1" in
    --tests) ctest_args=(-R "$2"); shift 2 ;;
    --all) ctest_args=(); shift ;;
    --sanitize) sanitize="$2"; shift 2 ;;
    --data) data_dir="$2"; shift 2 ;;
    --prebuilt) prebuilt=1; shift ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$log_dir"
cd "$root"
source scripts/gpu/env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$log_dir/gpu.txt"
if ((prebuilt)); then
  filter="*"
  [[ ${#ctest_args[@]} -eq 2 && "${ctest_args[0]}" == "-R" ]] && filter="${ctest_args[1]}"
  KITE_SOURCE_DIR="$root" KITE_BINARY="$root/build-gpu/kite" KITE_DATA_DIR="$data_dir" \
    build-gpu/tests/kite_cuda_tests --gtest_filter="$filter" > "$log_dir/test.log" 2>&1 &&
    status=0 || status=$?
  grep -E "^\[  (PASSED|FAILED|SKIPPED) |Failure" "$log_dir/test.log" || true
  if [[ -n "$sanitize" ]]; then
    compute-sanitizer --tool memcheck --error-exitcode 3 build-gpu/tests/kite_cuda_tests \
      --gtest_filter="$sanitize" > "$log_dir/memcheck.log" 2>&1 && echo "memcheck: clean" ||
      { echo "memcheck: FAILED (exit $?)"; grep -E "ERROR SUMMARY|Invalid|FAILED" "$log_dir/memcheck.log" | head -20; }
  fi
  exit "$status"
fi
{
  cmake -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DKITE_CUDA=ON -DKITE_WERROR=ON \
    -DKITE_DATA_DIR="$data_dir"
  cmake --build build-gpu -j"$(nproc)"
} > "$log_dir/build.log" 2>&1 || { tail -50 "$log_dir/build.log"; exit 1; }
echo "build done"
ctest --test-dir build-gpu --output-on-failure -j4 "${ctest_args[@]}" 2>&1 | tee "$log_dir/test.log" |
  grep -E "tests passed|tests failed|Failed|\*\*\*|LOGITS|TOKENS|PROMPT" || true
if [[ -n "$sanitize" ]]; then
  compute-sanitizer --tool memcheck --error-exitcode 3 build-gpu/tests/kite_cuda_tests \
    --gtest_filter="$sanitize" > "$log_dir/memcheck.log" 2>&1 && echo "memcheck: clean" ||
    { echo "memcheck: FAILED (exit $?)"; grep -E "ERROR SUMMARY|Invalid|FAILED" "$log_dir/memcheck.log" | head -20; }
fi
