/*
 * semaphore.c - the seeds' semaphore patterns, with crew_sem.
 *
 * 1. Bounding concurrency (Go: sem := make(chan struct{}, N)): one thread per task, but
 *    only N run at once. The producer acquires a unit before it starts a task, the task
 *    releases it when done, and acquiring all N units at the end waits for the stragglers.
 * 2. A weighted semaphore (Go: semaphore.NewWeighted(8)): jobs of different cost run on a
 *    crew pool while their total cost stays within 8 units.
 * 3. What a channel cannot do: an acquire that cannot be served before its ctx's deadline
 *    fails with CREW_ETIMEDOUT and holds nothing; and a large request at the head of the
 *    queue holds back the smaller ones behind it (FIFO), so it is not starved.
 *
 * Usage: semaphore [TASKS] (default 10). Each part prints what happens and checks it; the
 * last line is "semaphore: ok" when every check held (the exit status is 0 then).
 */
#include <crew.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#define SLOTS 3 /* part 1: tasks at once */
#define UNITS 8 /* parts 2 and 3: the weighted semaphore's size */

static int failures;

static void check(bool ok, const char *what)
{
    if (!ok) {
        printf("FAIL: %s\n", what);
        failures++;
    }
}

/* Sleeps ms milliseconds (on a ctx that is never cancelled: only the deadline ends it). */
static void work(int64_t ms)
{
    crew_ctx_wait(NULL, crew_deadline_in(ms * CREW_MSEC));
}

/* Raises *peak to now if now is higher. */
static void note_peak(atomic_int *peak, int now)
{
    int p = atomic_load(peak);
    while (now > p && !atomic_compare_exchange_weak(peak, &p, now))
        ;
}

/* ---- 1. one thread per task, at most SLOTS at once -------------------------------------- */

static crew_sem *slots;
static atomic_int running, running_peak;

static void *task(void *arg)
{
    int id = (int)(intptr_t)arg;
    int now = atomic_fetch_add(&running, 1) + 1;
    note_peak(&running_peak, now);
    printf("  task %2d runs (%d of %d slots busy)\n", id, now, SLOTS);
    work(5 + id % 3 * 5);
    atomic_fetch_sub(&running, 1);
    crew_sem_release(slots, 1); /* defer func() { <-sem }() */
    return NULL;
}

static void bounded_tasks(int tasks)
{
    printf("1. %d tasks, one thread each, at most %d at once\n", tasks, SLOTS);
    pthread_t *tids = calloc((size_t)tasks, sizeof *tids);
    check(tids && crew_sem_create(&slots, SLOTS) == 0, "create");
    for (int i = 0; i < tasks; i++) {
        int rc = crew_sem_acquire(slots, 1, CREW_FOREVER, NULL); /* sem <- struct{}{} */
        check(rc == 0, "acquire a slot");
        check(pthread_create(&tids[i], NULL, task, (void *)(intptr_t)i) == 0, "thread");
    }
    /* Wait for the tasks in flight: all the slots back means all of them are done. */
    check(crew_sem_acquire(slots, SLOTS, CREW_FOREVER, NULL) == 0, "acquire every slot");
    check(atomic_load(&running) == 0, "no task runs after all slots came back");
    for (int i = 0; i < tasks; i++)
        pthread_join(tids[i], NULL);
    printf("   all %d done; at most %d ran at once\n", tasks, atomic_load(&running_peak));
    check(atomic_load(&running_peak) <= SLOTS, "never more than SLOTS tasks at once");
    crew_sem_destroy(slots);
    free(tids);
}

/* ---- 2. weighted: jobs of different cost on a pool --------------------------------------- */

static crew_sem *budget;
static atomic_int in_use, in_use_peak;

typedef struct job {
    int id;
    int64_t cost;
} job;

static int run_job(crew_ctx *ctx, void *arg)
{
    job *j = arg;
    (void)ctx;
    int now = atomic_fetch_add(&in_use, (int)j->cost) + (int)j->cost;
    note_peak(&in_use_peak, now);
    printf("  job %2d (cost %lld) runs: %d of %d units in use\n", j->id, (long long)j->cost, now,
           UNITS);
    work(5);
    atomic_fetch_sub(&in_use, (int)j->cost);
    return crew_sem_release(budget, j->cost); /* defer sem.Release(j.Cost) */
}

static void weighted_jobs(int n)
{
    printf("2. %d jobs of cost 1..4 on 8 workers, at most %d units of cost at once\n", n, UNITS);
    job *jobs = calloc((size_t)n, sizeof *jobs);
    crew_pool *pool = NULL;
    check(jobs && crew_sem_create(&budget, UNITS) == 0, "create");
    check(crew_pool_create(&pool, &(crew_pool_opts){.name = "weighted", .workers = 8}) == 0,
          "pool");
    for (int i = 0; i < n && pool; i++) {
        jobs[i] = (job){i, 1 + (i * 7) % 4};
        /* if err := sem.Acquire(ctx, j.Cost); err != nil { return err } */
        int rc = crew_sem_acquire(budget, jobs[i].cost, CREW_FOREVER, NULL);
        check(rc == 0, "acquire a job's cost");
        rc = crew_pool_submit(pool, run_job, &jobs[i], CREW_FOREVER, NULL);
        check(rc == 0, "submit");
    }
    check(crew_sem_acquire(budget, UNITS, crew_deadline_in(30 * CREW_SEC), NULL) == 0,
          "every unit comes back");
    printf("   all %d done; at most %d units were in use at once\n", n, atomic_load(&in_use_peak));
    check(atomic_load(&in_use_peak) <= UNITS, "never more than UNITS units in use");
    crew_pool_destroy(pool);
    crew_sem_destroy(budget);
    free(jobs);
}

/* ---- 3. cancellation and FIFO ------------------------------------------------------------- */

typedef struct big_request {
    crew_sem *s;
    int rc;
} big_request;

static void *acquire_all(void *arg)
{
    big_request *b = arg;
    b->rc = crew_sem_acquire(b->s, UNITS, CREW_FOREVER, NULL);
    return NULL;
}

static void cancel_and_fifo(void)
{
    printf("3. a ctx deadline, and a large request among small ones\n");
    crew_sem *s = NULL;
    check(crew_sem_create(&s, UNITS) == 0, "create");
    check(crew_sem_acquire(s, UNITS, CREW_FOREVER, NULL) == 0, "hold every unit");

    /* sem.Acquire(ctx, 1) with a 50 ms timeout, while nothing is released. */
    crew_ctx *ctx = NULL;
    check(crew_ctx_with_timeout(NULL, 50 * CREW_MSEC, &ctx) == 0, "ctx");
    int rc = crew_sem_acquire(s, 1, CREW_FOREVER, ctx);
    printf("   acquire(1) with a 50 ms ctx while all %d units are held: %s\n", UNITS,
           crew_err_name(rc));
    check(rc == CREW_ETIMEDOUT, "the ctx's deadline ends the acquire");
    check(crew_sem_available(s) == 0, "the failed acquire holds nothing");
    crew_ctx_release(ctx);

    /* A request for all 8 units queues; 2 units come free; a request for 1 would fit, but
     * it is refused: the large one is first in line. */
    big_request big = {s, 1};
    pthread_t t;
    check(pthread_create(&t, NULL, acquire_all, &big) == 0, "thread");
    while (crew_sem_waiters(s) == 0)
        work(1);
    check(crew_sem_release(s, 2) == 0, "release 2");
    rc = crew_sem_try_acquire(s, 1);
    printf("   with acquire(%d) queued and 2 units free, try_acquire(1): %s\n", UNITS,
           crew_err_name(rc));
    check(rc == CREW_EAGAIN, "a small request does not overtake the queued large one");
    check(crew_sem_release(s, UNITS - 2) == 0, "release the rest");
    pthread_join(t, NULL);
    printf("   once all %d were free the large request got them: %s\n", UNITS,
           crew_err_name(big.rc));
    check(big.rc == 0, "the large request is served");

    /* Releasing more than is held is an error, not a corrupt count. */
    check(crew_sem_release(s, UNITS) == 0, "give back the large request's units");
    rc = crew_sem_release(s, 1);
    printf("   release(1) with nothing held: %s\n", crew_err_name(rc));
    check(rc == CREW_ERANGE && crew_sem_available(s) == UNITS, "over-release is refused");
    crew_sem_destroy(s);
}

int main(int argc, char **argv)
{
    int tasks = argc > 1 ? atoi(argv[1]) : 10;
    if (tasks < 1 || tasks > 10000) {
        fprintf(stderr, "usage: semaphore [TASKS]  (1..10000)\n");
        return 2;
    }
    bounded_tasks(tasks);
    weighted_jobs(tasks);
    cancel_and_fifo();
    if (failures) {
        printf("semaphore: %d checks failed\n", failures);
        return 1;
    }
    printf("semaphore: ok\n");
    return 0;
}
