/* Tests for src/error.c: the error table, its names and messages, and the version. */
#include "internal.h"
#include "testutil.h"

#include <string.h>

static void test_errors(void **state)
{
    (void)state;
    assert_string_equal(crew_strerror(0), "success");
    assert_string_equal(crew_err_name(0), "CREW_OK");
    assert_string_equal(crew_err_name(CREW_ETIMEDOUT), "CREW_ETIMEDOUT");
    assert_string_equal(crew_strerror(CREW_EAGAIN), "queue is full");
    assert_int_equal(CREW_ESHUTDOWN, -ESHUTDOWN);
    assert_int_equal(CREW_EDEADLK, -EDEADLK);
    int codes[] = {CREW_EAGAIN,    CREW_ETIMEDOUT, CREW_ECANCELED, CREW_EPIPE,
                   CREW_ESHUTDOWN, CREW_EDEADLK,   CREW_ECHILD,    CREW_EINVAL,
                   CREW_ENOMEM,    CREW_ERANGE,    CREW_EBUSY};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        assert_true(strncmp(crew_err_name(codes[i]), "CREW_E", 6) == 0);
        assert_string_not_equal(crew_err_name(codes[i]), "CREW_E?");
        assert_true(strlen(crew_strerror(codes[i])) > 0);
    }
    assert_string_equal(crew_err_name(-12345), "CREW_E?");
    assert_string_equal(crew_strerror(12345), "unknown error");
    assert_string_equal(crew_strerror(-ENOENT), strerror(ENOENT)); /* any negated errno */
    assert_string_equal(crew_version(), CREW_VERSION_STRING);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        leak_test(test_errors),
    };
    return cmocka_run_group_tests_name("error", tests, NULL, NULL);
}
