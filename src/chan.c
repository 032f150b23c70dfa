/*
 * chan.c - bounded multi-producer multi-consumer channels of fixed-size elements.
 *
 * The shape is Go's hchan, which also uses a lock: one mutex per channel guards a ring
 * buffer of cap * elem_size bytes and two FIFO queues of blocked threads, the senders and
 * the receivers. Any thread may send, receive or close; a blocked thread sleeps in park.c.
 *
 * A blocked thread is a `waiter` on its own stack: a pointer to its element, a status and
 * a 32-bit wake word it sleeps on. Hand-offs are direct, so an element is copied once per
 * hop and no thread wakes only to find its work gone:
 * - a send with a receiver waiting copies straight into that receiver's buffer;
 * - a receive from a full buffer with a sender waiting takes the oldest element, moves the
 *   sender's element into the freed slot, and completes that sender;
 * - with capacity 0 (a rendezvous) the receiver copies from the waiting sender's buffer, so
 *   a send returns only once a receiver has its element.
 * Whoever completes a waiter (a peer, or close) decides its fate under the lock (`status`),
 * then, after unlocking, sets WAKE_PEER in its wake word and wakes it. The waiter, however
 * it woke (peer, deadline, ctx), takes the lock to read its status: completed wins over a
 * deadline or a cancel that fired at the same time, so an element is never lost; a waiter
 * still queued unlinks itself and reports the deadline or the ctx. A completed waiter does
 * not return before it sees WAKE_PEER, because the completer still writes that word after
 * unlocking; once it is set the completer only passes the word's address to futex_wake,
 * which is harmless on a dead stack frame. Waking outside the lock keeps the futex system
 * call out of the critical section.
 *
 * Cancellation: a blocked call registers a crew__ctx_node whose callback only sets
 * WAKE_CTX in the waiter's word (it runs in the cancelling thread and takes no lock of
 * ours). The call always unwatches before returning; unwatch waits for a running callback,
 * so the node and the waiter on the stack stay valid for it.
 *
 * Lock order: c->mu is a leaf. No other lock is taken while it is held, and the ctx is
 * watched and unwatched outside it, so a channel call may come from an on-cancel hook.
 *
 * Invariants, under c->mu: senders wait only while the buffer is full (len == cap) and
 * receivers only while it is empty (len == 0), so with cap > 0 at most one queue is
 * non-empty and with cap 0 never both. Queues are FIFO and only the head is completed, so
 * waiters are served in arrival order and each producer's elements keep their order. After
 * close both queues stay empty. Nothing is allocated after crew_chan_create().
 */
#include "internal.h"

#include <string.h>

/* A waiter's fate, decided under the channel's lock by whoever removes it from its queue. */
enum { WAITING, COMPLETED, CLOSED };

/* Bits of a waiter's wake word. */
enum {
    WAKE_PEER = 1u, /* a peer or close decided its status; the last write to the waiter */
    WAKE_CTX = 2u,  /* its ctx was cancelled */
};

/* Spins on the wake word before sleeping: a hand-off often lands within a microsecond. */
#define SPIN_LIMIT 64

/* A thread blocked in send or recv; lives on that thread's stack. */
typedef struct waiter {
    struct waiter *next, *prev; /* links in sendq or recvq: under c->mu */
    const void *src;            /* a sender's element, read by its peer under c->mu */
    void *dst;                  /* a receiver's buffer (NULL: drop), filled under c->mu */
    int status;                 /* WAITING, COMPLETED or CLOSED: under c->mu */
    _Atomic uint32_t wake;      /* WAKE_* bits, a futex word: set with release by the
                                   completer after unlocking and by the ctx callback */
} waiter;

/* A FIFO of waiters, doubly linked so a waiter that gives up can unlink itself. */
typedef struct waitq {
    waiter *head, *tail; /* oldest and newest: under c->mu */
} waitq;

struct crew_chan {
    pthread_mutex_t mu;     /* guards everything below that is not marked otherwise */
    size_t elem_size;       /* bytes per element: immutable */
    size_t cap;             /* elements the ring holds: immutable */
    unsigned char *buf;     /* the ring, cap * elem_size bytes (NULL for cap 0): under mu */
    size_t head;            /* ring slot of the oldest element: under mu */
    _Atomic size_t len;     /* elements in the ring: written under mu, read lock-free */
    _Atomic bool closed;    /* set once, under mu, with release; read lock-free */
    _Atomic size_t waiting; /* threads in sendq and recvq: written under mu, read lock-free */
    waitq sendq;            /* blocked senders, oldest first: under mu */
    waitq recvq;            /* blocked receivers, oldest first: under mu */
};

/* ---- waiter queues (callers hold c->mu) ----------------------------------------------- */

static void q_push(crew_chan *c, waitq *q, waiter *w)
{
    w->next = NULL;
    w->prev = q->tail;
    if (q->tail)
        q->tail->next = w;
    else
        q->head = w;
    q->tail = w;
    atomic_store_explicit(&c->waiting, atomic_load_explicit(&c->waiting, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

static void q_remove(crew_chan *c, waitq *q, waiter *w)
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
    size_t n = atomic_load_explicit(&c->waiting, memory_order_relaxed);
    crew_assert(n > 0);
    atomic_store_explicit(&c->waiting, n - 1, memory_order_relaxed);
}

/* Removes and returns the oldest waiter of q, or NULL. */
static waiter *q_pop(crew_chan *c, waitq *q)
{
    waiter *w = q->head;
    if (w)
        q_remove(c, q, w);
    return w;
}

/* ---- waking and sleeping -------------------------------------------------------------- */

/* Tells w that its status is final. Called after unlocking: after the fetch_or, w may
 * return and its stack frame die, so only the word's address is used afterwards. */
static void wake_peer(waiter *w)
{
    _Atomic uint32_t *word = &w->wake;
    atomic_fetch_or_explicit(word, WAKE_PEER, memory_order_release);
    crew__futex_wake(word, 1);
}

/* The ctx callback: runs in the cancelling thread, outside any lock of the channel. */
static void wake_ctx(void *arg, int err)
{
    (void)err;
    waiter *w = arg;
    atomic_fetch_or_explicit(&w->wake, WAKE_CTX, memory_order_release);
    crew__futex_wake(&w->wake, 1);
}

/* Sleeps until a bit of mask is set in w's wake word or the deadline passes. Returns 0 or
 * CREW_ETIMEDOUT. Spurious futex returns are absorbed here. */
static int sleep_on(waiter *w, uint32_t mask, int64_t deadline)
{
    uint32_t v;
    for (int spin = 0; spin < SPIN_LIMIT; spin++) {
        if (atomic_load_explicit(&w->wake, memory_order_acquire) & mask)
            return 0;
        crew__cpu_relax();
    }
    while (!((v = atomic_load_explicit(&w->wake, memory_order_acquire)) & mask))
        if (crew__futex_wait(&w->wake, v, deadline) == CREW_ETIMEDOUT)
            return (atomic_load_explicit(&w->wake, memory_order_acquire) & mask) ? 0
                                                                                 : CREW_ETIMEDOUT;
    return 0;
}

/* True if a call with this deadline must not wait. */
static bool expired(int64_t deadline)
{
    if (deadline == CREW_FOREVER)
        return false;
    return deadline == CREW_NOW || deadline <= crew_now();
}

/*
 * The slow path of send and recv. Called with c->mu held, after the fast paths failed and
 * the deadline allows waiting: queues w on q, unlocks, sleeps until a peer, close, the
 * deadline or ctx ends the wait, and decides under the lock. Returns with c->mu released:
 * 0 if a peer completed w, CREW_EPIPE if close did, else ctx's error or CREW_ETIMEDOUT
 * (then w was unlinked and nothing moved).
 */
static int block(crew_chan *c, waitq *q, waiter *w, int64_t deadline, crew_ctx *ctx)
{
    crew__ctx_node node;
    memset(&node, 0, sizeof node);
    w->status = WAITING;
    atomic_init(&w->wake, 0);
    q_push(c, q, w);
    crew__check(pthread_mutex_unlock(&c->mu));

    /* Watching outside the lock keeps c->mu a leaf. A cancel that lands before the watch is
     * reported by the watch itself; one that lands after it sets WAKE_CTX. */
    bool watched = false;
    int ctx_err = 0;
    if (ctx) {
        ctx_err = crew__ctx_watch(ctx, &node, wake_ctx, w);
        watched = ctx_err == 0;
    }
    if (ctx_err == 0)
        (void)sleep_on(w, WAKE_PEER | WAKE_CTX, deadline);

    crew__check(pthread_mutex_lock(&c->mu));
    int status = w->status;
    if (status == WAITING)
        q_remove(c, q, w);
    crew__check(pthread_mutex_unlock(&c->mu));

    if (watched)
        (void)crew__ctx_unwatch(ctx, &node);
    if (status != WAITING) {
        /* The completer has decided but may not have written the wake word yet. */
        (void)sleep_on(w, WAKE_PEER, CREW_FOREVER);
        return status == COMPLETED ? 0 : CREW_EPIPE;
    }
    if (ctx_err == 0 && ctx)
        ctx_err = crew_ctx_err(ctx);
    if (ctx_err)
        return ctx_err;
    /* Still queued, not cancelled: only the deadline can have ended the wait. */
    crew_assert(deadline != CREW_FOREVER);
    return CREW_ETIMEDOUT;
}

/* ---- the ring (callers hold c->mu) ---------------------------------------------------- */

static unsigned char *slot(const crew_chan *c, size_t i)
{
    if (i >= c->cap)
        i -= c->cap;
    return c->buf + i * c->elem_size;
}

static size_t ring_len(const crew_chan *c)
{
    return atomic_load_explicit(&c->len, memory_order_relaxed);
}

static void set_len(crew_chan *c, size_t n)
{
    atomic_store_explicit(&c->len, n, memory_order_relaxed);
}

/* ---- public API ----------------------------------------------------------------------- */

int crew_chan_create(crew_chan **out, size_t elem_size, size_t cap)
{
    if (!out || elem_size == 0 || (cap && elem_size > SIZE_MAX / cap))
        return CREW_EINVAL;
    /* Its own cache line: the mutex is the hot word, shared with nothing else. */
    crew_chan *c = crew__aligned_alloc(CREW__CACHELINE, sizeof *c);
    if (!c)
        return CREW_ENOMEM;
    if (cap) {
        c->buf = crew__malloc(cap * elem_size);
        if (!c->buf)
            goto err_free_chan;
    }
    if (pthread_mutex_init(&c->mu, NULL) != 0)
        goto err_free_buf;
    c->elem_size = elem_size;
    c->cap = cap;
    c->head = 0;
    atomic_init(&c->len, 0);
    atomic_init(&c->closed, false);
    atomic_init(&c->waiting, 0);
    c->sendq = (waitq){NULL, NULL};
    c->recvq = (waitq){NULL, NULL};
    *out = c;
    return 0;

err_free_buf:
    crew__free(c->buf);
err_free_chan:
    crew__free(c);
    return CREW_ENOMEM;
}

void crew_chan_destroy(crew_chan *c)
{
    if (!c)
        return;
    /* A thread still blocked here would wake on freed memory: a caller's bug. */
    crew_assert(atomic_load_explicit(&c->waiting, memory_order_relaxed) == 0);
    crew__check(pthread_mutex_destroy(&c->mu));
    crew__free(c->buf);
    crew__free(c);
}

int crew_chan_send(crew_chan *c, const void *elem, int64_t deadline, crew_ctx *ctx)
{
    crew_assert(c && elem);
    if (ctx) {
        int err = crew_ctx_err(ctx);
        if (err)
            return err;
    }
    crew__check(pthread_mutex_lock(&c->mu));
    if (atomic_load_explicit(&c->closed, memory_order_relaxed)) {
        crew__check(pthread_mutex_unlock(&c->mu));
        return CREW_EPIPE;
    }
    waiter *r = q_pop(c, &c->recvq);
    if (r) {
        /* Receivers wait only on an empty ring: hand the element straight over. */
        crew_assert(ring_len(c) == 0);
        if (r->dst)
            memcpy(r->dst, elem, c->elem_size);
        r->status = COMPLETED;
        crew__check(pthread_mutex_unlock(&c->mu));
        wake_peer(r);
        return 0;
    }
    size_t len = ring_len(c);
    if (len < c->cap) {
        memcpy(slot(c, c->head + len), elem, c->elem_size);
        set_len(c, len + 1);
        crew__check(pthread_mutex_unlock(&c->mu));
        return 0;
    }
    if (expired(deadline)) {
        crew__check(pthread_mutex_unlock(&c->mu));
        return CREW_EAGAIN;
    }
    waiter w = {.src = elem};
    return block(c, &c->sendq, &w, deadline, ctx);
}

int crew_chan_recv(crew_chan *c, void *elem, int64_t deadline, crew_ctx *ctx)
{
    crew_assert(c);
    if (ctx) {
        int err = crew_ctx_err(ctx);
        if (err)
            return err;
    }
    crew__check(pthread_mutex_lock(&c->mu));
    size_t len = ring_len(c);
    if (len > 0) {
        unsigned char *oldest = slot(c, c->head);
        if (elem)
            memcpy(elem, oldest, c->elem_size);
        c->head = c->head + 1 == c->cap ? 0 : c->head + 1;
        /* Senders wait only on a full ring: the oldest one's element takes the freed slot,
         * which is now the newest, so the ring stays full and the senders keep FIFO. */
        waiter *s = q_pop(c, &c->sendq);
        if (s) {
            crew_assert(len == c->cap);
            memcpy(oldest, s->src, c->elem_size);
            s->status = COMPLETED;
        } else {
            set_len(c, len - 1);
        }
        crew__check(pthread_mutex_unlock(&c->mu));
        if (s)
            wake_peer(s);
        return 0;
    }
    waiter *s = q_pop(c, &c->sendq);
    if (s) {
        /* An empty ring with a sender waiting: a rendezvous channel. */
        crew_assert(c->cap == 0);
        if (elem)
            memcpy(elem, s->src, c->elem_size);
        s->status = COMPLETED;
        crew__check(pthread_mutex_unlock(&c->mu));
        wake_peer(s);
        return 0;
    }
    if (atomic_load_explicit(&c->closed, memory_order_relaxed)) {
        crew__check(pthread_mutex_unlock(&c->mu));
        return CREW_EPIPE;
    }
    if (expired(deadline)) {
        crew__check(pthread_mutex_unlock(&c->mu));
        return CREW_EAGAIN;
    }
    waiter w = {.dst = elem};
    return block(c, &c->recvq, &w, deadline, ctx);
}

int crew_chan_try_send(crew_chan *c, const void *elem)
{
    return crew_chan_send(c, elem, CREW_NOW, NULL);
}

int crew_chan_try_recv(crew_chan *c, void *elem)
{
    return crew_chan_recv(c, elem, CREW_NOW, NULL);
}

int crew_chan_close(crew_chan *c)
{
    crew_assert(c);
    crew__check(pthread_mutex_lock(&c->mu));
    if (atomic_load_explicit(&c->closed, memory_order_relaxed)) {
        crew__check(pthread_mutex_unlock(&c->mu));
        return CREW_EPIPE;
    }
    atomic_store_explicit(&c->closed, true, memory_order_release);
    /* Senders wait on a full ring and receivers on an empty one: at most one queue has
     * waiters. Detach it whole; its links stay intact for the walk below. */
    crew_assert(!c->sendq.head || !c->recvq.head);
    waiter *list = c->sendq.head ? c->sendq.head : c->recvq.head;
    for (waiter *w = list; w; w = w->next)
        w->status = CLOSED;
    c->sendq = (waitq){NULL, NULL};
    c->recvq = (waitq){NULL, NULL};
    atomic_store_explicit(&c->waiting, 0, memory_order_relaxed);
    crew__check(pthread_mutex_unlock(&c->mu));
    /* Each waiter stays put until it sees WAKE_PEER, so read its link before setting it. */
    while (list) {
        waiter *next = list->next;
        wake_peer(list);
        list = next;
    }
    return 0;
}

size_t crew_chan_len(const crew_chan *c)
{
    return atomic_load_explicit(&c->len, memory_order_relaxed);
}

size_t crew_chan_cap(const crew_chan *c)
{
    return c->cap;
}

bool crew_chan_closed(const crew_chan *c)
{
    return atomic_load_explicit(&c->closed, memory_order_acquire);
}

size_t crew__chan_waiters(const crew_chan *c)
{
    return atomic_load_explicit(&c->waiting, memory_order_relaxed);
}
