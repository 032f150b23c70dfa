/*
 * cli.h - the crew command's internal interfaces: options, jobs, worker slots, and the
 * functions each file of cli/ offers the others.
 *
 * The command is a user of libcrew through include/crew.h only. Its parts:
 *   main.c         options, usage, the run from start to exit status
 *   input.c        argument sources (stdin, -a, :::, ::::), cartesian product, lazy reading
 *   template.c     the command template: replacement strings, quoting, shell or direct exec
 *   spawn.c        one job on a worker: spawn, capture, timeouts, kills, retries
 *   outbuf.c       captured output: memory, spilling to temporary files, writing out
 *   output.c       the output modes: grouped, --keep-order (crew_order), --line-buffer,
 *                  --tag, --json
 *   supervisor.c   signals, orphan reaping, leftover process groups, the progress ticker
 *   joblog.c       --joblog and --resume / --resume-failed
 *   progress.c     --bar, --eta and the summary line
 *   json.c         --json objects (jansson)
 *   metrics_http.c --metrics (libmicrohttpd)
 *   pace.c         --rate and --delay (crew_rate), --memfree, --load; size and rate parsing
 *
 * Threads: the main thread reads input and submits jobs to a crew_pool of -j workers; each
 * worker runs one job at a time, from spawn to printed output; the supervisor thread
 * handles signals and orphans; libcrew's timer thread fires per-attempt deadlines; the
 * metrics server has its own thread. Counters shared by all are atomics in struct run.
 */
#ifndef CREW_CLI_H
#define CREW_CLI_H

#include <crew.h>

#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Exit statuses, as GNU parallel's. */
enum {
    EXIT_MANY_FAILED = 101, /* more than 100 jobs failed */
    EXIT_ERROR = 255,       /* bad options, or crew itself failed */
};

/* ---- options ----------------------------------------------------------------------- */

enum { HALT_NEVER = 0, HALT_SOON, HALT_NOW };
enum { HALT_FAIL = 0, HALT_SUCCESS, HALT_DONE };
enum { RESUME_NONE = 0, RESUME_DONE, RESUME_FAILED };

/* One argument source: a file read line by line, or a list given on the command line. */
typedef struct source_spec {
    const char *path; /* a file ("-" is stdin), or NULL for a list */
    char **items;     /* the list's items (argv strings), when path is NULL */
    size_t n;         /* how many */
    bool from_stdin;  /* reads standard input (so jobs must not) */
} source_spec;

typedef struct opts {
    unsigned jobs;        /* -j: workers, jobs running at once */
    size_t queue;         /* --queue: jobs read ahead of the running ones */
    source_spec *sources; /* -a, :::, :::: in order; none means stdin */
    size_t nsources;      /* how many */
    char delim;           /* input item terminator: '\n', '\0' (-0), or -d's */
    bool keep_order;      /* -k */
    bool line_buffer;     /* --line-buffer */
    bool ungroup;         /* -u */
    bool tag;             /* --tag */
    bool dry_run;         /* --dry-run */
    bool json;            /* --json */
    bool bar;             /* --bar */
    bool eta;             /* --eta */
    bool quiet;           /* -q: no summary line */
    int64_t timeout;      /* --timeout, ns; 0 = none */
    int64_t kill_after;   /* --kill-after, ns from SIGTERM to SIGKILL */
    unsigned retries;     /* --retries: extra attempts after a failure */
    int64_t retry_delay;  /* --retry-delay: the backoff's base, ns */
    double rate;          /* --rate: job starts per second; 0 = unlimited */
    int64_t delay;        /* --delay: least time between two starts, ns */
    int halt_when;        /* HALT_* */
    int halt_why;         /* HALT_FAIL, HALT_SUCCESS, HALT_DONE */
    double halt_value;    /* N, or P when halt_pct */
    bool halt_pct;        /* the value is a percentage of all jobs */
    const char *joblog;   /* --joblog FILE, or NULL */
    int resume;           /* RESUME_* */
    const char *metrics;  /* --metrics ADDR, or NULL */
    uint64_t memfree;     /* --memfree bytes; 0 = none */
    double load;          /* --load: largest run queue to start a job at; < 0 = none */
    size_t order_window;  /* -k: how far past the oldest unprinted job a job may start */
    char **cmd;           /* the command template's words */
    size_t ncmd;          /* how many (0: each argument is a command) */
} opts;

/* Parses argv into *o. Returns 0, or EXIT_ERROR after printing one line naming the bad
 * option and a usage hint; *exit_now is set for --help and --version (status 0). */
int opts_parse(opts *o, int argc, char **argv, bool *exit_now);
void opts_free(opts *o);

/* ---- captured output --------------------------------------------------------------- */

/* Bytes captured from one stream of a job: in memory while small, in a temporary file
 * past OUTBUF_MEM_MAX, so a job printing gigabytes costs no memory. Exactly one of the two
 * holds the bytes: mem (len bytes) when fd < 0, else the file (bytes [off, off+len)). */
typedef struct outbuf {
    char *mem;    /* in-memory bytes, or NULL */
    size_t len;   /* bytes held (in mem, or in the file from off) */
    size_t cap;   /* mem's size */
    int fd;       /* the spill file, or -1 */
    uint64_t off; /* where the bytes start in fd */
    bool own_fd;  /* fd is this buffer's to close (else it is shared) */
} outbuf;

#define OUTBUF_MEM_MAX ((size_t)64 << 10) /* memory per stream before spilling */

void outbuf_init(outbuf *b);
/* Appends n bytes; spills to a temporary file once past OUTBUF_MEM_MAX. 0 or -errno. */
int outbuf_append(outbuf *b, const void *p, size_t n);
/* Reads once from fd into b (spilling as needed): bytes read, 0 at EOF, or -errno. */
ssize_t outbuf_read_from(outbuf *b, int fd);
/* Writes b's bytes to fd: 0, or -errno (EPIPE when the reader went away). */
int outbuf_write_to(const outbuf *b, int fd);
/* Writes b's bytes to fd, each line prefixed by prefix (plen bytes). 0 or -errno. */
int outbuf_write_tagged(const outbuf *b, int fd, const char *prefix, size_t plen);
/* Copies b's bytes into a new NUL-terminated malloc'd string (*out, *n). 0 or -errno. */
int outbuf_dup(const outbuf *b, char **out, size_t *n);
/* Empties b, keeping its memory (and its spill file, truncated) for reuse. */
void outbuf_reset(outbuf *b);
/* Frees what b holds. */
void outbuf_free(outbuf *b);
/* Moves b's bytes into dst (which must be empty): the memory if it is small enough for
 * the budget *mem_budget (which it then reduces), else into the shared spill file sfd at
 * *sfd_end. b is left empty and reusable. 0 or -errno. */
int outbuf_park(outbuf *dst, outbuf *b, size_t *mem_budget, int sfd, uint64_t *sfd_end);
/* Opens an anonymous temporary file (O_TMPFILE, else mkstemp + unlink). fd or -errno. */
int tmpfile_open(void);

/* ---- jobs -------------------------------------------------------------------------- */

enum {
    JOB_PENDING = 0, /* not finished yet */
    JOB_OK,          /* last attempt exited 0 */
    JOB_FAILED,      /* last attempt failed (exit status, signal, or could not start) */
    JOB_SKIPPED,     /* never started: crew was draining, or --resume skipped it */
};

/* One job: an input tuple and, once run, its result. The main thread allocates it (one
 * block with the argument strings); the worker that runs it owns it until it is printed
 * (possibly by another worker, for -k), then it is freed. */
typedef struct job {
    uint64_t seq;       /* 1-based input position: {#} */
    unsigned nargs;     /* arguments (one per source) */
    char **args;        /* nargs strings, in the same allocation */
    int state;          /* JOB_* */
    int exit_code;      /* last attempt's exit status; -1 if killed by a signal */
    int sig;            /* the signal that killed it, else 0 */
    bool timed_out;     /* the last attempt was stopped by --timeout */
    unsigned attempts;  /* attempts made */
    unsigned slot;      /* {%}: the worker slot that ran it, 1-based */
    double start_epoch; /* the last attempt's start, seconds since the epoch */
    int64_t runtime;    /* the last attempt's run time, ns */
    char *command;      /* the command line as run (for joblog, json, messages), or NULL */
    outbuf out;         /* its stdout once parked (see outbuf_park) */
    outbuf err;         /* its stderr once parked */
    outbuf *outp;       /* where its stdout is: the worker's buffer, or &out once parked */
    outbuf *errp;       /* where its stderr is */
} job;

/* Allocates a job with copies of the n arguments. NULL when out of memory. */
job *job_new(uint64_t seq, char *const *args, const size_t *lens, unsigned n);
void job_free(job *j);

/* ---- input ------------------------------------------------------------------------- */

typedef struct input input;
/* Opens the sources of o (stdin when none). wake_fd (an eventfd) interrupts a blocking
 * read. 0, or -errno after printing what failed. */
int input_open(input **out, const opts *o, int wake_fd);
/* The next job (seq numbers 1, 2, ...), NULL at the end or when woken (see
 * input_error). The caller owns the job. */
job *input_next(input *in);
/* How many jobs the sources make, when known before reading them (every source a :::
 * list), else -1. */
int64_t input_total(const input *in);
/* After input_next returned NULL: 0 at a clean end, -errno on a read error, -EINTR when
 * woken. */
int input_error(const input *in);
void input_close(input *in);

/* ---- command template -------------------------------------------------------------- */

typedef struct tmpl tmpl;
/* Parses the command words (joined by spaces, as GNU parallel does) and decides how jobs
 * run: directly (posix_spawn of the argv a shell would build) or through $SHELL -c. 0 or
 * -errno. */
int tmpl_parse(tmpl **out, char **words, size_t n);
void tmpl_free(tmpl *t);
/* True when jobs run through the shell. */
bool tmpl_uses_shell(const tmpl *t);
/* The path of the program to exec (the shell, or the resolved command). */
const char *tmpl_exe(const tmpl *t);

/* A growable byte buffer for expanding a template without allocating per job. */
typedef struct strbuf {
    char *p;    /* bytes, NUL-terminated after each build */
    size_t len; /* bytes used */
    size_t cap; /* size of p */
} strbuf;
int sb_put(strbuf *b, const void *p, size_t n);
int sb_putc(strbuf *b, char c);
int sb_puts(strbuf *b, const char *s);
int sb_printf(strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sb_free(strbuf *b);

/* Per-worker scratch for expansions. */
typedef struct expansion {
    strbuf text;    /* the words' bytes, NUL-separated (direct) or the shell command */
    size_t *offs;   /* each argv word's offset in text */
    char **argv;    /* the argv to exec, pointing into text */
    size_t nwords;  /* words built */
    size_t cap;     /* size of offs and argv */
    strbuf display; /* the command as a shell line, for logs */
} expansion;
/* Builds the argv for job j run in slot (1-based). 0 or -ENOMEM. */
int tmpl_expand(const tmpl *t, const job *j, unsigned slotno, expansion *x);
/* Builds the command as one shell line (what --dry-run prints and the joblog records)
 * into x->display. 0 or -ENOMEM. */
int tmpl_display(const tmpl *t, const job *j, unsigned slotno, expansion *x);
void expansion_free(expansion *x);
/* Appends s to b quoted for a POSIX shell when it needs to be. 0 or -ENOMEM. */
int shell_quote(strbuf *b, const char *s);

/* ---- the run ----------------------------------------------------------------------- */

enum { REQ_NONE = 0, REQ_TERM = 1, REQ_KILL = 2 };

/* A worker's state, one per pool worker, indexed by crew_pool_worker_id(). Fields marked
 * "shared" are read by other threads (the supervisor, ctx hooks); the rest are the
 * worker's own. */
typedef struct slot {
    unsigned id;          /* 1-based slot number: {%} */
    int wake_fd;          /* eventfd: wakes the worker's poll (kill requests); shared */
    _Atomic pid_t pid;    /* the running attempt's main pid (= its pgid), or 0; shared */
    _Atomic uint64_t seq; /* the running job's seq, or 0; shared */
    _Atomic int req;      /* REQ_*: what the worker should do to its job; shared */
    char **envp;          /* the environment for jobs, with CREW_SEQ and CREW_SLOT */
    char envbuf[2][48];   /* the strings "CREW_SEQ=n" and "CREW_SLOT=n" */
    expansion x;          /* template expansion scratch */
    outbuf out, err;      /* capture buffers, reused from job to job */
} slot;

typedef struct run run;

/* Counters and state shared by all threads. */
struct run {
    const opts *o;               /* the options */
    tmpl *t;                     /* the command template */
    crew_pool *pool;             /* the workers */
    crew_ctx *stop;              /* cancelled when crew stops starting jobs */
    slot *slots;                 /* o->jobs slots */
    int devnull;                 /* /dev/null, for jobs' stdin */
    posix_spawnattr_t attr;      /* shared spawn attributes: own group, default signals */
    int64_t t0;                  /* crew_now() at start */
    _Atomic int stop_reason;     /* STOP_*: why crew stopped starting jobs, first one wins */
    _Atomic int signals;         /* SIGINT/SIGTERM received so far */
    _Atomic int last_signal;     /* the last of them */
    _Atomic uint64_t nread;      /* jobs read from the input */
    _Atomic int64_t total;       /* jobs the input holds in all, or -1 while unknown */
    _Atomic uint64_t nstarted;   /* jobs whose first attempt started */
    _Atomic uint64_t nok;        /* jobs that succeeded */
    _Atomic uint64_t nfailed;    /* jobs that failed */
    _Atomic uint64_t ntimedout;  /* jobs whose last attempt timed out */
    _Atomic uint64_t nretried;   /* extra attempts made */
    _Atomic uint64_t nskipped;   /* jobs never started (drain, --resume) */
    _Atomic uint64_t nresumed;   /* of which skipped by --resume */
    _Atomic int halt_exit;       /* exit status decided by --halt, or -1 */
    _Atomic bool out_broken;     /* stdout's reader went away */
    _Atomic int64_t runtime_sum; /* sum of finished jobs' run times, ns (for --eta) */
    _Atomic int watched_orphans; /* orphans the supervisor waits to attribute */
    sigset_t signals_taken;      /* blocked in every thread, read from the signalfd */
    int sup_wake;                /* eventfd: wakes the supervisor */
    int input_wake;              /* eventfd: wakes the input reader */
};

enum { STOP_NONE = 0, STOP_SIGNAL, STOP_HALT, STOP_EPIPE, STOP_ERROR };

/* Stops starting new jobs (the first reason wins): cancels r->stop, wakes the input. */
void run_stop(run *r, int reason);
/* Terminates the running jobs (SIGTERM, then SIGKILL after --kill-after): cancels the
 * pool. */
void run_terminate(run *r);

/* The pool job: runs one job (all its attempts), prints it, frees it. */
int job_run(crew_ctx *ctx, void *arg);
/* The pool's discard callback: a job dropped unrun. */
void job_discard(crew_job_fn fn, void *arg, int reason);
/* Sets up the slots' spawn state. 0 or -errno. */
int slots_init(run *r);
void slots_free(run *r);
/* Wakes every slot's worker with request req (REQ_TERM or REQ_KILL). */
void slots_request(run *r, int req);
/* Is seq running, or pgid a running job's group? (for orphan attribution) */
bool slots_running(run *r, uint64_t seq, pid_t pgid);

/* The job is finished (or skipped): record, print, count, check --halt, free it. */
void job_finish(run *r, job *j);

/* Jobs to run in all (the --resume'd excluded), or 0 while the total is unknown. */
uint64_t run_total(run *r);

/* ---- output ------------------------------------------------------------------------ */

int output_init(run *r);
/* -k: ends the ordered stream once every job is in, and waits until all is printed. */
void output_close(void);
void output_fini(void);
/* Called by the main thread for each seq in input order before it is submitted (-k): may
 * block until the window has room. 0, or the stop ctx's error when crew stops. */
int output_admit(run *r, uint64_t seq);
/* Prints a finished job (now or, with -k, when its turn comes) and frees it. */
void output_emit(run *r, job *j);
/* --line-buffer: prints the complete lines of b now (tagged), keeping the rest in b. */
int output_lines(run *r, const job *j, outbuf *b, int fd, bool final);
/* Writes all of buf to fd (no lock). 0 or -errno. */
int write_all(int fd, const void *buf, size_t n);
/* Takes the lock that orders output if it is free (for the progress ticker): true if so,
 * then release it with output_unlock. */
bool output_trylock(void);
void output_unlock(void);

/* ---- supervisor -------------------------------------------------------------------- */

/* Sets up the supervisor (subreaper, signalfd); its loop runs later, in a thread of its
 * own (supervisor_thread) or in the main thread (supervisor_wait_pool). 0 or -errno. */
int supervisor_start(run *r);
/* Starts the supervisor thread unless it runs: the main thread calls it before it may
 * block other than in supervisor_wait_pool. 0, or -errno after a message (crew stops). */
int supervisor_thread(void);
/* True when the main thread need not call supervisor_thread before blocking. */
bool supervisor_watching(void);
/* Serves the signals and requests that came while no thread watched, without waiting. */
void supervisor_check(run *r);
/* The pool's worker hooks: they count the workers, so that the main thread, supervising
 * while it waits for the pool, knows when the last one stops. */
int supervisor_worker_init(void *arg, unsigned id, void **state);
void supervisor_worker_fini(void *arg, unsigned id, void *state);
/* After crew_pool_close: waits until the pool's workers have exited, running the
 * supervisor's loop meanwhile if no thread does. */
void supervisor_wait_pool(run *r);
/* Hands over a finished job's leftover process group: SIGTERM was sent; SIGKILL follows
 * at kill_at unless it is gone. */
void supervisor_leftover(pid_t pgid, int64_t kill_at);
/* A job finished: let the supervisor re-check orphans it could not attribute yet. */
void supervisor_job_done(run *r);
/* Stops the supervisor after the pool is done: kills and reaps every remaining orphan
 * and leftover group, and joins the thread if one ran. */
void supervisor_stop(run *r);

/* ---- joblog ------------------------------------------------------------------------ */

/* Opens the joblog (reading it first for --resume). 0 or -errno after a message. */
int joblog_open(const opts *o);
/* True if --resume says seq was already done. */
bool joblog_skip(uint64_t seq);
/* Appends j's line. */
void joblog_write(const job *j);
void joblog_close(void);

/* ---- progress and summary ---------------------------------------------------------- */

/* Draws --bar / --eta (final: the last time). Called by the supervisor's ticker. */
void progress_draw(run *r, bool final);
/* Takes the bar off the terminal before other output; true if it was there (then draw it
 * again after). */
bool progress_hide(void);
/* Prints the summary line on stderr. */
void progress_summary(run *r);
/* Formats ns as "1.23s", "2m03s", "1h02m". */
void format_duration(char *buf, size_t n, int64_t ns);

/* ---- json -------------------------------------------------------------------------- */

/* Loads jansson (dlopen); --json calls it once before any job. 0, or -ENOENT after a
 * message. */
int json_load(void);
/* j's JSON object as one line (malloc'd, newline-terminated), or NULL. */
char *json_render(const job *j, size_t *len);

/* ---- metrics ----------------------------------------------------------------------- */

/* Serves Prometheus metrics on addr ([HOST:]PORT; loopback by default). 0 or -errno after
 * a message. */
int metrics_start(run *r, const char *addr);
void metrics_stop(void);

/* ---- pacing and admission ---------------------------------------------------------- */

int pace_init(const opts *o);
void pace_fini(void);
/* Before a start: waits for --memfree, --load, --rate and --delay. 0, or the ctx's error
 * when crew stops meanwhile. */
int pace_wait(crew_ctx *stop);
/* Parses "10", "10/s", "5/m", "100/h" into starts per second. 0 or -EINVAL. */
int parse_rate(const char *s, double *out);
/* Parses a size "1G", "500M", "64k", "1024" into bytes. 0 or -EINVAL. */
int parse_size(const char *s, uint64_t *out);

/* ---- messages ---------------------------------------------------------------------- */

/* Prints "crew: <message>\n" on stderr, in one write. */
void msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

extern run *g_run; /* the one run: for callbacks that get no argument */

/* Aborts with a message when an invariant of crew's own is broken (kept in release). */
#define crew_assert_cli(cond) ((cond) ? (void)0 : crew_cli_assert_fail(#cond, __FILE__, __LINE__))
_Noreturn void crew_cli_assert_fail(const char *cond, const char *file, int line);

#endif /* CREW_CLI_H */
