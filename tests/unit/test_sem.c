/* Tests for src/sem.c: weighted FIFO semaphores, deadlines, ctx, release errors. */
#include "internal.h"
#include "testutil.h"

#include <sched.h>
#include <stdint.h>
#include <string.h>

/* ---- helpers -------------------------------------------------------------------------- */

/* One crew_sem_acquire run on a helper thread. */
typedef struct op {
    crew_sem *s;
    int64_t n;          /* units wanted */
    int64_t deadline;   /* passed through */
    crew_ctx *ctx;      /* passed through (may be NULL) */
    bool release_after; /* give the units back right after a successful acquire */
    int order;          /* this op's place among successful acquires (see tickets) */
    int rc;             /* what the call returned, valid once done */
    _Atomic bool done;
    pthread_t tid;
} op;

/* Successful acquires so far, in the order they returned: reset by each test that looks. */
static _Atomic int tickets;

static void *op_main(void *arg)
{
    op *o = arg;
    o->rc = crew_sem_acquire(o->s, o->n, o->deadline, o->ctx);
    if (o->rc == 0)
        o->order = atomic_fetch_add(&tickets, 1);
    if (o->rc == 0 && o->release_after)
        o->rc = crew_sem_release(o->s, o->n);
    atomic_store(&o->done, true);
    return NULL;
}

static void op_launch(op *o, crew_sem *s, int64_t n, int64_t deadline, crew_ctx *ctx,
                      bool release_after)
{
    memset(o, 0, sizeof *o);
    o->s = s;
    o->n = n;
    o->deadline = deadline;
    o->ctx = ctx;
    o->release_after = release_after;
    o->rc = 1;
    o->order = -1;
    atomic_init(&o->done, false);
    assert_int_equal(pthread_create(&o->tid, NULL, op_main, o), 0);
}

static void op_start(op *o, crew_sem *s, int64_t n, int64_t deadline, crew_ctx *ctx)
{
    op_launch(o, s, n, deadline, ctx, false);
}

static int op_join(op *o)
{
    assert_int_equal(pthread_join(o->tid, NULL), 0);
    assert_true(atomic_load(&o->done));
    return o->rc;
}

/* Waits (with a generous bound, never a fixed sleep) until n threads are queued on s. */
static void wait_waiters(crew_sem *s, size_t n)
{
    eventually(crew_sem_waiters(s) == n);
}

/* Starts a helper and waits until it is queued, so helpers queue in a known order. */
static void op_start_queued(op *o, crew_sem *s, int64_t n, crew_ctx *ctx)
{
    size_t before = crew_sem_waiters(s);
    op_start(o, s, n, CREW_FOREVER, ctx);
    wait_waiters(s, before + 1);
    assert_false(atomic_load(&o->done));
}

static crew_sem *make(int64_t size)
{
    crew_sem *s = NULL;
    assert_int_equal(crew_sem_create(&s, size), 0);
    assert_non_null(s);
    return s;
}

static crew_ctx *make_ctx(void)
{
    crew_ctx *ctx = NULL;
    assert_int_equal(crew_ctx_with_cancel(NULL, &ctx), 0);
    return ctx;
}

/* ---- creation and the non-blocking calls ---------------------------------------------- */

static void test_create_invalid(void **state)
{
    (void)state;
    crew_sem *s = (crew_sem *)&s; /* a sentinel: must stay untouched on failure */
    assert_int_equal(crew_sem_create(&s, 0), CREW_EINVAL);
    assert_int_equal(crew_sem_create(&s, -5), CREW_EINVAL);
    assert_int_equal(crew_sem_create(&s, INT64_MIN), CREW_EINVAL);
    assert_ptr_equal(s, (crew_sem *)&s);
    assert_int_equal(crew_sem_create(NULL, 4), CREW_EINVAL);
    crew_sem_destroy(NULL); /* ignored */
}

static void test_create_nomem(void **state)
{
    (void)state;
    crew_sem *s = NULL;
    crew__test_fail_after(1);
    assert_int_equal(crew_sem_create(&s, 4), CREW_ENOMEM);
    crew__test_fail_after(0);
    assert_null(s);
    /* One allocation in all, and none afterwards, blocking or not. */
    uint64_t before = crew__test_alloc_count();
    s = make(1);
    assert_true(crew__test_alloc_count() - before == 1);
    before = crew__test_alloc_count();
    assert_int_equal(crew_sem_acquire(s, 1, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_sem_acquire(s, 1, crew_deadline_in(CREW_MSEC), NULL), CREW_ETIMEDOUT);
    op o;
    op_start_queued(&o, s, 1, NULL);
    assert_int_equal(crew_sem_release(s, 1), 0);
    assert_int_equal(op_join(&o), 0);
    assert_int_equal(crew_sem_release(s, 1), 0);
    assert_true(crew__test_alloc_count() == before);
    crew_sem_destroy(s);
}

static void test_counting(void **state)
{
    (void)state;
    crew_sem *s = make(3);
    assert_int_equal(crew_sem_available(s), 3);
    assert_int_equal(crew_sem_waiters(s), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(crew_sem_try_acquire(s, 1), 0);
    assert_int_equal(crew_sem_available(s), 0);
    assert_int_equal(crew_sem_try_acquire(s, 1), CREW_EAGAIN);
    /* A deadline already past is a try as well. */
    assert_int_equal(crew_sem_acquire(s, 1, CREW_NOW, NULL), CREW_EAGAIN);
    assert_int_equal(crew_sem_acquire(s, 1, 1, NULL), CREW_EAGAIN);
    assert_int_equal(crew_sem_acquire(s, 1, crew_now() - CREW_MSEC, NULL), CREW_EAGAIN);
    assert_int_equal(crew_sem_release(s, 1), 0);
    assert_int_equal(crew_sem_available(s), 1);
    assert_int_equal(crew_sem_acquire(s, 1, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_sem_release(s, 3), 0);
    assert_int_equal(crew_sem_available(s), 3);
    crew_sem_destroy(s);
}

static void test_weighted(void **state)
{
    (void)state;
    crew_sem *s = make(10);
    assert_int_equal(crew_sem_try_acquire(s, 4), 0);
    assert_int_equal(crew_sem_try_acquire(s, 7), CREW_EAGAIN); /* only 6 free */
    assert_int_equal(crew_sem_available(s), 6);
    assert_int_equal(crew_sem_try_acquire(s, 6), 0);
    assert_int_equal(crew_sem_available(s), 0);
    assert_int_equal(crew_sem_release(s, 10), 0);
    /* n must be 1..size: a request larger than the semaphore is refused, never queued. */
    assert_int_equal(crew_sem_try_acquire(s, 11), CREW_EINVAL);
    assert_int_equal(crew_sem_acquire(s, 11, CREW_FOREVER, NULL), CREW_EINVAL);
    assert_int_equal(crew_sem_acquire(s, 0, CREW_FOREVER, NULL), CREW_EINVAL);
    assert_int_equal(crew_sem_acquire(s, -1, CREW_FOREVER, NULL), CREW_EINVAL);
    assert_int_equal(crew_sem_acquire(s, INT64_MIN, CREW_FOREVER, NULL), CREW_EINVAL);
    assert_int_equal(crew_sem_available(s), 10);
    assert_int_equal(crew_sem_acquire(s, 10, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_sem_release(s, 10), 0);
    crew_sem_destroy(s);

    /* The whole int64_t range works. */
    s = make(INT64_MAX);
    assert_int_equal(crew_sem_try_acquire(s, INT64_MAX - 1), 0);
    assert_int_equal(crew_sem_available(s), 1);
    assert_int_equal(crew_sem_try_acquire(s, 2), CREW_EAGAIN);
    assert_int_equal(crew_sem_try_acquire(s, 1), 0);
    assert_int_equal(crew_sem_release(s, INT64_MAX), 0);
    assert_int_equal(crew_sem_release(s, 1), CREW_ERANGE);
    assert_int_equal(crew_sem_available(s), INT64_MAX);
    crew_sem_destroy(s);
}

static void test_release_errors(void **state)
{
    (void)state;
    crew_sem *s = make(4);
    /* Nothing held: any release is too much, and changes nothing. */
    assert_int_equal(crew_sem_release(s, 1), CREW_ERANGE);
    assert_int_equal(crew_sem_release(s, 5), CREW_ERANGE);
    assert_int_equal(crew_sem_release(s, INT64_MAX), CREW_ERANGE);
    assert_int_equal(crew_sem_release(s, 0), CREW_EINVAL);
    assert_int_equal(crew_sem_release(s, -3), CREW_EINVAL);
    assert_int_equal(crew_sem_available(s), 4);
    assert_int_equal(crew_sem_try_acquire(s, 3), 0);
    assert_int_equal(crew_sem_release(s, 4), CREW_ERANGE); /* 3 held */
    assert_int_equal(crew_sem_available(s), 1);
    assert_int_equal(crew_sem_release(s, 2), 0);
    assert_int_equal(crew_sem_release(s, 2), CREW_ERANGE); /* 1 held */
    assert_int_equal(crew_sem_release(s, 1), 0);
    assert_int_equal(crew_sem_available(s), 4);

    /* The same on the locked path, with a waiter queued: the waiter is not disturbed. */
    assert_int_equal(crew_sem_try_acquire(s, 3), 0);
    op o;
    op_start_queued(&o, s, 2, NULL);
    assert_int_equal(crew_sem_release(s, 4), CREW_ERANGE);
    assert_int_equal(crew_sem_available(s), 1);
    assert_int_equal(crew_sem_waiters(s), 1);
    assert_false(atomic_load(&o.done));
    assert_int_equal(crew_sem_release(s, 3), 0); /* 4 free: the waiter takes 2 */
    assert_int_equal(op_join(&o), 0);
    assert_int_equal(crew_sem_available(s), 2);
    assert_int_equal(crew_sem_release(s, 3), CREW_ERANGE); /* the waiter holds 2 */
    assert_int_equal(crew_sem_release(s, 2), 0);
    assert_int_equal(crew_sem_available(s), 4);
    crew_sem_destroy(s);
}

static void test_timed_out(void **state)
{
    (void)state;
    crew_sem *s = make(2);
    assert_int_equal(crew_sem_try_acquire(s, 1), 0);
    assert_int_equal(crew_sem_acquire(s, 2, crew_deadline_in(5 * CREW_MSEC), NULL), CREW_ETIMEDOUT);
    assert_int_equal(crew_sem_waiters(s), 0); /* the timed-out waiter unlinked itself */
    assert_int_equal(crew_sem_available(s), 1);
    /* The lock-free path is open again: a fitting request needs no lock and no wait. */
    assert_int_equal(crew_sem_try_acquire(s, 1), 0);
    assert_int_equal(crew_sem_release(s, 2), 0);
    crew_sem_destroy(s);
}

/* ---- blocking, order, starvation ------------------------------------------------------ */

static void test_release_wakes_waiter(void **state)
{
    (void)state;
    crew_sem *s = make(1);
    assert_int_equal(crew_sem_try_acquire(s, 1), 0);
    op o;
    op_start_queued(&o, s, 1, NULL);
    assert_int_equal(crew_sem_available(s), 0);
    assert_int_equal(crew_sem_release(s, 1), 0);
    assert_int_equal(op_join(&o), 0);
    /* The unit went to the waiter, not back to the pool. */
    assert_int_equal(crew_sem_available(s), 0);
    assert_int_equal(crew_sem_waiters(s), 0);
    /* Units are not owned by a thread: this one gives back what the helper took. */
    assert_int_equal(crew_sem_release(s, 1), 0);
    assert_int_equal(crew_sem_available(s), 1);
    crew_sem_destroy(s);
}

static void test_fifo(void **state)
{
    (void)state;
    enum { N = 5 };
    crew_sem *s = make(1);
    assert_int_equal(crew_sem_try_acquire(s, 1), 0);
    atomic_store(&tickets, 0);
    op o[N];
    for (int i = 0; i < N; i++)
        op_start_queued(&o[i], s, 1, NULL);
    /* Each release hands the unit to the oldest waiter; newcomers cannot barge in. */
    for (int i = 0; i < N; i++) {
        assert_int_equal(crew_sem_try_acquire(s, 1), CREW_EAGAIN);
        assert_int_equal(crew_sem_release(s, 1), 0);
        assert_int_equal(op_join(&o[i]), 0);
        assert_int_equal(o[i].order, i);
        assert_int_equal(crew_sem_waiters(s), (size_t)(N - 1 - i));
    }
    assert_int_equal(crew_sem_release(s, 1), 0);
    assert_int_equal(crew_sem_available(s), 1);
    crew_sem_destroy(s);
}

/* A big request at the head holds back the small ones behind it, even when they would
 * fit, until it is served: it is not starved. */
static void test_large_request_not_starved(void **state)
{
    (void)state;
    crew_sem *s = make(4);
    assert_int_equal(crew_sem_try_acquire(s, 3), 0);
    op big, small;
    op_start_queued(&big, s, 4, NULL);
    op_start_queued(&small, s, 1, NULL);
    /* One unit is free, yet neither the queued small request nor a newcomer takes it. */
    assert_int_equal(crew_sem_available(s), 1);
    assert_int_equal(crew_sem_try_acquire(s, 1), CREW_EAGAIN);
    assert_int_equal(crew_sem_acquire(s, 1, crew_deadline_in(2 * CREW_MSEC), NULL), CREW_ETIMEDOUT);
    assert_false(atomic_load(&small.done));
    assert_int_equal(crew_sem_release(s, 1), 0); /* 2 free: still not enough for 4 */
    assert_false(atomic_load(&big.done));
    assert_false(atomic_load(&small.done));
    assert_int_equal(crew_sem_release(s, 2), 0); /* 4 free: the big one goes */
    assert_int_equal(op_join(&big), 0);
    assert_int_equal(crew_sem_waiters(s), 1);
    assert_false(atomic_load(&small.done));
    assert_int_equal(crew_sem_release(s, 4), 0);
    assert_int_equal(op_join(&small), 0);
    assert_int_equal(crew_sem_available(s), 3);
    assert_int_equal(crew_sem_release(s, 1), 0);
    crew_sem_destroy(s);
}

/* One release can serve several waiters at once, oldest first, stopping at the first
 * that does not fit. */
static void test_release_serves_many(void **state)
{
    (void)state;
    crew_sem *s = make(6);
    assert_int_equal(crew_sem_try_acquire(s, 6), 0);
    op a, b, c, d;
    op_start_queued(&a, s, 1, NULL);
    op_start_queued(&b, s, 2, NULL);
    op_start_queued(&c, s, 3, NULL);
    op_start_queued(&d, s, 1, NULL);
    assert_int_equal(crew_sem_release(s, 5), 0); /* 1 + 2 fit, 3 does not: d waits too */
    assert_int_equal(op_join(&a), 0);
    assert_int_equal(op_join(&b), 0);
    assert_int_equal(crew_sem_available(s), 2);
    assert_int_equal(crew_sem_waiters(s), 2);
    assert_int_equal(crew_sem_release(s, 2), 0); /* 4 free: 3 and then 1 */
    assert_int_equal(op_join(&c), 0);
    assert_int_equal(op_join(&d), 0);
    assert_int_equal(crew_sem_available(s), 0);
    assert_int_equal(crew_sem_release(s, 6), 0);
    crew_sem_destroy(s);
}

/* ---- deadlines and ctx while waiting -------------------------------------------------- */

/* A head that gives up lets the waiters behind it take what is free, with no release. */
static void test_head_leaving_serves_the_rest(void **state)
{
    (void)state;
    crew_sem *s = make(4);
    assert_int_equal(crew_sem_try_acquire(s, 2), 0);
    crew_ctx *ctx = make_ctx();
    op big, s1, s2;
    op_start_queued(&big, s, 4, ctx);
    op_start_queued(&s1, s, 1, NULL);
    op_start_queued(&s2, s, 1, NULL);
    crew_ctx_cancel(ctx, 0);
    assert_int_equal(op_join(&big), CREW_ECANCELED);
    assert_int_equal(op_join(&s1), 0);
    assert_int_equal(op_join(&s2), 0);
    assert_int_equal(crew_sem_available(s), 0);
    assert_int_equal(crew_sem_waiters(s), 0);
    assert_int_equal(crew_sem_release(s, 4), 0);
    crew_ctx_release(ctx);

    /* The same with a deadline ending the head's wait. (Should the deadline pass before
     * the small request queues, it finds the unit free and takes it at once.) */
    assert_int_equal(crew_sem_try_acquire(s, 3), 0);
    op_start(&big, s, 2, crew_deadline_in(50 * CREW_MSEC), NULL);
    wait_waiters(s, 1);
    op_start(&s1, s, 1, CREW_FOREVER, NULL);
    eventually(crew_sem_waiters(s) == 2 || atomic_load(&big.done));
    assert_int_equal(op_join(&big), CREW_ETIMEDOUT);
    assert_int_equal(op_join(&s1), 0);
    assert_int_equal(crew_sem_release(s, 4), 0);
    crew_sem_destroy(s);
}

/* A waiter in the middle that gives up leaves the order of the others intact. */
static void test_middle_leaving_keeps_order(void **state)
{
    (void)state;
    crew_sem *s = make(1);
    assert_int_equal(crew_sem_try_acquire(s, 1), 0);
    crew_ctx *ctx = make_ctx();
    atomic_store(&tickets, 0);
    op a, b, c;
    op_start_queued(&a, s, 1, NULL);
    op_start_queued(&b, s, 1, ctx);
    op_start_queued(&c, s, 1, NULL);
    crew_ctx_cancel(ctx, CREW_ESHUTDOWN); /* any cause reads as CREW_ECANCELED */
    assert_int_equal(op_join(&b), CREW_ECANCELED);
    assert_int_equal(crew_sem_waiters(s), 2);
    assert_int_equal(crew_sem_available(s), 0); /* it took nothing with it */
    assert_int_equal(crew_sem_release(s, 1), 0);
    assert_int_equal(op_join(&a), 0);
    assert_int_equal(crew_sem_release(s, 1), 0);
    assert_int_equal(op_join(&c), 0);
    assert_int_equal(a.order, 0);
    assert_int_equal(c.order, 1);
    assert_int_equal(crew_sem_release(s, 1), 0);
    crew_ctx_release(ctx);
    crew_sem_destroy(s);
}

static void test_ctx_done_before(void **state)
{
    (void)state;
    crew_sem *s = make(2);
    crew_ctx *ctx = make_ctx();
    crew_ctx_cancel(ctx, 0);
    /* A done ctx fails the call before it looks at the semaphore, even one that could
     * succeed at once. */
    assert_int_equal(crew_sem_acquire(s, 1, CREW_FOREVER, ctx), CREW_ECANCELED);
    assert_int_equal(crew_sem_acquire(s, 1, CREW_NOW, ctx), CREW_ECANCELED);
    assert_int_equal(crew_sem_available(s), 2);
    crew_ctx_release(ctx);

    /* A ctx whose deadline passed reports CREW_ETIMEDOUT. */
    assert_int_equal(crew_ctx_with_deadline(NULL, 1, &ctx), 0);
    assert_int_equal(crew_sem_acquire(s, 1, CREW_FOREVER, ctx), CREW_ETIMEDOUT);
    crew_ctx_release(ctx);

    /* The background ctx never ends a call. */
    assert_int_equal(crew_sem_acquire(s, 2, CREW_FOREVER, crew_ctx_background()), 0);
    assert_int_equal(crew_sem_acquire(s, 1, crew_deadline_in(CREW_MSEC), crew_ctx_background()),
                     CREW_ETIMEDOUT);
    assert_int_equal(crew_sem_release(s, 2), 0);
    crew_sem_destroy(s);
}

static void test_ctx_during_wait(void **state)
{
    (void)state;
    crew_sem *s = make(1);
    assert_int_equal(crew_sem_try_acquire(s, 1), 0);

    /* Cancelled from this thread while the helper waits. */
    crew_ctx *ctx = make_ctx();
    op o;
    op_start_queued(&o, s, 1, ctx);
    crew_ctx_cancel(ctx, 0);
    assert_int_equal(op_join(&o), CREW_ECANCELED);
    crew_ctx_release(ctx);

    /* Through a parent. */
    crew_ctx *parent = make_ctx(), *child = NULL;
    assert_int_equal(crew_ctx_with_cancel(parent, &child), 0);
    op_start_queued(&o, s, 1, child);
    crew_ctx_cancel(parent, 0);
    assert_int_equal(op_join(&o), CREW_ECANCELED);
    crew_ctx_release(child);
    crew_ctx_release(parent);

    /* By the ctx's own deadline, fired by the timer thread. */
    assert_int_equal(crew_ctx_with_timeout(NULL, 5 * CREW_MSEC, &ctx), 0);
    assert_int_equal(crew_sem_acquire(s, 1, CREW_FOREVER, ctx), CREW_ETIMEDOUT);
    crew_ctx_release(ctx);

    /* A live ctx does not stop the call's own deadline. */
    ctx = make_ctx();
    assert_int_equal(crew_sem_acquire(s, 1, crew_deadline_in(2 * CREW_MSEC), ctx), CREW_ETIMEDOUT);
    assert_false(crew_ctx_done(ctx));
    crew_ctx_release(ctx);

    assert_int_equal(crew_sem_waiters(s), 0);
    assert_int_equal(crew_sem_available(s), 0);
    assert_int_equal(crew_sem_release(s, 1), 0);
    crew_sem_destroy(s);
}

/* A waiter that a release granted succeeds even if its ctx is cancelled before it wakes:
 * the units it was given are never lost. */
static void test_grant_wins_over_cancel(void **state)
{
    (void)state;
    crew_sem *s = make(1);
    assert_int_equal(crew_sem_try_acquire(s, 1), 0);
    for (int round = 0; round < 20; round++) {
        crew_ctx *ctx = make_ctx();
        op o;
        op_start_queued(&o, s, 1, ctx);
        assert_int_equal(crew_sem_release(s, 1), 0); /* granted under the lock, here */
        crew_ctx_cancel(ctx, 0);
        assert_int_equal(op_join(&o), 0);
        assert_int_equal(crew_sem_available(s), 0); /* the helper holds it */
        crew_ctx_release(ctx);
    }
    assert_int_equal(crew_sem_release(s, 1), 0);
    crew_sem_destroy(s);
}

/* Waiters that each release right after acquiring pass the unit down the whole queue. */
static void test_chain_of_handoffs(void **state)
{
    (void)state;
    enum { N = 8 };
    crew_sem *s = make(2);
    assert_int_equal(crew_sem_try_acquire(s, 2), 0);
    op o[N];
    for (int i = 0; i < N; i++) {
        op_launch(&o[i], s, 1 + i % 2, CREW_FOREVER, NULL, true);
        wait_waiters(s, (size_t)i + 1);
    }
    assert_int_equal(crew_sem_release(s, 2), 0);
    for (int i = 0; i < N; i++)
        assert_int_equal(op_join(&o[i]), 0);
    assert_int_equal(crew_sem_available(s), 2);
    assert_int_equal(crew_sem_waiters(s), 0);
    crew_sem_destroy(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        leak_test(test_create_invalid),
        leak_test(test_create_nomem),
        leak_test(test_counting),
        leak_test(test_weighted),
        leak_test(test_release_errors),
        leak_test(test_timed_out),
        leak_test(test_release_wakes_waiter),
        leak_test(test_fifo),
        leak_test(test_large_request_not_starved),
        leak_test(test_release_serves_many),
        leak_test(test_head_leaving_serves_the_rest),
        leak_test(test_middle_leaving_keeps_order),
        leak_test(test_ctx_done_before),
        leak_test(test_ctx_during_wait),
        leak_test(test_grant_wins_over_cancel),
        leak_test(test_chain_of_handoffs),
    };
    return cmocka_run_group_tests_name("sem", tests, NULL, NULL);
}
