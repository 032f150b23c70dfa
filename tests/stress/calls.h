/*
 * calls.h - the random blocking calls of stress_order.c and stress_pipeline.c, on chaos.h:
 * each call picks blocking (40%), a try (15%), a deadline within 250 us (20%), the shared
 * ctx that the chaos thread keeps cancelling (15%), or a ctx of its own that times out
 * within 250 us (10%). A ctx that could not be made is a violation, which calls_stop()
 * fails the test on.
 */
#ifndef CREW_STRESS_CALLS_H
#define CREW_STRESS_CALLS_H

#include "chaos.h"

typedef chaos calls;

enum {
    MODE_FOREVER = CALL_FOREVER,
    MODE_TRY = CALL_TRY,
    MODE_DEADLINE = CALL_DEADLINE,
    MODE_SHARED_CTX = CALL_SHARED_CTX,
    MODE_TIMEOUT_CTX = CALL_TIMEOUT_CTX,
};

/* Picks a kind of call; fills in its deadline and ctx (a reference the caller releases,
 * or NULL). */
static inline int calls_pick(calls *c, uint64_t *seed, int64_t *deadline, crew_ctx **ctx)
{
    static const int pct[4] = {40, 15, 20, 15};
    return chaos_call(c, seed, pct, 250 * CREW_USEC, deadline, ctx);
}

/* True if rc is a result that a call of this kind may return (0 always may). */
static inline bool calls_allowed(int mode, int rc)
{
    return chaos_allowed(mode, rc);
}

static inline void calls_start(calls *c, uint64_t seed)
{
    chaos_start(c, seed);
}

/* Stops the chaos thread and checks that no ctx creation failed. */
static inline void calls_stop(calls *c)
{
    assert_int_equal(chaos_stop(c), 0);
}

#endif
