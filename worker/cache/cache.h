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

/* What became of a write's row offered to the cache (cache_through): stored, or refused because a newer
 * version of the row was recorded (older), the commit LSN was not above the key's fence or the fence is
 * primary-only (fence), the epoch moved since the write was sent, or the store is not verified (epoch),
 * the commit LSN is unknown (unknown), the row is over max_value_bytes (large). The first four are the
 * invalidation script's answers 2..5, in this order. */
enum cache_through_result {
    CACHE_THROUGH_STORED,
    CACHE_THROUGH_OLDER,
    CACHE_THROUGH_FENCE,
    CACHE_THROUGH_EPOCH,
    CACHE_THROUGH_UNKNOWN,
    CACHE_THROUGH_LARGE,
    CACHE_THROUGH_RESULTS
};

struct cache_stats {
    uint64_t connects, disconnects, ping_failures, master_changes;
    uint64_t through[CACHE_THROUGH_RESULTS]; /* write-through, by enum cache_through_result */
    uint64_t hits, misses, waits, bypasses, fills, invalidations, invalidation_failures, epoch_bumps;
    uint64_t log_reads, log_resets, verifications, purges; /* the deployment's (docs/consistency.md) */
};

struct cache *cache_new(struct event_base *base, const struct config *cfg, struct consistency *consistency);
void cache_free(struct cache *c);
enum cache_state cache_state(const struct cache *c);
const char *cache_state_name(enum cache_state s);
/* With [redis] sentinels: "host:port" of the master the Sentinels named last; else NULL. */
const char *cache_master(const struct cache *c);
void cache_stats(const struct cache *c, struct cache_stats *out);

/* Keys are the caller's ("user:42"); the module adds the namespace and the epoch (cache_keys.h). */
enum cache_lookup_kind {
    CACHE_HIT,    /* value holds the cached body */
    CACHE_LEASE,  /* a miss; this caller holds the fill lease (token) */
    CACHE_WAIT,   /* a miss; another request is filling (token: its lease): wait for its fill */
    CACHE_BYPASS, /* Redis unusable: read the database, do not fill */
};

struct cache_lookup {
    enum cache_lookup_kind kind;
    const char *value; /* CACHE_HIT: valid during the callback only */
    size_t len;
    uint64_t data_lsn; /* CACHE_HIT: every write up to this LSN is in the value (see pool_result) */
    uint64_t fence;    /* the key's fence: a read for the fill must see at least this LSN */
    char token[24];    /* CACHE_LEASE: the lease, for cache_fill; CACHE_WAIT: the holder's lease */
    char epoch[24];
    char key[96];  /* the key as stored (a list page's includes its generation) */
    char list[64]; /* a list page: its list's generation name; "" for a single row */
    char base[64]; /* the key as asked for */
};

#define CACHE_KEY_MAX 64

#define CACHE_CHANGE_KEYS_MAX 2
#define CACHE_CHANGE_GENS_MAX 3
#define CACHE_CHANGE_IDS_MAX 256
#define CACHE_CHANGE_FENCES_MAX (CACHE_CHANGE_IDS_MAX + 16)

/* The deployment's fences a read waits for or a write raises, by name (worker/api/effects.h names them):
 * with [redis] deployment_fences on, Redis holds them for every server on the prefix. */
#define CACHE_READ_FENCES_MAX 8 /* a lookup names at most this many */
struct cache_fences {
    const char *const *names;
    int n;
};

/* What a committed write changes: single keys, lists (every page of a generation), and the rows a
 * cascade took with it, by id (keys "<id_prefix><id>"); and the fences it raises. */
struct cache_change {
    struct cache_fences fences;
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
 * `list` names the list (its generation) a page belongs to (NULL for a single row). `fences` (the
 * caller's, valid until cb runs) are the deployment's fences the read waits for: the key's fence in the
 * answer is also the highest of them. */
void cache_lookup(struct cache *c, const char *key, const char *list, const struct cache_fences *fences,
                  cache_lookup_cb cb, void *arg);
/* Stores value (with data_lsn: what it holds of every key) if the lease is still the caller's, reach_lsn
 * (what it holds of this key: fill_wait_reach) has reached the key's fence, and the value is at most
 * max_value_bytes. Fire and forget: a fill's slowness or failure costs nothing else (it has no deadline
 * and never drops the connection). */
void cache_fill(struct cache *c, const struct cache_lookup *lease, const char *value, size_t len,
                uint64_t data_lsn, uint64_t reach_lsn);
/* Gives the lease back without a value (the caller will not fill), so other readers need not wait for it. */
void cache_release(struct cache *c, const struct cache_lookup *lease);
/* A committed write's row, for write-through (docs/consistency.md, "Write-through"). */
struct cache_through {
    const char *key;   /* the row's key ("user:42"); NULL: no row to offer */
    int64_t version;   /* the row's version column as the write returned it (0: unknown) */
    bool deleted;      /* a deletion: the row and every key the change names get a tombstone */
    const char *value; /* the row as a GET of it answers (NULL: record the version only) */
    size_t len;
    const char *epoch; /* cache_epoch() before the write was sent */
};

/* After a commit at lsn: bumps each list's generation and raises its fence, raises each key's fence and
 * deletes its value and lease. With t, the write's row key too: its version is recorded, and with
 * [redis] write_through on the row is stored under it when it is provably the newest (else deleted as
 * any key). cb(ok=false) after a failure or timeout: the cache is then bypassed by every worker until it
 * moves to a new epoch. */
void cache_invalidate(struct cache *c, const struct cache_change *ch, uint64_t lsn,
                      const struct cache_through *t, cache_done_cb cb, void *arg);
/* The epoch this worker saw last ("" when the cache is not usable): a write reads it before it is sent, and
 * its row is stored only if no new epoch came between. */
const char *cache_epoch(const struct cache *c);

/* ---- the rate limiter's counter (worker/api/ratelimit.c) --------------------------------------- */

enum cache_rate_result {
    CACHE_RATE_ALLOWED,
    CACHE_RATE_LIMITED,
    CACHE_RATE_UNKNOWN, /* Redis down, slow (command_timeout) or refusing: the caller decides alone */
};
struct cache_rate {
    enum cache_rate_result result;
    uint64_t remaining; /* ALLOWED: requests still allowed at once */
    uint64_t retry_us;  /* LIMITED: until the next one is allowed */
    uint64_t reset_us;  /* until the client's whole burst is available again */
};
/* r is NULL only when the worker exits with the command in flight: free, answer nothing. */
typedef void (*cache_rate_cb)(void *arg, const struct cache_rate *r);
/* One GCRA step (one EVALSHA) on the client `key` (at most CACHE_KEY_MAX bytes, under the prefix): one
 * request every interval_us, tolerance_us (burst intervals) ahead at most. Answers through cb exactly once
 * (synchronously with CACHE_RATE_UNKNOWN when Redis is not up), UNKNOWN past command_timeout. */
void cache_rate_check(struct cache *c, const char *key, uint64_t interval_us, uint64_t tolerance_us,
                      cache_rate_cb cb, void *arg);

/* ---- the deployment (docs/consistency.md, "Several servers") ----------------------------------- */

/* The store can be trusted: the link is up and its state was verified (not lost since this server's
 * fences were last written there). While it cannot, lookups answer CACHE_BYPASS and reads go to the
 * primary. Always true with deployment_fences off while the link is up. */
bool cache_trusted(const struct cache *c);
/* What a new worker waits for before it accepts: Redis is off, down, or its store trusted. */
bool cache_settled(const struct cache *c);
/* Redis can take a write's invalidation now (the link is up). */
bool cache_writable(const struct cache *c);

/* Lost state is re-verified with a position of the primary read after the loss was seen: the cache asks
 * for one through this hook and is answered with cache_primary_lsn_done (ok false: none could be read). */
struct cache_hooks {
    void (*primary_lsn)(void *arg, struct cache *c);
    /* The cache-dirty flag is set: record a purge on the primary; answered with cache_purge_recorded. */
    void (*purge)(void *arg, struct cache *c);
    void *arg;
};
void cache_set_hooks(struct cache *c, const struct cache_hooks *hooks);
void cache_primary_lsn_done(struct cache *c, bool ok, uint64_t lsn);

/* The primary's purge record (migration 0005), as the worker last read it: a gen not yet applied in the
 * store is applied (every fence's floor raised to lsn, a new epoch) before Redis is trusted again. */
void cache_purge_seen(struct cache *c, uint64_t gen, uint64_t lsn);
void cache_purge_recorded(struct cache *c, bool ok, uint64_t gen, uint64_t lsn);

/* One entry of the deployment's fence log: a write's fences (names separated by spaces) and its commit
 * LSN (unknown: the write's commit LSN could not be read; its tables read from the primary for a while). */
struct cache_log_entry {
    uint64_t lsn;
    bool unknown;
    const char *names;
    size_t len;
};
enum cache_sync_result {
    CACHE_SYNC_OK,     /* every entry logged before the call was applied */
    CACHE_SYNC_RESET,  /* as OK, but entries were lost to this worker (trimmed, a new epoch, a store
                        * verified again): every local copy must go */
    CACHE_SYNC_FAILED, /* Redis unusable: nothing is known */
};
typedef void (*cache_log_cb)(void *arg, const struct cache_log_entry *e);
typedef void (*cache_sync_cb)(void *arg, enum cache_sync_result r);
/* Reads the log from where this worker left it to its end, applying each entry through `apply`, then
 * calls done once (synchronously with CACHE_SYNC_FAILED when nothing could be sent). */
void cache_sync(struct cache *c, cache_log_cb apply, cache_sync_cb done, void *arg);

#endif
