/* pool_internal: the pool's state, shared by its parts and private to worker/db: the connection state
 * machine (pgconn), jobs, queues and batching (queue), routing (route), health checks (health) and
 * commit-LSN grouping (lsn). Everything outside worker/db uses pool.h. */
#ifndef PGAPI_POOL_INTERNAL_H
#define PGAPI_POOL_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "common/config.h"
#include "common/consistency.h"
#include "worker/db/pool.h"

#define POOL_MAX_CONNS 256
#define POOL_TRACE_MAX 55 /* a W3C traceparent, version 00 */

/* A connection's state; each backend keeps one list per state, and pgconn_move moves a connection
 * from one to another (as PgBouncer's change_server_state does). */
enum pgc_state {
    PGC_DOWN,       /* no connection: waiting for its back-off timer to reconnect */
    PGC_CONNECTING, /* PQconnectPoll under way, bounded by connect_timeout */
    PGC_IDLE,       /* connected, no statement: watched for notices and server-side closes */
    PGC_SENDING,    /* a statement is being flushed to the socket (PQflush) */
    PGC_BUSY,       /* the statement is sent: collecting its results */
    PGC_STATE_COUNT
};
/* JOB_LSN reads pg_current_wal_lsn() for every write that committed before it was sent (its batch). */
/* JOB_PROBE reads a replica's replay position for the reads waiting for it (replica_wait.h). */
enum job_kind { JOB_READ, JOB_WRITE, JOB_HEALTH, JOB_LSN, JOB_PROBE };

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
    uint64_t data_lsn; /* set when it starts: see pool_result.data_lsn */
    uint64_t resets;   /* a replica read: its backend's resets when it started (route_replay_learn) */
    uint64_t enqueued_us;
    uint64_t started_us; /* sent on a connection (the last time, after retries) */
    uint64_t wait_until; /* a parked read (replica_wait.h): when it gives up; set once, it waits once */
    bool wait_noted;     /* that wait was counted where it ran (replica_wait_note_start) */
    int retries;
    PGresult *held;                 /* a committed write's result, waiting for its commit LSN */
    struct backend *target;         /* health checks run on one given backend */
    const char *batch_sql;          /* see pool_query.batch_sql */
    bool batch_distinct;            /* see pool_query.batch_distinct */
    struct job *batch;              /* the reads running in this one's statement (a list through ->next) */
    char trace[POOL_TRACE_MAX + 1]; /* see pool_query.traceparent; "" = none */
};

struct pgconn {
    struct backend *be;
    PGconn *conn;
    enum pgc_state state;
    struct pgconn *prev, *next; /* in its backend's list of connections in its state */
    struct event *io_ev;
    int io_fd;
    struct event *timer_ev;
    struct job *job;
    PGresult *result;
    int failures;
};

struct pgconn_list {
    struct pgconn *head, *tail;
    int len;
};

struct backend {
    struct pool *pool;
    enum pool_side side;
    int index; /* -1 for the primary */
    const char *dsn;
    struct pgconn conns[POOL_MAX_CONNS]; /* where they live; pgconn_move keeps them in the lists */
    int nconns;
    struct pgconn_list in_state[PGC_STATE_COUNT];
    bool healthy; /* last health check passed (and, for a replica, lag within limits) */
    bool health_inflight;
    bool probe_inflight; /* a replica: a replay probe is under way (replica_wait.h) */
    int failures;        /* consecutive failed or lost connections; 0 once one connects */
    uint64_t lsn;        /* primary: current WAL position; replica: replay position (health checks, reads) */
    /* A replica: times the pool's view of it was reset (a health check found it lower, it left rotation,
     * the primary changed identity): a read sent before carries a position that may no longer hold. */
    uint64_t resets;
    int lag_ms;
    uint64_t queries, errors; /* statements answered here, and how many of them failed */
    uint64_t outages;         /* times it left rotation (broken connection or failed health check) */
    bool in_recovery;         /* the primary's last health check found a standby (logged on the change) */
    bool detached; /* a replica: its last sample found no WAL receiver (streaming from no primary) */
    bool unproven; /* a replica: the primary changed identity since this one was last seen streaming */
    bool stream_blind_logged; /* a replica: "cannot read the WAL receiver's status" was logged */
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
    uint64_t primary_identity; /* system identifier and timeline, hashed, as this pool last saw them */
    char primary_id[48];       /* the same as "<system identifier>/<timeline in 8 hex digits>" */
    /* Committed writes waiting for a commit-LSN read, and whether one is under way: one read serves
     * every write that committed before it was sent, so a busy primary does not read it per write. */
    struct side_queue lsn_waiting;
    bool lsn_inflight;
    /* Reads waiting for a replica to replay their fence (replica_wait.h), and the step that probes the
     * replicas and gives up on them. */
    struct side_queue parked;
    struct event *park_ev;
    /* Unknown commits counted (consistency.h) when the primary position read now in flight was sent, by the
     * health check and by the commit-LSN read: its answer resolves them. */
    struct consistency *consistency;
    uint64_t health_marks[CONSISTENCY_TABLES_MAX], lsn_marks[CONSISTENCY_TABLES_MAX];
    struct pool_side_stats stats[2];
};

static inline const char *be_name(const struct backend *be)
{
    static const char *names[] = { "primary",  "replica0", "replica1", "replica2", "replica3",
                                   "replica4", "replica5", "replica6", "replica7" };
    return names[be->index + 1];
}

static inline int backend_connected(const struct backend *be)
{
    return be->in_state[PGC_IDLE].len + be->in_state[PGC_SENDING].len + be->in_state[PGC_BUSY].len;
}

#endif
