/* Unit tests for worker/db/id_list: PostgreSQL's bigint[] text. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "worker/db/id_list.h"

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
    const char *bad[] = { "",       "{",     "}",    "{1,2,3,4}", "{1,}",  "{,1}",
                          "{1 ,2}", "{1}x",  "{-1}", "{0}",       "{1.5}", "{9223372036854775808}",
                          "{NULL}", "{{1}}", "1,2",  "{+1}" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (id_list_parse(bad[i], ids, 3) != -1)
            fail_msg("accepted \"%s\"", bad[i]);
    assert_int_equal(id_list_parse(NULL, ids, 3), -1);
    assert_int_equal(id_list_parse("{1}", ids, 0), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_id_list_parse),
    };
    return cmocka_run_group_tests_name("id_list", tests, NULL, NULL);
}
