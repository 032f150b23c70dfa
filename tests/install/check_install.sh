#!/usr/bin/env bash
# Installs the build tree given as $1 into a temporary prefix, then builds and runs a
# consumer three ways: pkg-config (shared), CMake find_package (shared and static).
set -euo pipefail
build=$1
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
libdir=$(ls -d "$tmp"/prefix/lib*/ | head -1)
test -f "$tmp/prefix/include/crew.h" || { echo "crew.h not installed"; exit 1; }

# pkg-config, shared library.
export PKG_CONFIG_PATH="$libdir/pkgconfig"
cc -std=c11 -Wall -Wextra -Werror "$here/consumer.c" -o "$tmp/pc" $(pkg-config --cflags --libs crew)
LD_LIBRARY_PATH="$libdir" "$tmp/pc"

# pkg-config, static.
cc -std=c11 -Wall -Wextra -Werror "$here/consumer.c" -o "$tmp/pcs" \
    $(pkg-config --cflags crew) "$libdir/libcrew.a" $(pkg-config --libs-only-other --static crew)
"$tmp/pcs"

# CMake find_package, shared and static.
cmake -S "$here" -B "$tmp/cm" -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/cm" >/dev/null
LD_LIBRARY_PATH="$libdir" "$tmp/cm/consumer_shared"
"$tmp/cm/consumer_static"
echo "install: pkg-config and find_package consumers built and ran"
