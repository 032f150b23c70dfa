/*
 * Stress test for src/order.c.
 *
 * 1. The reorder buffer with self-numbered puts: producers own interleaved seqs and put
 *    each with a random kind of call (blocking, try, deadline, a shared ctx that a chaos
 *    thread keeps cancelling, a per-call ctx that times out), retrying until it lands,
 *    some as skips (NULL item, an error); several consumers take with random calls too.
 *    With or without a close racing the producers.
 * 2. The reserve form on a pool: submitter threads reserve a seq, then submit its job;
 *    jobs put without ever waiting; one consumer.
 * 3. crew_order_map: several threads and jobs mapping over the same pool at once, some
 *    nested, with random cancels and deadlines.
 *
 * What must hold: the consumers together see every seq exactly once, each consumer in
 * increasing order, each with the item and code its producer put (a hole only for a seq
 * whose put failed after a close); the buffer never holds more than its window; in the
 * reserve form no put ever waits; a map runs each index at most once, records every index,
 * and returns the error of the lowest failing one. Helper threads never assert: they count
 * violations, which the main thread checks. CREW_STRESS_SEED replays a run.
 */
#include "internal.h"
#include "testutil.h"

#include "stress/calls.h"

#include <string.h>

static _Atomic long violations;
static uint64_t seed0;

static void violation(const char *what, long a, long b)
{
    if (atomic_fetch_add(&violations, 1) < 10)
        fprintf(stderr, "violation: %s (%ld, %ld), seed %llu\n", what, a, b,
                (unsigned long long)seed0);
}

/* The item a seq carries, and whether it is a skip: both a function of the seq. */
static void *item_of(uint64_t seq)
{
    return seq % 11 == 5 ? NULL : (void *)(uintptr_t)(seq * 2 + 1);
}

static int err_of(uint64_t seq)
{
    return seq % 11 == 5 ? -EIO : 0;
}

/* ---- 1. self-numbered puts ------------------------------------------------------------ */

#define PRODUCERS 4
#define CONSUMERS 3

typedef struct world {
    crew_order *o;
    uint64_t n;
    _Atomic uint8_t *seen; /* times each seq was taken */
    uint8_t *put_ok;       /* 1 if its put returned 0: written by its producer only */
    _Atomic int producing; /* producers still running */
    _Atomic bool closing;  /* set just before the close */
    calls calls;           /* the kinds of call, and the chaos thread */
} world;

typedef struct actor {
    world *w;
    unsigned idx;
    uint64_t seed;
    long taken;
    pthread_t tid;
} actor;

static void *producer(void *arg)
{
    actor *a = arg;
    world *w = a->w;
    for (uint64_t seq = a->idx; seq < w->n; seq += PRODUCERS) {
        for (;;) {
            int64_t deadline;
            crew_ctx *ctx;
            int mode = calls_pick(&w->calls, &a->seed, &deadline, &ctx);
            int rc = crew_order_put(w->o, seq, item_of(seq), err_of(seq), deadline, ctx);
            crew_ctx_release(ctx);
            if (rc == 0) {
                w->put_ok[seq] = 1;
                break;
            }
            if (rc == CREW_EPIPE) {
                if (!atomic_load(&w->closing))
                    violation("CREW_EPIPE before the close", (long)seq, 0);
                break;
            }
            if (!calls_allowed(mode, rc))
                violation("put returned an unexpected code", mode, rc);
            if (rc == CREW_EAGAIN)
                sched_yield();
        }
    }
    atomic_fetch_sub(&w->producing, 1);
    return NULL;
}

static void *consumer(void *arg)
{
    actor *a = arg;
    world *w = a->w;
    int64_t last = -1;
    for (;;) {
        int64_t deadline;
        crew_ctx *ctx;
        int mode = calls_pick(&w->calls, &a->seed, &deadline, &ctx);
        crew_order_result r;
        int rc = crew_order_next(w->o, &r, deadline, ctx);
        crew_ctx_release(ctx);
        if (rc == CREW_EPIPE)
            break;
        if (rc) {
            if (!calls_allowed(mode, rc))
                violation("next returned an unexpected code", mode, rc);
            if (rc == CREW_EAGAIN)
                sched_yield();
            continue;
        }
        if (r.seq >= w->n) {
            violation("a seq never put", (long)r.seq, 0);
            continue;
        }
        if ((int64_t)r.seq <= last)
            violation("a consumer's seqs out of order", (long)r.seq, (long)last);
        last = (int64_t)r.seq;
        bool hole = r.item == NULL && r.err == CREW_EPIPE;
        if (!hole && (r.item != item_of(r.seq) || r.err != err_of(r.seq)))
            violation("wrong item or code for its seq", (long)r.seq, r.err);
        if (hole && !atomic_load(&w->closing))
            violation("a hole before the close", (long)r.seq, 0);
        atomic_fetch_add(&w->seen[r.seq], hole ? 16 : 1); /* a hole counts apart */
        a->taken++;
    }
    return NULL;
}

static void run_buffer(size_t window, uint64_t n, bool close_early, uint64_t seed)
{
    world w;
    memset(&w, 0, sizeof w);
    w.n = n;
    w.seen = calloc(n, sizeof *w.seen);
    w.put_ok = calloc(n, 1);
    assert_non_null(w.seen);
    assert_non_null(w.put_ok);
    assert_int_equal(crew_order_create(&w.o, &(crew_order_opts){.window = window}), 0);
    calls_start(&w.calls, seed ^ 0xC4A05);
    atomic_init(&w.producing, PRODUCERS);

    actor prod[PRODUCERS], cons[CONSUMERS];
    for (unsigned i = 0; i < CONSUMERS; i++) {
        cons[i] = (actor){&w, i, seed * 31 + i + 1, 0, 0};
        assert_int_equal(pthread_create(&cons[i].tid, NULL, consumer, &cons[i]), 0);
    }
    for (unsigned i = 0; i < PRODUCERS; i++) {
        prod[i] = (actor){&w, i, seed * 17 + i + 101, 0, 0};
        assert_int_equal(pthread_create(&prod[i].tid, NULL, producer, &prod[i]), 0);
    }
    if (close_early) {
        int64_t until = crew_deadline_in(60 * CREW_SEC);
        crew_order_info i;
        while (crew_order_stats(w.o, &i) == 0 && i.next < n / 3 && atomic_load(&w.producing) > 0 &&
               crew_now() < until)
            sched_yield();
    } else {
        for (unsigned i = 0; i < PRODUCERS; i++)
            assert_int_equal(pthread_join(prod[i].tid, NULL), 0);
    }
    atomic_store(&w.closing, true);
    assert_int_equal(crew_order_close(w.o), 0);
    if (close_early)
        for (unsigned i = 0; i < PRODUCERS; i++)
            assert_int_equal(pthread_join(prod[i].tid, NULL), 0);
    long taken = 0;
    for (unsigned i = 0; i < CONSUMERS; i++) {
        assert_int_equal(pthread_join(cons[i].tid, NULL), 0);
        taken += cons[i].taken;
    }
    calls_stop(&w.calls);

    /* Every seq up to the highest put was taken once: as its item if its put succeeded,
     * as a hole if not. None beyond. */
    crew_order_info info;
    assert_int_equal(crew_order_stats(w.o, &info), 0);
    uint64_t end = info.next;
    long put = 0, bad = 0;
    for (uint64_t s = 0; s < n; s++) {
        unsigned seen = atomic_load(&w.seen[s]);
        put += w.put_ok[s];
        if (s < end)
            bad += seen != (w.put_ok[s] ? 1u : 16u);
        else
            bad += seen != 0 || w.put_ok[s];
    }
    if (bad || atomic_load(&violations))
        fail_msg("window %zu, close_early %d, seed %llu: %ld seqs wrong, %ld violations", window,
                 close_early, (unsigned long long)seed, bad, (long)atomic_load(&violations));
    printf("buffer, window %zu%s: %llu seqs, %ld put, %ld taken, peak %zu, %llu puts waited, "
           "seed %llu\n",
           window, close_early ? ", closed early" : "", (unsigned long long)n, put, taken,
           info.peak, (unsigned long long)info.put_waits, (unsigned long long)seed);
    assert_true(info.peak <= window);
    assert_int_equal(info.buffered, 0);
    if (!close_early)
        assert_int_equal(end, n);

    crew_order_destroy(w.o);
    free(w.seen);
    free(w.put_ok);
}

static void test_buffer(void **state)
{
    (void)state;
    uint64_t n = (uint64_t)stress_scaled(25000);
    run_buffer(1, n / 8, false, seed0);
    run_buffer(PRODUCERS, n, false, seed0 + 1);
    run_buffer(64, n, false, seed0 + 2);
}

static void test_buffer_close_race(void **state)
{
    (void)state;
    uint64_t n = (uint64_t)stress_scaled(25000);
    run_buffer(PRODUCERS, n, true, seed0 + 3);
    run_buffer(64, n, true, seed0 + 4);
}

/* ---- 2. the reserve form on a pool ---------------------------------------------------- */

#define SUBMITTERS 3

typedef struct rworld {
    crew_pool *p;
    crew_order *o;
    uint64_t n; /* seqs the consumer takes; reserves past them are put as skips */
} rworld;

typedef struct rjob {
    rworld *w;
    uint64_t seq;
    uint64_t spin; /* work to do first, so jobs finish out of order */
} rjob;

static int rjob_run(crew_ctx *ctx, void *arg)
{
    (void)ctx;
    rjob *j = arg;
    for (uint64_t k = 0; k < j->spin; k++)
        crew__cpu_relax();
    /* A reserved seq never waits: a try must succeed. */
    int rc = crew_order_put(j->w->o, j->seq, item_of(j->seq), err_of(j->seq), CREW_NOW, NULL);
    if (rc)
        violation("a reserved seq's put failed", (long)j->seq, rc);
    free(j);
    return 0;
}

typedef struct submitter {
    rworld *w;
    uint64_t seed;
    pthread_t tid;
} submitter;

/* Reserves and submits until the consumer has what it needs and closes the order. */
static void *submit_main(void *arg)
{
    submitter *a = arg;
    rworld *w = a->w;
    for (;;) {
        uint64_t seq;
        /* A deadline or a ctx that times out, now and then: a reserve that gives up has
         * taken nothing, and one handed a seq as it gave up must report the seq. */
        int64_t deadline = CREW_FOREVER;
        crew_ctx *ctx = NULL;
        uint64_t mode = rng_next(&a->seed) % 4;
        int64_t wait = (int64_t)(rng_next(&a->seed) % (50 * CREW_USEC));
        if (mode == 0)
            deadline = crew_deadline_in(wait);
        else if (mode == 1 && crew_ctx_with_timeout(NULL, wait + 1, &ctx))
            violation("crew_ctx_with_timeout failed", 0, 0);
        int rc = crew_order_reserve(w->o, &seq, deadline, ctx);
        crew_ctx_release(ctx);
        if (rc == CREW_ETIMEDOUT || rc == CREW_EAGAIN)
            continue;
        if (rc == CREW_EPIPE)
            break;
        if (rc) {
            violation("reserve failed", rc, 0);
            break;
        }
        if (seq >= w->n) {
            /* Past what the consumer takes: a skip keeps the accounting whole. */
            rc = crew_order_put(w->o, seq, NULL, CREW_ECANCELED, CREW_NOW, NULL);
            if (rc && rc != CREW_EPIPE)
                violation("a skip's put failed", (long)seq, rc);
            continue;
        }
        rjob *j = malloc(sizeof *j);
        *j = (rjob){w, seq, rng_next(&a->seed) % 1000};
        if ((rc = crew_pool_submit(w->p, rjob_run, j, CREW_FOREVER, NULL))) {
            violation("submit failed", rc, 0);
            free(j);
        }
    }
    return NULL;
}

static void test_reserve_on_pool(void **state)
{
    (void)state;
    uint64_t n = (uint64_t)stress_scaled(10000);
    rworld w = {0};
    w.n = n;
    assert_int_equal(crew_pool_create(&w.p, &(crew_pool_opts){.workers = 4, .queue_cap = 16}), 0);
    assert_int_equal(crew_order_create(&w.o, &(crew_order_opts){.window = 8}), 0);
    submitter subs[SUBMITTERS];
    for (unsigned i = 0; i < SUBMITTERS; i++) {
        subs[i] = (submitter){&w, seed0 * 7 + i + 3, 0};
        assert_int_equal(pthread_create(&subs[i].tid, NULL, submit_main, &subs[i]), 0);
    }
    crew_order_result r;
    for (uint64_t expect = 0; expect < n; expect++) {
        assert_int_equal(crew_order_next(w.o, &r, CREW_FOREVER, NULL), 0);
        if (r.seq != expect || r.item != item_of(r.seq) || r.err != err_of(r.seq))
            violation("reserve form: wrong result", (long)r.seq, (long)expect);
    }
    assert_int_equal(crew_order_close(w.o), 0);
    for (unsigned i = 0; i < SUBMITTERS; i++)
        assert_int_equal(pthread_join(subs[i].tid, NULL), 0);
    assert_int_equal(crew_pool_drain(w.p, CREW_FOREVER), 0);
    crew_order_info info;
    assert_int_equal(crew_order_stats(w.o, &info), 0);
    printf("reserve: %llu seqs, %llu reserves waited, peak %zu, seed %llu\n", (unsigned long long)n,
           (unsigned long long)info.reserve_waits, info.peak, (unsigned long long)seed0);
    assert_int_equal(info.put_waits, 0);
    assert_true(info.peak <= 8);
    assert_int_equal(atomic_load(&violations), 0);
    crew_order_destroy(w.o); /* the skips past n: NULL items, nothing to free */
    crew_pool_destroy(w.p);
}

/* ---- 3. maps ------------------------------------------------------------------------- */

#define MAPPERS 3
#define MAX_N   2000

typedef struct mrun {
    crew_pool *p;
    size_t n;
    _Atomic uint8_t runs[MAX_N];
    int errs[MAX_N];
    bool nested; /* each index maps a small range of its own */
} mrun;

static int leaf(crew_ctx *ctx, size_t i, void *arg)
{
    (void)arg;
    (void)ctx;
    return i % 5 == 4 ? -EIO : 0;
}

static int mapped(crew_ctx *ctx, size_t i, void *arg)
{
    mrun *m = arg;
    if (atomic_fetch_add(&m->runs[i], 1) != 0)
        violation("an index ran twice", (long)i, 0);
    if (m->nested) {
        int errs[7];
        int rc = crew_order_map(m->p, leaf, NULL, 7, errs, CREW_FOREVER, ctx);
        /* The nested map's first failing index is 4, unless a cancel came first. */
        if (rc != -EIO && rc != CREW_ECANCELED && rc != CREW_ETIMEDOUT)
            violation("nested map returned an unexpected code", (long)i, rc);
    }
    return i % 97 == 13 ? -(int)(2000 + i % 1000) : 0;
}

/* Checks one map's outcome; returns the number of indices that ran. */
static long check_map(mrun *m, int rc)
{
    long ran = 0;
    int first = 0;
    for (size_t i = 0; i < m->n; i++) {
        int e = m->errs[i];
        unsigned r = atomic_load(&m->runs[i]);
        ran += r;
        if (r > 1)
            violation("ran twice", (long)i, (long)r);
        int fn_rc = i % 97 == 13 ? -(int)(2000 + i % 1000) : 0;
        if (r == 1 && e != fn_rc)
            violation("a ran index recorded a wrong code", (long)i, e);
        if (r == 0 && e != CREW_ECANCELED && e != CREW_ETIMEDOUT)
            violation("an index not run recorded a wrong code", (long)i, e);
        if (!first && e)
            first = e;
    }
    if (rc != first)
        violation("map did not return its lowest failing index's code", rc, first);
    return ran;
}

typedef struct mapper {
    crew_pool *p;
    uint64_t seed;
    long maps, ran;
    pthread_t tid;
} mapper;

static void one_map(crew_pool *p, uint64_t *seed, long *ran)
{
    mrun *m = calloc(1, sizeof *m);
    m->p = p;
    m->n = 1 + rng_next(seed) % MAX_N;
    m->nested = rng_next(seed) % 4 == 0;
    if (m->nested && m->n > 200)
        m->n = 200;
    int64_t deadline = CREW_FOREVER;
    crew_ctx *ctx = NULL;
    switch (rng_next(seed) % 4) {
    case 0:
        deadline = crew_deadline_in((int64_t)(rng_next(seed) % (300 * CREW_USEC)));
        break;
    case 1:
        if (crew_ctx_with_timeout(NULL, (int64_t)(rng_next(seed) % (300 * CREW_USEC)), &ctx))
            violation("crew_ctx_with_timeout failed", 0, 0);
        break;
    default:
        break;
    }
    int rc = crew_order_map(p, mapped, m, m->n, m->errs, deadline, ctx);
    crew_ctx_release(ctx);
    *ran += check_map(m, rc);
    free(m);
}

static void *mapper_main(void *arg)
{
    mapper *a = arg;
    for (long k = 0; k < a->maps; k++)
        one_map(a->p, &a->seed, &a->ran);
    return NULL;
}

/* A job that maps from inside the pool. */
typedef struct map_job_arg {
    crew_pool *p;
    uint64_t seed;
    long ran;
} map_job_arg;

static int map_job(crew_ctx *ctx, void *arg)
{
    (void)ctx;
    map_job_arg *a = arg;
    one_map(a->p, &a->seed, &a->ran);
    return 0;
}

static void test_maps(void **state)
{
    (void)state;
    crew_pool *p;
    assert_int_equal(crew_pool_create(&p, &(crew_pool_opts){.workers = 3, .queue_cap = 8}), 0);
    long maps = stress_scaled(150);
    mapper ms[MAPPERS];
    for (unsigned i = 0; i < MAPPERS; i++) {
        ms[i] = (mapper){p, seed0 * 13 + i + 7, maps, 0, 0};
        assert_int_equal(pthread_create(&ms[i].tid, NULL, mapper_main, &ms[i]), 0);
    }
    /* Maps from inside jobs at the same time. */
    long jobs = maps / 2 + 1;
    map_job_arg *ja = calloc((size_t)jobs, sizeof *ja);
    for (long k = 0; k < jobs; k++) {
        ja[k] = (map_job_arg){p, seed0 * 19 + (uint64_t)k, 0};
        assert_int_equal(crew_pool_submit(p, map_job, &ja[k], CREW_FOREVER, NULL), 0);
    }
    long ran = 0;
    for (unsigned i = 0; i < MAPPERS; i++) {
        assert_int_equal(pthread_join(ms[i].tid, NULL), 0);
        ran += ms[i].ran;
    }
    assert_int_equal(crew_pool_drain(p, CREW_FOREVER), 0);
    for (long k = 0; k < jobs; k++)
        ran += ja[k].ran;
    printf("maps: %ld from threads, %ld from jobs, %ld indices ran, seed %llu\n", maps * MAPPERS,
           jobs, ran, (unsigned long long)seed0);
    assert_int_equal(atomic_load(&violations), 0);
    assert_true(ran > 0);
    free(ja);
    crew_pool_destroy(p);
}

int main(void)
{
    seed0 = stress_seed();
    const struct CMUnitTest tests[] = {
        leak_test(test_buffer),
        leak_test(test_buffer_close_race),
        leak_test(test_reserve_on_pool),
        leak_test(test_maps),
    };
    return cmocka_run_group_tests_name("stress_order", tests, NULL, NULL);
}
