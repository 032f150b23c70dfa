/*
 * testutil.h - what every libcrew test shares: cmocka, leak checks, small helpers.
 *
 * Leak checks (the seeds' goroutine-leak test): leak_mark() records the number of threads
 * (/proc/self/task) and open file descriptors (/proc/self/fd); leak_check() asserts that
 * both are back to those numbers. Threads that were told to exit may still be on their
 * way out, so leak_check polls for up to 10 s before it fails, as goleak does; it never
 * sleeps when the counts already match. Bytes are checked by LeakSanitizer in the ASan
 * build.
 */
#ifndef CREW_TESTUTIL_H
#define CREW_TESTUTIL_H

#include <dirent.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <cmocka.h>

#include "crew.h"

static inline int count_dir(const char *path)
{
    DIR *d = opendir(path);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static inline int thread_count(void)
{
    return count_dir("/proc/self/task");
}

/* Open fds, not counting the one opendir() itself holds while counting. */
static inline int fd_count(void)
{
    return count_dir("/proc/self/fd") - 1;
}

typedef struct leak_mark {
    int threads, fds;
} leak_mark;

static inline leak_mark leak_mark_now(void)
{
    leak_mark m = {thread_count(), fd_count()};
    return m;
}

static inline void leak_check(leak_mark m)
{
    int64_t until = crew_now() + 10 * CREW_SEC;
    int threads, fds;
    for (;;) {
        threads = thread_count();
        fds = fd_count();
        if ((threads <= m.threads && fds <= m.fds) || crew_now() > until)
            break;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL); /* polling an asynchronous exit, not synchronising */
    }
    if (threads > m.threads)
        fail_msg("thread leak: %d threads, %d at start", threads, m.threads);
    if (fds > m.fds)
        fail_msg("fd leak: %d fds, %d at start", fds, m.fds);
}

static inline void *leak_noop_thread(void *arg)
{
    return arg;
}

/* cmocka setup/teardown pair that checks every test for leaks. The first call starts and
 * joins one thread, so that runtime helper threads started on the first pthread_create
 * (ThreadSanitizer's background thread) are already counted in every mark. */
static inline int leak_setup(void **state)
{
    static int warmed;
    if (!warmed) {
        pthread_t t;
        if (pthread_create(&t, NULL, leak_noop_thread, NULL) == 0)
            pthread_join(t, NULL);
        warmed = 1;
    }
    leak_mark *m = malloc(sizeof *m);
    *m = leak_mark_now();
    *state = m;
    return 0;
}

static inline int leak_teardown(void **state)
{
    leak_mark *m = *state;
    leak_check(*m);
    free(m);
    return 0;
}

#define leak_test(fn) cmocka_unit_test_setup_teardown(fn, leak_setup, leak_teardown)

/* Waits (yielding, at most 10 s) until the process has at most n threads: for threads told
 * to exit that are still on their way out. */
static inline void wait_threads_at_most(int n)
{
    int64_t until = crew_now() + 10 * CREW_SEC;
    while (thread_count() > n && crew_now() < until)
        sched_yield();
    assert_true(thread_count() <= n);
}

/* Burns a little time without sleeping, to give another thread a chance to block first.
 * A test's correctness never depends on it: it only makes the interesting interleaving
 * likelier. */
static inline void give_a_chance(void)
{
    int64_t until = crew_now() + 20 * CREW_MSEC;
    while (crew_now() < until)
        sched_yield();
}

/* Spins (yielding) until cond holds or 10 s pass, evaluating it once per round (it may
 * have side effects), and asserts that it held. */
#define eventually(cond)                                                                           \
    do {                                                                                           \
        int64_t until_ = crew_deadline_in(10 * CREW_SEC);                                          \
        bool ok_;                                                                                  \
        while (!(ok_ = (cond)) && crew_now() < until_)                                             \
            sched_yield();                                                                         \
        assert_true(ok_);                                                                          \
    } while (0)

/* A small fast PRNG for stress tests (xorshift64*), seeded per thread. */
static inline uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* Lets a stress test be scaled: CREW_STRESS_SCALE=0.1 for a quick run, 10 for a long one. */
static inline long stress_scaled(long n)
{
    const char *s = getenv("CREW_STRESS_SCALE");
    double f = s ? atof(s) : 1.0;
    long v = (long)((double)n * f);
    return v > 0 ? v : 1;
}

/* A stress run's seed: CREW_STRESS_SEED to replay one, else the clock. */
static inline uint64_t stress_seed(void)
{
    const char *s = getenv("CREW_STRESS_SEED");
    return s ? strtoull(s, NULL, 0) : (uint64_t)crew_now() | 1;
}

#endif
