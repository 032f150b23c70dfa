/*
 * reorder.c - the --keep-order window: finished jobs emitted in input order.
 *
 * A ring of cap slots indexed by seq % cap. The main thread admits each seq before it
 * submits the job, blocking while seq >= next + cap (next: the oldest seq not yet
 * emitted), so at most cap jobs are between "started" and "printed" and one slow job
 * holds back at most cap - 1 finished ones: memory stays bounded (their output is parked
 * in a spill file past a budget, see outbuf.c). A worker that finishes job seq puts it: if
 * seq == next it is emitted at once, followed by every ready successor; otherwise the park
 * callback moves its output out of the worker's buffers and it waits in its slot. Every
 * admitted seq must be put exactly once (skipped jobs too), or the window stalls.
 *
 * Locking: one mutex guards the ring and next; emit and park run with it held, so output
 * is never interleaved and parking needs no lock of its own. `room` (a condvar) wakes
 * admits when next advances or the window is woken for shutdown.
 *
 * This is the seeds' reorder buffer; issue 3's crew_order provides the same with a bounded
 * window, and replaces this file once it is on main.
 */
#include "cli.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

struct reorder {
    pthread_mutex_t lock; /* guards everything below */
    pthread_cond_t room;  /* signalled when next advances or on wake */
    job **ring;           /* cap slots: the parked job of seq s at s % cap, or NULL */
    size_t cap;           /* window size */
    uint64_t next;        /* the oldest seq not yet emitted */
    size_t pending;       /* parked jobs */
    bool woken;           /* admits return -ECANCELED */
    reorder_emit_fn emit; /* prints one job (and frees it) */
    reorder_emit_fn park; /* moves a job's output into the job before it waits */
    void *arg;            /* for emit and park */
};

int reorder_create(reorder **out, size_t cap, uint64_t first, reorder_emit_fn emit,
                   reorder_emit_fn park, void *arg)
{
    reorder *q = calloc(1, sizeof *q);
    if (!q)
        return -ENOMEM;
    q->ring = calloc(cap, sizeof *q->ring);
    if (!q->ring) {
        free(q);
        return -ENOMEM;
    }
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->room, NULL);
    q->cap = cap;
    q->next = first;
    q->emit = emit;
    q->park = park;
    q->arg = arg;
    *out = q;
    return 0;
}

void reorder_destroy(reorder *q)
{
    if (!q)
        return;
    for (size_t i = 0; i < q->cap; i++)
        job_free(q->ring[i]);
    pthread_cond_destroy(&q->room);
    pthread_mutex_destroy(&q->lock);
    free(q->ring);
    free(q);
}

int reorder_admit(reorder *q, uint64_t seq)
{
    pthread_mutex_lock(&q->lock);
    while (seq >= q->next + q->cap && !q->woken)
        pthread_cond_wait(&q->room, &q->lock);
    int rc = seq >= q->next + q->cap ? -ECANCELED : 0;
    pthread_mutex_unlock(&q->lock);
    return rc;
}

void reorder_put(reorder *q, job *j)
{
    pthread_mutex_lock(&q->lock);
    if (j->seq != q->next) {
        q->park(q->arg, j);
        q->ring[j->seq % q->cap] = j;
        q->pending++;
        pthread_mutex_unlock(&q->lock);
        return;
    }
    q->emit(q->arg, j);
    q->next++;
    for (job *n; (n = q->ring[q->next % q->cap]) != NULL && n->seq == q->next; q->next++) {
        q->ring[q->next % q->cap] = NULL;
        q->pending--;
        q->emit(q->arg, n);
    }
    pthread_cond_broadcast(&q->room);
    pthread_mutex_unlock(&q->lock);
}

void reorder_wake(reorder *q)
{
    pthread_mutex_lock(&q->lock);
    q->woken = true;
    pthread_cond_broadcast(&q->room);
    pthread_mutex_unlock(&q->lock);
}

size_t reorder_pending(reorder *q)
{
    pthread_mutex_lock(&q->lock);
    size_t n = q->pending;
    pthread_mutex_unlock(&q->lock);
    return n;
}
