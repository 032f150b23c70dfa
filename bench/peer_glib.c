/*
 * peer_glib.c - GLib's GThreadPool: g_thread_pool_new(func, NULL, workers, exclusive =
 * TRUE), g_thread_pool_push() per job, g_thread_pool_free(pool, FALSE, TRUE) to wait.
 *
 * A GThreadPool runs one function on every pushed pointer, and refuses NULL. So the job's
 * kind rides in the low three bits of its (8-byte aligned) argument: no allocation of ours
 * per job. The queue (a GAsyncQueue) is unbounded; the cap is ignored.
 */
#include "harness.h"

#include <glib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

_Static_assert(BENCH_KINDS <= 8, "a kind must fit in three pointer bits");

static void run_tagged(gpointer data, gpointer user_data)
{
    uintptr_t v = (uintptr_t)data;
    (void)user_data;
    bench_jobs[v & 7u]((void *)(v & ~(uintptr_t)7u));
}

static void submit(void *pool, int kind, void *arg)
{
    GError *err = NULL;
    if ((uintptr_t)arg & 7u) {
        fprintf(stderr, "glib: argument not 8-byte aligned\n");
        abort();
    }
    if (!g_thread_pool_push(pool, (gpointer)((uintptr_t)arg | (uintptr_t)kind), &err)) {
        fprintf(stderr, "glib: push failed: %s\n", err ? err->message : "?");
        abort();
    }
}

static int run(bench_load *load, unsigned workers, size_t cap)
{
    GError *err = NULL;
    (void)cap;
    GThreadPool *pool = g_thread_pool_new(run_tagged, NULL, (gint)workers, TRUE, &err);
    if (!pool) {
        fprintf(stderr, "glib: g_thread_pool_new failed: %s\n", err ? err->message : "?");
        return -1;
    }
    bench_produce(load, submit, pool);
    g_thread_pool_free(pool, FALSE, TRUE);
    bench_done(load);
    return 0;
}

int main(int argc, char **argv)
{
    static const bench_peer peer = {.name = "glib", .run = run};
    return bench_main(argc, argv, &peer);
}
