/* telemetry: counts into this worker's slot of the shared metrics table. Only the request counters are
 * written on the request path (three relaxed atomic adds); everything the pool and the cache already
 * count is copied over by a one-second timer, as deltas, so the slot's counters keep growing across
 * worker restarts and reloads. */
#include "worker/telemetry.h"

#include <event2/event.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/metrics.h"
#include "worker/api/fill_wait.h"
#include "worker/api/ratelimit.h"
#include "worker/cache/cache.h"
#include "worker/cache/local_cache.h"
#include "worker/db/pool.h"
#include "worker/http/http.h"

#define PUBLISH_MS 1000

_Static_assert(POOL_PRIMARY_READS == METRICS_PRIMARY_READS,
               "one counter per reason a read ran on the primary");

/* The pool's and cache's counters as last copied into the slot. */
struct published {
    uint64_t queries[METRICS_BACKENDS], query_errors[METRICS_BACKENDS];
    uint64_t timeouts[2], queue_full[2], batches[2], wait_us[2], replay_samples[2], replica_waits[2];
    uint64_t primary_reads[METRICS_PRIMARY_READS];
    struct cache_stats cache;
    uint64_t local_hits;
    struct fill_wait_stats fill;
    uint64_t refused, client_refused, slow_closed;
    struct ratelimit_stats ratelimit;
};

struct telemetry {
    struct telemetry_sources src;
    struct http_server *metrics_http; /* NULL until the metrics listener is set up, or when it is off */
    unsigned generation;
    struct metrics_counters *counters;
    struct metrics_gauges *gauges;
    struct event *timer;
    struct published last;
};

void telemetry_observe(void *arg, const struct http_request *req, uint64_t duration_us)
{
    struct telemetry *t = arg;
    int route = req->route >= 0 && req->route < METRICS_ROUTES ? req->route : METRICS_ROUTE_NONE;
    metrics_add(&t->counters->requests[route][metrics_status_index(req->status)], 1);
    metrics_add(&t->counters->latency[route][metrics_bucket_index(duration_us)], 1);
    metrics_add(&t->counters->latency_us[route], duration_us);
}

/* Adds now - *last to the shared counter and remembers now. */
static void delta_add(metrics_counter *c, uint64_t *last, uint64_t now)
{
    if (now > *last)
        metrics_add(c, now - *last);
    *last = now;
}

static void gauge_set(_Atomic int64_t *g, int64_t v)
{
    atomic_store_explicit(g, v, memory_order_relaxed);
}

static void backends_publish(struct telemetry *t)
{
    struct pool *p = t->src.pool;
    int n = pool_replica_count(p);
    gauge_set(&t->gauges->replicas, n);
    for (int b = 0; b <= n && b < METRICS_BACKENDS; b++) {
        struct pool_backend_stats s;
        pool_backend_stats(p, b - 1, &s);
        delta_add(&t->counters->queries[b], &t->last.queries[b], s.queries);
        delta_add(&t->counters->query_errors[b], &t->last.query_errors[b], s.errors);
        gauge_set(&t->gauges->in_use[b], s.in_use);
        gauge_set(&t->gauges->idle[b], s.idle);
        gauge_set(&t->gauges->connecting[b], s.connecting);
        gauge_set(&t->gauges->down[b], s.down);
        gauge_set(&t->gauges->up[b], s.up);
        gauge_set(&t->gauges->lag_ms[b], s.lag_ms);
        gauge_set(&t->gauges->lsn[b], (int64_t)s.lsn);
    }
}

static void sides_publish(struct telemetry *t)
{
    for (int side = 0; side < 2; side++) {
        struct pool_side_stats s;
        pool_stats(t->src.pool, (enum pool_side)side, &s);
        delta_add(&t->counters->timeouts[side], &t->last.timeouts[side], s.timeouts);
        delta_add(&t->counters->queue_full[side], &t->last.queue_full[side], s.queue_full);
        delta_add(&t->counters->batches[side], &t->last.batches[side], s.batches);
        delta_add(&t->counters->wait_us[side], &t->last.wait_us[side], s.wait_us_total);
        delta_add(&t->counters->replay_samples[side], &t->last.replay_samples[side], s.replay_samples);
        delta_add(&t->counters->replica_waits[side], &t->last.replica_waits[side], s.replica_waits);
        gauge_set(&t->gauges->waiting[side], s.waiting);
        for (int r = 0; side == POOL_PRIMARY && r < POOL_PRIMARY_READS; r++)
            delta_add(&t->counters->primary_reads[r], &t->last.primary_reads[r], s.primary_reads[r]);
    }
}

static void cache_publish(struct telemetry *t)
{
    struct cache_stats s;
    struct cache_stats *last = &t->last.cache;
    struct metrics_counters *c = t->counters;
    cache_stats(t->src.cache, &s);
    delta_add(&c->cache_hits, &last->hits, s.hits);
    delta_add(&c->cache_misses, &last->misses, s.misses);
    delta_add(&c->cache_waits, &last->waits, s.waits);
    delta_add(&c->cache_bypasses, &last->bypasses, s.bypasses);
    delta_add(&c->cache_fills, &last->fills, s.fills);
    delta_add(&c->cache_invalidations, &last->invalidations, s.invalidations);
    delta_add(&c->cache_epoch_bumps, &last->epoch_bumps, s.epoch_bumps);
    delta_add(&c->cache_invalidation_failures, &last->invalidation_failures, s.invalidation_failures);
    delta_add(&c->cache_ping_failures, &last->ping_failures, s.ping_failures);
    delta_add(&c->cache_log_reads, &last->log_reads, s.log_reads);
    delta_add(&c->cache_log_resets, &last->log_resets, s.log_resets);
    delta_add(&c->cache_verifications, &last->verifications, s.verifications);
    delta_add(&c->cache_purges, &last->purges, s.purges);
    _Static_assert((int)CACHE_THROUGH_RESULTS == (int)METRICS_THROUGH_RESULTS,
                   "one label per write-through result");
    for (int i = 0; i < CACHE_THROUGH_RESULTS; i++)
        delta_add(&c->cache_through[i], &last->through[i], s.through[i]);
    delta_add(&c->cache_disconnects, &last->disconnects, s.disconnects);
    delta_add(&c->redis_master_changes, &last->master_changes, s.master_changes);
    gauge_set(&t->gauges->cache_up, cache_state(t->src.cache) == CACHE_UP);
    uint64_t hits = 0, entries = 0;
    size_t bytes = 0;
    if (t->src.local)
        local_cache_stats(t->src.local, &hits, &entries, &bytes);
    delta_add(&c->local_hits, &t->last.local_hits, hits);
    if (t->src.fill_waits) {
        const struct fill_wait_stats *fw = &t->src.fill_waits->stats;
        delta_add(&c->fill_woken, &t->last.fill.woken, fw->woken);
        delta_add(&c->fill_retried, &t->last.fill.retried, fw->retried);
        delta_add(&c->fill_polled, &t->last.fill.polled, fw->polled);
    }
    gauge_set(&t->gauges->local_entries, (int64_t)entries);
    gauge_set(&t->gauges->local_bytes, (int64_t)bytes);
}

static void ratelimit_publish(struct telemetry *t)
{
    struct ratelimit_stats s;
    struct ratelimit_stats *last = &t->last.ratelimit;
    ratelimit_stats(t->src.ratelimit, &s);
    delta_add(&t->counters->ratelimit[METRICS_RATELIMIT_ALLOWED], &last->allowed, s.allowed);
    delta_add(&t->counters->ratelimit[METRICS_RATELIMIT_LIMITED], &last->limited, s.limited);
    delta_add(&t->counters->ratelimit[METRICS_RATELIMIT_LOCAL_ALLOWED], &last->local_allowed,
              s.local_allowed);
    delta_add(&t->counters->ratelimit[METRICS_RATELIMIT_LOCAL_LIMITED], &last->local_limited,
              s.local_limited);
}

void telemetry_publish(struct telemetry *t)
{
    if (!t)
        return;
    const struct telemetry_sources *src = &t->src;
    int conns = 0;
    if (src->http)
        conns += http_server_conn_count(src->http);
    if (t->metrics_http)
        conns += http_server_conn_count(t->metrics_http);
    gauge_set(&t->gauges->connections, conns);
    delta_add(&t->counters->connections_refused, &t->last.refused, *src->refused_total);
    delta_add(&t->counters->client_connections_refused, &t->last.client_refused, *src->client_refused_total);
    if (src->http) {
        uint64_t slow_closed = http_server_slow_closed(src->http);
        delta_add(&t->counters->slow_readers_closed, &t->last.slow_closed, slow_closed);
        gauge_set(&t->gauges->unsent_bytes, (int64_t)http_server_unsent(src->http));
    }
    if (src->pool) {
        backends_publish(t);
        sides_publish(t);
    }
    if (src->cache)
        cache_publish(t);
    if (src->ratelimit)
        ratelimit_publish(t);
    atomic_store_explicit(&t->gauges->generation, t->generation, memory_order_release);
}

static void publish_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    telemetry_publish(arg);
}

struct telemetry *telemetry_new(struct event_base *base, struct metrics *metrics, int slot,
                                unsigned generation, const struct telemetry_sources *src)
{
    if (!metrics || slot < 0 || slot >= METRICS_SLOTS)
        return NULL;
    struct telemetry *t = calloc(1, sizeof(*t));
    if (!t) {
        log_error("out of memory for the metrics publisher");
        return NULL;
    }
    t->src = *src;
    t->generation = generation;
    t->counters = &metrics->slot[slot];
    t->gauges = &metrics->gauges[generation & 1][slot];
    t->timer = event_new(base, -1, EV_PERSIST, publish_cb, t);
    struct timeval every = clock_timeval(PUBLISH_MS);
    if (!t->timer || event_add(t->timer, &every) < 0) {
        log_error("cannot start the metrics publisher");
        telemetry_free(t);
        return NULL;
    }
    gauge_set(&t->gauges->pid, getpid());
    telemetry_publish(t);
    return t;
}

void telemetry_metrics_server_set(struct telemetry *t, struct http_server *metrics_http)
{
    if (t)
        t->metrics_http = metrics_http;
}

void telemetry_free(struct telemetry *t)
{
    if (!t)
        return;
    telemetry_publish(t);
    if (t->timer)
        event_free(t->timer);
    free(t);
}
