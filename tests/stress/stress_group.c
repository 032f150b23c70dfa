/*
 * stress_group - error groups under fire. Each round builds a group with random settings
 * (its own pool or a caller's of 1..4 workers, a limit or none, fail-fast or all errors)
 * and has several submitter threads add tasks with every go form (blocking, try, deadline,
 * a shared ctx a chaos thread keeps cancelling, a per-call timeout), while a waiter thread
 * calls wait with random deadlines and the chaos thread may cancel the group's parent ctx,
 * the group's ctx or the whole pool. A second test nests groups on one small pool, three
 * levels deep, with failures and cancels.
 *
 * What must hold: every task whose go returned 0 was run or discarded, exactly once; no
 * refused task ever ran; never more tasks inside their function than the limit; the group's
 * result is nonzero exactly when some task failed or was not run, and it is the outcome of
 * such a task; with all errors, crew_group_errors lists exactly the tasks that failed or
 * were not run, by increasing index, with their outcome; calls return only codes their form
 * allows. Helper threads never assert: they count violations, checked after joining them.
 * CREW_STRESS_SEED replays a run; CREW_STRESS_SCALE scales it.
 */
#include "chaos.h"
#include "internal.h"
#include "testutil.h"

#include <string.h>

#define SUBMITTERS 3

enum { QUICK, FAIL, LINGER };                         /* what a task does */
enum { FOREVER, TRY, DEADLINE, SHARED, TIMEOUT_CTX }; /* how it is added */

typedef struct taskrec {
    struct world *w;
    int kind;             /* QUICK, FAIL or LINGER */
    _Atomic int accepted; /* go returned 0 */
    _Atomic int ran;      /* fn was called */
    _Atomic int dropped;  /* the discard callback was called */
    int outcome;          /* what fn returned, or the discard reason */
} taskrec;

typedef struct world {
    crew_group *g;
    crew_pool *pool;  /* a caller's pool, or NULL */
    crew_ctx *parent; /* the group's parent ctx */
    taskrec *tasks;
    long per_submitter;
    unsigned limit;
    bool all_errors;
    int chaos_kind;          /* 0 none, 1 parent, 2 group ctx, 3 pool */
    _Atomic int inside;      /* tasks inside their function now */
    _Atomic int peak;        /* the most at once */
    _Atomic int submitting;  /* submitters still running */
    _Atomic long violations; /* broken rules seen by helper threads */
    pthread_mutex_t gmu;     /* guards shared */
    crew_ctx *shared;        /* the ctx chaos keeps cancelling: under gmu */
    uint64_t seed;
} world;

static void violation(world *w, const char *what, long a, long b)
{
    if (atomic_fetch_add(&w->violations, 1) < 10)
        fprintf(stderr, "violation: %s (%ld, %ld), seed %llu\n", what, a, b,
                (unsigned long long)w->seed);
}

static int task_fn(crew_ctx *ctx, void *arg)
{
    taskrec *t = arg;
    world *w = t->w;
    if (atomic_fetch_add(&t->ran, 1) != 0)
        violation(w, "a task ran twice", (long)(t - w->tasks), 0);
    int in = atomic_fetch_add(&w->inside, 1) + 1;
    int peak = atomic_load(&w->peak);
    while (in > peak && !atomic_compare_exchange_weak(&w->peak, &peak, in))
        ;
    int rc = 0;
    if (t->kind == FAIL) {
        rc = CREW_EBUSY;
    } else if (t->kind == LINGER) {
        if (crew_ctx_wait(ctx, crew_deadline_in(100 * CREW_USEC)) == 0)
            rc = crew_ctx_err(ctx);
    }
    atomic_fetch_sub(&w->inside, 1);
    t->outcome = rc;
    return rc;
}

static void discard_fn(crew_job_fn fn, void *arg, int reason)
{
    taskrec *t = arg;
    world *w = t->w;
    if (fn != task_fn)
        violation(w, "discard of a foreign function", 0, 0);
    if (reason != CREW_ECANCELED && reason != CREW_ETIMEDOUT)
        violation(w, "discard reason", reason, 0);
    if (atomic_fetch_add(&t->dropped, 1) != 0)
        violation(w, "a task was discarded twice", (long)(t - w->tasks), 0);
    t->outcome = reason;
}

static bool go_allowed(int mode, int rc)
{
    switch (rc) {
    case 0:
    case CREW_ECANCELED: /* the group's ctx (or, SHARED, the caller's) */
    case CREW_ETIMEDOUT: /* a parent with a deadline never happens; TIMEOUT_CTX, DEADLINE */
    case CREW_ESHUTDOWN: /* the pool was cancelled */
        return rc != CREW_ETIMEDOUT || mode == DEADLINE || mode == TIMEOUT_CTX;
    case CREW_EAGAIN:
        return mode == TRY || mode == DEADLINE;
    default:
        return false;
    }
}

typedef struct actor {
    world *w;
    int idx;
    uint64_t seed;
    pthread_t tid;
} actor;

static void *submitter(void *arg)
{
    actor *a = arg;
    world *w = a->w;
    for (long i = 0; i < w->per_submitter; i++) {
        long id = a->idx * w->per_submitter + i;
        taskrec *t = &w->tasks[id];
        uint64_t x = rng_next(&a->seed);
        t->kind = x % 64 == 0 ? FAIL : x % 64 < 12 ? LINGER : QUICK;
        int mode = (int)((x >> 8) % 100);
        mode = mode < 40   ? FOREVER
               : mode < 55 ? TRY
               : mode < 75 ? DEADLINE
               : mode < 90 ? SHARED
                           : TIMEOUT_CTX;
        int64_t deadline = CREW_FOREVER;
        crew_ctx *ctx = NULL;
        if (mode == TRY)
            deadline = CREW_NOW;
        else if (mode == DEADLINE)
            deadline = crew_deadline_in((int64_t)((x >> 20) % (300 * CREW_USEC)));
        else if (mode == SHARED) {
            crew__check(pthread_mutex_lock(&w->gmu));
            ctx = crew_ctx_retain(w->shared);
            crew__check(pthread_mutex_unlock(&w->gmu));
        } else if (mode == TIMEOUT_CTX &&
                   crew_ctx_with_timeout(NULL, 1 + (int64_t)((x >> 20) % (300 * CREW_USEC)),
                                         &ctx) != 0) {
            violation(w, "crew_ctx_with_timeout failed", 0, 0);
            continue;
        }
        /* Accepted is set before the call: the task may run before go returns. */
        atomic_store(&t->accepted, 1);
        int rc = crew_group_go(w->g, task_fn, t, deadline, ctx);
        if (rc != 0)
            atomic_store(&t->accepted, 0);
        if (ctx)
            crew_ctx_release(ctx);
        if (!go_allowed(mode, rc))
            violation(w, "go returned an unexpected code", mode, rc);
        if (rc == CREW_EAGAIN)
            sched_yield();
    }
    atomic_fetch_sub(&w->submitting, 1);
    return NULL;
}

/* Waits with random deadlines while the submitters run. */
static void *waiter(void *arg)
{
    actor *a = arg;
    world *w = a->w;
    while (atomic_load(&w->submitting) > 0) {
        uint64_t x = rng_next(&a->seed);
        int64_t deadline = x % 4 == 0 ? CREW_NOW : crew_deadline_in((int64_t)(x % CREW_MSEC));
        int rc = crew_group_wait(w->g, deadline, NULL);
        if (rc != 0 && rc != CREW_EAGAIN && rc != CREW_ETIMEDOUT && rc != CREW_ECANCELED &&
            rc != CREW_EBUSY)
            violation(w, "wait returned an unexpected code", rc, 0);
        sched_yield();
    }
    return NULL;
}

static _Atomic long big_cancels;

/* Cancels the shared ctx again and again; once, at a random moment, does the round's big
 * cancel (parent, group ctx, or pool). */
static void *chaos_thread(void *arg)
{
    actor *a = arg;
    world *w = a->w;
    long big_at = (long)(rng_next(&a->seed) % 40);
    for (long n = 0; atomic_load(&w->submitting) > 0; n++) {
        struct timespec ts = {0, (long)(20 * CREW_USEC + rng_next(&a->seed) % (200 * CREW_USEC))};
        nanosleep(&ts, NULL); /* pacing the cancels, not synchronising */
        if (chaos_replace_ctx(&w->gmu, &w->shared) != 0) {
            violation(w, "crew_ctx_with_cancel failed", 0, 0);
            break;
        }
        if (n == big_at) {
            atomic_fetch_add(&big_cancels, 1);
            if (w->chaos_kind == 1)
                crew_ctx_cancel(w->parent, 0);
            else if (w->chaos_kind == 2)
                crew_ctx_cancel(crew_group_ctx(w->g), CREW_EBUSY);
            else if (w->chaos_kind == 3 && w->pool)
                (void)crew_pool_cancel(w->pool, 0);
        }
    }
    return NULL;
}

static long total_accepted, total_ran, total_dropped, total_failed;

static void check_round(world *w, long n, int result)
{
    long accepted = 0, nonzero = 0, ran = 0, dropped = 0;
    bool result_seen = result == 0;
    for (long id = 0; id < n; id++) {
        taskrec *t = &w->tasks[id];
        int acc = atomic_load(&t->accepted), r = atomic_load(&t->ran), d = atomic_load(&t->dropped);
        if (acc && r + d != 1)
            fail_msg("seed %llu: accepted task %ld ran %d times, dropped %d times",
                     (unsigned long long)w->seed, id, r, d);
        if (!acc && r + d != 0)
            fail_msg("seed %llu: refused task %ld ran %d, dropped %d", (unsigned long long)w->seed,
                     id, r, d);
        accepted += acc;
        ran += r;
        dropped += d;
        if (acc && t->outcome != 0) {
            nonzero++;
            result_seen = result_seen || t->outcome == result;
        }
    }
    total_accepted += accepted;
    total_ran += ran;
    total_dropped += dropped;
    total_failed += nonzero;
    if ((result != 0) != (nonzero != 0) || !result_seen)
        fail_msg("seed %llu: result %d with %ld failed tasks", (unsigned long long)w->seed, result,
                 nonzero);
    if (w->limit && atomic_load(&w->peak) > (int)w->limit)
        fail_msg("seed %llu: %d tasks inside at once, limit %u", (unsigned long long)w->seed,
                 atomic_load(&w->peak), w->limit);

    size_t cap = (size_t)nonzero + 1;
    crew_group_error *e = calloc(cap, sizeof *e);
    assert_non_null(e);
    size_t count = crew_group_errors(w->g, e, cap);
    if (!w->all_errors) {
        assert_int_equal(count, nonzero ? 1 : 0);
        if (count)
            assert_int_equal(e[0].err, result);
    } else {
        /* Exactly the failed or unrun tasks, by increasing index, with their outcome. */
        assert_int_equal(count, nonzero);
        for (size_t k = 0; k < count; k++) {
            taskrec *t = e[k].arg;
            assert_true(t >= w->tasks && t < w->tasks + n);
            assert_ptr_equal(e[k].fn, task_fn);
            assert_int_equal(e[k].err, t->outcome);
            assert_int_equal(e[k].ran, atomic_load(&t->ran) == 1);
            assert_true(e[k].index < (uint64_t)n);
            if (k)
                assert_true(e[k].index > e[k - 1].index);
        }
        if (count)
            assert_int_equal(result, e[0].err);
    }
    free(e);
    assert_int_equal(crew_group_active(w->g), 0);
}

static void round_(uint64_t seed, long per_submitter)
{
    world w;
    memset(&w, 0, sizeof w);
    w.seed = seed;
    uint64_t x = rng_next(&seed);
    bool own = x % 4 == 0;
    unsigned workers = 1 + (unsigned)((x >> 4) % 4);
    w.limit = (x >> 8) % 3 == 0 ? 0 : 1 + (unsigned)((x >> 12) % 6);
    w.all_errors = (x >> 16) % 2;
    w.chaos_kind = (int)((x >> 20) % 4);
    w.per_submitter = per_submitter;
    long n = per_submitter * SUBMITTERS;
    w.tasks = calloc((size_t)n, sizeof *w.tasks);
    assert_non_null(w.tasks);
    for (long i = 0; i < n; i++)
        w.tasks[i].w = &w;
    if (!own)
        assert_int_equal(crew_pool_create(&w.pool, &(crew_pool_opts){.workers = workers,
                                                                     .queue_cap = 1 + x % 64}),
                         0);
    assert_int_equal(crew_ctx_with_cancel(NULL, &w.parent), 0);
    assert_int_equal(crew_ctx_with_cancel(NULL, &w.shared), 0);
    assert_int_equal(pthread_mutex_init(&w.gmu, NULL), 0);
    assert_int_equal(crew_group_create(&w.g, &(crew_group_opts){.pool = w.pool,
                                                                .ctx = w.parent,
                                                                .limit = w.limit,
                                                                .all_errors = w.all_errors,
                                                                .discard = discard_fn}),
                     0);
    atomic_init(&w.submitting, SUBMITTERS);

    actor sub[SUBMITTERS], wt = {&w, 0, seed ^ 0x5555, 0}, ch = {&w, 0, seed ^ 0xAAAA, 0};
    for (int i = 0; i < SUBMITTERS; i++) {
        sub[i] = (actor){&w, i, seed * 31 + (uint64_t)i + 1, 0};
        assert_int_equal(pthread_create(&sub[i].tid, NULL, submitter, &sub[i]), 0);
    }
    assert_int_equal(pthread_create(&wt.tid, NULL, waiter, &wt), 0);
    assert_int_equal(pthread_create(&ch.tid, NULL, chaos_thread, &ch), 0);
    for (int i = 0; i < SUBMITTERS; i++)
        assert_int_equal(pthread_join(sub[i].tid, NULL), 0);
    assert_int_equal(pthread_join(wt.tid, NULL), 0);
    assert_int_equal(pthread_join(ch.tid, NULL), 0);

    int result = crew_group_wait(w.g, CREW_FOREVER, NULL);
    assert_int_equal(result, crew_group_err(w.g));
    if (atomic_load(&w.violations))
        fail_msg("seed %llu: %ld violations", (unsigned long long)w.seed,
                 (long)atomic_load(&w.violations));
    check_round(&w, n, result);

    crew_group_destroy(w.g);
    crew_pool_destroy(w.pool);
    crew_ctx_release(w.parent);
    crew_ctx_release(w.shared);
    assert_int_equal(pthread_mutex_destroy(&w.gmu), 0);
    free(w.tasks);
}

static void test_rounds(void **state)
{
    (void)state;
    uint64_t seed = stress_seed();
    long rounds = stress_scaled(40);
    printf("stress_group: %ld rounds, seed %llu\n", rounds, (unsigned long long)seed);
    for (long r = 0; r < rounds; r++)
        round_(seed + (uint64_t)r * 0x9E3779B97F4A7C15ull, 500);
    printf("stress_group: %ld accepted, %ld ran, %ld dropped, %ld failed or unrun; %ld big "
           "cancels\n",
           total_accepted, total_ran, total_dropped, total_failed, (long)atomic_load(&big_cancels));
}

/* ---- nested groups on one small pool --------------------------------------------------- */

typedef struct nworld {
    crew_pool *pool;
    _Atomic long leaves_accepted, leaves_ran, leaves_dropped, refused, bad;
    uint64_t seed;
} nworld;

typedef struct node {
    nworld *w;
    int depth;
    uint64_t seed;
} node;

static void leaf_discard(crew_job_fn fn, void *arg, int reason)
{
    (void)fn;
    (void)reason;
    node *n = arg;
    if (n->depth == 0)
        atomic_fetch_add(&n->w->leaves_dropped, 1);
    free(n);
}

/* A level of the tree: a group on the shared pool, a random fan-out and limit, children
 * that are levels or leaves; a leaf fails now and then. Owns and frees its node. */
static int level_fn(crew_ctx *ctx, void *arg)
{
    node *n = arg;
    nworld *w = n->w;
    uint64_t seed = n->seed;
    int depth = n->depth;
    free(n);
    if (depth == 0) {
        atomic_fetch_add(&w->leaves_ran, 1);
        return rng_next(&seed) % 23 == 0 ? CREW_EBUSY : 0;
    }
    crew_group *g;
    unsigned limit = (unsigned)(rng_next(&seed) % 4); /* 0: none */
    if (crew_group_create(&g, &(crew_group_opts){.pool = w->pool,
                                                 .ctx = ctx,
                                                 .limit = limit,
                                                 .all_errors = rng_next(&seed) % 2,
                                                 .discard = leaf_discard}) != 0) {
        atomic_fetch_add(&w->bad, 1);
        return CREW_ENOMEM;
    }
    int fan = 1 + (int)(rng_next(&seed) % 4);
    for (int i = 0; i < fan; i++) {
        node *c = malloc(sizeof *c);
        if (!c) {
            atomic_fetch_add(&w->bad, 1);
            break;
        }
        *c = (node){w, depth - 1, rng_next(&seed)};
        int rc = crew_group_go(g, level_fn, c, CREW_FOREVER, NULL);
        if (rc == 0) {
            if (depth == 1)
                atomic_fetch_add(&w->leaves_accepted, 1);
        } else {
            if (rc != CREW_ECANCELED && rc != CREW_ESHUTDOWN) {
                fprintf(stderr, "go: %s\n", crew_err_name(rc));
                atomic_fetch_add(&w->bad, 1);
            }
            atomic_fetch_add(&w->refused, 1);
            free(c);
        }
    }
    int rc = crew_group_wait(g, CREW_FOREVER, NULL);
    crew_group_destroy(g);
    return rc;
}

static void test_nested(void **state)
{
    (void)state;
    uint64_t seed = stress_seed() ^ 0x1234;
    long rounds = stress_scaled(20);
    for (long r = 0; r < rounds; r++) {
        nworld w;
        memset(&w, 0, sizeof w);
        w.seed = seed + (uint64_t)r;
        uint64_t x = rng_next(&w.seed);
        assert_int_equal(
            crew_pool_create(&w.pool, &(crew_pool_opts){.workers = 1 + (unsigned)(x % 2),
                                                        .queue_cap = 2 + x % 32}),
            0);
        crew_ctx *parent;
        assert_int_equal(crew_ctx_with_cancel(NULL, &parent), 0);
        crew_group *top;
        assert_int_equal(crew_group_create(&top, &(crew_group_opts){.pool = w.pool,
                                                                    .ctx = parent,
                                                                    .all_errors = true,
                                                                    .discard = leaf_discard}),
                         0);
        for (int i = 0; i < 8; i++) {
            node *c = malloc(sizeof *c);
            assert_non_null(c);
            *c = (node){&w, 3, rng_next(&w.seed)};
            assert_int_equal(crew_group_go(top, level_fn, c, CREW_FOREVER, NULL), 0);
        }
        if (x % 3 == 0) /* sometimes cancel the whole tree while it runs */
            crew_ctx_cancel(parent, 0);
        int rc = crew_group_wait(top, CREW_FOREVER, NULL);
        assert_true(rc == 0 || rc == CREW_EBUSY || rc == CREW_ECANCELED);
        assert_int_equal(atomic_load(&w.bad), 0);
        assert_int_equal(atomic_load(&w.leaves_accepted),
                         atomic_load(&w.leaves_ran) + atomic_load(&w.leaves_dropped));
        crew_group_destroy(top);
        crew_ctx_release(parent);
        crew_pool_destroy(w.pool);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        leak_test(test_rounds),
        leak_test(test_nested),
    };
    return cmocka_run_group_tests_name("stress_group", tests, NULL, NULL);
}
