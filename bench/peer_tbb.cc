/*
 * peer_tbb.cc - oneTBB: a tbb::task_arena of W slots and a tbb::task_group; the producer
 * runs inside arena.execute(), calls tg.run() per job, then tg.wait().
 *
 * An arena of W slots reserves one for the thread that calls execute(), so W - 1 TBB
 * workers run jobs while the producer submits, and the producer joins them in tg.wait().
 * TBB caps its workers at the machine's concurrency unless told otherwise, so a
 * global_control lifts the cap to W for the 64-worker workload. The task queue is
 * unbounded; the cap is ignored. The peer reports the share of jobs the producer ran.
 */
#include "harness.h"

#include <tbb/global_control.h>
#include <tbb/task_arena.h>
#include <tbb/task_group.h>

#include <algorithm>
#include <thread>

static int producer_slot;      // the producer's arena slot; set before any job
static uint64_t producer_jobs; // jobs the producer ran; written only by the producer

static void submit(void *pool, int kind, void *arg)
{
    bench_fn fn = bench_jobs[kind];
    static_cast<tbb::task_group *>(pool)->run([fn, arg] {
        fn(arg);
        if (tbb::this_task_arena::current_thread_index() == producer_slot)
            producer_jobs++;
    });
}

static int run(bench_load *load, unsigned workers, size_t cap)
{
    (void)cap;
    size_t limit = std::max<size_t>(workers, std::thread::hardware_concurrency());
    tbb::global_control gc(tbb::global_control::max_allowed_parallelism, limit);
    tbb::task_arena arena(static_cast<int>(workers));
    tbb::task_group tg;
    arena.execute([&] {
        producer_slot = tbb::this_task_arena::current_thread_index();
        bench_produce(load, submit, &tg);
        tg.wait();
        bench_done(load);
        bench_set_producer_jobs(load, producer_jobs);
    });
    return 0;
}

int main(int argc, char **argv)
{
    bench_peer peer = {};
    peer.name = "tbb";
    peer.run = run;
    peer.producer_is_worker = 1;
    return bench_main(argc, argv, &peer);
}
