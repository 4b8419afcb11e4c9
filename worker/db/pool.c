/* pool: every connection is a state machine (enum pgc_state) driven by one-shot libevent events on
 * PQsocket(): PQconnectStart/PQconnectPoll to connect, PQsendQueryParams + PQflush to send,
 * PQconsumeInput/PQisBusy/PQgetResult to read. Only unnamed statements (PgBouncer transaction mode). */
#include "worker/db/pool.h"

#include <event2/event.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/config.h"
#include "common/consistency.h"
#include "common/log.h"
#include "worker/db/batch.h"

#define POOL_MAX_CONNS 256
#define POOL_MAX_PARAMS 8 /* of a batched statement */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 1000 /* reconnecting to a local PgBouncer is cheap; a returning server is used at once */
#define SWEEP_MS 50

static const char SQL_WRITE_LSN[] = "SELECT pg_current_wal_lsn()::text";
/* Position, whether it is (still or now) a standby, and its identity: system identifier and the timeline
 * WAL is written on (a promotion starts a new one; pg_walfile_name's first 8 hex digits). */
static const char SQL_PRIMARY_HEALTH[] =
    "SELECT CASE WHEN pg_is_in_recovery() THEN '0/0' ELSE pg_current_wal_lsn()::text END, pg_is_in_recovery(),"
    " (SELECT system_identifier FROM pg_control_system())::text,"
    " CASE WHEN pg_is_in_recovery() THEN '' ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END";
static const char SQL_REPLICA_HEALTH[] =
    "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text,"
    " COALESCE((extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000)::bigint, 0)";

enum pgc_state { PGC_DOWN, PGC_CONNECTING, PGC_IDLE, PGC_BUSY };
/* JOB_LSN reads pg_current_wal_lsn() for every write that committed before it was sent (its batch). */
enum job_kind { JOB_READ, JOB_WRITE, JOB_HEALTH, JOB_LSN };

struct backend;

struct job {
    struct job *next;
    enum job_kind kind;
    const char *sql;
    int nparams;
    char **params;
    int *lengths;
    pool_cb cb;
    void *arg;
    uint64_t fence;
    uint64_t data_lsn;        /* set when it starts: see pool_result.data_lsn */
    uint64_t enqueued_us;
    int retries;
    PGresult *held;           /* a committed write's result, waiting for its commit LSN */
    struct backend *target;   /* health checks run on one given backend */
    const char *batch_sql;    /* see pool_query.batch_sql */
    struct job *batch;        /* the reads running in this one's statement (a list through ->next) */
};

struct pgconn {
    struct backend *be;
    PGconn *conn;
    enum pgc_state state;
    struct event *io_ev;
    int io_fd;
    struct event *timer_ev;
    struct job *job;
    PGresult *result;
    bool flushing;
    int failures;
};

struct backend {
    struct pool *pool;
    enum pool_side side;
    int index;                /* -1 for the primary */
    const char *dsn;
    struct pgconn conns[POOL_MAX_CONNS];
    int nconns;
    bool healthy;             /* last health check passed (and, for a replica, lag within limits) */
    bool health_inflight;
    int failures;             /* consecutive failed or lost connections; 0 once one connects */
    uint64_t lsn;             /* primary: current WAL position; replica: replay position */
    int lag_ms;
    uint64_t queries, errors; /* statements answered here, and how many of them failed */
    uint64_t outages;         /* times it left rotation (broken connection or failed health check) */
    bool in_recovery;         /* the primary's last health check found a standby (logged on the change) */
};

struct side_queue {
    struct job *head, *tail;
    int len;
};

struct pool {
    struct event_base *base;
    const struct config *cfg;
    struct backend primary;
    struct backend replicas[CONFIG_MAX_REPLICAS];
    int nreplicas;
    struct side_queue queue[2];
    struct event *health_ev, *sweep_ev;
    unsigned rr;
    /* The primary's LSN when this worker first sampled it: every write acknowledged before this
     * process started is at or below it, so no replica serves reads until it has replayed that far. */
    uint64_t floor_lsn;
    /* Committed writes waiting for a commit-LSN read, and whether one is under way: one read serves
     * every write that committed before it was sent, so a busy primary does not read it per write. */
    struct side_queue lsn_waiting;
    bool lsn_inflight;
    /* Unknown commits counted (consistency.h) when the primary position read now in flight was sent, by the
     * health check and by the commit-LSN read: its answer resolves them. */
    struct consistency *fences;
    uint64_t health_marks[CONSISTENCY_TABLES_MAX], lsn_marks[CONSISTENCY_TABLES_MAX];
    struct pool_side_stats stats[2];
};

static void conn_connect(struct pgconn *c);
static void conn_io_cb(evutil_socket_t fd, short what, void *arg);
static void job_submit(struct pool *p, struct job *j);
static void conn_pump(struct pgconn *c);
static void batch_requeue(struct pool *p, struct job *j, enum pool_side side);
static void lsn_kick(struct pool *p);
static void lsn_group_take(struct pool *p, struct job *g, const struct pool_result *r);
static bool replica_eligible(const struct backend *be, uint64_t fence);

int pool_lsn_parse(const char *s, uint64_t *out)
{
    unsigned hi, lo;
    char tail;
    if (!s || sscanf(s, "%X/%X%c", &hi, &lo, &tail) != 2)
        return -1;
    *out = ((uint64_t)hi << 32) | lo;
    return 0;
}

static const char *be_name(const struct backend *be)
{
    static const char *names[] = { "primary", "replica0", "replica1", "replica2", "replica3",
                                   "replica4", "replica5", "replica6", "replica7" };
    return names[be->index + 1];
}

/* ---- jobs ------------------------------------------------------------------------------------ */

static struct job *job_new(const struct pool_query *q, enum job_kind kind, pool_cb cb, void *arg)
{
    size_t total = sizeof(struct job) + (size_t)q->nparams * (sizeof(char *) + sizeof(int));
    for (int i = 0; i < q->nparams; i++)
        total += (q->lengths ? (size_t)q->lengths[i] : (q->params[i] ? strlen(q->params[i]) : 0)) + 1;
    struct job *j = calloc(1, total);
    if (!j)
        return NULL;
    j->kind = kind;
    j->sql = q->sql;
    j->batch_sql = kind == JOB_WRITE || (kind == JOB_READ && q->nparams == 1) ? q->batch_sql : NULL;
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
    return j;
}

/* Where a result came from; NULL for a replica-side failure that never reached a replica. */
static struct backend *result_backend(struct pool *p, const struct pool_result *r)
{
    if (r->side == POOL_PRIMARY)
        return &p->primary;
    return r->backend >= 0 && r->backend < p->nreplicas ? &p->replicas[r->backend] : NULL;
}

static void job_finish(struct pool *p, struct job *j, const struct pool_result *r)
{
    enum pool_side side = r->side;
    if (j->kind != JOB_HEALTH && j->kind != JOB_LSN) {
        bool failed = r->status != POOL_OK;
        p->stats[side].queries++;
        p->stats[side].errors += failed;
        struct backend *be = result_backend(p, r);
        if (be) {
            be->queries++;
            be->errors += failed;
        }
    }
    if (j->cb)
        j->cb(j->arg, r);
    if (j->held)
        PQclear(j->held);
    free(j);
}

static void lsn_group_deliver(struct pool *p, struct job *g, uint64_t lsn);

static void job_fail(struct pool *p, struct job *j, enum pool_side side, enum pool_status st, const char *msg)
{
    struct pool_result r = { .status = st, .sqlstate = "", .message = msg, .side = side, .backend = -1 };
    if (j->kind == JOB_LSN) {
        log_warn("primary: commit LSN unknown (%s): fencing with a primary-only LSN", msg);
        lsn_group_deliver(p, j, POOL_LSN_NONE);
        return;
    }
    if (j->held) { /* it committed: a success whose reads must all go to the primary */
        log_warn("primary: commit LSN unknown (%s): fencing with a primary-only LSN", msg);
        r = (struct pool_result){ .status = POOL_OK, .res = j->held, .sqlstate = "", .message = "",
                                  .side = POOL_PRIMARY, .backend = -1, .commit_lsn = POOL_LSN_NONE };
    }
    job_finish(p, j, &r);
}

/* ---- queues ---------------------------------------------------------------------------------- */

static void queue_push(struct side_queue *q, struct job *j)
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
static struct job *queue_take(struct side_queue *q, const struct backend *be)
{
    struct job *prev = NULL;
    for (struct job *j = q->head; j; prev = j, j = j->next) {
        if (j->target && j->target != be)
            continue;
        if (be->side == POOL_REPLICA && !j->target && !replica_eligible(be, j->fence))
            continue;
        return queue_unlink(q, prev, j);
    }
    return NULL;
}

static bool queue_cancel(struct side_queue *q, const void *arg)
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

bool pool_cancel(struct pool *p, const void *arg)
{
    return queue_cancel(&p->queue[POOL_PRIMARY], arg) || queue_cancel(&p->queue[POOL_REPLICA], arg);
}

/* ---- connection events ----------------------------------------------------------------------- */

static void conn_wait(struct pgconn *c, short what)
{
    int fd = PQsocket(c->conn);
    if (fd != c->io_fd || !c->io_ev) {
        if (c->io_ev)
            event_free(c->io_ev);
        c->io_ev = event_new(c->be->pool->base, fd, what, conn_io_cb, c);
        c->io_fd = fd;
    } else {
        event_del(c->io_ev);
        event_assign(c->io_ev, c->be->pool->base, fd, what, conn_io_cb, c);
    }
    if (!c->io_ev || event_add(c->io_ev, NULL) < 0)
        log_error("%s: cannot watch the connection socket", be_name(c->be));
}

static void conn_timer(struct pgconn *c, int ms)
{
    if (ms <= 0) {
        event_del(c->timer_ev);
        return;
    }
    struct timeval tv = clock_timeval(ms);
    event_add(c->timer_ev, &tv);
}

static int backend_connected(const struct backend *be)
{
    int n = 0;
    for (int i = 0; i < be->nconns; i++)
        n += be->conns[i].state == PGC_IDLE || be->conns[i].state == PGC_BUSY;
    return n;
}

static void backend_reroute(struct pool *p);
static void health_send(struct backend *be);

static void conn_reset(struct pgconn *c, const char *why);

/* A replica that failed (not one that lags): the reads still running on it are likely held behind it
 * (PgBouncer keeps a query waiting while it cannot reach the server). They have no side effect: each
 * runs again elsewhere at once rather than after the statement bound. */
static void backend_abandon_reads(struct backend *be)
{
    for (int i = 0; i < be->nconns; i++) {
        struct pgconn *c = &be->conns[i];
        if (c->state == PGC_BUSY && c->job && c->job->kind == JOB_READ)
            conn_reset(c, "its replica left rotation");
    }
}

/* Out of rotation until a health check passes again (conn_ready sends one on a new connection). */
static void backend_down(struct backend *be, const char *why)
{
    if (!be->healthy)
        return;
    be->healthy = false;
    be->outages++;
    log_warn("%s: out of rotation: %s", be_name(be), why);
    if (be->side == POOL_REPLICA)
        backend_abandon_reads(be);
}

/* Drops the connection. Its job gets POOL_ERR_BROKEN, except a read and a commit-LSN read: retried once
 * elsewhere (the writes waiting for an LSN that stays unknown succeed with a primary-only fence). A
 * broken read or health check takes its backend out of rotation, so the retry goes elsewhere. */
static void conn_reset(struct pgconn *c, const char *why)
{
    struct backend *be = c->be;
    struct pool *p = be->pool;
    struct job *j = c->job;
    if (be->failures == 0) /* once per outage; the retries that follow are debug noise */
        log_warn("%s: connection lost or refused: %s", be_name(be), why);
    else
        log_debug("%s: connection lost or refused: %s", be_name(be), why);
    if (c->io_ev)
        event_del(c->io_ev);
    if (c->result)
        PQclear(c->result);
    c->result = NULL;
    PQfinish(c->conn);
    c->conn = NULL;
    c->io_fd = -1;
    c->job = NULL;
    c->state = PGC_DOWN;
    c->failures++;
    be->failures++;
    conn_timer(c, clock_backoff_ms(c->failures, BACKOFF_MIN_MS, BACKOFF_MAX_MS));
    if (backend_connected(be) == 0)
        backend_down(be, "no connection left");
    else if (be->side == POOL_REPLICA) /* one failed connection is enough: its queued reads move now */
        backend_down(be, "one of its connections failed");
    if (j) {
        if (j->kind == JOB_HEALTH) {
            be->health_inflight = false;
            backend_down(be, "health check lost its connection");
        }
        if (j->kind == JOB_READ && be->side == POOL_REPLICA)
            backend_down(be, "a read lost its connection");
        if (j->kind == JOB_READ && j->batch) {
            for (struct job *k = j->batch; k; k = k->next)
                k->retries = j->retries > k->retries ? j->retries : k->retries;
            batch_requeue(p, j, be->side);
        }
        for (struct job *k = j->kind == JOB_WRITE ? j->batch : NULL, *next; k; k = next) {
            next = k->next; /* a shared write: its outcome is unknown for every job, as for one */
            job_fail(p, k, be->side, POOL_ERR_BROKEN, "database connection lost during the query");
        }
        if (j->kind == JOB_WRITE)
            j->batch = NULL;
        if ((j->kind == JOB_READ || j->kind == JOB_LSN) && j->retries++ < 1)
            job_submit(p, j); /* no side effect: one retry on another connection */
        else
            job_fail(p, j, be->side, POOL_ERR_BROKEN, "database connection lost during the query");
    }
    backend_reroute(p);
}

/* A statement completed on the connection: the link works (a PgBouncer that cannot reach its server
 * accepts connections and then closes them, so connecting alone proves nothing). */
static void conn_proven(struct pgconn *c)
{
    struct backend *be = c->be;
    if (be->failures)
        log_info("%s: connected again", be_name(be));
    c->failures = 0;
    be->failures = 0;
}

static void conn_ready(struct pgconn *c)
{
    struct backend *be = c->be;
    if (PQsetnonblocking(c->conn, 1) < 0) {
        conn_reset(c, PQerrorMessage(c->conn));
        return;
    }
    c->state = PGC_IDLE;
    conn_timer(c, 0);
    conn_wait(c, EV_READ); /* notices and server-side closes arrive while idle */
    if (!be->healthy)
        health_send(be); /* back from an outage: checked before it gets replica traffic */
    if (c->state == PGC_IDLE)
        conn_pump(c);
}

static void conn_connect_step(struct pgconn *c)
{
    switch (PQconnectPoll(c->conn)) {
    case PGRES_POLLING_READING:
        conn_wait(c, EV_READ);
        break;
    case PGRES_POLLING_WRITING:
        conn_wait(c, EV_WRITE);
        break;
    case PGRES_POLLING_OK:
        conn_ready(c);
        break;
    default:
        conn_reset(c, PQerrorMessage(c->conn));
        break;
    }
}

static void conn_connect(struct pgconn *c)
{
    const struct config *cfg = c->be->pool->cfg;
    c->conn = PQconnectStart(c->be->dsn);
    if (!c->conn || PQstatus(c->conn) == CONNECTION_BAD) {
        conn_reset(c, c->conn ? PQerrorMessage(c->conn) : "out of memory");
        return;
    }
    c->state = PGC_CONNECTING;
    c->io_fd = -1;
    conn_timer(c, cfg->connect_timeout_ms);
    conn_connect_step(c);
}

/* ---- queries --------------------------------------------------------------------------------- */

/* Backstop for a statement the server does not time out itself (role statement_timeout). A health check
 * is a probe: a server that cannot answer it within the connect bound is down. */
static int statement_bound_ms(const struct pgconn *c)
{
    const struct config *cfg = c->be->pool->cfg;
    if (c->job && c->job->kind == JOB_HEALTH)
        return cfg->connect_timeout_ms;
    return cfg->statement_timeout_ms > 0 ? cfg->statement_timeout_ms + 1000 : 0;
}

static void conn_send(struct pgconn *c, const char *sql, int nparams, char *const *params, const int *lengths)
{
    if (!PQsendQueryParams(c->conn, sql, nparams, NULL, (const char *const *)params, lengths, NULL, 0)) {
        conn_reset(c, PQerrorMessage(c->conn));
        return;
    }
    conn_timer(c, statement_bound_ms(c));
    c->flushing = true;
    conn_io_cb(c->io_fd, EV_WRITE, c);
}

/* What a read on the primary is sure to include: every write whose fence its reader saw (they were
 * committed before it started), and the WAL before the position last sampled (a commit record there
 * may still be becoming visible at that very position: hence - 1). A read made to wait for the
 * primary-only fence gets "newest", which a cache may store but never treats as a position. */
static uint64_t primary_data_lsn(const struct pool *p, const struct job *j)
{
    if (j->fence == POOL_LSN_NONE)
        return POOL_LSN_NEWEST;
    uint64_t sampled = p->primary.lsn ? p->primary.lsn - 1 : 0;
    return j->fence > sampled ? j->fence : sampled;
}

/* Moves the queued reads of j's statement that c's backend may serve into j->batch; true if any. */
static bool batch_gather(struct pgconn *c, struct job *j)
{
    struct side_queue *q = &c->be->pool->queue[c->be->side];
    struct job **tail = &j->batch;
    int n = 1;
    struct job *prev = NULL, *k = q->head;
    while (k && n < BATCH_MAX) {
        struct job *next = k->next;
        bool fits = k->batch_sql == j->batch_sql && !k->target &&
                    (c->be->side == POOL_PRIMARY || replica_eligible(c->be, k->fence));
        if (fits) {
            if (prev)
                prev->next = next;
            else
                q->head = next;
            if (q->tail == k)
                q->tail = prev;
            q->len--;
            k->next = NULL;
            *tail = k;
            tail = &k->next;
            n++;
        } else {
            prev = k;
        }
        k = next;
    }
    return j->batch != NULL;
}

/* Parameter i of the statement: the array of every job's parameter i, in batch order. */
static void batch_send(struct pgconn *c, struct job *j)
{
    struct pool *p = c->be->pool;
    struct job *jobs[BATCH_MAX];
    int n = 0;
    for (struct job *k = j; k && n < BATCH_MAX; k = k == j ? j->batch : k->next) {
        jobs[n++] = k;
        if (k != j && k->enqueued_us)
            p->stats[c->be->side].wait_us_total += clock_now_us() - k->enqueued_us;
        k->data_lsn = j->data_lsn;
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
        conn_send(c, j->batch_sql, j->nparams, arrays, NULL);
    }
    for (int i = 0; i < POOL_MAX_PARAMS; i++)
        free(arrays[i]);
    if (!ok)
        conn_reset(c, "out of memory building a batch"); /* its jobs fail or are retried as for a broken link */
}

static void conn_start(struct pgconn *c, struct job *j)
{
    struct pool *p = c->be->pool;
    if (j->kind != JOB_HEALTH && j->enqueued_us)
        p->stats[c->be->side].wait_us_total += clock_now_us() - j->enqueued_us;
    c->job = j;
    j->data_lsn = c->be->side == POOL_PRIMARY ? primary_data_lsn(p, j) : c->be->lsn;
    c->state = PGC_BUSY;
    c->result = NULL;
    if (j->batch_sql && batch_gather(c, j)) {
        batch_send(c, j);
        return;
    }
    conn_send(c, j->sql, j->nparams, j->params, j->lengths);
}

static enum pool_status result_status(const PGresult *res)
{
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK ? POOL_OK : POOL_ERR_SQL;
}

static void health_apply(struct backend *be, const struct pool_result *r);

/* Each read of a batch gets the rows of its own id (none: a 404), or the batch's error. */
static void batch_deliver(struct pool *p, struct job *j, const struct pool_result *r)
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
                mine = (struct pool_result){ .status = POOL_ERR_UNAVAILABLE, .sqlstate = "", .message = "out of memory",
                                             .side = r->side, .backend = r->backend };
        }
        job_finish(p, k, &mine);
        PQclear(own);
    }
}

/* A shared write failed as a whole (one row's conflict or check fails them all): each job again, alone. */
static void batch_write_split(struct pool *p, struct job *j)
{
    j->next = j->batch;
    j->batch = NULL;
    for (struct job *k = j, *next; k; k = next) {
        next = k->next;
        k->batch_sql = NULL;
        k->next = NULL;
        job_submit(p, k);
    }
}

/* The connection under a batch broke: every read in it is retried once on its own, like a single read. */
static void batch_requeue(struct pool *p, struct job *j, enum pool_side side)
{
    struct job *k = j->batch;
    j->batch = NULL;
    for (struct job *next; k; k = next) {
        next = k->next;
        if (k->retries++ < 1)
            job_submit(p, k);
        else
            job_fail(p, k, side, POOL_ERR_BROKEN, "database connection lost during the query");
    }
}

/* Takes a finished statement's job and result off its connection, which is idle again. */
static struct job *conn_statement_take(struct pgconn *c, PGresult **res)
{
    struct job *j = c->job;
    *res = c->result;
    c->result = NULL;
    c->job = NULL;
    c->state = PGC_IDLE;
    conn_timer(c, 0);
    return j;
}

/* The primary moved: every idle connection to its address is dropped (busy ones go when they answer). */
static void backend_idle_reset(struct backend *be, const char *why)
{
    for (int i = 0; i < be->nconns; i++)
        if (be->conns[i].state == PGC_IDLE)
            conn_reset(&be->conns[i], why);
}

static void conn_deliver(struct pgconn *c)
{
    struct backend *be = c->be;
    PGresult *res;
    struct job *j = conn_statement_take(c, &res);
    bool health = j->kind == JOB_HEALTH;
    struct pool_result r = { .status = result_status(res), .res = res, .sqlstate = "", .message = "",
                             .side = be->side, .backend = be->index, .data_lsn = j->data_lsn };
    if (r.status == POOL_ERR_SQL) {
        const char *st = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
        const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
        r.sqlstate = st ? st : "";
        r.message = msg ? msg : PQerrorMessage(c->conn);
    }
    bool bad = PQstatus(c->conn) == CONNECTION_BAD;
    if (!bad)
        conn_proven(c);
    if (j->kind == JOB_HEALTH)
        health_apply(be, &r);
    if (j->kind == JOB_LSN) {
        lsn_group_take(be->pool, j, &r);
        j = NULL;
    } else if (j->batch && j->kind == JOB_WRITE && r.status == POOL_ERR_SQL && strcmp(r.sqlstate, "25006") != 0) {
        batch_write_split(be->pool, j); /* nothing committed: each runs alone and gets its own answer */
        j = NULL;
    } else if (j->batch) {
        batch_deliver(be->pool, j, &r);
        j = NULL;
    }
    bool refused = strcmp(r.sqlstate, "25006") == 0;
    bool moved = be->side == POOL_PRIMARY && (refused || (health && be->in_recovery));
    if (moved && refused)
        log_error("primary: statement refused as read-only (25006): the primary moved; reconnecting");
    if (!moved && !bad)
        conn_wait(c, EV_READ);
    if (j)
        job_finish(be->pool, j, &r);
    PQclear(res);
    if (moved || bad)
        conn_reset(c, moved ? "the primary's address leads to a standby" : PQerrorMessage(c->conn));
    else if (c->state == PGC_IDLE)
        conn_pump(c);
    if (moved)
        backend_idle_reset(be, "the primary's address leads to a standby");
}

/* ---- commit LSNs ----------------------------------------------------------------------------- */

/* Every write of the group succeeded; lsn (POOL_LSN_NONE when unknown: reads of it go to the primary)
 * is at or past each one's commit. Ends the group and starts the next if writes are waiting. */
static void lsn_group_deliver(struct pool *p, struct job *g, uint64_t lsn)
{
    for (struct job *w = g->batch, *next; w; w = next) {
        next = w->next;
        struct pool_result r = { .status = POOL_OK, .res = w->held, .sqlstate = "", .message = "",
                                 .side = POOL_PRIMARY, .backend = -1, .commit_lsn = lsn };
        job_finish(p, w, &r);
    }
    g->batch = NULL;
    job_finish(p, g, &(struct pool_result){ .side = POOL_PRIMARY });
    p->lsn_inflight = false;
    lsn_kick(p);
}

static void lsn_group_take(struct pool *p, struct job *g, const struct pool_result *r)
{
    uint64_t lsn;
    if (r->status != POOL_OK || PQntuples(r->res) != 1 || pool_lsn_parse(PQgetvalue(r->res, 0, 0), &lsn) != 0) {
        log_warn("primary: cannot read pg_current_wal_lsn() after a commit; reads of it go to the primary");
        lsn = POOL_LSN_NONE;
    } else if (p->fences) {
        consistency_unknown_resolve(p->fences, p->lsn_marks, lsn);
    }
    lsn_group_deliver(p, g, lsn);
}

/* Sends one commit-LSN read for every write waiting, unless one is under way (its answer may predate
 * their commits: they wait for the next). */
static void lsn_kick(struct pool *p)
{
    if (p->lsn_inflight || !p->lsn_waiting.head)
        return;
    struct job *g = job_new(&(struct pool_query){ .sql = SQL_WRITE_LSN }, JOB_LSN, NULL, NULL);
    struct job *waiting = p->lsn_waiting.head;
    p->lsn_waiting = (struct side_queue){ 0 };
    p->lsn_inflight = true;
    if (!g) {
        log_warn("primary: out of memory reading a commit LSN: fencing with a primary-only LSN");
        for (struct job *w = waiting, *next; w; w = next) {
            next = w->next;
            job_finish(p, w, &(struct pool_result){ .status = POOL_OK, .res = w->held, .sqlstate = "", .message = "",
                                                     .side = POOL_PRIMARY, .backend = -1, .commit_lsn = POOL_LSN_NONE });
        }
        p->lsn_inflight = false;
        return;
    }
    g->batch = waiting;
    if (p->fences)
        consistency_unknown_snapshot(p->fences, p->lsn_marks);
    job_submit(p, g);
}


/* A shared write committed every job's row: the rows whose first column is the job's 1-based place. */
static void batch_committed(struct pool *p, struct job *j, PGresult *res)
{
    j->next = j->batch;
    j->batch = NULL;
    int place = 1;
    for (struct job *k = j, *next; k; k = next, place++) {
        next = k->next;
        char key[16];
        snprintf(key, sizeof(key), "%d", place);
        k->held = batch_result_pick(res, key, 1);
        if (k->held)
            queue_push(&p->lsn_waiting, k);
        else
            job_finish(p, k, &(struct pool_result){ .status = POOL_ERR_BROKEN, .sqlstate = "", .side = POOL_PRIMARY,
                                                    .backend = -1, .message = "out of memory after the commit" });
    }
    PQclear(res);
}

/* A write's statement committed: its connection is free at once, its answer waits for a commit LSN. */
static void conn_write_committed(struct pgconn *c)
{
    struct pool *p = c->be->pool;
    PGresult *res;
    struct job *j = conn_statement_take(c, &res);
    bool bad = PQstatus(c->conn) == CONNECTION_BAD;
    if (!bad) {
        conn_proven(c);
        conn_wait(c, EV_READ);
    }
    if (j->batch) {
        batch_committed(p, j, res);
    } else {
        j->held = res;
        queue_push(&p->lsn_waiting, j);
    }
    lsn_kick(p);
    if (bad)
        conn_reset(c, PQerrorMessage(c->conn));
    else if (c->state == PGC_IDLE)
        conn_pump(c);
}

/* The error says the server (or PgBouncer's link to it) went or cannot serve now, not that the
 * statement was wrong: a connection exception (PgBouncer's "server conn crashed?"), the session
 * terminated, or the server shutting down or starting up. */
static bool result_link_lost(const PGresult *res)
{
    const char *st = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    return st && (strncmp(st, "08", 2) == 0 || strcmp(st, "57P01") == 0 || strcmp(st, "57P02") == 0 ||
                  strcmp(st, "57P03") == 0);
}

/* The statement's results are all in: a committed write waits for its commit LSN; a statement without
 * side effect that lost its server runs again elsewhere; anything else is handed over (a write that lost
 * its server: dbreply tells the client its outcome is unknown). */
static void conn_statement_done(struct pgconn *c)
{
    if (c->job->kind == JOB_WRITE && result_status(c->result) == POOL_OK)
        conn_write_committed(c);
    else if (c->job->kind != JOB_WRITE && result_link_lost(c->result))
        conn_reset(c, PQresultErrorField(c->result, PG_DIAG_MESSAGE_PRIMARY));
    else
        conn_deliver(c);
}

/* Collects results; the first one of a statement is kept, later ones dropped, except an error after a
 * success: the statement ran, but its implicit transaction ends at Sync, and an error there (the session
 * terminated, a deferred constraint) means it did not commit. */
static void conn_read_results(struct pgconn *c)
{
    if (!PQconsumeInput(c->conn)) {
        conn_reset(c, PQerrorMessage(c->conn));
        return;
    }
    while (!PQisBusy(c->conn)) {
        PGresult *res = PQgetResult(c->conn);
        if (!res) {
            conn_statement_done(c);
            return;
        }
        if (!c->result) {
            c->result = res;
        } else if (result_status(c->result) == POOL_OK && result_status(res) != POOL_OK) {
            PQclear(c->result);
            c->result = res;
        } else {
            PQclear(res);
        }
    }
    conn_wait(c, EV_READ);
}

static void conn_idle_read(struct pgconn *c)
{
    if (!PQconsumeInput(c->conn) || PQstatus(c->conn) == CONNECTION_BAD) {
        conn_reset(c, PQerrorMessage(c->conn));
        return;
    }
    PGnotify *n;
    while ((n = PQnotifies(c->conn)))
        PQfreemem(n);
    conn_wait(c, EV_READ);
}

static void conn_io_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct pgconn *c = arg;
    switch (c->state) {
    case PGC_CONNECTING:
        conn_connect_step(c);
        return;
    case PGC_IDLE:
        conn_idle_read(c);
        return;
    case PGC_DOWN:
        return;
    case PGC_BUSY:
        break;
    }
    if (c->flushing) {
        int rc = PQflush(c->conn);
        if (rc < 0) {
            conn_reset(c, PQerrorMessage(c->conn));
            return;
        }
        if (rc == 1) {
            conn_wait(c, EV_WRITE);
            return;
        }
        c->flushing = false;
    }
    conn_read_results(c);
}

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct pgconn *c = arg;
    switch (c->state) {
    case PGC_DOWN:
        conn_connect(c);
        break;
    case PGC_CONNECTING:
        conn_reset(c, "connect_timeout passed");
        break;
    case PGC_BUSY:
        if (c->job && c->job->kind == JOB_HEALTH) {
            conn_reset(c, "health check not answered within connect_timeout");
            break;
        }
        c->be->pool->stats[c->be->side].timeouts++;
        if (c->job)
            c->job->retries = 1; /* a read that timed out is not tried again */
        conn_reset(c, "statement_timeout passed without an answer");
        break;
    case PGC_IDLE:
        break;
    }
}

/* ---- routing --------------------------------------------------------------------------------- */

/* The primary may run any read. One of its connections free with nothing of its own waiting takes the
 * oldest read queued for the replicas: a read never waits while a server that may serve it has an idle
 * connection (a replica that went may hold its connections' statements in PgBouncer, unanswered, until
 * the statement bound). */
static bool primary_takes_reads(const struct pool *p)
{
    return p->primary.healthy && !p->primary.in_recovery;
}

static void conn_pump(struct pgconn *c)
{
    struct pool *p = c->be->pool;
    struct job *j = queue_take(&p->queue[c->be->side], c->be);
    if (!j && c->be->side == POOL_PRIMARY && primary_takes_reads(p))
        j = queue_take(&p->queue[POOL_REPLICA], c->be);
    if (j)
        conn_start(c, j);
}

static struct pgconn *backend_idle_conn(struct backend *be)
{
    for (int i = 0; i < be->nconns; i++)
        if (be->conns[i].state == PGC_IDLE)
            return &be->conns[i];
    return NULL;
}

static bool replica_eligible(const struct backend *be, uint64_t fence)
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
        if (!replica_eligible(be, fence))
            continue;
        if (!eligible)
            eligible = be;
        struct pgconn *c = backend_idle_conn(be);
        if (c) {
            *idle = c;
            p->rr++;
            return be;
        }
    }
    return eligible;
}

static void queue_or_fail(struct pool *p, enum pool_side side, struct job *j)
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
        event_add(p->sweep_ev, &(struct timeval){ 0, SWEEP_MS * 1000 });
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
    event_add(p->sweep_ev, &(struct timeval){ 0, SWEEP_MS * 1000 });
}

/* A read that no replica has replayed far enough for yet, while the primary is down: it waits in the
 * primary's queue (up to queue_timeout) for a healthy replica's next sample to pass its fence, and then
 * moves there (backend_reroute). */
static bool read_may_wait_for_replica(const struct pool *p, const struct job *j)
{
    return j->kind == JOB_READ && j->fence != POOL_LSN_NONE && pool_replicas_up(p) > 0;
}

static void job_submit(struct pool *p, struct job *j)
{
    struct pgconn *c = NULL;
    if (j->kind == JOB_READ && replica_pick(p, j->fence, &c)) {
        if (!c && primary_takes_reads(p))
            c = backend_idle_conn(&p->primary); /* every replica connection busy: see conn_pump */
        if (c)
            conn_start(c, j);
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
    c = backend_idle_conn(be);
    if (c)
        conn_start(c, j);
    else
        queue_or_fail(p, POOL_PRIMARY, j);
}

/* Takes every job of the side's queue that `moves` picks out of it, keeping the others in order, and
 * submits each again (with its first enqueue time: the queue timeout still counts from then). */
static void queue_resubmit(struct pool *p, enum pool_side side, bool (*moves)(struct pool *, const struct job *))
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
        job_submit(p, j);
    }
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
static void backend_reroute(struct pool *p)
{
    queue_resubmit(p, POOL_REPLICA, read_lost_its_replica);
    queue_resubmit(p, POOL_PRIMARY, read_has_a_replica);
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

static void sweep_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct pool *p = arg;
    uint64_t now = clock_now_us();
    queue_expire(p, POOL_PRIMARY, now);
    queue_expire(p, POOL_REPLICA, now);
    backend_reroute(p);
    if (p->queue[0].len || p->queue[1].len)
        event_add(p->sweep_ev, &(struct timeval){ 0, SWEEP_MS * 1000 });
}

/* ---- health ---------------------------------------------------------------------------------- */

/* The primary's address now leads to a standby (a failover demoted it, or PgBouncer or a multi-host
 * conninfo points at the wrong node): out of rotation. conn_deliver then drops the primary's idle
 * connections so that new ones are made (a conninfo with target_session_attrs=read-write then finds
 * the new primary). */
static void primary_in_recovery(struct backend *be)
{
    if (!be->in_recovery)
        log_error("primary: the server is in recovery (a standby): writes fail until it is a primary again; "
                  "reconnecting");
    be->in_recovery = true;
    backend_down(be, "in recovery");
}

/* A new primary identity (promotion, another cluster): rows its predecessor acknowledged but never
 * shipped may sit in the cache; it is bypassed until it moves to a new epoch. */
static void primary_identity_check(struct pool *p, const PGresult *res)
{
    const char *sysid = PQgetvalue(res, 0, 2), *timeline = PQgetvalue(res, 0, 3);
    uint64_t id = strtoull(sysid, NULL, 10) ^ (strtoull(timeline, NULL, 16) * 0x9E3779B97F4A7C15ULL);
    if (p->fences && consistency_primary_seen(p->fences, id)) {
        log_warn("primary: a new primary (system %s, timeline %s): the cache is bypassed until it moves to "
                 "a new epoch", sysid, timeline);
        consistency_cache_dirty_set(p->fences);
    }
}

static void primary_health_apply(struct backend *be, const struct pool_result *r, bool was)
{
    struct pool *p = be->pool;
    uint64_t lsn;
    if (r->status != POOL_OK || PQntuples(r->res) != 1 || PQnfields(r->res) != 4 ||
        pool_lsn_parse(PQgetvalue(r->res, 0, 0), &lsn) < 0) {
        backend_down(be, r->message && r->message[0] ? r->message : "health check failed");
        return;
    }
    if (PQgetvalue(r->res, 0, 1)[0] == 't') {
        primary_in_recovery(be);
        return;
    }
    be->lsn = lsn;
    be->healthy = true;
    be->in_recovery = false;
    primary_identity_check(p, r->res);
    if (p->floor_lsn == 0 && be->lsn != 0)
        p->floor_lsn = be->lsn;
    if (p->fences)
        consistency_unknown_resolve(p->fences, p->health_marks, be->lsn);
    if (!was)
        log_info("primary: healthy (lsn %" PRIX64 "): in rotation", be->lsn);
}

static void health_apply(struct backend *be, const struct pool_result *r)
{
    struct pool *p = be->pool;
    be->health_inflight = false;
    bool was = be->healthy;
    if (be->side == POOL_PRIMARY) {
        primary_health_apply(be, r, was);
        return;
    }
    if (r->status == POOL_OK && PQntuples(r->res) == 1 && pool_lsn_parse(PQgetvalue(r->res, 0, 0), &be->lsn) == 0) {
        long long ts_lag = atoll(PQgetvalue(r->res, 0, 1));
        be->lag_ms = be->lsn >= p->primary.lsn ? 0 : (int)(ts_lag > INT32_MAX ? INT32_MAX : ts_lag);
        be->healthy = be->lag_ms <= p->cfg->max_replica_lag_ms;
        if (!be->healthy && was)
            log_warn("%s: lag %dms over max_replica_lag: out of rotation", be_name(be), be->lag_ms);
    } else {
        backend_down(be, r->message && r->message[0] ? r->message : "health check failed");
    }
    if (be->healthy && !was)
        log_info("%s: healthy (lsn %" PRIX64 ", lag %dms): in rotation", be_name(be), be->lsn, be->lag_ms);
}

static void health_send(struct backend *be)
{
    if (be->health_inflight)
        return;
    struct pgconn *c = backend_idle_conn(be);
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
    if (be->side == POOL_PRIMARY && be->pool->fences)
        consistency_unknown_snapshot(be->pool->fences, be->pool->health_marks);
    conn_start(c, j);
}

static void health_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct pool *p = arg;
    health_send(&p->primary);
    for (int i = 0; i < p->nreplicas; i++)
        health_send(&p->replicas[i]);
    backend_reroute(p);
}

/* ---- public ---------------------------------------------------------------------------------- */

void pool_write(struct pool *p, const struct pool_query *q, pool_cb cb, void *arg)
{
    struct job *j = job_new(q, JOB_WRITE, cb, arg);
    if (!j) {
        struct pool_result r = { .status = POOL_ERR_UNAVAILABLE, .sqlstate = "", .message = "out of memory" };
        cb(arg, &r);
        return;
    }
    job_submit(p, j);
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
    job_submit(p, j);
}

static int backend_init(struct pool *p, struct backend *be, enum pool_side side, int index, const char *dsn)
{
    *be = (struct backend){ .pool = p, .side = side, .index = index, .dsn = dsn, .nconns = p->cfg->pool_size };
    for (int i = 0; i < be->nconns; i++) {
        struct pgconn *c = &be->conns[i];
        *c = (struct pgconn){ .be = be, .io_fd = -1, .state = PGC_DOWN };
        c->timer_ev = evtimer_new(p->base, conn_timer_cb, c);
        if (!c->timer_ev)
            return -1;
        conn_connect(c);
    }
    return 0;
}

struct pool *pool_new(struct event_base *base, const struct config *cfg, struct consistency *fences)
{
    struct pool *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->base = base;
    p->cfg = cfg;
    p->fences = fences;
    p->nreplicas = cfg->replica_count;
    p->sweep_ev = evtimer_new(base, sweep_cb, p);
    p->health_ev = event_new(base, -1, EV_PERSIST, health_cb, p);
    if (!p->sweep_ev || !p->health_ev || backend_init(p, &p->primary, POOL_PRIMARY, -1, cfg->primary_dsn) < 0)
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
 * (resource_ops.h).
 * Returns true if it carried a write whose statement was sent (its outcome unknown) or had committed. */
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
    write |= backend_close(&p->primary);
    for (int i = 0; i < p->nreplicas; i++)
        write |= backend_close(&p->replicas[i]);
    if (write && p->fences) {
        log_warn("exiting with writes in flight: the cache is bypassed until it moves to a new epoch");
        consistency_cache_dirty_set(p->fences);
    }
    if (p->sweep_ev)
        event_free(p->sweep_ev);
    if (p->health_ev)
        event_free(p->health_ev);
    free(p);
}

static void backend_stats(const struct backend *be, struct pool_side_stats *s)
{
    for (int i = 0; i < be->nconns; i++) {
        switch (be->conns[i].state) {
        case PGC_IDLE: s->idle++; break;
        case PGC_BUSY: s->in_use++; break;
        case PGC_CONNECTING: s->connecting++; break;
        case PGC_DOWN: s->down++; break;
        }
    }
}

void pool_stats(const struct pool *p, enum pool_side side, struct pool_side_stats *out)
{
    *out = p->stats[side];
    out->waiting = p->queue[side].len;
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
    *out = (struct pool_backend_stats){ .queries = be->queries, .errors = be->errors, .outages = be->outages,
                                        .in_use = s.in_use, .idle = s.idle, .connecting = s.connecting,
                                        .down = s.down, .lsn = be->lsn, .lag_ms = be->lag_ms,
                                        .up = be->healthy && backend_connected(be) > 0 };
}

bool pool_primary_up(const struct pool *p)
{
    return p->primary.healthy && backend_connected(&p->primary) > 0;
}

bool pool_primary_settled(const struct pool *p)
{
    return pool_primary_up(p) || p->primary.failures > 0 || p->primary.in_recovery;
}

int pool_replicas_up(const struct pool *p)
{
    int n = 0;
    for (int i = 0; i < p->nreplicas; i++)
        n += p->replicas[i].healthy && backend_connected(&p->replicas[i]) > 0;
    return n;
}

int pool_replica_count(const struct pool *p)
{
    return p->nreplicas;
}
