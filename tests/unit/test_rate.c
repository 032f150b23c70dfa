/*
 * Tests for src/rate.c: the token bucket's arithmetic (through the _n forms and their
 * instants, so no clock is involved), waits, deadlines, ctx, give-backs, run-time changes.
 * Timing is never asserted from above: a wait's lower bound (it never returns before its
 * tokens are due) is the algorithm's, not the machine's; everything else is checked by
 * results, counts and order.
 */
#include "internal.h"
#include "testutil.h"

#include <math.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>

/* ---- helpers -------------------------------------------------------------------------- */

/* One crew_rate_wait_n run on a helper thread. */
typedef struct op {
    crew_rate *r;
    int64_t n;        /* tokens */
    int64_t deadline; /* passed through */
    crew_ctx *ctx;    /* passed through (may be NULL) */
    int rc;           /* what the call returned, valid once done */
    int64_t ended;    /* crew_now() when it returned */
    _Atomic bool done;
    pthread_t tid;
} op;

static void *op_main(void *arg)
{
    op *o = arg;
    o->rc = crew_rate_wait_n(o->r, o->n, o->deadline, o->ctx);
    o->ended = crew_now();
    atomic_store(&o->done, true);
    return NULL;
}

static void op_start(op *o, crew_rate *r, int64_t n, int64_t deadline, crew_ctx *ctx)
{
    memset(o, 0, sizeof *o);
    o->r = r;
    o->n = n;
    o->deadline = deadline;
    o->ctx = ctx;
    o->rc = 1;
    atomic_init(&o->done, false);
    assert_int_equal(pthread_create(&o->tid, NULL, op_main, o), 0);
}

static int op_join(op *o)
{
    assert_int_equal(pthread_join(o->tid, NULL), 0);
    assert_true(atomic_load(&o->done));
    return o->rc;
}

/* Starts a helper and waits until it sleeps in the limiter, so helpers line up in a known
 * order. */
static void op_start_sleeping(op *o, crew_rate *r, int64_t n, int64_t deadline, crew_ctx *ctx)
{
    size_t before = crew_rate_waiters(r);
    op_start(o, r, n, deadline, ctx);
    eventually(crew_rate_waiters(r) == before + 1);
    assert_false(atomic_load(&o->done));
}

static crew_rate *make(double per_sec, int64_t burst)
{
    crew_rate *r = NULL;
    assert_int_equal(crew_rate_create(&r, per_sec, burst), 0);
    assert_non_null(r);
    return r;
}

static crew_ctx *make_ctx(void)
{
    crew_ctx *ctx = NULL;
    assert_int_equal(crew_ctx_with_cancel(NULL, &ctx), 0);
    return ctx;
}

/* Tokens are doubles: compare them with a tolerance far below one token. */
static void assert_tokens(double got, double want)
{
    if (fabs(got - want) > 1e-6)
        fail_msg("tokens %.9f, expected %.9f", got, want);
}

#define HOUR (3600 * CREW_SEC)

/* ---- creation -------------------------------------------------------------------------- */

static void test_create_invalid(void **state)
{
    (void)state;
    crew_rate *r = (crew_rate *)&r; /* a sentinel: must stay untouched on failure */
    assert_int_equal(crew_rate_create(&r, -1, 1), CREW_EINVAL);
    assert_int_equal(crew_rate_create(&r, NAN, 1), CREW_EINVAL);
    assert_int_equal(crew_rate_create(&r, -CREW_RATE_INF, 1), CREW_EINVAL);
    assert_int_equal(crew_rate_create(&r, 10, 0), CREW_EINVAL);
    assert_int_equal(crew_rate_create(&r, 10, -1), CREW_EINVAL);
    assert_int_equal(crew_rate_create(&r, 10, (INT64_C(1) << 53) + 1), CREW_EINVAL);
    assert_ptr_equal(r, (crew_rate *)&r);
    assert_int_equal(crew_rate_create(NULL, 10, 1), CREW_EINVAL);
    crew_rate_destroy(NULL);        /* ignored */
    r = make(10, INT64_C(1) << 53); /* the largest burst */
    assert_tokens(crew_rate_tokens(r), (double)(INT64_C(1) << 53));
    crew_rate_destroy(r);
}

static void test_create_nomem(void **state)
{
    (void)state;
    crew_rate *r = NULL;
    crew__test_fail_after(1);
    assert_int_equal(crew_rate_create(&r, 10, 1), CREW_ENOMEM);
    crew__test_fail_after(0);
    assert_null(r);
    /* One allocation in all, and none afterwards, sleeping or not. */
    uint64_t before = crew__test_alloc_count();
    r = make(1000, 1);
    assert_true(crew__test_alloc_count() - before == 1);
    before = crew__test_alloc_count();
    crew_ctx *ctx = make_ctx();
    uint64_t after_ctx = crew__test_alloc_count();
    assert_true(crew_rate_allow(r));
    assert_false(crew_rate_allow(r));
    assert_true(crew_rate_reserve(r) >= 0);
    assert_int_equal(crew_rate_wait(r, CREW_FOREVER, ctx), 0); /* sleeps about 2 ms */
    assert_int_equal(crew_rate_set(r, 2000, 2), 0);
    (void)crew_rate_tokens(r);
    assert_true(crew__test_alloc_count() == after_ctx);
    assert_true(after_ctx - before == 1); /* that was the ctx */
    crew_ctx_release(ctx);
    crew_rate_destroy(r);
}

/* ---- the bucket's arithmetic, at chosen instants --------------------------------------- */

static void test_burst_and_refill(void **state)
{
    (void)state;
    crew_rate *r = make(10, 5); /* one token per 100 ms */
    int64_t t0 = crew_now();
    for (int i = 0; i < 5; i++)
        assert_true(crew_rate_allow_n(r, 1, t0)); /* it starts full */
    assert_false(crew_rate_allow_n(r, 1, t0));
    assert_false(crew_rate_allow_n(r, 1, t0 + 99 * CREW_MSEC));
    assert_true(crew_rate_allow_n(r, 1, t0 + 100 * CREW_MSEC));
    assert_false(crew_rate_allow_n(r, 1, t0 + 100 * CREW_MSEC));
    /* A long pause refills it only up to the burst. */
    int64_t t1 = t0 + 10 * CREW_SEC;
    for (int i = 0; i < 5; i++)
        assert_true(crew_rate_allow_n(r, 1, t1));
    assert_false(crew_rate_allow_n(r, 1, t1));
    /* An instant before one already seen counts as that one: no refill. */
    assert_false(crew_rate_allow_n(r, 1, t0 + 5 * CREW_SEC));
    assert_false(crew_rate_allow_n(r, 1, t0));
    assert_true(crew_rate_allow_n(r, 1, t1 + 100 * CREW_MSEC));
    crew_rate_destroy(r);
}

static void test_allow_n(void **state)
{
    (void)state;
    crew_rate *r = make(10, 5);
    int64_t t0 = crew_now();
    assert_false(crew_rate_allow_n(r, 6, t0)); /* more than the burst: never */
    assert_false(crew_rate_allow_n(r, 0, t0));
    assert_false(crew_rate_allow_n(r, -1, t0));
    assert_true(crew_rate_allow_n(r, 3, t0));
    assert_false(crew_rate_allow_n(r, 3, t0)); /* 2 left: nothing is taken */
    assert_true(crew_rate_allow_n(r, 2, t0));
    assert_false(crew_rate_allow_n(r, 1, t0));
    /* Fractions accrue: 2.5 tokens after 250 ms. */
    assert_false(crew_rate_allow_n(r, 3, t0 + 250 * CREW_MSEC));
    assert_true(crew_rate_allow_n(r, 2, t0 + 250 * CREW_MSEC));
    assert_false(crew_rate_allow_n(r, 1, t0 + 250 * CREW_MSEC));
    assert_true(crew_rate_allow_n(r, 1, t0 + 300 * CREW_MSEC));
    assert_true(crew_rate_allow_n(r, 5, t0 + 900 * CREW_MSEC));
    crew_rate_destroy(r);
}

static void test_reserve(void **state)
{
    (void)state;
    crew_rate *r = make(10, 2);
    int64_t t0 = crew_now();
    assert_int_equal(crew_rate_reserve_n(r, 1, t0), 0);
    assert_int_equal(crew_rate_reserve_n(r, 1, t0), 0);
    /* Ahead of time: each next token is due one interval after the previous one. */
    assert_int_equal(crew_rate_reserve_n(r, 1, t0), 100 * CREW_MSEC);
    assert_int_equal(crew_rate_reserve_n(r, 2, t0), 300 * CREW_MSEC);
    assert_int_equal(crew_rate_reserve_n(r, 1, t0), 400 * CREW_MSEC);
    /* The debt is served first: allow fails until it is paid and a token has accrued. */
    assert_false(crew_rate_allow_n(r, 1, t0 + 400 * CREW_MSEC));
    assert_true(crew_rate_allow_n(r, 1, t0 + 500 * CREW_MSEC));
    /* The delay counts from the caller's instant, even one before the latest seen. */
    assert_int_equal(crew_rate_reserve_n(r, 1, t0 + 500 * CREW_MSEC), 100 * CREW_MSEC);
    assert_int_equal(crew_rate_reserve_n(r, 1, t0 + 450 * CREW_MSEC), 250 * CREW_MSEC);
    assert_int_equal(crew_rate_reserve_n(r, 3, t0), CREW_EINVAL); /* more than the burst */
    assert_int_equal(crew_rate_reserve_n(r, 0, t0), CREW_EINVAL);
    assert_int_equal(crew_rate_reserve_n(r, -2, t0), CREW_EINVAL);
    crew_rate_destroy(r);

    /* The plain form works on the real clock: the bucket starts full. */
    r = make(1, 1);
    assert_int_equal(crew_rate_reserve(r), 0);
    int64_t d = crew_rate_reserve(r);
    assert_true(d > 0 && d <= CREW_SEC);
    crew_rate_destroy(r);
}

static void test_tokens(void **state)
{
    (void)state;
    crew_rate *r = make(0, 3); /* no refill: the count is exact on the real clock */
    assert_tokens(crew_rate_tokens(r), 3);
    assert_true(crew_rate_allow(r));
    assert_tokens(crew_rate_tokens(r), 2);
    crew_rate_destroy(r);

    r = make(1.0 / 3600, 1); /* one per hour: in debt after two reservations */
    assert_int_equal(crew_rate_reserve(r), 0);
    assert_true(crew_rate_reserve(r) > HOUR - CREW_SEC);
    double t = crew_rate_tokens(r);
    assert_true(t >= -1.0 && t < -0.99);
    crew_rate_destroy(r);
}

/* Rate 0: the first burst tokens, then nothing until the rate changes. */
static void test_rate_zero(void **state)
{
    (void)state;
    crew_rate *r = make(0, 2);
    assert_true(crew_rate_allow_n(r, 2, crew_now()));
    assert_false(crew_rate_allow(r));
    assert_int_equal(crew_rate_reserve_n(r, 1, crew_now()), CREW_EAGAIN);
    assert_int_equal(crew_rate_reserve(r), CREW_EAGAIN);
    /* (Instants are real ones here: an instant in the future would count as the present
     * for every later call, and hold the waits below back until the clock got there.) */
    /* A wait with any deadline can never succeed, so it fails at once; it would sleep an
     * hour otherwise. */
    assert_int_equal(crew_rate_wait(r, crew_deadline_in(HOUR), NULL), CREW_ETIMEDOUT);
    assert_int_equal(crew_rate_wait(r, CREW_NOW, NULL), CREW_EAGAIN);
    /* Without a deadline it sleeps until the rate changes. */
    op o;
    op_start_sleeping(&o, r, 1, CREW_FOREVER, NULL);
    assert_int_equal(crew_rate_set(r, 1000, 2), 0);
    assert_int_equal(op_join(&o), 0);
    assert_int_equal(crew_rate_waiters(r), 0);
    crew_rate_destroy(r);
}

static void test_unlimited(void **state)
{
    (void)state;
    crew_rate *r = make(CREW_RATE_INF, 1);
    int64_t t0 = crew_now();
    for (int i = 0; i < 1000; i++)
        assert_true(crew_rate_allow(r));
    assert_true(crew_rate_allow_n(r, 1000000, t0)); /* the burst does not matter */
    assert_false(crew_rate_allow_n(r, 0, t0));
    assert_int_equal(crew_rate_reserve(r), 0);
    assert_int_equal(crew_rate_reserve_n(r, 50, t0), 0);
    assert_int_equal(crew_rate_reserve_n(r, 0, t0), CREW_EINVAL);
    assert_int_equal(crew_rate_wait(r, CREW_NOW, NULL), 0);
    assert_int_equal(crew_rate_wait_n(r, 99, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_rate_wait_n(r, 0, CREW_FOREVER, NULL), CREW_EINVAL);
    assert_true(isinf(crew_rate_tokens(r)));

    /* Back from unlimited, the bucket is full. */
    assert_int_equal(crew_rate_set(r, 1.0 / 3600, 3), 0);
    assert_tokens(crew_rate_tokens(r), 3);
    assert_true(crew_rate_allow_n(r, 3, crew_now()));
    assert_false(crew_rate_allow(r));

    /* Going unlimited releases the sleepers at once. */
    op a, b;
    op_start_sleeping(&a, r, 1, CREW_FOREVER, NULL);
    op_start_sleeping(&b, r, 2, CREW_FOREVER, NULL);
    assert_int_equal(crew_rate_set(r, CREW_RATE_INF, 1), 0);
    assert_int_equal(op_join(&a), 0);
    assert_int_equal(op_join(&b), 0);
    assert_int_equal(crew_rate_waiters(r), 0);
    crew_rate_destroy(r);
}

static void test_set(void **state)
{
    (void)state;
    crew_rate *r = make(0, 10);
    /* Invalid settings change nothing. */
    assert_int_equal(crew_rate_set(r, -1, 5), CREW_EINVAL);
    assert_int_equal(crew_rate_set(r, NAN, 5), CREW_EINVAL);
    assert_int_equal(crew_rate_set(r, 10, 0), CREW_EINVAL);
    assert_int_equal(crew_rate_set(r, 10, (INT64_C(1) << 53) + 1), CREW_EINVAL);
    assert_tokens(crew_rate_tokens(r), 10);
    /* A smaller burst caps what is there; a larger one does not add tokens. */
    assert_int_equal(crew_rate_set(r, 0, 4), 0);
    assert_tokens(crew_rate_tokens(r), 4);
    assert_int_equal(crew_rate_set(r, 0, 8), 0);
    assert_tokens(crew_rate_tokens(r), 4);
    assert_false(crew_rate_allow_n(r, 5, crew_now()));
    assert_true(crew_rate_allow_n(r, 4, crew_now()));
    /* The new burst bounds n. */
    assert_int_equal(crew_rate_reserve_n(r, 9, crew_now()), CREW_EINVAL);
    assert_int_equal(crew_rate_wait_n(r, 9, CREW_FOREVER, NULL), CREW_EINVAL);
    /* The rate applies from now on: at 10/s the next token is 100 ms away. */
    assert_int_equal(crew_rate_set(r, 10, 8), 0);
    int64_t d = crew_rate_reserve(r);
    assert_true(d > 0 && d <= 100 * CREW_MSEC);
    crew_rate_destroy(r);
}

/* ---- waits ----------------------------------------------------------------------------- */

static void test_wait_at_once_and_refused(void **state)
{
    (void)state;
    crew_rate *r = make(1.0 / 3600, 2); /* one token per hour */
    assert_int_equal(crew_rate_wait(r, CREW_NOW, NULL), 0);
    assert_int_equal(crew_rate_wait(r, CREW_FOREVER, NULL), 0);
    /* Empty: a try fails, and a deadline before the next token fails at once, taking
     * nothing (it would sleep for an hour otherwise). */
    assert_int_equal(crew_rate_wait(r, CREW_NOW, NULL), CREW_EAGAIN);
    assert_int_equal(crew_rate_wait(r, crew_now() - 1, NULL), CREW_EAGAIN);
    assert_int_equal(crew_rate_wait(r, crew_deadline_in(CREW_SEC), NULL), CREW_ETIMEDOUT);
    crew_ctx *ctx = NULL;
    assert_int_equal(crew_ctx_with_timeout(NULL, 10 * CREW_SEC, &ctx), 0);
    assert_int_equal(crew_rate_wait(r, CREW_FOREVER, ctx), CREW_ETIMEDOUT); /* ctx's deadline */
    crew_ctx_release(ctx);
    double t = crew_rate_tokens(r);
    assert_true(t >= 0 && t < 0.01);
    assert_int_equal(crew_rate_waiters(r), 0);
    assert_int_equal(crew_rate_wait_n(r, 3, CREW_FOREVER, NULL), CREW_EINVAL);
    assert_int_equal(crew_rate_wait_n(r, 0, CREW_FOREVER, NULL), CREW_EINVAL);
    crew_rate_destroy(r);
}

static void test_wait_sleeps_until_due(void **state)
{
    (void)state;
    enum { N = 5 };
    crew_rate *r = make(100, 1); /* one token per 10 ms */
    int64_t t0 = crew_now();
    assert_true(crew_rate_allow(r));
    /* N waiters at once: whatever order they run in, the k-th to return cannot do so
     * before k intervals have passed since the bucket was emptied. */
    op o[N];
    for (int i = 0; i < N; i++)
        op_start(&o[i], r, 1, CREW_FOREVER, NULL);
    int64_t ended[N];
    for (int i = 0; i < N; i++) {
        assert_int_equal(op_join(&o[i]), 0);
        ended[i] = o[i].ended;
    }
    for (int i = 1; i < N; i++) /* insertion sort */
        for (int j = i; j > 0 && ended[j - 1] > ended[j]; j--) {
            int64_t x = ended[j];
            ended[j] = ended[j - 1];
            ended[j - 1] = x;
        }
    for (int k = 0; k < N; k++)
        if (ended[k] < t0 + (k + 1) * 10 * CREW_MSEC)
            fail_msg("waiter %d returned %lld ns after the start, before its token was due", k,
                     (long long)(ended[k] - t0));
    assert_false(crew_rate_allow_n(r, 1, t0)); /* all spent */
    crew_rate_destroy(r);
}

static void test_wait_ctx(void **state)
{
    (void)state;
    crew_rate *r = make(1.0 / 3600, 1);
    assert_true(crew_rate_allow(r));

    /* A done ctx fails the call first, even one that could succeed. */
    crew_rate *full = make(1, 1);
    crew_ctx *ctx = make_ctx();
    crew_ctx_cancel(ctx, 0);
    assert_int_equal(crew_rate_wait(full, CREW_FOREVER, ctx), CREW_ECANCELED);
    assert_tokens(crew_rate_tokens(full), 1);
    crew_ctx_release(ctx);
    crew_rate_destroy(full);

    /* Cancelled while it sleeps: it ends with the ctx's error and gives its token back, so
     * the next reservation is due in one hour, not two. */
    ctx = make_ctx();
    op o;
    op_start_sleeping(&o, r, 1, CREW_FOREVER, ctx);
    double t = crew_rate_tokens(r);
    assert_true(t >= -1.0 && t < -0.99);
    crew_ctx_cancel(ctx, 0);
    assert_int_equal(op_join(&o), CREW_ECANCELED);
    crew_ctx_release(ctx);
    t = crew_rate_tokens(r);
    assert_true(t >= 0 && t < 0.01);
    assert_int_equal(crew_rate_waiters(r), 0);

    /* Through a parent, with a cause: the error is CREW_ECANCELED all the same. */
    crew_ctx *parent = make_ctx(), *child = NULL;
    assert_int_equal(crew_ctx_with_cancel(parent, &child), 0);
    op_start_sleeping(&o, r, 1, CREW_FOREVER, child);
    crew_ctx_cancel(parent, CREW_ESHUTDOWN);
    assert_int_equal(op_join(&o), CREW_ECANCELED);
    crew_ctx_release(child);
    crew_ctx_release(parent);
    crew_rate_destroy(r);

    /* A ctx whose deadline fires while it sleeps: the token is due before the deadline at
     * first, then a slower rate moves it past: CREW_ETIMEDOUT. */
    r = make(0.1, 1); /* the next token in 10 s */
    assert_true(crew_rate_allow(r));
    assert_int_equal(crew_ctx_with_timeout(NULL, 60 * CREW_SEC, &ctx), 0);
    op_start_sleeping(&o, r, 1, CREW_FOREVER, ctx);
    assert_int_equal(crew_rate_set(r, 1.0 / 3600, 1), 0);
    assert_int_equal(op_join(&o), CREW_ETIMEDOUT);
    crew_ctx_release(ctx);
    t = crew_rate_tokens(r);
    assert_true(t > -0.001 && t <= 1); /* its token came back */
    crew_rate_destroy(r);
}

/* A waiter that gives up returns only the tokens nobody reserved after it: those after it
 * keep their instants. */
static void test_give_back_order(void **state)
{
    (void)state;
    crew_rate *r = make(1.0 / 3600, 1);
    assert_true(crew_rate_allow(r));
    crew_ctx *ca = make_ctx(), *cb = make_ctx();
    op a, b;
    op_start_sleeping(&a, r, 1, CREW_FOREVER, ca);
    op_start_sleeping(&b, r, 1, CREW_FOREVER, cb);
    double t = crew_rate_tokens(r);
    assert_true(t >= -2.0 && t < -1.99);
    /* The first can give nothing back: the second's token follows its own. */
    crew_ctx_cancel(ca, 0);
    assert_int_equal(op_join(&a), CREW_ECANCELED);
    t = crew_rate_tokens(r);
    assert_true(t >= -2.0 && t < -1.99);
    /* The last gives its token back. */
    crew_ctx_cancel(cb, 0);
    assert_int_equal(op_join(&b), CREW_ECANCELED);
    t = crew_rate_tokens(r);
    assert_true(t >= -1.0 && t < -0.99);
    crew_ctx_release(ca);
    crew_ctx_release(cb);

    /* In the other order both come back. */
    ca = make_ctx();
    cb = make_ctx();
    op_start_sleeping(&a, r, 1, CREW_FOREVER, ca);
    op_start_sleeping(&b, r, 1, CREW_FOREVER, cb);
    crew_ctx_cancel(cb, 0);
    assert_int_equal(op_join(&b), CREW_ECANCELED);
    crew_ctx_cancel(ca, 0);
    assert_int_equal(op_join(&a), CREW_ECANCELED);
    t = crew_rate_tokens(r);
    assert_true(t >= -1.0 && t < -0.99);
    crew_ctx_release(ca);
    crew_ctx_release(cb);
    crew_rate_destroy(r);
}

/* Waiters keep their places in line across a rate change: after a slowdown, the last in
 * line is the one whose token no longer comes before the common deadline. */
static void test_set_replans_in_order(void **state)
{
    (void)state;
    crew_rate *r = make(1.0 / 1000, 1); /* one token per 1000 s */
    assert_true(crew_rate_allow(r));
    int64_t deadline = crew_deadline_in(3500 * CREW_SEC);
    op a, b, c;
    op_start_sleeping(&a, r, 1, deadline, NULL);          /* due in 1000 s */
    op_start_sleeping(&b, r, 1, deadline, NULL);          /* 2000 s */
    op_start_sleeping(&c, r, 1, deadline, NULL);          /* 3000 s */
    assert_int_equal(crew_rate_set(r, 1.0 / 1500, 1), 0); /* now 1500, 3000, 4500 s */
    assert_int_equal(op_join(&c), CREW_ETIMEDOUT);
    assert_int_equal(crew_rate_waiters(r), 2);
    assert_false(atomic_load(&a.done));
    assert_false(atomic_load(&b.done));
    double t = crew_rate_tokens(r);
    assert_true(t >= -2.0 && t < -1.99); /* c gave its token back */
    /* A faster rate brings the others forward: both are released in well under an hour. */
    assert_int_equal(crew_rate_set(r, 1000, 1), 0);
    assert_int_equal(op_join(&a), 0);
    assert_int_equal(op_join(&b), 0);
    assert_int_equal(crew_rate_waiters(r), 0);
    crew_rate_destroy(r);
}

/* Many threads waiting at once, as a pool's workers do before each job: every wait
 * succeeds, and together they never run ahead of the rate. */
typedef struct many {
    crew_rate *r;
    int each;
    _Atomic int ok;
} many;

static void *many_main(void *arg)
{
    many *m = arg;
    for (int i = 0; i < m->each; i++)
        if (crew_rate_wait(m->r, CREW_FOREVER, crew_ctx_background()) == 0)
            atomic_fetch_add(&m->ok, 1);
    return NULL;
}

static void test_many_waiters(void **state)
{
    (void)state;
    enum { THREADS = 8, EACH = 10 };
    int64_t t0 = crew_now();
    many m = {.r = make(2000, 4), .each = EACH};
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, many_main, &m), 0);
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    assert_int_equal(atomic_load(&m.ok), THREADS * EACH);
    /* 80 tokens with 4 in the bucket at the start: at least 76 intervals of 0.5 ms. */
    assert_true(crew_now() - t0 >= (THREADS * EACH - 4) * CREW_MSEC / 2);
    assert_int_equal(crew_rate_waiters(m.r), 0);
    crew_rate_destroy(m.r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        leak_test(test_create_invalid),
        leak_test(test_create_nomem),
        leak_test(test_burst_and_refill),
        leak_test(test_allow_n),
        leak_test(test_reserve),
        leak_test(test_tokens),
        leak_test(test_rate_zero),
        leak_test(test_unlimited),
        leak_test(test_set),
        leak_test(test_wait_at_once_and_refused),
        leak_test(test_wait_sleeps_until_due),
        leak_test(test_wait_ctx),
        leak_test(test_give_back_order),
        leak_test(test_set_replans_in_order),
        leak_test(test_many_waiters),
    };
    return cmocka_run_group_tests_name("rate", tests, NULL, NULL);
}
