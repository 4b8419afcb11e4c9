/* health: the periodic health check of every backend: the primary's WAL position, recovery state and
 * identity; a replica's replay position and lag. A backend enters or leaves rotation here. */
#include "worker/db/health.h"

#include <inttypes.h>
#include <stdlib.h>

#include "common/log.h"
#include "worker/db/pgconn.h"
#include "worker/db/queue.h"
#include "worker/db/route.h"

/* Position, whether it is (still or now) a standby, and its identity: system identifier and the timeline
 * WAL is written on (a promotion starts a new one; pg_walfile_name's first 8 hex digits). */
static const char SQL_PRIMARY_HEALTH[] =
    "SELECT CASE WHEN pg_is_in_recovery() THEN '0/0' ELSE pg_current_wal_lsn()::text END, "
    "pg_is_in_recovery(),"
    " (SELECT system_identifier FROM pg_control_system())::text,"
    " CASE WHEN pg_is_in_recovery() THEN '' ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END";
/* Replay position (on a node no longer in recovery, one byte short of its WAL position: a commit flushed
 * there may not be visible yet, route_primary_data_lsn), lag, whether it streams from a primary, and
 * whether the role can tell: a standby whose WAL receiver is not streaming (its primary is gone, or the
 * new one refuses its diverged history: the receiver then restarts every wal_retrieve_retry_interval and
 * fails) is "detached". A role without pg_read_all_stats sees only the receiver's pid, and a receiver
 * that exists then counts as streaming. */
static const char SQL_REPLICA_HEALTH[] =
    "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() - 1 "
    "END::text,"
    " COALESCE((extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000)::bigint, 0),"
    " pg_is_in_recovery() AND NOT EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE pid IS NOT NULL"
    " AND COALESCE(status, 'streaming') = 'streaming'),"
    " EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE pid IS NOT NULL AND status IS NULL)";

/* The primary's address now leads to a standby (a failover demoted it, or PgBouncer or a multi-host
 * conninfo points at the wrong node): out of rotation. conn_deliver then drops the primary's idle
 * connections so that new ones are made (a conninfo with target_session_attrs=read-write then finds
 * the new primary). */
void health_primary_in_recovery(struct backend *be)
{
    if (!be->in_recovery)
        log_error("primary: the server is in recovery (a standby): writes fail until it is a primary again; "
                  "reconnecting");
    be->in_recovery = true;
    route_backend_down(be, "in recovery");
}

/* A new primary identity (promotion, another cluster): rows its predecessor acknowledged but never
 * shipped may sit in the cache; it is bypassed until it moves to a new epoch. */
static void primary_identity_check(struct pool *p, const PGresult *res)
{
    const char *sysid = PQgetvalue(res, 0, 2), *timeline = PQgetvalue(res, 0, 3);
    uint64_t id = strtoull(sysid, NULL, 10) ^ (strtoull(timeline, NULL, 16) * 0x9E3779B97F4A7C15ULL);
    if (p->primary_identity && p->primary_identity != id) {
        log_warn("primary: new timeline %s: every replica gets reads again only once it streams from it",
                 timeline);
        for (int i = 0; i < p->nreplicas; i++) {
            p->replicas[i].unproven = true;
            p->replicas[i].resets++;
        }
    }
    p->primary_identity = id;
    snprintf(p->primary_id, sizeof(p->primary_id), "%.20s/%.8s", sysid, timeline);
    if (p->consistency && consistency_primary_seen(p->consistency, id)) {
        log_warn("primary: a new primary (system %s, timeline %s): the cache is bypassed until it moves to "
                 "a new epoch",
                 sysid, timeline);
        consistency_cache_dirty_set(p->consistency);
    }
}

static void primary_health_apply(struct backend *be, const struct pool_result *r, bool was)
{
    struct pool *p = be->pool;
    uint64_t lsn;
    if (r->status != POOL_OK || PQntuples(r->res) != 1 || PQnfields(r->res) != 4 ||
        pool_lsn_parse(PQgetvalue(r->res, 0, 0), &lsn) < 0) {
        route_backend_down(be, r->message && r->message[0] ? r->message : "health check failed");
        return;
    }
    if (PQgetvalue(r->res, 0, 1)[0] == 't') {
        health_primary_in_recovery(be);
        return;
    }
    be->lsn = lsn;
    be->healthy = true;
    be->in_recovery = false;
    primary_identity_check(p, r->res);
    if (p->consistency)
        consistency_primary_position_note(p->consistency, p->primary_identity, be->lsn);
    if (p->floor_lsn == 0 && be->lsn != 0)
        p->floor_lsn = be->lsn;
    if (p->consistency)
        consistency_unknown_resolve(p->consistency, p->health_marks, be->lsn);
    if (!was)
        log_info("primary: healthy (lsn %" PRIX64 "): in rotation", be->lsn);
}

/* Logged on each change: a detached replica serves only what the primary had when this pool last saw it. */
static void replica_stream_note(struct backend *be, bool detached, bool blind)
{
    if (blind && !be->stream_blind_logged)
        log_warn(
            "%s: the database role cannot read pg_stat_wal_receiver's status (GRANT pg_read_all_stats): a "
            "standby retrying a primary it diverged from may count as streaming for a moment",
            be_name(be));
    be->stream_blind_logged = be->stream_blind_logged || blind;
    if (detached && !be->detached)
        log_warn("%s: streams from no primary: it serves only reads at or below the primary's last position "
                 "seen",
                 be_name(be));
    else if (!detached && be->detached)
        log_info("%s: streams from a primary again", be_name(be));
    if (!detached && be->unproven)
        log_info("%s: streams from the new primary: it serves reads again", be_name(be));
    be->detached = detached;
    if (!detached)
        be->unproven = false;
}

void health_apply(struct backend *be, const struct pool_result *r)
{
    struct pool *p = be->pool;
    be->health_inflight = false;
    bool was = be->healthy;
    if (be->side == POOL_PRIMARY) {
        primary_health_apply(be, r, was);
        return;
    }
    uint64_t lsn;
    if (r->status == POOL_OK && PQntuples(r->res) == 1 && PQnfields(r->res) == 4 &&
        pool_lsn_parse(PQgetvalue(r->res, 0, 0), &lsn) == 0) {
        /* Lower than known: another server, or one restarted, or only a sample older than a read's
         * (pgconn.c): the check is believed, and positions the reads in flight carry are dropped. */
        if (lsn < be->lsn)
            be->resets++;
        be->lsn = lsn;
        long long ts_lag = atoll(PQgetvalue(r->res, 0, 1));
        if (ts_lag > INT32_MAX)
            ts_lag = INT32_MAX;
        be->lag_ms =
            be->lsn >= p->primary.lsn ? 0 : (int)ts_lag; /* caught up: no lag, whatever the clock says */
        be->healthy = be->lag_ms <= p->cfg->max_replica_lag_ms;
        replica_stream_note(be, PQgetvalue(r->res, 0, 2)[0] == 't', PQgetvalue(r->res, 0, 3)[0] == 't');
        if (!be->healthy && was)
            log_warn("%s: lag %dms over max_replica_lag: out of rotation", be_name(be), be->lag_ms);
    } else {
        route_backend_down(be, r->message && r->message[0] ? r->message : "health check failed");
    }
    if (be->healthy && !was)
        log_info("%s: healthy (lsn %" PRIX64 ", lag %dms): in rotation", be_name(be), be->lsn, be->lag_ms);
}

void health_send(struct backend *be)
{
    if (be->health_inflight)
        return;
    struct pgconn *c = pgconn_idle(be);
    if (!c) {
        if (backend_connected(be) == 0)
            be->healthy = false;
        return; /* all busy: it is working; checked next round */
    }
    struct pool_query q = { .sql = be->side == POOL_PRIMARY ? SQL_PRIMARY_HEALTH : SQL_REPLICA_HEALTH };
    struct job *j = job_new(&q, JOB_HEALTH, NULL, NULL);
    if (!j)
        return;
    j->target = be;
    be->health_inflight = true;
    if (be->side == POOL_PRIMARY && be->pool->consistency)
        consistency_unknown_snapshot(be->pool->consistency, be->pool->health_marks);
    pgconn_start(c, j);
}

void health_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct pool *p = arg;
    health_send(&p->primary);
    for (int i = 0; i < p->nreplicas; i++)
        health_send(&p->replicas[i]);
    route_reroute(p);
}
