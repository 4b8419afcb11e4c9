/* consistency: the state every worker of a master shares (a MAP_SHARED mapping made before fork): per
 * table commit-LSN fences, row fences, unknown commits, and the cache's health; how they keep the
 * read-your-writes guarantee is docs/consistency.md. Tables are numbered by the resource
 * registry (worker/api/resource.h); this module knows none of them. */
#ifndef PGAPI_CONSISTENCY_H
#define PGAPI_CONSISTENCY_H

#include <stdbool.h>
#include <stdint.h>

/* The most tables (resources) the state holds; the registry is checked against it at start-up. */
#define CONSISTENCY_TABLES_MAX 8

#define CONSISTENCY_LSN_NONE                                               \
    UINT64_MAX /* what a read gets while a table has an unresolved unknown \
                * commit: the primary only (the pool's POOL_LSN_NONE) */

struct consistency;

/* Called by the master once, before the first fork, for `ntables` tables (1..CONSISTENCY_TABLES_MAX);
 * the mapping outlives worker generations. NULL (logged) when it cannot be made. */
struct consistency *consistency_create(int ntables);
void consistency_destroy(struct consistency *c);
/* Raises table t's fence to lsn (never lowers it). */
void consistency_raise(struct consistency *c, int t, uint64_t lsn);
/* The table's fence; CONSISTENCY_LSN_NONE while it has an unknown commit not yet resolved. */
uint64_t consistency_get(const struct consistency *c, int t);

/* Row fences: a read of one row waits only for writes to rows that hash to its bucket (and for deletes
 * that cascaded into its set), not for every write to the table: under a steady write load, reads of
 * other rows keep going to the replicas. Lists keep waiting for the table fence. Each table has two
 * row sets: its rows by id, and its rows by their parent's id (a user's posts). */
enum consistency_rowset { CONSISTENCY_ROWS = 0, CONSISTENCY_ROWS_BY_PARENT, CONSISTENCY_ROWSETS };

void consistency_raise_row(struct consistency *c, int t, enum consistency_rowset s, int64_t id, uint64_t lsn);
/* Raises every row of the set at once (a cascade whose rows cannot be listed). */
void consistency_raise_rowset(struct consistency *c, int t, enum consistency_rowset s, uint64_t lsn);
uint64_t consistency_get_row(const struct consistency *c, int t, enum consistency_rowset s, int64_t id);

#define CONSISTENCY_BUCKETS 4096

/* One fence, named: a table's, a row set's as a whole, or one bucket of a row set. A read or a write
 * lists the fences it waits for or raises as refs, so that one list serves this shared memory and the
 * deployment's copy of the fences in Redis (worker/api/effects.c names them there). */
enum consistency_ref_kind { CONSISTENCY_REF_TABLE, CONSISTENCY_REF_ROWSET, CONSISTENCY_REF_ROW };
struct consistency_ref {
    uint8_t table, kind, set; /* kind: enum consistency_ref_kind; set: enum consistency_rowset */
    uint16_t bucket;          /* CONSISTENCY_REF_ROW: < CONSISTENCY_BUCKETS */
};

struct consistency_ref consistency_ref_table(int t);
struct consistency_ref consistency_ref_rowset(int t, enum consistency_rowset s);
struct consistency_ref consistency_ref_row(int t, enum consistency_rowset s, int64_t id);
/* False when r names no fence of this state (a ref parsed from another server's text). */
bool consistency_ref_valid(const struct consistency *c, struct consistency_ref r);
void consistency_ref_raise(struct consistency *c, struct consistency_ref r, uint64_t lsn);
/* What a read of the ref waits for: a row also waits for its whole set; every ref for the table's
 * unknown commits (CONSISTENCY_LSN_NONE while one is unresolved). */
uint64_t consistency_ref_get(const struct consistency *c, struct consistency_ref r);

/* A write to table t committed but its commit LSN could not be read (the connection went after the
 * COMMIT): every read of t (rows and lists) goes to the primary until a position of the primary read
 * after this call is known; that position then becomes a floor of t's fences (it is past the commit). */
void consistency_unknown_mark(struct consistency *c, int t);
/* Before sending a read of the primary's position: how many unknown commits each table has had. */
void consistency_unknown_snapshot(const struct consistency *c, uint64_t marks[CONSISTENCY_TABLES_MAX]);
/* `lsn` was read on the primary after `marks` was taken: every unknown commit counted there is at or
 * below it. */
void consistency_unknown_resolve(struct consistency *c, const uint64_t marks[CONSISTENCY_TABLES_MAX],
                                 uint64_t lsn);

/* Set by a worker whose cache invalidation failed: every worker bypasses Redis until one of them has
 * moved the cache to a new epoch (so nothing cached before the failure is served again). */
void consistency_cache_dirty_set(struct consistency *c);
/* A worker died: the flag is set as above, and the deaths are counted (a statement the dead worker left
 * running may still commit later: see docs/consistency.md, "Several servers"). */
void consistency_worker_died(struct consistency *c);
uint64_t consistency_worker_deaths(const struct consistency *c);
bool consistency_cache_dirty(const struct consistency *c);
/* Counts the times the cache was marked dirty (a failed invalidation, a worker that died). */
uint64_t consistency_cache_troubles(const struct consistency *c);
/* Every worker's local copies become invalid (another server's state changed in a way the fences do not
 * tell: lost Redis state, a new epoch), without a bypass of Redis. */
void consistency_local_drop(struct consistency *c);
/* Changes with every trouble and every drop: the workers' local copies stamped with an older one are never
 * served. */
uint64_t consistency_local_generation(const struct consistency *c);
void consistency_cache_dirty_clear(struct consistency *c);

/* The primary's identity (its system identifier and timeline) as a worker sampled it. Returns true to
 * exactly one caller when it differs from the one seen before: a promotion (new timeline) or another
 * cluster behind the same address. That caller acts on it (the cache may hold rows the new primary
 * never got, if the old one's last commits were not replicated). */
bool consistency_primary_seen(struct consistency *c, uint64_t identity);
/* The primary as the workers of this server last saw it: its identity (0: not yet) and the highest WAL
 * position any of them read on it (health checks, commit LSNs; reset by a new identity). */
uint64_t consistency_primary_identity(const struct consistency *c);
void consistency_primary_position_note(struct consistency *c, uint64_t identity, uint64_t lsn);
uint64_t consistency_primary_position(const struct consistency *c);

#endif
