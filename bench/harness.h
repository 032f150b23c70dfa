/*
 * harness.h - what every C and C++ benchmark peer shares.
 *
 * Each peer is one small program: it wraps one pool (crew, the naive pool, GLib, oneTBB,
 * OpenMP) behind a run() function and hands it to bench_main(), which parses
 * `<workload> <scale> [iters]`, drives the workload, and prints one line per figure
 * (`a ns_per_job=47.2`). The peer's run() creates its pool, calls bench_produce() on the
 * producer thread, waits until every job has finished, calls bench_done(), and tears the
 * pool down. So every peer runs the same producer loop and the same job bodies; only the
 * pool differs. bench/go/pool.go mirrors this file in Go.
 *
 * Jobs are named by a kind rather than a function pointer, so that a pool whose job type
 * is not fn(arg) (crew's fn(ctx, arg), GThreadPool's one function per pool) can map the
 * kind to its own function without allocating a wrapper per job.
 */
#ifndef BENCH_HARNESS_H
#define BENCH_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The job kinds. Kinds start at 1 so that a kind tagged into a pointer's low bits never
 * makes a NULL (GThreadPool refuses NULL data). */
enum bench_kind {
    BENCH_EMPTY = 1, /* does nothing */
    BENCH_WORK,      /* bench_work_iters steps of integer arithmetic (about 1 us) */
    BENCH_SLEEP,     /* nanosleep 1 ms */
    BENCH_GATE,      /* blocks until the harness opens the gate */
    BENCH_COUNT,     /* counts itself (to tell how many jobs ran early) */
    BENCH_STAMP,     /* records its submit-to-start latency in its bench_stamp */
    BENCH_KINDS
};

typedef void (*bench_fn)(void *arg);

/* The job bodies by kind, for pools whose jobs are fn(arg). */
extern const bench_fn bench_jobs[BENCH_KINDS];

/* The argument of a BENCH_STAMP job: the producer writes submit just before submitting. */
typedef struct bench_stamp {
    int64_t submit;  /* bench_now() at submit */
    int64_t latency; /* start - submit, ns; written by the job */
} bench_stamp;

/* Iterations of a BENCH_WORK job; set once before any job runs. */
extern uint64_t bench_work_iters;

/* CLOCK_MONOTONIC in nanoseconds (what crew_now() reads). */
static inline int64_t bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The bodies, inline so that a peer that wraps them (crew) pays no extra call. */
static inline void bench_job_empty(void *arg)
{
    (void)arg;
}

/* A dependent chain of 64-bit multiply-adds (an LCG): the same instructions in C and Go,
 * which the compiler can neither vectorise nor fold. */
static inline void bench_job_work(void *arg)
{
    uint64_t x = 0x9E3779B97F4A7C15u;
    uint64_t n = bench_work_iters;
    (void)arg;
    for (uint64_t i = 0; i < n; i++)
        x = x * 6364136223846793005u + 1442695040888963407u;
    __asm__ volatile("" : : "r"(x));
}

static inline void bench_job_sleep(void *arg)
{
    struct timespec ts = {0, 1000000};
    (void)arg;
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static inline void bench_job_stamp(void *arg)
{
    bench_stamp *s = (bench_stamp *)arg;
    s->latency = bench_now() - s->submit;
}

void bench_job_gate(void *arg);
void bench_job_count(void *arg);

/* One run of one workload; opaque to peers. */
typedef struct bench_load bench_load;

/* Submits one job; must not fail (a peer that cannot submit aborts). */
typedef void (*bench_submit_fn)(void *pool, int kind, void *arg);

typedef struct bench_peer {
    const char *name;
    /* Creates a pool of `workers` workers whose queue holds at least `cap` jobs (bounded
     * pools; unbounded ones ignore it), calls bench_produce(), waits for every job, calls
     * bench_done(), destroys the pool. Returns 0, or -1 after printing why on stderr. */
    int (*run)(bench_load *load, unsigned workers, size_t cap);
    /* True if the producing thread is itself one of the `workers` (OpenMP, oneTBB): then
     * one gate fewer blocks the pool in workload d. */
    int producer_is_worker;
    /* Optional: the library's allocation counter (crew__test_alloc_count). */
    uint64_t (*alloc_count)(void);
} bench_peer;

/* Runs the workload's producer loop on the calling thread, submitting through submit. */
void bench_produce(bench_load *load, bench_submit_fn submit, void *pool);

/* For a peer whose producer is also a worker: the jobs the producing thread ran itself
 * (inline or while waiting), printed as producer_share. Call it before returning from run. */
void bench_set_producer_jobs(bench_load *load, uint64_t jobs);

/* Marks the instant every job has finished; call it right after the pool's wait. */
void bench_done(bench_load *load);

/* Parses argv, runs the workload through peer, prints the figures. Returns the exit
 * status. */
int bench_main(int argc, char **argv, const bench_peer *peer);

#ifdef __cplusplus
}
#endif

#endif /* BENCH_HARNESS_H */
