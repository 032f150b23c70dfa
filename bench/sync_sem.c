/*
 * sync_sem.c - crew_sem acquire/release pairs per second (bench/run-sync runs it beside its
 * Go peer, go/sync_sem.go on golang.org/x/sync/semaphore).
 *
 * Usage: sync_sem <threads> <size> <seconds>
 *
 * T threads loop crew_sem_acquire(s, 1, CREW_FOREVER, NULL) then crew_sem_release(s, 1)
 * on one semaphore of `size` units, all started together and stopped together after the
 * given seconds. With one thread the pair never waits (the lock-free path); with more
 * threads than units every acquire contends. Prints key=value lines: pairs (in all),
 * secs (measured), pairs_per_sec, and fairness (the fewest pairs one thread made over the
 * most, 1 = even).
 */
#include <crew.h>

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

typedef struct shared {
    crew_sem *s;
    atomic_bool go, stop; /* set by main: start and stop the loops */
} shared;

typedef struct worker {
    shared *sh;
    long pairs; /* pairs this thread made */
    pthread_t tid;
    char pad[64]; /* keeps neighbours' counters off each other's cache line */
} worker;

static void *loop(void *arg)
{
    worker *w = arg;
    shared *sh = w->sh;
    while (!atomic_load_explicit(&sh->go, memory_order_acquire))
        sched_yield();
    long n = 0;
    while (!atomic_load_explicit(&sh->stop, memory_order_relaxed)) {
        if (crew_sem_acquire(sh->s, 1, CREW_FOREVER, NULL) != 0)
            abort();
        if (crew_sem_release(sh->s, 1) != 0)
            abort();
        n++;
    }
    w->pairs = n;
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: sync_sem <threads> <size> <seconds>\n");
        return 2;
    }
    int threads = atoi(argv[1]);
    int64_t size = atoll(argv[2]);
    double secs = atof(argv[3]);
    if (threads < 1 || threads > 256 || size < 1 || !(secs > 0)) {
        fprintf(stderr, "sync_sem: bad arguments\n");
        return 2;
    }
    shared sh;
    atomic_init(&sh.go, false);
    atomic_init(&sh.stop, false);
    if (crew_sem_create(&sh.s, size) != 0)
        return 1;
    worker *w = calloc((size_t)threads, sizeof *w);
    if (!w)
        return 1;
    for (int i = 0; i < threads; i++) {
        w[i].sh = &sh;
        if (pthread_create(&w[i].tid, NULL, loop, &w[i]) != 0)
            return 1;
    }
    int64_t t0 = crew_now();
    atomic_store_explicit(&sh.go, true, memory_order_release);
    int64_t ns = (int64_t)(secs * 1e9);
    struct timespec ts = {(time_t)(ns / CREW_SEC), (long)(ns % CREW_SEC)};
    nanosleep(&ts, NULL);
    atomic_store(&sh.stop, true);
    long total = 0, least = -1, most = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(w[i].tid, NULL);
        total += w[i].pairs;
        least = least < 0 || w[i].pairs < least ? w[i].pairs : least;
        most = w[i].pairs > most ? w[i].pairs : most;
    }
    double elapsed = (double)(crew_now() - t0) / 1e9;
    printf("pairs=%ld\nsecs=%.3f\npairs_per_sec=%.0f\nfairness=%.3f\n", total, elapsed,
           (double)total / elapsed, most ? (double)least / (double)most : 0.0);
    crew_sem_destroy(sh.s);
    free(w);
    return 0;
}
