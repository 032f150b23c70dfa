/* Tests for src/ctx.c: cancellation contexts, their tree, deadlines, waits and hooks. */
#include "internal.h"
#include "testutil.h"

#include <pthread.h>
#include <string.h>

/* ---- helpers ------------------------------------------------------------------------- */

/* What a hook saw: how often it ran and with which error. */
typedef struct hook_log {
    _Atomic int calls;
    _Atomic int err;
} hook_log;

static void log_hook(void *arg, int err)
{
    hook_log *l = arg;
    atomic_store(&l->err, err);
    atomic_fetch_add(&l->calls, 1);
}

static void test_background(void **state)
{
    (void)state;
    crew_ctx *bg = crew_ctx_background();
    assert_non_null(bg);
    assert_ptr_equal(crew_ctx_background(), bg);
    assert_false(crew_ctx_done(bg));
    assert_int_equal(crew_ctx_err(bg), 0);
    assert_int_equal(crew_ctx_cause(bg), 0);
    assert_true(crew_ctx_deadline(bg) == CREW_FOREVER);
    /* Retain, release and cancel do nothing. */
    assert_ptr_equal(crew_ctx_retain(bg), bg);
    crew_ctx_release(bg);
    crew_ctx_release(bg);
    crew_ctx_cancel(bg, CREW_ESHUTDOWN);
    assert_false(crew_ctx_done(bg));
    assert_int_equal(crew_ctx_err(bg), 0);
    /* Waiting on it only times out. */
    assert_int_equal(crew_ctx_wait(bg, CREW_NOW), CREW_ETIMEDOUT);
    assert_int_equal(crew_ctx_wait(bg, crew_deadline_in(CREW_MSEC)), CREW_ETIMEDOUT);
    /* NULL reads as background. */
    assert_false(crew_ctx_done(NULL));
    assert_int_equal(crew_ctx_err(NULL), 0);
    assert_int_equal(crew_ctx_cause(NULL), 0);
    assert_true(crew_ctx_deadline(NULL) == CREW_FOREVER);
    assert_null(crew_ctx_retain(NULL));
    crew_ctx_release(NULL);
    crew_ctx_cancel(NULL, 0);
    /* A watch on background registers nothing and reports 0; unwatch says "not fired". */
    crew__ctx_node n;
    memset(&n, 0x5a, sizeof n);
    hook_log l = {0};
    assert_int_equal(crew__ctx_watch(bg, &n, log_hook, &l), 0);
    assert_true(crew__ctx_unwatch(bg, &n));
    assert_int_equal(crew__ctx_watch(NULL, &n, log_hook, &l), 0);
    assert_true(crew__ctx_unwatch(NULL, &n));
    assert_int_equal(atomic_load(&l.calls), 0);
}

static void test_cancel_basic(void **state)
{
    (void)state;
    crew_ctx *c;
    assert_int_equal(crew_ctx_with_cancel(NULL, &c), 0);
    assert_false(crew_ctx_done(c));
    assert_int_equal(crew_ctx_err(c), 0);
    assert_int_equal(crew_ctx_cause(c), 0);
    assert_true(crew_ctx_deadline(c) == CREW_FOREVER);
    assert_int_equal(crew_ctx_wait(c, CREW_NOW), CREW_ETIMEDOUT);
    crew_ctx_cancel(c, 0);
    assert_true(crew_ctx_done(c));
    assert_int_equal(crew_ctx_err(c), CREW_ECANCELED);
    assert_int_equal(crew_ctx_cause(c), CREW_ECANCELED);
    /* The first cancel wins. */
    crew_ctx_cancel(c, CREW_ESHUTDOWN);
    assert_int_equal(crew_ctx_cause(c), CREW_ECANCELED);
    assert_int_equal(crew_ctx_wait(c, CREW_NOW), 0);
    assert_int_equal(crew_ctx_wait(c, CREW_FOREVER), 0);
    crew_ctx_release(c);

    /* A cause is kept; the error is ECANCELED unless the cause is ETIMEDOUT. */
    assert_int_equal(crew_ctx_with_cancel(crew_ctx_background(), &c), 0);
    crew_ctx_cancel(c, CREW_ESHUTDOWN);
    assert_int_equal(crew_ctx_err(c), CREW_ECANCELED);
    assert_int_equal(crew_ctx_cause(c), CREW_ESHUTDOWN);
    crew_ctx_release(c);
    assert_int_equal(crew_ctx_with_cancel(NULL, &c), 0);
    crew_ctx_cancel(c, CREW_ETIMEDOUT);
    assert_int_equal(crew_ctx_err(c), CREW_ETIMEDOUT);
    assert_int_equal(crew_ctx_cause(c), CREW_ETIMEDOUT);
    crew_ctx_release(c);

    assert_int_equal(crew_ctx_with_cancel(NULL, NULL), CREW_EINVAL);
    assert_int_equal(crew_ctx_with_deadline(NULL, CREW_FOREVER, NULL), CREW_EINVAL);
}

static void test_deadline_fires(void **state)
{
    (void)state;
    crew_ctx *c;
    assert_int_equal(crew_ctx_with_timeout(NULL, 20 * CREW_MSEC, &c), 0);
    assert_true(crew_ctx_deadline(c) != CREW_FOREVER);
    assert_int_equal(crew_ctx_wait(c, CREW_FOREVER), 0);
    assert_true(crew_ctx_done(c));
    assert_int_equal(crew_ctx_err(c), CREW_ETIMEDOUT);
    assert_int_equal(crew_ctx_cause(c), CREW_ETIMEDOUT);
    crew_ctx_release(c);
}

static void *noop_thread(void *arg)
{
    return arg;
}

int main(void)
{
    /* ThreadSanitizer starts a helper thread with the first pthread_create: start it now,
     * so the first test's thread count is not off by one. */
    pthread_t t;
    if (pthread_create(&t, NULL, noop_thread, NULL) == 0)
        pthread_join(t, NULL);

    const struct CMUnitTest tests[] = {
        leak_test(test_background),
        leak_test(test_cancel_basic),
        leak_test(test_deadline_fires),
    };
    return cmocka_run_group_tests_name("ctx", tests, NULL, NULL);
}
