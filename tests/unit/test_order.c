/* Tests for src/order.c: the reorder buffer (put, reserve, next, close, window, holes,
 * deadlines, ctx, discard, stats) and crew_order_map (slots by index, errors, nesting,
 * cancellation, shutdown, allocation failure). */
#include "internal.h"
#include "testutil.h"

#include <string.h>

/* ---- helpers -------------------------------------------------------------------------- */

static crew_order *make(size_t window)
{
    crew_order *o = NULL;
    assert_int_equal(crew_order_create(&o, &(crew_order_opts){.window = window}), 0);
    assert_non_null(o);
    return o;
}

static crew_order_info info_of(crew_order *o)
{
    crew_order_info i;
    assert_int_equal(crew_order_stats(o, &i), 0);
    return i;
}

/* Takes the next result without waiting and checks it. */
static void expect_next(crew_order *o, uint64_t seq, void *item, int err)
{
    crew_order_result r = {UINT64_MAX, (void *)&r, 1};
    assert_int_equal(crew_order_next(o, &r, CREW_NOW, NULL), 0);
    assert_int_equal(r.seq, seq);
    assert_ptr_equal(r.item, item);
    assert_int_equal(r.err, err);
}

/* A gate is a ctx: closed while live, opened by cancelling it. Waiters also give up when
 * their own ctx ends, so a cancelled job never hangs a test. */
static int gate_pass(crew_ctx *gate, crew_ctx *mine)
{
    while (!crew_ctx_done(gate) && !crew_ctx_done(mine))
        (void)crew_ctx_wait(gate, crew_deadline_in(CREW_MSEC));
    return crew_ctx_done(gate) ? 0 : crew_ctx_err(mine);
}

/* A job that waits at the gate given as its argument. */
static int gate_job(crew_ctx *ctx, void *arg)
{
    return gate_pass(arg, ctx);
}

static crew_ctx *gate_new(void)
{
    crew_ctx *g = NULL;
    assert_int_equal(crew_ctx_with_cancel(NULL, &g), 0);
    return g;
}

/* One blocking order call on a helper thread. */
enum { OP_PUT, OP_RESERVE, OP_NEXT };
typedef struct op {
    crew_order *o;
    int kind;
    uint64_t seq;          /* a put's seq; a reserve's result */
    void *item;            /* a put's item */
    crew_order_result res; /* a next's result */
    int64_t deadline;
    crew_ctx *ctx;
    int rc;
    _Atomic bool done;
    pthread_t tid;
} op;

static void *op_main(void *arg)
{
    op *p = arg;
    switch (p->kind) {
    case OP_PUT:
        p->rc = crew_order_put(p->o, p->seq, p->item, 0, p->deadline, p->ctx);
        break;
    case OP_RESERVE:
        p->rc = crew_order_reserve(p->o, &p->seq, p->deadline, p->ctx);
        break;
    default:
        p->rc = crew_order_next(p->o, &p->res, p->deadline, p->ctx);
        break;
    }
    atomic_store(&p->done, true);
    return NULL;
}

static void op_start(op *p, crew_order *o, int kind, uint64_t seq, crew_ctx *ctx)
{
    memset(p, 0, sizeof *p);
    p->o = o;
    p->kind = kind;
    p->seq = seq;
    p->item = (void *)(uintptr_t)(seq + 1000);
    p->deadline = CREW_FOREVER;
    p->ctx = ctx;
    p->rc = 1;
    assert_int_equal(pthread_create(&p->tid, NULL, op_main, p), 0);
}

static int op_join(op *p)
{
    assert_int_equal(pthread_join(p->tid, NULL), 0);
    return p->rc;
}

/* ---- the reorder buffer --------------------------------------------------------------- */

static void test_create_invalid(void **state)
{
    (void)state;
    crew_order *o = (crew_order *)&o; /* a sentinel: must stay untouched on failure */
    assert_int_equal(crew_order_create(NULL, NULL), CREW_EINVAL);
    assert_int_equal(crew_order_create(&o, &(crew_order_opts){.window = ((size_t)1 << 30) + 1}),
                     CREW_EINVAL);
    assert_ptr_equal(o, (crew_order *)&o);
    crew_order_destroy(NULL); /* ignored */
    /* NULL options and a zero window take the default window. */
    assert_int_equal(crew_order_create(&o, NULL), 0);
    assert_int_equal(info_of(o).window, 64);
    crew_order_destroy(o);
}

static void test_create_nomem(void **state)
{
    (void)state;
    crew_order *o = NULL;
    /* The first allocation is the order, the second its ring. */
    for (long k = 1; k <= 2; k++) {
        crew__test_fail_after(k);
        assert_int_equal(crew_order_create(&o, NULL), CREW_ENOMEM);
        crew__test_fail_after(0);
        assert_null(o);
    }
    uint64_t before = crew__test_alloc_count();
    o = make(4);
    assert_int_equal(crew__test_alloc_count() - before, 2);
    /* Nothing allocates after creation. */
    before = crew__test_alloc_count();
    for (uint64_t s = 0; s < 100; s++) {
        assert_int_equal(crew_order_put(o, s, NULL, 0, CREW_NOW, NULL), 0);
        expect_next(o, s, NULL, 0);
    }
    assert_int_equal(crew__test_alloc_count(), before);
    crew_order_destroy(o);
}

static void test_reorders(void **state)
{
    (void)state;
    crew_order *o = make(4);
    int a, b, c, d;
    crew_order_result r;
    assert_int_equal(crew_order_next(o, &r, CREW_NOW, NULL), CREW_EAGAIN);
    assert_int_equal(crew_order_put(o, 2, &c, 0, CREW_NOW, NULL), 0);
    assert_int_equal(crew_order_put(o, 1, &b, -EIO, CREW_NOW, NULL), 0);
    /* 0 is missing: nothing can be taken yet. */
    assert_int_equal(crew_order_next(o, &r, CREW_NOW, NULL), CREW_EAGAIN);
    assert_int_equal(info_of(o).buffered, 2);
    assert_int_equal(crew_order_put(o, 0, &a, 0, CREW_NOW, NULL), 0);
    assert_int_equal(crew_order_put(o, 3, &d, 0, CREW_NOW, NULL), 0);
    expect_next(o, 0, &a, 0);
    expect_next(o, 1, &b, -EIO); /* the code travels with its result */
    expect_next(o, 2, &c, 0);
    expect_next(o, 3, &d, 0);
    crew_order_info i = info_of(o);
    assert_int_equal(i.next, 4);
    assert_int_equal(i.buffered, 0);
    assert_int_equal(i.peak, 4);
    assert_int_equal(i.put_waits, 0);
    crew_order_destroy(o);
}

static void test_invalid_calls(void **state)
{
    (void)state;
    crew_order *o = make(4);
    int x;
    assert_int_equal(crew_order_put(o, 0, &x, 0, CREW_NOW, NULL), 0);
    assert_int_equal(crew_order_put(o, 0, &x, 0, CREW_NOW, NULL), CREW_EINVAL); /* twice */
    expect_next(o, 0, &x, 0);
    assert_int_equal(crew_order_put(o, 0, &x, 0, CREW_NOW, NULL), CREW_EINVAL); /* emitted */
    assert_int_equal(crew_order_next(o, NULL, CREW_NOW, NULL), CREW_EINVAL);
    assert_int_equal(crew_order_reserve(o, NULL, CREW_NOW, NULL), CREW_EINVAL);
    /* A seq far beyond the window is refused as a try, without overflow trouble. */
    assert_int_equal(crew_order_put(o, UINT64_MAX, &x, 0, CREW_NOW, NULL), CREW_EAGAIN);
    crew_order_destroy(o);
}

static void test_put_window(void **state)
{
    (void)state;
    crew_order *o = make(2);
    int x;
    /* seq 2 is a full window ahead of 0: a try, a past deadline, a timed wait. */
    assert_int_equal(crew_order_put(o, 2, &x, 0, CREW_NOW, NULL), CREW_EAGAIN);
    assert_int_equal(crew_order_put(o, 2, &x, 0, crew_now() - CREW_MSEC, NULL), CREW_EAGAIN);
    assert_int_equal(crew_order_put(o, 2, &x, 0, crew_deadline_in(2 * CREW_MSEC), NULL),
                     CREW_ETIMEDOUT);
    assert_int_equal(info_of(o).buffered, 0);

    /* A blocked put goes in once the consumer has taken seq 0. */
    op p;
    op_start(&p, o, OP_PUT, 3, NULL);
    eventually(info_of(o).put_waits == 2); /* the timed put, and this one; not the tries */
    assert_int_equal(crew_order_put(o, 0, &x, 0, CREW_NOW, NULL), 0);
    assert_int_equal(crew_order_put(o, 1, &x, 0, CREW_NOW, NULL), 0);
    expect_next(o, 0, &x, 0);
    assert_false(atomic_load(&p.done)); /* seq 3 is still a window ahead of 1 */
    expect_next(o, 1, &x, 0);
    assert_int_equal(op_join(&p), 0);
    assert_int_equal(crew_order_put(o, 2, &x, 0, CREW_NOW, NULL), 0);
    expect_next(o, 2, &x, 0);
    expect_next(o, 3, (void *)(uintptr_t)1003, 0);
    assert_true(info_of(o).peak <= 2);
    crew_order_destroy(o);
}

static void test_next_blocks(void **state)
{
    (void)state;
    crew_order *o = make(4);
    crew_order_result r;
    assert_int_equal(crew_order_next(o, &r, crew_deadline_in(2 * CREW_MSEC), NULL), CREW_ETIMEDOUT);
    op c;
    op_start(&c, o, OP_NEXT, 0, NULL);
    int x;
    /* Out of order: the consumer stays blocked until seq 0 arrives. */
    assert_int_equal(crew_order_put(o, 1, &x, 0, CREW_NOW, NULL), 0);
    assert_false(atomic_load(&c.done));
    assert_int_equal(crew_order_put(o, 0, NULL, -EIO, CREW_NOW, NULL), 0);
    assert_int_equal(op_join(&c), 0);
    assert_int_equal(c.res.seq, 0);
    assert_null(c.res.item);
    assert_int_equal(c.res.err, -EIO);
    expect_next(o, 1, &x, 0);
    crew_order_destroy(o);
}

static void test_reserve(void **state)
{
    (void)state;
    crew_order *o = make(2);
    uint64_t s = 99;
    assert_int_equal(crew_order_reserve(o, &s, CREW_NOW, NULL), 0);
    assert_int_equal(s, 0);
    assert_int_equal(crew_order_reserve(o, &s, CREW_NOW, NULL), 0);
    assert_int_equal(s, 1);
    /* Two seqs outstanding: the window is full. */
    assert_int_equal(crew_order_reserve(o, &s, CREW_NOW, NULL), CREW_EAGAIN);
    assert_int_equal(crew_order_reserve(o, &s, crew_deadline_in(2 * CREW_MSEC), NULL),
                     CREW_ETIMEDOUT);
    assert_int_equal(s, 1);

    /* Two waiters, served in arrival order. */
    op w1, w2;
    op_start(&w1, o, OP_RESERVE, 0, NULL);
    eventually(info_of(o).reserve_waits == 2); /* the timed one, and w1 */
    op_start(&w2, o, OP_RESERVE, 0, NULL);
    eventually(info_of(o).reserve_waits == 3);
    /* A reserved seq's put never waits, even out of order. */
    int x;
    assert_int_equal(crew_order_put(o, 1, &x, 0, CREW_NOW, NULL), 0);
    assert_int_equal(crew_order_put(o, 0, &x, 0, CREW_NOW, NULL), 0);
    /* A newcomer does not pass the queued reserves. */
    assert_int_equal(crew_order_reserve(o, &s, CREW_NOW, NULL), CREW_EAGAIN);
    expect_next(o, 0, &x, 0);
    assert_int_equal(op_join(&w1), 0);
    assert_int_equal(w1.seq, 2);
    assert_false(atomic_load(&w2.done));
    expect_next(o, 1, &x, 0);
    assert_int_equal(op_join(&w2), 0);
    assert_int_equal(w2.seq, 3);
    crew_order_info i = info_of(o);
    assert_int_equal(i.reserved, 4);
    assert_int_equal(i.put_waits, 0);
    assert_int_equal(crew_order_put(o, 2, &x, 0, CREW_NOW, NULL), 0);
    assert_int_equal(crew_order_put(o, 3, &x, 0, CREW_NOW, NULL), 0);
    crew_order_destroy(o); /* their items are not ours: no discard callback */
}

static void test_close_holes(void **state)
{
    (void)state;
    crew_order *o = make(8);
    int a, d;
    uint64_t s;
    for (int k = 0; k < 6; k++) /* seqs 0..5 handed out */
        assert_int_equal(crew_order_reserve(o, &s, CREW_NOW, NULL), 0);
    assert_int_equal(crew_order_put(o, 0, &a, 0, CREW_NOW, NULL), 0);
    assert_int_equal(crew_order_put(o, 1, NULL, -EIO, CREW_NOW, NULL), 0); /* skipped */
    assert_int_equal(crew_order_put(o, 3, &d, 0, CREW_NOW, NULL), 0);
    assert_int_equal(crew_order_close(o), 0);
    assert_int_equal(crew_order_close(o), CREW_EPIPE);
    assert_int_equal(crew_order_put(o, 2, &a, 0, CREW_NOW, NULL), CREW_EPIPE);
    assert_int_equal(crew_order_reserve(o, &s, CREW_FOREVER, NULL), CREW_EPIPE);
    expect_next(o, 0, &a, 0);
    expect_next(o, 1, NULL, -EIO);
    expect_next(o, 2, NULL, CREW_EPIPE); /* never put: a hole */
    expect_next(o, 3, &d, 0);
    expect_next(o, 4, NULL, CREW_EPIPE); /* reserved, never put */
    expect_next(o, 5, NULL, CREW_EPIPE);
    crew_order_result r;
    assert_int_equal(crew_order_next(o, &r, CREW_FOREVER, NULL), CREW_EPIPE);
    crew_order_destroy(o);
}

static void test_close_wakes_waiters(void **state)
{
    (void)state;
    crew_order *o = make(1);
    uint64_t s;
    assert_int_equal(crew_order_reserve(o, &s, CREW_NOW, NULL), 0);
    op put, res, nxt;
    op_start(&put, o, OP_PUT, 5, NULL);
    op_start(&res, o, OP_RESERVE, 0, NULL);
    op_start(&nxt, o, OP_NEXT, 0, NULL);
    eventually(info_of(o).put_waits == 1 && info_of(o).reserve_waits == 1);
    assert_int_equal(crew_order_close(o), 0);
    assert_int_equal(op_join(&put), CREW_EPIPE);
    assert_int_equal(op_join(&res), CREW_EPIPE);
    /* Asleep before the close or not, the consumer reports seq 0 (reserved, never put) as
     * a hole, then the end. */
    assert_int_equal(op_join(&nxt), 0);
    assert_int_equal(nxt.res.seq, 0);
    assert_int_equal(nxt.res.err, CREW_EPIPE);
    crew_order_result r;
    assert_int_equal(crew_order_next(o, &r, CREW_NOW, NULL), CREW_EPIPE);
    crew_order_destroy(o);
}

static void test_ctx(void **state)
{
    (void)state;
    crew_order *o = make(1);
    uint64_t s;
    crew_order_result r;
    int x;
    assert_int_equal(crew_order_reserve(o, &s, CREW_NOW, NULL), 0);
    /* Done before the call: refused at once, even where the call would succeed. */
    crew_ctx *dead;
    assert_int_equal(crew_ctx_with_cancel(NULL, &dead), 0);
    crew_ctx_cancel(dead, CREW_EBUSY);
    assert_int_equal(crew_order_put(o, 0, &x, 0, CREW_NOW, dead), CREW_ECANCELED);
    assert_int_equal(crew_order_reserve(o, &s, CREW_NOW, dead), CREW_ECANCELED);
    assert_int_equal(crew_order_next(o, &r, CREW_NOW, dead), CREW_ECANCELED);
    crew_ctx_release(dead);

    /* Cancelled while waiting: each of the three blocking calls. */
    crew_ctx *c;
    assert_int_equal(crew_ctx_with_cancel(NULL, &c), 0);
    op put, res, nxt;
    op_start(&put, o, OP_PUT, 7, c);
    op_start(&res, o, OP_RESERVE, 0, c);
    op_start(&nxt, o, OP_NEXT, 0, c);
    eventually(info_of(o).put_waits == 1 && info_of(o).reserve_waits == 1);
    crew_ctx_cancel(c, 0);
    assert_int_equal(op_join(&put), CREW_ECANCELED);
    assert_int_equal(op_join(&res), CREW_ECANCELED);
    assert_int_equal(op_join(&nxt), CREW_ECANCELED);
    crew_ctx_release(c);

    /* A ctx deadline ends a wait with CREW_ETIMEDOUT. */
    assert_int_equal(crew_ctx_with_timeout(NULL, 2 * CREW_MSEC, &c), 0);
    assert_int_equal(crew_order_next(o, &r, CREW_FOREVER, c), CREW_ETIMEDOUT);
    crew_ctx_release(c);
    assert_int_equal(crew_ctx_with_timeout(NULL, 2 * CREW_MSEC, &c), 0);
    assert_int_equal(crew_order_reserve(o, &s, CREW_FOREVER, c), CREW_ETIMEDOUT);
    crew_ctx_release(c);
    /* Nothing changed: the window still waits for seq 0. */
    assert_int_equal(info_of(o).reserved, 1);
    assert_int_equal(crew_order_put(o, 0, &x, 0, CREW_NOW, NULL), 0);
    expect_next(o, 0, &x, 0);
    crew_order_destroy(o);
}

static uint64_t discarded_seqs[8];
static void *discarded_items[8];
static int n_discarded;

static void record_discard(void *arg, uint64_t seq, void *item)
{
    assert_ptr_equal(arg, &n_discarded);
    discarded_seqs[n_discarded] = seq;
    discarded_items[n_discarded++] = item;
}

static void test_destroy_discards(void **state)
{
    (void)state;
    n_discarded = 0;
    crew_order *o = NULL;
    assert_int_equal(crew_order_create(&o, &(crew_order_opts){.window = 8,
                                                              .discard = record_discard,
                                                              .discard_arg = &n_discarded}),
                     0);
    int a, b, c;
    assert_int_equal(crew_order_put(o, 5, &c, 0, CREW_NOW, NULL), 0);
    assert_int_equal(crew_order_put(o, 0, &a, 0, CREW_NOW, NULL), 0);
    assert_int_equal(crew_order_put(o, 2, &b, 0, CREW_NOW, NULL), 0);
    expect_next(o, 0, &a, 0); /* taken: the caller's, not discarded */
    crew_order_destroy(o);
    assert_int_equal(n_discarded, 2);
    assert_int_equal(discarded_seqs[0], 2);
    assert_ptr_equal(discarded_items[0], &b);
    assert_int_equal(discarded_seqs[1], 5);
    assert_ptr_equal(discarded_items[1], &c);
}

/* Several consumers share one stream: each result goes to exactly one of them, and each
 * consumer sees increasing seqs. */
typedef struct consumer {
    crew_order *o;
    _Atomic int *seen;
    long violations;
    pthread_t tid;
} consumer;

static void *consume(void *arg)
{
    consumer *c = arg;
    crew_order_result r;
    int64_t last = -1;
    while (crew_order_next(c->o, &r, CREW_FOREVER, NULL) == 0) {
        if ((int64_t)r.seq <= last || r.item != (void *)(uintptr_t)(r.seq + 1))
            c->violations++;
        last = (int64_t)r.seq;
        atomic_fetch_add(&c->seen[r.seq], 1);
    }
    return NULL;
}

static void test_many_consumers(void **state)
{
    (void)state;
    enum { N = 4096, C = 3 }; /* N a multiple of 16 */
    crew_order *o = make(16);
    _Atomic int *seen = calloc(N, sizeof *seen);
    assert_non_null(seen);
    consumer cs[C];
    for (int i = 0; i < C; i++) {
        cs[i] = (consumer){o, seen, 0, 0};
        assert_int_equal(pthread_create(&cs[i].tid, NULL, consume, &cs[i]), 0);
    }
    /* Puts in reverse order inside each block of 16: always a full window of disorder. */
    for (uint64_t base = 0; base < N; base += 16)
        for (uint64_t k = 16; k-- > 0;)
            assert_int_equal(crew_order_put(o, base + k, (void *)(uintptr_t)(base + k + 1), 0,
                                            CREW_FOREVER, NULL),
                             0);
    assert_int_equal(crew_order_close(o), 0);
    for (int i = 0; i < C; i++) {
        assert_int_equal(pthread_join(cs[i].tid, NULL), 0);
        assert_int_equal(cs[i].violations, 0);
    }
    for (int s = 0; s < N; s++)
        assert_int_equal(atomic_load(&seen[s]), 1);
    assert_true(info_of(o).peak <= 16);
    free(seen);
    crew_order_destroy(o);
}

/* ---- the window against a pool's workers ---------------------------------------------- */

typedef struct seq_job {
    crew_order *o;
    crew_ctx *gate; /* seq 0 waits here */
    uint64_t seq;
    int put_rc;
} seq_job;

/* A job that computes seq's result and puts it, waiting for the window if it must. */
static int put_job(crew_ctx *ctx, void *arg)
{
    seq_job *j = arg;
    if (j->seq == 0)
        (void)gate_pass(j->gate, ctx);
    j->put_rc = crew_order_put(j->o, j->seq, j, 0, CREW_FOREVER, ctx);
    return j->put_rc;
}

/* Seqs handed to jobs in increasing order, jobs started in that order: with seq 0 stuck,
 * the other workers fill the window and wait in put, the job holding seq 0 keeps running,
 * and once it finishes everything drains. Memory stays within the window throughout. */
static void window_vs_workers(unsigned workers, size_t window)
{
    enum { N = 64 };
    crew_pool *p;
    assert_int_equal(crew_pool_create(&p, &(crew_pool_opts){.workers = workers, .queue_cap = N}),
                     0);
    crew_order *o = make(window);
    crew_ctx *gate = gate_new();
    seq_job jobs[N];
    for (uint64_t s = 0; s < N; s++) {
        jobs[s] = (seq_job){o, gate, s, 1};
        assert_int_equal(crew_pool_submit(p, put_job, &jobs[s], CREW_FOREVER, NULL), 0);
    }
    /* The workers other than seq 0's fill the window behind it, and then wait in put.
     * (How many of them wait depends on how many the pool has woken for the queue.) */
    eventually(info_of(o).buffered == window - 1 && info_of(o).put_waits >= 1);
    assert_true(info_of(o).put_waits <= workers - 1);
    crew_order_result r;
    assert_int_equal(crew_order_next(o, &r, CREW_NOW, NULL), CREW_EAGAIN);
    crew_ctx_cancel(gate, 0);
    for (uint64_t s = 0; s < N; s++) {
        assert_int_equal(crew_order_next(o, &r, CREW_FOREVER, NULL), 0);
        assert_int_equal(r.seq, s);
        assert_ptr_equal(r.item, &jobs[s]);
    }
    assert_int_equal(crew_pool_drain(p, CREW_FOREVER), 0);
    for (uint64_t s = 0; s < N; s++)
        assert_int_equal(jobs[s].put_rc, 0);
    assert_true(info_of(o).peak <= window);
    crew_pool_destroy(p);
    crew_order_destroy(o);
    crew_ctx_release(gate);
}

static void test_window_equals_workers(void **state)
{
    (void)state;
    window_vs_workers(4, 4);
}

static void test_window_below_workers(void **state)
{
    (void)state;
    /* Still live (the job holding seq 0 started first), only less parallel. */
    window_vs_workers(4, 2);
}

/* The reserve form: the submitter takes a seq before submitting, so workers never wait in
 * put; with seq 0 stuck, the submitter is the one that waits, holding nothing. */
typedef struct reserver {
    crew_pool *p;
    crew_order *o;
    seq_job *jobs;
    uint64_t n;
    int rc;
    pthread_t tid;
} reserver;

static int put_now_job(crew_ctx *ctx, void *arg)
{
    seq_job *j = arg;
    if (j->seq == 0)
        (void)gate_pass(j->gate, ctx);
    j->put_rc = crew_order_put(j->o, j->seq, j, 0, CREW_NOW, NULL); /* never needs to wait */
    return j->put_rc;
}

static void *reserve_and_submit(void *arg)
{
    reserver *r = arg;
    for (uint64_t k = 0; k < r->n && r->rc == 0; k++) {
        uint64_t seq;
        if ((r->rc = crew_order_reserve(r->o, &seq, CREW_FOREVER, NULL)))
            break;
        r->jobs[seq].seq = seq;
        r->rc = crew_pool_submit(r->p, put_now_job, &r->jobs[seq], CREW_FOREVER, NULL);
    }
    return NULL;
}

static void test_reserve_keeps_workers_free(void **state)
{
    (void)state;
    enum { N = 64 };
    crew_pool *p;
    assert_int_equal(crew_pool_create(&p, &(crew_pool_opts){.workers = 3, .queue_cap = 2}), 0);
    crew_order *o = make(3);
    crew_ctx *gate = gate_new();
    seq_job jobs[N];
    for (int s = 0; s < N; s++)
        jobs[s] = (seq_job){o, gate, 0, 1};
    reserver r = {p, o, jobs, N, 0, 0};
    assert_int_equal(pthread_create(&r.tid, NULL, reserve_and_submit, &r), 0);
    /* The submitter waits for seq 3; only seq 0's job runs: no worker is stuck in put. */
    crew_stats ps;
    eventually(info_of(o).reserve_waits == 1 && info_of(o).buffered == 2 &&
               crew_pool_stats(p, &ps) == 0 && ps.running == 1);
    crew_ctx_cancel(gate, 0);
    crew_order_result res;
    for (uint64_t s = 0; s < N; s++) {
        assert_int_equal(crew_order_next(o, &res, CREW_FOREVER, NULL), 0);
        assert_int_equal(res.seq, s);
        assert_ptr_equal(res.item, &jobs[s]);
    }
    assert_int_equal(pthread_join(r.tid, NULL), 0);
    assert_int_equal(r.rc, 0);
    assert_int_equal(crew_pool_drain(p, CREW_FOREVER), 0);
    crew_order_info i = info_of(o);
    assert_int_equal(i.put_waits, 0);
    assert_true(i.peak <= 3);
    crew_pool_destroy(p);
    crew_order_destroy(o);
    crew_ctx_release(gate);
}

/* ---- crew_order_map -------------------------------------------------------------------- */

typedef struct sq {
    long out[1000];
    _Atomic int runs[1000];
    _Atomic int outside; /* calls not on a worker of the pool */
    crew_ctx *gate;      /* when set, indices wait here */
    _Atomic int inside;  /* calls waiting at the gate */
    crew_pool *pool;     /* for nested maps */
} sq;

static int square(crew_ctx *ctx, size_t i, void *arg)
{
    sq *s = arg;
    atomic_fetch_add(&s->runs[i], 1);
    if (crew_pool_worker_id() < 0)
        atomic_fetch_add(&s->outside, 1);
    if (s->gate) {
        atomic_fetch_add(&s->inside, 1);
        int rc = gate_pass(s->gate, ctx);
        atomic_fetch_sub(&s->inside, 1);
        if (rc)
            return rc;
    }
    s->out[i] = (long)i * (long)i;
    return i % 7 == 3 ? -(int)(1000 + i) : 0;
}

static crew_pool *pool_of(unsigned workers, size_t queue_cap)
{
    crew_pool *p = NULL;
    assert_int_equal(
        crew_pool_create(&p, &(crew_pool_opts){.workers = workers, .queue_cap = queue_cap}), 0);
    return p;
}

static void test_map_slots(void **state)
{
    (void)state;
    crew_pool *p = pool_of(4, 16);
    static sq s;
    memset(&s, 0, sizeof s);
    static int errs[1000];
    /* The lowest failing index's error comes back; every slot has its own. */
    assert_int_equal(crew_order_map(p, square, &s, 1000, errs, CREW_FOREVER, NULL), -1003);
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(atomic_load(&s.runs[i]), 1);
        assert_int_equal(s.out[i], (long)i * i);
        assert_int_equal(errs[i], i % 7 == 3 ? -(1000 + i) : 0);
    }
    assert_int_equal(atomic_load(&s.outside), 0); /* all on the pool's workers */
    /* errs may be NULL; a range without failures returns 0. */
    memset(&s, 0, sizeof s);
    assert_int_equal(crew_order_map(p, square, &s, 3, NULL, CREW_FOREVER, NULL), 0);
    assert_int_equal(s.out[2], 4);
    assert_int_equal(crew_order_map(p, square, &s, 0, NULL, CREW_FOREVER, NULL), 0);
    crew_pool_destroy(p);
}

static void test_map_invalid(void **state)
{
    (void)state;
    crew_pool *p = pool_of(1, 1);
    int errs[2] = {7, 7};
    assert_int_equal(crew_order_map(NULL, square, NULL, 2, errs, CREW_FOREVER, NULL), CREW_EINVAL);
    assert_int_equal(crew_order_map(p, NULL, NULL, 2, errs, CREW_FOREVER, NULL), CREW_EINVAL);
    assert_int_equal(crew_order_map(p, square, NULL, SIZE_MAX / 2 + 1, errs, CREW_FOREVER, NULL),
                     CREW_EINVAL);
    assert_int_equal(errs[0], 7); /* nothing written */
    crew_pool_destroy(p);
}

static void test_map_nomem(void **state)
{
    (void)state;
    static sq s;
    int errs[4];
    /* Fail each allocation in turn (the run, its ctx, the pool's record for the first
     * helper job) on a fresh pool, until the map needs none of them. */
    int ok = 0;
    for (long k = 1; k < 10 && !ok; k++) {
        crew_pool *p = pool_of(2, 4);
        memset(&s, 0, sizeof s);
        crew__test_fail_after(k);
        int rc = crew_order_map(p, square, &s, 4, errs, CREW_FOREVER, NULL);
        crew__test_fail_after(0);
        if (rc == CREW_ENOMEM) {
            for (int i = 0; i < 4; i++) {
                assert_int_equal(errs[i], CREW_ENOMEM);
                assert_int_equal(atomic_load(&s.runs[i]), 0);
            }
        } else {
            /* A later allocation failed, if any: a further helper job was not accepted,
             * and the first one did the work. */
            assert_int_equal(rc, -1003);
            ok = 1;
        }
        crew_pool_destroy(p);
    }
    assert_true(ok);
}

static void test_map_shutdown(void **state)
{
    (void)state;
    crew_pool *p = pool_of(1, 1);
    assert_int_equal(crew_pool_close(p), 0);
    static sq s;
    memset(&s, 0, sizeof s);
    int errs[3];
    assert_int_equal(crew_order_map(p, square, &s, 3, errs, CREW_FOREVER, NULL), CREW_ESHUTDOWN);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(errs[i], CREW_ESHUTDOWN);
        assert_int_equal(atomic_load(&s.runs[i]), 0);
    }
    crew_pool_destroy(p);
}

typedef struct map_call {
    crew_pool *p;
    sq *s;
    size_t n;
    int *errs;
    int64_t deadline;
    crew_ctx *ctx;
    int rc;
    pthread_t tid;
} map_call;

static void *map_thread(void *arg)
{
    map_call *m = arg;
    m->rc = crew_order_map(m->p, square, m->s, m->n, m->errs, m->deadline, m->ctx);
    return NULL;
}

/* Cancelling the caller's ctx (or the pool's) stops the map: running indices see the
 * cancel through their ctx, the others never run and get the ctx's error. */
static void map_cancelled(bool pool_cancel)
{
    crew_pool *p = pool_of(2, 4);
    static sq s;
    memset(&s, 0, sizeof s);
    s.gate = gate_new();
    static int errs[100];
    crew_ctx *c;
    assert_int_equal(crew_ctx_with_cancel(NULL, &c), 0);
    map_call m = {p, &s, 100, errs, CREW_FOREVER, c, 1, 0};
    assert_int_equal(pthread_create(&m.tid, NULL, map_thread, &m), 0);
    eventually(atomic_load(&s.inside) == 2); /* both workers hold an index */
    if (pool_cancel)
        assert_int_equal(crew_pool_cancel(p, 0), 0);
    else
        crew_ctx_cancel(c, 0);
    assert_int_equal(pthread_join(m.tid, NULL), 0);
    assert_int_equal(m.rc, CREW_ECANCELED);
    int ran = 0;
    for (int i = 0; i < 100; i++) {
        assert_int_equal(errs[i], CREW_ECANCELED);
        ran += atomic_load(&s.runs[i]);
    }
    assert_int_equal(ran, 2);
    crew_ctx_release(c);
    crew_ctx_release(s.gate);
    crew_pool_destroy(p);
}

static void test_map_ctx_cancel(void **state)
{
    (void)state;
    map_cancelled(false);
}

static void test_map_pool_cancel(void **state)
{
    (void)state;
    map_cancelled(true);
}

static void test_map_deadline(void **state)
{
    (void)state;
    crew_pool *p = pool_of(2, 4);
    static sq s;
    memset(&s, 0, sizeof s);
    crew_ctx *gate = gate_new();
    s.gate = gate;
    static int errs[10];
    assert_int_equal(crew_order_map(p, square, &s, 10, errs, crew_deadline_in(5 * CREW_MSEC), NULL),
                     CREW_ETIMEDOUT);
    for (int i = 0; i < 10; i++)
        assert_int_equal(errs[i], CREW_ETIMEDOUT);
    /* A deadline already past runs nothing. */
    memset(&s, 0, sizeof s);
    assert_int_equal(crew_order_map(p, square, &s, 10, errs, CREW_NOW, NULL), CREW_ETIMEDOUT);
    for (int i = 0; i < 10; i++)
        assert_int_equal(atomic_load(&s.runs[i]), 0);
    crew_ctx_release(gate);
    crew_pool_destroy(p);
}

/* The pool is busy with other work: the helper job waits in the queue. A cancel of the
 * caller's ctx still returns at once: the caller never waits for a helper that has not
 * started, and that helper, when it finally runs, finds nothing to do. */
static void test_map_busy_pool_cancel(void **state)
{
    (void)state;
    crew_pool *p = pool_of(1, 4);
    static sq blocker;
    memset(&blocker, 0, sizeof blocker);
    blocker.gate = gate_new();
    map_call b = {p, &blocker, 1, NULL, CREW_FOREVER, NULL, 1, 0};
    assert_int_equal(pthread_create(&b.tid, NULL, map_thread, &b), 0);
    eventually(atomic_load(&blocker.inside) == 1); /* the only worker is taken */

    static sq s;
    memset(&s, 0, sizeof s);
    crew_ctx *c;
    assert_int_equal(crew_ctx_with_cancel(NULL, &c), 0);
    int errs[5];
    map_call m = {p, &s, 5, errs, CREW_FOREVER, c, 1, 0};
    assert_int_equal(pthread_create(&m.tid, NULL, map_thread, &m), 0);
    crew_stats ps;
    eventually(crew_pool_stats(p, &ps) == 0 && ps.queued == 1);
    crew_ctx_cancel(c, 0);
    assert_int_equal(pthread_join(m.tid, NULL), 0);
    assert_int_equal(m.rc, CREW_ECANCELED);
    for (int i = 0; i < 5; i++)
        assert_int_equal(errs[i], CREW_ECANCELED);

    crew_ctx_cancel(blocker.gate, 0);
    assert_int_equal(pthread_join(b.tid, NULL), 0);
    assert_int_equal(b.rc, 0);
    assert_int_equal(crew_pool_drain(p, CREW_FOREVER), 0);
    for (int i = 0; i < 5; i++)
        assert_int_equal(atomic_load(&s.runs[i]), 0);
    crew_ctx_release(c);
    crew_ctx_release(blocker.gate);
    crew_pool_destroy(p);
}

/* The pool drops a queued helper (its queue budget ran out) while it was the only one that
 * could claim: its drop reason records the indices, and the caller returns. */
static void test_map_helper_dropped(void **state)
{
    (void)state;
    crew_pool *p = NULL;
    assert_int_equal(
        crew_pool_create(
            &p, &(crew_pool_opts){.workers = 1, .queue_cap = 4, .queue_timeout = CREW_MSEC}),
        0);
    static sq s;
    memset(&s, 0, sizeof s);
    crew_ctx *gate = gate_new();
    /* The worker is taken by a job with no queue budget of its own. */
    crew_future *f;
    assert_int_equal(
        crew_pool_submit_job(p, &(crew_job){.fn = gate_job, .arg = gate, .queue_timeout = -1}, &f,
                             CREW_FOREVER, NULL),
        0);
    crew_stats ps;
    eventually(crew_pool_stats(p, &ps) == 0 && ps.running == 1);
    int errs[3];
    map_call m = {p, &s, 3, errs, CREW_FOREVER, NULL, 1, 0};
    assert_int_equal(pthread_create(&m.tid, NULL, map_thread, &m), 0);
    eventually(crew_pool_stats(p, &ps) == 0 && ps.queued == 1);
    int64_t t0 = crew_now();
    while (crew_now() - t0 < 3 * CREW_MSEC) /* let the queued helper go stale */
        sched_yield();
    crew_ctx_cancel(gate, 0);
    assert_int_equal(pthread_join(m.tid, NULL), 0);
    assert_int_equal(m.rc, CREW_ETIMEDOUT);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(errs[i], CREW_ETIMEDOUT);
        assert_int_equal(atomic_load(&s.runs[i]), 0);
    }
    assert_int_equal(crew_future_wait(f, CREW_FOREVER, NULL), 0);
    crew_future_release(f);
    crew_ctx_release(gate);
    crew_pool_destroy(p);
}

/* Maps from inside jobs, on the same pool, with every worker in one: the callers run
 * indices themselves, so nothing waits for a worker that cannot come. Nested maps too. */
typedef struct nest {
    crew_pool *p;
    _Atomic long leaves;
    int depth;
} nest;

static int nested(crew_ctx *ctx, size_t i, void *arg)
{
    (void)i;
    nest *n = arg;
    if (crew_pool_worker_id() < 0)
        return -EPERM; /* never on the caller's thread when the caller is outside */
    if (ctx && crew_ctx_done(ctx))
        return crew_ctx_err(ctx);
    atomic_fetch_add(&n->leaves, 1);
    return 0;
}

static int outer(crew_ctx *ctx, size_t i, void *arg)
{
    (void)i;
    nest *n = arg;
    return crew_order_map(n->p, nested, n, 50, NULL, CREW_FOREVER, ctx);
}

static int map_job(crew_ctx *ctx, void *arg)
{
    nest *n = arg;
    return crew_order_map(n->p, outer, n, 8, NULL, CREW_FOREVER, ctx);
}

static void test_map_from_jobs(void **state)
{
    (void)state;
    crew_pool *p = pool_of(2, 8);
    nest n = {p, 0, 0};
    crew_future *f[4];
    for (int k = 0; k < 4; k++)
        assert_int_equal(crew_pool_submit_job(p, &(crew_job){.fn = map_job, .arg = &n}, &f[k],
                                              CREW_FOREVER, NULL),
                         0);
    for (int k = 0; k < 4; k++) {
        assert_int_equal(crew_future_wait(f[k], CREW_FOREVER, NULL), 0);
        assert_int_equal(crew_future_err(f[k]), 0);
        crew_future_release(f[k]);
    }
    assert_int_equal(atomic_load(&n.leaves), 4 * 8 * 50);
    /* And from outside, the same nest: indices never run on the caller's thread. */
    assert_int_equal(crew_order_map(p, outer, &n, 8, NULL, CREW_FOREVER, NULL), 0);
    assert_int_equal(atomic_load(&n.leaves), 5 * 8 * 50);
    crew_pool_destroy(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        leak_test(test_create_invalid),
        leak_test(test_create_nomem),
        leak_test(test_reorders),
        leak_test(test_invalid_calls),
        leak_test(test_put_window),
        leak_test(test_next_blocks),
        leak_test(test_reserve),
        leak_test(test_close_holes),
        leak_test(test_close_wakes_waiters),
        leak_test(test_ctx),
        leak_test(test_destroy_discards),
        leak_test(test_many_consumers),
        leak_test(test_window_equals_workers),
        leak_test(test_window_below_workers),
        leak_test(test_reserve_keeps_workers_free),
        leak_test(test_map_slots),
        leak_test(test_map_invalid),
        leak_test(test_map_nomem),
        leak_test(test_map_shutdown),
        leak_test(test_map_ctx_cancel),
        leak_test(test_map_pool_cancel),
        leak_test(test_map_deadline),
        leak_test(test_map_busy_pool_cancel),
        leak_test(test_map_helper_dropped),
        leak_test(test_map_from_jobs),
    };
    return cmocka_run_group_tests_name("order", tests, NULL, NULL);
}
