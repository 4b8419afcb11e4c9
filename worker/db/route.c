/* route: which backend runs a statement. Writes and fenced reads go to the primary; other reads to a
 * replica that has replayed past their fence, round-robin, spilling to an idle primary connection; a
 * replica that failed leaves rotation and the reads queued for it move. */
#include "worker/db/route.h"

#include "common/log.h"
#include "worker/db/pgconn.h"
#include "worker/db/queue.h"
#include "worker/db/replica_wait.h"

/* Out of rotation until a health check passes again (conn_ready sends one on a new connection). */
void route_backend_down(struct backend *be, const char *why)
{
    if (!be->healthy)
        return;
    be->healthy = false;
    be->outages++;
    be->resets++;
    log_warn("%s: out of rotation: %s", be_name(be), why);
    if (be->side == POOL_REPLICA)
        pgconn_abandon_reads(be);
}

/* How far a replica's data may be trusted (docs/consistency.md, "High availability"): its replay position
 * while it streams from the primary; nothing while the primary changed identity since it last did (it
 * may hold WAL the new primary never had, until Patroni rewinds it); and, while it streams from no
 * primary, no further than the primary's position this pool saw (a fence past that may come from a
 * newer primary this replica will never follow). */
static uint64_t replica_trusted_lsn(const struct backend *be)
{
    const struct pool *p = be->pool;
    uint64_t primary = p->primary.lsn;
    if (be->unproven)
        return 0;
    if (p->consistency) { /* what the other workers of this server saw of the primary */
        if (p->primary_identity && consistency_primary_identity(p->consistency) != p->primary_identity)
            return 0; /* another worker met a new primary: until this one's next check sees it too */
        uint64_t seen = consistency_primary_position(p->consistency);
        primary = seen > primary ? seen : primary;
    }
    return be->detached && primary < be->lsn ? primary : be->lsn;
}

void route_backend_snapshot(const struct backend *be, struct route_backend *out)
{
    *out = (struct route_backend){ .healthy = be->healthy,
                                   .in_recovery = be->in_recovery,
                                   .lsn = be->side == POOL_REPLICA ? replica_trusted_lsn(be) : be->lsn,
                                   .idle = be->in_state[PGC_IDLE].len,
                                   .connected = backend_connected(be),
                                   .failures = be->failures,
                                   .nconns = be->nconns,
                                   .lag_ms = be->lag_ms };
}

void route_view_fill(const struct pool *p, struct route_view *v)
{
    route_backend_snapshot(&p->primary, &v->primary);
    for (int i = 0; i < p->nreplicas; i++)
        route_backend_snapshot(&p->replicas[i], &v->replicas[i]);
    v->nreplicas = p->nreplicas;
    v->floor_lsn = p->floor_lsn;
    v->rr = p->rr;
}

bool route_primary_takes_reads_now(const struct pool *p)
{
    struct route_backend primary;
    route_backend_snapshot(&p->primary, &primary);
    return route_primary_takes_reads(&primary);
}

void route_primary_reads_note(struct pool *p, const struct job *j)
{
    struct route_view v;
    route_view_fill(p, &v);
    for (const struct job *k = j; k; k = k == j ? j->batch : k->next)
        if (k->kind == JOB_READ)
            p->stats[POOL_PRIMARY].primary_reads[route_primary_read_reason(&v, k->fence)]++;
}

void route_pump(struct pgconn *c)
{
    struct pool *p = c->be->pool;
    struct job *j = queue_take(&p->queue[c->be->side], c->be);
    if (!j && c->be->side == POOL_PRIMARY && route_primary_takes_reads_now(p))
        j = queue_take(&p->queue[POOL_REPLICA], c->be);
    if (j)
        pgconn_start(c, j);
}

bool route_replica_eligible(const struct backend *be, uint64_t fence)
{
    struct route_backend replica;
    route_backend_snapshot(be, &replica);
    return route_replica_may_serve(&replica, be->pool->floor_lsn, fence);
}

void route_submit(struct pool *p, struct job *j)
{
    struct route_view v;
    route_view_fill(p, &v);
    struct route_decision d = route_decide(&v, j->kind == JOB_READ, j->fence);
    if (d.side == POOL_PRIMARY && replica_wait_park(p, j, &v))
        return;
    if (d.rr_advance)
        p->rr++;
    struct backend *be = d.backend < 0 ? &p->primary : &p->replicas[d.backend];
    switch (d.where) {
    case ROUTE_START:
        pgconn_start(pgconn_idle(be), j);
        break;
    case ROUTE_QUEUE:
        queue_or_fail(p, d.side, j);
        break;
    case ROUTE_FAIL:
        job_fail(p, j, POOL_PRIMARY, POOL_ERR_UNAVAILABLE, "primary database unavailable");
        break;
    }
}

/* Whether a replica may serve the read j; the round-robin moves on when one with an idle connection is
 * found, as when a read is submitted. */
static bool read_finds_replica(struct pool *p, const struct job *j)
{
    struct route_view v;
    bool idle;
    route_view_fill(p, &v);
    int replica = route_replica_pick(&v, j->fence, &idle);
    if (idle)
        p->rr++;
    return replica >= 0;
}

static bool read_lost_its_replica(struct pool *p, const struct job *j)
{
    return j->kind == JOB_READ && !read_finds_replica(p, j);
}

static bool read_has_a_replica(struct pool *p, const struct job *j)
{
    return j->kind == JOB_READ && read_finds_replica(p, j);
}

/* Replica reads queued for a replica that left rotation move to the primary; reads queued for the
 * primary (no replica had replayed past their fence) move to a replica that now has: the primary may be
 * saturated, or gone; and so do the reads waiting for one (replica_wait.h). */
void route_reroute(struct pool *p)
{
    queue_resubmit(p, POOL_REPLICA, read_lost_its_replica);
    queue_resubmit(p, POOL_PRIMARY, read_has_a_replica);
    replica_wait_release(p);
}
