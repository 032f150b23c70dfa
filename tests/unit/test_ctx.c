/* Tests for src/ctx.c: cancellation contexts, their tree, deadlines, waits and hooks. */
#include "internal.h"
#include "testutil.h"

#include <pthread.h>
#include <sched.h>
#include <string.h>

/* ---- helpers ------------------------------------------------------------------------- */

/* What a hook saw: how often it ran and with which error. */
typedef struct hook_log {
    _Atomic int calls;
    _Atomic int err;
} hook_log;

static void log_hook(void *arg, int err)
{
    hook_log *l = arg;
    atomic_store(&l->err, err);
    atomic_fetch_add(&l->calls, 1);
}

static void test_background(void **state)
{
    (void)state;
    crew_ctx *bg = crew_ctx_background();
    assert_non_null(bg);
    assert_ptr_equal(crew_ctx_background(), bg);
    assert_false(crew_ctx_done(bg));
    assert_int_equal(crew_ctx_err(bg), 0);
    assert_int_equal(crew_ctx_cause(bg), 0);
    assert_true(crew_ctx_deadline(bg) == CREW_FOREVER);
    /* Retain, release and cancel do nothing. */
    assert_ptr_equal(crew_ctx_retain(bg), bg);
    crew_ctx_release(bg);
    crew_ctx_release(bg);
    crew_ctx_cancel(bg, CREW_ESHUTDOWN);
    assert_false(crew_ctx_done(bg));
    assert_int_equal(crew_ctx_err(bg), 0);
    /* Waiting on it only times out. */
    assert_int_equal(crew_ctx_wait(bg, CREW_NOW), CREW_ETIMEDOUT);
    assert_int_equal(crew_ctx_wait(bg, crew_deadline_in(CREW_MSEC)), CREW_ETIMEDOUT);
    /* NULL reads as background. */
    assert_false(crew_ctx_done(NULL));
    assert_int_equal(crew_ctx_err(NULL), 0);
    assert_int_equal(crew_ctx_cause(NULL), 0);
    assert_true(crew_ctx_deadline(NULL) == CREW_FOREVER);
    assert_null(crew_ctx_retain(NULL));
    crew_ctx_release(NULL);
    crew_ctx_cancel(NULL, 0);
    /* A watch on background registers nothing and reports 0; unwatch says "not fired". */
    crew__ctx_node n;
    memset(&n, 0x5a, sizeof n);
    hook_log l = {0};
    assert_int_equal(crew__ctx_watch(bg, &n, log_hook, &l), 0);
    assert_true(crew__ctx_unwatch(bg, &n));
    assert_int_equal(crew__ctx_watch(NULL, &n, log_hook, &l), 0);
    assert_true(crew__ctx_unwatch(NULL, &n));
    assert_int_equal(atomic_load(&l.calls), 0);
}

static void test_cancel_basic(void **state)
{
    (void)state;
    crew_ctx *c;
    assert_int_equal(crew_ctx_with_cancel(NULL, &c), 0);
    assert_false(crew_ctx_done(c));
    assert_int_equal(crew_ctx_err(c), 0);
    assert_int_equal(crew_ctx_cause(c), 0);
    assert_true(crew_ctx_deadline(c) == CREW_FOREVER);
    assert_int_equal(crew_ctx_wait(c, CREW_NOW), CREW_ETIMEDOUT);
    crew_ctx_cancel(c, 0);
    assert_true(crew_ctx_done(c));
    assert_int_equal(crew_ctx_err(c), CREW_ECANCELED);
    assert_int_equal(crew_ctx_cause(c), CREW_ECANCELED);
    /* The first cancel wins. */
    crew_ctx_cancel(c, CREW_ESHUTDOWN);
    assert_int_equal(crew_ctx_cause(c), CREW_ECANCELED);
    assert_int_equal(crew_ctx_wait(c, CREW_NOW), 0);
    assert_int_equal(crew_ctx_wait(c, CREW_FOREVER), 0);
    crew_ctx_release(c);

    /* A cause is kept; the error is ECANCELED unless the cause is ETIMEDOUT. */
    assert_int_equal(crew_ctx_with_cancel(crew_ctx_background(), &c), 0);
    crew_ctx_cancel(c, CREW_ESHUTDOWN);
    assert_int_equal(crew_ctx_err(c), CREW_ECANCELED);
    assert_int_equal(crew_ctx_cause(c), CREW_ESHUTDOWN);
    crew_ctx_release(c);
    assert_int_equal(crew_ctx_with_cancel(NULL, &c), 0);
    crew_ctx_cancel(c, CREW_ETIMEDOUT);
    assert_int_equal(crew_ctx_err(c), CREW_ETIMEDOUT);
    assert_int_equal(crew_ctx_cause(c), CREW_ETIMEDOUT);
    crew_ctx_release(c);

    assert_int_equal(crew_ctx_with_cancel(NULL, NULL), CREW_EINVAL);
    assert_int_equal(crew_ctx_with_deadline(NULL, CREW_FOREVER, NULL), CREW_EINVAL);
}

static void test_tree(void **state)
{
    (void)state;
    crew_ctx *root, *a, *b, *a1, *a2, *b1;
    assert_int_equal(crew_ctx_with_cancel(NULL, &root), 0);
    assert_int_equal(crew_ctx_with_cancel(root, &a), 0);
    assert_int_equal(crew_ctx_with_cancel(root, &b), 0);
    assert_int_equal(crew_ctx_with_cancel(a, &a1), 0);
    assert_int_equal(crew_ctx_with_deadline(a, CREW_FOREVER, &a2), 0);
    assert_int_equal(crew_ctx_with_cancel(b, &b1), 0);

    /* Cancelling a cancels its subtree with its cause, never its parent or siblings. */
    crew_ctx_cancel(a, CREW_ESHUTDOWN);
    crew_ctx *subtree[] = {a, a1, a2};
    for (int i = 0; i < 3; i++) {
        assert_true(crew_ctx_done(subtree[i]));
        assert_int_equal(crew_ctx_err(subtree[i]), CREW_ECANCELED);
        assert_int_equal(crew_ctx_cause(subtree[i]), CREW_ESHUTDOWN);
    }
    assert_false(crew_ctx_done(root));
    assert_false(crew_ctx_done(b));
    assert_false(crew_ctx_done(b1));

    /* The root's cancel reaches the rest; a keeps its first cause. */
    crew_ctx_cancel(root, CREW_EPIPE);
    assert_int_equal(crew_ctx_cause(b), CREW_EPIPE);
    assert_int_equal(crew_ctx_cause(b1), CREW_EPIPE);
    assert_int_equal(crew_ctx_cause(a1), CREW_ESHUTDOWN);

    /* Children born under a done parent start done with its cause, even with a deadline. */
    crew_ctx *late, *late2;
    assert_int_equal(crew_ctx_with_cancel(a, &late), 0);
    assert_true(crew_ctx_done(late));
    assert_int_equal(crew_ctx_cause(late), CREW_ESHUTDOWN);
    assert_int_equal(crew_ctx_with_timeout(a1, CREW_SEC, &late2), 0);
    assert_int_equal(crew_ctx_cause(late2), CREW_ESHUTDOWN);
    assert_int_equal(crew_ctx_err(late2), CREW_ECANCELED);

    /* Parents first: the children keep them alive. */
    crew_ctx_release(root);
    crew_ctx_release(a);
    crew_ctx_release(late);
    crew_ctx_release(b1);
    crew_ctx_release(a1);
    crew_ctx_release(b);
    crew_ctx_release(late2);
    crew_ctx_release(a2);
}

static void test_deep_chain(void **state)
{
    (void)state;
    enum { DEPTH = 1000 };
    crew_ctx **chain = malloc(DEPTH * sizeof *chain);
    assert_int_equal(crew_ctx_with_cancel(NULL, &chain[0]), 0);
    for (int i = 1; i < DEPTH; i++)
        assert_int_equal(crew_ctx_with_cancel(chain[i - 1], &chain[i]), 0);
    crew_ctx_cancel(chain[DEPTH / 2], CREW_EBUSY);
    assert_false(crew_ctx_done(chain[DEPTH / 2 - 1]));
    assert_int_equal(crew_ctx_cause(chain[DEPTH - 1]), CREW_EBUSY);
    crew_ctx_cancel(chain[0], 0);
    assert_int_equal(crew_ctx_cause(chain[1]), CREW_ECANCELED);
    /* Release root to leaf: the leaf's release frees the whole chain, iteratively. */
    for (int i = 0; i < DEPTH; i++)
        crew_ctx_release(chain[i]);
    free(chain);
}

static void test_many_children(void **state)
{
    (void)state;
    enum { N = 500 };
    crew_ctx *p, *kids[N];
    hook_log l = {0};
    assert_int_equal(crew_ctx_with_cancel(NULL, &p), 0);
    for (int i = 0; i < N; i++) {
        assert_int_equal(crew_ctx_with_cancel(p, &kids[i]), 0);
        assert_int_equal(crew_ctx_on_cancel(kids[i], log_hook, &l, NULL), 0);
    }
    /* Some children leave early: they must no longer be reachable from p. */
    uint64_t seed = 42;
    for (int i = 0; i < N / 4; i++) {
        int k = (int)(rng_next(&seed) % N);
        if (kids[k]) {
            crew_ctx_release(kids[k]);
            kids[k] = NULL;
        }
    }
    int live = 0;
    for (int i = 0; i < N; i++)
        live += kids[i] != NULL;
    crew_ctx_cancel(p, 0);
    assert_int_equal(atomic_load(&l.calls), live);
    crew_ctx_release(p);
    for (int i = 0; i < N; i++) {
        int k = (int)(rng_next(&seed) % N);
        if (kids[k]) {
            assert_true(crew_ctx_done(kids[k]));
            crew_ctx_release(kids[k]);
            kids[k] = NULL;
        }
    }
    for (int i = 0; i < N; i++)
        crew_ctx_release(kids[i]);
}

static void test_deadline_fires(void **state)
{
    (void)state;
    crew_ctx *c;
    int64_t before = crew_now();
    assert_int_equal(crew_ctx_with_timeout(NULL, 20 * CREW_MSEC, &c), 0);
    assert_true(crew_ctx_deadline(c) >= before + 20 * CREW_MSEC);
    assert_int_equal(crew_ctx_wait(c, CREW_FOREVER), 0);
    assert_true(crew_ctx_done(c));
    assert_int_equal(crew_ctx_err(c), CREW_ETIMEDOUT);
    assert_int_equal(crew_ctx_cause(c), CREW_ETIMEDOUT);
    /* A later cancel changes nothing. */
    crew_ctx_cancel(c, 0);
    assert_int_equal(crew_ctx_err(c), CREW_ETIMEDOUT);
    crew_ctx_release(c);

    /* A negative timeout means none. */
    assert_int_equal(crew_ctx_with_timeout(NULL, -1, &c), 0);
    assert_true(crew_ctx_deadline(c) == CREW_FOREVER);
    crew_ctx_release(c);
}

static void test_deadline_past(void **state)
{
    (void)state;
    int threads = thread_count();
    int64_t past[] = {CREW_NOW, crew_now() - 1, crew_now() - CREW_SEC};
    for (int i = 0; i < 3; i++) {
        crew_ctx *c;
        assert_int_equal(crew_ctx_with_deadline(NULL, past[i], &c), 0);
        assert_true(crew_ctx_done(c));
        assert_int_equal(crew_ctx_err(c), CREW_ETIMEDOUT);
        assert_int_equal(crew_ctx_cause(c), CREW_ETIMEDOUT);
        assert_true(crew_ctx_deadline(c) == past[i]);
        assert_int_equal(crew_ctx_wait(c, CREW_FOREVER), 0);
        crew_ctx_release(c);
    }
    crew_ctx *c;
    assert_int_equal(crew_ctx_with_timeout(NULL, 0, &c), 0);
    assert_int_equal(crew_ctx_err(c), CREW_ETIMEDOUT);
    /* Its children too, and a watch reports the error. */
    crew_ctx *child;
    assert_int_equal(crew_ctx_with_cancel(c, &child), 0);
    assert_int_equal(crew_ctx_err(child), CREW_ETIMEDOUT);
    crew__ctx_node n;
    memset(&n, 0, sizeof n);
    hook_log l = {0};
    assert_int_equal(crew__ctx_watch(child, &n, log_hook, &l), CREW_ETIMEDOUT);
    assert_true(crew__ctx_unwatch(child, &n));
    assert_int_equal(atomic_load(&l.calls), 0);
    crew_ctx_release(c);
    crew_ctx_release(child);
    /* No timer was needed, so no thread was started. */
    assert_int_equal(thread_count(), threads);
}

static void test_deadline_inherit(void **state)
{
    (void)state;
    int64_t d = crew_deadline_in(100 * CREW_SEC);
    crew_ctx *p, *later, *earlier, *plain, *none;
    assert_int_equal(crew_ctx_with_deadline(NULL, d, &p), 0);
    assert_true(crew_ctx_deadline(p) == d);
    assert_int_equal(crew_ctx_with_deadline(p, d + CREW_SEC, &later), 0);
    assert_true(crew_ctx_deadline(later) == d);
    assert_int_equal(crew_ctx_with_deadline(p, d - CREW_SEC, &earlier), 0);
    assert_true(crew_ctx_deadline(earlier) == d - CREW_SEC);
    assert_int_equal(crew_ctx_with_cancel(p, &plain), 0);
    assert_true(crew_ctx_deadline(plain) == d);
    assert_int_equal(crew_ctx_with_timeout(earlier, -1, &none), 0);
    assert_true(crew_ctx_deadline(none) == d - CREW_SEC);
    crew_ctx_release(none);
    crew_ctx_release(plain);
    crew_ctx_release(earlier);
    crew_ctx_release(later);
    crew_ctx_release(p);

    /* A child whose deadline is later than its parent's times out with the parent. */
    crew_ctx *child;
    assert_int_equal(crew_ctx_with_timeout(NULL, 20 * CREW_MSEC, &p), 0);
    assert_int_equal(crew_ctx_with_timeout(p, 3600 * CREW_SEC, &child), 0);
    assert_true(crew_ctx_deadline(child) == crew_ctx_deadline(p));
    assert_int_equal(crew_ctx_wait(child, CREW_FOREVER), 0);
    assert_int_equal(crew_ctx_err(child), CREW_ETIMEDOUT);
    assert_int_equal(crew_ctx_cause(child), CREW_ETIMEDOUT);
    assert_true(crew_ctx_done(p));
    crew_ctx_release(child);
    crew_ctx_release(p);

    /* A child whose deadline is earlier times out alone. */
    assert_int_equal(crew_ctx_with_timeout(NULL, 3600 * CREW_SEC, &p), 0);
    assert_int_equal(crew_ctx_with_timeout(p, 20 * CREW_MSEC, &child), 0);
    assert_int_equal(crew_ctx_wait(child, CREW_FOREVER), 0);
    assert_int_equal(crew_ctx_err(child), CREW_ETIMEDOUT);
    assert_false(crew_ctx_done(p));
    crew_ctx_release(p); /* parent first */
    crew_ctx_release(child);
}

typedef struct waiter_arg {
    crew_ctx *c;
    int64_t deadline;
    _Atomic int rc;
} waiter_arg;

static void *waiter_main(void *arg)
{
    waiter_arg *w = arg;
    atomic_store(&w->rc, crew_ctx_wait(w->c, w->deadline));
    return NULL;
}

static void test_wait(void **state)
{
    (void)state;
    crew_ctx *c;
    assert_int_equal(crew_ctx_with_cancel(NULL, &c), 0);
    assert_int_equal(crew_ctx_wait(c, CREW_NOW), CREW_ETIMEDOUT);
    assert_int_equal(crew_ctx_wait(c, crew_now() - 1), CREW_ETIMEDOUT);
    assert_int_equal(crew_ctx_wait(c, crew_deadline_in(5 * CREW_MSEC)), CREW_ETIMEDOUT);
    assert_false(crew_ctx_done(c));

    /* A waiter in another thread is woken by the cancel. */
    waiter_arg w = {.c = c, .deadline = CREW_FOREVER, .rc = 99};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, waiter_main, &w), 0);
    give_a_chance();
    crew_ctx_cancel(c, 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(atomic_load(&w.rc), 0);
    assert_int_equal(crew_ctx_wait(c, CREW_NOW), 0);
    crew_ctx_release(c);

    /* A waiter with a deadline on a ctx nobody cancels times out. */
    assert_int_equal(crew_ctx_with_cancel(NULL, &c), 0);
    w = (waiter_arg){.c = c, .deadline = crew_deadline_in(10 * CREW_MSEC), .rc = 99};
    assert_int_equal(pthread_create(&t, NULL, waiter_main, &w), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(atomic_load(&w.rc), CREW_ETIMEDOUT);
    crew_ctx_release(c);
}

/* A node function that unwatches its own node from inside itself. */
typedef struct self_unwatch {
    crew_ctx *c;
    crew__ctx_node node;
    _Atomic int calls;
    _Atomic int unwatch_rc;
} self_unwatch;

static void unwatch_self(void *arg, int err)
{
    self_unwatch *s = arg;
    (void)err;
    atomic_store(&s->unwatch_rc, crew__ctx_unwatch(s->c, &s->node));
    atomic_fetch_add(&s->calls, 1);
}

/* A node function that unwatches another node, later in the same walk. */
typedef struct other_unwatch {
    crew_ctx *c;
    crew__ctx_node *target;
    _Atomic int unwatch_rc;
} other_unwatch;

static void unwatch_other(void *arg, int err)
{
    other_unwatch *o = arg;
    (void)err;
    atomic_store(&o->unwatch_rc, crew__ctx_unwatch(o->c, o->target));
}

static void test_watch_unwatch(void **state)
{
    (void)state;
    crew_ctx *c;
    assert_int_equal(crew_ctx_with_cancel(NULL, &c), 0);
    crew__ctx_node n;
    memset(&n, 0, sizeof n);
    hook_log l = {0};
    /* Never registered (zeroed): unwatch says "not fired". */
    assert_true(crew__ctx_unwatch(c, &n));
    /* Removed before the cancel: never called. */
    assert_int_equal(crew__ctx_watch(c, &n, log_hook, &l), 0);
    assert_true(crew__ctx_unwatch(c, &n));
    assert_true(crew__ctx_unwatch(c, &n)); /* twice is harmless */
    /* Registered at the cancel: called once with the error. */
    assert_int_equal(crew__ctx_watch(c, &n, log_hook, &l), 0);
    self_unwatch s = {.c = c, .calls = 0, .unwatch_rc = 7};
    memset(&s.node, 0, sizeof s.node);
    assert_int_equal(crew__ctx_watch(c, &s.node, unwatch_self, &s), 0);
    crew_ctx_cancel(c, CREW_ESHUTDOWN);
    assert_int_equal(atomic_load(&l.calls), 1);
    assert_int_equal(atomic_load(&l.err), CREW_ECANCELED);
    assert_false(crew__ctx_unwatch(c, &n));
    /* Unwatching from inside its own function neither deadlocks nor lies. */
    assert_int_equal(atomic_load(&s.calls), 1);
    assert_int_equal(atomic_load(&s.unwatch_rc), 0);
    assert_false(crew__ctx_unwatch(c, &s.node));
    /* A fired node may be watched again; a done ctx refuses it. */
    assert_int_equal(crew__ctx_watch(c, &n, log_hook, &l), CREW_ECANCELED);
    assert_true(crew__ctx_unwatch(c, &n));
    assert_int_equal(atomic_load(&l.calls), 1);
    crew_ctx_release(c);

    /* A function unwatching a node that its walk has not reached: removed, never run. */
    assert_int_equal(crew_ctx_with_cancel(NULL, &c), 0);
    crew__ctx_node first, target;
    memset(&first, 0, sizeof first);
    memset(&target, 0, sizeof target);
    hook_log tl = {0}, after = {0};
    other_unwatch o = {.c = c, .target = &target, .unwatch_rc = 7};
    assert_int_equal(crew__ctx_watch(c, &first, unwatch_other, &o), 0);
    assert_int_equal(crew__ctx_watch(c, &target, log_hook, &tl), 0);
    assert_int_equal(crew__ctx_watch(c, &n, log_hook, &after), 0);
    crew_ctx_cancel(c, 0);
    assert_int_equal(atomic_load(&o.unwatch_rc), 1);
    assert_int_equal(atomic_load(&tl.calls), 0);
    assert_int_equal(atomic_load(&after.calls), 1);
    assert_true(crew__ctx_unwatch(c, &target)); /* IDLE now */
    assert_false(crew__ctx_unwatch(c, &first));
    assert_false(crew__ctx_unwatch(c, &n));
    crew_ctx_release(c);
}

static void test_on_cancel(void **state)
{
    (void)state;
    crew_ctx *c;
    crew_ctx_hook *h, *h2;
    hook_log l = {0}, l2 = {0}, ff = {0};
    assert_int_equal(crew_ctx_with_cancel(NULL, &c), 0);
    assert_int_equal(crew_ctx_on_cancel(c, log_hook, &l, &h), 0);
    assert_int_equal(crew_ctx_on_cancel(c, log_hook, &l2, &h2), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(crew_ctx_on_cancel(c, log_hook, &ff, NULL), 0);
    /* Removed before firing: prevented. */
    assert_true(crew_ctx_hook_remove(h2));
    assert_int_equal(atomic_load(&l.calls), 0);
    crew_ctx_cancel(c, CREW_EPIPE);
    assert_int_equal(atomic_load(&l.calls), 1);
    assert_int_equal(atomic_load(&l.err), CREW_ECANCELED);
    assert_int_equal(atomic_load(&l2.calls), 0);
    assert_int_equal(atomic_load(&ff.calls), 3);
    /* Removed after firing: it ran. */
    assert_false(crew_ctx_hook_remove(h));
    crew_ctx_cancel(c, 0);
    assert_int_equal(atomic_load(&l.calls), 1);

    /* On a done ctx: runs now, in this thread, with the error. */
    hook_log now = {0};
    assert_int_equal(crew_ctx_on_cancel(c, log_hook, &now, &h), 0);
    assert_int_equal(atomic_load(&now.calls), 1);
    assert_int_equal(atomic_load(&now.err), CREW_ECANCELED);
    assert_false(crew_ctx_hook_remove(h));
    assert_int_equal(crew_ctx_on_cancel(c, log_hook, &now, NULL), 0);
    assert_int_equal(atomic_load(&now.calls), 2);
    crew_ctx_release(c);

    /* A timed-out ctx reports ETIMEDOUT to its hooks. */
    hook_log t = {0};
    assert_int_equal(crew_ctx_with_timeout(NULL, 5 * CREW_MSEC, &c), 0);
    assert_int_equal(crew_ctx_on_cancel(c, log_hook, &t, &h), 0);
    assert_int_equal(crew_ctx_wait(c, CREW_FOREVER), 0);
    assert_false(crew_ctx_hook_remove(h));
    assert_int_equal(atomic_load(&t.calls), 1);
    assert_int_equal(atomic_load(&t.err), CREW_ETIMEDOUT);
    crew_ctx_release(c);

    /* Fire-and-forget hooks of a ctx freed without a cancel are freed unrun (LSan). */
    hook_log never = {0};
    assert_int_equal(crew_ctx_with_cancel(NULL, &c), 0);
    for (int i = 0; i < 4; i++)
        assert_int_equal(crew_ctx_on_cancel(c, log_hook, &never, NULL), 0);
    crew_ctx_release(c);
    assert_int_equal(atomic_load(&never.calls), 0);

    /* A handle keeps its ctx allocated until it is removed, even after the release. */
    assert_int_equal(crew_ctx_with_cancel(NULL, &c), 0);
    assert_int_equal(crew_ctx_on_cancel(c, log_hook, &never, &h), 0);
    crew_ctx_release(c);
    assert_true(crew_ctx_hook_remove(h));

    /* Background (and NULL) never fire. */
    assert_int_equal(crew_ctx_on_cancel(crew_ctx_background(), log_hook, &never, &h), 0);
    assert_true(crew_ctx_hook_remove(h));
    assert_int_equal(crew_ctx_on_cancel(NULL, log_hook, &never, &h), 0);
    assert_true(crew_ctx_hook_remove(h));
    assert_int_equal(crew_ctx_on_cancel(crew_ctx_background(), log_hook, &never, NULL), 0);
    assert_int_equal(atomic_load(&never.calls), 0);

    /* Bad arguments. */
    assert_int_equal(crew_ctx_on_cancel(NULL, NULL, NULL, &h), CREW_EINVAL);
    assert_false(crew_ctx_hook_remove(NULL));
}

/* Hooks that remove hooks from inside their functions. */
typedef struct remover {
    crew_ctx_hook *self;   /* removed by its own function */
    crew_ctx_hook *target; /* removed by it too, if set */
    _Atomic int calls;
    _Atomic int self_rc, target_rc;
} remover;

static void remove_hooks(void *arg, int err)
{
    remover *r = arg;
    (void)err;
    atomic_fetch_add(&r->calls, 1);
    if (r->target)
        atomic_store(&r->target_rc, crew_ctx_hook_remove(r->target));
    atomic_store(&r->self_rc, crew_ctx_hook_remove(r->self));
}

static void test_hook_remove_inside(void **state)
{
    (void)state;
    crew_ctx *c;
    assert_int_equal(crew_ctx_with_cancel(NULL, &c), 0);
    hook_log before = {0}, after = {0};
    crew_ctx_hook *hb, *ha;
    remover r = {.self_rc = 7, .target_rc = 7};
    remover r2 = {.self_rc = 7, .target_rc = 7};
    /* Order of registration: before, r, after, r2. r removes "after" (not yet run) and
     * itself; r2 removes "before" (already run) and itself. */
    assert_int_equal(crew_ctx_on_cancel(c, log_hook, &before, &hb), 0);
    assert_int_equal(crew_ctx_on_cancel(c, remove_hooks, &r, &r.self), 0);
    assert_int_equal(crew_ctx_on_cancel(c, log_hook, &after, &ha), 0);
    assert_int_equal(crew_ctx_on_cancel(c, remove_hooks, &r2, &r2.self), 0);
    r.target = ha;
    r2.target = hb;
    crew_ctx_cancel(c, 0);
    assert_int_equal(atomic_load(&r.calls), 1);
    assert_int_equal(atomic_load(&r.self_rc), 0);   /* its own fn: already ran */
    assert_int_equal(atomic_load(&r.target_rc), 1); /* prevented */
    assert_int_equal(atomic_load(&after.calls), 0);
    assert_int_equal(atomic_load(&r2.calls), 1);
    assert_int_equal(atomic_load(&r2.self_rc), 0);
    assert_int_equal(atomic_load(&r2.target_rc), 0); /* it had run */
    assert_int_equal(atomic_load(&before.calls), 1);
    /* Every hook was removed exactly once; ASan/LSan prove each was freed once. */
    crew_ctx_release(c);
}

/* A hook that blocks until told to go, to catch a remove that does not wait. */
typedef struct blocker {
    crew__event entered, go;
    _Atomic int returned;
    crew_ctx *c;
    crew_ctx_hook *h;
    _Atomic int remove_rc, returned_at_remove;
} blocker;

static void block_hook(void *arg, int err)
{
    blocker *b = arg;
    (void)err;
    crew__event_set(&b->entered);
    assert_int_equal(crew__event_wait(&b->go, CREW_FOREVER), 0);
    atomic_store(&b->returned, 1);
}

static void *cancel_main(void *arg)
{
    blocker *b = arg;
    crew_ctx_cancel(b->c, 0);
    return NULL;
}

static void *remove_main(void *arg)
{
    blocker *b = arg;
    atomic_store(&b->remove_rc, crew_ctx_hook_remove(b->h));
    atomic_store(&b->returned_at_remove, atomic_load(&b->returned));
    return NULL;
}

static void test_hook_remove_waits(void **state)
{
    (void)state;
    blocker b = {.remove_rc = 7, .returned_at_remove = 7};
    crew__event_init(&b.entered);
    crew__event_init(&b.go);
    assert_int_equal(crew_ctx_with_cancel(NULL, &b.c), 0);
    assert_int_equal(crew_ctx_on_cancel(b.c, block_hook, &b, &b.h), 0);
    pthread_t canceller, remover_t;
    assert_int_equal(pthread_create(&canceller, NULL, cancel_main, &b), 0);
    assert_int_equal(crew__event_wait(&b.entered, CREW_FOREVER), 0);
    assert_int_equal(pthread_create(&remover_t, NULL, remove_main, &b), 0);
    give_a_chance(); /* let the remover reach its wait; correctness does not depend on it */
    crew__event_set(&b.go);
    assert_int_equal(pthread_join(remover_t, NULL), 0);
    assert_int_equal(pthread_join(canceller, NULL), 0);
    assert_int_equal(atomic_load(&b.remove_rc), 0);
    assert_int_equal(atomic_load(&b.returned_at_remove), 1);
    crew_ctx_release(b.c);
}

/* Releases the ctx it is given (a reference handed over), then signals. */
typedef struct releaser {
    crew_ctx *c;
    crew__event done;
} releaser;

static void release_hook(void *arg, int err)
{
    releaser *r = arg;
    (void)err;
    crew_ctx_release(r->c);
    crew__event_set(&r->done);
}

static void test_release_order(void **state)
{
    (void)state;
    /* Parent released before its child: the child lives on, then frees both. */
    crew_ctx *p, *c, *g;
    assert_int_equal(crew_ctx_with_cancel(NULL, &p), 0);
    assert_int_equal(crew_ctx_with_timeout(p, 3600 * CREW_SEC, &c), 0);
    assert_int_equal(crew_ctx_with_cancel(c, &g), 0);
    crew_ctx_release(p);
    crew_ctx_release(c);
    assert_false(crew_ctx_done(g));
    assert_true(crew_ctx_deadline(g) != CREW_FOREVER);
    crew_ctx_cancel(g, 0);
    assert_true(crew_ctx_done(g));
    crew_ctx_release(g);

    /* A child's hook drops the child's last reference while the parent's cancel is
     * propagating to it. */
    hook_log l = {0};
    releaser r;
    crew__event_init(&r.done);
    assert_int_equal(crew_ctx_with_cancel(NULL, &p), 0);
    assert_int_equal(crew_ctx_with_cancel(p, &r.c), 0);
    assert_int_equal(crew_ctx_on_cancel(r.c, release_hook, &r, NULL), 0);
    assert_int_equal(crew_ctx_on_cancel(r.c, log_hook, &l, NULL), 0);
    crew_ctx_cancel(p, 0);
    assert_true(crew__event_is_set(&r.done));
    assert_int_equal(atomic_load(&l.calls), 1);
    crew_ctx_release(p);

    /* A ctx's own hook drops its last reference during a direct cancel. */
    crew__event_init(&r.done);
    assert_int_equal(crew_ctx_with_cancel(NULL, &r.c), 0);
    assert_int_equal(crew_ctx_on_cancel(r.c, release_hook, &r, NULL), 0);
    assert_int_equal(crew_ctx_on_cancel(r.c, log_hook, &l, NULL), 0);
    crew_ctx_cancel(r.c, 0); /* our reference now belongs to the hook */
    assert_int_equal(atomic_load(&l.calls), 2);

    /* A hook of the parent releases children whose nodes come later in the same walk:
     * they are taken out of the walk before they are freed, and the walk goes on. */
    releaser r1, r2;
    crew__event_init(&r1.done);
    crew__event_init(&r2.done);
    hook_log tail = {0};
    assert_int_equal(crew_ctx_with_cancel(NULL, &p), 0);
    assert_int_equal(crew_ctx_on_cancel(p, release_hook, &r1, NULL), 0);
    assert_int_equal(crew_ctx_on_cancel(p, release_hook, &r2, NULL), 0);
    assert_int_equal(crew_ctx_with_cancel(p, &r1.c), 0);
    assert_int_equal(crew_ctx_with_cancel(p, &r2.c), 0);
    assert_int_equal(crew_ctx_on_cancel(p, log_hook, &tail, NULL), 0);
    crew_ctx_cancel(p, 0);
    assert_true(crew__event_is_set(&r1.done) && crew__event_is_set(&r2.done));
    assert_int_equal(atomic_load(&tail.calls), 1);
    crew_ctx_release(p);

    /* The same on the timer thread. */
    crew__event_init(&r.done);
    assert_int_equal(crew_ctx_with_timeout(NULL, 5 * CREW_MSEC, &r.c), 0);
    assert_int_equal(crew_ctx_on_cancel(r.c, release_hook, &r, NULL), 0);
    assert_int_equal(crew__event_wait(&r.done, CREW_FOREVER), 0);
}

static void test_enomem(void **state)
{
    (void)state;
    crew_ctx *c, *p;
    crew_ctx_hook *h;
    hook_log l = {0};
    assert_int_equal(crew_ctx_with_cancel(NULL, &p), 0);

    crew__test_fail_after(1);
    assert_int_equal(crew_ctx_with_cancel(p, &c), CREW_ENOMEM);
    crew__test_fail_after(1);
    assert_int_equal(crew_ctx_with_deadline(p, crew_deadline_in(CREW_SEC), &c), CREW_ENOMEM);
    crew__test_fail_after(1);
    assert_int_equal(crew_ctx_with_timeout(p, CREW_SEC, &c), CREW_ENOMEM);
    crew__test_fail_after(1);
    assert_int_equal(crew_ctx_on_cancel(p, log_hook, &l, &h), CREW_ENOMEM);
    crew__test_fail_after(1);
    assert_int_equal(crew_ctx_on_cancel(p, log_hook, &l, NULL), CREW_ENOMEM);
    crew__test_fail_after(0);
    /* A failed registration never runs: not now, not at the cancel. */
    crew_ctx_cancel(p, 0);
    assert_int_equal(atomic_load(&l.calls), 0);
    crew_ctx_release(p);

    /* Every allocation of a ctx with a deadline failing in turn: each failure is clean. */
    assert_int_equal(crew_ctx_with_cancel(NULL, &p), 0);
    for (long n = 1;; n++) {
        crew__test_fail_after(n);
        int rc = crew_ctx_with_timeout(p, CREW_SEC, &c);
        crew__test_fail_after(0);
        if (rc == 0) {
            crew_ctx_release(c);
            break;
        }
        assert_true(rc == CREW_ENOMEM || rc == CREW_EAGAIN);
        assert_true(n < 10);
    }
    crew_ctx_release(p);
}

static void test_timer_thread_fails(void **state)
{
    (void)state;
    int threads = thread_count();
    crew_ctx *p, *c;
    /* Use the timer once, so that its heap exists, then let its thread exit. */
    assert_int_equal(crew_ctx_with_timeout(NULL, CREW_SEC, &c), 0);
    crew_ctx_release(c);
    wait_threads_at_most(threads);

    /* Allocation 1 is the ctx, 2 the timer thread: CREW_EAGAIN, nothing left behind. */
    assert_int_equal(crew_ctx_with_cancel(NULL, &p), 0);
    crew__test_fail_after(2);
    assert_int_equal(crew_ctx_with_timeout(p, CREW_SEC, &c), CREW_EAGAIN);
    crew__test_fail_after(0);
    /* The embedded ctx allocates nothing but the thread. */
    void *mem = crew__aligned_alloc(64, crew__ctx_sizeof());
    assert_non_null(mem);
    crew__test_fail_after(1);
    assert_int_equal(crew__ctx_init_child(mem, p, crew_deadline_in(CREW_SEC)), CREW_EAGAIN);
    crew__test_fail_after(0);
    /* Nothing was registered on p by the failures. */
    hook_log l = {0};
    assert_int_equal(crew_ctx_on_cancel(p, log_hook, &l, NULL), 0);
    crew_ctx_cancel(p, 0);
    assert_int_equal(atomic_load(&l.calls), 1);
    /* And it works once threads can be created again. */
    assert_int_equal(crew__ctx_init_child(mem, NULL, crew_deadline_in(CREW_SEC)), 0);
    assert_false(crew_ctx_done(mem));
    crew__ctx_fini_child(mem);
    crew__free(mem);
    crew_ctx_release(p);
}

static void test_embedded(void **state)
{
    (void)state;
    crew_ctx *e = crew__aligned_alloc(64, crew__ctx_sizeof());
    assert_non_null(e);
    crew_ctx *p;
    assert_int_equal(crew_ctx_with_cancel(NULL, &p), 0);

    assert_int_equal(crew__ctx_init_child(e, p, CREW_FOREVER), 0);
    assert_false(crew_ctx_done(e));
    assert_true(crew_ctx_deadline(e) == CREW_FOREVER);
    /* Retain and release do nothing. */
    assert_ptr_equal(crew_ctx_retain(e), e);
    crew_ctx_release(e);
    crew_ctx_release(e);
    assert_false(crew_ctx_done(e));
    crew__ctx_fini_child(e);

    /* Its deadline fires. */
    assert_int_equal(crew__ctx_init_child(e, p, crew_deadline_in(20 * CREW_MSEC)), 0);
    assert_int_equal(crew_ctx_wait(e, CREW_FOREVER), 0);
    assert_int_equal(crew_ctx_err(e), CREW_ETIMEDOUT);
    assert_false(crew_ctx_done(p));
    crew__ctx_fini_child(e);

    /* Its parent's cancel reaches it, and through it a child of its own. */
    assert_int_equal(crew__ctx_init_child(e, p, crew_deadline_in(3600 * CREW_SEC)), 0);
    assert_false(crew_ctx_done(e));
    crew_ctx *sub;
    assert_int_equal(crew_ctx_with_cancel(e, &sub), 0);
    crew_ctx_cancel(p, CREW_ESHUTDOWN);
    assert_int_equal(crew_ctx_cause(e), CREW_ESHUTDOWN);
    assert_int_equal(crew_ctx_cause(sub), CREW_ESHUTDOWN);
    crew_ctx_release(sub);
    crew__ctx_fini_child(e);

    /* Born done under a done parent; born timed out with a past deadline. */
    assert_int_equal(crew__ctx_init_child(e, p, CREW_FOREVER), 0);
    assert_int_equal(crew_ctx_cause(e), CREW_ESHUTDOWN);
    crew__ctx_fini_child(e);
    assert_int_equal(crew__ctx_init_child(e, NULL, CREW_NOW), 0);
    assert_int_equal(crew_ctx_err(e), CREW_ETIMEDOUT);
    crew__ctx_fini_child(e);

    /* Under background; hooks left at fini: fire-and-forget freed (LSan), a handle
     * orphaned (its remove reports it never ran). */
    hook_log l = {0};
    crew_ctx_hook *h;
    assert_int_equal(crew__ctx_init_child(e, NULL, CREW_FOREVER), 0);
    assert_int_equal(crew_ctx_on_cancel(e, log_hook, &l, NULL), 0);
    assert_int_equal(crew_ctx_on_cancel(e, log_hook, &l, &h), 0);
    crew__ctx_fini_child(e);
    assert_true(crew_ctx_hook_remove(h));
    assert_int_equal(atomic_load(&l.calls), 0);
    /* A cancel of its own fires its hooks. */
    assert_int_equal(crew__ctx_init_child(e, NULL, CREW_FOREVER), 0);
    assert_int_equal(crew_ctx_on_cancel(e, log_hook, &l, NULL), 0);
    crew_ctx_cancel(e, 0);
    assert_int_equal(atomic_load(&l.calls), 1);
    crew__ctx_fini_child(e);

    crew_ctx_release(p);
    crew__free(e);
}

static void test_embedded_no_alloc(void **state)
{
    (void)state;
    crew_ctx *e = crew__aligned_alloc(64, crew__ctx_sizeof());
    crew_ctx *p, *keep;
    assert_int_equal(crew_ctx_with_cancel(NULL, &p), 0);
    /* Keeps the timer thread running, as a busy pool would. */
    assert_int_equal(crew_ctx_with_timeout(NULL, 3600 * CREW_SEC, &keep), 0);
    assert_int_equal(crew__ctx_init_child(e, p, crew_deadline_in(3600 * CREW_SEC)), 0);
    crew__ctx_fini_child(e);

    uint64_t before = crew__test_alloc_count();
    for (int i = 0; i < 10000; i++) {
        int64_t d = i % 2 ? crew_deadline_in(3600 * CREW_SEC) : CREW_FOREVER;
        assert_int_equal(crew__ctx_init_child(e, p, d), 0);
        if (i % 100 == 0)
            crew_ctx_cancel(e, 0);
        crew__ctx_fini_child(e);
    }
    assert_true(crew__test_alloc_count() == before);
    crew_ctx_release(keep);
    crew_ctx_release(p);
    crew__free(e);
}

/* Cancels whatever ctx appears in its slot, then empties the slot. */
typedef struct canceller {
    _Atomic(crew_ctx *) slot;
    _Atomic int stop;
} canceller;

static void *canceller_main(void *arg)
{
    canceller *k = arg;
    while (!atomic_load(&k->stop)) {
        crew_ctx *c = atomic_load(&k->slot);
        if (!c) {
            sched_yield();
            continue;
        }
        crew_ctx_cancel(c, CREW_ESHUTDOWN);
        atomic_store(&k->slot, NULL);
    }
    return NULL;
}

static void test_embedded_concurrent_cancel(void **state)
{
    (void)state;
    crew_ctx *e = crew__aligned_alloc(64, crew__ctx_sizeof());
    canceller k = {.slot = NULL, .stop = 0};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, canceller_main, &k), 0);
    int prevented = 0, fired = 0;
    for (int i = 0; i < 2000; i++) {
        crew_ctx *p;
        hook_log l = {0};
        crew_ctx_hook *h;
        assert_int_equal(crew_ctx_with_cancel(NULL, &p), 0);
        int64_t d = i % 3 == 0 ? crew_deadline_in(CREW_MSEC) : CREW_FOREVER;
        assert_int_equal(crew__ctx_init_child(e, p, d), 0);
        assert_int_equal(crew_ctx_on_cancel(e, log_hook, &l, &h), 0);
        atomic_store(&k.slot, p);
        /* Vary the moment we leave: at once, after the cancel, or somewhere in between;
         * and remove the hook before the fini (as a job would) or after it. */
        int mode = i % 4;
        if (mode == 1)
            while (!crew_ctx_done(e))
                sched_yield();
        else if (mode >= 2)
            for (int j = 0; j < i % 7; j++)
                sched_yield();
        if (mode == 3)
            crew__ctx_fini_child(e);
        bool removed = crew_ctx_hook_remove(h);
        if (removed) {
            prevented++;
            assert_int_equal(atomic_load(&l.calls), 0);
        } else {
            fired++;
            assert_int_equal(atomic_load(&l.calls), 1);
        }
        if (mode != 3)
            crew__ctx_fini_child(e);
        while (atomic_load(&k.slot))
            sched_yield();
        assert_true(crew_ctx_done(p));
        /* Removed means done with: nothing ran after the remove. */
        assert_int_equal(atomic_load(&l.calls), removed ? 0 : 1);
        crew_ctx_release(p);
    }
    atomic_store(&k.stop, 1);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(prevented + fired, 2000);
    print_message("hooks prevented %d, fired %d\n", prevented, fired);
    crew__free(e);
}

typedef struct racer {
    crew_ctx *c;
    int cause;
    _Atomic int *go;
} racer;

static void *racer_main(void *arg)
{
    racer *r = arg;
    while (!atomic_load(r->go))
        sched_yield();
    crew_ctx_cancel(r->c, r->cause);
    return NULL;
}

static void test_concurrent_cancel(void **state)
{
    (void)state;
    static const int causes[] = {CREW_EPIPE, CREW_ESHUTDOWN, CREW_EBUSY, CREW_ETIMEDOUT};
    for (int round = 0; round < 50; round++) {
        crew_ctx *c, *child;
        hook_log l = {0};
        assert_int_equal(crew_ctx_with_cancel(NULL, &c), 0);
        assert_int_equal(crew_ctx_with_cancel(c, &child), 0);
        assert_int_equal(crew_ctx_on_cancel(c, log_hook, &l, NULL), 0);
        assert_int_equal(crew_ctx_on_cancel(child, log_hook, &l, NULL), 0);
        _Atomic int go = 0;
        racer r[4];
        pthread_t t[4];
        for (int i = 0; i < 4; i++) {
            r[i] = (racer){.c = i % 2 ? child : c, .cause = causes[i], .go = &go};
            assert_int_equal(pthread_create(&t[i], NULL, racer_main, &r[i]), 0);
        }
        atomic_store(&go, 1);
        for (int i = 0; i < 4; i++)
            assert_int_equal(pthread_join(t[i], NULL), 0);
        /* Each ctx ran its hook once, with the cause of one of its cancellers. */
        assert_int_equal(atomic_load(&l.calls), 2);
        int cc = crew_ctx_cause(c);
        assert_true(cc == CREW_EPIPE || cc == CREW_EBUSY);
        int kc = crew_ctx_cause(child);
        assert_true(kc == cc || kc == CREW_ESHUTDOWN || kc == CREW_ETIMEDOUT);
        assert_int_equal(crew_ctx_err(child),
                         kc == CREW_ETIMEDOUT ? CREW_ETIMEDOUT : CREW_ECANCELED);
        crew_ctx_release(c);
        crew_ctx_release(child);
    }
}
int main(void)
{
    const struct CMUnitTest tests[] = {
        leak_test(test_background),
        leak_test(test_cancel_basic),
        leak_test(test_tree),
        leak_test(test_deep_chain),
        leak_test(test_many_children),
        leak_test(test_deadline_fires),
        leak_test(test_deadline_past),
        leak_test(test_deadline_inherit),
        leak_test(test_wait),
        leak_test(test_watch_unwatch),
        leak_test(test_on_cancel),
        leak_test(test_hook_remove_inside),
        leak_test(test_hook_remove_waits),
        leak_test(test_release_order),
        leak_test(test_enomem),
        leak_test(test_timer_thread_fails),
        leak_test(test_embedded),
        leak_test(test_embedded_no_alloc),
        leak_test(test_embedded_concurrent_cancel),
        leak_test(test_concurrent_cancel),
    };
    return cmocka_run_group_tests_name("ctx", tests, NULL, NULL);
}
