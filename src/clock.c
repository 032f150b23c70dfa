/*
 * clock.c - monotonic time, deadlines, durations, and cheap timestamps for metrics.
 *
 * crew_now() is CLOCK_MONOTONIC (about 27 ns here through the vDSO). Metrics need two
 * timestamps per job, which at that price would double the cost of an empty job, so they
 * use the TSC when the CPU says it is invariant (about 10 ns), converted to nanoseconds with
 * a ratio measured once against CLOCK_MONOTONIC. Without an invariant TSC, ticks are
 * nanoseconds from crew_now(). Stateless after the one-time calibration (pthread_once).
 */
#include "internal.h"

#include <math.h>
#include <sched.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <x86intrin.h>
#define CREW__HAVE_TSC 1
#endif

int64_t crew_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * CREW_SEC + ts.tv_nsec;
}

int64_t crew_deadline_in(int64_t ns)
{
    if (ns < 0)
        return CREW_FOREVER;
    int64_t d;
    if (__builtin_add_overflow(crew_now(), ns, &d))
        return CREW_FOREVER;
    return d;
}

bool crew__deadline_left(int64_t deadline, int64_t *left_ns)
{
    if (deadline == CREW_FOREVER) {
        *left_ns = INT64_MAX;
        return true;
    }
    int64_t left = deadline - crew_now();
    *left_ns = left;
    return left > 0;
}

unsigned crew_ncpu(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0)
            return (unsigned)n;
    }
    return 1;
}

/* ---- durations ------------------------------------------------------------------------ */

static int64_t unit_ns(const char *u, size_t len)
{
    static const struct {
        const char *name;
        int64_t ns;
    } units[] = {{"ns", 1},
                 {"us", CREW_USEC},
                 {"\xc2\xb5s", CREW_USEC}, /* µs */
                 {"ms", CREW_MSEC},
                 {"s", CREW_SEC},
                 {"m", 60 * CREW_SEC},
                 {"h", 3600 * CREW_SEC},
                 {"d", 86400 * CREW_SEC}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (strlen(units[i].name) == len && memcmp(units[i].name, u, len) == 0)
            return units[i].ns;
    return 0;
}

int crew_duration_parse(const char *s, int64_t *out)
{
    if (!s || !out || !*s)
        return CREW_EINVAL;
    int64_t total = 0;
    const char *p = s;
    while (*p) {
        /* A number: digits, optionally a fraction. */
        uint64_t whole = 0;
        int ndigits = 0;
        bool overflow = false;
        while (*p >= '0' && *p <= '9') {
            if (__builtin_mul_overflow(whole, 10, &whole) ||
                __builtin_add_overflow(whole, (uint64_t)(*p - '0'), &whole))
                overflow = true;
            p++;
            ndigits++;
        }
        double frac = 0;
        if (*p == '.') {
            double scale = 0.1;
            p++;
            while (*p >= '0' && *p <= '9') {
                frac += (*p - '0') * scale;
                scale /= 10;
                p++;
                ndigits++;
            }
        }
        if (ndigits == 0)
            return CREW_EINVAL;
        /* A unit: letters (or µ); none only for a lone number, meaning seconds. */
        const char *u = p;
        while ((*p >= 'a' && *p <= 'z') || (unsigned char)*p >= 0x80)
            p++;
        int64_t unit;
        if (p == u) {
            if (u != s + strspn(s, "0123456789.") || *p) /* "1m30" is not a duration */
                return CREW_EINVAL;
            unit = CREW_SEC;
        } else if (!(unit = unit_ns(u, (size_t)(p - u)))) {
            return CREW_EINVAL;
        }
        int64_t part;
        if (overflow || whole > (uint64_t)INT64_MAX ||
            __builtin_mul_overflow((int64_t)whole, unit, &part) ||
            __builtin_add_overflow(part, (int64_t)llround(frac * (double)unit), &part) ||
            __builtin_add_overflow(total, part, &total))
            return CREW_ERANGE;
    }
    *out = total;
    return 0;
}

/* ---- ticks ---------------------------------------------------------------------------- */

static pthread_once_t tick_once = PTHREAD_ONCE_INIT;
_Atomic bool crew__tick_tsc;   /* the TSC is invariant: ticks are TSC counts */
double crew__tick_scale = 1.0; /* ns per tick: set once by calibrate(), before the flag */

#ifdef CREW__HAVE_TSC
static bool tsc_invariant(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(0x80000000, &a, &b, &c, &d) || a < 0x80000007)
        return false;
    __get_cpuid(0x80000007, &a, &b, &c, &d);
    return (d >> 8) & 1;
}
#endif

static void calibrate(void)
{
#ifdef CREW__HAVE_TSC
    if (!tsc_invariant())
        return;
    /* 2 ms against CLOCK_MONOTONIC: the clock's ~30 ns error is 0.002% of that. */
    int64_t t0 = crew_now();
    uint64_t c0 = __rdtsc();
    int64_t t1;
    while ((t1 = crew_now()) - t0 < 2 * CREW_MSEC)
        ;
    uint64_t c1 = __rdtsc();
    if (c1 > c0) {
        crew__tick_scale = (double)(t1 - t0) / (double)(c1 - c0);
        atomic_store_explicit(&crew__tick_tsc, true, memory_order_release);
    }
#endif
}

uint64_t crew__ns_to_ticks(int64_t ns)
{
    pthread_once(&tick_once, calibrate);
    return ns <= 0 ? 0 : (uint64_t)((double)ns / crew__tick_scale);
}

void crew__ticks_init(void)
{
    pthread_once(&tick_once, calibrate);
}
