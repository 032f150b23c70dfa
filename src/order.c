/*
 * order.c - ordered results: a reorder buffer with a bounded window, and the map of an
 * index range into caller-owned slots.
 *
 * The reorder buffer. A ring of `window` slots indexed by seq % window holds the results
 * put ahead of the consumer; `next` is the seq the consumer takes next. A put of seq is
 * stored only while seq - next < window, so every buffered seq has a slot of its own and
 * the ring never holds more than window results. crew_order_reserve() hands out seqs from
 * `issued` only while issued - next < window: a reserved seq is inside the window from the
 * start, so its put never waits. Any thread may put, reserve, take or close.
 *
 * Waiting. One mutex guards the whole state. A thread that must wait queues a `waiter` on
 * its stack in one of three FIFO lists (puts, reserves, consumers), unlocks, and sleeps on
 * the waiter's 32-bit wake word. Whoever changes the state in a way that may satisfy a
 * waiter (a put of the next seq, a take that moves the window, a close) unlinks it, bumps
 * its word and wakes it, all under the mutex: a woken waiter cannot return before the waker
 * unlocks, so the waker never touches a dead stack frame. (The price is a futex call inside
 * the critical section, paid only when somebody sleeps.) A woken waiter re-checks its
 * condition under the lock, so a wake-up it cannot use (another thread got there first) only
 * sends it back to the queue. A ctx watch bumps the word from the cancelling thread without
 * the lock; the waiter unwatches before it returns (unwatch waits for a running callback),
 * so its stack frame outlives the callback. A waiter reads the word before it re-checks,
 * and sleeps only while the word still has that value, so no wake-up is lost.
 *
 * Lock order: o->mu is a leaf. The ctx is watched and unwatched outside it, so an order
 * call may come from an on-cancel hook; the ctx callback takes no lock.
 *
 * The map (crew_order_map) shares nothing with the buffer but the module's theme: results
 * land in the caller's slots by index. Its design block is above its code, further down.
 */
#include "internal.h"

#include <limits.h>
#include <string.h>

#define DEFAULT_WINDOW 64
#define MAX_WINDOW     ((size_t)1 << 30)

/* A buffered result. */
typedef struct slot {
    void *item; /* what was put */
    int err;    /* the code put with it */
    bool full;  /* a result is here: under o->mu */
} slot;

/* A thread blocked in put, reserve or next; lives on that thread's stack. */
typedef struct waiter {
    struct waiter *next, *prev; /* links in its queue: under o->mu */
    uint64_t seq;               /* a put's seq; a reserve's, once granted: under o->mu */
    bool granted;               /* a reserve was handed seq by a waker: under o->mu */
    bool queued;                /* in its queue: under o->mu */
    _Atomic uint32_t wake;      /* futex word, bumped by every wake-up */
} waiter;

/* A FIFO of waiters, doubly linked so a waiter that gives up can unlink itself. */
typedef struct waitq {
    waiter *head, *tail; /* oldest and newest: under o->mu */
} waitq;

struct crew_order {
    pthread_mutex_t mu;            /* guards everything below but the immutable fields */
    size_t window;                 /* ring size: immutable */
    slot *ring;                    /* window slots, seq % window: under mu */
    uint64_t next;                 /* the seq the consumer takes next */
    uint64_t issued;               /* seqs handed out by reserve: 0..issued-1 */
    uint64_t high;                 /* one past the highest seq put */
    size_t buffered;               /* full slots */
    size_t peak;                   /* the most full slots ever */
    uint64_t put_waits;            /* puts that queued at least once */
    uint64_t reserve_waits;        /* reserves that queued at least once */
    bool closed;                   /* crew_order_close was called */
    waitq putq;                    /* puts waiting for the window, oldest first */
    waitq resq;                    /* reserves waiting for the window, oldest first */
    waitq nextq;                   /* consumers waiting for the next seq, oldest first */
    crew_order_discard_fn discard; /* immutable */
    void *discard_arg;             /* immutable */
};

/* ---- waiters (callers hold o->mu) ----------------------------------------------------- */

static void q_push(waitq *q, waiter *w)
{
    w->next = NULL;
    w->prev = q->tail;
    if (q->tail)
        q->tail->next = w;
    else
        q->head = w;
    q->tail = w;
    w->queued = true;
}

static void q_remove(waitq *q, waiter *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        q->head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        q->tail = w->prev;
    w->next = w->prev = NULL;
    w->queued = false;
}

static void bump(waiter *w)
{
    atomic_fetch_add_explicit(&w->wake, 1, memory_order_release);
    crew__futex_wake(&w->wake, 1);
}

/* Unlinks w and wakes it. Under o->mu, so w cannot return before the caller unlocks. */
static void wake_one(waitq *q, waiter *w)
{
    q_remove(q, w);
    bump(w);
}

static void wake_all(waitq *q)
{
    while (q->head)
        wake_one(q, q->head);
}

/* The ctx callback: runs in the cancelling thread, without o->mu. */
static void wake_ctx(void *arg, int err)
{
    (void)err;
    bump(arg);
}

/* True if a call with this deadline must not wait. */
static bool expired(int64_t deadline)
{
    if (deadline == CREW_FOREVER)
        return false;
    return deadline == CREW_NOW || deadline <= crew_now();
}

/* One blocking call's waiting state: its waiter, its ctx watch, and whether it waited. */
typedef struct wait_ctx {
    waiter w;
    crew__ctx_node node;
    crew_ctx *ctx; /* the caller's ctx, or NULL */
    bool watched;  /* node is registered on ctx */
    bool waited;   /* queued at least once: a deadline then reads as CREW_ETIMEDOUT */
    uint32_t seen; /* w.wake as read before the last check of the condition */
} wait_ctx;

/* Starts a blocking call: refuses a ctx already done, else prepares wc and returns 0 with
 * o->mu held. */
static int wait_begin(crew_order *o, wait_ctx *wc, crew_ctx *ctx, uint64_t seq)
{
    if (ctx && crew_ctx_done(ctx))
        return crew_ctx_err(ctx);
    memset(wc, 0, sizeof *wc);
    wc->ctx = ctx;
    wc->w.seq = seq;
    atomic_init(&wc->w.wake, 0);
    crew__check(pthread_mutex_lock(&o->mu));
    return 0;
}

/* Called with o->mu held, after reading wc->seen and finding the condition false. Returns
 * ctx's error, CREW_EAGAIN or CREW_ETIMEDOUT if the call must give up, else queues the
 * waiter on q (counting the call in *waits the first time), sleeps until woken, cancelled
 * or the deadline, and returns 0 with o->mu held again and the waiter unlinked: the caller
 * re-reads wc->seen and re-checks. It returns 0 even when the ctx turned out to be done, so
 * that the caller sees first what a waker may have handed it meanwhile (a reserve's seq);
 * the next call reports the ctx. */
static int park(crew_order *o, waitq *q, wait_ctx *wc, int64_t deadline, uint64_t *waits)
{
    if (wc->ctx && crew_ctx_done(wc->ctx))
        return crew_ctx_err(wc->ctx);
    if (expired(deadline))
        return wc->waited ? CREW_ETIMEDOUT : CREW_EAGAIN;
    if (!wc->waited && waits)
        (*waits)++;
    wc->waited = true;
    q_push(q, &wc->w);
    crew__check(pthread_mutex_unlock(&o->mu));
    bool sleep = true;
    if (wc->ctx && !wc->watched) {
        /* A cancel before the watch is reported by the watch; after it, by the callback. */
        wc->watched = crew__ctx_watch(wc->ctx, &wc->node, wake_ctx, &wc->w) == 0;
        sleep = wc->watched;
    }
    if (sleep)
        (void)crew__futex_wait(&wc->w.wake, wc->seen, deadline);
    crew__check(pthread_mutex_lock(&o->mu));
    if (wc->w.queued)
        q_remove(q, &wc->w);
    return 0;
}

/* Reads the wake word before a check of the condition: a wake-up after this read makes
 * the sleep in park return at once. */
static void arm(wait_ctx *wc)
{
    wc->seen = atomic_load_explicit(&wc->w.wake, memory_order_acquire);
}

/* Ends a blocking call: unlocks, then ends the ctx watch outside the lock. */
static int wait_end(crew_order *o, wait_ctx *wc, int rc)
{
    crew__check(pthread_mutex_unlock(&o->mu));
    if (wc->watched)
        (void)crew__ctx_unwatch(wc->ctx, &wc->node);
    return rc;
}

/* ---- the window (callers hold o->mu) -------------------------------------------------- */

static slot *slot_of(crew_order *o, uint64_t seq)
{
    return &o->ring[seq % o->window];
}

/* True if seq may be stored now. */
static bool in_window(const crew_order *o, uint64_t seq)
{
    return seq - o->next < o->window;
}

/* Seqs handed out by reserve and not yet emitted. (Only a caller who mixes reserve with
 * seqs of its own numbering can see next pass issued; then none is outstanding.) */
static uint64_t outstanding(const crew_order *o)
{
    return o->issued > o->next ? o->issued - o->next : 0;
}

/* Hands out the next seq. */
static uint64_t issue(crew_order *o)
{
    if (o->issued < o->next)
        o->issued = o->next;
    return o->issued++;
}

/* After next moved on: wakes the puts that fit now, and hands the free seqs to the oldest
 * waiting reserves, so that none is passed by a newcomer. */
static void window_moved(crew_order *o)
{
    for (waiter *w = o->putq.head, *nx; w; w = nx) {
        nx = w->next;
        if (in_window(o, w->seq))
            wake_one(&o->putq, w);
    }
    while (o->resq.head && outstanding(o) < o->window) {
        waiter *w = o->resq.head;
        w->seq = issue(o);
        w->granted = true;
        wake_one(&o->resq, w);
    }
}

/* ---- the reorder buffer's API --------------------------------------------------------- */

int crew_order_create(crew_order **out, const crew_order_opts *opts)
{
    crew_order_opts d = {0};
    if (!opts)
        opts = &d;
    if (!out || opts->window > MAX_WINDOW)
        return CREW_EINVAL;
    crew_order *o = crew__calloc(1, sizeof *o);
    if (!o)
        return CREW_ENOMEM;
    o->window = opts->window ? opts->window : DEFAULT_WINDOW;
    o->ring = crew__calloc(o->window, sizeof *o->ring);
    if (!o->ring)
        goto err_free_order;
    if (pthread_mutex_init(&o->mu, NULL) != 0)
        goto err_free_ring;
    o->discard = opts->discard;
    o->discard_arg = opts->discard_arg;
    *out = o;
    return 0;

err_free_ring:
    crew__free(o->ring);
err_free_order:
    crew__free(o);
    return CREW_ENOMEM;
}

void crew_order_destroy(crew_order *o)
{
    if (!o)
        return;
    /* A thread still waiting here would wake on freed memory: a caller's bug. */
    crew_assert(!o->putq.head && !o->resq.head && !o->nextq.head);
    for (uint64_t seq = o->next; o->buffered > 0; seq++) {
        slot *s = slot_of(o, seq);
        if (!s->full)
            continue;
        s->full = false;
        o->buffered--;
        if (o->discard)
            o->discard(o->discard_arg, seq, s->item);
    }
    crew__check(pthread_mutex_destroy(&o->mu));
    crew__free(o->ring);
    crew__free(o);
}

int crew_order_reserve(crew_order *o, uint64_t *seq, int64_t deadline, crew_ctx *ctx)
{
    crew_assert(o);
    if (!seq)
        return CREW_EINVAL;
    wait_ctx wc;
    int rc = wait_begin(o, &wc, ctx, 0);
    if (rc)
        return rc;
    for (;;) {
        arm(&wc);
        if (wc.w.granted) {
            /* Handed over by a waker: ours even if the deadline or a cancel came too. */
            *seq = wc.w.seq;
            rc = 0;
            break;
        }
        if (o->closed) {
            rc = CREW_EPIPE;
            break;
        }
        /* First come, first served: a newcomer never passes a queued reserve. */
        if (!o->resq.head && outstanding(o) < o->window) {
            *seq = issue(o);
            rc = 0;
            break;
        }
        if ((rc = park(o, &o->resq, &wc, deadline, &o->reserve_waits)))
            break;
    }
    return wait_end(o, &wc, rc);
}

int crew_order_put(crew_order *o, uint64_t seq, void *item, int err, int64_t deadline,
                   crew_ctx *ctx)
{
    crew_assert(o);
    wait_ctx wc;
    int rc = wait_begin(o, &wc, ctx, seq);
    if (rc)
        return rc;
    for (;;) {
        arm(&wc);
        if (o->closed) {
            rc = CREW_EPIPE;
            break;
        }
        if (seq < o->next) {
            rc = CREW_EINVAL; /* emitted already */
            break;
        }
        if (in_window(o, seq)) {
            slot *s = slot_of(o, seq);
            if (s->full) {
                rc = CREW_EINVAL; /* put twice */
                break;
            }
            *s = (slot){.item = item, .err = err, .full = true};
            if (++o->buffered > o->peak)
                o->peak = o->buffered;
            if (seq >= o->high)
                o->high = seq + 1;
            if (seq == o->next && o->nextq.head)
                wake_one(&o->nextq, o->nextq.head);
            rc = 0;
            break;
        }
        if ((rc = park(o, &o->putq, &wc, deadline, &o->put_waits)))
            break;
    }
    return wait_end(o, &wc, rc);
}

int crew_order_next(crew_order *o, crew_order_result *out, int64_t deadline, crew_ctx *ctx)
{
    crew_assert(o);
    if (!out)
        return CREW_EINVAL;
    wait_ctx wc;
    int rc = wait_begin(o, &wc, ctx, 0);
    if (rc)
        return rc;
    for (;;) {
        arm(&wc);
        slot *s = slot_of(o, o->next);
        uint64_t end = o->high > o->issued ? o->high : o->issued;
        if (s->full) {
            *out = (crew_order_result){.seq = o->next, .item = s->item, .err = s->err};
            *s = (slot){0};
            o->buffered--;
        } else if (o->closed && o->next < end) {
            /* Nothing more will come for this seq: report the hole, go on with the rest. */
            *out = (crew_order_result){.seq = o->next, .item = NULL, .err = CREW_EPIPE};
        } else if (o->closed) {
            rc = CREW_EPIPE;
            break;
        } else {
            if ((rc = park(o, &o->nextq, &wc, deadline, NULL)))
                break;
            continue;
        }
        o->next++;
        window_moved(o);
        /* Another consumer may be waiting for the seq after this one. */
        if (o->nextq.head && (slot_of(o, o->next)->full || o->closed))
            wake_one(&o->nextq, o->nextq.head);
        rc = 0;
        break;
    }
    return wait_end(o, &wc, rc);
}

int crew_order_close(crew_order *o)
{
    crew_assert(o);
    crew__check(pthread_mutex_lock(&o->mu));
    int rc = o->closed ? CREW_EPIPE : 0;
    o->closed = true;
    wake_all(&o->putq);
    wake_all(&o->resq);
    wake_all(&o->nextq);
    crew__check(pthread_mutex_unlock(&o->mu));
    return rc;
}

int crew_order_stats(crew_order *o, crew_order_info *out)
{
    crew_assert(o && out);
    crew__check(pthread_mutex_lock(&o->mu));
    *out = (crew_order_info){
        .next = o->next,
        .reserved = o->issued,
        .window = o->window,
        .buffered = o->buffered,
        .peak = o->peak,
        .put_waits = o->put_waits,
        .reserve_waits = o->reserve_waits,
    };
    crew__check(pthread_mutex_unlock(&o->mu));
    return 0;
}

/* ---- the map ---------------------------------------------------------------------------
 *
 * crew_order_map runs fn over 0..n-1 without a job per index. Indices are claimed from one
 * atomic counter by "runners": helper jobs on the pool that loop claim -> run -> record
 * until the counter passes n, so the work balances itself across workers. The first runner
 * is submitted by the caller; every runner that starts while indices remain offers one more
 * to the pool with a try, so the map spreads over as many workers as are idle, one hop at a
 * time, without knowing the worker count, and at most one surplus runner is ever queued. A
 * caller that is itself one of the pool's jobs also claims indices, so a map from inside a
 * job always makes progress even when every other worker is busy (or waits in a map too):
 * it never waits for a runner that may never start, only for indices already running.
 *
 * Lifetime. The run's record is on the heap and reference counted (the caller, plus each
 * runner accepted by the pool), so a runner that starts after the caller has returned finds
 * nothing to claim and drops its reference. Nothing but the counters is touched after the
 * claim fails, and the map's ctx is only used between a successful claim and its `done`
 * increment, so the caller may release the ctx once done reaches n.
 *
 * Giving up. Once the map's ctx is done (the caller's ctx, the deadline, or the pool's ctx
 * through a watch), a claimed index is recorded with the ctx's error instead of running. The
 * waiting caller watches that ctx and then records the rest itself, because its runners may
 * sit in a busy queue. A runner dropped by the pool (cancel, queue budget) is told through
 * the job's discard callback; if it was the last one that could claim, it records the rest
 * with the reason it was dropped, so the caller is never left waiting for nobody.
 */

typedef struct map_run {
    crew_map_fn fn;           /* immutable */
    void *arg;                /* immutable */
    size_t n;                 /* indices: immutable */
    int *errs;                /* the caller's slots, or NULL: each written once, by its claimer */
    crew_pool *pool;          /* immutable */
    crew_ctx *ctx;            /* the map's ctx, released by the caller once done == n */
    crew__ctx_node pool_node; /* watch on the pool's ctx: its cancel cancels ctx */
    crew__ctx_node wait_node; /* the outside caller's watch on ctx */
    _Atomic size_t next;      /* the next index to claim (may run past n) */
    _Atomic size_t done;      /* indices recorded; the one that makes n wakes the caller */
    _Atomic unsigned live;    /* runners that may still claim, plus a caller in the loop */
    _Atomic long refs;        /* the caller + each runner the pool accepted */
    _Atomic uint32_t wake;    /* futex word of the waiting caller: bumped on done and cancel */
    pthread_mutex_t mu;       /* guards first_i and first_err (taken on failures only) */
    size_t first_i;           /* the lowest failing index, or SIZE_MAX */
    int first_err;            /* its error */
} map_run;

static void map_unref(map_run *m)
{
    if (atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) == 1) {
        crew__check(pthread_mutex_destroy(&m->mu));
        crew__free(m);
    }
}

static void map_bump(map_run *m)
{
    atomic_fetch_add_explicit(&m->wake, 1, memory_order_release);
    crew__futex_wake(&m->wake, 1);
}

/* Records index i's result. The release on done publishes errs[i] to the caller. */
static void map_record(map_run *m, size_t i, int rc)
{
    if (m->errs)
        m->errs[i] = rc;
    if (rc) {
        crew__check(pthread_mutex_lock(&m->mu));
        if (i < m->first_i) {
            m->first_i = i;
            m->first_err = rc;
        }
        crew__check(pthread_mutex_unlock(&m->mu));
    }
    if (atomic_fetch_add_explicit(&m->done, 1, memory_order_acq_rel) + 1 == m->n)
        map_bump(m);
}

/* Claims and runs indices until none is left. Once the map's ctx is done, claimed indices
 * are recorded with its error without running. */
static void map_work(map_run *m)
{
    for (;;) {
        size_t i = atomic_fetch_add_explicit(&m->next, 1, memory_order_relaxed);
        if (i >= m->n)
            return;
        int rc = crew_ctx_err(m->ctx);
        if (rc == 0)
            rc = m->fn(m->ctx, i, m->arg);
        map_record(m, i, rc);
    }
}

/* Claims every index left and records it with rc, running none. */
static void map_give_up(map_run *m, int rc)
{
    for (;;) {
        size_t i = atomic_fetch_add_explicit(&m->next, 1, memory_order_relaxed);
        if (i >= m->n)
            return;
        map_record(m, i, rc);
    }
}

/* One that could claim leaves. The last one records what nobody will claim any more. */
static void map_leave(map_run *m, int why)
{
    if (atomic_fetch_sub_explicit(&m->live, 1, memory_order_acq_rel) == 1)
        map_give_up(m, why);
}

static int map_runner(crew_ctx *ctx, void *arg);

/* A runner the pool dropped unrun (cancel, queue budget, destroy). */
static void map_dropped(crew_job_fn fn, void *arg, int reason)
{
    (void)fn;
    map_run *m = arg;
    map_leave(m, reason);
    map_unref(m);
}

/* Submits one more runner. Returns 0 or the submit's error. */
static int map_spawn(map_run *m, int64_t deadline, crew_ctx *ctx)
{
    crew_job job = {.fn = map_runner, .arg = m, .discard = map_dropped};
    atomic_fetch_add_explicit(&m->live, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
    int rc = crew_pool_submit_job(m->pool, &job, NULL, deadline, ctx);
    if (rc) {
        atomic_fetch_sub_explicit(&m->refs, 1, memory_order_relaxed);
        map_leave(m, rc);
    }
    return rc;
}

static int map_runner(crew_ctx *ctx, void *arg)
{
    (void)ctx; /* fn runs with the map's ctx, which the pool's cancel reaches by a watch */
    map_run *m = arg;
    if (atomic_load_explicit(&m->next, memory_order_relaxed) + 1 < m->n)
        (void)map_spawn(m, CREW_NOW, NULL); /* no room or nobody idle: this one goes on */
    map_work(m);
    map_leave(m, 0); /* nothing left to claim: the code is never recorded */
    map_unref(m);
    return 0;
}

/* The pool's ctx was cancelled: so is the map's. Runs in the cancelling thread. */
static void map_pool_cancelled(void *arg, int err)
{
    map_run *m = arg;
    crew_ctx_cancel(m->ctx, err);
}

/* The map's ctx was cancelled: wake the waiting caller so it records the rest. */
static void map_wake(void *arg, int err)
{
    (void)err;
    map_bump(arg);
}

/* Sleeps until every index is recorded. While the map's ctx is live, a cancel wakes the
 * caller, which then records what nobody has claimed. */
static void map_wait(map_run *m)
{
    bool watched = crew__ctx_watch(m->ctx, &m->wait_node, map_wake, m) == 0;
    bool gave_up = false;
    for (;;) {
        uint32_t seen = atomic_load_explicit(&m->wake, memory_order_acquire);
        if (atomic_load_explicit(&m->done, memory_order_acquire) == m->n)
            break;
        if (!gave_up && crew_ctx_done(m->ctx)) {
            map_give_up(m, crew_ctx_err(m->ctx));
            gave_up = true;
            continue;
        }
        (void)crew__futex_wait(&m->wake, seen, CREW_FOREVER);
    }
    if (watched)
        (void)crew__ctx_unwatch(m->ctx, &m->wait_node);
}

int crew_order_map(crew_pool *p, crew_map_fn fn, void *arg, size_t n, int *errs, int64_t deadline,
                   crew_ctx *ctx)
{
    if (!p || !fn || n > SIZE_MAX / 2)
        return CREW_EINVAL;
    if (n == 0)
        return 0;
    map_run *m = crew__calloc(1, sizeof *m);
    int rc = CREW_ENOMEM;
    if (!m)
        goto err_fill;
    if (pthread_mutex_init(&m->mu, NULL) != 0)
        goto err_free;
    if ((rc = crew_ctx_with_deadline(ctx, deadline, &m->ctx)))
        goto err_mutex;
    m->fn = fn;
    m->arg = arg;
    m->n = n;
    m->errs = errs;
    m->pool = p;
    m->first_i = SIZE_MAX;
    atomic_init(&m->refs, 1);
    if ((rc = crew__ctx_watch(crew_pool_ctx(p), &m->pool_node, map_pool_cancelled, m)))
        crew_ctx_cancel(m->ctx, rc);

    if (crew__pool_in_job(p)) {
        /* One of p's jobs: offer a runner to an idle worker and work alongside it. */
        atomic_init(&m->live, 1);
        if (n > 1)
            (void)map_spawn(m, CREW_NOW, NULL);
        map_work(m);
        map_leave(m, 0);
    } else {
        /* Waiting for room if p is full. If not even this one is accepted (p is shut down,
         * or full until the map's ctx ended), its failure records every index. */
        (void)map_spawn(m, CREW_FOREVER, m->ctx);
    }
    map_wait(m);

    (void)crew__ctx_unwatch(crew_pool_ctx(p), &m->pool_node);
    crew_ctx_release(m->ctx);
    rc = m->first_i == SIZE_MAX ? 0 : m->first_err;
    map_unref(m);
    return rc;

err_mutex:
    crew__check(pthread_mutex_destroy(&m->mu));
err_free:
    crew__free(m);
err_fill:
    if (errs)
        for (size_t i = 0; i < n; i++)
            errs[i] = rc;
    return rc;
}
