/* fuzz_request: libFuzzer target for the request path. A client sends the input over a socketpair to the
 * real connection state machine (worker/http/conn.c), whose handler is the real router, so the handlers,
 * query.c, body.c and resource_ops.c's field checks run as in a worker, up to a stand-in database
 * (fake_db.c).
 * Every run builds and frees everything, so LeakSanitizer checks each input.
 *
 * Input: byte 0 = flags (FUZZ_* below), byte 1 = where the rest is cut into two sends (len * b / 256),
 * then the bytes the client sends. */
#include <errno.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <sanitizer/common_interface_defs.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/config.h"
#include "common/consistency.h"
#include "common/log.h"
#include "tests/fuzz/fake_db.h"
#include "worker/api/api.h"
#include "worker/api/auth.h"
#include "worker/api/ratelimit.h"
#include "worker/api/resource.h"
#include "worker/api/router.h"
#include "worker/cache/local_cache.h"
#include "worker/db/pool.h"
#include "worker/http/http.h"

#define FUZZ_ANSWER 0x03       /* enum fake_answer: what every statement gets back */
#define FUZZ_TIMEOUTS 0x04     /* the client never closes its side: the server's timers end it */
#define FUZZ_SMALL_BUF 0x08    /* the smallest socket buffers: short reads and writes, EAGAIN */
#define FUZZ_DRAIN 0x10        /* the worker starts a graceful stop between the two sends */
#define FUZZ_LOG_JSON 0x20     /* log lines as JSON, else as text; and [auth] mode = required (FUZZ_SECRET) */
#define FUZZ_SMALL_LIMITS 0x40 /* small max_header_bytes and max_body_bytes: limits within short inputs */
#define FUZZ_ABORT 0x80        /* the client closes at once after sending, unread responses and all */

/* The HS256 secret of FUZZ_LOG_JSON runs (corpus/auth-*: tokens signed with it, exp in 2100) */
#define FUZZ_SECRET "fuzz-hs256-secret-0123456789abcdef"

#define TURNS_MAX 100000 /* loop turns one input may take: more is a connection that never ends */
#define SETTLE_TURNS 8   /* turns between the two sends, so the server sees the first part alone */
#define TIMER_MS 1       /* FUZZ_TIMEOUTS: request and keep-alive timeouts */
#define LOCAL_ENTRIES 16
#define SMALL_HEADER_BYTES 512
#define SMALL_BODY_BYTES 1024
/* The client's socket is a socketpair; the server is told it comes from this trusted proxy, so that a
 * PROXY v2 header and X-Forwarded-For are believed and parsed to the end. */
static const unsigned char PROXY_ADDR[4] = { 127, 0, 0, 9 };

struct fuzz_worker {
    struct event_base *base;
    struct consistency *fences;
    struct local_cache *local;
    struct pool *pool;
    struct http_server *http;
    struct api_context api;
    bool draining;
};

struct fuzz_run {
    unsigned flags;
    struct config cfg;
    struct fuzz_worker w; /* what a worker holds for the request path; the rest of one is not needed */
    int client;           /* the client's end of the socketpair; -1 once closed */
    int turns;
};

/* libFuzzer's two entry points; no global state besides log.c's logger, which each run configures. */
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    signal(SIGPIPE, SIG_IGN); /* as a worker does */
    log_set_process("fuzz", 0, 1);
    return 0;
}

/* Reads and discards whatever the server sent; closes the client's end once the server has closed or
 * shut down its side, as a client does after the last response. */
static void client_drain(struct fuzz_run *r)
{
    char buf[16384];
    ssize_t n;
    while (r->client >= 0 && (n = read(r->client, buf, sizeof(buf))) != 0) {
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n < 0 && errno != EINTR)
            break;
    }
    if (r->client >= 0)
        close(r->client);
    r->client = -1;
}

/* Runs the loop (EVLOOP_NONBLOCK: until nothing is left to do without the client), then reads what the
 * server sent. A server that keeps finding work while it waits for the client never returns: a hang. */
static void loop_turn(struct fuzz_run *r, int loop_flags)
{
    if (++r->turns > TURNS_MAX) { /* said where the sanitizers report: -close_fd_mask=2 closes stderr */
        __sanitizer_report_error_summary("fuzz_request: a connection never closed (TURNS_MAX turns passed)");
        abort();
    }
    event_base_loop(r->w.base, loop_flags);
    client_drain(r);
}

/* Sends all of data, letting the server run whenever the socket is full; stops if the server closed. */
static void client_send(struct fuzz_run *r, const uint8_t *data, size_t len)
{
    size_t off = 0;
    while (off < len && r->client >= 0) {
        ssize_t n = send(r->client, data + off, len - off, MSG_NOSIGNAL);
        if (n > 0)
            off += (size_t)n;
        else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            loop_turn(r, EVLOOP_NONBLOCK);
        else
            return;
    }
}

static void client_settle(struct fuzz_run *r)
{
    for (int i = 0; i < SETTLE_TURNS; i++)
        loop_turn(r, EVLOOP_NONBLOCK);
}

/* Runs until the server has closed every connection: after the client's EOF that needs no timer (so
 * no blocking turn); with FUZZ_TIMEOUTS the 1 ms timers end it. */
static void client_finish(struct fuzz_run *r)
{
    bool timers = r->flags & FUZZ_TIMEOUTS;
    if ((r->flags & FUZZ_ABORT) && r->client >= 0) {
        close(r->client);
        r->client = -1;
    } else if (!timers && r->client >= 0) {
        shutdown(r->client, SHUT_WR);
    }
    while (http_server_conn_count(r->w.http) > 0)
        loop_turn(r, timers ? EVLOOP_ONCE : EVLOOP_NONBLOCK);
    event_base_loop(r->w.base, EVLOOP_NONBLOCK); /* reaps the closed connections */
}

static void socket_buffers_shrink(int fd)
{
    int one = 1; /* the kernel raises it to its minimum */
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &one, sizeof(one));
}

static int config_make(struct config *cfg, unsigned flags)
{
    char err[CONFIG_ERR_MAX], msg[CONFIG_ERR_MAX + 32];
    if (config_load(cfg, NULL, err, sizeof(err)) < 0) {
        snprintf(msg, sizeof(msg), "fuzz_request: configuration: %s", err);
        __sanitizer_report_error_summary(msg);
        return -1;
    }
    cfg->redis_enabled = false;
    /* PROXY headers and X-Forwarded-For from a trusted proxy (PROXY_ADDR); the rate limiter on, alone in
     * the worker (no Redis), with bursts that only long pipelines pass (429 without starving the rest) */
    cfg->proxy_protocol = true;
    cfg->trusted_proxies[0] = (struct config_cidr){ .family = AF_INET, .bits = 32 };
    memcpy(cfg->trusted_proxies[0].addr, PROXY_ADDR, sizeof(PROXY_ADDR));
    cfg->trusted_proxy_count = 1;
    cfg->ratelimit_enabled = true;
    cfg->read_rate = cfg->write_rate = 1;
    cfg->read_burst = 64;
    cfg->write_burst = 16;
    if (flags & FUZZ_TIMEOUTS)
        cfg->request_timeout_ms = cfg->keepalive_timeout_ms = TIMER_MS;
    if (flags & FUZZ_SMALL_LIMITS) {
        cfg->max_header_bytes = SMALL_HEADER_BYTES;
        cfg->max_body_bytes = SMALL_BODY_BYTES;
    }
    if (flags & FUZZ_SMALL_BUF)
        cfg->max_unsent_bytes = 1; /* any write that would block closes: the slow-reader path */
    if (flags & FUZZ_LOG_JSON) {   /* the token check before every standard route */
        cfg->auth_required = true;
        cfg->auth_secret_len = sizeof(FUZZ_SECRET) - 1;
        memcpy(cfg->auth_secret, FUZZ_SECRET, cfg->auth_secret_len);
    }
    log_configure(LOGL_DEBUG, flags & FUZZ_LOG_JSON ? LOGF_JSON : LOGF_TEXT, true);
    return 0;
}

/* The worker's objects as worker_run() makes them, with fake_db.c's pool and no Redis. */
static int run_setup(struct fuzz_run *r, unsigned flags)
{
    int sv[2];
    *r = (struct fuzz_run){ .flags = flags, .client = -1 };
    if (config_make(&r->cfg, flags) < 0)
        return -1;
    r->w = (struct fuzz_worker){ 0 };
    r->w.base = event_base_new();
    r->w.fences = consistency_create(resource_count());
    r->w.local = local_cache_new(LOCAL_ENTRIES, r->cfg.local_cache_bytes, r->cfg.cache_ttl_s);
    if (!r->w.base || !r->w.fences || !r->w.local)
        return -1;
    r->w.pool = fake_pool_new(r->w.base, (enum fake_answer)(flags & FUZZ_ANSWER));
    r->w.api = (struct api_context){ .cfg = &r->cfg,
                                     .base = r->w.base,
                                     .pool = r->w.pool,
                                     .local = r->w.local,
                                     .consistency = r->w.fences,
                                     .generation = 1,
                                     .draining = &r->w.draining };
    r->w.api.ratelimit = ratelimit_new(&r->cfg, NULL);
    r->w.api.auth = auth_new(&r->cfg, NULL, false);
    r->w.http = http_server_new(r->w.base, &r->cfg, router_dispatch, &r->w.api);
    if (!r->w.pool || !r->w.http || !r->w.api.ratelimit || !r->w.api.auth)
        return -1;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        return -1;
    r->client = sv[1];
    if (flags & FUZZ_SMALL_BUF) {
        socket_buffers_shrink(sv[0]);
        socket_buffers_shrink(sv[1]);
    }
    struct sockaddr_storage peer = { .ss_family = AF_INET };
    memcpy(&((struct sockaddr_in *)&peer)->sin_addr, PROXY_ADDR, sizeof(PROXY_ADDR));
    http_server_adopt(r->w.http, sv[0], &peer, 0);
    return 0;
}

static void run_teardown(struct fuzz_run *r)
{
    if (r->client >= 0)
        close(r->client);
    http_server_free(r->w.http);
    ratelimit_free(r->w.api.ratelimit);
    auth_free(r->w.api.auth);
    pool_free(r->w.pool);
    local_cache_free(r->w.local);
    consistency_destroy(r->w.fences);
    if (r->w.base)
        event_base_free(r->w.base);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    const uint8_t *bytes = data + 2;
    size_t len = size - 2, first = len * data[1] / 256;
    struct fuzz_run r;
    if (run_setup(&r, data[0]) < 0) {
        __sanitizer_report_error_summary("fuzz_request: cannot set up a run");
        abort();
    }
    client_send(&r, bytes, first);
    client_settle(&r);
    if (r.flags & FUZZ_DRAIN)
        http_server_drain(r.w.http, NULL, NULL);
    client_send(&r, bytes + first, len - first);
    client_finish(&r);
    run_teardown(&r);
    return 0;
}
