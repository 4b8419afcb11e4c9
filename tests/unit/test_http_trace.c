/* Unit tests for worker/http's W3C traceparent/tracestate checks (trace.c) and the CORS origin match
 * (cors.c): what is passed on, what is replaced, and which Origin values an allow list admits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/log.h"
#include "worker/http/http.h"

#define TRACE "4bf92f3577b34da6a3ce929d0e0e4736"
#define PARENT "00f067aa0ba902b7"

static void test_traceparent_valid(void **state)
{
    (void)state;
    assert_true(http_traceparent_valid("00-" TRACE "-" PARENT "-01"));
    assert_true(http_traceparent_valid("00-" TRACE "-" PARENT "-00"));
    assert_true(http_traceparent_valid("00-" TRACE "-" PARENT "-ff")); /* unknown flags pass on */
}

static void test_traceparent_refused(void **state)
{
    (void)state;
    const char *bad[] = {
        "",
        "01-" TRACE "-" PARENT "-01",                        /* another version */
        "ff-" TRACE "-" PARENT "-01",                        /* the forbidden version */
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-" PARENT "-01", /* uppercase */
        "00-4bf92f3577b34da6a3ce929d0e0e473g-" PARENT "-01", /* not hex */
        "00-00000000000000000000000000000000-" PARENT "-01", /* all-zero trace id */
        "00-" TRACE "-0000000000000000-01",                  /* all-zero parent id */
        "00-" TRACE "-" PARENT "-01-",                       /* too long */
        "00-" TRACE "-" PARENT "-1",                         /* too short */
        "00_" TRACE "_" PARENT "_01",                        /* separators */
        "00-" TRACE "-" PARENT "-0G",                        /* flags not hex */
        "00-" TRACE "-" PARENT "-01\r\nX: y",                /* a header of its own */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (http_traceparent_valid(bad[i]))
            fail_msg("expected \"%s\" refused", bad[i]);
}

static void test_tracestate(void **state)
{
    (void)state;
    char big[600];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_true(http_tracestate_valid("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"));
    assert_false(http_tracestate_valid(""));
    assert_false(http_tracestate_valid(big));
    big[512] = '\0';
    assert_true(http_tracestate_valid(big));
    assert_false(http_tracestate_valid("a=b\x01"));
    assert_false(http_tracestate_valid("a=\xc3\xa9"));
}

static void test_cors_allowed(void **state)
{
    (void)state;
    const char *list = "https://app.example.com, http://127.0.0.1:8080";
    assert_true(http_cors_allowed(list, "https://app.example.com"));
    assert_true(http_cors_allowed(list, "http://127.0.0.1:8080"));
    assert_false(http_cors_allowed(list, "https://app.example.co"));       /* a prefix */
    assert_false(http_cors_allowed(list, "https://app.example.com.evil")); /* a longer one */
    assert_false(http_cors_allowed(list, "https://APP.example.com"));      /* exact bytes */
    assert_false(http_cors_allowed(list, "http://127.0.0.1"));
    assert_false(http_cors_allowed(list, ""));
    assert_false(http_cors_allowed(list, "null"));
    assert_false(http_cors_allowed("", "https://app.example.com")); /* no list: no CORS */
    assert_true(http_cors_allowed("*", "http://any.example:1"));
    assert_false(http_cors_allowed("*", ""));
}

int main(void)
{
    log_configure(LOGL_ERROR, LOGF_TEXT, false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_traceparent_valid),
        cmocka_unit_test(test_traceparent_refused),
        cmocka_unit_test(test_tracestate),
        cmocka_unit_test(test_cors_allowed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
