/* fence: per-table commit-LSN fences shared by every worker of a master (a MAP_SHARED mapping made
 * before fork), so a read anywhere after an acknowledged write is routed to a server that has it. */
#ifndef PGAPI_FENCE_H
#define PGAPI_FENCE_H

#include <stdbool.h>
#include <stdint.h>

enum fence_table { FENCE_USERS = 0, FENCE_POSTS, FENCE_COUNT };

#define FENCE_LSN_NONE UINT64_MAX /* what a read gets while a table has an unresolved unknown commit:
                                   * the primary only (the pool's POOL_LSN_NONE) */

struct fences;

/* Called by the master once, before the first fork; the mapping outlives worker generations. */
struct fences *fences_create(void);
void fences_destroy(struct fences *f);
/* Raises the table's fence to lsn (never lowers it). */
void fences_raise(struct fences *f, enum fence_table t, uint64_t lsn);
/* The table's fence; FENCE_LSN_NONE while it has an unknown commit not yet resolved. */
uint64_t fences_get(const struct fences *f, enum fence_table t);

/* Row fences: a read of one row waits only for writes to rows that hash to its bucket (and for deletes
 * that cascaded into its set), not for every write to the table: under a steady write load, reads of
 * other rows keep going to the replicas. Lists keep waiting for the table fence. */
enum fence_rowset { FENCE_ROW_USER = 0, FENCE_ROW_POST, FENCE_ROW_USER_POSTS, FENCE_ROWSETS };

void fences_raise_row(struct fences *f, enum fence_rowset s, int64_t id, uint64_t lsn);
/* Raises every row of the set at once (a cascade whose rows cannot be listed). */
void fences_raise_rowset(struct fences *f, enum fence_rowset s, uint64_t lsn);
uint64_t fences_get_row(const struct fences *f, enum fence_rowset s, int64_t id);

/* A write to table t committed but its commit LSN could not be read (the connection went after the
 * COMMIT): every read of t (rows and lists) goes to the primary until a position of the primary read
 * after this call is known; that position then becomes a floor of t's fences (it is past the commit). */
void fences_unknown_mark(struct fences *f, enum fence_table t);
/* Before sending a read of the primary's position: how many unknown commits each table has had. */
void fences_unknown_snapshot(const struct fences *f, uint64_t marks[FENCE_COUNT]);
/* `lsn` was read on the primary after `marks` was taken: every unknown commit counted there is at or
 * below it. */
void fences_unknown_resolve(struct fences *f, const uint64_t marks[FENCE_COUNT], uint64_t lsn);

/* Set by a worker whose cache invalidation failed: every worker bypasses Redis until one of them has
 * moved the cache to a new epoch (so nothing cached before the failure is served again). */
void fences_cache_dirty_set(struct fences *f);
bool fences_cache_dirty(const struct fences *f);
/* Counts the times the cache was marked dirty (a failed invalidation, a worker that died): the workers'
 * local copies taken before the last one are never served. */
uint64_t fences_cache_troubles(const struct fences *f);
void fences_cache_dirty_clear(struct fences *f);

/* The primary's identity (its system identifier and timeline) as a worker sampled it. Returns true to
 * exactly one caller when it differs from the one seen before: a promotion (new timeline) or another
 * cluster behind the same address. That caller acts on it (the cache may hold rows the new primary
 * never got, if the old one's last commits were not replicated). */
bool fences_primary_seen(struct fences *f, uint64_t identity);

#endif
