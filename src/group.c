/*
 * group.c - error groups: run tasks on a pool, wait for them all, fail fast on the first
 * error (Go's golang.org/x/sync/errgroup, with SetLimit and TryGo), or keep every error.
 *
 * A task is a record {fn, arg, index} submitted to a crew pool as one job of run_task();
 * no thread is ever started per task. The pool is the caller's (tasks go through
 * crew_pool_submit_job with our own discard callback, so a job the pool drops comes back to
 * us) or one the group owns (crew_pool_submit's fast path, the pool's discard callback set
 * to ours). Every task receives the group's ctx: a child of the caller's ctx, cancelled with
 * the first error unless all_errors, and also when the caller's pool is cancelled (we watch
 * the pool's ctx).
 *
 * Counting. `active` counts tasks from the moment go() reserves their slot until run_task
 * (or the discard path) has finished with them. The limit is `active < limit` taken by a
 * CAS; wait() waits for `active == 0`. A completer makes its outcome visible (error list,
 * `err`, the ctx cancel) before its seq_cst decrement of `active`, so a waiter that reads 0
 * sees the final result. Blocked go() calls park on slot_ec and waiters on done_ec (park.c
 * eventcounts): a completion costs one load per eventcount when nobody sleeps. A go() that
 * finds the limit reached spins briefly (yielding) before it parks, because tiny tasks free
 * a slot within microseconds and a futex wake-up per task would cost more than the task.
 *
 * Failing fast. The first failure (under `mu`: the first to find `err` 0) files itself and
 * cancels the group's ctx with its error as the cause. From then on nothing new starts,
 * where Go's errgroup would still start every function: go() refuses with the ctx's error
 * (a go() parked for a slot watches the group's ctx too), and a task a worker takes once
 * the ctx is done is skipped: handed to the discard callback and filed as failed. The same
 * holds whoever cancelled the ctx (the parent, the user, the pool's cancel).
 *
 * Lifetime. After its decrement a completer still notifies the eventcounts, so the group's
 * memory must outlive it even when wait() has already returned and the user destroys the
 * group: `refs` counts the user's reference plus one per task in flight, and whoever drops
 * the last frees the memory. destroy() tears everything else down itself (after waiting),
 * because completers touch nothing but the eventcounts and `refs` after their decrement.
 *
 * Task records. A completer pushes its record on `returned`, a lock-free stack (a push by
 * CAS is ABA-safe); go() takes records from `free` under `mu` and refills it by taking the
 * whole of `returned` with one exchange, so the common paths allocate nothing and only the
 * submitters share the mutex. A failed task's record is not recycled: it becomes the error
 * entry, kept sorted by index (records arrive roughly in index order, so insertion walks back
 * from the tail a few steps), so recording an error never allocates and cannot fail.
 *
 * Waiting inside the pool. A wait() or a blocked go() called from a job of the group's pool
 * holds one of the workers its tasks need (with one worker: all of them), so it must run
 * tasks instead of sleeping. Running whatever the pool has queued (crew__pool_help) would
 * do, but the pool's queue is FIFO: a waiter would pick up its siblings and their waits,
 * and the help nesting (4 deep per thread) would run out long before a fork-join tree does.
 * So a task added from a job of the group's pool (a "nested" task) is also listed on the
 * group's `pending` stack, and a waiter there claims its own group's tasks first, newest
 * first, and runs them in its own thread: the nesting then follows the tree's depth, not
 * its width. The pool still has the job and runs it on another worker when one is free;
 * whoever claims the task first (one atomic exchange on `claimed`) runs it, and the other
 * only drops its reference on the record. A nested record is therefore reference counted:
 * the pool's job, the claimer (until the task is filed), and the pending stack each hold
 * one, and the last to let go frees it; the job that lost the claim may run after the
 * group is gone, so it touches nothing but the record. Tasks added from outside the pool
 * cannot be claimed (they are the hot path: no list, no count); for them, and whenever
 * nothing of its own is pending, a waiter in the pool helps with any queued job of the pool
 * and sleeps at most 1 ms before it looks again, as the pool's own blocked submit does. A
 * go() from a job never waits for room in a full pool either: it runs the task in place.
 *
 * Locks: `mu` guards the free list, the index counter, the pending stack and the error list;
 * it is a leaf and is never held while calling the pool, a ctx, or user code.
 */
#include "group_internal.h"
#include "internal.h"

#include <limits.h>
#include <sched.h>
#include <string.h>

#define OWN_QUEUE    4096             /* queue of the group's own pool without a limit */
#define SPIN_RELAX   64               /* pause rounds before a blocked go() starts yielding */
#define SPIN_YIELD   (20 * CREW_USEC) /* then it yields this long before it parks */
#define HELP_RECHECK CREW_MSEC        /* a helping waiter looks for queued jobs this often */

/* One task: from go() to its completion, then on the free list or the error list. */
typedef struct task {
    crew_group *g;  /* its group */
    crew_job_fn fn; /* the user's function and argument */
    void *arg;
    uint64_t index;           /* its number in acceptance order */
    int err;                  /* once failed: fn's error or why it never ran */
    bool ran;                 /* once failed: fn was called */
    bool nested;              /* added from a job of the group's pool: claimable */
    bool listed;              /* on the group's pending stack: under g->mu */
    _Atomic bool claimed;     /* nested: set by the one thread that runs it */
    _Atomic int refs;         /* nested: the job, the claimer and the pending stack */
    struct task *next, *prev; /* links in the free list, `returned`, pending or errors */
} task;

/* Marks, on the stack of the thread running a task, which group it belongs to: a task that
 * waits for its own group would wait for itself. */
typedef struct frame {
    const crew_group *g; /* the task's group */
    struct frame *up;    /* the task this thread was running when it started this one */
} frame;
static _Thread_local frame *tls_frames;

struct crew_group {
    /* Fixed at create. */
    crew_pool *pool;          /* where tasks run */
    bool own_pool;            /* the group created the pool and destroys it */
    bool all_errors;          /* keep every error; never cancel on one */
    crew_discard_fn discard;  /* the user's callback for tasks that never run, or NULL */
    crew_ctx *ctx;            /* handed to every task; cancelled on the first error */
    crew__ctx_node pool_node; /* our watch on the caller's pool's ctx */
    bool watching_pool;       /* pool_node is registered */

    /* Hot words, shared by submitters and completers. */
    _Atomic uint64_t active CREW__ALIGNED;  /* tasks with a slot, not yet finished */
    _Atomic unsigned limit;                 /* 0 = none; changed by set_limit */
    _Atomic unsigned self_blocked;          /* g's own tasks parked in go() on g */
    _Atomic uint64_t nested_active;         /* the nested tasks among `active` */
    _Atomic int err;                        /* the group's result; written under mu */
    crew__ec slot_ec CREW__ALIGNED;         /* go() calls waiting for a slot */
    crew__ec done_ec;                       /* wait() calls waiting for active == 0 */
    _Atomic(task *) returned CREW__ALIGNED; /* records finished tasks gave back */
    _Atomic long refs;                      /* the user's + one per task in flight */

    pthread_mutex_t mu CREW__ALIGNED; /* guards what follows */
    task *free;                       /* records ready for go() */
    uint64_t next_index;              /* the next task's index */
    task *pending;                    /* nested tasks not yet claimed, newest first */
    task *errs_head, *errs_tail;      /* failed tasks by increasing index */
    size_t nerrs;                     /* their number */
};

/* ---- small helpers ------------------------------------------------------------------ */

/* True if a call with this deadline must not wait. */
static bool expired(int64_t deadline)
{
    if (deadline == CREW_FOREVER)
        return false;
    return deadline == CREW_NOW || deadline <= crew_now();
}

/* The earlier of deadline and one recheck period from now. */
static int64_t recheck_until(int64_t deadline)
{
    int64_t soon = crew_deadline_in(HELP_RECHECK);
    return deadline == CREW_FOREVER || deadline > soon ? soon : deadline;
}

/* True if the calling thread is running one of g's tasks (at any depth of help). */
static bool in_task_of(const crew_group *g)
{
    for (const frame *f = tls_frames; f; f = f->up)
        if (f->g == g)
            return true;
    return false;
}

/* ctx hook of a blocked call: wakes every sleeper of the eventcount, and each re-checks its
 * own ctx (an eventcount has no per-waiter wake-up). Runs in the cancelling thread. */
static void wake_ec(void *arg, int err)
{
    (void)err;
    crew__ec_notify(arg, INT_MAX);
}

/* Drops a reference; the last one frees the memory (everything else is gone by then). */
static void unref(crew_group *g)
{
    if (atomic_fetch_sub_explicit(&g->refs, 1, memory_order_acq_rel) == 1)
        crew__free(g);
}

/* ---- slots -------------------------------------------------------------------------- */

/* Takes a slot if the limit allows. */
static bool try_slot(crew_group *g)
{
    unsigned lim = atomic_load_explicit(&g->limit, memory_order_relaxed);
    if (lim == 0) {
        atomic_fetch_add_explicit(&g->active, 1, memory_order_seq_cst);
        return true;
    }
    uint64_t a = atomic_load_explicit(&g->active, memory_order_relaxed);
    while (a < lim)
        if (atomic_compare_exchange_weak_explicit(&g->active, &a, a + 1, memory_order_seq_cst,
                                                  memory_order_relaxed))
            return true;
    return false;
}

/* Gives a slot back: wakes one go() waiting for a slot, and the waiters once none is left.
 * The decrement is the seq_cst read-modify-write the eventcounts pair with. After it, g
 * may have been destroyed by its user: only the eventcounts are touched (refs keeps them). */
static void release_slot(crew_group *g)
{
    uint64_t was = atomic_fetch_sub_explicit(&g->active, 1, memory_order_seq_cst);
    crew_assert(was > 0);
    crew__ec_notify_after_rmw(&g->slot_ec, 1);
    if (was == 1)
        crew__ec_notify_after_rmw(&g->done_ec, INT_MAX);
}

/* The reason a go() must stop waiting for a slot, or 0. */
static int stop_reason(crew_group *g, crew_ctx *ctx)
{
    if (ctx && crew_ctx_done(ctx))
        return crew_ctx_err(ctx);
    if (crew_ctx_done(g->ctx))
        return crew_ctx_err(g->ctx);
    return 0;
}

/* Spins, then yields, for a slot that tiny tasks free within microseconds. Returns 0 with a
 * slot, a stop reason, or CREW_EAGAIN when the budget (or the deadline) ran out. */
static int spin_for_slot(crew_group *g, int64_t deadline, crew_ctx *ctx)
{
    int64_t until = 0;
    for (unsigned i = 0;; i++) {
        int rc = stop_reason(g, ctx);
        if (rc)
            return rc;
        if (try_slot(g))
            return 0;
        if (i < SPIN_RELAX) {
            crew__cpu_relax();
            continue;
        }
        int64_t now = crew_now();
        if (!until)
            until = now + SPIN_YIELD;
        if (now >= until || (deadline != CREW_FOREVER && now >= deadline))
            return CREW_EAGAIN;
        sched_yield();
    }
}

/* ---- task records ------------------------------------------------------------------- */

/* A record for a new task, numbered; NULL when out of memory. */
static task *task_get(crew_group *g)
{
    crew__check(pthread_mutex_lock(&g->mu));
    if (!g->free)
        g->free = atomic_exchange_explicit(&g->returned, NULL, memory_order_acquire);
    task *t = g->free;
    if (t) {
        g->free = t->next;
        t->index = g->next_index++;
    }
    crew__check(pthread_mutex_unlock(&g->mu));
    if (t)
        return t;
    if (!(t = crew__malloc(sizeof *t)))
        return NULL;
    crew__check(pthread_mutex_lock(&g->mu));
    t->index = g->next_index++;
    crew__check(pthread_mutex_unlock(&g->mu));
    return t;
}

/* Takes back the record of a task that was never submitted, and its number if no later
 * task took one meanwhile (so a lone submitter's indices stay dense). */
static void task_unget(crew_group *g, task *t)
{
    crew__check(pthread_mutex_lock(&g->mu));
    if (g->next_index == t->index + 1)
        g->next_index = t->index;
    t->nested = false;
    t->next = g->free;
    g->free = t;
    crew__check(pthread_mutex_unlock(&g->mu));
}

/* Recycles a finished task's record, without a lock: completers run on the workers. */
static void task_put(crew_group *g, task *t)
{
    task *head = atomic_load_explicit(&g->returned, memory_order_relaxed);
    do
        t->next = head;
    while (!atomic_compare_exchange_weak_explicit(&g->returned, &head, t, memory_order_release,
                                                  memory_order_relaxed));
}

/* Drops a reference on a record; the last frees it. Touches nothing but the record. */
static void task_unref(task *t)
{
    if (atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) == 1)
        crew__free(t);
}

/* True for the one caller that gets to run a nested task. */
static bool claim(task *t)
{
    return !atomic_exchange_explicit(&t->claimed, true, memory_order_acq_rel);
}

/* Frees a chain of records linked by next. */
static void free_records(task *t)
{
    while (t) {
        task *next = t->next;
        crew__free(t);
        t = next;
    }
}

/* Frees the error entries; those of nested tasks only lose the claimer's reference (the job
 * that lost the claim may still hold one). */
static void free_errors(task *t)
{
    while (t) {
        task *next = t->next;
        if (t->nested)
            task_unref(t);
        else
            crew__free(t);
        t = next;
    }
}

/* ---- the pending stack (nested tasks a waiter in the pool may claim) ------------------ */

/* Lists a nested task that was just submitted, unless someone claimed it already. */
static void pending_push(crew_group *g, task *t)
{
    crew__check(pthread_mutex_lock(&g->mu));
    bool listed = !atomic_load_explicit(&t->claimed, memory_order_acquire);
    if (listed) {
        t->prev = NULL;
        t->next = g->pending;
        if (g->pending)
            g->pending->prev = t;
        g->pending = t;
        t->listed = true;
    }
    crew__check(pthread_mutex_unlock(&g->mu));
    if (!listed)
        task_unref(t); /* the stack's reference, never used */
}

/* Unlinks t if it is listed. Called with g->mu held. Returns true if it was. */
static bool pending_unlink_locked(crew_group *g, task *t)
{
    if (!t->listed)
        return false;
    if (t->prev)
        t->prev->next = t->next;
    else
        g->pending = t->next;
    if (t->next)
        t->next->prev = t->prev;
    t->listed = false;
    return true;
}

/* A claimer that came through the pool takes its task off the stack. */
static void pending_remove(crew_group *g, task *t)
{
    crew__check(pthread_mutex_lock(&g->mu));
    bool was = pending_unlink_locked(g, t);
    crew__check(pthread_mutex_unlock(&g->mu));
    if (was)
        task_unref(t);
}

/* ---- completion --------------------------------------------------------------------- */

/* Files a failed task. Returns true if its record is kept as an error entry. Fail-fast: only
 * the first error is kept, and it cancels the group's ctx (outside the lock). */
static bool record_error(crew_group *g, task *t, int err, bool ran)
{
    t->err = err;
    t->ran = ran;
    bool keep = false, first = false;
    crew__check(pthread_mutex_lock(&g->mu));
    if (g->all_errors) {
        /* Insert by index, walking back from the tail. */
        task *after = g->errs_tail;
        while (after && after->index > t->index)
            after = after->prev;
        t->prev = after;
        t->next = after ? after->next : g->errs_head;
        if (t->next)
            t->next->prev = t;
        else
            g->errs_tail = t;
        if (after)
            after->next = t;
        else
            g->errs_head = t;
        g->nerrs++;
        if (!after)
            atomic_store_explicit(&g->err, err, memory_order_release);
        keep = true;
    } else if (atomic_load_explicit(&g->err, memory_order_relaxed) == 0) {
        t->next = t->prev = NULL;
        g->errs_head = g->errs_tail = t;
        g->nerrs = 1;
        atomic_store_explicit(&g->err, err, memory_order_release);
        keep = first = true;
    }
    crew__check(pthread_mutex_unlock(&g->mu));
    if (first)
        crew_ctx_cancel(g->ctx, err < 0 ? err : CREW_ECANCELED);
    return keep;
}

/* The end of every accepted task, run or not: its outcome, its slot, its reference. t may
 * be gone when this returns. */
static void finish(crew_group *g, task *t, int rc, bool ran)
{
    bool nested = t->nested;
    if (rc == 0 || !record_error(g, t, rc, ran)) {
        if (nested)
            task_unref(t); /* the claimer's reference */
        else
            task_put(g, t);
    }
    if (nested)
        atomic_fetch_sub_explicit(&g->nested_active, 1, memory_order_relaxed);
    release_slot(g);
    unref(g);
}

/* Runs a task its caller owns (not nested, or claimed). A task whose group ctx is done
 * before it starts is skipped: reported to the discard callback, filed with the ctx's
 * error. Returns what the pool should count. */
static int execute(crew_group *g, task *t)
{
    if (crew_ctx_done(g->ctx)) {
        int reason = crew_ctx_err(g->ctx);
        if (g->discard)
            g->discard(t->fn, t->arg, reason);
        finish(g, t, reason, false);
        return reason;
    }
    frame f = {g, tls_frames};
    tls_frames = &f;
    int rc = t->fn(g->ctx, t->arg);
    tls_frames = f.up;
    finish(g, t, rc, true);
    return rc;
}

/* The pool job of every task. */
static int run_task(crew_ctx *job_ctx, void *arg)
{
    (void)job_ctx; /* tasks get the group's ctx, which the pool's cancel also reaches */
    task *t = arg;
    if (!t->nested)
        return execute(t->g, t);
    if (!claim(t)) {
        task_unref(t); /* a waiter ran it: g may be gone, only the record is ours */
        return 0;
    }
    pending_remove(t->g, t);
    int rc = execute(t->g, t);
    task_unref(t); /* the job's reference */
    return rc;
}

/* The pool's discard callback for our jobs: the pool dropped a task (cancel, drain
 * deadline, queue budget) without running it. */
static void drop_task(crew_job_fn fn, void *arg, int reason)
{
    (void)fn;
    task *t = arg;
    bool nested = t->nested;
    if (nested) {
        if (!claim(t)) {
            task_unref(t);
            return;
        }
        pending_remove(t->g, t);
    }
    crew_group *g = t->g;
    if (g->discard)
        g->discard(t->fn, t->arg, reason);
    if (nested)
        task_unref(t); /* the job's; the claimer's goes in finish, so t lives until then */
    finish(g, t, reason, false);
}

/* The caller's pool was cancelled (or drained past its deadline): so is the group. */
static void pool_cancelled(void *arg, int err)
{
    crew_group *g = arg;
    int cause = crew_ctx_cause(crew_pool_ctx(g->pool));
    crew_ctx_cancel(g->ctx, cause ? cause : err);
}

/* ---- waiting inside the pool ---------------------------------------------------------- */

/* One step of work for a waiter running in a job of g's pool: the newest pending task of
 * g's own, else (if g has tasks from outside the pool in flight) any queued job of the
 * pool. Returns true if it ran something. */
static bool help_once(crew_group *g)
{
    crew__check(pthread_mutex_lock(&g->mu));
    task *t = g->pending;
    if (t)
        pending_unlink_locked(g, t);
    crew__check(pthread_mutex_unlock(&g->mu));
    if (t) {
        if (claim(t))
            execute(g, t);
        task_unref(t); /* the stack's reference */
        return true;
    }
    if (atomic_load(&g->active) > atomic_load(&g->nested_active))
        return crew__pool_help(g->pool) == 0;
    return false;
}

/*
 * The blocking part of go(): waits for a slot until deadline, ctx, or the group's ctx. From
 * a job of the pool it helps instead of sleeping; from one of g's own tasks it reports
 * CREW_EDEADLK when, twice in a row with nothing to help with, every task in flight is
 * itself parked here.
 */
static int wait_slot(crew_group *g, int64_t deadline, crew_ctx *ctx)
{
    bool helping = crew__pool_in_job(g->pool);
    bool inside = helping && in_task_of(g);
    int rc;
    if (!helping && (rc = spin_for_slot(g, deadline, ctx)) != CREW_EAGAIN)
        return rc;

    crew__ctx_node cnode = {0}, gnode = {0};
    if ((rc = crew__ctx_watch(ctx, &cnode, wake_ec, &g->slot_ec)))
        return rc;
    if ((rc = crew__ctx_watch(g->ctx, &gnode, wake_ec, &g->slot_ec))) {
        crew__ctx_unwatch(ctx, &cnode);
        return rc;
    }
    int strikes = 0;
    for (;;) {
        if ((rc = stop_reason(g, ctx)))
            break;
        if (try_slot(g)) {
            rc = 0;
            break;
        }
        if (deadline != CREW_FOREVER && crew_now() >= deadline) {
            rc = CREW_ETIMEDOUT;
            break;
        }
        if (helping && help_once(g)) {
            strikes = 0;
            continue;
        }
        uint32_t key = crew__ec_prepare(&g->slot_ec);
        if (try_slot(g)) {
            crew__ec_cancel(&g->slot_ec);
            rc = 0;
            break;
        }
        if (stop_reason(g, ctx)) {
            crew__ec_cancel(&g->slot_ec);
            continue;
        }
        if (inside) {
            /* Every task in flight parked here (this one included) and nothing to run:
             * nobody can free a slot. Asked twice, so that a task on its way in (a slot
             * taken, not yet queued) is not mistaken for a deadlock. */
            unsigned parked = atomic_fetch_add(&g->self_blocked, 1) + 1;
            strikes = parked >= atomic_load(&g->active) ? strikes + 1 : 0;
            if (strikes >= 2) {
                atomic_fetch_sub(&g->self_blocked, 1);
                crew__ec_cancel(&g->slot_ec);
                rc = CREW_EDEADLK;
                break;
            }
        }
        crew__ec_wait(&g->slot_ec, key, helping ? recheck_until(deadline) : deadline);
        if (inside)
            atomic_fetch_sub(&g->self_blocked, 1);
    }
    crew__ctx_unwatch(g->ctx, &gnode);
    crew__ctx_unwatch(ctx, &cnode);
    /* Leaving without a slot: a wake-up we took may have announced one for another. */
    if (rc)
        crew__ec_notify(&g->slot_ec, 1);
    return rc;
}

/* ---- public API --------------------------------------------------------------------- */

int crew_group_create(crew_group **out, const crew_group_opts *opts)
{
    static const crew_group_opts defaults;
    if (!out)
        return CREW_EINVAL;
    if (!opts)
        opts = &defaults;
    if (opts->pool && crew_pool_results(opts->pool))
        return CREW_EINVAL; /* our records would surface there, as foreign results */
    crew_group *g = crew__aligned_alloc(CREW__CACHELINE, sizeof *g);
    if (!g)
        return CREW_ENOMEM;
    int rc = CREW_ENOMEM;
    if (pthread_mutex_init(&g->mu, NULL) != 0)
        goto err_free;
    g->all_errors = opts->all_errors;
    g->discard = opts->discard;
    atomic_init(&g->active, 0);
    atomic_init(&g->limit, opts->limit);
    atomic_init(&g->self_blocked, 0);
    atomic_init(&g->nested_active, 0);
    atomic_init(&g->err, 0);
    atomic_init(&g->returned, NULL);
    atomic_init(&g->refs, 1);
    crew__ec_init(&g->slot_ec);
    crew__ec_init(&g->done_ec);
    if ((rc = crew_ctx_with_cancel(opts->ctx, &g->ctx)))
        goto err_mutex;
    if (opts->pool) {
        g->pool = opts->pool;
        crew_ctx *pctx = crew_pool_ctx(g->pool);
        if (crew__ctx_watch(pctx, &g->pool_node, pool_cancelled, g) == 0)
            g->watching_pool = true;
        else
            pool_cancelled(g, crew_ctx_err(pctx)); /* already cancelled */
    } else {
        unsigned workers = crew_ncpu();
        if (opts->limit && opts->limit < workers)
            workers = opts->limit;
        crew_pool_opts po = {
            .name = "group",
            .workers = workers,
            .queue_cap = opts->limit ? opts->limit : OWN_QUEUE,
            .discard = drop_task,
        };
        if ((rc = crew_pool_create(&g->pool, &po)))
            goto err_ctx;
        g->own_pool = true;
    }
    *out = g;
    return 0;

err_ctx:
    crew_ctx_release(g->ctx);
err_mutex:
    crew__check(pthread_mutex_destroy(&g->mu));
err_free:
    crew__free(g);
    return rc;
}

void crew_group_destroy(crew_group *g)
{
    if (!g)
        return;
    crew_assert(!in_task_of(g));
    if (atomic_load(&g->active))
        crew_ctx_cancel(g->ctx, CREW_ECANCELED);
    (void)crew_group_wait(g, CREW_FOREVER, NULL); /* without a deadline: until all are done */
    crew_assert(atomic_load(&g->active) == 0 && !g->pending);
    if (g->watching_pool)
        crew__ctx_unwatch(crew_pool_ctx(g->pool), &g->pool_node);
    if (g->own_pool)
        crew_pool_destroy(g->pool);
    crew_ctx_release(g->ctx);
    free_records(g->free);
    free_records(atomic_load(&g->returned));
    free_errors(g->errs_head);
    crew__check(pthread_mutex_destroy(&g->mu));
    unref(g);
}

int crew_group_go(crew_group *g, crew_job_fn fn, void *arg, int64_t deadline, crew_ctx *ctx)
{
    if (!g || !fn)
        return CREW_EINVAL;
    int rc = stop_reason(g, ctx);
    if (rc)
        return rc;
    if (!try_slot(g)) {
        if (expired(deadline))
            return CREW_EAGAIN;
        if ((rc = wait_slot(g, deadline, ctx)))
            return rc;
    }
    atomic_fetch_add_explicit(&g->refs, 1, memory_order_relaxed);
    /* The group may have failed while we waited: refuse rather than queue a task that would
     * only be skipped. */
    if ((rc = crew_ctx_err(g->ctx)))
        goto err_slot;
    task *t = task_get(g);
    if (!t) {
        rc = CREW_ENOMEM;
        goto err_slot;
    }
    t->g = g;
    t->fn = fn;
    t->arg = arg;
    /* Kept in a local: once submitted, the record may finish and be reused at any time. */
    bool nested = crew__pool_in_job(g->pool);
    t->nested = nested;
    t->listed = false;
    atomic_init(&t->claimed, false);
    atomic_init(&t->refs, nested ? 3 : 1);
    if (nested)
        atomic_fetch_add_explicit(&g->nested_active, 1, memory_order_relaxed);
    /* Without a ctx of the caller's, a go() blocked for room in the pool still ends when the
     * group fails. From a job of the pool, never wait for room (see below). */
    crew_ctx *wctx = ctx ? ctx : g->ctx;
    int64_t until = nested ? CREW_NOW : deadline;
    if (g->own_pool) {
        rc = crew_pool_submit(g->pool, run_task, t, until, wctx);
    } else {
        /* No run budget: the group's ctx governs the task, not a per-job one. */
        crew_job job = {.fn = run_task, .arg = t, .discard = drop_task, .timeout = -1};
        rc = crew_pool_submit_job(g->pool, &job, NULL, until, wctx);
    }
    if (rc == 0) {
        /* Listed after the submit, which may already have run it in place. */
        if (nested)
            pending_push(g, t);
        return 0;
    }
    if (nested)
        atomic_fetch_sub_explicit(&g->nested_active, 1, memory_order_relaxed);
    if (nested && rc == CREW_EAGAIN) {
        /* A job adding to a full pool: every worker has work, and waiting for room would hold
         * this one (the pool's own remedy, running other queued jobs here, nests a level
         * per job it runs). Run the task in place instead: it is accepted, and the nesting
         * follows the tree of tasks. */
        t->nested = false;
        (void)execute(g, t);
        return 0;
    }
    task_unget(g, t);
err_slot:
    release_slot(g);
    unref(g); /* never the last: the caller holds g */
    return rc;
}

int crew_group_try_go(crew_group *g, crew_job_fn fn, void *arg)
{
    return crew_group_go(g, fn, arg, CREW_NOW, NULL);
}

int crew_group_wait(crew_group *g, int64_t deadline, crew_ctx *ctx)
{
    if (!g)
        return CREW_EINVAL;
    if (in_task_of(g))
        return CREW_EDEADLK;
    if (atomic_load_explicit(&g->active, memory_order_seq_cst) == 0)
        return crew_group_err(g);
    if (ctx && crew_ctx_done(ctx))
        return crew_ctx_err(ctx);
    if (expired(deadline))
        return CREW_EAGAIN;
    bool helping = crew__pool_in_job(g->pool);
    crew__ctx_node node = {0};
    int rc = crew__ctx_watch(ctx, &node, wake_ec, &g->done_ec);
    while (rc == 0) {
        if (atomic_load_explicit(&g->active, memory_order_seq_cst) == 0)
            break;
        if (ctx && crew_ctx_done(ctx)) {
            rc = crew_ctx_err(ctx);
            break;
        }
        if (deadline != CREW_FOREVER && crew_now() >= deadline) {
            rc = CREW_ETIMEDOUT;
            break;
        }
        if (helping && help_once(g))
            continue;
        uint32_t key = crew__ec_prepare(&g->done_ec);
        if (atomic_load_explicit(&g->active, memory_order_seq_cst) == 0 ||
            (ctx && crew_ctx_done(ctx))) {
            crew__ec_cancel(&g->done_ec);
            continue;
        }
        crew__ec_wait(&g->done_ec, key, helping ? recheck_until(deadline) : deadline);
    }
    crew__ctx_unwatch(ctx, &node);
    return rc ? rc : crew_group_err(g);
}

int crew_group_err(const crew_group *g)
{
    return atomic_load_explicit(&g->err, memory_order_acquire);
}

size_t crew_group_active(const crew_group *g)
{
    return (size_t)atomic_load_explicit(&g->active, memory_order_relaxed);
}

crew_ctx *crew_group_ctx(crew_group *g)
{
    return g->ctx;
}

int crew_group_set_limit(crew_group *g, unsigned limit)
{
    if (!g)
        return CREW_EINVAL;
    atomic_store_explicit(&g->limit, limit, memory_order_seq_cst);
    crew__ec_notify(&g->slot_ec, INT_MAX);
    return 0;
}

size_t crew_group_errors(crew_group *g, crew_group_error *out, size_t n)
{
    crew__check(pthread_mutex_lock(&g->mu));
    size_t i = 0;
    for (task *t = g->errs_head; t && i < n; t = t->next, i++)
        out[i] = (crew_group_error){t->index, t->fn, t->arg, t->err, t->ran};
    size_t total = g->nerrs;
    crew__check(pthread_mutex_unlock(&g->mu));
    return total;
}

/* ---- for tests ------------------------------------------------------------------------ */

unsigned crew__group_slot_waiters(const crew_group *g)
{
    return crew__ec_waiters(&((crew_group *)g)->slot_ec);
}

unsigned crew__group_done_waiters(const crew_group *g)
{
    return crew__ec_waiters(&((crew_group *)g)->done_ec);
}
