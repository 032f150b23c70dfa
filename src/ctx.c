/*
 * ctx.c - cancellation contexts: a tree of cancellable scopes with deadlines and hooks.
 *
 * State. A ctx is live while its `cause` word is 0 and done once a cancel has stored a
 * nonzero cause there by compare-and-swap: the first cancel wins and the word never
 * changes again (until an embedded ctx is re-initialised). Its error is derived from the
 * cause (CREW_ETIMEDOUT stays CREW_ETIMEDOUT, anything else reads as CREW_ECANCELED), so
 * err and cause are published together by that one CAS, and crew_ctx_done() is one
 * acquire load.
 *
 * Watchers. Everything that must learn of a cancel is a crew__ctx_node on the ctx's
 * doubly linked list (under the ctx's mutex): a waiter blocked in another module (often on
 * its stack), a child ctx (its `pnode`), or an on-cancel hook. A node moves
 * IDLE -> LISTED (watch) -> IDLE (unwatch), or LISTED -> FIRING -> RUNNING -> FIRED
 * (cancel). The cancel that wins the CAS detaches the whole list under the mutex as a
 * private chain, marks each node FIRING (pending) with its own thread id, unlocks, and
 * then walks the chain with no lock held: it marks a node RUNNING, calls its function,
 * reads `next` and stores FIRED (release). After FIRED it never touches the node again, so
 * the node's owner may free it. Unwatch of a LISTED node unlinks it from the list. Unwatch
 * from another thread of a FIRING or RUNNING node waits until FIRED. Unwatch on the firing
 * thread itself (from inside some node's function, where waiting would deadlock) unlinks a
 * FIRING node from the private chain (only that thread ever touches the chain, and `next`
 * is read after the function returns, so the walk sees the unlink) and reports it as never
 * fired; for a RUNNING node (its own function, or one further up the stack) it returns at
 * once. So a hook that frees another node's owner (releases a child, removes a hook) can
 * never leave the walk holding a freed node. A watch that takes the mutex after the
 * winning cancel detached the list sees the cause and refuses, so a wake-up is never lost.
 *
 * Two kinds of node are handled by the walk itself rather than by their function (which
 * only marks them):
 * - A child's pnode: the walk cancels the child with the same cause. A heap child whose
 *   last reference is being dropped concurrently is left alone (its releaser waits for
 *   FIRED); otherwise the walk holds a reference across the cancel and drops it after
 *   FIRED, so a hook of the child releasing the child's last reference cannot free the node
 *   the walk still has to mark.
 * - A hook (crew_ctx_on_cancel): the walk calls the user's function, then either marks it
 *   FIRED (the user frees it in crew_ctx_hook_remove) or frees it itself when it owns it: a
 *   fire-and-forget hook (out == NULL), or a hook removed from inside its own running
 *   function, which sets `self_owned` there (only the firing thread touches it then).
 *
 * Lifetime. A heap ctx is reference counted. A child holds one on its parent; a hook with a
 * handle holds one on its ctx (so crew_ctx_hook_remove can always lock it); a waiter must
 * hold one for as long as it watches. The last release disarms the timer (waiting if it is
 * firing), unwatches the pnode (waiting if the parent is firing it), frees the
 * fire-and-forget hooks still listed, and then releases the parent, iteratively. An
 * embedded ctx (crew__ctx_init_child) lives in its owner's memory, ignores retain/release,
 * holds no reference on its parent, and is torn down by crew__ctx_fini_child the same way.
 * Background is a static ctx that is never done and registers nothing.
 *
 * Deadlines. A ctx's effective deadline is the earlier of its own and its parent's. A
 * crew__timer on the shared timer thread (timer.c) is armed only when its own deadline is
 * earlier than the parent's, because otherwise the parent's cancel arrives first anyway;
 * a deadline already past gives a ctx that is done at birth, with no timer.
 *
 * Locks: each ctx's mutex is a leaf: no function is ever called with it held, nor any other
 * lock taken under it (the parent's and the child's mutexes are never held together). The
 * cancel path may take the timer's mutex (disarming) with no ctx mutex held. Functions of
 * nodes run with no lock of this file held and may cancel, watch, release and remove.
 * Propagation to descendants recurses once per tree level.
 */
#include "internal.h"

#include <sched.h>
#include <stdalign.h>
#include <string.h>

enum { KIND_BACKGROUND, KIND_HEAP, KIND_EMBEDDED };

struct crew_ctx {
    _Atomic int cause;       /* 0 while live; the cause once done. Written once, by CAS */
    uint8_t kind;            /* KIND_*; immutable after init */
    bool has_timer;          /* `timer` was armed at init; immutable after init */
    _Atomic long refs;       /* references (KIND_HEAP only); 0 means being freed */
    int64_t deadline;        /* effective deadline or CREW_FOREVER; immutable after init */
    crew_ctx *parent;        /* background at the root; immutable after init */
    pthread_mutex_t mu;      /* protects `watchers` and LISTED/FIRING transitions */
    crew__ctx_node watchers; /* sentinel of the circular watcher list; under mu */
    crew__ctx_node pnode;    /* this ctx's node on its parent's list; parent's mu */
    crew__timer timer;       /* the deadline timer, when has_timer; the timer's mutex */
};

/* Memory for an embedded ctx needs no more alignment than malloc gives. */
_Static_assert(alignof(struct crew_ctx) <= 16, "crew__ctx_sizeof memory alignment");

struct crew_ctx_hook {
    crew__ctx_node node; /* on ctx's list; its fn is the hook_fire marker */
    crew_ctx *ctx;       /* the ctx it watches; immutable */
    crew_cancel_fn fn;   /* the user's function and argument; immutable */
    void *arg;
    bool holds_ref;  /* holds a reference on ctx (a handle on a heap ctx); immutable once
                      * registered */
    bool self_owned; /* the walk frees it after fn: set at creation (out == NULL) or by a
                      * remove from inside its running fn (firing thread only) */
};

/* A node state private to this file, after the shared CREW__NODE_* ones: FIRING means
 * detached and pending, RUNNING that the walk has started on it. Written by the firing
 * thread only; other threads treat it as FIRING. */
enum { NODE_RUNNING = CREW__NODE_FIRED + 1 };

static crew_ctx background = {
    .kind = KIND_BACKGROUND,
    .deadline = CREW_FOREVER,
    .parent = NULL,
};

static bool is_background(const crew_ctx *c)
{
    return c == NULL || c->kind == KIND_BACKGROUND;
}

static int err_of(int cause)
{
    if (cause == 0)
        return 0;
    return cause == CREW_ETIMEDOUT ? CREW_ETIMEDOUT : CREW_ECANCELED;
}

static int load_cause(const crew_ctx *c)
{
    /* The object is never const; the cast only suits atomic_load's prototype. */
    return atomic_load_explicit((_Atomic int *)&c->cause, memory_order_acquire);
}

static int64_t earliest(int64_t a, int64_t b)
{
    if (a == CREW_FOREVER)
        return b;
    if (b == CREW_FOREVER)
        return a;
    return a < b ? a : b;
}

/* ---- the watcher list (under the ctx's mutex) ----------------------------------------- */

static void list_init(crew__ctx_node *head)
{
    head->next = head->prev = head;
}

static void list_append(crew__ctx_node *head, crew__ctx_node *n)
{
    n->prev = head->prev;
    n->next = head;
    head->prev->next = n;
    head->prev = n;
}

static void list_unlink(crew__ctx_node *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->next = n->prev = NULL;
}

/* Detaches the whole list and returns it as a NULL-terminated chain (or NULL). */
static crew__ctx_node *list_take(crew__ctx_node *head)
{
    if (head->next == head)
        return NULL;
    crew__ctx_node *first = head->next;
    head->prev->next = NULL;
    first->prev = NULL;
    list_init(head);
    return first;
}

/* Markers: the walk recognises these node functions and does their work itself. */
static void propagate(void *arg, int err)
{
    (void)arg;
    (void)err;
    crew__assert_fail("propagate is a marker", __FILE__, __LINE__);
}

static void hook_fire(void *arg, int err)
{
    (void)arg;
    (void)err;
    crew__assert_fail("hook_fire is a marker", __FILE__, __LINE__);
}

/* Registers n on c (not background) unless c is done. Returns 0, or c's cause (then n is
 * IDLE and not registered). */
static int watch(crew_ctx *c, crew__ctx_node *n, void (*fn)(void *, int), void *arg)
{
    int s = atomic_load_explicit(&n->state, memory_order_relaxed);
    crew_assert(s != CREW__NODE_LISTED && s != CREW__NODE_FIRING);
    n->fn = fn;
    n->arg = arg;
    crew__check(pthread_mutex_lock(&c->mu));
    int cause = atomic_load_explicit(&c->cause, memory_order_relaxed);
    if (cause == 0) {
        list_append(&c->watchers, n);
        atomic_store_explicit(&n->state, CREW__NODE_LISTED, memory_order_relaxed);
    } else {
        atomic_store_explicit(&n->state, CREW__NODE_IDLE, memory_order_relaxed);
    }
    crew__check(pthread_mutex_unlock(&c->mu));
    return cause;
}

/* Waits until the walk has stored FIRED in n. */
static void wait_fired(crew__ctx_node *n)
{
    for (unsigned i = 0; atomic_load_explicit(&n->state, memory_order_acquire) != CREW__NODE_FIRED;
         i++) {
        if (i < 128)
            crew__cpu_relax();
        else
            sched_yield();
    }
}

/* ---- references ----------------------------------------------------------------------- */

/* Takes a reference unless the count already dropped to 0 (the ctx is being freed). */
static bool try_retain(crew_ctx *c)
{
    long r = atomic_load_explicit(&c->refs, memory_order_relaxed);
    do {
        if (r <= 0)
            return false;
    } while (!atomic_compare_exchange_weak_explicit(&c->refs, &r, r + 1, memory_order_acquire,
                                                    memory_order_relaxed));
    return true;
}

static void hook_free(struct crew_ctx_hook *h)
{
    if (h->holds_ref)
        crew_ctx_release(h->ctx);
    crew__free(h);
}

/* ---- cancel --------------------------------------------------------------------------- */

static void cancel_with(crew_ctx *c, int cause);

/* Runs one node of a detached chain with the given cause, then marks it FIRED or frees
 * it, and returns the node after it. Touches nothing of the node afterwards. `next` is read
 * only after the function has returned: it may have unlinked pending nodes (unwatch). */
static crew__ctx_node *fire(crew__ctx_node *n, int cause, int err)
{
    crew__ctx_node *next;
    atomic_store_explicit(&n->state, NODE_RUNNING, memory_order_relaxed);
    if (n->fn == propagate) {
        crew_ctx *child = n->arg;
        if (child->kind == KIND_EMBEDDED) {
            /* Its owner's fini waits for FIRED before it reuses the memory. */
            cancel_with(child, cause);
            next = n->next;
            atomic_store_explicit(&n->state, CREW__NODE_FIRED, memory_order_release);
        } else if (try_retain(child)) {
            cancel_with(child, cause);
            next = n->next;
            atomic_store_explicit(&n->state, CREW__NODE_FIRED, memory_order_release);
            crew_ctx_release(child);
        } else {
            /* Being freed: its last release waits for FIRED, then frees its hooks unrun. */
            next = n->next;
            atomic_store_explicit(&n->state, CREW__NODE_FIRED, memory_order_release);
        }
    } else if (n->fn == hook_fire) {
        struct crew_ctx_hook *h = (struct crew_ctx_hook *)n;
        h->fn(h->arg, err);
        next = n->next;
        if (h->self_owned)
            hook_free(h);
        else
            atomic_store_explicit(&n->state, CREW__NODE_FIRED, memory_order_release);
    } else {
        n->fn(n->arg, err);
        next = n->next;
        atomic_store_explicit(&n->state, CREW__NODE_FIRED, memory_order_release);
    }
    return next;
}

/*
 * Cancels c (not background) with a nonzero cause unless it is done. c must stay allocated
 * until the list is detached (the caller holds a reference, or this is c's own timer, or
 * a propagation that holds one); after that only the detached nodes are touched, so a
 * function may drop c's last reference.
 */
static void cancel_with(crew_ctx *c, int cause)
{
    int expected = 0;
    if (!atomic_compare_exchange_strong_explicit(&c->cause, &expected, cause, memory_order_acq_rel,
                                                 memory_order_acquire))
        return;
    /* Done: the deadline no longer matters, and disarming lets the timer thread go idle.
     * If the timer is firing right now its cancel loses the CAS at once, so this does not
     * wait long; on the timer thread itself it does not wait at all. */
    if (c->has_timer)
        (void)crew__timer_del(&c->timer);

    pthread_t self = pthread_self();
    crew__check(pthread_mutex_lock(&c->mu));
    crew__ctx_node *first = list_take(&c->watchers);
    for (crew__ctx_node *n = first; n; n = n->next) {
        n->firing_tid = self;
        atomic_store_explicit(&n->state, CREW__NODE_FIRING, memory_order_relaxed);
    }
    crew__check(pthread_mutex_unlock(&c->mu));

    int err = err_of(cause);
    for (crew__ctx_node *n = first; n;)
        n = fire(n, cause, err);
}

static void timer_fire(void *arg)
{
    cancel_with(arg, CREW_ETIMEDOUT);
}

/* ---- creation and teardown ------------------------------------------------------------ */

/*
 * Initialises c as a child of parent (not NULL) with its own deadline. Returns 0 or the
 * timer's error (then c holds nothing and needs no teardown). For a heap ctx the caller
 * has taken the reference on parent.
 */
static int child_init(crew_ctx *c, crew_ctx *parent, int64_t deadline, uint8_t kind)
{
    atomic_store_explicit(&c->cause, 0, memory_order_relaxed);
    atomic_store_explicit(&c->refs, 1, memory_order_relaxed);
    c->kind = kind;
    c->has_timer = false;
    c->parent = parent;
    c->deadline = earliest(deadline, parent->deadline);
    crew__check(pthread_mutex_init(&c->mu, NULL));
    list_init(&c->watchers);
    memset(&c->pnode, 0, sizeof c->pnode);
    atomic_store_explicit(&c->pnode.state, CREW__NODE_IDLE, memory_order_relaxed);
    crew__timer_init(&c->timer, timer_fire, c);

    /* Born done: under a done parent, or with an effective deadline already past. */
    int cause = load_cause(parent);
    if (cause == 0 && c->deadline != CREW_FOREVER && c->deadline <= crew_now())
        cause = CREW_ETIMEDOUT;
    if (cause) {
        atomic_store_explicit(&c->cause, cause, memory_order_relaxed);
        return 0;
    }

    /* Arm before registering on the parent: until then nobody else sees c, so has_timer
     * can be set without a race, and a failure needs no unwatch. The timer may fire (and
     * cancel c) before we register; that is harmless. */
    if (deadline != CREW_FOREVER &&
        (parent->deadline == CREW_FOREVER || deadline < parent->deadline)) {
        c->has_timer = true;
        int rc = crew__timer_add(&c->timer, deadline);
        if (rc) {
            c->has_timer = false;
            crew__check(pthread_mutex_destroy(&c->mu));
            return rc;
        }
    }
    if (!is_background(parent) && (cause = watch(parent, &c->pnode, propagate, c)))
        cancel_with(c, cause); /* the parent was cancelled meanwhile */
    return 0;
}

/*
 * Tears down c once nobody else may cancel it through a reference: disarms the timer and
 * leaves the parent (each waiting for a firing in progress), then frees the fire-and-
 * forget hooks still listed. A hook with a handle still listed (only possible on an
 * embedded ctx, whose hooks hold no reference) is orphaned: its remove then only frees it.
 * Nothing else may be listed: children and waiters hold references.
 */
static void teardown(crew_ctx *c)
{
    if (c->has_timer)
        (void)crew__timer_del(&c->timer);
    (void)crew__ctx_unwatch(c->parent, &c->pnode);

    crew__check(pthread_mutex_lock(&c->mu));
    crew__ctx_node *n = list_take(&c->watchers), *next;
    crew__check(pthread_mutex_unlock(&c->mu));
    for (; n; n = next) {
        next = n->next;
        crew_assert(n->fn == hook_fire); /* a child or waiter outlived its ctx */
        struct crew_ctx_hook *h = (struct crew_ctx_hook *)n;
        if (h->self_owned) {
            hook_free(h);
        } else {
            crew_assert(!h->holds_ref);
            n->next = n->prev = NULL;
            atomic_store_explicit(&n->state, CREW__NODE_IDLE, memory_order_release);
        }
    }
    crew__check(pthread_mutex_destroy(&c->mu));
}

crew_ctx *crew_ctx_background(void)
{
    return &background;
}

int crew_ctx_with_deadline(crew_ctx *parent, int64_t deadline, crew_ctx **out)
{
    if (!out)
        return CREW_EINVAL;
    if (!parent)
        parent = &background;
    crew_ctx *c = crew__malloc(sizeof *c);
    if (!c)
        return CREW_ENOMEM;
    crew_ctx_retain(parent);
    int rc = child_init(c, parent, deadline, KIND_HEAP);
    if (rc) {
        crew_ctx_release(parent);
        crew__free(c);
        return rc;
    }
    *out = c;
    return 0;
}

int crew_ctx_with_cancel(crew_ctx *parent, crew_ctx **out)
{
    return crew_ctx_with_deadline(parent, CREW_FOREVER, out);
}

int crew_ctx_with_timeout(crew_ctx *parent, int64_t timeout, crew_ctx **out)
{
    return crew_ctx_with_deadline(parent, crew_deadline_in(timeout), out);
}

crew_ctx *crew_ctx_retain(crew_ctx *c)
{
    if (c && c->kind == KIND_HEAP) {
        long old = atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
        crew_assert(old > 0);
    }
    return c;
}

void crew_ctx_release(crew_ctx *c)
{
    /* Iterative, so that releasing the last leaf of a long chain does not recurse. */
    while (c && c->kind == KIND_HEAP) {
        long old = atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel);
        crew_assert(old > 0);
        if (old != 1)
            return;
        crew_ctx *parent = c->parent;
        teardown(c);
        crew__free(c);
        c = parent;
    }
}

/* ---- the embedded per-job ctx --------------------------------------------------------- */

/* The memory an embedded ctx needs: crew__ctx_sizeof() bytes, aligned to at least 16
 * bytes (what malloc gives; a cache line, as the pool uses, is better still). */
size_t crew__ctx_sizeof(void)
{
    return sizeof(crew_ctx);
}

/* Allocates nothing once the timer thread runs and its heap has room. On failure
 * (CREW_EAGAIN or CREW_ENOMEM from the timer) c is left uninitialised: do not fini it. */
int crew__ctx_init_child(crew_ctx *c, crew_ctx *parent, int64_t deadline)
{
    return child_init(c, parent ? parent : &background, deadline, KIND_EMBEDDED);
}

/* Waits for a cancel of c by its parent or its timer that is in progress; afterwards the
 * memory may be re-initialised or freed. Children of c and waiters on c must be gone. */
void crew__ctx_fini_child(crew_ctx *c)
{
    crew_assert(c->kind == KIND_EMBEDDED);
    teardown(c);
}

/* ---- state ---------------------------------------------------------------------------- */

void crew_ctx_cancel(crew_ctx *c, int cause)
{
    if (is_background(c))
        return;
    cancel_with(c, cause ? cause : CREW_ECANCELED);
}

bool crew_ctx_done(const crew_ctx *c)
{
    return c && load_cause(c) != 0;
}

int crew_ctx_err(const crew_ctx *c)
{
    return c ? err_of(load_cause(c)) : 0;
}

int crew_ctx_cause(const crew_ctx *c)
{
    return c ? load_cause(c) : 0;
}

int64_t crew_ctx_deadline(const crew_ctx *c)
{
    return c ? c->deadline : CREW_FOREVER;
}

/* ---- watching ------------------------------------------------------------------------- */

int crew__ctx_watch(crew_ctx *c, crew__ctx_node *n, void (*fn)(void *arg, int err), void *arg)
{
    if (is_background(c)) {
        atomic_store_explicit(&n->state, CREW__NODE_IDLE, memory_order_relaxed);
        return 0;
    }
    return err_of(watch(c, n, fn, arg));
}

bool crew__ctx_unwatch(crew_ctx *c, crew__ctx_node *n)
{
    int s = atomic_load_explicit(&n->state, memory_order_acquire);
    if (s == CREW__NODE_IDLE)
        return true; /* never registered, refused, or already unwatched */
    if (s == CREW__NODE_FIRED)
        return false;
    crew_assert(!is_background(c));

    bool removed = false, wait = false;
    crew__check(pthread_mutex_lock(&c->mu));
    /* Acquire: FIRED is stored without the mutex, and the caller may free n after it. */
    s = atomic_load_explicit(&n->state, memory_order_acquire);
    if (s == CREW__NODE_LISTED) {
        list_unlink(n);
        removed = true;
    } else if (s != CREW__NODE_FIRED && !pthread_equal(n->firing_tid, pthread_self())) {
        wait = true; /* another thread's walk has it: wait until it is done with it */
    } else if (s == CREW__NODE_FIRING) {
        /* Pending in a walk of this very thread, further up the stack: take it out of that
         * private chain. It always has a predecessor (the walk's current node or another
         * pending one), since the walk starts on the first node before any function. */
        crew_assert(n->prev != NULL);
        n->prev->next = n->next;
        if (n->next)
            n->next->prev = n->prev;
        n->next = n->prev = NULL;
        removed = true;
    }
    /* Else RUNNING on this thread (we are inside its function, or one it led to): it has
     * fired as far as the caller can tell, and waiting would never end. */
    if (removed)
        atomic_store_explicit(&n->state, CREW__NODE_IDLE, memory_order_relaxed);
    crew__check(pthread_mutex_unlock(&c->mu));
    if (wait)
        wait_fired(n);
    return removed;
}

static void wake_event(void *arg, int err)
{
    (void)err;
    crew__event_set(arg);
}

int crew_ctx_wait(crew_ctx *c, int64_t deadline)
{
    if (crew_ctx_done(c))
        return 0;
    if (deadline != CREW_FOREVER && deadline <= crew_now())
        return CREW_ETIMEDOUT;
    crew__event ev;
    crew__event_init(&ev);
    if (is_background(c))
        return crew__event_wait(&ev, deadline); /* never set: only the deadline ends it */

    crew__ctx_node n;
    memset(&n, 0, sizeof n);
    if (crew__ctx_watch(c, &n, wake_event, &ev))
        return 0;
    (void)crew__event_wait(&ev, deadline);
    if (!crew__ctx_unwatch(c, &n))
        return 0; /* fired: c is done */
    /* Removed unfired: the deadline passed, unless a cancel is between its CAS and its
     * detaching the list. */
    return crew_ctx_done(c) ? 0 : CREW_ETIMEDOUT;
}

/* ---- hooks ---------------------------------------------------------------------------- */

int crew_ctx_on_cancel(crew_ctx *c, crew_cancel_fn fn, void *arg, crew_ctx_hook **out)
{
    if (!fn)
        return CREW_EINVAL;
    if (!out) {
        /* A fire-and-forget hook on a ctx that will never fire it, or has already: no
         * registration is needed. */
        if (is_background(c))
            return 0;
        int cause = load_cause(c);
        if (cause) {
            fn(arg, err_of(cause));
            return 0;
        }
    }
    struct crew_ctx_hook *h = crew__malloc(sizeof *h);
    if (!h)
        return CREW_ENOMEM;
    memset(h, 0, sizeof *h);
    atomic_store_explicit(&h->node.state, CREW__NODE_IDLE, memory_order_relaxed);
    h->ctx = c;
    h->fn = fn;
    h->arg = arg;
    h->self_owned = out == NULL;
    if (is_background(c)) {
        *out = h; /* never fires; remove frees it and returns true */
        return 0;
    }
    /* Taken before the hook is visible: the walk may free it at once. */
    if (out && c->kind == KIND_HEAP) {
        crew_ctx_retain(c);
        h->holds_ref = true;
    }
    int cause = watch(c, &h->node, hook_fire, h);
    if (cause == 0) {
        if (out)
            *out = h; /* from here h may already be firing in another thread */
        return 0;
    }
    /* Already done: run fn here. A handle comes back FIRED, holding nothing. */
    fn(arg, err_of(cause));
    if (!out) {
        crew__free(h);
        return 0;
    }
    if (h->holds_ref) {
        h->holds_ref = false;
        crew_ctx_release(c);
    }
    atomic_store_explicit(&h->node.state, CREW__NODE_FIRED, memory_order_release);
    *out = h;
    return 0;
}

bool crew_ctx_hook_remove(crew_ctx_hook *h)
{
    if (!h)
        return false;
    if (crew__ctx_unwatch(h->ctx, &h->node)) {
        hook_free(h); /* listed, pending, or never registered: fn will not run */
        return true;
    }
    if (atomic_load_explicit(&h->node.state, memory_order_acquire) == CREW__NODE_FIRED) {
        hook_free(h);
        return false;
    }
    /* RUNNING: removed from inside its own fn (or a function that fn led to), on the
     * firing thread. The walk frees it once fn returns. */
    h->self_owned = true;
    return false;
}
