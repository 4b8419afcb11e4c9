/* Unit tests for the small parsers on the request path: query strings (worker/query), the email check
 * and the body's member check (worker/body), LSN text (worker/pool) and bigint[] text (worker/id_list). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "worker/http/body.h"
#include "worker/db/id_list.h"
#include "worker/db/pool.h"
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

static void test_email(void **state)
{
    (void)state;
    const char *good[] = { "a@b.co", "first.last+tag@example.com", "ü@exämple.de" };
    const char *bad[] = { "", "@b.co", "a@", "a@b", "a@@b.co", "a b@c.de", "a@b.", "a@.co", "ab.co" };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        if (!body_email_valid(good[i]))
            fail_msg("rejected a valid email: %s", good[i]);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (body_email_valid(bad[i]))
            fail_msg("accepted an invalid email: \"%s\"", bad[i]);
}

static void test_member_other(void **state)
{
    (void)state;
    const char *names[] = { "name", "email" };
    const char *read_only[] = { "id", "version", NULL };
    struct { const char *json; const char *other; } cases[] = {
        { "{}", NULL },
        { "{\"name\":\"n\",\"email\":\"e\"}", NULL },
        { "{\"email\":null}", NULL },
        { "{\"name\":\"n\",\"nmae\":1}", "nmae" },
        { "{\"Name\":\"n\"}", "Name" },             /* names are case-sensitive */
        { "{\"\":1,\"name\":\"n\"}", "" },
        { "{\"id\":1,\"extra\":2}", "id" },           /* the first one, in the body's order */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct json_object *obj = json_tokener_parse(cases[i].json);
        assert_non_null(obj);
        const char *got = body_member_other(obj, names, 2);
        if (cases[i].other ? !got || strcmp(got, cases[i].other) != 0 : got != NULL)
            fail_msg("%s: expected %s, got %s", cases[i].json, cases[i].other ? cases[i].other : "none",
                     got ? got : "none");
        json_object_put(obj);
    }
    assert_true(body_name_listed("version", read_only));
    assert_false(body_name_listed("versions", read_only));
    assert_false(body_name_listed("id", NULL));
}

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
        cmocka_unit_test(test_query_get),
        cmocka_unit_test(test_email),
        cmocka_unit_test(test_member_other),
        cmocka_unit_test(test_lsn_parse),
        cmocka_unit_test(test_id_list_parse),
    };
    return cmocka_run_group_tests_name("parsing", tests, NULL, NULL);
}
