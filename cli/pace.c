/*
 * pace.c - when a job may start: --memfree, --load, --rate, --delay; and retry backoff.
 *
 * A worker calls pace_wait() before each attempt. Admission (--memfree: MemAvailable from
 * /proc/meminfo at least SIZE; --load: runnable tasks from /proc/loadavg at most N) is
 * re-read at most every ADMIT_CACHE, so a fast stream of jobs does not read /proc per job;
 * while a limit holds the worker re-checks every ADMIT_RETRY (the kernel offers no event
 * for "memory freed", so this is the one place crew polls). Start pacing (--rate N/s,
 * --delay DUR) is a single "next start" instant: each start takes the next free instant,
 * at least max(1/rate, delay) after the previous one, and sleeps until it; a token bucket
 * with a burst of one. Every sleep is crew_ctx_wait on crew's stop ctx, so a signal or a
 * --halt ends it at once.
 *
 * Issue 3's crew_rate (a token bucket) and crew_retry (backoff with full jitter) replace
 * pace_start and retry_backoff once they are on main; this file keeps them behind the same
 * small interface meanwhile.
 *
 * Threads: any worker; one mutex guards the cache and the next start instant.
 */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ADMIT_CACHE (100 * CREW_MSEC) /* how long a /proc reading stays valid */
#define ADMIT_RETRY (100 * CREW_MSEC) /* how often a held-back start re-checks */
#define BACKOFF_CAP (30 * CREW_SEC)   /* the largest retry delay (unless the base is larger) */

static struct {
    pthread_mutex_t lock; /* guards everything below */
    uint64_t memfree;     /* --memfree bytes, 0 = none */
    double load;          /* --load, < 0 = none */
    int64_t interval;     /* least ns between two starts, 0 = none */
    int64_t next_start;   /* the earliest instant the next start may take */
    int64_t read_at;      /* when mem_avail and runnable were read, or 0 */
    uint64_t mem_avail;   /* MemAvailable, bytes */
    double runnable;      /* runnable tasks, crew's reader excluded */
} pace = {.lock = PTHREAD_MUTEX_INITIALIZER, .load = -1};

int pace_init(const opts *o)
{
    pace.memfree = o->memfree;
    pace.load = o->load;
    pace.interval = o->delay;
    if (o->rate > 0) {
        int64_t per = (int64_t)((double)CREW_SEC / o->rate);
        if (per > pace.interval)
            pace.interval = per;
    }
    pace.next_start = 0;
    pace.read_at = 0;
    return 0;
}

void pace_fini(void)
{
}

/* MemAvailable in bytes, or UINT64_MAX if unknown. */
static uint64_t mem_available(void)
{
    FILE *f = fopen("/proc/meminfo", "re");
    if (!f)
        return UINT64_MAX;
    char line[256];
    unsigned long long kb = 0;
    bool found = false;
    while (!found && fgets(line, sizeof line, f))
        found = sscanf(line, "MemAvailable: %llu kB", &kb) == 1;
    fclose(f);
    return found ? (uint64_t)kb * 1024 : UINT64_MAX;
}

/* Runnable tasks now (the 4th field of /proc/loadavg, "R/T"), minus the reader itself. */
static double runnable_now(void)
{
    FILE *f = fopen("/proc/loadavg", "re");
    if (!f)
        return 0;
    double a, b, c;
    int running = 1;
    if (fscanf(f, "%lf %lf %lf %d/", &a, &b, &c, &running) != 4)
        running = 1;
    fclose(f);
    return running > 0 ? running - 1 : 0;
}

/* True if --memfree and --load allow a start now (under pace.lock). */
static bool admitted(void)
{
    if (pace.memfree == 0 && pace.load < 0)
        return true;
    int64_t now = crew_now();
    if (pace.read_at == 0 || now - pace.read_at >= ADMIT_CACHE) {
        pace.mem_avail = pace.memfree ? mem_available() : UINT64_MAX;
        pace.runnable = pace.load >= 0 ? runnable_now() : 0;
        pace.read_at = now;
    }
    return pace.mem_avail >= pace.memfree && (pace.load < 0 || pace.runnable <= pace.load);
}

int pace_wait(crew_ctx *stop)
{
    if (pace.memfree == 0 && pace.load < 0 && pace.interval == 0)
        return 0;
    for (;;) {
        pthread_mutex_lock(&pace.lock);
        bool ok = admitted();
        pthread_mutex_unlock(&pace.lock);
        if (ok)
            break;
        if (crew_ctx_wait(stop, crew_now() + ADMIT_RETRY) == 0)
            return CREW_ECANCELED;
    }
    if (pace.interval == 0)
        return 0;
    pthread_mutex_lock(&pace.lock);
    int64_t now = crew_now();
    int64_t at = pace.next_start > now ? pace.next_start : now;
    pace.next_start = at + pace.interval;
    pthread_mutex_unlock(&pace.lock);
    if (at > now && crew_ctx_wait(stop, at) == 0)
        return CREW_ECANCELED;
    return 0;
}

/* A per-thread xorshift64*: the jitter needs no quality beyond spreading retries. */
static uint64_t rnd(void)
{
    static _Thread_local uint64_t x;
    if (x == 0)
        x = (uint64_t)crew_now() ^ ((uint64_t)(uintptr_t)&x << 17) ^ 0x9e3779b97f4a7c15ull;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    return x * 0x2545f4914f6cdd1dull;
}

int64_t retry_backoff(int64_t base, unsigned n)
{
    if (base <= 0)
        return 0;
    int64_t cap = base > BACKOFF_CAP ? base : BACKOFF_CAP;
    int64_t d = base;
    for (unsigned i = 1; i < n && d < cap; i++)
        d = d > cap / 2 ? cap : d * 2;
    if (d > cap)
        d = cap;
    return (int64_t)(rnd() % ((uint64_t)d + 1)); /* full jitter: uniform in [0, d] */
}

int parse_rate(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || !isfinite(v) || v <= 0)
        return -EINVAL;
    double per = 1;
    if (*end == '/') {
        end++;
        if (strcmp(end, "s") == 0 || strcmp(end, "sec") == 0)
            per = 1;
        else if (strcmp(end, "m") == 0 || strcmp(end, "min") == 0)
            per = 60;
        else if (strcmp(end, "h") == 0)
            per = 3600;
        else
            return -EINVAL;
    } else if (*end) {
        return -EINVAL;
    }
    *out = v / per;
    return 0;
}

int parse_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || !isfinite(v) || v < 0)
        return -EINVAL;
    double mult = 1;
    switch (*end) {
    case 'k':
    case 'K':
        mult = 1024.0;
        break;
    case 'm':
    case 'M':
        mult = 1024.0 * 1024;
        break;
    case 'g':
    case 'G':
        mult = 1024.0 * 1024 * 1024;
        break;
    case 't':
    case 'T':
        mult = 1024.0 * 1024 * 1024 * 1024;
        break;
    case '\0':
    case 'b':
    case 'B':
        break;
    default:
        return -EINVAL;
    }
    if (*end && *end != 'b' && *end != 'B')
        end++;
    if (strcmp(end, "") != 0 && strcmp(end, "b") != 0 && strcmp(end, "B") != 0 &&
        strcmp(end, "iB") != 0)
        return -EINVAL;
    double bytes = v * mult;
    if (bytes >= 1.8e19)
        return -EINVAL;
    *out = (uint64_t)bytes;
    return 0;
}
