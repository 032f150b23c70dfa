/*
 * chaos.h - what the stress tests of blocking calls share (stress_sem.c, stress_rate.c; the
 * same shape as the ones in stress_chan.c): the replayable seed, violations counted by
 * helper threads, and the five ways a blocking call is made at random:
 *
 *   CALL_FOREVER      no deadline, no ctx: must succeed
 *   CALL_TRY          CREW_NOW: may fail with CREW_EAGAIN
 *   CALL_DEADLINE     a deadline up to max_wait away: CREW_ETIMEDOUT, or CREW_EAGAIN when it
 *                     passed before the call looked
 *   CALL_SHARED_CTX   a ctx that a chaos thread keeps cancelling and replacing: CREW_ECANCELED
 *   CALL_TIMEOUT_CTX  a fresh ctx that times out within max_wait: CREW_ETIMEDOUT
 */
#ifndef CREW_STRESS_CHAOS_H
#define CREW_STRESS_CHAOS_H

#include "internal.h"
#include "testutil.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { CALL_FOREVER, CALL_TRY, CALL_DEADLINE, CALL_SHARED_CTX, CALL_TIMEOUT_CTX, CALL_KINDS };

typedef struct chaos {
    uint64_t seed;           /* the run's seed, printed with every violation */
    _Atomic long violations; /* broken rules seen by helper threads */
    _Atomic bool stop;       /* set when the chaos thread must exit */
    pthread_mutex_t mu;      /* guards ctx */
    crew_ctx *ctx;           /* the shared ctx, replaced after each cancel: under mu */
    uint64_t rng;            /* the chaos thread's own generator */
    pthread_t tid;
} chaos;

/* Counts a violation and prints the first ten, with the seed that replays them. */
static inline void chaos_violation(chaos *c, const char *what, long a, long b)
{
    if (atomic_fetch_add(&c->violations, 1) < 10)
        fprintf(stderr, "violation: %s (%ld, %ld), seed %llu\n", what, a, b,
                (unsigned long long)c->seed);
}

/* Puts a fresh ctx in *shared (guarded by mu) and cancels the one it replaces, so that
 * whoever waits on the old one sees a cancel. 0, or crew_ctx_with_cancel's error (then
 * nothing changed). Shared by every stress test whose calls wait on a ctx being cancelled. */
static inline int chaos_replace_ctx(pthread_mutex_t *mu, crew_ctx **shared)
{
    crew_ctx *fresh = NULL;
    int rc = crew_ctx_with_cancel(NULL, &fresh);
    if (rc != 0)
        return rc;
    crew__check(pthread_mutex_lock(mu));
    crew_ctx *old = *shared;
    *shared = fresh;
    crew__check(pthread_mutex_unlock(mu));
    crew_ctx_cancel(old, 0);
    crew_ctx_release(old);
    return 0;
}

/* Cancels the shared ctx over and over, from its own thread, while calls wait on it. */
static inline void *chaos_main(void *arg)
{
    chaos *c = arg;
    while (!atomic_load(&c->stop)) {
        /* Pacing the cancels, not synchronising anything. */
        struct timespec ts = {0, (long)(50 * CREW_USEC + rng_next(&c->rng) % (400 * CREW_USEC))};
        nanosleep(&ts, NULL);
        if (chaos_replace_ctx(&c->mu, &c->ctx) != 0) {
            chaos_violation(c, "crew_ctx_with_cancel failed", 0, 0);
            break;
        }
    }
    return NULL;
}

static inline void chaos_start(chaos *c, uint64_t seed)
{
    memset(c, 0, sizeof *c);
    c->seed = seed;
    c->rng = seed ^ 0xABCDEF;
    assert_int_equal(pthread_mutex_init(&c->mu, NULL), 0);
    assert_int_equal(crew_ctx_with_cancel(NULL, &c->ctx), 0);
    assert_int_equal(pthread_create(&c->tid, NULL, chaos_main, c), 0);
}

/* Stops the chaos thread; returns the violations counted. */
static inline long chaos_stop(chaos *c)
{
    atomic_store(&c->stop, true);
    assert_int_equal(pthread_join(c->tid, NULL), 0);
    crew_ctx_release(c->ctx);
    assert_int_equal(pthread_mutex_destroy(&c->mu), 0);
    return atomic_load(&c->violations);
}

/* Picks how to make a call, with the given percentages for the first four kinds (the rest
 * is CALL_TIMEOUT_CTX), and sets its deadline and ctx; the caller releases a non-NULL *ctx
 * after the call. Returns the kind, or -1 if a ctx could not be made (a violation). */
static inline int chaos_call(chaos *c, uint64_t *rng, const int pct[4], int64_t max_wait,
                             int64_t *deadline, crew_ctx **ctx)
{
    int r = (int)(rng_next(rng) % 100), kind = 0, acc = 0;
    while (kind < 4 && r >= (acc += pct[kind]))
        kind++;
    *deadline = CREW_FOREVER;
    *ctx = NULL;
    switch (kind) {
    case CALL_TRY:
        *deadline = CREW_NOW;
        break;
    case CALL_DEADLINE:
        *deadline = crew_deadline_in((int64_t)(rng_next(rng) % (uint64_t)max_wait));
        break;
    case CALL_SHARED_CTX:
        crew__check(pthread_mutex_lock(&c->mu));
        *ctx = crew_ctx_retain(c->ctx);
        crew__check(pthread_mutex_unlock(&c->mu));
        break;
    case CALL_TIMEOUT_CTX:
        if (crew_ctx_with_timeout(NULL, 1 + (int64_t)(rng_next(rng) % (uint64_t)max_wait), ctx) !=
            0) {
            chaos_violation(c, "crew_ctx_with_timeout failed", 0, 0);
            return -1;
        }
        break;
    default:
        break;
    }
    return kind;
}

/* True if a call made this way may return rc (other than 0, always allowed). */
static inline bool chaos_allowed(int kind, int rc)
{
    switch (kind) {
    case CALL_TRY:
        return rc == 0 || rc == CREW_EAGAIN;
    case CALL_DEADLINE:
        return rc == 0 || rc == CREW_ETIMEDOUT || rc == CREW_EAGAIN;
    case CALL_SHARED_CTX:
        return rc == 0 || rc == CREW_ECANCELED;
    case CALL_TIMEOUT_CTX:
        return rc == 0 || rc == CREW_ETIMEDOUT;
    default:
        return rc == 0;
    }
}

#endif
