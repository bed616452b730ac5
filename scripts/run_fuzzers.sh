#!/usr/bin/env bash
# Runs every libFuzzer target in BUILD_DIR for SECONDS each, starting from the committed seed
# corpus fuzz/corpus/<target>/ (new inputs go to a scratch copy, the committed corpus is unchanged).
# A crash, leak or sanitizer report fails the run and leaves the input in fuzz/artifacts/.
# Usage: bash scripts/run_fuzzers.sh BUILD_DIR SECONDS
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build_dir="${1:?usage: run_fuzzers.sh BUILD_DIR SECONDS}"
seconds="${2:?usage: run_fuzzers.sh BUILD_DIR SECONDS}"
mkdir -p "$root/fuzz/artifacts"
status=0
for fuzzer in "$build_dir"/fuzz/*_fuzzer; do
  name="$(basename "$fuzzer")"
  scratch="$(mktemp -d)"
  if [[ -d "$root/fuzz/corpus/$name" ]]; then cp -r "$root/fuzz/corpus/$name/." "$scratch/"; fi
  echo "fuzzing $name for ${seconds}s"
  if ! "$fuzzer" "$scratch" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
      -artifact_prefix="$root/fuzz/artifacts/$name-" -print_final_stats=1 > "$scratch.log" 2>&1; then
    echo "FAILED: $name (log below; crashing input in fuzz/artifacts/)"
    tail -n 60 "$scratch.log"
    status=1
  else
    grep -E "stat::number_of_executed_units|Done" "$scratch.log" | tr '\n' ' '
    echo
  fi
  rm -rf "$scratch" "$scratch.log"
done
exit $status
