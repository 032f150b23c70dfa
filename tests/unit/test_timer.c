/* Tests for src/timer.c: the shared timer thread, its heap, del semantics, failures. */
#include "internal.h"
#include "testutil.h"

#include <pthread.h>
#include <sched.h>
#include <string.h>

/* A timer that counts its firings and records their order. */
typedef struct tick {
    crew__timer t;
    _Atomic int fired;
    crew__event ev;
} tick;

/* The firing order of a batch: indexes appended by the timer thread. */
static struct {
    _Atomic int n;
    int64_t when[4096];
} order;

static void on_tick(void *arg)
{
    tick *k = arg;
    int i = atomic_fetch_add(&order.n, 1);
    if (i < 4096)
        order.when[i] = k->t.when;
    atomic_fetch_add(&k->fired, 1);
    crew__event_set(&k->ev);
}

static void tick_init(tick *k)
{
    memset(k, 0, sizeof *k);
    crew__event_init(&k->ev);
    crew__timer_init(&k->t, on_tick, k);
}

static void test_init_del(void **state)
{
    (void)state;
    tick k;
    tick_init(&k);
    assert_true(k.t.heap_idx == SIZE_MAX);
    assert_ptr_equal(k.t.arg, &k);
    assert_false(crew__timer_del(&k.t)); /* never armed */
    /* Armed then disarmed: true, and it never fires. */
    assert_int_equal(crew__timer_add(&k.t, crew_deadline_in(10 * CREW_MSEC)), 0);
    assert_true(k.t.heap_idx != SIZE_MAX);
    assert_true(crew__timer_del(&k.t));
    assert_true(k.t.heap_idx == SIZE_MAX);
    assert_false(crew__timer_del(&k.t));
    tick later;
    tick_init(&later);
    assert_int_equal(crew__timer_add(&later.t, crew_deadline_in(30 * CREW_MSEC)), 0);
    assert_int_equal(crew__event_wait(&later.ev, CREW_FOREVER), 0);
    assert_int_equal(atomic_load(&k.fired), 0);
    assert_int_equal(atomic_load(&later.fired), 1);
    assert_false(crew__timer_del(&later.t)); /* already fired */
}

static void test_fires_once(void **state)
{
    (void)state;
    tick k;
    tick_init(&k);
    int64_t when = crew_deadline_in(5 * CREW_MSEC);
    assert_int_equal(crew__timer_add(&k.t, when), 0);
    assert_int_equal(crew__event_wait(&k.ev, CREW_FOREVER), 0);
    assert_true(crew_now() >= when); /* never early */
    assert_int_equal(atomic_load(&k.fired), 1);
    /* A past deadline fires at once; a fired timer can be armed again. */
    crew__event_init(&k.ev);
    assert_int_equal(crew__timer_add(&k.t, 0), 0);
    assert_int_equal(crew__event_wait(&k.ev, CREW_FOREVER), 0);
    assert_int_equal(atomic_load(&k.fired), 2);
}

static void test_many_in_order(void **state)
{
    (void)state;
    enum { N = 300 };
    tick *k = malloc(N * sizeof *k);
    uint64_t seed = 7;
    atomic_store(&order.n, 0);
    int64_t base = crew_deadline_in(20 * CREW_MSEC);
    for (int i = 0; i < N; i++) {
        tick_init(&k[i]);
        int64_t when = base + (int64_t)(rng_next(&seed) % (40 * CREW_MSEC));
        assert_int_equal(crew__timer_add(&k[i].t, when), 0);
    }
    int64_t added = crew_now();
    for (int i = 0; i < N; i++)
        assert_int_equal(crew__event_wait(&k[i].ev, CREW_FOREVER), 0);
    assert_int_equal(atomic_load(&order.n), N);
    for (int i = 0; i < N; i++)
        assert_int_equal(atomic_load(&k[i].fired), 1);
    /* Every timer due after the last add was in the heap together with the others due
     * later: they fired in deadline order. */
    for (int i = 1; i < N; i++)
        if (order.when[i - 1] > added)
            assert_true(order.when[i] >= order.when[i - 1]);
    free(k);
}

static void test_del_random(void **state)
{
    (void)state;
    enum { N = 200 };
    tick *k = malloc(N * sizeof *k);
    bool *gone = calloc(N, sizeof *gone);
    uint64_t seed = 99;
    int64_t base = crew_deadline_in(30 * CREW_MSEC);
    for (int i = 0; i < N; i++) {
        tick_init(&k[i]);
        assert_int_equal(
            crew__timer_add(&k[i].t, base + (int64_t)(rng_next(&seed) % (20 * CREW_MSEC))), 0);
    }
    /* Re-arming an armed timer moves it. */
    for (int i = 0; i < N; i += 10)
        assert_int_equal(
            crew__timer_add(&k[i].t, base + (int64_t)(rng_next(&seed) % (20 * CREW_MSEC))), 0);
    /* Disarm a random half (in the heap's middle, top and bottom alike). */
    for (int i = 0; i < N; i++) {
        if (rng_next(&seed) % 2) {
            gone[i] = crew__timer_del(&k[i].t);
            assert_true(gone[i]);
            assert_false(crew__timer_del(&k[i].t));
        }
    }
    for (int i = 0; i < N; i++)
        if (!gone[i])
            assert_int_equal(crew__event_wait(&k[i].ev, CREW_FOREVER), 0);
    /* A sentinel due after every other: once it fired, nothing else is pending. */
    tick last;
    tick_init(&last);
    assert_int_equal(crew__timer_add(&last.t, base + 25 * CREW_MSEC), 0);
    assert_int_equal(crew__event_wait(&last.ev, CREW_FOREVER), 0);
    for (int i = 0; i < N; i++)
        assert_int_equal(atomic_load(&k[i].fired), gone[i] ? 0 : 1);
    free(gone);
    free(k);
}

/* A timer function that blocks until told to go. */
typedef struct slow {
    crew__timer t;
    crew__event entered, go;
    _Atomic int returned;
    _Atomic int del_rc, returned_at_del;
} slow;

static void slow_fn(void *arg)
{
    slow *s = arg;
    crew__event_set(&s->entered);
    assert_int_equal(crew__event_wait(&s->go, CREW_FOREVER), 0);
    atomic_store(&s->returned, 1);
}

static void *del_main(void *arg)
{
    slow *s = arg;
    atomic_store(&s->del_rc, crew__timer_del(&s->t));
    atomic_store(&s->returned_at_del, atomic_load(&s->returned));
    return NULL;
}

static void test_del_waits_for_firing(void **state)
{
    (void)state;
    slow s = {.returned = 0, .del_rc = 7, .returned_at_del = 7};
    crew__event_init(&s.entered);
    crew__event_init(&s.go);
    crew__timer_init(&s.t, slow_fn, &s);
    assert_int_equal(crew__timer_add(&s.t, 0), 0);
    assert_int_equal(crew__event_wait(&s.entered, CREW_FOREVER), 0);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, del_main, &s), 0);
    give_a_chance();
    crew__event_set(&s.go);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(atomic_load(&s.del_rc), 0);          /* it had fired */
    assert_int_equal(atomic_load(&s.returned_at_del), 1); /* and del waited for it */
}

/* Timer functions that delete or re-arm their own timer on the timer thread. */
typedef struct self_timer {
    crew__timer t;
    _Atomic int calls;
    int rearm;            /* re-arms itself this many times */
    _Atomic int del_rc;   /* what a del of itself returned */
    crew__timer *other;   /* a timer it disarms, if set */
    _Atomic int other_rc; /* what that del returned */
    crew__event done;
} self_timer;

static void self_fn(void *arg)
{
    self_timer *s = arg;
    int calls = atomic_fetch_add(&s->calls, 1) + 1;
    if (s->other)
        atomic_store(&s->other_rc, crew__timer_del(s->other));
    if (calls <= s->rearm) {
        assert_int_equal(crew__timer_add(&s->t, crew_deadline_in(CREW_MSEC)), 0);
        return;
    }
    /* From the timer thread itself: must not wait for its own firing. */
    atomic_store(&s->del_rc, crew__timer_del(&s->t));
    crew__event_set(&s->done);
}

static void test_from_timer_thread(void **state)
{
    (void)state;
    self_timer s = {.calls = 0, .rearm = 3, .del_rc = 7, .other_rc = 7};
    tick victim;
    tick_init(&victim);
    crew__event_init(&s.done);
    crew__timer_init(&s.t, self_fn, &s);
    s.other = &victim.t;
    assert_int_equal(crew__timer_add(&victim.t, crew_deadline_in(3600 * CREW_SEC)), 0);
    assert_int_equal(crew__timer_add(&s.t, crew_deadline_in(CREW_MSEC)), 0);
    assert_int_equal(crew__event_wait(&s.done, CREW_FOREVER), 0);
    assert_int_equal(atomic_load(&s.calls), 4);
    assert_int_equal(atomic_load(&s.del_rc), 0);
    /* The first call disarmed the victim, the later ones found it unarmed. */
    assert_int_equal(atomic_load(&s.other_rc), 0);
    assert_int_equal(atomic_load(&victim.fired), 0);
    assert_true(victim.t.heap_idx == SIZE_MAX);
}

static void test_idle_exit_and_restart(void **state)
{
    (void)state;
    int threads = thread_count();
    for (int round = 0; round < 3; round++) {
        tick k;
        tick_init(&k);
        assert_int_equal(crew__timer_add(&k.t, crew_deadline_in(CREW_MSEC)), 0);
        assert_true(thread_count() == threads + 1);
        assert_int_equal(crew__event_wait(&k.ev, CREW_FOREVER), 0);
        /* Nothing armed: the thread goes away, and the next add starts another. */
        wait_threads_at_most(threads);
    }
    /* Disarming the earliest (and only) timer lets an idle thread exit too. */
    tick k;
    tick_init(&k);
    assert_int_equal(crew__timer_add(&k.t, crew_deadline_in(3600 * CREW_SEC)), 0);
    assert_true(crew__timer_del(&k.t));
    wait_threads_at_most(threads);
}

static void test_failures(void **state)
{
    (void)state;
    int threads = thread_count();
    tick first;
    tick_init(&first);
    /* With the thread running, find the add that grows the heap: it fails with ENOMEM,
     * leaving the timer unarmed. */
    assert_int_equal(crew__timer_add(&first.t, crew_deadline_in(3600 * CREW_SEC)), 0);
    enum { MAX = 1 << 14 };
    tick *k = malloc(MAX * sizeof *k);
    int n = 0, rc = 0;
    for (; n < MAX; n++) {
        tick_init(&k[n]);
        crew__test_fail_after(1);
        rc = crew__timer_add(&k[n].t, crew_deadline_in(3600 * CREW_SEC));
        crew__test_fail_after(0);
        if (rc)
            break;
    }
    assert_int_equal(rc, CREW_ENOMEM);
    assert_true(k[n].t.heap_idx == SIZE_MAX);
    assert_false(crew__timer_del(&k[n].t));
    /* Without the failure it grows. */
    assert_int_equal(crew__timer_add(&k[n].t, crew_deadline_in(3600 * CREW_SEC)), 0);
    for (int i = 0; i <= n; i++)
        assert_true(crew__timer_del(&k[i].t));
    assert_true(crew__timer_del(&first.t));
    free(k);

    /* With no thread, the add that cannot start one fails with EAGAIN, unarmed. */
    wait_threads_at_most(threads);
    tick t;
    tick_init(&t);
    crew__test_fail_after(1);
    assert_int_equal(crew__timer_add(&t.t, 0), CREW_EAGAIN);
    crew__test_fail_after(0);
    assert_true(t.t.heap_idx == SIZE_MAX);
    assert_false(crew__timer_del(&t.t));
    assert_int_equal(thread_count(), threads);
    /* And the next one starts it. */
    assert_int_equal(crew__timer_add(&t.t, 0), 0);
    assert_int_equal(crew__event_wait(&t.ev, CREW_FOREVER), 0);
}

/* Threads arming and disarming their own timers at once. */
static void *churn_main(void *arg)
{
    uint64_t seed = (uint64_t)(uintptr_t)arg;
    enum { N = 32 };
    tick k[N];
    bool armed[N] = {false};
    int fired = 0, deleted = 0, added = 0;
    for (int i = 0; i < N; i++)
        tick_init(&k[i]);
    for (int op = 0; op < 2000; op++) {
        int i = (int)(rng_next(&seed) % N);
        if (!armed[i]) {
            assert_int_equal(
                crew__timer_add(&k[i].t, crew_deadline_in((int64_t)(rng_next(&seed) % 500000))), 0);
            armed[i] = true;
            added++;
        } else {
            if (crew__timer_del(&k[i].t))
                deleted++;
            armed[i] = false;
        }
    }
    for (int i = 0; i < N; i++)
        if (armed[i] && crew__timer_del(&k[i].t))
            deleted++;
    /* Every del that came back false waited for (or followed) the firing. */
    for (int i = 0; i < N; i++)
        fired += atomic_load(&k[i].fired);
    assert_int_equal(fired + deleted, added);
    return NULL;
}

static void test_concurrent(void **state)
{
    (void)state;
    pthread_t t[4];
    for (uintptr_t i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, churn_main, (void *)(i + 1)), 0);
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        leak_test(test_init_del),
        leak_test(test_fires_once),
        leak_test(test_many_in_order),
        leak_test(test_del_random),
        leak_test(test_del_waits_for_firing),
        leak_test(test_from_timer_thread),
        leak_test(test_idle_exit_and_restart),
        leak_test(test_failures),
        leak_test(test_concurrent),
    };
    return cmocka_run_group_tests_name("timer", tests, NULL, NULL);
}
