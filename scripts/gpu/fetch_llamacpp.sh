#!/usr/bin/env bash
# Makes .deps/llama.cpp.tar.xz for scripts/gpu/llamacpp_bench.sh: llama.cpp's sources as vendored in
# the llama-cpp-python sdist (PyPI), trimmed to what a CUDA build of llama-bench needs (about 4 MB
# instead of 76), so that it travels to a GPU machine without a package registry.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
version="${1:-0.3.36}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --no-binary :all: --dest "$work" "llama-cpp-python==$version"
tar xzf "$work/llama_cpp_python-$version.tar.gz" -C "$work"
src="$work/llama_cpp_python-$version/vendor/llama.cpp"
rm -rf "$src"/{.git,docs,models,tests,examples,benches,media,pocs,app,skills,scripts,conversion} \
  "$src/tools/ui" "$src/tools/server"
for backend in "$src"/ggml/src/ggml-*/; do
  case "$backend" in *ggml-cuda/ | *ggml-cpu/ | *ggml-blas/) ;; *) rm -rf "$backend" ;; esac
done
mkdir -p "$root/.deps"
tar cJf "$root/.deps/llama.cpp.tar.xz" -C "$(dirname "$src")" llama.cpp
ls -la "$root/.deps/llama.cpp.tar.xz"
