/* The cache-dirty flag's purge, as a state machine apart from Redis and the database: a bypass begun on
 * this server ends once a purge recorded on the primary after the trouble has been applied in Redis.
 *
 * Its two answers arrive in either order: the record's reply (the purge's generation) and the news that a
 * generation at or past it was applied (by this worker, or by another that saw it first: the workers of a
 * server record and apply purges independently, and under synchronous replication a record's reply can
 * come after another worker has already applied a later purge). Both are needed; whichever comes second
 * ends the bypass. */
#ifndef PGAPI_WORKER_CACHE_DIRTY_PURGE_H
#define PGAPI_WORKER_CACHE_DIRTY_PURGE_H

#include <stdbool.h>
#include <stdint.h>

enum dirty_purge_state {
    DIRTY_PURGE_IDLE,      /* nothing asked */
    DIRTY_PURGE_RECORDING, /* a purge record sent to the primary, its generation not known yet */
    DIRTY_PURGE_APPLYING,  /* recorded as `gen`: waiting for a purge at or past it to be applied */
};

struct dirty_purge {
    enum dirty_purge_state state;
    uint64_t gen;      /* DIRTY_PURGE_APPLYING: the generation recorded */
    uint64_t troubles; /* consistency_cache_troubles when it was asked for */
};

/* What the caller does next. */
enum dirty_purge_outcome {
    DIRTY_PURGE_WAIT,  /* nothing yet */
    DIRTY_PURGE_ENDED, /* applied: the bypass ends if no trouble came since (dirty_purge_clears) */
};

/* Asks for a purge if none is under way; true if the caller is to send the record now. */
bool dirty_purge_begin(struct dirty_purge *d, uint64_t troubles);
/* The record's reply: `ok` with its generation, or a failure (asked again on the next tick). `applied` is
 * the highest generation applied in Redis so far. */
enum dirty_purge_outcome dirty_purge_recorded(struct dirty_purge *d, bool ok, uint64_t gen, uint64_t applied);
/* A purge was applied: `applied` is the highest generation applied so far. */
enum dirty_purge_outcome dirty_purge_applied(struct dirty_purge *d, uint64_t applied);
/* After DIRTY_PURGE_ENDED: whether the flag may be cleared (no new trouble since the purge was asked). */
bool dirty_purge_clears(const struct dirty_purge *d, uint64_t troubles_now);

#endif
