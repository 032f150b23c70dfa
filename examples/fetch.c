/*
 * fetch - the seeds' concurrent URL fetcher, on a libcrew pool and libcurl.
 *
 *   fetch [-j N] [-t TIMEOUT] [-d DEADLINE] [-r RETRIES] [--rate N/s] [URL...]
 *
 *   -j, --jobs N          requests in flight at once, 1-1024 (default 8)
 *   -t, --timeout T       budget of each request, connecting included (default 30s)
 *   -d, --deadline T      budget of the whole run (default none)
 *   -r, --retries N       tries after the first for a transient failure, 0-100 (default 0)
 *       --rate N[/s]      start at most N requests per second (default no limit)
 *   -h, --help            this text
 *
 * Durations are crew_duration_parse's: "500ms", "10s", "1m30s", or bare seconds. With no
 * URL argument the URLs are read from standard input, one per line (blank lines and lines
 * starting with '#' are skipped).
 *
 * Output: one line per URL, in input order, once the run is over:
 *   OK <status> <bytes> <ms> <url>       a response with a status below 400
 *   FAIL <reason> <url>                  anything else
 * where reason is http-<status> (400 and above), timeout (the request's own budget),
 * cancelled (the overall deadline came first, whether the request was running, queued or
 * not yet submitted), refused, connect, resolve, empty-reply, recv, send, partial,
 * unsupported-protocol, bad-url, redirects, tls, bad-reply, nomem, or curl-<code>. A summary
 * line goes to standard error. Exit status: 0 if every URL is OK, 1 if any failed, 2 for a
 * usage error, 3 if the run could not be set up at all.
 *
 * Lines are collected and printed at the end rather than as requests finish: input order
 * makes the output easy to diff and to join with the input, and a worker never waits on
 * standard output. (crew_order could stream them in order instead.)
 *
 * Design. N pool workers share one libcurl setup: curl_global_init once; one CURLSH that
 * shares the DNS cache and TLS sessions, guarded by a mutex per kind of data through its
 * lock callbacks; and one easy handle per worker, made by the pool's per-worker init hook
 * and freed by its fini hook (the job finds it with crew_pool_worker_state). An easy handle
 * keeps its connections open between transfers, so each worker reuses its connections: N
 * workers against one host open about N connections, however many URLs there are. The
 * connection cache is not put in the CURLSH (CURL_LOCK_DATA_CONNECT): libcurl documents a
 * shared connection cache as unsupported between concurrent threads (its known bug "A
 * shared connection cache is not thread-safe"), so it stays per handle.
 *
 * The overall deadline is a crew ctx (crew_ctx_with_deadline) given to the pool as its
 * parent ctx. When it fires, the pool is cancelled: queued jobs are dropped and reported to
 * the discard callback, and the ctx that running jobs hold is done, which libcurl's progress
 * callback (CURLOPT_XFERINFOFUNCTION) sees and aborts the transfer (libcurl calls it at
 * least about once a second, even on an idle connection). The submitting loop stops at the
 * first refused submit and reports the URLs it did not submit, so every URL is reported
 * exactly once: by the worker that ran it, by the discard callback, or by main.
 *
 * Threads. Main parses, submits, waits for the pool and prints. Workers run fetch_job;
 * discards run on workers too. Each request is written by exactly one thread and read by
 * main only after crew_pool_wait has returned, which orders the two. The share's mutexes
 * are the only locks taken, and only inside libcurl.
 *
 * Retries and the rate limit are the pool's own options. With -r the pool gets a retry
 * policy (crew_pool_opts.retry): a request that failed transiently (its own timeout,
 * refused, connect, empty-reply, recv, send, partial, http-5xx, http-429) is tried again
 * inside its worker after an exponential backoff with full jitter, which the deadline cuts
 * short; the summary counts the retries from the pool's metrics. With --rate the pool takes
 * a token from a crew_rate (burst 1) before starting each request (crew_pool_opts.rate), so
 * retries, which run inside the job, are not counted against the rate.
 */
#define _POSIX_C_SOURCE 200809L
#include <crew.h>

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_WORKERS 1024
#define MAX_RETRIES 100
#define USAGE       "usage: fetch [-j N] [-t TIMEOUT] [-d DEADLINE] [-r N] [--rate N/s] [URL...]"

/* What the command line asked for. */
typedef struct config {
    unsigned workers; /* -j: requests in flight at once */
    int64_t timeout;  /* -t: budget of one request, ns */
    int64_t deadline; /* -d: budget of the whole run, ns; 0 = none */
    unsigned retries; /* -r: tries after the first for a transient failure */
    double rate;      /* --rate: requests started per second; 0 = no limit */
} config;

/* One URL and what became of it. Written by the one thread that reports it (the worker
 * that ran or dropped it, or main), read by main once the pool has finished. */
typedef struct request {
    char *url;        /* owned */
    bool done;        /* reported: set exactly once */
    char reason[32];  /* empty for OK, else the failure's token */
    long status;      /* HTTP status of the last response, 0 if none */
    curl_off_t bytes; /* body bytes received */
    int64_t elapsed;  /* ns the transfer took */
    long connects;    /* new connections it opened */
} request;

/* The libcurl state shared by every worker, set up once by main. */
typedef struct shared {
    CURLSH *share;                              /* DNS cache and TLS sessions */
    pthread_mutex_t locks[CURL_LOCK_DATA_LAST]; /* one per kind of shared data */
    const config *cfg;                          /* the options the handles are set up with */
} shared;

/* A worker's own state, made by worker_init and freed by worker_fini. */
typedef struct worker {
    CURL *easy; /* reused for every request the worker runs, with its connections */
} worker;

/* ---- the shared libcurl setup -------------------------------------------------------- */

static void share_lock(CURL *h, curl_lock_data data, curl_lock_access access, void *arg)
{
    (void)h;
    (void)access;
    shared *s = arg;
    if (pthread_mutex_lock(&s->locks[data]) != 0)
        abort();
}

static void share_unlock(CURL *h, curl_lock_data data, void *arg)
{
    (void)h;
    shared *s = arg;
    if (pthread_mutex_unlock(&s->locks[data]) != 0)
        abort();
}

/* Sets up s; on failure nothing is left to clean up. */
static int shared_init(shared *s, const config *cfg)
{
    s->cfg = cfg;
    int i = 0;
    for (; i < CURL_LOCK_DATA_LAST; i++)
        if (pthread_mutex_init(&s->locks[i], NULL) != 0)
            goto err_locks;
    s->share = curl_share_init();
    if (!s->share || curl_share_setopt(s->share, CURLSHOPT_LOCKFUNC, share_lock) ||
        curl_share_setopt(s->share, CURLSHOPT_UNLOCKFUNC, share_unlock) ||
        curl_share_setopt(s->share, CURLSHOPT_USERDATA, s) ||
        curl_share_setopt(s->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS) ||
        curl_share_setopt(s->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION))
        goto err_share;
    return 0;

err_share:
    curl_share_cleanup(s->share); /* NULL is ignored */
err_locks:
    while (i-- > 0)
        pthread_mutex_destroy(&s->locks[i]);
    return -1;
}

/* Frees what shared_init set up, once no easy handle uses it. */
static void shared_fini(shared *s)
{
    curl_share_cleanup(s->share);
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_destroy(&s->locks[i]);
}

/* ---- workers and their jobs ---------------------------------------------------------- */

/* Counts the body and drops it: only its size is reported. */
static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
    (void)data;
    request *r = arg;
    r->bytes += (curl_off_t)(size * n);
    return size * n;
}

/* libcurl's progress callback, called often during a transfer and about once a second
 * while it waits: a non-zero return aborts it (CURLE_ABORTED_BY_CALLBACK). */
static int on_progress(void *ctx, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    (void)dltotal;
    (void)dlnow;
    (void)ultotal;
    (void)ulnow;
    return crew_ctx_done(ctx);
}

/* Pool init hook: one easy handle per worker, with every option that does not change
 * between requests. */
static int worker_init(void *hook_arg, unsigned worker_id, void **state)
{
    (void)worker_id;
    const shared *s = hook_arg;
    worker *w = calloc(1, sizeof *w);
    if (!w)
        return CREW_ENOMEM;
    long budget_ms = (long)((s->cfg->timeout + CREW_MSEC - 1) / CREW_MSEC);
    CURL *e = w->easy = curl_easy_init();
    if (!e) {
        free(w);
        return CREW_ENOMEM;
    }
    /* Only http and https, also after a redirect. */
#if LIBCURL_VERSION_NUM >= 0x075500
    CURLcode cc = curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    if (cc == CURLE_OK)
        cc = curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
    CURLcode cc = curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
    if (cc == CURLE_OK)
        cc = curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    if (cc || curl_easy_setopt(e, CURLOPT_SHARE, s->share) ||
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) ||
        curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L) ||
        curl_easy_setopt(e, CURLOPT_MAXREDIRS, 10L) ||
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, budget_ms) ||
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, budget_ms) ||
        curl_easy_setopt(e, CURLOPT_USERAGENT, "crew-fetch/" CREW_VERSION_STRING) ||
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body) ||
        curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L) ||
        curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, on_progress)) {
        curl_easy_cleanup(e);
        free(w);
        return CREW_EINVAL; /* this libcurl lacks an option */
    }
    *state = w;
    return 0;
}

/* Pool fini hook: closes the worker's connections and frees its handle. */
static void worker_fini(void *hook_arg, unsigned worker_id, void *state)
{
    (void)hook_arg;
    (void)worker_id;
    worker *w = state;
    curl_easy_cleanup(w->easy);
    free(w);
}

/* The reason token for a failed transfer. */
static void curl_reason(CURL *e, CURLcode cc, char *out, size_t size)
{
    static const struct {
        CURLcode cc;
        const char *reason;
    } reasons[] = {
        {CURLE_OPERATION_TIMEDOUT, "timeout"},
        {CURLE_COULDNT_CONNECT, "connect"},
        {CURLE_COULDNT_RESOLVE_HOST, "resolve"},
        {CURLE_GOT_NOTHING, "empty-reply"},
        {CURLE_RECV_ERROR, "recv"},
        {CURLE_SEND_ERROR, "send"},
        {CURLE_PARTIAL_FILE, "partial"},
        {CURLE_UNSUPPORTED_PROTOCOL, "unsupported-protocol"},
        {CURLE_URL_MALFORMAT, "bad-url"},
        {CURLE_TOO_MANY_REDIRECTS, "redirects"},
        {CURLE_SSL_CONNECT_ERROR, "tls"},
        {CURLE_PEER_FAILED_VERIFICATION, "tls"},
        {CURLE_WEIRD_SERVER_REPLY, "bad-reply"},
        {CURLE_OUT_OF_MEMORY, "nomem"},
    };
    long os_errno = 0;
    if (cc == CURLE_COULDNT_CONNECT && curl_easy_getinfo(e, CURLINFO_OS_ERRNO, &os_errno) == 0 &&
        os_errno == ECONNREFUSED) {
        snprintf(out, size, "refused");
        return;
    }
    for (size_t i = 0; i < sizeof reasons / sizeof reasons[0]; i++)
        if (reasons[i].cc == cc) {
            snprintf(out, size, "%s", reasons[i].reason);
            return;
        }
    snprintf(out, size, "curl-%d", (int)cc);
}

/* True for the failures worth another try: the server or the network may do better. */
static bool transient(const char *reason, long status)
{
    static const char *const again[] = {"timeout", "refused", "connect", "empty-reply",
                                        "recv",    "send",    "partial"};
    for (size_t i = 0; i < sizeof again / sizeof again[0]; i++)
        if (strcmp(reason, again[i]) == 0)
            return true;
    return strncmp(reason, "http-", 5) == 0 && (status >= 500 || status == 429);
}

/* One attempt at r's URL on w's handle. Fills r and returns 0 for an OK response, else
 * CREW_ECANCELED (ctx done), CREW_ETIMEDOUT (the request's budget), -EAGAIN (another
 * transient failure) or -EIO (a failure another try would not mend). */
static int attempt(worker *w, crew_ctx *ctx, request *r)
{
    r->reason[0] = '\0';
    r->status = r->bytes = r->connects = 0;
    CURL *e = w->easy;
    if (crew_ctx_done(ctx)) { /* taken by a worker just as the deadline fired */
        snprintf(r->reason, sizeof r->reason, "cancelled");
        return CREW_ECANCELED;
    }
    CURLcode cc = curl_easy_setopt(e, CURLOPT_URL, r->url);
    if (cc == CURLE_OK && !(cc = curl_easy_setopt(e, CURLOPT_WRITEDATA, r)))
        cc = curl_easy_setopt(e, CURLOPT_XFERINFODATA, ctx);
    int64_t t0 = crew_now();
    if (cc == CURLE_OK)
        cc = curl_easy_perform(e);
    r->elapsed = crew_now() - t0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r->status);
    curl_easy_getinfo(e, CURLINFO_NUM_CONNECTS, &r->connects);
    if (cc == CURLE_OK && r->status < 400)
        return 0;
    if (cc == CURLE_OK) {
        snprintf(r->reason, sizeof r->reason, "http-%ld", r->status);
        return transient(r->reason, r->status) ? -EAGAIN : -EIO;
    }
    /* Whatever broke a transfer that the deadline has ended, the deadline is the cause. */
    if (crew_ctx_done(ctx) || cc == CURLE_ABORTED_BY_CALLBACK) {
        snprintf(r->reason, sizeof r->reason, "cancelled");
        return CREW_ECANCELED;
    }
    curl_reason(e, cc, r->reason, sizeof r->reason);
    if (cc == CURLE_OPERATION_TIMEDOUT)
        return CREW_ETIMEDOUT;
    return transient(r->reason, r->status) ? -EAGAIN : -EIO;
}

/* The retry policy's predicate: attempt() said which failures are transient. A request's
 * own timeout is one of them; the deadline (CREW_ECANCELED) is not. */
static bool retryable(int err, void *arg)
{
    (void)arg;
    return err == -EAGAIN || err == CREW_ETIMEDOUT;
}

/* The pool job for one URL, called once per try. Its return value feeds the pool's
 * counters and its retry policy. */
static int fetch_job(crew_ctx *ctx, void *arg)
{
    request *r = arg;
    int rc = attempt(crew_pool_worker_state(), ctx, r);
    r->done = true;
    return rc;
}

/* Marks r as cancelled: it was never run. */
static void report_cancelled(request *r)
{
    snprintf(r->reason, sizeof r->reason, "cancelled");
    r->done = true;
}

/* The pool's discard callback: a queued job dropped at the deadline. */
static void discard_job(crew_job_fn fn, void *arg, int reason)
{
    (void)fn;
    (void)reason;
    report_cancelled(arg);
}

/* ---- input --------------------------------------------------------------------------- */

typedef struct url_list {
    request *reqs; /* one per URL, in input order */
    size_t n, cap;
} url_list;

static int add_url(url_list *l, const char *url, size_t len)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        request *grown = realloc(l->reqs, cap * sizeof *grown);
        if (!grown)
            return -1;
        l->reqs = grown;
        l->cap = cap;
    }
    request *r = &l->reqs[l->n];
    *r = (request){.url = malloc(len + 1)};
    if (!r->url)
        return -1;
    memcpy(r->url, url, len);
    r->url[len] = '\0';
    l->n++;
    return 0;
}

/* Reads one URL per line: surrounding blanks trimmed, blank and '#' lines skipped. */
static int read_urls(FILE *in, url_list *l)
{
    char *line = NULL;
    size_t size = 0;
    ssize_t len;
    int rc = 0;
    while (rc == 0 && (len = getline(&line, &size, in)) >= 0) {
        const char *s = line;
        while (isspace((unsigned char)*s))
            s++;
        size_t n = (size_t)(line + len - s);
        while (n > 0 && isspace((unsigned char)s[n - 1]))
            n--;
        if (n > 0 && s[0] != '#')
            rc = add_url(l, s, n);
    }
    if (ferror(in))
        rc = -1;
    free(line);
    return rc;
}

static void free_urls(url_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->reqs[i].url);
    free(l->reqs);
}

/* ---- command line -------------------------------------------------------------------- */

/* Prints "fetch: " and the formatted complaint, then the usage hint; returns 2. */
static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fetch: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n" USAGE "  (fetch -h for help)\n");
    va_end(ap);
    return 2;
}

/* A duration option's value: positive, in crew_duration_parse's syntax. */
static int parse_duration(const char *opt, const char *arg, int64_t *out)
{
    int64_t ns;
    if (crew_duration_parse(arg, &ns) != 0 || ns <= 0)
        return usage_error("%s: expected a positive duration such as 500ms, 10s or 1m30s, "
                           "got '%s'",
                           opt, arg);
    *out = ns;
    return 0;
}

/* The option getopt_long just rejected, as the user wrote it: the long form as given,
 * else "-c" (the short one may sit inside a cluster such as -hx). */
static const char *option_name(char **argv, int opt)
{
    static char name[3];
    const char *arg = argv[optind - 1];
    if (strncmp(arg, "--", 2) == 0 || opt == 0)
        return arg;
    snprintf(name, sizeof name, "-%c", opt);
    return name;
}

/* Fills cfg from the options. Returns -1 to go on, else the exit status (0 after -h). */
static int parse_args(int argc, char **argv, config *cfg)
{
    static const struct option longs[] = {
        {"jobs", required_argument, NULL, 'j'},
        {"timeout", required_argument, NULL, 't'},
        {"deadline", required_argument, NULL, 'd'},
        {"retries", required_argument, NULL, 'r'},
        {"rate", required_argument, NULL, 'R'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    *cfg = (config){.workers = 8, .timeout = 30 * CREW_SEC};
    opterr = 0; /* the messages below name the option and what it expects */
    int c, rc;
    while ((c = getopt_long(argc, argv, ":j:t:d:r:h", longs, NULL)) != -1) {
        switch (c) {
        case 'j': {
            char *end;
            errno = 0;
            unsigned long v = strtoul(optarg, &end, 10);
            if (!isdigit((unsigned char)optarg[0]) || *end || errno || v < 1 || v > MAX_WORKERS)
                return usage_error("-j: expected a number of workers from 1 to 1024, got '%s'",
                                   optarg);
            cfg->workers = (unsigned)v;
            break;
        }
        case 'r': {
            char *end;
            errno = 0;
            unsigned long v = strtoul(optarg, &end, 10);
            if (!isdigit((unsigned char)optarg[0]) || *end || errno || v > MAX_RETRIES)
                return usage_error("-r: expected a number of retries from 0 to 100, got '%s'",
                                   optarg);
            cfg->retries = (unsigned)v;
            break;
        }
        case 'R': {
            char *end;
            errno = 0;
            double v = strtod(optarg, &end);
            if (end != optarg && strcmp(end, "/s") == 0)
                end += 2;
            if (end == optarg || *end || errno || !(v > 0) || v > 1e9)
                return usage_error("--rate: expected requests per second such as 10 or 2.5/s, "
                                   "got '%s'",
                                   optarg);
            cfg->rate = v;
            break;
        }
        case 't':
            if ((rc = parse_duration("-t", optarg, &cfg->timeout)) != 0)
                return rc;
            break;
        case 'd':
            if ((rc = parse_duration("-d", optarg, &cfg->deadline)) != 0)
                return rc;
            break;
        case 'h':
            printf(USAGE "\n\n"
                         "  -j, --jobs N        requests in flight at once, 1-1024 (default 8)\n"
                         "  -t, --timeout T     budget of each request (default 30s)\n"
                         "  -d, --deadline T    budget of the whole run (default none)\n"
                         "  -r, --retries N     more tries for a transient failure (default 0)\n"
                         "      --rate N[/s]    start at most N requests a second\n\n"
                         "Without URL arguments, reads one URL per line from standard input.\n"
                         "Prints OK <status> <bytes> <ms> <url> or FAIL <reason> <url> per URL,\n"
                         "in input order. Exit status: 0 all OK, 1 some failed, 2 usage, 3 "
                         "setup.\n");
            return 0;
        case ':':
            return usage_error("%s: expected a value after it", option_name(argv, optopt));
        default:
            return usage_error("unknown option '%s'", option_name(argv, optopt));
        }
    }
    return -1;
}

/* ---- main ---------------------------------------------------------------------------- */

/* Submits every URL, then waits for the pool to finish them. A refused submit (the
 * deadline has cancelled the pool) ends the loop; the URLs left are reported here. */
static void run(crew_pool *pool, crew_ctx *deadline, url_list *l)
{
    size_t i = 0;
    int rc = 0;
    for (; i < l->n; i++)
        if ((rc = crew_pool_submit(pool, fetch_job, &l->reqs[i], CREW_FOREVER, deadline)) != 0)
            break;
    if (rc != 0 && rc != CREW_ESHUTDOWN && rc != CREW_ETIMEDOUT && rc != CREW_ECANCELED)
        fprintf(stderr, "fetch: submit: %s\n", crew_strerror(rc));
    for (; i < l->n; i++)
        report_cancelled(&l->reqs[i]);
    crew_pool_close(pool);
    crew_pool_wait(pool, CREW_FOREVER);
}

/* Prints one line per URL and the summary; returns the exit status. */
static int report(const url_list *l, int64_t wall, uint64_t retried)
{
    size_t ok = 0, timeouts = 0, cancelled = 0;
    long connects = 0;
    for (size_t i = 0; i < l->n; i++) {
        const request *r = &l->reqs[i];
        connects += r->connects;
        if (!r->done) /* a broken invariant: say so rather than lose the URL */
            printf("FAIL lost %s\n", r->url);
        else if (r->reason[0] == '\0')
            printf("OK %ld %" CURL_FORMAT_CURL_OFF_T " %lld %s\n", r->status, r->bytes,
                   (long long)(r->elapsed / CREW_MSEC), r->url);
        else
            printf("FAIL %s %s\n", r->reason, r->url);
        ok += r->done && r->reason[0] == '\0';
        timeouts += strcmp(r->reason, "timeout") == 0;
        cancelled += strcmp(r->reason, "cancelled") == 0;
    }
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "fetch: cannot write the results: %s\n", strerror(errno));
        return 3;
    }
    fprintf(stderr,
            "fetch: %zu urls in %.2f s: %zu ok, %zu failed (%zu timeout, %zu cancelled), "
            "%llu retries, %ld connections\n",
            l->n, (double)wall / 1e9, ok, l->n - ok, timeouts, cancelled,
            (unsigned long long)retried, connects);
    return ok == l->n ? 0 : 1;
}

int main(int argc, char **argv)
{
    config cfg;
    int status = parse_args(argc, argv, &cfg);
    if (status >= 0)
        return status;

    url_list urls = {0};
    int rc = 0;
    for (int i = optind; i < argc && rc == 0; i++)
        rc = add_url(&urls, argv[i], strlen(argv[i]));
    if (rc == 0 && optind == argc)
        rc = read_urls(stdin, &urls);
    if (rc != 0) {
        fprintf(stderr, "fetch: cannot read the URLs: %s\n", strerror(errno));
        free_urls(&urls);
        return 3;
    }

    /* With CURLOPT_NOSIGNAL libcurl leaves SIGPIPE alone: a peer closing a TLS connection
     * must not kill the process, so ignore it here once. */
    signal(SIGPIPE, SIG_IGN);
    int64_t t0 = crew_now();
    status = 3;
    shared sh = {0};
    crew_ctx *deadline = NULL;
    crew_pool *pool = NULL;
    crew_rate *rate = NULL;
    uint64_t retried = 0;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "fetch: cannot initialise libcurl\n");
        goto err_free_urls;
    }
    if (shared_init(&sh, &cfg) != 0) {
        fprintf(stderr, "fetch: cannot set up the shared libcurl state\n");
        goto err_curl;
    }
    if (cfg.deadline > 0 &&
        (rc = crew_ctx_with_deadline(NULL, crew_deadline_in(cfg.deadline), &deadline)) != 0) {
        fprintf(stderr, "fetch: cannot set the deadline: %s\n", crew_strerror(rc));
        goto err_shared;
    }
    if (cfg.rate > 0 && (rc = crew_rate_create(&rate, cfg.rate, 1)) != 0) {
        fprintf(stderr, "fetch: cannot set the rate: %s\n", crew_strerror(rc));
        goto err_ctx;
    }
    /* Backoffs from 50 ms, doubling up to 2 s, with full jitter. */
    const crew_retry policy = {.attempts = cfg.retries + 1,
                               .base = 50 * CREW_MSEC,
                               .cap = 2 * CREW_SEC,
                               .retryable = retryable};
    if (urls.n > 0) {
        unsigned workers = urls.n < cfg.workers ? (unsigned)urls.n : cfg.workers;
        crew_pool_opts opts = {.name = "fetch",
                               .workers = workers,
                               .queue_cap = workers,
                               .ctx = deadline,
                               .init = worker_init,
                               .fini = worker_fini,
                               .hook_arg = &sh,
                               .discard = discard_job,
                               .retry = cfg.retries ? &policy : NULL,
                               .rate = rate};
        if ((rc = crew_pool_create(&pool, &opts)) != 0) {
            fprintf(stderr, "fetch: cannot start %u workers: %s\n", workers, crew_strerror(rc));
            goto err_rate;
        }
        run(pool, deadline, &urls);
        crew_stats st;
        crew_pool_stats(pool, &st);
        retried = st.retried;
        crew_pool_destroy(pool);
    }
    status = report(&urls, crew_now() - t0, retried);

err_rate:
    crew_rate_destroy(rate);
err_ctx:
    crew_ctx_release(deadline);
err_shared:
    shared_fini(&sh);
err_curl:
    curl_global_cleanup();
err_free_urls:
    free_urls(&urls);
    return status;
}
