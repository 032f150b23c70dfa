/*
 * harness.c - the workloads, the clocks and the figures every C/C++ peer prints.
 *
 * Threads: bench_main() runs on the main thread and calls the peer's run(); the peer calls
 * bench_produce() on its producer thread (the main thread, except for OpenMP, where it is
 * whichever thread enters the single region) and bench_done() once the pool has drained.
 * Jobs run on the pool's workers and touch only their own argument, the gate and the
 * early-run counter below.
 *
 * Measurement rules (bench/README.md says why):
 * - a, b: wall time from the first submit to the end of the pool's wait.
 * - b: the same jobs run inline first to give the single-threaded work time.
 * - c: CPU time is getrusage(RUSAGE_SELF) at the end: the whole process.
 * - d: bytes per job from VmRSS before the pool exists to VmHWM at the end.
 * - e: CPU during the paced phase minus the producer thread's own CPU (it busy-waits), and
 *   process CPU over the quiet phase after it (no submit for 200 ms).
 */
#include "harness.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define QUEUE_CAP_DEFAULT 4096                /* bounded peers' queue capacity in a, b, c, e */
#define PACE_NS           (50 * 1000)         /* workload e: one submit per 50 us */
#define QUIET_NS          (200 * 1000 * 1000) /* e: then no submit for 200 ms */
#define GATE_WAIT_NS      (5000000000L) /* d: how long to wait for workers to reach the gate */

uint64_t bench_work_iters = 700;

static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static int gate_open;                   /* under gate_mu */
static atomic_uint gate_entered;        /* gate jobs that have started */
static atomic_ulong early_runs;         /* BENCH_COUNT jobs that have run */
static uint64_t (*alloc_counter)(void); /* the peer's, or NULL */

static void check(int rc, const char *what)
{
    if (rc != 0) {
        fprintf(stderr, "bench: %s failed: %s\n", what, strerror(rc));
        abort();
    }
}

void bench_job_gate(void *arg)
{
    (void)arg;
    atomic_fetch_add(&gate_entered, 1);
    check(pthread_mutex_lock(&gate_mu), "pthread_mutex_lock");
    while (!gate_open)
        check(pthread_cond_wait(&gate_cv, &gate_mu), "pthread_cond_wait");
    check(pthread_mutex_unlock(&gate_mu), "pthread_mutex_unlock");
}

void bench_job_count(void *arg)
{
    (void)arg;
    atomic_fetch_add_explicit(&early_runs, 1, memory_order_relaxed);
}

static void gate_release(void)
{
    check(pthread_mutex_lock(&gate_mu), "pthread_mutex_lock");
    gate_open = 1;
    check(pthread_cond_broadcast(&gate_cv), "pthread_cond_broadcast");
    check(pthread_mutex_unlock(&gate_mu), "pthread_mutex_unlock");
}

/* Out-of-line copies of the inline bodies, for the function table. */
static void job_empty(void *arg)
{
    bench_job_empty(arg);
}
static void job_work(void *arg)
{
    bench_job_work(arg);
}
static void job_sleep(void *arg)
{
    bench_job_sleep(arg);
}
static void job_stamp(void *arg)
{
    bench_job_stamp(arg);
}

const bench_fn bench_jobs[BENCH_KINDS] = {
    [BENCH_EMPTY] = job_empty,     [BENCH_WORK] = job_work,         [BENCH_SLEEP] = job_sleep,
    [BENCH_GATE] = bench_job_gate, [BENCH_COUNT] = bench_job_count, [BENCH_STAMP] = job_stamp,
};

struct bench_load {
    char workload;         /* 'a' .. 'e' */
    size_t jobs;           /* jobs submitted (gates not counted) */
    unsigned workers;      /* pool size */
    unsigned gates;        /* d: gate jobs submitted first */
    int64_t t_start;       /* first submit */
    int64_t t_done;        /* bench_done() */
    bench_stamp *stamps;   /* e: one per job */
    int64_t cpu_proc0;     /* e: process CPU at t_start, ns */
    int64_t cpu_proc1;     /* e: process CPU at t_done */
    int64_t cpu_prod;      /* e: the producer thread's CPU over its loop */
    int64_t cpu_quiet;     /* e: process CPU over the quiet phase that follows */
    long rss_queued_kb;    /* d: VmRSS with every job queued */
    uint64_t queued;       /* d: jobs still queued when it was read */
    uint64_t allocs0;      /* d: peer allocations before the submits */
    uint64_t allocs1;      /* d: and once all jobs ran */
    int produced;          /* bench_produce() was called */
    int64_t producer_jobs; /* jobs the producing thread ran; -1 if not reported */
};

static int64_t tv_ns(struct timeval tv)
{
    return (int64_t)tv.tv_sec * 1000000000 + (int64_t)tv.tv_usec * 1000;
}

static int64_t cpu_ns(int who)
{
    struct rusage ru;
    if (getrusage(who, &ru) != 0)
        return 0;
    return tv_ns(ru.ru_utime) + tv_ns(ru.ru_stime);
}

/* A "VmRSS:" style field of /proc/self/status, in kB; -1 if absent. */
static long status_kb(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    size_t n = strlen(field);
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, field, n) == 0) {
            kb = strtol(line + n, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kb;
}

static void sleep_ns(long ns)
{
    struct timespec ts = {ns / 1000000000, ns % 1000000000};
    nanosleep(&ts, NULL);
}

void bench_produce(bench_load *l, bench_submit_fn submit, void *pool)
{
    l->produced = 1;
    switch (l->workload) {
    case 'a':
    case 'b':
    case 'c': {
        int kind = l->workload == 'a' ? BENCH_EMPTY : l->workload == 'b' ? BENCH_WORK : BENCH_SLEEP;
        l->t_start = bench_now();
        for (size_t i = 0; i < l->jobs; i++)
            submit(pool, kind, NULL);
        break;
    }
    case 'd': {
        for (unsigned g = 0; g < l->gates; g++)
            submit(pool, BENCH_GATE, NULL);
        int64_t give_up = bench_now() + GATE_WAIT_NS;
        while (atomic_load(&gate_entered) < l->gates && bench_now() < give_up)
            sleep_ns(100000);
        if (atomic_load(&gate_entered) < l->gates)
            fprintf(stderr, "bench: only %u of %u workers reached the gate\n",
                    atomic_load(&gate_entered), l->gates);
        l->allocs0 = alloc_counter ? alloc_counter() : 0;
        l->t_start = bench_now();
        for (size_t i = 0; i < l->jobs; i++)
            submit(pool, BENCH_COUNT, NULL);
        l->rss_queued_kb = status_kb("VmRSS:");
        l->queued = l->jobs - atomic_load(&early_runs);
        gate_release();
        break;
    }
    case 'e': {
        int64_t prod0 = cpu_ns(RUSAGE_THREAD);
        l->cpu_proc0 = cpu_ns(RUSAGE_SELF);
        l->t_start = bench_now();
        for (size_t i = 0; i < l->jobs; i++) {
            int64_t at = l->t_start + (int64_t)i * PACE_NS;
            while (bench_now() < at)
                ;
            l->stamps[i].submit = bench_now();
            submit(pool, BENCH_STAMP, &l->stamps[i]);
        }
        l->cpu_prod = cpu_ns(RUSAGE_THREAD) - prod0;
        /* Then no work at all for QUIET_NS, the producer asleep: what the pool burns with
         * nothing to do (spinning workers show here; parked ones do not). */
        int64_t q0 = cpu_ns(RUSAGE_SELF);
        sleep_ns(QUIET_NS);
        l->cpu_quiet = cpu_ns(RUSAGE_SELF) - q0;
        break;
    }
    }
}

void bench_set_producer_jobs(bench_load *l, uint64_t jobs)
{
    l->producer_jobs = (int64_t)jobs;
}

void bench_done(bench_load *l)
{
    l->t_done = bench_now();
    if (l->workload == 'd')
        l->allocs1 = alloc_counter ? alloc_counter() : 0;
    if (l->workload == 'e')
        l->cpu_proc1 = cpu_ns(RUSAGE_SELF);
}

/* The iterations that make one BENCH_WORK job last about 1 us on this machine: the best of
 * several timed batches, so a preempted batch does not skew it. */
static uint64_t calibrate(void)
{
    const uint64_t batch = 2000000;
    double best = 1e9;
    uint64_t saved = bench_work_iters;
    bench_work_iters = batch;
    for (int r = 0; r < 7; r++) {
        int64_t t0 = bench_now();
        bench_job_work(NULL);
        double per = (double)(bench_now() - t0) / (double)batch;
        if (per < best)
            best = per;
    }
    bench_work_iters = saved;
    uint64_t iters = (uint64_t)(1000.0 / best + 0.5);
    return iters ? iters : 1;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static size_t scaled(double base, double scale, size_t min)
{
    double n = base * scale;
    return n < (double)min ? min : (size_t)n;
}

static int usage(void)
{
    fprintf(stderr, "usage: peer <a|b|c|d|e|calibrate> [scale] [iters]\n"
                    "  a  1M empty jobs, 2 workers: ns per job\n"
                    "  b  200k ~1us jobs, 2 workers: parallel efficiency\n"
                    "  c  10k 1ms-sleep jobs, 64 workers: wall and CPU\n"
                    "  d  1M jobs queued behind a gate: bytes (and allocations) per job\n"
                    "  e  20k jobs paced 50us apart: submit-to-start p50/p99, idle CPU\n");
    return 2;
}

int bench_main(int argc, char **argv, const bench_peer *peer)
{
    if (argc < 2)
        return usage();
    if (strcmp(argv[1], "calibrate") == 0) {
        printf("calibrate iters=%llu\n", (unsigned long long)calibrate());
        return 0;
    }
    char w = argv[1][0];
    if (argv[1][1] != '\0' || w < 'a' || w > 'e')
        return usage();
    double scale = argc > 2 ? strtod(argv[2], NULL) : 1.0;
    if (!(scale > 0))
        return usage();
    bench_work_iters = argc > 3 ? strtoull(argv[3], NULL, 10) : calibrate();
    const char *qenv = getenv("BENCH_QCAP");
    size_t qcap = qenv && atol(qenv) > 0 ? (size_t)atol(qenv) : QUEUE_CAP_DEFAULT;
    alloc_counter = peer->alloc_count;

    bench_load l;
    memset(&l, 0, sizeof l);
    l.workload = w;
    l.producer_jobs = -1;
    l.workers = 2;
    switch (w) {
    case 'a':
        l.jobs = scaled(1e6, scale, 1);
        break;
    case 'b':
        l.jobs = scaled(2e5, scale, 1);
        break;
    case 'c':
        l.jobs = scaled(1e4, scale, 1);
        l.workers = 64;
        break;
    case 'd':
        l.jobs = scaled(1e6, scale, 1);
        l.gates = l.workers - (peer->producer_is_worker ? 1 : 0);
        qcap = l.jobs + l.gates;
        break;
    case 'e':
        l.jobs = scaled(2e4, scale, 100);
        l.stamps = calloc(l.jobs, sizeof *l.stamps);
        if (!l.stamps)
            return 1;
        break;
    }

    int64_t serial_ns = 0;
    if (w == 'b') {
        int64_t t0 = bench_now();
        for (size_t i = 0; i < l.jobs; i++)
            bench_job_work(NULL);
        serial_ns = bench_now() - t0;
    }
    long rss_base_kb = status_kb("VmRSS:");

    if (peer->run(&l, l.workers, qcap) != 0)
        return 1;
    if (!l.produced || l.t_done == 0) {
        fprintf(stderr, "bench: peer %s did not produce or finish\n", peer->name);
        return 1;
    }

    int64_t wall = l.t_done - l.t_start;
    printf("%c peer=%s\n%c jobs=%zu\n%c workers=%u\n%c wall_ns=%lld\n", w, peer->name, w, l.jobs, w,
           l.workers, w, (long long)wall);
    if (l.producer_jobs >= 0)
        printf("%c producer_share=%.4f\n", w, (double)l.producer_jobs / (double)(l.jobs + l.gates));
    switch (w) {
    case 'a':
        printf("a ns_per_job=%.2f\n", (double)wall / (double)l.jobs);
        break;
    case 'b': {
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        double cores =
            (double)(ncpu > 0 && (unsigned)ncpu < l.workers ? (unsigned)ncpu : l.workers);
        printf("b iters=%llu\nb job_ns=%.1f\nb serial_ns=%lld\nb efficiency=%.4f\n",
               (unsigned long long)bench_work_iters, (double)serial_ns / (double)l.jobs,
               (long long)serial_ns, (double)serial_ns / cores / (double)wall);
        break;
    }
    case 'c': {
        double ideal = (double)l.jobs * 1e6 / l.workers;
        printf("c wall_ms=%.2f\nc ideal_ms=%.2f\nc wall_over_ideal=%.4f\nc cpu_ms=%.2f\n",
               (double)wall / 1e6, ideal / 1e6, (double)wall / ideal,
               (double)cpu_ns(RUSAGE_SELF) / 1e6);
        break;
    }
    case 'd': {
        long peak = status_kb("VmHWM:");
        if (l.rss_queued_kb > peak)
            peak = l.rss_queued_kb;
        printf("d rss_base_kb=%ld\nd rss_peak_kb=%ld\nd queued=%llu\nd bytes_per_job=%.2f\n",
               rss_base_kb, peak, (unsigned long long)l.queued,
               (double)(peak - rss_base_kb) * 1024.0 / (double)l.jobs);
        if (peer->alloc_count)
            printf("d allocs=%llu\nd allocs_per_job=%.6f\n",
                   (unsigned long long)(l.allocs1 - l.allocs0),
                   (double)(l.allocs1 - l.allocs0) / (double)l.jobs);
        break;
    }
    case 'e': {
        int64_t *lat = malloc(l.jobs * sizeof *lat);
        if (!lat)
            return 1;
        for (size_t i = 0; i < l.jobs; i++)
            lat[i] = l.stamps[i].latency;
        qsort(lat, l.jobs, sizeof *lat, cmp_i64);
        int64_t idle = (l.cpu_proc1 - l.cpu_proc0) - l.cpu_prod - l.cpu_quiet;
        int64_t paced = wall - QUIET_NS;
        printf("e p50_us=%.2f\ne p99_us=%.2f\ne max_us=%.2f\ne idle_cpu_ms=%.2f\n"
               "e idle_cpu_pct=%.1f\ne quiet_cpu_pct=%.1f\n",
               (double)lat[l.jobs / 2] / 1e3, (double)lat[l.jobs * 99 / 100] / 1e3,
               (double)lat[l.jobs - 1] / 1e3, (double)idle / 1e6,
               100.0 * (double)idle / (double)paced,
               100.0 * (double)l.cpu_quiet / (double)QUIET_NS);
        free(lat);
        free(l.stamps);
        break;
    }
    }
    return 0;
}
