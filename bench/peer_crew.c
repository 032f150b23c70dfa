/*
 * peer_crew.c - crew's pool: crew_pool_create(workers, queue_cap), crew_pool_submit() with
 * CREW_FOREVER per job, crew_pool_close() + crew_pool_wait(), crew_pool_destroy().
 *
 * A crew job is fn(ctx, arg), so each kind has a thunk that calls the harness's inline
 * body. The pool runs with its default options (no timing histograms) unless
 * BENCH_CREW_TIMING=1 sets CREW_POOL_TIMING. Workload d also reports libcrew's own
 * allocations through the exported test counter.
 */
#include "harness.h"

#include <crew.h>
#include <stdio.h>
#include <stdlib.h>

/* Exported by libcrew for its tests: allocations made through its hook since start. */
uint64_t crew__test_alloc_count(void);

static int job_empty(crew_ctx *c, void *arg)
{
    (void)c;
    bench_job_empty(arg);
    return 0;
}

static int job_work(crew_ctx *c, void *arg)
{
    (void)c;
    bench_job_work(arg);
    return 0;
}

static int job_sleep(crew_ctx *c, void *arg)
{
    (void)c;
    bench_job_sleep(arg);
    return 0;
}

static int job_gate(crew_ctx *c, void *arg)
{
    (void)c;
    bench_job_gate(arg);
    return 0;
}

static int job_count(crew_ctx *c, void *arg)
{
    (void)c;
    bench_job_count(arg);
    return 0;
}

static int job_stamp(crew_ctx *c, void *arg)
{
    (void)c;
    bench_job_stamp(arg);
    return 0;
}

static const crew_job_fn thunks[BENCH_KINDS] = {
    [BENCH_EMPTY] = job_empty, [BENCH_WORK] = job_work,   [BENCH_SLEEP] = job_sleep,
    [BENCH_GATE] = job_gate,   [BENCH_COUNT] = job_count, [BENCH_STAMP] = job_stamp,
};

static void submit(void *p, int kind, void *arg)
{
    int rc = crew_pool_submit(p, thunks[kind], arg, CREW_FOREVER, NULL);
    if (rc != 0) {
        fprintf(stderr, "crew: submit failed: %s\n", crew_strerror(rc));
        abort();
    }
}

static int run(bench_load *load, unsigned workers, size_t cap)
{
    const char *timed = getenv("BENCH_CREW_TIMING");
    crew_pool_opts opts = {
        .name = "bench",
        .workers = workers,
        .queue_cap = cap,
        .flags = timed && timed[0] == '1' ? CREW_POOL_TIMING : 0,
    };
    crew_pool *p;
    int rc = crew_pool_create(&p, &opts);
    if (rc != 0) {
        fprintf(stderr, "crew: crew_pool_create failed: %s\n", crew_strerror(rc));
        return -1;
    }
    bench_produce(load, submit, p);
    crew_pool_close(p);
    rc = crew_pool_wait(p, CREW_FOREVER);
    bench_done(load);
    crew_pool_destroy(p);
    if (rc != 0) {
        fprintf(stderr, "crew: crew_pool_wait failed: %s\n", crew_strerror(rc));
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    static const bench_peer peer = {
        .name = "crew", .run = run, .alloc_count = crew__test_alloc_count};
    return bench_main(argc, argv, &peer);
}
