/* metrics: the numbers GET /metrics shows, in a MAP_SHARED table the master maps before the first fork.
 * Each worker adds to its slot's counters and publishes its gauges there; whichever worker takes a
 * scrape renders every slot (worker/telemetry.c). Counters live as long as the master: a respawned or
 * reloaded worker goes on counting in its slot, so a series never goes backwards. */
#ifndef PGAPI_METRICS_H
#define PGAPI_METRICS_H

#include <stdatomic.h>
#include <stdint.h>

#include "common/config.h"
#include "common/consistency.h"
#include "common/http_status.h"

#define METRICS_SLOTS 256 /* config's maximum of workers */
/* The router's routes at most: its hand-written ones (up to 8), then up to 8 standard routes for each
 * resource the consistency state has room for (worker/api/router.c asserts the bound); then the ones
 * below. */
#define METRICS_API_ROUTES_MAX (8 + 8 * CONSISTENCY_TABLES_MAX)
#define METRICS_ROUTES (METRICS_API_ROUTES_MAX + 3)
#define METRICS_ROUTE_NONE (METRICS_ROUTES - 1)      /* answered before routing (bad framing, limits) */
#define METRICS_ROUTE_UNMATCHED (METRICS_ROUTES - 2) /* 404 / 405 */
#define METRICS_ROUTE_SCRAPE (METRICS_ROUTES - 3)    /* the metrics listener itself */
#define METRICS_STATUSES (HTTP_STATUS_COUNT + 1)     /* the codes of common/http_status.h, then "other" */
#define METRICS_BUCKETS 14 /* latency bounds of metrics_bucket_le, the last one +Inf */
#define METRICS_BACKENDS (1 + CONFIG_MAX_REPLICAS) /* 0: the primary, 1 + i: replica i */
#define METRICS_PRIMARY_READS 4                    /* the reasons of enum pool_primary_read */

typedef _Atomic uint64_t metrics_counter;

/* pgapi_ratelimit_total's result label (worker/api/ratelimit.h) */
enum {
    METRICS_RATELIMIT_ALLOWED,
    METRICS_RATELIMIT_LIMITED,
    METRICS_RATELIMIT_LOCAL_ALLOWED,
    METRICS_RATELIMIT_LOCAL_LIMITED,
    METRICS_RATELIMIT_RESULTS
};

/* pgapi_cache_write_through_total's result label: enum cache_through_result (worker/cache/cache.h), in
 * its order */
enum {
    METRICS_THROUGH_STORED,
    METRICS_THROUGH_OLDER,
    METRICS_THROUGH_FENCE,
    METRICS_THROUGH_EPOCH,
    METRICS_THROUGH_UNKNOWN,
    METRICS_THROUGH_LARGE,
    METRICS_THROUGH_RESULTS
};

/* Per slot, only ever added to (by the slot's current and retiring workers at once, hence atomics). */
struct metrics_counters {
    metrics_counter requests[METRICS_ROUTES][METRICS_STATUSES];
    metrics_counter latency[METRICS_ROUTES][METRICS_BUCKETS]; /* per bucket; rendered cumulative */
    metrics_counter latency_us[METRICS_ROUTES];
    metrics_counter queries[METRICS_BACKENDS], query_errors[METRICS_BACKENDS];
    metrics_counter timeouts[2], queue_full[2], batches[2], wait_us[2], replay_samples[2], replica_waits[2];
    metrics_counter primary_reads[METRICS_PRIMARY_READS]; /* by enum pool_primary_read */
    metrics_counter cache_hits, cache_misses, cache_waits, cache_bypasses, cache_fills, cache_invalidations;
    metrics_counter cache_epoch_bumps, cache_invalidation_failures, cache_ping_failures, cache_disconnects;
    metrics_counter redis_master_changes; /* the Sentinels named another Redis master */
    metrics_counter cache_log_reads, cache_log_resets, cache_verifications, cache_purges;
    metrics_counter cache_through[METRICS_THROUGH_RESULTS]; /* write-through, by enum cache_through_result */
    metrics_counter local_hits;
    metrics_counter fill_woken, fill_retried, fill_polled; /* waits for a fill lease (fill_wait.h) */
    metrics_counter connections_refused;
    metrics_counter client_connections_refused; /* at max_connections_per_client */
    metrics_counter slow_readers_closed;        /* closed past max_unsent_bytes */
    metrics_counter ratelimit[METRICS_RATELIMIT_RESULTS];
    metrics_counter auth[8]; /* bearer token checks, by enum auth_result */
};

/* Per (generation parity, slot): what one process last published; the master clears it when that
 * process is reaped. generation 0 = nobody. */
struct metrics_gauges {
    _Atomic uint64_t generation;
    _Atomic int64_t pid, connections, replicas, cache_up, local_entries, local_bytes, unsent_bytes;
    _Atomic int64_t waiting[2];
    _Atomic int64_t in_use[METRICS_BACKENDS], idle[METRICS_BACKENDS], connecting[METRICS_BACKENDS];
    _Atomic int64_t down[METRICS_BACKENDS], up[METRICS_BACKENDS], lag_ms[METRICS_BACKENDS];
    _Atomic int64_t lsn[METRICS_BACKENDS];
};

struct metrics {
    /* the master's */
    metrics_counter worker_starts, worker_restarts, reloads, reloads_refused;
    _Atomic uint64_t generation, workers, start_time_s;
    struct metrics_counters slot[METRICS_SLOTS];
    struct metrics_gauges gauges[2][METRICS_SLOTS];
};

/* Called by the master once, before the first fork; NULL (logged) if the mapping fails. */
struct metrics *metrics_create(void);
void metrics_destroy(struct metrics *m);
/* The master, for a worker it reaped: forgets its gauges unless the block is another process's now. */
void metrics_gauges_vacate(struct metrics *m, int slot, unsigned generation);

static inline void metrics_add(metrics_counter *c, uint64_t n)
{
    atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

static inline uint64_t metrics_get(const metrics_counter *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

/* Status code <-> index into requests[][]; an unlisted code counts as "other" (code 0). */
int metrics_status_index(int status);
int metrics_status_code(int index);
/* Upper bound of latency bucket i in microseconds; 0 for the last (+Inf). */
uint64_t metrics_bucket_le_us(int i);
int metrics_bucket_index(uint64_t us);

#endif
