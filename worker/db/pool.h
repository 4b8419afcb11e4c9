/* pool: per-worker non-blocking libpq connections in two sides, primary (writes, fenced reads) and
 * replica (other reads, round-robin over healthy replicas), with a bounded FIFO wait queue. */
#ifndef PGAPI_POOL_H
#define PGAPI_POOL_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

struct event_base;
struct config;
struct pool;

enum pool_side { POOL_PRIMARY = 0, POOL_REPLICA = 1 };

enum pool_status {
    POOL_OK = 0,          /* res holds the statement's result */
    POOL_ERR_SQL,         /* the server rejected the statement: sqlstate/message set */
    POOL_ERR_UNAVAILABLE, /* no connection: queue full, queue timeout, backend down */
    POOL_ERR_BROKEN,      /* the connection broke or timed out mid-statement: outcome unknown */
};

#define POOL_LSN_NONE                                               \
    UINT64_MAX /* a read with this fence always goes to the primary \
                * (= CONSISTENCY_LSN_NONE) */
#define POOL_LSN_NEWEST (UINT64_MAX - 1)

struct pool_result {
    enum pool_status status;
    PGresult *res;        /* owned by the pool: valid only during the callback */
    const char *sqlstate; /* "" unless POOL_ERR_SQL */
    const char *message;
    enum pool_side side; /* where it ran */
    int backend;         /* replica index, -1 for the primary */
    uint64_t commit_lsn; /* for writes: pg_current_wal_lsn() read after the commit, else 0 */
    uint64_t data_lsn;   /* for reads: every write up to this LSN is in the data (a replica's replay
                          * position sampled before the read; on the primary, the read's fence or the
                          * primary's position sampled before it; POOL_LSN_NEWEST after a primary-only
                          * fence: recent, but not a position) */
    uint64_t queue_us;   /* how long it waited for a connection (its last attempt) */
    uint64_t db_us;      /* how long its statement ran, from sending to its result */
};

typedef void (*pool_cb)(void *arg, const struct pool_result *r);

struct pool_query {
    const char *sql; /* a string literal: the pool keeps the pointer */
    int nparams;
    const char *const *params; /* copied by the pool */
    const int *lengths;        /* NULL: NUL-terminated text parameters */
    /* Optional, for a read whose one parameter is an id: the same statement taking $1 as a bigint[]
     * (id = ANY($1)) and returning the id as its first column. Reads of it waiting in the queue then
     * run together (batch.h); each still gets the result a single read would have had. */
    const char *batch_sql;
    /* With batch_sql: the jobs of one statement must differ in their first parameter (the row a batched
     * replace or patch writes: an UPDATE ... FROM applies one input row per row). */
    bool batch_distinct;
    /* Optional: a W3C traceparent (copied; anything but lowercase hex and '-' is dropped). The statement
     * is sent after a comment naming it, sqlcommenter style, so pg_stat_activity shows the trace. A batch
     * carries its first read's. */
    const char *traceparent;
};

/* Why a read ran on the primary rather than a replica (pgapi_pool_primary_reads_total{reason}). */
enum pool_primary_read {
    POOL_PRIMARY_READ_NEWEST,        /* it must see the newest data: its fences are unknown (a Redis store
                                      * being verified, Redis bypassed, a commit position unknown) */
    POOL_PRIMARY_READ_FENCE,         /* no replica in rotation has replayed its fence yet */
    POOL_PRIMARY_READ_NO_REPLICA,    /* no replica in rotation */
    POOL_PRIMARY_READ_REPLICAS_BUSY, /* every replica that may serve it was busy: the primary was idle */
    POOL_PRIMARY_READS
};

struct pool_side_stats {
    uint64_t queries, errors, timeouts, queue_full, wait_us_total;
    uint64_t primary_reads[POOL_PRIMARY_READS]; /* the primary side's only */
    uint64_t batches;                           /* statements that ran several queued reads at once */
    uint64_t replay_samples; /* the replica side's only: replay positions its reads returned and the
                              * pool took (not dropped by a reset: route_replay_learn) */
    uint64_t replica_waits;  /* reads that waited for a replica's replay (replica_wait.h) and then started
                              * on this side */
    int in_use, idle, connecting, down, waiting;
};

/* consistency (may be NULL): the pool resolves unknown commit LSNs (consistency.h) with the primary
 * positions it reads. */
struct consistency;
struct pool *pool_new(struct event_base *base, const struct config *cfg, struct consistency *consistency);
void pool_free(struct pool *p);

/* Both entry points always answer through cb, exactly once; immediately (from inside the call) when
 * the query cannot even be queued. */
/* A single-statement write on the primary in its own transaction; after it commits, the pool reads
 * pg_current_wal_lsn() (one read, sent after the commit, serves every write waiting for one) and
 * reports it as commit_lsn (POOL_LSN_NONE if that read failed: reads of the write then go to the primary). */
void pool_write(struct pool *p, const struct pool_query *q, pool_cb cb, void *arg);
/* A read that must see every write up to `fence_lsn`: a replica whose sampled replay position has
 * reached it, else the primary (POOL_LSN_NONE forces the primary, 0 allows any healthy replica). */
void pool_read(struct pool *p, const struct pool_query *q, uint64_t fence_lsn, pool_cb cb, void *arg);

/* Drops a read still waiting in a queue, never sent, whose callback argument is arg: its callback never
 * runs. False when there is none (sent, or answered): its callback runs as usual. */
bool pool_cancel(struct pool *p, const void *arg);

void pool_stats(const struct pool *p, enum pool_side side, struct pool_side_stats *out);
/* One backend: -1 the primary, else replica i (< pool_replica_count). */
struct pool_backend_stats {
    uint64_t queries, errors, outages;
    int in_use, idle, connecting, down;
    bool up;      /* in rotation: healthy (lag within max_replica_lag) and connected */
    uint64_t lsn; /* primary: WAL position; replica: replay position; as last sampled */
    int lag_ms;
};
void pool_backend_stats(const struct pool *p, int backend, struct pool_backend_stats *out);
/* Health as last seen: the primary answered, and how many replicas are in rotation. */
bool pool_primary_up(const struct pool *p);
/* "<system identifier>/<timeline>" of the primary as its last health check saw it; "" before. */
const char *pool_primary_id(const struct pool *p);
/* True once the primary is in rotation, a connection to it has failed, or it was found in recovery: what
 * a new worker waits for
 * before it accepts, so a reload never hands requests to a worker that is still connecting. */
bool pool_primary_settled(const struct pool *p);
int pool_replicas_up(const struct pool *p);
int pool_replica_count(const struct pool *p);

/* "16/B374D848" -> 64-bit LSN; returns -1 on failure (lsn_text.c). */
int pool_lsn_parse(const char *s, uint64_t *out);
/* And back, as PostgreSQL prints it. */
void pool_lsn_format(uint64_t lsn, char *buf, size_t cap);

#endif
