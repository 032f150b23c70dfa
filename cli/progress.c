/*
 * progress.c - --bar, --eta and the summary line, all on stderr.
 *
 * --bar draws one line, redrawn in place every 200 ms by the supervisor's ticker, only when
 * stderr is a terminal: a bar, done/total, the rate, the ETA. The total is known once the
 * input has ended (until then it shows "?" and no ETA), so a bar over an endless input
 * costs nothing more than the counters. --eta prints "ETA: 12s Left: 40 AVG: 0.30s" in
 * place on a terminal, or as a line every second otherwise, and a last one at the end.
 * The ETA is the jobs left times the mean time between completions so far.
 *
 * The summary line ("crew: 98 ok, 2 failed (1 timed out), 3 retried, 0 not started,
 * 2.31s") is printed once at the end unless -q.
 *
 * On a terminal the bar shares stderr with the jobs' output and crew's notices: whoever
 * prints hides it first (progress_hide) and draws it again after, so output never lands on
 * the bar's line. prog_lock serialises drawing and hiding; the supervisor draws its ticks
 * under the output lock, so a tick cannot fall between a hide and the output it makes room
 * for.
 *
 * Threads: the supervisor draws while workers count; everything read here is an atomic
 * counter of struct run, so a line may be a moment stale, never torn.
 */
#include "cli.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define BAR_WIDTH 30 /* characters of the bar itself */

static pthread_mutex_t prog_lock = PTHREAD_MUTEX_INITIALIZER;
static bool visible; /* a bar or ETA line is on the terminal now: under prog_lock */

void format_duration(char *buf, size_t n, int64_t ns)
{
    double s = (double)ns / 1e9;
    if (s < 60)
        snprintf(buf, n, "%.2fs", s);
    else if (s < 3600)
        snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)s % 60);
    else
        snprintf(buf, n, "%dh%02dm", (int)(s / 3600), (int)(s / 60) % 60);
}

void progress_draw(run *r, bool final)
{
    const opts *o = r->o;
    bool tty = isatty(2);
    if (!(o->bar && tty) && !o->eta)
        return;
    uint64_t done = atomic_load(&r->nok) + atomic_load(&r->nfailed);
    uint64_t total = run_total(r);
    int64_t elapsed = crew_now() - r->t0;
    double rate = elapsed > 0 ? (double)done * 1e9 / (double)elapsed : 0;
    char eta[32] = "?";
    uint64_t left = total > done ? total - done : 0;
    if (total && rate > 0)
        format_duration(eta, sizeof eta, (int64_t)((double)left / rate * 1e9));
    char line[256];
    int n;
    if (o->bar && tty) {
        char bar[BAR_WIDTH + 1];
        size_t fill = total ? (size_t)((double)BAR_WIDTH * (double)done / (double)total) : 0;
        for (size_t i = 0; i < BAR_WIDTH; i++)
            bar[i] = i < fill ? '#' : (total ? '.' : ' ');
        bar[BAR_WIDTH] = '\0';
        char tot[32] = "?";
        if (total)
            snprintf(tot, sizeof tot, "%llu", (unsigned long long)total);
        n = snprintf(line, sizeof line, "\r\033[K[%s] %llu/%s %.1f/s ETA %s%s", bar,
                     (unsigned long long)done, tot, rate, eta, final ? "\n" : "");
    } else {
        char avg[32] = "?";
        if (done)
            format_duration(avg, sizeof avg, elapsed / (int64_t)done);
        char lft[32] = "?";
        if (total)
            snprintf(lft, sizeof lft, "%llu", (unsigned long long)left);
        n = snprintf(line, sizeof line, "%sETA: %s Left: %s AVG: %s%s", tty ? "\r\033[K" : "", eta,
                     lft, avg, !tty || final ? "\n" : "");
    }
    if (n <= 0)
        return;
    pthread_mutex_lock(&prog_lock);
    write_all(2, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
    visible = tty && !final;
    pthread_mutex_unlock(&prog_lock);
}

bool progress_hide(void)
{
    pthread_mutex_lock(&prog_lock);
    bool was = visible;
    if (visible)
        write_all(2, "\r\033[K", 4);
    visible = false;
    pthread_mutex_unlock(&prog_lock);
    return was;
}

void progress_summary(run *r)
{
    if (r->o->quiet)
        return;
    char wall[32];
    format_duration(wall, sizeof wall, crew_now() - r->t0);
    /* Not started: of all the jobs when their number is known (the ::: lists, or an input
     * read to its end), else of those read. */
    uint64_t done = atomic_load(&r->nok) + atomic_load(&r->nfailed);
    uint64_t total = run_total(r);
    uint64_t skipped = total ? (total > done ? total - done : 0)
                             : atomic_load(&r->nskipped) - atomic_load(&r->nresumed);
    char extra[64] = "";
    if (atomic_load(&r->nresumed))
        snprintf(extra, sizeof extra, ", %llu already done",
                 (unsigned long long)atomic_load(&r->nresumed));
    msg("%llu ok, %llu failed (%llu timed out), %llu retried, %llu not started%s, %s",
        (unsigned long long)atomic_load(&r->nok), (unsigned long long)atomic_load(&r->nfailed),
        (unsigned long long)atomic_load(&r->ntimedout),
        (unsigned long long)atomic_load(&r->nretried), (unsigned long long)skipped, extra, wall);
}
