/* http: each connection is a small state machine (enum conn_state); one request is parsed, handled and
 * answered at a time, so pipelined requests are answered in order. A connection is never freed inside
 * its own callback: closing moves it to a dead list that a zero-delay event reclaims afterwards. */
#include "worker/http/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <http_parser.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/config.h"
#include "common/log.h"

#define LINGER_MS 2000
#define DRAIN_IDLE_MS 1000 /* how long a kept-alive connection may stay idle once its worker drains */
#define READ_CHUNK 16384
#define FIELD_MAX 32
#define BODY_KEEP 4096   /* request buffers larger than these are freed between requests */
#define URL_KEEP 1024

enum conn_state {
    CONN_IDLE,      /* keep-alive, waiting for the first byte of a request */
    CONN_READING,   /* request partly received */
    CONN_HANDLING,  /* complete request handed to the handler */
    CONN_WRITING,   /* response queued, not all written yet */
    CONN_LINGER,    /* response sent, write side shut, discarding input until EOF */
    CONN_DEAD       /* closed, waiting to be freed */
};

/* The lexical check of a request head that http-parser (built lenient, HTTP_PARSER_STRICT=0) leaves out:
 * RFC 9112 line endings, no obsolete line folding, no whitespace between a field name and its colon. */
enum head_state {
    HEAD_START,         /* before the request line: empty lines (CRLF) are skipped, as the parser does */
    HEAD_REQUEST_LINE,
    HEAD_LINE_START,    /* first byte of a field line, or the empty line that ends the head */
    HEAD_NAME,
    HEAD_VALUE,
    HEAD_DONE           /* the empty line seen: the body (or the next request) is not ours to check */
};

struct http_conn {
    struct http_server *srv;
    struct http_conn *prev, *next;
    int fd;
    enum conn_state state;
    struct event *read_ev, *write_ev, *timer_ev;
    struct evbuffer *in, *out;
    http_parser parser;
    struct http_request req;
    char *url;
    size_t url_len, url_cap;
    size_t body_cap;
    size_t header_bytes;
    char field[FIELD_MAX];
    size_t field_len;
    bool in_value;
    char expect[32];
    char *value_dst;
    size_t value_cap;
    int error_status;        /* status to answer when the parser stops on a limit */
    const char *error_text;  /* with error_status 400: what was wrong with the framing */
    enum head_state head;
    bool head_cr;            /* the last head byte was CR: LF must follow */
    int hosts;               /* Host fields in this request */
    char host[256];          /* the Host field's value (cut at 255 bytes), for allowed_hosts */
    bool headers_done;       /* later field callbacks are a chunked body's trailers */
    bool method_unknown;     /* the parser refused the method: 400 or 501 once the request line is in */
    bool request_ready;
    bool close_after;
    bool in_process;         /* conn_process() on the stack: a synchronous answer must not recurse */
    bool readable;           /* edge-triggered: the kernel may hold bytes we have not read yet */
    bool peer_closed;        /* the client shut its side: its EOF waits behind the bytes we read */
    unsigned served;         /* responses completed on this connection */
    char peer[INET6_ADDRSTRLEN]; /* the client's address, for the access log */
    size_t out_counted;      /* what of `out` is in the server's unsent sum */
    uint64_t tag;            /* the adopter's, for the close hook */
    bool stalled;            /* on the server's stalled list: the last write would have blocked */
    struct http_conn *stall_prev, *stall_next;
};

struct http_server {
    struct event_base *base;
    const struct config *cfg;
    http_handler_fn handler;
    void *ctx;
    struct http_conn *conns;
    struct http_conn *dead;
    int nconns;
    struct event *reap_ev;
    const struct timeval *tv_keepalive, *tv_request, *tv_linger, *tv_drain_idle;
    http_parser_settings settings;
    bool draining;
    void (*on_empty)(void *);
    void *on_empty_arg;
    uint64_t seq;
    unsigned pid;            /* request ids: pid-seq */
    http_observer_fn observer;
    void *observer_arg;
    size_t unsent;           /* bytes in every connection's output the kernel has not taken yet */
    struct http_conn *stalled, *stalled_tail; /* writes that would block: longest without a read first */
    unsigned long slow_closed; /* connections closed because their client did not read */
    void (*on_close)(void *arg, uint64_t tag);
    void *on_close_arg;
    time_t date_sec;
    char date[40];
};

static void conn_process(struct http_conn *c);
static void conn_close(struct http_conn *c);
static void conn_flush(struct http_conn *c);

const char *http_status_text(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Unknown";
    }
}

/* ---- timers and events ------------------------------------------------------------------------ */

static void conn_timer_set(struct http_conn *c, const struct timeval *tv)
{
    if (tv)
        event_add(c->timer_ev, tv);
    else
        event_del(c->timer_ev);
}

static void conn_state_set(struct http_conn *c, enum conn_state state)
{
    struct http_server *srv = c->srv;
    c->state = state;
    switch (state) {
    case CONN_IDLE:
        conn_timer_set(c, srv->tv_keepalive);
        break;
    case CONN_READING:
        conn_timer_set(c, srv->tv_request); /* one bound for the whole request: slow headers or body */
        break;
    case CONN_HANDLING:
        conn_timer_set(c, NULL); /* back-pressure: nothing is read, pipelined bytes wait in the kernel */
        break;
    case CONN_WRITING:
        conn_timer_set(c, srv->tv_request);
        break;
    case CONN_LINGER:
        conn_timer_set(c, srv->tv_linger);
        break;
    case CONN_DEAD:
        break;
    }
}

/* ---- request state -------------------------------------------------------------------------- */

static void request_reset(struct http_conn *c)
{
    char *body = c->req.body;
    c->req = (struct http_request){ .conn = c, .ctx = c->srv->ctx, .body = body, .route = -1 };
    /* An idle connection keeps only small buffers: one large request each must not pin max_body_bytes
     * (and a long URL) on every one of max_connections kept-alive connections. */
    if (c->body_cap > BODY_KEEP) {
        free(c->req.body);
        c->req.body = NULL;
        c->body_cap = 0;
    }
    if (c->url_cap > URL_KEEP) {
        free(c->url);
        c->url = NULL;
        c->url_cap = 0;
    }
    c->url_len = 0;
    c->header_bytes = 0;
    c->field_len = 0;
    c->in_value = false;
    c->expect[0] = '\0';
    c->value_dst = NULL;
    c->error_status = 0;
    c->error_text = NULL;
    c->head = HEAD_START;
    c->head_cr = false;
    c->hosts = 0;
    c->host[0] = '\0';
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
        c->error_status = c->req.path == NULL && c->field_len == 0 && !c->in_value ? 414 : 431;
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
    for (size_t i = 0; i < len && c->head != HEAD_DONE; i++) {
        char ch = p[i];
        if (c->head_cr) {
            if (ch != '\n')
                return "bare CR in the request head";
            c->head_cr = false;
            if (c->head == HEAD_NAME)
                return "header line without a colon";
            if (c->head == HEAD_LINE_START)
                c->head = HEAD_DONE;
            else if (c->head != HEAD_START)
                c->head = HEAD_LINE_START;
            continue;
        }
        if (ch == '\r') {
            c->head_cr = true;
            continue;
        }
        if (ch == '\n')
            return "bare LF in the request head: lines end with CRLF";
        switch (c->head) {
        case HEAD_START:
            c->head = HEAD_REQUEST_LINE;
            break;
        case HEAD_LINE_START:
            if (ch == ' ' || ch == '\t')
                return "obsolete line folding or a line starting with whitespace";
            c->head = ch == ':' ? HEAD_VALUE : HEAD_NAME;
            break;
        case HEAD_NAME:
            if (ch == ' ' || ch == '\t')
                return "whitespace between a header name and its colon";
            if (ch == ':')
                c->head = HEAD_VALUE;
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
    while (i < n && (s[i] == '\r' || s[i] == '\n')) /* empty lines first: their endings are the head check's */
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
    c->req.start_us = clock_now_us();
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;
    if (header_count(c, len) < 0)
        return -1;
    if (buf_reserve(&c->url, &c->url_cap, c->url_len + len + 1) < 0) {
        c->error_status = 503;
        return -1;
    }
    memcpy(c->url + c->url_len, at, len);
    c->url_len += len;
    c->url[c->url_len] = '\0';
    return 0;
}

static void value_target_pick(struct http_conn *c)
{
    struct http_request *r = &c->req;
    c->field[c->field_len < FIELD_MAX ? c->field_len : FIELD_MAX - 1] = '\0';
    c->value_dst = NULL;
    if (c->field_len >= FIELD_MAX)
        return;
    if (strcasecmp(c->field, "content-type") == 0) {
        c->value_dst = r->content_type;
        c->value_cap = sizeof(r->content_type);
    } else if (strcasecmp(c->field, "if-none-match") == 0) {
        c->value_dst = r->if_none_match;
        c->value_cap = sizeof(r->if_none_match);
    } else if (strcasecmp(c->field, "expect") == 0) {
        c->value_dst = c->expect;
        c->value_cap = sizeof(c->expect);
    } else if (strcasecmp(c->field, "x-request-id") == 0) {
        c->value_dst = r->request_id;
        c->value_cap = sizeof(r->request_id);
    } else if (strcasecmp(c->field, "host") == 0) {
        c->hosts++;
        c->value_dst = c->host;
        c->value_cap = sizeof(c->host);
    }
    if (c->value_dst)
        c->value_dst[0] = '\0';
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
        c->field_len = 0;
    }
    if (c->field_len < FIELD_MAX) { /* a name cut across reads continues here, and may be long */
        size_t room = FIELD_MAX - c->field_len;
        memcpy(c->field + c->field_len, at, len < room ? len : room);
    }
    c->field_len += len; /* may exceed FIELD_MAX: such a long name is none we use */
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
    if (c->value_dst) {
        size_t cur = strlen(c->value_dst), n = len;
        if (cur + n >= c->value_cap)
            n = c->value_cap - 1 - cur; /* longer values are truncated: none we use is that long */
        memcpy(c->value_dst + cur, at, n);
        c->value_dst[cur + n] = '\0';
    }
    return 0;
}

static void url_split(struct http_conn *c)
{
    if (!c->url) {
        buf_reserve(&c->url, &c->url_cap, 2);
        if (c->url)
            c->url[0] = '\0';
    }
    c->req.path = c->url;
    char *q = c->url ? strchr(c->url, '?') : NULL;
    if (q) {
        *q = '\0';
        c->req.query = q + 1;
    }
}

/* RFC 9112 3.2: an HTTP/1.1 request has exactly one Host field, and no request has two. */
static int host_check(struct http_conn *c, const http_parser *p)
{
    bool http11 = p->http_major > 1 || (p->http_major == 1 && p->http_minor >= 1);
    if (c->hosts > 1)
        c->error_text = "more than one Host header";
    else if (c->hosts == 0 && http11)
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
    if (c->req.path == NULL) {
        c->error_status = 503;
        return -1;
    }
    if ((p->flags & F_CONTENTLENGTH) && p->content_length > cfg->max_body_bytes) {
        c->error_status = 413;
        return -1;
    }
    if (host_check(c, p) < 0)
        return -1;
    if (!host_allowed(cfg->allowed_hosts, c->host)) {
        c->error_status = 421;
        return -1;
    }
    /* RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing: answered, then closed */
    if (p->uses_transfer_encoding && p->http_major == 1 && p->http_minor == 0)
        c->close_after = true;
    c->req.method = (int)p->method;
    c->req.method_name = http_method_str((enum http_method)p->method);
    c->req.head = p->method == HTTP_HEAD;
    if (strcasecmp(c->expect, "100-continue") == 0 && p->http_minor >= 1) {
        evbuffer_add(c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
        evbuffer_write(c->out, c->fd); /* a remainder goes out before the response */
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;
    struct http_request *r = &c->req;
    if (r->body_len + len > c->srv->cfg->max_body_bytes) {
        c->error_status = 413;
        return -1;
    }
    if (buf_reserve(&r->body, &c->body_cap, r->body_len + len + 1) < 0) {
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
    if (buf_reserve(&c->req.body, &c->body_cap, c->req.body_len + 1) < 0) {
        c->error_status = 503;
        return -1;
    }
    c->req.body[c->req.body_len] = '\0';
    c->request_ready = true;
    if (!http_should_keep_alive(p))
        c->close_after = true;
    http_parser_pause(p, 1); /* one request at a time; the rest stays buffered */
    return 0;
}

/* ---- responses ------------------------------------------------------------------------------ */

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

static void request_id_ensure(struct http_conn *c)
{
    struct http_request *r = &c->req;
    for (char *s = r->request_id; *s; s++) /* an id we echo must not break the header or the log */
        if ((unsigned char)*s < 0x21 || (unsigned char)*s > 0x7e || *s == '"' || *s == '\\')
            *s = '_';
    if (r->request_id[0] == '\0')
        snprintf(r->request_id, sizeof(r->request_id), "%x-%llx", c->srv->pid,
                 (unsigned long long)++c->srv->seq);
}

static void response_write_head(struct http_conn *c, int status, const char *ctype, size_t len)
{
    struct http_request *r = &c->req;
    bool no_body_status = status == 204 || status == 304 || status < 200;
    evbuffer_add_printf(c->out, "HTTP/1.1 %d %s\r\nServer: pgapi\r\nDate: %s\r\nX-Request-Id: %s\r\n",
                        status, http_status_text(status), date_now(c->srv), r->request_id);
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
    if (r->extra_len)
        evbuffer_add(c->out, r->extra_headers, r->extra_len);
    evbuffer_add(c->out, "\r\n", 2);
}

/* The request is answered: one access log line, and the observer's count. */
static void request_account(struct http_conn *c, size_t len)
{
    struct http_request *r = &c->req;
    struct access_entry e = {
        .method = r->method_name ? r->method_name : "-",
        .path = r->path ? r->path : "-",
        .request_id = r->request_id,
        .cache = r->cache_status,
        .status = r->status,
        .duration_us = r->start_us ? clock_now_us() - r->start_us : 0,
        .bytes = len,
        .client = c->peer,
    };
    log_access(&e);
    if (c->srv->observer)
        c->srv->observer(c->srv->observer_arg, r, e.duration_us);
}

/* A strong validator computed from the body itself (FNV-1a, 64 bits): the same bytes give the same tag
 * whether they came from Redis or PostgreSQL; every row carries its version, so an update changes it. */
static void etag_apply(struct http_request *req, int *status, const char *body, size_t len)
{
    if (*status != 200 || len == 0 || (req->method != HTTP_GET && !req->head))
        return;
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)body[i];
        h *= 1099511628211ULL;
    }
    char tag[24];
    snprintf(tag, sizeof(tag), "\"%016" PRIx64 "\"", h);
    http_header_add(req, "ETag", tag);
    const char *inm = req->if_none_match;
    if (strcmp(inm, "*") == 0 || strstr(inm, tag)) /* a list, W/ weak forms included */
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
    request_id_ensure(c);
    /* A handler's 400 (bad JSON, a bad parameter) came with a complete, well-framed request: the
     * connection and the requests pipelined behind it go on. Errors in the framing itself come through
     * conn_fail, which closes. */
    if (c->srv->draining || status == 408 || status == 413 || status == 414 || status == 431)
        c->close_after = true;
    request_account(c, len);
    if (c->state == CONN_DEAD) { /* the client left while we worked: nothing to send */
        conn_close(c);
        return;
    }
    response_write_head(c, status, ctype, len);
    if (len && !req->head && status != 204 && status != 304)
        evbuffer_add(c->out, body, len);
    conn_state_set(c, CONN_WRITING);
    conn_flush(c);
}

/* An error the connection itself detected (limits, timeouts, bad syntax): JSON body, then close. */
static void conn_fail(struct http_conn *c, int status, const char *code, const char *message)
{
    char body[256];
    int n = snprintf(body, sizeof(body), "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}", code, message);
    c->close_after = true;
    c->req.responded = false;
    c->req.extra_len = 0;
    if (!c->req.path)
        c->req.path = "-";
    http_respond(&c->req, status, "application/json", body, (size_t)n);
}

/* ---- unsent output ------------------------------------------------------------------------- */

/* A connection holds at most one response: the next pipelined request waits until it is written. The
 * server sums what the connections hold unsent (max_unsent_bytes bounds it) and lists the connections
 * whose write would block, by how long their client has gone without reading, longest first. */
static void out_account(struct http_conn *c)
{
    size_t now = c->fd >= 0 ? evbuffer_get_length(c->out) : 0;
    c->srv->unsent = c->srv->unsent - c->out_counted + now;
    c->out_counted = now;
}

static void stall_unlink(struct http_conn *c)
{
    struct http_server *srv = c->srv;
    if (!c->stalled)
        return;
    if (c->stall_prev)
        c->stall_prev->stall_next = c->stall_next;
    else
        srv->stalled = c->stall_next;
    if (c->stall_next)
        c->stall_next->stall_prev = c->stall_prev;
    else
        srv->stalled_tail = c->stall_prev;
    c->stall_prev = c->stall_next = NULL;
    c->stalled = false;
}

/* The client read something (or the write just began to block): it goes to the end of the line. */
static void stall_renew(struct http_conn *c)
{
    struct http_server *srv = c->srv;
    stall_unlink(c);
    c->stall_prev = srv->stalled_tail;
    if (srv->stalled_tail)
        srv->stalled_tail->stall_next = c;
    else
        srv->stalled = c;
    srv->stalled_tail = c;
    c->stalled = true;
}

/* ---- closing -------------------------------------------------------------------------------- */

/* Every socket this server took ends here: closed, and its client address uncounted (on_close). */
static void fd_release(struct http_server *srv, int fd, uint64_t tag)
{
    close(fd);
    if (srv->on_close)
        srv->on_close(srv->on_close_arg, tag);
}

static void conn_free(struct http_conn *c)
{
    event_free(c->read_ev);
    event_free(c->write_ev);
    event_free(c->timer_ev);
    evbuffer_free(c->in);
    evbuffer_free(c->out);
    free(c->url);
    free(c->req.body);
    free(c);
}

static void reap_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct http_server *srv = arg;
    while (srv->dead) {
        struct http_conn *c = srv->dead;
        srv->dead = c->next;
        conn_free(c);
    }
    if (srv->draining && srv->nconns == 0 && srv->on_empty) {
        void (*fn)(void *) = srv->on_empty;
        srv->on_empty = NULL;
        fn(srv->on_empty_arg);
    }
}

static void conn_unlink(struct http_conn *c)
{
    struct http_server *srv = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    srv->nconns--;
}

/* Closes the socket now; the struct is freed later, after the callback on the stack returns. A
 * connection whose request is still with the handler stays allocated until http_respond(). */
static void conn_close(struct http_conn *c)
{
    stall_unlink(c);
    if (c->fd >= 0) {
        event_del(c->read_ev);
        event_del(c->write_ev);
        event_del(c->timer_ev);
        fd_release(c->srv, c->fd, c->tag);
        c->fd = -1;
    }
    out_account(c); /* what it held is no longer anyone's to send */
    bool awaiting_handler = c->state == CONN_HANDLING && !c->req.responded;
    c->state = CONN_DEAD;
    if (awaiting_handler)
        return;
    conn_unlink(c);
    c->next = c->srv->dead;
    c->srv->dead = c;
    event_active(c->srv->reap_ev, EV_TIMEOUT, 0);
}

/* Half-close then drain what the client still sends, so the kernel does not reset the connection
 * and destroy a response (typically a 413) the client has not read yet. */
static void conn_linger(struct http_conn *c)
{
    if (shutdown(c->fd, SHUT_WR) < 0) {
        conn_close(c);
        return;
    }
    evbuffer_drain(c->in, evbuffer_get_length(c->in));
    conn_state_set(c, CONN_LINGER);
}

static void conn_response_done(struct http_conn *c)
{
    if (c->close_after) {
        conn_linger(c);
        return;
    }
    c->served++;
    request_reset(c);
    conn_state_set(c, evbuffer_get_length(c->in) ? CONN_READING : CONN_IDLE);
    if (c->readable) /* bytes left in the kernel while we answered: no new edge will report them */
        event_active(c->read_ev, EV_READ, 1);
    if (!c->in_process)
        conn_process(c);
}

/* Past max_unsent_bytes, closes the connections whose client has gone longest without reading until the
 * worker is back under it. A client that reads slowly but reads keeps its place behind those that stopped;
 * the connection being flushed may be closed too, if it alone holds more than the budget. */
static void unsent_enforce(struct http_server *srv)
{
    while (srv->unsent > srv->cfg->max_unsent_bytes && srv->stalled) {
        struct http_conn *c = srv->stalled;
        log_info("fd %d: client %s not reading its response (%zu bytes unsent): closed, the worker holds more "
                 "than max_unsent_bytes (%zu) for such clients", c->fd, c->peer, c->out_counted,
                 srv->cfg->max_unsent_bytes);
        srv->slow_closed++;
        conn_close(c);
    }
}

static void conn_flush(struct http_conn *c)
{
    bool progressed = false;
    while (evbuffer_get_length(c->out) > 0) {
        int n = evbuffer_write(c->out, c->fd);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            out_account(c);
            if (progressed || !c->stalled)
                stall_renew(c);
            event_add(c->write_ev, NULL);
            unsent_enforce(c->srv);
            return;
        }
        if (n <= 0) {
            log_debug("write fd %d: %s", c->fd, n < 0 ? strerror(errno) : "closed");
            conn_close(c);
            return;
        }
        progressed = true;
    }
    out_account(c);
    stall_unlink(c);
    conn_response_done(c);
}

/* ---- reading and parsing -------------------------------------------------------------------- */

static void parse_error_answer(struct http_conn *c)
{
    int st = c->error_status;
    enum http_errno err = HTTP_PARSER_ERRNO(&c->parser);
    if (st == 413)
        conn_fail(c, 413, "body_too_large", "request body exceeds max_body_bytes");
    else if (st == 431)
        conn_fail(c, 431, "headers_too_large", "request headers exceed max_header_bytes");
    else if (st == 414)
        conn_fail(c, 414, "uri_too_long", "request target exceeds max_header_bytes");
    else if (st == 503)
        conn_fail(c, 503, "out_of_memory", "server out of memory");
    else if (st == 421)
        conn_fail(c, 421, "misdirected_request", "Host names no host of allowed_hosts");
    else if (st == 400 && c->error_text)
        conn_fail(c, 400, "bad_request", c->error_text);
    else if (err == HPE_HEADER_OVERFLOW)
        conn_fail(c, 431, "headers_too_large", "request headers too large");
    else if (st == 501)
        conn_fail(c, 501, "not_implemented", "unknown method");
    else if (c->method_unknown)
        conn_fail(c, 400, "bad_request", "request line is not HTTP");
    else
        conn_fail(c, 400, "bad_request", http_errno_description(err));
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
static bool method_error_classify(struct http_conn *c)
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
static bool conn_parse_buffered(struct http_conn *c)
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
            if (c->head <= HEAD_REQUEST_LINE && !request_line_is_http(c))
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

void http_on_gone(struct http_request *req, http_gone_fn fn, void *arg)
{
    req->on_gone = fn;
    req->on_gone_arg = arg;
}

/* The client closed (or half-closed) while its request is with the handler: gone, as nginx sees it
 * (499). The socket closes now; the struct stays until the handler answers (conn_close). */
static void conn_client_gone(struct http_conn *c)
{
    log_debug("fd %d: request %s: client gone before its answer", c->fd, c->req.request_id);
    conn_close(c);
    if (c->req.on_gone)
        c->req.on_gone(c->req.on_gone_arg);
}

static void conn_dispatch(struct http_conn *c)
{
    http_parser_pause(&c->parser, 0);
    c->request_ready = false;
    request_id_ensure(c); /* before the handler: what it logs names the request */
    conn_state_set(c, CONN_HANDLING);
    c->srv->handler(&c->req);
    if (c->state == CONN_HANDLING && c->peer_closed)
        conn_client_gone(c); /* its EOF came with the request */
}

static void conn_process(struct http_conn *c)
{
    c->in_process = true;
    while ((c->state == CONN_IDLE || c->state == CONN_READING) && evbuffer_get_length(c->in) > 0) {
        if (c->state == CONN_IDLE)
            conn_state_set(c, CONN_READING);
        bool ok = conn_parse_buffered(c);
        if (!ok && c->method_unknown && !method_error_classify(c))
            break; /* more of the request line to come */
        if (!ok) {
            parse_error_answer(c);
            break;
        }
        if (!c->request_ready)
            break;
        conn_dispatch(c);
    }
    c->in_process = false;
    if (c->state == CONN_IDLE && c->srv->draining && c->served > 0)
        conn_close(c);
}

static void conn_linger_read(struct http_conn *c)
{
    char buf[4096];
    ssize_t n = 0;
    for (int i = 0; i < 16 && (n = read(c->fd, buf, sizeof(buf))) > 0; i++)
        ;
    if (n > 0) /* more to discard: come back on the next loop, the edge will not repeat */
        event_active(c->read_ev, EV_READ, 1);
    else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
        conn_close(c);
}

/* One read into the input buffer, without evbuffer_read's FIONREAD ioctl. A short read means the
 * kernel had no more: the next bytes bring a new edge. An EOF that came with the bytes brings none, so
 * after the client's FIN (EV_CLOSED) we read again until we see it. The read goes to the stack and
 * only what came is added: space reserved in the evbuffer for a read that found nothing (EAGAIN after
 * a full chunk) would stay allocated, 16 kB on every idle connection, since draining an empty evbuffer
 * frees nothing. */
static ssize_t conn_read(struct http_conn *c)
{
    char buf[READ_CHUNK];
    ssize_t n = read(c->fd, buf, sizeof(buf));
    if (n > 0 && evbuffer_add(c->in, buf, (size_t)n) < 0) {
        log_error("fd %d: out of memory buffering %zd bytes read: closing", c->fd, n);
        errno = ENOMEM;
        return -1;
    }
    c->readable = n == READ_CHUNK || (n > 0 && c->peer_closed);
    return n;
}

static void read_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    struct http_conn *c = arg;
    if (what & EV_CLOSED)
        c->peer_closed = true;
    if (c->state == CONN_LINGER) {
        conn_linger_read(c);
        return;
    }
    c->readable = true;
    if (c->state == CONN_HANDLING && c->peer_closed) {
        conn_client_gone(c);
        return;
    }
    if (c->state != CONN_IDLE && c->state != CONN_READING)
        return; /* busy with a request: read once it is answered */
    ssize_t n = conn_read(c);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return;
    if (n < 0 && errno == EINTR) {
        event_active(c->read_ev, EV_READ, 1);
        return;
    }
    if (n <= 0) {
        /* EOF mid-request is an aborted request; EOF while idle is a normal keep-alive close */
        if (c->state == CONN_READING && n == 0)
            log_debug("fd %d: client closed mid-request", c->fd);
        conn_close(c);
        return;
    }
    conn_process(c);
    if (c->readable && (c->state == CONN_IDLE || c->state == CONN_READING))
        event_active(c->read_ev, EV_READ, 1); /* a full chunk: more may wait, one chunk per turn */
}

static void write_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn_flush(arg);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct http_conn *c = arg;
    if (c->state == CONN_READING) {
        log_info("fd %d: request not received within request_timeout: 408", c->fd);
        conn_fail(c, 408, "request_timeout", "request not received in time");
        return;
    }
    if (c->state == CONN_WRITING)
        log_info("fd %d: client did not read the response within request_timeout", c->fd);
    conn_close(c); /* idle keep-alive expired, slow reader, or linger over */
}

/* ---- server --------------------------------------------------------------------------------- */

/* The peer's address as text: an IP address, "unix" for a Unix socket, "-" if unknown. */
static void peer_format(char *dst, size_t cap, const struct sockaddr_storage *peer)
{
    const void *addr = NULL;
    if (peer && peer->ss_family == AF_INET)
        addr = &((const struct sockaddr_in *)peer)->sin_addr;
    else if (peer && peer->ss_family == AF_INET6)
        addr = &((const struct sockaddr_in6 *)peer)->sin6_addr;
    if (addr && inet_ntop(peer->ss_family, addr, dst, (socklen_t)cap))
        return;
    snprintf(dst, cap, "%s", peer && peer->ss_family == AF_UNIX ? "unix" : "-");
}

void http_server_on_close(struct http_server *srv, void (*fn)(void *arg, uint64_t tag), void *arg)
{
    srv->on_close = fn;
    srv->on_close_arg = arg;
}

void http_server_adopt(struct http_server *srv, int fd, const struct sockaddr_storage *peer, uint64_t tag)
{
    struct http_conn *c = calloc(1, sizeof(*c));
    if (!c) {
        log_error("out of memory: connection dropped");
        fd_release(srv, fd, tag);
        return;
    }
    c->srv = srv;
    c->fd = fd;
    c->tag = tag;
    peer_format(c->peer, sizeof(c->peer), peer);
    c->in = evbuffer_new();
    c->out = evbuffer_new();
    c->read_ev = event_new(srv->base, fd, EV_READ | EV_PERSIST | EV_ET | EV_CLOSED, read_cb, c);
    /* edge-triggered too: libevent registers the fd with EPOLLET only if the event being added has
     * EV_ET, so a level-triggered write event would turn reads level-triggered for good, and the loop
     * would spin on unread input (or EOF) while a response waits for a slow reader */
    c->write_ev = event_new(srv->base, fd, EV_WRITE | EV_ET, write_cb, c);
    c->timer_ev = evtimer_new(srv->base, timer_cb, c);
    if (!c->in || !c->out || !c->read_ev || !c->write_ev || !c->timer_ev) {
        log_error("out of memory: connection dropped");
        fd_release(srv, fd, tag);
        c->fd = -1;
        conn_free(c);
        return;
    }
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->nconns++;
    request_reset(c);
    conn_state_set(c, CONN_IDLE);
    if (event_add(c->read_ev, NULL) < 0) {
        log_error("fd %d: cannot watch the connection: dropped", fd);
        conn_close(c);
    }
}

static const struct timeval *common_timeout(struct event_base *base, int ms)
{
    struct timeval tv = clock_timeval(ms);
    return event_base_init_common_timeout(base, &tv);
}

struct http_server *http_server_new(struct event_base *base, const struct config *cfg,
                                    http_handler_fn handler, void *ctx)
{
    struct http_server *srv = calloc(1, sizeof(*srv));
    if (!srv)
        return NULL;
    *srv = (struct http_server){ .base = base, .cfg = cfg, .handler = handler, .ctx = ctx, .pid = (unsigned)getpid() };
    srv->reap_ev = event_new(base, -1, 0, reap_cb, srv);
    srv->tv_keepalive = common_timeout(base, cfg->keepalive_timeout_ms > 0 ? cfg->keepalive_timeout_ms : 1);
    srv->tv_request = common_timeout(base, cfg->request_timeout_ms);
    srv->tv_linger = common_timeout(base, LINGER_MS);
    int keepalive_ms = cfg->keepalive_timeout_ms > 0 ? cfg->keepalive_timeout_ms : 1;
    srv->tv_drain_idle = common_timeout(base, keepalive_ms < DRAIN_IDLE_MS ? keepalive_ms : DRAIN_IDLE_MS);
    if (!srv->reap_ev || !srv->tv_keepalive || !srv->tv_request || !srv->tv_linger || !srv->tv_drain_idle) {
        http_server_free(srv);
        return NULL;
    }
    srv->settings = (http_parser_settings){
        .on_message_begin = on_message_begin,
        .on_url = on_url,
        .on_header_field = on_header_field,
        .on_header_value = on_header_value,
        .on_headers_complete = on_headers_complete,
        .on_body = on_body,
        .on_message_complete = on_message_complete,
    };
    return srv;
}

void http_server_observe(struct http_server *srv, http_observer_fn fn, void *arg)
{
    srv->observer = fn;
    srv->observer_arg = arg;
}

void http_server_free(struct http_server *srv)
{
    if (!srv)
        return;
    while (srv->conns) {
        struct http_conn *c = srv->conns;
        if (c->fd >= 0)
            fd_release(srv, c->fd, c->tag);
        conn_unlink(c);
        conn_free(c);
    }
    while (srv->dead) {
        struct http_conn *c = srv->dead;
        srv->dead = c->next;
        conn_free(c);
    }
    if (srv->reap_ev)
        event_free(srv->reap_ev);
    free(srv);
}

void http_server_drain(struct http_server *srv, void (*on_empty)(void *), void *arg)
{
    srv->draining = true;
    srv->on_empty = on_empty;
    srv->on_empty_arg = arg;
    struct http_conn *next;
    for (struct http_conn *c = srv->conns; c; c = next) {
        next = c->next;
        c->close_after = true;
        /* A kept-alive connection between requests is not closed at once: a client may be sending its
         * next request right now, and a close racing it loses that request (a POST cannot be retried
         * blindly). Its next request is answered with "Connection: close"; if none comes within
         * DRAIN_IDLE_MS, the client was idle and the close is the usual keep-alive expiry. */
        if (c->state == CONN_IDLE && c->served > 0)
            conn_timer_set(c, srv->tv_drain_idle);
    }
    event_active(srv->reap_ev, EV_TIMEOUT, 0);
}

int http_server_conn_count(const struct http_server *srv)
{
    return srv->nconns;
}

size_t http_server_unsent(const struct http_server *srv)
{
    return srv->unsent;
}

unsigned long http_server_slow_closed(const struct http_server *srv)
{
    return srv->slow_closed;
}

void http_refuse(int fd, const char *message)
{
    char body[256], answer[512];
    int len = snprintf(body, sizeof(body), "{\"error\":{\"code\":\"too_many_connections\",\"message\":\"%s\"}}",
                       message);
    int n = snprintf(answer, sizeof(answer),
                     "HTTP/1.1 503 Service Unavailable\r\nServer: pgapi\r\nContent-Type: application/json\r\n"
                     "Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", len, body);
    if (send(fd, answer, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
        log_debug("fd %d: refused connection gone before its 503: %s", fd, strerror(errno));
    close(fd);
}
