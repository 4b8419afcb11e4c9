/* worker: one process, one libevent loop; owns its HTTP connections, database pool and cache client.
 * Everything a worker mutates lives in its struct worker. */
#ifndef PGAPI_WORKER_H
#define PGAPI_WORKER_H

#include <stdbool.h>

#include "common/config.h"
#include "worker/api/api.h"

struct event_base;
struct event;
struct http_server;
struct pool;
struct cache;
struct consistency;
struct capacity;
struct metrics;
struct telemetry;
struct metrics_page;
struct clients;

/* What the master maps before the first fork and every worker shares. */
struct worker_shared {
    struct consistency *fences;
    struct capacity *capacity;
    struct metrics *metrics;
    struct clients *clients;
};

/* The generation's listening sockets; metrics_fd -1 when [metrics] listen is off. */
struct worker_sockets {
    int listen_fd;
    int metrics_fd;
};

struct worker {
    const struct config *cfg;
    int slot;
    unsigned generation;
    struct event_base *base;
    int listen_fd;
    struct event *accept_ev;
    struct event *accept_retry_ev;
    struct event *sigquit_ev, *sigterm_ev, *drain_timer_ev;
    struct event *warmup_ev;    /* before it accepts: waits for the primary (pool_primary_settled) */
    uint64_t warmup_until_us;   /* ...at most until then (connect_timeout) */
    int ready_fd;               /* told this worker's pid once it accepts, then closed (-1) */
    struct http_server *http;
    int metrics_fd;             /* -1 when off */
    struct event *metrics_accept_ev;
    struct http_server *metrics_http;
    struct metrics_page *metrics_page; /* what metrics_http serves */
    struct metrics *metrics;    /* shared with every worker: what GET /metrics shows */
    struct telemetry *telemetry;
    int draining_servers;       /* HTTP servers still holding connections while draining */
    struct pool *pool;
    struct cache *cache;
    struct local_cache *local;  /* NULL when off: redis disabled or local_entries = 0 */
    struct api_context api;     /* what the API code sees of this worker (the router's context) */
    struct consistency *fences;      /* shared with every worker: commit LSNs of acknowledged writes */
    struct capacity *capacity;  /* shared with every worker: who has room under max_connections */
    struct clients *clients;    /* shared with every worker: connections per client address */
    unsigned long client_refused_total; /* connections refused at max_connections_per_client */
    long client_refused_logged_s;       /* when the last such refusal was logged (monotonic seconds) */
    bool draining;
    bool room_published;        /* what this worker last said in capacity */
    unsigned long refused;      /* connections refused at max_connections since the last log line */
    unsigned long refused_total;
    long refused_logged_s;      /* when that line was written (monotonic seconds) */
    int exit_code;
};

/* Runs a worker until it is told to stop; returns the exit code. `ready_fd` receives this process's
 * pid once it accepts connections, then is closed. */
int worker_run(const struct config *cfg, const struct worker_shared *shared, const struct worker_sockets *socks,
               int slot, unsigned generation, int ready_fd);

#endif
