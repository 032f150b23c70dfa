/* Tests for src/retry.c: the backoff schedule and its jitter's bounds and spread, overflow
 * safety, policy checks, attempts, the retry predicate, ctx cancellation before, during and
 * between tries, and the hook the pool counts retries with. */
#include "internal.h"
#include "retry_internal.h"
#include "testutil.h"

#include <limits.h>
#include <math.h>

/* ---- helpers --------------------------------------------------------------------------- */

/* A function that fails `fails` times with `err`, then succeeds; counts its calls. */
typedef struct flaky {
    int fails;
    int err;
    _Atomic int calls;
} flaky;

static int flaky_fn(crew_ctx *ctx, void *arg)
{
    (void)ctx;
    flaky *f = arg;
    int n = atomic_fetch_add(&f->calls, 1);
    return n < f->fails ? f->err : 0;
}

/* A fast policy for tests that count tries: backoffs of a nanosecond or two. */
static crew_retry quick(unsigned attempts)
{
    return (crew_retry){.attempts = attempts, .base = 1, .cap = 2};
}

/* The ceiling of retry k under p, as the header defines it, in long double. */
static int64_t ceiling_of(int64_t base, int64_t cap, double factor, unsigned k)
{
    long double c = (long double)base * powl((long double)factor, (long double)(k - 1));
    return c >= (long double)cap ? cap : (int64_t)c;
}

/* ---- the schedule ---------------------------------------------------------------------- */

static void test_defaults_schedule(void **state)
{
    (void)state;
    crew_retry fixed = {.no_jitter = true};
    int64_t want = 100 * CREW_MSEC;
    assert_int_equal(crew_retry_delay(&fixed, 0, NULL), 0);
    for (unsigned k = 1; k <= 12; k++) {
        assert_int_equal(crew_retry_delay(&fixed, k, NULL),
                         want < 30 * CREW_SEC ? want : 30 * CREW_SEC);
        want *= 2;
    }
    /* The defaults with jitter: within [0, ceiling]; NULL policy is the same. */
    uint64_t rng = 7;
    for (unsigned k = 1; k <= 12; k++) {
        int64_t c = ceiling_of(100 * CREW_MSEC, 30 * CREW_SEC, 2, k);
        for (int i = 0; i < 200; i++) {
            int64_t d = crew_retry_delay(NULL, k, &rng);
            assert_true(d >= 0 && d <= c);
            d = crew_retry_delay(&(crew_retry){0}, k, NULL);
            assert_true(d >= 0 && d <= c);
        }
    }
}

static void test_custom_schedule(void **state)
{
    (void)state;
    crew_retry p = {.base = 3 * CREW_MSEC, .cap = 1 * CREW_SEC, .factor = 1.5, .no_jitter = true};
    for (unsigned k = 1; k <= 40; k++)
        assert_int_equal(crew_retry_delay(&p, k, NULL), ceiling_of(p.base, p.cap, p.factor, k));
    /* factor 1: a constant backoff. */
    p = (crew_retry){.base = 5 * CREW_MSEC, .factor = 1, .no_jitter = true};
    for (unsigned k = 1; k <= 40; k++)
        assert_int_equal(crew_retry_delay(&p, k, NULL), 5 * CREW_MSEC);
    /* base above cap: the cap from the start. */
    p = (crew_retry){.base = 5 * CREW_SEC, .cap = CREW_SEC, .no_jitter = true};
    assert_int_equal(crew_retry_delay(&p, 1, NULL), CREW_SEC);
}

/* Full jitter: every draw within [0, ceiling], both ends reached, the spread uniform. */
static void test_jitter_distribution(void **state)
{
    (void)state;
    const struct {
        int64_t base, cap;
        double factor;
    } policies[] = {
        {CREW_MSEC, CREW_SEC, 2},
        {100 * CREW_MSEC, 30 * CREW_SEC, 2},
        {7, 1000, 3.5},
        {CREW_USEC, INT64_MAX, 10},
    };
    enum { DRAWS = 100000, BUCKETS = 10 };
    uint64_t rng = 12345;
    for (size_t i = 0; i < sizeof policies / sizeof policies[0]; i++) {
        crew_retry p = {
            .base = policies[i].base, .cap = policies[i].cap, .factor = policies[i].factor};
        for (unsigned k = 1; k <= 30; k += 7) {
            int64_t c = ceiling_of(p.base, p.cap, p.factor, k);
            long counts[BUCKETS] = {0};
            double sum = 0;
            int64_t lo = INT64_MAX, hi = -1;
            for (int n = 0; n < DRAWS; n++) {
                int64_t d = crew_retry_delay(&p, k, &rng);
                assert_true(d >= 0 && d <= c);
                lo = d < lo ? d : lo;
                hi = d > hi ? d : hi;
                sum += (double)d;
                long b = (long)((double)d / ((double)c + 1) * BUCKETS);
                counts[b < BUCKETS ? b : BUCKETS - 1]++;
            }
            if (c < 1000)
                continue; /* too few values for the spread checks below */
            /* Mean c/2 within 2% (the standard error is 0.1%); each tenth of the range gets
             * 10% +- 1% of the draws (the standard error is 0.1%). */
            assert_true(fabs(sum / DRAWS - (double)c / 2) < 0.02 * (double)c);
            assert_true((double)lo < 0.01 * (double)c && (double)hi > 0.99 * (double)c);
            for (int b = 0; b < BUCKETS; b++)
                assert_true(counts[b] > DRAWS / BUCKETS * 9 / 10 &&
                            counts[b] < DRAWS / BUCKETS * 11 / 10);
        }
    }
}

/* Huge attempt numbers, factors and bases neither overflow nor leave the bounds. */
static void test_overflow(void **state)
{
    (void)state;
    crew_retry p = {.no_jitter = true};
    assert_int_equal(crew_retry_delay(&p, UINT_MAX, NULL), 30 * CREW_SEC);
    assert_int_equal(crew_retry_delay(&p, 64, NULL), 30 * CREW_SEC);
    assert_int_equal(crew_retry_delay(&p, 1100, NULL), 30 * CREW_SEC); /* 2^1099: inf */
    p = (crew_retry){.base = INT64_MAX, .cap = INT64_MAX, .factor = 1e300, .no_jitter = true};
    assert_int_equal(crew_retry_delay(&p, 1, NULL), INT64_MAX);
    assert_int_equal(crew_retry_delay(&p, UINT_MAX, NULL), INT64_MAX);
    p.no_jitter = false;
    uint64_t rng = 99;
    for (int i = 0; i < 1000; i++) {
        int64_t d = crew_retry_delay(&p, (unsigned)i * 4000000u, &rng);
        assert_true(d >= 0);
    }
    p = (crew_retry){.base = 1, .cap = INT64_MAX, .factor = 1.0000001, .no_jitter = true};
    int64_t d = crew_retry_delay(&p, UINT_MAX, NULL);
    assert_true(d > 1 && d <= INT64_MAX);
}

static void test_rng_state(void **state)
{
    (void)state;
    crew_retry p = {.base = CREW_SEC, .cap = CREW_SEC};
    uint64_t a = 42, b = 42, z = 0;
    for (int i = 0; i < 100; i++)
        assert_int_equal(crew_retry_delay(&p, 1, &a), crew_retry_delay(&p, 1, &b));
    assert_int_equal(a, b);
    /* A zero state is fine: it moves on, and draws vary. */
    int64_t first = crew_retry_delay(&p, 1, &z);
    assert_true(z != 0);
    bool varied = false;
    for (int i = 0; i < 100 && !varied; i++)
        varied = crew_retry_delay(&p, 1, &z) != first;
    assert_true(varied);
    /* The per-thread state (NULL) varies too. */
    first = crew_retry_delay(&p, 1, NULL);
    varied = false;
    for (int i = 0; i < 100 && !varied; i++)
        varied = crew_retry_delay(&p, 1, NULL) != first;
    assert_true(varied);
}

static void test_invalid_policy(void **state)
{
    (void)state;
    const crew_retry bad[] = {
        {.base = -1}, {.cap = -5}, {.factor = 0.5}, {.factor = -2}, {.factor = NAN},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(crew_retry_delay(&bad[i], 1, NULL), CREW_EINVAL);
        flaky f = {.fails = 0};
        unsigned tries = 99;
        assert_int_equal(crew_retry_do(&bad[i], flaky_fn, &f, NULL, &tries), CREW_EINVAL);
        assert_int_equal(tries, 0);
        assert_int_equal(atomic_load(&f.calls), 0);
    }
    unsigned tries = 99;
    assert_int_equal(crew_retry_do(NULL, NULL, NULL, NULL, &tries), CREW_EINVAL);
    assert_int_equal(tries, 0);
}

/* ---- the loop -------------------------------------------------------------------------- */

static void test_attempts(void **state)
{
    (void)state;
    for (unsigned attempts = 1; attempts <= 6; attempts++) {
        flaky f = {.fails = 1000, .err = -EIO};
        crew_retry p = quick(attempts);
        unsigned tries = 0;
        assert_int_equal(crew_retry_do(&p, flaky_fn, &f, NULL, &tries), -EIO);
        assert_int_equal(tries, attempts);
        assert_int_equal(atomic_load(&f.calls), attempts);
    }
    /* attempts 0 means 3; tries may be NULL. */
    flaky f = {.fails = 1000, .err = -EIO};
    crew_retry p = quick(0);
    assert_int_equal(crew_retry_do(&p, flaky_fn, &f, NULL, NULL), -EIO);
    assert_int_equal(atomic_load(&f.calls), 3);
}

static void test_success_after_failures(void **state)
{
    (void)state;
    flaky f = {.fails = 2, .err = CREW_EAGAIN};
    crew_retry p = quick(5);
    unsigned tries = 0;
    assert_int_equal(crew_retry_do(&p, flaky_fn, &f, NULL, &tries), 0);
    assert_int_equal(tries, 3);
    assert_int_equal(atomic_load(&f.calls), 3); /* never called after it succeeded */
    f = (flaky){.fails = 0};
    assert_int_equal(crew_retry_do(&p, flaky_fn, &f, NULL, &tries), 0);
    assert_int_equal(tries, 1);
    /* Up to the last attempt. */
    f = (flaky){.fails = 4, .err = -EIO};
    assert_int_equal(crew_retry_do(&p, flaky_fn, &f, NULL, &tries), 0);
    assert_int_equal(tries, 5);
}

typedef struct pred_log {
    int seen_err;
    _Atomic int calls;
} pred_log;

static bool only_eagain(int err, void *arg)
{
    pred_log *l = arg;
    l->seen_err = err;
    atomic_fetch_add(&l->calls, 1);
    return err == CREW_EAGAIN;
}

static void test_predicate(void **state)
{
    (void)state;
    pred_log l = {0};
    crew_retry p = quick(5);
    p.retryable = only_eagain;
    p.pred_arg = &l;
    flaky f = {.fails = 100, .err = -EIO};
    unsigned tries = 0;
    assert_int_equal(crew_retry_do(&p, flaky_fn, &f, NULL, &tries), -EIO);
    assert_int_equal(tries, 1);
    assert_int_equal(l.seen_err, -EIO);
    assert_int_equal(atomic_load(&l.calls), 1);
    f = (flaky){.fails = 100, .err = CREW_EAGAIN};
    assert_int_equal(crew_retry_do(&p, flaky_fn, &f, NULL, &tries), CREW_EAGAIN);
    assert_int_equal(tries, 5);
    /* Not asked after the last attempt, nor after a success. */
    assert_int_equal(atomic_load(&l.calls), 1 + 4);

    /* The default: CREW_ECANCELED and CREW_ETIMEDOUT are retried while the ctx is live
     * (they came from something else: a socket's timeout, say). */
    p = quick(4);
    f = (flaky){.fails = 100, .err = CREW_ETIMEDOUT};
    assert_int_equal(crew_retry_do(&p, flaky_fn, &f, NULL, &tries), CREW_ETIMEDOUT);
    assert_int_equal(tries, 4);
    crew_ctx *c;
    assert_int_equal(crew_ctx_with_cancel(NULL, &c), 0);
    f = (flaky){.fails = 100, .err = CREW_ECANCELED};
    assert_int_equal(crew_retry_do(&p, flaky_fn, &f, c, &tries), CREW_ECANCELED);
    assert_int_equal(tries, 4);
    crew_ctx_release(c);
}

/* Cancels its own ctx and fails with the ctx's error: not retried. */
static int cancel_self(crew_ctx *ctx, void *arg)
{
    atomic_fetch_add((_Atomic int *)arg, 1);
    crew_ctx_cancel(ctx, CREW_EBUSY);
    return crew_ctx_err(ctx);
}

/* Fails with its own error once its ctx is done. */
static int fail_when_done(crew_ctx *ctx, void *arg)
{
    atomic_fetch_add((_Atomic int *)arg, 1);
    (void)crew_ctx_wait(ctx, CREW_FOREVER);
    return -EIO;
}

static void test_ctx_ends_it(void **state)
{
    (void)state;
    crew_retry p = quick(5);
    unsigned tries = 99;
    _Atomic int calls = 0;
    crew_ctx *c;

    /* Done before the first try: fn never runs. */
    assert_int_equal(crew_ctx_with_cancel(NULL, &c), 0);
    crew_ctx_cancel(c, 0);
    assert_int_equal(crew_retry_do(&p, cancel_self, &calls, c, &tries), CREW_ECANCELED);
    assert_int_equal(tries, 0);
    assert_int_equal(atomic_load(&calls), 0);
    crew_ctx_release(c);

    /* The ctx's own error is not retried (the default rule). */
    assert_int_equal(crew_ctx_with_cancel(NULL, &c), 0);
    assert_int_equal(crew_retry_do(&p, cancel_self, &calls, c, &tries), CREW_ECANCELED);
    assert_int_equal(tries, 1);
    crew_ctx_release(c);

    /* A ctx that ends during a try, which then fails with an error of its own: the ctx's
     * error, no retry. */
    /* (A deadline that passes before the first try gives no try: then again, longer.) */
    tries = 0;
    for (int64_t timeout = CREW_MSEC; tries == 0; timeout *= 4) {
        assert_true(timeout < 60 * CREW_SEC);
        atomic_store(&calls, 0);
        assert_int_equal(crew_ctx_with_timeout(NULL, timeout, &c), 0);
        assert_int_equal(crew_retry_do(&p, fail_when_done, &calls, c, &tries), CREW_ETIMEDOUT);
        crew_ctx_release(c);
    }
    assert_int_equal(tries, 1);
    assert_int_equal(atomic_load(&calls), 1);

    /* A retry that could only start after the ctx's deadline is not slept for: fn's error
     * at once (had it slept, the ctx's CREW_ETIMEDOUT would come back instead). */
    crew_retry slow = {.attempts = 5, .base = 60 * CREW_SEC, .no_jitter = true};
    flaky f = {.fails = 100, .err = -EIO};
    assert_int_equal(crew_ctx_with_timeout(NULL, 30 * CREW_SEC, &c), 0);
    assert_int_equal(crew_retry_do(&slow, flaky_fn, &f, c, &tries), -EIO);
    assert_int_equal(tries, 1);
    assert_false(crew_ctx_done(c));
    crew_ctx_release(c);
}

/* A retry loop on a helper thread, with a hook that reports each backoff. */
typedef struct sleeper {
    crew__retry_plan plan;
    flaky f;
    crew_ctx *ctx;
    _Atomic int hooks;
    int last_err;
    unsigned last_attempt;
    int64_t last_delay;
    int rc;
    unsigned tries;
    pthread_t tid;
} sleeper;

static void note_retry(void *arg, int err, unsigned attempt, int64_t delay)
{
    sleeper *s = arg;
    s->last_err = err;
    s->last_attempt = attempt;
    s->last_delay = delay;
    atomic_fetch_add(&s->hooks, 1);
}

static void *sleeper_main(void *arg)
{
    sleeper *s = arg;
    s->rc = crew__retry_run(&s->plan, flaky_fn, &s->f, s->ctx, &s->tries, note_retry, s);
    return NULL;
}

static void test_cancel_during_backoff(void **state)
{
    (void)state;
    sleeper s = {.f = {.fails = 100, .err = -EIO}};
    assert_int_equal(crew__retry_plan_init(&s.plan, &(crew_retry){.attempts = 10,
                                                                  .base = 3600 * CREW_SEC,
                                                                  .cap = 3600 * CREW_SEC,
                                                                  .no_jitter = true}),
                     0);
    assert_int_equal(crew_ctx_with_cancel(NULL, &s.ctx), 0);
    assert_int_equal(pthread_create(&s.tid, NULL, sleeper_main, &s), 0);
    eventually(atomic_load(&s.hooks) == 1); /* it is about to sleep an hour */
    assert_int_equal(s.last_err, -EIO);
    assert_int_equal(s.last_attempt, 1);
    assert_int_equal(s.last_delay, 3600 * CREW_SEC);
    crew_ctx_cancel(s.ctx, 0);
    assert_int_equal(pthread_join(s.tid, NULL), 0);
    assert_int_equal(s.rc, CREW_ECANCELED);
    assert_int_equal(s.tries, 1);
    assert_int_equal(atomic_load(&s.f.calls), 1);
    crew_ctx_release(s.ctx);
}

static void test_hook_each_retry(void **state)
{
    (void)state;
    sleeper s = {.f = {.fails = 100, .err = CREW_EBUSY}};
    assert_int_equal(
        crew__retry_plan_init(&s.plan, &(crew_retry){.attempts = 6, .base = 1, .cap = 40}), 0);
    s.rc = crew__retry_run(&s.plan, flaky_fn, &s.f, NULL, &s.tries, note_retry, &s);
    assert_int_equal(s.rc, CREW_EBUSY);
    assert_int_equal(s.tries, 6);
    assert_int_equal(atomic_load(&s.hooks), 5); /* before each of the five backoffs */
    assert_int_equal(s.last_attempt, 5);
    assert_true(s.last_delay >= 0 && s.last_delay <= 16);
    /* A NULL hook and NULL tries are fine. */
    s.f = (flaky){.fails = 1, .err = CREW_EBUSY};
    assert_int_equal(crew__retry_run(&s.plan, flaky_fn, &s.f, NULL, NULL, NULL, NULL), 0);
    /* crew__retry_plan_init refuses what crew_retry_do refuses; NULL is the defaults. */
    assert_int_equal(crew__retry_plan_init(&s.plan, &(crew_retry){.factor = 0.1}), CREW_EINVAL);
    assert_int_equal(crew__retry_plan_init(&s.plan, NULL), 0);
    assert_int_equal(s.plan.attempts, 3);
    assert_int_equal(s.plan.base, 100 * CREW_MSEC);
    assert_int_equal(s.plan.cap, 30 * CREW_SEC);
    assert_true(s.plan.factor == 2.0 && s.plan.jitter);
}

/* From a pool job: the backoff holds the worker, and the pool's cancel ends it. */
typedef struct in_job {
    flaky f;
    _Atomic int rc;
    _Atomic unsigned tries;
} in_job;

static int retrying_job(crew_ctx *ctx, void *arg)
{
    in_job *j = arg;
    crew_retry p = {.attempts = 100, .base = 3600 * CREW_SEC, .no_jitter = true};
    unsigned tries = 0;
    atomic_store(&j->rc, crew_retry_do(&p, flaky_fn, &j->f, ctx, &tries));
    atomic_store(&j->tries, tries);
    return 0;
}

static void test_in_pool_job(void **state)
{
    (void)state;
    crew_pool *pool;
    assert_int_equal(crew_pool_create(&pool, &(crew_pool_opts){.workers = 1, .queue_cap = 1}), 0);
    in_job j = {.f = {.fails = 100, .err = -EIO}, .rc = 1};
    assert_int_equal(crew_pool_submit(pool, retrying_job, &j, CREW_FOREVER, NULL), 0);
    eventually(atomic_load(&j.f.calls) == 1);
    assert_int_equal(crew_pool_cancel(pool, 0), 0);
    assert_int_equal(crew_pool_wait(pool, CREW_FOREVER), 0);
    assert_int_equal(atomic_load(&j.rc), CREW_ECANCELED);
    assert_int_equal(atomic_load(&j.tries), 1);
    crew_pool_destroy(pool);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        leak_test(test_defaults_schedule),
        leak_test(test_custom_schedule),
        leak_test(test_jitter_distribution),
        leak_test(test_overflow),
        leak_test(test_rng_state),
        leak_test(test_invalid_policy),
        leak_test(test_attempts),
        leak_test(test_success_after_failures),
        leak_test(test_predicate),
        leak_test(test_ctx_ends_it),
        leak_test(test_cancel_during_backoff),
        leak_test(test_hook_each_retry),
        leak_test(test_in_pool_job),
    };
    return cmocka_run_group_tests_name("retry", tests, NULL, NULL);
}
