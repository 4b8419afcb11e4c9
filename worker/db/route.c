/* route: which backend runs a statement. Writes and fenced reads go to the primary; other reads to a
 * replica that has replayed past their fence, round-robin, spilling to an idle primary connection; a
 * replica that failed leaves rotation and the reads queued for it move. */
#include "worker/db/route.h"

#include "common/log.h"
#include "worker/db/pgconn.h"
#include "worker/db/queue.h"

/* Out of rotation until a health check passes again (conn_ready sends one on a new connection). */
void route_backend_down(struct backend *be, const char *why)
{
    if (!be->healthy)
        return;
    be->healthy = false;
    be->outages++;
    log_warn("%s: out of rotation: %s", be_name(be), why);
    if (be->side == POOL_REPLICA)
        pgconn_abandon_reads(be);
}

/* The primary may run any read. One of its connections free with nothing of its own waiting takes the
 * oldest read queued for the replicas: a read never waits while a server that may serve it has an idle
 * connection (a replica that went may hold its connections' statements in PgBouncer, unanswered, until
 * the statement bound). */
static bool primary_takes_reads(const struct pool *p)
{
    return p->primary.healthy && !p->primary.in_recovery;
}

void route_pump(struct pgconn *c)
{
    struct pool *p = c->be->pool;
    struct job *j = queue_take(&p->queue[c->be->side], c->be);
    if (!j && c->be->side == POOL_PRIMARY && primary_takes_reads(p))
        j = queue_take(&p->queue[POOL_REPLICA], c->be);
    if (j)
        pgconn_start(c, j);
}

bool route_replica_eligible(const struct backend *be, uint64_t fence)
{
    uint64_t floor = be->pool->floor_lsn;
    return be->healthy && fence != POOL_LSN_NONE && floor != 0 && be->lsn >= fence && be->lsn >= floor;
}

/* Picks the replica for a read: round-robin over eligible replicas, preferring one with an idle
 * connection. Returns NULL when none is eligible (the read then goes to the primary). */
static struct backend *replica_pick(struct pool *p, uint64_t fence, struct pgconn **idle)
{
    struct backend *eligible = NULL;
    *idle = NULL;
    for (int k = 0; k < p->nreplicas; k++) {
        struct backend *be = &p->replicas[(p->rr + (unsigned)k) % (unsigned)p->nreplicas];
        if (!route_replica_eligible(be, fence))
            continue;
        if (!eligible)
            eligible = be;
        struct pgconn *c = pgconn_idle(be);
        if (c) {
            *idle = c;
            p->rr++;
            return be;
        }
    }
    return eligible;
}

/* A read that no replica has replayed far enough for yet, while the primary is down: it waits in the
 * primary's queue (up to queue_timeout) for a healthy replica's next sample to pass its fence, and then
 * moves there (route_reroute). */
static bool read_may_wait_for_replica(const struct pool *p, const struct job *j)
{
    return j->kind == JOB_READ && j->fence != POOL_LSN_NONE && pool_replicas_up(p) > 0;
}

void route_submit(struct pool *p, struct job *j)
{
    struct pgconn *c = NULL;
    if (j->kind == JOB_READ && replica_pick(p, j->fence, &c)) {
        if (!c && primary_takes_reads(p))
            c = pgconn_idle(&p->primary); /* every replica connection busy: see route_pump */
        if (c)
            pgconn_start(c, j);
        else
            queue_or_fail(p, POOL_REPLICA, j);
        return;
    }
    struct backend *be = &p->primary;
    if (backend_connected(be) == 0 && be->failures >= be->nconns && !read_may_wait_for_replica(p, j)) {
        /* known down: answer now rather than after the queue timeout */
        job_fail(p, j, POOL_PRIMARY, POOL_ERR_UNAVAILABLE, "primary database unavailable");
        return;
    }
    c = pgconn_idle(be);
    if (c)
        pgconn_start(c, j);
    else
        queue_or_fail(p, POOL_PRIMARY, j);
}

static bool read_lost_its_replica(struct pool *p, const struct job *j)
{
    struct pgconn *idle;
    return j->kind == JOB_READ && !replica_pick(p, j->fence, &idle);
}

static bool read_has_a_replica(struct pool *p, const struct job *j)
{
    struct pgconn *idle;
    return j->kind == JOB_READ && replica_pick(p, j->fence, &idle);
}

/* Replica reads queued for a replica that left rotation move to the primary; reads queued for the
 * primary (no replica had replayed past their fence) move to a replica that now has: the primary may be
 * saturated, or gone. */
void route_reroute(struct pool *p)
{
    queue_resubmit(p, POOL_REPLICA, read_lost_its_replica);
    queue_resubmit(p, POOL_PRIMARY, read_has_a_replica);
}
