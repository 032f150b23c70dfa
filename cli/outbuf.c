/*
 * outbuf.c - a job's captured output: in memory while small, in a temporary file beyond.
 *
 * Each worker captures its job's stdout and stderr into two outbufs that live as long as
 * the worker, so a job with small output costs no allocation. Past OUTBUF_MEM_MAX bytes a
 * stream moves to an anonymous temporary file (O_TMPFILE in $TMPDIR, else mkstemp and
 * unlink) and the pipe is spliced into it without a copy through user space; written out,
 * the file goes to stdout with sendfile(2). So a job printing gigabytes costs the page
 * cache, never crew's memory.
 *
 * With --keep-order, a job that finishes before its turn "parks" its output: small output
 * is copied into the job while a global memory budget allows, the rest is appended to one
 * shared spill file (so parked jobs hold no file descriptor each). The caller serialises
 * parking (the order window's lock); nothing here is shared otherwise.
 */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <unistd.h>

#define GROW_STEP ((size_t)4 << 10)  /* least free room before a read(2) into memory */
#define IO_CHUNK  ((size_t)64 << 10) /* bytes per copy or staging step */

void outbuf_init(outbuf *b)
{
    *b = (outbuf){.fd = -1};
}

int tmpfile_open(void)
{
    const char *dir = getenv("TMPDIR");
    if (!dir || !*dir)
        dir = "/tmp";
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0)
        return fd;
    char path[4096];
    if (snprintf(path, sizeof path, "%s/crew.XXXXXX", dir) >= (int)sizeof path)
        return -ENAMETOOLONG;
    fd = mkostemp(path, O_CLOEXEC);
    if (fd < 0)
        return -errno;
    unlink(path);
    return fd;
}

/* Writes all n bytes at offset off of fd (pwrite) or at its position (off < 0), through
 * short writes and EINTR. Spill files are written with pwrite at explicit offsets, so a
 * buffer never depends on a file position another reader may have moved. */
static int put_all(int fd, const char *p, size_t n, int64_t off)
{
    while (n > 0) {
        ssize_t w = off < 0 ? write(fd, p, n) : pwrite(fd, p, n, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        p += w;
        n -= (size_t)w;
        if (off >= 0)
            off += w;
    }
    return 0;
}

int write_all(int fd, const void *buf, size_t n)
{
    return put_all(fd, buf, n, -1);
}

/* Moves b's memory into a new temporary file. */
static int spill(outbuf *b)
{
    int fd = tmpfile_open();
    if (fd < 0)
        return fd;
    int rc = put_all(fd, b->mem, b->len, 0);
    if (rc) {
        close(fd);
        return rc;
    }
    b->fd = fd;
    b->own_fd = true;
    b->off = 0;
    return 0;
}

/* Makes room for at least want more bytes in memory (up to OUTBUF_MEM_MAX in all). The
 * buffer doubles from GROW_STEP, so a job that prints one line costs one small allocation,
 * kept by its worker for the next job. */
static int reserve(outbuf *b, size_t want)
{
    if (b->cap - b->len >= want)
        return 0;
    size_t cap = b->cap ? b->cap : GROW_STEP;
    while (cap - b->len < want && cap < OUTBUF_MEM_MAX)
        cap *= 2;
    if (cap > OUTBUF_MEM_MAX)
        cap = OUTBUF_MEM_MAX;
    if (cap <= b->cap)
        return 0;
    char *p = realloc(b->mem, cap);
    if (!p)
        return -ENOMEM;
    b->mem = p;
    b->cap = cap;
    return 0;
}

int outbuf_append(outbuf *b, const void *p, size_t n)
{
    if (b->fd < 0 && b->len + n <= OUTBUF_MEM_MAX) {
        int rc = reserve(b, n);
        if (rc)
            return rc;
        memcpy(b->mem + b->len, p, n);
        b->len += n;
        return 0;
    }
    if (b->fd < 0) {
        int rc = spill(b);
        if (rc)
            return rc;
    }
    int rc = put_all(b->fd, p, n, (int64_t)(b->off + b->len));
    if (rc == 0)
        b->len += n;
    return rc;
}

ssize_t outbuf_read_from(outbuf *b, int fd)
{
    for (;;) {
        ssize_t got;
        if (b->fd < 0 && b->len < OUTBUF_MEM_MAX) {
            int rc = reserve(b, GROW_STEP);
            if (rc)
                return rc;
            got = read(fd, b->mem + b->len, b->cap - b->len);
        } else {
            if (b->fd < 0) {
                int rc = spill(b);
                if (rc)
                    return rc;
            }
            /* Past the memory limit: move the pipe's pages straight into the file. Some
             * file systems refuse splice (EINVAL): then copy through a small buffer. */
            loff_t at = (loff_t)(b->off + b->len);
            got = splice(fd, NULL, b->fd, &at, IO_CHUNK, 0);
            if (got < 0 && errno == EINVAL) {
                char tmp[16 << 10];
                got = read(fd, tmp, sizeof tmp);
                if (got > 0) {
                    int rc = put_all(b->fd, tmp, (size_t)got, (int64_t)(b->off + b->len));
                    if (rc)
                        return rc;
                }
            }
        }
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return -errno;
        b->len += (size_t)got;
        return got;
    }
}

int outbuf_write_to(const outbuf *b, int fd)
{
    if (b->fd < 0)
        return put_all(fd, b->mem, b->len, -1);
    /* sendfile copies inside the kernel to any output (a terminal, a pipe, a file); an
     * output it cannot write to (EINVAL) gets the bytes through pread and write. */
    off_t off = (off_t)b->off;
    size_t left = b->len;
    while (left > 0) {
        ssize_t w = sendfile(fd, b->fd, &off, left);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EINVAL || errno == ENOSYS)) {
            char tmp[IO_CHUNK];
            ssize_t got = pread(b->fd, tmp, left < sizeof tmp ? left : sizeof tmp, off);
            if (got <= 0)
                return got < 0 ? -errno : -EIO;
            int rc = put_all(fd, tmp, (size_t)got, -1);
            if (rc)
                return rc;
            w = got;
            off += got;
        } else if (w < 0) {
            return -errno;
        } else if (w == 0) {
            return -EIO;
        }
        left -= (size_t)w;
    }
    return 0;
}

/* Calls fn on b's bytes, chunk by chunk. */
static int each_chunk(const outbuf *b, int (*fn)(void *, const char *, size_t), void *arg)
{
    if (b->fd < 0)
        return b->len ? fn(arg, b->mem, b->len) : 0;
    char *tmp = malloc(IO_CHUNK);
    if (!tmp)
        return -ENOMEM;
    int rc = 0;
    for (size_t done = 0; done < b->len && !rc;) {
        size_t want = b->len - done < IO_CHUNK ? b->len - done : IO_CHUNK;
        ssize_t got = pread(b->fd, tmp, want, (off_t)(b->off + done));
        if (got <= 0) {
            rc = got < 0 ? -errno : -EIO;
            break;
        }
        rc = fn(arg, tmp, (size_t)got);
        done += (size_t)got;
    }
    free(tmp);
    return rc;
}

/* State of a tagged write: lines are staged with their prefix, then written in chunks. */
typedef struct tagger {
    int fd;             /* where to */
    const char *prefix; /* the tag and its tab */
    size_t plen;        /* its length */
    bool at_line_start; /* the next byte starts a line */
    strbuf stage;       /* bytes waiting to be written */
} tagger;

static int tag_chunk(void *arg, const char *p, size_t n)
{
    tagger *t = arg;
    const char *end = p + n;
    while (p < end) {
        if (t->at_line_start && sb_put(&t->stage, t->prefix, t->plen))
            return -ENOMEM;
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *stop = nl ? nl + 1 : end;
        if (sb_put(&t->stage, p, (size_t)(stop - p)))
            return -ENOMEM;
        t->at_line_start = nl != NULL;
        p = stop;
        if (t->stage.len >= IO_CHUNK) {
            int rc = put_all(t->fd, t->stage.p, t->stage.len, -1);
            t->stage.len = 0;
            if (rc)
                return rc;
        }
    }
    return 0;
}

int outbuf_write_tagged(const outbuf *b, int fd, const char *prefix, size_t plen)
{
    tagger t = {.fd = fd, .prefix = prefix, .plen = plen, .at_line_start = true};
    int rc = each_chunk(b, tag_chunk, &t);
    if (!rc && t.stage.len)
        rc = put_all(fd, t.stage.p, t.stage.len, -1);
    sb_free(&t.stage);
    return rc;
}

static int dup_chunk(void *arg, const char *p, size_t n)
{
    return sb_put(arg, p, n);
}

int outbuf_dup(const outbuf *b, char **out, size_t *n)
{
    strbuf s = {0};
    int rc = sb_putc(&s, '\0');
    s.len = 0;
    rc = rc ? rc : each_chunk(b, dup_chunk, &s);
    if (rc) {
        sb_free(&s);
        return rc;
    }
    *out = s.p;
    *n = s.len;
    return 0;
}

void outbuf_reset(outbuf *b)
{
    if (b->fd >= 0 && b->own_fd)
        close(b->fd);
    b->fd = -1;
    b->own_fd = false;
    b->off = 0;
    b->len = 0;
}

void outbuf_free(outbuf *b)
{
    outbuf_reset(b);
    free(b->mem);
    b->mem = NULL;
    b->cap = 0;
}

int outbuf_park(outbuf *dst, outbuf *b, size_t *mem_budget, int sfd, uint64_t *sfd_end)
{
    /* Three cases: nothing to keep; small enough for the budget (a copy, so that the
     * worker keeps its buffer); otherwise appended to the shared file, from memory or, for
     * output that had already spilled, file to file with copy_file_range. */
    int rc = 0;
    if (b->len == 0) {
        /* nothing to keep */
    } else if (b->fd < 0 && b->len <= *mem_budget) {
        if (!(dst->mem = malloc(b->len)))
            return -ENOMEM;
        memcpy(dst->mem, b->mem, b->len);
        dst->len = dst->cap = b->len;
        *mem_budget -= b->len;
    } else if (b->fd < 0) {
        rc = put_all(sfd, b->mem, b->len, (int64_t)*sfd_end);
    } else {
        loff_t in = (loff_t)b->off, out = (loff_t)*sfd_end;
        for (size_t left = b->len; left > 0 && !rc;) {
            ssize_t w = copy_file_range(b->fd, &in, sfd, &out, left, 0);
            if (w <= 0) {
                rc = w < 0 ? -errno : -EIO;
                break;
            }
            left -= (size_t)w;
        }
    }
    if (!rc && b->len && !dst->mem) {
        dst->fd = sfd;
        dst->own_fd = false;
        dst->off = *sfd_end;
        dst->len = b->len;
        *sfd_end += b->len;
    }
    outbuf_reset(b);
    return rc;
}
