/* Unit tests for common/utf8: well-formed UTF-8 after the Unicode standard's table 3-7, and JSON \u
 * escapes that name no character (lone surrogates). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/utf8.h"

static void test_sequence_len(void **state)
{
    (void)state;
    struct {
        const char *s;
        size_t len;
    } cases[] = {
        { "a", 1 },
        { "\xC2\x80", 2 },
        { "\xDF\xBF", 2 },
        { "\xE0\xA0\x80", 3 },
        { "\xED\x9F\xBF", 3 },
        { "\xEF\xBF\xBD", 3 },
        { "\xF0\x90\x80\x80", 4 },
        { "\xF4\x8F\xBF\xBF", 4 },
        { "\x80", 0 },             /* a stray continuation byte */
        { "\xC0\xAF", 0 },         /* overlong "/" */
        { "\xC1\xBF", 0 },         /* overlong */
        { "\xE0\x9F\xBF", 0 },     /* overlong 3-byte form */
        { "\xED\xA0\x80", 0 },     /* a UTF-16 surrogate */
        { "\xF0\x8F\xBF\xBF", 0 }, /* overlong 4-byte form */
        { "\xF4\x90\x80\x80", 0 }, /* past U+10FFFF */
        { "\xF5\x80\x80\x80", 0 },
        { "\xFF", 0 },
        { "\xC3\x28", 0 },
        { "\xE2\x82", 0 } /* truncated */,
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t got = utf8_sequence_len(cases[i].s, strlen(cases[i].s));
        if (got != cases[i].len)
            fail_msg("case %zu: expected %zu, got %zu", i, cases[i].len, got);
    }
    assert_int_equal(utf8_sequence_len("\xE2\x82\xAC", 2), 0); /* only 2 bytes may be looked at */
}

static void test_invalid_at(void **state)
{
    (void)state;
    assert_int_equal(utf8_invalid_at("", 0), 0);
    assert_int_equal(utf8_invalid_at("{\"a\":\"\xC3\xA9\"}", 10), 10);
    assert_int_equal(utf8_invalid_at("ab\0c", 4), 4); /* NUL is U+0000 */
    assert_int_equal(utf8_invalid_at("ab\xC0\xAF", 4), 2);
    assert_int_equal(utf8_invalid_at("ab\xE2\x82", 4), 2);
}

static void test_sanitize(void **state)
{
    (void)state;
    char out[64];
    assert_int_equal(utf8_sanitize(out, sizeof(out), "ok \xC3\xA9"), 5);
    assert_string_equal(out, "ok \xC3\xA9");
    utf8_sanitize(out, sizeof(out), "/\xFF\xFE/\xC3\x28");
    assert_string_equal(out, "/\xEF\xBF\xBD\xEF\xBF\xBD/\xEF\xBF\xBD(");
    /* a sequence that does not fit whole is left out, never cut */
    assert_int_equal(utf8_sanitize(out, 5, "ab\xE2\x82\xAC"), 2);
    assert_string_equal(out, "ab");
    assert_int_equal(utf8_sanitize(out, 4, "ab\xFF"), 2);
    assert_string_equal(out, "ab");
    assert_int_equal(utf8_sanitize(out, 1, "abc"), 0);
    assert_string_equal(out, "");
}

static void test_json_lone_surrogate_at(void **state)
{
    (void)state;
    struct {
        const char *s;
        size_t at;
    } cases[] = {
        { "\"\\ud800\"", 1 },                       /* a lone high surrogate */
        { "\"\\uDC00\"", 1 },                       /* a lone low surrogate, upper-case hex */
        { "\"ab\\ud83d\\u0041\"", 3 },              /* high, then an escape that is not a low one */
        { "\"\\ud83dx\\ude00\"", 1 },               /* high, then not at once its low half */
        { "\"\\ud83d\"", 1 },                       /* high at the end of the string */
        { "\"\\ude00\\ud83d\"", 1 },                /* a pair the wrong way round */
        { "{\"k\\udfff\":1}", 3 },                  /* in a key */
        { "\"\\ud83d\\ude00\"", 14 },               /* a proper pair (U+1F600) */
        { "\"\\u00e9\\uffff\\ud7ff\\ue000\"", 26 }, /* around the surrogate range */
        { "\"\\\\ud800\"", 9 },                     /* an escaped backslash, then the text "ud800" */
        { "\"\\\\\\ud800\"", 3 },                   /* an escaped backslash, then a lone surrogate */
        { "\"\\\"\\n\\t\"", 8 },
        { "\"\\ud800", 1 }, /* truncated: still a lone surrogate */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t got = utf8_json_lone_surrogate_at(cases[i].s, strlen(cases[i].s));
        if (got != cases[i].at)
            fail_msg("case %zu (%s): expected %zu, got %zu", i, cases[i].s, cases[i].at, got);
    }
    assert_int_equal(utf8_json_lone_surrogate_at("\"\\ud83d\\ude00\"", 8), 1); /* its low half cut off */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sequence_len),
        cmocka_unit_test(test_invalid_at),
        cmocka_unit_test(test_sanitize),
        cmocka_unit_test(test_json_lone_surrogate_at),
    };
    return cmocka_run_group_tests_name("utf8", tests, NULL, NULL);
}
