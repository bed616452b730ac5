#!/usr/bin/env bash
# Builds scripts/gpu/trace/kernel_trace.cc into .deps/trace/libkite_trace.so, next to the CUPTI
# library it needs (from the nvidia-cuda-cupti wheel for CUDA 13.0 on PyPI: a GPU machine whose
# driver runs CUDA 13.0 may lack CUPTI). Run where PyPI is reachable; carry .deps/trace over.
# Usage: bash scripts/gpu/trace/build.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
out="$root/.deps/trace"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
pip download --quiet --no-deps --dest "$work" "nvidia-cuda-cupti==13.0.*"
(cd "$work" && unzip -q nvidia_cuda_cupti-*.whl)
cupti="$work/nvidia/cu13"
mkdir -p "$out"
cp "$cupti/lib/libcupti.so.13" "$out/"
g++ -std=c++17 -O2 -shared -fPIC -Wall -Wextra -I"$cupti/include" -I/usr/local/cuda/include \
  "$root/scripts/gpu/trace/kernel_trace.cc" -o "$out/libkite_trace.so" \
  "$out/libcupti.so.13" -Wl,-rpath,'$ORIGIN'
echo "built $out/libkite_trace.so"
