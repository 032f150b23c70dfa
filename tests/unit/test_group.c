/* Tests for src/group.c: error groups on the caller's pool or their own, fail-fast and
 * all-errors, the limit (go, try_go, set_limit), wait forms, helping inside jobs of the same
 * pool, pool shutdowns, allocation failures. */
#include "group_internal.h"
#include "internal.h"
#include "testutil.h"

#include <string.h>

/* ---- helpers --------------------------------------------------------------------------- */

/* A latch tasks block on until the test opens it; a task also leaves when its ctx is
 * cancelled, with the ctx's error. */
typedef struct latch {
    _Atomic bool open;
    _Atomic int waiting; /* tasks inside latch_task now */
    _Atomic int peak;    /* the most that were inside at once */
} latch;

static int latch_task(crew_ctx *ctx, void *arg)
{
    latch *l = arg;
    int in = atomic_fetch_add(&l->waiting, 1) + 1;
    int peak = atomic_load(&l->peak);
    while (in > peak && !atomic_compare_exchange_weak(&l->peak, &peak, in))
        ;
    int rc = 0;
    while (!atomic_load(&l->open)) {
        if (crew_ctx_done(ctx)) {
            rc = crew_ctx_err(ctx);
            break;
        }
        (void)crew_ctx_wait(ctx, crew_deadline_in(CREW_MSEC)); /* polling the latch */
    }
    atomic_fetch_sub(&l->waiting, 1);
    return rc;
}

static _Atomic int ran_count;
static _Atomic int discard_count;
static _Atomic int discard_reason;

static void reset(void)
{
    atomic_store(&ran_count, 0);
    atomic_store(&discard_count, 0);
    atomic_store(&discard_reason, 0);
}

/* Counts its runs; returns what arg says (an int smuggled in the pointer). */
static int count_task(crew_ctx *ctx, void *arg)
{
    (void)ctx;
    atomic_fetch_add(&ran_count, 1);
    return (int)(intptr_t)arg;
}

static void count_discard(crew_job_fn fn, void *arg, int reason)
{
    (void)arg;
    assert_true(fn == count_task || fn == latch_task);
    atomic_fetch_add(&discard_count, 1);
    atomic_store(&discard_reason, reason);
}

static crew_group *group(const crew_group_opts *o)
{
    crew_group *g = NULL;
    assert_int_equal(crew_group_create(&g, o), 0);
    assert_non_null(g);
    return g;
}

static crew_pool *pool(unsigned workers, size_t cap)
{
    crew_pool *p = NULL;
    assert_int_equal(crew_pool_create(&p, &(crew_pool_opts){.workers = workers, .queue_cap = cap}),
                     0);
    return p;
}

/* A blocking call run on a helper thread. */
typedef struct call {
    crew_group *g;
    bool is_wait;     /* crew_group_wait, else crew_group_go(count_task) */
    int64_t deadline; /* passed through */
    crew_ctx *ctx;    /* passed through */
    int rc;
    _Atomic bool done;
    pthread_t tid;
} call;

static void *call_main(void *arg)
{
    call *c = arg;
    c->rc = c->is_wait ? crew_group_wait(c->g, c->deadline, c->ctx)
                       : crew_group_go(c->g, count_task, NULL, c->deadline, c->ctx);
    atomic_store(&c->done, true);
    return NULL;
}

static void call_start(call *c, crew_group *g, bool is_wait, int64_t deadline, crew_ctx *ctx)
{
    *c = (call){.g = g, .is_wait = is_wait, .deadline = deadline, .ctx = ctx, .rc = 1};
    assert_int_equal(pthread_create(&c->tid, NULL, call_main, c), 0);
}

static int call_join(call *c)
{
    assert_int_equal(pthread_join(c->tid, NULL), 0);
    return c->rc;
}

/* ---- create and destroy ---------------------------------------------------------------- */

static void test_create_invalid(void **state)
{
    (void)state;
    assert_int_equal(crew_group_create(NULL, NULL), CREW_EINVAL);
    crew_pool *p;
    assert_int_equal(crew_pool_create(&p, &(crew_pool_opts){.workers = 1, .results = true}), 0);
    crew_group *g = (crew_group *)&g; /* must stay untouched on failure */
    assert_int_equal(crew_group_create(&g, &(crew_group_opts){.pool = p}), CREW_EINVAL);
    assert_ptr_equal(g, (crew_group *)&g);
    crew_pool_destroy(p);
    crew_group_destroy(NULL); /* ignored */
    assert_int_equal(crew_group_set_limit(NULL, 1), CREW_EINVAL);
    assert_int_equal(crew_group_wait(NULL, CREW_NOW, NULL), CREW_EINVAL);
}

static void test_create_nomem(void **state)
{
    (void)state;
    crew_pool *p = pool(1, 4);
    for (int own = 0; own < 2; own++) {
        int failures = 0;
        for (long n = 1; n < 100; n++) {
            crew_group *g = NULL;
            crew__test_fail_after(n);
            int rc = crew_group_create(&g, &(crew_group_opts){.pool = own ? NULL : p, .limit = 2});
            crew__test_fail_after(0);
            if (rc == 0) {
                assert_int_equal(crew_group_go(g, count_task, NULL, CREW_FOREVER, NULL), 0);
                assert_int_equal(crew_group_wait(g, CREW_FOREVER, NULL), 0);
                crew_group_destroy(g);
                break;
            }
            assert_true(rc == CREW_ENOMEM || rc == CREW_EAGAIN);
            assert_null(g);
            failures++;
        }
        /* The group and its ctx; with its own pool, the pool's allocations and threads. */
        assert_true(failures >= (own ? 5 : 2));
    }
    crew_pool_destroy(p);
}

/* ---- running tasks --------------------------------------------------------------------- */

typedef struct seen {
    crew_group *g;
    _Atomic int right_ctx, wrong_ctx;
} seen;

static int ctx_task(crew_ctx *ctx, void *arg)
{
    seen *s = arg;
    atomic_fetch_add(ctx == crew_group_ctx(s->g) ? &s->right_ctx : &s->wrong_ctx, 1);
    return 0;
}

static void test_go_wait_own_pool(void **state)
{
    (void)state;
    reset();
    seen s = {0};
    s.g = group(NULL);
    assert_int_equal(crew_group_active(s.g), 0);
    assert_int_equal(crew_group_wait(s.g, CREW_NOW, NULL), 0); /* nothing to wait for */
    for (int i = 0; i < 2000; i++)
        assert_int_equal(crew_group_go(s.g, ctx_task, &s, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_group_wait(s.g, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_group_active(s.g), 0);
    assert_int_equal(atomic_load(&s.right_ctx), 2000);
    assert_int_equal(atomic_load(&s.wrong_ctx), 0);
    assert_int_equal(crew_group_err(s.g), 0);
    assert_int_equal(crew_group_errors(s.g, NULL, 0), 0);
    assert_false(crew_ctx_done(crew_group_ctx(s.g)));
    /* The group stays usable after a wait. */
    assert_int_equal(crew_group_try_go(s.g, ctx_task, &s), 0);
    assert_int_equal(crew_group_wait(s.g, CREW_FOREVER, NULL), 0);
    assert_int_equal(atomic_load(&s.right_ctx), 2001);
    crew_group_destroy(s.g);
}

static void test_go_invalid_and_done_ctx(void **state)
{
    (void)state;
    reset();
    crew_group *g = group(&(crew_group_opts){.limit = 1});
    assert_int_equal(crew_group_go(NULL, count_task, NULL, CREW_FOREVER, NULL), CREW_EINVAL);
    assert_int_equal(crew_group_go(g, NULL, NULL, CREW_FOREVER, NULL), CREW_EINVAL);
    crew_ctx *c;
    assert_int_equal(crew_ctx_with_cancel(NULL, &c), 0);
    crew_ctx_cancel(c, 0);
    assert_int_equal(crew_group_go(g, count_task, NULL, CREW_FOREVER, c), CREW_ECANCELED);
    crew_ctx_release(c);
    assert_int_equal(crew_ctx_with_deadline(NULL, 1, &c), 0); /* a deadline long past */
    assert_int_equal(crew_group_go(g, count_task, NULL, CREW_FOREVER, c), CREW_ETIMEDOUT);
    crew_ctx_release(c);
    assert_int_equal(crew_group_wait(g, CREW_FOREVER, NULL), 0);
    assert_int_equal(atomic_load(&ran_count), 0);
    crew_group_destroy(g);
}

/* ---- fail-fast ------------------------------------------------------------------------- */

static void test_fail_fast(void **state)
{
    (void)state;
    reset();
    crew_pool *p = pool(4, 64);
    crew_group *g = group(&(crew_group_opts){.pool = p, .discard = count_discard});
    latch l = {0};
    for (int i = 0; i < 3; i++)
        assert_int_equal(crew_group_go(g, latch_task, &l, CREW_FOREVER, NULL), 0);
    eventually(atomic_load(&l.waiting) == 3);
    assert_int_equal(crew_group_active(g), 3);
    assert_int_equal(crew_group_go(g, count_task, (void *)(intptr_t)CREW_EBUSY, CREW_FOREVER, NULL),
                     0);
    /* The failure cancels the group's ctx with its error: the latched tasks leave. */
    assert_int_equal(crew_group_wait(g, CREW_FOREVER, NULL), CREW_EBUSY);
    assert_int_equal(crew_group_err(g), CREW_EBUSY);
    assert_true(crew_ctx_done(crew_group_ctx(g)));
    assert_int_equal(crew_ctx_cause(crew_group_ctx(g)), CREW_EBUSY);
    assert_int_equal(atomic_load(&l.waiting), 0);
    crew_group_error e[4];
    memset(e, 0, sizeof e);
    assert_int_equal(crew_group_errors(g, e, 4), 1); /* only the error that failed the group */
    assert_int_equal(e[0].index, 3);
    assert_ptr_equal(e[0].fn, count_task);
    assert_ptr_equal(e[0].arg, (void *)(intptr_t)CREW_EBUSY);
    assert_int_equal(e[0].err, CREW_EBUSY);
    assert_true(e[0].ran);
    /* A failed group takes no more tasks (Go's errgroup would still start them). */
    assert_int_equal(crew_group_go(g, count_task, NULL, CREW_FOREVER, NULL), CREW_ECANCELED);
    assert_int_equal(crew_group_try_go(g, count_task, NULL), CREW_ECANCELED);
    assert_int_equal(atomic_load(&ran_count), 1);
    assert_int_equal(atomic_load(&discard_count), 0);
    crew_group_destroy(g);
    crew_pool_destroy(p);
}

/* Tasks still queued when the group fails are not run: the discard callback gets them. */
static void test_fail_fast_skips_queued(void **state)
{
    (void)state;
    reset();
    crew_pool *p = pool(1, 64);
    crew_group *g = group(&(crew_group_opts){.pool = p, .discard = count_discard});
    latch l = {0};
    assert_int_equal(crew_group_go(g, latch_task, &l, CREW_FOREVER, NULL), 0);
    eventually(atomic_load(&l.waiting) == 1); /* the only worker is held */
    assert_int_equal(crew_group_go(g, count_task, (void *)(intptr_t)-EIO, CREW_FOREVER, NULL), 0);
    for (int i = 0; i < 5; i++)
        assert_int_equal(crew_group_go(g, count_task, NULL, CREW_FOREVER, NULL), 0);
    atomic_store(&l.open, true);
    assert_int_equal(crew_group_wait(g, CREW_FOREVER, NULL), -EIO);
    assert_int_equal(atomic_load(&ran_count), 1); /* the failing one only */
    assert_int_equal(atomic_load(&discard_count), 5);
    assert_int_equal(atomic_load(&discard_reason), CREW_ECANCELED);
    crew_group_error e;
    assert_int_equal(crew_group_errors(g, &e, 1), 1);
    assert_int_equal(e.index, 1);
    assert_int_equal(e.err, -EIO);
    crew_group_destroy(g);
    crew_pool_destroy(p);
}

/* A go() blocked for a slot returns as soon as the group fails. */
static void test_blocked_go_ends_on_failure(void **state)
{
    (void)state;
    reset();
    crew_group *g = group(&(crew_group_opts){.limit = 1});
    latch l = {0};
    assert_int_equal(crew_group_go(g, latch_task, &l, CREW_FOREVER, NULL), 0);
    eventually(atomic_load(&l.waiting) == 1);
    call c;
    call_start(&c, g, false, CREW_FOREVER, NULL);
    eventually(crew__group_slot_waiters(g) > 0);
    crew_ctx_cancel(crew_group_ctx(g), CREW_EBUSY); /* as a failure would */
    assert_int_equal(call_join(&c), CREW_ECANCELED);
    assert_int_equal(crew_group_wait(g, CREW_FOREVER, NULL), CREW_ECANCELED); /* the latch's */
    assert_int_equal(atomic_load(&ran_count), 0);
    crew_group_destroy(g);
}

/* ---- all errors ------------------------------------------------------------------------ */

static void test_all_errors(void **state)
{
    (void)state;
    reset();
    crew_group *g = group(&(crew_group_opts){.all_errors = true, .limit = 3});
    enum { N = 300 };
    for (int i = 0; i < N; i++) {
        intptr_t err = i % 7 == 3 ? -(1000 + i) : 0;
        assert_int_equal(crew_group_go(g, count_task, (void *)err, CREW_FOREVER, NULL), 0);
    }
    assert_int_equal(crew_group_wait(g, CREW_FOREVER, NULL), -1003); /* the lowest index's */
    assert_false(crew_ctx_done(crew_group_ctx(g)));                  /* nothing cancelled */
    assert_int_equal(atomic_load(&ran_count), N);
    size_t want = 0;
    for (int i = 0; i < N; i++)
        want += i % 7 == 3;
    crew_group_error e[N];
    assert_int_equal(crew_group_errors(g, e, N), want);
    for (size_t k = 0; k < want; k++) {
        assert_int_equal(e[k].index, 3 + 7 * k);
        assert_int_equal(e[k].err, -(1000 + (int)e[k].index));
        assert_ptr_equal(e[k].arg, (void *)(intptr_t)e[k].err);
        assert_ptr_equal(e[k].fn, count_task);
        assert_true(e[k].ran);
    }
    /* A short buffer gets the first ones; the count is still the total. */
    crew_group_error two[2];
    assert_int_equal(crew_group_errors(g, two, 2), want);
    assert_int_equal(two[1].index, 10);
    /* Still accepting tasks; their numbers go on. */
    assert_int_equal(crew_group_go(g, count_task, (void *)(intptr_t)-1, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_group_wait(g, CREW_FOREVER, NULL), -1003);
    assert_int_equal(crew_group_errors(g, e, N), want + 1);
    assert_int_equal(e[want].index, N);
    crew_group_destroy(g);
}

/* ---- the limit ------------------------------------------------------------------------- */

static void test_limit(void **state)
{
    (void)state;
    reset();
    crew_pool *p = pool(4, 16);
    crew_group *g = group(&(crew_group_opts){.pool = p, .limit = 3});
    latch l = {0};
    for (int i = 0; i < 3; i++)
        assert_int_equal(crew_group_try_go(g, latch_task, &l), 0);
    eventually(atomic_load(&l.waiting) == 3);
    assert_int_equal(crew_group_active(g), 3);
    assert_int_equal(crew_group_try_go(g, count_task, NULL), CREW_EAGAIN);
    assert_int_equal(crew_group_go(g, count_task, NULL, CREW_NOW, NULL), CREW_EAGAIN);
    assert_int_equal(crew_group_go(g, count_task, NULL, crew_now() - 1, NULL), CREW_EAGAIN);
    /* A short deadline may pass before the call even looks (a busy machine): then it was a
     * try, CREW_EAGAIN; so retry with longer ones until the call really waits. */
    int rc;
    for (int64_t d = 2 * CREW_MSEC;
         (rc = crew_group_go(g, count_task, NULL, crew_deadline_in(d), NULL)) == CREW_EAGAIN;
         d *= 4)
        assert_true(d < 60 * CREW_SEC);
    assert_int_equal(rc, CREW_ETIMEDOUT);
    crew_ctx *c;
    assert_int_equal(crew_ctx_with_timeout(NULL, 2 * CREW_MSEC, &c), 0);
    assert_int_equal(crew_group_go(g, count_task, NULL, CREW_FOREVER, c), CREW_ETIMEDOUT);
    crew_ctx_release(c);
    /* A ctx cancelled from another thread ends a blocked go. */
    assert_int_equal(crew_ctx_with_cancel(NULL, &c), 0);
    call k;
    call_start(&k, g, false, CREW_FOREVER, c);
    eventually(crew__group_slot_waiters(g) > 0);
    crew_ctx_cancel(c, 0);
    assert_int_equal(call_join(&k), CREW_ECANCELED);
    crew_ctx_release(c);
    assert_int_equal(crew_group_active(g), 3);
    /* Raising the limit lets a blocked go through at once. */
    call_start(&k, g, false, CREW_FOREVER, NULL);
    eventually(crew__group_slot_waiters(g) > 0);
    assert_int_equal(crew_group_set_limit(g, 4), 0);
    assert_int_equal(call_join(&k), 0);
    eventually(atomic_load(&ran_count) == 1);
    /* A freed slot lets one through. */
    assert_int_equal(crew_group_set_limit(g, 3), 0);
    call_start(&k, g, false, CREW_FOREVER, NULL);
    eventually(crew__group_slot_waiters(g) > 0);
    atomic_store(&l.open, true);
    assert_int_equal(call_join(&k), 0);
    assert_int_equal(crew_group_wait(g, CREW_FOREVER, NULL), 0);
    assert_int_equal(atomic_load(&ran_count), 2);
    assert_int_equal(atomic_load(&l.peak), 3); /* never more latched tasks than the limit */
    assert_int_equal(crew_group_set_limit(g, 0), 0);
    crew_group_destroy(g);
    crew_pool_destroy(p);
}

/* The limit holds under load: never more than limit tasks inside at once. */
static void test_limit_holds(void **state)
{
    (void)state;
    crew_pool *p = pool(4, 256);
    crew_group *g = group(&(crew_group_opts){.pool = p, .limit = 2});
    latch l = {.open = true};
    for (int i = 0; i < 3000; i++)
        assert_int_equal(crew_group_go(g, latch_task, &l, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_group_wait(g, CREW_FOREVER, NULL), 0);
    assert_true(atomic_load(&l.peak) <= 2);
    crew_group_destroy(g);
    crew_pool_destroy(p);
}

/* ---- wait ------------------------------------------------------------------------------ */

static void test_wait_forms(void **state)
{
    (void)state;
    crew_group *g = group(NULL);
    latch l = {0};
    assert_int_equal(crew_group_go(g, latch_task, &l, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_group_wait(g, CREW_NOW, NULL), CREW_EAGAIN);
    assert_int_equal(crew_group_wait(g, crew_now() - 1, NULL), CREW_EAGAIN);
    int rc;
    for (int64_t d = 2 * CREW_MSEC;
         (rc = crew_group_wait(g, crew_deadline_in(d), NULL)) == CREW_EAGAIN; d *= 4)
        assert_true(d < 60 * CREW_SEC); /* the deadline passed before it looked: again */
    assert_int_equal(rc, CREW_ETIMEDOUT);
    crew_ctx *c;
    assert_int_equal(crew_ctx_with_timeout(NULL, 2 * CREW_MSEC, &c), 0);
    assert_int_equal(crew_group_wait(g, CREW_FOREVER, c), CREW_ETIMEDOUT);
    crew_ctx_release(c);
    assert_int_equal(crew_ctx_with_cancel(NULL, &c), 0);
    crew_ctx *gone;
    assert_int_equal(crew_ctx_with_cancel(NULL, &gone), 0);
    crew_ctx_cancel(gone, 0);
    assert_int_equal(crew_group_wait(g, CREW_FOREVER, gone), CREW_ECANCELED);
    crew_ctx_release(gone);
    call k;
    call_start(&k, g, true, CREW_FOREVER, c);
    eventually(crew__group_done_waiters(g) > 0);
    crew_ctx_cancel(c, 0);
    assert_int_equal(call_join(&k), CREW_ECANCELED);
    /* Several waiters are all released when the last task ends. */
    call w[3];
    for (int i = 0; i < 3; i++)
        call_start(&w[i], g, true, CREW_FOREVER, NULL);
    eventually(crew__group_done_waiters(g) == 3);
    assert_int_equal(crew_group_active(g), 1);
    atomic_store(&l.open, true);
    for (int i = 0; i < 3; i++)
        assert_int_equal(call_join(&w[i]), 0);
    /* Done: the result comes back even with a done ctx and no time. */
    assert_int_equal(crew_group_wait(g, CREW_NOW, c), 0);
    crew_ctx_release(c);
    crew_group_destroy(g);
}

static _Atomic int own_wait_rc;

static int wait_own_group(crew_ctx *ctx, void *arg)
{
    (void)ctx;
    atomic_store(&own_wait_rc, crew_group_wait(arg, CREW_FOREVER, NULL));
    return 0;
}

static void test_wait_from_own_task(void **state)
{
    (void)state;
    crew_group *g = group(NULL);
    assert_int_equal(crew_group_go(g, wait_own_group, g, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_group_wait(g, CREW_FOREVER, NULL), 0);
    assert_int_equal(atomic_load(&own_wait_rc), CREW_EDEADLK);
    crew_group_destroy(g);
}

/* ---- inside jobs of the same pool ------------------------------------------------------ */

/* A task that runs a group of its own on the same pool, `depth` levels deep, each level
 * `fan` tasks with the given limit. Counts the leaves. */
typedef struct nest {
    crew_pool *p;
    unsigned limit;
    int fan;
    _Atomic int leaves, failures;
} nest;

typedef struct level {
    nest *n;
    int depth;
} level;

static int nest_task(crew_ctx *ctx, void *arg)
{
    (void)ctx;
    level *lv = arg;
    nest *n = lv->n;
    if (lv->depth == 0) {
        atomic_fetch_add(&n->leaves, 1);
        return 0;
    }
    crew_group *g;
    if (crew_group_create(&g, &(crew_group_opts){.pool = n->p, .limit = n->limit}) != 0) {
        atomic_fetch_add(&n->failures, 1);
        return CREW_ENOMEM;
    }
    level child = {n, lv->depth - 1};
    for (int i = 0; i < n->fan; i++)
        if (crew_group_go(g, nest_task, &child, CREW_FOREVER, NULL) != 0)
            atomic_fetch_add(&n->failures, 1);
    if (crew_group_wait(g, CREW_FOREVER, NULL) != 0)
        atomic_fetch_add(&n->failures, 1);
    crew_group_destroy(g);
    return 0;
}

static void nested(unsigned workers, size_t cap, unsigned limit, int depth, int fan)
{
    nest n = {.p = pool(workers, cap), .limit = limit, .fan = fan};
    crew_group *g = group(&(crew_group_opts){.pool = n.p, .limit = limit});
    level top = {&n, depth};
    for (int i = 0; i < fan; i++)
        assert_int_equal(crew_group_go(g, nest_task, &top, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_group_wait(g, CREW_FOREVER, NULL), 0);
    int want = 1;
    for (int d = 0; d <= depth; d++)
        want *= fan;
    assert_int_equal(atomic_load(&n.leaves), want);
    assert_int_equal(atomic_load(&n.failures), 0);
    crew_group_destroy(g);
    crew_pool_destroy(n.p);
}

static void test_nested_one_worker(void **state)
{
    (void)state;
    nested(1, 64, 0, 2, 3);  /* waits help */
    nested(1, 256, 0, 4, 3); /* wider and deeper than the pool's help nesting */
    nested(1, 64, 2, 2, 4);  /* blocked go calls help too */
    nested(1, 2, 1, 3, 2);   /* a tiny queue: the pool's own submit helps as well */
    nested(2, 8, 3, 2, 5);
}

/* A task adding tasks to its own group: at the limit it runs queued ones itself; when every
 * task in flight waits for a slot of the group, go reports the deadlock. */
typedef struct self_add {
    crew_group *g;
    _Atomic int rc_sum, deadlocks;
} self_add;

static int self_add_task(crew_ctx *ctx, void *arg)
{
    (void)ctx;
    self_add *s = arg;
    for (int i = 0; i < 3; i++) {
        int rc = crew_group_go(s->g, count_task, NULL, CREW_FOREVER, NULL);
        if (rc == CREW_EDEADLK)
            atomic_fetch_add(&s->deadlocks, 1);
        else
            atomic_fetch_add(&s->rc_sum, rc);
    }
    return 0;
}

static void test_go_from_own_task(void **state)
{
    (void)state;
    reset();
    crew_pool *p = pool(1, 16);
    self_add s = {0};
    s.g = group(&(crew_group_opts){.pool = p, .limit = 2});
    assert_int_equal(crew_group_go(s.g, self_add_task, &s, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_group_wait(s.g, CREW_FOREVER, NULL), 0);
    assert_int_equal(atomic_load(&s.rc_sum), 0);
    assert_int_equal(atomic_load(&s.deadlocks), 0);
    assert_int_equal(atomic_load(&ran_count), 3);
    crew_group_destroy(s.g);

    /* Limit 1: the task holds the only slot and waits for another. */
    reset();
    s = (self_add){0};
    s.g = group(&(crew_group_opts){.pool = p, .limit = 1});
    assert_int_equal(crew_group_go(s.g, self_add_task, &s, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_group_wait(s.g, CREW_FOREVER, NULL), 0);
    assert_int_equal(atomic_load(&s.deadlocks), 3);
    assert_int_equal(atomic_load(&ran_count), 0);
    crew_group_destroy(s.g);
    crew_pool_destroy(p);
}

/* Tasks added from a job and still queued when the pool is cancelled: dropped by the pool,
 * each once, though a waiter of their group in the pool could have claimed them too. */
typedef struct dropper {
    crew_pool *p;
    crew_group *g;     /* made by the job, waited for by the test */
    latch hold;        /* the job waits here after adding its tasks */
    _Atomic int added; /* tasks accepted */
} dropper;

static int dropper_job(crew_ctx *ctx, void *arg)
{
    dropper *d = arg;
    for (int i = 0; i < 4; i++)
        if (crew_group_go(d->g, count_task, NULL, CREW_FOREVER, NULL) == 0)
            atomic_fetch_add(&d->added, 1);
    return latch_task(ctx, &d->hold); /* the pool is cancelled meanwhile */
}

static void test_nested_dropped(void **state)
{
    (void)state;
    reset();
    dropper d = {.p = pool(1, 16)};
    d.g = group(&(crew_group_opts){.pool = d.p, .all_errors = true, .discard = count_discard});
    assert_int_equal(crew_pool_submit(d.p, dropper_job, &d, CREW_FOREVER, NULL), 0);
    eventually(atomic_load(&d.hold.waiting) == 1);
    assert_int_equal(atomic_load(&d.added), 4);
    assert_int_equal(crew_pool_cancel(d.p, 0), 0);
    assert_int_equal(crew_pool_wait(d.p, CREW_FOREVER), 0); /* the worker dropped them */
    assert_int_equal(crew_group_wait(d.g, CREW_FOREVER, NULL), CREW_ECANCELED);
    assert_int_equal(atomic_load(&discard_count), 4);
    assert_int_equal(atomic_load(&ran_count), 0);
    crew_group_error e[4];
    assert_int_equal(crew_group_errors(d.g, e, 4), 4);
    for (int i = 0; i < 4; i++) {
        assert_false(e[i].ran);
        assert_int_equal(e[i].index, i);
    }
    crew_group_destroy(d.g);
    crew_pool_destroy(d.p);
}

/* ---- the pool's shutdowns -------------------------------------------------------------- */

static void test_pool_shut_down(void **state)
{
    (void)state;
    reset();
    crew_pool *p = pool(1, 16);
    crew_group *g = group(&(crew_group_opts){.pool = p, .discard = count_discard});
    assert_int_equal(crew_pool_close(p), 0);
    assert_int_equal(crew_group_go(g, count_task, NULL, CREW_FOREVER, NULL), CREW_ESHUTDOWN);
    assert_int_equal(crew_group_active(g), 0);
    assert_int_equal(crew_group_wait(g, CREW_FOREVER, NULL), 0);
    crew_group_destroy(g);
    crew_pool_destroy(p);
    assert_int_equal(atomic_load(&ran_count), 0);
    assert_int_equal(atomic_load(&discard_count), 0);

    /* A cancel drops the queued tasks (discarded, filed as failed) and fails the group. */
    p = pool(1, 16);
    g = group(&(crew_group_opts){.pool = p, .discard = count_discard, .all_errors = true});
    latch l = {0};
    assert_int_equal(crew_group_go(g, latch_task, &l, CREW_FOREVER, NULL), 0);
    eventually(atomic_load(&l.waiting) == 1);
    for (int i = 0; i < 4; i++)
        assert_int_equal(crew_group_go(g, count_task, NULL, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_pool_cancel(p, CREW_EBUSY), 0);
    assert_int_equal(crew_group_wait(g, CREW_FOREVER, NULL), CREW_ECANCELED);
    assert_true(crew_ctx_done(crew_group_ctx(g)));
    assert_int_equal(crew_ctx_cause(crew_group_ctx(g)), CREW_EBUSY);
    assert_int_equal(atomic_load(&discard_count), 4);
    crew_group_error e[5];
    assert_int_equal(crew_group_errors(g, e, 5), 5);
    assert_true(e[0].ran); /* the latched task saw its ctx cancelled */
    for (int i = 1; i < 5; i++) {
        assert_false(e[i].ran);
        assert_int_equal(e[i].err, CREW_ECANCELED);
        assert_int_equal(e[i].index, i);
    }
    crew_group_destroy(g);
    crew_pool_destroy(p);

    /* A group made on a pool already cancelled is done from the start. */
    p = pool(1, 4);
    assert_int_equal(crew_pool_cancel(p, 0), 0);
    g = group(&(crew_group_opts){.pool = p});
    assert_true(crew_ctx_done(crew_group_ctx(g)));
    assert_int_equal(crew_group_go(g, count_task, NULL, CREW_FOREVER, NULL), CREW_ECANCELED);
    crew_group_destroy(g);
    crew_pool_destroy(p);
}

/* A queue budget drops a task that waited too long: discarded with CREW_ETIMEDOUT. */
static void test_pool_queue_budget(void **state)
{
    (void)state;
    reset();
    crew_pool *p;
    assert_int_equal(
        crew_pool_create(
            &p, &(crew_pool_opts){.workers = 1, .queue_cap = 8, .queue_timeout = CREW_MSEC}),
        0);
    crew_group *g = group(&(crew_group_opts){.pool = p, .discard = count_discard});
    latch l = {0};
    assert_int_equal(crew_group_go(g, latch_task, &l, CREW_FOREVER, NULL), 0);
    eventually(atomic_load(&l.waiting) == 1);
    assert_int_equal(crew_group_go(g, count_task, NULL, CREW_FOREVER, NULL), 0);
    int64_t t0 = crew_now();
    while (crew_now() - t0 < 5 * CREW_MSEC) /* let the queued task go stale */
        ;
    atomic_store(&l.open, true);
    assert_int_equal(crew_group_wait(g, CREW_FOREVER, NULL), CREW_ETIMEDOUT);
    assert_int_equal(atomic_load(&discard_count), 1);
    assert_int_equal(atomic_load(&discard_reason), CREW_ETIMEDOUT);
    assert_int_equal(atomic_load(&ran_count), 0);
    crew_group_destroy(g);
    crew_pool_destroy(p);
}

/* ---- parent ctx, destroy, allocation --------------------------------------------------- */

static void test_parent_ctx(void **state)
{
    (void)state;
    reset();
    crew_ctx *parent;
    assert_int_equal(crew_ctx_with_cancel(NULL, &parent), 0);
    crew_group *g = group(&(crew_group_opts){.ctx = parent});
    latch l = {0};
    assert_int_equal(crew_group_go(g, latch_task, &l, CREW_FOREVER, NULL), 0);
    eventually(atomic_load(&l.waiting) == 1);
    crew_ctx_cancel(parent, 0);
    assert_int_equal(crew_group_wait(g, CREW_FOREVER, NULL), CREW_ECANCELED);
    assert_int_equal(crew_group_go(g, count_task, NULL, CREW_FOREVER, NULL), CREW_ECANCELED);
    crew_group_destroy(g);
    crew_ctx_release(parent);

    /* A parent's deadline: the latched task sees it. The deadline must not pass before the
     * task is added (a slow machine may take a while to start the group's pool): if it
     * does, go says so, and the test tries again with a longer one. */
    int rc = CREW_ETIMEDOUT;
    for (int64_t timeout = CREW_MSEC; rc == CREW_ETIMEDOUT; timeout *= 4) {
        assert_true(timeout < 60 * CREW_SEC);
        assert_int_equal(crew_ctx_with_timeout(NULL, timeout, &parent), 0);
        g = group(&(crew_group_opts){.ctx = parent});
        rc = crew_group_go(g, latch_task, &l, CREW_FOREVER, NULL);
        if (rc == CREW_ETIMEDOUT) {
            crew_group_destroy(g);
            crew_ctx_release(parent);
        }
    }
    assert_int_equal(rc, 0);
    assert_int_equal(crew_group_wait(g, CREW_FOREVER, NULL), CREW_ETIMEDOUT);
    assert_int_equal(crew_ctx_err(crew_group_ctx(g)), CREW_ETIMEDOUT);
    crew_group_destroy(g);
    crew_ctx_release(parent);
}

/* destroy with tasks still running cancels them and waits. */
static void test_destroy_running(void **state)
{
    (void)state;
    crew_pool *p = pool(2, 16);
    crew_group *g = group(&(crew_group_opts){.pool = p});
    latch l = {0};
    for (int i = 0; i < 4; i++)
        assert_int_equal(crew_group_go(g, latch_task, &l, CREW_FOREVER, NULL), 0);
    eventually(atomic_load(&l.waiting) == 2);
    crew_group_destroy(g);
    assert_int_equal(atomic_load(&l.waiting), 0);
    crew_pool_destroy(p);
}

static void test_go_nomem(void **state)
{
    (void)state;
    reset();
    for (int own = 0; own < 2; own++) {
        crew_pool *p = own ? NULL : pool(1, 8);
        crew_group *g = group(&(crew_group_opts){.pool = p});
        /* The first go allocates its task record (and, on the caller's pool, the pool's job
         * record): fail each in turn. */
        for (long n = 1; n <= 2 - own; n++) {
            crew__test_fail_after(n);
            int rc = crew_group_go(g, count_task, NULL, CREW_FOREVER, NULL);
            crew__test_fail_after(0);
            assert_int_equal(rc, CREW_ENOMEM);
            assert_int_equal(crew_group_active(g), 0);
        }
        assert_int_equal(crew_group_go(g, count_task, (void *)(intptr_t)-1, CREW_FOREVER, NULL), 0);
        assert_int_equal(crew_group_wait(g, CREW_FOREVER, NULL), -1);
        crew_group_error e;
        assert_int_equal(crew_group_errors(g, &e, 1), 1);
        assert_int_equal(e.index, 0); /* failed go calls gave their numbers back */
        crew_group_destroy(g);
        crew_pool_destroy(p);
    }
    assert_int_equal(atomic_load(&ran_count), 2);
}

/* Once warm, running tasks allocates nothing. */
static void test_no_alloc_steady_state(void **state)
{
    (void)state;
    crew_group *g = group(&(crew_group_opts){.limit = 8});
    for (int i = 0; i < 100; i++)
        assert_int_equal(crew_group_go(g, count_task, NULL, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_group_wait(g, CREW_FOREVER, NULL), 0);
    uint64_t before = crew__test_alloc_count();
    for (int i = 0; i < 2000; i++)
        assert_int_equal(crew_group_go(g, count_task, NULL, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_group_wait(g, CREW_FOREVER, NULL), 0);
    assert_true(crew__test_alloc_count() - before <= 8); /* at most a record per slot */
    crew_group_destroy(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        leak_test(test_create_invalid),
        leak_test(test_create_nomem),
        leak_test(test_go_wait_own_pool),
        leak_test(test_go_invalid_and_done_ctx),
        leak_test(test_fail_fast),
        leak_test(test_fail_fast_skips_queued),
        leak_test(test_blocked_go_ends_on_failure),
        leak_test(test_all_errors),
        leak_test(test_limit),
        leak_test(test_limit_holds),
        leak_test(test_wait_forms),
        leak_test(test_wait_from_own_task),
        leak_test(test_nested_one_worker),
        leak_test(test_go_from_own_task),
        leak_test(test_nested_dropped),
        leak_test(test_pool_shut_down),
        leak_test(test_pool_queue_budget),
        leak_test(test_parent_ctx),
        leak_test(test_destroy_running),
        leak_test(test_go_nomem),
        leak_test(test_no_alloc_steady_state),
    };
    return cmocka_run_group_tests_name("group", tests, NULL, NULL);
}
