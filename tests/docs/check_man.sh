#!/usr/bin/env bash
# check_man.sh LIBCREW_A - checks that the section 3 pages (docs/libcrew.3, the overview,
# and docs/crew_*.3, one per toolkit module) say what include/crew.h declares.
#
#   1. every function the header exports (CREW_EXPORT, not crew__) is named in bold on
#      one of the pages;
#   2. every crew_/CREW_ name on a page exists in the header (no documentation of API
#      that does not exist), each page's .TH version is CREW_VERSION_STRING, and on
#      docs/libcrew.3 every metric name src/metrics.c writes is listed and every log event
#      src/pool.c emits is named in bold;
#   3. on every page, the program under EXAMPLES compiles with -std=c11 -Wall -Wextra
#      -Werror against LIBCREW_A (the static library) and exits 0;
#   4. groff, if installed, formats every page in docs/ (sections 1 and 3) without a
#      single warning.
#
# The compiler is $CC, else the one of the CMake build tree that holds LIBCREW_A, else cc;
# a sanitizer build tree's -fsanitize flags are added, so the check runs in every tree.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
page=$root/docs/libcrew.3
mapfile -t pages3 < <(ls "$root"/docs/libcrew.3 "$root"/docs/crew_*.3 2>/dev/null)
mapfile -t all_pages < <(ls "$root"/docs/*.[0-9] 2>/dev/null)
header=$root/include/crew.h
metrics=$root/src/metrics.c
pool_src=$root/src/pool.c

failed=0
fail() {
    echo "check_man: FAIL: $*" >&2
    failed=1
}

if [[ $# -ne 1 || ! -f $1 ]]; then
    echo "usage: check_man.sh PATH/TO/libcrew.a  (the static library to link the example with)" >&2
    exit 2
fi
lib=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
for f in "$page" "$header" "$metrics" "$pool_src"; do
    [[ -f $f ]] || { echo "check_man: FAIL: missing $f" >&2; exit 1; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/check_man.XXXXXX")
trap 'rm -rf "$work"' EXIT

# A page as plain text for name matching: roff comments dropped, font and special
# character escapes removed, \- \e \& \c undone.
plain() {
    sed -E -e '/^\.\\"/d' -e 's/\\".*$//' "$1" |
        sed -E -e 's/\\f(\[[^]]*\]|\(..|.)//g' -e 's/\\\((..)/ /g' -e 's/\\\[[^]]*\]/ /g' \
            -e 's/\\-/-/g' -e 's/\\e/\\/g' -e 's/\\[&c]//g'
}
plain "$page" >"$work/page.txt"
# In bold: inside a \fB run, on a .B line, or in the first (bold) argument of .BR or .BI.
bold_on() { # NAME PAGE...
    local name=$1
    shift
    grep -Eq "(\\\\fB[^\\\\]*\\b${name}\\b)|(^\\.B[[:space:]].*\\b${name}\\b)|(^\\.B[RI][[:space:]]+(\"[^\"]*\\b${name}\\b|${name}\\b))" "$@"
}

# ---- 1. every exported function is on the page, in bold ------------------------------------
mapfile -t exported < <(grep -E '^[[:space:]]*CREW_EXPORT[[:space:]]' "$header" |
    grep -oE '\bcrew_[A-Za-z0-9_]*[[:space:]]*\(' | sed -E 's/[[:space:]]*\($//' |
    grep -v '^crew__' | sort -u)
if [[ ${#exported[@]} -lt 10 ]]; then
    fail "found only ${#exported[@]} exported functions in $header: is the parse broken?"
fi
for name in "${exported[@]}"; do
    bold_on "$name" "${pages3[@]}" ||
        fail "$name is exported by include/crew.h but not named in bold on any page (docs/libcrew.3, docs/crew_*.3)"
done

# ---- 2. every name on the page exists in the header ----------------------------------------
{
    # Every crew_/CREW_ token of the header, comments included ("CREW_OK" is only there).
    grep -oE '\b(crew|CREW)_[A-Za-z0-9_]*' "$header"
    # The codes CREW_ERRNO_MAP generates: X(AGAIN, EAGAIN, "...") gives CREW_EAGAIN.
    grep -oE '^[[:space:]]*X\([A-Z0-9_]+,' "$header" | sed -E 's/^[[:space:]]*X\(([A-Z0-9_]+),/CREW_E\1/'
    # Brace lists in comments: crew_jobs_{submitted,rejected}_total.
    grep -oE '\b(crew|CREW)_[A-Za-z0-9_]*\{[A-Za-z0-9_,]+\}[A-Za-z0-9_]*' "$header" |
        while IFS= read -r word; do
            pre=${word%%\{*}
            rest=${word#*\{}
            list=${rest%%\}*}
            post=${rest#*\}}
            IFS=, read -r -a parts <<<"$list"
            for part in "${parts[@]}"; do echo "$pre$part$post"; done
        done
} | sort -u >"$work/known.txt"

# Names on each page; a trailing * (CREW_E*, crew_ctx_*) names a family by its prefix. A
# name after :: is a CMake target (crew::crew_static), not C.
for pg in "${pages3[@]}"; do
    plain "$pg" | grep -oE '(::)?\b(crew|CREW)_[A-Za-z0-9_]*\*?' | grep -v '^::' | sort -u |
        while IFS= read -r name; do
            if [[ $name == *'*' ]]; then
                grep -q "^${name%\*}" "$work/known.txt" ||
                    { echo "$name (no name in include/crew.h starts with ${name%\*})"; }
            else
                grep -qxF "$name" "$work/known.txt" || echo "$name"
            fi
        done >"$work/unknown.txt"
    while IFS= read -r name; do
        fail "docs/${pg##*/} mentions $name, which does not exist in include/crew.h"
    done <"$work/unknown.txt"
done

# The Prometheus metric names that src/metrics.c writes are all documented.
mapfile -t metric_names < <(grep -oE '"crew_[a-z0-9_]+"' "$metrics" | tr -d '"' | sort -u)
[[ ${#metric_names[@]} -gt 0 ]] || fail "found no metric names in src/metrics.c"
for name in "${metric_names[@]}"; do
    grep -qw -- "$name" "$work/page.txt" ||
        fail "src/metrics.c writes the metric $name, which docs/libcrew.3 does not list"
done

# The pool's log events (the msg argument of each logf_ call in src/pool.c) are all
# listed, in bold as the exported functions are.
mapfile -t log_events < <(tr '\n' ' ' <"$pool_src" |
    grep -oE '\blogf_\([^,;]+,[^,;]+,[[:space:]]*"[A-Za-z0-9_]+"' |
    sed -E 's/.*"([A-Za-z0-9_]+)"$/\1/' | sort -u)
[[ ${#log_events[@]} -gt 0 ]] || fail "found no log events in src/pool.c: is the parse broken?"
for name in "${log_events[@]}"; do
    if ! bold_on "$name" "$page"; then
        fail "src/pool.c logs the event $name, which docs/libcrew.3 does not name in bold"
    fi
done

# The version in each .TH is the header's.
version=$(sed -nE 's/^#define[[:space:]]+CREW_VERSION_STRING[[:space:]]+"([^"]*)".*/\1/p' "$header")
[[ -n $version ]] || fail "no CREW_VERSION_STRING in include/crew.h"
for pg in "${pages3[@]}"; do
    th=$(grep -m1 -E '^\.TH[[:space:]]' "$pg" || true)
    [[ -z $version || $th == *"libcrew $version"* ]] ||
        fail "docs/${pg##*/}'s .TH line ($th) does not say \"libcrew $version\""
done

# ---- 3. each page's EXAMPLES program compiles and runs ------------------------------------
cc=${CC:-}
sanitize=()
cache=""
dir=$(dirname "$lib")
while [[ $dir != / ]]; do
    if [[ -f $dir/CMakeCache.txt ]]; then
        cache=$dir/CMakeCache.txt
        break
    fi
    dir=$(dirname "$dir")
done
if [[ -n $cache ]]; then
    [[ -n $cc ]] || cc=$(sed -nE 's/^CMAKE_C_COMPILER:[A-Z]+=//p' "$cache")
    case $(sed -nE 's/^CREW_SANITIZE:[A-Z]+=//p' "$cache") in
    thread) sanitize=(-fsanitize=thread) ;;
    address) sanitize=(-fsanitize=address,undefined) ;;
    esac
fi
cc=${cc:-cc}

examples=0
for pg in "${pages3[@]}"; do
    name=${pg##*/}
    # The first .EX/.EE (or .nf/.fi) block of the EXAMPLES section, roff escapes undone.
    awk '
        /^\.SH/ { in_ex = ($0 ~ /^\.SH[[:space:]]+"?EXAMPLES?"?[[:space:]]*$/); next }
        in_ex && !done && !in_code && /^\.(EX|nf)([[:space:]]|$)/ { in_code = 1; next }
        in_code && /^\.(EE|fi)([[:space:]]|$)/ { in_code = 0; done = 1; next }
        in_code && /^\.\\"/ { next }
        in_code { print }
    ' "$pg" |
        sed -e 's/\\e/\x01/g' -e 's/\\-/-/g' -e "s/\\\\(aq/'/g" -e 's/\\(dq/"/g' -e 's/\\(ga/`/g' \
            -e 's/\\(rs/\x01/g' -e 's/\\&//g' -e 's/\x01/\\/g' >"$work/example.c"

    if ! grep -q 'main(' "$work/example.c"; then
        fail "no program (no main) in the first code block under EXAMPLES in docs/$name"
        continue
    fi
    if grep -nE '^\.' "$work/example.c" >"$work/requests.txt"; then
        fail "roff requests inside the EXAMPLES code block of docs/$name: $(tr '\n' ' ' <"$work/requests.txt")"
        continue
    fi
    compile=("$cc" -std=c11 -Wall -Wextra -Werror "${sanitize[@]}" -I "$root/include"
        "$work/example.c" "$lib" -pthread -lm -o "$work/example")
    if ! "${compile[@]}" >"$work/cc.log" 2>&1; then
        fail "the EXAMPLES program of docs/$name does not compile: ${compile[*]}"
        cat -n "$work/example.c" >&2
        cat "$work/cc.log" >&2
        continue
    fi
    rc=0
    timeout 60 "$work/example" >"$work/run.log" 2>&1 || rc=$?
    if [[ $rc -ne 0 ]]; then
        fail "the EXAMPLES program of docs/$name exited with status $rc"
        cat "$work/run.log" >&2
    else
        sed "s/^/check_man: $name example: /" "$work/run.log"
        examples=$((examples + 1))
    fi
done

# ---- 4. groff formats every page without warnings ------------------------------------------
if command -v groff >/dev/null 2>&1; then
    for pg in "${all_pages[@]}"; do
        warnings=$(groff -man -Tutf8 -ww -z "$pg" 2>&1 || true)
        if [[ -n $warnings ]]; then
            fail "groff -man -Tutf8 -ww -z docs/${pg##*/} warns:"
            echo "$warnings" >&2
        fi
    done
else
    echo "check_man: groff not installed: skipping the formatting check"
fi

if [[ $failed -ne 0 ]]; then
    echo "check_man: the man pages in docs/ are out of sync with include/crew.h (see above)" >&2
    exit 1
fi
echo "check_man: ok: ${#exported[@]} exported functions documented on ${#pages3[@]} pages, $examples examples ran, ${#all_pages[@]} pages format cleanly"
