/*
 * pool.c - the thread pool: queue, workers, submit, futures, shutdowns, scaling, metrics.
 *
 * A job flows one way: submit -> ring slot -> worker -> fn(ctx, arg) -> result -> metrics.
 *
 * The queue. One bounded MPMC ring per priority level, after crossbeam's ArrayQueue: a
 * slot is 16 bytes {stamp, fn_id, arg}. The 64-bit head and tail each hold a lap and an
 * index (index < cap, lap in multiples of one_lap = the next power of two above cap), so
 * any capacity works without a division. A slot's 32-bit stamp says whose turn it is: equal
 * to the tail when a producer may fill it, tail+1 once filled, head+one_lap once emptied.
 * Producers and consumers claim positions with one CAS on tail or head and publish with a
 * release store of the stamp. The job's function is stored as a 32-bit id into a per-pool
 * table of up to 255 functions (filled lazily under the pool's lock, read without one), so
 * the slot stays 16 bytes; a job that needs more (a future, its own budgets or priority or
 * discard, a function past the table) is an "ext" record with fn_id 0, taken from a
 * freelist, so steady state allocates nothing either way. When timing is on, a side array
 * keeps each queued job's submit timestamp (8 more bytes per slot).
 *
 * Shutdown without races. Bit 63 of each ring's tail is the closed mark, set with one
 * fetch_or by close/cancel. A producer's CAS on tail either happened before the mark (its
 * job is in the ring and will be drained or dropped) or fails and sees the mark
 * (CREW_ESHUTDOWN): no job can slip in after workers decided the queue is finished. The
 * marks are set before the new state is published, and a worker exits only when it sees
 * the pool shutting down and then every ring empty.
 *
 * Capacity 0 ("no buffer") uses the same ring, sized to max_workers, plus credits: an idle
 * worker adds one credit, a submit must take one before pushing, so a job is accepted only
 * when a worker is free to take it.
 *
 * Sleeping. An idle worker spins before it parks on the work eventcount: the first idle
 * worker on an adaptive budget (10 us to 1 ms: doubled when a spin finds work, raised to
 * twice the idle time when woken for work within 1 ms, halved when a spin finds nothing),
 * the others for 5 us; spinning backs off to sched_yield so that on an oversubscribed
 * machine the spinner hands its core to the producer it waits for. The adaptive budget
 * learns from when work came (a submit that wakes a parked worker stamps the time), not
 * from when the kernel got round to running the woken worker. A producer wakes one
 * parked worker only if nobody spins. A producer facing a full ring parks on the space
 * eventcount at once (spinning for room would take a core from the workers that make it);
 * parked producers are woken together once the ring has drained to half, never one per
 * pop (that would be a wake-up per job). In both directions the notifier's seq_cst CAS (on
 * tail or head) and its seq_cst load of the waiter count pair with the waiter's seq_cst
 * increment and re-check, so no wake-up is lost and a notify with nobody waiting costs one
 * load: no system call per submit while workers are awake. A thread that takes a wake-up it does
 * not use (a retiring worker, a producer giving up) passes it on.
 *
 * Threads and locks. p->lock (a mutex) guards the worker list, spawning, joining, the
 * function table's insertions, the ext freelist and the results-channel close; it is never
 * held while running a job, waiting for one, or running an init hook (a spawner starts all
 * its workers, then drops it while it waits for their hooks, each worker pinned with
 * `awaited` so that it cannot be reaped meanwhile). Retirement is decided under the lock and
 * counted in p->retiring, so workers timing out together never go below the minimum. Lock order:
 * p->lock, then a ctx's lock (through crew_ctx_* calls), then a channel's. Metrics are per worker,
 * single writer (relaxed load + store), summed by crew_pool_stats under p->lock: updating them
 * never serialises the workers.
 */
#include "internal.h"
#include "retry_internal.h"

#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>

#define MARK       (1ull << 63)     /* closed mark in a ring's tail */
#define FN_TABLE   256              /* function ids 1..255; 0 means "ext record" */
#define MAX_CAP    (1ull << 30)     /* largest queue_cap */
#define SPIN_MIN   (10 * CREW_USEC) /* the first idle worker's spin budget: adaptive, */
#define SPIN_MAX   (1 * CREW_MSEC)  /* doubled when a spin finds work, halved when not */
#define SPIN_SHORT (5 * CREW_USEC)  /* other idle workers' spin before they park */
#define HELP_DEPTH 4                /* nested help-through runs inside a job's submit */

enum { OPEN, CLOSED, CANCELLED };

typedef struct slot {
    _Atomic uint32_t stamp; /* whose turn: see the design block */
    uint32_t fn_id;         /* written by the producer that owns the slot's turn */
    void *arg;
} slot;
_Static_assert(sizeof(slot) == 16, "a queued job costs 16 bytes");

typedef struct ring {
    _Atomic uint64_t head CREW__ALIGNED; /* consumers' CAS target */
    _Atomic uint64_t tail CREW__ALIGNED; /* producers' CAS target; bit 63 = closed */
    uint64_t cap CREW__ALIGNED;          /* slots in use, >= 1 */
    uint64_t one_lap;                    /* next power of two above cap */
    slot *slots;                         /* cap slots */
    uint64_t *ticks;                     /* submit times per slot, or NULL */
} ring;

/* An extended job: its own settings, and the future's state when one was asked for. */
struct crew_future {
    crew_job_fn fn;
    void *arg;
    crew_discard_fn discard;       /* NULL: the pool's */
    int64_t timeout;               /* run budget, ns; < 0 none, 0 the pool's */
    int64_t queue_timeout;         /* queue budget, ns; < 0 none, 0 the pool's */
    bool has_retry;                /* retry holds the job's own policy */
    crew__retry_plan retry;        /* checked and filled in at submit */
    uint64_t submit_ticks;         /* when it was submitted */
    crew_pool *pool;               /* the pool whose memory this record keeps alive */
    _Atomic int refs;              /* the pool's delivery + the user's future handle */
    _Atomic int done;              /* 1 once err and ran are final (release) */
    int err;                       /* fn's return or the reason it never ran */
    int ran;                       /* fn was called */
    crew__ec ec;                   /* future waiters park here */
    struct crew_future *next_free; /* freelist link, under p->lock */
};
typedef struct crew_future ext;

typedef struct worker {
    /* Single-writer counters, written by this worker only (crew__count). */
    _Atomic uint64_t started, succeeded, failed, cancelled, timed_out, retried;
    _Atomic uint64_t busy;  /* 1 while inside a job */
    crew__hist *wait, *run; /* queue wait and run time of the jobs this worker took; NULL
                               without timing (5 KiB a worker that nobody would read) */
    crew_pool *pool;
    unsigned id;
    pthread_t thread;
    void *state;            /* what the init hook set */
    char *job_ctx;          /* per-job ctx storage for timed jobs, one per help depth */
    bool exited;            /* the thread has left its loop: under p->lock */
    int64_t spin_ns;        /* this worker's adaptive spin budget; worker-private */
    bool retiring;          /* leaving through may_retire (counted in p->retiring) */
    const void *awaited;    /* the batch of a spawner waiting for its init, which keeps it
                               from being reaped; NULL if none; under lock */
    int init_rc;            /* the init hook's result, reported to the spawner */
    crew__event started_ev; /* set once init has run */
    struct worker *next;    /* in p->workers, under p->lock */
} CREW__ALIGNED worker;

struct crew_pool {
    /* Read-mostly configuration, fixed at create. */
    char name[64];
    unsigned levels; /* priority levels */
    ring *rings;     /* levels rings; rings[levels-1] is the highest priority */
    bool unbuffered; /* queue_cap == 0: submits need a credit */
    bool timing;
    int64_t job_timeout, queue_timeout, idle_timeout;
    bool has_retry;         /* retry holds the pool's default policy */
    crew__retry_plan retry; /* checked and filled in at create */
    crew_rate *rate;        /* job start cap, or NULL */
    crew_discard_fn discard;
    crew_worker_init_fn init;
    crew_worker_fini_fn fini;
    void *hook_arg;
    crew_log_fn log;
    void *log_arg;
    crew_chan *results;
    crew_ctx *ctx;           /* the pool's ctx: a child of opts.ctx */
    crew__ctx_node ctx_node; /* our watch on ctx: its cancel cancels the pool */

    _Atomic(crew_job_fn) fns[FN_TABLE]; /* id -> function; set once under lock */

    /* Hot shared words, each on its own line. */
    _Atomic int state CREW__ALIGNED;    /* OPEN, CLOSED, CANCELLED */
    _Atomic int spinning CREW__ALIGNED; /* idle workers spinning for work */
    _Atomic long credits CREW__ALIGNED; /* unbuffered pools: idle workers' offers */
    _Atomic unsigned self_blocked;      /* workers blocked submitting to this pool */
    crew__ec work_ec CREW__ALIGNED;     /* idle workers park here */
    _Atomic uint64_t work_woken;        /* when a submit last woke a parked worker (ticks) */
    crew__ec space_ec CREW__ALIGNED;    /* producers of a full pool park here */
    crew__ec exit_ec CREW__ALIGNED;     /* crew_pool_wait parks here */
    _Atomic uint64_t rejected;          /* refused submits (slow path only) */
    _Atomic uint64_t inline_runs;       /* jobs a blocked submit ran itself (slow path) */
    _Atomic unsigned live_hint;         /* == live, for lock-free reads */
    _Atomic int all_exited;             /* 1 once live reached 0 after a shutdown */

    pthread_mutex_t lock;      /* guards what follows; see the design block */
    worker *workers;           /* live and exited-but-unjoined workers */
    unsigned live;             /* workers in their loop */
    _Atomic unsigned min, max; /* resize targets: written under lock, read anywhere */
    _Atomic bool elastic;      /* max > min */
    _Atomic unsigned excess;   /* workers asked to exit (resize down); written under lock */
    unsigned retiring;         /* workers that decided to exit but have not yet left */
    unsigned next_id;
    crew_stats retired; /* counters of joined workers */
    crew__hist retired_wait, retired_run;
    ext *free_ext; /* recycled ext records */
    bool results_closed;
    _Atomic long refs; /* the user's reference + one per live ext record */
};

/* The worker running on this thread, if any: lets a job find its state, and lets submit
 * see that it is called from one of the pool's own jobs. */
static _Thread_local worker *tls_worker __attribute__((tls_model("initial-exec")));
static _Thread_local int tls_help_depth __attribute__((tls_model("initial-exec")));

/* One log event with the pool's name and, optionally, one key/value pair. Only ever called
 * off the hot path: spawns, exits, failures. */
static void logf_(crew_pool *p, int level, const char *msg, const char *k, const char *v)
{
    if (!p->log)
        return;
    const char *kv[] = {"pool", p->name, k, v, NULL};
    if (!k)
        kv[2] = NULL;
    p->log(p->log_arg, level, msg, kv);
}

/* ---- the ring ----------------------------------------------------------------------- */

/* Allocates a ring of cap slots (and, for timing, their submit timestamps). Each slot's
 * stamp starts at its own index: the producer's turn on lap 0. */
static int ring_init(ring *r, uint64_t cap, bool ticks)
{
    r->cap = cap;
    r->one_lap = 1;
    while (r->one_lap <= cap)
        r->one_lap <<= 1;
    r->slots = crew__aligned_alloc(CREW__CACHELINE, cap * sizeof(slot));
    r->ticks = ticks ? crew__aligned_alloc(CREW__CACHELINE, cap * sizeof(uint64_t)) : NULL;
    if (!r->slots || (ticks && !r->ticks)) {
        crew__free(r->slots);
        crew__free(r->ticks);
        return CREW_ENOMEM;
    }
    for (uint64_t i = 0; i < cap; i++)
        atomic_init(&r->slots[i].stamp, (uint32_t)i);
    atomic_init(&r->head, 0);
    atomic_init(&r->tail, 0);
    return 0;
}

/* Frees a ring's memory; its jobs must have been run or dropped. */
static void ring_fini(ring *r)
{
    crew__free(r->slots);
    crew__free(r->ticks);
}

/* Position of a lap-encoded index, as a plain count. */
static uint64_t ring_pos(const ring *r, uint64_t x)
{
    x &= ~MARK;
    return (x / r->one_lap) * r->cap + (x & (r->one_lap - 1));
}

static uint64_t ring_len(ring *r)
{
    uint64_t h = atomic_load_explicit(&r->head, memory_order_acquire);
    uint64_t t = atomic_load_explicit(&r->tail, memory_order_acquire);
    uint64_t ph = ring_pos(r, h), pt = ring_pos(r, t);
    return pt > ph ? pt - ph : 0;
}

/* 0 (pushed), CREW_EAGAIN (full) or CREW_ESHUTDOWN (closed, unless closed_ok: a pool's
 * own job adding work while the pool drains). The mark is carried through the CAS. */
static int ring_push(ring *r, uint32_t fn_id, void *arg, uint64_t ticks, bool closed_ok)
{
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    for (;;) {
        if ((tail & MARK) && !closed_ok)
            return CREW_ESHUTDOWN;
        uint64_t mark = tail & MARK, t = tail & ~MARK;
        uint64_t idx = t & (r->one_lap - 1);
        uint64_t lap = t & ~(r->one_lap - 1);
        uint64_t next = (idx + 1 < r->cap ? t + 1 : lap + r->one_lap) | mark;
        slot *s = &r->slots[idx];
        uint32_t stamp = atomic_load_explicit(&s->stamp, memory_order_acquire);
        if (stamp == (uint32_t)t) {
            if (atomic_compare_exchange_weak_explicit(&r->tail, &tail, next, memory_order_seq_cst,
                                                      memory_order_relaxed)) {
                s->fn_id = fn_id;
                s->arg = arg;
                if (r->ticks)
                    r->ticks[idx] = ticks;
                atomic_store_explicit(&s->stamp, (uint32_t)(t + 1), memory_order_release);
                return 0;
            }
        } else if ((uint32_t)(stamp + r->one_lap) == (uint32_t)(t + 1)) {
            /* The slot still holds last lap's job: full, unless a consumer is mid-pop. */
            uint64_t head = atomic_load_explicit(&r->head, memory_order_seq_cst);
            if (head + r->one_lap == t)
                return CREW_EAGAIN;
            crew__cpu_relax();
            tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
        } else {
            crew__cpu_relax(); /* another producer is mid-push: its CAS moved tail */
            tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
        }
    }
}

/* True if it took a job. */
static bool ring_pop(ring *r, uint32_t *fn_id, void **arg, uint64_t *ticks)
{
    uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    for (;;) {
        uint64_t idx = head & (r->one_lap - 1);
        uint64_t lap = head & ~(r->one_lap - 1);
        slot *s = &r->slots[idx];
        uint32_t stamp = atomic_load_explicit(&s->stamp, memory_order_acquire);
        if (stamp == (uint32_t)(head + 1)) {
            uint64_t next = idx + 1 < r->cap ? head + 1 : lap + r->one_lap;
            if (atomic_compare_exchange_weak_explicit(&r->head, &head, next, memory_order_seq_cst,
                                                      memory_order_relaxed)) {
                *fn_id = s->fn_id;
                *arg = s->arg;
                *ticks = r->ticks ? r->ticks[idx] : 0;
                atomic_store_explicit(&s->stamp, (uint32_t)(head + r->one_lap),
                                      memory_order_release);
                return true;
            }
        } else if (stamp == (uint32_t)head) {
            uint64_t tail = atomic_load_explicit(&r->tail, memory_order_seq_cst) & ~MARK;
            if (tail == head)
                return false;
            crew__cpu_relax(); /* a producer claimed the slot and is writing it */
            head = atomic_load_explicit(&r->head, memory_order_relaxed);
        } else {
            crew__cpu_relax();
            head = atomic_load_explicit(&r->head, memory_order_relaxed);
        }
    }
}

/* ---- small helpers ------------------------------------------------------------------- */

/* One step of an idle worker's spin for work: two pause instructions (some 30-60 ns on
 * current x86), so a job is picked up well under a microsecond after it is pushed; every
 * 64th step yields instead, so that a spinner on an oversubscribed machine hands its core
 * to a runnable thread (often the very producer it waits for) instead of burning its time
 * slice. Polling that often costs no bus traffic: the ring's head slot stays in this core's
 * cache, shared, until a producer writes it. */
static void backoff(unsigned *round)
{
    if (++*round % 64 == 0) {
        sched_yield();
    } else {
        crew__cpu_relax();
        crew__cpu_relax();
    }
}

static uint32_t fn_slot_hash(crew_job_fn fn)
{
    uint64_t x = (uint64_t)(uintptr_t)fn * 0x9E3779B97F4A7C15ull;
    return (uint32_t)(x >> 56); /* 0..255 */
}

/* The function's id in p's table (1..255), inserting it; 0 if the table is full. */
static uint32_t fn_id_of(crew_pool *p, crew_job_fn fn)
{
    uint32_t h = fn_slot_hash(fn);
    for (uint32_t i = 0; i < FN_TABLE - 1; i++) {
        uint32_t id = 1 + (h + i) % (FN_TABLE - 1);
        crew_job_fn cur = atomic_load_explicit(&p->fns[id], memory_order_acquire);
        if (cur == fn)
            return id;
        if (cur == NULL) {
            crew__check(pthread_mutex_lock(&p->lock));
            cur = atomic_load_explicit(&p->fns[id], memory_order_relaxed);
            if (cur == NULL)
                atomic_store_explicit(&p->fns[id], fn, memory_order_release);
            crew__check(pthread_mutex_unlock(&p->lock));
            if (cur == NULL || cur == fn)
                return id;
        }
    }
    return 0;
}

static void pool_unref(crew_pool *p);

/* An extended-job record, from the freelist or freshly allocated (only until the freelist
 * has warmed up). Each live record holds a reference on the pool's memory, so that a
 * future may outlive crew_pool_destroy. */
static ext *ext_get(crew_pool *p)
{
    crew__check(pthread_mutex_lock(&p->lock));
    ext *e = p->free_ext;
    if (e)
        p->free_ext = e->next_free;
    crew__check(pthread_mutex_unlock(&p->lock));
    if (!e && !(e = crew__malloc(sizeof *e)))
        return NULL;
    memset(e, 0, sizeof *e);
    e->pool = p;
    crew__ec_init(&e->ec);
    atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
    return e;
}

/* Drops one of a record's references (the pool's delivery, the user's future); the last
 * puts it back on the freelist and releases its hold on the pool's memory. */
static void ext_put(ext *e)
{
    if (atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) != 1)
        return;
    crew_pool *p = e->pool;
    crew__check(pthread_mutex_lock(&p->lock));
    e->next_free = p->free_ext;
    p->free_ext = e;
    crew__check(pthread_mutex_unlock(&p->lock));
    pool_unref(p);
}

/* ---- running and dropping jobs (worker side) ----------------------------------------- */

/* Reports a finished or dropped job: to the results channel, then to its future. This is
 * the one place a job's outcome leaves the pool, so each job is reported exactly once. */
static void deliver(crew_pool *p, ext *e, crew_job_fn fn, void *arg, int err, int ran)
{
    if (p->results) {
        crew_result res = {fn, arg, err, ran};
        /* A full channel blocks the worker: backpressure, and nothing lost. The pool closes
         * the channel only after its last worker, so this fails only if the user closed
         * it; destroy empties it itself, so an unread channel cannot hang destroy. */
        if (crew_chan_send(p->results, &res, CREW_FOREVER, NULL) != 0)
            logf_(p, CREW_LOG_WARN, "result_lost", "error", "results channel closed");
    }
    if (e) {
        e->err = err;
        e->ran = ran;
        atomic_store_explicit(&e->done, 1, memory_order_release);
        crew__ec_notify(&e->ec, INT_MAX);
        ext_put(e);
    }
}

/* Drops a job that will never run: discard callback, result, counters. */
static void drop(crew_pool *p, worker *w, ext *e, crew_job_fn fn, void *arg, int reason,
                 uint64_t submit_ticks)
{
    crew_discard_fn discard = e && e->discard ? e->discard : p->discard;
    if (discard)
        discard(fn, arg, reason);
    if (p->timing && submit_ticks)
        crew__hist_add(w->wait, crew__ticks_to_ns(crew__ticks() - submit_ticks));
    crew__count(reason == CREW_ETIMEDOUT ? &w->timed_out : &w->cancelled, 1);
    deliver(p, e, fn, arg, reason, 0);
}

/* Bytes between the per-depth job ctx buffers of a worker. */
static size_t ctx_stride(void)
{
    return (crew__ctx_sizeof() + CREW__CACHELINE - 1) & ~(size_t)(CREW__CACHELINE - 1);
}

/* The retry hook of a job with a retry policy: runs on the job's worker thread, so the
 * worker's single-writer counter takes it. */
static void count_retry(void *arg, int err, unsigned attempt, int64_t delay)
{
    (void)err, (void)attempt, (void)delay;
    crew__count(&((worker *)arg)->retried, 1);
}

/* Runs (or drops) one job taken from a ring. *clock is the time the caller knows it took
 * the job, or 0; on return it holds the time the job ended (0 if nothing was timed). A
 * worker that takes its next job straight away passes that end on as the next start, so a
 * busy worker reads the clock once per job, not twice: the next job's queue wait then
 * stops a pop earlier (some 20 ns), which the histograms' 12.5% buckets cannot see. */
static void run_job(crew_pool *p, worker *w, uint32_t fn_id, void *arg, uint64_t submit_ticks,
                    uint64_t *clock)
{
    ext *e = NULL;
    crew_job_fn fn;
    int64_t timeout = p->job_timeout, queue_timeout = p->queue_timeout;
    const crew__retry_plan *retry = p->has_retry ? &p->retry : NULL;
    if (fn_id == 0) {
        e = arg;
        fn = e->fn;
        arg = e->arg;
        submit_ticks = e->submit_ticks;
        if (e->timeout)
            timeout = e->timeout;
        if (e->queue_timeout)
            queue_timeout = e->queue_timeout;
        if (e->has_retry)
            retry = &e->retry;
    } else {
        fn = atomic_load_explicit(&p->fns[fn_id], memory_order_acquire);
    }

    if (crew__unlikely(atomic_load_explicit(&p->state, memory_order_acquire) == CANCELLED)) {
        drop(p, w, e, fn, arg, CREW_ECANCELED, submit_ticks);
        return;
    }
    uint64_t start = *clock;
    *clock = 0;
    if (p->rate) {
        /* A start cap: the job is taken, and waits here for its token. Only the pool's
         * cancel (or a drain's deadline) ends the wait, and then the job is dropped. */
        if (crew_rate_wait(p->rate, CREW_FOREVER, p->ctx) != 0) {
            drop(p, w, e, fn, arg, CREW_ECANCELED, submit_ticks);
            return;
        }
        start = 0;
    }
    if (!start && (p->timing || queue_timeout > 0))
        start = crew__ticks();
    if (queue_timeout > 0 && crew__ticks_to_ns(start - submit_ticks) > queue_timeout) {
        drop(p, w, e, fn, arg, CREW_ETIMEDOUT, submit_ticks);
        return;
    }

    crew_ctx *ctx = p->ctx, *mine = NULL;
    bool child = false;
    if (timeout > 0) {
        mine = (crew_ctx *)(w->job_ctx + (size_t)tls_help_depth * ctx_stride());
        int crc = crew__ctx_init_child(mine, p->ctx, crew_deadline_in(timeout));
        if (crc == 0) {
            ctx = mine;
            child = true;
        } else {
            logf_(p, CREW_LOG_ERROR, "job_timeout_unarmed", "error", crew_strerror(crc));
        }
    }
    uint64_t was_busy = atomic_load_explicit(&w->busy, memory_order_relaxed);
    atomic_store_explicit(&w->busy, 1, memory_order_relaxed);
    crew__count(&w->started, 1);
    int rc = retry ? crew__retry_run(retry, fn, arg, ctx, NULL, count_retry, w) : fn(ctx, arg);
    if (child)
        crew__ctx_fini_child(mine);
    if (p->timing) {
        uint64_t end = crew__ticks();
        crew__hist_add(w->wait, crew__ticks_to_ns(start - submit_ticks));
        crew__hist_add(w->run, crew__ticks_to_ns(end - start));
        *clock = end;
    }
    crew__count(rc == 0                ? &w->succeeded
                : rc == CREW_ETIMEDOUT ? &w->timed_out
                : rc == CREW_ECANCELED ? &w->cancelled
                                       : &w->failed,
                1);
    atomic_store_explicit(&w->busy, was_busy, memory_order_relaxed);
    deliver(p, e, fn, arg, rc, 1);
}

/* Takes the highest-priority queued job. */
static bool pop_any(crew_pool *p, uint32_t *fn_id, void **arg, uint64_t *ticks)
{
    for (unsigned l = p->levels; l-- > 0;) {
        ring *r = &p->rings[l];
        if (ring_pop(r, fn_id, arg, ticks)) {
            /* Producers blocked on a full ring are woken together once it has drained to
             * half, not one per pop: that would make a wake-up per job. The pop that crosses
             * the threshold comes after their "full" check, and its seq_cst load (after the
             * seq_cst CAS in ring_pop) sees their announcement. */
            if (crew__unlikely(crew__ec_waiters(&p->space_ec)) && !p->unbuffered &&
                ring_len(r) <= r->cap / 2)
                crew__ec_notify_after_rmw(&p->space_ec, INT_MAX);
            return true;
        }
    }
    return false;
}

/* True if no ring holds a job, counting jobs claimed but not yet published: a worker that
 * sees the pool shutting down exits only on this. */
static bool queues_empty(crew_pool *p)
{
    for (unsigned l = 0; l < p->levels; l++)
        if (ring_len(&p->rings[l]))
            return false;
    return true;
}

/* ---- workers ------------------------------------------------------------------------- */

static void *worker_main(void *arg);
static void maybe_grow(crew_pool *p);
static void reap_locked(crew_pool *p);
static void leave_locked(crew_pool *p, worker *w);

/* Frees a worker record and what it owns (any of which may be missing). */
static void worker_free(worker *w)
{
    crew__free(w->wait); /* w->run is its second half */
    crew__free(w->job_ctx);
    crew__free(w);
}

/* Starts one worker and returns at once. Called with p->lock held. With a batch tag, the
 * worker is pinned (awaited) until spawn_n_locked has read its init hook's result; without
 * (growth from a submit), a failing hook only logs. The worker is listed and counted live
 * from the start, so concurrent spawns never overshoot the maximum. */
static int spawn_locked(crew_pool *p, const void *batch)
{
    worker *w = crew__aligned_alloc(CREW__CACHELINE, sizeof *w);
    if (!w)
        return CREW_ENOMEM;
    w->job_ctx = crew__aligned_alloc(CREW__CACHELINE, ctx_stride() * (HELP_DEPTH + 1));
    if (p->timing && w->job_ctx) {
        w->wait = crew__aligned_alloc(CREW__CACHELINE, 2 * sizeof(crew__hist));
        w->run = w->wait ? w->wait + 1 : NULL;
    }
    if (!w->job_ctx || (p->timing && !w->wait)) {
        worker_free(w);
        return CREW_ENOMEM;
    }
    w->pool = p;
    w->id = p->next_id++;
    w->spin_ns = SPIN_MIN;
    w->awaited = batch; /* w may start, run its hook and exit before we look: not reaped */
    crew__event_init(&w->started_ev);
    w->next = p->workers;
    p->workers = w;
    p->live++;
    atomic_store_explicit(&p->live_hint, p->live, memory_order_relaxed);
    int rc = crew__thread_create(&w->thread, worker_main, w);
    if (rc) {
        p->workers = w->next; /* still first: the lock was held throughout */
        p->live--;
        atomic_store_explicit(&p->live_hint, p->live, memory_order_relaxed);
        worker_free(w);
        logf_(p, CREW_LOG_ERROR, "worker_create_failed", "error", crew_strerror(rc));
        return rc;
    }
    return 0;
}

/* Starts n workers and waits until each has run its init hook: all started at once, not
 * one after another (a thread's start-up costs tens of microseconds, more in a VM). Called
 * with p->lock held, which is dropped while waiting (so a hook may call into the pool).
 * Returns 0 or the first error: a thread that could not be created (no more are started)
 * or an init hook's; workers whose hook failed have left, and are reaped. */
static int spawn_n_locked(crew_pool *p, unsigned n)
{
    char batch; /* its address tags this call's workers */
    int rc = 0;
    for (unsigned i = 0; i < n && rc == 0; i++)
        rc = spawn_locked(p, &batch);
    /* Ours stay listed (pinned) in the order they were prepended; nodes that others add go
     * in front and nodes that others reap are unlinked, so one pass from the head, resumed
     * from each pinned node's current next, meets every one of ours. */
    bool failed = false;
    for (worker *w = p->workers;; w = w->next) {
        while (w && w->awaited != &batch)
            w = w->next;
        if (!w)
            break;
        crew__check(pthread_mutex_unlock(&p->lock));
        crew__event_wait(&w->started_ev, CREW_FOREVER);
        crew__check(pthread_mutex_lock(&p->lock));
        w->awaited = NULL;
        if (w->init_rc) {
            failed = true;
            rc = rc ? rc : w->init_rc;
        }
    }
    if (failed)
        reap_locked(p);
    return rc;
}

/* Folds a joined worker's counters into p->retired. Called with p->lock held. */
static void retire_locked(crew_pool *p, worker *w)
{
    crew_stats *r = &p->retired;
    r->started += atomic_load(&w->started);
    r->succeeded += atomic_load(&w->succeeded);
    r->failed += atomic_load(&w->failed);
    r->cancelled += atomic_load(&w->cancelled);
    r->timed_out += atomic_load(&w->timed_out);
    r->retried += atomic_load(&w->retried);
    if (w->wait) {
        crew__hist_merge(&r->wait, w->wait);
        crew__hist_merge(&r->run, w->run);
    }
}

/* Joins the workers that have left their loop. Called with p->lock held. */
static void reap_locked(crew_pool *p)
{
    for (worker **pw = &p->workers; *pw;) {
        worker *w = *pw;
        if (!w->exited || w->awaited) {
            pw = &w->next;
            continue;
        }
        crew__check(pthread_join(w->thread, NULL));
        *pw = w->next;
        retire_locked(p, w);
        worker_free(w);
    }
}

/* Once a shut-down pool has no worker left: close the results, release the waiters.
 * Called with p->lock held; idempotent. */
static void finish_locked(crew_pool *p)
{
    if (p->live != 0 || atomic_load(&p->state) == OPEN || atomic_load(&p->all_exited))
        return;
    if (p->results && !p->results_closed) {
        p->results_closed = true;
        crew_chan_close(p->results);
    }
    atomic_store_explicit(&p->all_exited, 1, memory_order_release);
    crew__ec_notify(&p->exit_ec, INT_MAX);
}

/* A worker leaves: called with p->lock held. The last one out finishes the pool. */
static void leave_locked(crew_pool *p, worker *w)
{
    w->exited = true;
    if (w->retiring)
        p->retiring--;
    p->live--;
    atomic_store_explicit(&p->live_hint, p->live, memory_order_relaxed);
    finish_locked(p);
}

/* An idle worker above the minimum (or asked to go by resize) may exit: decided under the
 * lock, and counted in p->retiring until it has left, so that several workers timing out
 * together never take the pool below its minimum. */
static bool may_retire(crew_pool *p, int wait_rc)
{
    if (atomic_load(&p->state) != OPEN)
        return false; /* a shutting-down pool exits through the drain path */
    crew__check(pthread_mutex_lock(&p->lock));
    bool go = false;
    if (atomic_load(&p->excess) > 0) {
        atomic_fetch_sub(&p->excess, 1);
        go = true;
    } else if (wait_rc == CREW_ETIMEDOUT && p->live - p->retiring > atomic_load(&p->min)) {
        go = true;
    }
    if (go)
        p->retiring++;
    crew__check(pthread_mutex_unlock(&p->lock));
    return go;
}

/* Unbuffered pools keep credits + queued jobs == workers holding an offer. A worker that
 * takes a job withdraws its offer; one that had none took a job meant for another idle
 * worker, whose offer must then be restored. */
static void took_job(crew_pool *p, bool *has_credit)
{
    if (!p->unbuffered)
        return;
    if (!*has_credit) {
        atomic_fetch_add(&p->credits, 1);
        crew__ec_notify(&p->space_ec, 1);
    }
    *has_credit = false;
}

/* Unbuffered pools: take back this worker's credit. False if a submit consumed it, in
 * which case a job is (or is about to be) in the ring for us. */
static bool retract_credit(crew_pool *p)
{
    long c = atomic_load(&p->credits);
    while (c > 0)
        if (atomic_compare_exchange_weak(&p->credits, &c, c - 1))
            return true;
    return false;
}

/* A worker's life: run the init hook; then loop: take a job (highest priority first) and
 * run it; when there is none, offer a credit (unbuffered pools), spin for a while, then
 * park until woken, the idle timeout (elastic pools) or a resize asks some to leave; exit
 * once the pool is shut down and the queues are empty, or when retired. The fini hook runs
 * last, in the worker. */
/* Called by a worker that was idle (spinning or parked) and has just taken a job. A
 * producer does not wake anyone while a worker spins, so several jobs may have been queued
 * on the strength of that one spinner; and a woken worker takes one job. So whoever comes
 * from idle with a job passes the wake-up on while more work waits and nobody spins: a
 * chain that wakes as many workers as there are queued jobs, without a system call on the
 * busy path (a worker in a streak of jobs never gets here). */
static void pass_wake_on(crew_pool *p)
{
    if (atomic_load_explicit(&p->spinning, memory_order_seq_cst) == 0 && !queues_empty(p))
        crew__ec_notify(&p->work_ec, 1);
}

/* How long after going idle (at idle_since) work came: for a worker woken from its park,
 * when the submit woke it (not when the kernel got round to running it, which on a busy
 * machine can be milliseconds later and would teach the spin nothing); else now. */
static int64_t idle_gap(crew_pool *p, uint64_t idle_since, bool woken)
{
    uint64_t now = crew__ticks();
    if (woken) {
        uint64_t at = atomic_load_explicit(&p->work_woken, memory_order_relaxed);
        if (at > idle_since && at < now)
            now = at;
    }
    return crew__ticks_to_ns(now - idle_since);
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    crew_pool *p = w->pool;
    tls_worker = w;
    w->init_rc = p->init ? p->init(p->hook_arg, w->id, &w->state) : 0;
    if (w->init_rc) {
        logf_(p, CREW_LOG_ERROR, "worker_init_failed", "error", crew_strerror(w->init_rc));
        crew__check(pthread_mutex_lock(&p->lock));
        leave_locked(p, w);
        crew__check(pthread_mutex_unlock(&p->lock));
        crew__event_set(&w->started_ev); /* after this, w may be reaped and freed */
        return NULL;
    }
    crew__event_set(&w->started_ev);
    logf_(p, CREW_LOG_DEBUG, "worker_start", NULL, NULL);

    uint32_t fn_id;
    void *job;
    uint64_t ticks;
    bool has_credit = false; /* unbuffered: this worker offered itself */
    uint64_t idle_since = 0; /* ticks when the queue was last found empty; 0 while busy */
    uint64_t clock = 0;      /* when the last job ended, if the next follows at once */
    bool woken = false;      /* the last park ended with a wake-up */
    for (;;) {
        if (pop_any(p, &fn_id, &job, &ticks)) {
            if (idle_since) {
                /* Woken for work soon after going idle: next time, spin about that long
                 * (up to SPIN_MAX), so that paced jobs find a spinner instead of paying a
                 * wake-up each. */
                int64_t gap = idle_gap(p, idle_since, woken);
                if (gap < SPIN_MAX && 2 * gap > w->spin_ns)
                    w->spin_ns = 2 * gap < SPIN_MAX ? 2 * gap : SPIN_MAX;
                idle_since = 0;
                woken = false;
                pass_wake_on(p);
            }
            took_job(p, &has_credit);
            /* More work waits and nobody is idle: an elastic pool grows. (Submits grow it
             * too, but one that saw a worker about to wake would not.) */
            if (atomic_load_explicit(&p->elastic, memory_order_relaxed) &&
                crew__ec_waiters(&p->work_ec) == 0 &&
                atomic_load_explicit(&p->spinning, memory_order_relaxed) == 0 && !queues_empty(p))
                maybe_grow(p);
            run_job(p, w, fn_id, job, ticks, &clock);
            continue;
        }
        clock = 0; /* idle from here: the next job's start is read afresh */
        int st = atomic_load_explicit(&p->state, memory_order_acquire);
        if (st != OPEN && queues_empty(p))
            break;
        if (p->unbuffered && !has_credit && st == OPEN) {
            atomic_fetch_add(&p->credits, 1);
            has_credit = true;
            crew__ec_notify(&p->space_ec, 1);
        }

        /* Spin before parking: waking a parked thread costs tens of microseconds, and a
         * producer does not wake anyone while a worker spins. The first idle worker spins
         * on an adaptive budget (longer while work keeps arriving within it, shorter once
         * it stops, so an idle pool soon burns no CPU); the others spin briefly. */
        if (!idle_since)
            idle_since = crew__ticks();
        bool first = atomic_fetch_add(&p->spinning, 1) == 0;
        int64_t budget = first ? w->spin_ns : SPIN_SHORT;
        uint64_t spin_until = crew__ticks() + crew__ns_to_ticks(budget);
        bool got = false;
        unsigned round = 0;
        do {
            backoff(&round);
            got = pop_any(p, &fn_id, &job, &ticks);
        } while (!got && crew__ticks() < spin_until &&
                 atomic_load_explicit(&p->state, memory_order_relaxed) == OPEN &&
                 atomic_load_explicit(&p->excess, memory_order_relaxed) == 0);
        atomic_fetch_sub(&p->spinning, 1);
        if (first)
            w->spin_ns = got ? (w->spin_ns * 2 < SPIN_MAX ? w->spin_ns * 2 : SPIN_MAX)
                             : (w->spin_ns / 2 > SPIN_MIN ? w->spin_ns / 2 : SPIN_MIN);
        if (got) {
            idle_since = 0;
            woken = false;
            pass_wake_on(p);
            took_job(p, &has_credit);
            run_job(p, w, fn_id, job, ticks, &clock);
            continue;
        }

        /* Park. */
        uint32_t key = crew__ec_prepare(&p->work_ec);
        if (pop_any(p, &fn_id, &job, &ticks)) {
            crew__ec_cancel(&p->work_ec);
            idle_since = 0;
            woken = false;
            pass_wake_on(p);
            took_job(p, &has_credit);
            run_job(p, w, fn_id, job, ticks, &clock);
            continue;
        }
        st = atomic_load_explicit(&p->state, memory_order_acquire);
        if (st != OPEN && queues_empty(p)) {
            crew__ec_cancel(&p->work_ec);
            break;
        }
        int64_t until = atomic_load_explicit(&p->elastic, memory_order_relaxed)
                            ? crew_deadline_in(p->idle_timeout)
                            : CREW_FOREVER;
        /* resize posts excess, then notifies: checked after prepare, it cannot be missed. */
        int wrc = 0;
        if (atomic_load(&p->excess) > 0)
            crew__ec_cancel(&p->work_ec);
        else
            wrc = crew__ec_wait(&p->work_ec, key, until);
        woken = wrc == 0;
        if ((wrc == CREW_ETIMEDOUT || atomic_load(&p->excess) > 0) && may_retire(p, wrc)) {
            if (!p->unbuffered || !has_credit || retract_credit(p)) {
                w->retiring = true;
                goto retire;
            }
            /* A submit took our credit: stay for its job. */
            crew__check(pthread_mutex_lock(&p->lock));
            p->retiring--;
            if (wrc != CREW_ETIMEDOUT)
                atomic_fetch_add(&p->excess, 1); /* someone else must go instead */
            crew__check(pthread_mutex_unlock(&p->lock));
        }
    }
    if (has_credit)
        retract_credit(p);
retire:
    /* We may have taken a wake-up meant for a job: pass it on to a parked worker. */
    if (!queues_empty(p))
        crew__ec_notify(&p->work_ec, 1);
    if (p->fini)
        p->fini(p->hook_arg, w->id, w->state);
    logf_(p, CREW_LOG_DEBUG, "worker_exit", NULL, NULL);
    crew__check(pthread_mutex_lock(&p->lock));
    leave_locked(p, w);
    crew__check(pthread_mutex_unlock(&p->lock));
    tls_worker = NULL;
    return NULL;
}

/* ---- create and destroy -------------------------------------------------------------- */

static void on_pool_ctx_cancel(void *arg, int err);
static void shut(crew_pool *p, int to);

/* Frees the pool's memory once nothing refers to it: the user's reference is gone
 * (destroy) and every extended record has been put back. Workers are already joined. */
static void pool_free(crew_pool *p)
{
    for (ext *e = p->free_ext, *next; e; e = next) {
        next = e->next_free;
        crew__free(e);
    }
    for (unsigned l = 0; l < p->levels; l++)
        ring_fini(&p->rings[l]);
    crew__free(p->rings);
    crew_chan_destroy(p->results);
    crew_ctx_release(p->ctx);
    crew__check(pthread_mutex_destroy(&p->lock));
    crew__free(p);
}

/* Drops one reference on the pool's memory; the last frees it. */
static void pool_unref(crew_pool *p)
{
    if (atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) == 1)
        pool_free(p);
}

int crew_pool_create(crew_pool **out, const crew_pool_opts *opts)
{
    static const crew_pool_opts defaults;
    if (!out)
        return CREW_EINVAL;
    if (!opts)
        opts = &defaults;
    unsigned min = opts->workers ? opts->workers : crew_ncpu();
    unsigned max = opts->max_workers > min ? opts->max_workers : min;
    unsigned levels = opts->priorities ? opts->priorities : 1;
    if (opts->queue_cap > MAX_CAP || levels > 64 || opts->idle_timeout < 0 ||
        opts->job_timeout < 0 || opts->queue_timeout < 0 || max > 65536)
        return CREW_EINVAL;
    crew__retry_plan retry;
    if (opts->retry && crew__retry_plan_init(&retry, opts->retry))
        return CREW_EINVAL;
    crew__ticks_init();

    crew_pool *p = crew__aligned_alloc(CREW__CACHELINE, sizeof *p);
    if (!p)
        return CREW_ENOMEM;
    int rc = CREW_ENOMEM;
    snprintf(p->name, sizeof p->name, "%s", opts->name && *opts->name ? opts->name : "pool");
    p->levels = levels;
    p->unbuffered = opts->queue_cap == 0;
    p->timing = (opts->flags & CREW_POOL_TIMING) != 0;
    p->job_timeout = opts->job_timeout;
    p->queue_timeout = opts->queue_timeout;
    p->rate = opts->rate;
    p->has_retry = opts->retry != NULL;
    if (p->has_retry)
        p->retry = retry;
    p->idle_timeout = opts->idle_timeout ? opts->idle_timeout : 10 * CREW_SEC;
    p->discard = opts->discard;
    p->init = opts->init;
    p->fini = opts->fini;
    p->hook_arg = opts->hook_arg;
    p->log = opts->log;
    p->log_arg = opts->log_arg;
    atomic_init(&p->min, min);
    atomic_init(&p->max, max);
    atomic_init(&p->elastic, max > min);
    atomic_init(&p->refs, 1);
    crew__ec_init(&p->work_ec);
    crew__ec_init(&p->space_ec);
    crew__ec_init(&p->exit_ec);
    snprintf(p->retired.name, sizeof p->retired.name, "%s", p->name);
    if (pthread_mutex_init(&p->lock, NULL) != 0)
        goto err_free;

    /* An unbuffered pool's ring only holds jobs handed to idle workers. */
    uint64_t cap = p->unbuffered ? (max > 64 ? max : 64) : opts->queue_cap;
    bool ticks = p->timing || p->queue_timeout > 0;
    p->rings = crew__calloc(levels, sizeof(ring));
    if (!p->rings)
        goto err_mutex;
    unsigned made = 0;
    for (; made < levels; made++)
        if (ring_init(&p->rings[made], cap, ticks))
            goto err_rings;

    if (opts->results) {
        size_t rcap = opts->results_cap ? opts->results_cap : opts->queue_cap + max;
        if ((rc = crew_chan_create(&p->results, sizeof(crew_result), rcap)))
            goto err_rings;
    }
    if ((rc = crew_ctx_with_cancel(opts->ctx, &p->ctx)))
        goto err_results;
    bool parent_done = crew__ctx_watch(p->ctx, &p->ctx_node, on_pool_ctx_cancel, p) != 0;

    crew__check(pthread_mutex_lock(&p->lock));
    rc = spawn_n_locked(p, min);
    crew__check(pthread_mutex_unlock(&p->lock));
    if (rc) {
        crew_pool_destroy(p);
        return rc;
    }
    if (parent_done)
        shut(p, CANCELLED);
    *out = p;
    return 0;

err_results:
    crew_chan_destroy(p->results);
err_rings:
    while (made-- > 0)
        ring_fini(&p->rings[made]);
    crew__free(p->rings);
err_mutex:
    crew__check(pthread_mutex_destroy(&p->lock));
err_free:
    crew__free(p);
    return rc;
}

void crew_pool_destroy(crew_pool *p)
{
    if (!p)
        return;
    crew_assert(!tls_worker || tls_worker->pool != p); /* not from one of its own jobs */
    crew_pool_cancel(p, 0);
    /* Results nobody can read after destroy must not keep workers blocked on a full
     * channel: discard them while waiting. */
    while (p->results && crew_pool_wait(p, crew_deadline_in(CREW_MSEC)) == CREW_ETIMEDOUT)
        while (crew_chan_try_recv(p->results, NULL) == 0)
            ;
    crew_pool_wait(p, CREW_FOREVER);
    crew__ctx_unwatch(p->ctx, &p->ctx_node);
    pool_unref(p);
}

/* ---- submit -------------------------------------------------------------------------- */

/* Counts a refused submit. A shared atomic is fine here: refusals are the slow path. */
static void count_reject(crew_pool *p)
{
    atomic_fetch_add_explicit(&p->rejected, 1, memory_order_relaxed);
}

/* Elastic pools: start one more worker when all are busy. */
static void maybe_grow(crew_pool *p)
{
    if (atomic_load_explicit(&p->live_hint, memory_order_relaxed) >= atomic_load(&p->max))
        return;
    crew__check(pthread_mutex_lock(&p->lock));
    reap_locked(p);
    if (p->live < atomic_load(&p->max) && atomic_load(&p->state) == OPEN)
        (void)spawn_locked(p, NULL); /* failure is logged; the pool goes on with what it has */
    crew__check(pthread_mutex_unlock(&p->lock));
}

/* One attempt to enqueue: 0, CREW_EAGAIN (no room), CREW_ESHUTDOWN. A job of p may still
 * add work while p drains (closed_ok), so that a drain finishes all the work. */
static int try_push(crew_pool *p, ring *r, uint32_t fn_id, void *arg, uint64_t ticks,
                    bool closed_ok)
{
    if (p->unbuffered) {
        long c = atomic_load_explicit(&p->credits, memory_order_relaxed);
        do {
            if (c <= 0)
                return (atomic_load(&r->tail) & MARK) && !closed_ok ? CREW_ESHUTDOWN : CREW_EAGAIN;
        } while (!atomic_compare_exchange_weak(&p->credits, &c, c - 1));
    }
    int rc = ring_push(r, fn_id, arg, ticks, closed_ok);
    if (rc) {
        if (p->unbuffered)
            atomic_fetch_add(&p->credits, 1);
        return rc;
    }
    /* The CAS in ring_push was the seq_cst RMW: wake a parked worker if none spins. The
     * time of a real wake-up (stamped only then, after its system call) tells the woken
     * worker how soon work came after it went idle, however late the kernel runs it. */
    if (atomic_load_explicit(&p->spinning, memory_order_seq_cst) == 0 &&
        crew__ec_notify_after_rmw(&p->work_ec, 1))
        atomic_store_explicit(&p->work_woken, crew__ticks(), memory_order_relaxed);
    if (atomic_load_explicit(&p->elastic, memory_order_relaxed) &&
        crew__ec_waiters(&p->work_ec) == 0)
        maybe_grow(p);
    return 0;
}

/* ctx hook of a producer waiting for room: wakes all parked producers, and each re-checks
 * its own ctx (the eventcount has no per-waiter wake-up). */
static void wake_space(void *arg, int err)
{
    (void)err;
    crew__ec_notify(arg, INT_MAX);
}

/* Called from one of p's own jobs when p is full: run a queued job in its place. */
static int help_through(crew_pool *p)
{
    uint32_t fn_id;
    void *job;
    uint64_t ticks;
    if (tls_help_depth >= HELP_DEPTH || !pop_any(p, &fn_id, &job, &ticks))
        return CREW_EDEADLK;
    bool no_credit = false; /* a busy worker holds no offer */
    took_job(p, &no_credit);
    tls_help_depth++;
    uint64_t clock = 0;
    run_job(p, tls_worker, fn_id, job, ticks, &clock);
    tls_help_depth--;
    return 0;
}

static int push_job(crew_pool *p, unsigned level, uint32_t fn_id, void *arg, int64_t deadline,
                    crew_ctx *ctx)
{
    ring *r = &p->rings[level];
    int rc;
    if (ctx && crew__unlikely(crew_ctx_done(ctx))) {
        rc = crew_ctx_err(ctx);
        goto reject;
    }
    uint64_t ticks = r->ticks ? crew__ticks() : 0;
    bool own = tls_worker && tls_worker->pool == p;
    /* A job of p may add work unless p is cancelled; if a cancel races with the push, the
     * job is dropped (and reported) by the worker that pops it. */
    bool closed_ok = own && atomic_load_explicit(&p->state, memory_order_acquire) != CANCELLED;
    rc = try_push(p, r, fn_id, arg, ticks, closed_ok);
    if (crew__likely(rc == 0))
        return 0;
    if (rc == CREW_ESHUTDOWN || deadline == CREW_NOW ||
        (deadline != CREW_FOREVER && deadline <= crew_now()))
        goto reject; /* CREW_EAGAIN: full, and no time to wait */

    crew__ctx_node node = {0};
    if ((rc = crew__ctx_watch(ctx, &node, wake_space, &p->space_ec)))
        goto reject;
    for (;;) {
        if (ctx && crew_ctx_done(ctx)) {
            rc = crew_ctx_err(ctx);
            break;
        }
        if (deadline != CREW_FOREVER && crew_now() >= deadline) {
            rc = CREW_ETIMEDOUT;
            break;
        }
        if (atomic_load_explicit(&p->elastic, memory_order_relaxed))
            maybe_grow(p);
        if (own && help_through(p) == 0) {
            /* ran a queued job in our place: there is room now, unless someone took it */
        } else if (own && atomic_fetch_add(&p->self_blocked, 1) + 1 >= atomic_load(&p->live_hint)) {
            /* Every worker would wait on this pool: nobody could ever make room. Run the
             * job here instead (it is accepted, and runs once), unless nested too deep. */
            atomic_fetch_sub(&p->self_blocked, 1);
            rc = CREW_EDEADLK;
            if (tls_help_depth < HELP_DEPTH) {
                atomic_fetch_add_explicit(&p->inline_runs, 1, memory_order_relaxed);
                tls_help_depth++;
                uint64_t clock = 0;
                run_job(p, tls_worker, fn_id, arg, ticks, &clock);
                tls_help_depth--;
                rc = 0;
            }
            break;
        } else {
            /* Others are running: wait for room, re-checking for a deadlock each ms. */
            int64_t until = own && (deadline == CREW_FOREVER || deadline > crew_now() + CREW_MSEC)
                                ? crew_deadline_in(CREW_MSEC)
                                : deadline;
            uint32_t key = crew__ec_prepare(&p->space_ec);
            if ((rc = try_push(p, r, fn_id, arg, ticks, closed_ok)) != CREW_EAGAIN) {
                crew__ec_cancel(&p->space_ec);
                if (own)
                    atomic_fetch_sub(&p->self_blocked, 1);
                break;
            }
            if (ctx && crew_ctx_done(ctx))
                crew__ec_cancel(&p->space_ec);
            else
                crew__ec_wait(&p->space_ec, key, until);
            if (own)
                atomic_fetch_sub(&p->self_blocked, 1);
        }
        if ((rc = try_push(p, r, fn_id, arg, ticks, closed_ok)) != CREW_EAGAIN)
            break;
    }
    crew__ctx_unwatch(ctx, &node);
    if (rc == 0)
        return 0;
    /* Leaving without pushing: a wake-up we took may have announced room for another. */
    crew__ec_notify(&p->space_ec, 1);
reject:
    count_reject(p);
    return rc;
}

int crew_pool_submit(crew_pool *p, crew_job_fn fn, void *arg, int64_t deadline, crew_ctx *ctx)
{
    if (crew__unlikely(!p || !fn))
        return CREW_EINVAL;
    uint32_t id = fn_id_of(p, fn);
    if (crew__unlikely(id == 0)) {
        crew_job job = {.fn = fn, .arg = arg};
        return crew_pool_submit_job(p, &job, NULL, deadline, ctx);
    }
    return push_job(p, 0, id, arg, deadline, ctx);
}

int crew_pool_try_submit(crew_pool *p, crew_job_fn fn, void *arg)
{
    return crew_pool_submit(p, fn, arg, CREW_NOW, NULL);
}

int crew_pool_submit_job(crew_pool *p, const crew_job *job, crew_future **future, int64_t deadline,
                         crew_ctx *ctx)
{
    if (!p || !job || !job->fn)
        return CREW_EINVAL;
    ext *e = ext_get(p);
    if (!e) {
        count_reject(p);
        return CREW_ENOMEM;
    }
    e->fn = job->fn;
    e->arg = job->arg;
    e->discard = job->discard;
    e->timeout = job->timeout;
    e->queue_timeout = job->queue_timeout;
    e->has_retry = job->retry != NULL;
    if (e->has_retry && crew__retry_plan_init(&e->retry, job->retry)) {
        atomic_store(&e->refs, 1);
        ext_put(e);
        return CREW_EINVAL;
    }
    e->submit_ticks = crew__ticks();
    atomic_init(&e->refs, future ? 2 : 1);
    unsigned level = job->priority < p->levels ? job->priority : p->levels - 1;
    int rc = push_job(p, level, 0, e, deadline, ctx);
    if (rc) {
        atomic_store(&e->refs, 1);
        ext_put(e);
        return rc;
    }
    if (future)
        *future = e;
    return 0;
}

/* ---- futures ------------------------------------------------------------------------- */

/* ctx hook of a future waiter: as wake_space, for the future's eventcount. */
static void wake_future(void *arg, int err)
{
    (void)err;
    crew__ec_notify(arg, INT_MAX);
}

bool crew_future_done(const crew_future *f)
{
    return atomic_load_explicit(&((crew_future *)f)->done, memory_order_acquire) != 0;
}

int crew_future_wait(crew_future *f, int64_t deadline, crew_ctx *ctx)
{
    if (!f)
        return CREW_EINVAL;
    if (crew_future_done(f))
        return 0;
    if (deadline == CREW_NOW)
        return CREW_EAGAIN;
    crew__ctx_node node = {0};
    int rc = crew__ctx_watch(ctx, &node, wake_future, &f->ec);
    while (rc == 0) {
        uint32_t key = crew__ec_prepare(&f->ec);
        if (crew_future_done(f)) {
            crew__ec_cancel(&f->ec);
            break;
        }
        if (ctx && crew_ctx_done(ctx)) {
            crew__ec_cancel(&f->ec);
            rc = crew_ctx_err(ctx);
            break;
        }
        if (crew__ec_wait(&f->ec, key, deadline) == CREW_ETIMEDOUT && !crew_future_done(f))
            rc = CREW_ETIMEDOUT;
    }
    crew__ctx_unwatch(ctx, &node);
    return rc;
}

int crew_future_err(const crew_future *f)
{
    return crew_future_done(f) ? f->err : CREW_EAGAIN;
}

void *crew_future_arg(const crew_future *f)
{
    return f->arg;
}

bool crew_future_ran(const crew_future *f)
{
    return crew_future_done(f) && f->ran;
}

void crew_future_release(crew_future *f)
{
    if (f)
        ext_put(f);
}

/* ---- shutdowns ----------------------------------------------------------------------- */

/* Moves state forward (OPEN -> CLOSED -> CANCELLED, never back), marks every ring closed
 * and wakes everyone who may need to see it. */
static void shut(crew_pool *p, int to)
{
    /* Mark the rings before publishing the state: a worker that sees the new state (an
     * acquire load) then reads each tail at or after its mark, so every push that beat the
     * mark is in what it sees, and it cannot exit ahead of a job that is still landing. */
    for (unsigned l = 0; l < p->levels; l++)
        atomic_fetch_or(&p->rings[l].tail, MARK);
    int st = atomic_load(&p->state);
    while (st < to && !atomic_compare_exchange_weak(&p->state, &st, to))
        ;
    crew__ec_notify(&p->work_ec, INT_MAX);
    crew__ec_notify(&p->space_ec, INT_MAX);
    crew__check(pthread_mutex_lock(&p->lock));
    finish_locked(p); /* a pool whose workers never started, or are all gone */
    crew__check(pthread_mutex_unlock(&p->lock));
}

int crew_pool_close(crew_pool *p)
{
    shut(p, CLOSED);
    return 0;
}

/* The pool's ctx was cancelled (by crew_pool_cancel or through its parent): shut the pool
 * down as crew_pool_cancel does. Runs in the cancelling thread; never blocks. */
static void on_pool_ctx_cancel(void *arg, int err)
{
    (void)err;
    shut(arg, CANCELLED);
}

int crew_pool_cancel(crew_pool *p, int cause)
{
    shut(p, CANCELLED);
    crew_ctx_cancel(p->ctx, cause ? cause : CREW_ECANCELED);
    return 0;
}

int crew_pool_wait(crew_pool *p, int64_t deadline)
{
    if (tls_worker && tls_worker->pool == p)
        return CREW_EDEADLK;
    if (atomic_load(&p->state) == OPEN)
        return CREW_EINVAL;
    while (!atomic_load_explicit(&p->all_exited, memory_order_acquire)) {
        if (deadline == CREW_NOW)
            return CREW_EAGAIN;
        uint32_t key = crew__ec_prepare(&p->exit_ec);
        if (atomic_load_explicit(&p->all_exited, memory_order_acquire)) {
            crew__ec_cancel(&p->exit_ec);
            break;
        }
        if (crew__ec_wait(&p->exit_ec, key, deadline) == CREW_ETIMEDOUT &&
            !atomic_load_explicit(&p->all_exited, memory_order_acquire))
            return CREW_ETIMEDOUT;
    }
    crew__check(pthread_mutex_lock(&p->lock));
    reap_locked(p);
    crew__check(pthread_mutex_unlock(&p->lock));
    return 0;
}

int crew_pool_drain(crew_pool *p, int64_t deadline)
{
    if (tls_worker && tls_worker->pool == p)
        return CREW_EDEADLK;
    crew_pool_close(p);
    int rc = crew_pool_wait(p, deadline);
    if (rc == 0)
        return 0;
    crew_pool_cancel(p, CREW_ETIMEDOUT);
    crew_pool_wait(p, CREW_FOREVER);
    return CREW_ETIMEDOUT;
}

/* ---- resize, stats, accessors -------------------------------------------------------- */

int crew_pool_resize(crew_pool *p, unsigned min, unsigned max)
{
    if (max == 0)
        max = min;
    if (min == 0 || max < min || max > 65536)
        return CREW_EINVAL;
    crew__check(pthread_mutex_lock(&p->lock));
    int rc = 0;
    if (atomic_load(&p->state) != OPEN) {
        rc = CREW_ESHUTDOWN;
        goto out;
    }
    reap_locked(p);
    atomic_store(&p->min, min);
    atomic_store(&p->max, max);
    atomic_store(&p->elastic, max > min);
    if (p->live < min)
        rc = spawn_n_locked(p, min - p->live);
    unsigned excess = p->live > max ? p->live - max : 0;
    atomic_store(&p->excess, excess);
out:
    crew__check(pthread_mutex_unlock(&p->lock));
    if (rc == 0)
        crew__ec_notify(&p->work_ec, INT_MAX);
    return rc;
}

int crew_pool_stats(crew_pool *p, crew_stats *out)
{
    crew__check(pthread_mutex_lock(&p->lock));
    *out = p->retired;
    out->workers = p->live;
    out->untimed = !p->timing;
    for (worker *w = p->workers; w; w = w->next) {
        out->started += atomic_load_explicit(&w->started, memory_order_relaxed);
        out->succeeded += atomic_load_explicit(&w->succeeded, memory_order_relaxed);
        out->failed += atomic_load_explicit(&w->failed, memory_order_relaxed);
        out->cancelled += atomic_load_explicit(&w->cancelled, memory_order_relaxed);
        out->timed_out += atomic_load_explicit(&w->timed_out, memory_order_relaxed);
        out->retried += atomic_load_explicit(&w->retried, memory_order_relaxed);
        out->running += atomic_load_explicit(&w->busy, memory_order_relaxed);
        if (w->wait) {
            crew__hist_merge(&out->wait, w->wait);
            crew__hist_merge(&out->run, w->run);
        }
    }
    crew__check(pthread_mutex_unlock(&p->lock));
    for (unsigned l = 0; l < p->levels; l++)
        out->queued += ring_len(&p->rings[l]);
    out->rejected = atomic_load_explicit(&p->rejected, memory_order_relaxed);
    /* Every accepted job went through a ring (its tail counts pushes) or ran in place. */
    out->submitted = atomic_load_explicit(&p->inline_runs, memory_order_relaxed);
    for (unsigned l = 0; l < p->levels; l++)
        out->submitted += ring_pos(&p->rings[l], atomic_load(&p->rings[l].tail));
    return 0;
}

crew_chan *crew_pool_results(crew_pool *p)
{
    return p->results;
}

crew_ctx *crew_pool_ctx(crew_pool *p)
{
    return p->ctx;
}

void *crew_pool_worker_state(void)
{
    return tls_worker ? tls_worker->state : NULL;
}

int crew_pool_worker_id(void)
{
    return tls_worker ? (int)tls_worker->id : -1;
}

bool crew__pool_in_job(const crew_pool *p)
{
    return tls_worker && tls_worker->pool == p;
}

int crew__pool_help(crew_pool *p)
{
    if (!crew__pool_in_job(p))
        return CREW_EINVAL;
    return help_through(p);
}

unsigned crew__pool_space_waiters(crew_pool *p)
{
    return crew__ec_waiters(&p->space_ec);
}
