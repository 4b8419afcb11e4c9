/* Unit tests for worker/cache/dirty_purge: the bypass ends once the purge recorded for it is applied,
 * whichever of the record's reply and the apply comes first; a failed record is asked again; a trouble
 * after the ask keeps the flag set. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "worker/cache/dirty_purge.h"

static void test_recorded_then_applied(void **state)
{
    (void)state;
    struct dirty_purge d = { 0 };
    assert_true(dirty_purge_begin(&d, 3));
    assert_false(dirty_purge_begin(&d, 3)); /* one at a time */
    assert_int_equal(dirty_purge_recorded(&d, true, 7, 6), DIRTY_PURGE_WAIT);
    assert_int_equal(dirty_purge_applied(&d, 6), DIRTY_PURGE_WAIT); /* an older purge */
    assert_int_equal(dirty_purge_applied(&d, 7), DIRTY_PURGE_ENDED);
    assert_true(dirty_purge_clears(&d, 3));
    assert_int_equal(d.state, DIRTY_PURGE_IDLE);
    assert_int_equal(dirty_purge_applied(&d, 8), DIRTY_PURGE_WAIT); /* ended once */
}

/* The race seen under synchronous replication: the other worker's later purge (6) was seen and applied
 * before this worker's record (5) answered. Before the state machine, the flag then stayed set for good. */
static void test_applied_before_the_record_answers(void **state)
{
    (void)state;
    struct dirty_purge d = { 0 };
    assert_true(dirty_purge_begin(&d, 1));
    assert_int_equal(dirty_purge_applied(&d, 6), DIRTY_PURGE_WAIT); /* no generation known yet */
    assert_int_equal(dirty_purge_recorded(&d, true, 5, 6), DIRTY_PURGE_ENDED);
    assert_true(dirty_purge_clears(&d, 1));
    assert_int_equal(d.state, DIRTY_PURGE_IDLE);
    assert_true(dirty_purge_begin(&d, 2)); /* the next trouble asks again */
}

static void test_its_own_purge_applied_first(void **state)
{
    (void)state;
    struct dirty_purge d = { 0 };
    assert_true(dirty_purge_begin(&d, 1));
    assert_int_equal(dirty_purge_recorded(&d, true, 5, 5), DIRTY_PURGE_ENDED);
}

static void test_a_failed_record_is_asked_again(void **state)
{
    (void)state;
    struct dirty_purge d = { 0 };
    assert_true(dirty_purge_begin(&d, 1));
    assert_int_equal(dirty_purge_recorded(&d, false, 0, 9), DIRTY_PURGE_WAIT);
    assert_int_equal(d.state, DIRTY_PURGE_IDLE);
    assert_int_equal(dirty_purge_applied(&d, 9), DIRTY_PURGE_WAIT);
    assert_true(dirty_purge_begin(&d, 1));
    assert_int_equal(dirty_purge_recorded(&d, true, 10, 9), DIRTY_PURGE_WAIT);
    assert_int_equal(dirty_purge_applied(&d, 10), DIRTY_PURGE_ENDED);
}

static void test_a_trouble_since_keeps_the_flag(void **state)
{
    (void)state;
    struct dirty_purge d = { 0 };
    assert_true(dirty_purge_begin(&d, 4));
    assert_int_equal(dirty_purge_recorded(&d, true, 2, 2), DIRTY_PURGE_ENDED);
    assert_false(dirty_purge_clears(&d, 5));
    assert_true(dirty_purge_begin(&d, 5)); /* so the next tick asks for another purge */
}

static void test_a_reply_not_asked_for_is_ignored(void **state)
{
    (void)state;
    struct dirty_purge d = { 0 };
    assert_int_equal(dirty_purge_recorded(&d, true, 3, 3), DIRTY_PURGE_WAIT);
    assert_int_equal(d.state, DIRTY_PURGE_IDLE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_recorded_then_applied),
        cmocka_unit_test(test_applied_before_the_record_answers),
        cmocka_unit_test(test_its_own_purge_applied_first),
        cmocka_unit_test(test_a_failed_record_is_asked_again),
        cmocka_unit_test(test_a_trouble_since_keeps_the_flag),
        cmocka_unit_test(test_a_reply_not_asked_for_is_ignored),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
