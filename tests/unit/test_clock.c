/* Unit tests for common/clock: the back-off every reconnecting client uses, and the timeval libevent takes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/clock.h"

static void test_backoff_doubles_then_caps(void **state)
{
    (void)state;
    assert_int_equal(clock_backoff_ms(0, 100, 5000), 100);
    assert_int_equal(clock_backoff_ms(1, 100, 5000), 200);
    assert_int_equal(clock_backoff_ms(5, 100, 5000), 3200);
    assert_int_equal(clock_backoff_ms(6, 100, 5000), 5000);
    assert_int_equal(clock_backoff_ms(1000, 100, 5000), 5000); /* no overflow however long it failed */
    assert_int_equal(clock_backoff_ms(-1, 100, 5000), 100);
}

static void test_timeval(void **state)
{
    (void)state;
    struct timeval tv = clock_timeval(2345);
    assert_int_equal(tv.tv_sec, 2);
    assert_int_equal(tv.tv_usec, 345000);
    tv = clock_timeval(0);
    assert_int_equal(tv.tv_sec, 0);
    assert_int_equal(tv.tv_usec, 0);
}

static void test_monotonic_units_agree(void **state)
{
    (void)state;
    uint64_t us = clock_now_us(), ms = clock_now_ms();
    int64_t s = clock_now_s();
    assert_true(ms >= us / 1000 && ms - us / 1000 < 1000);
    assert_true((uint64_t)s >= us / 1000000 && (uint64_t)s - us / 1000000 <= 1);
    assert_true(clock_now_us() >= us);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backoff_doubles_then_caps),
        cmocka_unit_test(test_timeval),
        cmocka_unit_test(test_monotonic_units_agree),
    };
    return cmocka_run_group_tests_name("clock", tests, NULL, NULL);
}
