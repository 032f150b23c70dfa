/*
 * peer_naive.c - the textbook pool, the one to beat: one mutex, two condition variables
 * and a bounded ring of {fn, arg}.
 *
 * Threads: one producer calls submit; `workers` threads take jobs. Everything in struct
 * pool below the lock is guarded by mu. A submit waits on not_full while the ring is full;
 * a worker waits on not_empty while it is empty and the pool open. close() wakes all
 * workers, which drain the ring and exit. Each submit and each take signals the other side
 * unconditionally, as the textbook does.
 */
#include "harness.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct slot {
    bench_fn fn;
    void *arg;
} slot;

typedef struct pool {
    pthread_mutex_t mu;
    pthread_cond_t not_empty; /* workers wait here while the ring is empty */
    pthread_cond_t not_full;  /* the producer waits here while it is full */
    slot *ring;               /* cap slots, under mu */
    size_t cap, head, len;    /* under mu */
    int closed;               /* under mu */
    pthread_t *threads;
    unsigned nthreads;
} pool;

static void *worker(void *p_)
{
    pool *p = p_;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (p->len == 0 && !p->closed)
            pthread_cond_wait(&p->not_empty, &p->mu);
        if (p->len == 0) {
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }
        slot s = p->ring[p->head];
        p->head = (p->head + 1) % p->cap;
        p->len--;
        pthread_cond_signal(&p->not_full);
        pthread_mutex_unlock(&p->mu);
        s.fn(s.arg);
    }
}

static void submit(void *p_, int kind, void *arg)
{
    pool *p = p_;
    pthread_mutex_lock(&p->mu);
    while (p->len == p->cap)
        pthread_cond_wait(&p->not_full, &p->mu);
    p->ring[(p->head + p->len) % p->cap] = (slot){bench_jobs[kind], arg};
    p->len++;
    pthread_cond_signal(&p->not_empty);
    pthread_mutex_unlock(&p->mu);
}

static int run(bench_load *load, unsigned workers, size_t cap)
{
    pool p = {.cap = cap, .nthreads = workers};
    pthread_mutex_init(&p.mu, NULL);
    pthread_cond_init(&p.not_empty, NULL);
    pthread_cond_init(&p.not_full, NULL);
    p.ring = malloc(cap * sizeof *p.ring);
    p.threads = malloc(workers * sizeof *p.threads);
    if (!p.ring || !p.threads) {
        fprintf(stderr, "naive: out of memory\n");
        return -1;
    }
    for (unsigned i = 0; i < workers; i++) {
        if (pthread_create(&p.threads[i], NULL, worker, &p) != 0) {
            fprintf(stderr, "naive: pthread_create failed\n");
            abort();
        }
    }

    bench_produce(load, submit, &p);

    pthread_mutex_lock(&p.mu);
    p.closed = 1;
    pthread_cond_broadcast(&p.not_empty);
    pthread_mutex_unlock(&p.mu);
    for (unsigned i = 0; i < workers; i++)
        pthread_join(p.threads[i], NULL);
    bench_done(load);

    free(p.threads);
    free(p.ring);
    pthread_cond_destroy(&p.not_full);
    pthread_cond_destroy(&p.not_empty);
    pthread_mutex_destroy(&p.mu);
    return 0;
}

int main(int argc, char **argv)
{
    static const bench_peer peer = {.name = "naive", .run = run};
    return bench_main(argc, argv, &peer);
}
