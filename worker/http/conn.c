/* conn: each connection is a small state machine (enum conn_state, moved by http_conn_state_set); one
 * request is parsed (request.c), handled and answered (response.c) at a time, so pipelined requests are
 * answered in order. A connection is never freed inside its own callback: closing moves it to a dead list
 * that a zero-delay event reclaims afterwards. Also the server: adopting sockets, draining, unsent output. */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/config.h"
#include "common/log.h"
#include "worker/http/conn.h"

#define LINGER_MS 2000
#define DRAIN_IDLE_MS 1000 /* how long a kept-alive connection may stay idle once its worker drains */
#define READ_CHUNK 16384

static void conn_process(struct http_conn *c);

/* ---- timers and events ------------------------------------------------------------------------ */

static void conn_timer_set(struct http_conn *c, const struct timeval *tv)
{
    if (tv)
        event_add(&c->timer_ev, tv);
    else
        event_del(&c->timer_ev);
}

void http_conn_state_set(struct http_conn *c, enum conn_state state)
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
    event_del(&c->read_ev);
    event_del(&c->write_ev);
    event_del(&c->timer_ev);
    if (c->in)
        evbuffer_free(c->in);
    if (c->out)
        evbuffer_free(c->out);
    if (c->x)
        http_request_free(c->x);
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
    http_request_reclaim(srv);
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
void http_conn_close(struct http_conn *c)
{
    stall_unlink(c);
    if (c->fd >= 0) {
        event_del(&c->read_ev);
        event_del(&c->write_ev);
        event_del(&c->timer_ev);
        fd_release(c->srv, c->fd, c->tag);
        c->fd = -1;
    }
    out_account(c); /* what it held is no longer anyone's to send */
    bool awaiting_handler = c->state == CONN_HANDLING && !c->x->req.responded; /* HANDLING holds one */
    http_conn_state_set(c, CONN_DEAD);
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
        http_conn_close(c);
        return;
    }
    evbuffer_drain(c->in, evbuffer_get_length(c->in));
    http_conn_state_set(c, CONN_LINGER);
}

static void conn_response_done(struct http_conn *c)
{
    if (c->close_after) {
        conn_linger(c);
        return;
    }
    c->served++;
    http_request_reset(c);
    http_conn_state_set(c, evbuffer_get_length(c->in) ? CONN_READING : CONN_IDLE);
    if (c->readable) /* bytes left in the kernel while we answered: no new edge will report them */
        event_active(&c->read_ev, EV_READ, 1);
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
        log_info("fd %d: client %s not reading its response (%zu bytes unsent): closed, the worker holds "
                 "more than max_unsent_bytes (%zu) for such clients",
                 c->fd, c->peer, c->out_counted, srv->cfg->max_unsent_bytes);
        srv->slow_closed++;
        http_conn_close(c);
    }
}

void http_conn_flush(struct http_conn *c)
{
    bool progressed = false;
    while (evbuffer_get_length(c->out) > 0) {
        int n = evbuffer_write(c->out, c->fd);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            out_account(c);
            if (progressed || !c->stalled)
                stall_renew(c);
            event_add(&c->write_ev, NULL);
            unsent_enforce(c->srv);
            return;
        }
        if (n <= 0) {
            log_debug("write fd %d: %s", c->fd, n < 0 ? strerror(errno) : "closed");
            http_conn_close(c);
            return;
        }
        progressed = true;
    }
    out_account(c);
    stall_unlink(c);
    conn_response_done(c);
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
    log_debug("fd %d: request %s: client gone before its answer", c->fd, c->x->req.request_id);
    http_conn_close(c);
    if (c->x->req.on_gone)
        c->x->req.on_gone(c->x->req.on_gone_arg);
}

/* The request's client: the connection's (its peer, or its PROXY header's source), unless that is a
 * trusted proxy whose X-Forwarded-For names another. */
static void conn_client_ensure(struct http_conn *c)
{
    const struct config *cfg = c->srv->cfg;
    const char *xff = http_request_header(&c->x->req, HTTP_H_X_FORWARDED_FOR);
    if (!xff[0] || !http_addr_trusted(cfg, &c->peer_addr) ||
        !http_xff_client(cfg, xff, c->x->req.client, sizeof(c->x->req.client)))
        snprintf(c->x->req.client, sizeof(c->x->req.client), "%s", c->peer);
}

/* [server] proxy_protocol: a connection may open with a PROXY v2 header, believed from a trusted proxy
 * only (any other peer could name any client). False when the connection must wait for more bytes or
 * was closed (a malformed header, or one from an untrusted peer: refused without an answer, as there is
 * no HTTP client to answer). Bounded: a header is at most HTTP_PROXY_V2_HEAD + HTTP_PROXY_V2_BODY_MAX
 * bytes, and request_timeout runs while it comes. */
static bool conn_proxy_take(struct http_conn *c)
{
    size_t avail = evbuffer_get_length(c->in), want = HTTP_PROXY_V2_HEAD + HTTP_PROXY_V2_BODY_MAX;
    size_t n = avail < want ? avail : want, consumed = 0;
    const unsigned char *buf = evbuffer_pullup(c->in, (ev_ssize_t)n);
    struct sockaddr_storage src;
    enum http_proxy_parse r = buf ? http_proxy_v2_parse(buf, n, &src, &consumed) : HTTP_PROXY_MALFORMED;
    if (r == HTTP_PROXY_MORE)
        return false;
    c->proxy_wait = false;
    if (r == HTTP_PROXY_NONE)
        return true;
    if (r == HTTP_PROXY_MALFORMED || !http_addr_trusted(c->srv->cfg, &c->peer_addr)) {
        log_info("fd %d: %s PROXY header from %s: connection refused", c->fd,
                 r == HTTP_PROXY_MALFORMED ? "malformed" : "untrusted peer's", c->peer);
        http_conn_close(c);
        return false;
    }
    evbuffer_drain(c->in, consumed);
    if (r == HTTP_PROXY_ADDRESS) {
        c->peer_addr = src;
        http_addr_format(&src, c->peer, sizeof(c->peer));
    }
    return true;
}

static void conn_dispatch(struct http_conn *c)
{
    http_parser_pause(&c->parser, 0);
    c->request_ready = false;
    http_request_id_ensure(c); /* before the handler: what it logs names the request */
    http_trace_ensure(c);      /* and what it sends to the database names the trace */
    conn_client_ensure(c);     /* and whom its rate limit counts */
    http_conn_state_set(c, CONN_HANDLING);
    c->srv->handler(&c->x->req);
    if (c->state == CONN_HANDLING && c->peer_closed)
        conn_client_gone(c); /* its EOF came with the request */
}

static void conn_process(struct http_conn *c)
{
    c->in_process = true;
    while ((c->state == CONN_IDLE || c->state == CONN_READING) && evbuffer_get_length(c->in) > 0) {
        if (c->state == CONN_IDLE)
            http_conn_state_set(c, CONN_READING);
        if (!c->x && !http_request_begin(c)) {
            log_error("fd %d: out of memory for a request: closing", c->fd);
            http_conn_close(c);
            break;
        }
        if (c->proxy_wait && !conn_proxy_take(c))
            break;
        if (evbuffer_get_length(c->in) == 0)
            break;
        bool ok = http_request_parse_buffered(c);
        if (!ok && c->method_unknown && !http_request_method_error_classify(c))
            break; /* more of the request line to come */
        if (!ok) {
            http_request_parse_error_answer(c);
            break;
        }
        if (!c->request_ready)
            break;
        struct http_exchange *x = c->x;
        conn_dispatch(c);
        /* answered at once: its handler has returned. Only this one: conn_process may run inside the
         * callback that answered the request before it, which may still read that one */
        http_request_reclaim_last(c->srv, x);
    }
    c->in_process = false;
    if (c->state == CONN_IDLE && c->srv->draining && c->served > 0)
        http_conn_close(c);
}

static void conn_linger_read(struct http_conn *c)
{
    char buf[4096];
    ssize_t n = 0;
    for (int i = 0; i < 16 && (n = read(c->fd, buf, sizeof(buf))) > 0; i++)
        ;
    if (n > 0) /* more to discard: come back on the next loop, the edge will not repeat */
        event_active(&c->read_ev, EV_READ, 1);
    else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
        http_conn_close(c);
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

static void conn_read_event(struct http_conn *c, short what)
{
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
        event_active(&c->read_ev, EV_READ, 1);
        return;
    }
    if (n <= 0) {
        /* EOF mid-request is an aborted request; EOF while idle is a normal keep-alive close */
        if (c->state == CONN_READING && n == 0)
            log_debug("fd %d: client closed mid-request", c->fd);
        http_conn_close(c);
        return;
    }
    conn_process(c);
    if (c->readable && (c->state == CONN_IDLE || c->state == CONN_READING))
        event_active(&c->read_ev, EV_READ, 1); /* a full chunk: more may wait, one chunk per turn */
}

/* The requests answered during a connection's callback are reclaimed when it returns: nothing that used
 * them is on the stack any more (a handler that answered at once has returned), and a burst of
 * connections answered in one loop iteration then shares a few spares rather than each taking its own. */
static void read_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    struct http_conn *c = arg;
    conn_read_event(c, what);
    http_request_reclaim(c->srv);
}

static void write_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct http_conn *c = arg;
    http_conn_flush(c);
    http_request_reclaim(c->srv);
}

static void conn_timer_event(struct http_conn *c)
{
    if (c->state == CONN_READING) {
        log_info("fd %d: request not received within request_timeout: 408", c->fd);
        http_conn_fail(c, 408, "request_timeout", "request not received in time");
        return;
    }
    if (c->state == CONN_WRITING)
        log_info("fd %d: client did not read the response within request_timeout", c->fd);
    http_conn_close(c); /* idle keep-alive expired, slow reader, or linger over */
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct http_conn *c = arg;
    conn_timer_event(c);
    http_request_reclaim(c->srv);
}

/* ---- server --------------------------------------------------------------------------------- */

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
    if (peer)
        c->peer_addr = *peer;
    else
        c->peer_addr.ss_family = AF_UNSPEC;
    http_addr_format(peer, c->peer, sizeof(c->peer));
    c->proxy_wait = srv->cfg->proxy_protocol;
    /* assigned first: conn_free deletes them, whatever failed after */
    event_assign(&c->read_ev, srv->base, fd, EV_READ | EV_PERSIST | EV_ET | EV_CLOSED, read_cb, c);
    /* edge-triggered too: libevent registers the fd with EPOLLET only if the event being added has
     * EV_ET, so a level-triggered write event would turn reads level-triggered for good, and the loop
     * would spin on unread input (or EOF) while a response waits for a slow reader */
    event_assign(&c->write_ev, srv->base, fd, EV_WRITE | EV_ET, write_cb, c);
    evtimer_assign(&c->timer_ev, srv->base, timer_cb, c);
    c->in = evbuffer_new();
    c->out = evbuffer_new();
    if (!c->in || !c->out) {
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
    http_request_reset(c);
    http_conn_state_set(c, CONN_IDLE);
    if (event_add(&c->read_ev, NULL) < 0) {
        log_error("fd %d: cannot watch the connection: dropped", fd);
        http_conn_close(c);
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
    *srv = (struct http_server){
        .base = base, .cfg = cfg, .handler = handler, .ctx = ctx, .pid = (unsigned)getpid()
    };
    srv->reap_ev = event_new(base, -1, 0, reap_cb, srv);
    int keepalive_ms = cfg->keepalive_timeout_ms > 0 ? cfg->keepalive_timeout_ms : 1;
    srv->tv_keepalive = common_timeout(base, keepalive_ms);
    srv->tv_request = common_timeout(base, cfg->request_timeout_ms);
    srv->tv_linger = common_timeout(base, LINGER_MS);
    srv->tv_drain_idle = common_timeout(base, keepalive_ms < DRAIN_IDLE_MS ? keepalive_ms : DRAIN_IDLE_MS);
    if (!srv->reap_ev || !srv->tv_keepalive || !srv->tv_request || !srv->tv_linger || !srv->tv_drain_idle) {
        http_server_free(srv);
        return NULL;
    }
    http_request_parser_settings(&srv->settings);
    http_trace_seed(srv);
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
    http_request_reclaim(srv);
    while (srv->spare) {
        struct http_exchange *x = srv->spare;
        srv->spare = x->next;
        http_request_free(x);
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
