/* worker: accept loop, signals (QUIT = drain, TERM = stop now) and the process's lifetime. The loop
 * never blocks; every socket it owns is non-blocking. */
#include "worker/worker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/capacity.h"
#include "common/clients.h"
#include "common/clock.h"
#include "common/log.h"
#include "worker/api/api.h"
#include "worker/api/auth.h"
#include "worker/api/deployment.h"
#include "worker/api/idempotency.h"
#include "worker/api/ratelimit.h"
#include "worker/api/resource_ops.h"
#include "worker/api/router.h"
#include "worker/cache/cache.h"
#include "worker/cache/local_cache.h"
#include "worker/db/pool.h"
#include "worker/http/http.h"
#include "worker/metrics_page.h"
#include "worker/telemetry.h"

struct worker {
    const struct config *cfg;
    int slot;
    unsigned generation;
    struct event_base *base;
    int listen_fd;
    struct event *accept_ev;
    struct event *accept_retry_ev;
    struct event *sigquit_ev, *sigterm_ev, *sigusr1_ev, *drain_timer_ev;
    struct event *warmup_ev;  /* before it accepts: waits for the primary (pool_primary_settled) and for
                               * Redis's store to be checked (cache_settled) */
    uint64_t warmup_until_us; /* ...at most until then (connect_timeout) */
    int ready_fd;             /* told this worker's pid once it accepts, then closed (-1) */
    struct http_server *http;
    int metrics_fd; /* -1 when off */
    struct event *metrics_accept_ev;
    struct http_server *metrics_http;
    struct metrics_page *metrics_page; /* what metrics_http serves */
    struct metrics *metrics;           /* shared with every worker: what GET /metrics shows */
    struct telemetry *telemetry;
    int draining_servers; /* HTTP servers still holding connections while draining */
    struct pool *pool;
    struct cache *cache;
    struct local_cache *local;          /* NULL when off: redis disabled or local_entries = 0 */
    struct api_context api;             /* what the API code sees of this worker (the router's context) */
    struct idempotency_purge *idem;     /* slot 0: deletes expired Idempotency-Keys */
    struct consistency *consistency;    /* shared with every worker: commit LSNs of acknowledged writes */
    struct capacity *capacity;          /* shared with every worker: who has room under max_connections */
    struct clients *clients;            /* shared with every worker: connections per client address */
    unsigned long client_refused_total; /* connections refused at max_connections_per_client */
    long client_refused_logged_s;       /* when the last such refusal was logged (monotonic seconds) */
    bool draining;
    bool room_published;   /* what this worker last said in capacity */
    int conns_published;   /* ...and the connections it said it held */
    unsigned ahead_defers; /* pauses since it was last within the slack */
    unsigned long refused; /* connections refused at max_connections since the last log line */
    unsigned long refused_total;
    long refused_logged_s; /* when that line was written (monotonic seconds) */
    int exit_code;
};

#define ACCEPT_BATCH 32
#define CAP_DEFER_MS 10 /* at max_connections: how often a worker looks at its room and the others' */
/* Accepts balanced. The listening socket is shared: whichever worker wakes first takes what waits, so a
 * burst of connections (a load balancer's pool, wrk's 64) could all land on one worker while the other
 * idles, and a busy worker serves its keep-alive connections alone for their whole life. A worker holding
 * more than the fewest another worker with room holds, plus a slack (2, and an eighth beyond that, so a
 * storm of thousands is not taken a handful at a time), leaves new connections to the others: it stops
 * watching the socket for AHEAD_DEFER_MS. After AHEAD_DEFERS_MAX such pauses without getting back within
 * the slack (the others take none: a worker stuck in a long step), it takes them anyway. */
#define AHEAD_DEFER_MS 1
#define AHEAD_DEFERS_MAX 50

static void accept_pause(struct worker *w, int ms)
{
    struct timeval tv = clock_timeval(ms);
    event_del(w->accept_ev);
    event_add(w->accept_retry_ev, &tv);
}

static bool worker_at_cap(const struct worker *w)
{
    return http_server_conn_count(w->http) >= w->cfg->max_connections;
}

static void room_publish(struct worker *w, bool room)
{
    int conns = w->http ? http_server_conn_count(w->http) : 0;
    if (room == w->room_published && conns == w->conns_published)
        return;
    w->room_published = room;
    w->conns_published = conns;
    capacity_set(w->capacity, w->slot, w->generation, room, (unsigned)conns);
}

/* Whether this worker leaves the connections waiting to the others for now (see AHEAD_DEFER_MS). */
static bool worker_ahead(struct worker *w)
{
    unsigned fewest = capacity_fewest_elsewhere(w->capacity, w->slot, w->generation);
    unsigned conns = (unsigned)http_server_conn_count(w->http);
    if (fewest == CAPACITY_NONE || conns <= fewest + 2 + fewest / 8) {
        w->ahead_defers = 0;
        return false;
    }
    if (w->ahead_defers >= AHEAD_DEFERS_MAX)
        return false;
    w->ahead_defers++;
    return true;
}

#define TAKE_NONE (-1)   /* nothing waiting (or an error that does not last) */
#define TAKE_PAUSED (-2) /* out of descriptors or memory: accepts paused for a while */

/* accept4 on the listening socket: a connection (its client's address in *peer), TAKE_NONE or
 * TAKE_PAUSED (logged here). */
static int connection_take(struct worker *w, struct sockaddr_storage *peer)
{
    socklen_t len = sizeof(*peer);
    peer->ss_family = AF_UNSPEC;
    int cfd = accept4(w->listen_fd, (struct sockaddr *)peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (cfd >= 0)
        return cfd;
    if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        log_error("accept: %s: pausing accepts for 100ms", strerror(errno));
        accept_pause(w, 100);
        return TAKE_PAUSED;
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
        log_error("accept: %s", strerror(errno));
    return TAKE_NONE;
}

/* A client at max_connections_per_client across the server: 503 and closed, at most one line a second. */
static void client_refuse(struct worker *w, int cfd, const struct sockaddr_storage *peer)
{
    int64_t now_s = clock_now_s();
    http_refuse(cfd, "client at max_connections_per_client");
    w->client_refused_total++;
    if (now_s == w->client_refused_logged_s)
        return;
    w->client_refused_logged_s = now_s;
    char addr[INET6_ADDRSTRLEN] = "-";
    const void *a = peer->ss_family == AF_INET6
                        ? (const void *)&((const struct sockaddr_in6 *)peer)->sin6_addr
                        : (const void *)&((const struct sockaddr_in *)peer)->sin_addr;
    inet_ntop(peer->ss_family, a, addr, sizeof(addr));
    log_warn("client %s at max_connections_per_client (%d): connection refused with 503 (%lu so far)", addr,
             w->cfg->max_connections_per_client, w->client_refused_total);
}

static void accept_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct worker *w = arg;
    room_publish(w, !worker_at_cap(w)); /* connections may have closed since it was last said */
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        if (worker_at_cap(w)) {
            room_publish(w, false);
            accept_pause(w, CAP_DEFER_MS); /* leave the queue to workers with room */
            return;
        }
        if (worker_ahead(w)) {
            accept_pause(w, AHEAD_DEFER_MS);
            return;
        }
        struct sockaddr_storage peer;
        int cfd = connection_take(w, &peer);
        if (cfd < 0)
            return;
        uint64_t key = clients_key(w->clients, &peer);
        if (!clients_admit(w->clients, w->slot, w->generation, key, w->cfg->max_connections_per_client)) {
            client_refuse(w, cfd, &peer);
            continue;
        }
        int one = 1;
        setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        http_server_adopt(w->http, cfd, &peer, w->cfg->max_connections_per_client > 0 ? key : 0);
        room_publish(w, true); /* the count the others compare with */
    }
}

/* A connection closed: its client's count goes down (tag: the key clients_admit counted, 0 if none). */
static void client_gone(void *arg, uint64_t tag)
{
    struct worker *w = arg;
    clients_release(w->clients, w->slot, w->generation, tag);
    if (w->room_published) /* not while draining or at the cap: those say no room */
        room_publish(w, true);
}

/* One warning a second at most, however fast connections are refused. */
static void refusals_log(struct worker *w, unsigned long n)
{
    int64_t now_s = clock_now_s();
    w->refused += n;
    w->refused_total += n;
    if (w->refused == 0 || now_s == w->refused_logged_s)
        return;
    log_warn("at max_connections (%d): %lu connection(s) refused with 503", w->cfg->max_connections,
             w->refused);
    w->refused = 0;
    w->refused_logged_s = now_s;
}

/* At the cap with no other worker of this generation having room: what waits in the queue would hang
 * there, so it is answered 503 and closed now. Returns false if accepting itself failed (then paused). */
static bool connections_refuse(struct worker *w)
{
    unsigned long n = 0;
    bool ok = true;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        struct sockaddr_storage peer;
        int cfd = connection_take(w, &peer);
        if (cfd < 0) {
            ok = cfd != TAKE_PAUSED;
            break;
        }
        http_refuse(cfd, "server at max_connections");
        n++;
    }
    refusals_log(w, n);
    return ok;
}

static void accept_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct worker *w = arg;
    if (w->draining)
        return;
    if (!worker_at_cap(w)) {
        room_publish(w, true);
    } else if (capacity_elsewhere(w->capacity, w->slot, w->generation)) {
        accept_pause(w, CAP_DEFER_MS); /* another worker takes them; look again shortly */
        return;
    } else if (!connections_refuse(w)) {
        return;
    }
    event_add(w->accept_ev, NULL);
}

/* The metrics listener: a scrape now and then, no room bookkeeping; past a small cap, closed at once. */
#define METRICS_MAX_CONNECTIONS 16

static void metrics_accept_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct worker *w = arg;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        struct sockaddr_storage peer;
        socklen_t len = sizeof(peer);
        peer.ss_family = AF_UNSPEC;
        int cfd = accept4(fd, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
                log_error("accept on the metrics listener: %s", strerror(errno));
            return;
        }
        if (http_server_conn_count(w->metrics_http) >= METRICS_MAX_CONNECTIONS) {
            http_refuse(cfd, "server at max_connections");
            continue;
        }
        http_server_adopt(w->metrics_http, cfd, &peer, 0);
    }
}

static void drain_done(void *arg)
{
    struct worker *w = arg;
    if (--w->draining_servers > 0)
        return;
    log_info("drained: no connection left, exiting");
    event_base_loopexit(w->base, NULL);
}

static void drain_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct worker *w = arg;
    log_warn("drain_timeout passed with %d connection(s) open: exiting anyway",
             http_server_conn_count(w->http));
    event_base_loopexit(w->base, NULL);
}

static void worker_drain(struct worker *w)
{
    if (w->draining)
        return;
    w->draining = true;
    room_publish(w, false);
    event_del(w->accept_ev);
    event_del(w->accept_retry_ev);
    close(w->listen_fd);
    w->listen_fd = -1;
    if (w->metrics_accept_ev)
        event_del(w->metrics_accept_ev);
    if (w->metrics_fd >= 0)
        close(w->metrics_fd);
    w->metrics_fd = -1;
    struct timeval tv = clock_timeval(w->cfg->drain_timeout_ms);
    event_add(w->drain_timer_ev, &tv);
    log_info("draining %d connection(s)", http_server_conn_count(w->http));
    w->draining_servers = w->metrics_http ? 2 : 1;
    http_server_drain(w->http, drain_done, w);
    if (w->metrics_http)
        http_server_drain(w->metrics_http, drain_done, w);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    struct worker *w = arg;
    log_info("signal %d (%s)", (int)sig, strsignal((int)sig));
    if (sig == SIGQUIT) {
        worker_drain(w);
    } else {
        w->exit_code = 0;
        event_base_loopbreak(w->base);
    }
}

/* SIGUSR1: the master reopened the log file after a rotation; this worker's stderr is its own copy. */
static void log_reopen_cb(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    struct worker *w = arg;
    if (w->cfg->log_file[0] && log_file_reopen() < 0)
        log_error("log file %s: cannot reopen: %s; still writing to the old one", w->cfg->log_file,
                  strerror(errno));
}

static void ready_announce(struct worker *w)
{
    pid_t pid = getpid();
    if (write(w->ready_fd, &pid, sizeof(pid)) != (ssize_t)sizeof(pid))
        log_warn("cannot tell the master this worker is ready: %s", strerror(errno));
    close(w->ready_fd);
    w->ready_fd = -1;
}

#define WARMUP_POLL_MS 5

/* A new worker accepts (and tells the master, which then retires the old generation) only once its
 * primary is in rotation, or a connection to it has failed, or connect_timeout has passed: requests
 * taken earlier wait in the pool queue for the first connection, and on a loaded machine that took
 * longer than queue_timeout (503s during a reload, while the old generation could have served them). */
static void warmup_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct worker *w = arg;
    if (w->draining)
        return; /* told to stop before it ever served */
    bool settled =
        pool_primary_settled(w->pool) && deployment_settled(w->api.deployment) && cache_settled(w->cache);
    if (!settled && clock_now_us() < w->warmup_until_us) {
        struct timeval tv = clock_timeval(WARMUP_POLL_MS);
        event_add(w->warmup_ev, &tv);
        return;
    }
    if (event_add(w->accept_ev, NULL) < 0) {
        log_error("cannot watch the listening socket: exiting");
        event_base_loopbreak(w->base);
        return;
    }
    ready_announce(w);
    room_publish(w, true);
}

static int worker_events_setup(struct worker *w)
{
    w->accept_ev = event_new(w->base, w->listen_fd, EV_READ | EV_PERSIST, accept_cb, w);
    w->accept_retry_ev = evtimer_new(w->base, accept_retry_cb, w);
    w->sigquit_ev = evsignal_new(w->base, SIGQUIT, signal_cb, w);
    w->sigterm_ev = evsignal_new(w->base, SIGTERM, signal_cb, w);
    w->sigusr1_ev = evsignal_new(w->base, SIGUSR1, log_reopen_cb, w);
    w->drain_timer_ev = evtimer_new(w->base, drain_timeout_cb, w);
    w->warmup_ev = evtimer_new(w->base, warmup_cb, w);
    if (!w->accept_ev || !w->accept_retry_ev || !w->sigquit_ev || !w->sigterm_ev || !w->sigusr1_ev ||
        !w->drain_timer_ev || !w->warmup_ev)
        return -1;
    if (event_add(w->sigquit_ev, NULL) < 0 || event_add(w->sigterm_ev, NULL) < 0 ||
        event_add(w->sigusr1_ev, NULL) < 0)
        return -1;
    log_reopen_cb(SIGUSR1, 0, w); /* a rotation signalled before the handler was in (it was ignored) */
    return 0;
}

/* The metrics listener's server and accept event; nothing when [metrics] listen is off. */
static int metrics_listener_setup(struct worker *w)
{
    if (w->metrics_fd < 0)
        return 0;
    w->metrics_page = metrics_page_new(w->cfg, w->metrics, w->telemetry);
    if (!w->metrics_page)
        return -1;
    w->metrics_http = http_server_new(w->base, w->cfg, metrics_page_dispatch, w->metrics_page);
    w->metrics_accept_ev = event_new(w->base, w->metrics_fd, EV_READ | EV_PERSIST, metrics_accept_cb, w);
    if (!w->metrics_http || !w->metrics_accept_ev || event_add(w->metrics_accept_ev, NULL) < 0)
        return -1;
    if (w->telemetry)
        http_server_observe(w->metrics_http, telemetry_observe, w->telemetry);
    telemetry_metrics_server_set(w->telemetry, w->metrics_http);
    return 0;
}

/* Requests still in flight (a second stop signal, an expired drain_timeout) are dropped, not answered:
 * the pool and the cache free their jobs without running a callback, then resource_ops frees what the
 * requests held, and only then go the HTTP connections those requests point to. */
static void worker_free(struct worker *w)
{
    telemetry_free(w->telemetry); /* publishes its last numbers: before the pool and cache go */
    pool_free(w->pool);
    cache_free(w->cache);
    ratelimit_free(w->api.ratelimit); /* after the cache: a check in flight was discarded by it */
    resource_ops_discard_all(&w->api);
    idempotency_purge_free(w->idem); /* after the pool: its statement's callback never runs */
    deployment_free(w->api.deployment);
    http_server_free(w->metrics_http);
    metrics_page_free(w->metrics_page);
    if (w->metrics_accept_ev)
        event_free(w->metrics_accept_ev);
    if (w->metrics_fd >= 0)
        close(w->metrics_fd);
    http_server_free(w->http);
    auth_free(w->api.auth); /* after the server: no request is dispatched past it */
    local_cache_free(w->local);
    struct event *evs[] = { w->accept_ev,  w->accept_retry_ev, w->sigquit_ev, w->sigterm_ev,
                            w->sigusr1_ev, w->drain_timer_ev,  w->warmup_ev };
    for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++)
        if (evs[i])
            event_free(evs[i]);
    if (w->listen_fd >= 0)
        close(w->listen_fd);
    if (w->base)
        event_base_free(w->base);
}

int worker_run(const struct config *cfg, const struct worker_shared *shared,
               const struct worker_sockets *socks, int slot, unsigned generation, int ready_fd)
{
    struct worker w = { .cfg = cfg,
                        .consistency = shared->consistency,
                        .capacity = shared->capacity,
                        .metrics = shared->metrics,
                        .clients = shared->clients,
                        .slot = slot,
                        .generation = generation,
                        .listen_fd = socks->listen_fd,
                        .metrics_fd = socks->metrics_fd,
                        .ready_fd = ready_fd,
                        .exit_code = 1 };
    log_set_process("worker", slot, generation);
    /* The terminal's Ctrl-C and a HUP reach the whole process group: only the master acts on them. */
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    w.base = event_base_new();
    if (!w.base || worker_events_setup(&w) < 0) {
        log_error("cannot set up the event loop");
        goto done;
    }
    w.http = http_server_new(w.base, cfg, router_dispatch, &w.api);
    if (w.http)
        http_server_on_close(w.http, client_gone, &w);
    w.pool = pool_new(w.base, cfg, w.consistency);
    w.cache = cache_new(w.base, cfg, w.consistency);
    if (cfg->redis_enabled && cfg->local_cache_entries > 0) {
        w.local = local_cache_new(cfg->local_cache_entries, cfg->local_cache_bytes, cfg->cache_ttl_s);
        if (!w.local)
            log_warn("cannot allocate the local cache: running without it");
    }
    w.api = (struct api_context){ .cfg = cfg,
                                  .base = w.base,
                                  .pool = w.pool,
                                  .cache = w.cache,
                                  .local = w.local,
                                  .consistency = w.consistency,
                                  .slot = slot,
                                  .generation = generation,
                                  .draining = &w.draining };
    w.api.deployment = w.pool && w.cache ? deployment_new(&w.api) : NULL;
    w.api.ratelimit = w.cache ? ratelimit_new(cfg, w.cache) : NULL;
    w.idem = w.pool ? idempotency_purge_new(&w.api) : NULL;
    w.api.auth = auth_new(cfg, w.metrics ? w.metrics->slot[slot].auth : NULL, slot == 0);
    if (!w.http || !w.pool || !w.cache || !w.api.deployment || !w.idem || !w.api.auth) {
        log_error("cannot set up the HTTP server, the database pool, the cache client or the token keys");
        goto done;
    }
    struct telemetry_sources sources = { .http = w.http,
                                         .pool = w.pool,
                                         .cache = w.cache,
                                         .local = w.local,
                                         .fill_waits = &w.api.fill_waits,
                                         .ratelimit = w.api.ratelimit,
                                         .refused_total = &w.refused_total,
                                         .client_refused_total = &w.client_refused_total };
    w.telemetry = telemetry_new(w.base, w.metrics, w.slot, w.generation, &sources);
    if (w.telemetry)
        http_server_observe(w.http, telemetry_observe, w.telemetry);
    if (metrics_listener_setup(&w) < 0) {
        log_error("cannot set up the metrics listener");
        goto done;
    }
    w.warmup_until_us = clock_now_us() + (uint64_t)cfg->connect_timeout_ms * 1000;
    event_active(w.warmup_ev, EV_TIMEOUT, 0);
    event_base_dispatch(w.base);
    w.exit_code = 0;
done:
    room_publish(&w, false);
    if (w.ready_fd >= 0)
        close(w.ready_fd);
    worker_free(&w);
    return w.exit_code;
}
