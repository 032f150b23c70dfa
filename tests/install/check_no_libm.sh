#!/usr/bin/env bash
# check_no_libm.sh LIBCREW_A - libcrew needs nothing from libm (crew.pc does not list it):
# none of the symbols the archive leaves undefined is one that libm defines. Compilers
# differ in what they inline (clang calls ceil() where gcc does not), so this runs in every
# build, sanitized ones included, and catches what only some compilers would fail to link.
set -euo pipefail
lib=$1
libm=$(cc -print-file-name=libm.so.6)
if [[ ! -f $libm ]]; then
  echo "check_no_libm: no libm.so.6 found; nothing to compare against"
  exit 0
fi
from_libm=$(comm -12 \
  <(nm -u "$lib" | awk 'NF { print $NF }' | sed 's/@.*//' | sort -u) \
  <(nm -D --defined-only "$libm" | awk '{ print $NF }' | sed 's/@.*//' | sort -u))
if [[ -n $from_libm ]]; then
  echo "libcrew calls into libm, which crew.pc does not link:" $from_libm
  exit 1
fi
echo "libcrew: no symbol from libm"
