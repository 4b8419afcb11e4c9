/* response: the answer on the wire (status line, headers, body), the status table, the ETag and its
 * 304, the access log line of each request, and the 503 that refuses a connection outright. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/http_status.h"
#include "common/log.h"
#include "worker/http/conn.h"

const char *http_status_text(int status)
{
#define STATUS_ROW(code, reason) { code, reason },
    static const struct {
        int code;
        const char *reason;
    } table[] = { HTTP_STATUS_TABLE(STATUS_ROW) };
#undef STATUS_ROW
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (table[i].code == status)
            return table[i].reason;
    return "Unknown";
}

int http_header_add(struct http_request *req, const char *name, const char *value)
{
    size_t room = sizeof(req->extra_headers) - req->extra_len;
    int n = snprintf(req->extra_headers + req->extra_len, room, "%s: %s\r\n", name, value);
    if (n < 0 || (size_t)n >= room) {
        req->extra_headers[req->extra_len] = '\0';
        log_error("request %s: response header %s dropped: header buffer full", req->request_id, name);
        return -1;
    }
    req->extra_len += (size_t)n;
    return 0;
}

static const char *date_now(struct http_server *srv)
{
    time_t now = time(NULL);
    if (now != srv->date_sec) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(srv->date, sizeof(srv->date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
        srv->date_sec = now;
    }
    return srv->date;
}

static void response_write_head(struct http_conn *c, int status, const char *ctype, size_t len)
{
    struct http_request *r = &c->x->req;
    bool no_body_status = status == 204 || status == 304 || status < 200;
    evbuffer_add_printf(c->out, "HTTP/1.1 %d %s\r\nServer: pgapi\r\nDate: %s\r\nX-Request-Id: %s\r\n", status,
                        http_status_text(status), date_now(c->srv), r->request_id);
    if (!no_body_status)
        evbuffer_add_printf(c->out, "Content-Length: %zu\r\n", len);
    if (ctype && !no_body_status)
        evbuffer_add_printf(c->out, "Content-Type: %s\r\n", ctype);
    if (r->cache_status)
        evbuffer_add_printf(c->out, "X-Cache: %s\r\n", r->cache_status);
    if (c->close_after)
        evbuffer_add(c->out, "Connection: close\r\n", 19);
    else if (c->parser.http_major == 1 && c->parser.http_minor == 0)
        evbuffer_add(c->out, "Connection: keep-alive\r\n", 24);
    http_cors_write(c);
    http_trace_write(c);
    if (r->extra_len)
        evbuffer_add(c->out, r->extra_headers, r->extra_len);
    evbuffer_add(c->out, "\r\n", 2);
}

/* The request is answered: one access log line, and the observer's count. */
static void request_account(struct http_conn *c, size_t len)
{
    struct http_request *r = &c->x->req;
    struct access_entry e = {
        .method = r->method_name ? r->method_name : "-",
        .path = r->path ? r->path : "-",
        .request_id = r->request_id,
        .trace_id = r->trace_id,
        .cache = r->cache_status,
        .from = r->cache_from,
        .status = r->status,
        .duration_us = r->start_us ? clock_now_us() - r->start_us : 0,
        .bytes = len,
        .client = r->client[0] ? r->client : c->peer,
        .subject = r->subject,
    };
    log_access(&e);
    if (c->srv->observer)
        c->srv->observer(c->srv->observer_arg, r, e.duration_us);
}

/* A strong validator computed from the body itself (MD5, etag.c): the same bytes give the same tag
 * whether they came from Redis or PostgreSQL; every row carries its version, so an update changes it; and
 * PostgreSQL's md5() of a row's JSON gives it too, which is how a write checks If-Match in its own
 * statement. A PUT or PATCH answers the row as written: its tag is the one the next If-Match sends. */
static void etag_apply(struct http_request *req, int *status, const char *body, size_t len)
{
    bool read = req->method == HTTP_GET || req->head_method;
    bool written = req->method == HTTP_PUT || req->method == HTTP_PATCH;
    if (*status != 200 || len == 0 || !(read || written))
        return;
    char tag[HTTP_ETAG_HEX + 3];
    tag[0] = '"';
    http_etag_md5(body, len, tag + 1);
    tag[HTTP_ETAG_HEX + 1] = '"';
    tag[HTTP_ETAG_HEX + 2] = '\0';
    http_header_add(req, "ETag", tag);
    const char *inm = http_request_header(req, HTTP_H_IF_NONE_MATCH);
    if (read && (strcmp(inm, "*") == 0 || strstr(inm, tag))) /* a list, W/ weak forms included */
        *status = 304;
}

void http_respond(struct http_request *req, int status, const char *ctype, const char *body, size_t len)
{
    struct http_conn *c = req->conn;
    if (req->responded) {
        log_error("request %s: answered twice (status %d after %d)", req->request_id, status, req->status);
        return;
    }
    req->responded = true;
    etag_apply(req, &status, body, len);
    req->status = c->state == CONN_DEAD ? HTTP_STATUS_CLIENT_GONE : status;
    http_request_id_ensure(c);
    http_trace_ensure(c);
    /* A handler's 400 (bad JSON, a bad parameter) came with a complete, well-framed request: the
     * connection and the requests pipelined behind it go on. Errors in the framing itself come through
     * conn_fail, which closes. */
    if (c->srv->draining || status == 408 || status == 413 || status == 414 || status == 431)
        c->close_after = true;
    request_account(c, len);
    if (c->state == CONN_DEAD) { /* the client left while we worked: nothing to send */
        http_conn_close(c);
        return;
    }
    response_write_head(c, status, ctype, len);
    if (len && !req->head_method && status != 204 && status != 304)
        evbuffer_add(c->out, body, len);
    http_conn_state_set(c, CONN_WRITING);
    http_conn_flush(c);
}

/* An error the connection itself detected (limits, timeouts, bad syntax): JSON body, then close. */
void http_conn_fail(struct http_conn *c, int status, const char *code, const char *message)
{
    if (!c->x && !http_request_begin(c)) { /* every caller is receiving a request: a defence only */
        http_conn_close(c);
        return;
    }
    char body[256];
    int n = snprintf(body, sizeof(body), "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}", code, message);
    c->close_after = true;
    c->x->req.responded = false;
    c->x->req.extra_len = 0;
    if (!c->x->req.path)
        c->x->req.path = "-";
    http_respond(&c->x->req, status, "application/json", body, (size_t)n);
}

void http_refuse(int fd, const char *message)
{
    char body[256], answer[512];
    int len = snprintf(body, sizeof(body),
                       "{\"error\":{\"code\":\"too_many_connections\",\"message\":\"%s\"}}", message);
    int n = snprintf(answer, sizeof(answer),
                     "HTTP/1.1 503 Service Unavailable\r\nServer: pgapi\r\nContent-Type: application/json\r\n"
                     "Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s",
                     len, body);
    if (send(fd, answer, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
        log_debug("fd %d: refused connection gone before its 503: %s", fd, strerror(errno));
    close(fd);
}
