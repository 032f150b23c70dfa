#!/usr/bin/env bats
# Output: grouped, --keep-order, --line-buffer, --ungroup, --tag, spilling, broken pipes.

load helper

@test "grouped: each job's output is printed whole, never interleaved" {
    # Each job prints 200 lines in 20 bursts, yielding between them.
    run --separate-stderr "$CREW" -q -j4 \
        'for i in $(seq 20); do for k in 1 2 3 4 5 6 7 8 9 10; do echo {}; done; sleep 0.001; done' \
        ::: a b c d e f g h
    [ "$status" -eq 0 ]
    # 8 runs of 200 identical lines: the line changes exactly 7 times.
    changes=$(printf '%s\n' "$output" | uniq | wc -l)
    [ "$changes" -eq 8 ]
    [ "${#lines[@]}" -eq 1600 ]
}

@test "grouped: stdout goes to stdout and stderr to stderr" {
    run --separate-stderr "$CREW" -q 'echo out {}; echo err {} >&2' ::: 1
    [ "$output" = "out 1" ]
    [ "$stderr" = "err 1" ]
}

@test "-k: 10,000 jobs, output byte-identical to the input order" {
    seq 10000 >expected
    "$CREW" -q -k -j8 echo <expected >got
    cmp expected got
}

@test "-k / --keep-order: input order although later jobs finish first" {
    run --separate-stderr "$CREW" -q --keep-order -j8 'sleep 0.$((RANDOM % 5)); echo {}' ::: $(seq 40)
    [ "$status" -eq 0 ]
    [ "$output" = "$(seq 40)" ]
}

@test "-k: a slow first job holds the rest; their output is parked, not lost" {
    # Job 1 waits until every other job has finished; the 1 MB each prints is parked in a
    # spill file meanwhile.
    run --separate-stderr "$CREW" -q -k -j4 \
        'if [ {} = 1 ]; then while [ $(ls done.* 2>/dev/null | wc -l) -lt 30 ]; do sleep 0.02; done; echo first; else head -c 1000000 /dev/zero | tr "\0" {}; echo; touch done.{}; fi' \
        ::: $(seq 31)
    [ "$status" -eq 0 ]
    [ "${lines[0]}" = "first" ]
    [ "${#lines[@]}" -eq 31 ]
    for i in $(seq 2 31); do
        [ "${#lines[$((i - 1))]}" -eq 1000000 ] || { echo "job $i"; false; }
    done
}

@test "a job with output larger than memory buffers (8 MB) comes through intact" {
    "$CREW" -q -k 'head -c 8000000 /dev/urandom | tee in.{}' ::: 1 2 >out
    cat in.1 in.2 | cmp - out
}

@test "--line-buffer: a line is printed as soon as it is complete" {
    "$CREW" -q --line-buffer 'echo first; while [ ! -e go ]; do sleep 0.02; done; echo second {}' ::: 1 >out &
    pid=$!
    wait_until 'grep -q first out'
    grep -qv second out
    touch go
    wait "$pid"
    [ "$(cat out)" = $'first\nsecond 1' ]
}

@test "--line-buffer: lines of different jobs do not mix" {
    run --separate-stderr "$CREW" -q --line-buffer -j3 \
        'for i in $(seq 50); do echo {}{}{}{}{}{}; done' ::: a b c
    [ "$status" -eq 0 ]
    [ "${#lines[@]}" -eq 150 ]
    for l in "${lines[@]}"; do [[ $l =~ ^(aaaaaa|bbbbbb|cccccc)$ ]]; done
}

@test "--line-buffer: a partial last line is printed when its job ends" {
    run --separate-stderr "$CREW" -q --line-buffer -j1 'printf "{}"' ::: x y
    [ "$output" = "xy" ]
}

@test "-u / --ungroup: jobs write straight to crew's stdout" {
    run --separate-stderr "$CREW" -q -u 'echo {}' ::: 1
    [ "$output" = "1" ]
    run --separate-stderr "$CREW" -q --ungroup 'echo e{} >&2' ::: 1
    [ "$stderr" = "e1" ]
}

@test "--tag: each line of stdout and stderr prefixed with the arguments and a tab" {
    run --separate-stderr "$CREW" -q -k --tag 'printf "l1\nl2"; echo e >&2; : {}' ::: a ::: 'b c'
    [ "$output" = $'a b c\tl1\na b c\tl2' ]
    [ "$stderr" = $'a b c\te' ]
}

@test "--tag with --line-buffer" {
    run --separate-stderr "$CREW" -q --tag --line-buffer 'echo x; : {}' ::: t
    [ "$output" = $'t\tx' ]
}

@test "options that cannot be combined are refused by name" {
    run --separate-stderr "$CREW" -u -k echo ::: 1
    [ "$status" -eq 255 ]
    [[ $stderr == "crew: -u/--ungroup: cannot be combined with -k"* ]]
    run --separate-stderr "$CREW" -u --tag echo ::: 1
    [[ $stderr == *"with --tag"* ]]
    run --separate-stderr "$CREW" --line-buffer -k echo ::: 1
    [[ $stderr == "crew: --line-buffer: cannot be combined with -k"* ]]
    run --separate-stderr "$CREW" --json --tag echo ::: 1
    [[ $stderr == "crew: --tag: cannot be combined with --json"* ]]
}

@test "a closed stdout stops crew: no new job, running ones terminated" {
    # head exits after one line; crew must not keep running the rest.
    run bash -c "$CREW -j2 'echo {}; sleep 0.05' ::: \$(seq 2000) | head -1"
    [ "$status" -eq 0 ]
    [[ $output == *"not started"* ]]
}
