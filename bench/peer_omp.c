/*
 * peer_omp.c - OpenMP tasks (gcc's libgomp): `parallel num_threads(W)`, one thread in
 * `single` produces a `task` per job, then `taskwait`.
 *
 * The producing thread is one of the W threads; it runs tasks itself once it reaches the
 * taskwait. libgomp also throttles: with more than 64 x W tasks pending, a new task runs at
 * once in the producer instead of being queued, so workload d cannot queue 1M jobs here
 * (the harness reports how many stayed queued), and in a and b most jobs run inline in the
 * producer: the peer reports that share. OMP_WAIT_POLICY and GOMP_SPINCOUNT are left at
 * their defaults.
 */
#include "harness.h"

#include <omp.h>

static int producer_thread;    /* omp_get_thread_num() of the producer; set before any task */
static uint64_t producer_jobs; /* tasks the producer ran; written only by the producer */

static void submit(void *pool, int kind, void *arg)
{
    bench_fn fn = bench_jobs[kind];
    (void)pool;
#pragma omp task firstprivate(fn, arg)
    {
        fn(arg);
        if (omp_get_thread_num() == producer_thread)
            producer_jobs++;
    }
}

static int run(bench_load *load, unsigned workers, size_t cap)
{
    (void)cap;
#pragma omp parallel num_threads(workers)
    {
#pragma omp single
        {
            producer_thread = omp_get_thread_num();
            bench_produce(load, submit, NULL);
#pragma omp taskwait
            bench_done(load);
            bench_set_producer_jobs(load, producer_jobs);
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    static const bench_peer peer = {.name = "omp", .run = run, .producer_is_worker = 1};
    return bench_main(argc, argv, &peer);
}
