/*
 * sem.c - weighted semaphores with a FIFO queue, the C answer to golang.org/x/sync/semaphore.
 *
 * A semaphore has `size` units. An acquire of n units succeeds when n units are free and
 * nobody is queued before it; otherwise the caller joins a FIFO queue and sleeps until a
 * release (or a waiter ahead of it leaving) makes room for the request at the head. Only the
 * head is ever served, so a large request is never starved by small ones arriving behind
 * it; while the head cannot be served, nobody behind it is, even if its own n would fit.
 *
 * The fast path is one atomic word, `state`: its low 63 bits count the free units and its
 * top bit, QUEUED, says the queue is not empty. With QUEUED clear, acquire and release are a
 * single compare-and-swap each and never touch the mutex. A thread that must wait takes the
 * mutex and sets QUEUED; from then on every acquire and release sees the bit and takes the
 * mutex too, so while QUEUED is set the state word changes only under the mutex, and the
 * release that makes room for the head is the one that serves it: no wake-up is lost. The
 * bit is cleared (under the mutex) when the queue empties.
 *
 * Before queueing, an acquirer whose request does not fit spins briefly on the state word:
 * a holder often releases within a microsecond. Spinning takes nothing ahead of a queued
 * waiter, because it only succeeds while QUEUED is clear.
 *
 * A blocked thread is a `waiter` on its own stack, with a 32-bit wake word it sleeps on.
 * Whoever serves it (a release, or a waiter ahead of it that gave up) subtracts its units
 * and marks it GRANTED under the mutex, then, after unlocking, sets WAKE_GRANT in its word
 * and wakes it. The waiter, however it woke (grant, deadline, ctx), takes the mutex to read
 * its fate: a grant wins over a deadline or a cancel that fired at the same time, so units
 * are never lost; a waiter still queued unlinks itself, and if it was the head, serves the
 * waiters behind it that now fit. A granted waiter does not return before it sees
 * WAKE_GRANT, because its granter still writes that word after unlocking (the same protocol
 * as chan.c's hand-offs).
 *
 * Cancellation: a blocked call watches its ctx with a crew__ctx_node whose callback only
 * sets WAKE_CTX in the waiter's word; the call unwatches before returning (which waits for
 * a running callback), so the node and the waiter stay valid for it.
 *
 * Lock order: s->mu is a leaf; ctx watches happen outside it. Invariants, under s->mu:
 * QUEUED is set exactly when the queue is not empty; free units never exceed size; the head
 * waiter (if any) wants more units than are free. Nothing is allocated after creation.
 */
#include "internal.h"

#include <string.h>

/* The state word: free units in the low 63 bits, QUEUED on top. */
#define QUEUED     (UINT64_C(1) << 63)
#define UNITS_MASK (QUEUED - 1)

/* Rounds of the state word polled before queueing, and of the wake word before sleeping
 * (a few microseconds each). Yielding the core in between was tried and measured: on a
 * loaded machine sched_yield hands the core to other processes and contended throughput
 * fell tenfold. */
#define SPIN_ACQUIRE 100
#define SPIN_WAKE    100

/* A waiter's fate, decided under s->mu by whoever takes it off the queue. */
enum { WAITING, GRANTED };

/* Bits of a waiter's wake word. */
enum {
    WAKE_GRANT = 1u, /* the granter is done with the waiter: the last write to it */
    WAKE_CTX = 2u,   /* its ctx was cancelled */
    SLEEPING = 4u,   /* the waiter sleeps (or is about to) in a futex wait on the word */
};

/* A thread blocked in crew_sem_acquire; lives on that thread's stack. */
typedef struct waiter {
    struct waiter *next, *prev; /* queue links under s->mu; after a grant, `next` links the
                                   granter's private list of waiters to wake */
    uint64_t n;                 /* units wanted: immutable while queued */
    int status;                 /* WAITING or GRANTED: under s->mu */
    _Atomic uint32_t wake;      /* WAKE_* bits, a futex word: set with release by the granter
                                   after unlocking and by the ctx callback */
} waiter;

struct crew_sem {
    _Atomic uint64_t state; /* free units | QUEUED; lock-free while QUEUED is clear, else
                               written only under mu */
    uint64_t size;          /* units in all: immutable */
    pthread_mutex_t mu;     /* guards the queue, and the state while QUEUED is set */
    waiter *head, *tail;    /* the queue, oldest first: under mu */
    _Atomic size_t waiting; /* waiters queued: written under mu, read lock-free */
};

/* ---- the queue (callers hold s->mu) -------------------------------------------------- */

static void set_waiting(crew_sem *s, size_t n)
{
    atomic_store_explicit(&s->waiting, n, memory_order_relaxed);
}

static size_t waiting(const crew_sem *s)
{
    return atomic_load_explicit(&s->waiting, memory_order_relaxed);
}

static void q_push(crew_sem *s, waiter *w)
{
    w->next = NULL;
    w->prev = s->tail;
    if (s->tail)
        s->tail->next = w;
    else
        s->head = w;
    s->tail = w;
    set_waiting(s, waiting(s) + 1);
}

static void q_remove(crew_sem *s, waiter *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        s->head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        s->tail = w->prev;
    w->next = w->prev = NULL;
    crew_assert(waiting(s) > 0);
    set_waiting(s, waiting(s) - 1);
}

/*
 * Serves the queue from its head with `units` free (QUEUED is set, so the state word is
 * ours): each head that fits is granted and moved to the returned wake list, until one does
 * not fit or the queue is empty. Then publishes the new state. The caller wakes the list
 * after unlocking (wake_granted).
 */
static waiter *serve(crew_sem *s, uint64_t units)
{
    waiter *wake = NULL, **tail = &wake;
    while (s->head && s->head->n <= units) {
        waiter *w = s->head;
        q_remove(s, w);
        units -= w->n;
        w->status = GRANTED;
        *tail = w;
        tail = &w->next;
    }
    /* Release: a thread that takes these units through the fast path sees what their
     * last holder did. */
    atomic_store_explicit(&s->state, units | (s->head ? QUEUED : 0), memory_order_release);
    return wake;
}

/* ---- waking and sleeping ------------------------------------------------------------- */

/* Sets bit in a waiter's wake word, and wakes the waiter if it sleeps. The bit is the last
 * write to the word: only its address is used afterwards. */
static void signal(_Atomic uint32_t *word, uint32_t bit)
{
    if (atomic_fetch_or_explicit(word, bit, memory_order_release) & SLEEPING)
        crew__futex_wake(word, 1);
}

/* Tells each granted waiter of the list that it may go. Called after unlocking: once its
 * WAKE_GRANT is set a waiter may return, so its link is read first and only the word's
 * address is used afterwards (a futex wake on a dead stack frame is harmless). */
static void wake_granted(waiter *w)
{
    while (w) {
        waiter *next = w->next;
        signal(&w->wake, WAKE_GRANT);
        w = next;
    }
}

/* The ctx callback: runs in the cancelling thread, outside any lock of the semaphore. */
static void wake_ctx(void *arg, int err)
{
    (void)err;
    waiter *w = arg;
    signal(&w->wake, WAKE_CTX);
}

/* Waits until a bit of mask is set in *word or the deadline passes: spinning `spins`
 * rounds, then sleeping. A sleeper first raises SLEEPING, so that a signal finding it clear skips
 * the futex wake: the word is one location, so either the signal's RMW sees SLEEPING or
 * the raise fails and we see the signal. Returns the word's bits in mask (0 on a
 * timeout). */
static uint32_t park(_Atomic uint32_t *word, uint32_t mask, int spins, int64_t deadline)
{
    uint32_t v;
    for (int spin = 0; spin < spins; spin++) {
        v = atomic_load_explicit(word, memory_order_acquire);
        if (v & mask)
            return v & mask;
        crew__cpu_relax();
    }
    for (;;) {
        v = atomic_load_explicit(word, memory_order_acquire);
        if (v & mask)
            return v & mask;
        if (!(v & SLEEPING) &&
            !atomic_compare_exchange_weak_explicit(word, &v, v | SLEEPING, memory_order_relaxed,
                                                   memory_order_relaxed))
            continue;
        if (crew__futex_wait(word, v | SLEEPING, deadline) == CREW_ETIMEDOUT)
            return atomic_load_explicit(word, memory_order_acquire) & mask;
    }
}

static bool expired(int64_t deadline)
{
    return deadline != CREW_FOREVER && (deadline == CREW_NOW || deadline <= crew_now());
}

/* ---- the lock-free paths ------------------------------------------------------------- */

/* Takes n units if they are free and nobody is queued. */
static bool try_take(crew_sem *s, uint64_t n)
{
    uint64_t v = atomic_load_explicit(&s->state, memory_order_relaxed);
    while (!(v & QUEUED) && v >= n)
        if (atomic_compare_exchange_weak_explicit(&s->state, &v, v - n, memory_order_acquire,
                                                  memory_order_relaxed))
            return true;
    return false;
}

/* Spins a while for n units to come free, as long as nobody is queued. */
static bool spin_take(crew_sem *s, uint64_t n)
{
    for (int spin = 0; spin < SPIN_ACQUIRE; spin++) {
        uint64_t v = atomic_load_explicit(&s->state, memory_order_relaxed);
        if (v & QUEUED)
            return false;
        if (v >= n && try_take(s, n))
            return true;
        crew__cpu_relax();
    }
    return false;
}

/* ---- the slow path of acquire -------------------------------------------------------- */

/*
 * Called with s->mu held, after the lock-free path failed and the deadline allows waiting:
 * queues w, unlocks, sleeps until a grant, the deadline or ctx ends the wait, and decides
 * under the lock. Returns with s->mu released: 0 if granted, else ctx's error or
 * CREW_ETIMEDOUT (then w left the queue holding nothing).
 */
static int block(crew_sem *s, waiter *w, int64_t deadline, crew_ctx *ctx)
{
    crew__ctx_node node;
    memset(&node, 0, sizeof node);
    w->status = WAITING;
    atomic_init(&w->wake, 0);
    q_push(s, w);
    /* Only the head spins before sleeping: it is the next to be served. Behind it, a
     * spinner would only take a core from the holder that must release first (measured:
     * 4 threads on 2 cores went from 15M to 50M pairs/s). */
    int spins = s->head == w ? SPIN_WAKE : 0;
    crew__check(pthread_mutex_unlock(&s->mu));

    /* A cancel before the watch is reported by the watch; one after it sets WAKE_CTX. */
    int ctx_err = ctx ? crew__ctx_watch(ctx, &node, wake_ctx, w) : 0;
    if (ctx_err == 0)
        (void)park(&w->wake, WAKE_GRANT | WAKE_CTX, spins, deadline);

    waiter *wake = NULL;
    crew__check(pthread_mutex_lock(&s->mu));
    int status = w->status;
    if (status == WAITING) {
        bool was_head = s->head == w;
        q_remove(s, w);
        uint64_t units = atomic_load_explicit(&s->state, memory_order_relaxed) & UNITS_MASK;
        /* The head wanted more than was free; the waiters behind it may fit now. */
        if (was_head || !s->head)
            wake = serve(s, units);
    }
    crew__check(pthread_mutex_unlock(&s->mu));
    wake_granted(wake);

    if (ctx && ctx_err == 0)
        (void)crew__ctx_unwatch(ctx, &node);
    if (status == GRANTED) {
        /* The granter has decided but may not have written the wake word yet. */
        (void)park(&w->wake, WAKE_GRANT, SPIN_WAKE, CREW_FOREVER);
        return 0;
    }
    if (ctx && ctx_err == 0)
        ctx_err = crew_ctx_err(ctx);
    if (ctx_err)
        return ctx_err;
    crew_assert(deadline != CREW_FOREVER); /* only the deadline is left to have ended it */
    return CREW_ETIMEDOUT;
}

/* ---- public API ---------------------------------------------------------------------- */

int crew_sem_create(crew_sem **out, int64_t size)
{
    if (!out || size < 1)
        return CREW_EINVAL;
    /* Its own cache line: the state word is the hot spot and shares it with nothing. */
    crew_sem *s = crew__aligned_alloc(CREW__CACHELINE, sizeof *s);
    if (!s)
        return CREW_ENOMEM;
    if (pthread_mutex_init(&s->mu, NULL) != 0) {
        crew__free(s);
        return CREW_ENOMEM;
    }
    s->size = (uint64_t)size;
    atomic_init(&s->state, (uint64_t)size);
    s->head = s->tail = NULL;
    atomic_init(&s->waiting, 0);
    *out = s;
    return 0;
}

void crew_sem_destroy(crew_sem *s)
{
    if (!s)
        return;
    /* A thread still queued would wake on freed memory: a caller's bug. */
    crew_assert(waiting(s) == 0);
    crew__check(pthread_mutex_destroy(&s->mu));
    crew__free(s);
}

int crew_sem_acquire(crew_sem *s, int64_t n, int64_t deadline, crew_ctx *ctx)
{
    crew_assert(s);
    if (n < 1 || (uint64_t)n > s->size)
        return CREW_EINVAL;
    if (ctx) {
        int err = crew_ctx_err(ctx);
        if (err)
            return err;
    }
    uint64_t want = (uint64_t)n;
    if (try_take(s, want))
        return 0;
    if (!expired(deadline) && spin_take(s, want))
        return 0;

    crew__check(pthread_mutex_lock(&s->mu));
    uint64_t v = atomic_load_explicit(&s->state, memory_order_relaxed);
    for (;;) {
        if (!(v & QUEUED) && v >= want) {
            if (atomic_compare_exchange_weak_explicit(&s->state, &v, v - want, memory_order_acquire,
                                                      memory_order_relaxed))
                break;
            continue;
        }
        if (expired(deadline)) {
            crew__check(pthread_mutex_unlock(&s->mu));
            return CREW_EAGAIN;
        }
        /* Raising QUEUED diverts every other call to the mutex: from here on the state is
         * ours until we unlock. Acquire: units that lock-free releases freed before this
         * point are granted later under the mutex, so their holders' writes must be visible
         * to whoever holds it next. */
        if ((v & QUEUED) ||
            atomic_compare_exchange_weak_explicit(&s->state, &v, v | QUEUED, memory_order_acquire,
                                                  memory_order_relaxed)) {
            waiter w = {.n = want};
            return block(s, &w, deadline, ctx);
        }
    }
    crew__check(pthread_mutex_unlock(&s->mu));
    return 0;
}

int crew_sem_try_acquire(crew_sem *s, int64_t n)
{
    return crew_sem_acquire(s, n, CREW_NOW, NULL);
}

int crew_sem_release(crew_sem *s, int64_t n)
{
    crew_assert(s);
    if (n < 1)
        return CREW_EINVAL;
    uint64_t give = (uint64_t)n;
    if (give > s->size)
        return CREW_ERANGE;
    uint64_t v = atomic_load_explicit(&s->state, memory_order_relaxed);
    while (!(v & QUEUED)) {
        if (give > s->size - v)
            return CREW_ERANGE;
        if (atomic_compare_exchange_weak_explicit(&s->state, &v, v + give, memory_order_release,
                                                  memory_order_relaxed))
            return 0;
    }

    crew__check(pthread_mutex_lock(&s->mu));
    waiter *wake = NULL;
    int rc = 0;
    v = atomic_load_explicit(&s->state, memory_order_relaxed);
    for (;;) {
        uint64_t units = v & UNITS_MASK;
        if (give > s->size - units) {
            rc = CREW_ERANGE;
            break;
        }
        if (v & QUEUED) {
            wake = serve(s, units + give);
            break;
        }
        /* The queue emptied before we locked: the lock-free path is open again. */
        if (atomic_compare_exchange_weak_explicit(&s->state, &v, v + give, memory_order_release,
                                                  memory_order_relaxed))
            break;
    }
    crew__check(pthread_mutex_unlock(&s->mu));
    wake_granted(wake);
    return rc;
}

int64_t crew_sem_available(const crew_sem *s)
{
    return (int64_t)(atomic_load_explicit(&s->state, memory_order_relaxed) & UNITS_MASK);
}

size_t crew_sem_waiters(const crew_sem *s)
{
    return waiting(s);
}
