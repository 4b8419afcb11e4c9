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
    capacity_set(r, 0, 1, true);
    assert_false(capacity_elsewhere(r, 0, 1)); /* its own room does not count */
    assert_true(capacity_elsewhere(r, 1, 1));
    assert_false(capacity_elsewhere(r, 1, 2)); /* another generation's room does not either */
    capacity_set(r, 0, 2, true);               /* the next generation, same slot: the old entry stays */
    assert_true(capacity_elsewhere(r, 1, 1));
    assert_true(capacity_elsewhere(r, 1, 2));
    capacity_vacate(r, 0, 1); /* the old worker reaped */
    assert_false(capacity_elsewhere(r, 1, 1));
    assert_true(capacity_elsewhere(r, 1, 2));
    capacity_set(r, 0, 3, true); /* generation 3 took the slot over from 1 */
    capacity_vacate(r, 0, 1);    /* a late reap of generation 1 leaves it alone */
    assert_true(capacity_elsewhere(r, 1, 3));
    capacity_set(r, 0, 3, false);
    assert_false(capacity_elsewhere(r, 1, 3));
    capacity_set(r, 300, 3, true); /* out of the table: ignored */
    assert_false(capacity_elsewhere(r, 1, 3));
    capacity_destroy(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_capacity),
    };
    return cmocka_run_group_tests_name("capacity", tests, NULL, NULL);
}
