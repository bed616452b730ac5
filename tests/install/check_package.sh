#!/usr/bin/env bash
# The installed package works: `cmake --install` of a build tree, then the example program
# (examples/generate) configured with find_package(kite) against it, built, and run on a random
# tiny engine made by the installed `kite`. Run by CTest (label install).
# Usage: check_package.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build="${1:?usage: check_package.sh BUILD_DIR SOURCE_DIR}"
source_dir="${2:?usage: check_package.sh BUILD_DIR SOURCE_DIR}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/prefix" > "$work/install.log"
test -f "$work/prefix/include/kite/executor.h"
test -f "$work/prefix/lib/cmake/kite/kiteConfig.cmake"
cmake -S "$source_dir/examples/generate" -B "$work/example" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$work/prefix" > "$work/configure.log"
cmake --build "$work/example" > "$work/build.log"
mkdir -p "$work/model"
cp "$source_dir"/tests/fixtures/tiny_llama/{config.json,tokenizer.json,tokenizer_config.json} "$work/model/"
"$work/prefix/bin/kite" convert --random --dtype float32 --model_dir "$work/model" \
  --output_dir "$work/checkpoint" > /dev/null
"$work/prefix/bin/kite" build --checkpoint_dir "$work/checkpoint" --output_dir "$work/engine" \
  --max_batch_size 2 --max_input_len 16 --max_seq_len 32 > /dev/null
output="$("$work/example/kite_generate" "$work/engine" 5 6 7 --max_new_tokens 6)"
echo "$output"
# Six token ids, then the finish reason (length, or end_id if the random model ended early).
tokens="$(echo "$output" | head -1 | wc -w)"
if ! echo "$output" | grep -qE "finish reason: (length|end_id)" || ((tokens < 1 || tokens > 6)); then
  echo "unexpected output from the example program" >&2
  exit 1
fi
echo "package ok"
