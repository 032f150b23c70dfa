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

#include "chaos.h"

#include <sched.h>
#include <string.h>

#define THREADS 6

typedef struct world {
    crew_sem *s;
    int64_t size;
    long ops;               /* acquires each thread attempts */
    _Atomic int64_t in_use; /* units held, as the holders count them */
    _Atomic int64_t peak;   /* the most in_use ever seen */
    long plain;             /* a plain counter, guarded by the semaphore when size is 1 */
    chaos ch;               /* the seed, the violations, the shared ctx */
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

/* How the acquires are made: 40% blocking, 15% try, 20% with a deadline, 13% with the
 * shared ctx, the rest with a ctx that times out. */
static const int call_pct[4] = {40, 15, 20, 13};

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
        int64_t n = pick_n(w, &a->seed), deadline;
        crew_ctx *ctx;
        int kind = chaos_call(&w->ch, &a->seed, call_pct, 300 * CREW_USEC, &deadline, &ctx);
        if (kind < 0)
            continue;
        int rc = crew_sem_acquire(w->s, n, deadline, ctx);
        if (ctx)
            crew_ctx_release(ctx);
        if (!chaos_allowed(kind, rc))
            chaos_violation(&w->ch, "acquire returned an unexpected code", kind, rc);
        if (rc != 0) {
            a->failed++;
            continue;
        }
        a->acquired++;
        a->units += n;
        a->forever += kind == CALL_FOREVER;
        int64_t now = atomic_fetch_add(&w->in_use, n) + n;
        if (now > w->size)
            chaos_violation(&w->ch, "more units in use than the size", (long)now, (long)w->size);
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
            chaos_violation(&w->ch, "release of held units failed", (long)n, rc);
        else
            a->released++;
    }
    return NULL;
}

static void run(int64_t size, long ops, uint64_t seed)
{
    world w;
    memset(&w, 0, sizeof w);
    w.size = size;
    w.ops = ops;
    assert_int_equal(crew_sem_create(&w.s, size), 0);
    chaos_start(&w.ch, seed);

    actor act[THREADS];
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
    long violations = chaos_stop(&w.ch);

    printf("size %lld: %ld acquires of %lld units, %ld failed as allowed, %ld blocking, peak "
           "%lld in use, seed %llu\n",
           (long long)size, acquired, (long long)units, failed, forever,
           (long long)atomic_load(&w.peak), (unsigned long long)seed);
    if (violations)
        fail_msg("size %lld, seed %llu: %ld violations", (long long)size, (unsigned long long)seed,
                 violations);
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

    crew_sem_destroy(w.s);
}

static void test_size1(void **state)
{
    (void)state;
    run(1, stress_scaled(12000), stress_seed());
}

static void test_size8(void **state)
{
    (void)state;
    run(8, stress_scaled(12000), stress_seed());
}

static void test_size_large(void **state)
{
    (void)state;
    run(1000, stress_scaled(12000), stress_seed());
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
