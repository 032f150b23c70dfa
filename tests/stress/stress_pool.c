/*
 * stress_pool - the pool under fire: many producers using every submit form with random
 * deadlines and ctx cancellation, futures released at random, resizes while busy, and each
 * of the shutdowns racing with the submits. Afterwards every job is accounted for exactly
 * once: accepted jobs ran or were dropped (once, never both), refused jobs never ran, the
 * counters and the results channel agree, and no thread or fd is left.
 *
 * CREW_STRESS_SCALE scales the rounds and jobs (see tests/testutil.h).
 */
#include "internal.h"
#include "testutil.h"

#include <pthread.h>
#include <string.h>

#define PRODUCERS 4

typedef struct jobrec {
    _Atomic int accepted; /* the submit returned 0 */
    _Atomic int ran;      /* fn was called */
    _Atomic int dropped;  /* the discard callback was called */
    int kind;             /* 0 quick, 1 fails, 2 waits on its ctx for a while */
} jobrec;

typedef struct round_state {
    crew_pool *pool;
    jobrec *jobs;
    long per_producer;
    crew_ctx *chaos_ctx; /* producers pass it to some submits; chaos cancels it */
    _Atomic int stop;    /* producers: stop submitting */
    _Atomic long results_seen;
    _Atomic long refused_after_shutdown;
    _Atomic long attempts; /* submits made so far */
    uint64_t seed;
} round_state;

static int job_fn(crew_ctx *ctx, void *arg)
{
    jobrec *j = arg;
    crew_assert(atomic_fetch_add(&j->ran, 1) == 0);
    switch (j->kind) {
    case 1:
        return -EIO;
    case 2:
        if (crew_ctx_wait(ctx, crew_deadline_in(200 * CREW_USEC)) == 0)
            return crew_ctx_err(ctx);
        return 0;
    default:
        return 0;
    }
}

static void discard_fn(crew_job_fn fn, void *arg, int reason)
{
    crew_assert(fn == job_fn);
    crew_assert(reason == CREW_ECANCELED || reason == CREW_ETIMEDOUT);
    jobrec *j = arg;
    crew_assert(atomic_fetch_add(&j->dropped, 1) == 0);
}

typedef struct producer {
    round_state *r;
    int id;
} producer;

static void *produce(void *arg)
{
    producer *pr = arg;
    round_state *r = pr->r;
    uint64_t seed = r->seed ^ (uint64_t)(pr->id + 1) * 0x9E3779B97F4A7C15ull;
    for (long i = 0; i < r->per_producer && !atomic_load(&r->stop); i++) {
        long id = pr->id * r->per_producer + i;
        atomic_fetch_add(&r->attempts, 1);
        jobrec *j = &r->jobs[id];
        uint64_t x = rng_next(&seed);
        j->kind = (int)(x % 10 == 0 ? 1 : x % 10 == 1 ? 2 : 0);
        int64_t deadline;
        switch ((x >> 8) % 4) {
        case 0:
            deadline = CREW_NOW;
            break;
        case 1:
            deadline = crew_deadline_in((int64_t)((x >> 16) % 500) * CREW_USEC);
            break;
        default:
            deadline = CREW_FOREVER;
        }
        crew_ctx *ctx = (x >> 20) % 3 == 0 ? r->chaos_ctx : NULL;
        int rc;
        if ((x >> 24) % 3 == 0) {
            crew_future *f = NULL;
            crew_job job = {.fn = job_fn,
                            .arg = j,
                            .priority = (unsigned)(x >> 28) % 3,
                            .timeout = (x >> 30) % 4 == 0 ? 100 * CREW_USEC : 0,
                            .queue_timeout = (x >> 32) % 8 == 0 ? 50 * CREW_USEC : 0};
            rc = crew_pool_submit_job(r->pool, &job, (x >> 34) % 2 ? &f : NULL, deadline, ctx);
            if (rc == 0 && f) {
                if ((x >> 35) % 2) {
                    crew_assert(crew_future_wait(f, CREW_FOREVER, NULL) == 0);
                    int err = crew_future_err(f);
                    crew_assert(crew_future_ran(f) ? atomic_load(&j->ran) == 1
                                                   : atomic_load(&j->dropped) == 1);
                    (void)err;
                }
                crew_future_release(f);
            }
        } else {
            rc = crew_pool_submit(r->pool, job_fn, j, deadline, ctx);
        }
        if (rc == 0) {
            atomic_store(&j->accepted, 1);
        } else {
            crew_assert(rc == CREW_EAGAIN || rc == CREW_ETIMEDOUT || rc == CREW_ECANCELED ||
                        rc == CREW_ESHUTDOWN);
            if (rc == CREW_ESHUTDOWN)
                atomic_fetch_add(&r->refused_after_shutdown, 1);
        }
    }
    return NULL;
}

static void *consume_results(void *arg)
{
    round_state *r = arg;
    crew_result res;
    while (crew_chan_recv(crew_pool_results(r->pool), &res, CREW_FOREVER, NULL) == 0) {
        jobrec *j = res.arg;
        crew_assert(res.ran ? atomic_load(&j->ran) == 1 : atomic_load(&j->dropped) == 1);
        atomic_fetch_add(&r->results_seen, 1);
    }
    return NULL;
}

static void one_round(uint64_t seed, long per_producer)
{
    round_state r = {.per_producer = per_producer, .seed = seed};
    uint64_t x = rng_next(&seed);
    static const size_t caps[] = {0, 1, 16, 256};
    unsigned workers = 1 + (unsigned)(x % 4);
    crew_pool_opts o = {
        .workers = workers,
        .max_workers = (x >> 4) % 2 ? workers + 2 : 0,
        .queue_cap = caps[(x >> 8) % 4],
        .idle_timeout = CREW_MSEC,
        .job_timeout = (x >> 12) % 3 == 0 ? 150 * CREW_USEC : 0,
        .queue_timeout = (x >> 14) % 4 == 0 ? 100 * CREW_USEC : 0,
        .priorities = 1 + (unsigned)((x >> 16) % 3),
        .discard = discard_fn,
        .results = (x >> 18) % 2,
        .flags = (x >> 20) % 4 == 0 ? 0 : CREW_POOL_TIMING,
    };
    assert_int_equal(crew_pool_create(&r.pool, &o), 0);
    long total = PRODUCERS * per_producer;
    r.jobs = calloc((size_t)total, sizeof(jobrec));
    assert_int_equal(crew_ctx_with_cancel(NULL, &r.chaos_ctx), 0);

    pthread_t prod[PRODUCERS], cons;
    producer pr[PRODUCERS];
    if (o.results)
        pthread_create(&cons, NULL, consume_results, &r);
    for (int i = 0; i < PRODUCERS; i++) {
        pr[i] = (producer){&r, i};
        pthread_create(&prod[i], NULL, produce, &pr[i]);
    }

    /* Chaos: resizes while busy, a ctx cancel, then, with about half the jobs submitted, a
     * shutdown that races with the producers. */
    for (int i = 0; i < 5; i++) {
        while (atomic_load(&r.attempts) < total * (i + 1) / 10)
            sched_yield();
        uint64_t y = rng_next(&seed);
        unsigned min = 1 + (unsigned)(y % 4);
        int rc = crew_pool_resize(r.pool, min, min + (unsigned)((y >> 4) % 3));
        assert_true(rc == 0);
        if (i == 2)
            crew_ctx_cancel(r.chaos_ctx, 0);
        sched_yield();
    }
    int how = (int)(rng_next(&seed) % 4);
    switch (how) {
    case 0: /* graceful: close, then wait */
        crew_pool_close(r.pool);
        assert_int_equal(crew_pool_wait(r.pool, CREW_FOREVER), 0);
        break;
    case 1: /* emergency */
        crew_pool_cancel(r.pool, 0);
        assert_int_equal(crew_pool_wait(r.pool, CREW_FOREVER), 0);
        break;
    case 2: { /* a drain with a short deadline */
        int rc = crew_pool_drain(r.pool, crew_deadline_in(200 * CREW_USEC));
        assert_true(rc == 0 || rc == CREW_ETIMEDOUT);
        break;
    }
    default: /* destroy does it all */
        break;
    }
    atomic_store(&r.stop, 1);
    for (int i = 0; i < PRODUCERS; i++)
        pthread_join(prod[i], NULL);
    if (how == 3) {
        crew_pool_cancel(r.pool, 0);
        assert_int_equal(crew_pool_wait(r.pool, CREW_FOREVER), 0);
    }
    if (o.results)
        pthread_join(cons, NULL);

    /* Every job exactly once. */
    long accepted = 0, ran = 0, dropped = 0;
    for (long i = 0; i < total; i++) {
        jobrec *j = &r.jobs[i];
        int a = atomic_load(&j->accepted), rn = atomic_load(&j->ran), d = atomic_load(&j->dropped);
        if (a) {
            if (rn + d != 1)
                fail_msg("job %ld accepted but ran %d times and was dropped %d times", i, rn, d);
        } else if (rn + d != 0) {
            fail_msg("job %ld refused but ran %d, dropped %d", i, rn, d);
        }
        accepted += a;
        ran += rn;
        dropped += d;
    }
    crew_stats s;
    crew_pool_stats(r.pool, &s);
    assert_int_equal(s.queued, 0);
    assert_int_equal(s.running, 0);
    assert_int_equal(s.workers, 0);
    assert_int_equal(s.started, ran);
    assert_int_equal(s.succeeded + s.failed + s.cancelled + s.timed_out, accepted);
    if (s.submitted != (uint64_t)accepted)
        fail_msg("submitted %llu, accepted %ld (cap %zu, workers %u-%u, levels %u, how %d)",
                 (unsigned long long)s.submitted, accepted, o.queue_cap, o.workers, o.max_workers,
                 o.priorities, how);
    if (o.results)
        assert_int_equal(atomic_load(&r.results_seen), accepted);
    (void)dropped;

    crew_pool_destroy(r.pool);
    crew_ctx_release(r.chaos_ctx);
    free(r.jobs);
}

static void test_accounting(void **state)
{
    (void)state;
    long rounds = stress_scaled(40);
    uint64_t seed = stress_seed();
    print_message("stress_pool: seed %llu (set CREW_STRESS_SEED to replay)\n",
                  (unsigned long long)seed);
    for (long i = 0; i < rounds; i++)
        one_round(rng_next(&seed) | 1, stress_scaled(2000));
}

/* Producers hammer a pool that closes under them: once close returns, no submit from
 * outside succeeds, and everything accepted before runs. */
typedef struct closer {
    crew_pool *p;
    _Atomic long accepted, after_close;
    _Atomic int closed;
} closer;

static _Atomic long close_ran;

static int close_job(crew_ctx *ctx, void *arg)
{
    (void)ctx;
    (void)arg;
    atomic_fetch_add(&close_ran, 1);
    return 0;
}

static void *close_producer(void *arg)
{
    closer *c = arg;
    for (;;) {
        int closed_before = atomic_load(&c->closed);
        int rc = crew_pool_submit(c->p, close_job, NULL, CREW_FOREVER, NULL);
        if (rc == 0) {
            atomic_fetch_add(&c->accepted, 1);
            if (closed_before)
                atomic_fetch_add(&c->after_close, 1);
        } else {
            crew_assert(rc == CREW_ESHUTDOWN);
            return NULL;
        }
    }
}

static void test_close_races_submit(void **state)
{
    (void)state;
    for (long round = 0; round < stress_scaled(50); round++) {
        atomic_store(&close_ran, 0);
        closer c = {0};
        assert_int_equal(crew_pool_create(&c.p, &(crew_pool_opts){.workers = 2, .queue_cap = 8}),
                         0);
        pthread_t t[3];
        for (int i = 0; i < 3; i++)
            pthread_create(&t[i], NULL, close_producer, &c);
        while (atomic_load(&c.accepted) < 100)
            sched_yield();
        crew_pool_close(c.p);
        atomic_store(&c.closed, 1);
        for (int i = 0; i < 3; i++)
            pthread_join(t[i], NULL);
        assert_int_equal(crew_pool_wait(c.p, CREW_FOREVER), 0);
        assert_int_equal(atomic_load(&c.after_close), 0);
        assert_int_equal(atomic_load(&close_ran), atomic_load(&c.accepted));
        crew_pool_destroy(c.p);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        leak_test(test_accounting),
        leak_test(test_close_races_submit),
    };
    return cmocka_run_group_tests_name("stress_pool", tests, NULL, NULL);
}
