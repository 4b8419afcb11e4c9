/* telemetry: a worker's side of the shared metrics table (common/metrics.h). Requests are counted there
 * as they are answered; the pool's and the cache's own counters and gauges are published there once a
 * second (and before this worker renders a scrape), as the change since the last publication. */
#ifndef PGAPI_TELEMETRY_H
#define PGAPI_TELEMETRY_H

#include <stdint.h>

struct event_base;
struct http_request;
struct http_server;
struct local_cache;
struct fill_waits;
struct metrics;
struct pool;
struct cache;
struct ratelimit;
struct telemetry;

/* Where a worker's numbers come from: its objects (any may be NULL) and its refusal counters. They stay
 * the worker's and outlive the telemetry. */
struct telemetry_sources {
    struct http_server *http; /* the API listener's server */
    struct pool *pool;
    struct cache *cache;
    struct local_cache *local;
    const struct fill_waits *fill_waits;       /* the API's waits for fill leases */
    struct ratelimit *ratelimit;               /* NULL when off */
    const unsigned long *refused_total;        /* connections refused at max_connections */
    const unsigned long *client_refused_total; /* connections refused at max_connections_per_client */
};

/* Publishes into the worker's slot of `metrics` (slot, generation). NULL (logged) on failure; with no
 * shared table (metrics NULL) returns NULL quietly. */
struct telemetry *telemetry_new(struct event_base *base, struct metrics *metrics, int slot,
                                unsigned generation, const struct telemetry_sources *src);
/* The metrics listener's server, once it exists: its connections count too. t may be NULL. */
void telemetry_metrics_server_set(struct telemetry *t, struct http_server *metrics_http);
/* Publishes what is left, then frees. */
void telemetry_free(struct telemetry *t);
/* The HTTP servers' observer (http_server_observe): counts one answered request. */
void telemetry_observe(void *arg, const struct http_request *req, uint64_t duration_us);
void telemetry_publish(struct telemetry *t);

#endif
