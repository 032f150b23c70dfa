/*
 * output.c - printing finished jobs: grouped, in order (-k), line by line, tagged, JSON.
 *
 * Default (grouped): a worker prints its job's stdout then stderr whole, as soon as the job
 * ends, under out_lock, so the output of two jobs never interleaves. --line-buffer: the
 * worker prints each complete line as it arrives (tagged if --tag), under out_lock. -u:
 * jobs write straight to crew's stdout and stderr; nothing passes through here. --json: one
 * object per job on stdout instead of its output.
 *
 * -k goes through libcrew's ordered results (crew_order). The main thread reserves each
 * job's seq before submitting it (crew_order_reserve waits while `window` seqs are
 * outstanding, so one slow job holds back a bounded number of finished ones); a worker that
 * finishes a job parks its output in the job and puts the job (a reserved seq's put never
 * waits, so no worker is ever blocked by the order); one emitter thread takes the jobs in
 * seq order and prints them. Parking moves the output out of the worker's buffers, which
 * the worker reuses at once: small output is copied into the job while a memory budget
 * (PARK_MEM) lasts, anything else is appended to one shared spill file, truncated whenever
 * no parked job is left in it, so waiting jobs hold neither much memory nor a descriptor
 * each.
 *
 * If stdout's reader goes away (EPIPE; SIGPIPE is ignored so crew can finish cleanly),
 * crew stops starting jobs, terminates the running ones and prints nothing more.
 *
 * Locks, in order: out_lock (every print, and the progress ticker), then progress.c's.
 * park_lock guards the parking state (park_mem, spill_fd, spill_end, parked) and is never
 * held with out_lock.
 */
#include "cli.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PARK_MEM ((size_t)4 << 20) /* -k: bytes of parked output kept in memory */

static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t park_lock = PTHREAD_MUTEX_INITIALIZER;
static crew_order *order;  /* -k: the ordered results, or NULL */
static pthread_t emitter;  /* -k: the thread that prints them in order */
static bool emitting;      /* -k: emitter was started */
static size_t park_mem;    /* -k: memory budget left for parked output */
static int spill_fd = -1;  /* -k: the shared spill file, opened when first needed */
static uint64_t spill_end; /* -k: bytes used in it */
static size_t parked;      /* -k: jobs whose output is parked and not yet printed */

/* Notes a broken stdout: stop, terminate the running jobs, print nothing more. */
static void broken(run *r, int rc)
{
    if (rc != -EPIPE)
        return;
    if (!atomic_exchange(&r->out_broken, true)) {
        run_stop(r, STOP_EPIPE);
        run_terminate(r);
    }
}

/* The --tag prefix: the arguments joined by spaces, then a tab. */
static int tag_of(const job *j, strbuf *b)
{
    for (unsigned k = 0; k < j->nargs; k++)
        if ((k && sb_putc(b, ' ')) || sb_puts(b, j->args[k]))
            return -ENOMEM;
    return sb_putc(b, '\t');
}

/* Writes one stream of j to fd, tagged or not. */
static int put_stream(run *r, const job *j, const outbuf *b, int fd)
{
    if (b->len == 0)
        return 0;
    if (!r->o->tag)
        return outbuf_write_to(b, fd);
    strbuf t = {0};
    int rc = tag_of(j, &t);
    if (!rc)
        rc = outbuf_write_tagged(b, fd, t.p, t.len);
    sb_free(&t);
    return rc;
}

/* Prints j (the caller holds the lock that orders output). */
static void print_job(run *r, job *j)
{
    if (j->state == JOB_SKIPPED || atomic_load(&r->out_broken) || r->o->ungroup)
        return;
    if (r->o->json) {
        size_t len;
        char *line = json_render(j, &len);
        if (line) {
            broken(r, write_all(1, line, len));
            free(line);
        }
        return;
    }
    if (r->o->line_buffer)
        return; /* printed as it came */
    int rc = put_stream(r, j, j->outp, 1);
    broken(r, rc);
    if (!rc)
        put_stream(r, j, j->errp, 2);
}

/* Prints j with the progress bar out of the way (under out_lock). */
static void print_clear(run *r, job *j)
{
    bool bar = progress_hide();
    print_job(r, j);
    if (bar)
        progress_draw(r, false);
}

bool output_trylock(void)
{
    return pthread_mutex_trylock(&out_lock) == 0;
}

void output_unlock(void)
{
    pthread_mutex_unlock(&out_lock);
}

/* -k: moves a finished job's output out of its worker's buffers into the job. */
static void park(job *j)
{
    outbuf *o = j->outp, *e = j->errp;
    j->outp = &j->out;
    j->errp = &j->err;
    if (o == &j->out)
        return; /* never ran: nothing captured */
    pthread_mutex_lock(&park_lock);
    parked++;
    if (spill_fd < 0 && (o->len + e->len > park_mem || o->fd >= 0 || e->fd >= 0)) {
        spill_fd = tmpfile_open();
        if (spill_fd < 0) {
            msg("cannot create a temporary file: %s", strerror(-spill_fd));
            spill_fd = -1;
        }
    }
    if (outbuf_park(&j->out, o, &park_mem, spill_fd, &spill_end) ||
        outbuf_park(&j->err, e, &park_mem, spill_fd, &spill_end))
        msg("job %llu: output lost: cannot park it", (unsigned long long)j->seq);
    pthread_mutex_unlock(&park_lock);
}

/* -k: gives back what a printed job's parked output held. */
static void unpark(job *j)
{
    if (j->state == JOB_SKIPPED && j->out.len == 0 && j->err.len == 0)
        return;
    pthread_mutex_lock(&park_lock);
    park_mem += (j->out.fd < 0 ? j->out.len : 0) + (j->err.fd < 0 ? j->err.len : 0);
    if (parked > 0 && --parked == 0 && spill_end > 0 && ftruncate(spill_fd, 0) == 0)
        spill_end = 0;
    pthread_mutex_unlock(&park_lock);
}

/* -k: the emitter thread: takes the jobs in seq order and prints them. */
static void *emit_ordered(void *arg)
{
    run *r = arg;
    crew_order_result res;
    while (crew_order_next(order, &res, CREW_FOREVER, NULL) == 0) {
        job *j = res.item;
        if (!j)
            continue; /* a hole: cannot happen, every reserved seq is put */
        pthread_mutex_lock(&out_lock);
        print_clear(r, j);
        pthread_mutex_unlock(&out_lock);
        unpark(j);
        job_free(j);
    }
    return NULL;
}

/* crew_order_destroy's discard callback: a job never taken. */
static void discard_job(void *arg, uint64_t seq, void *item)
{
    (void)arg;
    (void)seq;
    job_free(item);
}

int output_init(run *r)
{
    park_mem = PARK_MEM;
    if (!r->o->keep_order)
        return 0;
    crew_order_opts oo = {.window = r->o->order_window, .discard = discard_job};
    int rc = crew_order_create(&order, &oo);
    if (rc)
        return rc;
    rc = pthread_create(&emitter, NULL, emit_ordered, r);
    if (rc)
        return -rc;
    emitting = true;
    return 0;
}

void output_close(void)
{
    if (!order)
        return;
    crew_order_close(order);
    if (emitting)
        pthread_join(emitter, NULL);
    emitting = false;
}

void output_fini(void)
{
    output_close();
    crew_order_destroy(order);
    order = NULL;
    if (spill_fd >= 0)
        close(spill_fd);
    spill_fd = -1;
}

int output_admit(run *r, uint64_t seq)
{
    if (!order)
        return 0;
    uint64_t got;
    int rc = crew_order_reserve(order, &got, CREW_FOREVER, r->stop);
    if (rc)
        return rc;
    crew_assert_cli(got == seq - 1); /* the main thread is the only one to reserve */
    return 0;
}

void output_emit(run *r, job *j)
{
    if (order) {
        park(j);
        if (crew_order_put(order, j->seq - 1, j, 0, CREW_FOREVER, NULL) != 0) {
            unpark(j);
            job_free(j);
        }
        return;
    }
    if (j->state == JOB_SKIPPED) {
        /* Nothing to print; and this may be the supervisor discarding queued jobs, which
         * must not wait behind a print stuck on a full pipe. */
        job_free(j);
        return;
    }
    pthread_mutex_lock(&out_lock);
    print_clear(r, j);
    pthread_mutex_unlock(&out_lock);
    job_free(j);
}

int output_lines(run *r, const job *j, outbuf *b, int fd, bool final)
{
    if (b->len == 0 || b->fd >= 0)
        return 0;
    char *nl = memrchr(b->mem, '\n', b->len);
    size_t n = nl ? (size_t)(nl - b->mem) + 1 : 0;
    if (final || b->len >= OUTBUF_MEM_MAX / 2)
        n = b->len; /* the end, or a line too long to hold: print what there is */
    if (n == 0)
        return 0;
    outbuf head = {.mem = b->mem, .len = n, .cap = n, .fd = -1};
    int rc = 0;
    pthread_mutex_lock(&out_lock);
    bool bar = progress_hide();
    if (!atomic_load(&r->out_broken))
        rc = put_stream(r, j, &head, fd);
    if (bar)
        progress_draw(r, false);
    pthread_mutex_unlock(&out_lock);
    if (fd == 1)
        broken(r, rc);
    memmove(b->mem, b->mem + n, b->len - n);
    b->len -= n;
    return rc;
}
