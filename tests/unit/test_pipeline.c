/* Tests for src/pipeline.c: creation and its failures, passing, dropping, sinks, ordered
 * output, close draining in order, backpressure, cancellation and stage errors with every
 * item accounted, deadlines and ctx on send and recv, stats, hooks, destroy. */
#include "internal.h"
#include "testutil.h"

#include <string.h>

/* ---- items: each one's fate is recorded exactly once ----------------------------------- */

enum { LIVE, DELIVERED, DROPPED, FAILED, DISCARDED };

typedef struct tok {
    long id;
    size_t at;        /* the stage it goes to next: the stage functions move it on */
    _Atomic int fate; /* LIVE until accounted */
} tok;

#define MAX_TOKS 4096
static tok toks[MAX_TOKS];
static _Atomic long violations;

static void reset_toks(void)
{
    for (long i = 0; i < MAX_TOKS; i++) {
        toks[i].id = i;
        toks[i].at = 0;
        atomic_store(&toks[i].fate, LIVE);
    }
    atomic_store(&violations, 0);
}

static void set_fate(tok *t, int fate)
{
    int live = LIVE;
    if (!atomic_compare_exchange_strong(&t->fate, &live, fate))
        atomic_fetch_add(&violations, 1); /* accounted twice */
}

static long count_fate(long n, int fate)
{
    long c = 0;
    for (long i = 0; i < n; i++)
        c += atomic_load(&toks[i].fate) == fate;
    return c;
}

/* The discard callback: the stage index must be where the item was going. */
static void on_discard(void *arg, void *item, size_t stage)
{
    (void)arg;
    tok *t = item;
    if (t->at != stage)
        atomic_fetch_add(&violations, 1);
    set_fate(t, DISCARDED);
}

/* Stage functions wait at a gate until the test opens it, or their ctx ends. */
typedef struct gate {
    _Atomic bool open;
    _Atomic int inside; /* functions waiting at it */
} gate;

static int gate_wait(gate *g, crew_ctx *ctx)
{
    atomic_fetch_add(&g->inside, 1);
    while (!atomic_load(&g->open) && !crew_ctx_done(ctx))
        (void)crew_ctx_wait(ctx, crew_deadline_in(200 * CREW_USEC));
    atomic_fetch_sub(&g->inside, 1);
    return atomic_load(&g->open) ? 0 : crew_ctx_err(ctx);
}

/* What a test stage does with an item. */
typedef struct step_cfg {
    size_t idx;           /* the stage's index */
    gate *gate;           /* when set, wait here first */
    long gate_id;         /* only this id waits at the gate (-1: every id) */
    long drop_mod;        /* drop ids divisible by it (0: none) */
    long fail_id;         /* fail this id (-1: none) */
    bool out_on_fail;     /* the failing call also passes its item on */
    crew_pipeline **self; /* for calls back into the pipeline */
    _Atomic int wait_rc;  /* what crew_pipeline_wait returned from inside */
} step_cfg;

static int step(crew_ctx *ctx, void *in, void **out, void *arg)
{
    step_cfg *c = arg;
    tok *t = in;
    if (t->at != c->idx)
        atomic_fetch_add(&violations, 1);
    if (c->self)
        atomic_store(&c->wait_rc, crew_pipeline_wait(*c->self, CREW_NOW));
    if (c->gate && (c->gate_id < 0 || c->gate_id == t->id) && gate_wait(c->gate, ctx) != 0) {
        /* Cancelled while waiting: pass it on anyway; the pipeline will discard it. */
        t->at++;
        *out = t;
        return 0;
    }
    if (t->id == c->fail_id) {
        if (c->out_on_fail) {
            t->at++;
            *out = t;
        } else {
            set_fate(t, FAILED);
        }
        return -EIO;
    }
    if (c->drop_mod && t->id % c->drop_mod == 0) {
        set_fate(t, DROPPED);
        return 0;
    }
    t->at++;
    *out = t;
    return 0;
}

static step_cfg cfgs[4];

static void reset_cfgs(void)
{
    memset(cfgs, 0, sizeof cfgs);
    for (size_t i = 0; i < 4; i++) {
        cfgs[i].idx = i;
        cfgs[i].fail_id = -1;
        cfgs[i].gate_id = -1;
    }
}

/* n stages running step, with the given workers and queues. */
static crew_pipeline *make(size_t n, const unsigned *workers, const size_t *queues,
                           const crew_pipeline_opts *opts)
{
    crew_stage st[4];
    for (size_t i = 0; i < n; i++)
        st[i] =
            (crew_stage){.fn = step, .arg = &cfgs[i], .workers = workers[i], .queue = queues[i]};
    crew_pipeline *pl = NULL;
    assert_int_equal(crew_pipeline_create(&pl, st, n, opts), 0);
    assert_non_null(pl);
    return pl;
}

static crew_stage_stats stats_of(crew_pipeline *pl, size_t i)
{
    crew_stage_stats s;
    assert_int_equal(crew_pipeline_stage_stats(pl, i, &s), 0);
    return s;
}

/* Receives until the end; each item must have gone through every stage. */
static long recv_all(crew_pipeline *pl, size_t n, int want_end)
{
    long got = 0;
    void *item;
    int rc;
    while ((rc = crew_pipeline_recv(pl, &item, CREW_FOREVER, NULL)) == 0) {
        tok *t = item;
        if (t->at != n)
            atomic_fetch_add(&violations, 1);
        set_fate(t, DELIVERED);
        got++;
    }
    assert_int_equal(rc, want_end);
    return got;
}

/* A producer thread sending ids 0..n-1 with blocking sends, stopping at the first error;
 * with `close`, it closes the pipeline after the last. */
typedef struct producer {
    crew_pipeline *pl;
    long n;
    bool close;
    long sent;
    int rc;
    pthread_t tid;
} producer;

static void *produce(void *arg)
{
    producer *p = arg;
    for (long i = 0; i < p->n; i++) {
        if ((p->rc = crew_pipeline_send(p->pl, &toks[i], CREW_FOREVER, NULL)))
            break;
        p->sent++;
    }
    if (p->close && p->rc == 0)
        p->rc = crew_pipeline_close(p->pl);
    return NULL;
}

static void start_producer(producer *p, crew_pipeline *pl, long n)
{
    *p = (producer){pl, n, false, 0, 1, 0};
    assert_int_equal(pthread_create(&p->tid, NULL, produce, p), 0);
}

/* ---- creation --------------------------------------------------------------------------- */

static void test_create_invalid(void **state)
{
    (void)state;
    crew_pipeline *pl = (crew_pipeline *)&pl; /* a sentinel: untouched on failure */
    crew_stage ok = {.fn = step, .arg = &cfgs[0], .workers = 1};
    crew_stage nofn = {.workers = 1};
    crew_stage many = {.fn = step, .workers = 65537};
    assert_int_equal(crew_pipeline_create(NULL, &ok, 1, NULL), CREW_EINVAL);
    assert_int_equal(crew_pipeline_create(&pl, NULL, 1, NULL), CREW_EINVAL);
    assert_int_equal(crew_pipeline_create(&pl, &ok, 0, NULL), CREW_EINVAL);
    assert_int_equal(crew_pipeline_create(&pl, &nofn, 1, NULL), CREW_EINVAL);
    assert_int_equal(crew_pipeline_create(&pl, &many, 1, NULL), CREW_EINVAL);
    assert_int_equal(crew_pipeline_create(&pl, &ok, 1, &(crew_pipeline_opts){.flags = 1u << 7}),
                     CREW_EINVAL);
    assert_int_equal(crew_pipeline_create(&pl, &ok, 1,
                                          &(crew_pipeline_opts){.flags = CREW_PIPELINE_SINK |
                                                                         CREW_PIPELINE_ORDERED}),
                     CREW_EINVAL);
    assert_int_equal(crew_pipeline_create(&pl, &ok, 1,
                                          &(crew_pipeline_opts){.flags = CREW_PIPELINE_ORDERED,
                                                                .window = ((size_t)1 << 30) + 1}),
                     CREW_EINVAL);
    assert_ptr_equal(pl, (crew_pipeline *)&pl);
    crew_pipeline_destroy(NULL); /* ignored */
}

/* Fails every allocation and thread start of create in turn: each failure comes back as
 * CREW_ENOMEM or CREW_EAGAIN with nothing left running (leak_test counts the threads). */
static void create_failing(unsigned flags)
{
    reset_cfgs();
    crew_stage st[2] = {{.fn = step, .arg = &cfgs[0], .workers = 2, .queue = 1},
                        {.fn = step, .arg = &cfgs[1], .workers = 1}};
    int failures = 0;
    for (long k = 1;; k++) {
        crew_pipeline *pl = NULL;
        crew__test_fail_after(k);
        int rc = crew_pipeline_create(&pl, st, 2, &(crew_pipeline_opts){.flags = flags});
        crew__test_fail_after(0);
        if (rc == 0) {
            crew_pipeline_destroy(pl);
            break;
        }
        assert_true(rc == CREW_ENOMEM || rc == CREW_EAGAIN);
        assert_null(pl);
        failures++;
        assert_true(k < 200);
    }
    assert_true(failures >= 8); /* the pipeline, its arrays, ctx, slots, channels, pools */
}

static void test_create_nomem(void **state)
{
    (void)state;
    create_failing(0);
    create_failing(CREW_PIPELINE_ORDERED);
    create_failing(CREW_PIPELINE_SINK);
}

static int hook_init(void *hook_arg, unsigned id, void **st)
{
    (void)hook_arg;
    *st = (void *)(uintptr_t)(0x100 + id);
    return id == 1 && hook_arg ? -EIO : 0;
}

static void hook_fini(void *hook_arg, unsigned id, void *st)
{
    (void)hook_arg;
    if (st != (void *)(uintptr_t)(0x100 + id))
        atomic_fetch_add(&violations, 1);
}

/* A stage function that checks its worker's state, as set by the init hook. */
static int state_step(crew_ctx *ctx, void *in, void **out, void *arg)
{
    (void)ctx;
    (void)arg;
    if ((uintptr_t)crew_pool_worker_state() != 0x100 + (uintptr_t)crew_pool_worker_id())
        atomic_fetch_add(&violations, 1);
    ((tok *)in)->at++;
    *out = in;
    return 0;
}

static void test_worker_hooks(void **state)
{
    (void)state;
    reset_toks();
    crew_stage st = {.fn = state_step, .workers = 3, .init = hook_init, .fini = hook_fini};
    crew_pipeline *pl = NULL;
    assert_int_equal(crew_pipeline_create(&pl, &st, 1, &(crew_pipeline_opts){.output_cap = 64}), 0);
    for (long i = 0; i < 50; i++)
        assert_int_equal(crew_pipeline_send(pl, &toks[i], CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_pipeline_close(pl), 0);
    assert_int_equal(recv_all(pl, 1, CREW_EPIPE), 50);
    assert_int_equal(crew_pipeline_wait(pl, CREW_FOREVER), 0);
    crew_pipeline_destroy(pl);
    assert_int_equal(atomic_load(&violations), 0);
    /* An init hook's error fails the creation, and nothing is left running. */
    st.hook_arg = &st;
    pl = NULL;
    assert_int_equal(crew_pipeline_create(&pl, &st, 1, NULL), -EIO);
    assert_null(pl);
}

/* ---- the flow ------------------------------------------------------------------------- */

static void test_pass_through(void **state)
{
    (void)state;
    reset_toks();
    reset_cfgs();
    enum { N = 2000 };
    unsigned workers[3] = {2, 3, 1};
    size_t queues[3] = {4, 0, 2};
    crew_pipeline *pl = make(3, workers, queues, &(crew_pipeline_opts){.output_cap = 3});
    producer p = {pl, N, true, 0, 1, 0};
    assert_int_equal(pthread_create(&p.tid, NULL, produce, &p), 0);
    assert_int_equal(recv_all(pl, 3, CREW_EPIPE), N);
    assert_int_equal(pthread_join(p.tid, NULL), 0);
    assert_int_equal(p.rc, 0);
    assert_int_equal(crew_pipeline_close(pl), CREW_EPIPE);
    assert_int_equal(crew_pipeline_send(pl, &toks[N], CREW_FOREVER, NULL), CREW_EPIPE);
    void *item;
    assert_int_equal(crew_pipeline_recv(pl, &item, CREW_FOREVER, NULL), CREW_EPIPE);
    assert_int_equal(crew_pipeline_wait(pl, CREW_FOREVER), 0);
    assert_int_equal(count_fate(N, DELIVERED), N);
    for (size_t i = 0; i < 3; i++) {
        crew_stage_stats s = stats_of(pl, i);
        char want[16];
        snprintf(want, sizeof want, "stage%zu", i);
        assert_string_equal(s.name, want);
        assert_int_equal(s.workers, workers[i]);
        assert_int_equal(s.in, N);
        assert_int_equal(s.out, N);
        assert_int_equal(s.dropped + s.failed + s.discarded, 0);
        assert_int_equal(s.queue_cap, queues[i]);
        assert_int_equal(s.queue_depth, 0);
        assert_true(s.queue_peak <= queues[i]);
        assert_int_equal(s.busy, 0);
        assert_int_equal(s.run.count, N);
    }
    crew_stage_stats s;
    assert_int_equal(crew_pipeline_stage_stats(pl, 3, &s), CREW_EINVAL);
    assert_int_equal(atomic_load(&violations), 0);
    crew_pipeline_destroy(pl);
}

static void test_drop_and_sink(void **state)
{
    (void)state;
    reset_toks();
    reset_cfgs();
    enum { N = 300 };
    cfgs[0].drop_mod = 3;
    unsigned workers[2] = {2, 2};
    size_t queues[2] = {2, 2};
    crew_pipeline *pl =
        make(2, workers, queues,
             &(crew_pipeline_opts){.flags = CREW_PIPELINE_SINK, .discard = on_discard});
    void *item;
    assert_int_equal(crew_pipeline_recv(pl, &item, CREW_NOW, NULL), CREW_EINVAL);
    assert_int_equal(crew_pipeline_send(pl, NULL, CREW_NOW, NULL), CREW_EINVAL);
    for (long i = 0; i < N; i++)
        assert_int_equal(crew_pipeline_send(pl, &toks[i], CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_pipeline_close(pl), 0);
    /* A sink needs no reader to finish: its last stage hands everything to discard. */
    assert_int_equal(crew_pipeline_wait(pl, CREW_FOREVER), 0);
    assert_int_equal(count_fate(N, DROPPED), N / 3);
    assert_int_equal(count_fate(N, DISCARDED), N - N / 3);
    crew_stage_stats s0 = stats_of(pl, 0), s1 = stats_of(pl, 1);
    assert_int_equal(s0.in, N);
    assert_int_equal(s0.dropped, N / 3);
    assert_int_equal(s0.out, N - N / 3);
    assert_int_equal(s1.in, N - N / 3);
    assert_int_equal(s1.out, N - N / 3); /* passed to the sink */
    assert_int_equal(s1.discarded, 0);
    assert_int_equal(atomic_load(&violations), 0);
    crew_pipeline_destroy(pl);
}

/* Close drains the stages in order: a stage's input closes only once the stage before it
 * has finished, so a held-up stage still gets every item, and the output closes last. */
static void test_close_drains_in_order(void **state)
{
    (void)state;
    reset_toks();
    reset_cfgs();
    enum { N = 40 };
    gate g = {0};
    cfgs[1].gate = &g;
    unsigned workers[3] = {2, 2, 1};
    size_t queues[3] = {N, N, 1};
    crew_pipeline *pl = make(3, workers, queues, &(crew_pipeline_opts){.output_cap = N});
    for (long i = 0; i < N; i++)
        assert_int_equal(crew_pipeline_send(pl, &toks[i], CREW_NOW, NULL), 0);
    assert_int_equal(crew_pipeline_close(pl), 0);
    /* Stage 0 finishes everything while stage 1 is held: nothing is lost to the close. */
    eventually(stats_of(pl, 0).out == N && atomic_load(&g.inside) == 2);
    assert_int_equal(crew_pipeline_wait(pl, CREW_NOW), CREW_EAGAIN);
    assert_int_equal(crew_pipeline_wait(pl, crew_deadline_in(CREW_MSEC)), CREW_ETIMEDOUT);
    void *item;
    assert_int_equal(crew_pipeline_recv(pl, &item, CREW_NOW, NULL), CREW_EAGAIN);
    atomic_store(&g.open, true);
    assert_int_equal(crew_pipeline_wait(pl, CREW_FOREVER), 0); /* the output holds them all */
    assert_int_equal(recv_all(pl, 3, CREW_EPIPE), N);
    assert_int_equal(count_fate(N, DELIVERED), N);
    assert_int_equal(atomic_load(&violations), 0);
    crew_pipeline_destroy(pl);
}

/* A stalled last stage: once every queue is full and every worker holds an item, a send
 * cannot go in (the producer blocks), and the items inside are exactly the queues'
 * capacities plus the workers. Opening the gate lets it all through. */
static void test_backpressure(void **state)
{
    (void)state;
    reset_toks();
    reset_cfgs();
    gate g = {0};
    cfgs[2].gate = &g;
    unsigned workers[3] = {2, 1, 2};
    size_t queues[3] = {3, 2, 1};
    const long inside = 3 + 2 + 1 + 2 + 1 + 2;
    crew_pipeline *pl = make(3, workers, queues, &(crew_pipeline_opts){.output_cap = 2});
    long sent = 0;
    while (sent < inside) {
        int rc = crew_pipeline_send(pl, &toks[sent], CREW_NOW, NULL);
        if (rc == 0)
            sent++;
        else if (rc == CREW_EAGAIN)
            sched_yield(); /* items still moving down */
        else
            fail_msg("send: %d", rc);
    }
    /* Settled: every queue full, the last stage's workers in its function, the others
     * holding an item each, blocked passing it on. */
    eventually(stats_of(pl, 0).queue_depth == 3 && stats_of(pl, 1).queue_depth == 2 &&
               stats_of(pl, 2).queue_depth == 1 && atomic_load(&g.inside) == 2 &&
               stats_of(pl, 0).in == 2 + 2 + 4 && stats_of(pl, 1).in == 1 + 1 + 2);
    /* Nothing can move now: a send cannot go in, however it waits. */
    assert_int_equal(crew_pipeline_send(pl, &toks[sent], CREW_NOW, NULL), CREW_EAGAIN);
    assert_int_equal(crew_pipeline_send(pl, &toks[sent], crew_deadline_in(CREW_MSEC), NULL),
                     CREW_ETIMEDOUT);
    crew_ctx *c;
    assert_int_equal(crew_ctx_with_timeout(NULL, CREW_MSEC, &c), 0);
    assert_int_equal(crew_pipeline_send(pl, &toks[sent], CREW_FOREVER, c), CREW_ETIMEDOUT);
    crew_ctx_release(c);
    assert_int_equal(stats_of(pl, 2).busy, 2);
    assert_int_equal(stats_of(pl, 0).busy, 0); /* blocked passing on, not working */
    atomic_store(&g.open, true);
    assert_int_equal(crew_pipeline_send(pl, &toks[sent], CREW_FOREVER, NULL), 0);
    sent++;
    assert_int_equal(crew_pipeline_close(pl), 0);
    assert_int_equal(recv_all(pl, 3, CREW_EPIPE), sent);
    assert_int_equal(crew_pipeline_wait(pl, CREW_FOREVER), 0);
    crew_stage_stats s0 = stats_of(pl, 0), s1 = stats_of(pl, 1), s2 = stats_of(pl, 2);
    assert_int_equal(s0.queue_peak, 3);
    assert_int_equal(s1.queue_peak, 2);
    assert_int_equal(s2.queue_peak, 1);
    /* Waiting was measured: the producer's timed send, stage 0's and stage 1's workers. */
    assert_true(s0.in_blocked_ns > 0);
    assert_true(s0.blocked_ns > 0 && s1.in_blocked_ns == s0.blocked_ns);
    assert_true(s1.blocked_ns > 0 && s2.in_blocked_ns == s1.blocked_ns);
    assert_int_equal(atomic_load(&violations), 0);
    crew_pipeline_destroy(pl);
}

/* ---- cancellation and errors ---------------------------------------------------------- */

/* Checks that every item sent was accounted exactly once, and that the stats agree. */
static void check_accounting(crew_pipeline *pl, size_t n, long sent)
{
    long delivered = count_fate(sent, DELIVERED), dropped = count_fate(sent, DROPPED),
         failed = count_fate(sent, FAILED), discarded = count_fate(sent, DISCARDED);
    assert_int_equal(count_fate(sent, LIVE), 0);
    assert_int_equal(delivered + dropped + failed + discarded, sent);
    assert_int_equal(atomic_load(&violations), 0);
    uint64_t sum = (uint64_t)delivered;
    for (size_t i = 0; i < n; i++) {
        crew_stage_stats s = stats_of(pl, i);
        sum += s.dropped + s.failed + s.discarded;
        assert_int_equal(s.queue_depth, 0);
        assert_int_equal(s.busy, 0);
    }
    assert_int_equal(sum, (uint64_t)sent);
}

static void test_cancel_mid_flight(void **state)
{
    (void)state;
    reset_toks();
    reset_cfgs();
    enum { N = 500 };
    gate g = {0};
    cfgs[1].gate = &g;
    cfgs[0].drop_mod = 7;
    unsigned workers[3] = {2, 2, 1};
    size_t queues[3] = {8, 4, 2};
    crew_pipeline *pl =
        make(3, workers, queues, &(crew_pipeline_opts){.output_cap = 2, .discard = on_discard});
    producer p;
    start_producer(&p, pl, N);
    /* Items everywhere: stage 1 holds two, its queue is full, stage 0 is backed up. */
    eventually(atomic_load(&g.inside) == 2 && stats_of(pl, 1).queue_depth == 4 &&
               stats_of(pl, 0).queue_depth == 8);
    crew_pipeline_cancel(pl, 0);
    assert_int_equal(pthread_join(p.tid, NULL), 0);
    assert_int_equal(p.rc, CREW_ECANCELED); /* the blocked producer was told */
    assert_int_equal(crew_pipeline_wait(pl, CREW_FOREVER), CREW_ECANCELED);
    void *item;
    assert_int_equal(crew_pipeline_recv(pl, &item, CREW_FOREVER, NULL), CREW_ECANCELED);
    assert_int_equal(crew_pipeline_send(pl, &toks[N], CREW_NOW, NULL), CREW_ECANCELED);
    assert_int_equal(crew_pipeline_close(pl), CREW_EPIPE);
    crew_pipeline_cancel(pl, CREW_EBUSY); /* the first cause stays */
    assert_int_equal(crew_pipeline_wait(pl, CREW_NOW), CREW_ECANCELED);
    check_accounting(pl, 3, p.sent);
    assert_true(count_fate(p.sent, DISCARDED) >= 8 + 4 + 2);
    crew_pipeline_destroy(pl);
}

static void stage_error(bool out_on_fail)
{
    reset_toks();
    reset_cfgs();
    enum { N = 200 };
    cfgs[1].fail_id = 50;
    cfgs[1].out_on_fail = out_on_fail;
    unsigned workers[3] = {2, 2, 2};
    size_t queues[3] = {4, 4, 4};
    crew_pipeline *pl =
        make(3, workers, queues, &(crew_pipeline_opts){.output_cap = 4, .discard = on_discard});
    producer p;
    start_producer(&p, pl, N);
    /* Read until the failure stops the pipeline. */
    void *item;
    int rc;
    while ((rc = crew_pipeline_recv(pl, &item, CREW_FOREVER, NULL)) == 0)
        set_fate(item, DELIVERED);
    assert_int_equal(rc, CREW_ECANCELED);
    assert_int_equal(pthread_join(p.tid, NULL), 0);
    assert_true(p.rc == 0 || p.rc == CREW_ECANCELED);
    assert_int_equal(crew_pipeline_wait(pl, CREW_FOREVER), -EIO);
    assert_int_equal(stats_of(pl, 1).failed, 1);
    assert_int_equal(atomic_load(&toks[50].fate), out_on_fail ? DISCARDED : FAILED);
    if (out_on_fail) {
        /* The failing call's output was discarded, but the item is counted once: failed. */
        atomic_store(&toks[50].fate, FAILED);
    }
    check_accounting(pl, 3, p.sent);
    crew_pipeline_destroy(pl);
}

static void test_stage_error(void **state)
{
    (void)state;
    stage_error(false);
    stage_error(true);
}

static void test_parent_ctx(void **state)
{
    (void)state;
    reset_toks();
    reset_cfgs();
    unsigned workers[1] = {1};
    size_t queues[1] = {1};
    /* A parent's deadline cancels the pipeline with its cause. */
    crew_ctx *parent;
    assert_int_equal(crew_ctx_with_timeout(NULL, 2 * CREW_MSEC, &parent), 0);
    crew_pipeline *pl = make(1, workers, queues, &(crew_pipeline_opts){.ctx = parent});
    void *item;
    assert_int_equal(crew_pipeline_recv(pl, &item, CREW_FOREVER, NULL), CREW_ETIMEDOUT);
    assert_int_equal(crew_pipeline_wait(pl, CREW_FOREVER), CREW_ETIMEDOUT);
    crew_pipeline_destroy(pl);
    /* A parent already cancelled gives a pipeline that is over from the start. */
    crew_pipeline *dead = make(1, workers, queues, &(crew_pipeline_opts){.ctx = parent});
    assert_int_equal(crew_pipeline_send(dead, &toks[0], CREW_FOREVER, NULL), CREW_ETIMEDOUT);
    assert_int_equal(crew_pipeline_wait(dead, CREW_FOREVER), CREW_ETIMEDOUT);
    crew_pipeline_destroy(dead);
    crew_ctx_release(parent);
}

static void test_recv_forms(void **state)
{
    (void)state;
    reset_toks();
    reset_cfgs();
    unsigned workers[1] = {1};
    size_t queues[1] = {1};
    crew_pipeline *pl = make(1, workers, queues, &(crew_pipeline_opts){.output_cap = 1});
    void *item;
    assert_int_equal(crew_pipeline_recv(pl, NULL, CREW_NOW, NULL), CREW_EINVAL);
    assert_int_equal(crew_pipeline_recv(pl, &item, CREW_NOW, NULL), CREW_EAGAIN);
    assert_int_equal(crew_pipeline_recv(pl, &item, crew_deadline_in(CREW_MSEC), NULL),
                     CREW_ETIMEDOUT);
    crew_ctx *c;
    assert_int_equal(crew_ctx_with_timeout(NULL, CREW_MSEC, &c), 0);
    assert_int_equal(crew_pipeline_recv(pl, &item, CREW_FOREVER, c), CREW_ETIMEDOUT);
    crew_ctx_release(c);
    assert_int_equal(crew_pipeline_send(pl, &toks[0], CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_pipeline_recv(pl, &item, CREW_FOREVER, NULL), 0);
    assert_ptr_equal(item, &toks[0]);
    crew_pipeline_destroy(pl); /* unfinished: cancelled, nothing inside */
}

/* ---- ordered output ------------------------------------------------------------------- */

static int jitter_step(crew_ctx *ctx, void *in, void **out, void *arg)
{
    step_cfg *c = arg;
    tok *t = in;
    /* Items take different times, so they finish out of order. */
    for (long k = 0; k < (t->id * 7919) % 2000; k++)
        crew__cpu_relax();
    return step(ctx, in, out, c);
}

static void test_ordered(void **state)
{
    (void)state;
    reset_toks();
    reset_cfgs();
    enum { N = 1500 };
    cfgs[1].drop_mod = 10;
    crew_stage st[2] = {{.fn = jitter_step, .arg = &cfgs[0], .workers = 3, .queue = 2},
                        {.fn = jitter_step, .arg = &cfgs[1], .workers = 3, .queue = 2}};
    crew_pipeline *pl = NULL;
    assert_int_equal(
        crew_pipeline_create(&pl, st, 2, &(crew_pipeline_opts){.flags = CREW_PIPELINE_ORDERED}), 0);
    producer p;
    start_producer(&p, pl, N);
    void *item;
    long last = -1, got = 0;
    int rc;
    while (got < N - N / 10 && (rc = crew_pipeline_recv(pl, &item, CREW_FOREVER, NULL)) == 0) {
        tok *t = item;
        if (t->id <= last || t->id % 10 == 0 || t->at != 2)
            atomic_fetch_add(&violations, 1);
        last = t->id;
        set_fate(t, DELIVERED);
        got++;
    }
    assert_int_equal(got, N - N / 10);
    assert_int_equal(pthread_join(p.tid, NULL), 0);
    assert_int_equal(p.rc, 0);
    assert_int_equal(crew_pipeline_close(pl), 0);
    assert_int_equal(crew_pipeline_recv(pl, &item, CREW_FOREVER, NULL), CREW_EPIPE);
    assert_int_equal(crew_pipeline_wait(pl, CREW_FOREVER), 0);
    check_accounting(pl, 2, N);
    crew_pipeline_destroy(pl);
}

/* With the first item held up, the others finish and wait for it: the window bounds them,
 * and it is the producer that waits, not a worker. */
static void test_ordered_window(void **state)
{
    (void)state;
    reset_toks();
    reset_cfgs();
    gate g = {0};
    cfgs[0].gate = &g;
    crew_stage st[2] = {{.fn = step, .arg = &cfgs[0], .workers = 2, .queue = 8},
                        {.fn = step, .arg = &cfgs[1], .workers = 2, .queue = 8}};
    crew_pipeline *pl = NULL;
    assert_int_equal(crew_pipeline_create(&pl, st, 2,
                                          &(crew_pipeline_opts){.flags = CREW_PIPELINE_ORDERED,
                                                                .window = 5,
                                                                .discard = on_discard}),
                     0);
    for (long i = 0; i < 5; i++)
        assert_int_equal(crew_pipeline_send(pl, &toks[i], CREW_NOW, NULL), 0);
    assert_int_equal(crew_pipeline_send(pl, &toks[5], CREW_NOW, NULL), CREW_EAGAIN);
    assert_int_equal(crew_pipeline_send(pl, &toks[5], crew_deadline_in(CREW_MSEC), NULL),
                     CREW_ETIMEDOUT);
    void *item;
    assert_int_equal(crew_pipeline_recv(pl, &item, CREW_NOW, NULL), CREW_EAGAIN);
    atomic_store(&g.open, true);
    for (long i = 0; i < 5; i++) {
        assert_int_equal(crew_pipeline_recv(pl, &item, CREW_FOREVER, NULL), 0);
        assert_ptr_equal(item, &toks[i]);
    }
    /* Room again. Now only item 5 is held up: 6..9 wait for it in the reorder buffer,
     * and a cancel discards them as well as item 5. */
    atomic_store(&g.open, false);
    cfgs[0].gate_id = 5;
    for (long i = 5; i < 10; i++)
        assert_int_equal(crew_pipeline_send(pl, &toks[i], CREW_NOW, NULL), 0);
    eventually(stats_of(pl, 1).out == 5 + 4 && atomic_load(&g.inside) == 1);
    crew_pipeline_cancel(pl, CREW_EBUSY);
    assert_int_equal(crew_pipeline_wait(pl, CREW_FOREVER), CREW_EBUSY);
    assert_int_equal(crew_pipeline_recv(pl, &item, CREW_NOW, NULL), CREW_ECANCELED);
    for (long i = 5; i < 10; i++)
        assert_int_equal(atomic_load(&toks[i].fate), DISCARDED);
    assert_int_equal(atomic_load(&violations), 0);
    crew_pipeline_destroy(pl);
}

/* ---- the rest --------------------------------------------------------------------------- */

static void test_wait_from_stage(void **state)
{
    (void)state;
    reset_toks();
    reset_cfgs();
    crew_pipeline *pl = NULL;
    cfgs[0].self = &pl;
    atomic_store(&cfgs[0].wait_rc, 1);
    crew_stage st = {.fn = step, .arg = &cfgs[0], .workers = 1};
    assert_int_equal(
        crew_pipeline_create(&pl, &st, 1, &(crew_pipeline_opts){.flags = CREW_PIPELINE_SINK}), 0);
    assert_int_equal(crew_pipeline_send(pl, &toks[0], CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_pipeline_close(pl), 0);
    assert_int_equal(crew_pipeline_wait(pl, CREW_FOREVER), 0);
    assert_int_equal(atomic_load(&cfgs[0].wait_rc), CREW_EDEADLK);
    crew_pipeline_destroy(pl);
}

static void test_destroy_discards(void **state)
{
    (void)state;
    reset_toks();
    reset_cfgs();
    gate g = {0};
    cfgs[1].gate = &g;
    unsigned workers[2] = {1, 1};
    size_t queues[2] = {4, 4};
    /* Unfinished, with items inside and nobody reading: all discarded. */
    crew_pipeline *pl =
        make(2, workers, queues, &(crew_pipeline_opts){.output_cap = 4, .discard = on_discard});
    for (long i = 0; i < 6; i++)
        assert_int_equal(crew_pipeline_send(pl, &toks[i], CREW_FOREVER, NULL), 0);
    eventually(atomic_load(&g.inside) == 1);
    crew_pipeline_destroy(pl);
    assert_int_equal(count_fate(6, DISCARDED), 6);
    /* Finished normally with output unread: the unread items are discarded. */
    reset_toks();
    atomic_store(&g.open, true);
    pl = make(2, workers, queues, &(crew_pipeline_opts){.output_cap = 8, .discard = on_discard});
    for (long i = 0; i < 6; i++)
        assert_int_equal(crew_pipeline_send(pl, &toks[i], CREW_FOREVER, NULL), 0);
    assert_int_equal(crew_pipeline_close(pl), 0);
    assert_int_equal(crew_pipeline_wait(pl, CREW_FOREVER), 0);
    void *item;
    assert_int_equal(crew_pipeline_recv(pl, &item, CREW_FOREVER, NULL), 0);
    set_fate(item, DELIVERED);
    crew_pipeline_destroy(pl);
    assert_int_equal(count_fate(6, DISCARDED), 5);
    assert_int_equal(count_fate(6, DELIVERED), 1);
    assert_int_equal(atomic_load(&violations), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        leak_test(test_create_invalid),   leak_test(test_create_nomem),
        leak_test(test_worker_hooks),     leak_test(test_pass_through),
        leak_test(test_drop_and_sink),    leak_test(test_close_drains_in_order),
        leak_test(test_backpressure),     leak_test(test_cancel_mid_flight),
        leak_test(test_stage_error),      leak_test(test_parent_ctx),
        leak_test(test_recv_forms),       leak_test(test_ordered),
        leak_test(test_ordered_window),   leak_test(test_wait_from_stage),
        leak_test(test_destroy_discards),
    };
    return cmocka_run_group_tests_name("pipeline", tests, NULL, NULL);
}
