/* Unit tests for worker/http/body: the email check and the body's member checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "worker/http/body.h"

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
    struct {
        const char *json;
        const char *other;
    } cases[] = {
        { "{}", NULL },
        { "{\"name\":\"n\",\"email\":\"e\"}", NULL },
        { "{\"email\":null}", NULL },
        { "{\"name\":\"n\",\"nmae\":1}", "nmae" },
        { "{\"Name\":\"n\"}", "Name" }, /* names are case-sensitive */
        { "{\"\":1,\"name\":\"n\"}", "" },
        { "{\"id\":1,\"extra\":2}", "id" }, /* the first one, in the body's order */
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_email),
        cmocka_unit_test(test_member_other),
    };
    return cmocka_run_group_tests_name("http_body", tests, NULL, NULL);
}
