/* pgconn: one libpq connection as a state machine (enum pgc_state) driven by one-shot libevent events
 * on PQsocket(): PQconnectStart/PQconnectPoll to connect, PQsendQueryParams + PQflush to send,
 * PQconsumeInput/PQisBusy/PQgetResult to read, a back-off timer to reconnect. Only unnamed statements
 * (PgBouncer transaction mode). */
#include "worker/db/pgconn.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "worker/db/batch.h"
#include "worker/db/health.h"
#include "worker/db/lsn.h"
#include "worker/db/queue.h"
#include "worker/db/replica_wait.h"
#include "worker/db/route.h"
#include "worker/db/sqlstate.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS \
    1000 /* reconnecting to a local PgBouncer is cheap; a returning server is used at once */

static void conn_io_cb(evutil_socket_t fd, short what, void *arg);

static void list_unlink(struct pgconn_list *l, struct pgconn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        l->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        l->tail = c->prev;
    c->prev = c->next = NULL;
    l->len--;
}

static void list_append(struct pgconn_list *l, struct pgconn *c)
{
    c->prev = l->tail;
    c->next = NULL;
    if (l->tail)
        l->tail->next = c;
    else
        l->head = c;
    l->tail = c;
    l->len++;
}

/* The one place a connection changes state: it leaves its backend's list for the old state and joins
 * the tail of the list for the new one. */
static void pgconn_move(struct pgconn *c, enum pgc_state to)
{
    struct backend *be = c->be;
    list_unlink(&be->in_state[c->state], c);
    c->state = to;
    list_append(&be->in_state[to], c);
}

/* Copies the list of connections in `state` into out (at most POOL_MAX_CONNS): a caller that resets
 * them moves them out of that list while it goes. */
static int list_snapshot(const struct backend *be, enum pgc_state state, struct pgconn **out)
{
    int n = 0;
    for (struct pgconn *c = be->in_state[state].head; c; c = c->next)
        out[n++] = c;
    return n;
}

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

/* A replica that failed (not one that lags): the reads still running on it are likely held behind it
 * (PgBouncer keeps a query waiting while it cannot reach the server). They have no side effect: each
 * runs again elsewhere at once rather than after the statement bound. */
void pgconn_abandon_reads(struct backend *be)
{
    struct pgconn *running[POOL_MAX_CONNS];
    int n = list_snapshot(be, PGC_SENDING, running);
    n += list_snapshot(be, PGC_BUSY, running + n);
    for (int i = 0; i < n; i++) {
        struct pgconn *c = running[i];
        bool sent = c->state == PGC_SENDING || c->state == PGC_BUSY;
        if (sent && c->job && (c->job->kind == JOB_READ || c->job->kind == JOB_PROBE))
            pgconn_reset(c, "its replica left rotation");
    }
}

/* Drops the connection. Its job gets POOL_ERR_BROKEN, except a read and a commit-LSN read: retried once
 * elsewhere (the writes waiting for an LSN that stays unknown succeed with a primary-only fence). A
 * broken read or health check takes its backend out of rotation, so the retry goes elsewhere. */
void pgconn_reset(struct pgconn *c, const char *why)
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
    pgconn_move(c, PGC_DOWN);
    c->failures++;
    be->failures++;
    conn_timer(c, clock_backoff_ms(c->failures, BACKOFF_MIN_MS, BACKOFF_MAX_MS));
    if (backend_connected(be) == 0)
        route_backend_down(be, "no connection left");
    else if (be->side == POOL_REPLICA) /* one failed connection is enough: its queued reads move now */
        route_backend_down(be, "one of its connections failed");
    if (j) {
        if (j->kind == JOB_HEALTH) {
            be->health_inflight = false;
            route_backend_down(be, "health check lost its connection");
        }
        if (j->kind == JOB_READ && be->side == POOL_REPLICA)
            route_backend_down(be, "a read lost its connection");
        if (j->kind == JOB_READ && j->batch) {
            for (struct job *k = j->batch; k; k = k->next)
                k->retries = j->retries > k->retries ? j->retries : k->retries;
            queue_batch_requeue(p, j, be->side);
        }
        for (struct job *k = j->kind == JOB_WRITE ? j->batch : NULL, *next; k; k = next) {
            next = k->next; /* a shared write: its outcome is unknown for every job, as for one */
            job_fail(p, k, be->side, POOL_ERR_BROKEN, "database connection lost during the query");
        }
        if (j->kind == JOB_WRITE)
            j->batch = NULL;
        if ((j->kind == JOB_READ || j->kind == JOB_LSN) && j->retries++ < 1)
            route_submit(p, j); /* no side effect: one retry on another connection */
        else
            job_fail(p, j, be->side, POOL_ERR_BROKEN, "database connection lost during the query");
    }
    route_reroute(p);
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
        pgconn_reset(c, PQerrorMessage(c->conn));
        return;
    }
    pgconn_move(c, PGC_IDLE);
    conn_timer(c, 0);
    conn_wait(c, EV_READ); /* notices and server-side closes arrive while idle */
    if (!be->healthy)
        health_send(be); /* back from an outage: checked before it gets replica traffic */
    if (c->state == PGC_IDLE)
        route_pump(c);
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
        pgconn_reset(c, PQerrorMessage(c->conn));
        break;
    }
}

void pgconn_connect(struct pgconn *c)
{
    const struct config *cfg = c->be->pool->cfg;
    c->conn = PQconnectStart(c->be->dsn);
    if (!c->conn || PQstatus(c->conn) == CONNECTION_BAD) {
        pgconn_reset(c, c->conn ? PQerrorMessage(c->conn) : "out of memory");
        return;
    }
    pgconn_move(c, PGC_CONNECTING);
    c->io_fd = -1;
    conn_timer(c, cfg->connect_timeout_ms);
    conn_connect_step(c);
}

/* A health check or a replay probe: a server that cannot answer it within the connect bound is down. */
static bool conn_probing(const struct pgconn *c)
{
    return c->job && (c->job->kind == JOB_HEALTH || c->job->kind == JOB_PROBE);
}

/* Backstop for a statement the server does not time out itself (role statement_timeout). */
static int statement_bound_ms(const struct pgconn *c)
{
    const struct config *cfg = c->be->pool->cfg;
    if (conn_probing(c))
        return cfg->connect_timeout_ms;
    return cfg->statement_timeout_ms > 0 ? cfg->statement_timeout_ms + 1000 : 0;
}

/* A read sent to the primary is trusted as "newest" (it waits for no fence), so it must not run on a
 * standby: a load balancer whose check has not yet seen a promotion, a crash restart or its own restart
 * (HAProxy 2.6 starts with every server up) can hand PgBouncer a standby for a moment. The guard runs
 * first (a lateral join needs it as the outer side) and fails there: pg_current_wal_lsn() raises 55000
 * during recovery. conn_statement_done then takes the primary out of rotation and runs the read again. */
static const char READ_GUARD_SQL[] =
    "SELECT q.* FROM (SELECT pg_current_wal_lsn() AS l) g, LATERAL (SELECT * FROM (%s) o WHERE g.l IS NOT "
    "NULL) q";

static bool conn_read_guarded(const struct pgconn *c)
{
    return c->be->side == POOL_PRIMARY && c->job && c->job->kind == JOB_READ;
}

/* A read on a replica returns the replica's replay position in the same statement, as one more column
 * (the same expression as the health check's): the pool learns how far each replica has replayed on
 * every read, not once per health_interval, so reads a fresh write's fence sent to the primary come back
 * sooner. conn_replay_take reads it and hands the caller the result without it. A node that is no
 * longer in recovery (a promoted replica still behind its replica address) answers one byte short of its
 * WAL position: a commit flushed there may not be visible yet (route_primary_data_lsn). */
static const char REPLICA_READ_SQL[] =
    "SELECT o.*, CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() - 1 "
    "END::text FROM (%s) o";

static bool conn_read_sampled(const struct pgconn *c)
{
    return c->be->side == POOL_REPLICA && c->job && (c->job->kind == JOB_READ || c->job->kind == JOB_PROBE);
}

/* The statement as sent: the primary's read guard or a replica's replay position around it, then the trace's
 * comment before all, so that pg_stat_activity.query (cut at track_activity_query_size) starts with it.
 * sqlcommenter puts its comment last; first survives the cut. NULL when out of memory; *owned is what to
 * free. */
static const char *statement_text(const struct pgconn *c, const char *sql, char **owned)
{
    const char *trace = c->job ? c->job->trace : "";
    bool guard = conn_read_guarded(c), sampled = conn_read_sampled(c);
    *owned = NULL;
    if (!guard && !sampled && !trace[0])
        return sql;
    char *inner = NULL;
    if (guard && asprintf(&inner, READ_GUARD_SQL, sql) < 0)
        return NULL;
    if (sampled && asprintf(&inner, REPLICA_READ_SQL, sql) < 0)
        return NULL;
    if (!trace[0]) {
        *owned = inner;
        return inner;
    }
    int n = asprintf(owned, "/*traceparent='%s'*/ %s", trace, inner ? inner : sql);
    free(inner);
    if (n < 0)
        *owned = NULL;
    return *owned;
}

void pgconn_send(struct pgconn *c, const char *sql, int nparams, char *const *params, const int *lengths)
{
    char *owned;
    const char *text = statement_text(c, sql, &owned);
    if (!text) {
        pgconn_reset(c, "out of memory");
        return;
    }
    int sent = PQsendQueryParams(c->conn, text, nparams, NULL, (const char *const *)params, lengths, NULL, 0);
    free(owned);
    if (!sent) {
        pgconn_reset(c, PQerrorMessage(c->conn));
        return;
    }
    conn_timer(c, statement_bound_ms(c));
    conn_io_cb(c->io_fd, EV_WRITE, c);
}

/* What a read on the primary is sure to include (route_primary_data_lsn: strictly below its fence and
 * the position last sampled). A read made to wait for the primary-only fence gets "newest", which a
 * cache may store but never treats as a position. */
static uint64_t primary_data_lsn(const struct pool *p, const struct job *j)
{
    if (j->fence == POOL_LSN_NONE)
        return POOL_LSN_NEWEST;
    return route_primary_data_lsn(j->fence, p->primary.lsn);
}

void pgconn_start(struct pgconn *c, struct job *j)
{
    struct pool *p = c->be->pool;
    if (j->kind != JOB_HEALTH && j->kind != JOB_PROBE && j->enqueued_us)
        p->stats[c->be->side].wait_us_total += clock_now_us() - j->enqueued_us;
    c->job = j;
    j->started_us = clock_now_us();
    j->data_lsn = c->be->side == POOL_PRIMARY ? primary_data_lsn(p, j) : c->be->lsn;
    j->resets = c->be->resets;
    pgconn_move(c, PGC_SENDING); /* PGC_BUSY once PQflush has sent the statement (conn_io_cb) */
    c->result = NULL;
    bool batched = j->batch_sql && queue_batch_gather(c, j);
    if (c->be->side == POOL_PRIMARY)
        route_primary_reads_note(p, j);
    replica_wait_note_start(p, c->be->side, j);
    if (batched) {
        queue_batch_send(c, j);
        return;
    }
    pgconn_send(c, j->sql, j->nparams, j->params, j->lengths);
}

static enum pool_status result_status(const PGresult *res)
{
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK ? POOL_OK : POOL_ERR_SQL;
}

/* Takes a finished statement's job and result off its connection, which is idle again. */
static struct job *conn_statement_take(struct pgconn *c, PGresult **res)
{
    struct job *j = c->job;
    *res = c->result;
    c->result = NULL;
    c->job = NULL;
    pgconn_move(c, PGC_IDLE);
    conn_timer(c, 0);
    return j;
}

/* The primary moved: every idle connection to its address is dropped (busy ones go when they answer). */
void pgconn_reset_idle(struct backend *be, const char *why)
{
    struct pgconn *idle[POOL_MAX_CONNS];
    int n = list_snapshot(be, PGC_IDLE, idle);
    for (int i = 0; i < n; i++)
        if (idle[i]->state == PGC_IDLE)
            pgconn_reset(idle[i], why);
}

/* A replica read's result: the replay position its statement returned (the last row's last column, the
 * newest) raises the replica's known position (route_replay_learn: never the read's own data_lsn, which
 * stays the position sampled before it was sent), and *res loses that column. True when the position
 * rose. A result without rows says nothing of the position. */
static bool conn_replay_take(struct backend *be, const struct job *j, PGresult **res)
{
    int n = PQntuples(*res), col = PQnfields(*res) - 1;
    uint64_t sample;
    bool rose = false;
    if (n > 0 && col >= 0 && !PQgetisnull(*res, n - 1, col) &&
        pool_lsn_parse(PQgetvalue(*res, n - 1, col), &sample) == 0) {
        bool reset = j->resets != be->resets;
        uint64_t known = route_replay_learn(be->lsn, sample, reset);
        rose = known > be->lsn;
        be->lsn = known;
        be->pool->stats[POOL_REPLICA].replay_samples += !reset;
    }
    PGresult *own = batch_result_drop_last(*res);
    PQclear(*res);
    *res = own; /* NULL when out of memory: the read fails (result_status) */
    return rose;
}

static void conn_deliver(struct pgconn *c)
{
    struct backend *be = c->be;
    PGresult *res;
    struct job *j = conn_statement_take(c, &res);
    bool rose = false;
    if (be->side == POOL_REPLICA && (j->kind == JOB_READ || j->kind == JOB_PROBE) && res &&
        PQresultStatus(res) == PGRES_TUPLES_OK)
        rose = conn_replay_take(be, j, &res);
    bool health = j->kind == JOB_HEALTH;
    struct pool_result r = { .status = result_status(res),
                             .res = res,
                             .sqlstate = "",
                             .message = "",
                             .side = be->side,
                             .backend = be->index,
                             .data_lsn = j->data_lsn };
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
    } else if (j->batch && j->kind == JOB_WRITE && r.status == POOL_ERR_SQL &&
               strcmp(r.sqlstate, "25006") != 0) {
        queue_batch_split(be->pool, j); /* nothing committed: each runs alone and gets its own answer */
        j = NULL;
    } else if (j->batch) {
        queue_batch_deliver(be->pool, j, &r);
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
        pgconn_reset(c, moved ? "the primary's address leads to a standby" : PQerrorMessage(c->conn));
    else if (c->state == PGC_IDLE)
        route_pump(c);
    if (moved)
        pgconn_reset_idle(be, "the primary's address leads to a standby");
    if (rose && (be->pool->queue[POOL_PRIMARY].len > 0 || be->pool->parked.len > 0))
        route_reroute(be->pool); /* reads queued on the primary or waiting for their fence may go here now */
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
        lsn_batch_committed(p, j, res);
    } else {
        j->held = res;
        queue_push(&p->lsn_waiting, j);
    }
    lsn_kick(p);
    if (bad)
        pgconn_reset(c, PQerrorMessage(c->conn));
    else if (c->state == PGC_IDLE)
        route_pump(c);
}

/* See sqlstate_link_lost. */
static bool result_link_lost(const PGresult *res)
{
    const char *st = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    return st && sqlstate_link_lost(st);
}

/* What READ_GUARD_SQL raises on a standby. */
static bool result_in_recovery(const PGresult *res)
{
    const char *st = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    return st && strcmp(st, "55000") == 0;
}

/* A read's guard found a standby behind the primary's address: out of rotation (its next health check
 * brings it back), every connection to it dropped; the read runs again like one whose link was lost. */
static void conn_primary_in_recovery(struct pgconn *c)
{
    struct backend *be = c->be;
    health_primary_in_recovery(be);
    pgconn_reset(c, "a read found the primary's address leading to a standby");
    pgconn_reset_idle(be, "the primary's address leads to a standby");
}

/* The statement's results are all in: a committed write waits for its commit LSN; a statement without
 * side effect that lost its server runs again elsewhere; anything else is handed over (a write that lost
 * its server: dbreply tells the client its outcome is unknown). */
static void conn_statement_done(struct pgconn *c)
{
    if (c->job->kind == JOB_WRITE && result_status(c->result) == POOL_OK)
        conn_write_committed(c);
    else if (c->job->kind != JOB_WRITE && result_link_lost(c->result))
        pgconn_reset(c, PQresultErrorField(c->result, PG_DIAG_MESSAGE_PRIMARY));
    else if (conn_read_guarded(c) && result_in_recovery(c->result))
        conn_primary_in_recovery(c);
    else
        conn_deliver(c);
}

/* Collects results; the first one of a statement is kept, later ones dropped, except an error after a
 * success: the statement ran, but its implicit transaction ends at Sync, and an error there (the session
 * terminated, a deferred constraint) means it did not commit. */
static void conn_read_results(struct pgconn *c)
{
    if (!PQconsumeInput(c->conn)) {
        pgconn_reset(c, PQerrorMessage(c->conn));
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
        pgconn_reset(c, PQerrorMessage(c->conn));
        return;
    }
    PGnotify *n;
    while ((n = PQnotifies(c->conn)))
        PQfreemem(n);
    conn_wait(c, EV_READ);
}

/* Sends what PQsendQueryParams queued; once it is all out, the statement is busy: its results may
 * already be in. */
static void conn_flush(struct pgconn *c)
{
    int rc = PQflush(c->conn);
    if (rc < 0) {
        pgconn_reset(c, PQerrorMessage(c->conn));
        return;
    }
    if (rc == 1) {
        conn_wait(c, EV_WRITE);
        return;
    }
    pgconn_move(c, PGC_BUSY);
    conn_read_results(c);
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
    case PGC_SENDING:
        conn_flush(c);
        return;
    case PGC_BUSY:
        conn_read_results(c);
        return;
    case PGC_STATE_COUNT:
        break;
    }
}

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct pgconn *c = arg;
    switch (c->state) {
    case PGC_DOWN:
        pgconn_connect(c);
        break;
    case PGC_CONNECTING:
        pgconn_reset(c, "connect_timeout passed");
        break;
    case PGC_SENDING:
    case PGC_BUSY:
        if (conn_probing(c)) {
            pgconn_reset(c, "health check or replay probe not answered within connect_timeout");
            break;
        }
        c->be->pool->stats[c->be->side].timeouts++;
        /* The server's own statement_timeout answers a slow statement with an error; no answer at all past
         * this bound means the link or server is broken (a replica stopped behind PgBouncer, which holds
         * the query while it cannot log in). A replica's read is then tried once elsewhere, like one whose
         * connection broke; on the primary a retry would meet the same server, so it is not. */
        if (c->job && c->be->side == POOL_PRIMARY)
            c->job->retries = 1;
        pgconn_reset(c, "statement_timeout passed without an answer");
        break;
    case PGC_IDLE:
    case PGC_STATE_COUNT:
        break;
    }
}

struct pgconn *pgconn_idle(struct backend *be)
{
    return be->in_state[PGC_IDLE].head; /* the one idle longest */
}

int pgconn_init(struct pgconn *c, struct backend *be)
{
    *c = (struct pgconn){ .be = be, .io_fd = -1, .state = PGC_DOWN };
    list_append(&be->in_state[PGC_DOWN], c);
    c->timer_ev = evtimer_new(be->pool->base, conn_timer_cb, c);
    if (!c->timer_ev)
        return -1;
    pgconn_connect(c);
    return 0;
}
