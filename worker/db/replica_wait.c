/* replica_wait: reads waiting for a replica to replay their fence. The known replay positions rise with
 * every replica read's answer (pgconn.c) and with the probes sent here while reads wait; each rise routes
 * the waiting reads again, and a read that no replica has passed by its deadline runs on the primary. */
#include "worker/db/replica_wait.h"

#include <event2/event.h>

#include "common/clock.h"
#include "worker/db/pgconn.h"
#include "worker/db/queue.h"
#include "worker/db/route.h"

/* How often a waiting read's replicas are probed: replay here is usually well under a millisecond behind
 * the commit, and one probe per replica is in flight at a time. */
#define STEP_MS 1

/* A replica read of nothing: pgconn wraps it, as every replica read, to return the replay position. */
static const char PROBE_SQL[] = "SELECT 1";

static void step_arm(struct pool *p)
{
    if (!p->parked.len || evtimer_pending(p->park_ev, NULL))
        return;
    struct timeval tv = clock_timeval(STEP_MS);
    evtimer_add(p->park_ev, &tv);
}

static void probe_done(void *arg, const struct pool_result *r)
{
    (void)r; /* the position, if any, was learned as the answer arrived (pgconn.c) */
    struct backend *be = arg;
    be->probe_inflight = false;
}

/* One probe per replica in rotation with an idle connection; a busy replica answers reads, which carry
 * its position anyway. */
static void replica_wait_probe(struct pool *p)
{
    for (int i = 0; i < p->nreplicas; i++) {
        struct backend *be = &p->replicas[i];
        struct pgconn *c = pgconn_idle(be);
        if (!be->healthy || be->probe_inflight || !c)
            continue;
        struct job *j = job_new(&(struct pool_query){ .sql = PROBE_SQL }, JOB_PROBE, probe_done, be);
        if (!j)
            return;
        j->target = be;
        be->probe_inflight = true;
        pgconn_start(c, j);
    }
}

bool replica_wait_park(struct pool *p, struct job *j, const struct route_view *v)
{
    if (j->kind != JOB_READ || j->wait_until || p->parked.len >= p->cfg->queue_size ||
        !route_read_may_wait(v, j->fence, p->cfg->replica_wait_ms))
        return false;
    j->wait_until = clock_now_us() + (uint64_t)p->cfg->replica_wait_ms * 1000;
    queue_push(&p->parked, j);
    replica_wait_probe(p);
    step_arm(p);
    return true;
}

/* The list is taken whole first: routing a read may reset a connection, which releases again. */
void replica_wait_release(struct pool *p)
{
    if (!p->parked.len)
        return;
    struct side_queue waiting = p->parked;
    p->parked = (struct side_queue){ 0 };
    uint64_t now = clock_now_us();
    struct route_view v;
    route_view_fill(p, &v);
    for (struct job *j = waiting.head, *next; j; j = next) {
        next = j->next;
        bool idle;
        if (route_replica_pick(&v, j->fence, &idle) < 0 && now < j->wait_until) {
            queue_push(&p->parked, j);
            continue;
        }
        route_submit(p, j);
    }
    step_arm(p);
}

void replica_wait_note_start(struct pool *p, enum pool_side side, struct job *j)
{
    for (struct job *k = j; k; k = k == j ? j->batch : k->next) {
        if (k->kind != JOB_READ || !k->wait_until || k->wait_noted)
            continue;
        k->wait_noted = true;
        p->stats[side].replica_waits++;
    }
}

bool replica_wait_cancel(struct pool *p, const void *arg)
{
    return queue_cancel(&p->parked, arg);
}

void replica_wait_step_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct pool *p = arg;
    replica_wait_release(p);
    if (p->parked.len)
        replica_wait_probe(p);
}
