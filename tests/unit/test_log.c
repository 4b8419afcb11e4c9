/* Unit tests for common/log: JSON lines stay valid JSON (and UTF-8) whatever a client put in them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/log.h"

/* Runs log_access(e) with stderr on a pipe; returns the line written (without its newline). */
static void access_line_capture(const struct access_entry *e, char *buf, size_t cap)
{
    int fds[2], saved = dup(STDERR_FILENO);
    assert_true(saved >= 0 && pipe(fds) == 0);
    assert_true(dup2(fds[1], STDERR_FILENO) >= 0);
    log_access(e);
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(fds[1]);
    ssize_t n = read(fds[0], buf, cap - 1);
    close(fds[0]);
    assert_true(n > 0);
    buf[n - 1] = '\0';
}

static void test_json_access_line_utf8(void **state)
{
    (void)state;
    char line[4096];
    /* a raw 0xff, a valid "é", a surrogate (three bytes, each invalid), an overlong "/" and a quote */
    struct access_entry e = {
        .method = "GET", .path = "/\xff\xc3\xa9\xed\xa0\x80\xc0\xaf\"", .request_id = "r", .status = 404
    };
    log_configure(LOGL_INFO, LOGF_JSON, true);
    access_line_capture(&e, line, sizeof(line));
    const char *want = "\"path\":\"/\\ufffd\xc3\xa9\\ufffd\\ufffd\\ufffd\\ufffd\\ufffd\\\"\"";
    if (!strstr(line, want))
        fail_msg("expected %s in the line, got: %s", want, line);
}

static void test_json_access_line_truncated_sequence(void **state)
{
    (void)state;
    char line[4096];
    struct access_entry e = {
        .method = "GET", .path = "/\xe2\x82", .request_id = "\xf0\x9f\x98\x80", .status = 200
    };
    log_configure(LOGL_INFO, LOGF_JSON, true);
    access_line_capture(&e, line, sizeof(line));
    if (!strstr(line, "\"path\":\"/\\ufffd\\ufffd\"") || !strstr(line, "\"request_id\":\"\xf0\x9f\x98\x80\""))
        fail_msg("expected a cut sequence replaced and a 4-byte one kept, got: %s", line);
}

/* Characters a reader takes for a line end, from a client's path: a forged line in the text log. */
#define FORGING_PATH   \
    "/a\fb\tc\xc2\x85" \
    "d\xe2\x80\xa8"    \
    "e\xe2\x80\xa9"    \
    "f\r\ng\x7f\\u000a"

static void access_line_has_no_line_break(const char *line)
{
    for (const unsigned char *p = (const unsigned char *)line; *p; p++) {
        if (*p < 0x20 || *p == 0x7f || (p[0] == 0xc2 && p[1] == 0x85) ||
            (p[0] == 0xe2 && p[1] == 0x80 && (p[2] == 0xa8 || p[2] == 0xa9)))
            fail_msg("a line-breaking character at offset %td of: %s", (const char *)p - line, line);
    }
}

static void test_text_access_line_escapes_like_json(void **state)
{
    (void)state;
    char line[4096];
    struct access_entry e = {
        .method = "GET", .path = FORGING_PATH, .request_id = "r", .status = 404, .client = "192.0.2.7"
    };
    const char *escaped = "/a\\u000cb\\u0009c\\u0085d\\u2028e\\u2029f\\u000d\\u000ag\\u007f\\\\u000a";
    log_configure(LOGL_INFO, LOGF_TEXT, true);
    access_line_capture(&e, line, sizeof(line));
    access_line_has_no_line_break(line);
    if (!strstr(line, escaped) || !strstr(line, " client=192.0.2.7"))
        fail_msg("expected %s and client=192.0.2.7 in the line, got: %s", escaped, line);
    log_configure(LOGL_INFO, LOGF_JSON, true);
    access_line_capture(&e, line, sizeof(line));
    access_line_has_no_line_break(line);
    if (!strstr(line, escaped) || !strstr(line, "\"client\":\"192.0.2.7\""))
        fail_msg("expected the same escapes %s and the client in the JSON line, got: %s", escaped, line);
}

static void test_access_line_without_client_says_dash(void **state)
{
    (void)state;
    char line[4096];
    struct access_entry e = { .method = "GET", .path = "/", .request_id = "r", .status = 200 };
    log_configure(LOGL_INFO, LOGF_TEXT, true);
    access_line_capture(&e, line, sizeof(line));
    if (!strstr(line, " client=-"))
        fail_msg("expected client=- in the line, got: %s", line);
}

/* A hit names its source (from= in text, cache_from in JSON); a miss has none. */
static void test_access_line_names_a_hits_source(void **state)
{
    (void)state;
    char line[4096];
    struct access_entry e = {
        .method = "GET", .path = "/users/1", .request_id = "r", .status = 200, .cache = "HIT", .from = "local"
    };
    log_configure(LOGL_INFO, LOGF_TEXT, true);
    access_line_capture(&e, line, sizeof(line));
    if (!strstr(line, " cache=HIT from=local rid=r"))
        fail_msg("expected the hit's source in the text line, got: %s", line);
    log_configure(LOGL_INFO, LOGF_JSON, true);
    access_line_capture(&e, line, sizeof(line));
    if (!strstr(line, "\"cache\":\"HIT\",\"cache_from\":\"local\",\"client\""))
        fail_msg("expected the hit's source in the JSON line, got: %s", line);
    e.cache = "MISS";
    e.from = NULL;
    access_line_capture(&e, line, sizeof(line));
    if (strstr(line, "cache_from") || !strstr(line, "\"cache\":\"MISS\",\"client\""))
        fail_msg("expected no source for a miss, got: %s", line);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_access_line_names_a_hits_source),
        cmocka_unit_test(test_json_access_line_utf8),
        cmocka_unit_test(test_json_access_line_truncated_sequence),
        cmocka_unit_test(test_text_access_line_escapes_like_json),
        cmocka_unit_test(test_access_line_without_client_says_dash),
    };
    return cmocka_run_group_tests_name("log", tests, NULL, NULL);
}
