#!/usr/bin/env bats
# The man page and the bash completion say what crew does.

load helper

ROOT=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)

# Every long option crew --help lists.
help_options() {
    "$CREW" --help | grep -o -- '--[a-z][a-z-]*' | sort -u
}

@test "crew.1 formats without a warning" {
    command -v groff >/dev/null || skip "groff is not installed"
    run groff -man -Tutf8 -ww -z "$ROOT/docs/crew.1"
    [ "$status" -eq 0 ]
    [ -z "$output" ]
}

@test "crew.1 describes every option --help lists, and the exit statuses" {
    for opt in $(help_options); do
        roff=$(printf '%s' "$opt" | sed 's/-/\\-/g')
        grep -qF -- "$roff" "$ROOT/docs/crew.1" || { echo "crew.1 lacks $opt"; false; }
    done
    grep -q '^\.SH EXIT STATUS' "$ROOT/docs/crew.1"
    grep -q '^\.SH SIGNALS' "$ROOT/docs/crew.1"
    grep -q '^\.SH EXAMPLES' "$ROOT/docs/crew.1"
}

@test "the bash completion knows every option --help lists" {
    run bash -n "$ROOT/cli/crew.bash-completion"
    [ "$status" -eq 0 ]
    for opt in $(help_options); do
        grep -q -- "$opt\\b" "$ROOT/cli/crew.bash-completion" || { echo "completion lacks $opt"; false; }
    done
}

@test "the bash completion completes options and their values" {
    # With bash-completion installed, its own helpers; else minimal stand-ins for them.
    local lib=/usr/share/bash-completion/bash_completion
    [ -r "$lib" ] || lib=$BATS_TEST_DIRNAME/completion-stubs.bash
    run bash -c "
        source '$lib'
        source '$ROOT/cli/crew.bash-completion'
        complete_words() { COMP_WORDS=(\"\$@\"); COMP_CWORD=\$((\$# - 1)); COMP_LINE=\"\$*\"; COMP_POINT=\${#COMP_LINE}; _crew; printf '%s\n' \"\${COMPREPLY[@]}\"; }
        complete_words crew --time
        complete_words crew --halt now,f
        complete_words crew -j2 --retr
    "
    [[ $output == *"--timeout"* ]]
    [[ $output == *"now,fail=1"* ]]
    [[ $output == *"--retries"* && $output == *"--retry-delay"* ]]
}

@test "the demo jobs file shows a retry, a timeout and ordered output" {
    run --separate-stderr "$CREW" -k -j4 --bar --timeout 1s --retries 1 --retry-delay 100ms \
        -a "$ROOT/cli/demo.jobs"
    [ "$status" -eq 1 ]
    [ "${#lines[@]}" -eq 15 ]
    for i in $(seq 15); do [[ ${lines[$((i - 1))]} == "$(printf %02d "$i") "* ]]; done
    [[ $stderr == *"job 1 exited with 1: try 2 of 2"* ]]
    [[ $stderr == *"job 2 timed out after 1.00s"* ]]
    [[ $stderr == *"14 ok, 1 failed (1 timed out), 2 retried, 0 not started"* ]]
}
