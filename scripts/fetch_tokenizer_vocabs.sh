#!/usr/bin/env bash
# Fetches llama.cpp's vocabulary-only GGUF files (ggml-vocab-*.gguf, with their .inp/.out test
# vectors) into models/llama.cpp-vocab/, for the tokenizer conformance tests and fixture script.
# They ship inside the PyPI source distribution of llama-cpp-python 0.3.36 (76 MB): we download it
# without installing it and unpack only those files.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
destination="$root/models/llama.cpp-vocab"
version=0.3.36
sdist_sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
marker="$destination/.from-llama-cpp-python-$version"

if [[ -f "$marker" ]]; then
  echo "llama.cpp vocabularies present: $destination"
  exit 0
fi
mkdir -p "$root/.cache"
sdist="$root/.cache/llama_cpp_python-$version.tar.gz"
if [[ ! -f "$sdist" ]] || ! echo "$sdist_sha256  $sdist" | sha256sum --check --status; then
  python="${PYTHON:-python3}"
  if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; fi
  "$python" -m pip download --quiet --no-deps --no-binary :all: --dest "$root/.cache" \
    "llama-cpp-python==$version"
fi
echo "$sdist_sha256  $sdist" | sha256sum --check --status || {
  echo "error: $sdist does not have the expected sha256; delete it and run again" >&2
  exit 1
}
rm -rf "$destination"
mkdir -p "$destination"
tar -xzf "$sdist" -C "$destination" --strip-components=4 --wildcards \
  "llama_cpp_python-$version/vendor/llama.cpp/models/ggml-vocab-*"
touch "$marker"
echo "llama.cpp vocabularies ready: $destination ($(ls "$destination"/*.gguf | wc -l) GGUF files)"
