/* metrics_page: renders the shared metrics table. A scrape reads every slot with relaxed loads: each
 * number is one the slot really had, taken within the scrape (no lock, no worker waits for another). */
#include "worker/metrics_page.h"

#include <http_parser.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/metrics.h"
#include "worker/api/auth.h"
#include "worker/api/router.h"
#include "worker/http/reply.h"
#include "worker/telemetry.h"

#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)

struct metrics_page {
    const struct config *cfg;
    struct metrics *metrics;
    struct telemetry *telemetry;
};

struct page {
    FILE *f;
    const struct metrics *m;
    int nslots;
};

static void family(struct page *pg, const char *name, const char *type, const char *help)
{
    fprintf(pg->f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void route_labels(int route, const char **method, const char **pattern, char *buf, size_t cap)
{
    if (route < router_route_count()) {
        router_route_label(route, method, buf, cap);
        *pattern = buf;
        return;
    }
    *method = "";
    *pattern = "none";
    if (route == METRICS_ROUTE_SCRAPE) {
        *method = "GET";
        *pattern = "/metrics";
    } else if (route == METRICS_ROUTE_UNMATCHED) {
        *pattern = "unmatched";
    }
}

static uint64_t route_count(const struct metrics_counters *c, int route)
{
    uint64_t n = 0;
    for (int b = 0; b < METRICS_BUCKETS; b++)
        n += metrics_get(&c->latency[route][b]);
    return n;
}

static void requests_render(struct page *pg)
{
    family(pg, "pgapi_http_requests_total", "counter", "HTTP requests answered, by route and status.");
    for (int w = 0; w < pg->nslots; w++)
        for (int r = 0; r < METRICS_ROUTES; r++)
            for (int s = 0; s < METRICS_STATUSES; s++) {
                uint64_t n = metrics_get(&pg->m->slot[w].requests[r][s]);
                if (!n)
                    continue;
                const char *method, *pattern;
                char label[ROUTER_PATTERN_MAX];
                route_labels(r, &method, &pattern, label, sizeof(label));
                int code = metrics_status_code(s);
                char status[8] = "other";
                if (code)
                    snprintf(status, sizeof(status), "%d", code);
                fprintf(pg->f,
                        "pgapi_http_requests_total{worker=\"%d\",method=\"%s\",route=\"%s\",status=\"%s\"} "
                        "%llu\n",
                        w, method, pattern, status, (unsigned long long)n);
            }
}

static void latency_render_route(struct page *pg, int w, int r)
{
    const struct metrics_counters *c = &pg->m->slot[w];
    const char *method, *pattern;
    char label[ROUTER_PATTERN_MAX];
    route_labels(r, &method, &pattern, label, sizeof(label));
    uint64_t cumulative = 0;
    for (int b = 0; b < METRICS_BUCKETS; b++) {
        cumulative += metrics_get(&c->latency[r][b]);
        uint64_t le = metrics_bucket_le_us(b);
        char bound[24] = "+Inf";
        if (le)
            snprintf(bound, sizeof(bound), "%g", (double)le / 1e6);
        fprintf(pg->f,
                "pgapi_http_request_duration_seconds_bucket{worker=\"%d\",method=\"%s\",route=\"%s\",le=\"%"
                "s\"} %llu\n",
                w, method, pattern, bound, (unsigned long long)cumulative);
    }
    fprintf(pg->f, "pgapi_http_request_duration_seconds_sum{worker=\"%d\",method=\"%s\",route=\"%s\"} %.6f\n",
            w, method, pattern, (double)metrics_get(&c->latency_us[r]) / 1e6);
    fprintf(pg->f,
            "pgapi_http_request_duration_seconds_count{worker=\"%d\",method=\"%s\",route=\"%s\"} %llu\n", w,
            method, pattern, (unsigned long long)cumulative);
}

static void latency_render(struct page *pg)
{
    family(pg, "pgapi_http_request_duration_seconds", "histogram",
           "Time from a request's first byte to its answer being queued, by route.");
    for (int w = 0; w < pg->nslots; w++)
        for (int r = 0; r < METRICS_ROUTES; r++)
            if (route_count(&pg->m->slot[w], r))
                latency_render_route(pg, w, r);
}

/* The slot's gauge blocks that belong to a live process (a draining one and its successor may share
 * the slot during a reload); newest first. Returns how many. */
static int gauges_live(const struct metrics *m, int slot, const struct metrics_gauges *out[2])
{
    const struct metrics_gauges *a = &m->gauges[0][slot], *b = &m->gauges[1][slot];
    uint64_t ga = LOAD(a->generation), gb = LOAD(b->generation);
    int n = 0;
    if (ga >= gb) {
        if (ga)
            out[n++] = a;
        if (gb)
            out[n++] = b;
    } else {
        out[n++] = b;
        if (ga)
            out[n++] = a;
    }
    return n;
}

static const char *backend_side(int b)
{
    return b == 0 ? "primary" : "replica";
}

static void backend_name(int b, char *buf, size_t cap)
{
    if (b == 0)
        snprintf(buf, cap, "primary");
    else
        snprintf(buf, cap, "replica%d", b - 1);
}

/* Element i of the int64 gauge array at `offset`, summed over the slot's live processes. */
static int64_t gauge_sum(const struct metrics_gauges *const live[2], int n, size_t offset, int i)
{
    int64_t sum = 0;
    for (int k = 0; k < n; k++)
        sum += LOAD(((const _Atomic int64_t *)((const char *)live[k] + offset))[i]);
    return sum;
}

#define GAUGE_OFF(field) offsetof(struct metrics_gauges, field)

static void gauge_line(struct page *pg, const char *name, int w, const char *labels, long long v)
{
    fprintf(pg->f, "%s{worker=\"%d\"%s%s} %lld\n", name, w, labels[0] ? "," : "", labels, v);
}

static int slot_backends(const struct page *pg, int w)
{
    const struct metrics_gauges *live[2];
    int n = gauges_live(pg->m, w, live);
    int replicas = n ? (int)LOAD(live[0]->replicas) : 0;
    return 1 + (replicas < METRICS_BACKENDS - 1 ? replicas : METRICS_BACKENDS - 1);
}

static void pool_connections_render(struct page *pg)
{
    static const char *states[] = { "in_use", "idle", "connecting", "down" };
    family(pg, "pgapi_pool_connections", "gauge",
           "Database connections of each worker's pool, by backend and state.");
    for (int w = 0; w < pg->nslots; w++) {
        const struct metrics_gauges *live[2];
        int n = gauges_live(pg->m, w, live);
        for (int b = 0; b < slot_backends(pg, w) && n; b++) {
            long long v[4] = { gauge_sum(live, n, GAUGE_OFF(in_use), b),
                               gauge_sum(live, n, GAUGE_OFF(idle), b),
                               gauge_sum(live, n, GAUGE_OFF(connecting), b),
                               gauge_sum(live, n, GAUGE_OFF(down), b) };
            char name[24], labels[96];
            backend_name(b, name, sizeof(name));
            for (int s = 0; s < 4; s++) {
                snprintf(labels, sizeof(labels), "side=\"%s\",backend=\"%s\",state=\"%s\"", backend_side(b),
                         name, states[s]);
                gauge_line(pg, "pgapi_pool_connections", w, labels, v[s]);
            }
        }
    }
}

static void backend_counters_render(struct page *pg, const char *metric, const char *help, bool errors)
{
    family(pg, metric, "counter", help);
    for (int w = 0; w < pg->nslots; w++)
        for (int b = 0; b < slot_backends(pg, w); b++) {
            const struct metrics_counters *c = &pg->m->slot[w];
            char name[24];
            backend_name(b, name, sizeof(name));
            uint64_t v = metrics_get(errors ? &c->query_errors[b] : &c->queries[b]);
            fprintf(pg->f, "%s{worker=\"%d\",side=\"%s\",backend=\"%s\"} %llu\n", metric, w, backend_side(b),
                    name, (unsigned long long)v);
        }
}

/* Per-backend gauges, as the slot's newest process last published them. */
static const struct backend_gauge {
    const char *name, *help;
    size_t offset; /* of an int64 array [METRICS_BACKENDS] in struct metrics_gauges */
    int first;     /* 1: replicas only */
    double scale;
    int decimals;
} backend_gauges[] = {
    { "pgapi_backend_up",
      "1 if the backend is in the worker's rotation (healthy, connected, lag within max_replica_lag).",
      offsetof(struct metrics_gauges, up), 0, 1.0, 0 },
    { "pgapi_replica_lag_seconds",
      "Replay lag of each replica as the worker last sampled it (0 when it has replayed everything).",
      offsetof(struct metrics_gauges, lag_ms), 1, 0.001, 3 },
    { "pgapi_backend_wal_lsn_bytes",
      "WAL position as last sampled: the primary's current LSN, a replica's replay LSN.",
      offsetof(struct metrics_gauges, lsn), 0, 1.0, 0 },
};

static void backend_state_render(struct page *pg)
{
    for (size_t i = 0; i < sizeof(backend_gauges) / sizeof(backend_gauges[0]); i++) {
        const struct backend_gauge *g = &backend_gauges[i];
        family(pg, g->name, "gauge", g->help);
        for (int w = 0; w < pg->nslots; w++) {
            const struct metrics_gauges *live[2];
            if (!gauges_live(pg->m, w, live))
                continue;
            const _Atomic int64_t *arr = (const _Atomic int64_t *)((const char *)live[0] + g->offset);
            for (int b = g->first; b < slot_backends(pg, w); b++) {
                char name[24];
                backend_name(b, name, sizeof(name));
                fprintf(pg->f, "%s{worker=\"%d\",side=\"%s\",backend=\"%s\"} %.*f\n", g->name, w,
                        backend_side(b), name, g->decimals, (double)LOAD(arr[b]) * g->scale);
            }
        }
    }
}

/* One counter per worker and side, from the slot's array of two. */
static void side_counter_render(struct page *pg, const char *metric, const char *help, size_t offset,
                                double scale)
{
    family(pg, metric, "counter", help);
    for (int w = 0; w < pg->nslots; w++)
        for (int side = 0; side < 2; side++) {
            const metrics_counter *arr = (const metrics_counter *)((const char *)&pg->m->slot[w] + offset);
            double v = (double)metrics_get(&arr[side]) * scale;
            fprintf(pg->f, "%s{worker=\"%d\",side=\"%s\"} %.*f\n", metric, w, side ? "replica" : "primary",
                    scale == 1.0 ? 0 : 6, v);
        }
}

/* enum pool_primary_read order */
static const char *const primary_read_reasons[METRICS_PRIMARY_READS] = { "newest", "fence", "no_replica",
                                                                         "replicas_busy" };

static void primary_reads_render(struct page *pg)
{
    family(
        pg, "pgapi_pool_primary_reads_total", "counter",
        "Reads run on the primary, by why no replica took them: newest (the read must see the newest data: "
        "its fences are unknown while a Redis store is verified or bypassed, or a commit position is "
        "unknown), fence (no replica in rotation has replayed its fence yet), no_replica (none in "
        "rotation), replicas_busy (the replicas that could serve it were busy and the primary idle).");
    for (int w = 0; w < pg->nslots; w++)
        for (int r = 0; r < METRICS_PRIMARY_READS; r++)
            fprintf(pg->f, "pgapi_pool_primary_reads_total{worker=\"%d\",reason=\"%s\"} %llu\n", w,
                    primary_read_reasons[r],
                    (unsigned long long)metrics_get(&pg->m->slot[w].primary_reads[r]));
}

static void pool_render(struct page *pg)
{
    pool_connections_render(pg);
    family(pg, "pgapi_pool_waiting", "gauge", "Statements queued for a free connection, by side.");
    for (int w = 0; w < pg->nslots; w++) {
        const struct metrics_gauges *live[2];
        int n = gauges_live(pg->m, w, live);
        if (!n)
            continue;
        gauge_line(pg, "pgapi_pool_waiting", w, "side=\"primary\"",
                   gauge_sum(live, n, GAUGE_OFF(waiting), 0));
        gauge_line(pg, "pgapi_pool_waiting", w, "side=\"replica\"",
                   gauge_sum(live, n, GAUGE_OFF(waiting), 1));
    }
    backend_counters_render(pg, "pgapi_pool_queries_total", "Statements answered, by backend.", false);
    backend_counters_render(pg, "pgapi_pool_errors_total",
                            "Statements answered with an error (SQL, broken, timed out), by backend.", true);
    side_counter_render(pg, "pgapi_pool_timeouts_total",
                        "Statements or queue waits that ran out of time, by side.",
                        offsetof(struct metrics_counters, timeouts), 1.0);
    side_counter_render(pg, "pgapi_pool_queue_full_total",
                        "Statements refused because the side's queue was full.",
                        offsetof(struct metrics_counters, queue_full), 1.0);
    side_counter_render(pg, "pgapi_pool_batches_total",
                        "Statements that ran several queued requests at once.",
                        offsetof(struct metrics_counters, batches), 1.0);
    side_counter_render(pg, "pgapi_pool_replay_samples_total",
                        "Replay positions learned from the replicas' reads (the replica side only).",
                        offsetof(struct metrics_counters, replay_samples), 1.0);
    side_counter_render(pg, "pgapi_pool_replica_waits_total",
                        "Reads that waited (replica_wait) for a replica to replay their fence, by where they "
                        "ran: replica (one replayed it within the wait), primary (none did, or every "
                        "replica connection was busy and the primary idle).",
                        offsetof(struct metrics_counters, replica_waits), 1.0);
    side_counter_render(pg, "pgapi_pool_wait_seconds_total", "Time statements spent queued for a connection.",
                        offsetof(struct metrics_counters, wait_us), 1e-6);
    primary_reads_render(pg);
    backend_state_render(pg);
}

static void slot_counter_render(struct page *pg, const char *metric, const char *labels, size_t offset)
{
    for (int w = 0; w < pg->nslots; w++) {
        const metrics_counter *c = (const metrics_counter *)((const char *)&pg->m->slot[w] + offset);
        fprintf(pg->f, "%s{worker=\"%d\"%s%s} %llu\n", metric, w, labels[0] ? "," : "", labels,
                (unsigned long long)metrics_get(c));
    }
}

#define SLOT_COUNTER(pg, metric, labels, field) \
    slot_counter_render(pg, metric, labels, offsetof(struct metrics_counters, field))

static void cache_render(struct page *pg)
{
    family(pg, "pgapi_cache_lookups_total", "counter",
           "Cache lookups by layer and result: local (the worker's own copies) hits; redis hit, miss (this "
           "request fills it), wait (another fills it), bypass (Redis unusable or its epoch in doubt).");
    SLOT_COUNTER(pg, "pgapi_cache_lookups_total", "layer=\"local\",result=\"hit\"", local_hits);
    SLOT_COUNTER(pg, "pgapi_cache_lookups_total", "layer=\"redis\",result=\"hit\"", cache_hits);
    SLOT_COUNTER(pg, "pgapi_cache_lookups_total", "layer=\"redis\",result=\"miss\"", cache_misses);
    SLOT_COUNTER(pg, "pgapi_cache_lookups_total", "layer=\"redis\",result=\"wait\"", cache_waits);
    SLOT_COUNTER(pg, "pgapi_cache_lookups_total", "layer=\"redis\",result=\"bypass\"", cache_bypasses);
    family(
        pg, "pgapi_cache_fill_waits_total", "counter",
        "How reads that found another request filling their key waited: woken (answered by the fill of "
        "a request of the same worker), retried (that fill failed or could not serve them: looked up again "
        "at once), polled (one timed Redis poll each, the lease being another worker's or server's).");
    SLOT_COUNTER(pg, "pgapi_cache_fill_waits_total", "result=\"woken\"", fill_woken);
    SLOT_COUNTER(pg, "pgapi_cache_fill_waits_total", "result=\"retried\"", fill_retried);
    SLOT_COUNTER(pg, "pgapi_cache_fill_waits_total", "result=\"polled\"", fill_polled);
    family(pg, "pgapi_cache_errors_total", "counter",
           "Redis failures: failed invalidations (the cache then moves to a new epoch), failed pings, lost "
           "connections.");
    SLOT_COUNTER(pg, "pgapi_cache_errors_total", "kind=\"invalidation\"", cache_invalidation_failures);
    SLOT_COUNTER(pg, "pgapi_cache_errors_total", "kind=\"ping\"", cache_ping_failures);
    SLOT_COUNTER(pg, "pgapi_cache_errors_total", "kind=\"disconnect\"", cache_disconnects);
    family(
        pg, "pgapi_redis_master_changes_total", "counter",
        "Times the Redis Sentinels named another master than the one a worker's link used (the new store is "
        "verified before it is trusted).");
    SLOT_COUNTER(pg, "pgapi_redis_master_changes_total", "", redis_master_changes);
    family(pg, "pgapi_cache_fills_total", "counter", "Values written to Redis after a miss.");
    SLOT_COUNTER(pg, "pgapi_cache_fills_total", "", cache_fills);
    family(pg, "pgapi_cache_invalidations_total", "counter", "Invalidations sent after committed writes.");
    SLOT_COUNTER(pg, "pgapi_cache_invalidations_total", "", cache_invalidations);
    family(pg, "pgapi_cache_write_through_total", "counter",
           "Rows of committed writes offered to Redis ([redis] write_through): stored, or refused (then "
           "only deleted) because a newer version was recorded (older), the commit LSN did not pass the "
           "key's fence (fence), the epoch moved or the store was not verified (epoch), the commit LSN was "
           "unknown (unknown), the row was over max_value_bytes (large).");
    static const char *const through[METRICS_THROUGH_RESULTS] = {
        [METRICS_THROUGH_STORED] = "result=\"stored\"",   [METRICS_THROUGH_OLDER] = "result=\"older\"",
        [METRICS_THROUGH_FENCE] = "result=\"fence\"",     [METRICS_THROUGH_EPOCH] = "result=\"epoch\"",
        [METRICS_THROUGH_UNKNOWN] = "result=\"unknown\"", [METRICS_THROUGH_LARGE] = "result=\"large\"",
    };
    for (int i = 0; i < METRICS_THROUGH_RESULTS; i++)
        SLOT_COUNTER(pg, "pgapi_cache_write_through_total", through[i], cache_through[i]);
    family(pg, "pgapi_cache_epoch_bumps_total", "counter",
           "Times the cache moved to a new epoch (everything cached before is dropped).");
    SLOT_COUNTER(pg, "pgapi_cache_epoch_bumps_total", "", cache_epoch_bumps);
    family(pg, "pgapi_cache_deployment_events_total", "counter",
           "The deployment's fences in Redis: fence log reads (each serves every local hit waiting), resets "
           "(entries lost: every local copy dropped), store verifications after lost state, purges applied.");
    SLOT_COUNTER(pg, "pgapi_cache_deployment_events_total", "event=\"log_read\"", cache_log_reads);
    SLOT_COUNTER(pg, "pgapi_cache_deployment_events_total", "event=\"log_reset\"", cache_log_resets);
    SLOT_COUNTER(pg, "pgapi_cache_deployment_events_total", "event=\"verification\"", cache_verifications);
    SLOT_COUNTER(pg, "pgapi_cache_deployment_events_total", "event=\"purge\"", cache_purges);
    family(pg, "pgapi_http_connections_refused_total", "counter",
           "Connections answered 503 at max_connections.");
    SLOT_COUNTER(pg, "pgapi_http_connections_refused_total", "", connections_refused);
    family(pg, "pgapi_http_client_connections_refused_total", "counter",
           "Connections answered 503 because their client address was at max_connections_per_client.");
    SLOT_COUNTER(pg, "pgapi_http_client_connections_refused_total", "", client_connections_refused);
    family(
        pg, "pgapi_http_slow_readers_closed_total", "counter",
        "Connections closed because their client did not read while the worker was over max_unsent_bytes.");
    SLOT_COUNTER(pg, "pgapi_http_slow_readers_closed_total", "", slow_readers_closed);
    family(pg, "pgapi_ratelimit_total", "counter",
           "Rate limiter decisions on the API routes: allowed or limited in Redis (every server's shared "
           "budget), or by a worker alone while Redis could not answer (local_allowed, local_limited).");
    SLOT_COUNTER(pg, "pgapi_ratelimit_total", "result=\"allowed\"", ratelimit[METRICS_RATELIMIT_ALLOWED]);
    SLOT_COUNTER(pg, "pgapi_ratelimit_total", "result=\"limited\"", ratelimit[METRICS_RATELIMIT_LIMITED]);
    SLOT_COUNTER(pg, "pgapi_ratelimit_total", "result=\"local_allowed\"",
                 ratelimit[METRICS_RATELIMIT_LOCAL_ALLOWED]);
    SLOT_COUNTER(pg, "pgapi_ratelimit_total", "result=\"local_limited\"",
                 ratelimit[METRICS_RATELIMIT_LOCAL_LIMITED]);
}

static void auth_render(struct page *pg)
{
    char labels[64];
    family(pg, "pgapi_auth_total", "counter",
           "Bearer token checks of API requests ([auth] mode = required), by result: ok, missing (no bearer "
           "token), invalid, expired, insufficient_scope.");
    for (int r = 0; r < AUTH_RESULTS; r++) {
        snprintf(labels, sizeof(labels), "result=\"%s\"", auth_result_label((enum auth_result)r));
        slot_counter_render(pg, "pgapi_auth_total", labels,
                            offsetof(struct metrics_counters, auth) + (size_t)r * sizeof(metrics_counter));
    }
}

static void process_gauges_render(struct page *pg)
{
    static const struct {
        const char *name, *help;
        size_t off;
        bool sum;
    } g[] = {
        { "pgapi_http_connections", "Open client connections.", offsetof(struct metrics_gauges, connections),
          true },
        { "pgapi_http_unsent_bytes",
          "Response bytes held for clients, not yet taken by the kernel (bounded by max_unsent_bytes).",
          offsetof(struct metrics_gauges, unsent_bytes), true },
        { "pgapi_cache_up", "1 if the worker's Redis connection is up.",
          offsetof(struct metrics_gauges, cache_up), false },
        { "pgapi_local_cache_entries", "Values in the worker's local cache.",
          offsetof(struct metrics_gauges, local_entries), false },
        { "pgapi_local_cache_bytes", "Bytes the worker's local cache holds.",
          offsetof(struct metrics_gauges, local_bytes), false },
        { "pgapi_worker_pid",
          "Process id of the worker serving the slot (the newest when two share it in a reload).",
          offsetof(struct metrics_gauges, pid), false },
    };
    for (size_t i = 0; i < sizeof(g) / sizeof(g[0]); i++) {
        family(pg, g[i].name, "gauge", g[i].help);
        for (int w = 0; w < pg->nslots; w++) {
            const struct metrics_gauges *live[2];
            int n = gauges_live(pg->m, w, live);
            /* connections and unsent bytes add up over a slot's two processes; the rest are the newest's */
            if (n)
                gauge_line(pg, g[i].name, w, "", gauge_sum(live, g[i].sum ? n : 1, g[i].off, 0));
        }
    }
}

/* A label value: backslash, quote and newline escaped (Prometheus text format); bounded. */
static void label_escape(char *out, size_t cap, const char *v)
{
    size_t n = 0;
    for (; v && *v && n + 3 < cap; v++) {
        if (*v == '\\' || *v == '"' || *v == '\n')
            out[n++] = '\\';
        out[n++] = *v == '\n' ? 'n' : *v;
    }
    out[n] = '\0';
}

/* host, port and dbname of a conninfo; never its password or other options. */
static void backend_info_render(struct page *pg, int b, const char *dsn)
{
    char *err = NULL, host[160] = "", port[16] = "", db[160] = "", name[24];
    PQconninfoOption *opts = PQconninfoParse(dsn, &err);
    if (!opts) {
        PQfreemem(err);
        return;
    }
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val)
            continue;
        if (strcmp(o->keyword, "host") == 0 || (strcmp(o->keyword, "hostaddr") == 0 && !host[0]))
            label_escape(host, sizeof(host), o->val);
        else if (strcmp(o->keyword, "port") == 0)
            label_escape(port, sizeof(port), o->val);
        else if (strcmp(o->keyword, "dbname") == 0)
            label_escape(db, sizeof(db), o->val);
    }
    PQconninfoFree(opts);
    backend_name(b, name, sizeof(name));
    fprintf(pg->f, "pgapi_backend_info{side=\"%s\",backend=\"%s\",host=\"%s\",port=\"%s\",dbname=\"%s\"} 1\n",
            backend_side(b), name, host, port, db);
}

static void master_render(struct page *pg, const struct config *cfg)
{
    const struct metrics *m = pg->m;
    family(pg, "pgapi_build_info", "gauge", "Version of the running binary.");
    fprintf(pg->f, "pgapi_build_info{version=\"%s\"} 1\n", PGAPI_VERSION);
    family(pg, "pgapi_start_time_seconds", "gauge", "When the master started (Unix time).");
    fprintf(pg->f, "pgapi_start_time_seconds %llu\n", (unsigned long long)LOAD(m->start_time_s));
    family(pg, "pgapi_generation", "gauge",
           "Configuration generation serving (1 at start, +1 per accepted reload).");
    fprintf(pg->f, "pgapi_generation %llu\n", (unsigned long long)LOAD(m->generation));
    family(pg, "pgapi_workers", "gauge", "Worker processes the configuration asks for.");
    fprintf(pg->f, "pgapi_workers %llu\n", (unsigned long long)LOAD(m->workers));
    family(pg, "pgapi_worker_restarts_total", "counter",
           "Workers started again after one died unexpectedly (a signal or a failed exit).");
    fprintf(pg->f, "pgapi_worker_restarts_total %llu\n",
            (unsigned long long)metrics_get(&m->worker_restarts));
    family(pg, "pgapi_worker_starts_total", "counter",
           "Worker processes started (first start, restarts, reloads).");
    fprintf(pg->f, "pgapi_worker_starts_total %llu\n", (unsigned long long)metrics_get(&m->worker_starts));
    family(pg, "pgapi_reloads_total", "counter",
           "Reloads (SIGHUP) by result: ok, or refused (bad configuration, cannot listen).");
    fprintf(pg->f, "pgapi_reloads_total{result=\"ok\"} %llu\npgapi_reloads_total{result=\"refused\"} %llu\n",
            (unsigned long long)metrics_get(&m->reloads),
            (unsigned long long)metrics_get(&m->reloads_refused));
    family(pg, "pgapi_backend_info", "gauge",
           "Where each backend points (from the configuration; no credentials).");
    backend_info_render(pg, 0, cfg->primary_dsn);
    for (int i = 0; i < cfg->replica_count; i++)
        backend_info_render(pg, i + 1, cfg->replica_dsn[i]);
}

/* Slots to show: the configured workers, and any slot a live process still publishes in (after a
 * reload to fewer workers, the old ones until they have drained). */
static int slots_shown(const struct metrics *m, int workers)
{
    int n = workers < METRICS_SLOTS ? workers : METRICS_SLOTS;
    for (int i = n; i < METRICS_SLOTS; i++)
        if (LOAD(m->gauges[0][i].generation) || LOAD(m->gauges[1][i].generation))
            n = i + 1;
    return n;
}

static char *page_render(const struct metrics_page *mp, size_t *len)
{
    char *buf = NULL;
    struct page pg = { .f = open_memstream(&buf, len), .m = mp->metrics };
    if (!pg.f)
        return NULL;
    telemetry_publish(mp->telemetry); /* this worker's own numbers as of now; the others' are <= 1 s old */
    pg.nslots = slots_shown(mp->metrics, mp->cfg->workers);
    master_render(&pg, mp->cfg);
    process_gauges_render(&pg);
    requests_render(&pg);
    latency_render(&pg);
    pool_render(&pg);
    cache_render(&pg);
    auth_render(&pg);
    if (fclose(pg.f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

struct metrics_page *metrics_page_new(const struct config *cfg, struct metrics *metrics,
                                      struct telemetry *telemetry)
{
    struct metrics_page *mp = malloc(sizeof(*mp));
    if (!mp) {
        log_error("out of memory for the metrics page");
        return NULL;
    }
    *mp = (struct metrics_page){ .cfg = cfg, .metrics = metrics, .telemetry = telemetry };
    return mp;
}

void metrics_page_free(struct metrics_page *mp)
{
    free(mp);
}

void metrics_page_dispatch(struct http_request *req)
{
    const struct metrics_page *mp = req->ctx;
    req->route = METRICS_ROUTE_SCRAPE;
    if (strcmp(req->path, "/metrics") != 0) {
        req->route = METRICS_ROUTE_UNMATCHED;
        reply_error(req, 404, "not_found", "this listener serves GET /metrics only");
        return;
    }
    if (req->method != HTTP_GET && req->method != HTTP_HEAD) {
        http_header_add(req, "Allow", "GET, HEAD");
        reply_error(req, 405, "method_not_allowed", "%s is not allowed here; allowed: GET, HEAD",
                    req->method_name);
        return;
    }
    size_t len = 0;
    char *body = mp->metrics ? page_render(mp, &len) : NULL;
    if (!body) {
        log_error("request %s: cannot render the metrics page", req->request_id);
        reply_error(req, 500, "internal", "cannot render the metrics");
        return;
    }
    http_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", body, len);
    free(body);
}
