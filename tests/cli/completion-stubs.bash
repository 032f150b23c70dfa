# completion-stubs.bash - just enough of bash-completion's helpers to exercise
# cli/crew.bash-completion where the bash-completion package is not installed.
_init_completion() {
    words=("${COMP_WORDS[@]}")
    cword=$COMP_CWORD
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=${COMP_WORDS[COMP_CWORD - 1]}
}
_filedir() { COMPREPLY=($(compgen -f -- "$cur")); }
_command_offset() { COMPREPLY=($(compgen -c -- "$cur")); }
