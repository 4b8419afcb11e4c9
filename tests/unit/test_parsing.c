/* Unit tests for the small parsers of the database replies: LSN text (worker/db/pool) and bigint[] text
 * (worker/db/id_list). Query strings and bodies are tested in test_http_query.c and test_http_body.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "worker/db/id_list.h"
#include "worker/db/pool.h"

static void test_lsn_parse(void **state)
{
    (void)state;
    uint64_t v = 0;
    assert_int_equal(pool_lsn_parse("0/0", &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(pool_lsn_parse("16/B374D848", &v), 0);
    assert_int_equal(v, ((uint64_t)0x16 << 32) | 0xB374D848u);
    assert_int_equal(pool_lsn_parse("FFFFFFFF/FFFFFFFF", &v), 0);
    assert_int_equal(v, UINT64_MAX);
    assert_int_equal(pool_lsn_parse("", &v), -1);
    assert_int_equal(pool_lsn_parse("12", &v), -1);
    assert_int_equal(pool_lsn_parse("1/2x", &v), -1);
    assert_int_equal(pool_lsn_parse(NULL, &v), -1);
}

static void test_id_list_parse(void **state)
{
    (void)state;
    int64_t ids[3] = { 0 };
    assert_int_equal(id_list_parse("{}", ids, 3), 0);
    assert_int_equal(id_list_parse("{7}", ids, 3), 1);
    assert_int_equal(ids[0], 7);
    assert_int_equal(id_list_parse("{1,22,9223372036854775807}", ids, 3), 3);
    assert_int_equal(ids[1], 22);
    assert_int_equal(ids[2], INT64_MAX);
    const char *bad[] = { "", "{", "}", "{1,2,3,4}", "{1,}", "{,1}", "{1 ,2}", "{1}x", "{-1}", "{0}", "{1.5}",
                          "{9223372036854775808}", "{NULL}", "{{1}}", "1,2", "{+1}" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (id_list_parse(bad[i], ids, 3) != -1)
            fail_msg("accepted \"%s\"", bad[i]);
    assert_int_equal(id_list_parse(NULL, ids, 3), -1);
    assert_int_equal(id_list_parse("{1}", ids, 0), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lsn_parse),
        cmocka_unit_test(test_id_list_parse),
    };
    return cmocka_run_group_tests_name("parsing", tests, NULL, NULL);
}
