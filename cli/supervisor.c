/*
 * supervisor.c - signals, orphans, leftover process groups and the progress ticker.
 *
 * The supervisor waits in poll(2) on a signalfd (SIGINT, SIGTERM, SIGHUP, SIGCHLD: blocked
 * in every thread, so they arrive only here), an eventfd other threads write to ask for
 * something, and the earliest of its deadlines. It never holds a lock of the workers'
 * while it waits, so the work that could deadlock elsewhere is asked of it: cancelling the
 * pool (which discards queued jobs through the output path).
 *
 * Who runs it. A thread of its own, started as soon as the main thread could block where
 * it does not watch the signalfd: at the second job (main.c), or before waiting for input
 * (input.c). A run of one job whose input is at hand (`crew CMD < file`, `crew CMD ::: x`)
 * never starts it: the main thread runs the same loop while it waits for the pool
 * (supervisor_wait_pool), and the final reaping in supervisor_stop. The thread and its
 * wake-ups cost such a run some 150 us of 2.3 ms here, in a VM where waking an idle CPU is
 * slow. Until one of the two runs, signals and requests wait (the signalfd and the
 * eventfd keep them) while the main thread sets up; it serves them before it submits the
 * first job (supervisor_check), so a signal that came first still stops it.
 *
 * Signals. The first SIGINT or SIGTERM (or any SIGHUP) stops crew starting jobs: running
 * ones finish and are printed, then the summary. The second SIGINT/SIGTERM cancels the
 * pool: each running job's group gets SIGTERM, and SIGKILL --kill-after later. The third
 * sends SIGKILL to every job and leftover at once.
 *
 * Orphans. crew is a child subreaper (PR_SET_CHILD_SUBREAPER), so a job's descendants whose
 * parent dies are re-parented to crew's main thread instead of init. They are listed in
 * /proc/self/task/<main tid>/children (jobs' main processes are children of the worker
 * threads, so they never appear there). On SIGCHLD the supervisor reads that list: a
 * zombie is reaped (waitpid on its pid: never -1, which would steal a worker's child); a
 * live orphan is attributed to its job by its process group (still a running job's group:
 * it dies with the job) or else by the CREW_SEQ variable every job's environment carries
 * (/proc/PID/environ). An orphan of a job that has finished gets SIGTERM, then SIGKILL after
 * --kill-after. One that belongs to a running job is watched: each job's end re-checks the
 * watched ones. Limits: an orphan that left the job's group and replaced its environment
 * (env -i, or exec with a new one) cannot be attributed while crew runs; it is terminated
 * when crew exits, as is anything still re-parented to crew then. A process that escapes
 * by its own double fork under another subreaper (a user systemd, a container init) is
 * beyond crew's reach; so is everything if crew itself is killed with SIGKILL.
 *
 * Leftover groups. A worker whose job's main process has exited while other members of
 * its group live sends the group SIGTERM and hands it here; SIGKILL follows at its
 * deadline if the group still exists.
 *
 * State: everything below belongs to whichever thread runs the loop (the supervisor
 * thread, else the main thread), except `requests` (an atomic bit set other threads
 * raise), `workers` (the pool's hooks), the leftover list (under lock, appended by
 * workers), and r->watched_orphans (published for supervisor_job_done).
 */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#define TICK_TTY   (200 * CREW_MSEC) /* progress redraw on a terminal */
#define TICK_PLAIN (1 * CREW_SEC)    /* --eta lines when stderr is not a terminal */

/* Requests other threads make (bits of `requests`). */
enum { REQ_CANCEL_POOL = 1, REQ_RESCAN = 2 };

/* A process or group to SIGKILL at a deadline unless it is gone. */
typedef struct doomed {
    pid_t pid;       /* the orphan's pid, or the group's id */
    bool group;      /* a group (kill(-pid)) rather than one orphan */
    int64_t kill_at; /* when SIGKILL goes */
} doomed;

static struct {
    run *r;                     /* the run */
    pthread_t thread;           /* the supervisor */
    bool started;               /* supervisor_start ran: requests count */
    bool threaded;              /* thread is running (set and read by the main thread) */
    int sfd;                    /* the signalfd */
    _Atomic unsigned requests;  /* REQ_* bits to act on */
    _Atomic bool quit;          /* supervisor_stop was called */
    _Atomic unsigned workers;   /* pool workers between their init and fini hooks */
    pthread_mutex_t lock;       /* guards leftovers (appended by workers) */
    doomed *leftovers;          /* groups handed over by workers */
    size_t nleftovers, capleft; /* how many, allocated */
    doomed *orphans;            /* orphans sent SIGTERM, awaiting death or SIGKILL */
    size_t norphans, caporph;   /* how many, allocated */
    bool kill_all;              /* third signal: SIGKILL everything at once */
    bool pool_cancelled;        /* crew_pool_cancel was called */
    int64_t next_tick;          /* the next progress redraw, or -1 */
} sup = {.lock = PTHREAD_MUTEX_INITIALIZER, .sfd = -1};

static void request(unsigned bits)
{
    if (!sup.started)
        return;
    atomic_fetch_or(&sup.requests, bits);
    uint64_t one = 1;
    ssize_t w = write(sup.r->sup_wake, &one, sizeof one);
    (void)w;
}

/* ---- stopping and terminating ----------------------------------------------------------- */

void run_stop(run *r, int reason)
{
    int none = STOP_NONE;
    if (!atomic_compare_exchange_strong(&r->stop_reason, &none, reason))
        return;
    crew_ctx_cancel(r->stop, CREW_ECANCELED);
    uint64_t one = 1;
    ssize_t w = write(r->input_wake, &one, sizeof one);
    (void)w;
}

void run_terminate(run *r)
{
    (void)r;
    request(REQ_CANCEL_POOL);
}

void supervisor_leftover(pid_t pgid, int64_t kill_at)
{
    pthread_mutex_lock(&sup.lock);
    if (sup.nleftovers == sup.capleft) {
        size_t cap = sup.capleft ? sup.capleft * 2 : 16;
        doomed *p = realloc(sup.leftovers, cap * sizeof *p);
        if (p) {
            sup.leftovers = p;
            sup.capleft = cap;
        }
    }
    if (sup.nleftovers < sup.capleft)
        sup.leftovers[sup.nleftovers++] = (doomed){.pid = pgid, .group = true, .kill_at = kill_at};
    pthread_mutex_unlock(&sup.lock);
    request(REQ_RESCAN);
}

void supervisor_job_done(run *r)
{
    if (atomic_load(&r->watched_orphans) > 0)
        request(REQ_RESCAN);
}

/* ---- orphans --------------------------------------------------------------------------- */

/* Reads a small /proc file into buf (NUL-terminated). Bytes read, or -1. */
static ssize_t read_proc(const char *path, char *buf, size_t n)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t got = read(fd, buf, n - 1);
    close(fd);
    if (got < 0)
        return -1;
    buf[got] = '\0';
    return got;
}

/* The state letter and process group of pid from /proc/PID/stat: 0 if it is gone. */
static char proc_state(pid_t pid, pid_t *pgid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    if (read_proc(path, buf, sizeof buf) <= 0)
        return 0;
    const char *p = strrchr(buf, ')'); /* the name may hold spaces and parentheses */
    char state;
    int ppid, pg;
    if (!p || sscanf(p + 1, " %c %d %d", &state, &ppid, &pg) != 3)
        return 0;
    *pgid = pg;
    return state;
}

/* The CREW_SEQ in pid's environment, or 0. */
static uint64_t proc_seq(pid_t pid)
{
    char path[64];
    static char buf[64 << 10];
    snprintf(path, sizeof path, "/proc/%d/environ", (int)pid);
    ssize_t n = read_proc(path, buf, sizeof buf);
    for (ssize_t i = 0; i < n; i += (ssize_t)strlen(buf + i) + 1)
        if (strncmp(buf + i, "CREW_SEQ=", 9) == 0)
            return strtoull(buf + i + 9, NULL, 10);
    return 0;
}

static bool doomed_has(pid_t pid)
{
    for (size_t i = 0; i < sup.norphans; i++)
        if (sup.orphans[i].pid == pid)
            return true;
    return false;
}

static void doomed_drop(pid_t pid)
{
    for (size_t i = 0; i < sup.norphans; i++)
        if (sup.orphans[i].pid == pid) {
            sup.orphans[i] = sup.orphans[--sup.norphans];
            return;
        }
}

/* Sends an orphan SIGTERM now and SIGKILL at its deadline. */
static void doom(pid_t pid, int sig)
{
    if (doomed_has(pid))
        return;
    if (sup.norphans == sup.caporph) {
        size_t cap = sup.caporph ? sup.caporph * 2 : 16;
        doomed *p = realloc(sup.orphans, cap * sizeof *p);
        if (!p) {
            kill(pid, SIGKILL); /* no memory to wait politely */
            return;
        }
        sup.orphans = p;
        sup.caporph = cap;
    }
    kill(pid, sig);
    sup.orphans[sup.norphans++] =
        (doomed){.pid = pid, .kill_at = crew_now() + sup.r->o->kill_after};
}

/* Reads crew's orphans: reaps the dead, dooms those whose job is over (all of them when
 * final). Returns how many are still alive. */
static size_t scan_orphans(bool final)
{
    /* No child at all, as at the end of most runs: no /proc file to read. */
    siginfo_t si;
    if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) != 0 && errno == ECHILD) {
        atomic_store(&sup.r->watched_orphans, 0);
        return 0;
    }
    char path[64];
    static char buf[64 << 10];
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)getpid(), (int)getpid());
    if (read_proc(path, buf, sizeof buf) < 0)
        buf[0] = '\0';
    size_t alive = 0;
    int watched = 0;
    for (char *p = buf, *end; *p; p = end) {
        pid_t pid = (pid_t)strtol(p, &end, 10);
        if (end == p)
            break;
        pid_t pgid = 0;
        char state = proc_state(pid, &pgid);
        if (state == 0 || state == 'Z' || state == 'X') {
            if (waitpid(pid, NULL, WNOHANG) == pid)
                doomed_drop(pid);
            continue;
        }
        alive++;
        if (sup.kill_all) {
            kill(pid, SIGKILL);
            continue;
        }
        if (!final) {
            /* A running job's: in its group, or carrying its number. The count is raised
             * before the check, so a job ending meanwhile sees it and asks for a rescan. */
            uint64_t seq = proc_seq(pid);
            atomic_fetch_add(&sup.r->watched_orphans, 1);
            if (slots_running(sup.r, 0, pgid) || slots_running(sup.r, seq, 0)) {
                watched++;
                continue;
            }
            if (seq == 0)
                continue; /* cannot tell whose: left for crew's exit */
        }
        doom(pid, SIGTERM);
    }
    atomic_store(&sup.r->watched_orphans, watched);
    /* The rest of the orphan list (gone without a SIGCHLD seen yet) stays until reaped. */
    return alive;
}

/* SIGKILLs what is past its deadline; returns the earliest deadline left, or -1. */
static int64_t kill_due(void)
{
    int64_t now = crew_now(), next = -1;
    for (size_t i = 0; i < sup.norphans; i++) {
        doomed *d = &sup.orphans[i];
        if (d->kill_at < 0)
            continue;
        if (sup.kill_all || now >= d->kill_at) {
            kill(d->pid, SIGKILL); /* still our unreaped child: the pid is not reused */
            d->kill_at = -1;
        } else if (next < 0 || d->kill_at < next) {
            next = d->kill_at;
        }
    }
    pthread_mutex_lock(&sup.lock);
    for (size_t i = 0; i < sup.nleftovers;) {
        doomed *d = &sup.leftovers[i];
        if (kill(-d->pid, 0) != 0) {
            *d = sup.leftovers[--sup.nleftovers]; /* the group is gone */
            continue;
        }
        if (sup.kill_all || now >= d->kill_at) {
            kill(-d->pid, SIGKILL);
            *d = sup.leftovers[--sup.nleftovers];
            continue;
        }
        if (next < 0 || d->kill_at < next)
            next = d->kill_at;
        i++;
    }
    pthread_mutex_unlock(&sup.lock);
    return next;
}

/* ---- signals --------------------------------------------------------------------------- */

static unsigned running_jobs(run *r)
{
    unsigned n = 0;
    for (unsigned i = 0; i < r->o->jobs; i++)
        n += atomic_load(&r->slots[i].pid) != 0;
    return n;
}

static void on_signal(run *r, int sig)
{
    const char *name = sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "SIGHUP";
    int n;
    if (sig == SIGHUP) {
        int zero = 0;
        if (!atomic_compare_exchange_strong(&r->signals, &zero, 1))
            return; /* SIGHUP only drains */
        n = 1;
    } else {
        n = atomic_fetch_add(&r->signals, 1) + 1;
    }
    atomic_store(&r->last_signal, sig);
    if (n == 1) {
        msg("%s: starting no more jobs; waiting for %u running (again to terminate them)", name,
            running_jobs(r));
        run_stop(r, STOP_SIGNAL);
    } else if (n == 2) {
        msg("%s: terminating %u running jobs (again to kill them)", name, running_jobs(r));
        run_stop(r, STOP_SIGNAL);
        request(REQ_CANCEL_POOL);
    } else {
        msg("%s: killing every job", name);
        sup.kill_all = true;
        slots_request(r, REQ_KILL);
        request(REQ_CANCEL_POOL);
    }
}

/* Acts on the requests other threads made. */
static void serve_requests(run *r, bool *rescan)
{
    unsigned req = atomic_exchange(&sup.requests, 0);
    if ((req & REQ_CANCEL_POOL) && !sup.pool_cancelled && r->pool) {
        sup.pool_cancelled = true;
        crew_pool_cancel(r->pool, CREW_ECANCELED);
    }
    if (req & REQ_RESCAN)
        *rescan = true;
}

static int64_t tick_period(run *r)
{
    if (!r->o->bar && !r->o->eta)
        return -1;
    if (isatty(2))
        return TICK_TTY;
    return r->o->eta ? TICK_PLAIN : -1;
}

/* Waits for a signal, a request or a deadline (-1: none); returns true on SIGCHLD. */
static bool wait_events(run *r, int64_t deadline, bool *rescan)
{
    struct pollfd pf[2] = {{.fd = sup.sfd, .events = POLLIN},
                           {.fd = r->sup_wake, .events = POLLIN}};
    int timeout = -1;
    if (deadline >= 0) {
        int64_t ns = deadline - crew_now();
        timeout = ns <= 0 ? 0 : (int)((ns + CREW_MSEC - 1) / CREW_MSEC);
    }
    bool chld = false;
    if (poll(pf, 2, timeout) <= 0)
        return false;
    if (pf[1].revents) {
        uint64_t v;
        ssize_t got = read(r->sup_wake, &v, sizeof v);
        (void)got;
    }
    struct signalfd_siginfo si;
    while (pf[0].revents && read(sup.sfd, &si, sizeof si) == (ssize_t)sizeof si) {
        if (si.ssi_signo == SIGCHLD)
            chld = true;
        else
            on_signal(r, (int)si.ssi_signo);
    }
    serve_requests(r, rescan);
    return chld;
}

static int64_t earliest(int64_t a, int64_t b)
{
    if (a < 0)
        return b;
    if (b < 0)
        return a;
    return a < b ? a : b;
}

/* The supervisor's loop, until supervisor_stop (pool_only: until the pool's workers have
 * all stopped). rescan: start with a scan of the orphans. */
static void supervise_loop(run *r, bool pool_only, bool rescan)
{
    int64_t period = tick_period(r);
    sup.next_tick = period > 0 ? crew_now() + period : -1;
    for (;;) {
        if (rescan) {
            rescan = false;
            scan_orphans(false);
        }
        int64_t next = kill_due();
        if (sup.next_tick >= 0 && crew_now() >= sup.next_tick) {
            /* Never wait for the output lock: a job's output may be stuck on a full pipe,
             * and the supervisor must stay free for signals. A busy lock skips a frame. */
            if (output_trylock()) {
                progress_draw(r, false);
                output_unlock();
            }
            sup.next_tick = crew_now() + period;
        }
        if (atomic_load(&sup.quit))
            break;
        if (pool_only && atomic_load(&sup.workers) == 0) {
            wait_events(r, 0, &rescan); /* what came meanwhile (no wait), then done */
            break;
        }
        if (wait_events(r, earliest(next, sup.next_tick), &rescan))
            rescan = true;
        if (atomic_load(&sup.quit))
            break;
    }
}

/* The pool is done: no job runs. Terminates and reaps whatever is left. */
static void reap_rest(run *r)
{
    for (;;) {
        size_t alive = scan_orphans(true);
        int64_t next = kill_due();
        pthread_mutex_lock(&sup.lock);
        size_t groups = sup.nleftovers;
        pthread_mutex_unlock(&sup.lock);
        if (alive == 0 && groups == 0)
            break;
        bool dummy;
        wait_events(r, earliest(next, crew_now() + 50 * CREW_MSEC), &dummy);
    }
}

static void *supervise(void *arg)
{
    run *r = arg;
    supervise_loop(r, false, true);
    reap_rest(r);
    return NULL;
}

int supervisor_start(run *r)
{
    sup.r = r;
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0)
        msg("warning: cannot become a subreaper (%s): orphans of jobs may outlive crew",
            strerror(errno));
    sup.sfd = signalfd(-1, &r->signals_taken, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sup.sfd < 0)
        return -errno;
    sup.started = true;
    return 0;
}

bool supervisor_watching(void)
{
    return sup.threaded || !sup.started;
}

int supervisor_thread(void)
{
    if (sup.threaded || !sup.started)
        return 0;
    int rc = pthread_create(&sup.thread, NULL, supervise, sup.r);
    if (rc) {
        msg("cannot start a thread: %s", strerror(rc));
        run_stop(sup.r, STOP_ERROR);
        return -rc;
    }
    sup.threaded = true;
    return 0;
}

int supervisor_worker_init(void *arg, unsigned id, void **state)
{
    (void)arg;
    (void)id;
    (void)state;
    atomic_fetch_add(&sup.workers, 1);
    return 0;
}

void supervisor_worker_fini(void *arg, unsigned id, void *state)
{
    (void)arg;
    (void)id;
    (void)state;
    if (atomic_fetch_sub(&sup.workers, 1) == 1)
        request(0); /* the last one: the main thread may be supervising until now */
}

void supervisor_check(run *r)
{
    bool rescan = false;
    if (sup.started && !sup.threaded && (wait_events(r, 0, &rescan) || rescan))
        scan_orphans(false);
}

void supervisor_wait_pool(run *r)
{
    /* The orphans' first scan waits for a SIGCHLD here: with one job, the children crew
     * had before it are the only ones a scan could find so early. */
    if (sup.started && !sup.threaded)
        supervise_loop(r, true, false);
    crew_pool_wait(r->pool, CREW_FOREVER);
}

void supervisor_stop(run *r)
{
    if (!sup.started)
        return;
    if (sup.threaded) {
        atomic_store(&sup.quit, true);
        request(0);
        pthread_join(sup.thread, NULL);
        sup.threaded = false;
    } else {
        reap_rest(r);
    }
    sup.started = false;
    close(sup.sfd);
    sup.sfd = -1;
    free(sup.leftovers);
    free(sup.orphans);
    sup.leftovers = sup.orphans = NULL;
    sup.nleftovers = sup.norphans = sup.capleft = sup.caporph = 0;
}
