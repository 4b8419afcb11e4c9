/* Unit tests for worker/http's header table (headers.c), alone and through the real connection state
 * machine: a request goes over a socketpair to an http_server on a private event loop, no server needed. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "common/config.h"
#include "common/log.h"
#include "worker/http/headers.h"
#include "worker/http/http.h"

static void test_lookup(void **state)
{
    (void)state;
    assert_int_equal(http_headers_lookup("Content-Type", 12), HTTP_H_CONTENT_TYPE);
    assert_int_equal(http_headers_lookup("if-none-match", 13), HTTP_H_IF_NONE_MATCH);
    assert_int_equal(http_headers_lookup("X-REQUEST-ID", 12), HTTP_H_X_REQUEST_ID);
    assert_int_equal(http_headers_lookup("Host", 4), HTTP_H_HOST);
    assert_int_equal(http_headers_lookup("Expect", 6), HTTP_H_EXPECT);
    assert_int_equal(http_headers_lookup("X-Other", 7), -1);
    assert_int_equal(http_headers_lookup("Hos", 3), -1); /* a prefix is another name */
    assert_int_equal(http_headers_lookup("Hostname", 8), -1);
    assert_int_equal(http_headers_lookup("Host: x", 4), HTTP_H_HOST); /* len bytes only */
}

static void test_value_stored(void **state)
{
    (void)state;
    struct http_headers h = { 0 };
    assert_string_equal(http_headers_value(&h, HTTP_H_CONTENT_TYPE), "");
    assert_int_equal(http_headers_seen(&h, HTTP_H_CONTENT_TYPE), 0);
    http_headers_value_begin(&h, HTTP_H_CONTENT_TYPE);
    http_headers_value_append(&h, HTTP_H_CONTENT_TYPE, "application/", 12); /* a value in two pieces */
    http_headers_value_append(&h, HTTP_H_CONTENT_TYPE, "json", 4);
    assert_string_equal(http_headers_value(&h, HTTP_H_CONTENT_TYPE), "application/json");
    assert_int_equal(http_headers_seen(&h, HTTP_H_CONTENT_TYPE), 1);
    assert_string_equal(http_headers_value(&h, HTTP_H_IF_NONE_MATCH), ""); /* the others untouched */
}

static void test_value_cut_at_limit(void **state)
{
    (void)state;
    struct http_headers h = { 0 };
    char id[HTTP_REQUEST_ID_MAX * 2];
    memset(id, 'a', sizeof(id));
    http_headers_value_begin(&h, HTTP_H_X_REQUEST_ID);
    http_headers_value_append(&h, HTTP_H_X_REQUEST_ID, id, 10);
    http_headers_value_append(&h, HTTP_H_X_REQUEST_ID, id, sizeof(id) - 10);
    http_headers_value_append(&h, HTTP_H_X_REQUEST_ID, id, 1); /* already full */
    assert_int_equal(strlen(http_headers_value(&h, HTTP_H_X_REQUEST_ID)), HTTP_REQUEST_ID_MAX);
    char host[300];
    memset(host, 'h', sizeof(host));
    http_headers_value_begin(&h, HTTP_H_HOST);
    http_headers_value_append(&h, HTTP_H_HOST, host, sizeof(host));
    assert_int_equal(strlen(http_headers_value(&h, HTTP_H_HOST)), 255);
    assert_int_equal(strlen(http_headers_value(&h, HTTP_H_X_REQUEST_ID)), HTTP_REQUEST_ID_MAX);
}

static void test_repeated_keeps_last(void **state)
{
    (void)state;
    struct http_headers h = { 0 };
    http_headers_value_begin(&h, HTTP_H_HOST);
    http_headers_value_append(&h, HTTP_H_HOST, "first.example", 13);
    http_headers_value_begin(&h, HTTP_H_HOST);
    http_headers_value_append(&h, HTTP_H_HOST, "b", 1);
    assert_string_equal(http_headers_value(&h, HTTP_H_HOST), "b");
    assert_int_equal(http_headers_seen(&h, HTTP_H_HOST), 2);
    for (int i = 0; i < 300; i++)
        http_headers_value_begin(&h, HTTP_H_HOST);
    assert_int_equal(http_headers_seen(&h, HTTP_H_HOST), 255); /* saturates, still "more than one" */
}

/* ---- through the connection state machine ------------------------------------------------------- */

struct seen_request {
    int calls;
    char content_type[128];
    char if_none_match[128];
    char request_id[HTTP_REQUEST_ID_MAX + 1];
};

static void record_handler(struct http_request *req)
{
    struct seen_request *seen = req->ctx;
    seen->calls++;
    snprintf(seen->content_type, sizeof(seen->content_type), "%s",
             http_request_header(req, HTTP_H_CONTENT_TYPE));
    snprintf(seen->if_none_match, sizeof(seen->if_none_match), "%s",
             http_request_header(req, HTTP_H_IF_NONE_MATCH));
    snprintf(seen->request_id, sizeof(seen->request_id), "%s", req->request_id);
    http_respond(req, 200, "text/plain", "ok", 2);
}

/* Sends request to a fresh server over a socketpair, shuts the client's write side, runs the loop until
 * the server closed the connection, and returns what it answered (NUL-terminated) in answer. */
static void exchange(const char *request, size_t max_header_bytes, struct seen_request *seen, char *answer,
                     size_t cap)
{
    struct config cfg;
    char err[CONFIG_ERR_MAX];
    assert_int_equal(config_load(&cfg, NULL, err, sizeof(err)), 0);
    if (max_header_bytes)
        cfg.max_header_bytes = max_header_bytes;
    struct event_base *base = event_base_new();
    assert_non_null(base);
    struct http_server *srv = http_server_new(base, &cfg, record_handler, seen);
    assert_non_null(srv);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    http_server_adopt(srv, sv[0], NULL, 0);
    size_t len = strlen(request);
    assert_int_equal(send(sv[1], request, len, MSG_NOSIGNAL), (ssize_t)len);
    shutdown(sv[1], SHUT_WR);
    size_t got = 0;
    for (int turn = 0; turn < 1000 && http_server_conn_count(srv) > 0; turn++) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        ssize_t n = read(sv[1], answer + got, cap - 1 - got);
        if (n > 0)
            got += (size_t)n;
    }
    ssize_t n;
    while ((n = read(sv[1], answer + got, cap - 1 - got)) > 0)
        got += (size_t)n;
    answer[got] = '\0';
    assert_int_equal(http_server_conn_count(srv), 0);
    close(sv[1]);
    http_server_free(srv);
    event_base_free(base);
}

static void test_request_headers_reach_handler(void **state)
{
    (void)state;
    struct seen_request seen = { 0 };
    char answer[4096];
    exchange("GET / HTTP/1.1\r\nHost: a\r\nX-Other: ignored\r\ncontent-type: application/json\r\n"
             "If-None-Match: \"abc\"\r\nX-Request-Id: my id\r\n\r\n",
             0, &seen, answer, sizeof(answer));
    assert_int_equal(seen.calls, 1);
    assert_string_equal(seen.content_type, "application/json");
    assert_string_equal(seen.if_none_match, "\"abc\"");
    assert_string_equal(seen.request_id, "my_id"); /* made safe to echo */
    assert_non_null(strstr(answer, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(answer, "X-Request-Id: my_id\r\n"));
}

static void test_repeated_header_last_wins(void **state)
{
    (void)state;
    struct seen_request seen = { 0 };
    char answer[4096];
    exchange(
        "GET / HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\nContent-Type: application/json\r\n\r\n", 0,
        &seen, answer, sizeof(answer));
    assert_int_equal(seen.calls, 1);
    assert_string_equal(seen.content_type, "application/json");
}

static void test_two_hosts_refused(void **state)
{
    (void)state;
    struct seen_request seen = { 0 };
    char answer[4096];
    exchange("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 0, &seen, answer, sizeof(answer));
    assert_int_equal(seen.calls, 0);
    assert_non_null(strstr(answer, "HTTP/1.1 400 Bad Request\r\n"));
    assert_non_null(strstr(answer, "more than one Host header"));
    assert_non_null(strstr(answer, "Connection: close\r\n"));
}

static void test_no_host_refused(void **state)
{
    (void)state;
    struct seen_request seen = { 0 };
    char answer[4096];
    exchange("GET / HTTP/1.1\r\nX-Request-Id: r1\r\n\r\n", 0, &seen, answer, sizeof(answer));
    assert_int_equal(seen.calls, 0);
    assert_non_null(strstr(answer, "HTTP/1.1 400 Bad Request\r\n"));
    assert_non_null(strstr(answer, "X-Request-Id: r1\r\n"));
}

static void test_over_header_limit_refused(void **state)
{
    (void)state;
    struct seen_request seen = { 0 };
    char request[2048], answer[4096];
    char value[1200];
    memset(value, 'v', sizeof(value) - 1);
    value[sizeof(value) - 1] = '\0';
    snprintf(request, sizeof(request), "GET / HTTP/1.1\r\nHost: a\r\nContent-Type: %s\r\n\r\n", value);
    exchange(request, 1024, &seen, answer, sizeof(answer));
    assert_int_equal(seen.calls, 0);
    assert_non_null(strstr(answer, "HTTP/1.1 431 Request Header Fields Too Large\r\n"));
}

static void test_long_value_cut_not_refused(void **state)
{
    (void)state;
    struct seen_request seen = { 0 };
    char request[1024], answer[4096];
    char value[201];
    memset(value, 'v', sizeof(value) - 1);
    value[sizeof(value) - 1] = '\0';
    snprintf(request, sizeof(request), "GET / HTTP/1.1\r\nHost: a\r\nIf-None-Match: %s\r\n\r\n", value);
    exchange(request, 0, &seen, answer, sizeof(answer));
    assert_int_equal(seen.calls, 1);
    assert_int_equal(strlen(seen.if_none_match), 127);
}

int main(void)
{
    log_configure(LOGL_ERROR, LOGF_TEXT, false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lookup),
        cmocka_unit_test(test_value_stored),
        cmocka_unit_test(test_value_cut_at_limit),
        cmocka_unit_test(test_repeated_keeps_last),
        cmocka_unit_test(test_request_headers_reach_handler),
        cmocka_unit_test(test_repeated_header_last_wins),
        cmocka_unit_test(test_two_hosts_refused),
        cmocka_unit_test(test_no_host_refused),
        cmocka_unit_test(test_over_header_limit_refused),
        cmocka_unit_test(test_long_value_cut_not_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
