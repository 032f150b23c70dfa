#!/usr/bin/env bash
# test_fetch.sh FETCH HTTPD - the fetch example against the local test server.
#
# Starts HTTPD (tests/examples/httpd.c) on 127.0.0.1 and an ephemeral port, runs FETCH on
# mixes of its endpoints and checks each output line, the summary, the exit status and the
# server's connection count. Only 127.0.0.1 is ever contacted. The server is stopped on
# every way out (trap). Time bounds are generous guards against hangs, never assertions
# about speed.
set -uo pipefail
fetch=$1
httpd=$2
tmp=$(mktemp -d)
srv=

cleanup() {
    if [ -n "$srv" ]; then
        kill "$srv" 2>/dev/null
        wait "$srv" 2>/dev/null
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

failures=0
fail() {
    echo "FAIL: $*"
    failures=$((failures + 1))
}

# The server prints "PORT REFUSED_PORT" once it listens.
exec 3< <(exec "$httpd" 2>"$tmp/httpd.err")
srv=$!
if ! read -r -t 30 -u 3 port refused; then
    echo "FAIL: the test server did not start"
    cat "$tmp/httpd.err"
    exit 1
fi
b="http://127.0.0.1:$port"
echo "server on 127.0.0.1:$port (refused port $refused)"

# run NAME [ARGS...]: runs fetch (stdin as given), stopped after 120 s at worst; leaves
# $tmp/NAME.out, $tmp/NAME.err and the exit status in $rc.
run() {
    local name=$1
    shift
    timeout 120 "$fetch" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err"
    rc=$?
}

# expect_rc NAME WANT: the exit status of the last run.
expect_rc() {
    [ "$rc" -eq "$2" ] || fail "$1: exit status $rc, expected $2"
}

# expect_out NAME: NAME's output, the <ms> field of OK lines blanked, equals $tmp/NAME.want
# line for line (so: every URL once, in input order).
expect_out() {
    awk '$1 == "OK" { if ($4 !~ /^[0-9]+$/) print "bad ms field: " $0; $4 = "-" } { print }' \
        "$tmp/$1.out" >"$tmp/$1.got"
    if ! diff -u "$tmp/$1.want" "$tmp/$1.got" >"$tmp/$1.diff"; then
        fail "$1: output differs from what was expected:"
        head -40 "$tmp/$1.diff"
    fi
}

# expect_err NAME REGEX: NAME's standard error matches REGEX (grep -E).
expect_err() {
    grep -Eq -- "$2" "$tmp/$1.err" || {
        fail "$1: standard error does not match '$2':"
        cat "$tmp/$1.err"
    }
}

# stats: "CONNECTIONS REQUESTS" as the server counts them, this request included.
stats() {
    local c= r= k v
    exec 5<>"/dev/tcp/127.0.0.1/$port" || return 1
    printf 'GET /stats HTTP/1.0\r\n\r\n' >&5
    while read -r k v; do
        v=${v%$'\r'}
        case $k in
        connections) c=$v ;;
        requests) r=$v ;;
        esac
    done <&5
    exec 5<&-
    echo "$c $r"
}

# ---- a mix of good and failing URLs, printed in input order -------------------------
cat >"$tmp/mix.want" <<EOF
OK 200 5 - $b/slow/200
OK 200 3 - $b/ok
OK 200 0 - $b/bytes/0
OK 200 100000 - $b/bytes/100000
OK 201 11 - $b/status/201
FAIL http-404 $b/status/404
FAIL http-500 $b/status/500
FAIL http-404 $b/no/such/endpoint
FAIL empty-reply $b/close
FAIL refused http://127.0.0.1:$refused/ok
FAIL timeout $b/hang
FAIL unsupported-protocol ftp://127.0.0.1:$port/
EOF
run mix -j 4 -t 5s $(sed -n 's/^.* //p' "$tmp/mix.want")
expect_rc mix 1
expect_out mix
expect_err mix '^fetch: 12 urls in [0-9.]+ s: 5 ok, 7 failed \(1 timeout, 0 cancelled\)'

# ---- URLs from standard input, long options, all good: exit 0 -----------------------
printf '%s\n' "# a comment" "" "  $b/ok  " "$b/bytes/7" "" "$b/status/200" >"$tmp/stdin.in"
printf '%s\n' "OK 200 3 - $b/ok" "OK 200 7 - $b/bytes/7" "OK 200 11 - $b/status/200" \
    >"$tmp/stdin.want"
run stdin --jobs 2 --timeout 30s --deadline 5m <"$tmp/stdin.in"
expect_rc stdin 0
expect_out stdin
expect_err stdin '^fetch: 3 urls in [0-9.]+ s: 3 ok, 0 failed'

# No URL at all: nothing to do, nothing failed.
run empty </dev/null
expect_rc empty 0
[ -s "$tmp/empty.out" ] && fail "empty: printed $(cat "$tmp/empty.out")"
expect_err empty '^fetch: 0 urls in'

# ---- the overall deadline ends many hanging requests, each reported once ------------
# 4 run, 4 wait in the queue, the rest are not yet submitted when it fires.
for i in $(seq 60); do echo "$b/hang?i=$i"; done >"$tmp/deadline.in"
sed 's/^/FAIL cancelled /' "$tmp/deadline.in" >"$tmp/deadline.want"
SECONDS=0
timeout 20 "$fetch" -j 4 -t 60s -d 1s <"$tmp/deadline.in" >"$tmp/deadline.out" \
    2>"$tmp/deadline.err"
rc=$?
[ "$rc" -eq 124 ] && fail "deadline: a 1 s deadline did not end the run within 20 s"
expect_rc deadline 1
expect_out deadline
expect_err deadline '60 urls in [0-9.]+ s: 0 ok, 60 failed \(0 timeout, 60 cancelled\)'
echo "deadline: 60 hanging URLs, -d 1s: done in about ${SECONDS} s"

# What finished before the deadline keeps its result; the rest is cancelled.
printf '%s\n' "OK 200 3 - $b/ok" "FAIL cancelled $b/hang" "FAIL cancelled $b/ok?after" \
    >"$tmp/partial.want"
run partial -j 1 -t 60s -d 3s "$b/ok" "$b/hang" "$b/ok?after"
expect_rc partial 1
expect_out partial

# ---- many URLs on 16 workers: each reported once, connections reused ----------------
for i in $(seq 500); do echo "$b/ok?i=$i"; done >"$tmp/many.in"
sed 's/^/OK 200 3 - /' "$tmp/many.in" >"$tmp/many.want"
read -r c0 r0 < <(stats)
run many -j 16 <"$tmp/many.in"
read -r c1 r1 < <(stats)
expect_rc many 0
expect_out many
expect_err many '^fetch: 500 urls in [0-9.]+ s: 500 ok, 0 failed'
requests=$((r1 - r0 - 1)) # less the second /stats request
conns=$((c1 - c0 - 1))    # less the second /stats connection
reported=$(sed -n 's/.*, \([0-9]*\) connections$/\1/p' "$tmp/many.err")
echo "many: 500 URLs, -j 16: $requests requests on $conns connections"
[ "$requests" -eq 500 ] || fail "many: the server saw $requests requests, expected 500"
[ "$conns" -le 32 ] || fail "many: $conns connections for 500 requests: no reuse"
[ "$conns" -eq "${reported:--1}" ] ||
    fail "many: fetch reports ${reported:-no} connections, the server saw $conns"

# ---- retries: transient failures are tried again, others are not -------------------
cat >"$tmp/retry.want" <<EOF
FAIL http-503 $b/status/503
FAIL http-404 $b/status/404
OK 200 3 - $b/ok
EOF
read -r c0 r0 < <(stats)
run retry -j 1 -r 2 $(sed -n 's/^.* //p' "$tmp/retry.want")
read -r c1 r1 < <(stats)
expect_rc retry 1
expect_out retry
expect_err retry ', 2 retries, '
requests=$((r1 - r0 - 1))
[ "$requests" -eq 5 ] || fail "retry: the server saw $requests requests, expected 3 + 1 + 1"
run retry_refused -r 1 "http://127.0.0.1:$refused/ok"
expect_rc retry_refused 1
expect_err retry_refused ', 1 retries, '
# The deadline ends a retrying request, however many tries are left.
run retry_deadline -r 100 -d 300ms "$b/status/503"
expect_rc retry_deadline 1
grep -Eqx "FAIL (cancelled|http-503) $b/status/503" "$tmp/retry_deadline.out" ||
    fail "retry_deadline: $(cat "$tmp/retry_deadline.out")"

# ---- --rate: starts are spaced (a lower bound on the time: never flaky) -------------
t0=$(date +%s%N)
run rate -j 4 --rate 20/s "$b/ok" "$b/ok?2" "$b/ok?3" "$b/ok?4"
t1=$(date +%s%N)
expect_rc rate 0
ms=$(((t1 - t0) / 1000000))
echo "rate: 4 requests at 20/s took $ms ms (at least 150 expected)"
[ "$ms" -ge 140 ] || fail "rate: 4 requests at 20/s took only $ms ms"

# ---- usage errors: one line naming the option, a usage hint, exit 2 -----------------
usage_case() { # NAME REGEX ARGS...
    local name=$1 want=$2
    shift 2
    run "$name" "$@"
    expect_rc "$name" 2
    [ -s "$tmp/$name.out" ] && fail "$name: printed on standard output"
    [ "$(wc -l <"$tmp/$name.err")" -eq 2 ] || fail "$name: expected two lines on stderr"
    head -1 "$tmp/$name.err" | grep -Eq -- "$want" ||
        fail "$name: first line '$(head -1 "$tmp/$name.err")' does not match '$want'"
    sed -n 2p "$tmp/$name.err" | grep -q '^usage: fetch ' || fail "$name: no usage hint"
}
usage_case usage_j0 "^fetch: -j: expected a number of workers from 1 to 1024, got '0'" -j 0 "$b/ok"
usage_case usage_jword "^fetch: -j: expected .*, got 'many'" -j many "$b/ok"
usage_case usage_jbig "^fetch: -j: expected .*, got '5000'" --jobs 5000 "$b/ok"
usage_case usage_jneg "^fetch: -j: expected .*, got '-3'" -j -3 "$b/ok"
usage_case usage_t "^fetch: -t: expected a positive duration .*, got 'soon'" -t soon "$b/ok"
usage_case usage_t0 "^fetch: -t: expected a positive duration .*, got '0s'" -t 0s "$b/ok"
usage_case usage_d "^fetch: -d: expected a positive duration .*, got '-1s'" -d -1s "$b/ok"
usage_case usage_dunit "^fetch: -d: expected .*, got '10 parsecs'" --deadline "10 parsecs"
usage_case usage_unknown "^fetch: unknown option '-x'" -x "$b/ok"
usage_case usage_long "^fetch: unknown option '--retrys'" --retrys 3 "$b/ok"
usage_case usage_r "^fetch: -r: expected a number of retries from 0 to 100, got '101'" -r 101 "$b/ok"
usage_case usage_rword "^fetch: -r: expected a number of retries .*, got 'x'" --retries x
usage_case usage_rate0 "^fetch: --rate: expected requests per second .*, got '0'" --rate 0 "$b/ok"
usage_case usage_rateword "^fetch: --rate: expected .*, got '5/min'" --rate 5/min "$b/ok"
usage_case usage_missing "^fetch: -j: expected a value after it" "$b/ok" -j
usage_case usage_missing_long "^fetch: --timeout: expected a value after it" --timeout
run help -h
expect_rc help 0
grep -q '^usage: fetch ' "$tmp/help.out" || fail "help: no usage on standard output"

# ---- the server stops cleanly; no sanitizer spoke -----------------------------------
kill "$srv"
wait "$srv"
st=$?
srv=
[ "$st" -eq 0 ] || fail "the test server exited with status $st"
if grep -El 'Sanitizer|runtime error:' "$tmp"/*.err; then
    fail "sanitizer reports (above files):"
    grep -Eh -A30 'Sanitizer|runtime error:' "$tmp"/*.err | head -80
fi

if [ "$failures" -ne 0 ]; then
    echo "$failures check(s) failed"
    exit 1
fi
echo "fetch: all checks passed"
