/*
 * Stress test for src/rate.c: threads taking tokens from one limiter with every kind of
 * call mixed at random (allow, reserve, and waits that block, try, have a deadline, share a
 * ctx that a chaos thread keeps cancelling, or have a ctx whose deadline the timer fires),
 * while, in some runs, a setter thread changes the rate and the burst, or switches between
 * unlimited, a finite rate and rate 0.
 *
 * What must hold: the limiter never runs ahead of its rate: the tokens granted with a due
 * instant before the end (allow and successful waits at their return, reservations at the
 * instant they said) are at most the burst plus the rate times the elapsed time (with a
 * changing rate, the largest of each); every call returns one of the codes its mode allows;
 * a wait without deadline or ctx always succeeds, and no sleeper misses the final switch to
 * unlimited (the test would hang); at the end nobody sleeps. Helper threads never assert:
 * they count violations, which the main thread checks after joining them.
 */
#include "internal.h"
#include "testutil.h"

#include "chaos.h"

#include <math.h>
#include <sched.h>
#include <string.h>
#include <time.h>

#define THREADS 6

enum { FIXED, CHANGING, SWITCHING }; /* what the setter thread does */

typedef struct world {
    crew_rate *r;
    int kind;            /* FIXED, CHANGING or SWITCHING */
    double rate;         /* the rate at creation, and the largest the setter uses */
    int64_t burst;       /* the same for the burst */
    long ops;            /* calls each thread makes (FIXED, CHANGING) */
    int64_t until;       /* when the threads stop calling (SWITCHING) */
    _Atomic int running; /* worker threads not finished yet */
    chaos ch;            /* the seed, the violations, the shared ctx */
} world;

typedef struct actor {
    world *w;
    uint64_t seed;
    int64_t *dues; /* the due instant of each token granted, one per token */
    long ndues;    /* entries used */
    long cap;      /* entries allocated */
    long forever;  /* waits without deadline or ctx (all must succeed) */
    long refused;  /* calls that failed as their mode allows */
    pthread_t tid;
} actor;

enum { OP_ALLOW, OP_RESERVE, OP_WAIT };

/* 15% allow, 7% reserve, the rest waits: of those, 42% blocking, 13% try, 19% with a
 * deadline, 13% with the shared ctx, 13% with a ctx that times out. */
static int pick_op(uint64_t *seed)
{
    uint64_t r = rng_next(seed) % 100;
    return r < 15 ? OP_ALLOW : r < 22 ? OP_RESERVE : OP_WAIT;
}

static const int wait_pct[4] = {42, 13, 19, 13};

static void granted(actor *a, int64_t n, int64_t due)
{
    if (a->w->kind == SWITCHING) { /* no bound to check: count them only */
        a->ndues += n;
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        if (a->ndues == a->cap) {
            a->cap = a->cap ? 2 * a->cap : 1024;
            a->dues = realloc(a->dues, (size_t)a->cap * sizeof *a->dues);
            if (!a->dues)
                abort();
        }
        a->dues[a->ndues++] = due;
    }
}

static void *worker(void *arg)
{
    actor *a = arg;
    world *w = a->w;
    for (long i = 0; w->kind == SWITCHING ? crew_now() < w->until : i < w->ops; i++) {
        int op = pick_op(&a->seed);
        int64_t n = 1 + (int64_t)(rng_next(&a->seed) % 3);
        if (n > w->burst)
            n = w->burst;
        if (op == OP_ALLOW) {
            /* The limiter may have seen a later instant than ours from another thread: the
             * token was granted at the latest when the call returned. */
            if (crew_rate_allow_n(w->r, n, crew_now()))
                granted(a, n, crew_now());
            continue;
        }
        if (op == OP_RESERVE) {
            n = 1; /* reservations pile up debt for everyone: keep them small */
            int64_t now = crew_now();
            int64_t d = crew_rate_reserve_n(w->r, n, now);
            if (d >= 0)
                granted(a, n, now + d);
            else if (!(w->kind == SWITCHING && d == CREW_EAGAIN)) /* rate 0 */
                chaos_violation(&w->ch, "reserve failed", (long)n, (long)d);
            continue;
        }
        int64_t deadline;
        crew_ctx *ctx;
        int kind = chaos_call(&w->ch, &a->seed, wait_pct, 800 * CREW_USEC, &deadline, &ctx);
        if (kind < 0)
            continue;
        int rc = crew_rate_wait_n(w->r, n, deadline, ctx);
        if (ctx)
            crew_ctx_release(ctx);
        /* A wait may also find n above a burst that the setter just lowered. */
        if (!chaos_allowed(kind, rc) && !(rc == CREW_EINVAL && w->kind != FIXED))
            chaos_violation(&w->ch, "wait returned an unexpected code", kind, rc);
        if (rc == 0) {
            granted(a, n, crew_now());
            a->forever += kind == CALL_FOREVER;
        } else {
            a->refused++;
        }
    }
    atomic_fetch_sub(&w->running, 1);
    return NULL;
}

/* Changes the limiter while the workers run; ends by making it unlimited, which must
 * release every sleeper. */
static void *setter(void *arg)
{
    actor *a = arg;
    world *w = a->w;
    bool unlimited = false;
    while (atomic_load(&w->running) > 0) {
        /* Unlimited only for a moment: the workers rush through their calls meanwhile. */
        long pause = unlimited ? 10 * CREW_USEC
                               : (long)(200 * CREW_USEC + rng_next(&a->seed) % (800 * CREW_USEC));
        struct timespec ts = {0, pause};
        nanosleep(&ts, NULL);
        double rate;
        int64_t burst = 1 + (int64_t)(rng_next(&a->seed) % (uint64_t)w->burst);
        if (w->kind == CHANGING) {
            rate = w->rate / 8 + (double)(rng_next(&a->seed) % 1000) / 1000 * (w->rate * 7 / 8);
        } else {
            /* Unlimited now and then, rate 0 often (the waiters sleep until the next
             * change), a finite rate most of the time. */
            uint64_t pick = rng_next(&a->seed) % 10;
            rate = pick == 0 ? CREW_RATE_INF : pick <= 3 ? 0 : w->rate;
            unlimited = pick == 0;
        }
        if (crew_rate_set(w->r, rate, burst) != 0)
            chaos_violation(&w->ch, "set failed", (long)rate, (long)burst);
    }
    if (w->kind == SWITCHING && crew_rate_set(w->r, CREW_RATE_INF, 1) != 0)
        chaos_violation(&w->ch, "set failed", 0, 1);
    return NULL;
}

static int cmp_i64(const void *x, const void *y)
{
    int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
    return (a > b) - (a < b);
}

static void run(int kind, double rate, int64_t burst, long ops, uint64_t seed)
{
    world w;
    memset(&w, 0, sizeof w);
    w.kind = kind;
    w.rate = rate;
    w.burst = burst;
    w.ops = ops;
    int64_t start = crew_now();
    w.until = start + ops * CREW_MSEC; /* for SWITCHING, ops counts milliseconds */
    assert_int_equal(crew_rate_create(&w.r, rate, burst), 0);
    chaos_start(&w.ch, seed);
    atomic_init(&w.running, THREADS);

    actor act[THREADS], st = {.w = &w, .seed = ~seed};
    for (unsigned i = 0; i < THREADS; i++) {
        act[i] = (actor){.w = &w, .seed = seed * 31 + i + 1};
        assert_int_equal(pthread_create(&act[i].tid, NULL, worker, &act[i]), 0);
    }
    if (kind != FIXED)
        assert_int_equal(pthread_create(&st.tid, NULL, setter, &st), 0);
    for (unsigned i = 0; i < THREADS; i++)
        assert_int_equal(pthread_join(act[i].tid, NULL), 0);
    int64_t end = crew_now();
    if (kind != FIXED)
        assert_int_equal(pthread_join(st.tid, NULL), 0);
    long violations = chaos_stop(&w.ch);

    /* All the tokens granted, by due instant. */
    long total = 0, forever = 0, refused = 0;
    for (unsigned i = 0; i < THREADS; i++) {
        total += act[i].ndues;
        forever += act[i].forever;
        refused += act[i].refused;
    }
    int64_t *dues = malloc((size_t)(total ? total : 1) * sizeof *dues);
    assert_non_null(dues);
    long k = 0;
    for (unsigned i = 0; i < THREADS && kind != SWITCHING; i++) {
        memcpy(dues + k, act[i].dues, (size_t)act[i].ndues * sizeof *dues);
        k += act[i].ndues;
        free(act[i].dues);
    }
    qsort(dues, (size_t)k, sizeof *dues, cmp_i64);
    printf("kind %d, rate %.0f/s, burst %lld: %ld tokens granted in %.3f s, %ld blocking waits, "
           "%ld refused as allowed, seed %llu\n",
           kind, rate, (long long)burst, total, (double)(end - start) / 1e9, forever, refused,
           (unsigned long long)seed);
    if (violations)
        fail_msg("kind %d, seed %llu: %ld violations", kind, (unsigned long long)seed, violations);
    assert_true(forever > 0);
    if (kind != SWITCHING) {
        /* By every instant t, no more than burst + rate * (t - start) tokens were due: checked
         * at each granted token's instant, which is where the count steps up. */
        double peak = 0;
        for (long i = 0; i < total && dues[i] <= end; i++) {
            double bound = (double)burst + rate * (double)(dues[i] - start) / 1e9 + 1e-3;
            peak = fmax(peak, (double)(i + 1) / bound);
            if ((double)(i + 1) > bound)
                fail_msg("kind %d, seed %llu: %ld tokens due %.6f s after the start, at most "
                         "%.3f allowed",
                         kind, (unsigned long long)seed, i + 1, (double)(dues[i] - start) / 1e9,
                         bound);
        }
        printf("  at most %.1f%% of the allowance was ever used\n", 100 * peak);
    }
    assert_int_equal(crew_rate_waiters(w.r), 0);
    free(dues);

    crew_rate_destroy(w.r);
}

static void test_fixed(void **state)
{
    (void)state;
    run(FIXED, 20000, 20, stress_scaled(1500), stress_seed());
}

static void test_fixed_burst1(void **state)
{
    (void)state;
    run(FIXED, 10000, 1, stress_scaled(600), stress_seed());
}

static void test_changing(void **state)
{
    (void)state;
    run(CHANGING, 30000, 20, stress_scaled(1500), stress_seed());
}

static void test_switching(void **state)
{
    (void)state;
    run(SWITCHING, 20000, 10, stress_scaled(300), stress_seed()); /* 300 ms */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        leak_test(test_fixed),
        leak_test(test_fixed_burst1),
        leak_test(test_changing),
        leak_test(test_switching),
    };
    return cmocka_run_group_tests_name("stress_rate", tests, NULL, NULL);
}
