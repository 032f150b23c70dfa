/*
 * pipeline.c - stages joined by bounded channels, each stage run by its own pool.
 *
 * Shape. Stage i reads its input channel chans[i] and writes chans[i+1]; chans[n] is the
 * output (absent for a sink; an ordered pipeline puts its outputs into a crew_order
 * instead). Each stage has a crew_pool of `workers` threads running as many long-lived
 * loop jobs: take an item, call the stage function, pass its output on. Items travel as
 * {item, seq} elements; seq is only used by ordered pipelines, where crew_pipeline_send()
 * takes it from crew_order_reserve(), so at most `window` items are between send and recv
 * and the last stage's put never waits (a drop anywhere puts a skip for its seq, so the
 * stream never stalls).
 *
 * Threads. The producer(s) call send, the consumer(s) recv, anyone may cancel; each
 * stage's workers run its loop. Per-worker counters are single-writer (crew__count), in a
 * slot of their own cache line; stats sums them. No lock of this file exists: channels,
 * the order and the ctx bring their own.
 *
 * Ending. Close closes chans[0]. A loop ends when its input is closed and empty (EPIPE) or
 * the pipeline's ctx is cancelled; the last loop of stage i to end closes chans[i+1], so a
 * close drains the stages in order. The last loop of the whole pipeline "finishes" it: if
 * the ctx was cancelled it closes chans[0] (a send racing the cancel can then no longer
 * slip in) and drains every channel into the discard callback, and the order too; for an
 * ordered pipeline it closes the order; then it records the outcome (0, or the ctx's
 * cause) and wakes crew_pipeline_wait. A cancel reaches blocked loops through the ctx they
 * wait with, and blocked senders through a ctx watch that closes chans[0].
 *
 * Starting. A loop job is submitted only once the previous one has started, because a
 * pool wakes parked workers lazily: submitted in a burst, loops that block for good could
 * leave some workers parked with loops still queued, and the stage short of workers.
 *
 * Invariants: every item accepted by send is, exactly once, received, dropped by a stage,
 * failed by a stage, passed to a sink, or discarded; and once finished, no item is left in
 * any channel unless the pipeline drained normally (then only in the output, for recv).
 */
#include "internal.h"

#include <stdio.h>
#include <string.h>

#define MAX_WORKERS 65536u
#define MAX_WINDOW  ((size_t)1 << 30)

/* What the queues carry. */
typedef struct elem {
    void *item;   /* never NULL */
    uint64_t seq; /* its place in send order (ordered pipelines) */
} elem;

struct stage;

/* One worker (loop job) of a stage. Counters are written by that loop only. */
typedef struct wslot {
    _Atomic uint64_t in, out, dropped, failed, discarded; /* per crew_stage_stats */
    _Atomic uint64_t busy;                                /* 1 while inside fn */
    _Atomic uint64_t idle_ns, blocked_ns;                 /* per crew_stage_stats */
    crew__hist run;                                       /* time inside fn */
    struct stage *st;                                     /* its stage: immutable */
} CREW__ALIGNED wslot;

typedef struct stage {
    char name[64];             /* immutable */
    crew_stage_fn fn;          /* immutable */
    void *arg;                 /* immutable */
    unsigned workers;          /* immutable */
    size_t idx;                /* its index: immutable */
    crew_pipeline *pl;         /* immutable */
    crew_pool *pool;           /* runs its loops */
    crew_chan *in;             /* its input queue, chans[idx] */
    crew_chan *next;           /* chans[idx+1]: the next stage's input, or the output (NULL
                                  for the last stage of a sink or ordered pipeline) */
    wslot *slots;              /* workers slots */
    _Atomic unsigned live;     /* its loops still running */
    _Atomic size_t peak;       /* most items seen in `in` after a send */
    _Atomic uint64_t leftover; /* items discarded from `in` (or the output) at the end */
} stage;

struct crew_pipeline {
    size_t n;                         /* stages: immutable */
    stage *stages;                    /* n stages: immutable array */
    crew_chan **chans;                /* n + 1 channels; chans[n] may be NULL */
    crew_order *order;                /* ordered pipelines: the output */
    crew_ctx *ctx;                    /* the pipeline's: stage functions run with it */
    crew__ctx_node cancel_node;       /* our watch on ctx: closes chans[0] */
    bool watched;                     /* cancel_node is registered */
    unsigned flags;                   /* CREW_PIPELINE_*: immutable */
    crew_pipeline_discard_fn discard; /* immutable */
    void *discard_arg;                /* immutable */
    _Atomic uint64_t seq;             /* unordered pipelines: the next seq */
    _Atomic uint64_t send_blocked_ns; /* producers' time waiting in send */
    _Atomic unsigned live;            /* loops of all stages still running */
    _Atomic uint32_t started;         /* loops started: a futex word for create */
    _Atomic uint32_t finished;        /* 1 once finished: a futex word for wait */
    int result;                       /* 0 or the cause: written before finished */
};

/* ---- small helpers -------------------------------------------------------------------- */

/* Hands an item the pipeline no longer carries to the user's discard callback; stage_idx
 * is where it was going, which tells its type. */
static void give_up(crew_pipeline *pl, void *item, size_t stage_idx)
{
    if (pl->discard)
        pl->discard(pl->discard_arg, item, stage_idx);
}

/* Adds the nanoseconds since t0 (ticks) to a single-writer counter. */
static void add_ns(_Atomic uint64_t *c, uint64_t t0)
{
    crew__count(c, (uint64_t)crew__ticks_to_ns(crew__ticks() - t0));
}

/* Notes how full st's input queue is after a send into it. */
static void note_depth(stage *st)
{
    size_t len = crew_chan_len(st->in);
    size_t peak = atomic_load_explicit(&st->peak, memory_order_relaxed);
    while (len > peak && !atomic_compare_exchange_weak_explicit(
                             &st->peak, &peak, len, memory_order_relaxed, memory_order_relaxed))
        ;
}

/* A queue said CREW_EPIPE: the input was closed (by a close, or by a cancel), or the
 * output is closed and empty. Report the cancel when one ended the pipeline: once it has
 * finished, only if it finished cancelled (a cancel after a drain changes nothing). */
static int map_closed(crew_pipeline *pl, int rc)
{
    if (rc != CREW_EPIPE || !crew_ctx_done(pl->ctx))
        return rc;
    if (atomic_load_explicit(&pl->finished, memory_order_acquire) && pl->result == 0)
        return rc;
    return crew_ctx_err(pl->ctx);
}

/* An ordered pipeline's seq that will have no output: a skip keeps the stream going. A
 * reserved seq never waits; after the finish the order is closed, and that is fine too. */
static void skip_seq(crew_pipeline *pl, uint64_t seq)
{
    if (pl->order && crew_order_put(pl->order, seq, NULL, 0, CREW_NOW, NULL) != 0)
        return; /* closed: the consumer is told of the end, not of this seq */
}

/* ---- the end -------------------------------------------------------------------------- */

/* Discards what is left in c, counting it against st. */
static void drain_chan(crew_pipeline *pl, crew_chan *c, stage *st, size_t idx)
{
    elem e;
    while (c && crew_chan_try_recv(c, &e) == 0) {
        give_up(pl, e.item, idx);
        crew__count(&st->leftover, 1);
    }
}

/* Discards the results waiting in the (closed) order. */
static void drain_order(crew_pipeline *pl)
{
    crew_order_result r;
    while (crew_order_next(pl->order, &r, CREW_NOW, NULL) == 0)
        if (r.item) {
            give_up(pl, r.item, pl->n);
            crew__count(&pl->stages[pl->n - 1].leftover, 1);
        }
}

/* Run by the last loop to end, on its worker. */
static void finish(crew_pipeline *pl)
{
    bool cancelled = crew_ctx_done(pl->ctx);
    if (cancelled) {
        (void)crew_chan_close(pl->chans[0]);
        for (size_t i = 0; i < pl->n; i++)
            drain_chan(pl, pl->chans[i], &pl->stages[i], i);
        drain_chan(pl, pl->chans[pl->n], &pl->stages[pl->n - 1], pl->n);
    }
    if (pl->order) {
        (void)crew_order_close(pl->order);
        if (cancelled)
            drain_order(pl);
    }
    pl->result = cancelled ? crew_ctx_cause(pl->ctx) : 0;
    atomic_store_explicit(&pl->finished, 1, memory_order_release);
    crew__futex_wake(&pl->finished, INT32_MAX);
}

/* A loop ends. The last of its stage lets the next stage drain and end; the last of all
 * finishes the pipeline. */
static void loop_exit(stage *st)
{
    crew_pipeline *pl = st->pl;
    if (atomic_fetch_sub_explicit(&st->live, 1, memory_order_acq_rel) == 1 && st->next)
        (void)crew_chan_close(st->next);
    if (atomic_fetch_sub_explicit(&pl->live, 1, memory_order_acq_rel) == 1)
        finish(pl);
}

/* ---- a stage's loop --------------------------------------------------------------------- */

/* Passes st's output on: to the next stage, the output, the order, or a sink. Returns
 * true if it went on; false if a cancel kept it (then it was discarded). */
static bool pass_on(stage *st, wslot *w, void *out, uint64_t seq)
{
    crew_pipeline *pl = st->pl;
    size_t to = st->idx + 1;
    if (!st->next) {
        if (pl->order) {
            if (crew_order_put(pl->order, seq, out, 0, CREW_NOW, NULL) != 0)
                goto refused;
        } else {
            give_up(pl, out, to); /* a sink */
        }
        return true;
    }
    /* Try first: time is counted as blocked only when the next queue is really full. */
    elem e = {out, seq};
    int rc = crew_chan_try_send(st->next, &e);
    if (rc == CREW_EAGAIN) {
        uint64_t t0 = crew__ticks();
        rc = crew_chan_send(st->next, &e, CREW_FOREVER, pl->ctx);
        add_ns(&w->blocked_ns, t0);
    }
    if (rc)
        goto refused;
    if (to < pl->n)
        note_depth(&pl->stages[to]);
    return true;

refused:
    give_up(pl, out, to);
    return false;
}

static int stage_loop(crew_ctx *job_ctx, void *arg)
{
    (void)job_ctx; /* the stage runs with the pipeline's ctx */
    wslot *w = arg;
    stage *st = w->st;
    crew_pipeline *pl = st->pl;
    atomic_fetch_add_explicit(&pl->started, 1, memory_order_release);
    crew__futex_wake(&pl->started, 1);

    /* The ctx is checked before each item: once cancelled, a loop takes nothing more, even
     * from a queue that still holds items (the finish discards them). */
    elem e;
    while (!crew_ctx_done(pl->ctx)) {
        int rc = crew_chan_try_recv(st->in, &e);
        if (rc == CREW_EAGAIN) {
            uint64_t t0 = crew__ticks();
            rc = crew_chan_recv(st->in, &e, CREW_FOREVER, pl->ctx);
            add_ns(&w->idle_ns, t0);
        }
        if (rc)
            break; /* closed and empty, or cancelled */
        crew__count(&w->in, 1);
        atomic_store_explicit(&w->busy, 1, memory_order_relaxed);
        void *out = NULL;
        uint64_t t0 = crew__ticks();
        rc = st->fn(pl->ctx, e.item, &out, st->arg);
        crew__hist_add(&w->run, crew__ticks_to_ns(crew__ticks() - t0));
        atomic_store_explicit(&w->busy, 0, memory_order_relaxed);
        if (rc) {
            /* A failure stops everything; the first cause is what wait reports. */
            crew__count(&w->failed, 1);
            crew_ctx_cancel(pl->ctx, rc < 0 ? rc : CREW_EINVAL);
            if (out)
                give_up(pl, out, st->idx + 1);
        } else if (!out) {
            /* Dropped: an ordered output must still hear of its seq. */
            crew__count(&w->dropped, 1);
            skip_seq(pl, e.seq);
        } else {
            crew__count(pass_on(st, w, out, e.seq) ? &w->out : &w->discarded, 1);
        }
    }
    loop_exit(st);
    return 0;
}

/* ---- create and destroy ----------------------------------------------------------------- */

/* The pipeline's ctx was cancelled: refuse further sends and wake the blocked ones. Runs in
 * the cancelling thread; closing a channel never blocks. */
static void on_cancel(void *arg, int err)
{
    (void)err;
    crew_pipeline *pl = arg;
    (void)crew_chan_close(pl->chans[0]);
}

/* The order's discard callback, for results never taken when it is destroyed. */
static void order_discard(void *arg, uint64_t seq, void *item)
{
    (void)seq;
    crew_pipeline *pl = arg;
    if (item)
        give_up(pl, item, pl->n);
}

/* Frees what create made, in reverse; pools must be stopped already. */
static void pipeline_free(crew_pipeline *pl)
{
    for (size_t i = 0; i <= pl->n && pl->chans; i++)
        crew_chan_destroy(pl->chans[i]);
    crew_order_destroy(pl->order);
    if (pl->watched)
        (void)crew__ctx_unwatch(pl->ctx, &pl->cancel_node);
    crew_ctx_release(pl->ctx);
    for (size_t i = 0; i < pl->n && pl->stages; i++)
        crew__free(pl->stages[i].slots);
    crew__free(pl->chans);
    crew__free(pl->stages);
    crew__free(pl);
}

static int validate(const crew_stage *stages, size_t n, const crew_pipeline_opts *o)
{
    if (!stages || n == 0 || n > SIZE_MAX / 2 || o->window > MAX_WINDOW)
        return CREW_EINVAL;
    if (o->flags & ~(unsigned)(CREW_PIPELINE_SINK | CREW_PIPELINE_ORDERED))
        return CREW_EINVAL;
    if ((o->flags & CREW_PIPELINE_SINK) && (o->flags & CREW_PIPELINE_ORDERED))
        return CREW_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!stages[i].fn || stages[i].workers > MAX_WORKERS)
            return CREW_EINVAL;
    return 0;
}

/* Allocates the stages' slots, the channels and the order. */
static int build(crew_pipeline *pl, const crew_stage *stages, const crew_pipeline_opts *o)
{
    /* The default window of an ordered pipeline is what its queues and workers hold. */
    size_t n = pl->n, window = 0;
    for (size_t i = 0; i < n; i++) {
        stage *st = &pl->stages[i];
        const crew_stage *s = &stages[i];
        if (s->name)
            snprintf(st->name, sizeof st->name, "%s", s->name);
        else
            snprintf(st->name, sizeof st->name, "stage%zu", i);
        st->fn = s->fn;
        st->arg = s->arg;
        st->workers = s->workers ? s->workers : crew_ncpu();
        st->idx = i;
        st->pl = pl;
        st->slots = crew__aligned_alloc(CREW__CACHELINE, st->workers * sizeof(wslot));
        if (!st->slots)
            return CREW_ENOMEM;
        for (unsigned k = 0; k < st->workers; k++)
            st->slots[k].st = st;
        int rc = crew_chan_create(&pl->chans[i], sizeof(elem), s->queue);
        if (rc)
            return rc;
        st->in = pl->chans[i];
        window += s->queue + st->workers;
    }
    if (pl->flags & CREW_PIPELINE_ORDERED) {
        window = o->window ? o->window : window;
        crew_order_opts oo = {.window = window < MAX_WINDOW ? window : MAX_WINDOW,
                              .discard = order_discard,
                              .discard_arg = pl};
        int rc = crew_order_create(&pl->order, &oo);
        if (rc)
            return rc;
    } else if (!(pl->flags & CREW_PIPELINE_SINK)) {
        int rc = crew_chan_create(&pl->chans[n], sizeof(elem), o->output_cap);
        if (rc)
            return rc;
    }
    for (size_t i = 0; i < n; i++)
        pl->stages[i].next = pl->chans[i + 1];
    return 0;
}

/* Starts one pool per stage. On failure the pools already made are destroyed. */
static int start_pools(crew_pipeline *pl, const crew_stage *stages)
{
    for (size_t i = 0; i < pl->n; i++) {
        stage *st = &pl->stages[i];
        /* The loops time items themselves: the pool's timing would only see one long job
         * per worker. The queue holds every loop, so their submits never wait. */
        crew_pool_opts po = {.name = st->name,
                             .workers = st->workers,
                             .queue_cap = st->workers,
                             .init = stages[i].init,
                             .fini = stages[i].fini,
                             .hook_arg = stages[i].hook_arg};
        int rc = crew_pool_create(&st->pool, &po);
        if (rc) {
            while (i-- > 0) {
                crew_pool_destroy(pl->stages[i].pool);
                pl->stages[i].pool = NULL;
            }
            return rc;
        }
    }
    return 0;
}

/* Submits every loop, each once the previous one has started (see the design block), then
 * closes the pools: their workers exit as their loops end. */
static void start_loops(crew_pipeline *pl)
{
    uint32_t want = 0;
    for (size_t i = 0; i < pl->n; i++) {
        stage *st = &pl->stages[i];
        for (unsigned k = 0; k < st->workers; k++) {
            /* Room for every loop, no shutdown, one known function: it cannot fail. */
            int rc = crew_pool_submit(st->pool, stage_loop, &st->slots[k], CREW_FOREVER, NULL);
            crew_assert(rc == 0);
            want++;
            uint32_t v;
            while ((v = atomic_load_explicit(&pl->started, memory_order_acquire)) < want)
                (void)crew__futex_wait(&pl->started, v, CREW_FOREVER);
        }
        (void)crew_pool_close(st->pool);
    }
}

int crew_pipeline_create(crew_pipeline **out, const crew_stage *stages, size_t n,
                         const crew_pipeline_opts *opts)
{
    crew_pipeline_opts d = {0};
    if (!opts)
        opts = &d;
    if (!out)
        return CREW_EINVAL;
    int rc = validate(stages, n, opts);
    if (rc)
        return rc;
    crew_pipeline *pl = crew__calloc(1, sizeof *pl);
    if (!pl)
        return CREW_ENOMEM;
    pl->n = n;
    pl->flags = opts->flags;
    pl->discard = opts->discard;
    pl->discard_arg = opts->discard_arg;
    pl->stages = crew__calloc(n, sizeof *pl->stages);
    pl->chans = crew__calloc(n + 1, sizeof *pl->chans);
    rc = CREW_ENOMEM;
    if (!pl->stages || !pl->chans)
        goto err_free;
    if ((rc = crew_ctx_with_cancel(opts->ctx, &pl->ctx)))
        goto err_free;
    if ((rc = build(pl, stages, opts)))
        goto err_free;
    if ((rc = start_pools(pl, stages)))
        goto err_free;

    /* From here nothing fails. A ctx already done closes the input at once. */
    if (crew__ctx_watch(pl->ctx, &pl->cancel_node, on_cancel, pl) == 0)
        pl->watched = true;
    else
        on_cancel(pl, 0);
    unsigned total = 0;
    for (size_t i = 0; i < n; i++) {
        atomic_init(&pl->stages[i].live, pl->stages[i].workers);
        total += pl->stages[i].workers;
    }
    atomic_init(&pl->live, total);
    start_loops(pl);
    *out = pl;
    return 0;

err_free:
    pipeline_free(pl);
    return rc;
}

void crew_pipeline_destroy(crew_pipeline *pl)
{
    if (!pl)
        return;
    for (size_t i = 0; i < pl->n; i++)
        crew_assert(!crew__pool_in_job(pl->stages[i].pool)); /* not from a stage function */
    if (!atomic_load_explicit(&pl->finished, memory_order_acquire)) {
        crew_pipeline_cancel(pl, 0);
        (void)crew_pipeline_wait(pl, CREW_FOREVER);
    }
    /* The loops are all gone; this joins the workers' threads. */
    for (size_t i = 0; i < pl->n; i++)
        crew_pool_destroy(pl->stages[i].pool);
    /* After a drain, the output may still hold unread items. */
    drain_chan(pl, pl->chans[pl->n], &pl->stages[pl->n - 1], pl->n);
    pipeline_free(pl); /* the order discards what it still holds */
}

/* ---- the producer's and the consumer's calls -------------------------------------------- */

int crew_pipeline_send(crew_pipeline *pl, void *item, int64_t deadline, crew_ctx *ctx)
{
    crew_assert(pl);
    if (!item)
        return CREW_EINVAL;
    if (ctx && crew_ctx_done(ctx))
        return crew_ctx_err(ctx);
    if (crew_ctx_done(pl->ctx))
        return crew_ctx_err(pl->ctx);
    uint64_t t0 = 0;
    elem e = {item, 0};
    int rc;
    if (pl->order) {
        /* The window: wait until fewer than `window` items are between send and recv. */
        rc = crew_order_reserve(pl->order, &e.seq, CREW_NOW, NULL);
        if (rc == CREW_EAGAIN && deadline != CREW_NOW) {
            t0 = crew__ticks();
            rc = crew_order_reserve(pl->order, &e.seq, deadline, ctx);
        }
        if (rc)
            goto out;
    } else {
        e.seq = atomic_fetch_add_explicit(&pl->seq, 1, memory_order_relaxed);
    }
    /* As a worker does: only a real wait for room counts as the producer's blocked time. */
    rc = crew_chan_try_send(pl->chans[0], &e);
    if (rc == CREW_EAGAIN && deadline != CREW_NOW) {
        if (!t0)
            t0 = crew__ticks();
        rc = crew_chan_send(pl->chans[0], &e, deadline, ctx);
    }
    if (rc)
        skip_seq(pl, e.seq); /* reserved but never in: the stream must not wait for it */
    else
        note_depth(&pl->stages[0]);
out:
    if (t0)
        atomic_fetch_add_explicit(&pl->send_blocked_ns,
                                  (uint64_t)crew__ticks_to_ns(crew__ticks() - t0),
                                  memory_order_relaxed);
    return map_closed(pl, rc);
}

int crew_pipeline_close(crew_pipeline *pl)
{
    crew_assert(pl);
    return crew_chan_close(pl->chans[0]);
}

int crew_pipeline_recv(crew_pipeline *pl, void **item, int64_t deadline, crew_ctx *ctx)
{
    crew_assert(pl);
    if (!item || (pl->flags & CREW_PIPELINE_SINK))
        return CREW_EINVAL;
    /* No check of the pipeline's ctx here: after a cancel, the output closes once the last
     * stage's workers are gone, and an item still in it is as good as one given up. */
    if (!pl->order) {
        elem e;
        int rc = crew_chan_recv(pl->chans[pl->n], &e, deadline, ctx);
        if (rc == 0)
            *item = e.item;
        return map_closed(pl, rc);
    }
    for (;;) {
        crew_order_result r;
        int rc = crew_order_next(pl->order, &r, deadline, ctx);
        if (rc)
            return map_closed(pl, rc);
        if (r.item) {
            *item = r.item;
            return 0;
        }
        /* A seq whose item was dropped, or never got in: nothing to hand out. */
    }
}

int crew_pipeline_wait(crew_pipeline *pl, int64_t deadline)
{
    crew_assert(pl);
    /* A stage function waiting for its own pipeline's end would wait for itself. */
    for (size_t i = 0; i < pl->n; i++)
        if (crew__pool_in_job(pl->stages[i].pool))
            return CREW_EDEADLK;
    for (;;) {
        uint32_t v = atomic_load_explicit(&pl->finished, memory_order_acquire);
        if (v)
            return pl->result;
        if (deadline == CREW_NOW)
            return CREW_EAGAIN;
        if (crew__futex_wait(&pl->finished, v, deadline) == CREW_ETIMEDOUT &&
            !atomic_load_explicit(&pl->finished, memory_order_acquire))
            return CREW_ETIMEDOUT;
    }
}

void crew_pipeline_cancel(crew_pipeline *pl, int cause)
{
    crew_assert(pl);
    crew_ctx_cancel(pl->ctx, cause ? cause : CREW_ECANCELED);
}

int crew_pipeline_stage_stats(crew_pipeline *pl, size_t i, crew_stage_stats *out)
{
    if (!pl || !out || i >= pl->n)
        return CREW_EINVAL;
    /* Each counter is read on its own, without stopping the workers: a snapshot of a busy
     * pipeline is only approximately consistent; a finished one adds up exactly. */
    stage *st = &pl->stages[i];
    memset(out, 0, sizeof *out);
    memcpy(out->name, st->name, sizeof out->name);
    out->workers = st->workers;
    for (unsigned k = 0; k < st->workers; k++) {
        wslot *w = &st->slots[k];
        out->in += atomic_load_explicit(&w->in, memory_order_relaxed);
        out->out += atomic_load_explicit(&w->out, memory_order_relaxed);
        out->dropped += atomic_load_explicit(&w->dropped, memory_order_relaxed);
        out->failed += atomic_load_explicit(&w->failed, memory_order_relaxed);
        out->discarded += atomic_load_explicit(&w->discarded, memory_order_relaxed);
        out->busy += (unsigned)atomic_load_explicit(&w->busy, memory_order_relaxed);
        out->idle_ns += (int64_t)atomic_load_explicit(&w->idle_ns, memory_order_relaxed);
        out->blocked_ns += (int64_t)atomic_load_explicit(&w->blocked_ns, memory_order_relaxed);
        crew__hist_merge(&out->run, &w->run);
    }
    out->discarded += atomic_load_explicit(&st->leftover, memory_order_relaxed);
    out->queue_cap = crew_chan_cap(st->in);
    out->queue_depth = crew_chan_len(st->in);
    out->queue_peak = atomic_load_explicit(&st->peak, memory_order_relaxed);
    if (i == 0) {
        out->in_blocked_ns =
            (int64_t)atomic_load_explicit(&pl->send_blocked_ns, memory_order_relaxed);
    } else {
        stage *prev = &pl->stages[i - 1];
        for (unsigned k = 0; k < prev->workers; k++)
            out->in_blocked_ns +=
                (int64_t)atomic_load_explicit(&prev->slots[k].blocked_ns, memory_order_relaxed);
    }
    return 0;
}
