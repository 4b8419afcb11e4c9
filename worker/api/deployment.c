/* deployment: the glue between the cache's deployment protocol (cache.h), the shared fences
 * (consistency.h, named by effects.h) and the pool. Why each step keeps the guarantee:
 * docs/consistency.md, "Several servers". */
#include "worker/api/deployment.h"

#include <event2/event.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/config.h"
#include "common/consistency.h"
#include "common/log.h"
#include "worker/api/api.h"
#include "worker/api/effects.h"
#include "worker/cache/cache.h"
#include "worker/db/pool.h"

static const char SQL_PRIMARY_LSN[] = "SELECT pg_current_wal_lsn()::text";
static const char SQL_PURGE_READ[] = "SELECT gen::text, lsn::text, primary_id FROM pgapi_cache_purge";
static const char SQL_PURGE_READ_0005[] = "SELECT gen::text, lsn::text, '' FROM pgapi_cache_purge";
/* The primary's identity as the health check prints it (worker/db/health.c), computed where it runs. */
#define PRIMARY_ID_SQL                                                     \
    "(SELECT system_identifier FROM pg_control_system())::text || '/' || " \
    "substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"
/* Once per new primary for the whole deployment: the workers that race here update one row once. The
 * first primary ever named (the record fresh from migration 0006) only gets its name: there is no
 * former one whose data a cache could hold. Returns the gen, the primary named and the one before. */
static const char SQL_PURGE_PRIMARY[] =
    "WITH old AS (SELECT primary_id AS was FROM pgapi_cache_purge FOR UPDATE) "
    "UPDATE pgapi_cache_purge SET gen = gen + (old.was <> '')::int, lsn = CASE WHEN old.was = '' THEN lsn "
    "ELSE greatest(lsn, pg_current_wal_lsn()) END, primary_id = " PRIMARY_ID_SQL " FROM old WHERE "
    "primary_id IS DISTINCT FROM " PRIMARY_ID_SQL " RETURNING gen::text, primary_id, old.was";
/* Sent after the write committed: the primary's position then is past its commit (known or not). */
static const char SQL_PURGE_RECORD[] = "UPDATE pgapi_cache_purge SET gen = gen + 1, lsn = greatest(lsn, "
                                       "pg_current_wal_lsn()) RETURNING gen::text, lsn::text";

struct deployment {
    struct api_context *api;
    bool on;
    /* the fence log: the read under way serves `covered`; requests arriving meanwhile wait in `queued`
     * for the next one (a read sent before they arrived may miss a fence logged just before) */
    bool sync_inflight;
    struct deployment_wait *covered, *queued;
    struct event *purge_ev;
    bool purge_read_inflight;
    bool purge_read_once;      /* the purge record was read (or found missing) at least once */
    bool purge_missing_logged; /* the purge table is missing (migrations not run): said once */
    bool purge_0005;           /* migration 0006 not applied: no primary_id column (said once) */
    bool primary_purge_inflight;
    bool doubt_purge_wanted, doubt_purge_inflight; /* see deployment_purge_soon */
    /* A purge for the cache-dirty flag covers what committed before it; a worker that died (the flag's
     * main cause) may have left a statement that commits later, until statement_timeout: a second purge
     * then covers it. */
    struct event *late_purge_ev;
    bool late_purge_armed;
    uint64_t deaths_seen; /* consistency_worker_deaths as of the last dirty purge */
};

bool deployment_on(const struct deployment *d)
{
    return d && d->on;
}

/* ---- the fence log ---------------------------------------------------------------------------- */

/* One entry: another server's write raised these fences (names separated by spaces). */
static void log_apply(void *arg, const struct cache_log_entry *e)
{
    struct deployment *d = arg;
    const char *p = e->names, *end = e->names + e->len;
    while (p < end) {
        const char *sp = memchr(p, ' ', (size_t)(end - p));
        size_t n = sp ? (size_t)(sp - p) : (size_t)(end - p);
        struct consistency_ref ref;
        if (n && effects_fence_parse(p, n, &ref) && consistency_ref_valid(d->api->consistency, ref)) {
            if (e->unknown)
                consistency_unknown_mark(d->api->consistency, ref.table);
            else
                consistency_ref_raise(d->api->consistency, ref, e->lsn);
        }
        p += n + 1;
    }
}

static void sync_send(struct deployment *d);

static void sync_done(void *arg, enum cache_sync_result r)
{
    struct deployment *d = arg;
    d->sync_inflight = false;
    if (r == CACHE_SYNC_RESET)
        consistency_local_drop(d->api->consistency);
    struct deployment_wait *w = d->covered;
    d->covered = NULL;
    while (w) {
        struct deployment_wait *next = w->next;
        w->cb(w, r != CACHE_SYNC_FAILED);
        w = next;
    }
    if (d->queued && !d->sync_inflight)
        sync_send(d);
}

static void sync_send(struct deployment *d)
{
    d->covered = d->queued;
    d->queued = NULL;
    d->sync_inflight = true;
    cache_sync(d->api->cache, log_apply, sync_done, d);
}

void deployment_sync_wait(struct deployment *d, struct deployment_wait *w)
{
    if (!deployment_on(d)) {
        w->cb(w, false);
        return;
    }
    w->next = d->queued;
    d->queued = w;
    if (!d->sync_inflight)
        sync_send(d);
}

/* ---- the primary's position, for a store that lost its state --------------------------------- */

static void primary_lsn_done(void *arg, const struct pool_result *r)
{
    struct deployment *d = arg;
    uint64_t lsn = 0;
    bool ok =
        r->status == POOL_OK && PQntuples(r->res) == 1 && pool_lsn_parse(PQgetvalue(r->res, 0, 0), &lsn) == 0;
    cache_primary_lsn_done(d->api->cache, ok, lsn);
}

static void primary_lsn_read(void *arg, struct cache *c)
{
    (void)c;
    struct deployment *d = arg;
    struct pool_query q = { .sql = SQL_PRIMARY_LSN };
    pool_read(d->api->pool, &q, POOL_LSN_NONE, primary_lsn_done, d);
}

/* ---- purges ----------------------------------------------------------------------------------- */

static void primary_purge_recorded(void *arg, const struct pool_result *r)
{
    struct deployment *d = arg;
    d->primary_purge_inflight = false;
    /* no row: another worker recorded it first; an error: the next purge read tries again */
    if (r->status != POOL_OK || PQntuples(r->res) != 1 || PQnfields(r->res) != 3)
        return;
    if (PQgetvalue(r->res, 0, 2)[0])
        log_warn("deployment: purge %s recorded for a new primary (%s, was %s): every server drops what it "
                 "cached from the former one",
                 PQgetvalue(r->res, 0, 0), PQgetvalue(r->res, 0, 1), PQgetvalue(r->res, 0, 2));
    else
        log_info("deployment: the purge record names its first primary (%s)", PQgetvalue(r->res, 0, 1));
}

/* The purge record names another primary than the one this worker's health check sees: record the
 * purge for the new one (docs/consistency.md, "High availability"). */
static void primary_purge_record(struct deployment *d)
{
    if (d->primary_purge_inflight)
        return;
    d->primary_purge_inflight = true;
    struct pool_query q = { .sql = SQL_PURGE_PRIMARY };
    pool_write(d->api->pool, &q, primary_purge_recorded, d);
}

static void purge_read_done(void *arg, const struct pool_result *r)
{
    struct deployment *d = arg;
    d->purge_read_inflight = false;
    d->purge_read_once = true;
    uint64_t lsn;
    if (r->status == POOL_ERR_SQL && strcmp(r->sqlstate, "42P01") == 0) {
        if (!d->purge_missing_logged)
            log_warn("deployment: table pgapi_cache_purge is missing (run pgapi migrate): purges by other "
                     "servers are not seen");
        d->purge_missing_logged = true;
        return;
    }
    if (r->status == POOL_ERR_SQL && strcmp(r->sqlstate, "42703") == 0 && !d->purge_0005) {
        log_warn(
            "deployment: pgapi_cache_purge has no primary_id (run pgapi migrate): a new primary is purged "
            "for only by a server that saw the former one");
        d->purge_0005 = true;
        return;
    }
    if (r->status != POOL_OK || PQntuples(r->res) != 1 || PQnfields(r->res) != 3 ||
        pool_lsn_parse(PQgetvalue(r->res, 0, 1), &lsn) < 0)
        return; /* the primary is down or busy: read again next interval (the pool logged why) */
    d->purge_missing_logged = false;
    cache_purge_seen(d->api->cache, strtoull(PQgetvalue(r->res, 0, 0), NULL, 10), lsn);
    const char *recorded = PQgetvalue(r->res, 0, 2), *seen = pool_primary_id(d->api->pool);
    if (!d->purge_0005 && seen[0] && strcmp(recorded, seen) != 0)
        primary_purge_record(d);
}

static void purge_read(struct deployment *d)
{
    if (d->purge_read_inflight || !pool_primary_up(d->api->pool))
        return;
    d->purge_read_inflight = true;
    struct pool_query q = { .sql = d->purge_0005 ? SQL_PURGE_READ_0005 : SQL_PURGE_READ };
    pool_read(d->api->pool, &q, POOL_LSN_NONE, purge_read_done, d);
}

static void doubt_purge_recorded(void *arg, const struct pool_result *r)
{
    struct deployment *d = arg;
    d->doubt_purge_inflight = false;
    if (r->status != POOL_OK || PQntuples(r->res) != 1)
        return; /* the next interval tries again */
    d->doubt_purge_wanted = false;
    log_warn(
        "deployment: purge %s recorded after writes whose outcome is unknown: every server drops what it "
        "cached before them",
        PQgetvalue(r->res, 0, 0));
}

/* Once the primary answers: the purge that deployment_purge_soon asked for. */
static void doubt_purge_record(struct deployment *d)
{
    if (!d->doubt_purge_wanted || d->doubt_purge_inflight || !pool_primary_up(d->api->pool))
        return;
    d->doubt_purge_inflight = true;
    deployment_purge_record(d, doubt_purge_recorded, d);
}

void deployment_purge_soon(struct deployment *d)
{
    d->doubt_purge_wanted = true;
}

static void purge_read_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    purge_read(arg);
    doubt_purge_record(arg);
}

bool deployment_settled(struct deployment *d)
{
    if (!deployment_on(d) || d->purge_read_once)
        return true;
    purge_read(d);
    return false;
}

void deployment_purge_record(struct deployment *d, pool_cb cb, void *arg)
{
    struct pool_query q = { .sql = SQL_PURGE_RECORD };
    pool_write(d->api->pool, &q, cb, arg);
}

/* The cache-dirty flag's purge (cache_hooks.purge). */
/* How long a statement sent before now may still commit: the statement bound, with a margin (a minute
 * when statements are not bounded). */
static int late_purge_ms(const struct config *cfg)
{
    return cfg->statement_timeout_ms > 0 ? cfg->statement_timeout_ms + 1000 : 60000;
}

static void dirty_purge_recorded(void *arg, const struct pool_result *r)
{
    struct deployment *d = arg;
    uint64_t lsn = 0;
    bool ok =
        r->status == POOL_OK && PQntuples(r->res) == 1 && pool_lsn_parse(PQgetvalue(r->res, 0, 1), &lsn) == 0;
    if (ok)
        log_warn(
            "deployment: purge %s recorded on the primary (this server's cache was in doubt): every server "
            "drops what it cached before it",
            PQgetvalue(r->res, 0, 0));
    else
        log_warn("deployment: recording a purge on the primary failed (%s): tried again shortly",
                 r->message && r->message[0] ? r->message : "no answer");
    cache_purge_recorded(d->api->cache, ok, ok ? strtoull(PQgetvalue(r->res, 0, 0), NULL, 10) : 0, lsn);
    uint64_t deaths = consistency_worker_deaths(d->api->consistency);
    bool died = deaths != d->deaths_seen; /* not for a failed invalidation: that write's commit is known */
    if (ok)
        d->deaths_seen = deaths;
    if (ok && died && !d->late_purge_armed) {
        struct timeval tv = clock_timeval(late_purge_ms(d->api->cfg));
        d->late_purge_armed = event_add(d->late_purge_ev, &tv) == 0;
    }
}

static void dirty_purge_record(void *arg, struct cache *c)
{
    (void)c;
    struct deployment *d = arg;
    deployment_purge_record(d, dirty_purge_recorded, d);
}

static void late_purge_recorded(void *arg, const struct pool_result *r)
{
    struct deployment *d = arg;
    uint64_t lsn = 0;
    if (r->status == POOL_OK && PQntuples(r->res) == 1 &&
        pool_lsn_parse(PQgetvalue(r->res, 0, 1), &lsn) == 0) {
        log_info(
            "deployment: purge %s recorded on the primary after statement_timeout: a statement of a worker "
            "that died could have committed until then",
            PQgetvalue(r->res, 0, 0));
        cache_purge_seen(d->api->cache, strtoull(PQgetvalue(r->res, 0, 0), NULL, 10), lsn);
    } else {
        log_warn("deployment: recording the late purge failed (%s)",
                 r->message && r->message[0] ? r->message : "no answer");
    }
}

static void late_purge_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct deployment *d = arg;
    d->late_purge_armed = false;
    deployment_purge_record(d, late_purge_recorded, d);
}

/* ---- lifetime --------------------------------------------------------------------------------- */

struct deployment *deployment_new(struct api_context *api)
{
    struct deployment *d = calloc(1, sizeof(*d));
    if (!d) {
        log_error("deployment: out of memory");
        return NULL;
    }
    d->api = api;
    d->on = api->cfg->redis_enabled && api->cfg->deployment_fences;
    d->deaths_seen = 0; /* deaths before it started count: a respawned worker often records their purge */
    if (!d->on)
        return d;
    cache_set_hooks(api->cache, &(struct cache_hooks){
                                    .primary_lsn = primary_lsn_read, .purge = dirty_purge_record, .arg = d });
    d->purge_ev = event_new(api->base, -1, EV_PERSIST, purge_read_cb, d);
    d->late_purge_ev = evtimer_new(api->base, late_purge_cb, d);
    struct timeval tv = clock_timeval(api->cfg->health_interval_ms);
    if (!d->purge_ev || !d->late_purge_ev || event_add(d->purge_ev, &tv) < 0) {
        log_error("deployment: cannot start the purge check");
        deployment_free(d);
        return NULL;
    }
    return d;
}

void deployment_free(struct deployment *d)
{
    if (!d)
        return;
    if (d->purge_ev)
        event_free(d->purge_ev);
    if (d->late_purge_ev)
        event_free(d->late_purge_ev);
    free(d);
}
