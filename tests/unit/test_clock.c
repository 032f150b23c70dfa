/* Tests for src/clock.c: time, deadlines, durations, ticks. */
#include "internal.h"
#include "testutil.h"

#include <string.h>

static void test_now_monotonic(void **state)
{
    (void)state;
    int64_t a = crew_now(), b = crew_now();
    assert_true(a > 0);
    assert_true(b >= a);
}

static void test_deadline_in(void **state)
{
    (void)state;
    int64_t before = crew_now();
    int64_t d = crew_deadline_in(5 * CREW_SEC);
    assert_true(d >= before + 5 * CREW_SEC);
    assert_int_equal(crew_deadline_in(-1), CREW_FOREVER);
    assert_int_equal(crew_deadline_in(INT64_MAX), CREW_FOREVER); /* saturates */
    int64_t left;
    assert_true(crew__deadline_left(CREW_FOREVER, &left));
    assert_true(left == INT64_MAX);
    assert_false(crew__deadline_left(CREW_NOW, &left));
    assert_true(crew__deadline_left(d, &left));
}

static void test_duration_parse(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        int64_t ns;
    } ok[] = {{"250ms", 250 * CREW_MSEC},
              {"30s", 30 * CREW_SEC},
              {"1m30s", 90 * CREW_SEC},
              {"1h", 3600 * CREW_SEC},
              {"1.5s", 1500 * CREW_MSEC},
              {"100us", 100 * CREW_USEC},
              {"20ns", 20},
              {"2", 2 * CREW_SEC},
              {"0.5", 500 * CREW_MSEC},
              {"1d", 86400 * CREW_SEC},
              {"1h2m3s4ms", 3723004 * CREW_MSEC},
              {"0", 0}};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        int64_t v = -7;
        assert_int_equal(crew_duration_parse(ok[i].s, &v), 0);
        assert_true(v == ok[i].ns);
    }
    static const char *bad[] = {"", "ms", "1x", "1m30", "-1s", "1 s", "s1", ".", "1..2s"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int64_t v = -7;
        assert_int_equal(crew_duration_parse(bad[i], &v), CREW_EINVAL);
        assert_true(v == -7); /* untouched on error */
    }
    int64_t v;
    assert_int_equal(crew_duration_parse("999999999999h", &v), CREW_ERANGE);
    assert_int_equal(crew_duration_parse("99999999999999999999999s", &v), CREW_ERANGE);
    assert_int_equal(crew_duration_parse(NULL, &v), CREW_EINVAL);
    assert_int_equal(crew_duration_parse("1s", NULL), CREW_EINVAL);
}

/* Whether ticks over a busy wait of span ns convert to the clock's time within pct
 * percent. The ticks' interval brackets the clock's, so a preemption inside the window
 * cannot make the conversion look too fast; one outside it can make it look slow, so the
 * best of ten tries counts. This checks the calibration, not a duration. */
static bool ticks_agree(int64_t span, int pct)
{
    for (int attempt = 0; attempt < 10; attempt++) {
        uint64_t t0 = crew__ticks();
        int64_t n0 = crew_now();
        while (crew_now() - n0 < span)
            ;
        int64_t n1 = crew_now();
        uint64_t t1 = crew__ticks();
        int64_t ns = crew__ticks_to_ns(t1 - t0);
        if (ns > (n1 - n0) * (100 - pct) / 100 && ns < (n1 - n0) * (100 + pct) / 100)
            return true;
    }
    return false;
}

static void test_ticks(void **state)
{
    (void)state;
    crew__ticks_init();
    /* At once: the first conversion measures the provisional scale (unless this process
     * was slow enough to settle it already; either must agree). */
    assert_true(ticks_agree(100 * CREW_USEC, 20));
    assert_true(ticks_agree(5 * CREW_MSEC, 20));
    assert_int_equal(crew__ticks_to_ns((uint64_t)-5), 0); /* a backwards pair clamps */
    assert_true(crew__ns_to_ticks(CREW_MSEC) > 0);
    assert_int_equal(crew__ns_to_ticks(-1), 0);
}

/* The provisional scale is replaced by the final one at the first conversion a few
 * milliseconds after the calibration; the final one agrees with the clock closely. */
static void test_ticks_settle(void **state)
{
    (void)state;
    crew__ticks_init();
    int64_t n0 = crew_now();
    while (crew_now() - n0 < 3 * CREW_MSEC)
        ;
    (void)crew__ticks_to_ns(1);
    assert_true(atomic_load(&crew__tick_settled));
    assert_true(ticks_agree(5 * CREW_MSEC, 2));
}

static void test_ncpu(void **state)
{
    (void)state;
    assert_true(crew_ncpu() >= 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        leak_test(test_now_monotonic), leak_test(test_deadline_in),  leak_test(test_duration_parse),
        leak_test(test_ticks),         leak_test(test_ticks_settle), leak_test(test_ncpu),
    };
    return cmocka_run_group_tests_name("clock", tests, NULL, NULL);
}
