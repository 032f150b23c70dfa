/*
 * sync_rate.c - how closely crew_rate holds a pool's job start rate to the rate it is set
 * to (bench/run-sync runs it; go/sync_rate.go is the Go peer on golang.org/x/time/rate,
 * built when that package is installed).
 *
 * Usage: sync_rate <per_sec> <workers> <seconds>
 *
 * A crew pool of W workers runs empty jobs, each of which first calls
 * crew_rate_wait(limiter, CREW_FOREVER, ctx) on one limiter of per_sec tokens per second
 * and burst 1 (the seeds' limiter.Wait(ctx) before each job; what a pool's start-rate cap
 * does). A producer keeps the queue full for the given seconds, then the pool is
 * cancelled. Prints key=value lines: started (jobs that got their token within the
 * window), per_sec (started / seconds), of_set (per_sec / the set rate), late_p50_us and
 * late_p99_us (how long after its ideal instant, t0 + k / rate, the k-th start came), and
 * cpu_pct (the process's CPU time over the window, in % of one core).
 */
#include <crew.h>

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>

static crew_rate *limiter;
static int64_t *starts; /* start instants, in the order the jobs got them */
static long cap;        /* entries of starts */
static atomic_long nstarts;

static int job(crew_ctx *ctx, void *arg)
{
    (void)arg;
    int rc = crew_rate_wait(limiter, CREW_FOREVER, ctx);
    if (rc != 0)
        return rc;
    int64_t now = crew_now();
    long i = atomic_fetch_add(&nstarts, 1);
    if (i < cap)
        starts[i] = now;
    return 0;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double cpu_secs(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: sync_rate <per_sec> <workers> <seconds>\n");
        return 2;
    }
    double rate = atof(argv[1]), secs = atof(argv[3]);
    int workers = atoi(argv[2]);
    if (!(rate > 0) || !(secs > 0) || workers < 1 || workers > 1024) {
        fprintf(stderr, "sync_rate: bad arguments\n");
        return 2;
    }
    cap = (long)(rate * secs * 1.1) + 1024;
    starts = malloc((size_t)cap * sizeof *starts);
    crew_pool *pool;
    if (!starts || crew_pool_create(&pool, &(crew_pool_opts){.name = "rate",
                                                             .workers = (unsigned)workers,
                                                             .queue_cap = 1024}) != 0)
        return 1;

    double cpu0 = cpu_secs();
    int64_t t0 = crew_now(); /* the bucket fills (burst 1) here */
    if (crew_rate_create(&limiter, rate, 1) != 0)
        return 1;
    int64_t end = t0 + (int64_t)(secs * 1e9);
    while (crew_now() < end)
        if (crew_pool_submit(pool, job, NULL, end, NULL) != 0 && crew_now() < end)
            return 1;
    double cpu = cpu_secs() - cpu0;
    crew_pool_cancel(pool, 0);
    crew_pool_wait(pool, CREW_FOREVER);
    crew_pool_destroy(pool);

    long n = atomic_load(&nstarts);
    if (n > cap)
        n = cap;
    qsort(starts, (size_t)n, sizeof *starts, cmp_i64);
    long in_window = 0;
    while (in_window < n && starts[in_window] <= end)
        in_window++;
    /* Lateness of the k-th start against its ideal instant. */
    double *late = malloc((size_t)(in_window ? in_window : 1) * sizeof *late);
    if (!late)
        return 1;
    for (long k = 0; k < in_window; k++)
        late[k] = (double)(starts[k] - t0) / 1e3 - (double)k / rate * 1e6;
    qsort(late, (size_t)in_window, sizeof *late, cmp_dbl);
    double p50 = in_window ? late[in_window / 2] : 0;
    double p99 = in_window ? late[(long)((double)(in_window - 1) * 0.99)] : 0;
    printf("started=%ld\nper_sec=%.2f\nof_set=%.4f\nlate_p50_us=%.1f\nlate_p99_us=%.1f\n"
           "cpu_pct=%.1f\n",
           in_window, (double)in_window / secs, (double)in_window / secs / rate, p50, p99,
           100 * cpu / secs);
    crew_rate_destroy(limiter);
    free(late);
    free(starts);
    return 0;
}
