/*
 * crew.h - the one public header of libcrew, a worker pool for C.
 *
 * Conventions that hold for every function below:
 *
 * - A fallible function returns int: 0 on success or a negative CREW_E* code, each equal to
 *   a negated errno value. crew_strerror() and crew_err_name() describe any code.
 * - Objects are opaque and come back through an out-parameter; an options struct whose
 *   fields are all zero (or a NULL pointer to one) asks for the defaults.
 * - Time is int64_t nanoseconds on CLOCK_MONOTONIC (crew_now()). A blocking call takes an
 *   absolute deadline: CREW_FOREVER waits without limit, CREW_NOW (or any instant already
 *   past) only tries, and crew_deadline_in() builds one from a duration. It also takes an
 *   optional crew_ctx: cancelling that ctx ends the wait with the ctx's error. So one call
 *   covers the blocking, try, timed and cancellable forms.
 * - Ownership: if a call that takes a job fails, the job's function is never called and
 *   the caller still owns its argument. If it succeeds, exactly one of the job's function
 *   or the pool's discard callback is called for it, exactly once.
 * - The library never prints and never touches errno for reporting.
 */
#ifndef CREW_H
#define CREW_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CREW_VERSION_MAJOR  0
#define CREW_VERSION_MINOR  1
#define CREW_VERSION_PATCH  0
#define CREW_VERSION_STRING "0.1.0"

#if defined(__GNUC__)
#define CREW_EXPORT      __attribute__((visibility("default")))
#define CREW_WARN_UNUSED __attribute__((warn_unused_result))
#else
#define CREW_EXPORT
#define CREW_WARN_UNUSED
#endif

/* ---------------------------------------------------------------------------------------
 * Version and errors
 * ------------------------------------------------------------------------------------- */

/* The version this library was built as, "MAJOR.MINOR.PATCH". Never fails; thread-safe. */
CREW_EXPORT const char *crew_version(void);

/* X(name, errno value, message): the one table behind the codes, crew_strerror and
 * crew_err_name. CREW_ECHILD is reserved for the process pool; CREW_EBUSY is there for
 * callers' own causes (crew_ctx_cancel). */
#define CREW_ERRNO_MAP(X)                                                                          \
    X(AGAIN, EAGAIN, "queue is full")                                                              \
    X(TIMEDOUT, ETIMEDOUT, "deadline exceeded")                                                    \
    X(CANCELED, ECANCELED, "operation cancelled")                                                  \
    X(PIPE, EPIPE, "channel is closed")                                                            \
    X(SHUTDOWN, ESHUTDOWN, "pool is shut down")                                                    \
    X(DEADLK, EDEADLK, "job would wait on its own full pool")                                      \
    X(CHILD, ECHILD, "worker process crashed")                                                     \
    X(INVAL, EINVAL, "invalid argument")                                                           \
    X(NOMEM, ENOMEM, "out of memory")                                                              \
    X(RANGE, ERANGE, "value out of range")                                                         \
    X(BUSY, EBUSY, "resource busy")

enum {
#define CREW__ERR_ENUM(name, value, msg) CREW_E##name = -(value),
    CREW_ERRNO_MAP(CREW__ERR_ENUM)
#undef CREW__ERR_ENUM
};

/* A sentence describing rc ("deadline exceeded"); for 0 "success"; for another negated
 * errno, the C library's description of it; otherwise "unknown error". The string is
 * static. Never fails; thread-safe. */
CREW_EXPORT const char *crew_strerror(int rc);

/* The code's name ("CREW_ETIMEDOUT"); "CREW_OK" for 0, "CREW_E?" for an unknown code.
 * The string is static. Never fails; thread-safe. */
CREW_EXPORT const char *crew_err_name(int rc);

/* ---------------------------------------------------------------------------------------
 * Time
 * ------------------------------------------------------------------------------------- */

#define CREW_FOREVER ((int64_t)-1) /* deadline: wait without limit */
#define CREW_NOW     ((int64_t)0)  /* deadline: do not wait, only try */

#define CREW_NSEC ((int64_t)1)
#define CREW_USEC ((int64_t)1000)
#define CREW_MSEC ((int64_t)1000000)
#define CREW_SEC  ((int64_t)1000000000)

/* Nanoseconds on CLOCK_MONOTONIC. Never fails; thread-safe; async-signal-safe. */
CREW_EXPORT int64_t crew_now(void);

/* The deadline ns nanoseconds from now: crew_now() + ns. A negative ns gives CREW_FOREVER;
 * an overflowing sum saturates to CREW_FOREVER. Never fails; thread-safe. */
CREW_EXPORT int64_t crew_deadline_in(int64_t ns);

/* Parses a duration such as "250ms", "30s", "1m30s", "1h", "1.5s", "100us", "20ns", or a
 * bare number of seconds ("2", "0.5"), into *out nanoseconds. Units: ns, us, ms, s, m, h
 * (also d for days). Returns CREW_EINVAL for text that is not a duration (then *out is
 * unchanged), CREW_ERANGE when it exceeds INT64_MAX nanoseconds. Thread-safe. */
CREW_EXPORT CREW_WARN_UNUSED int crew_duration_parse(const char *s, int64_t *out);

/* Number of CPUs this process may run on (sched_getaffinity), at least 1. Thread-safe. */
CREW_EXPORT unsigned crew_ncpu(void);

/* ---------------------------------------------------------------------------------------
 * Cancellation contexts (crew_ctx): the C answer to Go's context.Context
 * A ctx is done once it is cancelled: explicitly, by its deadline, or because its parent
 * was. Children die with their parent, never the other way round. Deadlines fire from one
 * shared timer thread that starts when first needed and exits 50 ms after the last pending
 * deadline is gone, never a thread per ctx. A NULL ctx means background everywhere. Contexts are
 * reference counted: the creator holds one reference and gives it back with crew_ctx_release(); a
 * child holds a reference on its parent.
 * ------------------------------------------------------------------------------------- */

typedef struct crew_ctx crew_ctx;

/* Called once when a ctx is cancelled, with the ctx's error (CREW_ECANCELED or
 * CREW_ETIMEDOUT). It runs in the thread that cancels (or the timer thread) and must not
 * block for long. */
typedef void (*crew_cancel_fn)(void *arg, int err);

/* A registration made by crew_ctx_on_cancel(). */
typedef struct crew_ctx_hook crew_ctx_hook;

/* The root ctx: never cancelled, no deadline, static. Retain and release on it do
 * nothing. Never fails; thread-safe. */
CREW_EXPORT crew_ctx *crew_ctx_background(void);

/* A new ctx, child of parent (NULL means background), cancelled by crew_ctx_cancel() or
 * when parent is. If parent is already done, the child starts done with parent's error.
 * *out holds one reference. Returns 0, CREW_EINVAL (out NULL) or CREW_ENOMEM. Thread-safe.
 */
CREW_EXPORT CREW_WARN_UNUSED int crew_ctx_with_cancel(crew_ctx *parent, crew_ctx **out);

/* As crew_ctx_with_cancel(), and also cancelled with CREW_ETIMEDOUT at the absolute
 * deadline (CREW_FOREVER: none). The child's deadline is the earlier of its own and its
 * parent's. A deadline already past gives a ctx that is done at once. Returns 0, CREW_EINVAL
 * (out NULL),
 * CREW_ENOMEM, or CREW_EAGAIN if the timer thread could not be started.
 * Thread-safe. */
CREW_EXPORT CREW_WARN_UNUSED int crew_ctx_with_deadline(crew_ctx *parent, int64_t deadline,
                                                        crew_ctx **out);

/* crew_ctx_with_deadline(parent, crew_deadline_in(timeout), out). */
CREW_EXPORT CREW_WARN_UNUSED int crew_ctx_with_timeout(crew_ctx *parent, int64_t timeout,
                                                       crew_ctx **out);

/* Cancels c and all its descendants with cause (a negative CREW_E* code that says why;
 * 0 means CREW_ECANCELED), runs its on-cancel hooks, and wakes everything waiting on it.
 * crew_ctx_err() then reports CREW_ECANCELED (or CREW_ETIMEDOUT when the cause is
 * CREW_ETIMEDOUT) and crew_ctx_cause() the cause. The first cancel wins; later calls do
 * nothing. Cancelling background does nothing. Never blocks on other cancels; thread-safe;
 * callable from a job and from an on-cancel hook. */
CREW_EXPORT void crew_ctx_cancel(crew_ctx *c, int cause);

/* True once c is done. One atomic load: cheap enough to poll in a hot loop. Thread-safe. */
CREW_EXPORT bool crew_ctx_done(const crew_ctx *c);

/* 0 while c is live; once done, CREW_ETIMEDOUT if its deadline (or an ancestor's) passed,
 * otherwise CREW_ECANCELED. Thread-safe. */
CREW_EXPORT int crew_ctx_err(const crew_ctx *c);

/* The cause given to the crew_ctx_cancel() that ended c (or its ancestor): 0 while live,
 * CREW_ETIMEDOUT for a deadline. Thread-safe. */
CREW_EXPORT int crew_ctx_cause(const crew_ctx *c);

/* c's effective deadline (the earliest along its ancestry), or CREW_FOREVER. */
CREW_EXPORT int64_t crew_ctx_deadline(const crew_ctx *c);

/* Blocks until c is done or the deadline passes. Returns 0 when c is done, CREW_ETIMEDOUT
 * when the deadline came first (CREW_NOW only checks). Thread-safe. */
CREW_EXPORT int crew_ctx_wait(crew_ctx *c, int64_t deadline);

/* Registers fn(arg, err) to run once when c is cancelled. If c is already done, fn runs
 * now, in this thread, before the call returns. If out is NULL the registration lives until
 * it fires or c is freed. Otherwise *out receives a hook that the caller must end with
 * crew_ctx_hook_remove() exactly once. Returns 0, CREW_EINVAL (fn NULL) or CREW_ENOMEM.
 * Thread-safe. */
CREW_EXPORT CREW_WARN_UNUSED int crew_ctx_on_cancel(crew_ctx *c, crew_cancel_fn fn, void *arg,
                                                    crew_ctx_hook **out);

/* Ends a hook and frees it. Returns true if fn was prevented from running, false if it
 * already ran. If fn is running in another thread, waits until it has returned, so arg may
 * be freed afterwards. Callable from inside fn itself (returns false). Thread-safe. */
CREW_EXPORT bool crew_ctx_hook_remove(crew_ctx_hook *h);

/* Takes one more reference on c and returns c. Thread-safe. */
CREW_EXPORT crew_ctx *crew_ctx_retain(crew_ctx *c);

/* Gives back one reference; the last one frees c, detaching it from its parent and the
 * timer. Releasing does not cancel c's children: they keep c's state. Thread-safe. */
CREW_EXPORT void crew_ctx_release(crew_ctx *c);

/* ---------------------------------------------------------------------------------------
 * Channels (crew_chan): bounded multi-producer multi-consumer queues of fixed-size elements
 *
 * Capacity 0 is a rendezvous: a send completes only when a receiver takes the element.
 * Closing wakes every waiter; receivers drain what is left and then get CREW_EPIPE; a send
 * on a closed channel returns CREW_EPIPE (it does not crash, unlike Go). Elements are copied
 * in and out; FIFO order holds for each producer.
 * ------------------------------------------------------------------------------------- */

typedef struct crew_chan crew_chan;

/* A channel of cap elements of elem_size bytes each (elem_size >= 1). Returns 0,
 * CREW_EINVAL or CREW_ENOMEM. Thread-safe. */
CREW_EXPORT CREW_WARN_UNUSED int crew_chan_create(crew_chan **out, size_t elem_size, size_t cap);

/* Frees c. No thread may be using it or waiting on it. NULL is ignored. */
CREW_EXPORT void crew_chan_destroy(crew_chan *c);

/* Copies elem into c. Blocks while c is full (for capacity 0: until a receiver takes it),
 * until deadline, or until ctx (may be NULL) is done. Returns 0, CREW_EPIPE (closed, also
 * when closed while waiting), CREW_EAGAIN (full and deadline is CREW_NOW or already past),
 * CREW_ETIMEDOUT, or ctx's error. On failure nothing was sent. Thread-safe; callable from a
 * job. */
CREW_EXPORT CREW_WARN_UNUSED int crew_chan_send(crew_chan *c, const void *elem, int64_t deadline,
                                                crew_ctx *ctx);

/* Takes the oldest element into elem (which may be NULL to drop it). Blocks while c is
 * empty, until deadline or until ctx is done. Returns 0, CREW_EPIPE (closed and empty),
 * CREW_EAGAIN (empty and deadline is CREW_NOW or past), CREW_ETIMEDOUT, or ctx's error.
 * Thread-safe; callable from a job. */
CREW_EXPORT CREW_WARN_UNUSED int crew_chan_recv(crew_chan *c, void *elem, int64_t deadline,
                                                crew_ctx *ctx);

/* crew_chan_send(c, elem, CREW_NOW, NULL). */
CREW_EXPORT CREW_WARN_UNUSED int crew_chan_try_send(crew_chan *c, const void *elem);

/* crew_chan_recv(c, elem, CREW_NOW, NULL). */
CREW_EXPORT CREW_WARN_UNUSED int crew_chan_try_recv(crew_chan *c, void *elem);

/* Closes c: no more sends; waiting senders get CREW_EPIPE, receivers drain then get
 * CREW_EPIPE. Returns 0, or CREW_EPIPE if c was already closed. Thread-safe. */
CREW_EXPORT int crew_chan_close(crew_chan *c);

/* Elements buffered now (a snapshot). Thread-safe. */
CREW_EXPORT size_t crew_chan_len(const crew_chan *c);

/* The capacity given at creation. Thread-safe. */
CREW_EXPORT size_t crew_chan_cap(const crew_chan *c);

/* True once crew_chan_close() was called. Thread-safe. */
CREW_EXPORT bool crew_chan_closed(const crew_chan *c);

/* ---------------------------------------------------------------------------------------
 * Metrics: histograms and snapshots
 * ------------------------------------------------------------------------------------- */

/* Log-linear buckets over nanoseconds: 8 per power of two, exact below 16 ns, up to about
 * 2^42 ns (73 minutes); larger values fall in the last bucket. */
#define CREW_HIST_SUB     8
#define CREW_HIST_BUCKETS 320

typedef struct crew_hist {
    uint64_t count;                      /* observations */
    uint64_t sum;                        /* their sum, ns */
    uint64_t buckets[CREW_HIST_BUCKETS]; /* observations per bucket */
} crew_hist;

/* The largest value (ns) that falls in bucket i; INT64_MAX for the last. */
CREW_EXPORT int64_t crew_hist_bucket_max(size_t i);

/* The bucket a value of ns nanoseconds falls in (negative values count as 0). */
CREW_EXPORT size_t crew_hist_bucket_of(int64_t ns);

/* Adds one observation of ns to h. Not thread-safe on the same h. */
CREW_EXPORT void crew_hist_record(crew_hist *h, int64_t ns);

/* The q-quantile (0 <= q <= 1) of h in ns, from its buckets: the upper bound of the bucket
 * holding the rank, so at most 12.5% above the true value. 0 for an empty h. */
CREW_EXPORT int64_t crew_hist_quantile(const crew_hist *h, double q);

/* A pool's metrics, read counter by counter without stopping the workers. Every accepted
 * job ends in exactly one of succeeded, failed, cancelled or timed_out, so once the pool is
 * quiet, submitted == succeeded + failed + cancelled + timed_out + queued + running; while
 * it is busy the identity holds only approximately (a job just taken by a worker is in
 * neither gauge for a moment). */
typedef struct crew_stats {
    char name[64];      /* the pool's name: the Prometheus pool label */
    uint64_t submitted; /* jobs accepted */
    uint64_t rejected;  /* submits refused, whatever the reason */
    uint64_t started;   /* jobs whose function was called (once, however many tries) */
    uint64_t retried;   /* further tries of jobs with a retry policy */
    uint64_t succeeded; /* returned 0 */
    uint64_t failed;    /* returned an error other than the two below */
    uint64_t cancelled; /* returned CREW_ECANCELED, or dropped unrun by a cancel */
    uint64_t timed_out; /* returned CREW_ETIMEDOUT, or waited past their queue budget */
    uint64_t queued;    /* gauge: accepted, not yet taken by a worker */
    uint64_t running;   /* gauge: workers inside a job ("busy") */
    uint64_t workers;   /* gauge: live worker threads */
    bool untimed;       /* the pool does not time its jobs (no CREW_POOL_TIMING): wait and
                           run stay empty, and crew_prometheus_write leaves them out */
    crew_hist wait;     /* time from submit to start (or to being dropped) */
    crew_hist run;      /* time inside the job's function */
} crew_stats;

/* Writes the Prometheus text exposition (format 0.0.4) of n snapshots to f: counters
 * crew_jobs_{submitted,rejected,started,succeeded,failed,cancelled,timed_out,retried}_total,
 * gauges crew_queue_depth, crew_busy_workers, crew_live_workers, and histograms
 * crew_queue_wait_seconds and crew_run_seconds (samples only for snapshots not marked
 * untimed; the two families are left out when every snapshot given is untimed), each sample
 * labelled pool="name". Returns 0, or CREW_EINVAL if a write failed. Thread-safe for distinct f. */
CREW_EXPORT int crew_prometheus_write(FILE *f, const crew_stats *const *stats, size_t n);

/* ---------------------------------------------------------------------------------------
 * Thread pool (crew_pool)
 *
 * A bounded job queue served by a fixed or elastic set of worker threads. A job is a
 * function and its argument; its output goes where its argument points. The function
 * receives a ctx: the pool's, or, when the job has a run budget, a per-job child of it that
 * times out. A job's return value is its result: 0, or a negative CREW_E* code (or any
 * negative errno). A job that returns an error never stops its worker. With a retry policy
 * (crew_pool_opts.retry, crew_job.retry) a failed job is tried again inside its worker, after
 * a backoff that the job's ctx cuts short; its run budget covers all its tries, and its
 * result is its last try's.
 * ------------------------------------------------------------------------------------- */

typedef struct crew_pool crew_pool;
typedef struct crew_future crew_future;
typedef struct crew_retry crew_retry; /* a retry policy: see "Retry" below */
typedef struct crew_rate crew_rate;   /* a token bucket: see "Rate limiter" below */

/* A job: runs on a worker with the job's ctx; returns 0 or a negative error code. */
typedef int (*crew_job_fn)(crew_ctx *ctx, void *arg);

/* Called, instead of fn, for an accepted job that will never run, with the reason:
 * CREW_ECANCELED (dropped by a cancel or a drain's deadline) or CREW_ETIMEDOUT (waited past
 * its queue budget). It runs in the thread that drops the job and should free arg. */
typedef void (*crew_discard_fn)(crew_job_fn fn, void *arg, int reason);

/* Per-worker hooks. init runs first in each new worker thread and may set *state (for a
 * connection or a handle the worker owns; read it from a job with crew_pool_worker_state);
 * a non-zero return stops that worker from starting. fini runs last in the worker. The
 * hooks of different workers may run at the same time (workers start together). Hooks
 * and discard callbacks run on worker threads, so for crew_pool_submit, wait, drain and
 * destroy they count as inside one of the pool's jobs. */
typedef int (*crew_worker_init_fn)(void *hook_arg, unsigned worker_id, void **state);
typedef void (*crew_worker_fini_fn)(void *hook_arg, unsigned worker_id, void *state);

/* Log callback: level is one of CREW_LOG_*, msg a short event name, kv a NULL-terminated
 * list of key, value strings. Called from any thread; must not call back into the pool. */
enum { CREW_LOG_ERROR = 0, CREW_LOG_WARN = 1, CREW_LOG_INFO = 2, CREW_LOG_DEBUG = 3 };
typedef void (*crew_log_fn)(void *log_arg, int level, const char *msg, const char *const *kv);

/* Pool flags. */
enum {
    /* Time every job: fill the queue-wait and run-time histograms of crew_pool_stats and
     * the Prometheus output. Off by default, as in Tokio's runtime, because it is the one
     * metric with a per-job cost: two clock reads per job (one at submit, one at the
     * worker; a busy worker's job end is the next one's start), 5 KiB of histograms per
     * worker and an 8-byte submit timestamp per queue slot. Counters and gauges are always
     * on and cost no shared write. */
    CREW_POOL_TIMING = 1u << 0,
};

typedef struct crew_pool_opts {
    const char *name;         /* metrics label; default "pool" (copied, at most 63 bytes) */
    unsigned workers;         /* workers kept alive (the minimum); 0 = crew_ncpu() */
    unsigned max_workers;     /* elastic ceiling; 0 or < workers = workers (a fixed pool) */
    size_t queue_cap;         /* jobs waiting for a worker, per priority level (at most
                                 2^30); 0 = no buffer: a submit succeeds only when a worker
                                 is free to take the job */
    int64_t idle_timeout;     /* ns a worker above the minimum stays idle before it exits;
                                 0 = 10 s */
    int64_t job_timeout;      /* default run budget per job (all its tries), ns; 0 = none */
    int64_t queue_timeout;    /* default queue budget per job, ns; 0 = none: a job that waited
                                 longer is dropped unrun and reported timed out */
    unsigned priorities;      /* priority levels 0..priorities-1 (at most 64), higher runs
                                 first, FIFO within a level, each its own queue; 0 = 1 */
    crew_ctx *ctx;            /* parent of the pool's ctx; NULL = background */
    crew_worker_init_fn init; /* per-worker hooks (may be NULL) and their argument */
    crew_worker_fini_fn fini;
    void *hook_arg;
    crew_discard_fn discard; /* for accepted jobs that never run (may be NULL) */
    const crew_retry *retry; /* default retry policy of every job (copied at create;
                                crew_retry_do's rules); NULL = one try */
    crew_rate *rate;         /* caps the rate at which jobs start: a worker takes a token
                                (crew_rate_wait) before each job; not owned, must outlive
                                the pool; NULL = no cap */
    bool results;            /* keep a results channel: see crew_pool_results() */
    size_t results_cap;      /* its capacity; 0 = queue_cap + max_workers */
    crew_log_fn log;         /* optional log callback and its argument */
    void *log_arg;
    unsigned flags; /* CREW_POOL_* */
} crew_pool_opts;

/* What a finished job produced, as carried by the results channel. */
typedef struct crew_result {
    crew_job_fn fn; /* the job's function */
    void *arg;      /* its argument: where its output went */
    int err;        /* what fn returned, or the reason it never ran */
    int ran;        /* 1 if fn was called, 0 if the job was dropped */
} crew_result;

/* One job with its own settings, for crew_pool_submit_job(). Zero fields take the pool's
 * defaults. */
typedef struct crew_job {
    crew_job_fn fn;
    void *arg;
    crew_discard_fn discard; /* overrides the pool's discard callback */
    int64_t timeout;         /* run budget, ns; 0 = pool default; < 0 = none */
    int64_t queue_timeout;   /* queue budget, ns; 0 = pool default; < 0 = none */
    unsigned priority;       /* 0 (lowest) .. priorities-1; larger values are clamped */
    const crew_retry *retry; /* retry policy (copied at submit), overriding the pool's;
                                NULL = the pool's */
} crew_job;

/* Creates a pool and starts its minimum workers, waiting for their init hooks (which run
 * without any pool lock held, and may call into the pool). Returns 0, CREW_EINVAL (out
 * NULL; queue_cap above 2^30; priorities above 64; more than 65536 workers; a negative
 * timeout), CREW_ENOMEM, CREW_EAGAIN (a thread could not be created), or the first init
 * hook's error; on failure nothing is left running. Thread-safe. */
CREW_EXPORT CREW_WARN_UNUSED int crew_pool_create(crew_pool **out, const crew_pool_opts *opts);

/* Cancels p (crew_pool_cancel: what is still queued is dropped and reported
 * CREW_ECANCELED, running jobs see their ctx cancelled), waits for its workers, and frees
 * it; to finish the queued work first, drain (or close and wait) before destroying.
 * Results still unread in the results channel are discarded (nobody can read them after
 * destroy), so a full, unread channel cannot hang it. No other thread may use p during or
 * after the call, and it must not be called from one of p's jobs. Futures of p stay valid
 * until released. NULL is ignored. */
CREW_EXPORT void crew_pool_destroy(crew_pool *p);

/* Submits fn(ctx, arg). A ctx already done is refused first. Blocks while the queue is
 * full (sleeping, woken when it has drained to half), until deadline or until ctx (may be NULL) is
 * done. Returns 0 (accepted), CREW_EAGAIN (full, and deadline CREW_NOW or already past),
 * CREW_ETIMEDOUT, ctx's error, CREW_ESHUTDOWN (p no longer accepts jobs), CREW_EINVAL (p
 * or fn NULL), CREW_ENOMEM (only once p has seen more than 255 distinct job functions:
 * further ones take the extended path, as crew_pool_submit_job), or CREW_EDEADLK.
 * From one of p's own jobs, a full pool never hangs the caller: it first runs queued jobs
 * itself until there is room; if none is queued and every live worker is likewise blocked
 * submitting to p, it runs the new job itself, in place (it counts as accepted); only when
 * such nested runs are 4 deep does it return CREW_EDEADLK. Otherwise it waits for room.
 * Allocates nothing in steady state. Thread-safe; callable from a job. */
CREW_EXPORT CREW_WARN_UNUSED int crew_pool_submit(crew_pool *p, crew_job_fn fn, void *arg,
                                                  int64_t deadline, crew_ctx *ctx);

/* crew_pool_submit(p, fn, arg, CREW_NOW, NULL): never waits for room. (In an elastic pool
 * it may start a worker thread, but never waits for its init hook.) */
CREW_EXPORT CREW_WARN_UNUSED int crew_pool_try_submit(crew_pool *p, crew_job_fn fn, void *arg);

/* As crew_pool_submit(), for a job with its own budgets, priority and discard callback.
 * If future is not NULL, *future receives a handle to wait for the job's result (on
 * success only); release it with crew_future_release(). Returns as crew_pool_submit(),
 * plus CREW_ENOMEM. */
CREW_EXPORT CREW_WARN_UNUSED int crew_pool_submit_job(crew_pool *p, const crew_job *job,
                                                      crew_future **future, int64_t deadline,
                                                      crew_ctx *ctx);

/* Blocks until f's job has finished or was dropped, until deadline or until ctx is done.
 * Returns 0 (f is done), CREW_ETIMEDOUT, CREW_EAGAIN (CREW_NOW and not done), ctx's error,
 * or CREW_EINVAL (f NULL). Thread-safe. From inside a job of the same pool, waiting may deadlock if
 * all workers do it: prefer a deadline. */
CREW_EXPORT int crew_future_wait(crew_future *f, int64_t deadline, crew_ctx *ctx);

/* True once f's job has finished or was dropped. Thread-safe. */
CREW_EXPORT bool crew_future_done(const crew_future *f);

/* Once done: what the job's function returned, or why it never ran (CREW_ECANCELED,
 * CREW_ETIMEDOUT). Before that: CREW_EAGAIN. Thread-safe. */
CREW_EXPORT int crew_future_err(const crew_future *f);

/* The job's argument, where its output went. Thread-safe. */
CREW_EXPORT void *crew_future_arg(const crew_future *f);

/* True if the job's function was called, false if the job was dropped or is pending. */
CREW_EXPORT bool crew_future_ran(const crew_future *f);

/* Gives the handle back. Do it exactly once per future, done or not. NULL is ignored. */
CREW_EXPORT void crew_future_release(crew_future *f);

/* Stops accepting jobs from outside; workers finish the queue and exit. Jobs already
 * running may still submit follow-up jobs to p (run by a worker, or in place as
 * crew_pool_submit describes): a drain finishes all the work (only a cancel refuses them,
 * with CREW_ESHUTDOWN; one already waiting for room when the cancel comes may still be
 * accepted, and is then dropped and reported CREW_ECANCELED). Does not wait (see crew_pool_wait).
 * Safe to call twice and from several threads. Returns 0. Thread-safe; callable from a job. */
CREW_EXPORT int crew_pool_close(crew_pool *p);

/* Blocks until every worker of a closed or cancelled pool has exited (then the results
 * channel is closed), or until deadline. Returns 0, CREW_ETIMEDOUT, CREW_EAGAIN (CREW_NOW
 * and not done), CREW_EINVAL if p was never shut down (it would wait forever), or
 * CREW_EDEADLK from one of p's jobs. Thread-safe. */
CREW_EXPORT int crew_pool_wait(crew_pool *p, int64_t deadline);

/* The graceful shutdown: stop accepting, let the workers finish the queue until deadline;
 * at the deadline drop what is still queued (each reported CREW_ECANCELED) and cancel the
 * pool's ctx with cause CREW_ETIMEDOUT so running jobs stop; then wait for the workers to
 * exit. Jobs that honour their ctx end promptly; one that ignores it delays the return, as
 * does a full results channel that nobody reads (workers wait to deliver every result).
 * Returns 0 if all work finished before the deadline, CREW_ETIMEDOUT if it had to cancel,
 * CREW_EDEADLK from one of p's jobs. Thread-safe; safe to race with any other shutdown. */
CREW_EXPORT int crew_pool_drain(crew_pool *p, int64_t deadline);

/* The emergency stop: stop accepting, drop every queued job (each reported as
 * CREW_ECANCELED to its discard callback, future and the results channel), and cancel the
 * pool's ctx with cause (0 = CREW_ECANCELED) so running jobs see it. Does not wait. Safe to
 * call twice and from several threads. Returns 0. Thread-safe; callable from a job. */
CREW_EXPORT int crew_pool_cancel(crew_pool *p, int cause);

/* Changes the number of workers kept (min) and the ceiling (max; 0 = min). New workers
 * start at once up to min, together (waiting for their init hooks); extra workers exit
 * when they next go idle. Returns 0, CREW_EINVAL (min == 0, max < min, or max above
 * 65536), CREW_ESHUTDOWN, CREW_ENOMEM, CREW_EAGAIN (a thread could not be created), or the
 * first init hook's error (the workers whose hooks succeeded stay). Thread-safe. */
CREW_EXPORT CREW_WARN_UNUSED int crew_pool_resize(crew_pool *p, unsigned min, unsigned max);

/* The results channel (elements are crew_result) if opts.results was set, else NULL. Each
 * accepted job sends exactly one result, also when dropped. The pool closes the channel
 * once its last worker has exited; read it until CREW_EPIPE. While results are not read,
 * a full channel blocks the workers. Thread-safe. */
CREW_EXPORT crew_chan *crew_pool_results(crew_pool *p);

/* The pool's ctx: cancelled by crew_pool_cancel, a drain's deadline, or the parent. */
CREW_EXPORT crew_ctx *crew_pool_ctx(crew_pool *p);

/* Fills *out with a snapshot of p's metrics. Reading does not stop the workers. Returns 0.
 * Thread-safe. */
CREW_EXPORT int crew_pool_stats(crew_pool *p, crew_stats *out);

/* Inside a job: the state its worker's init hook set, else NULL. */
CREW_EXPORT void *crew_pool_worker_state(void);

/* Inside a job: its worker's id (0, 1, ...); outside a job: -1. */
CREW_EXPORT int crew_pool_worker_id(void);

/* ---------------------------------------------------------------------------------------
 * Error groups (crew_group): run tasks, wait for all, the first error cancels the rest
 * ------------------------------------------------------------------------------------- */

typedef struct crew_group crew_group;

/* How a group runs its tasks. A caller's pool must outlive the group. */
typedef struct crew_group_opts {
    crew_pool *pool;         /* tasks run on it (not one with a results channel); NULL = a pool of
                                crew_ncpu() workers owned by the group, queue of limit (or 4096) */
    crew_ctx *ctx;           /* parent of the group's ctx; NULL = background */
    unsigned limit;          /* tasks in flight at most (Go's SetLimit); 0 = no limit */
    bool all_errors;         /* keep every error instead of failing fast: the first error then
                                cancels nothing */
    crew_discard_fn discard; /* called instead of fn for an accepted task that never runs
                                (its fn and arg, and why); may be NULL */
} crew_group_opts;

/* One failed task, as crew_group_errors() reports it. */
typedef struct crew_group_error {
    uint64_t index; /* the task's number: 0 for the first task the group accepted, 1 for the
                       next, in the order go() accepted them (a go() that failed while
                       another thread's succeeded may leave a number unused) */
    crew_job_fn fn; /* the task's function and argument */
    void *arg;
    int err;  /* what fn returned, or why the task never ran */
    bool ran; /* false if fn was never called (the task was dropped or skipped) */
} crew_group_error;

/* Creates a group: a ctx (child of opts->ctx) handed to every task, cancelled with the
 * first task's error (fail-fast) unless opts->all_errors, and also when opts->pool is
 * cancelled or drained past its deadline. With no opts->pool it starts a pool of its own.
 * Returns 0, CREW_EINVAL (out NULL, or a pool with a results channel), CREW_ENOMEM, or
 * CREW_EAGAIN (a worker thread could not be created). Thread-safe. */
CREW_EXPORT CREW_WARN_UNUSED int crew_group_create(crew_group **out, const crew_group_opts *opts);

/* Cancels the group's ctx if tasks are still in flight, waits for every one of them (from
 * a job of the group's pool, running queued jobs meanwhile), stops the group's own pool,
 * and frees g. No other thread may use g during or after the call, and it must not be
 * called from one of g's tasks. NULL is ignored. */
CREW_EXPORT void crew_group_destroy(crew_group *g);

/* Starts fn(ctx, arg) as a task of g on its pool; fn receives the group's ctx and returns 0
 * or an error. With a limit, first blocks until fewer than limit tasks are in flight, then
 * (with a bounded pool) until the pool has room, until deadline or until ctx (may be NULL)
 * is done. Unlike Go's errgroup, which still starts every function, a group whose ctx is
 * done (a fail-fast error, a cancel of the parent ctx, of the group's ctx or of its pool)
 * starts nothing more: go returns the ctx's error (a go blocked for a slot as soon as it
 * comes), and a task still queued when it came is not run but handed to opts.discard with
 * the ctx's error and filed as failed (ran false); so is a task the pool drops.
 * Returns 0 (accepted: fn or the discard callback will be called exactly once), ctx's error,
 * the group ctx's error, CREW_EAGAIN (at the limit or the pool full, and deadline CREW_NOW
 * or already past), CREW_ETIMEDOUT, CREW_ESHUTDOWN (the pool no longer accepts jobs),
 * CREW_EINVAL (g or fn NULL), CREW_ENOMEM, or CREW_EDEADLK (called from a task of g while
 * every task in flight waits likewise for a slot of g). On failure fn is never called and
 * the caller keeps arg. From a job of the group's pool, a wait for a slot runs tasks
 * instead of sleeping, as crew_group_wait() does, and a full pool is not waited for: the
 * task then runs in place, in the calling thread, before go returns 0. Thread-safe;
 * callable from a job and from a task. */
CREW_EXPORT CREW_WARN_UNUSED int crew_group_go(crew_group *g, crew_job_fn fn, void *arg,
                                               int64_t deadline, crew_ctx *ctx);

/* crew_group_go(g, fn, arg, CREW_NOW, NULL): never waits (Go's TryGo); CREW_EAGAIN at the
 * limit or when the pool is full. */
CREW_EXPORT CREW_WARN_UNUSED int crew_group_try_go(crew_group *g, crew_job_fn fn, void *arg);

/* Blocks until every task of g has finished (or was dropped), until deadline or until ctx
 * (may be NULL) is done. Once all are done it returns the group's result, crew_group_err():
 * 0 or the first error. Otherwise CREW_EAGAIN (deadline CREW_NOW or past), CREW_ETIMEDOUT,
 * ctx's error, CREW_EDEADLK (called from one of g's own tasks) or CREW_EINVAL (g NULL). A
 * task may return those codes too: after a wait with a deadline or a ctx,
 * crew_group_active(g) == 0 tells that the tasks are done, and crew_group_err(g) is then
 * their result. Unlike Go's Wait it does not cancel the group's ctx: the group stays usable,
 * and more tasks may be added and waited for (crew_group_destroy() releases the ctx).
 * From a job of the group's pool it never just sleeps while work it waits for is queued:
 * it runs g's own tasks that were added from jobs of the pool (newest first, so nested
 * groups on one pool, even of one worker, finish at any depth), and while tasks added from
 * outside the pool are in flight it runs any queued job of the pool (nested at most 4 deep
 * per thread). Thread-safe; several threads may wait. */
CREW_EXPORT int crew_group_wait(crew_group *g, int64_t deadline, crew_ctx *ctx);

/* The group's result so far: 0, or the first error (fail-fast: the first in time; with
 * all_errors: the failed task with the lowest index). Never blocks; thread-safe. */
CREW_EXPORT int crew_group_err(const crew_group *g);

/* Tasks accepted and not yet finished (a snapshot). Never blocks; thread-safe. */
CREW_EXPORT size_t crew_group_active(const crew_group *g);

/* The ctx tasks receive. It stays g's: do not release it. Cancelling it stops the group as
 * a first error would. Thread-safe. */
CREW_EXPORT crew_ctx *crew_group_ctx(crew_group *g);

/* Changes the limit (0 = none); blocked go calls take the new room at once. Tasks already in
 * flight above a lowered limit run on. Returns 0, or CREW_EINVAL (g NULL). Thread-safe. */
CREW_EXPORT int crew_group_set_limit(crew_group *g, unsigned limit);

/* Copies into out the first n (at most) failed tasks, by increasing index, and returns how
 * many there are: with all_errors every failed task, otherwise only the one whose error
 * failed the group (0 or 1). out may be NULL when n is 0. Never blocks; thread-safe. */
CREW_EXPORT size_t crew_group_errors(crew_group *g, crew_group_error *out, size_t n);

/* ---------------------------------------------------------------------------------------
 * Semaphores (crew_sem): counting and weighted, FIFO
 * ------------------------------------------------------------------------------------- */

/* A semaphore of `size` units. A counting semaphore acquires and releases 1 at a time; a
 * weighted one n at a time (a job that needs 4 GiB of a 16 GiB budget takes 4 of 16).
 * Requests are served in FIFO order: while one is queued, later ones queue behind it even
 * if they would fit, so a large request is never starved by a stream of small ones. A unit
 * is not owned by a thread: any thread may release what another acquired. */
typedef struct crew_sem crew_sem;

/* A semaphore with size units (size >= 1), all free. Returns 0, CREW_EINVAL (out NULL or
 * size < 1) or CREW_ENOMEM. Thread-safe. */
CREW_EXPORT CREW_WARN_UNUSED int crew_sem_create(crew_sem **out, int64_t size);

/* Frees s. No thread may be waiting on it (units still held are simply forgotten). NULL is
 * ignored. */
CREW_EXPORT void crew_sem_destroy(crew_sem *s);

/* Acquires n units (1 <= n <= size). Takes them at once if n are free and nobody is queued;
 * otherwise blocks in FIFO order until they are granted, until deadline, or until ctx (may
 * be NULL) is done. Returns 0 (the caller holds n units), CREW_EINVAL (n < 1 or n > size:
 * such a request could never be served, so it is refused instead of blocking forever),
 * CREW_EAGAIN (not available at once, and deadline is CREW_NOW or already past),
 * CREW_ETIMEDOUT, or ctx's error (also when ctx is done before the call). On failure
 * nothing is held, and a waiter that gives up lets the requests behind it proceed. A grant
 * that races with the deadline or a cancel wins: the call then returns 0. The uncontended
 * path is one atomic compare-and-swap. Thread-safe; callable from a job. */
CREW_EXPORT CREW_WARN_UNUSED int crew_sem_acquire(crew_sem *s, int64_t n, int64_t deadline,
                                                  crew_ctx *ctx);

/* crew_sem_acquire(s, n, CREW_NOW, NULL): takes n units if they are free and nobody is
 * queued, else returns CREW_EAGAIN (or CREW_EINVAL for a bad n). Never blocks. */
CREW_EXPORT CREW_WARN_UNUSED int crew_sem_try_acquire(crew_sem *s, int64_t n);

/* Gives back n units (n >= 1) and grants queued requests that now fit, oldest first.
 * Returns 0, CREW_EINVAL (n < 1), or CREW_ERANGE if fewer than n units are held (more would
 * be free than size): then nothing changes. Never blocks (it may wake waiters).
 * Thread-safe; callable from a job and from an on-cancel hook. */
CREW_EXPORT int crew_sem_release(crew_sem *s, int64_t n);

/* Units free now (a snapshot). While requests are queued, free units may exist that a new
 * request still cannot take (they wait for the head). Never blocks; thread-safe. */
CREW_EXPORT int64_t crew_sem_available(const crew_sem *s);

/* Threads queued in crew_sem_acquire now (a snapshot). Never blocks; thread-safe. */
CREW_EXPORT size_t crew_sem_waiters(const crew_sem *s);

/* ---------------------------------------------------------------------------------------
 * Rate limiter (crew_rate): a token bucket
 * ------------------------------------------------------------------------------------- */

/* A token bucket, like golang.org/x/time/rate: it holds up to `burst` tokens, refills at a
 * rate in tokens per second, and starts full. Each event takes a token (or n): allow takes
 * it only if it is there now, reserve takes it now and says how long to wait before acting,
 * and wait sleeps until it is due. Tokens taken ahead of time are due one after another in
 * the order they were taken. The _n forms take n tokens at once (1 <= n <= burst), and
 * allow_n and reserve_n take the current instant (crew_now()) as an argument, as Go's
 * AllowN and ReserveN do: another instant serves simulations and tests; an instant earlier
 * than one the limiter has already seen counts as that one. Every function is thread-safe
 * and callable from a job; none holds a lock while sleeping. */
typedef struct crew_rate crew_rate;

/* A rate of tokens per second that means "no limit": every call succeeds at once. */
#if defined(__GNUC__)
#define CREW_RATE_INF __builtin_inf()
#else
#define CREW_RATE_INF (1e308 * 10.0)
#endif

/* A limiter of per_sec tokens per second (0: no refill at all, so only the first burst
 * tokens are ever given until crew_rate_set; CREW_RATE_INF: unlimited) whose bucket holds
 * burst tokens (1 <= burst <= 2^53) and starts full. Returns 0, CREW_EINVAL (out NULL,
 * per_sec negative or NaN, burst out of range) or CREW_ENOMEM. */
CREW_EXPORT CREW_WARN_UNUSED int crew_rate_create(crew_rate **out, double per_sec, int64_t burst);

/* Frees r. No thread may be waiting on it. NULL is ignored. */
CREW_EXPORT void crew_rate_destroy(crew_rate *r);

/* Takes n tokens at instant now if the bucket holds them, and says whether it did. False,
 * taking nothing, when it does not, when tokens are owed to earlier reservations, or when
 * n < 1 or n > burst. With CREW_RATE_INF: true for any n >= 1. Never blocks. */
CREW_EXPORT bool crew_rate_allow_n(crew_rate *r, int64_t n, int64_t now);

/* crew_rate_allow_n(r, 1, crew_now()): take a token now or say no. */
CREW_EXPORT bool crew_rate_allow(crew_rate *r);

/* Takes n tokens at instant now, even ahead of time, and returns the nanoseconds from now
 * until they are due (0: act now); the caller is expected to wait that long before acting.
 * Returns CREW_EINVAL (n < 1 or n > burst) or CREW_EAGAIN (the rate is 0, so they would
 * never be due) without taking anything. With CREW_RATE_INF: 0. Never blocks. */
CREW_EXPORT int64_t crew_rate_reserve_n(crew_rate *r, int64_t n, int64_t now);

/* crew_rate_reserve_n(r, 1, crew_now()): never fails unless the rate is 0 (CREW_EAGAIN). */
CREW_EXPORT int64_t crew_rate_reserve(crew_rate *r);

/* Takes n tokens, sleeping until they are due, until deadline, or until ctx (may be NULL)
 * is done. If they cannot be due before deadline (or before ctx's deadline), it fails at
 * once and takes nothing, as x/time/rate does. While it sleeps, a crew_rate_set re-plans
 * its wake-up at the new rate, keeping its place in line; if that moves it past the
 * deadline, it ends then with CREW_ETIMEDOUT. Returns 0 (the tokens are spent: act now),
 * CREW_EINVAL (n < 1 or n > burst), CREW_EAGAIN (not available now, and deadline is
 * CREW_NOW or already past), CREW_ETIMEDOUT, or ctx's error (also when ctx is done before
 * the call). A wait that fails gives back the tokens nobody reserved after it. Costs a
 * lock and a clock read when no sleep is needed; with CREW_RATE_INF, one atomic load.
 * Blocks until the tokens are due or the deadline; callable from a job. */
CREW_EXPORT CREW_WARN_UNUSED int crew_rate_wait_n(crew_rate *r, int64_t n, int64_t deadline,
                                                  crew_ctx *ctx);

/* crew_rate_wait_n(r, 1, deadline, ctx). */
CREW_EXPORT CREW_WARN_UNUSED int crew_rate_wait(crew_rate *r, int64_t deadline, crew_ctx *ctx);

/* Changes the rate and the burst from now on (as crew_rate_create takes them). Tokens
 * accrued so far stay, capped at the new burst; coming back from CREW_RATE_INF the bucket
 * is full. Sleeping waiters re-plan at once. Returns 0 or CREW_EINVAL (then nothing
 * changes). Never blocks. */
CREW_EXPORT int crew_rate_set(crew_rate *r, double per_sec, int64_t burst);

/* The tokens in the bucket now: fractional while refilling, negative while tokens are owed
 * to reservations; CREW_RATE_INF when unlimited. Never blocks. */
CREW_EXPORT double crew_rate_tokens(crew_rate *r);

/* Threads sleeping in crew_rate_wait now (a snapshot). Never blocks. */
CREW_EXPORT size_t crew_rate_waiters(const crew_rate *r);

/* ---------------------------------------------------------------------------------------
 * Retry (crew_retry): attempts, exponential backoff with full jitter
 * ------------------------------------------------------------------------------------- */

/* Says whether err, the error of a failed try, is worth another try. */
typedef bool (*crew_retry_pred)(int err, void *arg);

/* A retry policy. The zero value is the default: 3 tries, backoff ceilings of 100 ms,
 * 200 ms, 400 ms ... up to 30 s, full jitter, every error retried except the ctx's own. */
typedef struct crew_retry {
    unsigned attempts;         /* tries in all, the first included; 0 = 3 */
    int64_t base;              /* ceiling of the first backoff, ns; 0 = 100 ms */
    int64_t cap;               /* the largest ceiling, ns; 0 = 30 s */
    double factor;             /* growth of the ceiling per retry (>= 1); 0 = 2 */
    bool no_jitter;            /* sleep the ceiling itself; by default (full jitter) sleep a
                                  uniform random time in [0, ceiling] */
    crew_retry_pred retryable; /* NULL = every error, except CREW_ECANCELED and
                                  CREW_ETIMEDOUT once the ctx is done (they are its own) */
    void *pred_arg;            /* passed to retryable */
} crew_retry;

/* Runs fn(ctx, arg) until it returns 0, or returns an error that policy->retryable (or the
 * default) refuses, or the attempts are spent, or ctx (may be NULL) ends it. Between tries
 * it sleeps crew_retry_delay(policy, k, ...) before retry k (1, 2, ...); the sleep ends early
 * when ctx is done. When the next try would come after ctx's deadline it gives up at once
 * rather than sleep in vain. policy NULL means the defaults. If tries is not NULL, *tries
 * receives the number of calls of fn. Returns 0 (fn succeeded), fn's last error (refused,
 * attempts spent, or ctx's deadline too near for another try), ctx's error (ctx done before
 * the first try, during a backoff, or after a failed try), or CREW_EINVAL (fn NULL, or a
 * policy with a negative base or cap, or a factor below 1 or not a number: then fn is never
 * called). Blocks: for fn's runs and the backoffs. Thread-safe; callable from a job (the
 * backoff then holds the worker). */
CREW_EXPORT int crew_retry_do(const crew_retry *policy, crew_job_fn fn, void *arg, crew_ctx *ctx,
                              unsigned *tries);

/* The backoff before retry number attempt (1 for the one after the first try; 0 gives 0):
 * its ceiling is min(cap, base * factor^(attempt-1)), computed without overflow for any
 * attempt; with no_jitter the delay is the ceiling, otherwise uniform in [0, ceiling], drawn
 * from *rng_state (any value; the caller owns it, so concurrent callers each keep their
 * own; NULL uses a per-thread state). Returns the delay in ns, or CREW_EINVAL for a policy
 * crew_retry_do() refuses. policy NULL means the defaults. Never blocks; thread-safe. */
CREW_EXPORT int64_t crew_retry_delay(const crew_retry *policy, unsigned attempt,
                                     uint64_t *rng_state);

/* ---------------------------------------------------------------------------------------
 * Ordered results (crew_order): completions emitted in submission order
 * ------------------------------------------------------------------------------------- */

/*
 * A reorder buffer (the seeds' "Strategy 2"): producers, typically pool jobs finishing in
 * any order, put results numbered 0, 1, 2, ...; the consumer takes them strictly in that
 * order. Memory stays bounded when one job is slow: at most `window` results are held, and
 * a producer that runs window or more seqs ahead of the next to emit waits.
 *
 * Two ways to number the results:
 * - crew_order_reserve() hands out the seqs, one per job, and waits while `window` of them
 *   are outstanding (handed out and not yet taken by the consumer). A reserved seq is always
 *   inside the window, so its put never waits: the submitter waits, holding nothing, and no
 *   worker is ever blocked. This is the deadlock-free form: use it whenever you can.
 * - The caller numbers the results itself and crew_order_put() waits while its seq is
 *   window or more ahead. Then the job holding the next seq must always be able to run:
 *   when seqs go to jobs in increasing order and jobs start in that order (one submitting
 *   thread, one priority level), that job has started before any job that waits, so any
 *   window works; a window of at least the number of workers keeps them all busy (a
 *   smaller one idles the fast ones behind every slow one). If jobs can start out of seq
 *   order (several submitters, priorities), the window must also cover that disorder, or
 *   every worker may end up waiting in put while the job that would free them sits queued.
 * In both forms the consumer must run concurrently with the producers: a thread that
 * submits everything and reads only afterwards waits forever once the window is full.
 *
 * A seq with no result (its job failed, or was dropped before it ran) is put with a NULL
 * item and an error code, so the stream never stalls. crew_order_close() ends the stream:
 * the consumer then takes what is buffered, with every seq that was never put reported as a
 * hole (item NULL, err CREW_EPIPE), and then gets CREW_EPIPE.
 */
typedef struct crew_order crew_order;

/* Called by crew_order_destroy() for each result still buffered (never taken), in seq
 * order, so that its item can be freed. */
typedef void (*crew_order_discard_fn)(void *arg, uint64_t seq, void *item);

typedef struct crew_order_opts {
    size_t window;                 /* results held ahead of the next to emit (at most
                                      2^30); 0 = 64 */
    crew_order_discard_fn discard; /* for results never taken; may be NULL */
    void *discard_arg;             /* its first argument */
} crew_order_opts;

/* One result, as crew_order_next() hands it out. */
typedef struct crew_order_result {
    uint64_t seq; /* its number: 0, 1, 2, ... without a gap */
    void *item;   /* what was put; NULL for a skipped seq or a hole */
    int err;      /* what was put with it; CREW_EPIPE for a hole left at close */
} crew_order_result;

/* A snapshot of an order's counters (crew_order_stats). */
typedef struct crew_order_info {
    uint64_t next;          /* the seq the consumer takes next: results emitted so far */
    uint64_t reserved;      /* seqs handed out by crew_order_reserve() */
    size_t window;          /* the window given at creation */
    size_t buffered;        /* gauge: results put and not yet taken */
    size_t peak;            /* the most results ever buffered at once (<= window) */
    uint64_t put_waits;     /* puts that had to wait for the window */
    uint64_t reserve_waits; /* reserves that had to wait for the window */
} crew_order_info;

/* Creates an empty order whose first seq is 0. Returns 0, CREW_EINVAL (out NULL, window
 * above 2^30) or CREW_ENOMEM. Thread-safe. */
CREW_EXPORT CREW_WARN_UNUSED int crew_order_create(crew_order **out, const crew_order_opts *opts);

/* Frees o, handing each result still buffered to the discard callback (in seq order). No
 * thread may be using o or waiting on it. NULL is ignored. */
CREW_EXPORT void crew_order_destroy(crew_order *o);

/* Hands out the next seq (0, 1, 2, ...) into *seq. Blocks while `window` seqs are
 * outstanding (handed out and not yet taken by the consumer), until deadline or until ctx
 * (may be NULL) is done. Every seq handed out must then be put exactly once (an item, or
 * NULL and an error), and its put never waits. Returns 0, CREW_EPIPE (closed, also while
 * waiting), CREW_EAGAIN (the window is full and deadline is CREW_NOW or already past),
 * CREW_ETIMEDOUT, ctx's error, or CREW_EINVAL (seq NULL). Waiters are served first come,
 * first served. Thread-safe; callable from a job. */
CREW_EXPORT CREW_WARN_UNUSED int crew_order_reserve(crew_order *o, uint64_t *seq, int64_t deadline,
                                                    crew_ctx *ctx);

/* Stores the result numbered seq: item (NULL is allowed: a skipped seq) and err (0, or any
 * code saying why there is no item; the order only carries it). Blocks while seq is window
 * or more ahead of the next seq to emit (never for a reserved seq), until deadline or until
 * ctx is done. On success the consumer will take item; on failure the caller keeps it.
 * Returns 0, CREW_EINVAL (seq already emitted or already put), CREW_EPIPE (closed, also
 * while waiting), CREW_EAGAIN (too far ahead and deadline is CREW_NOW or already past),
 * CREW_ETIMEDOUT, or ctx's error. Thread-safe; callable from a job (see the window sizing
 * above). */
CREW_EXPORT CREW_WARN_UNUSED int crew_order_put(crew_order *o, uint64_t seq, void *item, int err,
                                                int64_t deadline, crew_ctx *ctx);

/* Takes the next result in seq order into *out; the caller then owns its item. Blocks
 * until that seq has been put, until deadline or until ctx is done. Once o is closed it
 * takes what is buffered without waiting, reporting each seq never put as a hole (item
 * NULL, err CREW_EPIPE), up to the highest seq put or reserved. Returns 0, CREW_EPIPE
 * (closed and nothing left), CREW_EAGAIN (not there and deadline is CREW_NOW or already
 * past), CREW_ETIMEDOUT, ctx's error, or CREW_EINVAL (out NULL). Several consumers may
 * call it; each result goes to one of them. Thread-safe; callable from a job. */
CREW_EXPORT CREW_WARN_UNUSED int crew_order_next(crew_order *o, crew_order_result *out,
                                                 int64_t deadline, crew_ctx *ctx);

/* Ends the stream: puts and reserves fail with CREW_EPIPE (waiting ones too), and the
 * consumer drains what is buffered (see crew_order_next). Returns 0, or CREW_EPIPE if o was
 * already closed. Never blocks; thread-safe; callable from a job and from an on-cancel
 * hook. */
CREW_EXPORT int crew_order_close(crew_order *o);

/* Fills *out with a snapshot of o's counters. Returns 0. Never blocks for long;
 * thread-safe. */
CREW_EXPORT int crew_order_stats(crew_order *o, crew_order_info *out);

/* The simple form: results into caller-owned slots by index. fn(ctx, i, arg) is called
 * once for each i in 0..n-1, and writes its output wherever arg says (out[i], say); its
 * return value goes to errs[i] when errs is not NULL. */
typedef int (*crew_map_fn)(crew_ctx *ctx, size_t i, void *arg);

/* Runs fn over the indices 0..n-1 on p's workers and returns when every index has been
 * run or given up. fn runs with the map's ctx: a child of ctx (may be NULL) that also ends
 * at deadline and when p's ctx is cancelled; once that ctx is done, the indices not yet
 * started are not run and get its error (CREW_ECANCELED or CREW_ETIMEDOUT) in errs.
 * Called from outside p, the caller only waits: fn runs on p's workers, where
 * crew_pool_worker_state() works (the first helper job is submitted with deadline and ctx,
 * so a full pool makes the call wait; the others spread to idle workers with a try, so a
 * full queue may count one rejected submit in p's metrics). Called from one of p's jobs, the
 * caller runs indices itself as well, so maps nest and never deadlock. Returns 0 when every
 * fn returned 0; otherwise the error of the lowest failing index (a fn's error, the map
 * ctx's error for indices never run, CREW_ESHUTDOWN if p no longer accepts jobs, or
 * CREW_ENOMEM); or CREW_EINVAL (p or fn NULL, n above SIZE_MAX / 2) with nothing run.
 * n == 0 returns 0 at once. Blocks; thread-safe; callable from a job of p or of another
 * pool. */
CREW_EXPORT CREW_WARN_UNUSED int crew_order_map(crew_pool *p, crew_map_fn fn, void *arg, size_t n,
                                                int *errs, int64_t deadline, crew_ctx *ctx);

/* ---------------------------------------------------------------------------------------
 * Pipelines (crew_pipeline): stages joined by bounded channels
 * ------------------------------------------------------------------------------------- */

/*
 * A pipeline is a chain of stages, each a function run by its own workers (the threads of
 * a crew_pool per stage: never a thread per item), joined by bounded queues (crew_chan).
 * crew_pipeline_send() puts an item into stage 0's input queue; each stage takes items
 * from its queue, and passes what its function returns on to the next stage's queue; the
 * last stage's outputs come out of crew_pipeline_recv(). A full queue blocks whoever sends
 * into it, so a slow stage backs the whole pipeline up to the producer (backpressure), and
 * the items inside are bounded by the sum of the queue capacities, the workers and the
 * output capacity: memory stays flat however many items pass.
 *
 * Closing the input drains every stage in order: a stage ends once its input is closed
 * and empty and its workers are done, and then closes the next stage's input; after the
 * last stage the output closes. Cancelling (crew_pipeline_cancel, the parent ctx, or a
 * stage function returning an error) stops every stage at once: each item still inside is
 * given to the discard callback, exactly once.
 *
 * Items are void pointers, never NULL, and change owner as they go: the producer's until
 * crew_pipeline_send() accepts them, then the pipeline's, each stage function's while it
 * runs, and the consumer's once crew_pipeline_recv() returns them. Items cross workers, so
 * the output order is not the input order, unless the pipeline is CREW_PIPELINE_ORDERED.
 */
typedef struct crew_pipeline crew_pipeline;

/* A stage's function, called once per item with the pipeline's ctx (cancelled when the
 * pipeline is). It owns `in` from the call on and either passes an item on in *out (in
 * itself or a new one) and returns 0, drops it (returns 0 with *out left NULL, having
 * disposed of in), or fails: it returns a negative code, the pipeline is cancelled with it
 * as the cause, and it must have disposed of in (an item it put in *out is discarded). */
typedef int (*crew_stage_fn)(crew_ctx *ctx, void *in, void **out, void *arg);

/* Disposes of an item the pipeline gives up: one left inside by a cancel (in a queue, or
 * a stage's output that could not be passed on), one a CREW_PIPELINE_SINK pipeline's last
 * stage passes on, or one unread at destroy. stage is the index of the stage the item was
 * going to (n, the number of stages, for the output), which tells the item's type. Runs on
 * whichever thread gives the item up: a stage's worker, or the caller of destroy. */
typedef void (*crew_pipeline_discard_fn)(void *arg, void *item, size_t stage);

typedef struct crew_stage {
    const char *name;         /* for stats and the stage's pool (copied, at most 63 bytes);
                                 NULL = "stage0", "stage1", ... */
    crew_stage_fn fn;         /* the stage's function */
    void *arg;                /* its last argument */
    unsigned workers;         /* threads running fn (at most 65536); 0 = crew_ncpu() */
    size_t queue;             /* capacity of this stage's input queue; 0 = no buffer: a
                                 send completes only when a worker takes the item */
    crew_worker_init_fn init; /* per-worker hooks of the stage's pool (may be NULL): each */
    crew_worker_fini_fn fini; /* worker may own a connection or a handle, which fn reads */
    void *hook_arg;           /* with crew_pool_worker_state() */
} crew_stage;

/* Pipeline flags. */
enum {
    /* No output: whatever the last stage passes on goes to the discard callback (counted
     * as passed on); crew_pipeline_recv() is refused. */
    CREW_PIPELINE_SINK = 1u << 0,
    /* crew_pipeline_recv() returns the items in the order crew_pipeline_send() took them
     * (a reorder buffer, crew_order, replaces the output queue). At most `window` items are
     * between a send and their recv: a send waits for room, so no worker ever waits for a
     * straggler and the pipeline cannot deadlock on it. */
    CREW_PIPELINE_ORDERED = 1u << 1,
};

typedef struct crew_pipeline_opts {
    crew_ctx *ctx;                    /* parent of the pipeline's ctx; NULL = background */
    size_t output_cap;                /* capacity of the output queue; 0 = no buffer */
    crew_pipeline_discard_fn discard; /* for items given up (may be NULL: then they leak) */
    void *discard_arg;                /* its first argument */
    unsigned flags;                   /* CREW_PIPELINE_* */
    size_t window;                    /* CREW_PIPELINE_ORDERED: items in flight at most (at
                                         most 2^30); 0 = the sum of the stages' queues and
                                         workers */
} crew_pipeline_opts;

/* One stage's metrics (crew_pipeline_stage_stats). Once the pipeline has finished, every
 * item the stage took is accounted: in == out + dropped + failed + (discarded - the items
 * discarded from its input queue); and over the whole pipeline, the items sent equal those
 * received plus all stages' dropped, failed and discarded (plus the last stage's out for
 * a CREW_PIPELINE_SINK pipeline). */
typedef struct crew_stage_stats {
    char name[64];         /* the stage's name */
    unsigned workers;      /* its workers */
    uint64_t in;           /* items its workers took from its input queue */
    uint64_t out;          /* items passed on (to the next stage, the output, or a sink) */
    uint64_t dropped;      /* items its function dropped (0 with *out NULL) */
    uint64_t failed;       /* calls of its function that returned an error */
    uint64_t discarded;    /* items it gave to the discard callback: outputs a cancel kept
                              from being passed on, and items left in its input queue by a
                              cancel (for the last stage, also those left in the output) */
    size_t queue_cap;      /* its input queue's capacity */
    size_t queue_depth;    /* gauge: items waiting in its input queue */
    size_t queue_peak;     /* the most items its input queue ever held */
    unsigned busy;         /* gauge: workers inside its function */
    int64_t idle_ns;       /* its workers' time waiting for input */
    int64_t blocked_ns;    /* its workers' time waiting to pass items on (the next queue,
                              or the output, was full): backpressure from downstream */
    int64_t in_blocked_ns; /* time spent waiting for room in its input queue by whoever sends
                              into it: crew_pipeline_send() for stage 0 (for an ordered
                              pipeline, also waiting for the window), else the previous
                              stage's blocked_ns */
    crew_hist run;         /* time inside its function, per item */
} crew_stage_stats;

/* Creates a pipeline of the n stages (the array is copied) and starts their workers, each
 * stage on a pool of its own named after it. Returns 0, CREW_EINVAL (out or stages NULL, n
 * == 0, a stage without fn or with more than 65536 workers, an unknown flag, SINK together
 * with ORDERED, window above 2^30), CREW_ENOMEM, CREW_EAGAIN (a thread could not be
 * started), or the first init hook's error; on failure nothing is left running. A parent
 * ctx already done gives a pipeline that is cancelled from the start. Thread-safe. */
CREW_EXPORT CREW_WARN_UNUSED int crew_pipeline_create(crew_pipeline **out, const crew_stage *stages,
                                                      size_t n, const crew_pipeline_opts *opts);

/* Sends item (not NULL) into stage 0. Blocks while its input queue is full (for an
 * ordered pipeline, also while `window` items are in flight), until deadline or until ctx
 * (may be NULL) is done. On success the pipeline owns item; on failure the caller still
 * does. Returns 0, CREW_EPIPE (closed, also while waiting), CREW_ECANCELED or
 * CREW_ETIMEDOUT (the pipeline was cancelled: its ctx's error), CREW_EAGAIN (full, and
 * deadline is CREW_NOW or already past), CREW_ETIMEDOUT (deadline), ctx's error, or
 * CREW_EINVAL (item NULL). Thread-safe; callable from a job. */
CREW_EXPORT CREW_WARN_UNUSED int crew_pipeline_send(crew_pipeline *pl, void *item, int64_t deadline,
                                                    crew_ctx *ctx);

/* No more input: every stage drains what it has, in order, then the output closes.
 * Returns 0, or CREW_EPIPE if the input was already closed (by a close or a cancel). Never
 * blocks; thread-safe; callable from a job. */
CREW_EXPORT int crew_pipeline_close(crew_pipeline *pl);

/* Takes one output item into *item; the caller then owns it. Blocks while none is ready,
 * until deadline or until ctx (may be NULL) is done. Returns 0; CREW_EPIPE once the
 * pipeline has drained after a close and every output was taken; CREW_ECANCELED or
 * CREW_ETIMEDOUT (the pipeline's ctx's error) once a cancel has stopped it and no output is
 * left (the items inside go to the discard callback; one that had already reached the
 * output may still be returned first); CREW_EAGAIN (none ready and deadline is CREW_NOW or
 * already past); CREW_ETIMEDOUT (deadline); ctx's error; or CREW_EINVAL (item NULL, or a
 * SINK pipeline). Thread-safe; callable from a job. */
CREW_EXPORT CREW_WARN_UNUSED int crew_pipeline_recv(crew_pipeline *pl, void **item,
                                                    int64_t deadline, crew_ctx *ctx);

/* Blocks until every stage's workers are done (after a close has drained everything, or a
 * cancel), or until deadline. The last stage's workers wait to deliver their outputs, so
 * unless the pipeline is a sink someone must be reading it (or it must be cancelled) for
 * this to return. Returns 0 when the pipeline drained, else the cause of its cancel: a stage
 * function's error, crew_pipeline_cancel()'s cause, or the parent ctx's cause; or
 * CREW_ETIMEDOUT, CREW_EAGAIN (CREW_NOW and not finished), or CREW_EDEADLK from inside a
 * stage function. Once finished, every item has been delivered, dropped, failed or
 * discarded. Thread-safe. */
CREW_EXPORT int crew_pipeline_wait(crew_pipeline *pl, int64_t deadline);

/* Stops every stage: the pipeline's ctx is cancelled with cause (0 = CREW_ECANCELED), the
 * input closes, workers stop after the item in hand, and each item left inside is
 * discarded. Does not wait (see crew_pipeline_wait). The first cancel's cause wins; a cancel
 * after the pipeline has drained changes nothing (the output stays for the consumer, and
 * only sends are refused). Never blocks; thread-safe; callable from a stage function and
 * from an on-cancel hook. */
CREW_EXPORT void crew_pipeline_cancel(crew_pipeline *pl, int cause);

/* Fills *out with stage i's metrics, read without stopping its workers. Returns 0, or
 * CREW_EINVAL (i out of range). Thread-safe. */
CREW_EXPORT int crew_pipeline_stage_stats(crew_pipeline *pl, size_t i, crew_stage_stats *out);

/* Cancels pl unless it has finished, waits for its workers, discards every item still
 * inside or unread, and frees it. No other thread may use pl during or after the call, and
 * it must not be called from a stage function. NULL is ignored. */
CREW_EXPORT void crew_pipeline_destroy(crew_pipeline *pl);

#ifdef __cplusplus
}
#endif

#endif /* CREW_H */
