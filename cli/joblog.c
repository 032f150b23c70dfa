/*
 * joblog.c - --joblog FILE in GNU parallel's format, and --resume / --resume-failed.
 *
 * The file is tab-separated with a header line: Seq Host Starttime JobRuntime Send Receive
 * Exitval Signal Command. Host is ":" (this machine), Starttime seconds since the epoch
 * with milliseconds, JobRuntime seconds right-aligned in 10 columns, Send 0, Receive the
 * bytes of stdout, Exitval -1 for a job killed by a signal. A line is written when a job
 * finishes (so the file is in completion order), with one write(2) on an O_APPEND
 * descriptor under a mutex.
 *
 * --resume reads the file first and skips every seq it lists; --resume-failed skips only
 * the seqs whose last line says exit 0 and no signal (failed ones run again, and their new
 * line is appended). Both keep the header and append; without them the file is truncated.
 * As with GNU parallel, the input and the command must be the same as in the first run:
 * only the numbers are compared.
 *
 * Threads: opened by the main thread before any job; written by every worker.
 */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char header[] =
    "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n";

static struct {
    pthread_mutex_t lock; /* serialises writes */
    int fd;               /* the joblog, or -1 */
    uint64_t *done;       /* bit per seq: skip it (--resume) */
    size_t nwords;        /* words in done */
} jl = {.lock = PTHREAD_MUTEX_INITIALIZER, .fd = -1};

static int mark(uint64_t seq, bool done)
{
    size_t w = (size_t)(seq / 64);
    if (w >= jl.nwords) {
        size_t n = jl.nwords ? jl.nwords : 64;
        while (n <= w)
            n *= 2;
        uint64_t *p = realloc(jl.done, n * sizeof *p);
        if (!p)
            return -ENOMEM;
        memset(p + jl.nwords, 0, (n - jl.nwords) * sizeof *p);
        jl.done = p;
        jl.nwords = n;
    }
    if (done)
        jl.done[w] |= 1ull << (seq % 64);
    else
        jl.done[w] &= ~(1ull << (seq % 64));
    return 0;
}

/* Reads an existing joblog for --resume. A missing file means nothing was done. */
static int read_log(const char *path, int mode)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return errno == ENOENT ? 0 : -errno;
    char *line = NULL;
    size_t cap = 0;
    int rc = 0;
    while (getline(&line, &cap, f) > 0 && rc == 0) {
        unsigned long long seq;
        double start, runtime;
        long long send, recv;
        int exitval, sig;
        if (sscanf(line, "%llu\t%*[^\t]\t%lf\t%lf\t%lld\t%lld\t%d\t%d", &seq, &start, &runtime,
                   &send, &recv, &exitval, &sig) != 7)
            continue; /* the header, or a line that is not one of ours */
        rc = mark(seq, mode == RESUME_DONE || (exitval == 0 && sig == 0));
    }
    free(line);
    fclose(f);
    return rc;
}

int joblog_open(const opts *o)
{
    if (!o->joblog)
        return 0;
    if (o->resume) {
        int rc = read_log(o->joblog, o->resume);
        if (rc) {
            msg("--joblog %s: cannot read it: %s", o->joblog, strerror(-rc));
            return rc;
        }
    }
    int flags = O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | (o->resume ? 0 : O_TRUNC);
    jl.fd = open(o->joblog, flags, 0644);
    if (jl.fd < 0) {
        int e = errno;
        msg("--joblog %s: cannot open it: %s", o->joblog, strerror(e));
        return -e;
    }
    off_t size = lseek(jl.fd, 0, SEEK_END);
    int rc = size == 0 ? write_all(jl.fd, header, sizeof header - 1) : 0;
    if (rc) {
        msg("--joblog %s: cannot write it: %s", o->joblog, strerror(-rc));
        return rc;
    }
    return 0;
}

bool joblog_skip(uint64_t seq)
{
    size_t w = (size_t)(seq / 64);
    return w < jl.nwords && (jl.done[w] >> (seq % 64) & 1);
}

void joblog_write(const job *j)
{
    if (jl.fd < 0 || j->state == JOB_SKIPPED)
        return;
    strbuf b = {0};
    if (sb_printf(&b, "%llu\t:\t%.3f\t%10.3f\t0\t%llu\t%d\t%d\t%s\n", (unsigned long long)j->seq,
                  j->start_epoch, (double)j->runtime / 1e9,
                  (unsigned long long)(j->outp ? j->outp->len : 0), j->exit_code, j->sig,
                  j->command ? j->command : "") == 0) {
        pthread_mutex_lock(&jl.lock);
        int rc = write_all(jl.fd, b.p, b.len);
        if (rc)
            msg("--joblog: write failed: %s", strerror(-rc));
        pthread_mutex_unlock(&jl.lock);
    }
    sb_free(&b);
}

void joblog_close(void)
{
    if (jl.fd >= 0)
        close(jl.fd);
    jl.fd = -1;
    free(jl.done);
    jl.done = NULL;
    jl.nwords = 0;
}
