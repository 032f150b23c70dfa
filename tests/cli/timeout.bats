#!/usr/bin/env bats
# --timeout, --kill-after, grandchildren and orphans, --retries, --retry-delay.

load helper

@test "--timeout: the job's group gets SIGTERM; the job counts as failed and timed out" {
    elapsed_ms "$CREW" --timeout 200ms 'sleep 30; : {}' ::: 1
    [ "$status" -eq 1 ]
    [[ $output == *"job 1 timed out after 0.20s (--timeout)"* ]]
    [[ $output == *"0 ok, 1 failed (1 timed out)"* ]]
    ((ms < 10000))
}

@test "--timeout: jobs that finish in time are not touched" {
    run --separate-stderr "$CREW" -q -k --timeout 30s 'echo {}' ::: a b
    [ "$status" -eq 0 ]
    [ "$output" = $'a\nb' ]
}

@test "--timeout fires from a timer, not at the end of a polling period" {
    # A 300 ms budget ends a 30 s job well within 6 s even on a loaded machine.
    elapsed_ms "$CREW" -q --timeout 300ms sleep ::: 30
    [ "$status" -eq 1 ]
    ((ms >= 300 && ms < 6000))
}

@test "--kill-after: a job that ignores SIGTERM gets SIGKILL" {
    run --separate-stderr "$CREW" -q --joblog log --timeout 100ms --kill-after 200ms \
        'trap "" TERM; echo $$ >pid; sleep 30 & wait; : {}' ::: 1
    [ "$status" -eq 1 ]
    [ "$(cut -f7,8 log | tail -1)" = $'-1\t9' ]
    none_alive pid
}

@test "--timeout kills grandchildren in the job's group" {
    run --separate-stderr "$CREW" -q --timeout 200ms \
        'sh -c "echo \$\$ >gc1; sleep 30" & sh -c "echo \$\$ >gc2; sleep 30" & wait; : {}' ::: 1
    [ "$status" -eq 1 ]
    wait_until '[ -s gc1 ] && [ -s gc2 ]'
    none_alive gc1 gc2
}

@test "--timeout kills a grandchild that left the group with setsid" {
    run --separate-stderr "$CREW" -q --timeout 300ms \
        'setsid sh -c "echo \$\$ >escaped; sleep 30" & while [ ! -s escaped ]; do sleep 0.01; done; sleep 30; : {}' ::: 1
    [ "$status" -eq 1 ]
    none_alive escaped
}

@test "a finished job's leftovers are terminated: background and setsid'd children" {
    run --separate-stderr "$CREW" -q \
        'sleep 30 & echo $! >bg; setsid sh -c "echo \$\$ >sid; exec sleep 30" & while [ ! -s sid ]; do sleep 0.01; done; echo {}' ::: 1
    [ "$status" -eq 0 ]
    [ "$output" = "1" ]
    none_alive bg sid
}

@test "leftovers of a job are killed while other jobs run on" {
    # Job 1 leaves a setsid'd child behind and ends; job 2 waits until that child is gone.
    run --separate-stderr "$CREW" -q -j2 --kill-after 100ms \
        'if [ {} = 1 ]; then setsid sh -c "trap \"\" TERM; echo \$\$ >left; sleep 30" & while [ ! -s left ]; do sleep 0.01; done; else while [ ! -s left ]; do sleep 0.01; done; while kill -0 $(cat left) 2>/dev/null; do sleep 0.02; done; echo reaped; fi' ::: 1 2
    [ "$status" -eq 0 ]
    [ "$output" = "reaped" ]
}

@test "--timeout and --kill-after: bad durations name the option" {
    run --separate-stderr "$CREW" --timeout 10x echo
    [ "$status" -eq 255 ]
    [ "${stderr_lines[0]}" = "crew: --timeout: expected a duration such as 500ms, 30s or 1m30s (above 0), got '10x'" ]
    run --separate-stderr "$CREW" --timeout 0 echo
    [ "$status" -eq 255 ]
    run --separate-stderr "$CREW" --kill-after -1s echo
    [ "$status" -eq 255 ]
    [[ ${stderr_lines[0]} == "crew: --kill-after: expected a duration"* ]]
    run --separate-stderr "$CREW" --timeout
    [ "$status" -eq 255 ]
    [ "${stderr_lines[0]}" = "crew: --timeout: expected a value after it" ]
}

@test "--retries N: a failing job runs again, up to N more times" {
    run --separate-stderr "$CREW" --retries 3 --retry-delay 0 \
        'n=$(cat n.{} 2>/dev/null || echo 0); n=$((n+1)); echo $n >n.{}; echo try $n; [ $n -ge 3 ]' ::: a
    [ "$status" -eq 0 ]
    [ "$output" = "try 3" ]
    [[ $stderr == *"1 ok, 0 failed (0 timed out), 2 retried"* ]]
}

@test "--retries: a job still failing after them counts once as failed" {
    run --separate-stderr "$CREW" --retries 2 --retry-delay 1ms --joblog log 'echo x >>tries.{}; exit 4' ::: a
    [ "$status" -eq 1 ]
    [ "$(wc -l <tries.a)" -eq 3 ]
    [ "$(tail -1 log | cut -f1,7)" = $'1\t4' ]
    [[ $stderr == *"0 ok, 1 failed (0 timed out), 2 retried"* ]]
}

@test "--retries with --timeout: each attempt has its own budget" {
    run --separate-stderr "$CREW" --retries 1 --retry-delay 0 --timeout 200ms \
        'if [ -e first.{} ]; then echo ok; else touch first.{}; sleep 30; fi' ::: a
    [ "$status" -eq 0 ]
    [ "$output" = "ok" ]
}

@test "--retry-delay: backoff with full jitter, bounded by base * 2^(n-1)" {
    # Three retries with a 100 ms base wait at most 100 + 200 + 400 ms (10 s: a loaded machine).
    elapsed_ms "$CREW" -q --retries 3 --retry-delay 100ms false ::: 1
    [ "$status" -eq 1 ]
    ((ms < 10000))
    run --separate-stderr "$CREW" --retry-delay soon echo
    [ "$status" -eq 255 ]
    [[ $stderr == "crew: --retry-delay: expected a duration"* ]]
    run --separate-stderr "$CREW" --retries -1 echo
    [ "$status" -eq 255 ]
    [[ $stderr == "crew: --retries: expected a number of retries"* ]]
}
