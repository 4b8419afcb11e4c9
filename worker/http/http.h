/* http: HTTP/1.1 connections on a worker's event loop: accept, parse (nodejs http-parser), enforce limits
 * and timeouts, hand one complete request at a time to the handler, write the response, keep-alive.
 * conn.c is the connection state machine, request.c the parsing and the head's checks, response.c the
 * answer on the wire; headers.h is the table of the request headers we read. */
#ifndef PGAPI_HTTP_H
#define PGAPI_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "worker/http/client.h"
#include "worker/http/etag.h"
#include "worker/http/headers.h"

struct event_base;
struct config;
struct http_conn;
struct http_server;
struct sockaddr_storage;

/* accounted (not sent) when the client went before its answer, as nginx does */
#define HTTP_STATUS_CLIENT_GONE 499

typedef void (*http_gone_fn)(void *arg);

#define HTTP_TRACEPARENT_LEN 55 /* "00-" 32 hex "-" 16 hex "-" 2 hex: W3C Trace Context, version 00 */
#define HTTP_TRACE_ID_LEN 32
#define HTTP_SUBJECT_MAX 128 /* the longest authenticated subject (a token's `sub`) kept for a request */

/* Where a request's time went, for its Server-Timing header: added up by the handler side as each step
 * ends (microseconds). */
struct http_timing {
    uint64_t queue_us; /* waiting for a database connection */
    uint64_t db_us;    /* statements running */
    uint64_t cache_us; /* Redis round trips (and the fence log's) */
};

/* One request; valid from the handler call until http_respond(). Handlers may answer later (after a
 * database reply) but must answer exactly once. */
struct http_request {
    struct http_conn *conn;
    void *ctx;  /* the server's handler context (the worker) */
    int method; /* enum http_method of http_parser.h */
    const char *method_name;
    bool head_method;            /* HEAD: answered like GET without a body */
    char *path;                  /* raw path, NUL-terminated, without the query */
    char *query;                 /* raw query after '?', or NULL */
    struct http_headers headers; /* the table's headers (headers.h): read them with http_request_header() */
    char request_id[HTTP_REQUEST_ID_MAX + 1]; /* the client's X-Request-Id, made safe, or one of ours */
    /* This server's span (W3C traceparent): the client's trace id and flags when its traceparent was
     * valid, else new ones; always a new span id. "" until the request is complete. */
    char traceparent[HTTP_TRACEPARENT_LEN + 1];
    char trace_id[HTTP_TRACE_ID_LEN + 1]; /* its trace id, for the logs */
    bool tracestate;                      /* the client's tracestate is valid and passed on */
    /* The authenticated caller (a verified token's `sub`, made safe for logs), "" when anonymous: the
     * rate limiter's key and the access log's subject. */
    char subject[HTTP_SUBJECT_MAX + 1];
    /* The client's address (client.h): the peer, or what a trusted proxy's PROXY header or
     * X-Forwarded-For named; "" until the request is complete. The rate limiter's key when anonymous. */
    char client[HTTP_CLIENT_MAX];
    struct http_timing timing;
    char *body; /* NUL-terminated copy of the body (may be empty) */
    size_t body_len;
    uint64_t start_us;
    const char *cache_status; /* "HIT" / "MISS" / "BYPASS" for the X-Cache header and the log */
    const char *cache_from;   /* a hit's source, for the log only: "redis", "local" (the worker's copy) or
                               * "fill" (a waiter answered by its worker's fill) */
    char extra_headers[768];  /* "Name: value\r\n" lines added by http_header_add() */
    size_t extra_len;
    int status;
    int route; /* set by the handler side for metrics: its route index, -1 = none */
    bool responded;
    http_gone_fn on_gone; /* http_on_gone */
    void *on_gone_arg;
};

typedef void (*http_handler_fn)(struct http_request *req);

struct http_server *http_server_new(struct event_base *base, const struct config *cfg,
                                    http_handler_fn handler, void *ctx);
void http_server_free(struct http_server *srv);
/* Called once per answered request, with how long it took from its first byte. */
typedef void (*http_observer_fn)(void *arg, const struct http_request *req, uint64_t duration_us);
void http_server_observe(struct http_server *srv, http_observer_fn fn, void *arg);
/* Takes ownership of an accepted, non-blocking socket; peer (NULL if unknown) is its client's address,
 * logged on every access line; tag is handed back to the close hook. */
void http_server_adopt(struct http_server *srv, int fd, const struct sockaddr_storage *peer, uint64_t tag);
/* fn(arg, tag) runs once for every adopted connection, when its socket is closed (also when the server
 * is freed, and when adopting fails). */
void http_server_on_close(struct http_server *srv, void (*fn)(void *arg, uint64_t tag), void *arg);
/* Graceful stop: idle keep-alive connections close now, busy ones after their response. `on_empty`
 * runs once no connection is left. */
void http_server_drain(struct http_server *srv, void (*on_empty)(void *), void *arg);
int http_server_conn_count(const struct http_server *srv);
/* Response bytes held for clients, not yet taken by the kernel (bounded by max_unsent_bytes). */
size_t http_server_unsent(const struct http_server *srv);
/* Connections closed because their client did not read while the worker was over max_unsent_bytes. */
unsigned long http_server_slow_closed(const struct http_server *srv);
/* A connection over max_connections or max_connections_per_client: answers 503 too_many_connections
 * with `message`, in one non-blocking write, and closes it, keeping nothing (a client that already sent
 * a request may see a reset instead). */
void http_refuse(int fd, const char *message);

/* fn(arg) runs once if the client goes while the request is with the handler: its EOF (a half-close
 * counts, as nginx counts it: 499) or a reset, seen at dispatch or while the answer is awaited. The
 * socket is closed then; the handler must still answer (http_respond), which sends nothing and accounts
 * the request as HTTP_STATUS_CLIENT_GONE. */
void http_on_gone(struct http_request *req, http_gone_fn fn, void *arg);
/* A request header of the table (headers.h): its value, cut at the table's limit; "" when absent; the
 * last one when repeated. */
const char *http_request_header(const struct http_request *req, enum http_header_id id);
/* Adds a response header; returns -1 if the header buffer is full (the header is dropped, logged). */
int http_header_add(struct http_request *req, const char *name, const char *value);
/* Sends the response (copying body) and finishes the request. */
void http_respond(struct http_request *req, int status, const char *content_type, const char *body,
                  size_t len);
const char *http_status_text(int status);

/* Whether v is a traceparent we pass on: version 00, lowercase hex, trace id and parent id not all
 * zeros, exactly HTTP_TRACEPARENT_LEN bytes (trace.c). */
bool http_traceparent_valid(const char *v);
/* Whether a tracestate may be passed on: 1 to 512 bytes of visible ASCII, spaces and tabs. */
bool http_tracestate_valid(const char *v);
/* Whether origin (an Origin header's value) is one of cors_origins (a config value): exact, byte for
 * byte; "*" allows any (cors.c). */
bool http_cors_allowed(const char *cors_origins, const char *origin);
/* Answers an OPTIONS request for a path whose methods are `methods` ("GET, HEAD, POST"): 204, with Allow
 * and, for an allowed Origin, the preflight's Access-Control-Allow-Methods/-Headers/-Max-Age. */
void http_cors_preflight(struct http_request *req, const char *methods);

#endif
