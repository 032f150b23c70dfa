/*
 * Stress test for src/ctx.c and src/timer.c: several threads, for a few seconds, build
 * trees of contexts with random deadlines, cancel random nodes (their own and other
 * threads'), register and remove hooks, wait with random deadlines, use an embedded ctx,
 * and release in random order. Every hook must fire exactly once or be removed before
 * firing; ASan/LSan check that everything is freed once, TSan that nothing races.
 * CREW_STRESS_SCALE scales the running time.
 */
#include "internal.h"
#include "testutil.h"

#include <pthread.h>
#include <sched.h>
#include <string.h>

#define THREADS   4
#define SLOTS     48   /* live contexts a thread keeps */
#define SHARED    16   /* contexts published for other threads to cancel */
#define MAX_HOOKS 1024 /* hooks per round */
#define OPS       300  /* operations per round */

/* Failures seen in worker threads (cmocka's asserts belong to the main thread). */
static _Atomic int failures;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            atomic_fetch_add(&failures, 1);                                                        \
            print_error("check failed: %s (line %d)\n", #cond, __LINE__);                          \
        }                                                                                          \
    } while (0)

/* Contexts any thread may cancel; each slot holds a reference. */
static struct {
    pthread_mutex_t mu;
    crew_ctx *c[SHARED];
} shared = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* What became of one hook. */
typedef struct rec {
    _Atomic int fired; /* calls of its function */
    bool handle;       /* registered with a handle (else fire-and-forget) */
    bool removed;      /* its remove returned true */
} rec;

static void rec_hook(void *arg, int err)
{
    rec *r = arg;
    CHECK(err == CREW_ECANCELED || err == CREW_ETIMEDOUT);
    atomic_fetch_add(&r->fired, 1);
}

typedef struct stats {
    long rounds, ctxs, cancels, hooks, removed, waits, embedded, timed_out;
} stats;

typedef struct worker {
    uint64_t seed;
    int64_t until;
    stats st;
} worker;

/* One thread's round: a tree rooted at a fresh ctx, random operations, then teardown. */
typedef struct round {
    uint64_t *seed;
    crew_ctx *slot[SLOTS];
    int nff[SLOTS]; /* fire-and-forget hooks registered on slot's ctx */
    rec *recs;
    int nrecs;
    struct {
        crew_ctx_hook *h;
        rec *r;
    } handles[MAX_HOOKS];
    int nhandles;
    crew_ctx *embedded; /* crew__ctx_sizeof() bytes */
    stats *st;
} round;

static int pick(round *r, int n)
{
    return (int)(rng_next(r->seed) % (uint64_t)n);
}

/* A random live slot (slot 0, the root, is always live). */
static int pick_live(round *r)
{
    for (int tries = 0; tries < 8; tries++) {
        int i = pick(r, SLOTS);
        if (r->slot[i])
            return i;
    }
    return 0;
}

static int64_t random_deadline(round *r)
{
    switch (pick(r, 4)) {
    case 0:
        return CREW_FOREVER;
    case 1:
        return CREW_NOW;
    default:
        return crew_deadline_in((int64_t)pick(r, 5000) * CREW_USEC);
    }
}

static rec *new_rec(round *r, bool handle)
{
    if (r->nrecs == MAX_HOOKS)
        return NULL;
    rec *x = &r->recs[r->nrecs++];
    atomic_init(&x->fired, 0);
    x->handle = handle;
    x->removed = false;
    return x;
}

static void remove_handle(round *r, int k)
{
    rec *x = r->handles[k].r;
    if (crew_ctx_hook_remove(r->handles[k].h)) {
        x->removed = true;
        r->st->removed++;
        CHECK(atomic_load(&x->fired) == 0);
    } else {
        /* It ran, and remove waited until it had returned. */
        CHECK(atomic_load(&x->fired) == 1);
    }
    r->handles[k] = r->handles[--r->nhandles];
}

static void op_child(round *r)
{
    int free_slot = -1;
    for (int i = 1; i < SLOTS && free_slot < 0; i++)
        if (!r->slot[i])
            free_slot = i;
    if (free_slot < 0)
        return;
    int p = pick_live(r);
    crew_ctx *c, *parent = r->slot[p];
    int64_t d = pick(r, 2) ? random_deadline(r) : CREW_FOREVER;
    bool parent_done = crew_ctx_done(parent);
    int rc = d == CREW_FOREVER && pick(r, 2) ? crew_ctx_with_cancel(parent, &c)
                                             : crew_ctx_with_deadline(parent, d, &c);
    CHECK(rc == 0);
    if (rc)
        return;
    /* The effective deadline is the earlier one; a done parent gives a done child. */
    int64_t pd = crew_ctx_deadline(parent);
    int64_t want = d == CREW_FOREVER ? pd : pd == CREW_FOREVER ? d : d < pd ? d : pd;
    CHECK(crew_ctx_deadline(c) == want);
    if (parent_done)
        CHECK(crew_ctx_done(c) && crew_ctx_cause(c) == crew_ctx_cause(parent));
    r->slot[free_slot] = c;
    r->nff[free_slot] = 0;
    r->st->ctxs++;
}

static void op_hook(round *r, bool handle)
{
    int i = pick_live(r);
    if (handle && r->nhandles == MAX_HOOKS)
        return;
    rec *x = new_rec(r, handle);
    if (!x)
        return;
    crew_ctx_hook *h = NULL;
    int rc = crew_ctx_on_cancel(r->slot[i], rec_hook, x, handle ? &h : NULL);
    CHECK(rc == 0);
    r->st->hooks++;
    if (handle) {
        r->handles[r->nhandles].h = h;
        r->handles[r->nhandles].r = x;
        r->nhandles++;
    } else {
        r->nff[i]++;
    }
}

static void op_wait(round *r)
{
    crew_ctx *c = r->slot[pick_live(r)];
    int64_t d = pick(r, 3) ? crew_deadline_in((int64_t)pick(r, 1000) * CREW_USEC) : CREW_NOW;
    int rc = crew_ctx_wait(c, d);
    CHECK(rc == 0 || rc == CREW_ETIMEDOUT);
    if (rc == 0)
        CHECK(crew_ctx_done(c) && crew_ctx_err(c) != 0);
    if (crew_ctx_err(c) == CREW_ETIMEDOUT)
        r->st->timed_out++;
    r->st->waits++;
}

/* Drops a slot's reference: only once its fire-and-forget hooks are settled (it is done,
 * so they fired) or if it has none, so that every such hook is accounted for. Its
 * children (and shared slots) keep it alive as needed. */
static void op_release(round *r)
{
    int i = 1 + pick(r, SLOTS - 1);
    if (!r->slot[i] || (r->nff[i] && !crew_ctx_done(r->slot[i])))
        return;
    crew_ctx_release(r->slot[i]);
    r->slot[i] = NULL;
}

static void op_publish(round *r)
{
    crew_ctx *c = crew_ctx_retain(r->slot[pick_live(r)]);
    int j = pick(r, SHARED);
    crew__check(pthread_mutex_lock(&shared.mu));
    crew_ctx *old = shared.c[j];
    shared.c[j] = c;
    crew__check(pthread_mutex_unlock(&shared.mu));
    crew_ctx_release(old); /* may free another thread's ctx, here */
}

static void op_cancel_shared(round *r)
{
    int j = pick(r, SHARED);
    crew__check(pthread_mutex_lock(&shared.mu));
    crew_ctx *c = crew_ctx_retain(shared.c[j]);
    crew__check(pthread_mutex_unlock(&shared.mu));
    if (!c)
        return;
    crew_ctx_cancel(c, CREW_ESHUTDOWN);
    CHECK(crew_ctx_done(c));
    crew_ctx_release(c);
    r->st->cancels++;
}

/* The pool's per-job pattern: an embedded ctx under a random node, used and torn down. */
static void op_embedded(round *r)
{
    crew_ctx *p = r->slot[pick_live(r)];
    int rc = crew__ctx_init_child(r->embedded, p, random_deadline(r));
    CHECK(rc == 0);
    if (rc)
        return;
    r->st->embedded++;
    rec *x = new_rec(r, true);
    crew_ctx_hook *h = NULL;
    if (x)
        CHECK(crew_ctx_on_cancel(r->embedded, rec_hook, x, &h) == 0);
    if (pick(r, 2))
        (void)crew_ctx_wait(r->embedded, crew_deadline_in((int64_t)pick(r, 500) * CREW_USEC));
    if (pick(r, 4) == 0)
        crew_ctx_cancel(r->embedded, 0);
    if (h) {
        bool removed = crew_ctx_hook_remove(h);
        x->removed = removed;
        CHECK(atomic_load(&x->fired) == (removed ? 0 : 1));
    }
    crew__ctx_fini_child(r->embedded);
}

static void run_round(round *r)
{
    memset(r->slot, 0, sizeof r->slot);
    r->nrecs = 0;
    r->nhandles = 0;
    CHECK(crew_ctx_with_cancel(NULL, &r->slot[0]) == 0);
    r->nff[0] = 0;
    for (int op = 0; op < OPS; op++) {
        switch (pick(r, 12)) {
        case 0:
        case 1:
        case 2:
            op_child(r);
            break;
        case 3:
            crew_ctx_cancel(r->slot[pick_live(r)], pick(r, 2) ? 0 : CREW_EPIPE);
            r->st->cancels++;
            break;
        case 4:
            op_hook(r, false);
            break;
        case 5:
            op_hook(r, true);
            break;
        case 6:
            if (r->nhandles)
                remove_handle(r, pick(r, r->nhandles));
            break;
        case 7:
            op_wait(r);
            break;
        case 8:
            op_release(r);
            break;
        case 9:
            op_publish(r);
            break;
        case 10:
            op_cancel_shared(r);
            break;
        default:
            op_embedded(r);
            break;
        }
    }

    /* Teardown: cancel the root (so every fire-and-forget hook of the tree fires), remove
     * the handles, release the slots in random order. */
    crew_ctx_cancel(r->slot[0], 0);
    /* A node may not be done yet: another thread may have won the cancel of one of its
     * ancestors and still be on its way down (cancel never waits for other cancels).
     * Releasing it before that cancel reaches it would free its hooks unfired, legally but
     * beyond this count, so wait for it, with a generous bound. */
    int64_t until = crew_now() + 10 * CREW_SEC;
    for (int i = 0; i < SLOTS; i++) {
        if (!r->slot[i])
            continue;
        while (!crew_ctx_done(r->slot[i]) && crew_now() < until)
            sched_yield();
        CHECK(crew_ctx_done(r->slot[i]));
    }
    while (r->nhandles)
        remove_handle(r, pick(r, r->nhandles));
    for (int n = 0; n < SLOTS * 4; n++) {
        int i = pick(r, SLOTS);
        crew_ctx_release(r->slot[i]);
        r->slot[i] = NULL;
    }
    for (int i = 0; i < SLOTS; i++)
        crew_ctx_release(r->slot[i]);

    /* Every hook fired exactly once or was removed unfired. A cancel that another thread
     * won may still be running this tree's hooks: wait for them, with a generous bound. */
    for (int i = 0; i < r->nrecs; i++) {
        rec *x = &r->recs[i];
        if (x->removed) {
            CHECK(atomic_load(&x->fired) == 0);
            continue;
        }
        while (atomic_load(&x->fired) == 0 && crew_now() < until)
            sched_yield();
        CHECK(atomic_load(&x->fired) == 1);
    }
    r->st->rounds++;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    round *r = calloc(1, sizeof *r);
    r->seed = &w->seed;
    r->st = &w->st;
    r->recs = calloc(MAX_HOOKS, sizeof *r->recs);
    r->embedded = crew__aligned_alloc(64, crew__ctx_sizeof());
    while (crew_now() < w->until)
        run_round(r);
    crew__free(r->embedded);
    free(r->recs);
    free(r);
    return NULL;
}

static void stress_ctx(void **state)
{
    (void)state;
    int64_t run = stress_scaled(3000) * CREW_MSEC;
    worker w[THREADS];
    pthread_t t[THREADS];
    int64_t until = crew_now() + run;
    for (int i = 0; i < THREADS; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].seed = 0x9E3779B97F4A7C15ULL * (uint64_t)(i + 1);
        w[i].until = until;
        assert_int_equal(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
    }
    stats sum = {0};
    for (int i = 0; i < THREADS; i++) {
        assert_int_equal(pthread_join(t[i], NULL), 0);
        sum.rounds += w[i].st.rounds;
        sum.ctxs += w[i].st.ctxs;
        sum.cancels += w[i].st.cancels;
        sum.hooks += w[i].st.hooks;
        sum.removed += w[i].st.removed;
        sum.waits += w[i].st.waits;
        sum.embedded += w[i].st.embedded;
        sum.timed_out += w[i].st.timed_out;
    }
    for (int j = 0; j < SHARED; j++) {
        crew_ctx_release(shared.c[j]);
        shared.c[j] = NULL;
    }
    print_message("rounds %ld, contexts %ld, cancels %ld, hooks %ld (removed %ld), waits %ld "
                  "(on timed-out %ld), embedded %ld\n",
                  sum.rounds, sum.ctxs, sum.cancels, sum.hooks, sum.removed, sum.waits,
                  sum.timed_out, sum.embedded);
    assert_int_equal(atomic_load(&failures), 0);
    assert_true(sum.rounds >= THREADS);
    assert_true(sum.hooks > 0 && sum.removed > 0 && sum.timed_out > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        leak_test(stress_ctx),
    };
    return cmocka_run_group_tests_name("stress_ctx", tests, NULL, NULL);
}
