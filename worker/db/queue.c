/* queue: jobs (a statement and the callback it answers), the bounded FIFO wait queue of each side,
 * and batching: the queued reads of one statement run as one (batch.h), and a shared write that failed
 * runs again job by job. */
#include "worker/db/queue.h"

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "worker/db/batch.h"
#include "worker/db/lsn.h"
#include "worker/db/pgconn.h"
#include "worker/db/route.h"

#define POOL_MAX_PARAMS 8 /* of a batched statement */
#define SWEEP_MS 50

/* Parameter i's bytes: as given, or the string's length (0 for NULL, SQL's NULL). */
static size_t param_len(const struct pool_query *q, int i)
{
    if (q->lengths)
        return (size_t)q->lengths[i];
    return q->params[i] ? strlen(q->params[i]) : 0;
}

/* The statement's SQL comment names the trace: only the characters a traceparent has may reach it. */
static void job_trace_copy(struct job *j, const char *tp)
{
    size_t n = tp ? strlen(tp) : 0;
    if (n == 0 || n > POOL_TRACE_MAX || strspn(tp, "0123456789abcdef-") != n)
        return;
    memcpy(j->trace, tp, n + 1);
}

struct job *job_new(const struct pool_query *q, enum job_kind kind, pool_cb cb, void *arg)
{
    size_t total = sizeof(struct job) + (size_t)q->nparams * (sizeof(char *) + sizeof(int));
    for (int i = 0; i < q->nparams; i++)
        total += param_len(q, i) + 1;
    struct job *j = calloc(1, total);
    if (!j)
        return NULL;
    j->kind = kind;
    j->sql = q->sql;
    j->batch_sql = kind == JOB_WRITE || (kind == JOB_READ && q->nparams == 1) ? q->batch_sql : NULL;
    j->batch_distinct = q->batch_distinct;
    j->nparams = q->nparams;
    j->cb = cb;
    j->arg = arg;
    j->params = (char **)(j + 1);
    j->lengths = (int *)(j->params + q->nparams);
    char *data = (char *)(j->lengths + q->nparams);
    for (int i = 0; i < q->nparams; i++) {
        if (!q->params[i]) {
            j->params[i] = NULL;
            continue;
        }
        size_t len = q->lengths ? (size_t)q->lengths[i] : strlen(q->params[i]);
        memcpy(data, q->params[i], len);
        data[len] = '\0';
        j->params[i] = data;
        j->lengths[i] = (int)len;
        data += len + 1;
    }
    job_trace_copy(j, q->traceparent);
    return j;
}

/* Where a result came from; NULL for a replica-side failure that never reached a replica. */
static struct backend *result_backend(struct pool *p, const struct pool_result *r)
{
    if (r->side == POOL_PRIMARY)
        return &p->primary;
    return r->backend >= 0 && r->backend < p->nreplicas ? &p->replicas[r->backend] : NULL;
}

/* The request's Server-Timing figures: queued until sent, then running until now. */
static void job_timing(const struct job *j, struct pool_result *r)
{
    uint64_t now = clock_now_us();
    if (j->started_us) {
        r->queue_us = j->enqueued_us && j->started_us > j->enqueued_us ? j->started_us - j->enqueued_us : 0;
        r->db_us = now > j->started_us ? now - j->started_us : 0;
    } else if (j->enqueued_us) {
        r->queue_us = now > j->enqueued_us ? now - j->enqueued_us : 0; /* it never left the queue */
    }
}

void job_finish(struct pool *p, struct job *j, const struct pool_result *r)
{
    enum pool_side side = r->side;
    if (j->kind == JOB_READ || j->kind == JOB_WRITE) {
        bool failed = r->status != POOL_OK;
        p->stats[side].queries++;
        p->stats[side].errors += failed;
        struct backend *be = result_backend(p, r);
        if (be) {
            be->queries++;
            be->errors += failed;
        }
    }
    if (j->cb) {
        struct pool_result timed = *r;
        job_timing(j, &timed);
        j->cb(j->arg, &timed);
    }
    if (j->held)
        PQclear(j->held);
    free(j);
}

void job_fail(struct pool *p, struct job *j, enum pool_side side, enum pool_status st, const char *msg)
{
    struct pool_result r = { .status = st, .sqlstate = "", .message = msg, .side = side, .backend = -1 };
    if (j->kind == JOB_LSN) {
        log_warn("primary: commit LSN unknown (%s): fencing with a primary-only LSN", msg);
        lsn_group_deliver(p, j, POOL_LSN_NONE);
        return;
    }
    if (j->held) { /* it committed: a success whose reads must all go to the primary */
        log_warn("primary: commit LSN unknown (%s): fencing with a primary-only LSN", msg);
        r = (struct pool_result){ .status = POOL_OK,
                                  .res = j->held,
                                  .sqlstate = "",
                                  .message = "",
                                  .side = POOL_PRIMARY,
                                  .backend = -1,
                                  .commit_lsn = POOL_LSN_NONE };
    }
    job_finish(p, j, &r);
}

void queue_push(struct side_queue *q, struct job *j)
{
    j->next = NULL;
    if (q->tail)
        q->tail->next = j;
    else
        q->head = j;
    q->tail = j;
    q->len++;
}

static struct job *queue_unlink(struct side_queue *q, struct job *prev, struct job *j)
{
    if (prev)
        prev->next = j->next;
    else
        q->head = j->next;
    if (q->tail == j)
        q->tail = prev;
    q->len--;
    return j;
}

/* Removes and returns the first job that `be` may run, or NULL. */
struct job *queue_take(struct side_queue *q, const struct backend *be)
{
    struct job *prev = NULL;
    for (struct job *j = q->head; j; prev = j, j = j->next) {
        if (j->target && j->target != be)
            continue;
        if (be->side == POOL_REPLICA && !j->target && !route_replica_eligible(be, j->fence))
            continue;
        return queue_unlink(q, prev, j);
    }
    return NULL;
}

bool queue_cancel(struct side_queue *q, const void *arg)
{
    struct job *prev = NULL;
    for (struct job *j = q->head; j; prev = j, j = j->next) {
        if (j->kind == JOB_READ && j->arg == arg) {
            free(queue_unlink(q, prev, j)); /* a queued read holds no result and no batch */
            return true;
        }
    }
    return false;
}

/* Whether a job of the batch led by lead has v as its first parameter. */
static bool batch_names(const struct job *lead, const char *v)
{
    for (const struct job *k = lead; k; k = k == lead ? lead->batch : k->next)
        if (k->nparams > 0 && k->params[0] && v && strcmp(k->params[0], v) == 0)
            return true;
    return false;
}

/* Whether queued job k may run in lead's statement: the same batched statement, and, when its jobs must
 * differ in their first parameter (pool_query.batch_distinct), one the batch does not name yet. */
bool queue_batch_joins(const struct job *lead, const struct job *k, const struct route_backend *replica,
                       uint64_t floor_lsn)
{
    return k->batch_sql == lead->batch_sql && !k->target &&
           (!replica || route_replica_may_serve(replica, floor_lsn, k->fence)) &&
           (!lead->batch_distinct || k->nparams < 1 || !batch_names(lead, k->params[0]));
}

int queue_batch_take(struct side_queue *q, struct job *lead, const struct route_backend *replica,
                     uint64_t floor_lsn)
{
    struct job **tail = &lead->batch;
    int n = 1;
    for (; *tail; tail = &(*tail)->next) /* a batch taken from another queue already */
        n++;
    int before = n;
    struct job *prev = NULL, *k = q->head;
    while (k && n < BATCH_MAX) {
        struct job *next = k->next;
        if (queue_batch_joins(lead, k, replica, floor_lsn)) {
            queue_unlink(q, prev, k);
            k->next = NULL;
            *tail = k;
            tail = &k->next;
            n++;
        } else {
            prev = k;
        }
        k = next;
    }
    return n - before;
}

bool queue_batch_gather(struct pgconn *c, struct job *j)
{
    struct pool *p = c->be->pool;
    if (c->be->side == POOL_REPLICA) {
        struct route_backend replica;
        route_backend_snapshot(c->be, &replica);
        return queue_batch_take(&p->queue[POOL_REPLICA], j, &replica, p->floor_lsn) > 0;
    }
    int n = queue_batch_take(&p->queue[POOL_PRIMARY], j, NULL, p->floor_lsn);
    /* A primary that takes the replicas' reads (route_pump) takes them batched too: one by one, reads
     * spilled while every replica connection is busy would cost a statement each. */
    if (j->kind == JOB_READ && route_primary_takes_reads_now(p))
        n += queue_batch_take(&p->queue[POOL_REPLICA], j, NULL, p->floor_lsn);
    return n > 0;
}

/* Parameter i of the statement: the array of every job's parameter i, in batch order. */
void queue_batch_send(struct pgconn *c, struct job *j)
{
    struct pool *p = c->be->pool;
    struct job *jobs[BATCH_MAX];
    int n = 0;
    for (struct job *k = j; k && n < BATCH_MAX; k = k == j ? j->batch : k->next) {
        jobs[n++] = k;
        if (k != j && k->enqueued_us)
            p->stats[c->be->side].wait_us_total += clock_now_us() - k->enqueued_us;
        k->data_lsn = j->data_lsn;
        k->started_us = j->started_us;
    }
    char *arrays[POOL_MAX_PARAMS] = { 0 };
    const char *values[BATCH_MAX];
    bool ok = j->nparams <= POOL_MAX_PARAMS;
    for (int i = 0; ok && i < j->nparams; i++) {
        for (int k = 0; k < n; k++)
            values[k] = jobs[k]->params[i];
        ok = (arrays[i] = batch_array_text(values, n)) != NULL;
    }
    if (ok) {
        p->stats[c->be->side].batches++;
        pgconn_send(c, j->batch_sql, j->nparams, arrays, NULL);
    }
    for (int i = 0; i < POOL_MAX_PARAMS; i++)
        free(arrays[i]);
    if (!ok)
        /* its jobs fail or are retried as for a broken link */
        pgconn_reset(c, "out of memory building a batch");
}

/* Each read of a batch gets the rows of its own id (none: a 404), or the batch's error. */
void queue_batch_deliver(struct pool *p, struct job *j, const struct pool_result *r)
{
    j->next = j->batch;
    j->batch = NULL;
    for (struct job *k = j, *next; k; k = next) {
        next = k->next;
        struct pool_result mine = *r;
        PGresult *own = NULL;
        if (r->status == POOL_OK) {
            own = batch_result_pick(r->res, k->params[0], 0);
            mine.res = own;
            if (!own)
                mine = (struct pool_result){ .status = POOL_ERR_UNAVAILABLE,
                                             .sqlstate = "",
                                             .message = "out of memory",
                                             .side = r->side,
                                             .backend = r->backend };
        }
        job_finish(p, k, &mine);
        PQclear(own);
    }
}

/* A shared write failed as a whole (one row's conflict or check fails them all): each job again, alone. */
void queue_batch_split(struct pool *p, struct job *j)
{
    j->next = j->batch;
    j->batch = NULL;
    for (struct job *k = j, *next; k; k = next) {
        next = k->next;
        k->batch_sql = NULL;
        k->next = NULL;
        route_submit(p, k);
    }
}

/* The connection under a batch broke: every read in it is retried once on its own, like a single read. */
void queue_batch_requeue(struct pool *p, struct job *j, enum pool_side side)
{
    struct job *k = j->batch;
    j->batch = NULL;
    for (struct job *next; k; k = next) {
        next = k->next;
        if (k->retries++ < 1)
            route_submit(p, k);
        else
            job_fail(p, k, side, POOL_ERR_BROKEN, "database connection lost during the query");
    }
}

/* The sweep (queue timeouts, reroutes) runs every SWEEP_MS while a queue holds jobs. */
static void sweep_arm(struct pool *p)
{
    struct timeval tv = clock_timeval(SWEEP_MS);
    event_add(p->sweep_ev, &tv);
}

void queue_or_fail(struct pool *p, enum pool_side side, struct job *j)
{
    struct side_queue *q = &p->queue[side];
    if (j->kind == JOB_LSN) { /* writes that committed wait on it: ahead of every new statement */
        if (!j->enqueued_us)
            j->enqueued_us = clock_now_us();
        j->next = q->head;
        q->head = j;
        if (!q->tail)
            q->tail = j;
        q->len++;
        sweep_arm(p);
        return;
    }
    if (q->len >= p->cfg->queue_size) {
        p->stats[side].queue_full++;
        job_fail(p, j, side, POOL_ERR_UNAVAILABLE, "database pool queue is full");
        return;
    }
    if (!j->enqueued_us)
        j->enqueued_us = clock_now_us();
    queue_push(q, j);
    sweep_arm(p);
}

/* Takes every job of the side's queue that `moves` picks out of it, keeping the others in order, and
 * submits each again (with its first enqueue time: the queue timeout still counts from then). */
void queue_resubmit(struct pool *p, enum pool_side side, bool (*moves)(struct pool *, const struct job *))
{
    struct side_queue *q = &p->queue[side];
    struct job *keep = NULL, **tail = &keep, *j = q->head;
    struct side_queue moved = { 0 };
    int kept = 0;
    while (j) {
        struct job *next = j->next;
        if (moves(p, j)) {
            queue_push(&moved, j);
        } else {
            j->next = NULL;
            *tail = j;
            tail = &j->next;
            kept++;
        }
        j = next;
    }
    q->head = keep;
    q->tail = NULL;
    for (struct job *k = keep; k; k = k->next)
        q->tail = k;
    q->len = kept;
    while ((j = moved.head)) {
        moved.head = j->next;
        route_submit(p, j);
    }
}

static void queue_expire(struct pool *p, enum pool_side side, uint64_t now)
{
    struct side_queue *q = &p->queue[side];
    uint64_t limit = (uint64_t)p->cfg->queue_timeout_ms * 1000u;
    while (q->head && now - q->head->enqueued_us >= limit) {
        struct job *j = q->head;
        q->head = j->next;
        if (!q->head)
            q->tail = NULL;
        q->len--;
        p->stats[side].timeouts++;
        job_fail(p, j, side, POOL_ERR_UNAVAILABLE, "timed out waiting for a database connection");
    }
}

void queue_sweep_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct pool *p = arg;
    uint64_t now = clock_now_us();
    queue_expire(p, POOL_PRIMARY, now);
    queue_expire(p, POOL_REPLICA, now);
    route_reroute(p);
    if (p->queue[0].len || p->queue[1].len)
        sweep_arm(p);
}
