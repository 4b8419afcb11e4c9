/* Unit tests for worker/api/fill_wait: holders found only by their exact lease, waiters in arrival order,
 * the bound per lease, a waiter that leaves, the pollers' back-off and its total bound, and the rule
 * that decides whether a holder's value may answer a waiter. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "worker/api/fill_wait.h"

#define NEWEST (UINT64_MAX - 1)

static void test_holders_found_by_their_exact_lease(void **state)
{
    (void)state;
    static struct fill_waits w;
    memset(&w, 0, sizeof(w));
    struct fill_holder a = { 0 }, b = { 0 }, c = { 0 };
    fill_wait_hold(&w, &a, "17", "3", "user:1");
    fill_wait_hold(&w, &b, "81", "3", "user:2"); /* 17 and 81 share a bucket (64 buckets) */
    fill_wait_hold(&w, &c, "145", "3", "users:g4");
    assert_ptr_equal(fill_wait_find(&w, "17", "3", "user:1"), &a);
    assert_ptr_equal(fill_wait_find(&w, "81", "3", "user:2"), &b);
    assert_ptr_equal(fill_wait_find(&w, "145", "3", "users:g4"), &c);
    assert_null(fill_wait_find(&w, "17", "4", "user:1")); /* another epoch */
    assert_null(fill_wait_find(&w, "17", "3", "user:2")); /* another key */
    assert_null(fill_wait_find(&w, "18", "3", "user:1")); /* another lease of the key: not this one */
    fill_wait_drop(&w, &b);                               /* the middle of a bucket's chain */
    assert_null(fill_wait_find(&w, "81", "3", "user:2"));
    assert_ptr_equal(fill_wait_find(&w, "17", "3", "user:1"), &a);
    assert_ptr_equal(fill_wait_find(&w, "145", "3", "users:g4"), &c);
    fill_wait_drop(&w, &c);
    fill_wait_drop(&w, &a);
    fill_wait_drop(&w, &a); /* twice: nothing */
    for (int i = 0; i < FILL_WAIT_BUCKETS; i++)
        assert_null(w.buckets[i]);
    fill_wait_hold(&w, &a, "17", "3", "user:1"); /* a dropped holder may hold again */
    fill_wait_drop(&w, &a);
}

static void test_leases_that_ended_are_remembered_a_while(void **state)
{
    (void)state;
    static struct fill_waits w;
    memset(&w, 0, sizeof(w));
    struct fill_holder h = { 0 };
    assert_false(fill_wait_ended(&w, ""));
    assert_false(fill_wait_ended(&w, "7"));
    fill_wait_hold(&w, &h, "7", "0", "user:1");
    assert_false(fill_wait_ended(&w, "7")); /* still held */
    fill_wait_drop(&w, &h);
    assert_true(fill_wait_ended(&w, "7"));
    char token[24];
    for (int i = 0; i < FILL_WAIT_RECENT - 1; i++) {
        snprintf(token, sizeof(token), "%d", 100 + i);
        fill_wait_hold(&w, &h, token, "0", "user:1");
        fill_wait_drop(&w, &h);
    }
    assert_true(fill_wait_ended(&w, "7")); /* the oldest of FILL_WAIT_RECENT */
    fill_wait_hold(&w, &h, "99", "0", "user:1");
    fill_wait_drop(&w, &h);
    assert_false(fill_wait_ended(&w, "7")); /* forgotten: a WAIT on it polls */
    assert_true(fill_wait_ended(&w, "99"));
}

static void test_waiters_in_order_bounded_and_leaving(void **state)
{
    (void)state;
    static struct fill_waits w;
    static struct fill_waiter x[FILL_WAITERS_MAX + 1];
    memset(&w, 0, sizeof(w));
    memset(x, 0, sizeof(x));
    struct fill_holder h = { 0 };
    fill_wait_hold(&w, &h, "5", "0", "post:9");
    for (int i = 0; i < FILL_WAITERS_MAX; i++)
        assert_true(fill_wait_join(&h, &x[i]));
    assert_false(fill_wait_join(&h, &x[FILL_WAITERS_MAX])); /* full: that one polls */
    assert_null(x[FILL_WAITERS_MAX].holder);
    fill_wait_leave(&x[1]);                    /* a client went */
    fill_wait_leave(&x[1]);                    /* twice: nothing */
    fill_wait_leave(&x[FILL_WAITERS_MAX - 1]); /* the last one */
    assert_int_equal(h.nwaiters, FILL_WAITERS_MAX - 2);
    assert_ptr_equal(fill_wait_pop(&h), &x[0]);
    assert_null(x[0].holder);
    assert_ptr_equal(fill_wait_pop(&h), &x[2]);
    assert_true(fill_wait_join(&h, &x[1])); /* rejoins at the end */
    int n = 0;
    struct fill_waiter *last = NULL, *p;
    while ((p = fill_wait_pop(&h)) != NULL) {
        last = p;
        n++;
    }
    assert_int_equal(n, FILL_WAITERS_MAX - 3);
    assert_ptr_equal(last, &x[1]);
    assert_int_equal(h.nwaiters, 0);
    assert_true(fill_wait_join(&h, &x[0]));
    fill_wait_drop(&w, &h); /* drops with a waiter still on it: detached */
    assert_null(x[0].holder);
    assert_null(fill_wait_find(&w, "5", "0", "post:9"));
}

static void test_polling_backs_off_and_is_bounded(void **state)
{
    (void)state;
    const unsigned want[] = { 2, 4, 8, 16, 16 }; /* waited before each: 0, 2, 6, 14, 30 */
    unsigned total = 0;
    for (int i = 0; i < 5; i++) {
        assert_int_equal(fill_wait_poll_ms(i), want[i]);
        total += want[i];
    }
    assert_int_equal(total, 46);
    assert_int_equal(fill_wait_poll_ms(5), 0); /* 46 ms waited + 16 would pass 50: no sixth poll */
    assert_int_equal(fill_wait_poll_ms(6), 0);
    assert_int_equal(fill_wait_poll_ms(1000000), 0);
    assert_true(total < FILL_WAIT_POLL_TOTAL_MS);
}

static void test_a_value_serves_only_waiters_whose_fence_it_reaches(void **state)
{
    (void)state;
    /* a replica's read: its replay position before the read is what the value holds */
    assert_true(fill_wait_serves(fill_wait_reach(100, false, NEWEST, 0), 100));
    assert_true(fill_wait_serves(fill_wait_reach(100, false, NEWEST, 0), 0));
    assert_false(fill_wait_serves(fill_wait_reach(100, false, NEWEST, 0), 101));   /* a write past it */
    assert_false(fill_wait_serves(fill_wait_reach(100, false, NEWEST, 500), 101)); /* the sent fence says
                                                                                    * nothing of a replica */
    /* a primary-only read (NEWEST): it holds what was fenced when it was sent, nothing known beyond */
    assert_true(fill_wait_serves(fill_wait_reach(NEWEST, true, NEWEST, 300), 300));
    assert_false(fill_wait_serves(fill_wait_reach(NEWEST, true, NEWEST, 300), 301));
    assert_false(fill_wait_serves(fill_wait_reach(NEWEST, true, NEWEST, 300), UINT64_MAX)); /* primary-only */
    assert_true(fill_wait_serves(fill_wait_reach(NEWEST, true, NEWEST, UINT64_MAX), UINT64_MAX));
    /* a primary read at a fence: its data_lsn is one short of the fence (route_primary_data_lsn), yet for
     * its own key it reaches the fence; a newer sample reaches further */
    assert_int_equal(fill_wait_reach(299, true, NEWEST, 300), 300);
    assert_true(fill_wait_serves(fill_wait_reach(299, true, NEWEST, 300), 300));
    assert_false(fill_wait_serves(fill_wait_reach(299, true, NEWEST, 300), 301));
    assert_int_equal(fill_wait_reach(409, true, NEWEST, 300), 409);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_holders_found_by_their_exact_lease),
        cmocka_unit_test(test_waiters_in_order_bounded_and_leaving),
        cmocka_unit_test(test_leases_that_ended_are_remembered_a_while),
        cmocka_unit_test(test_polling_backs_off_and_is_bounded),
        cmocka_unit_test(test_a_value_serves_only_waiters_whose_fence_it_reaches),
    };
    return cmocka_run_group_tests_name("fill_wait", tests, NULL, NULL);
}
