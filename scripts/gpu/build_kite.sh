#!/usr/bin/env bash
# Builds the `kite` binary with CUDA in build-gpu/ unless it is there (for the benchmark scripts;
# scripts/gpu/run.sh builds the tests too). Expects scripts/gpu/env.sh sourced.
# Usage: bash scripts/gpu/build_kite.sh BUILD_LOG
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
log="${1:?usage: build_kite.sh BUILD_LOG}"
cd "$root"
[[ -x build-gpu/kite ]] && exit 0
cmake -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DKITE_CUDA=ON > "$log" 2>&1
cmake --build build-gpu -j"$(nproc)" --target kite >> "$log" 2>&1
echo "build done"
