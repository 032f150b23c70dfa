/*
 * metrics_http.c - --metrics ADDR: the pool's metrics in Prometheus text over HTTP.
 *
 * libmicrohttpd serves GET /metrics (any other path: 404) from its own thread: the pool's
 * crew_pool_stats snapshot through crew_prometheus_write (counters, gauges, queue-wait and
 * run-time histograms, label pool="crew"), then the command's own counters
 * (crew_command_jobs_total by result, crew_command_retries_total,
 * crew_command_jobs_read_total). ADDR is PORT, :PORT, HOST:PORT or [V6]:PORT; with no host
 * it binds 127.0.0.1 only: metrics are not published to the network unless asked. Port 0
 * picks a free port; crew prints the address it serves on stderr.
 *
 * libmicrohttpd is loaded with dlopen(3) when --metrics is given, not linked: it pulls in
 * GnuTLS and half a dozen other libraries, 2.5 MiB of resident memory that a run without
 * --metrics would pay for nothing (crew's memory goal is xargs + 1 MiB). Its header is
 * still what the calls are checked against, through __typeof__.
 *
 * Threads: the server thread reads the pool's stats and run's atomics only.
 */
#include "cli.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef CREW_MHD_SONAME
#define CREW_MHD_SONAME "libmicrohttpd.so.12"
#endif

static struct MHD_Daemon *daemon_;

/* The libmicrohttpd functions crew calls, resolved by load_mhd(). */
static struct {
    void *lib;
    __typeof__(&MHD_start_daemon) start_daemon;
    __typeof__(&MHD_stop_daemon) stop_daemon;
    __typeof__(&MHD_get_daemon_info) get_daemon_info;
    __typeof__(&MHD_create_response_from_buffer) create_response_from_buffer;
    __typeof__(&MHD_add_response_header) add_response_header;
    __typeof__(&MHD_queue_response) queue_response;
    __typeof__(&MHD_destroy_response) destroy_response;
} mhd;

/* Loads libmicrohttpd. 0, or -ENOENT after a message. */
static int load_mhd(void)
{
    mhd.lib = dlopen(CREW_MHD_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (!mhd.lib) {
        msg("--metrics: cannot load %s: %s", CREW_MHD_SONAME, dlerror());
        return -ENOENT;
    }
    /* POSIX lets a void * from dlsym become a function pointer; ISO C does not say. */
#define RESOLVE(field, name)                                                                       \
    *(void **)&mhd.field = dlsym(mhd.lib, name);                                                   \
    if (!mhd.field) {                                                                              \
        msg("--metrics: %s lacks %s", CREW_MHD_SONAME, name);                                      \
        dlclose(mhd.lib);                                                                          \
        mhd.lib = NULL;                                                                            \
        return -ENOENT;                                                                            \
    }
    RESOLVE(start_daemon, "MHD_start_daemon")
    RESOLVE(stop_daemon, "MHD_stop_daemon")
    RESOLVE(get_daemon_info, "MHD_get_daemon_info")
    RESOLVE(create_response_from_buffer, "MHD_create_response_from_buffer")
    RESOLVE(add_response_header, "MHD_add_response_header")
    RESOLVE(queue_response, "MHD_queue_response")
    RESOLVE(destroy_response, "MHD_destroy_response")
#undef RESOLVE
    return 0;
}

/* The Prometheus text: the pool's metrics, then the command's. */
static char *render(run *r, size_t *len)
{
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    if (!f)
        return NULL;
    crew_stats st;
    crew_pool_stats(r->pool, &st);
    const crew_stats *ps = &st;
    crew_prometheus_write(f, &ps, 1);
    fprintf(f,
            "# HELP crew_command_jobs_total Jobs finished by the crew command, by result.\n"
            "# TYPE crew_command_jobs_total counter\n"
            "crew_command_jobs_total{result=\"ok\"} %llu\n"
            "crew_command_jobs_total{result=\"failed\"} %llu\n"
            "crew_command_jobs_total{result=\"timed_out\"} %llu\n"
            "crew_command_jobs_total{result=\"not_started\"} %llu\n"
            "# HELP crew_command_retries_total Extra attempts after failures.\n"
            "# TYPE crew_command_retries_total counter\n"
            "crew_command_retries_total %llu\n"
            "# HELP crew_command_jobs_read_total Jobs read from the input.\n"
            "# TYPE crew_command_jobs_read_total counter\n"
            "crew_command_jobs_read_total %llu\n",
            (unsigned long long)atomic_load(&r->nok), (unsigned long long)atomic_load(&r->nfailed),
            (unsigned long long)atomic_load(&r->ntimedout),
            (unsigned long long)atomic_load(&r->nskipped),
            (unsigned long long)atomic_load(&r->nretried),
            (unsigned long long)atomic_load(&r->nread));
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

static enum MHD_Result answer(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_len, void **state)
{
    (void)version;
    (void)upload;
    (void)upload_len;
    (void)state;
    struct MHD_Response *resp;
    unsigned status = MHD_HTTP_OK;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        static char no[] = "only GET\n";
        resp = mhd.create_response_from_buffer(sizeof no - 1, no, MHD_RESPMEM_PERSISTENT);
        status = MHD_HTTP_METHOD_NOT_ALLOWED;
    } else if (strcmp(url, "/metrics") != 0) {
        static char nf[] = "not found: try /metrics\n";
        resp = mhd.create_response_from_buffer(sizeof nf - 1, nf, MHD_RESPMEM_PERSISTENT);
        status = MHD_HTTP_NOT_FOUND;
    } else {
        size_t len = 0;
        char *body = render(cls, &len);
        if (!body)
            return MHD_NO;
        resp = mhd.create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
        if (resp)
            mhd.add_response_header(resp, "Content-Type", "text/plain; version=0.0.4");
    }
    if (!resp)
        return MHD_NO;
    enum MHD_Result rc = mhd.queue_response(c, status, resp);
    mhd.destroy_response(resp);
    return rc;
}

/* Splits ADDR into host (empty: loopback) and port. The last colon separates them, so a
 * bare IPv6 address must be bracketed ([::1]:9090), as in URLs. */
static int split_addr(const char *addr, char *host, size_t hn, char *port, size_t pn)
{
    const char *colon;
    host[0] = '\0';
    if (addr[0] == '[') {
        const char *close = strchr(addr, ']');
        if (!close || close[1] != ':' || (size_t)(close - addr - 1) >= hn)
            return -EINVAL;
        memcpy(host, addr + 1, (size_t)(close - addr - 1));
        host[close - addr - 1] = '\0';
        colon = close + 1;
    } else if ((colon = strrchr(addr, ':')) != NULL) {
        if ((size_t)(colon - addr) >= hn)
            return -EINVAL;
        memcpy(host, addr, (size_t)(colon - addr));
        host[colon - addr] = '\0';
    } else {
        colon = addr - 1; /* a bare port */
    }
    const char *p = colon + 1;
    char *end;
    long v = strtol(p, &end, 10);
    if (!*p || *end || v < 0 || v > 65535 || strlen(p) >= pn)
        return -EINVAL;
    strcpy(port, p);
    return 0;
}

int metrics_start(run *r, const char *addr)
{
    char host[256], port[16];
    if (load_mhd())
        return -ENOENT;
    if (split_addr(addr, host, sizeof host, port, sizeof port)) {
        msg("--metrics: expected [HOST:]PORT such as 9090 or 127.0.0.1:9090, got '%s'", addr);
        return -EINVAL;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai;
    int gai = getaddrinfo(host[0] ? host : "127.0.0.1", port, &hints, &ai);
    if (gai) {
        msg("--metrics %s: %s", addr, gai_strerror(gai));
        return -EINVAL;
    }
    /* One internal thread polls and answers: scrapes are rare and cheap, and the thread
     * inherits crew's signal mask, so signals still go to the supervisor only. */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    daemon_ = mhd.start_daemon(flags, 0, NULL, NULL, answer, r, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                               MHD_OPTION_END);
    char shown[300];
    if (ai->ai_family == AF_INET6)
        snprintf(shown, sizeof shown, "[%s]", host);
    else
        snprintf(shown, sizeof shown, "%s", host[0] ? host : "127.0.0.1");
    freeaddrinfo(ai);
    if (!daemon_) {
        msg("--metrics %s: cannot listen there", addr);
        return -EADDRINUSE;
    }
    const union MHD_DaemonInfo *info = mhd.get_daemon_info(daemon_, MHD_DAEMON_INFO_BIND_PORT);
    if (!r->o->quiet)
        msg("metrics on http://%s:%u/metrics", shown, info ? (unsigned)info->port : 0u);
    return 0;
}

void metrics_stop(void)
{
    if (daemon_)
        mhd.stop_daemon(daemon_);
    daemon_ = NULL;
    if (mhd.lib)
        dlclose(mhd.lib);
    mhd.lib = NULL;
}
