/*
 * clock.c - monotonic time, deadlines, durations, and cheap timestamps for metrics.
 *
 * crew_now() is CLOCK_MONOTONIC (about 27 ns here through the vDSO). Metrics need two
 * timestamps per job, which at that price would double the cost of an empty job, so they
 * use the TSC when the CPU says it is invariant (about 10 ns), converted to nanoseconds with
 * a ratio measured against CLOCK_MONOTONIC (see "ticks" below). Without an invariant TSC,
 * ticks are nanoseconds from crew_now(). Stateless after the calibration.
 */
#include "internal.h"

#include <math.h>
#include <sched.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#define CREW__HAVE_TSC 1
#if defined(__GLIBC__) && defined(__has_include)
#if __has_include(<sys/platform/x86.h>)
#include <sys/platform/x86.h> /* glibc 2.33+: the CPUID bits it read at start-up */
#define CREW__GLIBC_CPUID 1
#endif
#endif
#ifndef CREW__GLIBC_CPUID
#include <cpuid.h>
#endif
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
            __builtin_add_overflow(part, (int64_t)(frac * (double)unit + 0.5), &part) ||
            __builtin_add_overflow(total, part, &total))
            return CREW_ERANGE;
    }
    *out = total;
    return 0;
}

/* ---- ticks ----------------------------------------------------------------------------
 * The TSC's rate is measured against CLOCK_MONOTONIC lazily, so that a short command does
 * not wait for it. crew__ticks_init only takes an anchor (the clock and the TSC at one
 * instant) and switches the ticks to the TSC. The first conversion measures a provisional
 * scale from the anchor, over PROVISIONAL_NS at least (it waits out the rest if it comes
 * sooner; a pool's first, a new worker's, comes later); the first conversion at least
 * SETTLE_NS after the anchor measures again, over that longer span, and the scale is final
 * from then on. Each instant is the clock read between two TSC reads, the narrowest of three
 * tries: an interrupt inside one try cannot skew it. Measured here, 10 us gives a scale
 * within 0.2% (typically 0.02%); 2 ms, within 0.005%.
 *
 * The anchor is written once, before crew__tick_tsc is released. The scale is an atomic any
 * thread may measure (each measures a valid value; the last store wins); `measured` is
 * released after the first store. */

#define PROVISIONAL_NS (10 * CREW_USEC)
#define SETTLE_NS      (2 * CREW_MSEC)

static pthread_once_t tick_once = PTHREAD_ONCE_INIT;
_Atomic bool crew__tick_tsc;           /* the TSC is invariant: ticks are TSC counts */
_Atomic double crew__tick_scale = 1.0; /* ns per tick */
_Atomic bool crew__tick_settled;       /* no more calibration to do */
static _Atomic bool measured;          /* the scale has been measured at least once */
static int64_t anchor_ns;              /* the clock at the anchor (before crew__tick_tsc) */
static uint64_t anchor_tsc;            /* the TSC at the anchor */

#ifdef CREW__HAVE_TSC
/* Whether the TSC ticks at a constant rate in every power state. CPUID leaves the VM in a
 * virtual machine (10-20 us each here, measured), so glibc's copy of the bits is read when
 * it has one. */
static bool tsc_invariant(void)
{
#ifdef CREW__GLIBC_CPUID
    return CPU_FEATURE_PRESENT(INVARIANT_TSC);
#else
    unsigned a, b, c, d;
    if (!__get_cpuid(0x80000000, &a, &b, &c, &d) || a < 0x80000007)
        return false;
    __get_cpuid(0x80000007, &a, &b, &c, &d);
    return (d >> 8) & 1;
#endif
}

/* The clock and the TSC at one instant. */
static void tsc_instant(int64_t *ns, uint64_t *tsc)
{
    uint64_t best = 0;
    for (int i = 0; i < 3; i++) {
        uint64_t a = __rdtsc();
        int64_t t = crew_now();
        uint64_t b = __rdtsc();
        if (i == 0 || b - a < best) {
            best = b - a;
            *ns = t;
            *tsc = a + (b - a) / 2;
        }
    }
}
#endif

static void calibrate(void)
{
#ifdef CREW__HAVE_TSC
    if (tsc_invariant()) {
        tsc_instant(&anchor_ns, &anchor_tsc);
        atomic_store_explicit(&crew__tick_tsc, true, memory_order_release);
        return;
    }
#endif
    atomic_store_explicit(&crew__tick_settled, true, memory_order_relaxed);
}

#ifdef CREW__HAVE_TSC
/* Stores the scale from the anchor to now, once min_ns have passed since the anchor. */
static void measure(int64_t min_ns)
{
    int64_t t;
    uint64_t c;
    do
        tsc_instant(&t, &c);
    while (t - anchor_ns < min_ns);
    if (c > anchor_tsc)
        atomic_store_explicit(&crew__tick_scale, (double)(t - anchor_ns) / (double)(c - anchor_tsc),
                              memory_order_relaxed);
}
#endif

void crew__ticks_settle(void)
{
#ifdef CREW__HAVE_TSC
    if (!atomic_load_explicit(&crew__tick_tsc, memory_order_acquire))
        return; /* not calibrated yet: ticks are nanoseconds */
    if (!atomic_load_explicit(&measured, memory_order_acquire)) {
        measure(PROVISIONAL_NS);
        atomic_store_explicit(&measured, true, memory_order_release);
    }
    double scale = atomic_load_explicit(&crew__tick_scale, memory_order_relaxed);
    if ((double)(__rdtsc() - anchor_tsc) * scale < (double)SETTLE_NS)
        return; /* too soon to do better than the provisional scale: stay cheap */
    measure(SETTLE_NS);
    atomic_store_explicit(&crew__tick_settled, true, memory_order_relaxed);
#endif
}

uint64_t crew__ns_to_ticks(int64_t ns)
{
    pthread_once(&tick_once, calibrate);
    if (!atomic_load_explicit(&crew__tick_settled, memory_order_relaxed))
        crew__ticks_settle();
    return ns <= 0 ? 0
                   : (uint64_t)((double)ns /
                                atomic_load_explicit(&crew__tick_scale, memory_order_relaxed));
}

void crew__ticks_init(void)
{
    pthread_once(&tick_once, calibrate);
}
