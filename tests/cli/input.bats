#!/usr/bin/env bats
# Argument sources: stdin, -a, :::, ::::, -0, -d, combinations, laziness.

load helper

@test "stdin: one job per line, last line without a newline counts" {
    run --separate-stderr bash -c "printf 'a\nb\nc' | $CREW -q -k echo"
    [ "$status" -eq 0 ]
    [ "$output" = $'a\nb\nc' ]
}

@test "stdin: an empty line is an empty argument" {
    printf 'a\n\nb\n' >in
    run --separate-stderr "$CREW" -q -k -a in "printf '<%s>\\n'"
    [ "$status" -eq 0 ]
    [ "$output" = $'<a>\n<>\n<b>' ]
}

@test "empty input runs nothing and exits 0" {
    run --separate-stderr bash -c "$CREW -q echo x </dev/null"
    [ "$status" -eq 0 ]
    [ -z "$output" ]
}

@test "-a FILE and --arg-file FILE" {
    printf '1\n2\n' >args
    run --separate-stderr "$CREW" -q -k -a args echo
    [ "$output" = $'1\n2' ]
    run --separate-stderr "$CREW" -q -k --arg-file args echo
    [ "$output" = $'1\n2' ]
}

@test "-a: a missing file is an error (255)" {
    run --separate-stderr "$CREW" -q -a nosuchfile echo
    [ "$status" -eq 255 ]
    [[ $stderr == *"cannot read nosuchfile"* ]]
}

@test "::: gives the arguments; several groups give every combination in order" {
    run --separate-stderr "$CREW" -q -k echo ::: a b ::: 1 2 3
    [ "$status" -eq 0 ]
    [ "$output" = $'a 1\na 2\na 3\nb 1\nb 2\nb 3' ]
}

@test ":::: FILE reads a source from each file; mixes with :::" {
    printf 'x\ny\n' >f1
    run --separate-stderr "$CREW" -q -k echo :::: f1 ::: 1 2
    [ "$output" = $'x 1\nx 2\ny 1\ny 2' ]
}

@test "stdin streamed first, combined with a ::: group" {
    run --separate-stderr bash -c "printf 'a\nb\n' | $CREW -q -k -a - echo ::: 1 2"
    [ "$output" = $'a 1\na 2\nb 1\nb 2' ]
}

@test "an empty ::: group means no jobs" {
    run --separate-stderr "$CREW" -q echo ::: a ::: 
    [ "$status" -eq 0 ]
    [ -z "$output" ]
}

@test "-0 / --null: NUL-separated arguments keep newlines" {
    run --separate-stderr bash -c "printf 'a\nb\0c\0' | $CREW -q -k -0 printf '[%s]'"
    [ "$output" = $'[a\nb][c]' ]
    run --separate-stderr bash -c "printf 'x\0' | $CREW -q --null echo"
    [ "$output" = "x" ]
}

@test "-d DELIM and --delimiter with escapes" {
    run --separate-stderr bash -c "printf 'a,b,c' | $CREW -q -k -d , echo"
    [ "$output" = $'a\nb\nc' ]
    run --separate-stderr bash -c "printf 'a\tb' | $CREW -q -k --delimiter '\\t' echo"
    [ "$output" = $'a\nb' ]
}

@test "-d: more than one character is an error naming the option" {
    run --separate-stderr "$CREW" -d ab echo
    [ "$status" -eq 255 ]
    [[ ${stderr_lines[0]} == "crew: -d: expected one character"* ]]
    [[ ${stderr_lines[1]} == "Try 'crew --help'"* ]]
}

@test "endless input is read lazily: memory stays flat and --halt ends it" {
    # 'yes' never ends: a runner that reads its input whole never finishes.
    run --separate-stderr bash -c "yes | /usr/bin/time -f '%M' $CREW -q -j2 --queue 4 --halt soon,done=300 true"
    [ "$status" -eq 0 ]
    rss_kb=${stderr_lines[-1]}
    echo "peak RSS ${rss_kb} kB" >&3
    ((rss_kb < 64 * 1024))
}

@test "--queue N: at most N jobs read ahead of the running ones" {
    # One slow job at -j1 with --queue 2: only a few lines are taken from the pipe, the
    # rest stays unread until jobs finish.
    mkfifo fifo
    "$CREW" -q -j1 --queue 2 'touch started.{}; while [ ! -e go ]; do sleep 0.02; done' <fifo &
    pid=$!
    exec 7>fifo
    for i in $(seq 1 20); do echo "$i" >&7; done
    wait_until '[ -e started.1 ]'
    # Lines 2.. wait in the pipe buffer or the read-ahead; none started.
    [ ! -e started.2 ]
    touch go
    exec 7>&-
    wait "$pid"
    [ -e started.20 ]
}

@test "--queue: bad values name the option" {
    run --separate-stderr "$CREW" --queue 0 echo
    [ "$status" -eq 255 ]
    [[ $stderr == "crew: --queue: expected a number of jobs from 1"* ]]
}

@test ":::: with no file, and stdin as a later source, are errors" {
    run --separate-stderr "$CREW" echo ::::
    [ "$status" -eq 255 ]
    [ "${stderr_lines[0]}" = "crew: ::::: expected at least one FILE after it" ]
    run --separate-stderr "$CREW" echo ::: a :::: -
    [ "$status" -eq 255 ]
    [ "${stderr_lines[0]}" = "crew: -a -: standard input can only be the first source" ]
}
