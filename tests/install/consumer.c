/* A program that uses an installed libcrew: found by pkg-config or by find_package. */
#include <crew.h>
#include <stdio.h>

static int job(crew_ctx *ctx, void *arg)
{
    (void)ctx;
    ++*(int *)arg;
    return 0;
}

int main(void)
{
    crew_pool *p;
    int n = 0;
    if (crew_pool_create(&p, &(crew_pool_opts){.workers = 1, .queue_cap = 4}) != 0)
        return 1;
    for (int i = 0; i < 10; i++)
        if (crew_pool_submit(p, job, &n, CREW_FOREVER, NULL) != 0)
            return 1;
    crew_pool_drain(p, CREW_FOREVER);
    crew_pool_destroy(p);
    printf("libcrew %s: %d jobs\n", crew_version(), n);
    return n == 10 ? 0 : 1;
}
