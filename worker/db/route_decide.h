/* route_decide: the pool's routing decisions as pure functions of a snapshot of its backends (no
 * connection, no event), so that they can be tested on their own (tests/unit/test_pool_routing.c). */
#ifndef PGAPI_ROUTE_DECIDE_H
#define PGAPI_ROUTE_DECIDE_H

#include <stdbool.h>
#include <stdint.h>

#include "common/config.h"
#include "worker/db/pool.h"

/* What a decision reads of one backend. */
struct route_backend {
    bool healthy;     /* in rotation: its last health check passed (a replica: lag within limits) */
    bool in_recovery; /* the primary only: its last health check found a standby */
    uint64_t lsn;     /* primary: WAL position; replica: replay position; as last sampled */
    int idle;         /* connections idle now */
    int connected;    /* connections idle or running a statement */
    int failures;     /* consecutive failed or lost connections */
    int nconns;       /* pool_size */
    int lag_ms;       /* a replica: its lag as last sampled (0 once caught up with the primary) */
};

struct route_view {
    struct route_backend primary;
    struct route_backend replicas[CONFIG_MAX_REPLICAS];
    int nreplicas;
    uint64_t floor_lsn; /* see pool.floor_lsn: 0 until the primary was sampled once */
    unsigned rr;        /* the round-robin position over the replicas */
};

enum route_where {
    ROUTE_START, /* an idle connection of `backend` runs it now */
    ROUTE_QUEUE, /* it waits in the queue of `side` */
    ROUTE_FAIL,  /* the primary is known down, and nothing else may serve it: answered now */
};

struct route_decision {
    enum route_where where;
    enum pool_side side; /* where it runs or waits */
    int backend;         /* ROUTE_START: -1 the primary, else the replica's index */
    bool rr_advance;     /* the round-robin position moves on: a replica with an idle connection was picked */
};

/* A replica may serve a read that must see every write up to fence. */
bool route_replica_may_serve(const struct route_backend *replica, uint64_t floor_lsn, uint64_t fence);
/* The primary may run reads queued for the replicas. */
bool route_primary_takes_reads(const struct route_backend *primary);
/* Replicas in rotation: healthy and connected. */
int route_replicas_up(const struct route_view *v);
/* The replica for a read: round-robin over the eligible replicas, preferring one with an idle
 * connection (*idle true). -1 when none is eligible (the read then goes to the primary). */
int route_replica_pick(const struct route_view *v, uint64_t fence, bool *idle);
/* Why a read with this fence runs on the primary (it does: no replica took it). */
enum pool_primary_read route_primary_read_reason(const struct route_view *v, uint64_t fence);
/* A replica's replay position after one of its reads returned `sample` (its pg_last_wal_replay_lsn()
 * read in the read's own statement): the replica has replayed at least that far, so the known position
 * rises to it, never falls; unless the pool's view of the replica was reset after the read was sent
 * (`reset`: a health check found it lower, it left rotation, the primary changed identity), when the
 * sample may describe the server as it was before and is dropped. */
uint64_t route_replay_learn(uint64_t known, uint64_t sample, bool reset);
/* What a read on the primary is sure to include (its pool_result.data_lsn), from its fence and the
 * primary's position last sampled before it was sent: every write whose commit LSN is at or below the
 * answer, which is strictly below both (route_decide.c says why). */
uint64_t route_primary_data_lsn(uint64_t fence, uint64_t sampled);
/* Whether a read that no replica may serve yet (route_replica_pick finds none) waits up to wait_ms for one
 * rather than run on the primary (replica_wait.h): its fence is a position, and a replica in rotation keeps
 * up (lag under wait_ms), so its replay will likely pass the fence within the wait. */
bool route_read_may_wait(const struct route_view *v, uint64_t fence, int wait_ms);
/* Where a statement goes: a read (fence as pool_read's) or, when !read, a write or a statement for the
 * primary. */
struct route_decision route_decide(const struct route_view *v, bool read, uint64_t fence);

#endif
