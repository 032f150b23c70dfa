/*
 * main.c - the crew command: a parallel job runner on libcrew.
 *
 * The run, in order: parse the options; block SIGINT/SIGTERM/SIGHUP/SIGCHLD in every
 * thread (the supervisor takes them from a signalfd) and ignore SIGPIPE; become a child
 * subreaper; create a crew_pool of -j workers with a queue of --queue jobs; then read the
 * input and submit one job per argument tuple, blocking while the queue is full (so an
 * endless input costs a bounded read-ahead). When the input ends, or crew stops early (a
 * signal, --halt, a broken stdout), the pool is closed and drained; every orphan left is
 * terminated and reaped; the summary is printed; the exit status is GNU parallel's.
 *
 * A job is the pool job job_run (spawn.c): its worker runs it, prints it (output.c) and
 * then calls job_finish here, which counts it, logs it and applies --halt.
 *
 * Stopping has two levels. run_stop: no new job starts (the stop ctx is cancelled: the
 * blocked submit returns, queued jobs are skipped, waits end). run_terminate: the pool is
 * cancelled, whose ctx's on-cancel hook asks every worker to SIGTERM its job's group.
 *
 * Threads: main (input, submit), the pool's workers, the supervisor (from the second job
 * on, or once main would block on its input: before that, and for a run of one job, main
 * runs the supervisor's loop itself while it waits for the pool), libcrew's timer, and
 * the metrics server. Shared state is struct run's atomics.
 */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

run *g_run;

void crew_cli_assert_fail(const char *cond, const char *file, int line)
{
    fprintf(stderr, "crew: internal error: %s (%s:%d)\n", cond, file, line);
    abort();
}

void msg(const char *fmt, ...)
{
    char line[1024];
    int n = snprintf(line, sizeof line, "crew: ");
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        return;
    size_t len =
        (size_t)n +
        ((size_t)m < sizeof line - (size_t)n - 1 ? (size_t)m : sizeof line - (size_t)n - 2);
    line[len++] = '\n';
    bool bar = progress_hide();
    write_all(2, line, len);
    if (bar && g_run)
        progress_draw(g_run, false);
}

uint64_t run_total(run *r)
{
    int64_t total = atomic_load(&r->total);
    uint64_t skipped = atomic_load(&r->nresumed);
    return total < 0 || (uint64_t)total < skipped ? 0 : (uint64_t)total - skipped;
}

/* ---- finishing a job ------------------------------------------------------------------- */

/* --halt: has the condition been met by the counts now? */
static bool halt_due(run *r, uint64_t ok, uint64_t failed)
{
    const opts *o = r->o;
    uint64_t count = o->halt_why == HALT_FAIL      ? failed
                     : o->halt_why == HALT_SUCCESS ? ok
                                                   : ok + failed;
    if (!o->halt_pct)
        return (double)count >= o->halt_value;
    uint64_t total = run_total(r); /* a percentage waits until the total is known */
    return total > 0 && (double)count * 100.0 >= o->halt_value * (double)total;
}

/* The exit status --halt decides, given the job that triggered it. */
static int halt_status(run *r, const job *j, uint64_t failed)
{
    const opts *o = r->o;
    if (o->halt_why == HALT_SUCCESS)
        return 0;
    if (o->halt_why == HALT_FAIL && !o->halt_pct && o->halt_value == 1)
        return j->sig ? 128 + j->sig : j->exit_code; /* GNU: the failing job's status */
    if (o->halt_pct && o->halt_why == HALT_FAIL) {
        uint64_t total = run_total(r);
        return total ? (int)(failed * 100 / total) : 0;
    }
    return failed > 100 ? EXIT_MANY_FAILED : (int)failed;
}

void job_finish(run *r, job *j)
{
    const opts *o = r->o;
    if (j->state == JOB_SKIPPED) {
        atomic_fetch_add(&r->nskipped, 1);
        output_emit(r, j);
        return;
    }
    uint64_t ok = atomic_load(&r->nok), failed = atomic_load(&r->nfailed);
    if (j->state == JOB_OK) {
        ok = atomic_fetch_add(&r->nok, 1) + 1;
    } else {
        failed = atomic_fetch_add(&r->nfailed, 1) + 1;
        if (j->timed_out)
            atomic_fetch_add(&r->ntimedout, 1);
    }
    atomic_fetch_add(&r->runtime_sum, j->runtime);
    if (o->joblog || o->json) {
        slot *s = &r->slots[j->slot - 1];
        if (tmpl_display(r->t, j, j->slot, &s->x) == 0)
            j->command = strdup(s->x.display.p);
    }
    joblog_write(j);
    if (j->timed_out && !o->quiet && !o->json) {
        char d[32];
        format_duration(d, sizeof d, o->timeout);
        msg("job %llu timed out after %s (--timeout): %s", (unsigned long long)j->seq, d,
            j->command ? j->command : j->args[0]);
    }
    if (o->halt_when != HALT_NEVER && halt_due(r, ok, failed)) {
        int none = -1;
        if (atomic_compare_exchange_strong(&r->halt_exit, &none, halt_status(r, j, failed))) {
            if (!o->quiet)
                msg("--halt: %s after job %llu",
                    o->halt_when == HALT_NOW ? "terminating the running jobs"
                                             : "starting no more jobs",
                    (unsigned long long)j->seq);
            run_stop(r, STOP_HALT);
            if (o->halt_when == HALT_NOW)
                run_terminate(r);
        }
    }
    supervisor_job_done(r);
    output_emit(r, j);
}

/* The pool ctx's on-cancel hook: ask every worker to terminate its job. */
static void on_pool_cancel(void *arg, int err)
{
    (void)err;
    slots_request(arg, REQ_TERM);
}

/* ---- the run --------------------------------------------------------------------------- */

/* --dry-run: print each command line, run nothing. */
static int dry_run(run *r, input *in)
{
    expansion x = {0};
    int rc = 0;
    for (job *j; (j = input_next(in)) != NULL; job_free(j)) {
        if (tmpl_display(r->t, j, 1, &x) || sb_putc(&x.display, '\n') ||
            write_all(1, x.display.p, x.display.len)) {
            rc = EXIT_ERROR;
            job_free(j);
            break;
        }
    }
    expansion_free(&x);
    if (input_error(in))
        rc = EXIT_ERROR;
    return rc;
}

/* Gives the pool all its -j workers. It starts with one, so that a run of a single job (a
 * common use in scripts) starts one thread, not -j, each a clone, a stack and a start-up
 * handshake on the way to the job. 0, or -1 when crew stops (after a message unless the
 * pool is already shut down: then the submit fails as well). */
static int pool_grow(run *r)
{
    int rc = crew_pool_resize(r->pool, r->o->jobs, r->o->jobs);
    if (rc == 0 || rc == CREW_ESHUTDOWN)
        return 0;
    msg("cannot start %u workers: %s", r->o->jobs, crew_strerror(rc));
    run_stop(r, STOP_ERROR);
    return -1;
}

/* Reads the input and submits every job; returns when the input ends or crew stops.
 * Backpressure comes from two waits, both ended by the stop ctx: the -k window (at most
 * order_window jobs between read and printed) and the pool's queue (at most --queue jobs
 * read and not yet started), so the read-ahead is bounded whatever the input. */
static void feed(run *r, input *in)
{
    unsigned submitted = 0;
    for (;;) {
        job *j = input_next(in);
        if (!j)
            break;
        atomic_fetch_add(&r->nread, 1);
        if (output_admit(r, j->seq)) {
            job_free(j);
            break;
        }
        j->outp = &j->out;
        j->errp = &j->err;
        /* A job --resume skips still goes through job_finish: with -k its reserved seq
         * must be put, or the ordered output would wait for it forever. */
        if (joblog_skip(j->seq)) {
            atomic_fetch_add(&r->nresumed, 1);
            j->state = JOB_SKIPPED;
            job_finish(r, j);
            continue;
        }
        /* The pool starts with one worker and no supervisor thread: the rest comes with
         * the second job. Before the first, what came meanwhile (a signal) is served. */
        if (++submitted == 1)
            supervisor_check(r);
        else if (submitted == 2 && (supervisor_thread() || (r->o->jobs > 1 && pool_grow(r)))) {
            j->state = JOB_SKIPPED;
            job_finish(r, j);
            break;
        }
        /* Blocks while the queue is full; fails only once crew stops (or the pool was
         * cancelled), and then the job was never accepted: it is ours to finish. */
        if (crew_pool_submit(r->pool, job_run, j, CREW_FOREVER, r->stop) != 0) {
            j->state = JOB_SKIPPED;
            job_finish(r, j);
            break;
        }
    }
    /* The total is known once the input has been read to its end (not when crew stopped
     * reading early): --bar, --eta, --halt P% and the summary use it. */
    int err = input_error(in);
    if (err == 0 && !crew_ctx_done(r->stop))
        atomic_store(&r->total, (int64_t)atomic_load(&r->nread));
    else if (err && err != -EINTR) {
        msg("reading the input: %s", strerror(-err));
        run_stop(r, STOP_ERROR);
    }
}

/* The exit status, as GNU parallel's (plus 128+N after signal N). A --halt decision comes
 * first (it says what the run was for); then an interrupted run, which is incomplete
 * whatever failed in it; then the number of failed jobs. */
static int exit_status(run *r)
{
    int halt = atomic_load(&r->halt_exit);
    if (halt >= 0)
        return halt;
    switch (atomic_load(&r->stop_reason)) {
    case STOP_SIGNAL:
        return 128 + atomic_load(&r->last_signal);
    case STOP_ERROR:
        return EXIT_ERROR;
    case STOP_EPIPE:
        return 128 + SIGPIPE;
    default:
        break;
    }
    uint64_t failed = atomic_load(&r->nfailed);
    return failed > 100 ? EXIT_MANY_FAILED : (int)failed;
}

/* Makes sure descriptors 0-2 exist, so no pipe or file of ours lands on them. */
static void sane_fds(void)
{
    for (int fd = 0; fd < 3; fd++)
        if (fcntl(fd, F_GETFD) < 0 && errno == EBADF) {
            int n = open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY);
            if (n >= 0 && n != fd) {
                dup2(n, fd);
                close(n);
            }
        }
}

/* Everything a run needs, in dependency order: the joblog and jansson first (an unwritable
 * joblog or a missing library is an option error, before anything runs); the stop ctx,
 * slots and output before the pool, whose workers use them; the supervisor's signalfd
 * before the pool, so that every SIGCHLD of a job is kept for it; the pool ctx's hook right
 * after the pool, so a cancel reaches every job; the metrics server last, since it reads
 * the pool. */
static int setup(run *r)
{
    const opts *o = r->o;
    int rc;
    if ((rc = joblog_open(o)) || (o->json && (rc = json_load())))
        return rc;
    r->sup_wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    r->input_wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    r->devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (r->sup_wake < 0 || r->input_wake < 0 || r->devnull < 0) {
        msg("cannot set up: %s", strerror(errno));
        return -errno;
    }
    if ((rc = crew_ctx_with_cancel(NULL, &r->stop)) || (rc = slots_init(r)) ||
        (rc = output_init(r)) || (rc = pace_init(o)) || (rc = supervisor_start(r))) {
        msg("cannot set up: %s", crew_strerror(rc));
        return rc;
    }
    crew_pool_opts po = {
        .name = "crew",
        .workers = 1, /* -j of them from the second job on (pool_grow) */
        .queue_cap = o->queue,
        .discard = job_discard,
        .init = supervisor_worker_init,
        .fini = supervisor_worker_fini,
        .flags = o->metrics ? CREW_POOL_TIMING : 0,
    };
    if ((rc = crew_pool_create(&r->pool, &po))) {
        msg("cannot start a worker: %s", crew_strerror(rc));
        return rc;
    }
    if ((rc = crew_ctx_on_cancel(crew_pool_ctx(r->pool), on_pool_cancel, r, NULL))) {
        msg("cannot set up: %s", crew_strerror(rc));
        return rc;
    }
    if (o->metrics && (rc = metrics_start(r, o->metrics)))
        return rc;
    return 0;
}

/* Undoes setup once the pool has drained and the supervisor has reaped every orphan: the
 * metrics server goes first (it reads the pool), the pool before the slots its workers
 * used. */
static void teardown(run *r)
{
    metrics_stop();
    crew_pool_destroy(r->pool);
    supervisor_stop(r);
    output_fini();
    slots_free(r);
    pace_fini();
    joblog_close();
    if (r->stop)
        crew_ctx_release(r->stop);
    int fds[] = {r->devnull, r->sup_wake, r->input_wake};
    for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    tmpl_free(r->t);
}

int main(int argc, char **argv)
{
    opts o;
    bool exit_now;
    int status = opts_parse(&o, argc, argv, &exit_now);
    if (status || exit_now) {
        opts_free(&o);
        return status;
    }
    sane_fds();
    run r = {.o = &o,
             .t0 = crew_now(),
             .halt_exit = -1,
             .sup_wake = -1,
             .input_wake = -1,
             .devnull = -1};
    g_run = &r;
    if (tmpl_parse(&r.t, o.cmd, o.ncmd)) {
        msg("out of memory");
        opts_free(&o);
        return EXIT_ERROR;
    }
    input *in = NULL;
    if (o.dry_run) {
        status = input_open(&in, &o, -1) ? EXIT_ERROR : dry_run(&r, in);
        goto out;
    }
    /* Before any thread exists, so that every thread inherits the mask. A signal ignored
     * when crew starts (nohup's SIGHUP, SIGINT for a background job of a script) stays
     * ignored: it is not blocked, so it never reaches the signalfd. */
    sigemptyset(&r.signals_taken);
    int taken[] = {SIGINT, SIGTERM, SIGHUP};
    for (size_t i = 0; i < sizeof taken / sizeof taken[0]; i++) {
        struct sigaction old;
        if (sigaction(taken[i], NULL, &old) == 0 && old.sa_handler != SIG_IGN)
            sigaddset(&r.signals_taken, taken[i]);
    }
    sigaddset(&r.signals_taken, SIGCHLD);
    pthread_sigmask(SIG_BLOCK, &r.signals_taken, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* glibc gives each thread that allocates its own arena (a 64 MiB mapping and its first
     * touched pages); crew's workers allocate little, so one shared arena keeps the
     * resident size near xargs' even at -j50. */
    mallopt(M_ARENA_MAX, 1);
    if (setup(&r) || input_open(&in, &o, r.input_wake)) {
        status = EXIT_ERROR;
        if (r.pool) {
            run_stop(&r, STOP_ERROR);
            crew_pool_close(r.pool);
            supervisor_wait_pool(&r);
        }
        goto done;
    }
    atomic_store(&r.total, input_total(in));
    feed(&r, in);
    crew_pool_close(r.pool);
    supervisor_wait_pool(&r);
    output_close();
    status = exit_status(&r);
done:
    supervisor_stop(&r);
    progress_draw(&r, true);
    if (r.pool)
        progress_summary(&r);
    teardown(&r);
out:
    input_close(in);
    if (o.dry_run)
        tmpl_free(r.t);
    opts_free(&o);
    return status;
}
