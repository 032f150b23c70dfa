#!/usr/bin/env bash
# check_man.sh LIBCREW_A - checks that docs/libcrew.3 says what include/crew.h declares.
#
#   1. every function the header exports (CREW_EXPORT, not crew__) is named in bold;
#   2. every crew_/CREW_ name on the page exists in the header (no documentation of API
#      that does not exist), every metric name src/metrics.c writes is on the page, every
#      log event src/pool.c emits is named in bold, and the .TH version is
#      CREW_VERSION_STRING;
#   3. the program under EXAMPLES compiles with -std=c11 -Wall -Wextra -Werror against
#      LIBCREW_A (the static library) and exits 0;
#   4. groff, if installed, formats the page without a single warning.
#
# The compiler is $CC, else the one of the CMake build tree that holds LIBCREW_A, else cc;
# a sanitizer build tree's -fsanitize flags are added, so the check runs in every tree.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
page=$root/docs/libcrew.3
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

# The page as plain text for name matching: roff comments dropped, font and special
# character escapes removed, \- \e \& \c undone.
sed -E -e '/^\.\\"/d' -e 's/\\".*$//' "$page" |
    sed -E -e 's/\\f(\[[^]]*\]|\(..|.)//g' -e 's/\\\((..)/ /g' -e 's/\\\[[^]]*\]/ /g' \
        -e 's/\\-/-/g' -e 's/\\e/\\/g' -e 's/\\[&c]//g' >"$work/page.txt"

# ---- 1. every exported function is on the page, in bold ------------------------------------
mapfile -t exported < <(grep -E '^[[:space:]]*CREW_EXPORT[[:space:]]' "$header" |
    grep -oE '\bcrew_[A-Za-z0-9_]*[[:space:]]*\(' | sed -E 's/[[:space:]]*\($//' |
    grep -v '^crew__' | sort -u)
if [[ ${#exported[@]} -lt 10 ]]; then
    fail "found only ${#exported[@]} exported functions in $header: is the parse broken?"
fi
for name in "${exported[@]}"; do
    # Bold: inside a \fB run, on a .B line, or in the first (bold) argument of .BR or .BI.
    if ! grep -Eq "(\\\\fB[^\\\\]*\\b${name}\\b)|(^\\.B[[:space:]].*\\b${name}\\b)|(^\\.B[RI][[:space:]]+(\"[^\"]*\\b${name}\\b|${name}\\b))" "$page"; then
        fail "$name is exported by include/crew.h but not named in bold in docs/libcrew.3"
    fi
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

# Names on the page; a trailing * (CREW_E*, crew_ctx_*) names a family by its prefix. A
# name after :: is a CMake target (crew::crew_static), not C.
grep -oE '(::)?\b(crew|CREW)_[A-Za-z0-9_]*\*?' "$work/page.txt" | grep -v '^::' | sort -u |
    while IFS= read -r name; do
        if [[ $name == *'*' ]]; then
            grep -q "^${name%\*}" "$work/known.txt" ||
                { echo "$name (no name in include/crew.h starts with ${name%\*})"; }
        else
            grep -qxF "$name" "$work/known.txt" || echo "$name"
        fi
    done >"$work/unknown.txt"
while IFS= read -r name; do
    fail "docs/libcrew.3 mentions $name, which does not exist in include/crew.h"
done <"$work/unknown.txt"

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
    if ! grep -Eq "(\\\\fB[^\\\\]*\\b${name}\\b)|(^\\.B[[:space:]].*\\b${name}\\b)|(^\\.B[RI][[:space:]]+(\"[^\"]*\\b${name}\\b|${name}\\b))" "$page"; then
        fail "src/pool.c logs the event $name, which docs/libcrew.3 does not name in bold"
    fi
done

# The version in .TH is the header's.
version=$(sed -nE 's/^#define[[:space:]]+CREW_VERSION_STRING[[:space:]]+"([^"]*)".*/\1/p' "$header")
th=$(grep -m1 -E '^\.TH[[:space:]]' "$page" || true)
if [[ -z $version ]]; then
    fail "no CREW_VERSION_STRING in include/crew.h"
elif [[ $th != *"libcrew $version"* ]]; then
    fail "docs/libcrew.3's .TH line ($th) does not say \"libcrew $version\""
fi

# ---- 3. the EXAMPLES program compiles and runs ---------------------------------------------
# The first .EX/.EE (or .nf/.fi) block of the EXAMPLES section, with roff escapes undone.
awk '
    /^\.SH/ { in_ex = ($0 ~ /^\.SH[[:space:]]+"?EXAMPLES?"?[[:space:]]*$/); next }
    in_ex && !done && !in_code && /^\.(EX|nf)([[:space:]]|$)/ { in_code = 1; next }
    in_code && /^\.(EE|fi)([[:space:]]|$)/ { in_code = 0; done = 1; next }
    in_code && /^\.\\"/ { next }
    in_code { print }
' "$page" |
    sed -e 's/\\e/\x01/g' -e 's/\\-/-/g' -e "s/\\\\(aq/'/g" -e 's/\\(dq/"/g' -e 's/\\(ga/`/g' \
        -e 's/\\(rs/\x01/g' -e 's/\\&//g' -e 's/\x01/\\/g' >"$work/example.c"

if ! grep -q 'main(' "$work/example.c"; then
    fail "no program (no main) in the first code block under EXAMPLES in docs/libcrew.3"
elif grep -nE '^\.' "$work/example.c" >"$work/requests.txt"; then
    fail "roff requests inside the EXAMPLES code block: $(tr '\n' ' ' <"$work/requests.txt")"
else
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
    compile=("$cc" -std=c11 -Wall -Wextra -Werror "${sanitize[@]}" -I "$root/include"
        "$work/example.c" "$lib" -pthread -lm -o "$work/example")
    if ! "${compile[@]}" >"$work/cc.log" 2>&1; then
        fail "the EXAMPLES program of docs/libcrew.3 does not compile: ${compile[*]}"
        cat -n "$work/example.c" >&2
        cat "$work/cc.log" >&2
    else
        rc=0
        timeout 60 "$work/example" >"$work/run.log" 2>&1 || rc=$?
        if [[ $rc -ne 0 ]]; then
            fail "the EXAMPLES program of docs/libcrew.3 exited with status $rc"
            cat "$work/run.log" >&2
        else
            sed 's/^/check_man: example: /' "$work/run.log"
        fi
    fi
fi

# ---- 4. groff formats the page without warnings --------------------------------------------
if command -v groff >/dev/null 2>&1; then
    warnings=$(groff -man -Tutf8 -ww -z "$page" 2>&1 || true)
    if [[ -n $warnings ]]; then
        fail "groff -man -Tutf8 -ww -z docs/libcrew.3 warns:"
        echo "$warnings" >&2
    fi
else
    echo "check_man: groff not installed: skipping the formatting check"
fi

if [[ $failed -ne 0 ]]; then
    echo "check_man: docs/libcrew.3 is out of sync with include/crew.h (see above)" >&2
    exit 1
fi
echo "check_man: ok: ${#exported[@]} exported functions documented, example ran, page formats cleanly"
