#!/usr/bin/env bash
# The llama.cpp column of docs/perf/cuda_llama3_8b.md, on the same GPU in the same call as Kite's:
# builds llama.cpp (CUDA) from the sources vendored in the llama-cpp-python sdist (PyPI), writes a
# random-weight F16 GGUF of the same config, and runs llama-bench with flash attention on:
# batch-1 decode of 128 tokens and a 2048-token prefill.
# Usage: bash scripts/gpu/llamacpp_bench.sh LOG_DIR [CONFIG.json] [--prepare]
#   Needs .deps/llama.cpp-bin.tar.xz (scripts/gpu/prebuild_llamacpp.sh: llama-bench built
#   elsewhere, with gguf-py), else .deps/llama.cpp.tar.xz: the sdist's vendor/llama.cpp without its
#   docs, models, tests, examples, web UI and non-CUDA/CPU backends (scripts/gpu/fetch_llamacpp.sh
#   makes it), built here.
#   --prepare: only build llama-bench and write the GGUF (bench.sh runs this beside its own engine
#   build, then the benchmark after Kite's, which finds both made).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
prepare=0
arguments=()
for argument in "$@"; do
  if [[ "$argument" == --prepare ]]; then prepare=1; else arguments+=("$argument"); fi
done
log_dir="${arguments[0]:?usage: llamacpp_bench.sh LOG_DIR [CONFIG.json] [--prepare]}"
config="${arguments[1]:-$root/tests/fixtures/hf_configs/llama-3-8b.json}"
work="${KITE_LLAMACPP_DIR:-/tmp/kite-llamacpp}"
mkdir -p "$log_dir" "$work"
if [[ ! -x "$work/llama.cpp/build/bin/llama-bench" && -f "$root/.deps/llama.cpp-bin.tar.xz" ]]; then
  mkdir -p "$work/llama.cpp"
  tar xJf "$root/.deps/llama.cpp-bin.tar.xz" -C "$work/llama.cpp"
  echo "llama.cpp: prebuilt llama-bench from .deps/llama.cpp-bin.tar.xz" | tee "$log_dir/llamacpp_build.log"
fi
export LD_LIBRARY_PATH="$work/llama.cpp/build/bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [[ ! -x "$work/llama.cpp/build/bin/llama-bench" ]]; then
  [[ -f "$root/.deps/llama.cpp.tar.xz" ]] ||
    { echo "llamacpp_bench.sh: neither .deps/llama.cpp-bin.tar.xz nor .deps/llama.cpp.tar.xz (scripts/gpu/fetch_llamacpp.sh)" >&2; exit 1; }
  tar xJf "$root/.deps/llama.cpp.tar.xz" -C "$work"
  cmake -S "$work/llama.cpp" -B "$work/llama.cpp/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF \
    > "$log_dir/llamacpp_build.log" 2>&1
  /usr/bin/time -f "llama.cpp build: %e s" cmake --build "$work/llama.cpp/build" -j"$(nproc)" \
    --target llama-bench >> "$log_dir/llamacpp_build.log" 2>&1
  tail -1 "$log_dir/llamacpp_build.log"
fi
gguf="$work/$(basename "$config" .json)-f16.gguf"
if [[ ! -f "$gguf" ]]; then
  PYTHONPATH="$work/llama.cpp/gguf-py" /usr/bin/time -f "gguf written: %e s" \
    python3 "$root/scripts/gpu/write_random_gguf.py" "$config" "$gguf"
fi
((prepare)) && exit 0
"$work/llama.cpp/build/bin/llama-bench" -m "$gguf" -ngl 99 -fa 1 -p 2048 -n 128 -r 3 -o md \
  2>&1 | tee "$log_dir/llamacpp_bench.log" | grep -E "^\|"
