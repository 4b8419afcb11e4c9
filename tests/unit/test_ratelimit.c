/* Unit tests for the rate limiter's key choice (worker/api/ratelimit.c: the subject when authenticated,
 * else the client address; reads and writes apart) and for who the client is (worker/http/client.c): the
 * PROXY v2 header, trusted_proxies networks, X-Forwarded-For read from the right. The subject path is
 * tested here until authentication (issue 18 part A) fills req->subject in a running server. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/config.h"
#include "common/log.h"
#include "worker/api/ratelimit.h"
#include "worker/http/client.h"
#include "worker/http/headers.h"

static const unsigned char SIG[12] = {
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A
};

static void test_key_subject_or_address(void **state)
{
    (void)state;
    char k[64];
    assert_true(ratelimit_key(k, sizeof(k), false, "alice", "192.0.2.1"));
    assert_string_equal(k, "r:s:alice");
    assert_true(ratelimit_key(k, sizeof(k), true, "alice", "192.0.2.1"));
    assert_string_equal(k, "w:s:alice");
    assert_true(ratelimit_key(k, sizeof(k), false, "", "192.0.2.1"));
    assert_string_equal(k, "r:a:192.0.2.1");
    assert_true(ratelimit_key(k, sizeof(k), true, "", "2001:db8::1"));
    assert_string_equal(k, "w:a:2001:db8::1");
    /* a subject that looks like an address is still a subject: the two never share a budget */
    assert_true(ratelimit_key(k, sizeof(k), false, "192.0.2.1", "192.0.2.1"));
    assert_string_equal(k, "r:s:192.0.2.1");
    assert_false(ratelimit_key(k, 8, false, "a-long-subject", ""));
}

/* A PROXY v2 header: command, family/protocol byte, then body */
static size_t proxy_make(unsigned char *buf, int cmd, int fam, const unsigned char *body, size_t blen)
{
    memcpy(buf, SIG, 12);
    buf[12] = (unsigned char)(0x20 | cmd);
    buf[13] = (unsigned char)fam;
    buf[14] = (unsigned char)(blen >> 8);
    buf[15] = (unsigned char)blen;
    memcpy(buf + 16, body, blen);
    return 16 + blen;
}

static void test_proxy_v2_ipv4(void **state)
{
    (void)state;
    unsigned char body[12] = { 203, 0, 113, 7, 127, 0, 0, 1, 0x30, 0x39, 0x0B, 0xB8 }, buf[64];
    size_t n = proxy_make(buf, 1, 0x11, body, sizeof(body)), used = 0;
    memcpy(buf + n, "GET /", 5);
    struct sockaddr_storage src;
    char text[HTTP_CLIENT_MAX];
    assert_int_equal(http_proxy_v2_parse(buf, n + 5, &src, &used), HTTP_PROXY_ADDRESS);
    assert_int_equal(used, n);
    http_addr_format(&src, text, sizeof(text));
    assert_string_equal(text, "203.0.113.7");
    for (size_t cut = 1; cut < n; cut++) /* every prefix waits for more */
        assert_int_equal(http_proxy_v2_parse(buf, cut, &src, &used), HTTP_PROXY_MORE);
}

static void test_proxy_v2_ipv6_and_local(void **state)
{
    (void)state;
    unsigned char body[36] = { 0 }, buf[128];
    inet_pton(AF_INET6, "2001:db8::7", body);
    size_t n = proxy_make(buf, 1, 0x21, body, sizeof(body)), used = 0;
    struct sockaddr_storage src;
    char text[HTTP_CLIENT_MAX];
    assert_int_equal(http_proxy_v2_parse(buf, n, &src, &used), HTTP_PROXY_ADDRESS);
    http_addr_format(&src, text, sizeof(text));
    assert_string_equal(text, "2001:db8::7");
    n = proxy_make(buf, 0, 0x00, body, 0); /* LOCAL: a health check of the proxy itself */
    assert_int_equal(http_proxy_v2_parse(buf, n, &src, &used), HTTP_PROXY_LOCAL);
    assert_int_equal(used, 16);
}

static void test_proxy_v2_refused(void **state)
{
    (void)state;
    unsigned char body[12] = { 0 }, buf[1024];
    struct sockaddr_storage src;
    size_t used, n = proxy_make(buf, 1, 0x11, body, sizeof(body));
    buf[12] = 0x11; /* version 1 */
    assert_int_equal(http_proxy_v2_parse(buf, n, &src, &used), HTTP_PROXY_MALFORMED);
    n = proxy_make(buf, 2, 0x11, body, sizeof(body)); /* no such command */
    assert_int_equal(http_proxy_v2_parse(buf, n, &src, &used), HTTP_PROXY_MALFORMED);
    n = proxy_make(buf, 1, 0x41, body, sizeof(body)); /* no such family */
    assert_int_equal(http_proxy_v2_parse(buf, n, &src, &used), HTTP_PROXY_MALFORMED);
    n = proxy_make(buf, 1, 0x11, body, 8); /* too short for two IPv4 addresses and ports */
    assert_int_equal(http_proxy_v2_parse(buf, n, &src, &used), HTTP_PROXY_MALFORMED);
    n = proxy_make(buf, 1, 0x21, body, sizeof(body)); /* IPv6 with an IPv4 body */
    assert_int_equal(http_proxy_v2_parse(buf, n, &src, &used), HTTP_PROXY_MALFORMED);
    memcpy(buf, SIG, 12);
    buf[12] = 0x21, buf[13] = 0x11, buf[14] = 0x02, buf[15] = 0x01; /* 513 bytes announced: over the bound */
    assert_int_equal(http_proxy_v2_parse(buf, 16, &src, &used), HTTP_PROXY_MALFORMED);
    assert_int_equal(http_proxy_v2_parse((const unsigned char *)"GET / HTTP/1.1\r\n", 16, &src, &used),
                     HTTP_PROXY_NONE);
    assert_int_equal(http_proxy_v2_parse((const unsigned char *)"\r\n\r\nX", 5, &src, &used),
                     HTTP_PROXY_NONE);
    /* version 1's text form is not taken: only v2 (send-proxy-v2) */
    assert_int_equal(http_proxy_v2_parse((const unsigned char *)"PROXY TCP4 ", 11, &src, &used),
                     HTTP_PROXY_NONE);
}

static void config_with_proxies(struct config *cfg, const char *list)
{
    char err[CONFIG_ERR_MAX];
    setenv("PGAPI_SERVER_TRUSTED_PROXIES", list, 1);
    int rc = config_load(cfg, NULL, err, sizeof(err));
    unsetenv("PGAPI_SERVER_TRUSTED_PROXIES");
    if (rc != 0)
        fail_msg("config_load: %s", err);
}

static bool trusted(const struct config *cfg, const char *text)
{
    struct sockaddr_storage a = { 0 };
    if (strchr(text, ':')) {
        a.ss_family = AF_INET6;
        inet_pton(AF_INET6, text, &((struct sockaddr_in6 *)&a)->sin6_addr);
    } else {
        a.ss_family = AF_INET;
        inet_pton(AF_INET, text, &((struct sockaddr_in *)&a)->sin_addr);
    }
    return http_addr_trusted(cfg, &a);
}

static void test_trusted_networks(void **state)
{
    (void)state;
    struct config *cfg = calloc(1, sizeof(*cfg));
    config_with_proxies(cfg, "10.0.0.0/8, 192.0.2.9,2001:db8:1::/48");
    assert_int_equal(cfg->trusted_proxy_count, 3);
    assert_true(trusted(cfg, "10.1.2.3"));
    assert_true(trusted(cfg, "192.0.2.9"));
    assert_false(trusted(cfg, "192.0.2.10"));
    assert_false(trusted(cfg, "11.0.0.1"));
    assert_true(trusted(cfg, "::ffff:10.9.9.9")); /* IPv4-mapped */
    assert_true(trusted(cfg, "2001:db8:1:ffff::1"));
    assert_false(trusted(cfg, "2001:db8:2::1"));
    assert_false(http_addr_trusted(cfg, NULL));
    free(cfg);
}

static void test_trusted_proxies_refused_by_config(void **state)
{
    (void)state;
    struct config *cfg = calloc(1, sizeof(*cfg));
    char err[CONFIG_ERR_MAX];
    const char *bad[] = { "10.0.0.0/33", "10.0.0.0/", "example.com", "10.0.0.0/8x", "::1/129", "1.2.3" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        setenv("PGAPI_SERVER_TRUSTED_PROXIES", bad[i], 1);
        assert_int_equal(config_load(cfg, NULL, err, sizeof(err)), -1);
        assert_non_null(strstr(err, "trusted_proxies"));
    }
    unsetenv("PGAPI_SERVER_TRUSTED_PROXIES");
    free(cfg);
}

static void test_xff_rightmost_untrusted(void **state)
{
    (void)state;
    struct config *cfg = calloc(1, sizeof(*cfg));
    config_with_proxies(cfg, "10.0.0.0/8");
    char out[HTTP_CLIENT_MAX];
    assert_true(http_xff_client(cfg, "203.0.113.7", out, sizeof(out)));
    assert_string_equal(out, "203.0.113.7");
    /* a client's own forged entries lie left of what the trusted proxies appended */
    assert_true(http_xff_client(cfg, "1.2.3.4, 203.0.113.7, 10.0.0.2", out, sizeof(out)));
    assert_string_equal(out, "203.0.113.7");
    assert_true(http_xff_client(cfg, " 2001:DB8::7 ,10.0.0.2", out, sizeof(out)));
    assert_string_equal(out, "2001:db8::7"); /* canonical form: one client, one key */
    assert_false(http_xff_client(cfg, "10.0.0.3, 10.0.0.2", out, sizeof(out))); /* only proxies */
    assert_false(http_xff_client(cfg, "", out, sizeof(out)));
    assert_false(http_xff_client(cfg, "unknown", out, sizeof(out)));
    assert_false(http_xff_client(cfg, "203.0.113.7, garbage, 10.0.0.2", out, sizeof(out)));
    assert_false(http_xff_client(cfg, "203.0.113.7:4000", out, sizeof(out)));
    char *long_value = malloc(HTTP_XFF_MAX + 1); /* as the header table leaves a value cut at its limit */
    memset(long_value, '1', HTTP_XFF_MAX);
    long_value[HTTP_XFF_MAX] = '\0';
    assert_false(http_xff_client(cfg, long_value, out, sizeof(out)));
    free(long_value);
    free(cfg);
}

int main(void)
{
    log_configure(LOGL_ERROR, LOGF_TEXT, false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_subject_or_address),
        cmocka_unit_test(test_proxy_v2_ipv4),
        cmocka_unit_test(test_proxy_v2_ipv6_and_local),
        cmocka_unit_test(test_proxy_v2_refused),
        cmocka_unit_test(test_trusted_networks),
        cmocka_unit_test(test_trusted_proxies_refused_by_config),
        cmocka_unit_test(test_xff_rightmost_untrusted),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
