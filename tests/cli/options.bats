#!/usr/bin/env bats
# The remaining options: help, version, -j, progress, JSON, metrics, admission, pacing.

load helper

@test "--help and -h print the usage on stdout and exit 0" {
    run --separate-stderr "$CREW" --help
    [ "$status" -eq 0 ]
    [[ ${lines[0]} == "Usage: crew [OPTION]..."* ]]
    for opt in --arg-file --null --delimiter --queue --jobs --dry-run --timeout --kill-after \
        --retries --retry-delay --rate --delay --memfree --load --halt --keep-order \
        --line-buffer --ungroup --tag --json --joblog --resume --resume-failed --bar --eta \
        --metrics --quiet --version; do
        [[ $output == *"$opt"* ]] || { echo "missing $opt"; false; }
    done
    run --separate-stderr "$CREW" -h
    [ "$status" -eq 0 ]
}

@test "--version and -V" {
    run --separate-stderr "$CREW" --version
    [ "$status" -eq 0 ]
    [[ $output =~ ^crew\ [0-9]+\.[0-9]+\.[0-9]+\ \(libcrew\ [0-9.]+\)$ ]]
    run --separate-stderr "$CREW" -V
    [ "$status" -eq 0 ]
}

@test "unknown options: one line naming the option, a usage hint, 255" {
    run --separate-stderr "$CREW" --frobnicate echo
    [ "$status" -eq 255 ]
    [ "${stderr_lines[0]}" = "crew: --frobnicate: unknown option" ]
    [ "${stderr_lines[1]}" = "Try 'crew --help' for more information." ]
    [ "${#stderr_lines[@]}" -eq 2 ]
    run --separate-stderr "$CREW" -x echo
    [ "${stderr_lines[0]}" = "crew: -x: unknown option" ]
    run --separate-stderr "$CREW" -j
    [ "${stderr_lines[0]}" = "crew: -j: expected a value after it" ]
}

@test "options end at the command: its own options are not crew's" {
    run --separate-stderr "$CREW" -q -k echo -n -k ::: a
    [ "$output" = "-k a" ]
}

@test "-j N, -j N%, -j +N, -j -N, --jobs; bad values" {
    run --separate-stderr "$CREW" -q -j3 'echo {%}' ::: 1 2 3 4 5 6
    [ "$(printf '%s\n' "${lines[@]}" | sort -u | wc -l)" -le 3 ]
    for v in 1 50% 200% +1 -1 -100; do
        run --separate-stderr "$CREW" -q -j "$v" true ::: 1
        [ "$status" -eq 0 ] || { echo "-j $v"; false; }
    done
    run --separate-stderr "$CREW" -q --jobs 2 true ::: 1
    [ "$status" -eq 0 ]
    for v in 0 x 1.5 0% -x; do
        run --separate-stderr "$CREW" -j "$v" true ::: 1
        [ "$status" -eq 255 ]
        [ "${stderr_lines[0]}" = "crew: -j: expected a number of jobs (N >= 1, N%, +N or -N), got '$v'" ]
    done
}

@test "-j N: at most N jobs run at once" {
    run --separate-stderr "$CREW" -q -j3 \
        'mkdir -p run; touch run/{}; n=$(ls run | wc -l); echo $n; sleep 0.05; rm run/{}' ::: $(seq 12)
    for n in "${lines[@]}"; do ((n <= 3)); done
}

@test "the summary line on stderr; -q removes it" {
    run --separate-stderr "$CREW" 'exit {}' ::: 0 1
    [[ ${stderr_lines[-1]} =~ ^crew:\ 1\ ok,\ 1\ failed\ \(0\ timed\ out\),\ 0\ retried,\ 0\ not\ started,\ [0-9.]+s$ ]]
    run --separate-stderr "$CREW" -q 'exit {}' ::: 0 1
    [ -z "$stderr" ]
}

@test "--bar: nothing when stderr is not a terminal" {
    run --separate-stderr "$CREW" -q --bar true ::: 1 2
    [ "$status" -eq 0 ]
    [ -z "$stderr" ]
}

@test "--bar on a terminal: done/total, rate and ETA" {
    command -v script >/dev/null || skip "script(1) is not installed"
    run script -qec "$CREW -q --bar -j2 'sleep 0.3; : {}' ::: 1 2 3 4" /dev/null
    [ "$status" -eq 0 ]
    [[ $output == *"[##############################] 4/4 "*"/s ETA "* ]]
}

@test "--eta: lines with the time left when stderr is not a terminal" {
    run --separate-stderr "$CREW" -q --eta true ::: 1 2 3
    [ "$status" -eq 0 ]
    [[ ${stderr_lines[-1]} =~ ^ETA:\ [0-9.a-z]+\ Left:\ 0\ AVG:\ [0-9.]+s$ ]]
}

@test "--json: one valid object per job with seq, args, exit, signal, runtime, output" {
    run --separate-stderr "$CREW" -q -k --json 'printf "out\n\001\377"; echo err >&2; exit {2}' ::: a ::: 0 3
    [ "$status" -eq 1 ]
    [ "${#lines[@]}" -eq 2 ]
    [[ ${lines[0]} == '{"seq":1,"args":["a","0"],"command":'* ]]
    [[ ${lines[0]} == *'"exit":0,"signal":0,"timed_out":false,"attempts":1,"slot":'* ]]
    [[ ${lines[0]} == *'"stdout":"out\n\u0001'$'\xef\xbf\xbd''","stderr":"err\n"}' ]]
    [[ ${lines[1]} == *'"exit":3,'* ]]
    if command -v jq >/dev/null; then
        printf '%s\n' "$output" | jq -e 'select(.seq == 2) | .args[1] == "3" and .runtime >= 0'
    fi
}

@test "--json: a timed-out job" {
    run --separate-stderr "$CREW" -q --json --timeout 100ms sleep ::: 30
    [[ $output == *'"exit":-1,"signal":15,"timed_out":true,'* ]]
}

# GET PATH from 127.0.0.1:PORT with bash's /dev/tcp; prints the response.
http_get() {
    exec 9<>"/dev/tcp/127.0.0.1/$1"
    printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$2" >&9
    cat <&9
    exec 9<&-
}

@test "--metrics: Prometheus text over HTTP on loopback while jobs run" {
    "$CREW" --metrics 0 -j2 'while [ ! -e go ]; do sleep 0.02; done; : {}' ::: 1 2 3 >out 2>err &
    pid=$!
    wait_until 'grep -q "metrics on http://127.0.0.1:" err'
    port=$(sed -n 's|.*metrics on http://127.0.0.1:\([0-9]*\)/metrics.*|\1|p' err)
    run http_get "$port" /metrics
    [[ $output == "HTTP/1."?" 200 OK"* ]]
    [[ $output == *'crew_jobs_submitted_total{pool="crew"}'* ]]
    [[ $output == *'crew_busy_workers{pool="crew"} 2'* ]]
    [[ $output == *'crew_command_jobs_total{result="ok"} 0'* ]]
    run http_get "$port" /other
    [[ $output == "HTTP/1."?" 404"* ]]
    touch go
    wait "$pid"
}

@test "--metrics: bad addresses name the option" {
    run --separate-stderr "$CREW" --metrics nonsense echo ::: 1
    [ "$status" -eq 255 ]
    [[ ${stderr_lines[0]} == "crew: --metrics: expected [HOST:]PORT"* ]]
    run --separate-stderr "$CREW" --metrics 99999 echo ::: 1
    [ "$status" -eq 255 ]
}

@test "--memfree: a job starts when enough memory is free; held back otherwise" {
    run --separate-stderr "$CREW" -q --memfree 1M echo ::: ok
    [ "$output" = "ok" ]
    env --default-signal=INT "$CREW" --memfree 1000T touch ran ::: 1 >out 2>err &
    pid=$!
    # Nothing starts; SIGINT ends the wait.
    wait_until "takes_signal $pid 2"
    kill -INT "$pid"
    status=0
    wait "$pid" || status=$?
    [ "$status" -eq 130 ]
    [ ! -e ran ]
    grep -q "1 not started" err
    run --separate-stderr "$CREW" --memfree lots echo
    [ "$status" -eq 255 ]
    [[ ${stderr_lines[0]} == "crew: --memfree: expected a size such as 500M"* ]]
}

@test "--load: jobs start while the run queue is below N" {
    run --separate-stderr "$CREW" -q --load 100000 echo ::: ok
    [ "$output" = "ok" ]
    run --separate-stderr "$CREW" --load high echo
    [ "$status" -eq 255 ]
    [[ ${stderr_lines[0]} == "crew: --load: expected a number of runnable tasks"* ]]
}

@test "--rate: starts spaced by 1/rate" {
    elapsed_ms "$CREW" -q -j4 --rate 20/s true ::: $(seq 10)
    [ "$status" -eq 0 ]
    ((ms >= 400)) # 10 starts at 20/s: at least 9 gaps of 50 ms
    run --separate-stderr "$CREW" --rate 0 echo
    [ "$status" -eq 255 ]
    [[ ${stderr_lines[0]} == "crew: --rate: expected a rate such as 10, 10/s, 30/m or 100/h"* ]]
    run --separate-stderr "$CREW" -q --rate 600/m true ::: 1
    [ "$status" -eq 0 ]
}

@test "--delay: at least DUR between two starts" {
    elapsed_ms "$CREW" -q -j4 --delay 100ms true ::: 1 2 3 4 5
    ((ms >= 400))
    run --separate-stderr "$CREW" --delay x echo
    [ "$status" -eq 255 ]
    [[ ${stderr_lines[0]} == "crew: --delay: expected a duration"* ]]
}

@test "--metrics: a port already in use is an error before anything runs" {
    "$CREW" --metrics 0 'while [ ! -e go ]; do sleep 0.02; done; : {}' ::: 1 >out 2>err &
    pid=$!
    wait_until 'grep -q "metrics on http://127.0.0.1:" err'
    port=$(sed -n 's|.*metrics on http://127.0.0.1:\([0-9]*\)/metrics.*|\1|p' err)
    run --separate-stderr "$CREW" --metrics "127.0.0.1:$port" touch ran ::: 1
    [ "$status" -eq 255 ]
    [ "${stderr_lines[0]}" = "crew: --metrics 127.0.0.1:$port: cannot listen there" ]
    [ ! -e ran ]
    touch go
    wait "$pid"
}
