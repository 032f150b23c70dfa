/*
 * retry_internal.h - the pieces of src/retry.c that other modules build on: the pool's
 * per-job retry option runs a job through crew__retry_run inside its worker, and counts
 * each retry through the hook.
 */
#ifndef CREW_RETRY_INTERNAL_H
#define CREW_RETRY_INTERNAL_H

#include "crew.h"

/* A policy with its defaults filled in and checked, ready to use many times. */
typedef struct crew__retry_plan {
    unsigned attempts;         /* tries in all, >= 1 */
    int64_t base, cap;         /* ns, > 0 */
    double factor;             /* >= 1 */
    bool jitter;               /* full jitter, else the ceiling itself */
    crew_retry_pred retryable; /* NULL: the default rule */
    void *pred_arg;
} crew__retry_plan;

/* Fills *plan from policy (NULL: the defaults). Returns 0, or CREW_EINVAL for a negative
 * base or cap, or a factor below 1 or not a number. */
int crew__retry_plan_init(crew__retry_plan *plan, const crew_retry *policy);

/* The backoff before retry number attempt (0 gives 0), as crew_retry_delay. rng: any value,
 * advanced; NULL uses a per-thread state. */
int64_t crew__retry_backoff(const crew__retry_plan *plan, unsigned attempt, uint64_t *rng);

/* Called before each backoff sleep with the error that is being retried, the retry's
 * number (1, 2, ...) and the delay about to be slept; the pool counts retries here. */
typedef void (*crew__retry_hook)(void *hook_arg, int err, unsigned attempt, int64_t delay);

/* The loop of crew_retry_do, with a plan made by crew__retry_plan_init, an optional hook
 * (may be NULL) and tries (may be NULL). Returns as crew_retry_do. */
int crew__retry_run(const crew__retry_plan *plan, crew_job_fn fn, void *arg, crew_ctx *ctx,
                    unsigned *tries, crew__retry_hook hook, void *hook_arg);

#endif /* CREW_RETRY_INTERNAL_H */
