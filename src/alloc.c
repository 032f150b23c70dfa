/*
 * alloc.c - the one allocation hook.
 *
 * Every allocation and thread creation of the library passes through here, so tests can
 * make the n-th one fail (proving each error path frees what it took) and count them
 * (proving the submit/run path allocates nothing in steady state). The counters are
 * process-wide atomics; a relaxed load is all the hook costs when no failure is armed.
 */
#include "internal.h"

#include <string.h>

static _Atomic long fail_countdown;  /* > 0: the allocation that brings it to 0 fails */
static _Atomic uint64_t alloc_count; /* allocations attempted since start */

void crew__test_fail_after(long n)
{
    atomic_store(&fail_countdown, n);
}

uint64_t crew__test_alloc_count(void)
{
    return atomic_load_explicit(&alloc_count, memory_order_relaxed);
}

/* True if this allocation (or thread creation) must fail. */
static bool injected_failure(void)
{
    atomic_fetch_add_explicit(&alloc_count, 1, memory_order_relaxed);
    if (crew__likely(atomic_load_explicit(&fail_countdown, memory_order_relaxed) == 0))
        return false;
    return atomic_fetch_sub(&fail_countdown, 1) == 1;
}

void *crew__malloc(size_t n)
{
    return injected_failure() ? NULL : malloc(n);
}

void *crew__calloc(size_t count, size_t n)
{
    return injected_failure() ? NULL : calloc(count, n);
}

void *crew__aligned_alloc(size_t align, size_t n)
{
    if (injected_failure())
        return NULL;
    void *p = NULL;
    if (posix_memalign(&p, align, n ? n : align) != 0)
        return NULL;
    memset(p, 0, n);
    return p;
}

void crew__free(void *p)
{
    free(p);
}

char *crew__strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = crew__malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

int crew__thread_create(pthread_t *t, void *(*fn)(void *), void *arg)
{
    if (injected_failure())
        return CREW_EAGAIN;
    return pthread_create(t, NULL, fn, arg) == 0 ? 0 : CREW_EAGAIN;
}
