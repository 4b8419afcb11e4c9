/* Unit tests for common/room: the shared table of which workers have room under max_connections. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/room.h"

static void test_rooms(void **state)
{
    (void)state;
    struct rooms *r = rooms_create();
    assert_non_null(r);
    assert_false(rooms_elsewhere(r, 0, 1));
    rooms_set(r, 0, 1, true);
    assert_false(rooms_elsewhere(r, 0, 1)); /* its own room does not count */
    assert_true(rooms_elsewhere(r, 1, 1));
    assert_false(rooms_elsewhere(r, 1, 2)); /* another generation's room does not either */
    rooms_set(r, 0, 2, true);               /* the next generation, same slot: the old entry stays */
    assert_true(rooms_elsewhere(r, 1, 1));
    assert_true(rooms_elsewhere(r, 1, 2));
    rooms_vacate(r, 0, 1);                  /* the old worker reaped */
    assert_false(rooms_elsewhere(r, 1, 1));
    assert_true(rooms_elsewhere(r, 1, 2));
    rooms_set(r, 0, 3, true);               /* generation 3 took the slot over from 1 */
    rooms_vacate(r, 0, 1);                  /* a late reap of generation 1 leaves it alone */
    assert_true(rooms_elsewhere(r, 1, 3));
    rooms_set(r, 0, 3, false);
    assert_false(rooms_elsewhere(r, 1, 3));
    rooms_set(r, 300, 3, true);             /* out of the table: ignored */
    assert_false(rooms_elsewhere(r, 1, 3));
    rooms_destroy(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rooms),
    };
    return cmocka_run_group_tests_name("room", tests, NULL, NULL);
}
