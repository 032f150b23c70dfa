/*
 * group_crew.c - crew's error group running many tiny tasks, each one atomic add, with a
 * limit of 8 or without: the crew side of bench/run-group, against Go's errgroup
 * (bench/go/group.go).
 *
 * Usage: bench_group_crew <limit8|nolimit> <scale>. Runs 100000 x scale tasks through one
 * group on its own pool (crew_group_create with opts.limit 8 or 0, crew_group_go per task,
 * crew_group_wait) and prints `mode ns_per_task=X tasks=N`: the time from the first go to
 * wait's return divided by the tasks. Creating the group (and its pool's threads) is not
 * timed, as Go's goroutines need no such step.
 */
#include <crew.h>

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Atomic long count;

static int tiny(crew_ctx *ctx, void *arg)
{
    (void)ctx;
    (void)arg;
    atomic_fetch_add_explicit(&count, 1, memory_order_relaxed);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3 || (strcmp(argv[1], "limit8") != 0 && strcmp(argv[1], "nolimit") != 0)) {
        fprintf(stderr, "usage: bench_group_crew <limit8|nolimit> <scale>\n");
        return 2;
    }
    double scale = atof(argv[2]);
    if (!(scale > 0)) {
        fprintf(stderr, "bench_group_crew: bad scale\n");
        return 2;
    }
    long n = (long)(100000 * scale);
    n = n < 1 ? 1 : n;
    crew_group *g;
    unsigned limit = strcmp(argv[1], "limit8") == 0 ? 8 : 0;
    int rc = crew_group_create(&g, &(crew_group_opts){.limit = limit});
    if (rc != 0) {
        fprintf(stderr, "bench_group_crew: %s\n", crew_strerror(rc));
        return 1;
    }
    int64_t start = crew_now();
    for (long i = 0; i < n; i++) {
        if ((rc = crew_group_go(g, tiny, NULL, CREW_FOREVER, NULL)) != 0) {
            fprintf(stderr, "bench_group_crew: go: %s\n", crew_strerror(rc));
            return 1;
        }
    }
    rc = crew_group_wait(g, CREW_FOREVER, NULL);
    int64_t elapsed = crew_now() - start;
    crew_group_destroy(g);
    if (rc != 0 || atomic_load(&count) != n) {
        fprintf(stderr, "bench_group_crew: %s, %ld of %ld tasks ran\n", crew_strerror(rc),
                atomic_load(&count), n);
        return 1;
    }
    printf("%s ns_per_task=%.1f tasks=%ld\n", argv[1], (double)elapsed / (double)n, n);
    return 0;
}
