#!/usr/bin/env bats
# --halt and exit statuses.

load helper

@test "exit status: 0 when all succeed, the number failed up to 100, 101 beyond" {
    run --separate-stderr "$CREW" -q true ::: 1 2 3
    [ "$status" -eq 0 ]
    run --separate-stderr "$CREW" -q 'exit $(( {} % 2 ))' ::: 1 2 3 4 5
    [ "$status" -eq 3 ]
    run --separate-stderr "$CREW" -q -j4 false ::: $(seq 100)
    [ "$status" -eq 100 ]
    run --separate-stderr "$CREW" -q -j4 false ::: $(seq 101)
    [ "$status" -eq 101 ]
}

@test "a job killed by a signal counts as failed" {
    run --separate-stderr "$CREW" --joblog log 'kill -USR1 $$; : {}' ::: 1
    [ "$status" -eq 1 ]
    [ "$(tail -1 log | cut -f7,8)" = $'-1\t10' ]
}

@test "--halt now,fail=1: the running jobs are terminated; status of the failed job" {
    run --separate-stderr "$CREW" -j2 --halt now,fail=1 \
        'if [ {} = 1 ]; then while [ ! -e pid.2 ]; do sleep 0.01; done; exit 3; else echo $$ >pid.{}; sleep 30; fi' ::: 1 2 3 4
    [ "$status" -eq 3 ]
    [[ $stderr == *"--halt: terminating the running jobs after job 1"* ]]
    [ ! -e pid.3 ]
    none_alive pid.2
}

@test "--halt soon,fail=2: no new job after the second failure; running ones finish" {
    run --separate-stderr "$CREW" -j1 --halt soon,fail=2 'echo {}; exit {}' ::: 0 1 0 2 0 3 0
    [ "$status" -eq 2 ]
    [ "$output" = $'0\n1\n0\n2' ]
    [[ $stderr == *"--halt: starting no more jobs after job 4"* ]]
}

@test "--halt soon,fail=P%: percentage of all jobs" {
    run --separate-stderr "$CREW" -j1 --halt soon,fail=20% 'exit {}' ::: 0 1 0 0 1 0 0 0 0 0
    # 2 of 10 = 20%: halts after job 5; status is the percentage failed
    [ "$status" -eq 20 ]
    [[ $stderr == *"after job 5"* ]]
}

@test "--halt now,success=1: the first success ends the run with 0" {
    run --separate-stderr "$CREW" -j1 --halt now,success=1 'echo {}; exit {}' ::: 1 1 0 1 1
    [ "$status" -eq 0 ]
    [ "$output" = $'1\n1\n0' ]
}

@test "--halt soon,done=3: stops after three jobs, whatever their result" {
    run --separate-stderr "$CREW" -j1 --halt soon,done=3 'echo {}; exit {}' ::: 0 1 0 0 0
    [ "$output" = $'0\n1\n0' ]
    [ "$status" -eq 1 ]
}

@test "--halt: GNU parallel's old forms" {
    run --separate-stderr "$CREW" -j1 --halt 1 'echo {}; exit {}' ::: 0 5 0
    [ "$status" -eq 5 ]
    [ "$output" = $'0\n5' ]
    run --separate-stderr "$CREW" -j1 --halt never 'exit {}' ::: 1 1
    [ "$status" -eq 2 ]
}

@test "--halt: bad values name the option" {
    for v in later now soon,fail now,fail=0 now,fail=x soon,fail=150% now,crash=1 soon,fail=1.5; do
        run --separate-stderr "$CREW" --halt "$v" echo
        [ "$status" -eq 255 ]
        [[ ${stderr_lines[0]} == "crew: --halt: expected never, or now|soon,fail=N"*", got '$v'" ]]
    done
}
