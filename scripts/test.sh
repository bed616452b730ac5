#!/usr/bin/env bash
# Runs Kite's tests: builds build/ (Release, warnings as errors), runs every CTest test (unit and
# conformance; CUDA tests skip without a GPU), then builds the libFuzzer targets with clang in
# build-fuzz/ and runs each over its seed corpus for KITE_FUZZ_SECONDS (default 60) seconds.
# Usage: bash scripts/test.sh [--no-fuzz]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
jobs="$(nproc)"
run_fuzz=1
for argument in "$@"; do
  case "$argument" in
    --no-fuzz) run_fuzz=0 ;;
    *) echo "usage: bash scripts/test.sh [--no-fuzz]" >&2; exit 2 ;;
  esac
done

bash scripts/fetch_demo_model.sh
bash scripts/fetch_tokenizer_vocabs.sh  # llama.cpp vocabularies for the conformance tests
cmake -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DKITE_WERROR=ON
cmake --build build -j"$jobs"
# ctest runs several tests at once, and the CPU engine's OpenMP threads would spin-wait for the
# cores another test holds: passive waiting made two SmolLM2 tests side by side on 2 cores finish
# in 30 s instead of 55 (each alone: 18 and 25 s).
OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}" ctest --test-dir build --output-on-failure -j"$jobs"

if ((run_fuzz)); then
  CC=clang CXX=clang++ cmake -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DKITE_FUZZ=ON -DKITE_BUILD_TESTS=OFF
  cmake --build build-fuzz -j"$jobs"
  bash scripts/run_fuzzers.sh build-fuzz "${KITE_FUZZ_SECONDS:-60}"
fi
echo "all tests passed"
