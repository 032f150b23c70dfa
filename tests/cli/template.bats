#!/usr/bin/env bats
# The command template: replacement strings, quoting, injection, direct exec vs shell.

load helper

@test "{} {.} {/} {//} {/.} replacement strings" {
    run --separate-stderr "$CREW" -q -k echo '{}:{.}:{/}:{//}:{/.}' ::: dir/sub/file.tar.gz plain .hidden
    [ "$status" -eq 0 ]
    [ "${lines[0]}" = "dir/sub/file.tar.gz:dir/sub/file.tar:file.tar.gz:dir/sub:file.tar" ]
    [ "${lines[1]}" = "plain:plain:plain:.:plain" ]
    [ "${lines[2]}" = ".hidden::.hidden:.:" ]
}

@test "{#} is the job number and {%} the slot number" {
    run --separate-stderr "$CREW" -q -k -j1 echo '{#}-{%}-{}' ::: a b c
    [ "$output" = $'1-1-a\n2-1-b\n3-1-c' ]
    run --separate-stderr "$CREW" -q -j3 echo '{%}' ::: a b c d e f
    for s in $output; do ((s >= 1 && s <= 3)); done
}

@test "{N} and {N.} {N/} {N//} {N/.} pick one source's argument" {
    run --separate-stderr "$CREW" -q -k echo '{2}:{1}' '{1/.}' '{2//}' ::: a/x.c ::: b/y.h
    [ "$output" = "b/y.h:a/x.c x b" ]
    run --separate-stderr "$CREW" -q echo '[{3}]' ::: a ::: b
    [ "$output" = "[]" ]
}

@test "no replacement string: the arguments are appended" {
    run --separate-stderr "$CREW" -q -k echo pre ::: a b ::: 1
    [ "$output" = $'pre a 1\npre b 1' ]
}

@test "no command: each argument is a command line" {
    run --separate-stderr "$CREW" -q -k ::: 'echo one' 'echo two | tr a-z A-Z'
    [ "$output" = $'one\nTWO' ]
}

@test "injection: an input line with shell syntax stays one argument (shell mode)" {
    printf '%s\n' 'x; touch pwned1' '$(touch pwned2)' '`touch pwned3`' "a'b" '*' '> pwned4' >in
    run --separate-stderr "$CREW" -q -k -a in 'echo {} | cat'
    [ "$status" -eq 0 ]
    [ "${lines[0]}" = 'x; touch pwned1' ]
    [ "${lines[1]}" = '$(touch pwned2)' ]
    [ "${lines[2]}" = '`touch pwned3`' ]
    [ "${lines[3]}" = "a'b" ]
    [ "${lines[4]}" = '*' ]
    [ "${lines[5]}" = '> pwned4' ]
    [ ! -e pwned1 ] && [ ! -e pwned2 ] && [ ! -e pwned3 ] && [ ! -e pwned4 ]
}

@test "injection: the same lines exec'd directly are single arguments too" {
    printf '%s\n' 'x; touch pwned1' '$(touch pwned2)' 'a b' >in
    run --separate-stderr "$CREW" -q -k -a in printf %s:
    [ "$output" = 'x; touch pwned1:$(touch pwned2):a b:' ]
    [ ! -e pwned1 ] && [ ! -e pwned2 ]
}

@test "a value with spaces inside a word stays in that word, as the shell would" {
    run --separate-stderr "$CREW" -q printf %s: 'x{}y' ::: 'a b'
    direct=$output
    run --separate-stderr "$CREW" -q "printf %s: x{}y | cat" ::: 'a b'
    [ "$direct" = "xa by:" ]
    [ "$output" = "$direct" ]
}

@test "{} with several sources makes several words, in both modes" {
    run --separate-stderr "$CREW" -q printf %s: '{}' ::: 'a b' ::: c
    [ "$output" = "a b:c:" ]
    run --separate-stderr "$CREW" -q "printf %s: {} | cat" ::: 'a b' ::: c
    [ "$output" = "a b:c:" ]
}

# A $SHELL that leaves a mark each time crew runs it, then behaves as /bin/sh.
marking_shell() {
    mkdir -p shellbin
    printf '#!/bin/sh\necho called >>"%s/mark"\nexec /bin/sh "$@"\n' "$T" >shellbin/sh
    chmod +x shellbin/sh
    export SHELL=$T/shellbin/sh
    rm -f mark
}

@test "a plain command is exec'd directly, without a shell" {
    marking_shell
    for cmd in 'echo {}' '/bin/echo a-b_c.d/e:f,g+h@i%j {}' 'printf %s: x{}y' 'echo {/.} {#} {%}' \
        'env X=1 true {}'; do
        run --separate-stderr "$CREW" -q "$cmd" ::: 1
        [ "$status" -eq 0 ]
        [ ! -e mark ] || { echo "shell for: $cmd"; false; }
    done
}

@test "shell syntax, keywords and builtins make the job run through the shell" {
    marking_shell
    for cmd in 'echo {} | cat' 'echo {}; true' 'echo $HOME' 'echo {} > out' 'A=1 env' \
        'echo "{}"' "echo '{}'" 'echo *' 'echo ~' 'echo a\\b' 'echo {a,b}' 'cd /' 'exit 0' \
        'if true; then echo; fi' '{} x' 'no-such-command-xyz' 'echo (x)' 'echo a#b' 'echo !'; do
        rm -f mark
        run --separate-stderr "$CREW" -q "$cmd" ::: 1
        [ -e mark ] || { echo "direct for: $cmd"; false; }
    done
}

@test "builtins and keywords run through the shell" {
    run --separate-stderr "$CREW" -q -k 'cd /; pwd' ::: 1
    [ "$output" = "/" ]
    run --separate-stderr "$CREW" -q exit ::: 3
    [ "$status" -eq 1 ]
    run --separate-stderr "$CREW" -q -k cd {} ::: / /nonexistent-dir
    [ "$status" -eq 1 ]
}

@test "an unknown command fails like a shell: status 127, a message on stderr" {
    run --separate-stderr "$CREW" -q no-such-command-xyz ::: 1
    [ "$status" -eq 1 ]
    [[ $stderr == *"no-such-command-xyz"* ]]
    run --separate-stderr "$CREW" -q --joblog log no-such-command-xyz ::: 1
    [ "$(cut -f7 log | tail -1)" = 127 ]
}

@test "SHELL: a POSIX shell is used, anything else falls back to /bin/sh" {
    run --separate-stderr env SHELL=/bin/bash "$CREW" -q 'echo ${BASH_VERSION}{} | cut -c1' ::: 1
    [[ $output =~ ^[0-9]$ ]]
    run --separate-stderr env SHELL=/usr/bin/fish "$CREW" -q 'echo ok {} | cat' ::: 1
    [ "$output" = "ok 1" ]
}

@test "--dry-run prints the commands, quoted, and runs nothing" {
    run --separate-stderr "$CREW" --dry-run 'touch {}' ::: 'a b' "it's" plain
    [ "$status" -eq 0 ]
    [ "${lines[0]}" = "touch 'a b'" ]
    [ "${lines[1]}" = "touch 'it'\\''s'" ]
    [ "${lines[2]}" = "touch plain" ]
    [ ! -e plain ]
}

@test "jobs see CREW_SEQ and CREW_SLOT in their environment" {
    run --separate-stderr "$CREW" -q -k -j1 'echo $CREW_SEQ $CREW_SLOT {}' ::: a b
    [ "$output" = $'1 1 a\n2 1 b' ]
}

@test "jobs read /dev/null, not crew's input" {
    run --separate-stderr bash -c "printf 'a\nb\n' | $CREW -q -k 'cat; echo {}'"
    [ "$output" = $'a\nb' ]
}

@test "jobs inherit no descriptor of crew's own (pipes, eventfds, signalfd, files)" {
    # exec: no shell in between that could hold pipes of its own while ls looks.
    printf '#!/bin/sh\nexec ls /proc/self/fd\n' >fds.sh
    chmod +x fds.sh
    # What a process started the same way (by run) inherits, without crew in between.
    run --separate-stderr ./fds.sh </dev/null
    direct=$output
    run --separate-stderr "$CREW" -q --joblog log --timeout 10s ./fds.sh ::: 1
    [ "$output" = "$direct" ]
    run --separate-stderr "$CREW" -q -k -j2 ./fds.sh ::: 1 2
    [ "$output" = "$direct"$'\n'"$direct" ]
}

@test "a program that vanished after crew started: 127 and a message, not a crash" {
    printf '#!/bin/sh\nrm -f ./prog\necho ran {}\n' >prog
    sed -i 's/{}/$1/' prog
    chmod +x prog
    run --separate-stderr "$CREW" -q -k -j1 --joblog log ./prog ::: 1 2
    [ "$status" -eq 1 ]
    [ "$output" = "ran 1" ]
    [[ $stderr == "crew: cannot run ./prog: No such file or directory" ]]
    [ "$(tail -1 log | cut -f1,7)" = $'2\t127' ]
}
