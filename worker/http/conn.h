/* http_conn: the connection and server state that the parts of http share (conn.c, request.c,
 * response.c); not part of http's public surface, which is http.h. */
#ifndef PGAPI_HTTP_CONN_H
#define PGAPI_HTTP_CONN_H

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <http_parser.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

#include "worker/http/http.h"

/* A connection's states; http_conn_state_set() moves it from one to another. */
enum conn_state {
    CONN_IDLE,     /* keep-alive, waiting for the first byte of a request */
    CONN_READING,  /* request partly received */
    CONN_HANDLING, /* complete request handed to the handler */
    CONN_WRITING,  /* response queued, not all written yet */
    CONN_LINGER,   /* response sent, write side shut, discarding input until EOF */
    CONN_DEAD      /* closed, waiting to be freed */
};

/* The lexical check of a request head that http-parser (built lenient, HTTP_PARSER_STRICT=0) leaves out:
 * RFC 9112 line endings, no obsolete line folding, no whitespace between a field name and its colon. */
enum head_state {
    HEAD_START, /* before the request line: empty lines (CRLF) are skipped, as the parser does */
    HEAD_REQUEST_LINE,
    HEAD_LINE_START, /* first byte of a field line, or the empty line that ends the head */
    HEAD_NAME,
    HEAD_VALUE,
    HEAD_DONE /* the empty line seen: the body (or the next request) is not ours to check */
};

/* One request with its buffers, held by a connection only while the request is received, handled and
 * answered: an idle keep-alive connection holds none (its struct http_request alone is over 4 KB, most of
 * it the table's header values). Taken when a request's first byte is read (http_request_begin), given
 * back once it is answered (http_request_reset), and reclaimed after the loop iteration (reap), so a
 * handler that still reads its request after http_respond() returns reads memory that is still its own. */
struct http_exchange {
    struct http_request req; /* what the handler sees; req.conn is the connection */
    char *url;
    size_t url_len, url_cap;
    size_t body_cap;
    struct http_exchange *next; /* on the server's spent or spare list */
};

struct http_conn {
    struct http_server *srv;
    struct http_conn *prev, *next;
    int fd;
    enum conn_state state;
    /* embedded (event_assign), not event_new: three allocations and their malloc headers fewer */
    struct event read_ev, write_ev, timer_ev;
    struct evbuffer *in, *out;
    http_parser parser;
    struct http_exchange *x; /* the request in progress; NULL between requests */
    size_t header_bytes;
    char field_name[HTTP_HEADER_NAME_MAX]; /* of the field line being parsed, cut there */
    size_t field_name_len;                 /* its whole length, past the cut too */
    bool in_value;
    int value_header;           /* enum http_header_id the value being parsed goes to, or -1: none */
    int error_status;           /* status to answer when the parser stops on a limit */
    const char *error_text;     /* with error_status 400: what was wrong with the framing */
    enum head_state head_state; /* head_check() */
    bool head_after_cr;         /* the last head byte was CR: LF must follow */
    bool headers_done;          /* later field callbacks are a chunked body's trailers */
    bool method_unknown;        /* the parser refused the method: 400 or 501 once the request line is in */
    bool request_ready;
    bool close_after;
    bool in_process;             /* conn_process() on the stack: a synchronous answer must not recurse */
    bool readable;               /* edge-triggered: the kernel may hold bytes we have not read yet */
    bool peer_closed;            /* the client shut its side: its EOF waits behind the bytes we read */
    unsigned served;             /* responses completed on this connection */
    char peer[INET6_ADDRSTRLEN]; /* the client's address, for the access log */
    struct sockaddr_storage peer_addr; /* the socket's peer, or the source its PROXY header named */
    bool proxy_wait;                   /* [server] proxy_protocol: the first bytes may be a PROXY v2 header */
    size_t out_counted;                /* what of `out` is in the server's unsent sum */
    uint64_t tag;                      /* the adopter's, for the close hook */
    bool stalled;                      /* on the server's stalled list: the last write would have blocked */
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
    struct http_exchange *spent; /* answered requests, freed (or kept as spares) after the loop iteration */
    struct http_exchange *spare; /* freed ones kept for the next requests, at most HTTP_SPARE_MAX */
    unsigned nspare;
    bool draining;
    void (*on_empty)(void *);
    void *on_empty_arg;
    uint64_t seq;
    unsigned pid; /* request ids: pid-seq */
    http_observer_fn observer;
    void *observer_arg;
    size_t unsent; /* bytes in every connection's output the kernel has not taken yet */
    struct http_conn *stalled, *stalled_tail; /* writes that would block: longest without a read first */
    unsigned long slow_closed;                /* connections closed because their client did not read */
    void (*on_close)(void *arg, uint64_t tag);
    void *on_close_arg;
    time_t date_sec;
    char date[40];
    uint64_t rng[2]; /* xorshift128+ for trace and span ids, seeded from getrandom() per server */
};

/* ---- conn.c: the connection state machine ---- */
/* The one transition: sets the state and arms the timer that bounds it. */
void http_conn_state_set(struct http_conn *c, enum conn_state state);
/* Closes the socket now; the struct is freed later, after the callback on the stack returns. A
 * connection whose request is still with the handler stays allocated until http_respond(). */
void http_conn_close(struct http_conn *c);
/* Writes what the connection holds; once all is written, the response is done (keep-alive or close). */
void http_conn_flush(struct http_conn *c);

/* ---- request.c: parsing one request, its head's checks and limits ---- */
/* Gives the connection a request to receive (a spare one, or a new one): false when out of memory. */
bool http_request_begin(struct http_conn *c) __attribute__((warn_unused_result));
/* Readies the connection for its next request: its answered request goes to the server's spent list,
 * reclaimed by http_request_reclaim() after the loop iteration. */
void http_request_reset(struct http_conn *c);
/* The spent requests: kept as spares up to HTTP_SPARE_MAX (with small buffers only), the rest freed. */
void http_request_reclaim(struct http_server *srv);
/* The same for x alone, if it is the last request spent: a handler that answered at once has returned,
 * and a client's pipelined requests then share one. */
void http_request_reclaim_last(struct http_server *srv, struct http_exchange *x);
/* Frees a request and its buffers (a connection's at its end; the server's lists when it is freed). */
void http_request_free(struct http_exchange *x);
/* The parser's callbacks, for the server's http_parser_settings. */
void http_request_parser_settings(http_parser_settings *settings);
/* Feeds buffered input to the parser; returns false when parsing must stop for now (then error_status or
 * the parser's errno says why, unless method_unknown waits for the rest of the request line). */
bool http_request_parse_buffered(struct http_conn *c);
/* The parser refused the method: 501 for a well-formed request line, 400 for bytes that are not HTTP;
 * false while the line is too short to tell. */
bool http_request_method_error_classify(struct http_conn *c);
/* Answers a request that parsing refused (4xx, or 503 out of memory), and closes. */
void http_request_parse_error_answer(struct http_conn *c);
/* Gives the request its id, once: the client's X-Request-Id made safe to echo, else one of ours. */
void http_request_id_ensure(struct http_conn *c);

/* ---- trace.c: W3C Trace Context ---- */
/* Seeds the server's id generator. */
void http_trace_seed(struct http_server *srv);
/* Gives the request its traceparent, once (see http_request.traceparent). */
void http_trace_ensure(struct http_conn *c);
/* The response's traceparent, tracestate and Server-Timing lines. */
void http_trace_write(struct http_conn *c);

/* ---- cors.c ---- */
/* The response's CORS lines (Access-Control-Allow-Origin, -Expose-Headers, Vary) when cors_origins is
 * set. */
void http_cors_write(struct http_conn *c);

/* ---- response.c: the answer on the wire ---- */
/* An error the connection itself detected (limits, timeouts, bad syntax): JSON body, then close. */
void http_conn_fail(struct http_conn *c, int status, const char *code, const char *message);

#endif
