/* Tests for src/metrics.c: bucket math, quantiles, the single-writer histogram, and the
 * Prometheus text, read back by a strict parser of the exposition format. */
#include "internal.h"
#include "testutil.h"

#include <ctype.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define NBUCKETS CREW_HIST_BUCKETS

/* ---- bucket math ------------------------------------------------------------------------ */

/* The bucket of v as the specification says it, with a loop for log2: a reference that
 * shares no code with the library's count-leading-zeros version. */
static size_t ref_bucket(int64_t v)
{
    if (v < 0)
        v = 0;
    if (v < 16)
        return (size_t)v;
    int e = 0;
    while ((v >> (e + 1)) != 0)
        e++;
    size_t b = 16 + (size_t)(e - 4) * 8 + (size_t)((v >> (e - 3)) & 7);
    return b < NBUCKETS - 1 ? b : NBUCKETS - 1;
}

static void test_bucket_bounds(void **state)
{
    (void)state;
    for (size_t i = 0; i < NBUCKETS - 1; i++) {
        int64_t max = crew_hist_bucket_max(i);
        assert_int_equal(crew_hist_bucket_of(max), i);
        assert_int_equal(crew_hist_bucket_of(max + 1), i + 1);
        if (i > 0)
            assert_true(max > crew_hist_bucket_max(i - 1));
        if (i < 16) {
            assert_int_equal(max, (int64_t)i); /* exact buckets */
        } else {
            /* Width (max - lower + 1) at most 12.5% of the lower bound. */
            int64_t lower = crew_hist_bucket_max(i - 1) + 1;
            assert_true((max - lower + 1) * 8 <= lower);
            /* The spec's closed form. */
            int e = 4 + (int)(i - 16) / 8, s = (int)(i - 16) % 8;
            assert_int_equal(max, ((int64_t)(8 + s + 1) << (e - 3)) - 1);
        }
    }
    /* Bucket 319 would be the last regular one, [15 << 38, 2^42 - 1]; it takes the
     * overflow too. */
    assert_int_equal(crew_hist_bucket_max(NBUCKETS - 2), ((int64_t)15 << 38) - 1);
    assert_int_equal(crew_hist_bucket_of((int64_t)15 << 38), NBUCKETS - 1);
    assert_int_equal(crew_hist_bucket_of(((int64_t)1 << 42) - 1), NBUCKETS - 1);
    assert_int_equal(crew_hist_bucket_max(NBUCKETS - 1), INT64_MAX);
    assert_int_equal(crew_hist_bucket_max(NBUCKETS), INT64_MAX); /* out of range */
    assert_int_equal(crew_hist_bucket_max(SIZE_MAX), INT64_MAX);
    assert_int_equal(crew_hist_bucket_of((int64_t)1 << 42), NBUCKETS - 1);
    assert_int_equal(crew_hist_bucket_of(INT64_MAX), NBUCKETS - 1);
    assert_int_equal(crew_hist_bucket_of(-1), 0);
    assert_int_equal(crew_hist_bucket_of(INT64_MIN), 0);
    assert_int_equal(crew_hist_bucket_of(16), 16);
    assert_int_equal(crew_hist_bucket_of(17), 16);
    assert_int_equal(crew_hist_bucket_of(18), 17);
    /* Every power of two from 16 ns up starts a bucket: the Prometheus boundaries. */
    for (int k = 4; k <= 41; k++)
        assert_int_equal(crew_hist_bucket_max((size_t)(k - 2) * 8 - 1), ((int64_t)1 << k) - 1);
}

static void test_bucket_of_matches_reference(void **state)
{
    (void)state;
    size_t prev = 0;
    for (int64_t v = -5; v < 200000; v++) {
        size_t b = crew_hist_bucket_of(v);
        assert_int_equal(b, ref_bucket(v));
        assert_true(b >= prev); /* monotonic */
        prev = b;
    }
    uint64_t seed = 0x9E3779B97F4A7C15ULL;
    for (int i = 0; i < 200000; i++) {
        uint64_t r = rng_next(&seed);
        int64_t v = (int64_t)(r >> (r & 63)); /* spread over every magnitude */
        size_t b = crew_hist_bucket_of(v);
        assert_int_equal(b, ref_bucket(v));
        int64_t vv = v < 0 ? 0 : v;
        assert_true(vv <= crew_hist_bucket_max(b));
        if (b > 0)
            assert_true(vv > crew_hist_bucket_max(b - 1));
    }
}

/* ---- record and quantile ---------------------------------------------------------------- */

static void test_quantile_known(void **state)
{
    (void)state;
    crew_hist *h = calloc(1, sizeof *h);
    assert_non_null(h);
    for (int64_t us = 1; us <= 1000; us++)
        crew_hist_record(h, us * CREW_USEC);
    assert_int_equal(h->count, 1000);
    assert_int_equal(h->sum, 500500 * CREW_USEC);

    int64_t p50 = crew_hist_quantile(h, 0.5);
    assert_int_equal(p50, crew_hist_bucket_max(crew_hist_bucket_of(500 * CREW_USEC)));
    assert_true(p50 >= 500 * CREW_USEC && p50 <= 500 * CREW_USEC * 9 / 8);
    int64_t p99 = crew_hist_quantile(h, 0.99);
    assert_int_equal(p99, crew_hist_bucket_max(crew_hist_bucket_of(990 * CREW_USEC)));
    assert_true(p99 >= 990 * CREW_USEC && p99 <= 990 * CREW_USEC * 9 / 8);
    /* q = 0 is the first non-empty bucket, q = 1 the last; out-of-range q is clamped. */
    int64_t lo = crew_hist_bucket_max(crew_hist_bucket_of(CREW_USEC));
    int64_t hi = crew_hist_bucket_max(crew_hist_bucket_of(1000 * CREW_USEC));
    assert_int_equal(crew_hist_quantile(h, 0), lo);
    assert_int_equal(crew_hist_quantile(h, -3), lo);
    assert_int_equal(crew_hist_quantile(h, NAN), lo);
    assert_int_equal(crew_hist_quantile(h, 1), hi);
    assert_int_equal(crew_hist_quantile(h, 7), hi);
    assert_int_equal(crew_hist_quantile(h, 0.001), lo); /* rank 1 */
    /* Rank ceil(0.0015 * 1000) = 2: the bucket of 2 us. */
    assert_int_equal(crew_hist_quantile(h, 0.0015),
                     crew_hist_bucket_max(crew_hist_bucket_of(2 * CREW_USEC)));
    /* Quantiles never decrease with q. */
    int64_t prev = 0;
    for (int i = 0; i <= 100; i++) {
        int64_t v = crew_hist_quantile(h, i / 100.0);
        assert_true(v >= prev);
        prev = v;
    }
    free(h);
}

static void test_quantile_edges(void **state)
{
    (void)state;
    crew_hist h;
    memset(&h, 0, sizeof h);
    assert_int_equal(crew_hist_quantile(&h, 0.5), 0); /* empty */
    assert_int_equal(crew_hist_quantile(&h, 0), 0);
    assert_int_equal(crew_hist_quantile(NULL, 0.5), 0);

    crew_hist_record(&h, 12345); /* one value: every quantile is its bucket */
    int64_t b = crew_hist_bucket_max(crew_hist_bucket_of(12345));
    assert_true(b >= 12345 && b <= 12345 * 9 / 8);
    assert_int_equal(crew_hist_quantile(&h, 0), b);
    assert_int_equal(crew_hist_quantile(&h, 0.5), b);
    assert_int_equal(crew_hist_quantile(&h, 1), b);

    memset(&h, 0, sizeof h); /* exact below 16 ns */
    for (int64_t v = 0; v < 16; v++)
        crew_hist_record(&h, v);
    assert_int_equal(crew_hist_quantile(&h, 0), 0);
    assert_int_equal(crew_hist_quantile(&h, 0.5), 7); /* rank 8 */
    assert_int_equal(crew_hist_quantile(&h, 1), 15);

    memset(&h, 0, sizeof h); /* negatives count as 0, and add 0 to the sum */
    crew_hist_record(&h, -100);
    assert_int_equal(h.count, 1);
    assert_int_equal(h.sum, 0);
    assert_int_equal(h.buckets[0], 1);
    assert_int_equal(crew_hist_quantile(&h, 1), 0);

    memset(&h, 0, sizeof h); /* huge values land in the last bucket */
    crew_hist_record(&h, 5);
    crew_hist_record(&h, INT64_MAX);
    crew_hist_record(&h, (int64_t)1 << 42);
    assert_int_equal(h.buckets[NBUCKETS - 1], 2);
    assert_int_equal(h.sum, (uint64_t)INT64_MAX + 5 + ((uint64_t)1 << 42));
    assert_int_equal(crew_hist_quantile(&h, 0), 5);
    assert_int_equal(crew_hist_quantile(&h, 0.5), INT64_MAX);
    assert_int_equal(crew_hist_quantile(&h, 1), INT64_MAX);

    /* A hand-made h whose buckets hold less than count: the highest non-empty bucket. */
    memset(&h, 0, sizeof h);
    h.count = 10;
    h.buckets[20] = 3;
    assert_int_equal(crew_hist_quantile(&h, 1), crew_hist_bucket_max(20));
    h.buckets[20] = 0;
    assert_int_equal(crew_hist_quantile(&h, 1), 0);
    /* A count too large for a double to hold exactly. */
    memset(&h, 0, sizeof h);
    h.count = UINT64_MAX;
    h.buckets[3] = UINT64_MAX;
    assert_int_equal(crew_hist_quantile(&h, 1), 3);
    assert_int_equal(crew_hist_quantile(&h, 0.999999), 3);
}

/* ---- the single-writer histogram ---------------------------------------------------------- */

static void test_hist_add_merge(void **state)
{
    (void)state;
    crew__hist *a = calloc(1, sizeof *a);
    crew_hist *ref = calloc(1, sizeof *ref), *out = calloc(1, sizeof *out);
    assert_non_null(a);
    assert_non_null(ref);
    assert_non_null(out);
    uint64_t seed = 42;
    for (int i = 0; i < 50000; i++) {
        uint64_t r = rng_next(&seed);
        int64_t v = (int64_t)(r >> (r & 63));
        if (i % 97 == 0)
            v = -v; /* some negatives */
        if (i % 1013 == 0)
            v = (i & 1) ? INT64_MAX / 4 : 0;
        crew__hist_add(a, v);
        crew_hist_record(ref, v);
    }
    crew__hist_merge(out, a);
    assert_int_equal(out->count, ref->count);
    assert_int_equal(out->sum, ref->sum);
    assert_memory_equal(out->buckets, ref->buckets, sizeof ref->buckets);
    assert_int_equal(atomic_load(&a->count), 50000);

    /* Merge adds to what out holds: merging again doubles every field. */
    crew__hist_merge(out, a);
    assert_int_equal(out->count, 2 * ref->count);
    assert_int_equal(out->sum, 2 * ref->sum);
    for (size_t i = 0; i < NBUCKETS; i++)
        assert_int_equal(out->buckets[i], 2 * ref->buckets[i]);
    free(a);
    free(ref);
    free(out);
}

#define CONC_N 200000

typedef struct conc {
    crew__hist *h;
    _Atomic int reader_ready; /* set once the reader has taken its first snapshot */
    _Atomic int done;         /* set by the writer after its last add */
} conc;

static int64_t conc_value(uint64_t i)
{
    return (int64_t)((i * 2654435761u) % 5000000u);
}

static void *conc_writer(void *arg)
{
    conc *c = arg;
    while (!atomic_load(&c->reader_ready))
        sched_yield(); /* start only once the reader runs, so the two overlap */
    for (uint64_t i = 0; i < CONC_N; i++)
        crew__hist_add(c->h, conc_value(i));
    atomic_store(&c->done, 1);
    return NULL;
}

static void test_hist_concurrent(void **state)
{
    (void)state;
    conc c = {.h = calloc(1, sizeof(crew__hist))};
    crew_hist *prev = calloc(1, sizeof *prev), *snap = calloc(1, sizeof *snap);
    assert_non_null(c.h);
    assert_non_null(prev);
    assert_non_null(snap);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, conc_writer, &c), 0);
    long snapshots = 0;
    for (;;) {
        int finished = atomic_load(&c.done);
        memset(snap, 0, sizeof *snap);
        crew__hist_merge(snap, c.h);
        snapshots++;
        atomic_store(&c.reader_ready, 1);
        /* Every field only grows, and count always equals the buckets' total. */
        uint64_t total = 0;
        for (size_t i = 0; i < NBUCKETS; i++) {
            assert_true(snap->buckets[i] >= prev->buckets[i]);
            total += snap->buckets[i];
        }
        assert_int_equal(snap->count, total);
        assert_true(snap->count >= prev->count);
        assert_true(snap->count <= CONC_N);
        assert_true(snap->sum >= prev->sum);
        memcpy(prev, snap, sizeof *snap);
        if (finished)
            break;
    }
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_true(snapshots >= 2);

    crew_hist *ref = calloc(1, sizeof *ref);
    assert_non_null(ref);
    for (uint64_t i = 0; i < CONC_N; i++)
        crew_hist_record(ref, conc_value(i));
    /* The snapshot taken after done was seen holds everything. */
    assert_int_equal(prev->count, CONC_N);
    assert_int_equal(prev->sum, ref->sum);
    assert_memory_equal(prev->buckets, ref->buckets, sizeof ref->buckets);
    free(ref);
    free(prev);
    free(snap);
    free(c.h);
}

/* ---- a strict parser of the Prometheus text format 0.0.4 --------------------------------- */

#define MAX_SAMPLES  512
#define MAX_FAMILIES 32

typedef struct sample {
    char name[80];  /* metric name as written (with _bucket/_sum/_count) */
    char pool[128]; /* the pool label, unescaped */
    char le[40];    /* the le label, or "" */
    char value[64]; /* the value, as written */
    int family;     /* index of its family */
} sample;

typedef struct exposition {
    sample s[MAX_SAMPLES];
    size_t n;
    char fam[MAX_FAMILIES][80];  /* family names in order of their TYPE line */
    char type[MAX_FAMILIES][16]; /* their types */
    bool helped[MAX_FAMILIES];   /* a HELP line was seen */
    int nfam;
} exposition;

static bool name_char(char c, bool first)
{
    return isalpha((unsigned char)c) || c == '_' || c == ':' ||
           (!first && isdigit((unsigned char)c));
}

/* Reads a metric or label name at *p into out; false if there is none. */
static bool parse_name(const char **p, char *out, size_t cap)
{
    size_t n = 0;
    while (name_char((*p)[n], n == 0)) {
        if (n + 1 >= cap)
            return false;
        out[n] = (*p)[n];
        n++;
    }
    out[n] = '\0';
    *p += n;
    return n > 0;
}

static int find_family(const exposition *x, const char *name)
{
    for (int i = 0; i < x->nfam; i++)
        if (strcmp(x->fam[i], name) == 0)
            return i;
    return -1;
}

/* Parses {key="value",...} at *p into the sample's pool and le; false on any deviation. */
static bool parse_labels(const char **p, sample *s)
{
    if (**p != '{')
        return false;
    (*p)++;
    bool have_pool = false;
    for (;;) {
        char key[32], val[128];
        if (!parse_name(p, key, sizeof key) || **p != '=' || (*p)[1] != '"')
            return false;
        *p += 2;
        size_t n = 0;
        while (**p != '"') {
            char c = **p;
            if (c == '\0' || c == '\n')
                return false; /* raw newlines are not allowed in a label value */
            if (c == '\\') {
                char e = (*p)[1];
                if (e == 'n')
                    c = '\n';
                else if (e == '\\' || e == '"')
                    c = e;
                else
                    return false;
                (*p)++;
            }
            if (n + 1 >= sizeof val)
                return false;
            val[n++] = c;
            (*p)++;
        }
        val[n] = '\0';
        (*p)++;
        if (strcmp(key, "pool") == 0 && !have_pool) {
            strcpy(s->pool, val);
            have_pool = true;
        } else if (strcmp(key, "le") == 0 && s->le[0] == '\0' && n > 0 && n < sizeof s->le) {
            strcpy(s->le, val);
        } else {
            return false; /* unknown or repeated label */
        }
        if (**p == ',') {
            (*p)++;
            continue;
        }
        if (**p != '}')
            return false;
        (*p)++;
        return have_pool;
    }
}

/* A float as the format writes it: Go's ParseFloat syntax, which strtod accepts. */
static bool parse_value(const char *v, double *out)
{
    char *end;
    if (*v == '\0' || isspace((unsigned char)*v))
        return false;
    *out = strtod(v, &end);
    return *end == '\0';
}

/* Parses text (NUL-terminated) into x; fails the test with the offending line if it is not
 * valid exposition as crew writes it. */
static void parse_exposition(const char *text, exposition *x)
{
    memset(x, 0, sizeof *x);
    size_t len = strlen(text);
    assert_true(len > 0 && text[len - 1] == '\n');
    int cur = -1;           /* the family of the last TYPE line */
    char help_for[80] = ""; /* the family named by a HELP not yet followed by its TYPE */
    for (const char *line = text; *line;) {
        const char *nl = strchr(line, '\n');
        char buf[512];
        size_t n = (size_t)(nl - line);
        assert_true(n > 0 && n < sizeof buf); /* no empty lines */
        memcpy(buf, line, n);
        buf[n] = '\0';
        line = nl + 1;
        const char *p = buf;
        char name[80];
        if (strncmp(buf, "# HELP ", 7) == 0) {
            p += 7;
            if (!parse_name(&p, name, sizeof name) || *p != ' ' || p[1] == '\0')
                fail_msg("bad HELP line: %s", buf);
            if (find_family(x, name) >= 0 || help_for[0])
                fail_msg("HELP repeated or out of place: %s", buf);
            for (p++; *p; p++)
                if (*p == '\\' && p[1] != '\\' && p[1] != 'n')
                    fail_msg("bad escape in HELP: %s", buf);
            strcpy(help_for, name);
        } else if (strncmp(buf, "# TYPE ", 7) == 0) {
            p += 7;
            if (!parse_name(&p, name, sizeof name) || *p != ' ')
                fail_msg("bad TYPE line: %s", buf);
            p++;
            if (strcmp(p, "counter") != 0 && strcmp(p, "gauge") != 0 && strcmp(p, "histogram") != 0)
                fail_msg("bad type: %s", buf);
            if (find_family(x, name) >= 0)
                fail_msg("TYPE repeated: %s", buf);
            if (strcmp(help_for, name) != 0)
                fail_msg("TYPE without its HELP just before: %s", buf);
            assert_true(x->nfam < MAX_FAMILIES);
            cur = x->nfam++;
            strcpy(x->fam[cur], name);
            strcpy(x->type[cur], p);
            x->helped[cur] = true;
            help_for[0] = '\0';
        } else if (buf[0] == '#') {
            fail_msg("unexpected comment: %s", buf);
        } else {
            assert_true(x->n < MAX_SAMPLES);
            sample *s = &x->s[x->n++];
            if (!parse_name(&p, s->name, sizeof s->name) || !parse_labels(&p, s) || *p != ' ')
                fail_msg("bad sample line: %s", buf);
            p++;
            double v;
            if (strlen(p) >= sizeof s->value || !parse_value(p, &v))
                fail_msg("bad value: %s", buf);
            strcpy(s->value, p);
            /* The sample must belong to the family declared just before it. */
            if (cur < 0 || help_for[0])
                fail_msg("sample before any TYPE: %s", buf);
            const char *fam = x->fam[cur];
            size_t fl = strlen(fam);
            bool hist = strcmp(x->type[cur], "histogram") == 0;
            const char *suffix = strncmp(s->name, fam, fl) == 0 ? s->name + fl : NULL;
            bool is_bucket = hist && suffix && strcmp(suffix, "_bucket") == 0;
            bool declared = hist ? suffix && (is_bucket || strcmp(suffix, "_sum") == 0 ||
                                              strcmp(suffix, "_count") == 0)
                                 : suffix && *suffix == '\0';
            if (!declared)
                fail_msg("sample not declared by the TYPE before it: %s", buf);
            if (is_bucket != (s->le[0] != '\0'))
                fail_msg("le label where it does not belong, or missing: %s", buf);
            s->family = cur;
        }
    }
    assert_true(help_for[0] == '\0');
}

/* The value of the sample name{pool, le}, or NULL. */
static const char *lookup(const exposition *x, const char *name, const char *pool, const char *le)
{
    for (size_t i = 0; i < x->n; i++)
        if (strcmp(x->s[i].name, name) == 0 && strcmp(x->s[i].pool, pool) == 0 &&
            strcmp(x->s[i].le, le ? le : "") == 0)
            return x->s[i].value;
    return NULL;
}

static void expect_u64(const exposition *x, const char *name, const char *pool, const char *le,
                       uint64_t want)
{
    const char *v = lookup(x, name, pool, le);
    if (!v)
        fail_msg("missing %s{pool=\"%s\",le=\"%s\"}", name, pool, le ? le : "");
    char *end;
    unsigned long long got = strtoull(v, &end, 10);
    if (*end != '\0' || got != want)
        fail_msg("%s{pool=\"%s\"}: got %s, want %" PRIu64, name, pool, v, want);
}

/* Checks one pool's histogram family against the values that were recorded into it. */
static void check_histogram(const exposition *x, const char *fam, const char *pool,
                            const int64_t *vals, size_t nvals)
{
    char bname[96], sname[96], cname[96];
    snprintf(bname, sizeof bname, "%s_bucket", fam);
    snprintf(sname, sizeof sname, "%s_sum", fam);
    snprintf(cname, sizeof cname, "%s_count", fam);
    /* The bucket lines of this pool, in the order written. */
    double last_le = -1;
    uint64_t last = 0;
    int k = 10, lines = 0;
    bool saw_inf = false;
    for (size_t i = 0; i < x->n; i++) {
        const sample *s = &x->s[i];
        if (strcmp(s->name, bname) != 0 || strcmp(s->pool, pool) != 0)
            continue;
        lines++;
        assert_false(saw_inf); /* +Inf comes last */
        uint64_t got = strtoull(s->value, NULL, 10);
        assert_true(got >= last); /* cumulative */
        last = got;
        if (strcmp(s->le, "+Inf") == 0) {
            saw_inf = true;
            assert_int_equal(got, nvals);
            continue;
        }
        double le = 0;
        assert_true(parse_value(s->le, &le));
        assert_true(le > last_le);
        last_le = le;
        /* The boundary is 2^k ns, in seconds. */
        double want_le = ldexp(1.0, k) / 1e9;
        assert_true(fabs(le - want_le) <= want_le * 1e-15);
        /* Observations under the boundary: every v < 2^k ns (one of exactly 2^k ns is
         * counted at the next boundary: integer ns buckets end at 2^k - 1). */
        uint64_t want = 0;
        for (size_t j = 0; j < nvals; j++)
            if ((vals[j] < 0 ? 0 : vals[j]) < ((int64_t)1 << k))
                want++;
        if (got != want)
            fail_msg("%s{pool=\"%s\",le=\"%s\"} = %" PRIu64 ", want %" PRIu64, bname, pool, s->le,
                     got, want);
        k++;
    }
    assert_int_equal(lines, 31 + 1); /* k = 10..40, then +Inf */
    assert_true(saw_inf);
    expect_u64(x, cname, pool, NULL, nvals);
    double sum_ns = 0;
    for (size_t j = 0; j < nvals; j++)
        sum_ns += (double)(vals[j] < 0 ? 0 : vals[j]);
    const char *sv = lookup(x, sname, pool, NULL);
    assert_non_null(sv);
    double sum = 0;
    assert_true(parse_value(sv, &sum));
    assert_true(fabs(sum - sum_ns / 1e9) <= 1e-12 * (sum_ns / 1e9) + 1e-15);
}

/* Writes n snapshots into a string (free it). */
static char *write_to_string(const crew_stats *const *stats, size_t n, int *rc)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    *rc = crew_prometheus_write(f, stats, n);
    assert_int_equal(fclose(f), 0);
    return buf;
}

/* The path of an executable on PATH, into out; false if there is none. */
static bool on_path(const char *prog, char *out, size_t cap)
{
    const char *path = getenv("PATH");
    while (path && *path) {
        const char *colon = strchr(path, ':');
        size_t n = colon ? (size_t)(colon - path) : strlen(path);
        if (n > 0 && (size_t)snprintf(out, cap, "%.*s/%s", (int)n, path, prog) < cap &&
            access(out, X_OK) == 0)
            return true;
        path = colon ? colon + 1 : NULL;
    }
    return false;
}

/* Pipes text through `promtool check metrics` when promtool is installed; true if it is
 * not installed or accepted the text. */
static bool promtool_accepts(const char *text)
{
    char exe[512];
    if (!on_path("promtool", exe, sizeof exe)) {
        print_message("promtool not on PATH: skipping its check\n");
        return true;
    }
    FILE *p = popen("promtool check metrics", "w");
    assert_non_null(p);
    fputs(text, p);
    int st = pclose(p);
    return st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

static const char weird_name[] = "we\"ird\\na\nme"; /* a quote, a backslash, a newline */

static void fill_stats(crew_stats *a, crew_stats *b, int64_t *avals, size_t *na)
{
    memset(a, 0, sizeof *a);
    memset(b, 0, sizeof *b);
    strcpy(a->name, "alpha");
    a->submitted = 10;
    a->rejected = 1;
    a->started = 9;
    a->succeeded = 5;
    a->failed = 2;
    a->cancelled = 1;
    a->timed_out = 1;
    a->retried = 4;
    a->queued = 1;
    a->running = 0;
    a->workers = 4;
    strcpy(b->name, weird_name);
    b->submitted = UINT64_MAX; /* prints exactly */
    b->rejected = 2;
    b->started = 3;
    b->succeeded = 4;
    b->failed = 5;
    b->cancelled = 6;
    b->timed_out = 7;
    b->retried = 11;
    b->queued = 8;
    b->running = 9;
    b->workers = 11;
    /* a's wait times straddle the boundaries (1024 ns is exactly 2^10); b's stay empty. */
    static const int64_t w[] = {0,
                                -4,
                                500,
                                1023,
                                1024,
                                1025,
                                2000,
                                CREW_MSEC,
                                CREW_SEC,
                                90 * CREW_SEC,
                                ((int64_t)1 << 40) - 1,
                                (int64_t)1 << 40,
                                (int64_t)1 << 41,
                                INT64_MAX / 2};
    *na = sizeof w / sizeof w[0];
    memcpy(avals, w, sizeof w);
    for (size_t i = 0; i < *na; i++)
        crew_hist_record(&a->wait, w[i]);
    for (int i = 1; i <= 100; i++) {
        crew_hist_record(&a->run, i * 10 * CREW_USEC);
        crew_hist_record(&b->run, i * CREW_MSEC);
    }
}

static void test_prometheus_roundtrip(void **state)
{
    (void)state;
    crew_stats *a = malloc(sizeof *a), *b = malloc(sizeof *b);
    exposition *x = malloc(sizeof *x);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(x);
    int64_t avals[32];
    size_t na;
    fill_stats(a, b, avals, &na);
    const crew_stats *both[] = {a, b};
    int rc;
    char *text = write_to_string(both, 2, &rc);
    assert_int_equal(rc, 0);
    parse_exposition(text, x);

    /* Every family declared once, in this order, with its type. */
    static const char *const fams[][2] = {
        {"crew_jobs_submitted_total", "counter"},
        {"crew_jobs_rejected_total", "counter"},
        {"crew_jobs_started_total", "counter"},
        {"crew_jobs_succeeded_total", "counter"},
        {"crew_jobs_failed_total", "counter"},
        {"crew_jobs_cancelled_total", "counter"},
        {"crew_jobs_timed_out_total", "counter"},
        {"crew_jobs_retried_total", "counter"},
        {"crew_queue_depth", "gauge"},
        {"crew_busy_workers", "gauge"},
        {"crew_live_workers", "gauge"},
        {"crew_queue_wait_seconds", "histogram"},
        {"crew_run_seconds", "histogram"},
    };
    assert_int_equal(x->nfam, 13);
    for (int i = 0; i < 13; i++) {
        assert_string_equal(x->fam[i], fams[i][0]);
        assert_string_equal(x->type[i], fams[i][1]);
        assert_true(x->helped[i]);
    }
    /* 11 scalar families and 2 histograms of 34 lines, for each of 2 pools. */
    assert_int_equal(x->n, 2 * (11 + 2 * 34));

    const crew_stats *ps[] = {a, b};
    for (int i = 0; i < 2; i++) {
        const crew_stats *s = ps[i];
        const char *pool = s->name; /* the parser unescaped it: it must round-trip */
        expect_u64(x, "crew_jobs_submitted_total", pool, NULL, s->submitted);
        expect_u64(x, "crew_jobs_rejected_total", pool, NULL, s->rejected);
        expect_u64(x, "crew_jobs_started_total", pool, NULL, s->started);
        expect_u64(x, "crew_jobs_succeeded_total", pool, NULL, s->succeeded);
        expect_u64(x, "crew_jobs_failed_total", pool, NULL, s->failed);
        expect_u64(x, "crew_jobs_cancelled_total", pool, NULL, s->cancelled);
        expect_u64(x, "crew_jobs_timed_out_total", pool, NULL, s->timed_out);
        expect_u64(x, "crew_jobs_retried_total", pool, NULL, s->retried);
        expect_u64(x, "crew_queue_depth", pool, NULL, s->queued);
        expect_u64(x, "crew_busy_workers", pool, NULL, s->running);
        expect_u64(x, "crew_live_workers", pool, NULL, s->workers);
    }
    check_histogram(x, "crew_queue_wait_seconds", "alpha", avals, na);
    check_histogram(x, "crew_queue_wait_seconds", weird_name, NULL, 0);
    int64_t runs[100];
    for (int i = 0; i < 100; i++)
        runs[i] = (i + 1) * 10 * CREW_USEC;
    check_histogram(x, "crew_run_seconds", "alpha", runs, 100);
    for (int i = 0; i < 100; i++)
        runs[i] = (i + 1) * CREW_MSEC;
    check_histogram(x, "crew_run_seconds", weird_name, runs, 100);

    /* The text itself: exact decimal boundaries and the escaped label. */
    assert_non_null(
        strstr(text, "crew_queue_wait_seconds_bucket{pool=\"alpha\",le=\"0.000001024\"} 4\n"));
    assert_non_null(strstr(text, "le=\"1099.511627776\"}"));
    assert_non_null(strstr(text, "crew_live_workers{pool=\"we\\\"ird\\\\na\\nme\"} 11\n"));
    assert_non_null(strstr(text, "crew_jobs_submitted_total{pool=\"we\\\"ird\\\\na\\nme\"} "
                                 "18446744073709551615\n"));
    assert_non_null(strstr(text, "crew_run_seconds_sum{pool=\"alpha\"} 0.0505\n"));
    assert_non_null(strstr(text, "crew_queue_wait_seconds_sum{pool=\"we\\\"ird\\\\na\\nme\"} 0\n"));

    assert_true(promtool_accepts(text));
    free(text);

    /* An untimed pool (no CREW_POOL_TIMING) exports no histograms; when no pool is timed,
     * the histogram families are left out altogether. */
    b->untimed = true;
    text = write_to_string(both, 2, &rc);
    assert_int_equal(rc, 0);
    parse_exposition(text, x);
    assert_int_equal(x->nfam, 13);
    assert_int_equal(x->n, 2 * 11 + 2 * 34);
    check_histogram(x, "crew_queue_wait_seconds", "alpha", avals, na);
    for (int i = 0; i < 100; i++)
        runs[i] = (i + 1) * 10 * CREW_USEC;
    check_histogram(x, "crew_run_seconds", "alpha", runs, 100);
    assert_null(strstr(text, "crew_run_seconds_count{pool=\"we"));
    assert_true(promtool_accepts(text));
    free(text);
    a->untimed = true;
    text = write_to_string(both, 2, &rc);
    assert_int_equal(rc, 0);
    parse_exposition(text, x);
    assert_int_equal(x->nfam, 11);
    assert_int_equal(x->n, 2 * 11);
    assert_null(strstr(text, "_seconds"));
    assert_true(promtool_accepts(text));
    free(text);
    free(x);
    free(a);
    free(b);
}

static void test_prometheus_names(void **state)
{
    (void)state;
    crew_stats *s = calloc(1, sizeof *s);
    exposition *x = malloc(sizeof *x);
    assert_non_null(s);
    assert_non_null(x);
    /* An empty name becomes "pool". */
    s->workers = 3;
    const crew_stats *one[] = {s};
    int rc;
    char *text = write_to_string(one, 1, &rc);
    assert_int_equal(rc, 0);
    parse_exposition(text, x);
    expect_u64(x, "crew_live_workers", "pool", NULL, 3);
    expect_u64(x, "crew_run_seconds_count", "pool", NULL, 0);
    assert_true(promtool_accepts(text));
    free(text);

    /* A name filling all 64 bytes with no NUL: read no further. */
    memset(s->name, 'x', sizeof s->name);
    text = write_to_string(one, 1, &rc);
    assert_int_equal(rc, 0);
    parse_exposition(text, x);
    char want[sizeof s->name + 1];
    memset(want, 'x', sizeof s->name);
    want[sizeof s->name] = '\0';
    expect_u64(x, "crew_live_workers", want, NULL, 3);
    free(text);

    /* No snapshots: the families are declared, with no samples. */
    text = write_to_string(NULL, 0, &rc);
    assert_int_equal(rc, 0);
    parse_exposition(text, x);
    assert_int_equal(x->nfam, 13);
    assert_int_equal(x->n, 0);
    free(text);

    /* A hand-made histogram whose buckets hold more than its count: lines stay at most
     * _count and cumulative. */
    memset(s, 0, sizeof *s);
    s->run.count = 2;
    s->run.buckets[0] = 5;
    text = write_to_string(one, 1, &rc);
    assert_int_equal(rc, 0);
    parse_exposition(text, x);
    expect_u64(x, "crew_run_seconds_bucket", "pool", "0.000001024", 2);
    expect_u64(x, "crew_run_seconds_bucket", "pool", "+Inf", 2);
    free(text);
    free(x);
    free(s);
}

static void test_prometheus_errors(void **state)
{
    (void)state;
    crew_stats *s = calloc(1, sizeof *s);
    assert_non_null(s);
    strcpy(s->name, "p");
    const crew_stats *one[] = {s};
    const crew_stats *with_null[] = {s, NULL};
    FILE *null_out = fopen("/dev/null", "w");
    assert_non_null(null_out);
    assert_int_equal(crew_prometheus_write(NULL, one, 1), CREW_EINVAL);
    assert_int_equal(crew_prometheus_write(null_out, NULL, 1), CREW_EINVAL);
    assert_int_equal(crew_prometheus_write(null_out, with_null, 2), CREW_EINVAL);
    assert_int_equal(crew_prometheus_write(null_out, one, 1), 0);
    assert_int_equal(fclose(null_out), 0);

    /* A stream opened read-only: the first write fails. */
    FILE *ro = fopen("/dev/null", "r");
    assert_non_null(ro);
    assert_int_equal(crew_prometheus_write(ro, one, 1), CREW_EINVAL);
    assert_int_equal(fclose(ro), 0);

    /* A device that is always full, behind a small buffer: a write fails part way. */
    static char small[64];
    FILE *full = fopen("/dev/full", "w");
    assert_non_null(full);
    assert_int_equal(setvbuf(full, small, _IOFBF, sizeof small), 0);
    assert_int_equal(crew_prometheus_write(full, one, 1), CREW_EINVAL);
    fclose(full); /* fails too: the buffer cannot be flushed */

    /* Even text that fits the stream's buffer is flushed, so the failure shows now. */
    full = fopen("/dev/full", "w");
    assert_non_null(full);
    assert_int_equal(crew_prometheus_write(full, NULL, 0), CREW_EINVAL);
    fclose(full);
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        leak_test(test_bucket_bounds),        leak_test(test_bucket_of_matches_reference),
        leak_test(test_quantile_known),       leak_test(test_quantile_edges),
        leak_test(test_hist_add_merge),       leak_test(test_hist_concurrent),
        leak_test(test_prometheus_roundtrip), leak_test(test_prometheus_names),
        leak_test(test_prometheus_errors),
    };
    return cmocka_run_group_tests_name("metrics", tests, NULL, NULL);
}
