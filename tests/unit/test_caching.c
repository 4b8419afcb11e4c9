/* Unit tests for the pieces of the fast paths that need no server: the array parameters and the result
 * split of shared statements (worker/db/batch) and the shared consistency state's unknown commits
 * (common/consistency). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/consistency.h"
#include "worker/db/batch.h"

static void test_array_text_quotes_and_nulls(void **state)
{
    (void)state;
    const char *values[] = { "plain", "with \"quotes\"", "back\\slash", NULL, "", "{,}" };
    char *text = batch_array_text(values, 6);
    assert_non_null(text);
    assert_string_equal(text, "{\"plain\",\"with \\\"quotes\\\"\",\"back\\\\slash\",NULL,\"\",\"{,}\"}");
    free(text);
    text = batch_array_text(values, 0);
    assert_string_equal(text, "{}");
    free(text);
}

static PGresult *result_of(int ncols, const char *const *names, int nrows, const char *const *cells)
{
    PGresult *res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
    PGresAttDesc atts[4];
    for (int i = 0; i < ncols; i++)
        atts[i] = (PGresAttDesc){ .name = (char *)names[i], .typid = 25, .typlen = -1, .atttypmod = -1 };
    assert_true(PQsetResultAttrs(res, ncols, atts));
    for (int r = 0; r < nrows; r++)
        for (int c = 0; c < ncols; c++)
            assert_true(PQsetvalue(res, r, c, (char *)cells[r * ncols + c], (int)strlen(cells[r * ncols + c])));
    return res;
}

static void test_result_pick_by_first_column(void **state)
{
    (void)state;
    const char *names[] = { "ord", "id", "body" };
    const char *cells[] = { "2", "11", "{\"b\":1}", "1", "10", "{\"a\":1}" };
    PGresult *res = result_of(3, names, 2, cells);
    PGresult *one = batch_result_pick(res, "1", 1); /* a create's place: dropped, (id, body) kept */
    assert_int_equal(PQntuples(one), 1);
    assert_int_equal(PQnfields(one), 2);
    assert_string_equal(PQfname(one, 0), "id");
    assert_string_equal(PQgetvalue(one, 0, 0), "10");
    assert_string_equal(PQgetvalue(one, 0, 1), "{\"a\":1}");
    PQclear(one);
    PGresult *none = batch_result_pick(res, "3", 1); /* a read's id with no row: its 404 */
    assert_int_equal(PQntuples(none), 0);
    assert_int_equal(PQnfields(none), 2);
    PQclear(none);
    PGresult *all = batch_result_pick(res, "2", 0);
    assert_int_equal(PQnfields(all), 3);
    assert_string_equal(PQgetvalue(all, 0, 1), "11");
    PQclear(all);
    PQclear(res);
}

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
        cmocka_unit_test(test_array_text_quotes_and_nulls),
        cmocka_unit_test(test_result_pick_by_first_column),
        cmocka_unit_test(test_fences_unknown_commit_resolved_by_a_later_position),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
