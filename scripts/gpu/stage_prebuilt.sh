#!/usr/bin/env bash
# Stages a CUDA build made on another machine (nvcc for sm_90 works without a GPU) for a GPU machine
# that should not spend minutes compiling: copies `kite` and `kite_cuda_tests` from BUILD_DIR into
# build-gpu/ (stripped), where scripts/gpu/bench.sh, serve_bench.sh, profile.sh and compare.sh use
# them as they are and `run.sh --prebuilt` runs the tests, and the shared libraries a GPU machine
# may lack (utf8proc, cpp-httplib, brotli, PCRE2) into .deps/rt/, which env.sh puts on
# LD_LIBRARY_PATH. Both folders are git-ignored: name them when copying the tree over. Debian 12's
# libraries run on newer distributions (Ubuntu 24.04); build where the CUDA toolkit's major version
# matches the GPU machine's driver.
# Usage: bash scripts/gpu/stage_prebuilt.sh [BUILD_DIR] [--extra NAME=BINARY]... [--pack [--no-tests]]
#   BUILD_DIR             default: build
#   --extra NAME=BINARY   also stage another `kite` as build-gpu/kite-NAME (a baseline for
#                         scripts/gpu/compare.sh)
#   --pack                then pack build-gpu/ and .deps/rt/ into .deps/prebuilt.tar.xz (xz -9: its
#                         64 MiB window sees that kite and kite_cuda_tests carry the same kernels,
#                         so both pack into 7 MB), which env.sh unpacks where build-gpu/kite is missing
#   --no-tests            pack without kite_cuda_tests (benchmarks only)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
build="$root/build"
extras=()
pack=0
tests=1
while (($#)); do
  case "$1" in
    --extra) extras+=("$2"); shift 2 ;;
    --pack) pack=1; shift ;;
    --no-tests) tests=0; shift ;;
    -*) echo "stage_prebuilt.sh: unknown option $1" >&2; exit 2 ;;
    *) build="$1"; shift ;;
  esac
done
cd "$root"
for extra in "${extras[@]}"; do
  name="${extra%%=*}" binary="${extra#*=}"
  [[ "$extra" == *=* && "$name" =~ ^[A-Za-z0-9_.-]+$ && -x "$binary" ]] ||
    { echo "stage_prebuilt.sh: --extra $extra: want NAME=BINARY (an executable)" >&2; exit 2; }
done
for binary in "$build/kite" "$build/tests/kite_cuda_tests"; do
  [[ -x "$binary" ]] || { echo "stage_prebuilt.sh: $binary is missing (build with CUDA first)" >&2; exit 1; }
done
ldd "$build/kite" | grep -q libcudart || { echo "stage_prebuilt.sh: $build/kite has no CUDA backend" >&2; exit 1; }
mkdir -p build-gpu/tests .deps/rt
cp "$build/kite" build-gpu/kite
cp "$build/tests/kite_cuda_tests" build-gpu/tests/kite_cuda_tests
strip build-gpu/kite build-gpu/tests/kite_cuda_tests
rm -f .deps/rt/*
for library in libutf8proc.so.2 libcpp-httplib.so.0.11 libbrotlicommon.so.1 libbrotlidec.so.1 \
  libbrotlienc.so.1 libpcre2-8.so.0; do
  path="$(ldd build-gpu/kite | awk -v name="$library" '$1 == name { print $3 }')"
  [[ -n "$path" ]] && cp -L "$path" ".deps/rt/$library"
done
rm -f build-gpu/kite-*
staged=(build-gpu/kite)
((tests)) && staged+=(build-gpu/tests/kite_cuda_tests)
for extra in "${extras[@]}"; do
  name="${extra%%=*}" binary="${extra#*=}"
  cp "$binary" "build-gpu/kite-$name"
  strip "build-gpu/kite-$name"
  staged+=("build-gpu/kite-$name")
done
du -sh "${staged[@]}" .deps/rt
if ((pack)); then
  tar -cf - "${staged[@]}" .deps/rt | xz -9 -T1 > .deps/prebuilt.tar.xz
  du -sh .deps/prebuilt.tar.xz
fi
