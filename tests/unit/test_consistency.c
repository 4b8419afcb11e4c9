/* Unit tests for common/consistency: the shared state's unknown commits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/consistency.h"

/* A commit whose LSN is unknown sends its table's reads to the primary until a primary position read
 * after it resolves it; a position read before it (snapshot taken earlier) does not. */
/* Two tables as the registry numbers them: a parent (users) and its child (posts). */
enum { T_PARENT = 0, T_CHILD = 1 };

static void test_fences_unknown_commit_resolved_by_a_later_position(void **state)
{
    (void)state;
    struct consistency *f = consistency_create(2);
    assert_non_null(f);
    consistency_raise(f, T_PARENT, 100);
    consistency_raise_row(f, T_PARENT, CONSISTENCY_ROWS, 7, 90);
    uint64_t before[CONSISTENCY_TABLES_MAX], after[CONSISTENCY_TABLES_MAX];
    consistency_unknown_snapshot(f, before);
    consistency_unknown_mark(f, T_PARENT);
    assert_true(consistency_get(f, T_PARENT) == CONSISTENCY_LSN_NONE);
    assert_true(consistency_get_row(f, T_PARENT, CONSISTENCY_ROWS, 7) == CONSISTENCY_LSN_NONE);
    assert_true(consistency_get(f, T_CHILD) == 0); /* other tables unaffected */
    assert_true(consistency_get_row(f, T_CHILD, CONSISTENCY_ROWS_BY_PARENT, 7) == 0);
    consistency_unknown_resolve(f, before, 500); /* read before the mark: proves nothing */
    assert_true(consistency_get(f, T_PARENT) == CONSISTENCY_LSN_NONE);
    consistency_unknown_snapshot(f, after);
    consistency_unknown_resolve(f, after, 400);
    assert_true(consistency_get(f, T_PARENT) == 400);
    assert_true(consistency_get_row(f, T_PARENT, CONSISTENCY_ROWS, 7) == 400);
    assert_true(consistency_get_row(f, T_PARENT, CONSISTENCY_ROWS, 8) == 400);
    consistency_raise(f, T_PARENT, 600);
    assert_true(consistency_get(f, T_PARENT) == 600);
    consistency_unknown_resolve(f, after, 900); /* nothing new to resolve: the floor stays */
    assert_true(consistency_get_row(f, T_PARENT, CONSISTENCY_ROWS, 8) == 400);
    consistency_destroy(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fences_unknown_commit_resolved_by_a_later_position),
    };
    return cmocka_run_group_tests_name("consistency", tests, NULL, NULL);
}
