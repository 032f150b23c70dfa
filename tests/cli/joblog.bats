#!/usr/bin/env bats
# --joblog, --resume, --resume-failed.

load helper

@test "--joblog: GNU parallel's header and one tab-separated line per job" {
    run --separate-stderr "$CREW" -q -j1 --joblog log 'printf {}; exit {}' ::: 0 3
    [ "$status" -eq 1 ]
    [ "$(head -1 log)" = $'Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand' ]
    [ "$(wc -l <log)" -eq 3 ]
    IFS=$'\t' read -r seq host start runtime send recv exitval sig cmd < <(sed -n 3p log)
    [ "$seq" = 2 ] && [ "$host" = ":" ] && [ "$send" = 0 ] && [ "$recv" = 1 ]
    [ "$exitval" = 3 ] && [ "$sig" = 0 ] && [ "$cmd" = "printf 3; exit 3" ]
    [[ $start =~ ^[0-9]{10}\.[0-9]{3}$ ]]
    [[ $runtime =~ ^\ *[0-9]+\.[0-9]{3}$ ]] && [ "${#runtime}" -ge 10 ]
}

@test "--joblog: a timed-out job has Exitval -1 and its signal" {
    run --separate-stderr "$CREW" -q --joblog log --timeout 100ms sleep ::: 30
    [ "$(tail -1 log | cut -f7,8)" = $'-1\t15' ]
}

@test "--joblog: an unwritable file is an error before anything runs" {
    run --separate-stderr "$CREW" -q --joblog /nonexistent/dir/log touch {} ::: x
    [ "$status" -eq 255 ]
    [[ $stderr == "crew: --joblog /nonexistent/dir/log: cannot open it"* ]]
    [ ! -e x ]
}

@test "--resume: jobs listed in the joblog are skipped; new lines appended" {
    "$CREW" -q --joblog log --halt soon,done=2 -j1 'echo {} >>ran' ::: a b c d || true
    [ "$(cat ran)" = $'a\nb' ]
    run --separate-stderr "$CREW" --joblog log --resume -j1 'echo {} >>ran' ::: a b c d
    [ "$status" -eq 0 ]
    [ "$(cat ran)" = $'a\nb\nc\nd' ]
    [ "$(grep -c '^Seq' log)" -eq 1 ]
    [ "$(tail -n +2 log | cut -f1 | sort | tr '\n' ' ')" = "1 2 3 4 " ]
    [[ $stderr == *"2 already done"* ]]
}

@test "--resume-failed: failed jobs run again, succeeded ones do not" {
    "$CREW" -q --joblog log -j1 'echo {} >>ran; exit {}' ::: 0 1 0 2 || true
    : >ran
    run --separate-stderr "$CREW" -q --joblog log --resume-failed -j1 'echo {} >>ran; [ {} = 1 ]' ::: 0 1 0 2
    [ "$status" -eq 1 ]
    [ "$(cat ran)" = $'1\n2' ]
    # job 4 failed again, job 2 now succeeded: only job 4 runs next time
    : >ran
    run --separate-stderr "$CREW" -q --joblog log --resume-failed -j1 'echo {} >>ran' ::: 0 1 0 2
    [ "$(cat ran)" = "2" ]
}

@test "--resume with -k keeps the order of the jobs that do run" {
    printf 'Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n2\t:\t0\t0\t0\t0\t0\t0\tx\n' >log
    run --separate-stderr "$CREW" -q -k --joblog log --resume echo ::: a b c
    [ "$output" = $'a\nc' ]
}

@test "--resume without --joblog is an error" {
    run --separate-stderr "$CREW" --resume echo ::: a
    [ "$status" -eq 255 ]
    [ "${stderr_lines[0]}" = "crew: --resume: needs --joblog FILE to read" ]
    run --separate-stderr "$CREW" --resume-failed echo ::: a
    [ "${stderr_lines[0]}" = "crew: --resume-failed: needs --joblog FILE to read" ]
}
