/* Unit tests for worker/db/batch: the array parameters and the result split of shared statements. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

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
            assert_true(
                PQsetvalue(res, r, c, (char *)cells[r * ncols + c], (int)strlen(cells[r * ncols + c])));
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

static void test_result_drop_last_column(void **state)
{
    (void)state;
    const char *names[] = { "id", "body", "replay" };
    const char *cells[] = { "10", "{\"a\":1}", "0/3000060", "11", "{\"b\":1}", "0/3000070" };
    PGresult *res = result_of(3, names, 2, cells);
    PGresult *out = batch_result_drop_last(res); /* a replica read without its replay position */
    assert_non_null(out);
    assert_int_equal(PQntuples(out), 2);
    assert_int_equal(PQnfields(out), 2);
    assert_string_equal(PQfname(out, 1), "body");
    assert_string_equal(PQgetvalue(out, 1, 0), "11");
    assert_string_equal(PQgetvalue(out, 1, 1), "{\"b\":1}");
    PQclear(out);
    PQclear(res);
    res = result_of(3, names, 0, cells); /* no row: still the shape of the statement as written */
    out = batch_result_drop_last(res);
    assert_int_equal(PQntuples(out), 0);
    assert_int_equal(PQnfields(out), 2);
    PQclear(out);
    PQclear(res);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_array_text_quotes_and_nulls),
        cmocka_unit_test(test_result_pick_by_first_column),
        cmocka_unit_test(test_result_drop_last_column),
    };
    return cmocka_run_group_tests_name("batch", tests, NULL, NULL);
}
