/* Tests for src/pool.c: submit forms, futures, budgets, priorities, shutdowns, scaling,
 * hooks, results, metrics, deadlock avoidance, allocation-free steady state. */
#include "internal.h"
#include "testutil.h"

#include <pthread.h>
#include <string.h>

/* ---- helpers --------------------------------------------------------------------------- */

/* A gate that jobs wait behind until the test opens it (or their ctx is cancelled). */
typedef struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool open;
    _Atomic int inside; /* jobs currently waiting at the gate */
} gate;

static void gate_init(gate *g)
{
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->open = false;
    atomic_init(&g->inside, 0);
}

static void gate_open(gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->open = true;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

static void gate_fini(gate *g)
{
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->cv);
}

/* Waits at the gate; wakes every ms to look at its ctx. Returns the ctx's error if it was
 * cancelled first, else 0. */
static int gate_job(crew_ctx *ctx, void *arg)
{
    gate *g = arg;
    atomic_fetch_add(&g->inside, 1);
    int rc = 0;
    pthread_mutex_lock(&g->mu);
    while (!g->open) {
        if (crew_ctx_done(ctx)) {
            rc = crew_ctx_err(ctx);
            break;
        }
        pthread_mutex_unlock(&g->mu);
        crew_ctx_wait(ctx, crew_deadline_in(CREW_MSEC));
        pthread_mutex_lock(&g->mu);
    }
    pthread_mutex_unlock(&g->mu);
    atomic_fetch_sub(&g->inside, 1);
    return rc;
}

/* Occupies n workers with gate jobs and waits until all n are inside. */
static void saturate(crew_pool *p, gate *g, int n)
{
    for (int i = 0; i < n; i++)
        assert_int_equal(crew_pool_submit(p, gate_job, g, CREW_FOREVER, NULL), 0);
    int64_t until = crew_deadline_in(10 * CREW_SEC);
    while (atomic_load(&g->inside) < n && crew_now() < until)
        sched_yield();
    assert_int_equal(atomic_load(&g->inside), n);
}

/* The preamble of most tests here: a pool made with opts whose first n workers are held
 * inside gate jobs (open g to let them go). */
static crew_pool *gated_pool(gate *g, const crew_pool_opts *opts, int n)
{
    gate_init(g);
    crew_pool *p;
    assert_int_equal(crew_pool_create(&p, opts), 0);
    saturate(p, g, n);
    return p;
}

/* ... and its end: destroy the pool, then the gate its jobs were held at. */
static void gated_pool_destroy(crew_pool *p, gate *g)
{
    crew_pool_destroy(p);
    gate_fini(g);
}

static _Atomic long counter;

static int count_job(crew_ctx *ctx, void *arg)
{
    (void)ctx;
    (void)arg;
    atomic_fetch_add(&counter, 1);
    return 0;
}

static int fail_job(crew_ctx *ctx, void *arg)
{
    (void)ctx;
    (void)arg;
    atomic_fetch_add(&counter, 1);
    return -EIO;
}

static int nop_job(crew_ctx *ctx, void *arg)
{
    (void)ctx;
    (void)arg;
    return 0;
}

/* Waits for the job's ctx to end: a job that honours its run budget. */
static int wait_ctx_job(crew_ctx *ctx, void *arg)
{
    (void)arg;
    crew_ctx_wait(ctx, CREW_FOREVER);
    return crew_ctx_err(ctx);
}

static _Atomic long discarded, discard_reason_sum;

static void count_discard(crew_job_fn fn, void *arg, int reason)
{
    (void)fn;
    (void)arg;
    atomic_fetch_add(&discarded, 1);
    atomic_fetch_add(&discard_reason_sum, reason);
}

static void reset_counts(void)
{
    atomic_store(&counter, 0);
    atomic_store(&discarded, 0);
    atomic_store(&discard_reason_sum, 0);
}

static crew_stats stats_of(crew_pool *p)
{
    crew_stats s;
    assert_int_equal(crew_pool_stats(p, &s), 0);
    return s;
}

/* ---- create ---------------------------------------------------------------------------- */

static void test_create_defaults(void **state)
{
    (void)state;
    crew_pool *p;
    assert_int_equal(crew_pool_create(&p, NULL), 0);
    crew_stats s = stats_of(p);
    assert_int_equal(s.workers, crew_ncpu());
    assert_string_equal(s.name, "pool");
    assert_int_equal(crew_pool_wait(p, CREW_NOW), CREW_EINVAL); /* never shut down */
    assert_null(crew_pool_results(p));
    assert_non_null(crew_pool_ctx(p));
    assert_false(crew_ctx_done(crew_pool_ctx(p)));
    crew_pool_destroy(p);
    crew_pool_destroy(NULL);
}

static void test_create_invalid(void **state)
{
    (void)state;
    crew_pool *p = NULL;
    assert_int_equal(crew_pool_create(NULL, NULL), CREW_EINVAL);
    assert_int_equal(crew_pool_create(&p, &(crew_pool_opts){.queue_cap = (1ull << 30) + 1}),
                     CREW_EINVAL);
    assert_int_equal(crew_pool_create(&p, &(crew_pool_opts){.job_timeout = -1}), CREW_EINVAL);
    assert_int_equal(crew_pool_create(&p, &(crew_pool_opts){.queue_timeout = -1}), CREW_EINVAL);
    assert_int_equal(crew_pool_create(&p, &(crew_pool_opts){.idle_timeout = -1}), CREW_EINVAL);
    assert_int_equal(crew_pool_create(&p, &(crew_pool_opts){.priorities = 65}), CREW_EINVAL);
    assert_int_equal(crew_pool_create(&p, &(crew_pool_opts){.workers = 70000}), CREW_EINVAL);
    assert_null(p);
}

/* Every allocation and thread creation of create fails in turn: each failure returns an
 * error and leaves nothing behind (threads: leak check; bytes: LeakSanitizer). */
static void test_create_enomem(void **state)
{
    (void)state;
    int failures = 0;
    for (long n = 1; n < 100; n++) {
        crew_pool *p = NULL;
        crew__test_fail_after(n);
        int rc =
            crew_pool_create(&p, &(crew_pool_opts){.workers = 2, .queue_cap = 8, .results = true});
        crew__test_fail_after(0);
        if (rc == 0) {
            crew_pool_destroy(p);
            break;
        }
        assert_true(rc == CREW_ENOMEM || rc == CREW_EAGAIN);
        failures++;
    }
    assert_true(failures >= 5); /* pool, rings, results, ctx, worker, thread ... */
}

static _Atomic int inits, finis;

static int init_hook(void *hook_arg, unsigned id, void **st)
{
    atomic_fetch_add(&inits, 1);
    *st = (char *)hook_arg + id;
    return 0;
}

static int init_fail_second(void *hook_arg, unsigned id, void **st)
{
    (void)hook_arg;
    (void)st;
    return id == 1 ? -EIO : 0;
}

static void fini_hook(void *hook_arg, unsigned id, void *st)
{
    assert_ptr_equal(st, (char *)hook_arg + id);
    atomic_fetch_add(&finis, 1);
}

static _Atomic int state_ok;

static int state_job(crew_ctx *ctx, void *arg)
{
    (void)ctx;
    int id = crew_pool_worker_id();
    if (id >= 0 && crew_pool_worker_state() == (char *)arg + id)
        atomic_fetch_add(&state_ok, 1);
    return 0;
}

static void test_worker_hooks(void **state)
{
    (void)state;
    static char base[64];
    atomic_store(&inits, 0);
    atomic_store(&finis, 0);
    atomic_store(&state_ok, 0);
    assert_null(crew_pool_worker_state());
    assert_int_equal(crew_pool_worker_id(), -1);
    crew_pool *p;
    assert_int_equal(crew_pool_create(&p, &(crew_pool_opts){.workers = 3,
                                                            .queue_cap = 64,
                                                            .init = init_hook,
                                                            .fini = fini_hook,
                                                            .hook_arg = base}),
                     0);
    assert_int_equal(atomic_load(&inits), 3);
    for (int i = 0; i < 50; i++)
        assert_int_equal(crew_pool_submit(p, state_job, base, CREW_FOREVER, NULL), 0);
    crew_pool_close(p);
    assert_int_equal(crew_pool_wait(p, CREW_FOREVER), 0);
    assert_int_equal(atomic_load(&state_ok), 50);
    assert_int_equal(atomic_load(&finis), 3);
    crew_pool_destroy(p);

    /* A failing init hook fails create with its error; the started workers are stopped. */
    assert_int_equal(
        crew_pool_create(&p, &(crew_pool_opts){.workers = 3, .init = init_fail_second}), -EIO);
}

/* ---- submit ---------------------------------------------------------------------------- */

static void test_submit_runs_all(void **state)
{
    (void)state;
    reset_counts();
    crew_pool *p;
    assert_int_equal(
        crew_pool_create(
            &p, &(crew_pool_opts){.workers = 4, .queue_cap = 16, .flags = CREW_POOL_TIMING}),
        0);
    for (int i = 0; i < 10000; i++)
        assert_int_equal(
            crew_pool_submit(p, i % 3 ? count_job : fail_job, NULL, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_pool_submit(p, NULL, NULL, CREW_FOREVER, NULL), CREW_EINVAL);
    assert_int_equal(crew_pool_submit(NULL, nop_job, NULL, CREW_FOREVER, NULL), CREW_EINVAL);
    crew_pool_close(p);
    assert_int_equal(crew_pool_wait(p, CREW_FOREVER), 0);
    assert_int_equal(atomic_load(&counter), 10000);
    crew_stats s = stats_of(p);
    assert_int_equal(s.submitted, 10000);
    assert_int_equal(s.started, 10000);
    assert_int_equal(s.failed, 3334); /* a failing job never stops its worker */
    assert_int_equal(s.succeeded, 6666);
    assert_int_equal(s.queued + s.running + s.cancelled + s.timed_out, 0);
    assert_int_equal(s.workers, 0);
    assert_int_equal(s.run.count, 10000);
    assert_int_equal(s.wait.count, 10000);
    crew_pool_destroy(p);
}

static void test_try_submit_full(void **state)
{
    (void)state;
    gate g;
    crew_pool *p = gated_pool(&g, &(crew_pool_opts){.workers = 2, .queue_cap = 3}, 2);
    for (int i = 0; i < 3; i++)
        assert_int_equal(crew_pool_try_submit(p, nop_job, NULL), 0);
    assert_int_equal(crew_pool_try_submit(p, nop_job, NULL), CREW_EAGAIN);
    assert_int_equal(crew_pool_submit(p, nop_job, NULL, crew_deadline_in(CREW_MSEC), NULL),
                     CREW_ETIMEDOUT);
    crew_ctx *ctx;
    assert_int_equal(crew_ctx_with_cancel(NULL, &ctx), 0);
    crew_ctx_cancel(ctx, 0);
    assert_int_equal(crew_pool_submit(p, nop_job, NULL, CREW_FOREVER, ctx), CREW_ECANCELED);
    crew_ctx_release(ctx);
    crew_stats s = stats_of(p);
    assert_int_equal(s.queued, 3);
    assert_int_equal(s.running, 2);
    assert_int_equal(s.rejected, 3);
    gate_open(&g);
    crew_pool_close(p);
    assert_int_equal(crew_pool_submit(p, nop_job, NULL, CREW_FOREVER, NULL), CREW_ESHUTDOWN);
    assert_int_equal(crew_pool_wait(p, CREW_FOREVER), 0);
    s = stats_of(p);
    assert_int_equal(s.succeeded, 5);
    assert_int_equal(s.rejected, 4);
    gated_pool_destroy(p, &g);
}

typedef struct blocked_submit {
    crew_pool *p;
    crew_ctx *ctx;
    int rc;
    _Atomic int started;
} blocked_submit;

static void *submit_thread(void *arg)
{
    blocked_submit *b = arg;
    atomic_store(&b->started, 1);
    b->rc = crew_pool_submit(b->p, nop_job, NULL, CREW_FOREVER, b->ctx);
    return NULL;
}

/* A submit blocked on a full queue: woken by its ctx, by room, and by shutdown. */
static void test_submit_blocking_wakeups(void **state)
{
    (void)state;
    gate g;
    crew_pool *p = gated_pool(&g, &(crew_pool_opts){.workers = 1, .queue_cap = 1}, 1);
    assert_int_equal(crew_pool_try_submit(p, nop_job, NULL), 0);

    blocked_submit b = {.p = p};
    assert_int_equal(crew_ctx_with_cancel(NULL, &b.ctx), 0);
    pthread_t t;
    pthread_create(&t, NULL, submit_thread, &b);
    eventually(crew__pool_space_waiters(p) == 1);
    crew_ctx_cancel(b.ctx, 0);
    pthread_join(t, NULL);
    assert_int_equal(b.rc, CREW_ECANCELED);
    crew_ctx_release(b.ctx);

    /* Woken by shutdown. */
    b = (blocked_submit){.p = p};
    pthread_create(&t, NULL, submit_thread, &b);
    eventually(crew__pool_space_waiters(p) == 1);
    crew_pool_close(p);
    pthread_join(t, NULL);
    assert_int_equal(b.rc, CREW_ESHUTDOWN);
    gate_open(&g);
    assert_int_equal(crew_pool_wait(p, CREW_FOREVER), 0);
    gated_pool_destroy(p, &g);
}

static void test_submit_blocks_until_room(void **state)
{
    (void)state;
    gate g;
    crew_pool *p = gated_pool(&g, &(crew_pool_opts){.workers = 1, .queue_cap = 1}, 1);
    assert_int_equal(crew_pool_try_submit(p, nop_job, NULL), 0);
    blocked_submit b = {.p = p};
    pthread_t t;
    pthread_create(&t, NULL, submit_thread, &b);
    eventually(crew__pool_space_waiters(p) == 1);
    gate_open(&g); /* the worker frees up, takes the queued job, room appears */
    pthread_join(t, NULL);
    assert_int_equal(b.rc, 0);
    assert_int_equal(crew_pool_drain(p, CREW_FOREVER), 0);
    assert_int_equal(stats_of(p).succeeded, 3);
    gated_pool_destroy(p, &g);
}

/* queue_cap 0: a submit is accepted only when a worker is free to take the job. */
static void test_unbuffered(void **state)
{
    (void)state;
    reset_counts();
    gate g;
    crew_pool *p = gated_pool(&g, &(crew_pool_opts){.workers = 2, .queue_cap = 0}, 2);
    assert_int_equal(crew_pool_try_submit(p, count_job, NULL), CREW_EAGAIN);
    assert_int_equal(crew_pool_submit(p, count_job, NULL, crew_deadline_in(CREW_MSEC), NULL),
                     CREW_ETIMEDOUT);
    assert_int_equal(stats_of(p).queued, 0);
    gate_open(&g);
    /* Once a worker is idle again, a try succeeds. */
    eventually(crew_pool_try_submit(p, count_job, NULL) == 0);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(crew_pool_submit(p, count_job, NULL, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_pool_drain(p, CREW_FOREVER), 0);
    assert_int_equal(atomic_load(&counter), 1001);
    gated_pool_destroy(p, &g);
}

/* ---- futures and results --------------------------------------------------------------- */

static int square_job(crew_ctx *ctx, void *arg)
{
    (void)ctx;
    int *v = arg;
    *v = *v * *v;
    return *v == 49 ? -EDOM : 0;
}

static void test_futures(void **state)
{
    (void)state;
    crew_pool *p;
    assert_int_equal(crew_pool_create(&p, &(crew_pool_opts){.workers = 2, .queue_cap = 8}), 0);
    int vals[10];
    crew_future *f[10];
    for (int i = 0; i < 10; i++) {
        vals[i] = i;
        assert_int_equal(crew_pool_submit_job(p, &(crew_job){.fn = square_job, .arg = &vals[i]},
                                              &f[i], CREW_FOREVER, NULL),
                         0);
    }
    for (int i = 0; i < 10; i++) {
        assert_int_equal(crew_future_wait(f[i], CREW_FOREVER, NULL), 0);
        assert_true(crew_future_done(f[i]));
        assert_true(crew_future_ran(f[i]));
        assert_ptr_equal(crew_future_arg(f[i]), &vals[i]);
        assert_int_equal(*(int *)crew_future_arg(f[i]), i * i);
        assert_int_equal(crew_future_err(f[i]), i == 7 ? -EDOM : 0);
        crew_future_release(f[i]);
    }
    assert_int_equal(crew_pool_submit_job(p, NULL, NULL, CREW_FOREVER, NULL), CREW_EINVAL);
    assert_int_equal(crew_pool_submit_job(p, &(crew_job){0}, NULL, CREW_FOREVER, NULL),
                     CREW_EINVAL);
    crew_future_release(NULL);
    crew_pool_destroy(p);
}

static void test_future_wait_forms(void **state)
{
    (void)state;
    gate g;
    gate_init(&g);
    crew_pool *p;
    assert_int_equal(crew_pool_create(&p, &(crew_pool_opts){.workers = 1, .queue_cap = 8}), 0);
    crew_future *f;
    assert_int_equal(
        crew_pool_submit_job(p, &(crew_job){.fn = gate_job, .arg = &g}, &f, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_future_wait(f, CREW_NOW, NULL), CREW_EAGAIN);
    assert_int_equal(crew_future_err(f), CREW_EAGAIN);
    assert_false(crew_future_ran(f));
    assert_int_equal(crew_future_wait(f, crew_deadline_in(CREW_MSEC), NULL), CREW_ETIMEDOUT);
    crew_ctx *ctx;
    assert_int_equal(crew_ctx_with_timeout(NULL, 2 * CREW_MSEC, &ctx), 0);
    assert_int_equal(crew_future_wait(f, CREW_FOREVER, ctx), CREW_ETIMEDOUT);
    crew_ctx_release(ctx);
    assert_int_equal(crew_future_wait(NULL, CREW_FOREVER, NULL), CREW_EINVAL);
    gate_open(&g);
    assert_int_equal(crew_future_wait(f, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_future_err(f), 0);
    crew_pool_destroy(p); /* a future outlives its pool until released */
    assert_true(crew_future_done(f));
    crew_future_release(f);
    gate_fini(&g);
}

static void test_results_channel(void **state)
{
    (void)state;
    gate g;
    gate_init(&g);
    crew_pool *p;
    assert_int_equal(
        crew_pool_create(
            &p,
            &(crew_pool_opts){.workers = 1, .queue_cap = 100, .results = true, .results_cap = 200}),
        0);
    crew_chan *res = crew_pool_results(p);
    assert_non_null(res);
    saturate(p, &g, 1);
    int vals[20];
    for (int i = 0; i < 20; i++) {
        vals[i] = i;
        assert_int_equal(crew_pool_submit(p, square_job, &vals[i], CREW_FOREVER, NULL), 0);
    }
    crew_pool_cancel(p, 0); /* the gate job sees its ctx cancelled; the 20 are dropped */
    assert_int_equal(crew_pool_wait(p, CREW_FOREVER), 0);
    int ran = 0, dropped = 0;
    crew_result r;
    while (crew_chan_recv(res, &r, CREW_FOREVER, NULL) == 0) {
        if (r.ran) {
            assert_ptr_equal(r.fn, gate_job);
            assert_int_equal(r.err, CREW_ECANCELED);
            ran++;
        } else {
            assert_ptr_equal(r.fn, square_job);
            assert_int_equal(r.err, CREW_ECANCELED);
            assert_int_equal(*(int *)r.arg, (int *)r.arg - vals); /* never squared */
            dropped++;
        }
    }
    assert_int_equal(ran, 1);
    assert_int_equal(dropped, 20);
    assert_true(crew_chan_closed(res));
    crew_pool_destroy(p);
    gate_fini(&g);
}

/* ---- budgets, priorities, discard ------------------------------------------------------ */

static void test_job_timeout(void **state)
{
    (void)state;
    crew_pool *p;
    assert_int_equal(
        crew_pool_create(
            &p, &(crew_pool_opts){.workers = 2, .queue_cap = 8, .job_timeout = 5 * CREW_MSEC}),
        0);
    crew_future *f1, *f2;
    /* The pool's default budget, and a job's own (shorter) budget. */
    assert_int_equal(
        crew_pool_submit_job(p, &(crew_job){.fn = wait_ctx_job}, &f1, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_pool_submit_job(p, &(crew_job){.fn = wait_ctx_job, .timeout = CREW_MSEC},
                                          &f2, CREW_FOREVER, NULL),
                     0);
    assert_int_equal(crew_future_wait(f1, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_future_wait(f2, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_future_err(f1), CREW_ETIMEDOUT);
    assert_int_equal(crew_future_err(f2), CREW_ETIMEDOUT);
    crew_future_release(f1);
    crew_future_release(f2);
    /* Plain submits get the pool's budget too, and the job ctx is reused per job. */
    for (int i = 0; i < 20; i++)
        assert_int_equal(crew_pool_submit(p, wait_ctx_job, NULL, CREW_FOREVER, NULL), 0);
    eventually(stats_of(p).timed_out == 22); /* all ran out their budgets */
    /* A job with budget < 0 has none: it sees the pool's ctx, which a drain whose deadline
     * passes cancels with cause CREW_ETIMEDOUT. */
    assert_int_equal(crew_pool_submit_job(p, &(crew_job){.fn = wait_ctx_job, .timeout = -1}, &f1,
                                          CREW_FOREVER, NULL),
                     0);
    assert_int_equal(crew_pool_drain(p, crew_deadline_in(200 * CREW_MSEC)), CREW_ETIMEDOUT);
    assert_int_equal(crew_future_err(f1), CREW_ETIMEDOUT);
    assert_int_equal(crew_ctx_cause(crew_pool_ctx(p)), CREW_ETIMEDOUT);
    crew_future_release(f1);
    crew_stats s = stats_of(p);
    assert_int_equal(s.timed_out, 23);
    assert_int_equal(s.cancelled, 0);
    crew_pool_destroy(p);
}

static void test_queue_timeout(void **state)
{
    (void)state;
    reset_counts();
    gate g;
    crew_pool *p = gated_pool(&g,
                              &(crew_pool_opts){.workers = 1,
                                                .queue_cap = 8,
                                                .queue_timeout = CREW_MSEC,
                                                .discard = count_discard,
                                                .flags = CREW_POOL_TIMING},
                              1);
    for (int i = 0; i < 3; i++)
        assert_int_equal(crew_pool_submit(p, count_job, NULL, CREW_FOREVER, NULL), 0);
    crew_future *f;
    assert_int_equal(crew_pool_submit_job(p, &(crew_job){.fn = count_job, .queue_timeout = -1}, &f,
                                          CREW_FOREVER, NULL),
                     0);
    int64_t t0 = crew_now();
    while (crew_now() - t0 < 5 * CREW_MSEC) /* let the queued jobs go stale */
        ;
    gate_open(&g);
    assert_int_equal(crew_future_wait(f, CREW_FOREVER, NULL), 0);
    assert_true(crew_future_ran(f)); /* no budget: it runs however long it waited */
    crew_future_release(f);
    assert_int_equal(crew_pool_drain(p, CREW_FOREVER), 0);
    assert_int_equal(atomic_load(&counter), 1);
    assert_int_equal(atomic_load(&discarded), 3);
    assert_int_equal(atomic_load(&discard_reason_sum), 3 * CREW_ETIMEDOUT);
    crew_stats s = stats_of(p);
    assert_int_equal(s.timed_out, 3);
    assert_int_equal(s.wait.count, 5); /* dropped jobs' waits are measured too */
    gated_pool_destroy(p, &g);
}

static int order_log[16];
static _Atomic int order_n;

static int log_job(crew_ctx *ctx, void *arg)
{
    (void)ctx;
    order_log[atomic_fetch_add(&order_n, 1)] = (int)(intptr_t)arg;
    return 0;
}

static void test_priorities(void **state)
{
    (void)state;
    gate g;
    gate_init(&g);
    atomic_store(&order_n, 0);
    crew_pool *p;
    assert_int_equal(
        crew_pool_create(&p, &(crew_pool_opts){.workers = 1, .queue_cap = 4, .priorities = 3}), 0);
    saturate(p, &g, 1);
    int prio[] = {0, 1, 0, 2, 1, 2, 9}; /* 9 is clamped to 2 */
    for (int i = 0; i < 7; i++)
        assert_int_equal(
            crew_pool_submit_job(
                p, &(crew_job){.fn = log_job, .arg = (void *)(intptr_t)i, .priority = prio[i]},
                NULL, CREW_FOREVER, NULL),
            0);
    assert_int_equal(stats_of(p).queued, 7);
    gate_open(&g);
    assert_int_equal(crew_pool_drain(p, CREW_FOREVER), 0);
    int want[] = {3, 5, 6, 1, 4, 0, 2}; /* higher first, FIFO within a level */
    assert_int_equal(atomic_load(&order_n), 7);
    for (int i = 0; i < 7; i++)
        assert_int_equal(order_log[i], want[i]);
    crew_pool_destroy(p);
    gate_fini(&g);
}

static _Atomic long job_discarded;

static void job_discard(crew_job_fn fn, void *arg, int reason)
{
    assert_ptr_equal(fn, count_job);
    assert_int_equal(reason, CREW_ECANCELED);
    free(arg);
    atomic_fetch_add(&job_discarded, 1);
}

/* cancel: queued jobs are dropped, each reported once; running ones see their ctx. */
static void test_cancel_discards(void **state)
{
    (void)state;
    reset_counts();
    atomic_store(&job_discarded, 0);
    gate g;
    crew_pool *p = gated_pool(
        &g, &(crew_pool_opts){.workers = 2, .queue_cap = 100, .discard = count_discard}, 2);
    for (int i = 0; i < 50; i++)
        assert_int_equal(crew_pool_submit(p, count_job, NULL, CREW_FOREVER, NULL), 0);
    for (int i = 0; i < 10; i++) /* per-job discard callbacks free their argument */
        assert_int_equal(
            crew_pool_submit_job(
                p, &(crew_job){.fn = count_job, .arg = malloc(16), .discard = job_discard}, NULL,
                CREW_FOREVER, NULL),
            0);
    assert_int_equal(crew_pool_cancel(p, 0), 0);
    assert_int_equal(crew_pool_cancel(p, 0), 0); /* twice is fine */
    assert_int_equal(crew_pool_submit(p, count_job, NULL, CREW_FOREVER, NULL), CREW_ESHUTDOWN);
    assert_int_equal(crew_pool_wait(p, CREW_FOREVER), 0);
    assert_int_equal(crew_pool_wait(p, CREW_FOREVER), 0);
    assert_int_equal(atomic_load(&counter), 0);
    assert_int_equal(atomic_load(&discarded), 50);
    assert_int_equal(atomic_load(&job_discarded), 10);
    assert_true(crew_ctx_done(crew_pool_ctx(p)));
    crew_stats s = stats_of(p);
    assert_int_equal(s.cancelled, 62); /* 60 dropped + 2 gate jobs that saw the cancel */
    assert_int_equal(s.submitted, 62);
    crew_pool_destroy(p);
    gate_fini(&g);
}

/* A cancelled parent ctx cancels the pool. */
static void test_parent_ctx(void **state)
{
    (void)state;
    gate g;
    gate_init(&g);
    crew_ctx *parent;
    assert_int_equal(crew_ctx_with_cancel(NULL, &parent), 0);
    crew_pool *p;
    assert_int_equal(
        crew_pool_create(&p, &(crew_pool_opts){.workers = 1, .queue_cap = 4, .ctx = parent}), 0);
    saturate(p, &g, 1);
    crew_ctx_cancel(parent, CREW_EBUSY);
    assert_int_equal(crew_pool_wait(p, CREW_FOREVER), 0);
    assert_int_equal(crew_ctx_cause(crew_pool_ctx(p)), CREW_EBUSY);
    assert_int_equal(crew_pool_submit(p, nop_job, NULL, CREW_FOREVER, NULL), CREW_ESHUTDOWN);
    crew_pool_destroy(p);
    /* Created under a parent already done: shut down from the start. */
    assert_int_equal(crew_pool_create(&p, &(crew_pool_opts){.workers = 1, .ctx = parent}), 0);
    assert_int_equal(crew_pool_submit(p, nop_job, NULL, CREW_FOREVER, NULL), CREW_ESHUTDOWN);
    assert_int_equal(crew_pool_wait(p, CREW_FOREVER), 0);
    crew_pool_destroy(p);
    crew_ctx_release(parent);
    gate_fini(&g);
}

/* ---- shutdowns --------------------------------------------------------------------------- */

static void test_drain(void **state)
{
    (void)state;
    reset_counts();
    crew_pool *p;
    assert_int_equal(crew_pool_create(&p, &(crew_pool_opts){.workers = 2, .queue_cap = 1000}), 0);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(crew_pool_submit(p, count_job, NULL, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_pool_drain(p, CREW_FOREVER), 0); /* the whole queue runs */
    assert_int_equal(atomic_load(&counter), 1000);
    assert_int_equal(crew_pool_drain(p, CREW_FOREVER), 0); /* twice is fine */
    crew_pool_destroy(p);

    /* A drain whose deadline passes cancels what still runs and drops what is queued. */
    gate g;
    gate_init(&g);
    assert_int_equal(
        crew_pool_create(
            &p, &(crew_pool_opts){.workers = 1, .queue_cap = 10, .discard = count_discard}),
        0);
    reset_counts();
    saturate(p, &g, 1);
    for (int i = 0; i < 5; i++)
        assert_int_equal(crew_pool_submit(p, count_job, NULL, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_pool_drain(p, crew_deadline_in(2 * CREW_MSEC)), CREW_ETIMEDOUT);
    assert_int_equal(atomic_load(&counter), 0);
    assert_int_equal(atomic_load(&discarded), 5);
    assert_int_equal(crew_ctx_cause(crew_pool_ctx(p)), CREW_ETIMEDOUT);
    crew_pool_destroy(p);
    gate_fini(&g);
}

static void test_wait_forms(void **state)
{
    (void)state;
    gate g;
    crew_pool *p = gated_pool(&g, &(crew_pool_opts){.workers = 1, .queue_cap = 1}, 1);
    crew_pool_close(p);
    assert_int_equal(crew_pool_wait(p, CREW_NOW), CREW_EAGAIN);
    assert_int_equal(crew_pool_wait(p, crew_deadline_in(CREW_MSEC)), CREW_ETIMEDOUT);
    gate_open(&g);
    assert_int_equal(crew_pool_wait(p, CREW_FOREVER), 0);
    assert_int_equal(crew_pool_resize(p, 2, 2), CREW_ESHUTDOWN);
    gated_pool_destroy(p, &g);
}

typedef struct racer {
    crew_pool *p;
    int which;
} racer;

static void *shutdown_thread(void *arg)
{
    racer *r = arg;
    switch (r->which % 4) {
    case 0:
        crew_pool_close(r->p);
        crew_pool_wait(r->p, CREW_FOREVER);
        break;
    case 1:
        crew_pool_cancel(r->p, 0);
        break;
    case 2:
        crew_pool_drain(r->p, crew_deadline_in(CREW_MSEC));
        break;
    default:
        crew_pool_drain(r->p, CREW_FOREVER);
        break;
    }
    return NULL;
}

/* Every shutdown, twice and from several threads at once: no crash, no hang, and every
 * job is accounted for exactly once. */
static void test_concurrent_shutdowns(void **state)
{
    (void)state;
    for (int round = 0; round < 20; round++) {
        reset_counts();
        crew_pool *p;
        assert_int_equal(
            crew_pool_create(
                &p, &(crew_pool_opts){.workers = 2, .queue_cap = 64, .discard = count_discard}),
            0);
        for (int i = 0; i < 64; i++)
            assert_int_equal(crew_pool_submit(p, count_job, NULL, CREW_FOREVER, NULL), 0);
        pthread_t t[4];
        racer r[4];
        for (int i = 0; i < 4; i++) {
            r[i] = (racer){p, round + i};
            pthread_create(&t[i], NULL, shutdown_thread, &r[i]);
        }
        for (int i = 0; i < 4; i++)
            pthread_join(t[i], NULL);
        assert_int_equal(crew_pool_wait(p, CREW_FOREVER), 0);
        assert_int_equal(atomic_load(&counter) + atomic_load(&discarded), 64);
        crew_pool_destroy(p);
    }
}

/* ---- deadlock avoidance ---------------------------------------------------------------- */

typedef struct fanout {
    crew_pool *p;
    int n;
    _Atomic int rc_sum;
} fanout;

/* A job that blocking-submits n children to its own pool. */
static int fanout_job(crew_ctx *ctx, void *arg)
{
    (void)ctx;
    fanout *f = arg;
    for (int i = 0; i < f->n; i++)
        atomic_fetch_add(&f->rc_sum, crew_pool_submit(f->p, count_job, NULL, CREW_FOREVER, NULL));
    return 0;
}

/* A job that adds work while its pool drains: the drain finishes that work too. */
static void test_submit_from_job_during_drain(void **state)
{
    (void)state;
    reset_counts();
    gate g;
    crew_pool *p = gated_pool(&g, &(crew_pool_opts){.workers = 2, .queue_cap = 4}, 1);
    fanout f = {.p = p, .n = 100};
    assert_int_equal(crew_pool_submit(p, fanout_job, &f, CREW_FOREVER, NULL), 0);
    eventually(stats_of(p).started >= 2);
    crew_pool_close(p);
    assert_int_equal(crew_pool_submit(p, count_job, NULL, CREW_FOREVER, NULL), CREW_ESHUTDOWN);
    gate_open(&g);
    assert_int_equal(crew_pool_wait(p, CREW_FOREVER), 0);
    assert_int_equal(atomic_load(&f.rc_sum), 0);
    assert_int_equal(atomic_load(&counter), 100);
    gated_pool_destroy(p, &g);
}

static void test_self_submit_helped(void **state)
{
    (void)state;
    reset_counts();
    crew_pool *p;
    assert_int_equal(crew_pool_create(&p, &(crew_pool_opts){.workers = 1, .queue_cap = 2}), 0);
    fanout f = {.p = p, .n = 50};
    assert_int_equal(crew_pool_submit(p, fanout_job, &f, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_pool_drain(p, CREW_FOREVER), 0); /* no hang */
    assert_int_equal(atomic_load(&f.rc_sum), 0);
    assert_int_equal(atomic_load(&counter), 50);
    crew_pool_destroy(p);
}

/* Unbuffered with one worker: the job's own submit could never be taken by another
 * worker, so it runs in place; nested too deep, it gets CREW_EDEADLK instead. */
typedef struct chain {
    crew_pool *p;
    _Atomic int depth, deepest, edeadlk, other;
} chain;

static int chain_job(crew_ctx *ctx, void *arg)
{
    (void)ctx;
    chain *c = arg;
    int d = atomic_fetch_add(&c->depth, 1) + 1;
    if (d > atomic_load(&c->deepest))
        atomic_store(&c->deepest, d);
    int rc = crew_pool_submit(c->p, chain_job, c, CREW_FOREVER, NULL);
    if (rc == CREW_EDEADLK)
        atomic_fetch_add(&c->edeadlk, 1);
    else if (rc != 0)
        atomic_fetch_add(&c->other, 1);
    atomic_fetch_sub(&c->depth, 1);
    return 0;
}

static void test_self_submit_in_place(void **state)
{
    (void)state;
    reset_counts();
    crew_pool *p;
    assert_int_equal(crew_pool_create(&p, &(crew_pool_opts){.workers = 1, .queue_cap = 0}), 0);
    fanout f = {.p = p, .n = 3};
    assert_int_equal(crew_pool_submit(p, fanout_job, &f, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_pool_drain(p, CREW_FOREVER), 0);
    assert_int_equal(atomic_load(&f.rc_sum), 0);
    assert_int_equal(atomic_load(&counter), 3); /* all three ran, in place */
    crew_stats s = stats_of(p);
    assert_int_equal(s.submitted, 4);
    assert_int_equal(s.succeeded, 4);
    crew_pool_destroy(p);

    /* An endless chain of self-submits: bounded nesting, then CREW_EDEADLK, no hang. */
    chain c = {0};
    assert_int_equal(crew_pool_create(&c.p, &(crew_pool_opts){.workers = 1, .queue_cap = 0}), 0);
    assert_int_equal(crew_pool_submit(c.p, chain_job, &c, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_pool_drain(c.p, CREW_FOREVER), 0);
    assert_int_equal(atomic_load(&c.edeadlk), 1);
    assert_int_equal(atomic_load(&c.other), 0);
    assert_int_equal(atomic_load(&c.deepest), 5); /* the first job and four nested runs */
    crew_pool_destroy(c.p);
}

static _Atomic int inner_rc;

static int wait_own_pool_job(crew_ctx *ctx, void *arg)
{
    (void)ctx;
    atomic_store(&inner_rc,
                 crew_pool_wait(arg, CREW_FOREVER) * 1000 + crew_pool_drain(arg, CREW_FOREVER));
    return 0;
}

static void test_wait_from_job(void **state)
{
    (void)state;
    crew_pool *p;
    assert_int_equal(crew_pool_create(&p, &(crew_pool_opts){.workers = 1, .queue_cap = 1}), 0);
    assert_int_equal(crew_pool_submit(p, wait_own_pool_job, p, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_pool_drain(p, CREW_FOREVER), 0);
    assert_int_equal(atomic_load(&inner_rc), CREW_EDEADLK * 1000 + CREW_EDEADLK);
    crew_pool_destroy(p);
}

/* ---- contract edges found in review ----------------------------------------------------- */

/* destroy never hangs on a results channel nobody reads: it discards what is unread. */
static void test_destroy_unread_results(void **state)
{
    (void)state;
    crew_pool *p;
    assert_int_equal(
        crew_pool_create(
            &p,
            &(crew_pool_opts){.workers = 2, .queue_cap = 64, .results = true, .results_cap = 1}),
        0);
    for (int i = 0; i < 50; i++)
        assert_int_equal(crew_pool_submit(p, nop_job, NULL, CREW_FOREVER, NULL), 0);
    crew_pool_destroy(p);
}

/* A done ctx is refused even when there is room (as channels do); a deadline already
 * past on a full queue is CREW_EAGAIN, like CREW_NOW. */
static void test_submit_ctx_and_past_deadline(void **state)
{
    (void)state;
    gate g;
    gate_init(&g);
    crew_pool *p;
    assert_int_equal(crew_pool_create(&p, &(crew_pool_opts){.workers = 1, .queue_cap = 1}), 0);
    crew_ctx *ctx;
    assert_int_equal(crew_ctx_with_cancel(NULL, &ctx), 0);
    crew_ctx_cancel(ctx, CREW_EBUSY);
    assert_int_equal(crew_pool_submit(p, nop_job, NULL, CREW_FOREVER, ctx), CREW_ECANCELED);
    crew_ctx_release(ctx);
    saturate(p, &g, 1);
    assert_int_equal(crew_pool_try_submit(p, nop_job, NULL), 0);
    assert_int_equal(crew_pool_submit(p, nop_job, NULL, crew_now() - CREW_MSEC, NULL), CREW_EAGAIN);
    assert_int_equal(stats_of(p).rejected, 2);
    gate_open(&g);
    assert_int_equal(crew_pool_drain(p, CREW_FOREVER), 0);
    crew_pool_destroy(p);
    gate_fini(&g);
}

static crew_pool *hook_pool;
static _Atomic int hook_calls;

/* An init hook that calls into its own pool: it must not deadlock. */
static int init_calls_pool(void *hook_arg, unsigned id, void **st)
{
    (void)hook_arg;
    (void)st;
    crew_stats s;
    if (id > 0 && hook_pool) /* the first runs inside create, before the pool is returned */
        crew_pool_stats(hook_pool, &s);
    atomic_fetch_add(&hook_calls, 1);
    return 0;
}

static gate slow_init_gate;

/* What init_meet's hooks wait for: target workers inside their hooks at once. */
typedef struct meet {
    _Atomic unsigned target, inside;
} meet;

/* Waits (up to 10 s) until m->target workers are inside their init hooks at once: a pool
 * that started its workers one after another, each waiting for the hook before, would
 * make it fail. */
static int init_meet(void *hook_arg, unsigned id, void **st)
{
    (void)id, (void)st;
    meet *m = hook_arg;
    atomic_fetch_add(&m->inside, 1);
    int64_t until = crew_deadline_in(10 * CREW_SEC);
    while (atomic_load(&m->inside) < atomic_load(&m->target))
        if (crew_now() > until)
            return -ETIMEDOUT;
        else
            sched_yield();
    return 0;
}

/* create and resize start their new workers together and wait for all their hooks. */
static void test_workers_start_together(void **state)
{
    (void)state;
    meet m = {.target = 4};
    crew_pool *p;
    assert_int_equal(
        crew_pool_create(&p, &(crew_pool_opts){.workers = 4, .init = init_meet, .hook_arg = &m}),
        0);
    assert_int_equal(stats_of(p).workers, 4);
    crew_pool_destroy(p);

    m = (meet){.target = 1};
    assert_int_equal(
        crew_pool_create(&p, &(crew_pool_opts){.workers = 1, .init = init_meet, .hook_arg = &m}),
        0);
    atomic_store(&m.target, 4); /* worker 0 counts; the 3 new ones must meet it at once */
    assert_int_equal(crew_pool_resize(p, 4, 4), 0);
    assert_int_equal(stats_of(p).workers, 4);
    crew_pool_destroy(p);
}

/* Worker 0 starts at once; later workers wait at a gate in their init hook. */
static int init_slow(void *hook_arg, unsigned id, void **st)
{
    (void)hook_arg;
    (void)st;
    if (id > 0) {
        pthread_mutex_lock(&slow_init_gate.mu);
        while (!slow_init_gate.open)
            pthread_cond_wait(&slow_init_gate.cv, &slow_init_gate.mu);
        pthread_mutex_unlock(&slow_init_gate.mu);
    }
    return 0;
}

static void test_init_hooks_unlocked(void **state)
{
    (void)state;
    atomic_store(&hook_calls, 0);
    hook_pool = NULL;
    crew_pool *p;
    assert_int_equal(crew_pool_create(&p, &(crew_pool_opts){.workers = 1, .init = init_calls_pool}),
                     0);
    hook_pool = p;
    assert_int_equal(crew_pool_resize(p, 3, 3), 0); /* hooks call crew_pool_stats */
    assert_int_equal(atomic_load(&hook_calls), 3);
    crew_pool_destroy(p);

    /* Growing an elastic pool from a submit does not wait for the new worker's init. */
    gate g;
    gate_init(&g);
    gate_init(&slow_init_gate);
    assert_int_equal(
        crew_pool_create(
            &p,
            &(crew_pool_opts){.workers = 1, .max_workers = 2, .queue_cap = 4, .init = init_slow}),
        0);
    saturate(p, &g, 1);
    for (int i = 0; i < 3; i++) /* would hang here if growth waited for init_slow */
        assert_int_equal(crew_pool_try_submit(p, nop_job, NULL), 0);
    gate_open(&slow_init_gate);
    gate_open(&g);
    assert_int_equal(crew_pool_drain(p, CREW_FOREVER), 0);
    assert_int_equal(stats_of(p).succeeded, 4);
    crew_pool_destroy(p);
    gate_fini(&g);
    gate_fini(&slow_init_gate);
}

/* More than 255 distinct job functions: the ones past the function table take the
 * extended path, and still run exactly once. */
/* 300 distinct functions, many_100 .. many_399. (clang-format does not settle on one
 * layout for these token-pasting lists.) */
/* clang-format off */
#define FN(n)                                                                                  \
    static int many_##n(crew_ctx *ctx, void *arg)                                              \
    {                                                                                          \
        (void)ctx;                                                                             \
        (void)arg;                                                                             \
        atomic_fetch_add(&counter, 1);                                                         \
        return 0;                                                                              \
    }
#define FN10(p) FN(p##0) FN(p##1) FN(p##2) FN(p##3) FN(p##4) \
                FN(p##5) FN(p##6) FN(p##7) FN(p##8) FN(p##9)
#define FN100(p) FN10(p##0) FN10(p##1) FN10(p##2) FN10(p##3) FN10(p##4) \
                 FN10(p##5) FN10(p##6) FN10(p##7) FN10(p##8) FN10(p##9)
FN100(1) FN100(2) FN100(3)
#define PTR(n) many_##n,
#define PTR10(p) PTR(p##0) PTR(p##1) PTR(p##2) PTR(p##3) PTR(p##4) \
                 PTR(p##5) PTR(p##6) PTR(p##7) PTR(p##8) PTR(p##9)
#define PTR100(p) PTR10(p##0) PTR10(p##1) PTR10(p##2) PTR10(p##3) PTR10(p##4) \
                  PTR10(p##5) PTR10(p##6) PTR10(p##7) PTR10(p##8) PTR10(p##9)
static crew_job_fn many_fns[] = {PTR100(1) PTR100(2) PTR100(3)};
/* clang-format on */

static void test_many_functions(void **state)
{
    (void)state;
    reset_counts();
    crew_pool *p;
    assert_int_equal(crew_pool_create(&p, &(crew_pool_opts){.workers = 2, .queue_cap = 512}), 0);
    size_t n = sizeof many_fns / sizeof many_fns[0];
    assert_int_equal(n, 300);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(crew_pool_submit(p, many_fns[i], NULL, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_pool_drain(p, CREW_FOREVER), 0);
    assert_int_equal(atomic_load(&counter), 300);
    assert_int_equal(stats_of(p).submitted, 300);
    crew_pool_destroy(p);

    /* An extended submit on a new pool (empty freelist) allocates its record: make that
     * allocation fail. */
    assert_int_equal(crew_pool_create(&p, &(crew_pool_opts){.workers = 1, .queue_cap = 4}), 0);
    crew__test_fail_after(1);
    assert_int_equal(crew_pool_submit_job(p, &(crew_job){.fn = nop_job}, NULL, CREW_FOREVER, NULL),
                     CREW_ENOMEM);
    crew__test_fail_after(0);
    assert_int_equal(stats_of(p).rejected, 1);
    crew_pool_destroy(p);
}

/* A job submitting to its own unbuffered pool while another worker is busy: nothing to
 * run in its place and not every worker is stuck, so it waits, and gets in once the other
 * worker frees up. */
static void test_self_submit_waits_for_others(void **state)
{
    (void)state;
    reset_counts();
    gate g;
    crew_pool *p = gated_pool(&g, &(crew_pool_opts){.workers = 2, .queue_cap = 0}, 1);
    fanout f = {.p = p, .n = 1};
    eventually(crew_pool_try_submit(p, fanout_job, &f) == 0);
    eventually(crew__pool_space_waiters(p) == 1); /* the fanout job waits for room */
    assert_int_equal(atomic_load(&counter), 0);
    gate_open(&g);
    assert_int_equal(crew_pool_drain(p, CREW_FOREVER), 0);
    assert_int_equal(atomic_load(&f.rc_sum), 0);
    assert_int_equal(atomic_load(&counter), 1);
    gated_pool_destroy(p, &g);
}

/* ---- scaling ----------------------------------------------------------------------------- */

static void test_resize(void **state)
{
    (void)state;
    crew_pool *p;
    assert_int_equal(crew_pool_create(&p, &(crew_pool_opts){.workers = 1, .queue_cap = 8}), 0);
    assert_int_equal(crew_pool_resize(p, 0, 1), CREW_EINVAL);
    assert_int_equal(crew_pool_resize(p, 3, 2), CREW_EINVAL);
    assert_int_equal(crew_pool_resize(p, 4, 0), 0);
    assert_int_equal(stats_of(p).workers, 4);
    assert_int_equal(crew_pool_resize(p, 1, 1), 0);
    eventually(stats_of(p).workers == 1); /* extra workers leave when idle */
    crew__test_fail_after(1);
    assert_int_equal(crew_pool_resize(p, 3, 3), CREW_ENOMEM);
    crew__test_fail_after(0);
    crew_pool_close(p);
    assert_int_equal(crew_pool_wait(p, CREW_FOREVER), 0);
    crew_pool_destroy(p);
}

/* Resize while busy: no job lost. */
static void test_resize_busy(void **state)
{
    (void)state;
    reset_counts();
    crew_pool *p;
    assert_int_equal(crew_pool_create(&p, &(crew_pool_opts){.workers = 2, .queue_cap = 4}), 0);
    for (int i = 0; i < 20000; i++) {
        assert_int_equal(crew_pool_submit(p, count_job, NULL, CREW_FOREVER, NULL), 0);
        if (i % 1000 == 0)
            assert_int_equal(crew_pool_resize(p, 1 + (unsigned)(i / 1000) % 4, 0), 0);
    }
    assert_int_equal(crew_pool_drain(p, CREW_FOREVER), 0);
    assert_int_equal(atomic_load(&counter), 20000);
    crew_pool_destroy(p);
}

static void test_elastic(void **state)
{
    (void)state;
    gate g;
    crew_pool *p = gated_pool(
        &g,
        &(crew_pool_opts){
            .workers = 1, .max_workers = 4, .queue_cap = 2, .idle_timeout = 5 * CREW_MSEC},
        4); /* needs the pool to grow to 4 */
    assert_int_equal(stats_of(p).workers, 4);
    gate_open(&g);
    eventually(stats_of(p).workers == 1); /* idle ones expire back to the minimum */
    crew_pool_close(p);
    assert_int_equal(crew_pool_wait(p, CREW_FOREVER), 0);
    crew_pool_destroy(p);
    gate_fini(&g);
}

/* ---- metrics, logging, allocation -------------------------------------------------------- */

static _Atomic int log_lines;

static void log_cb(void *arg, int level, const char *msg, const char *const *kv)
{
    (void)arg;
    assert_true(level >= CREW_LOG_ERROR && level <= CREW_LOG_DEBUG);
    assert_non_null(msg);
    assert_string_equal(kv[0], "pool");
    assert_string_equal(kv[1], "logged");
    atomic_fetch_add(&log_lines, 1);
}

static void test_log(void **state)
{
    (void)state;
    atomic_store(&log_lines, 0);
    crew_pool *p;
    assert_int_equal(
        crew_pool_create(&p, &(crew_pool_opts){.workers = 2, .name = "logged", .log = log_cb}), 0);
    crew_pool_destroy(p);
    assert_int_equal(atomic_load(&log_lines), 4); /* two starts, two exits */
}

/* The Prometheus text of a pool that ran 10 failing and 90 good jobs; *s its snapshot. */
static char *prometheus_of_run(unsigned flags, crew_stats *s)
{
    crew_pool *p;
    assert_int_equal(
        crew_pool_create(
            &p, &(crew_pool_opts){.workers = 2, .queue_cap = 8, .name = "web", .flags = flags}),
        0);
    for (int i = 0; i < 100; i++)
        assert_int_equal(crew_pool_submit(p, i < 10 ? fail_job : nop_job, NULL, CREW_FOREVER, NULL),
                         0);
    assert_int_equal(crew_pool_drain(p, CREW_FOREVER), 0);
    *s = stats_of(p);
    crew_pool_destroy(p);
    assert_string_equal(s->name, "web");
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    const crew_stats *all[] = {s};
    assert_int_equal(crew_prometheus_write(f, all, 1), 0);
    fclose(f);
    assert_non_null(strstr(buf, "crew_jobs_failed_total{pool=\"web\"} 10\n"));
    assert_non_null(strstr(buf, "crew_jobs_succeeded_total{pool=\"web\"} 90\n"));
    return buf;
}

/* Histograms are opt-in: a timed pool fills and exports them, a default pool neither
 * measures nor exports them (no empty histogram that would read as "no jobs"). */
static void test_stats_prometheus(void **state)
{
    (void)state;
    crew_stats s;
    char *buf = prometheus_of_run(CREW_POOL_TIMING, &s);
    assert_false(s.untimed);
    assert_int_equal(s.run.count, 100);
    assert_int_equal(s.wait.count, 100);
    assert_non_null(strstr(buf, "crew_run_seconds_count{pool=\"web\"} 100\n"));
    assert_non_null(strstr(buf, "crew_queue_wait_seconds_count{pool=\"web\"} 100\n"));
    free(buf);

    buf = prometheus_of_run(0, &s);
    assert_true(s.untimed);
    assert_int_equal(s.run.count + s.wait.count, 0);
    assert_null(strstr(buf, "crew_run_seconds"));
    assert_null(strstr(buf, "crew_queue_wait_seconds"));
    free(buf);
}

/* Steady state allocates nothing: plain submits, and extended ones once the freelist is
 * warm. */
static void test_no_alloc_per_job(void **state)
{
    (void)state;
    /* Keep the shared timer thread alive throughout: it exits after 50 ms without a
     * deadline, and restarting it is not a per-job cost. */
    crew_ctx *pin;
    assert_int_equal(crew_ctx_with_timeout(NULL, 3600 * CREW_SEC, &pin), 0);
    for (int timing = 0; timing < 2; timing++) {
        crew_pool *p;
        assert_int_equal(
            crew_pool_create(&p, &(crew_pool_opts){.workers = 2,
                                                   .queue_cap = 256,
                                                   .job_timeout = CREW_SEC,
                                                   .flags = timing ? CREW_POOL_TIMING : 0}),
            0);
        for (int i = 0; i < 100; i++) /* warm up: function table, ext freelist, timer */
            assert_int_equal(
                crew_pool_submit_job(p, &(crew_job){.fn = nop_job}, NULL, CREW_FOREVER, NULL), 0);
        crew_stats s;
        do
            s = stats_of(p);
        while (s.succeeded < 100);
        uint64_t before = crew__test_alloc_count();
        for (int i = 0; i < 20000; i++)
            assert_int_equal(crew_pool_submit(p, nop_job, NULL, CREW_FOREVER, NULL), 0);
        assert_int_equal(crew__test_alloc_count(), before);
        crew_pool_close(p);
        assert_int_equal(crew_pool_wait(p, CREW_FOREVER), 0);
        crew_pool_destroy(p);
    }
    crew_ctx_release(pin);
}

/* ---- retry policies ------------------------------------------------------------------- */

/* Fails until its counter reaches the target, then succeeds; counts its calls. */
typedef struct flaky {
    _Atomic int calls;
    int succeed_at; /* the call that succeeds (1-based); 0 = never */
    int err;        /* what the failing calls return */
} flaky;

static int flaky_job(crew_ctx *ctx, void *arg)
{
    (void)ctx;
    flaky *f = arg;
    int n = atomic_fetch_add(&f->calls, 1) + 1;
    return f->succeed_at && n >= f->succeed_at ? 0 : f->err;
}

static bool no_eio(int err, void *arg)
{
    (void)arg;
    return err != -EIO;
}

static void test_retry_job_option(void **state)
{
    (void)state;
    crew_pool *p;
    assert_int_equal(crew_pool_create(&p, &(crew_pool_opts){.workers = 2, .queue_cap = 16}), 0);
    const crew_retry quick = {.attempts = 4, .base = CREW_USEC, .cap = 10 * CREW_USEC};

    /* Succeeds on its third try: one start, two retries, the future says 0. */
    flaky ok = {.succeed_at = 3, .err = -EAGAIN};
    crew_future *f;
    assert_int_equal(crew_pool_submit_job(p,
                                          &(crew_job){.fn = flaky_job, .arg = &ok, .retry = &quick},
                                          &f, CREW_FOREVER, NULL),
                     0);
    assert_int_equal(crew_future_wait(f, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_future_err(f), 0);
    assert_int_equal(atomic_load(&ok.calls), 3);
    crew_future_release(f);

    /* Never succeeds: all four tries, the last error is the result. */
    flaky bad = {.succeed_at = 0, .err = -EAGAIN};
    assert_int_equal(
        crew_pool_submit_job(p, &(crew_job){.fn = flaky_job, .arg = &bad, .retry = &quick}, &f,
                             CREW_FOREVER, NULL),
        0);
    assert_int_equal(crew_future_wait(f, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_future_err(f), -EAGAIN);
    assert_int_equal(atomic_load(&bad.calls), 4);
    crew_future_release(f);

    /* The predicate refuses: one try. */
    flaky refused = {.succeed_at = 0, .err = -EIO};
    crew_retry picky = quick;
    picky.retryable = no_eio;
    assert_int_equal(
        crew_pool_submit_job(p, &(crew_job){.fn = flaky_job, .arg = &refused, .retry = &picky}, &f,
                             CREW_FOREVER, NULL),
        0);
    assert_int_equal(crew_future_wait(f, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_future_err(f), -EIO);
    assert_int_equal(atomic_load(&refused.calls), 1);
    crew_future_release(f);

    /* A policy crew_retry_do would refuse is refused at submit, and nothing runs. */
    const crew_retry broken = {.factor = 0.5};
    flaky never = {.succeed_at = 1};
    assert_int_equal(
        crew_pool_submit_job(p, &(crew_job){.fn = flaky_job, .arg = &never, .retry = &broken}, NULL,
                             CREW_FOREVER, NULL),
        CREW_EINVAL);

    assert_int_equal(crew_pool_close(p), 0);
    assert_int_equal(crew_pool_wait(p, CREW_FOREVER), 0);
    crew_stats st;
    crew_pool_stats(p, &st);
    assert_int_equal(st.started, 3);
    assert_int_equal(st.retried, 2 + 3);
    assert_int_equal(st.succeeded, 1);
    assert_int_equal(st.failed, 2);
    assert_int_equal(atomic_load(&never.calls), 0);
    crew_pool_destroy(p);
}

static void test_retry_pool_default(void **state)
{
    (void)state;
    const crew_retry twice = {.attempts = 2, .base = CREW_USEC, .no_jitter = true};
    const crew_retry broken = {.base = -1};
    crew_pool *p;
    assert_int_equal(crew_pool_create(&p, &(crew_pool_opts){.workers = 1, .retry = &broken}),
                     CREW_EINVAL);
    assert_int_equal(
        crew_pool_create(&p, &(crew_pool_opts){.workers = 1, .queue_cap = 8, .retry = &twice}), 0);
    flaky f1 = {.succeed_at = 2, .err = -EAGAIN}, f2 = {.succeed_at = 0, .err = -EAGAIN};
    assert_int_equal(crew_pool_submit(p, flaky_job, &f1, CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_pool_submit(p, flaky_job, &f2, CREW_FOREVER, NULL), 0);
    /* A job's own policy overrides the pool's: one try. */
    flaky f3 = {.succeed_at = 0, .err = -EAGAIN};
    const crew_retry once = {.attempts = 1};
    assert_int_equal(crew_pool_submit_job(p,
                                          &(crew_job){.fn = flaky_job, .arg = &f3, .retry = &once},
                                          NULL, CREW_FOREVER, NULL),
                     0);
    assert_int_equal(crew_pool_close(p), 0);
    assert_int_equal(crew_pool_wait(p, CREW_FOREVER), 0);
    assert_int_equal(atomic_load(&f1.calls), 2);
    assert_int_equal(atomic_load(&f2.calls), 2);
    assert_int_equal(atomic_load(&f3.calls), 1);
    crew_stats st;
    crew_pool_stats(p, &st);
    assert_int_equal(st.retried, 2);
    assert_int_equal(st.succeeded, 1);
    assert_int_equal(st.failed, 2);
    crew_pool_destroy(p);
}

/* The run budget covers every try: a job retried with long backoffs ends at its budget
 * with the budget's error, not after all its tries. */
static void test_retry_under_budget(void **state)
{
    (void)state;
    crew_pool *p;
    assert_int_equal(crew_pool_create(&p, &(crew_pool_opts){.workers = 1, .queue_cap = 4}), 0);
    const crew_retry slow = {.attempts = 1000, .base = CREW_SEC, .no_jitter = true};
    flaky f = {.succeed_at = 0, .err = -EAGAIN};
    crew_future *fut;
    assert_int_equal(
        crew_pool_submit_job(
            p, &(crew_job){.fn = flaky_job, .arg = &f, .retry = &slow, .timeout = 20 * CREW_MSEC},
            &fut, CREW_FOREVER, NULL),
        0);
    assert_int_equal(crew_future_wait(fut, CREW_FOREVER, NULL), 0);
    /* Gave up: either the backoff was cut by the budget, or it saw the next try would come
     * after the deadline and returned the try's error. Never all the tries. */
    int err = crew_future_err(fut);
    assert_true(err == CREW_ETIMEDOUT || err == -EAGAIN);
    assert_true(atomic_load(&f.calls) < 1000);
    crew_future_release(fut);
    assert_int_equal(crew_pool_drain(p, CREW_FOREVER), 0);
    crew_pool_destroy(p);
}

/* ---- a start-rate cap ------------------------------------------------------------------ */

static void test_rate_cap(void **state)
{
    (void)state;
    /* No refill and a burst of 2: two jobs start, the third waits for its token, taken by
     * the worker but not started, until the rate changes. */
    crew_rate *r;
    assert_int_equal(crew_rate_create(&r, 0, 2), 0);
    crew_pool *p;
    assert_int_equal(
        crew_pool_create(&p, &(crew_pool_opts){.workers = 1, .queue_cap = 8, .rate = r}), 0);
    atomic_store(&counter, 0);
    for (int i = 0; i < 4; i++)
        assert_int_equal(crew_pool_submit(p, count_job, NULL, CREW_FOREVER, NULL), 0);
    eventually(crew_rate_waiters(r) == 1);
    assert_int_equal(atomic_load(&counter), 2);
    crew_stats st;
    crew_pool_stats(p, &st);
    assert_int_equal(st.started, 2);
    assert_int_equal(crew_rate_set(r, CREW_RATE_INF, 2), 0);
    assert_int_equal(crew_pool_close(p), 0);
    assert_int_equal(crew_pool_wait(p, CREW_FOREVER), 0);
    assert_int_equal(atomic_load(&counter), 4);
    crew_pool_destroy(p);

    /* A cancel ends the wait: the job held there and the one still queued are dropped. */
    assert_int_equal(crew_rate_set(r, 0, 1), 0);
    assert_int_equal(
        crew_pool_create(&p, &(crew_pool_opts){.workers = 1, .queue_cap = 8, .rate = r}), 0);
    atomic_store(&counter, 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(crew_pool_submit(p, count_job, NULL, CREW_FOREVER, NULL), 0);
    eventually(crew_rate_waiters(r) == 1);
    assert_int_equal(crew_pool_cancel(p, 0), 0);
    assert_int_equal(crew_pool_wait(p, CREW_FOREVER), 0);
    crew_pool_stats(p, &st);
    assert_int_equal(atomic_load(&counter), 1);
    assert_int_equal(st.started, 1);
    assert_int_equal(st.cancelled, 2);
    assert_int_equal(crew_rate_waiters(r), 0);
    crew_pool_destroy(p);
    crew_rate_destroy(r);
}

/* ---- wake-ups ------------------------------------------------------------------------- */

/* Jobs queued while a worker spins wake nobody (the spinner is meant to take them), so the
 * worker that takes one from idle must wake the next parked worker for the rest: otherwise
 * blocking jobs sit queued beside parked workers. Found by the error group's tests. */
static void test_wake_chain(void **state)
{
    (void)state;
    for (int round = 0; round < 300; round++) {
        crew_pool *p;
        assert_int_equal(crew_pool_create(&p, &(crew_pool_opts){.workers = 4, .queue_cap = 64}), 0);
        gate g;
        gate_init(&g);
        int n = 1 + round % 4;
        for (int i = 0; i < n; i++)
            assert_int_equal(crew_pool_submit(p, gate_job, &g, CREW_FOREVER, NULL), 0);
        eventually(atomic_load(&g.inside) == n);
        gate_open(&g);
        assert_int_equal(crew_pool_drain(p, CREW_FOREVER), 0);
        crew_pool_destroy(p);
        gate_fini(&g);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        leak_test(test_create_defaults),
        leak_test(test_create_invalid),
        leak_test(test_create_enomem),
        leak_test(test_worker_hooks),
        leak_test(test_submit_runs_all),
        leak_test(test_try_submit_full),
        leak_test(test_submit_blocking_wakeups),
        leak_test(test_submit_blocks_until_room),
        leak_test(test_unbuffered),
        leak_test(test_futures),
        leak_test(test_future_wait_forms),
        leak_test(test_results_channel),
        leak_test(test_job_timeout),
        leak_test(test_queue_timeout),
        leak_test(test_priorities),
        leak_test(test_cancel_discards),
        leak_test(test_parent_ctx),
        leak_test(test_drain),
        leak_test(test_wait_forms),
        leak_test(test_concurrent_shutdowns),
        leak_test(test_submit_from_job_during_drain),
        leak_test(test_self_submit_helped),
        leak_test(test_self_submit_in_place),
        leak_test(test_wait_from_job),
        leak_test(test_destroy_unread_results),
        leak_test(test_submit_ctx_and_past_deadline),
        leak_test(test_init_hooks_unlocked),
        leak_test(test_workers_start_together),
        leak_test(test_many_functions),
        leak_test(test_self_submit_waits_for_others),
        leak_test(test_resize),
        leak_test(test_resize_busy),
        leak_test(test_elastic),
        leak_test(test_log),
        leak_test(test_stats_prometheus),
        leak_test(test_no_alloc_per_job),
        leak_test(test_retry_job_option),
        leak_test(test_retry_pool_default),
        leak_test(test_retry_under_budget),
        leak_test(test_rate_cap),
        leak_test(test_wake_chain),
    };
    return cmocka_run_group_tests_name("pool", tests, NULL, NULL);
}
