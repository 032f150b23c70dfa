/*
 * rate.c - a token-bucket rate limiter, the C answer to golang.org/x/time/rate.
 *
 * The bucket holds up to `burst` tokens and refills at `rate` tokens per second; it starts
 * full. An event takes n tokens: allow takes them only if they are there now; reserve takes
 * them now even if that leaves the bucket in debt, and says how long to wait before acting;
 * wait reserves and sleeps until the tokens are due. Debt is served in the order it was
 * taken, so waiters wake in FIFO order, one interval apart.
 *
 * Virtual time. Rather than counting tokens, the limiter keeps a virtual clock V that runs
 * at `rate` tokens per second of real time (v_base at the instant t_base), and the level
 * `vzero` at which the bucket is empty: the tokens now are V - vzero (at most burst, and
 * negative while reservations are outstanding). Taking n tokens raises vzero by n; the
 * tokens are due when V reaches the new vzero, which is the taker's `position`. A position
 * is expressed in tokens, not in nanoseconds, so it stays valid when the rate changes:
 * crew_rate_set only changes the slope of V from now on, and each sleeping waiter re-plans
 * its wake-up from its position at the new slope. A waiter that gives up returns the tokens
 * that nobody reserved after it (as x/time/rate's Reservation.Cancel does): its n, less the
 * part of the debt taken since, so no later reservation is ever moved earlier.
 *
 * Precision. V, vzero and positions are doubles. While nobody sleeps in wait (so nobody
 * holds a position), every call re-bases them so that V = 0, which keeps their magnitudes
 * near the burst and the outstanding debt, and the rounding far below a nanosecond. A
 * waiter is due when V has reached its position, or when the instant it planned for has
 * passed and no re-plan happened since: so rounding can never keep it asleep.
 *
 * Threads. Every call may come from any thread. A mutex guards the state for a few dozen
 * instructions per call and is never held while sleeping. Sleepers park on an eventcount
 * (park.c) with their planned instant as deadline; crew_rate_set and the cancel of a
 * sleeper's ctx notify all of them, and each re-checks under the mutex. With the rate set to
 * CREW_RATE_INF, calls read one atomic flag and take no lock.
 *
 * Lock order: r->mu is a leaf; the ctx is watched and unwatched outside it. Instants passed
 * to the _n forms that are earlier than one already seen count as that one, so V never
 * runs backwards.
 */
#include "internal.h"

#include <math.h>
#include <string.h>

/* Tokens closer to a whole count than this count as there: rounding, not a shortfall. */
#define EPSILON 1e-9

/* The largest burst whose counts a double holds exactly. */
#define BURST_MAX (INT64_C(1) << 53)

/* Delays at or beyond this many ns are "never" (rate 0, or a rate so small that the wait
 * would overflow the clock). */
#define NEVER_NS 4.0e18

struct crew_rate {
    pthread_mutex_t mu;      /* guards every field below not marked otherwise */
    _Atomic bool unlimited;  /* the rate is CREW_RATE_INF: written under mu, read lock-free */
    double per_ns;           /* tokens per nanosecond (0: no refill) */
    int64_t burst;           /* the bucket's size, >= 1 */
    int64_t t_base;          /* the latest instant seen */
    double v_base;           /* the virtual clock V at t_base, in tokens */
    double vzero;            /* V at which the bucket is empty: tokens = v_base - vzero */
    uint64_t plan;           /* bumped by each crew_rate_set: sleepers re-plan */
    _Atomic size_t sleepers; /* threads in wait holding a position: written under mu */
    crew__ec ec;             /* where sleepers park; notified on set and on their ctx's cancel */
};

/* ---- the bucket (callers hold r->mu) ------------------------------------------------- */

static size_t sleepers(const crew_rate *r)
{
    return atomic_load_explicit(&r->sleepers, memory_order_relaxed);
}

/* Moves the virtual clock to now, caps the tokens at burst, and, when no position is held,
 * re-bases V to 0. */
static void advance(crew_rate *r, int64_t now)
{
    if (now > r->t_base) {
        r->v_base += (double)(now - r->t_base) * r->per_ns;
        r->t_base = now;
    }
    if (r->v_base - r->vzero > (double)r->burst)
        r->vzero = r->v_base - (double)r->burst;
    if (sleepers(r) == 0) {
        r->vzero -= r->v_base;
        r->v_base = 0;
    }
}

/* The ns from t_base until V reaches position p: 0 if it already has, INT64_MAX if it
 * never will at the current rate. */
static int64_t ns_until(const crew_rate *r, double p)
{
    double need = p - r->v_base;
    if (need <= EPSILON)
        return 0;
    if (r->per_ns <= 0)
        return INT64_MAX;
    double ns = need / r->per_ns;
    if (ns >= NEVER_NS)
        return INT64_MAX;
    int64_t whole = (int64_t)ns; /* rounded up by hand: libcrew does not need libm */
    return (double)whole < ns ? whole + 1 : whole;
}

/* The instant t_base + ns, or CREW_FOREVER for never. */
static int64_t instant_after(const crew_rate *r, int64_t ns)
{
    return ns == INT64_MAX || ns > INT64_MAX - r->t_base ? CREW_FOREVER : r->t_base + ns;
}

/* Gives back what a holder of position p, who took n tokens, can return: n less the tokens
 * taken after it; nothing once it is due. */
static void give_back(crew_rate *r, double p, int64_t n)
{
    if (r->v_base >= p)
        return;
    double back = (double)n - (r->vzero - p);
    if (back > 0)
        r->vzero -= back;
}

/* ---- waiting ------------------------------------------------------------------------- */

/* The ctx callback: wakes every sleeper, each of which checks its own ctx. */
static void wake_all(void *arg, int err)
{
    (void)err;
    crew_rate *r = arg;
    crew__ec_notify(&r->ec, INT32_MAX);
}

/*
 * The sleep of a wait that reserved n tokens at position p, due at `due` under plan `plan`,
 * allowed to last until `limit`. Called without r->mu, holding a sleeper's place; gives it
 * up before returning. Returns 0 once the tokens are due (or the limiter became unlimited),
 * else ctx's error or CREW_ETIMEDOUT, having given the tokens back.
 */
static int sleep_until_due(crew_rate *r, double p, int64_t n, int64_t due, uint64_t plan,
                           int64_t limit, crew_ctx *ctx)
{
    crew__ctx_node node;
    memset(&node, 0, sizeof node);
    int rc = ctx ? crew__ctx_watch(ctx, &node, wake_all, r) : 0;
    bool watched = ctx && rc == 0;
    for (;;) {
        /* Prepare before checking: a set or a cancel after this point wakes the wait. */
        uint32_t key = crew__ec_prepare(&r->ec);
        crew__check(pthread_mutex_lock(&r->mu));
        int64_t now = crew_now();
        advance(r, now);
        bool done = rc == 0 && atomic_load_explicit(&r->unlimited, memory_order_relaxed);
        if (rc == 0 && !done) {
            if (r->plan == plan && due != CREW_FOREVER && now >= due)
                done = true;
            else if (r->v_base + EPSILON >= p)
                done = true;
            else if (ctx && (rc = crew_ctx_err(ctx)) != 0)
                ;
            else if (r->plan != plan) {
                /* The rate changed: the same position, a new instant. */
                plan = r->plan;
                due = instant_after(r, ns_until(r, p));
            }
            if (!done && rc == 0 && limit != CREW_FOREVER && (due == CREW_FOREVER || due > limit))
                rc = CREW_ETIMEDOUT; /* it cannot be due in time any more */
        }
        if (rc != 0)
            give_back(r, p, n);
        if (done || rc != 0)
            atomic_store_explicit(&r->sleepers, sleepers(r) - 1, memory_order_relaxed);
        crew__check(pthread_mutex_unlock(&r->mu));
        if (done || rc != 0) {
            crew__ec_cancel(&r->ec);
            break;
        }
        (void)crew__ec_wait(&r->ec, key, due);
    }
    if (watched)
        (void)crew__ctx_unwatch(ctx, &node);
    return rc;
}

/* ---- public API ---------------------------------------------------------------------- */

static bool valid(double per_sec, int64_t burst)
{
    return per_sec >= 0 && burst >= 1 && burst <= BURST_MAX; /* also false for a NaN rate */
}

/* Sets the rate and the burst at the instant t_base (callers hold r->mu). */
static void configure(crew_rate *r, double per_sec, int64_t burst)
{
    bool was_unlimited = atomic_load_explicit(&r->unlimited, memory_order_relaxed);
    bool unlimited = isinf(per_sec);
    r->per_ns = unlimited ? 0 : per_sec / (double)CREW_SEC;
    r->burst = burst;
    if (was_unlimited && !unlimited)
        r->vzero = r->v_base - (double)burst; /* coming back from unlimited: a full bucket */
    if (r->v_base - r->vzero > (double)burst)
        r->vzero = r->v_base - (double)burst;
    atomic_store_explicit(&r->unlimited, unlimited, memory_order_relaxed);
}

int crew_rate_create(crew_rate **out, double per_sec, int64_t burst)
{
    if (!out || !valid(per_sec, burst))
        return CREW_EINVAL;
    crew_rate *r = crew__calloc(1, sizeof *r);
    if (!r)
        return CREW_ENOMEM;
    if (pthread_mutex_init(&r->mu, NULL) != 0) {
        crew__free(r);
        return CREW_ENOMEM;
    }
    r->t_base = crew_now();
    r->v_base = 0;
    r->vzero = -(double)burst; /* full */
    r->plan = 0;
    atomic_init(&r->unlimited, false);
    atomic_init(&r->sleepers, 0);
    crew__ec_init(&r->ec);
    configure(r, per_sec, burst);
    *out = r;
    return 0;
}

void crew_rate_destroy(crew_rate *r)
{
    if (!r)
        return;
    /* A thread still sleeping here would wake on freed memory: a caller's bug. */
    crew_assert(sleepers(r) == 0);
    crew__check(pthread_mutex_destroy(&r->mu));
    crew__free(r);
}

bool crew_rate_allow_n(crew_rate *r, int64_t n, int64_t now)
{
    crew_assert(r);
    if (n < 1)
        return false;
    if (atomic_load_explicit(&r->unlimited, memory_order_relaxed))
        return true;
    crew__check(pthread_mutex_lock(&r->mu));
    advance(r, now);
    bool ok = n <= r->burst && r->v_base - r->vzero + EPSILON >= (double)n;
    if (ok)
        r->vzero += (double)n;
    crew__check(pthread_mutex_unlock(&r->mu));
    return ok;
}

bool crew_rate_allow(crew_rate *r)
{
    return crew_rate_allow_n(r, 1, crew_now());
}

int64_t crew_rate_reserve_n(crew_rate *r, int64_t n, int64_t now)
{
    crew_assert(r);
    if (n < 1)
        return CREW_EINVAL;
    if (atomic_load_explicit(&r->unlimited, memory_order_relaxed))
        return 0;
    crew__check(pthread_mutex_lock(&r->mu));
    int64_t rc = CREW_EINVAL;
    if (n <= r->burst) {
        advance(r, now);
        double p = r->vzero + (double)n;
        int64_t ns = ns_until(r, p);
        rc = CREW_EAGAIN;
        if (ns != INT64_MAX) {
            r->vzero = p;
            /* From the caller's instant, which may lie before t_base. */
            rc = ns + (r->t_base - (now < r->t_base ? now : r->t_base));
        }
    }
    crew__check(pthread_mutex_unlock(&r->mu));
    return rc;
}

int64_t crew_rate_reserve(crew_rate *r)
{
    return crew_rate_reserve_n(r, 1, crew_now());
}

int crew_rate_wait_n(crew_rate *r, int64_t n, int64_t deadline, crew_ctx *ctx)
{
    crew_assert(r);
    if (n < 1)
        return CREW_EINVAL;
    if (ctx) {
        int err = crew_ctx_err(ctx);
        if (err)
            return err;
    }
    if (atomic_load_explicit(&r->unlimited, memory_order_relaxed))
        return 0;
    /* The wait must be over by the call's deadline and by ctx's, whichever is first. */
    int64_t limit = crew_ctx_deadline(ctx);
    if (limit == CREW_FOREVER || (deadline != CREW_FOREVER && deadline < limit))
        limit = deadline;

    crew__check(pthread_mutex_lock(&r->mu));
    if (n > r->burst) {
        crew__check(pthread_mutex_unlock(&r->mu));
        return CREW_EINVAL;
    }
    advance(r, crew_now());
    double p = r->vzero + (double)n;
    int64_t ns = ns_until(r, p);
    if (ns == 0) {
        r->vzero = p;
        crew__check(pthread_mutex_unlock(&r->mu));
        return 0;
    }
    int64_t due = instant_after(r, ns);
    if (limit != CREW_FOREVER && (due == CREW_FOREVER || due > limit)) {
        /* Not due in time: refuse at once, taking nothing. */
        bool passed = deadline != CREW_FOREVER && deadline <= r->t_base;
        crew__check(pthread_mutex_unlock(&r->mu));
        return passed ? CREW_EAGAIN : CREW_ETIMEDOUT;
    }
    r->vzero = p;
    atomic_store_explicit(&r->sleepers, sleepers(r) + 1, memory_order_relaxed);
    uint64_t plan = r->plan;
    crew__check(pthread_mutex_unlock(&r->mu));
    return sleep_until_due(r, p, n, due, plan, limit, ctx);
}

int crew_rate_wait(crew_rate *r, int64_t deadline, crew_ctx *ctx)
{
    return crew_rate_wait_n(r, 1, deadline, ctx);
}

int crew_rate_set(crew_rate *r, double per_sec, int64_t burst)
{
    crew_assert(r);
    if (!valid(per_sec, burst))
        return CREW_EINVAL;
    crew__check(pthread_mutex_lock(&r->mu));
    advance(r, crew_now()); /* the old rate up to now, the new one from now on */
    configure(r, per_sec, burst);
    r->plan++;
    crew__check(pthread_mutex_unlock(&r->mu));
    crew__ec_notify(&r->ec, INT32_MAX);
    return 0;
}

double crew_rate_tokens(crew_rate *r)
{
    crew_assert(r);
    if (atomic_load_explicit(&r->unlimited, memory_order_relaxed))
        return CREW_RATE_INF;
    crew__check(pthread_mutex_lock(&r->mu));
    advance(r, crew_now());
    double t = r->v_base - r->vzero;
    crew__check(pthread_mutex_unlock(&r->mu));
    return t;
}

size_t crew_rate_waiters(const crew_rate *r)
{
    return sleepers(r);
}
