/* local_cache: a small per-worker copy of single-row cache values, in front of Redis. An entry carries
 * a stamp, the row fence (common/consistency.h) read before its value was fetched, and is served only
 * while that fence is unchanged (why that suffices: docs/consistency.md, "The workers' local cache"). */
#ifndef PGAPI_LOCAL_CACHE_H
#define PGAPI_LOCAL_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct local_cache;

/* What an entry is valid for: its row's fence, and the local generation (consistency_local_generation),
 * both as read before its value was fetched. */
struct local_stamp {
    uint64_t fence;
    uint64_t troubles;
};

/* entries: slots (rounded up to a power of two; 0 = disabled, returns NULL); max_bytes bounds the
 * values held; ttl_s bounds an entry's age (as Redis's TTL does). */
struct local_cache *local_cache_new(int entries, size_t max_bytes, int ttl_s);
void local_cache_free(struct local_cache *lc);
/* The value of key if it was stored with this stamp and has not expired; valid until the next put. */
bool local_cache_get(struct local_cache *lc, const char *key, const struct local_stamp *stamp,
                     const char **value, size_t *len);
/* As local_cache_get, without serving (not counted as a hit): whether a valid entry is there. */
bool local_cache_has(struct local_cache *lc, const char *key, const struct local_stamp *stamp);
void local_cache_put(struct local_cache *lc, const char *key, const struct local_stamp *stamp,
                     const char *value, size_t len);
void local_cache_stats(const struct local_cache *lc, uint64_t *hits, uint64_t *entries, size_t *bytes);

#endif
