/*
 * errgroup - the seeds' errgroup snippets, in C on libcrew's error groups.
 *
 * 1. Fail-fast (the seeds' TestErrgroupFailFast): 100 tasks, at most 4 at once; task 7
 *    fails, which cancels the tasks running with it, and the group then starts no more (Go's
 *    errgroup would still start the other 92, each only to find its ctx cancelled).
 * 2. SetLimit(8) and results by index (the seeds' RunWithErrgroup): 1000 jobs write their
 *    result into their own slot of an array, at most 8 in flight, on a pool of the caller's.
 * 3. Every error, not just the first (the errgroup's "wrong choice" case in the seeds): with
 *    all_errors nothing is cancelled, and each failed task is listed with its index.
 * 4. TryGo: at the limit, crew_group_try_go refuses at once.
 *
 * Usage: errgroup. Prints what each part shows, then "errgroup: all as expected" if every
 * fact it checks held (its test looks for that line); exits 1 otherwise.
 */
#include <crew.h>

#include <stdatomic.h>
#include <stdio.h>

static int failures; /* facts that did not hold */

static void expect(bool ok, const char *what)
{
    if (!ok) {
        printf("  UNEXPECTED: %s\n", what);
        failures++;
    }
}

/* Counts the tasks inside their function and remembers the most at once. */
static _Atomic int inside, peak;

static void enter(void)
{
    int now = atomic_fetch_add(&inside, 1) + 1;
    int was = atomic_load(&peak);
    while (now > was && !atomic_compare_exchange_weak(&peak, &was, now))
        ;
}

static void leave(void)
{
    atomic_fetch_sub(&inside, 1);
}

/* ---- 1. fail-fast ------------------------------------------------------------------- */

static _Atomic int finished, stopped;

/* Task i: 7 fails at once ("boom"); the others wait 10 ms, or less if the group's ctx is
 * cancelled meanwhile (the seeds' select on time.After and ctx.Done). */
static int failfast_task(crew_ctx *ctx, void *arg)
{
    int i = *(const int *)arg;
    enter();
    int rc = 0;
    if (i == 7) {
        rc = CREW_EBUSY; /* boom */
    } else if (crew_ctx_wait(ctx, crew_deadline_in(10 * CREW_MSEC)) == 0) {
        atomic_fetch_add(&stopped, 1); /* ctx.Done() came first */
        rc = crew_ctx_err(ctx);
    } else {
        atomic_fetch_add(&finished, 1);
    }
    leave();
    return rc;
}

static void fail_fast(void)
{
    static int ids[100];
    crew_group *g;
    if (crew_group_create(&g, &(crew_group_opts){.limit = 4}) != 0) {
        expect(false, "group created");
        return;
    }
    atomic_store(&peak, 0);
    int started = 0, not_started = 0;
    for (int i = 0; i < 100; i++) {
        ids[i] = i;
        int rc = crew_group_go(g, failfast_task, &ids[i], CREW_FOREVER, NULL);
        if (rc == 0) {
            started++;
        } else {
            not_started = 100 - i; /* CREW_ECANCELED: the group failed, it starts no more */
            break;
        }
    }
    int rc = crew_group_wait(g, CREW_FOREVER, NULL);
    crew_group_error e = {0};
    size_t n = crew_group_errors(g, &e, 1);
    printf("1. fail-fast: 100 tasks, limit 4, task 7 fails\n");
    printf("   wait: %s (%s)\n", crew_err_name(rc), crew_strerror(rc));
    printf("   failed task: %d\n", n ? (int)e.index : -1);
    int skipped = started - atomic_load(&finished) - atomic_load(&stopped) - 1;
    printf("   started %d, not started %d; of those started: %d finished, %d stopped by the "
           "cancel, 1 failed, %d skipped (still queued when the cancel came)\n",
           started, not_started, atomic_load(&finished), atomic_load(&stopped), skipped);
    printf("   at most %d running at once\n", atomic_load(&peak));
    expect(rc == CREW_EBUSY && n == 1 && e.index == 7 && e.ran, "task 7's error");
    expect(started >= 8 && started + not_started == 100, "no task started after the failure");
    expect(skipped >= 0, "accounting");
    expect(atomic_load(&peak) <= 4, "the limit");
    crew_group_destroy(g);
}

/* ---- 2. SetLimit(8), results by index -------------------------------------------------- */

typedef struct job {
    long in;   /* the input */
    long *out; /* its own slot of the results array */
} job;

/* A simulated call of 100 us, then the result into the job's own slot (no lock needed). */
static int square(crew_ctx *ctx, void *arg)
{
    job *j = arg;
    enter();
    (void)crew_ctx_wait(ctx, crew_deadline_in(100 * CREW_USEC));
    *j->out = j->in * j->in;
    leave();
    return 0;
}

static void set_limit(void)
{
    enum { N = 1000 };
    static job jobs[N];
    static long results[N];
    crew_pool *pool;
    crew_group *g;
    if (crew_pool_create(&pool, &(crew_pool_opts){.workers = 16, .queue_cap = 64}) != 0 ||
        crew_group_create(&g, &(crew_group_opts){.pool = pool, .limit = 8}) != 0) {
        expect(false, "pool and group created");
        return;
    }
    atomic_store(&peak, 0);
    size_t most_active = 0;
    for (int i = 0; i < N; i++) {
        jobs[i] = (job){i, &results[i]};
        if (crew_group_go(g, square, &jobs[i], CREW_FOREVER, NULL) != 0)
            expect(false, "every go accepted");
        size_t active = crew_group_active(g);
        most_active = active > most_active ? active : most_active;
    }
    int rc = crew_group_wait(g, CREW_FOREVER, NULL);
    long sum = 0;
    for (int i = 0; i < N; i++)
        sum += results[i];
    printf("2. SetLimit(8): %d squares into results[i] on a pool of 16 workers\n", N);
    printf("   wait: %s; sum of squares: %ld; at most %d running, %zu in flight at once\n",
           crew_err_name(rc), sum, atomic_load(&peak), most_active);
    expect(rc == 0 && sum == 332833500L, "the squares");
    expect(atomic_load(&peak) <= 8 && most_active <= 8, "the limit");
    crew_group_destroy(g);
    crew_pool_destroy(pool);
}

/* ---- 3. every error ------------------------------------------------------------------ */

/* Every fifth task fails, each with an error of its own. */
static int every_fifth(crew_ctx *ctx, void *arg)
{
    (void)ctx;
    int i = *(const int *)arg;
    return i % 5 == 4 ? -(1000 + i) : 0;
}

static void all_errors(void)
{
    static int ids[20];
    crew_group *g;
    if (crew_group_create(&g, &(crew_group_opts){.all_errors = true, .limit = 3}) != 0) {
        expect(false, "group created");
        return;
    }
    for (int i = 0; i < 20; i++) {
        ids[i] = i;
        if (crew_group_go(g, every_fifth, &ids[i], CREW_FOREVER, NULL) != 0)
            expect(false, "every go accepted");
    }
    int rc = crew_group_wait(g, CREW_FOREVER, NULL);
    crew_group_error e[20];
    size_t n = crew_group_errors(g, e, 20);
    printf("3. all errors: 20 tasks, every fifth fails; nothing is cancelled\n");
    printf("   wait: %d (the lowest index's); errors: %zu (tasks", rc, n);
    for (size_t k = 0; k < n; k++)
        printf("%s %d", k ? "," : "", (int)e[k].index);
    printf(")\n");
    for (size_t k = 0; k < n; k++)
        printf("   task %d: %d\n", (int)e[k].index, e[k].err);
    expect(rc == -1004 && n == 4 && e[3].index == 19 && e[3].err == -1019, "the errors");
    expect(!crew_ctx_done(crew_group_ctx(g)), "nothing cancelled");
    crew_group_destroy(g);
}

/* ---- 4. TryGo ---------------------------------------------------------------------- */

/* Holds its slot until its group's ctx is cancelled. */
static int hold(crew_ctx *ctx, void *arg)
{
    (void)arg;
    (void)crew_ctx_wait(ctx, CREW_FOREVER);
    return 0;
}

static void try_go(void)
{
    crew_group *g;
    if (crew_group_create(&g, &(crew_group_opts){.limit = 2}) != 0) {
        expect(false, "group created");
        return;
    }
    int a = crew_group_try_go(g, hold, NULL);
    int b = crew_group_try_go(g, hold, NULL);
    int c = crew_group_try_go(g, hold, NULL);
    printf("4. TryGo, limit 2: %s, %s, then at the limit: %s\n", crew_err_name(a), crew_err_name(b),
           crew_err_name(c));
    expect(a == 0 && b == 0 && c == CREW_EAGAIN, "try_go at the limit");
    crew_group_destroy(g); /* cancels the group's ctx: the holders return */
}

int main(void)
{
    fail_fast();
    set_limit();
    all_errors();
    try_go();
    if (failures) {
        printf("errgroup: %d unexpected results\n", failures);
        return 1;
    }
    printf("errgroup: all as expected\n");
    return 0;
}
