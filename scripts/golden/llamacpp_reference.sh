#!/usr/bin/env bash
# Reference outputs of llama.cpp for the SmolLM2 demo model: greedy continuations of the prompts in
# scripts/golden/smollm2_prompts.json and the perplexity of the first 16384 tokens of
# wikitext-2-raw's test split, both on the GGUF dequantized to float32.
#
# Usage: scripts/golden/llamacpp_reference.sh LLAMA_CPP_SRC MODEL_GGUF DATA_DIR OUT_DIR
#   LLAMA_CPP_SRC  llama.cpp sources (e.g. the vendor/llama.cpp of the llama-cpp-python sdist)
#   MODEL_GGUF     SmolLM2-135M-Instruct.Q4_1.gguf
#   DATA_DIR       folder holding wikitext-2-raw/wiki.test.raw
#   OUT_DIR        where smollm2_reference.json and smollm2_wikitext2_tokens.json are written
# Environment: WORK_DIR (build folder and intermediate files, default /tmp/kite-golden-llamacpp;
#   an existing build there is reused), JOBS (build jobs, default nproc), THREADS (default nproc),
#   PYTHON (default python3; only the standard library is needed, jinja2 is used if present),
#   CXX (default c++).
# Needs cmake, a C++17 compiler and python3. llama.cpp is built for the CPU only (GGML_CUDA=OFF).
set -euo pipefail

log() { echo "[llamacpp_reference] $*"; }
fail() { echo "[llamacpp_reference] error: $*" >&2; exit 1; }
trap 'fail "command failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

if [[ $# -ne 4 ]]; then
  sed -n '2,16p' "$0" >&2
  exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
src="$(cd "$1" && pwd)" || fail "no llama.cpp source folder $1"
model="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
data_dir="$(cd "$3" && pwd)" || fail "no data folder $3"
mkdir -p "$4"
out_dir="$(cd "$4" && pwd)"
work="${WORK_DIR:-/tmp/kite-golden-llamacpp}"
jobs="${JOBS:-$(nproc)}"
threads="${THREADS:-$(nproc)}"
python="${PYTHON:-python3}"
cxx="${CXX:-c++}"
data_file="$data_dir/wikitext-2-raw/wiki.test.raw"
n_new=32
n_ctx=512
n_chunks=32

[[ -f "$src/include/llama.h" && -f "$src/tools/perplexity/perplexity.cpp" ]] ||
  fail "$src does not look like llama.cpp sources (include/llama.h, tools/perplexity missing)"
[[ -f "$src/vendor/nlohmann/json.hpp" ]] || fail "$src/vendor/nlohmann/json.hpp is missing"
[[ -f "$model" ]] || fail "no model file $model"
[[ -f "$data_file" ]] || fail "no $data_file"
for tool in cmake "$cxx" "$python"; do
  command -v "$tool" > /dev/null || fail "$tool not found"
done
mkdir -p "$work"
work="$(cd "$work" && pwd)"
build="$work/build"
log "llama.cpp $src, model $model, data $data_file, work folder $work, out $out_dir"

# 1. Build llama.cpp (CPU only): libllama, llama-quantize, llama-perplexity.
generator=()
if command -v ninja > /dev/null; then generator=(-G Ninja); fi
if [[ ! -f "$build/CMakeCache.txt" ]]; then
  log "configuring llama.cpp in $build"
  cmake -S "$src" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=OFF \
    -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF > "$work/cmake.log" 2>&1 ||
    { tail -30 "$work/cmake.log" >&2; fail "cmake configure failed (log: $work/cmake.log)"; }
fi
log "building llama.cpp with $jobs jobs (log: $work/build.log)"
cmake --build "$build" --config Release -j "$jobs" --target llama-quantize llama-perplexity \
  > "$work/build.log" 2>&1 || { tail -30 "$work/build.log" >&2; fail "llama.cpp build failed"; }
bin="$build/bin"
[[ -x "$bin/llama-quantize" && -x "$bin/llama-perplexity" ]] || fail "llama.cpp tools not in $bin"
libllama="$(find "$build/" -name 'libllama.so' -print -quit)"
[[ -n "$libllama" ]] || fail "libllama.so not found under $build"
libdir="$(dirname "$libllama")"

# 2. Build the reference program against libllama.
log "compiling llamacpp_reference.cpp"
"$cxx" -std=c++17 -O2 -Wall -Wextra -o "$work/llamacpp_reference" "$here/llamacpp_reference.cpp" \
  -I "$src/include" -I "$src/ggml/include" -I "$src/vendor" -L "$libdir" \
  -Wl,-rpath,"$libdir" -lllama -lggml -lggml-base
reference="$work/llamacpp_reference"

# 3. Dequantize the GGUF to float32.
f32="$work/$(basename "${model%.gguf}").F32.gguf"
if [[ ! -f "$f32" || "$model" -nt "$f32" ]]; then
  log "dequantizing $model to $f32"
  "$bin/llama-quantize" --allow-requantize "$model" "$f32" F32 "$threads" > "$work/quantize.log" 2>&1 ||
    { tail -30 "$work/quantize.log" >&2; fail "llama-quantize failed (log: $work/quantize.log)"; }
fi
"$reference" info "$f32" > "$work/info.json" 2> "$work/info.log" ||
  { cat "$work/info.log" >&2; fail "reading $f32 failed"; }
"$python" - "$work/info.json" <<'EOF' || fail "the dequantized model is not all float32"
import json, sys
types = json.load(open(sys.argv[1]))["tensor_types"]
print(f"[llamacpp_reference] tensor types of the F32 model: {types}")
sys.exit(0 if set(types) == {"f32"} else 1)
EOF

# 4. Greedy continuations.
"$python" "$here/llamacpp_reference_json.py" format-prompts "$here/smollm2_prompts.json" \
  "$work/info.json" "$work/prompts.json"
log "greedy decoding of $(basename "$here")/smollm2_prompts.json ($n_new tokens each)"
"$reference" greedy "$f32" "$work/prompts.json" "$n_new" "$threads" > "$work/greedy.json" \
  2> "$work/greedy.log" || { tail -30 "$work/greedy.log" >&2; fail "greedy run failed"; }
grep '^llamacpp_reference:' "$work/greedy.log" || true

# 5. Perplexity: our recomputation with per-chunk sums, then llama-perplexity itself.
log "perplexity over $n_chunks chunks of $n_ctx tokens (recomputation)"
"$reference" perplexity "$f32" "$data_file" "$n_ctx" "$n_chunks" "$threads" \
  > "$work/perplexity.json" 2> "$work/perplexity.log" ||
  { tail -30 "$work/perplexity.log" >&2; fail "perplexity recomputation failed"; }
grep "^llamacpp_reference: chunk" "$work/perplexity.log" | tail -1
ppl_args=(-f "$data_file" -c "$n_ctx" -b "$n_ctx" --chunks "$n_chunks" -t "$threads"
          -ctk f32 -ctv f32 -fa off)
for variant in f32 q4_1; do
  if [[ $variant == f32 ]]; then gguf="$f32"; else gguf="$model"; fi
  log "llama-perplexity on the $variant model"
  "$bin/llama-perplexity" -m "$gguf" "${ppl_args[@]}" > "$work/llama-perplexity-$variant.log" 2>&1 ||
    { tail -30 "$work/llama-perplexity-$variant.log" >&2; fail "llama-perplexity failed"; }
  grep 'Final estimate' "$work/llama-perplexity-$variant.log"
done

# 6. Assemble the fixtures.
commit="$(git -C "$src" rev-parse HEAD 2> /dev/null || echo unknown)"
if [[ $commit != unknown && -n "$(git -C "$src" status --porcelain 2> /dev/null | head -1)" ]]; then
  commit="$commit (with local changes)"
fi
version="$("$bin/llama-perplexity" --version 2>&1 | head -2 | tr '\n' ' ' | sed 's/ *$//')"
ppl_display="-f <DATA_DIR>/wikitext-2-raw/wiki.test.raw -c $n_ctx -b $n_ctx --chunks $n_chunks -t $threads -ctk f32 -ctv f32 -fa off"
"$python" - "$work/meta.json" "$work/info.json" "$model" "$f32" "$src" "$commit" "$version" \
  "$("$cxx" --version | head -1)" "$threads" "$n_new" "$data_file" "$data_dir" \
  "llama-perplexity -m $(basename "${model%.gguf}").F32.gguf $ppl_display" \
  "llama-perplexity -m $(basename "$model") $ppl_display" <<'EOF'
import json, sys
(meta, info, model, f32, src, commit, version, compiler, threads, n_new, data_file, data_dir, command_f32,
 command_q4_1) = sys.argv[1:]
parts = src.split("/")
# Name the sources by the package they came in where there is one, not by this machine's path.
label = next(("/".join(parts[i:]) for i, part in enumerate(parts)
              if part.startswith("llama_cpp_python")), parts[-1])
json.dump({
    "model": model, "f32_model": f32, "f32_tensor_types": json.load(open(info))["tensor_types"],
    "llama_cpp_source": label, "llama_cpp_commit": commit, "llama_cpp_version": version,
    "system_info": json.load(open(info))["system_info"], "compiler": compiler,
    "threads": int(threads), "new_tokens": int(n_new), "data_file": data_file,
    "data_dir": data_dir, "perplexity_command_f32": command_f32,
    "perplexity_command_q4_1": command_q4_1,
}, open(meta, "w"), indent=1)
EOF
"$python" "$here/llamacpp_reference_json.py" assemble "$work" "$out_dir"
log "wrote $out_dir/smollm2_reference.json and $out_dir/smollm2_wikitext2_tokens.json"
