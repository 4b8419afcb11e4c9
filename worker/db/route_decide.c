/* route_decide: which backend a statement goes to, from a snapshot of the backends (route_decide.h). */
#include "worker/db/route_decide.h"

bool route_replica_may_serve(const struct route_backend *replica, uint64_t floor_lsn, uint64_t fence)
{
    return replica->healthy && fence != POOL_LSN_NONE && floor_lsn != 0 && replica->lsn >= fence &&
           replica->lsn >= floor_lsn;
}

/* The primary may run any read. One of its connections free with nothing of its own waiting takes the
 * oldest read queued for the replicas: a read never waits while a server that may serve it has an idle
 * connection (a replica that went may hold its connections' statements in PgBouncer, unanswered, until
 * the statement bound). */
bool route_primary_takes_reads(const struct route_backend *primary)
{
    return primary->healthy && !primary->in_recovery;
}

int route_replicas_up(const struct route_view *v)
{
    int n = 0;
    for (int i = 0; i < v->nreplicas; i++)
        n += v->replicas[i].healthy && v->replicas[i].connected > 0;
    return n;
}

int route_replica_pick(const struct route_view *v, uint64_t fence, bool *idle)
{
    int eligible = -1;
    *idle = false;
    for (int k = 0; k < v->nreplicas; k++) {
        int i = (int)((v->rr + (unsigned)k) % (unsigned)v->nreplicas);
        if (!route_replica_may_serve(&v->replicas[i], v->floor_lsn, fence))
            continue;
        if (eligible < 0)
            eligible = i;
        if (v->replicas[i].idle > 0) {
            *idle = true;
            return i;
        }
    }
    return eligible;
}

/* A read that no replica has replayed far enough for yet, while the primary is down: it waits in the
 * primary's queue (up to queue_timeout) for a healthy replica's next sample to pass its fence, and then
 * moves there (route_reroute). */
static bool read_may_wait_for_replica(const struct route_view *v, bool read, uint64_t fence)
{
    return read && fence != POOL_LSN_NONE && route_replicas_up(v) > 0;
}

bool route_read_may_wait(const struct route_view *v, uint64_t fence, int wait_ms)
{
    bool idle;
    if (wait_ms <= 0 || fence == POOL_LSN_NONE || fence == POOL_LSN_NEWEST || v->floor_lsn == 0 ||
        route_replica_pick(v, fence, &idle) >= 0)
        return false;
    for (int i = 0; i < v->nreplicas; i++) {
        const struct route_backend *r = &v->replicas[i];
        if (r->healthy && r->connected > 0 && r->lsn != 0 && r->lag_ms < wait_ms)
            return true;
    }
    return false;
}

static struct route_decision decide_replica(const struct route_view *v, int replica, bool idle)
{
    if (idle)
        return (struct route_decision){
            .where = ROUTE_START, .side = POOL_REPLICA, .backend = replica, .rr_advance = true
        };
    if (route_primary_takes_reads(&v->primary) && v->primary.idle > 0) /* every replica connection busy */
        return (struct route_decision){ .where = ROUTE_START, .side = POOL_PRIMARY, .backend = -1 };
    return (struct route_decision){ .where = ROUTE_QUEUE, .side = POOL_REPLICA, .backend = replica };
}

enum pool_primary_read route_primary_read_reason(const struct route_view *v, uint64_t fence)
{
    bool idle;
    if (fence == POOL_LSN_NONE || fence == POOL_LSN_NEWEST)
        return POOL_PRIMARY_READ_NEWEST;
    if (route_replicas_up(v) == 0)
        return POOL_PRIMARY_READ_NO_REPLICA;
    return route_replica_pick(v, fence, &idle) >= 0 ? POOL_PRIMARY_READ_REPLICAS_BUSY
                                                    : POOL_PRIMARY_READ_FENCE;
}

struct route_decision route_decide(const struct route_view *v, bool read, uint64_t fence)
{
    bool idle = false;
    int replica = read ? route_replica_pick(v, fence, &idle) : -1;
    if (replica >= 0)
        return decide_replica(v, replica, idle);
    const struct route_backend *primary = &v->primary;
    if (primary->connected == 0 && primary->failures >= primary->nconns &&
        !read_may_wait_for_replica(v, read, fence)) {
        /* known down: answer now rather than after the queue timeout */
        return (struct route_decision){ .where = ROUTE_FAIL, .side = POOL_PRIMARY, .backend = -1 };
    }
    if (primary->idle > 0)
        return (struct route_decision){ .where = ROUTE_START, .side = POOL_PRIMARY, .backend = -1 };
    return (struct route_decision){ .where = ROUTE_QUEUE, .side = POOL_PRIMARY, .backend = -1 };
}

/* Not the read's own data position (pool_result.data_lsn stays the position sampled before it): replay
 * goes on while the statement runs, so the sample may be newer than the statement's snapshot. It only
 * routes later reads, whose snapshots are taken after the replica had replayed that far. */
uint64_t route_replay_learn(uint64_t known, uint64_t sample, bool reset)
{
    return reset || sample <= known ? known : sample;
}

/* Why strictly below: a position read from the primary (pg_current_wal_lsn(), the fences' commit LSNs
 * and the sampled positions alike) may already be past the commit record of a write that is not visible
 * yet (flushed, still waiting for its synchronous standby), and that write's own commit LSN, read once it
 * has completed, may then be that very position. Claiming the position itself would let a copy lacking
 * the write carry the same LSN as the write's fence, which raises nothing, so the copy stays valid. Every
 * write that completes after the read's snapshot reads a commit LSN at or past every position read
 * before that snapshot: strictly past the claim. */
uint64_t route_primary_data_lsn(uint64_t fence, uint64_t sampled)
{
    uint64_t known = fence > sampled ? fence : sampled;
    return known ? known - 1 : 0;
}
