#!/usr/bin/env bash
# Builds llama-bench (CUDA, sm_90) from .deps/llama.cpp.tar.xz on a machine without a GPU (the
# driver library is linked from the CUDA toolkit's stub) and packs its binaries and libraries, with
# the gguf-py package that writes the benchmark's GGUF, into .deps/llama.cpp-bin.tar.xz (about 42
# MB), which scripts/gpu/llamacpp_bench.sh unpacks instead of building on the GPU machine (about 4
# minutes there): a benchmark call then needs no .deps/llama.cpp.tar.xz. Takes about 20 minutes on
# 2 cores.
# Usage: bash scripts/gpu/prebuild_llamacpp.sh [WORK_DIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
work="${1:-/tmp/kite-llamacpp-prebuild}"
cuda="${CUDA_HOME:-/usr/local/cuda}"
mkdir -p "$work/stub"
[[ -d "$work/llama.cpp" ]] || tar xJf "$root/.deps/llama.cpp.tar.xz" -C "$work"
# libggml-cuda needs libcuda.so.1, which only a machine with the driver has.
ln -sf "$cuda/lib64/stubs/libcuda.so" "$work/stub/libcuda.so.1"
# GGML_NATIVE off: the CPU backend must not use this machine's instruction set extensions.
cmake -S "$work/llama.cpp" -B "$work/llama.cpp/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF \
  -DCMAKE_EXE_LINKER_FLAGS="-Wl,-rpath-link,$work/stub" > "$work/configure.log"
cmake --build "$work/llama.cpp/build" -j"$(nproc)" --target llama-bench
strip "$work"/llama.cpp/build/bin/*.so* "$work/llama.cpp/build/bin/llama-bench"
tar cJf "$root/.deps/llama.cpp-bin.tar.xz" -C "$work/llama.cpp" build/bin gguf-py
ls -la "$root/.deps/llama.cpp-bin.tar.xz"
