#!/usr/bin/env bats
# Signals: drain on the first, terminate on the second, kill on the third; nothing left.

load helper

# Starts crew in the background on N jobs that each record their pid, trap SIGTERM (to
# write term.SEQ and exit 7 when $1 is "trap", or to ignore it when $1 is "ignore") and
# wait for the file "go". Sets $pid; waits until $2 jobs run.
start_jobs() {
    local mode=$1 running=$2 n=$3
    local body='echo $$ >pid.{}; while [ ! -e go ]; do sleep 0.02; done; echo done {}'
    case $mode in
    trap) body="trap 'echo term >term.{}; exit 7' TERM; $body" ;;
    ignore) body="trap '' TERM; $body" ;;
    esac
    # A background job of a script starts with SIGINT ignored, and crew keeps it so.
    env --default-signal=INT "$CREW" -j"$running" "$body" ::: $(seq "$n") >out 2>err &
    pid=$!
    wait_until "[ \$(ls pid.* 2>/dev/null | wc -l) -eq $running ]"
}

# Waits for crew ($pid) and checks that its exit status is $1.
expect_exit() {
    status=0
    wait "$pid" || status=$?
    [ "$status" -eq "$1" ]
}

# Lets the jobs finish (the file "go"), then expect_exit $1.
release_and_expect() {
    touch go
    expect_exit "$1"
}

@test "first SIGINT: no new job starts, running ones finish, summary printed, 130" {
    start_jobs plain 2 6
    kill -INT "$pid"
    wait_until 'grep -q "starting no more jobs" err'
    release_and_expect 130
    [ "$(grep -c '^done' out)" -eq 2 ]
    [ ! -e pid.3 ]
    grep -q "2 ok, 0 failed (0 timed out), 0 retried, 4 not started" err
}

@test "first SIGTERM drains too (exit 143); SIGHUP drains (129)" {
    start_jobs plain 1 3
    kill -TERM "$pid"
    wait_until 'grep -q "SIGTERM: starting no more jobs" err'
    release_and_expect 143
    rm -f go pid.*
    start_jobs plain 1 3
    kill -HUP "$pid"
    wait_until 'grep -q "SIGHUP: starting no more jobs" err'
    kill -HUP "$pid" # only drains, never escalates
    release_and_expect 129
    [ "$(grep -c '^done' out)" -eq 1 ]
}

@test "second SIGINT: every running job's group gets SIGTERM" {
    start_jobs trap 2 4
    kill -INT "$pid"
    wait_until 'grep -q "starting no more jobs" err'
    kill -INT "$pid"
    expect_exit 130
    [ -e term.1 ] && [ -e term.2 ]
    grep -q "terminating 2 running jobs" err
    grep -q "0 ok, 2 failed" err
    none_alive pid.*
}

@test "third signal: SIGKILL for jobs that ignore SIGTERM" {
    start_jobs ignore 2 2
    kill -INT "$pid"
    wait_until 'grep -q "starting no more jobs" err'
    kill -INT "$pid"
    wait_until 'grep -q "terminating" err'
    kill -TERM "$pid"
    expect_exit 143
    grep -q "killing every job" err
    none_alive pid.*
}

@test "second signal: jobs ignoring SIGTERM get SIGKILL after --kill-after" {
    env --default-signal=INT "$CREW" -j1 --kill-after 200ms "trap '' TERM; echo \$\$ >pid.{}; sleep 30 & wait" ::: 1 >out 2>err &
    pid=$!
    wait_until '[ -s pid.1 ]'
    kill -INT "$pid"
    wait_until 'grep -q "starting no more jobs" err'
    kill -INT "$pid"
    expect_exit 130
    none_alive pid.1
}

@test "nothing is left running after crew exits, even orphans of a drained run" {
    env --default-signal=INT "$CREW" -j2 'setsid sh -c "echo \$\$ >orphan.{}; exec sleep 30" & echo $$ >pid.{}; sleep 30' ::: 1 2 >out 2>err &
    pid=$!
    wait_until '[ -s orphan.1 ] && [ -s orphan.2 ] && [ -s pid.1 ] && [ -s pid.2 ]'
    kill -INT "$pid"
    wait_until 'grep -q "starting no more jobs" err'
    kill -INT "$pid"
    expect_exit 130
    none_alive pid.1 pid.2 orphan.1 orphan.2
}

@test "a run of one job (no supervisor thread): a signal drains, no orphan outlives it" {
    env --default-signal=INT "$CREW" 'setsid sh -c "echo \$\$ >orphan.{}; exec sleep 30" & echo $$ >pid.{}; while [ ! -e go ]; do sleep 0.02; done' ::: 1 >out 2>err &
    pid=$!
    wait_until '[ -s orphan.1 ] && [ -s pid.1 ]'
    kill -INT "$pid"
    wait_until 'grep -q "SIGINT: starting no more jobs; waiting for 1 running" err'
    release_and_expect 130
    grep -q "1 ok, 0 failed" err
    none_alive pid.1 orphan.1
}

@test "a signal while crew waits for more input stops the reading" {
    mkfifo fifo
    env --default-signal=INT "$CREW" 'echo $$ >pid.{}' <fifo >out 2>err &
    pid=$!
    exec {w}>fifo # held open: crew waits for more input after the first job
    echo 1 >&"$w"
    wait_until '[ -s pid.1 ]'
    kill -INT "$pid"
    wait_until 'grep -q "SIGINT: starting no more jobs" err'
    status=0
    wait "$pid" || status=$?
    exec {w}>&-
    [ "$status" -eq 130 ]
    grep -q "1 ok, 0 failed" err
}

@test "a signal ignored when crew starts stays ignored (nohup, background jobs)" {
    "$CREW" -j1 'echo $$ >pid.{}; while [ ! -e go ]; do sleep 0.02; done; echo done {}' ::: 1 >out 2>err &
    pid=$!
    wait_until '[ -s pid.1 ]'
    kill -INT "$pid" # bats starts background jobs with SIGINT ignored
    release_and_expect 0
    ! grep -q SIGINT err
}

@test "jobs keep the signals ignored when crew starts, but SIGPIPE is back to default" {
    (trap '' HUP PIPE && "$CREW" -q grep SigIgn {} ::: /proc/self/status) >out
    mask=$(awk '{print $2}' out)
    ((16#$mask & 0x1))          # SIGHUP (1) stays ignored
    ((!(16#$mask & 0x1000)))    # SIGPIPE (13) does not
    "$CREW" -q grep SigIgn {} ::: /proc/self/status >out
    mask=$(awk '{print $2}' out)
    ((!(16#$mask & 0x1001)))
}
