/*
 * timer.c - the one timer thread shared by every deadline in the process.
 *
 * A ctx with a deadline needs something to cancel it when the deadline comes, and a thread
 * per ctx would be absurd. So every armed crew__timer sits in one binary min-heap ordered
 * by its `when`, and one thread sleeps on a CLOCK_MONOTONIC condvar until the earliest is
 * due, pops it and calls its fn. Each timer keeps its heap index, so disarming one is
 * O(log n) and needs no search.
 *
 * Threads: any thread adds and deletes timers; only the timer thread fires them. The timer
 * thread is started lazily by the first add and exits after it has found the heap empty for
 * LINGER ns (a short grace period, so a pool arming and disarming a timer per job does not
 * start a thread per job; the leak checks of the tests wait that long). `running` says,
 * under the mutex, whether a thread is committed to look at the heap again: the thread
 * clears it under the mutex in the same critical section in which it decides to exit, and
 * an add that finds it clear starts a new thread. So an add never lands in a heap that no
 * thread will look at. Threads are detached; an exiting one touches nothing shared after
 * its last unlock, so an old thread on its way out and a new one never conflict.
 *
 * Firing: fn runs outside the mutex, one timer at a time, and `firing` names the timer
 * whose fn is running. crew__timer_del of that timer waits until fn has returned (as
 * Linux's del_timer_sync), so the owner may free the timer afterwards; called from the
 * timer thread itself (from inside some fn) it does not wait, which would deadlock. The
 * timer thread never touches a timer after its fn has returned: fn may free it.
 *
 * Lock order: the timer mutex is a leaf. It is never held while a fn runs.
 *
 * Memory: the heap array grows by doubling through crew__malloc (so tests can fail it) and
 * is kept, empty, while no timer is armed, so restarting the thread does not allocate.
 *
 * Fork: a child process has no timer thread. An atfork handler resets the state so that
 * the child's first add starts one (timers armed before the fork fire after that add).
 */
#include "internal.h"

#include <signal.h>
#include <string.h>
#include <time.h>

/* How long an idle timer thread waits for new work before it exits. */
#define LINGER (50 * CREW_MSEC)

/* Initial capacity of the heap array. */
#define HEAP_MIN 16

static struct {
    pthread_mutex_t mu;      /* protects every field below */
    pthread_cond_t cv;       /* the timer thread sleeps here (CLOCK_MONOTONIC); under mu */
    pthread_cond_t fired_cv; /* del waits here for a firing fn to return; under mu */
    crew__timer **heap;      /* min-heap on `when`; under mu */
    size_t len, cap;         /* armed timers, slots allocated; under mu */
    bool running;            /* a timer thread will look at the heap again; under mu */
    crew__timer *firing;     /* the timer whose fn is running now, or NULL; under mu */
    uint64_t fired_gen;      /* bumped each time a fn returns; under mu */
    unsigned del_waiters;    /* threads waiting in del for a firing fn; under mu */
} T = {
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .fired_cv = PTHREAD_COND_INITIALIZER,
};

/* cv needs a condattr (the clock), hence a one-time initialisation. */
static pthread_once_t T_once = PTHREAD_ONCE_INIT;

/* True on the timer thread: del must not wait for the fn it is running itself. */
static _Thread_local bool on_timer_thread;

static void init_cv(pthread_cond_t *cv)
{
    pthread_condattr_t attr;
    crew__check(pthread_condattr_init(&attr));
    crew__check(pthread_condattr_setclock(&attr, CLOCK_MONOTONIC));
    crew__check(pthread_cond_init(cv, &attr));
    crew__check(pthread_condattr_destroy(&attr));
}

/* Fork: hold the mutex across fork() so the child's copy is consistent, then give the child
 * a state with no thread. */
static void atfork_prepare(void)
{
    crew__check(pthread_mutex_lock(&T.mu));
}

static void atfork_parent(void)
{
    crew__check(pthread_mutex_unlock(&T.mu));
}

static void atfork_child(void)
{
    crew__check(pthread_mutex_init(&T.mu, NULL));
    init_cv(&T.cv);
    crew__check(pthread_cond_init(&T.fired_cv, NULL));
    T.running = false;
    T.firing = NULL;
    T.del_waiters = 0;
}

static void init_once(void)
{
    init_cv(&T.cv);
    crew__check(pthread_atfork(atfork_prepare, atfork_parent, atfork_child));
}

/* ---- the heap (all under T.mu) -------------------------------------------------------- */

static void heap_set(size_t i, crew__timer *t)
{
    T.heap[i] = t;
    t->heap_idx = i;
}

static void sift_up(size_t i)
{
    crew__timer *t = T.heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (T.heap[parent]->when <= t->when)
            break;
        heap_set(i, T.heap[parent]);
        i = parent;
    }
    heap_set(i, t);
}

static void sift_down(size_t i)
{
    crew__timer *t = T.heap[i];
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= T.len)
            break;
        if (child + 1 < T.len && T.heap[child + 1]->when < T.heap[child]->when)
            child++;
        if (t->when <= T.heap[child]->when)
            break;
        heap_set(i, T.heap[child]);
        i = child;
    }
    heap_set(i, t);
}

/* Removes the timer at index i and marks it unarmed. */
static void heap_remove(size_t i)
{
    crew_assert(i < T.len);
    crew__timer *t = T.heap[i];
    crew__timer *last = T.heap[--T.len];
    if (last != t) {
        heap_set(i, last);
        sift_down(i);
        sift_up(last->heap_idx);
    }
    t->heap_idx = SIZE_MAX;
}

/* Makes room for one more timer. Returns false when the allocation fails. */
static bool heap_reserve(void)
{
    if (T.len < T.cap)
        return true;
    size_t cap = T.cap ? 2 * T.cap : HEAP_MIN;
    crew__timer **heap = crew__malloc(cap * sizeof *heap);
    if (!heap)
        return false;
    if (T.len)
        memcpy(heap, T.heap, T.len * sizeof *heap);
    crew__free(T.heap);
    T.heap = heap;
    T.cap = cap;
    return true;
}

/* ---- the timer thread ----------------------------------------------------------------- */

/* Waits on T.cv (T.mu held) until woken or until the absolute CLOCK_MONOTONIC time when. */
static void wait_until(int64_t when)
{
    struct timespec ts = {.tv_sec = when / CREW_SEC, .tv_nsec = when % CREW_SEC};
    int rc = pthread_cond_timedwait(&T.cv, &T.mu, &ts);
    crew_assert(rc == 0 || rc == ETIMEDOUT);
}

static void *timer_main(void *unused)
{
    (void)unused;
    /* A library thread must not take the application's process-directed signals. */
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    on_timer_thread = true;

    crew__check(pthread_mutex_lock(&T.mu));
    int64_t idle_until = 0; /* while the heap is empty: when this thread gives up */
    for (;;) {
        if (T.len == 0) {
            int64_t now = crew_now();
            if (idle_until == 0)
                idle_until = now + LINGER;
            else if (now >= idle_until)
                break;
            wait_until(idle_until);
            continue;
        }
        idle_until = 0;
        crew__timer *t = T.heap[0];
        if (t->when > crew_now()) {
            wait_until(t->when);
            continue;
        }
        heap_remove(0);
        void (*fn)(void *) = t->fn;
        void *arg = t->arg;
        T.firing = t;
        crew__check(pthread_mutex_unlock(&T.mu));

        fn(arg); /* may free t: t is not touched again */

        crew__check(pthread_mutex_lock(&T.mu));
        T.firing = NULL;
        T.fired_gen++;
        if (T.del_waiters)
            crew__check(pthread_cond_broadcast(&T.fired_cv));
    }
    /* Decided under the mutex: an add from now on sees !running and starts a thread. */
    T.running = false;
    crew__check(pthread_mutex_unlock(&T.mu));
    return NULL;
}

/* ---- the interface -------------------------------------------------------------------- */

void crew__timer_init(crew__timer *t, void (*fn)(void *arg), void *arg)
{
    t->when = 0;
    t->fn = fn;
    t->arg = arg;
    t->heap_idx = SIZE_MAX;
}

int crew__timer_add(crew__timer *t, int64_t when)
{
    crew_assert(when >= 0); /* an absolute time, never CREW_FOREVER */
    crew__check(pthread_once(&T_once, init_once));
    int rc = 0;
    crew__check(pthread_mutex_lock(&T.mu));
    if (t->heap_idx != SIZE_MAX) {
        /* Re-arming an armed timer moves it. */
        crew_assert(t->heap_idx < T.len && T.heap[t->heap_idx] == t);
        t->when = when;
        sift_down(t->heap_idx);
        sift_up(t->heap_idx);
    } else {
        if (!heap_reserve()) {
            rc = CREW_ENOMEM;
            goto out_unlock;
        }
        t->when = when;
        T.heap[T.len] = t;
        t->heap_idx = T.len++;
        sift_up(t->heap_idx);
    }
    if (!T.running) {
        /* The heap was empty and no thread watches it: start one. */
        pthread_t tid;
        if ((rc = crew__thread_create(&tid, timer_main, NULL))) {
            heap_remove(t->heap_idx);
            goto out_unlock;
        }
        crew__check(pthread_detach(tid));
        T.running = true;
    } else if (t->heap_idx == 0) {
        /* A new earliest deadline: the thread sleeps until a later one. */
        crew__check(pthread_cond_signal(&T.cv));
    }
out_unlock:
    crew__check(pthread_mutex_unlock(&T.mu));
    return rc;
}

bool crew__timer_del(crew__timer *t)
{
    bool disarmed = false;
    crew__check(pthread_mutex_lock(&T.mu));
    if (t->heap_idx != SIZE_MAX) {
        crew_assert(t->heap_idx < T.len && T.heap[t->heap_idx] == t);
        /* The thread sleeps until the earliest deadline: if that one goes, wake it, to
         * sleep until the next one or, with the heap empty, to start its LINGER. */
        if (t->heap_idx == 0)
            crew__check(pthread_cond_signal(&T.cv));
        heap_remove(t->heap_idx);
        disarmed = true;
    }
    if (T.firing == t && !on_timer_thread) {
        /* Wait for this firing only: if fn re-arms t and it fires again, that is a later
         * firing which the caller has just disarmed or will race with anyway. */
        uint64_t gen = T.fired_gen;
        T.del_waiters++;
        while (T.firing == t && T.fired_gen == gen)
            crew__check(pthread_cond_wait(&T.fired_cv, &T.mu));
        T.del_waiters--;
    }
    crew__check(pthread_mutex_unlock(&T.mu));
    return disarmed;
}
