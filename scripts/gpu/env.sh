# Sourced by the GPU scripts: points CMake and pkg-config at .deps/ (libraries unpacked by
# scripts/gpu/fetch_deps.sh for machines without them) and assembles the demo model from its parts
# when models/ lacks it and all of them are there (its checksum says so).
root="${root:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
if [[ -d "$root/.deps/root" ]]; then
  # The .pc files point at the tree where fetch_deps.sh ran; re-point them here.
  find "$root/.deps/root" -name '*.pc' -exec sed -i "s|^prefix=.*/\.deps/root/usr|prefix=$root/.deps/root/usr|" {} +
  export CMAKE_PREFIX_PATH="$root/.deps/root/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export PKG_CONFIG_PATH="$root/.deps/root/usr/lib/x86_64-linux-gnu/pkgconfig:$root/.deps/root/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
  export LD_LIBRARY_PATH="$root/.deps/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # OpenSSL's configuration headers (included by httplib.h) live in the multiarch folder, which
  # the compiler searches only under /usr.
  export CPLUS_INCLUDE_PATH="$root/.deps/root/usr/include/x86_64-linux-gnu${CPLUS_INCLUDE_PATH:+:$CPLUS_INCLUDE_PATH}"
fi
# Binaries packed by scripts/gpu/stage_prebuilt.sh --pack, and their libraries: unpacked over
# build-gpu/ whenever the package differs from the one unpacked last (a stamp of its checksum).
if [[ -f "$root/.deps/prebuilt.tar.xz" ]]; then
  prebuilt_sum="$(sha256sum "$root/.deps/prebuilt.tar.xz" | cut -d' ' -f1)"
  if [[ "$(cat "$root/build-gpu/.prebuilt" 2>/dev/null)" != "$prebuilt_sum" ]]; then
    rm -f "$root"/build-gpu/kite-*
    tar -xJf "$root/.deps/prebuilt.tar.xz" -C "$root"
    echo "$prebuilt_sum" > "$root/build-gpu/.prebuilt"
    echo "unpacked .deps/prebuilt.tar.xz into build-gpu/" >&2
  fi
fi
if [[ -d "$root/.deps/rt" ]]; then
  export LD_LIBRARY_PATH="$root/.deps/rt${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
demo_model="$root/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ ! -f "$demo_model" ]] && compgen -G "$root/models/parts/smollm2.gguf.part*" > /dev/null; then
  cat "$root"/models/parts/smollm2.gguf.part* > "$demo_model.tmp"
  if echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $demo_model.tmp" |
    sha256sum --check --status; then
    mv "$demo_model.tmp" "$demo_model"
  else
    rm -f "$demo_model.tmp"
    echo "demo model parts are incomplete; the SmolLM2 tests will skip" >&2
  fi
fi
