/* Unit tests for worker/http/query: the query string's percent-decoded lookups. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "worker/http/query.h"

static void test_query_get(void **state)
{
    (void)state;
    char buf[16];
    assert_int_equal(query_get("limit=10&after_id=5", "limit", buf, sizeof(buf)), 1);
    assert_string_equal(buf, "10");
    assert_int_equal(query_get("limit=10&after_id=5", "after_id", buf, sizeof(buf)), 1);
    assert_string_equal(buf, "5");
    assert_int_equal(query_get("xlimit=3&limit=4", "limit", buf, sizeof(buf)), 1);
    assert_string_equal(buf, "4");
    assert_int_equal(query_get("a=%41%62+c", "a", buf, sizeof(buf)), 1);
    assert_string_equal(buf, "Ab c");
    assert_int_equal(query_get("include", "include", buf, sizeof(buf)), 1);
    assert_string_equal(buf, "");
    assert_int_equal(query_get("limit=10", "after_id", buf, sizeof(buf)), 0);
    assert_int_equal(query_get("", "limit", buf, sizeof(buf)), 0);
    assert_int_equal(query_get("a=%4", "a", buf, sizeof(buf)), -1);
    assert_int_equal(query_get("a=%zz", "a", buf, sizeof(buf)), -1);
    assert_int_equal(query_get("a=%", "a", buf, sizeof(buf)), -1);
    assert_int_equal(query_get("a=0123456789abcdefXYZ", "a", buf, sizeof(buf)), -1); /* longer than buf */
    assert_int_equal(query_get("limit=5%00x", "limit", buf, sizeof(buf)), -1);       /* NUL would cut it */
    assert_int_equal(query_get("include=posts%00", "include", buf, sizeof(buf)), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_query_get),
    };
    return cmocka_run_group_tests_name("http_query", tests, NULL, NULL);
}
