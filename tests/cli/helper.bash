# helper.bash - shared setup for the crew command's bats tests.
#
# $CREW is the crew binary under test (CTest passes the one it built). Each test runs in a
# fresh temporary directory. Nothing here sleeps to synchronise: wait_until polls for a
# condition the test can observe (a file, a line of output), with a generous limit, and
# timing is only ever checked against loose upper bounds.

: "${CREW:?set CREW to the crew binary to test}"
export BATS_TEST_TIMEOUT=${BATS_TEST_TIMEOUT:-120}
export LC_ALL=C
bats_require_minimum_version 1.5.0

setup() {
    T=$(mktemp -d "${BATS_TMPDIR:-/tmp}/crew-test.XXXXXX")
    # A sanitizer build writes its reports into files, which teardown turns into failures
    # (a report on stderr could go unnoticed by a test that only checks stdout).
    SANLOG=$T.san
    mkdir -p "$SANLOG"
    export TSAN_OPTIONS="${TSAN_OPTIONS:+$TSAN_OPTIONS:}log_path=$SANLOG/report"
    export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}log_path=$SANLOG/report"
    export UBSAN_OPTIONS="${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}log_path=$SANLOG/report"
    cd "$T" || return 1
}

teardown() {
    cd / && rm -rf "$T"
    local reports=("$SANLOG"/report*)
    if [[ -e ${reports[0]} ]]; then
        cat "${reports[@]}" >&2
        rm -rf "$SANLOG"
        echo "sanitizer reports above" >&2
        return 1
    fi
    rm -rf "$SANLOG"
}

# wait_until CMD [SECONDS]: true once CMD succeeds; false after SECONDS (default 30).
wait_until() {
    local limit=$((SECONDS + ${2:-30}))
    until eval "$1"; do
        ((SECONDS < limit)) || return 1
        sleep 0.02
    done
}

# alive PID: the process exists and is not a zombie.
alive() {
    [[ -r /proc/$1/stat ]] || return 1
    local state
    state=$(sed 's/.*) \(.\).*/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z && $state != X ]]
}

# takes_signal PID SIG: crew PID has set up its signal handling (SIG is blocked, to be read
# from its signalfd), so a signal sent now is handled, not fatal.
takes_signal() {
    local mask
    mask=$(sed -n 's/^SigBlk:[[:space:]]*//p' "/proc/$1/status" 2>/dev/null) || return 1
    [[ -n $mask ]] && (((16#$mask >> ($2 - 1)) & 1))
}

# none_alive FILE...: no pid listed in the files is a live process.
none_alive() {
    local f p
    for f in "$@"; do
        [[ -e $f ]] || continue
        while read -r p; do
            if [[ -n $p ]] && alive "$p"; then
                echo "pid $p (from $f) is still running" >&2
                return 1
            fi
        done <"$f"
    done
}

# elapsed_ms CMD...: runs CMD, sets $status, $output and $ms (wall time).
elapsed_ms() {
    local t0 t1
    t0=$(date +%s%N)
    run "$@"
    t1=$(date +%s%N)
    ms=$(((t1 - t0) / 1000000))
}
