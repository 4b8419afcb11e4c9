/* request: one HTTP request parsed from a connection's input (nodejs http-parser callbacks), the checks of
 * its head that RFC 9112 asks for and the parser leaves out, its limits (max_header_bytes, max_body_bytes),
 * and the 4xx that answers a request refused while parsing. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/config.h"
#include "common/log.h"
#include "worker/http/conn.h"

#define BODY_KEEP 4096 /* a spare request keeps buffers up to these sizes; larger ones are freed */
#define URL_KEEP 1024

/* Spare requests a server keeps for its next ones, so that a keep-alive client's requests allocate
 * nothing: a fixed amount per worker (each about 5 KB with small buffers), not per connection. None
 * under AddressSanitizer, where each answered request is freed, so that a handler reading its request
 * after the loop iteration that answered it is reported rather than reading another request's. */
#if defined(__SANITIZE_ADDRESS__)
#define HTTP_SPARE_MAX 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HTTP_SPARE_MAX 0
#endif
#endif
#ifndef HTTP_SPARE_MAX
#define HTTP_SPARE_MAX 16
#endif

void http_request_free(struct http_exchange *x)
{
    http_headers_release(&x->req.headers);
    free(x->req.body);
    free(x->url);
    free(x);
}

bool http_request_begin(struct http_conn *c)
{
    struct http_server *srv = c->srv;
    struct http_exchange *x = srv->spare;
    if (x) {
        srv->spare = x->next;
        srv->nspare--;
    } else if (!(x = calloc(1, sizeof(*x)))) {
        return false;
    }
    x->req = (struct http_request){ .conn = c, .ctx = srv->ctx, .body = x->req.body, .route = -1 };
    x->url_len = 0;
    x->next = NULL;
    c->x = x;
    return true;
}

/* A spent request becomes a spare, or is freed. */
static void exchange_retire(struct http_server *srv, struct http_exchange *x)
{
    if ((int)srv->nspare >= HTTP_SPARE_MAX) { /* int: HTTP_SPARE_MAX may be 0 */
        http_request_free(x);
        return;
    }
    http_headers_release(&x->req.headers); /* a bearer token is not kept past its request */
    /* one large request must not pin max_body_bytes (and a long URL) in a spare */
    if (x->body_cap > BODY_KEEP) {
        free(x->req.body);
        x->req.body = NULL;
        x->body_cap = 0;
    }
    if (x->url_cap > URL_KEEP) {
        free(x->url);
        x->url = NULL;
        x->url_cap = 0;
    }
    x->next = srv->spare;
    srv->spare = x;
    srv->nspare++;
}

void http_request_reclaim(struct http_server *srv)
{
    while (srv->spent) {
        struct http_exchange *x = srv->spent;
        srv->spent = x->next;
        exchange_retire(srv, x);
    }
}

void http_request_reclaim_last(struct http_server *srv, struct http_exchange *x)
{
    if (srv->spent != x)
        return;
    srv->spent = x->next;
    exchange_retire(srv, x);
}

void http_request_reset(struct http_conn *c)
{
    struct http_exchange *x = c->x;
    if (x) {
        x->next = c->srv->spent;
        c->srv->spent = x;
        c->x = NULL;
        event_active(c->srv->reap_ev, EV_TIMEOUT, 0);
    }
    c->header_bytes = 0;
    c->field_name_len = 0;
    c->in_value = false;
    c->value_header = -1;
    c->error_status = 0;
    c->error_text = NULL;
    c->head_state = HEAD_START;
    c->head_after_cr = false;
    c->headers_done = false;
    c->method_unknown = false;
    c->request_ready = false;
}

static int buf_reserve(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t ncap = *cap ? *cap : 256;
    while (ncap < need)
        ncap *= 2;
    char *p = realloc(*buf, ncap);
    if (!p)
        return -1;
    *buf = p;
    *cap = ncap;
    return 0;
}

static int header_count(struct http_conn *c, size_t len)
{
    c->header_bytes += len;
    if (c->header_bytes > c->srv->cfg->max_header_bytes) {
        bool in_request_target = c->x->req.path == NULL && c->field_name_len == 0 && !c->in_value;
        c->error_status = in_request_target ? 414 : 431;
        return -1;
    }
    return 0;
}

/* ---- the head's lexical check ---------------------------------------------------------------- */

/* Runs over the bytes about to go to the parser, up to the empty line that ends the head, and returns
 * NULL or why the head is refused. The parser accepts each of these, and each one lets a front proxy
 * and pgapi disagree about where a request ends (request smuggling): a bare LF (we chose to refuse it,
 * as RFC 9112 2.2 allows, since a proxy may not end lines there), a bare CR, a field line that starts
 * with whitespace (obsolete folding, RFC 9112 5.2), whitespace before a colon (RFC 9112 5.1). */
static const char *head_check(struct http_conn *c, const char *p, size_t len)
{
    for (size_t i = 0; i < len && c->head_state != HEAD_DONE; i++) {
        char ch = p[i];
        if (c->head_after_cr) {
            if (ch != '\n')
                return "bare CR in the request head";
            c->head_after_cr = false;
            if (c->head_state == HEAD_NAME)
                return "header line without a colon";
            if (c->head_state == HEAD_LINE_START)
                c->head_state = HEAD_DONE;
            else if (c->head_state != HEAD_START)
                c->head_state = HEAD_LINE_START;
            continue;
        }
        if (ch == '\r') {
            c->head_after_cr = true;
            continue;
        }
        if (ch == '\n')
            return "bare LF in the request head: lines end with CRLF";
        switch (c->head_state) {
        case HEAD_START:
            c->head_state = HEAD_REQUEST_LINE;
            break;
        case HEAD_LINE_START:
            if (ch == ' ' || ch == '\t')
                return "obsolete line folding or a line starting with whitespace";
            c->head_state = ch == ':' ? HEAD_VALUE : HEAD_NAME;
            break;
        case HEAD_NAME:
            if (ch == ' ' || ch == '\t')
                return "whitespace between a header name and its colon";
            if (ch == ':')
                c->head_state = HEAD_VALUE;
            break;
        case HEAD_REQUEST_LINE:
        case HEAD_VALUE:
        case HEAD_DONE:
            break;
        }
    }
    return NULL;
}

enum line_kind { LINE_PARTIAL, LINE_HTTP, LINE_NOT_HTTP };

static bool is_tchar(unsigned char ch)
{
    return ch > 0x20 && ch < 0x7f && !strchr("\"(),/:;<=>?@[\\]{}", ch);
}

/* Whether the buffered bytes begin with a well-formed request line (method SP target SP HTTP/d.d EOL),
 * cannot be one, or may still become one. Tells an unknown method (501) from bytes that are not HTTP at
 * all (400): a TLS ClientHello, a random probe. */
static enum line_kind request_line_kind(const unsigned char *s, size_t n)
{
    static const char version[] = "HTTP/d.d";
    size_t i = 0;
    /* empty lines first: their endings are the head check's */
    while (i < n && (s[i] == '\r' || s[i] == '\n'))
        i++;
    size_t start = i;
    while (i < n && is_tchar(s[i]))
        i++;
    if (i == n)
        return LINE_PARTIAL;
    if (i == start || s[i++] != ' ')
        return LINE_NOT_HTTP;
    start = i;
    while (i < n && s[i] > 0x20 && s[i] != 0x7f)
        i++;
    if (i == n)
        return LINE_PARTIAL;
    if (i == start || s[i++] != ' ')
        return LINE_NOT_HTTP;
    for (size_t k = 0; version[k]; k++, i++) {
        if (i == n)
            return LINE_PARTIAL;
        bool ok = version[k] == 'd' ? s[i] >= '0' && s[i] <= '9' : s[i] == (unsigned char)version[k];
        if (!ok)
            return LINE_NOT_HTTP;
    }
    if (i == n)
        return LINE_PARTIAL;
    return s[i] == '\r' || s[i] == '\n' ? LINE_HTTP : LINE_NOT_HTTP; /* a bare LF is the head check's */
}

/* ---- parser callbacks ----------------------------------------------------------------------- */

static int on_message_begin(http_parser *p)
{
    struct http_conn *c = p->data;
    c->x->req.start_us = clock_now_us();
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;
    if (header_count(c, len) < 0)
        return -1;
    if (buf_reserve(&c->x->url, &c->x->url_cap, c->x->url_len + len + 1) < 0) {
        c->error_status = 503;
        return -1;
    }
    memcpy(c->x->url + c->x->url_len, at, len);
    c->x->url_len += len;
    c->x->url[c->x->url_len] = '\0';
    return 0;
}

/* The value that begins goes to its header in the table, or nowhere for a header the table does not hold. */
static void value_target_pick(struct http_conn *c)
{
    c->value_header = -1;
    if (c->field_name_len >= HTTP_HEADER_NAME_MAX)
        return;
    c->value_header = http_headers_lookup(c->field_name, c->field_name_len);
    if (c->value_header >= 0)
        http_headers_value_begin(&c->x->req.headers, (enum http_header_id)c->value_header);
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;
    if (header_count(c, len + 4) < 0)
        return -1;
    if (c->headers_done)
        return 0; /* a trailer: counted against max_header_bytes, never taken for a request header */
    if (c->in_value) {
        c->in_value = false;
        c->field_name_len = 0;
    }
    if (c->field_name_len < HTTP_HEADER_NAME_MAX) { /* a name cut across reads continues here; may be long */
        size_t room = HTTP_HEADER_NAME_MAX - c->field_name_len;
        memcpy(c->field_name + c->field_name_len, at, len < room ? len : room);
    }
    c->field_name_len += len; /* may exceed HTTP_HEADER_NAME_MAX: such a long name is none we use */
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;
    if (header_count(c, len) < 0)
        return -1;
    if (c->headers_done)
        return 0;
    if (!c->in_value) {
        c->in_value = true;
        value_target_pick(c);
    }
    if (c->value_header >= 0)
        http_headers_value_append(&c->x->req.headers, (enum http_header_id)c->value_header, at, len);
    return 0;
}

static void url_split(struct http_conn *c)
{
    if (!c->x->url) {
        buf_reserve(&c->x->url, &c->x->url_cap, 2);
        if (c->x->url)
            c->x->url[0] = '\0';
    }
    c->x->req.path = c->x->url;
    char *q = c->x->url ? strchr(c->x->url, '?') : NULL;
    if (q) {
        *q = '\0';
        c->x->req.query = q + 1;
    }
}

/* RFC 9112 3.2: an HTTP/1.1 request has exactly one Host field, and no request has two. */
static int host_check(struct http_conn *c, const http_parser *p)
{
    bool http11 = p->http_major > 1 || (p->http_major == 1 && p->http_minor >= 1);
    unsigned hosts = http_headers_seen(&c->x->req.headers, HTTP_H_HOST);
    if (hosts > 1)
        c->error_text = "more than one Host header";
    else if (hosts == 0 && http11)
        c->error_text = "HTTP/1.1 request without a Host header";
    else
        return 0;
    c->error_status = 400;
    return -1;
}

/* Whether host (a Host value: name or address, maybe a port) names this server under allowed_hosts. An IP
 * literal always does: DNS rebinding works through a name, and a rebound page sends the attacker's. */
static bool host_allowed(const char *list, const char *host)
{
    if (list[0] == '\0' || host[0] == '[')
        return true;
    char name[256];
    size_t n = strcspn(host, ": \t");
    snprintf(name, sizeof(name), "%.*s", (int)n, host);
    struct in_addr v4;
    if (inet_pton(AF_INET, name, &v4) == 1)
        return true;
    for (const char *p = list; *p;) {
        p += strspn(p, ", \t");
        size_t len = strcspn(p, ", \t");
        if (len > 0 && len == n && strncasecmp(p, name, n) == 0)
            return true;
        p += len;
    }
    return false;
}

static int on_headers_complete(http_parser *p)
{
    struct http_conn *c = p->data;
    const struct config *cfg = c->srv->cfg;
    c->headers_done = true;
    url_split(c);
    if (c->x->req.path == NULL) {
        c->error_status = 503;
        return -1;
    }
    if ((p->flags & F_CONTENTLENGTH) && p->content_length > cfg->max_body_bytes) {
        c->error_status = 413;
        return -1;
    }
    if (host_check(c, p) < 0)
        return -1;
    if (!host_allowed(cfg->allowed_hosts, http_request_header(&c->x->req, HTTP_H_HOST))) {
        c->error_status = 421;
        return -1;
    }
    /* RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing: answered, then closed */
    if (p->uses_transfer_encoding && p->http_major == 1 && p->http_minor == 0)
        c->close_after = true;
    c->x->req.method = (int)p->method;
    c->x->req.method_name = http_method_str((enum http_method)p->method);
    c->x->req.head_method = p->method == HTTP_HEAD;
    if (strcasecmp(http_request_header(&c->x->req, HTTP_H_EXPECT), "100-continue") == 0 &&
        p->http_minor >= 1) {
        evbuffer_add(c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
        evbuffer_write(c->out, c->fd); /* a remainder goes out before the response */
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;
    struct http_request *r = &c->x->req;
    if (r->body_len + len > c->srv->cfg->max_body_bytes) {
        c->error_status = 413;
        return -1;
    }
    if (buf_reserve(&r->body, &c->x->body_cap, r->body_len + len + 1) < 0) {
        c->error_status = 503;
        return -1;
    }
    memcpy(r->body + r->body_len, at, len);
    r->body_len += len;
    return 0;
}

static int on_message_complete(http_parser *p)
{
    struct http_conn *c = p->data;
    if (buf_reserve(&c->x->req.body, &c->x->body_cap, c->x->req.body_len + 1) < 0) {
        c->error_status = 503;
        return -1;
    }
    c->x->req.body[c->x->req.body_len] = '\0';
    c->request_ready = true;
    if (!http_should_keep_alive(p))
        c->close_after = true;
    http_parser_pause(p, 1); /* one request at a time; the rest stays buffered */
    return 0;
}

/* ---- parsing the buffered input -------------------------------------------------------------- */

void http_request_parse_error_answer(struct http_conn *c)
{
    int st = c->error_status;
    enum http_errno err = HTTP_PARSER_ERRNO(&c->parser);
    if (st == 413)
        http_conn_fail(c, 413, "body_too_large", "request body exceeds max_body_bytes");
    else if (st == 431)
        http_conn_fail(c, 431, "headers_too_large", "request headers exceed max_header_bytes");
    else if (st == 414)
        http_conn_fail(c, 414, "uri_too_long", "request target exceeds max_header_bytes");
    else if (st == 503)
        http_conn_fail(c, 503, "out_of_memory", "server out of memory");
    else if (st == 421)
        http_conn_fail(c, 421, "misdirected_request", "Host names no host of allowed_hosts");
    else if (st == 400 && c->error_text)
        http_conn_fail(c, 400, "bad_request", c->error_text);
    else if (err == HPE_HEADER_OVERFLOW)
        http_conn_fail(c, 431, "headers_too_large", "request headers too large");
    else if (st == 501)
        http_conn_fail(c, 501, "not_implemented", "unknown method");
    else if (c->method_unknown)
        http_conn_fail(c, 400, "bad_request", "request line is not HTTP");
    else
        http_conn_fail(c, 400, "bad_request", http_errno_description(err));
}

/* What the buffered request line is (at most max_header_bytes of it are looked at); *whole says whether
 * that was all of the input or the limit. Only on the error path: it may copy the input together. */
static enum line_kind buffered_line_kind(struct http_conn *c, bool *whole)
{
    size_t n = evbuffer_get_length(c->in), max = c->srv->cfg->max_header_bytes;
    *whole = n < max;
    if (n > max)
        n = max;
    const unsigned char *line = evbuffer_pullup(c->in, (ev_ssize_t)n);
    return line ? request_line_kind(line, n) : LINE_NOT_HTTP;
}

/* For a head refused in its first line: whether that line is HTTP at all, to say which fault it has. */
static bool request_line_is_http(struct http_conn *c)
{
    bool whole;
    return buffered_line_kind(c, &whole) == LINE_HTTP;
}

/* The parser refused the method. A well-formed request line with a method we do not know is a 501; bytes
 * that are not HTTP at all are a 400. Returns false while the line is too short to tell (the request
 * timeout bounds the wait). The input still starts at the refused request: nothing of it was drained. */
bool http_request_method_error_classify(struct http_conn *c)
{
    bool whole;
    enum line_kind kind = buffered_line_kind(c, &whole);
    if (kind == LINE_PARTIAL && whole)
        return false;
    c->error_status = kind == LINE_HTTP ? 501 : 400;
    return true;
}

/* Feeds buffered input to the parser; returns false when parsing must stop for now (then error_status or
 * the parser's errno says why, unless method_unknown waits for the rest of the request line). */
bool http_request_parse_buffered(struct http_conn *c)
{
    if (c->method_unknown)
        return false;
    struct evbuffer_iovec vec[8];
    int nvec = evbuffer_peek(c->in, -1, NULL, vec, 8);
    size_t consumed = 0;
    for (int i = 0; i < nvec && i < 8; i++) {
        c->error_text = head_check(c, vec[i].iov_base, vec[i].iov_len);
        if (c->error_text) {
            c->error_status = 400;
            if (c->head_state <= HEAD_REQUEST_LINE && !request_line_is_http(c))
                c->error_text = "request line is not HTTP";
            return false; /* the connection closes: what it sent is not drained */
        }
        size_t n = http_parser_execute(&c->parser, &c->srv->settings, vec[i].iov_base, vec[i].iov_len);
        consumed += n;
        enum http_errno err = HTTP_PARSER_ERRNO(&c->parser);
        if (err == HPE_PAUSED)
            break;
        if (err != HPE_OK || n != vec[i].iov_len) {
            c->method_unknown = err == HPE_INVALID_METHOD;
            return false;
        }
    }
    evbuffer_drain(c->in, consumed);
    return true;
}

/* The request's id, once: the client's X-Request-Id (made safe to echo), else pid-seq of this worker. */
void http_request_id_ensure(struct http_conn *c)
{
    struct http_request *r = &c->x->req;
    if (r->request_id[0] != '\0')
        return;
    snprintf(r->request_id, sizeof(r->request_id), "%s", http_request_header(r, HTTP_H_X_REQUEST_ID));
    for (char *s = r->request_id; *s; s++) /* an id we echo must not break the header or the log */
        if ((unsigned char)*s < 0x21 || (unsigned char)*s > 0x7e || *s == '"' || *s == '\\')
            *s = '_';
    if (r->request_id[0] == '\0')
        snprintf(r->request_id, sizeof(r->request_id), "%x-%llx", c->srv->pid,
                 (unsigned long long)++c->srv->seq);
}

const char *http_request_header(const struct http_request *req, enum http_header_id id)
{
    return http_headers_value(&req->headers, id);
}

void http_request_parser_settings(http_parser_settings *settings)
{
    *settings = (http_parser_settings){
        .on_message_begin = on_message_begin,
        .on_url = on_url,
        .on_header_field = on_header_field,
        .on_header_value = on_header_value,
        .on_headers_complete = on_headers_complete,
        .on_body = on_body,
        .on_message_complete = on_message_complete,
    };
}
