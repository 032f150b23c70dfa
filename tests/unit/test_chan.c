/* Tests for src/chan.c: bounded MPMC channels, rendezvous, deadlines, ctx, close. */
#include "internal.h"
#include "testutil.h"

#include <sched.h>
#include <stdint.h>
#include <string.h>

/* ---- helpers -------------------------------------------------------------------------- */

/* One blocking channel call run on a helper thread. */
typedef struct op {
    crew_chan *c;
    bool send;        /* send value, or receive into value */
    int value;        /* the element sent, or the one received */
    bool null_elem;   /* receive with elem == NULL */
    int64_t deadline; /* passed through */
    crew_ctx *ctx;    /* passed through (may be NULL) */
    int rc;           /* what the call returned, valid once done */
    _Atomic bool done;
    pthread_t tid;
} op;

static void *op_main(void *arg)
{
    op *o = arg;
    if (o->send)
        o->rc = crew_chan_send(o->c, &o->value, o->deadline, o->ctx);
    else
        o->rc = crew_chan_recv(o->c, o->null_elem ? NULL : &o->value, o->deadline, o->ctx);
    atomic_store(&o->done, true);
    return NULL;
}

static void op_launch(op *o, crew_chan *c, bool send, int value, bool null_elem, int64_t deadline,
                      crew_ctx *ctx)
{
    o->c = c;
    o->send = send;
    o->value = value;
    o->null_elem = null_elem;
    o->deadline = deadline;
    o->ctx = ctx;
    o->rc = 1;
    atomic_init(&o->done, false);
    assert_int_equal(pthread_create(&o->tid, NULL, op_main, o), 0);
}

static void op_start(op *o, crew_chan *c, bool send, int value, int64_t deadline, crew_ctx *ctx)
{
    op_launch(o, c, send, value, false, deadline, ctx);
}

static int op_join(op *o)
{
    assert_int_equal(pthread_join(o->tid, NULL), 0);
    assert_true(atomic_load(&o->done));
    return o->rc;
}

/* Waits (with a generous bound, never a fixed sleep) until n threads are blocked on c. */
static void wait_waiters(crew_chan *c, size_t n)
{
    int64_t until = crew_deadline_in(10 * CREW_SEC);
    while (crew__chan_waiters(c) != n) {
        if (crew_now() > until)
            fail_msg("expected %zu waiters, have %zu", n, crew__chan_waiters(c));
        sched_yield();
    }
}

/* Starts a helper and waits until it is blocked, so helpers queue in a known order. */
static void op_start_blocked(op *o, crew_chan *c, bool send, int value, crew_ctx *ctx)
{
    size_t before = crew__chan_waiters(c);
    op_start(o, c, send, value, CREW_FOREVER, ctx);
    wait_waiters(c, before + 1);
    assert_false(atomic_load(&o->done));
}

static crew_chan *make(size_t elem_size, size_t cap)
{
    crew_chan *c = NULL;
    assert_int_equal(crew_chan_create(&c, elem_size, cap), 0);
    assert_non_null(c);
    return c;
}

/* ---- creation and accessors ----------------------------------------------------------- */

static void test_create_invalid(void **state)
{
    (void)state;
    crew_chan *c = (crew_chan *)&c; /* a sentinel: must stay untouched on failure */
    assert_int_equal(crew_chan_create(&c, 0, 4), CREW_EINVAL);
    assert_ptr_equal(c, (crew_chan *)&c);
    assert_int_equal(crew_chan_create(NULL, 4, 4), CREW_EINVAL);
    assert_int_equal(crew_chan_create(&c, SIZE_MAX / 2 + 1, 2), CREW_EINVAL); /* overflow */
    assert_ptr_equal(c, (crew_chan *)&c);
    crew_chan_destroy(NULL); /* ignored */
}

static void test_create_nomem(void **state)
{
    (void)state;
    crew_chan *c = NULL;
    /* The first allocation is the channel, the second its ring. */
    crew__test_fail_after(1);
    assert_int_equal(crew_chan_create(&c, sizeof(int), 4), CREW_ENOMEM);
    assert_null(c);
    crew__test_fail_after(2);
    assert_int_equal(crew_chan_create(&c, sizeof(int), 4), CREW_ENOMEM);
    assert_null(c);
    crew__test_fail_after(0);
    /* A rendezvous channel has no ring: one allocation only. */
    crew__test_fail_after(1);
    assert_int_equal(crew_chan_create(&c, sizeof(int), 0), CREW_ENOMEM);
    crew__test_fail_after(0);
    assert_null(c);
    uint64_t before = crew__test_alloc_count();
    c = make(sizeof(int), 0);
    assert_true(crew__test_alloc_count() - before == 1);
    crew_chan_destroy(c);
    before = crew__test_alloc_count();
    c = make(sizeof(int), 3);
    assert_true(crew__test_alloc_count() - before == 2);
    crew_chan_destroy(c);
}

static void test_len_cap_closed(void **state)
{
    (void)state;
    crew_chan *c = make(sizeof(int), 3);
    assert_int_equal(crew_chan_cap(c), 3);
    assert_int_equal(crew_chan_len(c), 0);
    assert_false(crew_chan_closed(c));
    int v = 7;
    assert_int_equal(crew_chan_try_send(c, &v), 0);
    assert_int_equal(crew_chan_try_send(c, &v), 0);
    assert_int_equal(crew_chan_len(c), 2);
    assert_int_equal(crew_chan_close(c), 0);
    assert_true(crew_chan_closed(c));
    assert_int_equal(crew_chan_len(c), 2);
    assert_int_equal(crew__chan_waiters(c), 0);
    crew_chan_destroy(c);

    crew_chan *r = make(1, 0);
    assert_int_equal(crew_chan_cap(r), 0);
    assert_int_equal(crew_chan_len(r), 0);
    crew_chan_destroy(r);
}

/* ---- non-blocking and timed calls ----------------------------------------------------- */

static void test_try_empty_full(void **state)
{
    (void)state;
    crew_chan *c = make(sizeof(int), 2);
    int v = -1;
    assert_int_equal(crew_chan_try_recv(c, &v), CREW_EAGAIN);
    assert_int_equal(v, -1); /* nothing received */
    int a = 10, b = 20, x = 30;
    assert_int_equal(crew_chan_try_send(c, &a), 0);
    assert_int_equal(crew_chan_send(c, &b, CREW_NOW, NULL), 0);
    assert_int_equal(crew_chan_try_send(c, &x), CREW_EAGAIN);
    /* A deadline already past is a try as well. */
    assert_int_equal(crew_chan_send(c, &x, 1, NULL), CREW_EAGAIN);
    assert_int_equal(crew_chan_send(c, &x, crew_now() - CREW_MSEC, NULL), CREW_EAGAIN);
    assert_int_equal(crew_chan_len(c), 2);
    assert_int_equal(crew_chan_try_recv(c, &v), 0);
    assert_int_equal(v, 10);
    assert_int_equal(crew_chan_recv(c, &v, CREW_NOW, NULL), 0);
    assert_int_equal(v, 20);
    assert_int_equal(crew_chan_recv(c, &v, 1, NULL), CREW_EAGAIN);
    assert_int_equal(crew_chan_len(c), 0);
    crew_chan_destroy(c);
}

static void test_timed_out(void **state)
{
    (void)state;
    crew_chan *c = make(sizeof(int), 1);
    int v = -1;
    assert_int_equal(crew_chan_recv(c, &v, crew_deadline_in(5 * CREW_MSEC), NULL), CREW_ETIMEDOUT);
    assert_int_equal(v, -1);
    int a = 1, b = 2;
    assert_int_equal(crew_chan_send(c, &a, crew_deadline_in(5 * CREW_MSEC), NULL), 0);
    assert_int_equal(crew_chan_send(c, &b, crew_deadline_in(5 * CREW_MSEC), NULL), CREW_ETIMEDOUT);
    assert_int_equal(crew__chan_waiters(c), 0); /* the timed-out waiter unlinked itself */
    /* Nothing of the timed-out send went in. */
    assert_int_equal(crew_chan_len(c), 1);
    assert_int_equal(crew_chan_try_recv(c, &v), 0);
    assert_int_equal(v, 1);
    assert_int_equal(crew_chan_try_recv(c, &v), CREW_EAGAIN);

    /* The same on a rendezvous channel, and on one with a large element. */
    crew_chan *r = make(sizeof(int), 0);
    assert_int_equal(crew_chan_send(r, &a, crew_deadline_in(2 * CREW_MSEC), NULL), CREW_ETIMEDOUT);
    assert_int_equal(crew_chan_recv(r, &v, crew_deadline_in(2 * CREW_MSEC), NULL), CREW_ETIMEDOUT);
    assert_int_equal(crew__chan_waiters(r), 0);
    crew_chan_destroy(r);
    crew_chan_destroy(c);
}

static void test_recv_null_elem(void **state)
{
    (void)state;
    crew_chan *c = make(sizeof(int), 2);
    int a = 1, b = 2, v = 0;
    assert_int_equal(crew_chan_try_send(c, &a), 0);
    assert_int_equal(crew_chan_try_send(c, &b), 0);
    assert_int_equal(crew_chan_try_recv(c, NULL), 0); /* drops 1 */
    assert_int_equal(crew_chan_try_recv(c, &v), 0);
    assert_int_equal(v, 2);

    /* A blocked receiver with a NULL buffer drops the hand-off. */
    op o;
    op_launch(&o, c, false, -1, true, CREW_FOREVER, NULL);
    wait_waiters(c, 1);
    a = 3;
    assert_int_equal(crew_chan_try_send(c, &a), 0);
    assert_int_equal(op_join(&o), 0);
    assert_int_equal(o.value, -1);
    assert_int_equal(crew_chan_len(c), 0);
    crew_chan_destroy(c);
}

/* ---- ordering and hand-offs ----------------------------------------------------------- */

typedef struct producer {
    crew_chan *c;
    int n;
    int failures;
} producer;

static void *produce(void *arg)
{
    producer *p = arg;
    for (int i = 0; i < p->n; i++)
        if (crew_chan_send(p->c, &i, CREW_FOREVER, NULL) != 0)
            p->failures++;
    return NULL;
}

static void fifo_with_cap(size_t cap)
{
    crew_chan *c = make(sizeof(int), cap);
    producer p = {c, 5000, 0};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, produce, &p), 0);
    for (int i = 0; i < p.n; i++) {
        int v = -1;
        assert_int_equal(crew_chan_recv(c, &v, CREW_FOREVER, NULL), 0);
        assert_int_equal(v, i);
    }
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(p.failures, 0);
    assert_int_equal(crew_chan_len(c), 0);
    crew_chan_destroy(c);
}

static void test_fifo_single_producer(void **state)
{
    (void)state;
    fifo_with_cap(0);
    fifo_with_cap(1);
    fifo_with_cap(7); /* wraps around the ring many times */
}

static void test_blocked_receivers_fifo(void **state)
{
    (void)state;
    crew_chan *c = make(sizeof(int), 4);
    op o[3];
    for (int i = 0; i < 3; i++)
        op_start_blocked(&o[i], c, false, -1, NULL);
    /* Each send goes straight to the oldest waiting receiver, not into the ring. */
    for (int i = 0; i < 3; i++) {
        int v = 100 + i;
        assert_int_equal(crew_chan_try_send(c, &v), 0);
        assert_int_equal(crew_chan_len(c), 0);
    }
    for (int i = 0; i < 3; i++) {
        assert_int_equal(op_join(&o[i]), 0);
        assert_int_equal(o[i].value, 100 + i);
    }
    assert_int_equal(crew__chan_waiters(c), 0);
    crew_chan_destroy(c);
}

static void test_blocked_senders_fifo(void **state)
{
    (void)state;
    crew_chan *c = make(sizeof(int), 2);
    int v = 0;
    assert_int_equal(crew_chan_try_send(c, &v), 0);
    v = 1;
    assert_int_equal(crew_chan_try_send(c, &v), 0);
    op o[3];
    for (int i = 0; i < 3; i++)
        op_start_blocked(&o[i], c, true, 2 + i, NULL);
    /* Each receive frees a slot that the oldest sender fills at once: the ring stays full. */
    for (int i = 0; i < 5; i++) {
        int got = -1;
        assert_int_equal(crew_chan_try_recv(c, &got), 0);
        assert_int_equal(got, i);
        if (i < 3) {
            assert_int_equal(op_join(&o[i]), 0);
            assert_int_equal(crew_chan_len(c), 2);
        }
    }
    assert_int_equal(crew_chan_len(c), 0);
    assert_int_equal(crew_chan_try_recv(c, &v), CREW_EAGAIN);
    crew_chan_destroy(c);
}

static void test_rendezvous(void **state)
{
    (void)state;
    crew_chan *c = make(sizeof(int), 0);
    int v = 5;
    /* No receiver, no buffer: a try cannot complete. */
    assert_int_equal(crew_chan_try_send(c, &v), CREW_EAGAIN);
    assert_int_equal(crew_chan_try_recv(c, &v), CREW_EAGAIN);

    /* A blocked receiver and a send complete each other. */
    op r;
    op_start_blocked(&r, c, false, -1, NULL);
    v = 42;
    assert_int_equal(crew_chan_try_send(c, &v), 0);
    assert_int_equal(op_join(&r), 0);
    assert_int_equal(r.value, 42);

    /* A blocked sender does not complete until a receiver takes its element. */
    op s;
    op_start_blocked(&s, c, true, 43, NULL);
    assert_int_equal(crew_chan_len(c), 0);
    assert_false(atomic_load(&s.done));
    int got = -1;
    assert_int_equal(crew_chan_try_recv(c, &got), 0);
    assert_int_equal(got, 43);
    assert_int_equal(op_join(&s), 0);

    /* A receiver dropping the element still completes the sender. */
    op_start_blocked(&s, c, true, 44, NULL);
    assert_int_equal(crew_chan_recv(c, NULL, CREW_FOREVER, NULL), 0);
    assert_int_equal(op_join(&s), 0);

    /* And a blocked receiver with a NULL buffer. */
    op_launch(&r, c, false, -1, true, CREW_FOREVER, NULL);
    wait_waiters(c, 1);
    v = 45;
    assert_int_equal(crew_chan_send(c, &v, CREW_FOREVER, NULL), 0);
    assert_int_equal(op_join(&r), 0);
    crew_chan_destroy(c);
}

/* Elements of any size are copied whole, through the ring and through hand-offs. */
typedef struct big {
    unsigned char bytes[1000];
} big;

static void *recv_big(void *arg)
{
    crew_chan *c = arg;
    big *b = malloc(sizeof *b);
    if (b && crew_chan_recv(c, b, CREW_FOREVER, NULL) != 0) {
        free(b);
        b = NULL;
    }
    return b;
}

static void test_large_elements(void **state)
{
    (void)state;
    crew_chan *c = make(sizeof(big), 2);
    big in, out;
    for (int round = 0; round < 5; round++) {
        memset(&in, 'a' + round, sizeof in);
        in.bytes[sizeof in.bytes - 1] = (unsigned char)round;
        assert_int_equal(crew_chan_try_send(c, &in), 0);
        memset(&out, 0, sizeof out);
        assert_int_equal(crew_chan_try_recv(c, &out), 0);
        assert_memory_equal(&in, &out, sizeof in);
    }
    /* A direct hand-off to a blocked receiver. */
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, recv_big, c), 0);
    wait_waiters(c, 1);
    memset(&in, 'z', sizeof in);
    assert_int_equal(crew_chan_send(c, &in, CREW_FOREVER, NULL), 0);
    void *got;
    assert_int_equal(pthread_join(t, &got), 0);
    assert_non_null(got);
    assert_memory_equal(got, &in, sizeof in);
    free(got);
    crew_chan_destroy(c);
}

/* Nothing is allocated after creation: not by the fast paths, not by blocking, not by a
 * hand-off, a timeout or a close. */
static void test_no_allocation_after_create(void **state)
{
    (void)state;
    crew_chan *c = make(sizeof(int), 2);
    crew_chan *r = make(sizeof(int), 0);
    uint64_t before = crew__test_alloc_count();
    int v = 1;
    for (int i = 0; i < 100; i++) {
        assert_int_equal(crew_chan_send(c, &v, CREW_FOREVER, NULL), 0);
        assert_int_equal(crew_chan_recv(c, &v, CREW_FOREVER, NULL), 0);
    }
    assert_int_equal(crew_chan_try_recv(c, &v), CREW_EAGAIN);
    assert_int_equal(crew_chan_recv(r, &v, crew_deadline_in(CREW_MSEC), NULL), CREW_ETIMEDOUT);
    op o;
    op_start_blocked(&o, r, false, -1, NULL);
    assert_int_equal(crew_chan_send(r, &v, CREW_FOREVER, NULL), 0);
    assert_int_equal(op_join(&o), 0);
    op_start_blocked(&o, r, true, 5, NULL);
    assert_int_equal(crew_chan_close(r), 0);
    assert_int_equal(op_join(&o), CREW_EPIPE);
    assert_true(crew__test_alloc_count() == before);
    crew_chan_destroy(r);
    crew_chan_destroy(c);
}

/* ---- close ---------------------------------------------------------------------------- */

static void test_close_wakes_receivers(void **state)
{
    (void)state;
    crew_chan *c = make(sizeof(int), 0);
    op o[3];
    for (int i = 0; i < 3; i++)
        op_start_blocked(&o[i], c, false, -1, NULL);
    assert_int_equal(crew_chan_close(c), 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(op_join(&o[i]), CREW_EPIPE);
        assert_int_equal(o[i].value, -1);
    }
    assert_int_equal(crew__chan_waiters(c), 0);
    assert_int_equal(crew_chan_close(c), CREW_EPIPE); /* twice */
    int v = 1;
    assert_int_equal(crew_chan_send(c, &v, CREW_FOREVER, NULL), CREW_EPIPE);
    assert_int_equal(crew_chan_try_send(c, &v), CREW_EPIPE);
    assert_int_equal(crew_chan_recv(c, &v, CREW_FOREVER, NULL), CREW_EPIPE);
    crew_chan_destroy(c);
}

static void test_close_wakes_senders_then_drain(void **state)
{
    (void)state;
    crew_chan *c = make(sizeof(int), 2);
    int v = 1;
    assert_int_equal(crew_chan_try_send(c, &v), 0);
    v = 2;
    assert_int_equal(crew_chan_try_send(c, &v), 0);
    op o[3];
    for (int i = 0; i < 3; i++)
        op_start_blocked(&o[i], c, true, 10 + i, NULL);
    assert_int_equal(crew_chan_close(c), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(op_join(&o[i]), CREW_EPIPE);
    /* The buffered elements survive the close; the blocked senders' do not get in. */
    assert_int_equal(crew_chan_len(c), 2);
    int got = 0;
    assert_int_equal(crew_chan_recv(c, &got, CREW_FOREVER, NULL), 0);
    assert_int_equal(got, 1);
    assert_int_equal(crew_chan_try_recv(c, &got), 0);
    assert_int_equal(got, 2);
    assert_int_equal(crew_chan_try_recv(c, &got), CREW_EPIPE); /* closed, not EAGAIN */
    assert_int_equal(crew_chan_recv(c, &got, CREW_FOREVER, NULL), CREW_EPIPE);
    crew_chan_destroy(c);
}

static void test_close_rendezvous_senders(void **state)
{
    (void)state;
    crew_chan *c = make(sizeof(int), 0);
    op o[2];
    for (int i = 0; i < 2; i++)
        op_start_blocked(&o[i], c, true, i, NULL);
    assert_int_equal(crew_chan_close(c), 0);
    for (int i = 0; i < 2; i++)
        assert_int_equal(op_join(&o[i]), CREW_EPIPE);
    int got = -1;
    assert_int_equal(crew_chan_try_recv(c, &got), CREW_EPIPE);
    assert_int_equal(got, -1);
    crew_chan_destroy(c);
}

/* ---- ctx ------------------------------------------------------------------------------ */

static void test_ctx_done_before(void **state)
{
    (void)state;
    crew_chan *c = make(sizeof(int), 2);
    crew_ctx *ctx = NULL;
    assert_int_equal(crew_ctx_with_cancel(NULL, &ctx), 0);
    crew_ctx_cancel(ctx, 0);
    int v = 1;
    /* A done ctx fails the call before it looks at the channel, even one that could
     * complete. */
    assert_int_equal(crew_chan_send(c, &v, CREW_FOREVER, ctx), CREW_ECANCELED);
    assert_int_equal(crew_chan_len(c), 0);
    assert_int_equal(crew_chan_try_send(c, &v), 0);
    v = -1;
    assert_int_equal(crew_chan_recv(c, &v, CREW_NOW, ctx), CREW_ECANCELED);
    assert_int_equal(v, -1);
    assert_int_equal(crew_chan_len(c), 1);
    crew_ctx_release(ctx);

    /* A ctx whose deadline passed reports CREW_ETIMEDOUT. */
    assert_int_equal(crew_ctx_with_deadline(NULL, 1, &ctx), 0);
    assert_int_equal(crew_chan_recv(c, &v, CREW_FOREVER, ctx), CREW_ETIMEDOUT);
    assert_int_equal(crew_chan_len(c), 1);
    crew_ctx_release(ctx);

    /* The background ctx never ends a call. */
    assert_int_equal(crew_chan_recv(c, &v, CREW_FOREVER, crew_ctx_background()), 0);
    assert_int_equal(v, 1);
    assert_int_equal(crew_chan_recv(c, &v, crew_deadline_in(CREW_MSEC), crew_ctx_background()),
                     CREW_ETIMEDOUT);
    crew_chan_destroy(c);
}

static void ctx_cancel_during(size_t cap, bool send, int cause, int want)
{
    crew_chan *c = make(sizeof(int), cap);
    int v = 0;
    for (size_t i = 0; send && i < cap; i++)
        assert_int_equal(crew_chan_try_send(c, &v), 0); /* full, so a sender blocks */
    crew_ctx *ctx = NULL;
    assert_int_equal(crew_ctx_with_cancel(NULL, &ctx), 0);
    op o;
    op_start_blocked(&o, c, send, 99, ctx);
    crew_ctx_cancel(ctx, cause); /* from this thread, while the helper waits */
    assert_int_equal(op_join(&o), want);
    assert_int_equal(crew__chan_waiters(c), 0);
    assert_int_equal(crew_chan_len(c), send ? cap : 0); /* nothing moved */
    if (!send)
        assert_int_equal(o.value, 99);
    crew_ctx_release(ctx);
    crew_chan_destroy(c);
}

static void test_ctx_cancel_during_wait(void **state)
{
    (void)state;
    ctx_cancel_during(0, true, 0, CREW_ECANCELED);
    ctx_cancel_during(0, false, 0, CREW_ECANCELED);
    ctx_cancel_during(3, true, 0, CREW_ECANCELED);
    ctx_cancel_during(3, false, CREW_ESHUTDOWN, CREW_ECANCELED); /* any cause: ECANCELED */
    ctx_cancel_during(1, true, CREW_ETIMEDOUT, CREW_ETIMEDOUT);
}

static void test_ctx_parent_cancel(void **state)
{
    (void)state;
    crew_chan *c = make(sizeof(int), 0);
    crew_ctx *parent = NULL, *child = NULL;
    assert_int_equal(crew_ctx_with_cancel(NULL, &parent), 0);
    assert_int_equal(crew_ctx_with_cancel(parent, &child), 0);
    op o[2];
    op_start_blocked(&o[0], c, false, 1, child);
    op_start_blocked(&o[1], c, false, 2, parent);
    crew_ctx_cancel(parent, 0);
    assert_int_equal(op_join(&o[0]), CREW_ECANCELED);
    assert_int_equal(op_join(&o[1]), CREW_ECANCELED);
    crew_ctx_release(child);
    crew_ctx_release(parent);
    crew_chan_destroy(c);
}

static void test_ctx_deadline(void **state)
{
    (void)state;
    crew_chan *c = make(sizeof(int), 0);
    crew_ctx *ctx = NULL;
    assert_int_equal(crew_ctx_with_timeout(NULL, 5 * CREW_MSEC, &ctx), 0);
    int v = 7;
    /* The timer thread cancels the ctx while the call blocks without its own deadline. */
    assert_int_equal(crew_chan_send(c, &v, CREW_FOREVER, ctx), CREW_ETIMEDOUT);
    assert_int_equal(crew__chan_waiters(c), 0);
    assert_int_equal(crew_chan_recv(c, &v, CREW_FOREVER, ctx), CREW_ETIMEDOUT);
    crew_ctx_release(ctx);

    /* A live ctx does not stop a call's own deadline, which reports CREW_ETIMEDOUT. */
    assert_int_equal(crew_ctx_with_cancel(NULL, &ctx), 0);
    assert_int_equal(crew_chan_recv(c, &v, crew_deadline_in(2 * CREW_MSEC), ctx), CREW_ETIMEDOUT);
    assert_int_equal(crew_chan_send(c, &v, crew_deadline_in(2 * CREW_MSEC), ctx), CREW_ETIMEDOUT);
    assert_false(crew_ctx_done(ctx));
    assert_int_equal(crew__chan_waiters(c), 0);
    crew_ctx_cancel(ctx, 0);
    crew_ctx_release(ctx);
    crew_chan_destroy(c);
}

/* A waiter that a peer completed succeeds even if its ctx is cancelled before it wakes:
 * the element it holds is never lost. */
static void test_completed_wins_over_cancel(void **state)
{
    (void)state;
    crew_chan *c = make(sizeof(int), 0);
    crew_ctx *ctx = NULL;
    for (int round = 0; round < 20; round++) {
        assert_int_equal(crew_ctx_with_cancel(NULL, &ctx), 0);
        op r;
        op_start_blocked(&r, c, false, -1, ctx);
        int v = round;
        assert_int_equal(crew_chan_try_send(c, &v), 0);
        crew_ctx_cancel(ctx, 0);
        assert_int_equal(op_join(&r), 0);
        assert_int_equal(r.value, round);

        v = 1000 + round; /* ctx is done: fails at once */
        assert_int_equal(crew_chan_send(c, &v, CREW_FOREVER, ctx), CREW_ECANCELED);
        crew_ctx_release(ctx);

        op s;

        assert_int_equal(crew_ctx_with_cancel(NULL, &ctx), 0);
        op_start_blocked(&s, c, true, 2000 + round, ctx);
        assert_int_equal(crew_chan_try_recv(c, &v), 0);
        crew_ctx_cancel(ctx, 0);
        assert_int_equal(op_join(&s), 0);
        assert_int_equal(v, 2000 + round);
        crew_ctx_release(ctx);
    }
    crew_chan_destroy(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        leak_test(test_create_invalid),
        leak_test(test_create_nomem),
        leak_test(test_len_cap_closed),
        leak_test(test_try_empty_full),
        leak_test(test_timed_out),
        leak_test(test_recv_null_elem),
        leak_test(test_fifo_single_producer),
        leak_test(test_blocked_receivers_fifo),
        leak_test(test_blocked_senders_fifo),
        leak_test(test_rendezvous),
        leak_test(test_large_elements),
        leak_test(test_no_allocation_after_create),
        leak_test(test_close_wakes_receivers),
        leak_test(test_close_wakes_senders_then_drain),
        leak_test(test_close_rendezvous_senders),
        leak_test(test_ctx_done_before),
        leak_test(test_ctx_cancel_during_wait),
        leak_test(test_ctx_parent_cancel),
        leak_test(test_ctx_deadline),
        leak_test(test_completed_wins_over_cancel),
    };
    return cmocka_run_group_tests_name("chan", tests, NULL, NULL);
}
