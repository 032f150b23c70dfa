/*
 * stress_retry - many threads retrying at once, each with random policies (attempts,
 * backoff base, cap and factor, jitter or not, a predicate or the default), a flaky function
 * that fails at random, and a random ctx: none, a shared one a chaos thread keeps
 * cancelling, or a short timeout. Each thread also draws delays with its own rng state.
 *
 * What must hold, for every call: *tries equals the calls of fn it made; fn is never called
 * after it succeeded; 0 comes back exactly when the last call succeeded; fn's last error
 * comes back only when the attempts were spent, the predicate refused it, or the ctx's
 * deadline was too near for another try; the ctx's error only when the ctx is done; the
 * retry hook ran before each backoff (tries - 1 times, or tries times when the ctx ended the
 * last backoff); every delay lies in [0, ceiling]. Helper threads count violations; the
 * main thread checks them. CREW_STRESS_SEED replays a run; CREW_STRESS_SCALE scales it.
 */
#include "chaos.h"
#include "internal.h"
#include "retry_internal.h"
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define THREADS 6

typedef struct world {
    long calls_per_thread;
    _Atomic long violations;
    _Atomic long stop_chaos;
    pthread_mutex_t gmu;      /* guards shared */
    crew_ctx *shared;         /* cancelled again and again by the chaos thread */
    _Atomic long outcomes[5]; /* success, spent, refused, deadline near, ctx */
    uint64_t seed;
} world;

enum { OK, SPENT, REFUSED, NEAR, CTX };

static void violation(world *w, const char *what, long a, long b)
{
    if (atomic_fetch_add(&w->violations, 1) < 10)
        fprintf(stderr, "violation: %s (%ld, %ld), seed %llu\n", what, a, b,
                (unsigned long long)w->seed);
}

/* One retried operation: fails with `err` while its per-call rng says so. */
typedef struct op {
    world *w;
    uint64_t rng;
    unsigned fail_pct; /* chance of failing, per call */
    int err;           /* what a failure returns */
    unsigned calls;    /* calls made */
    int last;          /* what the last call returned */
    bool succeeded;    /* a call returned 0 */
    unsigned hooks;    /* backoffs announced */
} op;

static int op_fn(crew_ctx *ctx, void *arg)
{
    (void)ctx;
    op *o = arg;
    if (o->succeeded)
        violation(o->w, "called after a success", (long)o->calls, 0);
    o->calls++;
    o->last = rng_next(&o->rng) % 100 < o->fail_pct ? o->err : 0;
    o->succeeded = o->last == 0;
    return o->last;
}

static bool not_ebusy(int err, void *arg)
{
    (void)arg;
    return err != CREW_EBUSY;
}

static void on_retry(void *arg, int err, unsigned attempt, int64_t delay)
{
    op *o = arg;
    o->hooks++;
    if (err != o->last || attempt != o->calls || delay < 0)
        violation(o->w, "hook arguments", err, (long)attempt);
}

static void *runner(void *arg)
{
    world *w = ((void **)arg)[0];
    uint64_t seed = (uint64_t)(uintptr_t)((void **)arg)[1];
    for (long i = 0; i < w->calls_per_thread; i++) {
        uint64_t x = rng_next(&seed);
        crew_retry pol = {
            .attempts = (unsigned)(x % 6),                      /* 0 = 3 */
            .base = 1 + (int64_t)((x >> 4) % (20 * CREW_USEC)), /* 1 ns .. 20 us */
            .cap = (x >> 20) % 4 ? 1 + (int64_t)((x >> 24) % (60 * CREW_USEC)) : 0,
            .factor = (x >> 40) % 3 ? 1.0 + (double)((x >> 42) % 30) / 10 : 0,
            .no_jitter = (x >> 50) % 4 == 0,
            .retryable = (x >> 52) % 3 == 0 ? not_ebusy : NULL,
        };
        if (pol.cap == 0)
            pol.cap = 50 * CREW_USEC; /* the default 30 s would make this test crawl */
        crew__retry_plan plan;
        if (crew__retry_plan_init(&plan, &pol) != 0) {
            violation(w, "a valid policy refused", (long)i, 0);
            continue;
        }
        /* Delays drawn here stay in bounds. */
        uint64_t drng = x;
        for (unsigned k = 1; k < 8; k++) {
            int64_t d = crew_retry_delay(&pol, k, &drng);
            double c = (double)plan.base * pow(plan.factor, (double)(k - 1));
            int64_t ceiling = c >= (double)plan.cap ? plan.cap : (int64_t)c;
            /* libm's pow and the library's own power may round the last bit apart. */
            int64_t slack = 1 + ceiling / 1000000000;
            if (d < 0 || d > ceiling + slack || (pol.no_jitter && llabs(d - ceiling) > slack))
                violation(w, "delay out of bounds", (long)d, (long)ceiling);
        }

        op o = {.w = w, .rng = rng_next(&seed), .fail_pct = (unsigned)((x >> 56) % 90)};
        o.err = (x >> 8) % 5 == 0 ? CREW_EBUSY : -EIO;
        crew_ctx *ctx = NULL;
        int kind = (int)((x >> 32) % 3);
        if (kind == 1) {
            crew__check(pthread_mutex_lock(&w->gmu));
            ctx = crew_ctx_retain(w->shared);
            crew__check(pthread_mutex_unlock(&w->gmu));
        } else if (kind == 2 &&
                   crew_ctx_with_timeout(NULL, 1 + (int64_t)((x >> 12) % (100 * CREW_USEC)),
                                         &ctx) != 0) {
            violation(w, "crew_ctx_with_timeout failed", 0, 0);
            continue;
        }
        bool done_before = crew_ctx_done(ctx);
        unsigned tries = 12345;
        int rc = crew__retry_run(&plan, op_fn, &o, ctx, &tries, on_retry, &o);

        if (tries != o.calls)
            violation(w, "tries differ from the calls", (long)tries, (long)o.calls);
        /* fn fails with CREW_EBUSY or -EIO, a ctx with CREW_ECANCELED or CREW_ETIMEDOUT:
         * the code says who ended the loop. */
        bool by_ctx = crew_ctx_done(ctx) && rc == crew_ctx_err(ctx);
        if (rc == 0) {
            if (!o.succeeded)
                violation(w, "0 without a success", (long)o.last, 0);
            atomic_fetch_add(&w->outcomes[OK], 1);
        } else if (o.succeeded) {
            violation(w, "an error after a success", rc, 0);
        } else if (tries > 0 && rc == o.last) {
            if (tries == plan.attempts)
                atomic_fetch_add(&w->outcomes[SPENT], 1);
            else if (plan.retryable && o.last == CREW_EBUSY)
                atomic_fetch_add(&w->outcomes[REFUSED], 1);
            else if (crew_ctx_deadline(ctx) != CREW_FOREVER)
                atomic_fetch_add(&w->outcomes[NEAR], 1);
            else
                violation(w, "fn's error for no reason", rc, (long)tries);
        } else if (by_ctx) {
            atomic_fetch_add(&w->outcomes[CTX], 1);
        } else {
            violation(w, "unexplained result", rc, (long)tries);
        }
        if (done_before && tries != 0)
            violation(w, "ran with a ctx already done", (long)tries, 0);
        /* A hook before each backoff: one fewer than the tries, unless the ctx ended the
         * last backoff. */
        if (tries == 0 ? o.hooks != 0 : !(o.hooks + 1 == tries || (o.hooks == tries && by_ctx)))
            violation(w, "hooks", (long)o.hooks, (long)tries);
        if (ctx)
            crew_ctx_release(ctx);
    }
    return NULL;
}

static void *chaos_thread(void *arg)
{
    world *w = arg;
    uint64_t seed = w->seed ^ 0xC4A05;
    while (!atomic_load(&w->stop_chaos)) {
        struct timespec ts = {0, (long)(10 * CREW_USEC + rng_next(&seed) % (100 * CREW_USEC))};
        nanosleep(&ts, NULL); /* pacing the cancels, not synchronising */
        if (chaos_replace_ctx(&w->gmu, &w->shared) != 0) {
            violation(w, "crew_ctx_with_cancel failed", 0, 0);
            break;
        }
    }
    return NULL;
}

static void test_retry_storm(void **state)
{
    (void)state;
    world w;
    memset(&w, 0, sizeof w);
    w.seed = stress_seed();
    w.calls_per_thread = stress_scaled(4000);
    assert_int_equal(pthread_mutex_init(&w.gmu, NULL), 0);
    assert_int_equal(crew_ctx_with_cancel(NULL, &w.shared), 0);
    pthread_t ch, t[THREADS];
    void *args[THREADS][2];
    assert_int_equal(pthread_create(&ch, NULL, chaos_thread, &w), 0);
    for (int i = 0; i < THREADS; i++) {
        args[i][0] = &w;
        args[i][1] = (void *)(uintptr_t)(w.seed * 131 + (uint64_t)i + 1);
        assert_int_equal(pthread_create(&t[i], NULL, runner, args[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    atomic_store(&w.stop_chaos, 1);
    assert_int_equal(pthread_join(ch, NULL), 0);
    printf("stress_retry: seed %llu, %ld calls: %ld succeeded, %ld spent, %ld refused, %ld "
           "deadline near, %ld ended by the ctx\n",
           (unsigned long long)w.seed, w.calls_per_thread * THREADS,
           (long)atomic_load(&w.outcomes[OK]), (long)atomic_load(&w.outcomes[SPENT]),
           (long)atomic_load(&w.outcomes[REFUSED]), (long)atomic_load(&w.outcomes[NEAR]),
           (long)atomic_load(&w.outcomes[CTX]));
    if (atomic_load(&w.violations))
        fail_msg("seed %llu: %ld violations", (unsigned long long)w.seed,
                 (long)atomic_load(&w.violations));
    long total = 0;
    for (int k = 0; k < 5; k++)
        total += atomic_load(&w.outcomes[k]);
    assert_int_equal(total, w.calls_per_thread * THREADS);
    assert_true(atomic_load(&w.outcomes[OK]) > 0 && atomic_load(&w.outcomes[SPENT]) > 0 &&
                atomic_load(&w.outcomes[CTX]) > 0);
    crew_ctx_release(w.shared);
    assert_int_equal(pthread_mutex_destroy(&w.gmu), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        leak_test(test_retry_storm),
    };
    return cmocka_run_group_tests_name("stress_retry", tests, NULL, NULL);
}
