/* Unit tests for common/capacity: the shared table of which workers have room under max_connections. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/capacity.h"

static void test_capacity(void **state)
{
    (void)state;
    struct capacity *r = capacity_create();
    assert_non_null(r);
    assert_false(capacity_elsewhere(r, 0, 1));
    capacity_set(r, 0, 1, true, 0);
    assert_false(capacity_elsewhere(r, 0, 1)); /* its own room does not count */
    assert_true(capacity_elsewhere(r, 1, 1));
    assert_false(capacity_elsewhere(r, 1, 2)); /* another generation's room does not either */
    capacity_set(r, 0, 2, true, 0);            /* the next generation, same slot: the old entry stays */
    assert_true(capacity_elsewhere(r, 1, 1));
    assert_true(capacity_elsewhere(r, 1, 2));
    capacity_vacate(r, 0, 1); /* the old worker reaped */
    assert_false(capacity_elsewhere(r, 1, 1));
    assert_true(capacity_elsewhere(r, 1, 2));
    capacity_set(r, 0, 3, true, 0); /* generation 3 took the slot over from 1 */
    capacity_vacate(r, 0, 1);       /* a late reap of generation 1 leaves it alone */
    assert_true(capacity_elsewhere(r, 1, 3));
    capacity_set(r, 0, 3, false, 0);
    assert_false(capacity_elsewhere(r, 1, 3));
    capacity_set(r, 300, 3, true, 0); /* out of the table: ignored */
    assert_false(capacity_elsewhere(r, 1, 3));
    capacity_destroy(r);
}

/* How many connections the others hold: a worker well ahead of the fewest leaves new ones to it. */
static void test_fewest_elsewhere(void **state)
{
    (void)state;
    struct capacity *r = capacity_create();
    assert_int_equal(capacity_fewest_elsewhere(r, 0, 4), CAPACITY_NONE);
    capacity_set(r, 0, 4, true, 40);
    capacity_set(r, 1, 4, true, 12);
    capacity_set(r, 2, 4, false, 3); /* at its cap: it takes none */
    capacity_set(r, 3, 5, true, 1);  /* another generation */
    assert_int_equal(capacity_fewest_elsewhere(r, 0, 4), 12);
    assert_int_equal(capacity_fewest_elsewhere(r, 1, 4), 40);
    capacity_set(r, 1, 4, true, 50);
    assert_int_equal(capacity_fewest_elsewhere(r, 0, 4), 50);
    capacity_vacate(r, 1, 4); /* reaped: its count no longer counts */
    assert_int_equal(capacity_fewest_elsewhere(r, 0, 4), CAPACITY_NONE);
    assert_false(capacity_elsewhere(r, 0, 4));
    capacity_set(r, 1, 4, true, 0xffffffffu); /* clamped below CAPACITY_NONE */
    assert_int_equal(capacity_fewest_elsewhere(r, 0, 4), CAPACITY_NONE - 1);
    capacity_destroy(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_capacity),
        cmocka_unit_test(test_fewest_elsewhere),
    };
    return cmocka_run_group_tests_name("capacity", tests, NULL, NULL);
}
