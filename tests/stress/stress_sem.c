/*
 * Stress test for src/sem.c: threads acquiring and releasing random weights of one
 * semaphore with every kind of call mixed at random (blocking, try, deadline, a shared ctx
 * that a chaos thread keeps cancelling, a per-call ctx whose deadline the timer fires).
 *
 * What must hold: the units in use (counted by the threads themselves between their
 * acquire and their release) never exceed the size; every successful acquire is matched
 * by exactly one release, which returns 0; every call returns one of the codes its mode
 * allows; a blocking call without a deadline or ctx always succeeds (large requests are not
 * starved: the test would hang); at the end all units are free and nobody is queued. With
 * size 1 the semaphore is a lock around a plain counter, which ThreadSanitizer checks for
 * a missing happens-before. Helper threads never assert: they count violations, which the
 * main thread checks after joining them.
 */
#include "internal.h"
#include "testutil.h"

#include <sched.h>
#include <string.h>
#include <time.h>

#define THREADS 6

typedef struct world {
    crew_sem *s;
    int64_t size;
    long ops;                /* acquires each thread attempts */
    _Atomic int64_t in_use;  /* units held, as the holders count them */
    _Atomic int64_t peak;    /* the most in_use ever seen */
    long plain;              /* a plain counter, guarded by the semaphore when size is 1 */
    _Atomic long violations; /* broken rules seen by helper threads */
    _Atomic bool chaos_stop; /* set when the chaos thread must exit */
    pthread_mutex_t gmu;     /* guards gctx */
    crew_ctx *gctx;          /* the shared ctx, replaced after each cancel: under gmu */
    uint64_t seed;
} world;

typedef struct actor {
    world *w;
    uint64_t seed;
    long acquired, released; /* successful acquires and releases */
    int64_t units;           /* units acquired (and so released) in all */
    long forever;            /* blocking calls without deadline or ctx: all must succeed */
    long failed;             /* acquires that failed as their mode allows */
    pthread_t tid;
} actor;

enum { MODE_FOREVER, MODE_TRY, MODE_DEADLINE, MODE_SHARED_CTX, MODE_TIMEOUT_CTX };

static int pick_mode(uint64_t *seed)
{
    uint64_t r = rng_next(seed) % 100;
    if (r < 40)
        return MODE_FOREVER;
    if (r < 55)
        return MODE_TRY;
    if (r < 75)
        return MODE_DEADLINE;
    if (r < 88)
        return MODE_SHARED_CTX;
    return MODE_TIMEOUT_CTX;
}

static void violation(world *w, const char *what, long a, long b)
{
    if (atomic_fetch_add(&w->violations, 1) < 10)
        fprintf(stderr, "violation: %s (%ld, %ld), seed %llu\n", what, a, b,
                (unsigned long long)w->seed);
}

static bool allowed(int mode, int rc)
{
    if (rc == 0)
        return true;
    switch (mode) {
    case MODE_TRY:
        return rc == CREW_EAGAIN;
    case MODE_DEADLINE: /* a deadline that passed before the call is a try */
        return rc == CREW_ETIMEDOUT || rc == CREW_EAGAIN;
    case MODE_SHARED_CTX:
        return rc == CREW_ECANCELED;
    case MODE_TIMEOUT_CTX:
        return rc == CREW_ETIMEDOUT;
    default:
        return false;
    }
}

/* A weight: mostly 1, sometimes a few units, now and then the whole semaphore. */
static int64_t pick_n(world *w, uint64_t *seed)
{
    uint64_t r = rng_next(seed) % 100;
    if (r < 60 || w->size == 1)
        return 1;
    if (r < 92)
        return 1 + (int64_t)(rng_next(seed) % (uint64_t)(w->size / 2));
    return w->size;
}

static void *worker(void *arg)
{
    actor *a = arg;
    world *w = a->w;
    for (long i = 0; i < w->ops; i++) {
        int64_t n = pick_n(w, &a->seed);
        int mode = pick_mode(&a->seed);
        int64_t deadline = CREW_FOREVER;
        crew_ctx *ctx = NULL;
        if (mode == MODE_TRY) {
            deadline = CREW_NOW;
        } else if (mode == MODE_DEADLINE) {
            deadline = crew_deadline_in((int64_t)(rng_next(&a->seed) % (200 * CREW_USEC)));
        } else if (mode == MODE_SHARED_CTX) {
            crew__check(pthread_mutex_lock(&w->gmu));
            ctx = crew_ctx_retain(w->gctx);
            crew__check(pthread_mutex_unlock(&w->gmu));
        } else if (mode == MODE_TIMEOUT_CTX) {
            int64_t t = 1 + (int64_t)(rng_next(&a->seed) % (300 * CREW_USEC));
            if (crew_ctx_with_timeout(NULL, t, &ctx) != 0) {
                violation(w, "crew_ctx_with_timeout failed", 0, 0);
                continue;
            }
        }
        int rc = crew_sem_acquire(w->s, n, deadline, ctx);
        if (ctx)
            crew_ctx_release(ctx);
        if (!allowed(mode, rc))
            violation(w, "acquire returned an unexpected code", mode, rc);
        if (rc != 0) {
            a->failed++;
            continue;
        }
        a->acquired++;
        a->units += n;
        a->forever += mode == MODE_FOREVER;
        int64_t now = atomic_fetch_add(&w->in_use, n) + n;
        if (now > w->size)
            violation(w, "more units in use than the size", (long)now, (long)w->size);
        int64_t peak = atomic_load(&w->peak);
        while (now > peak && !atomic_compare_exchange_weak(&w->peak, &peak, now))
            ;
        if (w->size == 1)
            w->plain++; /* a data race unless the semaphore orders it */
        if (rng_next(&a->seed) % 4 == 0)
            sched_yield(); /* hold the units a little longer now and then */
        atomic_fetch_sub(&w->in_use, n);
        rc = crew_sem_release(w->s, n);
        if (rc != 0)
            violation(w, "release of held units failed", (long)n, rc);
        else
            a->released++;
    }
    return NULL;
}

/* Cancels the shared ctx over and over, from its own thread, while calls wait on it. */
static void *chaos(void *arg)
{
    actor *a = arg;
    world *w = a->w;
    while (!atomic_load(&w->chaos_stop)) {
        /* Pacing the cancels, not synchronising anything. */
        struct timespec ts = {0, (long)(50 * CREW_USEC + rng_next(&a->seed) % (400 * CREW_USEC))};
        nanosleep(&ts, NULL);
        crew_ctx *fresh = NULL;
        if (crew_ctx_with_cancel(NULL, &fresh) != 0) {
            violation(w, "crew_ctx_with_cancel failed", 0, 0);
            break;
        }
        crew__check(pthread_mutex_lock(&w->gmu));
        crew_ctx *old = w->gctx;
        w->gctx = fresh;
        crew__check(pthread_mutex_unlock(&w->gmu));
        crew_ctx_cancel(old, 0);
        crew_ctx_release(old);
    }
    return NULL;
}

static void run(int64_t size, long ops, uint64_t seed)
{
    world w;
    memset(&w, 0, sizeof w);
    w.size = size;
    w.ops = ops;
    w.seed = seed;
    assert_int_equal(crew_sem_create(&w.s, size), 0);
    assert_int_equal(pthread_mutex_init(&w.gmu, NULL), 0);
    assert_int_equal(crew_ctx_with_cancel(NULL, &w.gctx), 0);

    actor act[THREADS], ch = {.w = &w, .seed = seed ^ 0xABCDEF};
    assert_int_equal(pthread_create(&ch.tid, NULL, chaos, &ch), 0);
    for (unsigned i = 0; i < THREADS; i++) {
        act[i] = (actor){.w = &w, .seed = seed * 31 + i + 1};
        assert_int_equal(pthread_create(&act[i].tid, NULL, worker, &act[i]), 0);
    }
    long acquired = 0, released = 0, forever = 0, failed = 0;
    int64_t units = 0;
    for (unsigned i = 0; i < THREADS; i++) {
        assert_int_equal(pthread_join(act[i].tid, NULL), 0);
        acquired += act[i].acquired;
        released += act[i].released;
        forever += act[i].forever;
        failed += act[i].failed;
        units += act[i].units;
    }
    atomic_store(&w.chaos_stop, true);
    assert_int_equal(pthread_join(ch.tid, NULL), 0);

    printf("size %lld: %ld acquires of %lld units, %ld failed as allowed, %ld blocking, peak "
           "%lld in use, seed %llu\n",
           (long long)size, acquired, (long long)units, failed, forever,
           (long long)atomic_load(&w.peak), (unsigned long long)seed);
    if (atomic_load(&w.violations))
        fail_msg("size %lld, seed %llu: %ld violations", (long long)size, (unsigned long long)seed,
                 (long)atomic_load(&w.violations));
    assert_int_equal(acquired, released);
    assert_int_equal(acquired + failed, THREADS * ops);
    assert_true(forever > 0);
    assert_true(atomic_load(&w.peak) <= size);
    assert_int_equal(atomic_load(&w.in_use), 0);
    if (size == 1)
        assert_int_equal(w.plain, acquired);
    assert_int_equal(crew_sem_available(w.s), size);
    assert_int_equal(crew_sem_waiters(w.s), 0);
    /* Every unit came back: a release beyond the size is still refused. */
    assert_int_equal(crew_sem_release(w.s, 1), CREW_ERANGE);

    crew_ctx_release(w.gctx);
    assert_int_equal(pthread_mutex_destroy(&w.gmu), 0);
    crew_sem_destroy(w.s);
}

static uint64_t base_seed(void)
{
    const char *s = getenv("CREW_STRESS_SEED");
    return s ? strtoull(s, NULL, 0) : (uint64_t)crew_now() | 1;
}

static void test_size1(void **state)
{
    (void)state;
    run(1, stress_scaled(12000), base_seed());
}

static void test_size8(void **state)
{
    (void)state;
    run(8, stress_scaled(12000), base_seed());
}

static void test_size_large(void **state)
{
    (void)state;
    run(1000, stress_scaled(12000), base_seed());
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        leak_test(test_size1),
        leak_test(test_size8),
        leak_test(test_size_large),
    };
    return cmocka_run_group_tests_name("stress_sem", tests, NULL, NULL);
}
