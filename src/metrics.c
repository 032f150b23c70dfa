/*
 * metrics.c - latency histograms and the Prometheus text exposition.
 *
 * Histograms are log-linear over nanoseconds (HdrHistogram's shape, at 3 bits of
 * precision): values 0..15 have a bucket each; above that, every power of two [2^e, 2^e+1)
 * is cut into CREW_HIST_SUB = 8 equal sub-buckets, so a bucket is at most 1/8 = 12.5% as
 * wide as its lower bound. For v >= 16 with e = floor(log2 v), the bucket is
 * 16 + (e-4)*8 + ((v >> (e-3)) & 7), which simplifies to (e-3)*8 + (v >> (e-3)) because
 * v >> (e-3) lies in [8, 15]: one count-leading-zeros, one shift, one add. The last bucket,
 * 319, starts at 15 * 2^38 ns and also takes every value past 2^42 - 1 ns (73 minutes), so
 * its upper bound is INT64_MAX.
 *
 * Threads. A pool keeps one crew__hist per worker; only that worker writes it
 * (crew__hist_add), while any thread may read it (crew__hist_merge, from crew_pool_stats).
 * With a single writer, an increment needs no read-modify-write: a relaxed load and a
 * relaxed store of each field, no lock and no locked instruction, so recording costs a few
 * plain instructions on the job path. Each field read alone is exact and never goes
 * backwards (per-location coherence); the fields are not read together atomically, so a
 * snapshot taken while the writer runs may see a bucket before the matching sum. To keep
 * every snapshot internally consistent where it matters (the quantiles and Prometheus's
 * "+Inf bucket == _count"), merge derives count from the buckets it read rather than from
 * the writer's count field.
 *
 * crew_hist (the public, plain struct) is for one thread at a time; crew_hist_record is its
 * single-threaded recorder.
 *
 * The Prometheus writer holds no state: it formats the snapshots it is given, checking the
 * stream after every write and stopping at the first failure. It allocates nothing.
 */
#include "internal.h"

#include <inttypes.h>
#include <string.h>

/* Values below this have a bucket each. */
#define EXACT_LIMIT 16
/* The last bucket: the overflow bucket, whose upper bound is INT64_MAX. */
#define LAST_BUCKET (CREW_HIST_BUCKETS - 1)

_Static_assert(CREW_HIST_SUB == 8, "bucket math assumes 3 sub-bucket bits");
_Static_assert(CREW_HIST_BUCKETS == 320, "the last bucket starts at 15 * 2^38 ns");
_Static_assert(sizeof(unsigned long long) == sizeof(uint64_t), "clzll works on 64 bits");

/* The bucket of ns: the shared, branch-light core of every recorder. */
static inline size_t bucket_index(int64_t ns)
{
    if (ns < EXACT_LIMIT)
        return ns < 0 ? 0 : (size_t)ns;
    unsigned shift = (unsigned)(63 - __builtin_clzll((unsigned long long)ns)) - 3; /* e - 3 */
    size_t b = ((size_t)shift << 3) + (size_t)((uint64_t)ns >> shift);
    return b < LAST_BUCKET ? b : LAST_BUCKET;
}

int64_t crew_hist_bucket_max(size_t i)
{
    if (i < EXACT_LIMIT)
        return (int64_t)i;
    if (i >= LAST_BUCKET)
        return INT64_MAX;
    unsigned e = 4 + (unsigned)((i - EXACT_LIMIT) / CREW_HIST_SUB);
    int64_t s = (int64_t)((i - EXACT_LIMIT) % CREW_HIST_SUB);
    return ((CREW_HIST_SUB + s + 1) << (e - 3)) - 1;
}

size_t crew_hist_bucket_of(int64_t ns)
{
    return bucket_index(ns);
}

void crew_hist_record(crew_hist *h, int64_t ns)
{
    h->buckets[bucket_index(ns)]++;
    h->sum += ns < 0 ? 0 : (uint64_t)ns;
    h->count++;
}

int64_t crew_hist_quantile(const crew_hist *h, double q)
{
    if (!h || h->count == 0)
        return 0;
    /* !(q > 0) also catches NaN. */
    if (!(q > 0))
        q = 0;
    if (q > 1)
        q = 1;
    /* The 1-based rank of the wanted observation: ceil(q * count), at least the first. */
    double r = q * (double)h->count;
    uint64_t rank = h->count;
    if (r < (double)h->count) { /* also keeps the conversion below in range */
        rank = (uint64_t)r;
        if ((double)rank < r)
            rank++;
        if (rank == 0)
            rank = 1;
        if (rank > h->count) /* (double)count rounded up, past 2^53 */
            rank = h->count;
    }
    uint64_t seen = 0;
    size_t last = 0;
    for (size_t i = 0; i < CREW_HIST_BUCKETS; i++) {
        if (h->buckets[i] == 0)
            continue;
        seen += h->buckets[i];
        last = i;
        if (seen >= rank)
            return crew_hist_bucket_max(i);
    }
    /* The buckets hold fewer observations than count says (a hand-made h): answer with
     * the highest bucket that holds any, or 0 if none does. */
    return seen ? crew_hist_bucket_max(last) : 0;
}

void crew__hist_add(crew__hist *h, int64_t ns)
{
    crew__count(&h->buckets[bucket_index(ns)], 1);
    crew__count(&h->sum, ns < 0 ? 0 : (uint64_t)ns);
    crew__count(&h->count, 1);
}

void crew__hist_merge(crew_hist *out, const crew__hist *h)
{
    uint64_t n = 0;
    for (size_t i = 0; i < CREW_HIST_BUCKETS; i++) {
        /* The atomics are only read, but C11's atomic_load takes a non-const pointer. */
        uint64_t c = atomic_load_explicit((_Atomic uint64_t *)&h->buckets[i], memory_order_relaxed);
        out->buckets[i] += c;
        n += c;
    }
    out->count += n;
    out->sum += atomic_load_explicit((_Atomic uint64_t *)&h->sum, memory_order_relaxed);
}

/* ---- Prometheus text exposition, format 0.0.4 --------------------------------------------
 *
 * One family at a time: its # HELP and # TYPE lines, then one sample per snapshot labelled
 * pool="name". Histogram boundaries are le = 2^k ns for k = 10..40 (1.024 us to about
 * 18 minutes). Each such boundary is the start of a bucket, bucket_max(j) == 2^k - 1 for
 * j = (k-2)*8 - 1, so the cumulative count at le = 2^k ns is exact for the integer
 * nanoseconds recorded, except that an observation of exactly 2^k ns is counted in the next
 * boundary up (an error of 1 ns in the boundary, far below clock resolution).
 */

#define LE_FIRST 10 /* smallest boundary: 2^10 ns */
#define LE_LAST  40 /* largest boundary: 2^40 ns */

/* A stream and whether every write to it so far succeeded. */
typedef struct writer {
    FILE *f; /* the caller's stream; used only by this call */
    bool ok; /* false after the first failed write: later writes are skipped */
} writer;

static void put(writer *w, const char *s)
{
    if (w->ok && fputs(s, w->f) == EOF)
        w->ok = false;
}

static void put_u64(writer *w, uint64_t v)
{
    if (w->ok && fprintf(w->f, "%" PRIu64, v) < 0)
        w->ok = false;
}

/* Writes ns as seconds in exact decimal ("0.000001024", "1099.511627776", "3"): no
 * rounding, and the same text on every platform. */
static void put_seconds(writer *w, uint64_t ns)
{
    char frac[16];
    uint64_t whole = ns / (uint64_t)CREW_SEC, part = ns % (uint64_t)CREW_SEC;
    if (part == 0) {
        put_u64(w, whole);
        return;
    }
    int len = snprintf(frac, sizeof frac, "%09" PRIu64, part);
    crew_assert(len == 9);
    while (frac[len - 1] == '0')
        frac[--len] = '\0';
    if (w->ok && fprintf(w->f, "%" PRIu64 ".%s", whole, frac) < 0)
        w->ok = false;
}

/* Writes the label value of a pool's name, escaped as the format asks (backslash, double
 * quote and newline); an empty name becomes "pool". The name need not be NUL-terminated
 * within its 64 bytes. */
static void put_pool_label(writer *w, const crew_stats *s)
{
    size_t len = strnlen(s->name, sizeof s->name);
    put(w, "pool=\"");
    if (len == 0)
        put(w, "pool");
    for (size_t i = 0; i < len && w->ok; i++) {
        char c = s->name[i];
        int rc;
        if (c == '\\')
            rc = fputs("\\\\", w->f);
        else if (c == '"')
            rc = fputs("\\\"", w->f);
        else if (c == '\n')
            rc = fputs("\\n", w->f);
        else
            rc = fputc((unsigned char)c, w->f);
        if (rc == EOF)
            w->ok = false;
    }
    put(w, "\"");
}

static void put_family_header(writer *w, const char *name, const char *type, const char *help)
{
    if (w->ok && fprintf(w->f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type) < 0)
        w->ok = false;
}

/* A counter or gauge: one sample per snapshot, the uint64_t at byte offset off of it. */
typedef struct scalar_family {
    const char *name; /* the metric's name */
    const char *type; /* "counter" or "gauge" */
    const char *help; /* the # HELP text: no backslash or newline */
    size_t off;       /* offsetof(crew_stats, field) */
} scalar_family;

static const scalar_family scalars[] = {
    {"crew_jobs_submitted_total", "counter", "Jobs accepted by the pool.",
     offsetof(crew_stats, submitted)},
    {"crew_jobs_rejected_total", "counter", "Submits refused, whatever the reason.",
     offsetof(crew_stats, rejected)},
    {"crew_jobs_started_total", "counter", "Jobs whose function was called.",
     offsetof(crew_stats, started)},
    {"crew_jobs_succeeded_total", "counter", "Jobs that returned 0.",
     offsetof(crew_stats, succeeded)},
    {"crew_jobs_failed_total", "counter", "Jobs that returned an error.",
     offsetof(crew_stats, failed)},
    {"crew_jobs_cancelled_total", "counter", "Jobs cancelled while running or dropped unrun.",
     offsetof(crew_stats, cancelled)},
    {"crew_jobs_timed_out_total", "counter",
     "Jobs that ran past their run budget or waited past their queue budget.",
     offsetof(crew_stats, timed_out)},
    {"crew_jobs_retried_total", "counter",
     "Further tries of failed jobs under a retry policy (a job is started once).",
     offsetof(crew_stats, retried)},
    {"crew_queue_depth", "gauge", "Jobs accepted and not yet taken by a worker.",
     offsetof(crew_stats, queued)},
    {"crew_busy_workers", "gauge", "Workers running a job.", offsetof(crew_stats, running)},
    {"crew_live_workers", "gauge", "Live worker threads.", offsetof(crew_stats, workers)},
};

static void put_scalar_family(writer *w, const scalar_family *fam, const crew_stats *const *stats,
                              size_t n)
{
    put_family_header(w, fam->name, fam->type, fam->help);
    for (size_t i = 0; i < n; i++) {
        uint64_t v;
        memcpy(&v, (const char *)stats[i] + fam->off, sizeof v);
        put(w, fam->name);
        put(w, "{");
        put_pool_label(w, stats[i]);
        put(w, "} ");
        put_u64(w, v);
        put(w, "\n");
    }
}

/* One histogram sample line: name+suffix{pool="...",le="..."} value. le_ns < 0 means no le
 * label, INT64_MAX means le="+Inf". */
static void put_hist_line(writer *w, const char *name, const char *suffix, const crew_stats *s,
                          int64_t le_ns)
{
    put(w, name);
    put(w, suffix);
    put(w, "{");
    put_pool_label(w, s);
    if (le_ns == INT64_MAX) {
        put(w, ",le=\"+Inf\"");
    } else if (le_ns >= 0) {
        put(w, ",le=\"");
        put_seconds(w, (uint64_t)le_ns);
        put(w, "\"");
    }
    put(w, "} ");
}

static void put_hist_family(writer *w, const char *name, const char *help, size_t off,
                            const crew_stats *const *stats, size_t n)
{
    size_t timed = 0;
    for (size_t i = 0; i < n; i++)
        timed += !stats[i]->untimed;
    if (n > 0 && timed == 0)
        return; /* no pool measured times: no family rather than empty histograms */
    put_family_header(w, name, "histogram", help);
    for (size_t i = 0; i < n; i++) {
        if (stats[i]->untimed)
            continue;
        const crew_hist *h = (const crew_hist *)((const char *)stats[i] + off);
        uint64_t cum = 0;
        size_t next = 0; /* the first bucket not yet added into cum */
        for (unsigned k = LE_FIRST; k <= LE_LAST; k++) {
            /* Buckets up to and including the one ending at 2^k - 1 ns. */
            size_t end = ((size_t)k - 2) * CREW_HIST_SUB;
            crew_assert(crew_hist_bucket_max(end - 1) == ((int64_t)1 << k) - 1);
            for (; next < end; next++)
                cum += h->buckets[next];
            put_hist_line(w, name, "_bucket", stats[i], (int64_t)1 << k);
            /* A hand-made h may hold more in its buckets than its count says: keep every
             * line at most _count, so the series stays a valid cumulative histogram. */
            put_u64(w, cum < h->count ? cum : h->count);
            put(w, "\n");
        }
        put_hist_line(w, name, "_bucket", stats[i], INT64_MAX);
        put_u64(w, h->count);
        put(w, "\n");
        put_hist_line(w, name, "_sum", stats[i], -1);
        put_seconds(w, h->sum);
        put(w, "\n");
        put_hist_line(w, name, "_count", stats[i], -1);
        put_u64(w, h->count);
        put(w, "\n");
    }
}

int crew_prometheus_write(FILE *f, const crew_stats *const *stats, size_t n)
{
    if (!f || (n > 0 && !stats))
        return CREW_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!stats[i])
            return CREW_EINVAL;
    writer w = {f, !ferror(f)};
    for (size_t i = 0; i < sizeof scalars / sizeof scalars[0]; i++)
        put_scalar_family(&w, &scalars[i], stats, n);
    put_hist_family(&w, "crew_queue_wait_seconds",
                    "Time from submit until a worker took the job (or it was dropped).",
                    offsetof(crew_stats, wait), stats, n);
    put_hist_family(&w, "crew_run_seconds", "Time spent inside the job's function.",
                    offsetof(crew_stats, run), stats, n);
    /* Push the text out so a failing device shows now, not at the caller's fclose. */
    if (w.ok && fflush(f) == EOF)
        w.ok = false;
    return w.ok && !ferror(f) ? 0 : CREW_EINVAL;
}
