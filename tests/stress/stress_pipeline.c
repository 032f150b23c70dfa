/*
 * Stress test for src/pipeline.c: rounds of random pipelines (1 to 4 stages, 1 to 4
 * workers each, queues and output from no buffer to a few slots, plain, ordered or sink)
 * fed by several producers and read by several consumers, each call of a random kind
 * (blocking, try, deadline, a shared ctx that a chaos thread keeps cancelling, a per-call
 * ctx that times out). Stage functions pass, drop, sometimes fail, and take varying time.
 * Some rounds end with a close, some with a cancel at a random moment, some with a stage
 * error.
 *
 * What must hold: every item a send accepted ends exactly once (received, dropped, failed
 * or discarded, the discard callback told the stage it was going to), no item whose send
 * failed is ever seen; the stage stats add up to the items sent; wait returns 0 after a
 * close, the cancel's cause or the stage's error otherwise; in an ordered round each
 * consumer sees each producer's items in the order they were sent; a round's threads all
 * exit. Helper threads never assert: they count violations. CREW_STRESS_SEED replays a run.
 */
#include "internal.h"
#include "testutil.h"

#include "stress/calls.h"

#include <string.h>

#define PRODUCERS  3
#define CONSUMERS  2
#define MAX_STAGES 4
#define MAX_ITEMS  3000

enum { LIVE, DELIVERED, DROPPED, FAILED, DISCARDED };

typedef struct tok {
    long id; /* producer = id % PRODUCERS */
    size_t at;
    _Atomic int fate;
} tok;

static tok toks[MAX_ITEMS];
static _Atomic long violations;
static uint64_t seed0;

static void violation(const char *what, long a, long b)
{
    if (atomic_fetch_add(&violations, 1) < 10)
        fprintf(stderr, "violation: %s (%ld, %ld), seed %llu\n", what, a, b,
                (unsigned long long)seed0);
}

static void set_fate(tok *t, int fate)
{
    int live = LIVE;
    if (!atomic_compare_exchange_strong(&t->fate, &live, fate))
        violation("an item accounted twice", t->id, fate);
}

/* A round's shape and its shared state. */
typedef struct round {
    crew_pipeline *pl;
    size_t n;          /* stages */
    unsigned flags;    /* CREW_PIPELINE_* */
    long items;        /* ids 0..items-1 */
    long fail_id;      /* the item whose stage fails (-1: none) */
    size_t fail_stage; /* where */
    uint8_t sent[MAX_ITEMS];
    _Atomic int producing;
    calls calls; /* the kinds of call, and the chaos thread */
} round;

typedef struct stage_arg {
    round *r;
    size_t idx;
} stage_arg;

static int stage_fn(crew_ctx *ctx, void *in, void **out, void *arg)
{
    stage_arg *s = arg;
    tok *t = in;
    if (t->at != s->idx)
        violation("an item at the wrong stage", t->id, (long)s->idx);
    uint64_t h = (uint64_t)t->id * 0x9E3779B97F4A7C15ull + s->idx;
    for (uint64_t k = 0; k < (h >> 40) % 500; k++)
        crew__cpu_relax();
    if (t->id == s->r->fail_id && s->idx == s->r->fail_stage) {
        set_fate(t, FAILED);
        return -EIO;
    }
    if ((h >> 20) % 13 == 0) {
        set_fate(t, DROPPED);
        return 0;
    }
    if ((h >> 30) % 31 == 0 && crew_ctx_done(ctx)) {
        /* Noticed the cancel: drop it rather than pass it on. */
        set_fate(t, DROPPED);
        return 0;
    }
    t->at++;
    *out = t;
    return 0;
}

static void on_discard(void *arg, void *item, size_t stage)
{
    (void)arg;
    tok *t = item;
    if (t->at != stage)
        violation("discarded with the wrong stage", t->id, (long)stage);
    set_fate(t, DISCARDED);
}

typedef struct actor {
    round *r;
    unsigned idx;
    uint64_t seed;
    long count;
    pthread_t tid;
} actor;

static void *producer(void *arg)
{
    actor *a = arg;
    round *r = a->r;
    for (long id = a->idx; id < r->items; id += PRODUCERS) {
        for (;;) {
            int64_t deadline;
            crew_ctx *ctx;
            int mode = calls_pick(&r->calls, &a->seed, &deadline, &ctx);
            int rc = crew_pipeline_send(r->pl, &toks[id], deadline, ctx);
            crew_ctx_release(ctx);
            if (rc == 0) {
                r->sent[id] = 1;
                a->count++;
                break;
            }
            if (rc == CREW_EPIPE || rc == CREW_ECANCELED) {
                /* The pipeline was cancelled (a cancel also closes the input): stop. A ctx
                 * of ours may say CREW_ECANCELED too; then try again. */
                if (mode == MODE_SHARED_CTX && rc == CREW_ECANCELED &&
                    crew_pipeline_wait(r->pl, CREW_NOW) == CREW_EAGAIN)
                    continue;
                goto out;
            }
            if (!calls_allowed(mode, rc))
                violation("send returned an unexpected code", mode, rc);
            if (rc == CREW_EAGAIN)
                sched_yield();
        }
    }
out:
    /* The last producer out closes the input: the normal end. */
    if (atomic_fetch_sub(&r->producing, 1) == 1)
        (void)crew_pipeline_close(r->pl);
    return NULL;
}

static void *consumer(void *arg)
{
    actor *a = arg;
    round *r = a->r;
    long last[PRODUCERS];
    for (int p = 0; p < PRODUCERS; p++)
        last[p] = -1;
    for (;;) {
        int64_t deadline;
        crew_ctx *ctx;
        int mode = calls_pick(&r->calls, &a->seed, &deadline, &ctx);
        void *item = NULL;
        int rc = crew_pipeline_recv(r->pl, &item, deadline, ctx);
        crew_ctx_release(ctx);
        if (rc == CREW_EPIPE)
            break;
        if (rc == CREW_ECANCELED &&
            (mode != MODE_SHARED_CTX || crew_pipeline_wait(r->pl, CREW_NOW) != CREW_EAGAIN))
            break; /* the pipeline's end, not our ctx's */
        if (rc == CREW_ECANCELED)
            continue; /* ours, or the pipeline's on its way to the end: ask again */
        if (rc) {
            if (!calls_allowed(mode, rc))
                violation("recv returned an unexpected code", mode, rc);
            if (rc == CREW_EAGAIN)
                sched_yield();
            continue;
        }
        tok *t = item;
        if (t->at != r->n)
            violation("received before the last stage", t->id, (long)t->at);
        int p = (int)(t->id % PRODUCERS);
        if ((r->flags & CREW_PIPELINE_ORDERED) && t->id <= last[p])
            violation("ordered output out of order", t->id, last[p]);
        last[p] = t->id;
        set_fate(t, DELIVERED);
        a->count++;
    }
    return NULL;
}

static void one_round(uint64_t seed, long round_no)
{
    static round r;
    memset(&r, 0, sizeof r);
    uint64_t s = seed;
    r.n = 1 + rng_next(&s) % MAX_STAGES;
    uint64_t kind = rng_next(&s) % 10;
    r.flags = kind < 3 ? CREW_PIPELINE_ORDERED : kind < 5 ? CREW_PIPELINE_SINK : 0;
    r.items = 200 + (long)(rng_next(&s) % (MAX_ITEMS - 200));
    uint64_t ending = rng_next(&s) % 4; /* 0, 1: close; 2: cancel; 3: a stage error */
    r.fail_id = ending == 3 ? (long)(rng_next(&s) % (uint64_t)r.items) : -1;
    r.fail_stage = (size_t)(rng_next(&s) % r.n);
    for (long i = 0; i < r.items; i++) {
        toks[i].id = i;
        toks[i].at = 0;
        atomic_store(&toks[i].fate, LIVE);
    }

    crew_stage st[MAX_STAGES];
    stage_arg sa[MAX_STAGES];
    for (size_t i = 0; i < r.n; i++) {
        sa[i] = (stage_arg){&r, i};
        st[i] = (crew_stage){.fn = stage_fn,
                             .arg = &sa[i],
                             .workers = 1 + (unsigned)(rng_next(&s) % 4),
                             .queue = (size_t)(rng_next(&s) % 5)};
    }
    crew_pipeline_opts o = {.output_cap = (size_t)(rng_next(&s) % 4),
                            .discard = on_discard,
                            .flags = r.flags,
                            .window = rng_next(&s) % 2 ? 0 : 1 + (size_t)(rng_next(&s) % 8)};
    assert_int_equal(crew_pipeline_create(&r.pl, st, r.n, &o), 0);
    atomic_init(&r.producing, PRODUCERS);

    actor prod[PRODUCERS], cons[CONSUMERS];
    calls_start(&r.calls, s ^ 0xC4A05);
    unsigned nc = (r.flags & CREW_PIPELINE_SINK) ? 0 : CONSUMERS;
    for (unsigned i = 0; i < nc; i++) {
        cons[i] = (actor){&r, i, s * 31 + i + 1, 0, 0};
        assert_int_equal(pthread_create(&cons[i].tid, NULL, consumer, &cons[i]), 0);
    }
    for (unsigned i = 0; i < PRODUCERS; i++) {
        prod[i] = (actor){&r, i, s * 17 + i + 101, 0, 0};
        assert_int_equal(pthread_create(&prod[i].tid, NULL, producer, &prod[i]), 0);
    }
    if (ending == 2) {
        /* Cancel at a random moment: after a random share of the items went through. */
        long at = (long)(rng_next(&s) % (uint64_t)r.items);
        int64_t until = crew_deadline_in(30 * CREW_SEC);
        crew_stage_stats last;
        while (crew_pipeline_stage_stats(r.pl, r.n - 1, &last) == 0 &&
               (long)(last.in + last.dropped) < at && atomic_load(&r.producing) > 0 &&
               crew_now() < until)
            sched_yield();
        crew_pipeline_cancel(r.pl, CREW_EBUSY);
    }
    for (unsigned i = 0; i < PRODUCERS; i++)
        assert_int_equal(pthread_join(prod[i].tid, NULL), 0);
    for (unsigned i = 0; i < nc; i++)
        assert_int_equal(pthread_join(cons[i].tid, NULL), 0);
    int rc = crew_pipeline_wait(r.pl, CREW_FOREVER);
    calls_stop(&r.calls);

    /* The outcome: a cancel's cause, the stage's error (if its item got there before a
     * close ended the round), else 0. */
    bool failed = r.fail_id >= 0 && atomic_load(&toks[r.fail_id].fate) == FAILED;
    int want = ending == 2 ? CREW_EBUSY : failed ? -EIO : 0;
    if (ending == 2 && rc == 0)
        want = 0; /* everything had drained before the cancel */
    if (rc != want)
        violation("wait returned an unexpected code", rc, want);

    long sent = 0, by_fate[5] = {0};
    for (long i = 0; i < r.items; i++) {
        int f = atomic_load(&toks[i].fate);
        sent += r.sent[i];
        by_fate[f]++;
        if (r.sent[i] && f == LIVE)
            violation("an item lost", i, 0);
        if (!r.sent[i] && f != LIVE)
            violation("an item seen though its send failed", i, f);
    }
    uint64_t sum = (uint64_t)by_fate[DELIVERED];
    for (size_t i = 0; i < r.n; i++) {
        crew_stage_stats ss;
        assert_int_equal(crew_pipeline_stage_stats(r.pl, i, &ss), 0);
        sum += ss.dropped + ss.failed + ss.discarded;
        if (i == r.n - 1 && (r.flags & CREW_PIPELINE_SINK))
            sum += ss.out;
        if (ss.busy || ss.queue_depth)
            violation("a finished stage still busy or queued", (long)i, (long)ss.busy);
    }
    if (sum != (uint64_t)sent)
        violation("stats do not add up to the items sent", (long)sum, sent);
    if (atomic_load(&violations) && getenv("CREW_STRESS_VERBOSE"))
        printf("round %ld: %zu stages, flags %u, ending %d, items %ld, fail %ld at %zu, rc %d\n",
               round_no, r.n, r.flags, (int)ending, r.items, r.fail_id, r.fail_stage, rc);
    if (atomic_load(&violations))
        fail_msg("round %ld (seed %llu): %ld violations", round_no, (unsigned long long)seed,
                 (long)atomic_load(&violations));
    if (round_no % 10 == 0 || getenv("CREW_STRESS_VERBOSE"))
        printf("round %ld: %zu stages, flags %u, %ld items, %ld sent, %ld delivered, "
               "%ld dropped, %ld failed, %ld discarded, end %d, seed %llu\n",
               round_no, r.n, r.flags, r.items, sent, by_fate[DELIVERED], by_fate[DROPPED],
               by_fate[FAILED], by_fate[DISCARDED], rc, (unsigned long long)seed);
    crew_pipeline_destroy(r.pl);
}

static void test_rounds(void **state)
{
    (void)state;
    long rounds = stress_scaled(40);
    for (long k = 0; k < rounds; k++)
        one_round(seed0 + (uint64_t)k * 0x9E37, k);
}

int main(void)
{
    seed0 = stress_seed();
    const struct CMUnitTest tests[] = {
        leak_test(test_rounds),
    };
    return cmocka_run_group_tests_name("stress_pipeline", tests, NULL, NULL);
}
