#!/usr/bin/env bash
# Collects, into .deps/, the Debian packages a GPU machine may lack (CLI11, PCRE2, utf8proc and
# cpp-httplib headers and libraries), unpacked rather than installed, so a build there needs no
# package registry. scripts/gpu/run.sh uses .deps/ when it exists.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
deps="$root/.deps"
rm -rf "$deps" && mkdir -p "$deps/debs"
cd "$deps/debs"
apt-get download libcli11-dev libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 \
  libpcre2-posix3 libutf8proc-dev libutf8proc2 liblzma-dev \
  libcpp-httplib-dev libcpp-httplib0.11 libssl-dev zlib1g-dev libbrotli-dev libbrotli1
# (cpp-httplib's pkg-config file requires openssl, zlib and brotli's .pc files and headers; the
# OpenSSL and zlib runtime libraries every distribution has are not fetched.)
for deb in *.deb; do dpkg -x "$deb" "$deps/root"; done
# The .pc files say prefix=/usr; point them at the unpacked tree.
find "$deps/root" -name '*.pc' -exec sed -i "s|^prefix=/usr|prefix=$deps/root/usr|" {} +
rm -rf "$deps/debs"
echo "dependencies unpacked in $deps/root"
