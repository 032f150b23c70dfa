/*
 * calls.h - random kinds of blocking call for the stress tests of the blocking APIs.
 *
 * Each call a stress thread makes picks one kind: blocking, a try (CREW_NOW), a short
 * deadline, a ctx shared by all threads that a chaos thread keeps cancelling (and then
 * replacing), or a ctx of its own that times out. calls_allowed() says which failures
 * each kind may return. Include after testutil.h (and internal.h, for crew__check).
 */
#ifndef CREW_STRESS_CALLS_H
#define CREW_STRESS_CALLS_H

#include <string.h>
#include <time.h>

enum { MODE_FOREVER, MODE_TRY, MODE_DEADLINE, MODE_SHARED_CTX, MODE_TIMEOUT_CTX };

typedef struct calls {
    pthread_mutex_t mu;        /* guards shared */
    crew_ctx *shared;          /* the shared ctx, replaced after each cancel: under mu */
    _Atomic bool stop;         /* tells the chaos thread to exit */
    _Atomic long ctx_failures; /* ctx creations that failed (a test failure) */
    uint64_t seed;             /* the chaos thread's */
    pthread_t tid;             /* the chaos thread */
} calls;

/* Picks a kind of call; fills in its deadline and ctx (a reference the caller releases,
 * or NULL). */
static inline int calls_pick(calls *c, uint64_t *seed, int64_t *deadline, crew_ctx **ctx)
{
    uint64_t x = rng_next(seed) % 100;
    *deadline = CREW_FOREVER;
    *ctx = NULL;
    if (x < 40)
        return MODE_FOREVER;
    if (x < 55) {
        *deadline = CREW_NOW;
        return MODE_TRY;
    }
    if (x < 75) {
        *deadline = crew_deadline_in((int64_t)(rng_next(seed) % (250 * CREW_USEC)));
        return MODE_DEADLINE;
    }
    if (x < 90) {
        crew__check(pthread_mutex_lock(&c->mu));
        *ctx = crew_ctx_retain(c->shared);
        crew__check(pthread_mutex_unlock(&c->mu));
        return MODE_SHARED_CTX;
    }
    if (crew_ctx_with_timeout(NULL, 1 + (int64_t)(rng_next(seed) % (300 * CREW_USEC)), ctx))
        atomic_fetch_add(&c->ctx_failures, 1);
    return MODE_TIMEOUT_CTX;
}

/* True if rc is a failure that a call of this kind may return (0 always may). */
static inline bool calls_allowed(int mode, int rc)
{
    switch (mode) {
    case MODE_FOREVER:
        return false;
    case MODE_TRY:
        return rc == CREW_EAGAIN;
    case MODE_DEADLINE: /* a deadline that passed before the call is a try */
        return rc == CREW_EAGAIN || rc == CREW_ETIMEDOUT;
    case MODE_SHARED_CTX:
        return rc == CREW_ECANCELED;
    default:
        return rc == CREW_ETIMEDOUT;
    }
}

/* Cancels the shared ctx over and over while the calls wait on it. */
static inline void *calls_chaos(void *arg)
{
    calls *c = arg;
    while (!atomic_load(&c->stop)) {
        struct timespec ts = {0, (long)(50 * CREW_USEC + rng_next(&c->seed) % (400 * CREW_USEC))};
        nanosleep(&ts, NULL); /* pacing the cancels, not synchronising anything */
        crew_ctx *fresh = NULL;
        if (crew_ctx_with_cancel(NULL, &fresh) != 0) {
            atomic_fetch_add(&c->ctx_failures, 1);
            break;
        }
        crew__check(pthread_mutex_lock(&c->mu));
        crew_ctx *old = c->shared;
        c->shared = fresh;
        crew__check(pthread_mutex_unlock(&c->mu));
        crew_ctx_cancel(old, 0);
        crew_ctx_release(old);
    }
    return NULL;
}

static inline void calls_start(calls *c, uint64_t seed)
{
    memset(c, 0, sizeof *c);
    c->seed = seed;
    assert_int_equal(pthread_mutex_init(&c->mu, NULL), 0);
    assert_int_equal(crew_ctx_with_cancel(NULL, &c->shared), 0);
    assert_int_equal(pthread_create(&c->tid, NULL, calls_chaos, c), 0);
}

/* Stops the chaos thread and checks that no ctx creation failed. */
static inline void calls_stop(calls *c)
{
    atomic_store(&c->stop, true);
    assert_int_equal(pthread_join(c->tid, NULL), 0);
    crew_ctx_release(c->shared);
    assert_int_equal(pthread_mutex_destroy(&c->mu), 0);
    assert_int_equal(atomic_load(&c->ctx_failures), 0);
}

#endif
