/*
 * httpd - the local HTTP server that the fetch example's test runs against (libmicrohttpd).
 *
 *   httpd        listens on 127.0.0.1, an ephemeral port, and prints one line:
 *                "PORT REFUSED_PORT", where REFUSED_PORT is bound but never listened on,
 *                so a connection to it is refused for as long as the server runs.
 *
 * Endpoints (anything else is 404):
 *   /ok            200, "ok\n"
 *   /bytes/N       200, N bytes of 'x' (N at most 2^30)
 *   /slow/MS       200 after MS milliseconds (at most 10 minutes)
 *   /status/CODE   CODE (200-599), a one-line body
 *   /hang          never answers; the connection is dropped when the server stops
 *   /close         drops the connection without answering
 *   /stats         200, "connections C\nrequests R\n": connections accepted and requests
 *                  received so far (this one included), for checking connection reuse
 *
 * Threads: libmicrohttpd runs one thread per connection (MHD_USE_THREAD_PER_CONNECTION),
 * so /slow and /hang simply wait inside the handler without holding up other connections.
 * They wait on one condition variable, which the main thread broadcasts when it stops, so
 * that MHD_stop_daemon never waits for a sleeping handler. The main thread takes the stop
 * signals (SIGTERM, SIGINT, SIGHUP) with sigwait; every other thread has them blocked. The
 * server also stops when its parent dies (PR_SET_PDEATHSIG) and after ten minutes, so a test
 * that is killed outright cannot leave it behind.
 *
 * Locks: `lock` guards `stopping` and pairs with `cond`; the counters are atomics.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BYTES (1ll << 30)
#define MAX_MS    (10ll * 60 * 1000)

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond;      /* broadcast once when stopping; CLOCK_MONOTONIC */
static bool stopping;            /* the server is shutting down; under lock */
static atomic_ulong connections; /* connections accepted */
static atomic_ulong requests;    /* requests received */
static int request_marker;       /* its address tags a request already counted */

static void check(int rc, const char *what)
{
    if (rc) {
        fprintf(stderr, "httpd: %s: %s\n", what, strerror(rc));
        abort();
    }
}

/* Waits until the server stops or ms milliseconds pass (ms < 0: no limit). Returns true if
 * the server is stopping. */
static bool wait_stop(long long ms)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += (time_t)(ms / 1000);
    until.tv_nsec += (long)(ms % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    check(pthread_mutex_lock(&lock), "lock");
    int rc = 0;
    while (!stopping && rc != ETIMEDOUT)
        rc =
            ms < 0 ? pthread_cond_wait(&cond, &lock) : pthread_cond_timedwait(&cond, &lock, &until);
    bool stop = stopping;
    check(pthread_mutex_unlock(&lock), "unlock");
    return stop;
}

/* Parses the decimal number that follows prefix in url, in [lo, hi]; -1 if url does not
 * have that form. */
static long long number_after(const char *url, const char *prefix, long long lo, long long hi)
{
    size_t n = strlen(prefix);
    if (strncmp(url, prefix, n) != 0 || url[n] < '0' || url[n] > '9')
        return -1;
    char *end;
    errno = 0;
    long long v = strtoll(url + n, &end, 10);
    return *end || errno || v < lo || v > hi ? -1 : v;
}

/* Fills a /bytes/N body; cls carries nothing, MHD stops asking at the declared size. */
static ssize_t fill(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)cls;
    (void)pos;
    memset(buf, 'x', max);
    return (ssize_t)max;
}

static enum MHD_Result reply(struct MHD_Connection *c, unsigned code, const char *body)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    enum MHD_Result rc = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **req)
{
    (void)cls;
    (void)method;
    (void)version;
    (void)upload;
    (void)upload_size;
    /* The first call announces the request (its headers are in); answer on the next. */
    if (*req == NULL) {
        *req = &request_marker;
        atomic_fetch_add(&requests, 1);
        return MHD_YES;
    }
    char body[128];
    long long v;
    if (strcmp(url, "/ok") == 0)
        return reply(c, MHD_HTTP_OK, "ok\n");
    if (strcmp(url, "/close") == 0)
        return MHD_NO; /* MHD closes the connection without a response */
    if (strcmp(url, "/hang") == 0) {
        wait_stop(-1);
        return MHD_NO;
    }
    if (strcmp(url, "/stats") == 0) {
        snprintf(body, sizeof body, "connections %lu\nrequests %lu\n", atomic_load(&connections),
                 atomic_load(&requests));
        return reply(c, MHD_HTTP_OK, body);
    }
    if ((v = number_after(url, "/slow/", 0, MAX_MS)) >= 0)
        return wait_stop(v) ? MHD_NO : reply(c, MHD_HTTP_OK, "slow\n");
    if ((v = number_after(url, "/status/", 200, 599)) >= 0) {
        snprintf(body, sizeof body, "status %lld\n", v);
        return reply(c, (unsigned)v, body);
    }
    if ((v = number_after(url, "/bytes/", 0, MAX_BYTES)) >= 0) {
        if (v == 0)
            return reply(c, MHD_HTTP_OK, "");
        struct MHD_Response *r =
            MHD_create_response_from_callback((uint64_t)v, 64 * 1024, fill, NULL, NULL);
        if (!r)
            return MHD_NO;
        enum MHD_Result rc = MHD_queue_response(c, MHD_HTTP_OK, r);
        MHD_destroy_response(r);
        return rc;
    }
    return reply(c, MHD_HTTP_NOT_FOUND, "not found\n");
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_ctx,
                          enum MHD_ConnectionNotificationCode code)
{
    (void)cls;
    (void)c;
    (void)socket_ctx;
    if (code == MHD_CONNECTION_NOTIFY_STARTED)
        atomic_fetch_add(&connections, 1);
}

int main(void)
{
    /* Stop signals are taken by sigwait below: block them before any thread starts. */
    sigset_t stop_set;
    sigemptyset(&stop_set);
    sigaddset(&stop_set, SIGTERM);
    sigaddset(&stop_set, SIGINT);
    sigaddset(&stop_set, SIGHUP);
    check(pthread_sigmask(SIG_BLOCK, &stop_set, NULL), "pthread_sigmask");
    signal(SIGPIPE, SIG_IGN);
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() == 1)
        return 1; /* the parent is already gone */

    pthread_condattr_t attr;
    check(pthread_condattr_init(&attr), "condattr");
    check(pthread_condattr_setclock(&attr, CLOCK_MONOTONIC), "condattr_setclock");
    check(pthread_cond_init(&cond, &attr), "cond_init");
    pthread_condattr_destroy(&attr);

    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;

    /* A bound socket that never listens: connecting to its port is refused. */
    struct sockaddr_in refused = addr;
    int refused_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (refused_fd < 0 || bind(refused_fd, (struct sockaddr *)&refused, sizeof refused) != 0 ||
        getsockname(refused_fd, (struct sockaddr *)&refused, &len) != 0) {
        perror("httpd: refused port");
        return 1;
    }

    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL, 0, NULL,
        NULL, handle, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, NULL, MHD_OPTION_END);
    const union MHD_DaemonInfo *info = d ? MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT) : NULL;
    if (!info) {
        fprintf(stderr, "httpd: cannot start the server\n");
        return 1;
    }
    printf("%u %u\n", (unsigned)info->port, (unsigned)ntohs(refused.sin_port));
    fflush(stdout);

    /* Serve until a stop signal, or ten minutes at most. */
    struct timespec life = {.tv_sec = 600};
    while (sigtimedwait(&stop_set, NULL, &life) < 0 && errno == EINTR)
        ;

    check(pthread_mutex_lock(&lock), "lock");
    stopping = true;
    check(pthread_cond_broadcast(&cond), "broadcast");
    check(pthread_mutex_unlock(&lock), "unlock");
    MHD_stop_daemon(d);
    close(refused_fd);
    fprintf(stderr, "httpd: %lu connections, %lu requests\n", atomic_load(&connections),
            atomic_load(&requests));
    return 0;
}
