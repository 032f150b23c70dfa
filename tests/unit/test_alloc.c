/* Tests for src/alloc.c: the allocation hook, its counter and its failure injection. */
#include "internal.h"
#include "testutil.h"

#include <pthread.h>
#include <string.h>

static void *nothing(void *arg)
{
    return arg;
}

static void test_alloc_and_count(void **state)
{
    (void)state;
    uint64_t before = crew__test_alloc_count();
    void *a = crew__malloc(10);
    void *b = crew__calloc(4, 8);
    void *c = crew__aligned_alloc(64, 100);
    char *d = crew__strdup("crew");
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(c);
    assert_non_null(d);
    assert_int_equal(crew__test_alloc_count() - before, 4); /* strdup allocates once */
    assert_int_equal((uintptr_t)c % 64, 0);
    for (int i = 0; i < 100; i++)
        assert_int_equal(((char *)c)[i], 0); /* aligned allocations are zeroed */
    assert_int_equal(((uint64_t *)b)[3], 0);
    assert_string_equal(d, "crew");
    crew__free(a);
    crew__free(b);
    crew__free(c);
    crew__free(d);
    crew__free(NULL);
}

static void test_fail_after(void **state)
{
    (void)state;
    crew__test_fail_after(3); /* the third allocation from now fails, once */
    void *a = crew__malloc(8), *b = crew__malloc(8), *c = crew__malloc(8), *d = crew__malloc(8);
    assert_non_null(a);
    assert_non_null(b);
    assert_null(c);
    assert_non_null(d);
    crew__free(a);
    crew__free(b);
    crew__free(d);
    crew__test_fail_after(1);
    assert_null(crew__calloc(1, 1));
    crew__test_fail_after(1);
    assert_null(crew__aligned_alloc(64, 64));
    crew__test_fail_after(1);
    assert_null(crew__strdup("x"));
    pthread_t t;
    crew__test_fail_after(1);
    assert_int_equal(crew__thread_create(&t, nothing, NULL), CREW_EAGAIN);
    assert_int_equal(crew__thread_create(&t, nothing, NULL), 0);
    pthread_join(t, NULL);
    crew__test_fail_after(0); /* disarmed */
    void *e = crew__malloc(8);
    assert_non_null(e);
    crew__free(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        leak_test(test_alloc_and_count),
        leak_test(test_fail_after),
    };
    return cmocka_run_group_tests_name("alloc", tests, NULL, NULL);
}
