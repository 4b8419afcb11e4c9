/* pool: the public face: the pool's creation and teardown, its entry points (pool_read, pool_write,
 * pool_cancel) and its statistics. The parts are in pool_internal.h. */
#include "worker/db/pool.h"

#include <event2/event.h>
#include <stdlib.h>

#include "common/clock.h"
#include "common/log.h"
#include "worker/db/health.h"
#include "worker/db/pgconn.h"
#include "worker/db/pool_internal.h"
#include "worker/db/queue.h"
#include "worker/db/replica_wait.h"
#include "worker/db/route.h"

bool pool_cancel(struct pool *p, const void *arg)
{
    return queue_cancel(&p->queue[POOL_PRIMARY], arg) || queue_cancel(&p->queue[POOL_REPLICA], arg) ||
           replica_wait_cancel(p, arg);
}

void pool_write(struct pool *p, const struct pool_query *q, pool_cb cb, void *arg)
{
    struct job *j = job_new(q, JOB_WRITE, cb, arg);
    if (!j) {
        struct pool_result r = { .status = POOL_ERR_UNAVAILABLE, .sqlstate = "", .message = "out of memory" };
        cb(arg, &r);
        return;
    }
    route_submit(p, j);
}

void pool_read(struct pool *p, const struct pool_query *q, uint64_t fence_lsn, pool_cb cb, void *arg)
{
    struct job *j = job_new(q, JOB_READ, cb, arg);
    if (!j) {
        struct pool_result r = { .status = POOL_ERR_UNAVAILABLE, .sqlstate = "", .message = "out of memory" };
        cb(arg, &r);
        return;
    }
    j->fence = fence_lsn;
    route_submit(p, j);
}

static int backend_init(struct pool *p, struct backend *be, enum pool_side side, int index, const char *dsn)
{
    *be =
        (struct backend){ .pool = p, .side = side, .index = index, .dsn = dsn, .nconns = p->cfg->pool_size };
    for (int i = 0; i < be->nconns; i++) {
        if (pgconn_init(&be->conns[i], be) < 0)
            return -1;
    }
    return 0;
}

struct pool *pool_new(struct event_base *base, const struct config *cfg, struct consistency *consistency)
{
    struct pool *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->base = base;
    p->cfg = cfg;
    p->consistency = consistency;
    p->nreplicas = cfg->replica_count;
    p->sweep_ev = evtimer_new(base, queue_sweep_cb, p);
    p->health_ev = event_new(base, -1, EV_PERSIST, health_cb, p);
    p->park_ev = evtimer_new(base, replica_wait_step_cb, p);
    if (!p->sweep_ev || !p->health_ev || !p->park_ev ||
        backend_init(p, &p->primary, POOL_PRIMARY, -1, cfg->primary_dsn) < 0)
        goto fail;
    for (int i = 0; i < p->nreplicas; i++)
        if (backend_init(p, &p->replicas[i], POOL_REPLICA, i, cfg->replica_dsn[i]) < 0)
            goto fail;
    struct timeval tv = clock_timeval(cfg->health_interval_ms);
    event_add(p->health_ev, &tv);
    event_active(p->health_ev, EV_TIMEOUT, 0);
    return p;
fail:
    log_error("database pool: out of memory");
    pool_free(p);
    return NULL;
}

/* At exit, a job and the jobs it carries (a batch, a commit-LSN group) are freed without their callbacks:
 * the requests they answer die with the process, and worker_free frees what those requests held
 * (resource_ops.h). Returns true if it carried a write whose statement was sent (its outcome unknown) or had
 * committed. */
static bool job_discard(struct job *j, bool sent)
{
    bool write = j->kind == JOB_WRITE && (sent || j->held);
    for (struct job *k = j->batch, *next; k; k = next) {
        next = k->next;
        write |= job_discard(k, true); /* a statement's batch, or the commits waiting for an LSN */
    }
    PQclear(j->held);
    free(j);
    return write;
}

static bool queue_discard(struct side_queue *q)
{
    bool write = false;
    for (struct job *j = q->head, *next; j; j = next) {
        next = j->next;
        write |= job_discard(j, false);
    }
    *q = (struct side_queue){ 0 };
    return write;
}

static bool backend_close(struct backend *be)
{
    bool write = false;
    for (int i = 0; i < be->nconns; i++) {
        struct pgconn *c = &be->conns[i];
        if (c->io_ev)
            event_free(c->io_ev);
        if (c->timer_ev)
            event_free(c->timer_ev);
        if (c->result)
            PQclear(c->result);
        if (c->job)
            write |= job_discard(c->job, true);
        PQfinish(c->conn);
    }
    return write;
}

/* No callback runs from here (worker_free relies on it). A write sent or committed whose answer is lost
 * may have changed rows the cache holds, and no invalidation will follow: every worker bypasses the
 * cache until it moves to a new epoch, as after a worker's death. */
void pool_free(struct pool *p)
{
    if (!p)
        return;
    bool write = queue_discard(&p->queue[POOL_PRIMARY]);
    write |= queue_discard(&p->queue[POOL_REPLICA]);
    write |= queue_discard(&p->lsn_waiting);
    queue_discard(&p->parked); /* reads */
    write |= backend_close(&p->primary);
    for (int i = 0; i < p->nreplicas; i++)
        write |= backend_close(&p->replicas[i]);
    if (write && p->consistency) {
        log_warn("exiting with writes in flight: the cache is bypassed until it moves to a new epoch");
        consistency_cache_dirty_set(p->consistency);
    }
    if (p->sweep_ev)
        event_free(p->sweep_ev);
    if (p->health_ev)
        event_free(p->health_ev);
    if (p->park_ev)
        event_free(p->park_ev);
    free(p);
}

static void backend_stats(const struct backend *be, struct pool_side_stats *s)
{
    s->idle += be->in_state[PGC_IDLE].len;
    s->in_use += be->in_state[PGC_SENDING].len + be->in_state[PGC_BUSY].len;
    s->connecting += be->in_state[PGC_CONNECTING].len;
    s->down += be->in_state[PGC_DOWN].len;
}

void pool_stats(const struct pool *p, enum pool_side side, struct pool_side_stats *out)
{
    *out = p->stats[side];
    out->waiting = p->queue[side].len + (side == POOL_REPLICA ? p->parked.len : 0);
    if (side == POOL_PRIMARY)
        backend_stats(&p->primary, out);
    else
        for (int i = 0; i < p->nreplicas; i++)
            backend_stats(&p->replicas[i], out);
}

void pool_backend_stats(const struct pool *p, int backend, struct pool_backend_stats *out)
{
    const struct backend *be = backend < 0 ? &p->primary : &p->replicas[backend];
    struct pool_side_stats s = { 0 };
    backend_stats(be, &s);
    *out = (struct pool_backend_stats){ .queries = be->queries,
                                        .errors = be->errors,
                                        .outages = be->outages,
                                        .in_use = s.in_use,
                                        .idle = s.idle,
                                        .connecting = s.connecting,
                                        .down = s.down,
                                        .lsn = be->lsn,
                                        .lag_ms = be->lag_ms,
                                        .up = be->healthy && backend_connected(be) > 0 };
}

bool pool_primary_up(const struct pool *p)
{
    return p->primary.healthy && backend_connected(&p->primary) > 0;
}

const char *pool_primary_id(const struct pool *p)
{
    return p->primary_id;
}

bool pool_primary_settled(const struct pool *p)
{
    return pool_primary_up(p) || p->primary.failures > 0 || p->primary.in_recovery;
}

int pool_replicas_up(const struct pool *p)
{
    struct route_view v;
    route_view_fill(p, &v);
    return route_replicas_up(&v);
}

int pool_replica_count(const struct pool *p)
{
    return p->nreplicas;
}
