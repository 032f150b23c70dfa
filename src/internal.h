/*
 * internal.h - what libcrew's modules share and users never see.
 *
 * Names here are crew__ (two underscores): library-internal, hidden from the shared
 * library's symbol table by -fvisibility=hidden.
 */
#ifndef CREW_INTERNAL_H
#define CREW_INTERNAL_H

#include "crew.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#define CREW__CACHELINE 64
#define CREW__ALIGNED   __attribute__((aligned(CREW__CACHELINE)))

#define crew__likely(x)   __builtin_expect(!!(x), 1)
#define crew__unlikely(x) __builtin_expect(!!(x), 0)

/* A hint inside a spin loop. */
#if defined(__x86_64__) || defined(__i386__)
#define crew__cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define crew__cpu_relax() __asm__ volatile("yield")
#else
#define crew__cpu_relax() ((void)0)
#endif

/* An assertion that stays in release builds: a broken invariant aborts with its place. */
#define crew_assert(cond)                                                                          \
    do {                                                                                           \
        if (crew__unlikely(!(cond)))                                                               \
            crew__assert_fail(#cond, __FILE__, __LINE__);                                          \
    } while (0)
_Noreturn void crew__assert_fail(const char *what, const char *file, int line);

/* A pthread call that cannot fail unless the program is broken (lock, unlock, signal). */
#define crew__check(call) crew_assert((call) == 0)

/* ---- allocation: every allocation of the library goes through these --------------------
 * In a CREW_TESTING build, crew__test_fail_after(n) makes the n-th allocation from now
 * fail (0 = stop failing), and crew__test_alloc_count() counts allocations: so tests prove
 * the error paths and that the hot path allocates nothing. */
void *crew__malloc(size_t n);
void *crew__calloc(size_t count, size_t n);
void *crew__aligned_alloc(size_t align, size_t n); /* zeroed */
void crew__free(void *p);
char *crew__strdup(const char *s);
/* pthread_create through the same failure injection; returns 0 or CREW_EAGAIN. */
int crew__thread_create(pthread_t *t, void *(*fn)(void *), void *arg);
CREW_EXPORT void crew__test_fail_after(long n);
CREW_EXPORT uint64_t crew__test_alloc_count(void);

/* ---- clock ---------------------------------------------------------------------------- */

/* Cheap timestamps for metrics: the TSC where it is invariant, else crew_now(). Convert a
 * difference of ticks to nanoseconds with crew__ticks_to_ns. Both are inline: the pool
 * takes a tick and converts two differences per job. */
extern _Atomic bool crew__tick_tsc;     /* set once, after the anchor and the first scale */
extern _Atomic double crew__tick_scale; /* ns per tick; 1.0 until calibrated */
extern _Atomic bool crew__tick_settled; /* the scale is final (or ticks are ns) */
/* Measures the provisional scale if none is, and the final one once SETTLE_NS have passed
 * since crew__ticks_init (clock.c); between the two it costs one TSC read. */
void crew__ticks_settle(void);

static inline uint64_t crew__ticks(void)
{
#if defined(__x86_64__) || defined(__i386__)
    if (__builtin_expect(atomic_load_explicit(&crew__tick_tsc, memory_order_relaxed), 1))
        return __builtin_ia32_rdtsc();
#endif
    return (uint64_t)crew_now();
}

/* A difference of ticks in ns; a negative one (a reading from another core slightly
 * behind) clamps to 0. Ticks taken after crew__ticks_init() convert with a provisional
 * scale (within a fraction of a percent: the first conversion measures it, waiting if it
 * comes within 10 us of the init) until a conversion a few milliseconds later settles it;
 * before the init, ticks are nanoseconds and the scale is 1. */
static inline int64_t crew__ticks_to_ns(uint64_t dticks)
{
    if ((int64_t)dticks < 0)
        return 0;
    if (crew__unlikely(!atomic_load_explicit(&crew__tick_settled, memory_order_relaxed)))
        crew__ticks_settle();
    return (int64_t)((double)dticks *
                     atomic_load_explicit(&crew__tick_scale, memory_order_relaxed));
}
uint64_t crew__ns_to_ticks(int64_t ns);
/* Calibrates the ticks once. Call it before taking ticks that will be compared (pool
 * creation does), so that no pair straddles the switch from nanoseconds to TSC counts.
 * It costs a few clock reads, once per process; the measuring waits for the conversions. */
void crew__ticks_init(void);

/* A relative timeout for futex/condvar waits from an absolute deadline; false if the
 * deadline has passed. */
bool crew__deadline_left(int64_t deadline, int64_t *left_ns);

/* ---- parking: the only place a thread sleeps (park.c) ---------------------------------- */

/* futex wait on *word while it equals expect, until the absolute deadline (CREW_FOREVER).
 * Returns 0 (woken or the value changed: the caller re-checks) or CREW_ETIMEDOUT. Spurious
 * wake-ups are possible. */
int crew__futex_wait(_Atomic uint32_t *word, uint32_t expect, int64_t deadline);
void crew__futex_wake(_Atomic uint32_t *word, int n);

/* A one-shot event: one waiter, any number of setters. */
typedef struct crew__event {
    _Atomic uint32_t set; /* 0 until set; then 1 forever (until re-initialised) */
} crew__event;
void crew__event_init(crew__event *e);
void crew__event_set(crew__event *e);
bool crew__event_is_set(crew__event *e);
/* 0 once set, CREW_ETIMEDOUT if the deadline passed first. */
int crew__event_wait(crew__event *e, int64_t deadline);

/* An eventcount: lets threads sleep on a condition checked without a lock.
 * Waiter:   key = crew__ec_prepare(ec); if (condition) { crew__ec_cancel(ec); ... }
 *           else crew__ec_wait(ec, key, deadline);
 * Notifier: make the condition true, then crew__ec_notify(ec, n).
 * A notify that comes after prepare is never lost. notify costs one load when nobody
 * waits, and also when every waiter already has a wake-up coming: a woken thread stays a
 * waiter until it has run, which on a busy machine can take a time slice, and without
 * that rule every notify in the meantime would be a futile system call. */
typedef struct crew__ec {
    _Atomic uint32_t seq;   /* bumped by each notify that wakes someone */
    _Atomic uint64_t state; /* low 32 bits: waiters (threads between prepare and the end of
                               wait/cancel); high 32: wake-ups in flight, never more than
                               the waiters (each leaving waiter takes one back) */
} crew__ec;
/* Threads between prepare and the end of their wait or cancel (a seq_cst load). */
static inline uint32_t crew__ec_waiters(crew__ec *ec)
{
    return (uint32_t)atomic_load_explicit(&ec->state, memory_order_seq_cst);
}
void crew__ec_init(crew__ec *ec);
uint32_t crew__ec_prepare(crew__ec *ec);
void crew__ec_cancel(crew__ec *ec);
int crew__ec_wait(crew__ec *ec, uint32_t key, int64_t deadline); /* 0 or CREW_ETIMEDOUT */
void crew__ec_notify(crew__ec *ec, int n);                       /* n = INT32_MAX wakes all */
/* As crew__ec_notify, for a caller whose condition change was itself a seq_cst
 * read-modify-write (a CAS): that RMW orders it, so no fence is needed. True if it sent a
 * wake-up (a system call), false if nobody needed one. */
bool crew__ec_notify_after_rmw(crew__ec *ec, int n);

/* ---- contexts (ctx.c): waiting on a ctx from other modules ----------------------------- */

/* A watch node, embedded by a waiter (often on its stack). */
typedef struct crew__ctx_node {
    struct crew__ctx_node *next, *prev; /* in the ctx's list, under its lock */
    void (*fn)(void *arg, int err);     /* called once on cancel, outside the ctx's lock */
    void *arg;
    _Atomic int state;    /* CREW__NODE_* */
    pthread_t firing_tid; /* the thread running fn, while state == FIRING */
} crew__ctx_node;
enum { CREW__NODE_IDLE, CREW__NODE_LISTED, CREW__NODE_FIRING, CREW__NODE_FIRED };

/* Registers n on c. Returns 0, or c's error if c is already done (then fn is not called
 * and n is not registered). c == NULL or background: returns 0 and registers nothing. */
int crew__ctx_watch(crew_ctx *c, crew__ctx_node *n, void (*fn)(void *arg, int err), void *arg);
/* Unregisters n. True if removed before firing; false if fn ran (waits until it has
 * returned, unless called from fn itself). Safe on a node never registered. */
bool crew__ctx_unwatch(crew_ctx *c, crew__ctx_node *n);

/* A ctx living inside another object (a pool's per-worker job ctx), initialised and
 * reused in place without allocation. Its parent must outlive it. Its refcount is not used:
 * users must not retain it past the job. */
int crew__ctx_init_child(crew_ctx *c, crew_ctx *parent, int64_t deadline);
void crew__ctx_fini_child(crew_ctx *c);
size_t crew__ctx_sizeof(void);

/* ---- channels (chan.c) ----------------------------------------------------------------- */

/* Threads blocked in c's send and recv queues now (a snapshot; for tests and metrics). */
size_t crew__chan_waiters(const crew_chan *c);

/* ---- the shared timer (timer.c) -------------------------------------------------------- */

typedef struct crew__timer {
    int64_t when;          /* absolute deadline */
    void (*fn)(void *arg); /* runs on the timer thread, outside the timer's lock */
    void *arg;
    size_t heap_idx; /* position in the heap, or SIZE_MAX when not armed */
} crew__timer;
void crew__timer_init(crew__timer *t, void (*fn)(void *arg), void *arg);
/* Arms t at when. Returns 0, CREW_ENOMEM, or CREW_EAGAIN (no timer thread). */
int crew__timer_add(crew__timer *t, int64_t when);
/* Disarms t; if it is firing now, waits until its fn has returned (unless called from
 * the timer thread itself). True if it was disarmed before firing. */
bool crew__timer_del(crew__timer *t);

/* ---- metrics (metrics.c) --------------------------------------------------------------- */

/* A histogram with a single writer and concurrent readers. */
typedef struct crew__hist {
    _Atomic uint64_t count, sum;
    _Atomic uint64_t buckets[CREW_HIST_BUCKETS];
} crew__hist;
/* Single writer: relaxed load + store, no read-modify-write. */
void crew__hist_add(crew__hist *h, int64_t ns);
/* Adds h's counts into out (any thread). */
void crew__hist_merge(crew_hist *out, const crew__hist *h);

/* Single-writer counter increment: no locked instruction. */
static inline void crew__count(_Atomic uint64_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

/* ---- pool (pool.c): for the modules built on it ------------------------------------------ */

/* True if the calling thread is running one of p's jobs (or its hooks). */
bool crew__pool_in_job(const crew_pool *p);

/* From one of p's jobs that must wait for other jobs of p (an error group's wait, a
 * limited group's go): runs the highest-priority queued job of p in the calling thread, so
 * a pool whose every worker waits cannot deadlock. Returns 0 if it ran one, CREW_EDEADLK if
 * nothing is queued (or helping is already 4 jobs deep: wait instead), CREW_EINVAL if the
 * caller is not in one of p's jobs. */
int crew__pool_help(crew_pool *p);

/* ---- pool (pool.c): for tests ---------------------------------------------------------- */

/* Threads parked in a submit waiting for room in p. */
unsigned crew__pool_space_waiters(crew_pool *p);

#endif /* CREW_INTERNAL_H */
