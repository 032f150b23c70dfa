/*
 * park.c - the only place a thread of libcrew sleeps.
 *
 * Everything that blocks (a full queue, an empty channel, a ctx wait, an idle worker)
 * sleeps here on a 32-bit futex word, so a wake-up costs one system call and only when
 * someone really sleeps. Two shapes:
 *
 * - crew__event: one waiter, set once. A blocking call puts one on its stack, hands its
 *   address to whoever may wake it (a channel's waiter list, a ctx watch node), and waits.
 * - crew__ec, an eventcount: many waiters on a condition that is checked without a lock
 *   (the pool's queue). The waiter announces itself (prepare), re-checks, then sleeps on
 *   the sequence number it read; a notifier that changed the condition bumps the sequence
 *   only if someone announced. The seq_cst fence in notify pairs with the seq_cst increment
 *   in prepare (Dekker): either the notifier sees the waiter, or the waiter's re-check sees
 *   the notifier's change. So no wake-up is lost and a notify with no waiter is one load.
 *   The notifier also counts the wake-ups it sends until their waiters leave, and sends
 *   none while every waiter has one coming: a woken thread may wait a time slice for a
 *   CPU, and a producer submitting meanwhile would otherwise make a futile futex call per
 *   job (measured: tens of thousands per million jobs, most of the producer's time).
 */
#include "internal.h"

#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int crew__futex_wait(_Atomic uint32_t *word, uint32_t expect, int64_t deadline)
{
    struct timespec ts, *tsp = NULL;
    if (deadline != CREW_FOREVER) {
        if (deadline <= crew_now())
            return CREW_ETIMEDOUT;
        /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC time: no drift on retries. */
        ts.tv_sec = deadline / CREW_SEC;
        ts.tv_nsec = deadline % CREW_SEC;
        tsp = &ts;
    }
    long r = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG, expect,
                     tsp, NULL, FUTEX_BITSET_MATCH_ANY);
    if (r == -1 && errno == ETIMEDOUT)
        return CREW_ETIMEDOUT;
    return 0; /* woken, EAGAIN (value changed) or EINTR: the caller re-checks */
}

void crew__futex_wake(_Atomic uint32_t *word, int n)
{
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE | FUTEX_PRIVATE_FLAG, n, NULL, NULL, 0);
}

/* ---- event ---------------------------------------------------------------------------- */

void crew__event_init(crew__event *e)
{
    atomic_init(&e->set, 0);
}

void crew__event_set(crew__event *e)
{
    /* The waiter may return and free e as soon as it sees 1, but the futex word's address
     * is only used as a key by the kernel: waking a freed address is harmless. */
    atomic_store_explicit(&e->set, 1, memory_order_release);
    crew__futex_wake(&e->set, 1);
}

bool crew__event_is_set(crew__event *e)
{
    return atomic_load_explicit(&e->set, memory_order_acquire) != 0;
}

int crew__event_wait(crew__event *e, int64_t deadline)
{
    for (int spin = 0; spin < 64; spin++) {
        if (crew__event_is_set(e))
            return 0;
        crew__cpu_relax();
    }
    while (!crew__event_is_set(e))
        if (crew__futex_wait(&e->set, 0, deadline) == CREW_ETIMEDOUT)
            return crew__event_is_set(e) ? 0 : CREW_ETIMEDOUT;
    return 0;
}

/* ---- eventcount ----------------------------------------------------------------------- */

#define EC_WAITER  1ull
#define EC_PENDING (1ull << 32)

void crew__ec_init(crew__ec *ec)
{
    atomic_init(&ec->seq, 0);
    atomic_init(&ec->state, 0);
}

uint32_t crew__ec_prepare(crew__ec *ec)
{
    uint32_t key = atomic_load_explicit(&ec->seq, memory_order_acquire);
    atomic_fetch_add_explicit(&ec->state, EC_WAITER, memory_order_seq_cst);
    return key;
}

/* A waiter leaves, and takes back one wake-up in flight if there is one (its own, or
 * another's: then the other's notifier may wake one more thread than needed, never one
 * fewer). Waiters and wake-ups change in one word, so in flight <= waiters always holds:
 * a notify never skips a sleeper on the strength of a wake-up nobody will take back. */
static void leave(crew__ec *ec)
{
    uint64_t s = atomic_load_explicit(&ec->state, memory_order_relaxed);
    uint64_t next;
    do
        next = (s - EC_WAITER) - ((s >> 32) ? EC_PENDING : 0);
    while (!atomic_compare_exchange_weak_explicit(&ec->state, &s, next, memory_order_relaxed,
                                                  memory_order_relaxed));
}

void crew__ec_cancel(crew__ec *ec)
{
    leave(ec);
}

int crew__ec_wait(crew__ec *ec, uint32_t key, int64_t deadline)
{
    int rc = 0;
    if (atomic_load_explicit(&ec->seq, memory_order_acquire) == key)
        rc = crew__futex_wait(&ec->seq, key, deadline);
    leave(ec);
    return rc;
}

/* Every waiter counted here read its key before it was counted, so before the seq bump
 * below: it either sleeps already (and the futex wake reaches it, or reaches another
 * sleeper while it stays counted without a wake-up, for the next notify), or sees the
 * bump and does not sleep. */
bool crew__ec_notify_after_rmw(crew__ec *ec, int n)
{
    uint64_t s = atomic_load_explicit(&ec->state, memory_order_seq_cst);
    uint32_t add;
    do {
        uint32_t waiters = (uint32_t)s, pending = (uint32_t)(s >> 32);
        if (pending >= waiters)
            return false; /* nobody waits, or every waiter has a wake-up coming */
        add = (uint32_t)n < waiters - pending ? (uint32_t)n : waiters - pending;
    } while (!atomic_compare_exchange_weak_explicit(&ec->state, &s, s + add * EC_PENDING,
                                                    memory_order_seq_cst, memory_order_relaxed));
    atomic_fetch_add_explicit(&ec->seq, 1, memory_order_release);
    crew__futex_wake(&ec->seq, (int)add);
    return true;
}

void crew__ec_notify(crew__ec *ec, int n)
{
    atomic_thread_fence(memory_order_seq_cst);
    (void)crew__ec_notify_after_rmw(ec, n);
}
