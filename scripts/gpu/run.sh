#!/usr/bin/env bash
# Builds Kite with the CUDA backend and runs tests on a GPU machine, in one call.
# Usage: bash scripts/gpu/run.sh LOG_DIR [CTEST_REGEX] [DATA_DIR]
#   LOG_DIR      where build and test logs are written
#   CTEST_REGEX  which tests to run (ctest -R); all tests by default
#   DATA_DIR     the evaluation data (MMLU, WikiText-2); ../shared/data by default
# Uses .deps/ (made by scripts/gpu/fetch_deps.sh) for libraries the machine lacks.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
log_dir="${1:?usage: run.sh LOG_DIR [CTEST_REGEX]}"
regex="${2:-.}"
data_dir="${3:-$(cd "$(dirname "$0")/../.." && pwd)/../shared/data}"
mkdir -p "$log_dir"
cd "$root"
if [[ -d .deps/root ]]; then
  # The .pc files point at the tree where fetch_deps.sh ran; re-point them here.
  find .deps/root -name '*.pc' -exec sed -i "s|^prefix=.*/\.deps/root/usr|prefix=$root/.deps/root/usr|" {} +
  export CMAKE_PREFIX_PATH="$root/.deps/root/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export PKG_CONFIG_PATH="$root/.deps/root/usr/lib/x86_64-linux-gnu/pkgconfig:$root/.deps/root/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
  export LD_LIBRARY_PATH="$root/.deps/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$log_dir/gpu.txt"
{
  cmake -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DKITE_CUDA=ON -DKITE_DATA_DIR="$data_dir"
  cmake --build build-gpu -j"$(nproc)"
} 2>&1 | tee "$log_dir/build.log"
ctest --test-dir build-gpu --output-on-failure -j4 -R "$regex" 2>&1 | tee "$log_dir/test.log"
