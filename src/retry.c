/*
 * retry.c - retries with capped exponential backoff and full jitter.
 *
 * The policy is the AWS Architecture Blog's "full jitter": before retry k (k = 1 after the
 * first try) sleep a uniform random time in [0, min(cap, base * factor^(k-1))]. Spreading
 * the sleeps over the whole interval, rather than around its top, is what keeps many
 * clients that failed together from retrying together. no_jitter sleeps the ceiling itself,
 * for callers that want a fixed schedule.
 *
 * The ceiling is computed in double: base * pow(factor, k-1) may overflow to infinity for a
 * large k, and anything at or above cap (in double, before any conversion) is cap, so no
 * attempt number overflows an integer. The jitter draw uses the top 53 bits of a xorshift64*
 * state owned by the caller (crew_retry_delay) or by the thread (crew_retry_do), so delays
 * are computed without any shared state or lock.
 *
 * Sleeping is crew_ctx_wait(ctx, deadline): one call that ends at the deadline or as soon as
 * the ctx is done, with no thread of its own. A retry that could only start after the ctx's
 * deadline is not slept for: the loop gives up with fn's last error at once.
 *
 * Threads: everything here runs in the caller's thread and touches only the caller's data
 * and a thread-local rng state. The loop itself is crew__retry_run (retry_internal.h), so
 * the pool can run a job's retries in its worker and count them through the hook.
 */
#include "internal.h"
#include "retry_internal.h"

#include <math.h>

#define DEFAULT_ATTEMPTS 3u
#define DEFAULT_BASE     (100 * CREW_MSEC)
#define DEFAULT_CAP      (30 * CREW_SEC)
#define DEFAULT_FACTOR   2.0

/* The per-thread rng of callers that bring none; 0 until first seeded. */
static _Thread_local uint64_t tls_rng;

/* xorshift64*: a fast generator whose state must not be 0. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    if (x == 0) /* any value is a valid state for the caller: replace the one fixed point */
        x = 0x9E3779B97F4A7C15ull;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* The calling thread's rng, seeded from the clock and the thread on first use. */
static uint64_t *thread_rng(void)
{
    if (tls_rng == 0)
        tls_rng = ((uint64_t)crew_now() ^ (uint64_t)(uintptr_t)&tls_rng) | 1;
    return &tls_rng;
}

int crew__retry_plan_init(crew__retry_plan *plan, const crew_retry *policy)
{
    static const crew_retry defaults;
    if (!policy)
        policy = &defaults;
    /* !(factor >= 1) also refuses NaN. */
    if (policy->base < 0 || policy->cap < 0 || (policy->factor != 0 && !(policy->factor >= 1)))
        return CREW_EINVAL;
    plan->attempts = policy->attempts ? policy->attempts : DEFAULT_ATTEMPTS;
    plan->base = policy->base ? policy->base : DEFAULT_BASE;
    plan->cap = policy->cap ? policy->cap : DEFAULT_CAP;
    plan->factor = policy->factor != 0 ? policy->factor : DEFAULT_FACTOR;
    plan->jitter = !policy->no_jitter;
    plan->retryable = policy->retryable;
    plan->pred_arg = policy->pred_arg;
    return 0;
}

int64_t crew__retry_backoff(const crew__retry_plan *plan, unsigned attempt, uint64_t *rng)
{
    if (attempt == 0)
        return 0;
    /* In double: base > 0 and factor >= 1, so the product only grows, to +inf at worst,
     * never NaN; the comparison with cap happens before any conversion to an integer. */
    double c = (double)plan->base * pow(plan->factor, (double)(attempt - 1));
    int64_t ceiling = c >= (double)plan->cap ? plan->cap : (int64_t)c;
    if (!plan->jitter)
        return ceiling;
    double u = (double)(rng_next(rng ? rng : thread_rng()) >> 11) * 0x1.0p-53; /* [0, 1) */
    double d = (double)ceiling * u;
    /* (double)ceiling may round up past ceiling; keep the draw inside [0, ceiling]. */
    return d >= (double)ceiling ? ceiling : (int64_t)d;
}

/* The default rule: every error is worth another try, except the ctx's own. */
static bool should_retry(const crew__retry_plan *plan, int err, crew_ctx *ctx)
{
    if (plan->retryable)
        return plan->retryable(err, plan->pred_arg);
    return !((err == CREW_ECANCELED || err == CREW_ETIMEDOUT) && crew_ctx_done(ctx));
}

int crew__retry_run(const crew__retry_plan *plan, crew_job_fn fn, void *arg, crew_ctx *ctx,
                    unsigned *tries, crew__retry_hook hook, void *hook_arg)
{
    unsigned n = 0;
    int rc = crew_ctx_err(ctx);
    while (rc == 0) {
        n++;
        rc = fn(ctx, arg);
        if (rc == 0 || n >= plan->attempts || !should_retry(plan, rc, ctx))
            break;
        if (crew_ctx_done(ctx)) {
            rc = crew_ctx_err(ctx);
            break;
        }
        int64_t delay = crew__retry_backoff(plan, n, NULL);
        int64_t wake = crew_deadline_in(delay);
        int64_t limit = crew_ctx_deadline(ctx);
        if (limit != CREW_FOREVER && wake >= limit)
            break; /* the retry could only come after the ctx's deadline: give up now */
        if (hook)
            hook(hook_arg, rc, n, delay);
        if (crew_ctx_wait(ctx, wake) == 0) {
            rc = crew_ctx_err(ctx); /* cancelled during the backoff */
            break;
        }
        rc = 0; /* slept the whole backoff: try again */
    }
    if (tries)
        *tries = n;
    return rc;
}

int crew_retry_do(const crew_retry *policy, crew_job_fn fn, void *arg, crew_ctx *ctx,
                  unsigned *tries)
{
    crew__retry_plan plan;
    if (tries)
        *tries = 0;
    if (!fn || crew__retry_plan_init(&plan, policy) != 0)
        return CREW_EINVAL;
    return crew__retry_run(&plan, fn, arg, ctx, tries, NULL, NULL);
}

int64_t crew_retry_delay(const crew_retry *policy, unsigned attempt, uint64_t *rng_state)
{
    crew__retry_plan plan;
    if (crew__retry_plan_init(&plan, policy) != 0)
        return CREW_EINVAL;
    return crew__retry_backoff(&plan, attempt, rng_state);
}
