/*
 * pace.c - when a job may start: --memfree, --load, --rate, --delay; and retry backoff.
 *
 * A worker calls pace_wait() before each attempt. Admission (--memfree: MemAvailable from
 * /proc/meminfo at least SIZE; --load: runnable tasks from /proc/loadavg at most N) is
 * re-read at most every ADMIT_CACHE, so a fast stream of jobs does not read /proc per job;
 * while a limit holds the worker re-checks every ADMIT_RETRY (the kernel offers no event
 * for "memory freed", so this is the one place crew polls). Start pacing (--rate N/s,
 * --delay DUR) is libcrew's token bucket (crew_rate) at max(1/rate, 1/delay) tokens per
 * second with a burst of one: each start takes a token, sleeping until it is due. The
 * pool's own rate option is not used because its wait is not cut short by crew stopping:
 * here every sleep ends at once when the stop ctx is cancelled (a signal, --halt).
 *
 * Threads: any worker; one mutex guards the /proc cache; crew_rate is thread-safe.
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

static struct {
    pthread_mutex_t lock; /* guards everything below */
    uint64_t memfree;     /* --memfree bytes, 0 = none */
    double load;          /* --load, < 0 = none */
    crew_rate *rate;      /* --rate/--delay start pacing, or NULL */
    int64_t read_at;      /* when mem_avail and runnable were read, or 0 */
    uint64_t mem_avail;   /* MemAvailable, bytes */
    double runnable;      /* runnable tasks, crew's reader excluded */
} pace = {.lock = PTHREAD_MUTEX_INITIALIZER, .load = -1};

int pace_init(const opts *o)
{
    pace.memfree = o->memfree;
    pace.load = o->load;
    pace.read_at = 0;
    double per_sec = o->rate;
    if (o->delay > 0 && (per_sec == 0 || (double)CREW_SEC / (double)o->delay < per_sec))
        per_sec = (double)CREW_SEC / (double)o->delay;
    if (per_sec > 0)
        return crew_rate_create(&pace.rate, per_sec, 1);
    return 0;
}

void pace_fini(void)
{
    crew_rate_destroy(pace.rate);
    pace.rate = NULL;
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
    if (pace.memfree == 0 && pace.load < 0 && !pace.rate)
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
    return pace.rate ? crew_rate_wait(pace.rate, CREW_FOREVER, stop) : 0;
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
