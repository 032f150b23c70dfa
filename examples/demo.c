/*
 * demo - libcrew's pool at work: thousands of jobs, some failing, some past their timeout,
 * a graceful drain on Ctrl-C (a second Ctrl-C cancels what still runs), and the final
 * metrics.
 *
 *   demo [JOBS] [WORKERS]        defaults: 5000 jobs, 8 workers
 *   DEMO_PROMETHEUS=1 demo       also prints the Prometheus text exposition
 *
 * Each job simulates an I/O call of 0-4 ms by waiting on its ctx, so a timeout or a cancel
 * really stops it. One job in 20 fails; one in 100 hangs and is stopped by its 50 ms
 * budget. Signals are taken by a thread of their own (sigwait), never by a handler, so the
 * pool is only ever called from ordinary code.
 */
#define _POSIX_C_SOURCE 200809L
#include <crew.h>

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static crew_pool *pool;
static atomic_int interrupts; /* Ctrl-C presses so far */

typedef struct job {
    unsigned id;
    unsigned kind; /* 0 ok, 1 fails, 2 hangs */
    int64_t work;  /* simulated I/O time, ns */
} job;

static int run(crew_ctx *ctx, void *arg)
{
    job *j = arg;
    int64_t work = j->kind == 2 ? 10 * CREW_SEC : j->work;
    /* Simulated I/O: returns early if the job's ctx ends (its budget or a cancel). */
    if (crew_ctx_wait(ctx, crew_deadline_in(work)) == 0)
        return crew_ctx_err(ctx);
    return j->kind == 1 ? -EIO : 0;
}

static void *signals(void *arg)
{
    sigset_t *set = arg;
    for (;;) {
        int sig;
        sigwait(set, &sig);
        if (sig == SIGUSR1) /* main is done */
            return NULL;
        if (atomic_fetch_add(&interrupts, 1) == 0) {
            fprintf(stderr, "\ndemo: draining: no new jobs; Ctrl-C again to cancel\n");
        } else {
            fprintf(stderr, "\ndemo: cancelling running jobs\n");
            crew_pool_cancel(pool, 0);
        }
    }
}

static void print_stats(const crew_stats *s, int64_t wall)
{
    printf("\n%-10s %10s\n", "jobs", "count");
    printf("%-10s %10llu\n", "submitted", (unsigned long long)s->submitted);
    printf("%-10s %10llu\n", "succeeded", (unsigned long long)s->succeeded);
    printf("%-10s %10llu\n", "failed", (unsigned long long)s->failed);
    printf("%-10s %10llu\n", "timed out", (unsigned long long)s->timed_out);
    printf("%-10s %10llu\n", "cancelled", (unsigned long long)s->cancelled);
    printf("%-10s %10llu\n", "rejected", (unsigned long long)s->rejected);
    printf("\n%-12s %10s %10s %10s\n", "latency", "p50", "p90", "p99");
    const crew_hist *h[] = {&s->wait, &s->run};
    const char *names[] = {"queue wait", "run time"};
    for (int i = 0; i < 2; i++)
        printf("%-12s %8.3fms %8.3fms %8.3fms\n", names[i],
               (double)crew_hist_quantile(h[i], 0.50) / 1e6,
               (double)crew_hist_quantile(h[i], 0.90) / 1e6,
               (double)crew_hist_quantile(h[i], 0.99) / 1e6);
    printf("\nwall %.2f s\n", (double)wall / 1e9);
}

int main(int argc, char **argv)
{
    unsigned njobs = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 10) : 5000;
    unsigned workers = argc > 2 ? (unsigned)strtoul(argv[2], NULL, 10) : 8;
    if (njobs == 0 || workers == 0) {
        fprintf(stderr, "usage: demo [JOBS] [WORKERS]  (both positive)\n");
        return 2;
    }

    /* Block the signals in every thread; the signal thread takes them with sigwait. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    pthread_t sig_thread;
    pthread_create(&sig_thread, NULL, signals, &set);

    int rc = crew_pool_create(&pool, &(crew_pool_opts){.name = "demo",
                                                       .workers = workers,
                                                       .queue_cap = 256,
                                                       .job_timeout = 50 * CREW_MSEC,
                                                       .flags = CREW_POOL_TIMING});
    if (rc) {
        fprintf(stderr, "demo: cannot create the pool: %s\n", crew_strerror(rc));
        return 1;
    }
    job *jobs = calloc(njobs, sizeof *jobs);
    if (!jobs) {
        fprintf(stderr, "demo: out of memory\n");
        return 1;
    }
    printf("demo: %u jobs on %u workers (queue 256, job timeout 50ms); Ctrl-C drains\n", njobs,
           workers);

    bool tty = isatty(STDOUT_FILENO);
    uint64_t seed = 42;
    int64_t t0 = crew_now(), next_report = t0;
    unsigned sent = 0;
    for (; sent < njobs && atomic_load(&interrupts) == 0; sent++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        unsigned r = (unsigned)(seed >> 33);
        jobs[sent] = (job){sent,
                           r % 100 == 0  ? 2
                           : r % 20 == 0 ? 1
                                         : 0,
                           (int64_t)(r % 4000) * CREW_USEC};
        /* Blocks while the queue is full: backpressure, not unbounded memory. */
        if ((rc = crew_pool_submit(pool, run, &jobs[sent], CREW_FOREVER, NULL)) != 0)
            break;
        if (crew_now() >= next_report) {
            crew_stats s;
            crew_pool_stats(pool, &s);
            /* On a terminal the progress line rewrites itself; in a log, one line each. */
            printf("%s  submitted %6u  done %6llu  queued %4llu  busy %2llu%s", tty ? "\r" : "",
                   sent + 1,
                   (unsigned long long)(s.succeeded + s.failed + s.timed_out + s.cancelled),
                   (unsigned long long)s.queued, (unsigned long long)s.running, tty ? "" : "\n");
            fflush(stdout);
            next_report += 250 * CREW_MSEC;
        }
    }
    if (sent < njobs)
        printf("\ndemo: stopped submitting after %u jobs (%s)\n", sent,
               rc ? crew_strerror(rc) : "interrupted");

    /* Graceful: stop accepting, let the queue finish; at 10 s cancel what is left. */
    rc = crew_pool_drain(pool, crew_deadline_in(10 * CREW_SEC));
    crew_stats s;
    crew_pool_stats(pool, &s);
    int64_t wall = crew_now() - t0;
    if (getenv("DEMO_PROMETHEUS")) { /* the same figures as a scrape would see them */
        const crew_stats *all[] = {&s};
        crew_prometheus_write(stdout, all, 1);
    }
    print_stats(&s, wall);

    crew_pool_destroy(pool);
    free(jobs);
    pthread_kill(sig_thread, SIGUSR1);
    pthread_join(sig_thread, NULL);
    return rc == 0 ? 0 : 1;
}
