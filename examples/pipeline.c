/*
 * pipeline.c - the seeds' document indexer: three stages on a crew_pipeline.
 *
 *   extract  CPU-bound: tokenises a document, counts its words and fingerprints its
 *            terms. As many workers as cores.
 *   embed    I/O-bound: a simulated call to an embedding service of 0.5x to 1.5x EMBED_MS,
 *            waiting on the pipeline's ctx so that a cancel stops it at once. Many workers.
 *   insert   writes to the index: two workers, each with a "connection" of its own that
 *            the stage's worker hooks open and close.
 *
 * The producer (the main thread) generates the documents as it goes, so only those in
 * flight are in memory. Embed is the slow stage: its queue fills, extract's workers wait to
 * pass their output on, extract's queue fills, and the producer blocks in
 * crew_pipeline_send(). That is backpressure: however many documents pass, memory holds at
 * most the queues' capacities plus one document per worker (plus the one in the producer's
 * hand). At the end the program prints each stage's metrics, the producer's blocked time,
 * the peak number of documents alive against that bound, and the resident memory early and
 * late in the run; then it verifies the index in parallel with crew_order_map(), each
 * document regenerated and its fingerprint compared with the one indexed.
 *
 *   pipeline [-t DURATION] [DOCS] [EMBED_WORKERS] [EMBED_MS]
 *            defaults: 5000 documents, 16 embed workers, 2 ms per embed call;
 *            -t cancels the run after DURATION ("300ms", "2s")
 *
 * The last line is "pipeline: ok" when every check held: each document indexed exactly
 * once (after a cancel: at most once, and every document accounted for), the fingerprints
 * right, and never more documents alive than the bound. The exit status is 0 then.
 */
#include <crew.h>

#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { EXTRACT, EMBED, INSERT, STAGES };

static int failures;

static void check(bool ok, const char *what)
{
    if (!ok) {
        printf("FAIL: %s\n", what);
        failures++;
    }
}

/* ---- documents ------------------------------------------------------------------------ */

typedef struct doc {
    unsigned id;
    char *text;           /* the body, freed by extract once read */
    unsigned words;       /* set by extract */
    uint64_t fingerprint; /* set by extract: a hash of the terms, order-independent */
    float vec[8];         /* set by embed */
} doc;

static atomic_long alive;      /* documents allocated and not yet freed */
static atomic_long alive_peak; /* the most at once */

static const char *const vocabulary[] = {
    "worker", "pool",   "queue",  "channel", "context", "deadline", "cancel", "job",
    "result", "stage",  "embed",  "index",   "vector",  "token",    "shard",  "batch",
    "retry",  "limit",  "signal", "drain",   "buffer",  "latency",  "cpu",    "memory",
    "thread", "future", "error",  "order",   "window",  "metric",   "trace",  "span"};
#define VOCAB (sizeof vocabulary / sizeof *vocabulary)

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

/* Document id's text: 200 to 1000 words from the vocabulary, the same every time. */
static char *generate(unsigned id)
{
    uint64_t s = mix(id + 1);
    unsigned n = 200 + (unsigned)(s % 801);
    char *text = malloc((size_t)n * 9 + 1); /* the longest word has 7 letters */
    if (!text)
        return NULL;
    char *p = text;
    for (unsigned i = 0; i < n; i++) {
        s = mix(s);
        const char *w = vocabulary[s % VOCAB];
        size_t len = strlen(w);
        memcpy(p, w, len);
        p += len;
        *p++ = ' ';
    }
    *p = '\0';
    return text;
}

static doc *doc_new(unsigned id)
{
    doc *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->id = id;
    if (!(d->text = generate(id))) {
        free(d);
        return NULL;
    }
    long now = atomic_fetch_add(&alive, 1) + 1;
    long peak = atomic_load(&alive_peak);
    while (now > peak && !atomic_compare_exchange_weak(&alive_peak, &peak, now))
        ;
    return d;
}

static void doc_free(doc *d)
{
    free(d->text);
    free(d);
    atomic_fetch_sub(&alive, 1);
}

/* The words and fingerprint of a text: the CPU-bound part, shared by extract and the
 * verification. */
static void tokenise(const char *text, unsigned *words, uint64_t *fingerprint)
{
    unsigned n = 0;
    uint64_t fp = 0;
    for (const char *p = text; *p;) {
        while (*p == ' ')
            p++;
        if (!*p)
            break;
        uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a of the word */
        for (; *p && *p != ' '; p++)
            h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
        fp += mix(h); /* a sum: the same for the same terms in any order */
        n++;
    }
    *words = n;
    *fingerprint = fp;
}

/* ---- the index ------------------------------------------------------------------------ */

typedef struct entry {
    atomic_int count;     /* times the document was inserted */
    uint64_t fingerprint; /* what insert stored */
    float vec0;           /* the first coordinate of its vector */
} entry;

static entry *index_; /* one entry per document id */

/* An insert worker's connection to the index, opened by the stage's init hook. */
typedef struct conn {
    unsigned worker;
    unsigned long inserts;
} conn;

static atomic_ulong conns_closed_inserts; /* inserts counted by the connections at close */

static int conn_open(void *hook_arg, unsigned worker, void **state)
{
    (void)hook_arg;
    conn *c = calloc(1, sizeof *c);
    if (!c)
        return CREW_ENOMEM;
    c->worker = worker;
    *state = c;
    return 0;
}

static void conn_close(void *hook_arg, unsigned worker, void *state)
{
    (void)hook_arg;
    (void)worker;
    conn *c = state;
    atomic_fetch_add(&conns_closed_inserts, c->inserts);
    free(c);
}

/* ---- the stages ----------------------------------------------------------------------- */

static int extract(crew_ctx *ctx, void *in, void **out, void *arg)
{
    (void)ctx;
    (void)arg;
    doc *d = in;
    tokenise(d->text, &d->words, &d->fingerprint);
    free(d->text); /* the text is not needed further down: memory goes with the work */
    d->text = NULL;
    *out = d;
    return 0;
}

static int64_t embed_ns; /* the mean latency of an embed call */

static int embed(crew_ctx *ctx, void *in, void **out, void *arg)
{
    (void)arg;
    doc *d = in;
    /* The remote call: 0.5x to 1.5x the mean. Waiting on the ctx makes it cancellable. */
    int64_t latency = embed_ns / 2 + (int64_t)(mix(d->id) % (uint64_t)(embed_ns + 1));
    if (crew_ctx_wait(ctx, crew_deadline_in(latency)) == 0) {
        doc_free(d); /* cancelled mid-call: this stage fails the item, so it frees it */
        return crew_ctx_err(ctx);
    }
    uint64_t s = d->fingerprint;
    for (int i = 0; i < 8; i++) {
        s = mix(s);
        d->vec[i] = (float)(s % 2001) / 1000.0f - 1.0f;
    }
    *out = d;
    return 0;
}

static int insert(crew_ctx *ctx, void *in, void **out, void *arg)
{
    (void)ctx;
    (void)arg;
    doc *d = in;
    conn *c = crew_pool_worker_state(); /* this worker's own connection */
    entry *e = &index_[d->id];
    e->fingerprint = d->fingerprint;
    e->vec0 = d->vec[0];
    atomic_fetch_add(&e->count, 1);
    c->inserts++;
    *out = d; /* on to the sink, which frees it */
    return 0;
}

static atomic_long given_up; /* documents the pipeline discarded before insert */

/* The discard callback: stage INSERT + 1 (= STAGES) is the sink, any other a document a
 * cancel left inside. Either way the document is freed here. */
static void discard(void *arg, void *item, size_t stage)
{
    (void)arg;
    if (stage < STAGES)
        atomic_fetch_add(&given_up, 1);
    doc_free(item);
}

/* ---- verification: crew_order_map over the index -------------------------------------- */

typedef struct verify_arg {
    bool cancelled; /* a missing document is fine then */
} verify_arg;

/* Regenerates document i and compares its fingerprint with the index's. */
static int verify(crew_ctx *ctx, size_t i, void *arg)
{
    (void)ctx;
    verify_arg *v = arg;
    entry *e = &index_[i];
    int count = atomic_load(&e->count);
    if (count == 0)
        return v->cancelled ? 0 : -ENOENT;
    if (count > 1)
        return -EEXIST;
    char *text = generate((unsigned)i);
    if (!text)
        return CREW_ENOMEM;
    unsigned words;
    uint64_t fp;
    tokenise(text, &words, &fp);
    free(text);
    return fp == e->fingerprint ? 0 : -EBADMSG;
}

/* ---- reporting ------------------------------------------------------------------------ */

/* Resident memory now (VmRSS) or at its peak (VmHWM), in kB, from /proc/self/status. */
static long rss_kb(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    char line[256];
    long kb = -1;
    size_t klen = strlen(key);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, klen) == 0 && line[klen] == ':')
            kb = strtol(line + klen + 1, NULL, 10);
    fclose(f);
    return kb;
}

static double ms(int64_t ns)
{
    return (double)ns / 1e6;
}

static double us(int64_t ns)
{
    return (double)ns / 1e3;
}

static void print_stages(crew_pipeline *pl, int64_t wall)
{
    printf("\n%-8s %7s %6s %6s %6s %9s %10s %9s %9s %5s %7s\n", "stage", "workers", "in", "out",
           "failed", "discarded", "queue peak", "run p50", "run p99", "idle", "blocked");
    for (size_t i = 0; i < STAGES; i++) {
        crew_stage_stats s;
        crew_pipeline_stage_stats(pl, i, &s);
        char queue[32];
        snprintf(queue, sizeof queue, "%zu/%zu", s.queue_peak, s.queue_cap);
        printf("%-8s %7u %6llu %6llu %6llu %9llu %10s %7.1fus %7.1fus %4.0f%% %6.0f%%\n", s.name,
               s.workers, (unsigned long long)s.in, (unsigned long long)s.out,
               (unsigned long long)s.failed, (unsigned long long)s.discarded, queue,
               us(crew_hist_quantile(&s.run, 0.50)), us(crew_hist_quantile(&s.run, 0.99)),
               100.0 * (double)s.idle_ns / ((double)wall * s.workers),
               100.0 * (double)s.blocked_ns / ((double)wall * s.workers));
    }
    printf("(run: time in the stage function per document; idle: the workers waiting for "
           "input, blocked: waiting to pass a document on to a full queue, in %% of their "
           "time)\n");
}

/* ---- main ----------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    int64_t limit = -1; /* -t: cancel after this long */
    int a = 1;
    if (a + 1 < argc && strcmp(argv[a], "-t") == 0) {
        if (crew_duration_parse(argv[a + 1], &limit) != 0) {
            fprintf(stderr, "pipeline: -t %s: not a duration\n", argv[a + 1]);
            return 2;
        }
        a += 2;
    }
    unsigned ndocs = argc > a ? (unsigned)strtoul(argv[a], NULL, 10) : 5000;
    unsigned embed_workers = argc > a + 1 ? (unsigned)strtoul(argv[a + 1], NULL, 10) : 16;
    double embed_ms = argc > a + 2 ? strtod(argv[a + 2], NULL) : 2.0;
    if (ndocs == 0 || embed_workers == 0 || embed_ms < 0) {
        fprintf(stderr,
                "usage: pipeline [-t DURATION] [DOCS] [EMBED_WORKERS] [EMBED_MS]  (DOCS and "
                "EMBED_WORKERS positive)\n");
        return 2;
    }
    embed_ns = (int64_t)(embed_ms * 1e6);
    /* The index, written through now: the resident memory measured later is then the
     * pipeline's alone (calloc's pages would only become resident as documents land). */
    index_ = malloc((size_t)ndocs * sizeof *index_);
    if (!index_)
        return 1;
    for (unsigned i = 0; i < ndocs; i++) {
        atomic_init(&index_[i].count, 0);
        index_[i].fingerprint = 0;
        index_[i].vec0 = 0;
    }

    /* The run's deadline, if any: the pipeline's parent ctx. */
    crew_ctx *run = NULL;
    if (limit >= 0 && crew_ctx_with_timeout(NULL, limit, &run) != 0)
        return 1;

    unsigned ncpu = crew_ncpu();
    crew_stage stages[STAGES] = {
        [EXTRACT] = {.name = "extract", .fn = extract, .workers = ncpu, .queue = 16},
        [EMBED] = {.name = "embed", .fn = embed, .workers = embed_workers, .queue = 64},
        [INSERT] = {.name = "insert",
                    .fn = insert,
                    .workers = 2,
                    .queue = 8,
                    .init = conn_open,
                    .fini = conn_close},
    };
    /* A sink: insert's outputs go to the discard callback, which frees them. */
    crew_pipeline *pl;
    int rc = crew_pipeline_create(
        &pl, stages, STAGES,
        &(crew_pipeline_opts){.ctx = run, .discard = discard, .flags = CREW_PIPELINE_SINK});
    if (rc) {
        fprintf(stderr, "pipeline: cannot create the pipeline: %s\n", crew_strerror(rc));
        return 1;
    }
    long bound = 1; /* the document in the producer's hand */
    for (size_t i = 0; i < STAGES; i++)
        bound += (long)(stages[i].queue + stages[i].workers);
    printf("pipeline: %u documents; extract %u workers, embed %u workers (%.1f ms a call), "
           "insert 2 workers\n",
           ndocs, ncpu, embed_workers, embed_ms);

    /* Produce. A send blocks while extract's queue is full: that is the backpressure. */
    int64_t t0 = crew_now(), next_report = t0 + 250 * CREW_MSEC;
    long rss_early = -1;
    unsigned sent = 0;
    for (; sent < ndocs; sent++) {
        doc *d = doc_new(sent);
        if (!d) {
            rc = CREW_ENOMEM;
            break;
        }
        if ((rc = crew_pipeline_send(pl, d, CREW_FOREVER, NULL)) != 0) {
            doc_free(d); /* refused: still ours */
            break;
        }
        if (sent + 1 == (ndocs + 9) / 10)
            rss_early = rss_kb("VmRSS");
        if (crew_now() >= next_report) {
            crew_stage_stats s[STAGES];
            for (size_t i = 0; i < STAGES; i++)
                crew_pipeline_stage_stats(pl, i, &s[i]);
            printf("  sent %6u  indexed %6llu  queues %2zu/%zu %2zu/%zu %2zu/%zu  alive %3ld\n",
                   sent + 1, (unsigned long long)s[INSERT].out, s[0].queue_depth, s[0].queue_cap,
                   s[1].queue_depth, s[1].queue_cap, s[2].queue_depth, s[2].queue_cap,
                   atomic_load(&alive));
            next_report += 250 * CREW_MSEC;
        }
    }
    int64_t t_sent = crew_now();
    long rss_late = rss_kb("VmRSS");
    if (rc)
        printf("pipeline: the producer stopped after %u documents: %s\n", sent, crew_strerror(rc));
    crew_pipeline_close(pl); /* CREW_EPIPE if a cancel already closed it */
    int end = crew_pipeline_wait(pl, CREW_FOREVER);
    int64_t wall = crew_now() - t0;
    bool cancelled = end != 0;

    print_stages(pl, wall);
    crew_stage_stats st[STAGES];
    unsigned long long failed = 0;
    for (size_t i = 0; i < STAGES; i++) {
        crew_pipeline_stage_stats(pl, i, &st[i]);
        failed += st[i].failed;
    }
    unsigned long long indexed = st[INSERT].out;
    printf("\nproducer: sent %u documents in %.0f ms, blocked %.0f ms of it in "
           "crew_pipeline_send (backpressure from the embed stage)\n",
           sent, ms(t_sent - t0), ms(st[EXTRACT].in_blocked_ns));
    printf("pipeline: %s after %.0f ms (%s): %llu indexed, %llu failed in a stage, %ld given "
           "up inside\n",
           cancelled ? "cancelled" : "drained", ms(wall), crew_err_name(end), indexed, failed,
           atomic_load(&given_up));
    printf("in flight: at most %ld documents alive at once, bound %ld (queues and workers, and "
           "the one in the producer's hand)\n",
           atomic_load(&alive_peak), bound);
    if (rss_early >= 0)
        printf("memory: resident %ld kB after a tenth of the documents were sent, %ld kB after "
               "all of them; peak %ld kB\n",
               rss_early, rss_late, rss_kb("VmHWM"));
    crew_pipeline_destroy(pl); /* joins the workers: the insert connections close here */
    crew_ctx_release(run);

    /* Verify the index in parallel: slot i of errs gets document i's verdict. */
    int *errs = calloc(ndocs, sizeof *errs);
    crew_pool *pool;
    if (!errs || crew_pool_create(&pool, &(crew_pool_opts){.name = "verify"}) != 0)
        return 1;
    verify_arg va = {cancelled};
    int vrc = crew_order_map(pool, verify, &va, ndocs, errs, CREW_FOREVER, NULL);
    crew_pool_destroy(pool);
    unsigned missing = 0, twice = 0, wrong = 0;
    for (unsigned i = 0; i < ndocs; i++) {
        int count = atomic_load(&index_[i].count);
        missing += count == 0;
        twice += count > 1;
        wrong += errs[i] == -EBADMSG;
    }
    printf("verify: %u documents checked on %u workers with crew_order_map: %u missing, %u "
           "indexed twice, %u with a wrong fingerprint (first error: %s)\n",
           ndocs, ncpu, missing, twice, wrong, vrc ? crew_strerror(vrc) : "none");

    /* The checks. */
    check(vrc == 0, "the index does not verify");
    check(atomic_load(&alive_peak) <= bound, "more documents alive than the bound");
    check(atomic_load(&alive) == 0, "documents leaked");
    check(atomic_load(&conns_closed_inserts) == indexed, "the connections miscounted inserts");
    check((unsigned long long)sent == indexed + failed + (unsigned long long)given_up,
          "a document sent was not accounted for");
    if (!cancelled) {
        check(end == 0 && sent == ndocs && indexed == ndocs && missing == 0,
              "not every document was indexed");
        printf("every document indexed exactly once\n");
    } else {
        check(limit >= 0 && end == CREW_ETIMEDOUT, "cancelled without a -t deadline");
        printf("every document accounted for: indexed at most once, or given up\n");
    }
    free(errs);
    free(index_);
    if (failures)
        return 1;
    printf("pipeline: ok\n");
    return 0;
}
