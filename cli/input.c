/*
 * input.c - argument sources and the jobs they make, read lazily.
 *
 * Sources are, in order, the -a/:::: files and the ::: lists (standard input when there is
 * none). With several sources a job takes one item of each, and the jobs are every
 * combination, the last source varying fastest, as GNU parallel does. The first source is
 * streamed: only one of its items is held at a time, so an endless input (`yes | crew
 * ...`) costs a fixed buffer; the other sources are read whole, since every item of the
 * first combines with all of theirs. Items end at the delimiter ('\n', NUL with -0, or
 * -d's); a last item without one still counts; an empty line is an empty argument.
 *
 * The reader blocks only in poll(2) on its descriptor and a wake-up eventfd: when crew
 * stops starting jobs (a signal, --halt), the supervisor writes the eventfd and the
 * pending input_next returns NULL with input_error() == -EINTR. Before it blocks, it has
 * the supervisor thread started (none runs yet in a run's first moments).
 *
 * Threads: only the main thread uses an input.
 */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define READ_CHUNK ((size_t)64 << 10) /* bytes asked of each read(2) */

/* A delimited stream: the first source when it is a file or stdin. */
typedef struct reader {
    int fd;         /* the file, or 0 */
    bool close_fd;  /* fd is ours */
    char delim;     /* item terminator */
    int wake_fd;    /* eventfd that interrupts a wait for data, or -1 */
    char *buf;      /* bytes read and not yet consumed, from start to end */
    size_t cap;     /* buf's size */
    size_t start;   /* the next item's first byte */
    size_t end;     /* one past the last byte read */
    size_t scanned; /* bytes from start already searched for delim */
    bool eof;       /* read(2) returned 0 */
} reader;

/* One source read whole. */
typedef struct list {
    char **items; /* the items (owned when owned is set) */
    size_t n;     /* how many */
    bool owned;   /* items (and the strings) were allocated here */
} list;

struct input {
    size_t n;     /* sources */
    reader *rd;   /* the first source, when streamed */
    list *lists;  /* every source's items (the first's unused when streamed) */
    size_t *idx;  /* the current item of each source */
    char *cur0;   /* the current item of a streamed first source (owned) */
    char **tuple; /* scratch: one job's arguments */
    uint64_t seq; /* jobs made */
    bool started; /* the first combination was made */
    bool done;    /* no more jobs */
    int err;      /* why it ended: 0, -errno, -EINTR when woken */
};

/* ---- jobs ------------------------------------------------------------------------------ */

job *job_new(uint64_t seq, char *const *args, const size_t *lens, unsigned n)
{
    size_t bytes = sizeof(job) + n * sizeof(char *);
    for (unsigned i = 0; i < n; i++)
        bytes += (lens ? lens[i] : strlen(args[i])) + 1;
    job *j = malloc(bytes);
    if (!j)
        return NULL;
    memset(j, 0, sizeof *j);
    j->seq = seq;
    j->nargs = n;
    j->args = (char **)(j + 1);
    char *p = (char *)(j->args + n);
    for (unsigned i = 0; i < n; i++) {
        size_t len = lens ? lens[i] : strlen(args[i]);
        memcpy(p, args[i], len);
        p[len] = '\0';
        j->args[i] = p;
        p += len + 1;
    }
    outbuf_init(&j->out);
    outbuf_init(&j->err);
    return j;
}

void job_free(job *j)
{
    if (!j)
        return;
    outbuf_free(&j->out);
    outbuf_free(&j->err);
    free(j->command);
    free(j);
}

/* ---- the reader ------------------------------------------------------------------------ */

static int reader_open(reader **out, const char *path, char delim, int wake_fd)
{
    reader *r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    r->delim = delim;
    r->wake_fd = wake_fd;
    r->cap = READ_CHUNK + 1;
    r->buf = malloc(r->cap);
    if (!r->buf) {
        free(r);
        return -ENOMEM;
    }
    if (!path || strcmp(path, "-") == 0) {
        r->fd = 0;
    } else {
        r->fd = open(path, O_RDONLY | O_CLOEXEC);
        if (r->fd < 0) {
            int e = errno;
            free(r->buf);
            free(r);
            return -e;
        }
        r->close_fd = true;
    }
    *out = r;
    return 0;
}

static void reader_close(reader *r)
{
    if (!r)
        return;
    if (r->close_fd)
        close(r->fd);
    free(r->buf);
    free(r);
}

/* Reads more bytes into the buffer, waiting in poll so that the wake-up can interrupt.
 * 0, or -errno (-EINTR when woken). The consumed head is moved out first, so the buffer
 * only grows for an item longer than what it holds: memory is the longest item plus one
 * read, whatever the input's length. */
static int reader_fill(reader *r)
{
    if (r->start > 0) {
        memmove(r->buf, r->buf + r->start, r->end - r->start);
        r->end -= r->start;
        r->start = 0;
    }
    if (r->cap - r->end < READ_CHUNK + 1) {
        size_t cap = r->cap * 2;
        char *p = realloc(r->buf, cap);
        if (!p)
            return -ENOMEM;
        r->buf = p;
        r->cap = cap;
    }
    for (;;) {
        struct pollfd pf[2] = {{.fd = r->fd, .events = POLLIN},
                               {.fd = r->wake_fd, .events = POLLIN}};
        /* Before waiting for data, a thread must watch the signals (supervisor.c). */
        bool watched = supervisor_watching();
        int n = poll(pf, r->wake_fd >= 0 ? 2 : 1, watched ? -1 : 0);
        if (n == 0 && !watched) {
            supervisor_thread(); /* if it fails, crew stops: the wake-up is written */
            n = poll(pf, r->wake_fd >= 0 ? 2 : 1, -1);
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (r->wake_fd >= 0 && pf[1].revents)
            return -EINTR;
        ssize_t got = read(r->fd, r->buf + r->end, r->cap - r->end - 1);
        if (got < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (got < 0)
            return -errno;
        if (got == 0)
            r->eof = true;
        r->end += (size_t)got;
        return 0;
    }
}

/* The next item (NUL-terminated in the buffer, valid until the next call): 1, 0 at the
 * end, or -errno. `scanned` remembers how far the search for the delimiter got, so a long
 * item arriving in many reads is scanned once, not once per read. */
static int reader_next(reader *r, char **item)
{
    for (;;) {
        char *from = r->buf + r->start + r->scanned;
        char *d = memchr(from, r->delim, r->end - r->start - r->scanned);
        if (d) {
            *d = '\0';
            *item = r->buf + r->start;
            r->start = (size_t)(d - r->buf) + 1;
            r->scanned = 0;
            return 1;
        }
        r->scanned = r->end - r->start;
        if (r->eof) {
            if (r->start == r->end)
                return 0;
            r->buf[r->end] = '\0';
            *item = r->buf + r->start;
            r->start = r->end;
            r->scanned = 0;
            return 1;
        }
        int rc = reader_fill(r);
        if (rc)
            return rc;
    }
}

/* Reads a whole source into a list. */
static int read_all(list *l, const char *path, char delim)
{
    reader *r;
    int rc = reader_open(&r, path, delim, -1);
    if (rc)
        return rc;
    size_t cap = 0;
    char *item;
    l->owned = true;
    while ((rc = reader_next(r, &item)) == 1) {
        if (l->n == cap) {
            cap = cap ? cap * 2 : 16;
            char **p = realloc(l->items, cap * sizeof *p);
            if (!p) {
                rc = -ENOMEM;
                break;
            }
            l->items = p;
        }
        if (!(l->items[l->n] = strdup(item))) {
            rc = -ENOMEM;
            break;
        }
        l->n++;
    }
    reader_close(r);
    return rc < 0 ? rc : 0;
}

/* ---- the product ----------------------------------------------------------------------- */

int input_open(input **out, const opts *o, int wake_fd)
{
    static source_spec stdin_spec = {.path = "-", .from_stdin = true};
    const source_spec *specs = o->nsources ? o->sources : &stdin_spec;
    size_t n = o->nsources ? o->nsources : 1;
    input *in = calloc(1, sizeof *in);
    if (!in)
        return -ENOMEM;
    in->n = n;
    in->lists = calloc(n, sizeof *in->lists);
    in->idx = calloc(n, sizeof *in->idx);
    in->tuple = calloc(n, sizeof *in->tuple);
    int rc = -ENOMEM;
    if (!in->lists || !in->idx || !in->tuple)
        goto err;
    for (size_t i = 0; i < n; i++) {
        const source_spec *s = &specs[i];
        if (!s->path) {
            in->lists[i] = (list){.items = s->items, .n = s->n};
            continue;
        }
        rc = i == 0 ? reader_open(&in->rd, s->path, o->delim, wake_fd)
                    : read_all(&in->lists[i], s->path, o->delim);
        if (rc) {
            msg("cannot read %s: %s", strcmp(s->path, "-") ? s->path : "standard input",
                strerror(-rc));
            goto err;
        }
    }
    *out = in;
    return 0;
err:
    input_close(in);
    return rc;
}

/* Moves the first source to its next item: true, or false at its end (in->err set). */
static bool next_first(input *in)
{
    if (!in->rd)
        return ++in->idx[0] < in->lists[0].n;
    char *item;
    int rc = reader_next(in->rd, &item);
    if (rc <= 0) {
        in->err = rc;
        return false;
    }
    free(in->cur0);
    if (!(in->cur0 = strdup(item))) {
        in->err = -ENOMEM;
        return false;
    }
    return true;
}

/* Makes the next combination like an odometer: the last source turns fastest, and when a
 * source wraps the one before it moves on; when the first (streamed) source moves, the
 * next item is read. */
job *input_next(input *in)
{
    if (in->done)
        return NULL;
    if (!in->started) {
        in->started = true;
        for (size_t k = 1; k < in->n; k++)
            if (in->lists[k].n == 0)
                in->done = true;
        if (in->done)
            return NULL;
        if (in->rd ? !next_first(in) : in->lists[0].n == 0) {
            in->done = true;
            return NULL;
        }
    } else {
        size_t k = in->n - 1;
        for (; k >= 1; k--) {
            if (++in->idx[k] < in->lists[k].n)
                break;
            in->idx[k] = 0;
        }
        if (k == 0 && !next_first(in)) {
            in->done = true;
            return NULL;
        }
    }
    in->tuple[0] = in->rd ? in->cur0 : in->lists[0].items[in->idx[0]];
    for (size_t k = 1; k < in->n; k++)
        in->tuple[k] = in->lists[k].items[in->idx[k]];
    job *j = job_new(++in->seq, in->tuple, NULL, (unsigned)in->n);
    if (!j) {
        in->err = -ENOMEM;
        in->done = true;
    }
    return j;
}

int64_t input_total(const input *in)
{
    if (in->rd)
        return -1;
    int64_t total = 1;
    for (size_t k = 0; k < in->n; k++) {
        if (in->lists[k].n && total > INT64_MAX / (int64_t)in->lists[k].n)
            return -1;
        total *= (int64_t)in->lists[k].n;
    }
    return total;
}

int input_error(const input *in)
{
    return in->err;
}

void input_close(input *in)
{
    if (!in)
        return;
    reader_close(in->rd);
    for (size_t i = 0; i < in->n && in->lists; i++) {
        if (!in->lists[i].owned)
            continue;
        for (size_t k = 0; k < in->lists[i].n; k++)
            free(in->lists[i].items[k]);
        free(in->lists[i].items);
    }
    free(in->lists);
    free(in->idx);
    free(in->tuple);
    free(in->cur0);
    free(in);
}
