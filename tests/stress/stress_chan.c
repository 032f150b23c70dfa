/*
 * Stress test for src/chan.c: producers and consumers moving numbered items through one
 * channel with every kind of call mixed at random (blocking, try, deadline, a shared ctx
 * that a chaos thread keeps cancelling, a per-call ctx whose deadline the timer fires),
 * with and without a close racing the traffic.
 *
 * What must hold: every item whose send returned 0 is received exactly once, and no item
 * whose send failed is ever received (per-item counters); each consumer sees each
 * producer's items in increasing order (per-producer FIFO); every call returns one of the
 * codes its mode allows, and CREW_EPIPE only once a close has begun; exactly one of two
 * racing closes succeeds. Helper threads never assert: they count violations, which the
 * main thread checks after joining them.
 */
#include "internal.h"
#include "testutil.h"

#include "stress/chaos.h"

#include <sched.h>
#include <string.h>
#include <time.h>

#define PRODUCERS 4
#define CONSUMERS 4

/* An element larger than a word, with a checksum, so a torn copy shows. */
typedef struct item {
    uint64_t id; /* producer = id % PRODUCERS, its sequence number = id / PRODUCERS */
    uint64_t check;
    uint64_t pad;
} item;

static uint64_t check_of(uint64_t id)
{
    return (id * 0x9E3779B97F4A7C15ull) ^ 0xC3A5C85C97CB3127ull;
}

typedef struct world {
    crew_chan *c;
    long n;                 /* items, numbered 0..n-1 */
    _Atomic uint8_t *recvd; /* times each item was received */
    uint8_t *sent;          /* 1 if its send returned 0: written by its producer only */
    _Atomic long received;  /* items received so far */
    _Atomic int producing;  /* producers still running */
    _Atomic bool closing;   /* set just before the first close */
    chaos chaos;            /* the seed, the violations, the shared ctx and its canceller */
} world;

typedef struct actor {
    world *w;
    unsigned idx;
    uint64_t seed;
    pthread_t tid;
} actor;

static void violation(world *w, const char *what, long a, long b)
{
    chaos_violation(&w->chaos, what, a, b);
}

/* True if rc is a result that a call made in this mode may return. */
static bool allowed(world *w, int mode, int rc)
{
    if (rc == CREW_EPIPE)
        return atomic_load(&w->closing);
    return chaos_allowed(mode, rc);
}

/* One send or receive in a random mode, which goes to *mode_out. */
static int one_call(world *w, uint64_t *seed, bool send, item *it, int *mode_out)
{
    static const int pct[4] = {45, 15, 18, 12}; /* the rest: a ctx of the call's own */
    int64_t deadline;
    crew_ctx *ctx;
    int mode = chaos_call(&w->chaos, seed, pct, 250 * CREW_USEC, &deadline, &ctx);
    *mode_out = mode;
    if (mode < 0)
        return CREW_ENOMEM;
    int rc =
        send ? crew_chan_send(w->c, it, deadline, ctx) : crew_chan_recv(w->c, it, deadline, ctx);
    if (ctx)
        crew_ctx_release(ctx);
    if (!allowed(w, mode, rc))
        violation(w, send ? "send returned an unexpected code" : "recv returned an unexpected code",
                  mode, rc);
    return rc;
}

static void *producer(void *arg)
{
    actor *a = arg;
    world *w = a->w;
    bool saw_epipe = false;
    for (long id = a->idx; id < w->n; id += PRODUCERS) {
        item it = {(uint64_t)id, check_of((uint64_t)id), 0};
        int mode;
        int rc = one_call(w, &a->seed, true, &it, &mode);
        /* Once closed, a send fails with CREW_EPIPE, or with its ctx's error when the ctx
         * was done before the call looked at the channel. */
        bool ctx_mode = mode == CALL_SHARED_CTX || mode == CALL_TIMEOUT_CTX;
        if (saw_epipe && rc != CREW_EPIPE && !(ctx_mode && rc != 0))
            violation(w, "a send after CREW_EPIPE did not fail with it", id, rc);
        saw_epipe = saw_epipe || rc == CREW_EPIPE;
        w->sent[id] = rc == 0;
    }
    atomic_fetch_sub(&w->producing, 1);
    return NULL;
}

static void *consumer(void *arg)
{
    actor *a = arg;
    world *w = a->w;
    int64_t last[PRODUCERS];
    for (int p = 0; p < PRODUCERS; p++)
        last[p] = -1;
    for (;;) {
        item it = {UINT64_MAX, 0, 0};
        int mode;
        int rc = one_call(w, &a->seed, false, &it, &mode);
        if (rc == CREW_EPIPE)
            break;
        if (rc == CREW_EAGAIN)
            sched_yield(); /* a try found nothing: let a producer run */
        if (rc != 0)
            continue;
        if (it.id >= (uint64_t)w->n || it.check != check_of(it.id)) {
            violation(w, "torn or unknown item", (long)it.id, (long)it.check);
            continue;
        }
        int p = (int)(it.id % PRODUCERS);
        int64_t seq = (int64_t)(it.id / PRODUCERS);
        if (seq <= last[p])
            violation(w, "a producer's items out of order", (long)seq, (long)last[p]);
        last[p] = seq;
        atomic_fetch_add(&w->recvd[it.id], 1);
        atomic_fetch_add(&w->received, 1);
    }
    return NULL;
}

static void *closer(void *arg)
{
    return (void *)(intptr_t)crew_chan_close(arg);
}

/* Moves n items through a channel of capacity cap; if close_early, closes it while the
 * producers are still sending, from two threads at once. */
static void run(size_t cap, long n, bool close_early, uint64_t seed)
{
    world w;
    memset(&w, 0, sizeof w);
    w.n = n;
    w.recvd = calloc((size_t)n, sizeof *w.recvd);
    w.sent = calloc((size_t)n, 1);
    assert_non_null(w.recvd);
    assert_non_null(w.sent);
    assert_int_equal(crew_chan_create(&w.c, sizeof(item), cap), 0);
    atomic_init(&w.producing, PRODUCERS);

    actor prod[PRODUCERS], cons[CONSUMERS];
    chaos_start(&w.chaos, seed);
    for (unsigned i = 0; i < CONSUMERS; i++) {
        cons[i] = (actor){&w, i, seed * 31 + i + 1, 0};
        assert_int_equal(pthread_create(&cons[i].tid, NULL, consumer, &cons[i]), 0);
    }
    for (unsigned i = 0; i < PRODUCERS; i++) {
        prod[i] = (actor){&w, i, seed * 17 + i + 101, 0};
        assert_int_equal(pthread_create(&prod[i].tid, NULL, producer, &prod[i]), 0);
    }

    if (close_early) {
        /* Wait for some traffic (or for the producers to finish), then close from two
         * threads at once while the calls go on. */
        int64_t until = crew_deadline_in(60 * CREW_SEC);
        while (atomic_load(&w.received) < n / 3 && atomic_load(&w.producing) > 0 &&
               crew_now() < until)
            sched_yield();
    } else {
        for (unsigned i = 0; i < PRODUCERS; i++)
            assert_int_equal(pthread_join(prod[i].tid, NULL), 0);
    }
    atomic_store(&w.closing, true);
    pthread_t ct;
    assert_int_equal(pthread_create(&ct, NULL, closer, w.c), 0);
    int mine = crew_chan_close(w.c);
    void *theirs;
    assert_int_equal(pthread_join(ct, &theirs), 0);
    assert_true((mine == 0 && (intptr_t)theirs == CREW_EPIPE) ||
                (mine == CREW_EPIPE && (intptr_t)theirs == 0));

    if (close_early)
        for (unsigned i = 0; i < PRODUCERS; i++)
            assert_int_equal(pthread_join(prod[i].tid, NULL), 0);
    for (unsigned i = 0; i < CONSUMERS; i++)
        assert_int_equal(pthread_join(cons[i].tid, NULL), 0);
    long violations = chaos_stop(&w.chaos);

    long sent = 0, lost = 0, dup = 0, ghost = 0;
    for (long id = 0; id < n; id++) {
        unsigned r = atomic_load(&w.recvd[id]);
        sent += w.sent[id];
        lost += w.sent[id] && r == 0;
        dup += r > 1;
        ghost += !w.sent[id] && r != 0;
    }
    if (lost || dup || ghost || violations)
        fail_msg("cap %zu, close_early %d, seed %llu: %ld lost, %ld duplicated, %ld received "
                 "though their send failed, %ld violations",
                 cap, close_early, (unsigned long long)seed, lost, dup, ghost, violations);
    printf("cap %zu%s: %ld items, %ld sent and received, seed %llu\n", cap,
           close_early ? ", closed early" : "", n, sent, (unsigned long long)seed);
    assert_int_equal(atomic_load(&w.received), sent);
    assert_true(sent > 0);
    assert_int_equal(crew_chan_len(w.c), 0);
    assert_int_equal(crew__chan_waiters(w.c), 0);
    assert_true(crew_chan_closed(w.c));

    crew_chan_destroy(w.c);
    free(w.recvd);
    free(w.sent);
}

static void stress(size_t cap, bool close_early)
{
    uint64_t seed = stress_seed();
    run(cap, stress_scaled(60000), close_early, seed);
}

static void test_cap0(void **state)
{
    (void)state;
    stress(0, false);
}

static void test_cap1(void **state)
{
    (void)state;
    stress(1, false);
}

static void test_cap64(void **state)
{
    (void)state;
    stress(64, false);
}

static void test_close_race_cap0(void **state)
{
    (void)state;
    stress(0, true);
}

static void test_close_race_cap1(void **state)
{
    (void)state;
    stress(1, true);
}

static void test_close_race_cap64(void **state)
{
    (void)state;
    stress(64, true);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        leak_test(test_cap0),
        leak_test(test_cap1),
        leak_test(test_cap64),
        leak_test(test_close_race_cap0),
        leak_test(test_close_race_cap1),
        leak_test(test_close_race_cap64),
    };
    return cmocka_run_group_tests_name("stress_chan", tests, NULL, NULL);
}
