/* Unit tests for worker/http/etag.c: the MD5 of bodies (the ETag, which PostgreSQL's md5() must give
 * too; vectors from Python's hashlib, over every padding case) and the If-Match parser (RFC 9110). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "worker/http/etag.h"

static void md5_is(const char *body, size_t len, const char *want)
{
    char hex[HTTP_ETAG_HEX + 1];
    http_etag_md5(body, len, hex);
    assert_string_equal(hex, want);
}

static void test_md5_vectors(void **state)
{
    (void)state;
    char x[1000];
    memset(x, 'x', sizeof(x));
    md5_is("", 0, "d41d8cd98f00b204e9800998ecf8427e");
    md5_is("abc", 3, "900150983cd24fb0d6963f7d28e17f72");
    md5_is(x, 55, "04364420e25c512fd958a70738aa8f72"); /* the length still fits the last block */
    md5_is(x, 56, "668a72d5ba17f08e62dabcafad6db14b"); /* it needs one more */
    md5_is(x, 64, "c1bb4f81d892b2d57947682aeb252456");
    md5_is(x, 119, "ab347a5f68c8a443cfcddc633f12c24f");
    md5_is(x, 1000, "398533d48111e9f664b1f64cb10c4b63");
    md5_is("{\"name\": \"\xc3\xa9\"}", 14, "c2acd990d042ea109d16d6e187506b0d"); /* UTF-8 bytes as they are */
}

static struct http_if_match parsed(const char *value)
{
    struct http_if_match m;
    const char *err = NULL;
    int rc = http_if_match_parse(value, &m, &err);
    if (rc != 0)
        fail_msg("If-Match %s: expected it parsed, got %s", value, err);
    return m;
}

static void tag_is(const struct http_if_match *m, int i, const char *want)
{
    assert_true(i < m->ntags);
    assert_int_equal(m->tags[i].len, strlen(want));
    assert_memory_equal(m->tags[i].p, want, strlen(want));
}

static void test_if_match_lists(void **state)
{
    (void)state;
    struct http_if_match m = parsed("\"abc\"");
    assert_false(m.any);
    assert_int_equal(m.ntags, 1);
    tag_is(&m, 0, "abc");
    m = parsed(" \"a\" ,\t\"7\",W/\"w\", \"\"");
    assert_int_equal(m.ntags, 3);
    assert_int_equal(m.nweak, 1); /* weak tags are counted, never compared */
    tag_is(&m, 0, "a");
    tag_is(&m, 1, "7");
    tag_is(&m, 2, "");
    m = parsed(", ,\"a\",,"); /* empty list elements are allowed */
    assert_int_equal(m.ntags, 1);
    m = parsed("*");
    assert_true(m.any);
    m = parsed(" * ");
    assert_true(m.any);
    m = parsed("W/\"only-weak\"");
    assert_int_equal(m.ntags, 0);
    assert_int_equal(m.nweak, 1);
    m = parsed("\"a\\b{}\"");
    tag_is(&m, 0, "a\\b{}");
}

static void refused(const char *value)
{
    struct http_if_match m;
    const char *err = NULL;
    if (http_if_match_parse(value, &m, &err) == 0)
        fail_msg("If-Match %s: expected it refused, got it parsed", value);
    assert_non_null(err);
}

static void test_if_match_malformed(void **state)
{
    (void)state;
    refused("");
    refused(" , ");
    refused("abc");         /* unquoted */
    refused("\"abc");       /* unterminated */
    refused("\"a\" \"b\""); /* no comma */
    refused("*, \"a\"");    /* "*" alone or not at all */
    refused("\"a\", *");
    refused("w/\"a\""); /* W/ is case-sensitive */
    refused("W/ \"a\"");
    refused("\"a b\""); /* no space in a tag */
    refused("\"a\x01\"");
    char many[HTTP_IF_MATCH_TAGS_MAX * 4 + 8] = "";
    for (int i = 0; i <= HTTP_IF_MATCH_TAGS_MAX; i++)
        strcat(many, "\"t\",");
    refused(many);
    many[strlen(many) - 4] = '\0'; /* exactly the most */
    struct http_if_match m = parsed(many);
    assert_int_equal(m.ntags, HTTP_IF_MATCH_TAGS_MAX);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_md5_vectors),
        cmocka_unit_test(test_if_match_lists),
        cmocka_unit_test(test_if_match_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
