/* cache: cache-aside over Redis with fill leases and LSN fences (docs/consistency.md): lookups, fills,
 * releases and invalidations, run as Lua scripts. The connection is redis_client's; its state is
 * cache_state(). Redis is optional at run time. */
#ifndef PGAPI_CACHE_H
#define PGAPI_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "worker/cache/redis_client.h"

struct event_base;
struct config;
struct cache;
struct consistency;

struct cache_stats {
    uint64_t connects, disconnects, ping_failures;
    uint64_t hits, misses, waits, bypasses, fills, invalidations, invalidation_failures, epoch_bumps;
};

struct cache *cache_new(struct event_base *base, const struct config *cfg, struct consistency *consistency);
void cache_free(struct cache *c);
enum cache_state cache_state(const struct cache *c);
const char *cache_state_name(enum cache_state s);
void cache_stats(const struct cache *c, struct cache_stats *out);

/* Keys are the caller's ("user:42"); the module adds the namespace and the epoch (cache_keys.h). */
enum cache_lookup_kind {
    CACHE_HIT,    /* value holds the cached body */
    CACHE_LEASE,  /* a miss; this caller holds the fill lease (token) */
    CACHE_WAIT,   /* a miss; another request is filling: retry shortly */
    CACHE_BYPASS, /* Redis unusable: read the database, do not fill */
};

struct cache_lookup {
    enum cache_lookup_kind kind;
    const char *value; /* CACHE_HIT: valid during the callback only */
    size_t len;
    uint64_t data_lsn; /* CACHE_HIT: every write up to this LSN is in the value (see pool_result) */
    uint64_t fence;    /* the key's fence: a read for the fill must see at least this LSN */
    char token[24];    /* CACHE_LEASE: the lease, for cache_fill */
    char epoch[24];
    char key[96];  /* the key as stored (a list page's includes its generation) */
    char list[64]; /* a list page: its list's generation name; "" for a single row */
    char base[64]; /* the key as asked for */
};

#define CACHE_KEY_MAX 64

#define CACHE_CHANGE_KEYS_MAX 2
#define CACHE_CHANGE_GENS_MAX 3
#define CACHE_CHANGE_IDS_MAX 256

/* What a committed write changes: single keys, lists (every page of a generation), and the rows a
 * cascade took with it, by id (keys "<id_prefix><id>"). */
struct cache_change {
    char keys[CACHE_CHANGE_KEYS_MAX][CACHE_KEY_MAX];
    char gens[CACHE_CHANGE_GENS_MAX][CACHE_KEY_MAX];
    int nkeys, ngens;
    const char *id_prefix; /* "post:" */
    const int64_t *ids;    /* 0..CACHE_CHANGE_IDS_MAX of them; the caller's, read during the call */
    int nids;
    bool all; /* rows that cannot be listed changed: move the whole cache to a new epoch */
};

typedef void (*cache_lookup_cb)(void *arg, const struct cache_lookup *r);
typedef void (*cache_done_cb)(void *arg, bool ok);

/* Always answers through cb exactly once (synchronously with CACHE_BYPASS when Redis is unusable).
 * `list` names the list (its generation) a page belongs to (NULL for a single row). */
void cache_lookup(struct cache *c, const char *key, const char *list, cache_lookup_cb cb, void *arg);
/* Stores value (with data_lsn) if the lease is still the caller's and data_lsn has reached the key's fence,
 * and the value is at most max_value_bytes. Fire and forget: a fill's slowness or failure costs nothing
 * else (it has no deadline and never drops the connection). */
void cache_fill(struct cache *c, const struct cache_lookup *lease, const char *value, size_t len,
                uint64_t data_lsn);
/* Gives the lease back without a value (the caller will not fill), so other readers need not wait for it. */
void cache_release(struct cache *c, const struct cache_lookup *lease);
/* After a commit at lsn: bumps each list's generation and raises its fence, raises each key's fence and
 * deletes its value and lease. cb(ok=false) after a failure or timeout: the cache is then bypassed by
 * every worker until it moves to a new epoch. */
void cache_invalidate(struct cache *c, const struct cache_change *ch, uint64_t lsn, cache_done_cb cb,
                      void *arg);

#endif
