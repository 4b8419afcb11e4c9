/* fence: per-table commit-LSN fences shared by every worker of a master (a MAP_SHARED mapping made
 * before fork), so a read anywhere after an acknowledged write is routed to a server that has it. */
#ifndef PGAPI_FENCE_H
#define PGAPI_FENCE_H

#include <stdbool.h>
#include <stdint.h>

enum fence_table { FENCE_USERS = 0, FENCE_POSTS, FENCE_COUNT };

struct fences;

/* Called by the master once, before the first fork; the mapping outlives worker generations. */
struct fences *fences_create(void);
void fences_destroy(struct fences *f);
/* Raises the table's fence to lsn (never lowers it). */
void fences_raise(struct fences *f, enum fence_table t, uint64_t lsn);
uint64_t fences_get(const struct fences *f, enum fence_table t);

/* Set by a worker whose cache invalidation failed: every worker bypasses Redis until one of them has
 * moved the cache to a new epoch (so nothing cached before the failure is served again). */
void fences_cache_dirty_set(struct fences *f);
bool fences_cache_dirty(const struct fences *f);
void fences_cache_dirty_clear(struct fences *f);

#endif
