/* Tests for src/park.c: futex waits, one-shot events, the eventcount. */
#include "internal.h"
#include "testutil.h"

#include <pthread.h>

static void test_futex_wait(void **state)
{
    (void)state;
    _Atomic uint32_t word = 1;
    /* A value that differs returns at once; a past deadline times out without sleeping. */
    assert_int_equal(crew__futex_wait(&word, 0, CREW_FOREVER), 0);
    assert_int_equal(crew__futex_wait(&word, 1, CREW_NOW), CREW_ETIMEDOUT);
    assert_int_equal(crew__futex_wait(&word, 1, crew_deadline_in(CREW_MSEC)), CREW_ETIMEDOUT);
    crew__futex_wake(&word, 1); /* nobody waits: harmless */
}

typedef struct setter {
    crew__event *ev;
    crew__ec *ec;
    _Atomic int *flag;
} setter;

static void *set_event(void *arg)
{
    setter *s = arg;
    crew__event_set(s->ev);
    return NULL;
}

static void test_event(void **state)
{
    (void)state;
    crew__event ev;
    crew__event_init(&ev);
    assert_false(crew__event_is_set(&ev));
    assert_int_equal(crew__event_wait(&ev, CREW_NOW), CREW_ETIMEDOUT);
    assert_int_equal(crew__event_wait(&ev, crew_deadline_in(CREW_MSEC)), CREW_ETIMEDOUT);
    pthread_t t;
    setter s = {.ev = &ev};
    pthread_create(&t, NULL, set_event, &s);
    assert_int_equal(crew__event_wait(&ev, CREW_FOREVER), 0);
    pthread_join(t, NULL);
    assert_true(crew__event_is_set(&ev));
    assert_int_equal(crew__event_wait(&ev, CREW_NOW), 0); /* stays set */
    crew__event_set(&ev);                                 /* twice is fine */
    assert_true(crew__event_is_set(&ev));
}

/* The eventcount's promise: a condition made true and notified after a waiter's prepare is
 * never missed. Many rounds of a waiter and a notifier racing on a flag. */
static void *notifier(void *arg)
{
    setter *s = arg;
    atomic_store(s->flag, 1);
    crew__ec_notify(s->ec, 1);
    return NULL;
}

static void test_eventcount(void **state)
{
    (void)state;
    crew__ec ec;
    crew__ec_init(&ec);
    /* Nobody waiting: notify costs nothing and changes nothing. */
    crew__ec_notify(&ec, 1);
    assert_int_equal(atomic_load(&ec.seq), 0);
    /* prepare then cancel leaves no waiter behind. */
    (void)crew__ec_prepare(&ec);
    assert_int_equal(crew__ec_waiters(&ec), 1);
    crew__ec_cancel(&ec);
    assert_int_equal(crew__ec_waiters(&ec), 0);
    /* A notify wakes each waiter once: while every waiter has a wake-up coming (a woken
     * thread stays a waiter until it runs), further notifies make no system call. */
    (void)crew__ec_prepare(&ec);
    (void)crew__ec_prepare(&ec);
    crew__ec_notify(&ec, 1);
    assert_int_equal(atomic_load(&ec.seq), 1);
    crew__ec_notify(&ec, 1);
    assert_int_equal(atomic_load(&ec.seq), 2);
    crew__ec_notify(&ec, 1); /* both covered: nothing to do */
    crew__ec_notify(&ec, INT32_MAX);
    assert_int_equal(atomic_load(&ec.seq), 2);
    crew__ec_cancel(&ec); /* a leaving waiter takes one wake-up back... */
    (void)crew__ec_prepare(&ec);
    crew__ec_notify(&ec, INT32_MAX); /* ...so the newcomer gets one */
    assert_int_equal(atomic_load(&ec.seq), 3);
    crew__ec_cancel(&ec);
    crew__ec_cancel(&ec);
    assert_int_equal(atomic_load(&ec.state), 0);
    crew__ec_notify(&ec, INT32_MAX);
    assert_int_equal(atomic_load(&ec.seq), 3);
    atomic_store(&ec.seq, 0);
    /* A wait with nobody notifying times out. */
    uint32_t key = crew__ec_prepare(&ec);
    assert_int_equal(crew__ec_wait(&ec, key, crew_deadline_in(CREW_MSEC)), CREW_ETIMEDOUT);
    assert_int_equal(crew__ec_waiters(&ec), 0);

    for (int round = 0; round < (int)stress_scaled(2000); round++) {
        _Atomic int flag = 0;
        setter s = {.ec = &ec, .flag = &flag};
        pthread_t t;
        pthread_create(&t, NULL, notifier, &s);
        for (;;) {
            key = crew__ec_prepare(&ec);
            if (atomic_load(&flag)) {
                crew__ec_cancel(&ec);
                break;
            }
            /* A lost wake-up would hang here; the test's timeout turns that into a failure. */
            crew__ec_wait(&ec, key, CREW_FOREVER);
        }
        pthread_join(t, NULL);
    }
    assert_int_equal(crew__ec_waiters(&ec), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        leak_test(test_futex_wait),
        leak_test(test_event),
        leak_test(test_eventcount),
    };
    return cmocka_run_group_tests_name("park", tests, NULL, NULL);
}
