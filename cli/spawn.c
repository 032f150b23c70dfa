/*
 * spawn.c - one job on a pool worker: spawn, capture, timeout, kill, retry.
 *
 * Each pool worker owns a slot (its number is {%}) holding what the per-job path reuses:
 * an eventfd that wakes it, the jobs' environment (with CREW_SEQ and CREW_SLOT), the
 * template scratch and two capture buffers. A job's attempt:
 *   1. expand the template; make two pipes (O_CLOEXEC, so no other job inherits them);
 *   2. posix_spawn (clone+vfork in glibc: no page-table copy) in a process group of its
 *      own, with crew's blocked signals unblocked and SIGPIPE back to default, stdin from
 *      /dev/null;
 *   3. poll the pipes, a pidfd of the child and the slot's eventfd: no polling loop, no
 *      thread per job. The attempt's timeout is a crew ctx with a deadline (libcrew's
 *      timer thread fires it); its on-cancel hook, like the supervisor on a second or
 *      third signal, sets the slot's request (REQ_TERM, REQ_KILL) and writes the eventfd;
 *   4. the worker itself sends the signals to the job's group: SIGTERM, then SIGKILL
 *      --kill-after later (poll's timeout is that real deadline). Since only this worker
 *      reaps the job's main process, its pid (= the group id) cannot be reused while the
 *      worker signals it;
 *   5. once the main process has exited, reap it (waitid on the pidfd), take what is left
 *      in the pipes without waiting for EOF (a background child may hold them open), and
 *      if the group still has members, SIGTERM them and hand the group to the supervisor,
 *      which sends SIGKILL at the deadline. Members that left the group are found by the
 *      supervisor as orphans (crew is their subreaper).
 * A failed attempt is retried up to --retries times by libcrew's crew_retry_do, after a
 * backoff with full jitter; the backoff ends, and no further try starts, once crew stops.
 *
 * Threads: a slot is written by its worker; pid, seq and req are atomics read by the
 * supervisor and the ctx hooks, which only ever raise req and write the eventfd.
 */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/pidfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* ---- slots ----------------------------------------------------------------------------- */

/* Builds the jobs' environment: crew's, without CREW_SEQ/CREW_SLOT, plus the slot's own.
 * The array is built once per slot; per job only the digits of CREW_SEQ change in place, so
 * spawning a job copies no environment. */
static int slot_env(slot *s)
{
    size_t n = 0;
    for (char **e = environ; *e; e++)
        n++;
    s->envp = calloc(n + 3, sizeof *s->envp);
    if (!s->envp)
        return -ENOMEM;
    size_t k = 0;
    for (char **e = environ; *e; e++)
        if (strncmp(*e, "CREW_SEQ=", 9) != 0 && strncmp(*e, "CREW_SLOT=", 10) != 0)
            s->envp[k++] = *e;
    s->envp[k++] = s->envbuf[0];
    s->envp[k++] = s->envbuf[1];
    snprintf(s->envbuf[1], sizeof s->envbuf[1], "CREW_SLOT=%u", s->id);
    return 0;
}

/* The signals a job starts with at their default disposition: every one but those ignored
 * when crew started (nohup's SIGHUP stays ignored in the jobs, as a shell would keep it),
 * and SIGPIPE whatever its state (crew ignores it for itself). glibc's posix_spawn asks, in
 * the child, whether each signal it is not told about is ignored, then sets it: two system
 * calls per signal on every spawn. Asked once here, each spawn makes one per signal. */
static void default_signals(sigset_t *def)
{
#ifdef __GLIBC__
    sigfillset(def); /* glibc leaves its internal signals out */
    for (int sig = 1; sig < SIGRTMAX + 1; sig++) {
        struct sigaction sa;
        if (sig != SIGKILL && sig != SIGSTOP && sigismember(def, sig) == 1 &&
            sigaction(sig, NULL, &sa) == 0 && sa.sa_handler == SIG_IGN)
            sigdelset(def, sig);
    }
#else
    sigemptyset(def); /* musl's child resets only what was set: nothing to spare it */
#endif
    sigaddset(def, SIGPIPE);
}

int slots_init(run *r)
{
    const opts *o = r->o;
    r->slots = calloc(o->jobs, sizeof *r->slots);
    if (!r->slots)
        return -ENOMEM;
    for (unsigned i = 0; i < o->jobs; i++) {
        slot *s = &r->slots[i];
        s->id = i + 1;
        s->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        outbuf_init(&s->out);
        outbuf_init(&s->err);
        if (s->wake_fd < 0)
            return -errno;
        int rc = slot_env(s);
        if (rc)
            return rc;
    }
    sigset_t none, def;
    sigemptyset(&none);
    default_signals(&def);
    if (posix_spawnattr_init(&r->attr) ||
        posix_spawnattr_setflags(&r->attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                               POSIX_SPAWN_SETSIGDEF) ||
        posix_spawnattr_setpgroup(&r->attr, 0) || posix_spawnattr_setsigmask(&r->attr, &none) ||
        posix_spawnattr_setsigdefault(&r->attr, &def))
        return -EINVAL;
    return 0;
}

void slots_free(run *r)
{
    if (!r->slots)
        return;
    for (unsigned i = 0; i < r->o->jobs; i++) {
        slot *s = &r->slots[i];
        if (s->wake_fd > 0)
            close(s->wake_fd);
        free(s->envp);
        expansion_free(&s->x);
        outbuf_free(&s->out);
        outbuf_free(&s->err);
    }
    posix_spawnattr_destroy(&r->attr);
    free(r->slots);
    r->slots = NULL;
}

/* Raises s's request to at least req and wakes its worker. Async-safe enough for a ctx
 * hook: two atomics and a write(2). */
static void slot_request(slot *s, int req)
{
    int cur = atomic_load(&s->req);
    while (cur < req && !atomic_compare_exchange_weak(&s->req, &cur, req)) {
    }
    uint64_t one = 1;
    ssize_t w = write(s->wake_fd, &one, sizeof one);
    (void)w; /* a full eventfd is already a wake-up */
}

void slots_request(run *r, int req)
{
    for (unsigned i = 0; i < r->o->jobs; i++)
        slot_request(&r->slots[i], req);
}

bool slots_running(run *r, uint64_t seq, pid_t pgid)
{
    for (unsigned i = 0; i < r->o->jobs; i++) {
        if (seq && atomic_load(&r->slots[i].seq) == seq)
            return true;
        if (pgid > 0 && atomic_load(&r->slots[i].pid) == pgid)
            return true;
    }
    return false;
}

/* The on-cancel hook of an attempt's ctx: its deadline passed, or the pool was cancelled. */
static void on_attempt_cancel(void *arg, int err)
{
    (void)err;
    slot_request(arg, REQ_TERM);
}

/* ---- one attempt ----------------------------------------------------------------------- */

/* Milliseconds from now until the deadline, rounded up, for poll(2). */
static int ms_until(int64_t deadline)
{
    int64_t ns = deadline - crew_now();
    if (ns <= 0)
        return 0;
    int64_t ms = (ns + CREW_MSEC - 1) / CREW_MSEC;
    return ms > 1000000 ? 1000000 : (int)ms;
}

static double epoch_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Reads once from the pipe pf->fd into b; closes it at EOF or on error. */
static void take(run *r, job *j, struct pollfd *pf, outbuf *b, int out_fd)
{
    /* Hung up with nothing to read: EOF, without allocating a buffer to learn it. */
    ssize_t n = (pf->revents & (POLLIN | POLLERR)) ? outbuf_read_from(b, pf->fd) : 0;
    if (n > 0 && r->o->line_buffer)
        output_lines(r, j, b, out_fd, false);
    if (n <= 0) {
        close(pf->fd);
        pf->fd = -1;
    }
}

/* The state of the attempt's child while the worker waits for it. */
typedef struct waiter {
    pid_t pid;       /* the main process, leader of the job's group */
    bool term_sent;  /* SIGTERM went to the group */
    bool kill_sent;  /* SIGKILL went to the group */
    int64_t kill_at; /* when SIGKILL follows the SIGTERM, or -1 */
} waiter;

/* Acts on the slot's request: signals the job's group. */
static void act(run *r, slot *s, job *j, waiter *w, crew_ctx *actx, crew_ctx *pool_ctx)
{
    int req = atomic_load(&s->req);
    if (req >= REQ_TERM && !w->term_sent) {
        kill(-w->pid, SIGTERM);
        w->term_sent = true;
        w->kill_at = crew_now() + r->o->kill_after;
        if (actx && crew_ctx_err(actx) == CREW_ETIMEDOUT && !crew_ctx_done(pool_ctx))
            j->timed_out = true;
    }
    if ((req >= REQ_KILL || (w->kill_at >= 0 && crew_now() >= w->kill_at)) && !w->kill_sent) {
        kill(-w->pid, SIGKILL);
        w->kill_sent = true;
        w->kill_at = -1;
    }
}

/* Waits for the child to exit, capturing its output and acting on kill requests. */
static void wait_child(run *r, slot *s, job *j, waiter *w, struct pollfd *pf, crew_ctx *actx,
                       crew_ctx *pool_ctx)
{
    /* pf: [0] pidfd, [1] eventfd, [2] stdout pipe, [3] stderr pipe (fd -1: ignored) */
    for (;;) {
        int n = poll(pf, 4, w->kill_at < 0 ? -1 : ms_until(w->kill_at));
        if (n < 0 && errno != EINTR)
            break;
        if (n > 0 && pf[1].revents) {
            uint64_t v;
            ssize_t got = read(s->wake_fd, &v, sizeof v);
            (void)got;
        }
        act(r, s, j, w, actx, pool_ctx);
        if (n > 0 && pf[2].fd >= 0 && pf[2].revents)
            take(r, j, &pf[2], &s->out, 1);
        if (n > 0 && pf[3].fd >= 0 && pf[3].revents)
            take(r, j, &pf[3], &s->err, 2);
        if (n > 0 && pf[0].fd >= 0 && pf[0].revents)
            return;
        if (pf[0].fd < 0 && pf[2].fd < 0 && pf[3].fd < 0)
            return; /* no pidfd: the pipes' EOF is the best sign of the end */
    }
}

/* After the main process exited: takes what is already in the pipes, then closes them.
 * It does not wait for EOF: a background child of the job may hold the pipes open for as
 * long as it lives, and it is about to be terminated anyway. */
static void drain_pipes(run *r, job *j, slot *s, struct pollfd *pf)
{
    for (;;) {
        struct pollfd q[2] = {pf[2], pf[3]};
        if (q[0].fd < 0 && q[1].fd < 0)
            return;
        int n = poll(q, 2, 0);
        if (n <= 0) {
            break;
        }
        pf[2].revents = q[0].revents;
        pf[3].revents = q[1].revents;
        if (pf[2].fd >= 0 && pf[2].revents)
            take(r, j, &pf[2], &s->out, 1);
        if (pf[3].fd >= 0 && pf[3].revents)
            take(r, j, &pf[3], &s->err, 2);
    }
    for (int i = 2; i < 4; i++)
        if (pf[i].fd >= 0) {
            close(pf[i].fd);
            pf[i].fd = -1;
        }
}

/* Records that the job could not be started: exit status 127 like a shell's. */
static void spawn_failed(run *r, slot *s, job *j, int err)
{
    j->exit_code = err == ENOENT ? 127 : 126;
    j->sig = 0;
    char line[512];
    const char *what = s->x.argv && s->x.argv[0] ? s->x.argv[0] : "the command";
    int n = snprintf(line, sizeof line, "crew: cannot run %s: %s\n", what, strerror(err));
    if (r->o->ungroup)
        write_all(2, line, (size_t)n);
    else
        outbuf_append(&s->err, line, (size_t)n);
}

/* Makes the attempt's ctx (with the timeout) and registers its hook. */
static int arm(run *r, slot *s, crew_ctx *pool_ctx, crew_ctx **actx, crew_ctx_hook **hook)
{
    *actx = NULL;
    *hook = NULL;
    if (!r->o->timeout)
        return 0;
    int rc = crew_ctx_with_timeout(pool_ctx, r->o->timeout, actx);
    if (rc == 0)
        rc = crew_ctx_on_cancel(*actx, on_attempt_cancel, s, hook);
    if (rc && *actx) {
        crew_ctx_release(*actx);
        *actx = NULL;
    }
    return rc;
}

/* Runs one attempt of j in slot s; sets j's exit status, signal and timing. */
static void run_attempt(run *r, slot *s, job *j, crew_ctx *pool_ctx)
{
    const opts *o = r->o;
    j->exit_code = -1;
    j->sig = 0;
    j->timed_out = false;
    outbuf_reset(&s->out);
    outbuf_reset(&s->err);
    if (tmpl_expand(r->t, j, s->id, &s->x)) {
        spawn_failed(r, s, j, ENOMEM);
        return;
    }
    snprintf(s->envbuf[0], sizeof s->envbuf[0], "CREW_SEQ=%llu", (unsigned long long)j->seq);
    int po[2] = {-1, -1}, pe[2] = {-1, -1};
    if (!o->ungroup && (pipe2(po, O_CLOEXEC) || pipe2(pe, O_CLOEXEC))) {
        int e = errno;
        if (po[0] >= 0) {
            close(po[0]);
            close(po[1]);
        }
        spawn_failed(r, s, j, e);
        return;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, r->devnull, 0);
    if (!o->ungroup) {
        posix_spawn_file_actions_adddup2(&fa, po[1], 1);
        posix_spawn_file_actions_adddup2(&fa, pe[1], 2);
    }
    crew_ctx *actx;
    crew_ctx_hook *hook;
    int rc = arm(r, s, pool_ctx, &actx, &hook);
    atomic_store(&s->req, REQ_NONE);
    uint64_t v;
    ssize_t got = read(s->wake_fd, &v, sizeof v); /* forget an old wake-up */
    (void)got;
    atomic_store(&s->seq, j->seq);
    j->start_epoch = epoch_now();
    int64_t t0 = crew_now();
    pid_t pid = 0;
    if (rc == 0)
        rc = posix_spawn(&pid, tmpl_exe(r->t), &fa, &r->attr, s->x.argv, s->envp);
    else
        rc = -rc;
    posix_spawn_file_actions_destroy(&fa);
    if (!o->ungroup) {
        close(po[1]);
        close(pe[1]);
    }
    struct pollfd pf[4] = {{.fd = -1},
                           {.fd = s->wake_fd, .events = POLLIN},
                           {.fd = po[0], .events = POLLIN},
                           {.fd = pe[0], .events = POLLIN}};
    if (rc) {
        spawn_failed(r, s, j, rc);
        drain_pipes(r, j, s, pf);
        goto out;
    }
    atomic_store(&s->pid, pid);
    waiter w = {.pid = pid, .kill_at = -1};
    if (crew_ctx_done(actx ? actx : pool_ctx))
        slot_request(s, REQ_TERM); /* cancelled before the hook could see this job */
    pf[0].fd = pidfd_open(pid, 0);
    pf[0].events = POLLIN;
    siginfo_t si = {0};
    if (pf[0].fd >= 0) {
        wait_child(r, s, j, &w, pf, actx, pool_ctx);
        drain_pipes(r, j, s, pf);
        if (waitid(P_PIDFD, (id_t)pf[0].fd, &si, WEXITED) != 0)
            si.si_code = 0;
        close(pf[0].fd);
    } else {
        /* No pidfd (before Linux 5.3): capture until EOF, then block in waitpid. */
        wait_child(r, s, j, &w, pf, actx, pool_ctx);
        drain_pipes(r, j, s, pf);
        int st;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
        }
        si.si_code = WIFEXITED(st) ? CLD_EXITED : CLD_KILLED;
        si.si_status = WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st);
    }
    j->runtime = crew_now() - t0;
    if (si.si_code == CLD_EXITED) {
        j->exit_code = si.si_status;
    } else if (si.si_code == CLD_KILLED || si.si_code == CLD_DUMPED) {
        j->exit_code = -1;
        j->sig = si.si_status;
    }
    atomic_store(&s->pid, 0);
    /* Leftovers in the job's group: the group id stays reserved while it has members. */
    if (kill(-pid, 0) == 0) {
        kill(-pid, SIGTERM);
        supervisor_leftover(pid, crew_now() + o->kill_after);
    }
out:
    atomic_store(&s->seq, 0);
    if (hook)
        crew_ctx_hook_remove(hook);
    if (actx)
        crew_ctx_release(actx);
    if (o->line_buffer && !o->keep_order) {
        output_lines(r, j, &s->out, 1, true);
        output_lines(r, j, &s->err, 2, true);
    }
}

/* ---- the pool job ---------------------------------------------------------------------- */

/* What one try of a job needs (crew_retry_do passes it to try_job). */
typedef struct attempt {
    run *r;             /* the run */
    slot *s;            /* the worker's slot */
    job *j;             /* the job */
    crew_ctx *pool_ctx; /* the pool's ctx: cancelled to terminate every job */
} attempt;

/* One try, as a crew_job_fn for crew_retry_do: 0 if the job succeeded, CREW_ECHILD if it
 * failed (a retry may follow), or the stop ctx's error if crew stopped before it started. */
static int try_job(crew_ctx *stop, void *arg)
{
    attempt *a = arg;
    int rc = pace_wait(stop);
    if (rc)
        return rc;
    job *j = a->j;
    if (j->attempts++ == 0) {
        atomic_fetch_add(&a->r->nstarted, 1);
    } else {
        atomic_fetch_add(&a->r->nretried, 1);
        if (!a->r->o->quiet && !a->r->o->json) {
            char why[48];
            if (j->timed_out)
                snprintf(why, sizeof why, "timed out");
            else if (j->sig)
                snprintf(why, sizeof why, "was killed by signal %d", j->sig);
            else
                snprintf(why, sizeof why, "exited with %d", j->exit_code);
            msg("job %llu %s: try %u of %u", (unsigned long long)j->seq, why, j->attempts,
                a->r->o->retries + 1);
        }
    }
    run_attempt(a->r, a->s, j, a->pool_ctx);
    j->state = j->exit_code == 0 && !j->timed_out ? JOB_OK : JOB_FAILED;
    return j->state == JOB_OK ? 0 : CREW_ECHILD;
}

int job_run(crew_ctx *ctx, void *arg)
{
    run *r = g_run;
    const opts *o = r->o;
    job *j = arg;
    int wid = crew_pool_worker_id();
    slot *s = &r->slots[wid < 0 ? 0 : wid];
    j->slot = s->id;
    j->outp = &s->out;
    j->errp = &s->err;
    outbuf_reset(&s->out);
    outbuf_reset(&s->err);
    /* --retries: libcrew's retry loop, full jitter over base * 2^(n-1), capped at 30 s (or
     * the base). Its backoff sleeps end when crew stops (the stop ctx), and it gives up once
     * the stop ctx is done. A base of 0 means no wait (crew_retry's 0 means its default). */
    crew_retry policy = {
        .attempts = o->retries + 1,
        .base = o->retry_delay > 0 ? o->retry_delay : 1,
        .cap = o->retry_delay > 30 * CREW_SEC ? o->retry_delay : 30 * CREW_SEC,
    };
    attempt a = {.r = r, .s = s, .j = j, .pool_ctx = ctx};
    crew_retry_do(&policy, try_job, &a, r->stop, NULL);
    if (j->attempts == 0)
        j->state = JOB_SKIPPED;
    job_finish(r, j);
    outbuf_reset(&s->out);
    outbuf_reset(&s->err);
    return 0;
}

void job_discard(crew_job_fn fn, void *arg, int reason)
{
    (void)fn;
    (void)reason;
    job *j = arg;
    j->state = JOB_SKIPPED;
    j->outp = &j->out;
    j->errp = &j->err;
    job_finish(g_run, j);
}
