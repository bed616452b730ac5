#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine for Kite: system packages, a Python venv with the test tools,
# the demo model, and a build of the `kite` binary in build/.
# The CUDA backend is built too when the CUDA toolkit is installed in /usr/local/cuda.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

packages=(
  build-essential cmake ninja-build pkg-config git unzip ca-certificates
  nlohmann-json3-dev libcli11-dev libpcre2-dev libutf8proc-dev
  libcpp-httplib-dev  # kite serve's HTTP server
  libgtest-dev libgmock-dev liblzma-dev
  clang libclang-rt-14-dev  # libFuzzer and sanitizers for the fuzz targets
  libomp-dev  # OpenMP runtime for clang builds (GCC brings its own libgomp)
  python3 python3-venv python3-pip
)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  sudo_cmd=()
  if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}"
fi

# Python tools used by the tests and by the fixture scripts (HF tokenizers as the reference).
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -r scripts/requirements.txt

bash scripts/fetch_demo_model.sh

cmake -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$(nproc)"
echo "setup done: build/kite is ready"
