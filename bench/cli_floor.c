/*
 * cli_floor.c - the floor for the crew command's benchmark: the least a parallel job
 * runner can do.
 *
 *   cli_floor -j N PROGRAM [ARG]... < lines
 *
 * For each line of standard input it runs PROGRAM ARG... LINE with posix_spawn (no shell,
 * no PATH search: PROGRAM is a path), at most N at a time, waiting with waitpid(-1). No
 * output capture, no process groups, no timeouts, no accounting beyond a failure count:
 * whatever crew, xargs -P or GNU parallel spend above this is their own overhead. Exits
 * with the number of failed jobs (at most 100).
 */
#define _GNU_SOURCE
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static int usage(void)
{
    fprintf(stderr, "usage: cli_floor -j N PROGRAM [ARG]... < lines\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 4 || strcmp(argv[1], "-j") != 0)
        return usage();
    int jobs = atoi(argv[2]);
    if (jobs < 1)
        return usage();
    int nfixed = argc - 3;
    char **child = calloc((size_t)nfixed + 2, sizeof *child);
    if (!child)
        return 2;
    memcpy(child, argv + 3, (size_t)nfixed * sizeof *child);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int running = 0, failed = 0, st;
    while ((n = getline(&line, &cap, stdin)) > 0) {
        if (line[n - 1] == '\n')
            line[n - 1] = '\0';
        if (running == jobs) {
            if (wait(&st) > 0 && !(WIFEXITED(st) && WEXITSTATUS(st) == 0))
                failed++;
            running--;
        }
        child[nfixed] = line;
        pid_t pid;
        if (posix_spawn(&pid, child[0], NULL, NULL, child, environ) != 0) {
            failed++;
            continue;
        }
        running++;
    }
    while (running > 0 && wait(&st) > 0) {
        if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
            failed++;
        running--;
    }
    free(line);
    free(child);
    return failed > 100 ? 100 : failed;
}
