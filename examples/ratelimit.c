/*
 * ratelimit.c - the seeds' rate-limited pool, with crew_rate.
 *
 * 1. The seeds' pattern (Go: limiter := rate.NewLimiter(rate.Limit(10), 1), and
 *    limiter.Wait(ctx) before each job): 4 workers, so at most 4 jobs at once, and a
 *    limiter shared by all of them, so at most 10 jobs start per second.
 * 2. A wait that cannot be served before its ctx's deadline fails at once (CREW_ETIMEDOUT)
 *    instead of sleeping past it.
 * 3. Burst, allow and reserve: a full bucket lets a burst through at once; then allow says
 *    no, and reserve says how long to wait.
 * 4. Changing the rate at run time: a waiter planned at 1 token per second re-plans when
 *    the rate goes up, and starts long before that second is over.
 *
 * Usage: ratelimit [JOBS] (default 10). Each part prints what happens and checks what the
 * limiter guarantees (never early; the counts); the last line is "ratelimit: ok" when every
 * check held (the exit status is 0 then).
 */
#include <crew.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#define PER_SEC 10 /* part 1: jobs started per second */

static int failures;

static void check(bool ok, const char *what)
{
    if (!ok) {
        printf("FAIL: %s\n", what);
        failures++;
    }
}

static double ms_since(int64_t t0)
{
    return (double)(crew_now() - t0) / CREW_MSEC;
}

/* ---- 1. a pool whose jobs wait for the limiter -------------------------------------------- */

static crew_rate *limiter;
static int64_t t0;
static int64_t *started; /* when each job got its token, in the order they got them */
static atomic_int nstarted;

static int process(crew_ctx *ctx, void *arg)
{
    int id = (int)(intptr_t)arg;
    /* if err := limiter.Wait(ctx); err != nil { return err } */
    int rc = crew_rate_wait(limiter, CREW_FOREVER, ctx);
    if (rc != 0)
        return rc;
    int64_t now = crew_now();
    started[atomic_fetch_add(&nstarted, 1)] = now;
    printf("  job %2d starts at %5.0f ms\n", id, (double)(now - t0) / CREW_MSEC);
    crew_ctx_wait(ctx, crew_deadline_in(30 * CREW_MSEC)); /* the work: 30 ms */
    return 0;
}

static void rate_limited_pool(int jobs)
{
    printf("1. %d jobs on 4 workers, at most %d started per second (burst 1)\n", jobs, PER_SEC);
    started = calloc((size_t)jobs, sizeof *started);
    crew_pool *pool = NULL;
    t0 = crew_now(); /* before the bucket fills */
    check(started && crew_rate_create(&limiter, PER_SEC, 1) == 0, "create");
    check(crew_pool_create(&pool, &(crew_pool_opts){.name = "limited", .workers = 4}) == 0, "pool");
    for (int i = 0; i < jobs && pool; i++)
        check(crew_pool_submit(pool, process, (void *)(intptr_t)i, CREW_FOREVER, NULL) == 0,
              "submit");
    check(crew_pool_drain(pool, crew_deadline_in(60 * CREW_SEC)) == 0, "drain");
    crew_pool_destroy(pool);
    int n = atomic_load(&nstarted);
    check(n == jobs, "every job started");
    /* The guarantee: the k-th start (from 0) comes no earlier than k intervals after the
     * bucket filled. The starts were recorded in token order, give or take a few
     * microseconds, so sort them first. */
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && started[j - 1] > started[j]; j--) {
            int64_t x = started[j];
            started[j] = started[j - 1];
            started[j - 1] = x;
        }
    bool early = false;
    for (int k = 0; k < n; k++)
        early = early || started[k] < t0 + k * CREW_SEC / PER_SEC;
    double span = n > 1 ? (double)(started[n - 1] - started[0]) / CREW_SEC : 0;
    printf("   %d jobs started over %.2f s: %.1f per second (the limit: %d)\n", n, span,
           span > 0 ? (n - 1) / span : 0.0, PER_SEC);
    check(!early, "no job started before its token was due");
    crew_rate_destroy(limiter);
    free(started);
}

/* ---- 2. a deadline that comes before the next token --------------------------------------- */

static void deadline_first(void)
{
    printf("2. waits under a ctx that times out after 250 ms, at %d per second\n", PER_SEC);
    crew_rate *r = NULL;
    crew_ctx *ctx = NULL;
    check(crew_rate_create(&r, PER_SEC, 1) == 0, "create");
    check(crew_ctx_with_timeout(NULL, 250 * CREW_MSEC, &ctx) == 0, "ctx");
    int64_t start = crew_now();
    int got = 0, rc;
    while ((rc = crew_rate_wait(r, CREW_FOREVER, ctx)) == 0)
        got++;
    printf("   %d waits succeeded, then %s at %.0f ms: the next token was due after the "
           "deadline\n",
           got, crew_err_name(rc), ms_since(start));
    check(rc == CREW_ETIMEDOUT, "the ctx's deadline refuses the wait");
    check(got <= 3, "a token at once, then one per 100 ms until 250 ms, and no more");
    crew_ctx_release(ctx);
    crew_rate_destroy(r);
}

/* ---- 3. burst, allow, reserve --------------------------------------------------------------- */

static void burst_allow_reserve(void)
{
    printf("3. a bucket of 5 at %d per second\n", PER_SEC);
    crew_rate *r = NULL;
    int64_t start = crew_now();
    check(crew_rate_create(&r, PER_SEC, 5) == 0, "create");
    int allowed = 0;
    for (int i = 0; i < 8; i++)
        allowed += crew_rate_allow(r);
    /* 5 from the bucket, plus one per 100 ms that these calls took (none, as a rule). */
    int64_t most = 5 + (crew_now() - start) / (CREW_SEC / PER_SEC);
    printf("   8 allow() calls at once: %d allowed\n", allowed);
    check(allowed >= 5 && allowed <= most, "the burst goes through, the rest is refused");
    crew_rate_set(r, PER_SEC, 1); /* an empty bucket of 1 from here on */
    while (crew_rate_allow(r))
        ;
    int64_t now = crew_now();
    int64_t d1 = crew_rate_reserve_n(r, 1, now), d2 = crew_rate_reserve_n(r, 1, now);
    int64_t d3 = crew_rate_reserve_n(r, 1, now);
    printf("   3 reservations at one instant on an empty bucket: act in %.0f, %.0f and %.0f ms\n",
           (double)d1 / CREW_MSEC, (double)d2 / CREW_MSEC, (double)d3 / CREW_MSEC);
    check(d1 > 0 && d2 - d1 >= 99 * CREW_MSEC && d3 - d2 >= 99 * CREW_MSEC,
          "reservations are due one interval apart");
    printf("   tokens now: %.2f (owed to the reservations)\n", crew_rate_tokens(r));
    check(crew_rate_tokens(r) < -1.5, "the bucket is in debt");
    crew_rate_destroy(r);
}

/* ---- 4. changing the rate under a sleeping waiter -------------------------------------------- */

typedef struct sleeper {
    crew_rate *r;
    int rc;
} sleeper;

static void *wait_one(void *arg)
{
    sleeper *s = arg;
    s->rc = crew_rate_wait(s->r, CREW_FOREVER, NULL);
    return NULL;
}

static void set_while_waiting(void)
{
    printf("4. a waiter at 1 token per second, and the rate raised to 1000 per second\n");
    crew_rate *r = NULL;
    check(crew_rate_create(&r, 1, 1) == 0, "create");
    check(crew_rate_allow(r), "take the one token");
    sleeper s = {r, 1};
    int64_t start = crew_now();
    pthread_t t;
    check(pthread_create(&t, NULL, wait_one, &s) == 0, "thread");
    while (crew_rate_waiters(r) == 0)
        crew_ctx_wait(NULL, crew_deadline_in(CREW_MSEC));
    printf("   the waiter sleeps, due at about 1000 ms; at %.0f ms the rate goes up\n",
           ms_since(start));
    check(crew_rate_set(r, 1000, 1) == 0, "set");
    pthread_join(t, NULL);
    printf("   it started at %.0f ms: %s\n", ms_since(start), crew_err_name(s.rc));
    check(s.rc == 0, "the waiter gets its token");
    crew_rate_destroy(r);
}

int main(int argc, char **argv)
{
    int jobs = argc > 1 ? atoi(argv[1]) : 10;
    if (jobs < 1 || jobs > 10000) {
        fprintf(stderr, "usage: ratelimit [JOBS]  (1..10000)\n");
        return 2;
    }
    rate_limited_pool(jobs);
    deadline_first();
    burst_allow_reserve();
    set_while_waiting();
    if (failures) {
        printf("ratelimit: %d checks failed\n", failures);
        return 1;
    }
    printf("ratelimit: ok\n");
    return 0;
}
