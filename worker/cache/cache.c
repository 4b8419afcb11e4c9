/* cache: the cache protocol over redis_client. Every step that reads and writes several keys is one Lua
 * script, which Redis runs atomically; the scripts go by SHA1 once loaded. A request's callback runs
 * exactly once per lookup or invalidation; fills and lease releases are fire and forget. */
#include "worker/cache/cache.h"

#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/config.h"
#include "common/consistency.h"
#include "common/log.h"
#include "worker/cache/cache_keys.h"
#include "worker/cache/dirty_purge.h"

#define LEASE_TTL_MS 3000
#define FENCE_TTL_MIN_MS 60000

/* The keys the scripts use are laid out in cache_keys.h. A list's pages share a generation: a write that
 * can change the list bumps it, and every page key of the old generation is never read again. */
/* With the deployment's fences (ARGV[5] '1'): a store without its marker lost its state (a restart, a
 * FLUSHALL) and answers kind 0, trusted for nothing; the fence returned is also the highest of the
 * deployment's fences the read names (ARGV[6..]) and the floor. */
static const char LUA_LOOKUP[] = "local p, k = ARGV[1], ARGV[2] "
                                 "if ARGV[5] == '1' and redis.call('EXISTS', p .. ':verified') == 0 then "
                                 "return {0, '', '', '', k} end "
                                 "local e = redis.call('GET', p .. ':epoch') or '0' "
                                 "local f "
                                 "if ARGV[4] ~= '' then "
                                 "  k = k .. ':g' .. (redis.call('GET', p .. ':g:' .. ARGV[4]) or '0') "
                                 "  f = redis.call('GET', p .. ':f:g:' .. ARGV[4]) "
                                 "else f = redis.call('GET', p .. ':f:' .. k) end "
                                 "f = f or '0000000000000000' "
                                 "if ARGV[5] == '1' then "
                                 "  for _, x in ipairs(redis.call('HMGET', p .. ':fences', 'floor', "
                                 "unpack(ARGV, 6))) do if x and x > f then f = x end end "
                                 "end "
                                 "local v = redis.call('GET', p .. ':e' .. e .. ':v:' .. k) "
                                 "if v then return {1, v, f, e, k} end "
                                 "local lk = p .. ':e' .. e .. ':l:' .. k "
                                 "local h = redis.call('GET', lk) "
                                 "if h then return {3, h, f, e, k} end "
                                 "local t = tostring(redis.call('INCR', p .. ':seq')) "
                                 "redis.call('SET', lk, t, 'PX', ARGV[3]) "
                                 "return {2, t, f, e, k}";
/* A list page is filled only into the list's current generation and recorded in the list's page set,
 * so an invalidation can delete every live page: no page of an old generation is left behind. The set
 * holds at most ARGV[10] pages (list_pages): a fill into a full set first deletes pages the set names
 * (SPOP: any one), value and member together, so every stored page stays tracked and one invalidation
 * deletes at most that many (clients asking for thousands of distinct pages cannot make it block Redis).
 * The key's fence is checked against ARGV[11], what the value holds of this key; ARGV[7], what it holds of
 * every key, is stored with it (cache_fill). */
static const char LUA_FILL[] =
    "local p, k, e = ARGV[1], ARGV[2], ARGV[3] "
    "if (redis.call('GET', p .. ':epoch') or '0') ~= e then return 0 end "
    "local lk = p .. ':e' .. e .. ':l:' .. k "
    "if redis.call('GET', lk) ~= ARGV[4] then return 0 end "
    "redis.call('DEL', lk) "
    "local g, f = ARGV[8], nil "
    "if g ~= '' then "
    "  if k ~= ARGV[9] .. ':g' .. (redis.call('GET', p .. ':g:' .. g) or '0') then return 0 end "
    "  f = redis.call('GET', p .. ':f:g:' .. g) "
    "else f = redis.call('GET', p .. ':f:' .. k) end "
    "if ARGV[11] < (f or '0000000000000000') then return 0 end "
    "local vk = p .. ':e' .. e .. ':v:' .. k "
    "redis.call('SET', vk, ARGV[7] .. ARGV[5], 'EX', ARGV[6]) "
    "if g ~= '' then "
    "  local set = p .. ':e' .. e .. ':pages:' .. g "
    "  if redis.call('SISMEMBER', set, vk) == 0 then "
    "    while redis.call('SCARD', set) >= tonumber(ARGV[10]) do "
    "redis.call('DEL', redis.call('SPOP', set)) end "
    "    redis.call('SADD', set, vk) "
    "  end "
    "  redis.call('EXPIRE', set, ARGV[6]) "
    "end "
    "return 1";
/* With the deployment's fences (ARGV[7] '1'), first: the write's fences (ARGV[14 + ngens ..], nfences
 * of them) are raised in the deployment's hash (not for an unknown commit LSN: the log tells the other
 * servers instead) and logged in the capped fence log, which the workers read before serving a local
 * copy. A key's "primary only" fence (an unknown commit LSN) keeps its own expiry: a later write's real
 * position does not renew it (that position is in the hash, and the write's lease deletion stops older
 * fills), else a steady write load would keep the key primary-only and uncached for ever. */
/* Write-through (ARGV[8..13], docs/consistency.md "Write-through"): ARGV[8] is '' (none), 's' (store the
 * row ARGV[11] under its key ARGV[9] if it is provably the newest), 'v' (only record its version) or 'd'
 * (a deletion: every key it names gets a tombstone). <prefix>:wv:<key> holds the highest version a write
 * of the row stored or invalidated ('d' after a deletion); the row's version ARGV[10] orders writes of one
 * row, which their commit LSNs (read after the commit, grouped) do not. A store needs a newer version than
 * recorded, a commit LSN above the key's fence as it was (strictly: a write with the same grouped LSN
 * may be newer), no primary-only fence, the epoch the worker saw before it sent the write (ARGV[13]: no
 * new epoch, so no invalidation that could not name the row, came between) and, with the deployment's
 * fences, a verified store. The value is tagged with LSN 0: the commit LSN is read after the commit and
 * does not say the row holds every write up to it (a newer write of the row may have committed before
 * it was read), so a token read bypasses it and no local cache copies it. A write older than the version
 * recorded leaves the key's value: it holds that newer write, which committed after this one (the row
 * lock orders them), and every fill since read at or past its fence. The lease always goes (a fill under
 * way may have read before this commit). Answers {result, epoch}:
 * result 1 (nothing tried), 2 stored, 3 older, 4 fence, 5 epoch. */
static const char LUA_INVALIDATE[] =
    "local p, lsn, ttl = ARGV[1], ARGV[2], ARGV[3] "
    "local ngens, nf = tonumber(ARGV[5]), tonumber(ARGV[6]) "
    "local wm, wk = ARGV[8], ARGV[9] "
    "local first = 14 + ngens "
    "if ARGV[7] == '1' and nf > 0 then "
    "  local names = {unpack(ARGV, first, first + nf - 1)} "
    "  if lsn ~= 'FFFFFFFFFFFFFFFF' then "
    "    local cur, up = redis.call('HMGET', p .. ':fences', unpack(names)), {} "
    "    for i, x in ipairs(cur) do if (not x) or x < lsn then "
    "up[#up + 1] = names[i] up[#up + 1] = lsn end end "
    "    if #up > 0 then redis.call('HSET', p .. ':fences', unpack(up)) end "
    "  end "
    "  local seq = redis.call('INCR', p .. ':logseq') "
    "  redis.call('XADD', p .. ':log', 'MAXLEN', '~', '131072', '*', 's', seq, 'l', lsn, 'f', "
    "table.concat(names, ' ')) "
    "end "
    "if ARGV[4] == '1' then redis.call('INCR', p .. ':epoch') end "
    "local e = redis.call('GET', p .. ':epoch') or '0' "
    "local res, store, keep = 1, false, false "
    "if wm == 's' or wm == 'v' then "
    "  local vk, v = p .. ':wv:' .. wk, tonumber(ARGV[10]) "
    "  local cur = redis.call('GET', vk) "
    "  if cur == 'd' or (cur and tonumber(cur) >= v) then "
    "    if wm == 's' then res = 3 end "
    "    keep = cur ~= 'd' "
    "  else "
    "    redis.call('SET', vk, ARGV[10], 'PX', ttl) "
    "    if wm == 's' then "
    "      local f = redis.call('GET', p .. ':f:' .. wk) or '0000000000000000' "
    "      if e ~= ARGV[13] or (ARGV[7] == '1' and redis.call('EXISTS', p .. ':verified') == 0) then res = 5 "
    "      elseif f == 'FFFFFFFFFFFFFFFF' or lsn == 'FFFFFFFFFFFFFFFF' or lsn <= f then res = 4 "
    "      else res, store = 2, true end "
    "    end "
    "  end "
    "end "
    "local function raise(fk) "
    "  local cur = redis.call('GET', fk) "
    "  if (not cur) or cur < lsn then redis.call('SET', fk, lsn, 'PX', ttl) "
    "elseif cur ~= 'FFFFFFFFFFFFFFFF' or lsn == cur then redis.call('PEXPIRE', fk, ttl) end "
    "end "
    "for i = 14, 13 + ngens do "
    "  local set = p .. ':e' .. e .. ':pages:' .. ARGV[i] "
    "  for _, vk in ipairs(redis.call('SMEMBERS', set)) do redis.call('DEL', vk) end "
    "  redis.call('DEL', set) "
    "  redis.call('INCR', p .. ':g:' .. ARGV[i]) "
    "  raise(p .. ':f:g:' .. ARGV[i]) "
    "end "
    "for i = first + nf, #ARGV do "
    "  local k = ARGV[i] "
    "  raise(p .. ':f:' .. k) "
    "  redis.call('DEL', p .. ':e' .. e .. ':l:' .. k) "
    "  if not (keep and k == wk) then redis.call('DEL', p .. ':e' .. e .. ':v:' .. k) end "
    "  if wm == 'd' then redis.call('SET', p .. ':wv:' .. k, 'd', 'PX', ttl) end "
    "end "
    "if wm == 's' or wm == 'v' then "
    "  raise(p .. ':f:' .. wk) "
    "  redis.call('DEL', p .. ':e' .. e .. ':l:' .. wk) "
    "  if not keep then redis.call('DEL', p .. ':e' .. e .. ':v:' .. wk) end "
    "end "
    "if store then "
    "redis.call('SET', p .. ':e' .. e .. ':v:' .. wk, '0000000000000000' .. ARGV[11], 'EX', ARGV[12]) end "
    "return {res, e}";

/* A lease whose holder will not fill (the value is too large, or a page past the last id) is given back
 * at once: left to expire, it would make every other reader of the key wait for a fill that never comes
 * (CACHE_WAIT, up to 50 ms each) for LEASE_TTL_MS. Only the holder's own lease goes. */
static const char LUA_RELEASE[] = "local lk = ARGV[1] .. ':e' .. ARGV[2] .. ':l:' .. ARGV[3] "
                                  "if redis.call('GET', lk) == ARGV[4] then redis.call('DEL', lk) end "
                                  "return 1";

/* The store's identity: its run_id (a restarted or failed-over Redis has another), or "unknown" when the
 * ACL refuses INFO (then only a missing marker tells a loss). */
#define LUA_RUN_ID                                                                     \
    "local info = redis.pcall('INFO', 'server') "                                      \
    "local id = type(info) == 'string' and string.match(info, 'run_id:(%x+)') or nil " \
    "id = id or 'unknown' "

/* Is the store the one this deployment verified? The marker holds the run_id of the store it verified,
 * then the floor and the time of that verification (each verification makes a new marker: a worker that
 * sees it change drops its local copies, whose fence log entries may have gone with the loss). */
/* With its eviction policy: under allkeys-* Redis may evict a fence (they have no TTL), which no marker
 * would tell; and the epoch, read with the marker (a worker trusts the store knowing its epoch: cache_epoch).
 */
static const char LUA_CHECK[] = LUA_RUN_ID
    "local mem = redis.pcall('INFO', 'memory') "
    "local policy = type(mem) == 'string' and string.match(mem, 'maxmemory_policy:([%w-]+)') or '' "
    "return {redis.call('GET', ARGV[1] .. ':verified') or '', id, policy, "
    "redis.call('GET', ARGV[1] .. ':epoch') or '0'}";

/* Verifies a store that lost its state: every write acknowledged before the loss committed at or below
 * ARGV[2], a position of the primary read after the loss was seen; it becomes the floor of every fence,
 * the epoch moves (values cached before are never read again), and the marker says the store is known.
 * With ARGV[3], a purge recorded on the primary (cache_purge_seen) is applied the same way, once: the
 * store remembers the last one applied; a floor already at its position (a verification after it) covers
 * it: every value of the current epoch was read at or past that position. Without, ARGV[4] is the marker the
 * worker saw: if another worker has verified the store since, with a position read after the same loss,
 * nothing is done. */
static const char LUA_VERIFY[] =
    LUA_RUN_ID "local p = ARGV[1] "
               "local f = redis.call('HGET', p .. ':fences', 'floor') "
               "if ARGV[3] ~= '' then "
               "  if tonumber(redis.call('GET', p .. ':purged') or '0') >= tonumber(ARGV[3]) then "
               "return 'purged' end "
               "  redis.call('SET', p .. ':purged', ARGV[3]) "
               "  if f and f >= ARGV[2] then return 'purged' end "
               "elseif (redis.call('GET', p .. ':verified') or '') ~= ARGV[4] then return 'already' end "
               "if (not f) or f < ARGV[2] then redis.call('HSET', p .. ':fences', 'floor', ARGV[2]) end "
               "redis.call('INCR', p .. ':epoch') "
               "local t = redis.call('TIME') "
               "redis.call('SET', p .. ':verified', id .. '/' .. ARGV[2] .. '/' .. t[1] .. t[2]) "
               "return id";

/* The fence log from just after cursor ARGV[2] (at most ARGV[3] entries), with the marker and the epoch;
 * cursor '' asks only where the log ends (a worker starting has no local copy to check). {0}: the store
 * lost its state. */
static const char LUA_SYNC[] =
    "local p = ARGV[1] "
    "local m = redis.call('GET', p .. ':verified') "
    "if not m then return {0} end "
    "local e = redis.call('GET', p .. ':epoch') or '0' "
    "if ARGV[2] == '' then "
    "  local last = redis.call('XREVRANGE', p .. ':log', '+', '-', 'COUNT', 1) "
    "  if last[1] then return {1, m, e, last[1][1], last[1][2][2]} end "
    "  return {1, m, e, '0-0', '0'} "
    "end "
    "return {2, m, e, redis.call('XRANGE', p .. ':log', '(' .. ARGV[2], '+', 'COUNT', ARGV[3])}";

/* The rate limiter's GCRA (generic cell rate algorithm, as redis-cell and Stripe's limiter): one key per
 * client holds its theoretical arrival time (TAT, microseconds of Redis' own clock, so every server
 * agrees). A request is allowed when TAT, pushed one emission interval (ARGV[1], 1/rate) past
 * max(TAT, now), is at most the tolerance (ARGV[2], burst intervals) ahead of now; a refused one changes
 * nothing. The key expires when the bucket would be full again: an idle client leaves nothing behind.
 * Answers {allowed, remaining, retry_us, reset_us}. Lua numbers are doubles: microseconds since 1970
 * (2^50) stay exact, and '%.0f' writes them without an exponent. */
static const char LUA_RATE[] = "local k, T, tol = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]) "
                               "local t = redis.call('TIME') "
                               "local now = tonumber(t[1]) * 1000000 + tonumber(t[2]) "
                               "local tat = tonumber(redis.call('GET', k) or '0') or 0 "
                               "if tat < now then tat = now end "
                               "local ahead = tat + T - now "
                               "if ahead > tol then return {0, 0, ahead - tol, tat - now} end "
                               "redis.call('SET', k, string.format('%.0f', now + ahead), 'PX', "
                               "math.floor(ahead / 1000) + 1) "
                               "return {1, math.floor((tol - ahead) / T), 0, ahead}";

enum cmd_kind {
    CMD_RATE,
    CMD_PEEK,
    CMD_LOOKUP,
    CMD_FILL,
    CMD_RELEASE,
    CMD_INVALIDATE,
    CMD_EPOCH,
    CMD_EPOCH_READ,
    CMD_SCRIPT_LOAD,
    CMD_CHECK,
    CMD_VERIFY,
    CMD_SYNC,
    CMD_PURGE
};

/* The scripts go by SHA1 (EVALSHA) once SCRIPT LOAD on connect has told us the digests; until then,
 * and after a NOSCRIPT (SCRIPT FLUSH by hand), by their text (EVAL). */
enum script_id {
    SCRIPT_LOOKUP,
    SCRIPT_FILL,
    SCRIPT_RELEASE,
    SCRIPT_INVALIDATE,
    SCRIPT_CHECK,
    SCRIPT_VERIFY,
    SCRIPT_SYNC,
    SCRIPT_RATE,
    SCRIPT_COUNT
};
static const char *const SCRIPTS[SCRIPT_COUNT] = { LUA_LOOKUP, LUA_FILL,   LUA_RELEASE, LUA_INVALIDATE,
                                                   LUA_CHECK,  LUA_VERIFY, LUA_SYNC,    LUA_RATE };

/* Whether this worker trusts what the store holds (docs/consistency.md, "Several servers"). */
enum cache_trust {
    TRUST_UNCHECKED, /* a new link, or a loss seen: the marker not compared with the store yet */
    TRUST_VERIFYING, /* the store lost its state: verifying it (the primary's position, then LUA_VERIFY) */
    TRUST_OK,        /* the marker names this store */
};

/* Where this worker is in the fence log, and the sync under way (one at a time: cache_sync). */
struct cache_log_cursor {
    char id[48];   /* the last entry read; "" before the first sync */
    uint64_t seq;  /* its sequence number: the next entry must be seq + 1, or entries were trimmed */
    char mark[96]; /* the marker (74 chars) and the epoch as last synced: a change drops every local copy */
    char epoch[24];
    bool busy;
    bool reset; /* this sync found entries lost */
    int rounds; /* reads of this sync (a long backlog is skipped: reset) */
    cache_log_cb apply;
    cache_sync_cb done;
    void *arg;
};

/* One command in flight; redis_client calls back until it is over (redis_client.h), then it is freed. */
struct cache_cmd {
    struct redis_cmd sent; /* first: the client's part */
    struct cache *c;
    enum cmd_kind kind;
    cache_lookup_cb lookup_cb;
    cache_done_cb done_cb;
    cache_rate_cb rate_cb;
    void *arg;
    char key[64];                /* lookups: the key as asked for */
    char list[64];               /* a lookup of a list page: its list's generation name ("" for a row) */
    char peeked_epoch[24];       /* a peek: the epoch its value key was built from */
    enum script_id script;       /* SCRIPT LOAD */
    bool moves_epoch;            /* an invalidation of rows that could not be named */
    bool through;                /* an invalidation that may store its write's row (LUA_INVALIDATE 's') */
    struct script_args *by_text; /* an invalidation sent by its digest: its arguments, sent again by the
                                  * script's text if Redis answers NOSCRIPT (it did not run) */
    char lsn[CACHE_LSN_HEX];     /* CMD_VERIFY, CMD_PURGE: the floor it sets */
    uint64_t purge_gen;          /* CMD_PURGE */
    const struct cache_fences *fences; /* a lookup's: the caller's, valid until its callback */
};

struct cache {
    const struct config *cfg;
    struct redis_client *rc;
    struct consistency *consistency; /* shared: the cache-dirty flag */
    bool epoch_inflight;
    char sha[SCRIPT_COUNT][41];   /* "" until loaded */
    char epoch[24];               /* the epoch last seen: single-row lookups peek at it first */
    long reply_warned_s;          /* when a failed lookup was last logged (monotonic seconds) */
    unsigned long reply_unlogged; /* failed lookups since, not logged */
    struct cache_stats stats;     /* but the connection's own, which are redis_client's */
    enum cache_trust trust;
    bool check_inflight;
    bool run_id_warned;
    bool policy_refused;  /* an allkeys-* eviction policy was found (logged once) */
    char marker_seen[96]; /* the marker the last check found wrong: a verification replaces only it */
    struct cache_hooks hooks;
    struct cache_log_cursor log;
    uint64_t purge_seen, purge_applied; /* the primary's purge record (cache_purge_seen) */
    uint64_t purge_lsn;
    bool purge_inflight;
    struct dirty_purge dirty; /* the cache-dirty flag's purge (cache_hooks.purge) */
};

static struct cache_cmd *cmd_send(struct cache *c, enum cmd_kind kind, int argc, const char **argv,
                                  const size_t *lens, cache_lookup_cb lcb, cache_done_cb dcb, void *arg);
static void lookup_script_send(struct cache *c, const char *key, const char *list,
                               const struct cache_fences *fences, cache_lookup_cb cb, void *arg);

/* A lookup refused by Redis (a full Redis under noeviction refuses the lease script's first write on
 * every request): one line a second at most, saying how many went unlogged, not one per request. */
static void reply_warn(struct cache *c, const char *what, const char *err)
{
    int64_t now_s = clock_now_s();
    if (c->reply_warned_s != 0 && now_s == c->reply_warned_s) {
        c->reply_unlogged++;
        return;
    }
    log_warn("redis: %s: %s (%lu more since the last such line): cache bypassed for it", what, err,
             c->reply_unlogged);
    c->reply_warned_s = now_s;
    c->reply_unlogged = 0;
}

static bool deployment_on(const struct cache *c)
{
    return c->cfg->deployment_fences;
}

bool cache_trusted(const struct cache *c)
{
    return redis_client_up(c->rc) &&
           (!deployment_on(c) || (c->trust == TRUST_OK && c->purge_applied >= c->purge_seen));
}

static bool cache_usable(const struct cache *c)
{
    return cache_trusted(c) && !consistency_cache_dirty(c->consistency);
}

bool cache_settled(const struct cache *c)
{
    return redis_client_state(c->rc) == CACHE_DISABLED || redis_client_failed(c->rc) || cache_trusted(c);
}

bool cache_writable(const struct cache *c)
{
    return redis_client_up(c->rc);
}

/* ---- scripts and the epoch ------------------------------------------------------------------ */

/* On every connect (a restarted Redis has no scripts): commands sent before the digests arrive use EVAL. */
static void scripts_load(struct cache *c)
{
    memset(c->sha, 0, sizeof(c->sha));
    for (int i = 0; i < SCRIPT_COUNT; i++) {
        const char *argv[] = { "SCRIPT", "LOAD", SCRIPTS[i] };
        size_t lens[] = { 6, 4, strlen(SCRIPTS[i]) };
        struct cache_cmd *cmd = cmd_send(c, CMD_SCRIPT_LOAD, 3, argv, lens, NULL, NULL, NULL);
        if (cmd)
            cmd->script = (enum script_id)i;
        else
            log_warn("redis: cannot send SCRIPT LOAD: scripts go by EVAL");
    }
}

/* A NOSCRIPT answer (SCRIPT FLUSH by hand) reloads them once, not per reply: scripts_load clears the
 * digests, so the other NOSCRIPT answers already in flight find none loaded. */
static void scripts_reload_if_flushed(struct cache *c, const redisReply *r)
{
    if (!r || r->type != REDIS_REPLY_ERROR || strncmp(r->str, "NOSCRIPT", 8) != 0 || !redis_client_up(c->rc))
        return;
    bool loaded = false;
    for (int i = 0; i < SCRIPT_COUNT; i++)
        loaded = loaded || c->sha[i][0];
    if (!loaded)
        return;
    log_warn("redis: scripts were flushed: loading them again");
    scripts_load(c);
}

/* argv[0..1] of a script call: EVALSHA digest, or EVAL text while the digest is unknown */
static void script_argv(const struct cache *c, enum script_id id, const char **argv)
{
    bool loaded = c->sha[id][0] != '\0';
    argv[0] = loaded ? "EVALSHA" : "EVAL";
    argv[1] = loaded ? c->sha[id] : SCRIPTS[id];
}

static void eval_lens(int argc, const char **argv, size_t *lens, size_t value_index, size_t value_len)
{
    for (int i = 0; i < argc; i++)
        lens[i] = (size_t)i == value_index ? value_len : strlen(argv[i]);
}

/* argv[0..1] and their lengths for a call of script id by its text. */
static void script_argv_text(enum script_id id, const char **argv, size_t *lens)
{
    argv[0] = "EVAL";
    argv[1] = SCRIPTS[id];
    lens[0] = 4;
    lens[1] = strlen(SCRIPTS[id]);
}

/* A script call's arguments kept for a second sending by the script's text; argv[0..1] (the command and
 * the script) are set when it is sent again. */
struct script_args {
    int argc;
    const char **argv;
    size_t *lens;
};

static struct script_args *script_args_copy(int argc, const char **argv, const size_t *lens)
{
    size_t bytes = sizeof(struct script_args) + (size_t)argc * (sizeof(char *) + sizeof(size_t));
    for (int i = 2; i < argc; i++)
        bytes += lens[i];
    struct script_args *a = malloc(bytes);
    if (!a)
        return NULL;
    a->argc = argc;
    a->argv = (const char **)(a + 1);
    a->lens = (size_t *)(a->argv + argc);
    char *data = (char *)(a->lens + argc);
    for (int i = 0; i < argc; i++) {
        a->lens[i] = lens[i];
        a->argv[i] = NULL;
        if (i < 2)
            continue;
        memcpy(data, argv[i], lens[i]);
        a->argv[i] = data;
        data += lens[i];
    }
    return a;
}

/* Ends a bypass: a new epoch makes every value cached before the failure unreachable. With the
 * deployment's fences, a purge recorded on the primary does it instead: a write whose invalidation did
 * not run (or a worker that died with one under way) left no fence in Redis, and other servers may read
 * its rows from a replica that has not replayed it; the purge's floor, a position of the primary read
 * after the trouble, covers it on every server. */
static void epoch_bump(struct cache *c)
{
    if (c->epoch_inflight || !redis_client_up(c->rc) || !consistency_cache_dirty(c->consistency))
        return;
    if (deployment_on(c) && c->hooks.purge) {
        if (dirty_purge_begin(&c->dirty, consistency_cache_troubles(c->consistency)))
            c->hooks.purge(c->hooks.arg, c);
        return;
    }
    char key[96];
    if (!cache_key_epoch(key, sizeof(key), c->cfg->redis_prefix))
        return;
    const char *argv[] = { "INCR", key };
    size_t lens[] = { 4, strlen(key) };
    if (cmd_send(c, CMD_EPOCH, 2, argv, lens, NULL, NULL, NULL))
        c->epoch_inflight = true;
}

/* The epoch as the store holds it, learnt on every connect: a write is offered to the cache only with the
 * epoch known before it was sent (cache_epoch), and a worker that has not looked anything up yet knows
 * none. Its answer comes before the store check's, so a new worker knows it before it accepts. */
static void epoch_read(struct cache *c)
{
    char key[96];
    if (!cache_key_epoch(key, sizeof(key), c->cfg->redis_prefix))
        return;
    const char *argv[] = { "GET", key };
    size_t lens[] = { 3, strlen(key) };
    if (!cmd_send(c, CMD_EPOCH_READ, 2, argv, lens, NULL, NULL, NULL))
        log_debug("redis: the epoch's read not sent");
}

static void epoch_read_deliver(struct cache_cmd *cmd, const redisReply *r)
{
    if (r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_NIL))
        snprintf(cmd->c->epoch, sizeof(cmd->c->epoch), "%s", r->type == REDIS_REPLY_STRING ? r->str : "0");
}

/* ---- trust: is the store the one the deployment's fences were written to? ------------------- */

static void trust_check(struct cache *c)
{
    if (!deployment_on(c) || c->check_inflight || c->trust == TRUST_VERIFYING || !redis_client_up(c->rc))
        return;
    const char *argv[] = { NULL, NULL, "0", c->cfg->redis_prefix };
    script_argv(c, SCRIPT_CHECK, argv);
    size_t lens[4];
    eval_lens(4, argv, lens, SIZE_MAX, 0);
    if (cmd_send(c, CMD_CHECK, 4, argv, lens, NULL, NULL, NULL))
        c->check_inflight = true;
}

/* An answer says the marker is gone (a restart, a FLUSHALL): nothing is trusted until it is verified. */
static void trust_lost(struct cache *c)
{
    if (c->trust == TRUST_OK)
        log_warn("redis: the store lost its state (its marker is gone): reads go to the primary until it is "
                 "verified again");
    if (c->trust != TRUST_VERIFYING)
        c->trust = TRUST_UNCHECKED;
    trust_check(c);
}

/* Verifying needs a position of the primary read from now on; the worker's pool reads it (cache_hooks). */
static void trust_verify_start(struct cache *c)
{
    c->trust = TRUST_VERIFYING;
    if (c->hooks.primary_lsn)
        c->hooks.primary_lsn(c->hooks.arg, c);
    else
        cache_primary_lsn_done(c, false, 0);
}

void cache_set_hooks(struct cache *c, const struct cache_hooks *hooks)
{
    c->hooks = *hooks;
}

void cache_primary_lsn_done(struct cache *c, bool ok, uint64_t lsn)
{
    if (c->trust != TRUST_VERIFYING)
        return;
    c->trust = TRUST_UNCHECKED; /* unless the script goes out: checked again on the next tick */
    if (!ok) {
        log_warn("redis: cannot verify the store without the primary's position: checked again shortly");
        return;
    }
    char hex[CACHE_LSN_HEX];
    cache_lsn_hex(lsn, hex);
    const char *argv[] = { NULL, NULL, "0", c->cfg->redis_prefix, hex, "", c->marker_seen };
    script_argv(c, SCRIPT_VERIFY, argv);
    size_t lens[7];
    eval_lens(7, argv, lens, SIZE_MAX, 0);
    struct cache_cmd *cmd =
        redis_client_up(c->rc) ? cmd_send(c, CMD_VERIFY, 7, argv, lens, NULL, NULL, NULL) : NULL;
    if (cmd) {
        c->trust = TRUST_VERIFYING;
        memcpy(cmd->lsn, hex, sizeof(hex));
    }
}

/* The marker is "<run_id>/<floor>/<time>": the store is the one verified if its run_id leads it. */
static bool marker_names(const char *marker, const char *run_id)
{
    size_t n = strlen(run_id);
    return strncmp(marker, run_id, n) == 0 && marker[n] == '/';
}

static void purge_apply(struct cache *c);

static void check_deliver(struct cache_cmd *cmd, const redisReply *r)
{
    struct cache *c = cmd->c;
    c->check_inflight = false;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 4 || r->element[0]->type != REDIS_REPLY_STRING ||
        r->element[1]->type != REDIS_REPLY_STRING || r->element[2]->type != REDIS_REPLY_STRING ||
        r->element[3]->type != REDIS_REPLY_STRING) {
        if (r && r->type == REDIS_REPLY_ERROR)
            reply_warn(c, "store check failed", r->str);
        return; /* checked again on the next tick */
    }
    const char *marker = r->element[0]->str, *run_id = r->element[1]->str, *policy = r->element[2]->str;
    snprintf(c->epoch, sizeof(c->epoch), "%s", r->element[3]->str);
    if (strncmp(policy, "allkeys-", 8) == 0) {
        if (!c->policy_refused)
            log_error(
                "redis: maxmemory-policy %s may evict the deployment's fences: the cache is not used (set "
                "noeviction or a volatile-* policy)",
                policy);
        c->policy_refused = true;
        c->trust = TRUST_UNCHECKED;
        return;
    }
    c->policy_refused = false;
    if (strcmp(run_id, "unknown") == 0 && !c->run_id_warned) {
        log_warn("redis: INFO is refused to this user: a store replaced by a replica that missed writes is "
                 "seen only if it lacks the marker (grant +info)");
        c->run_id_warned = true;
    }
    if (marker_names(marker, run_id)) {
        if (c->trust != TRUST_OK)
            log_info("redis: store %s verified: its fences are trusted", run_id);
        c->trust = TRUST_OK;
        purge_apply(c);
        return;
    }
    log_warn("redis: store %s is not the one the deployment's fences were written to (marker \"%s\"): reads "
             "go to the primary while it is verified",
             run_id, marker);
    snprintf(c->marker_seen, sizeof(c->marker_seen), "%s", marker);
    trust_verify_start(c);
}

static void verify_deliver(struct cache_cmd *cmd, const redisReply *r)
{
    struct cache *c = cmd->c;
    if (c->trust != TRUST_VERIFYING)
        return;
    if (!r || r->type != REDIS_REPLY_STRING) {
        c->trust = TRUST_UNCHECKED;
        log_warn("redis: verifying the store failed (%s): checked again shortly",
                 r && r->type == REDIS_REPLY_ERROR ? r->str : "no answer");
        return;
    }
    c->trust = TRUST_OK;
    consistency_local_drop(c->consistency);
    epoch_read(c); /* the script moved it */
    purge_apply(c);
    if (strcmp(r->str, "already") == 0)
        log_info("redis: store verified by another worker: its fences are trusted");
    else {
        c->stats.verifications++;
        log_info("redis: store %s verified with the primary's position %s as every fence's floor (values "
                 "cached before are not read)",
                 r->str, cmd->lsn);
    }
}

/* ---- purges: writes whose fences never reached Redis (migration 0005) ------------------------- */

/* Only into a verified store: a store being verified gets a floor read after every purge recorded
 * before, which covers them (the script then only records them as applied). */
static void purge_apply(struct cache *c)
{
    if (!deployment_on(c) || c->purge_applied >= c->purge_seen || c->purge_inflight ||
        !redis_client_up(c->rc) || c->trust != TRUST_OK)
        return;
    char hex[CACHE_LSN_HEX], gen[24];
    cache_lsn_hex(c->purge_lsn, hex);
    snprintf(gen, sizeof(gen), "%" PRIu64, c->purge_seen);
    const char *argv[] = { NULL, NULL, "0", c->cfg->redis_prefix, hex, gen, "" };
    script_argv(c, SCRIPT_VERIFY, argv);
    size_t lens[7];
    eval_lens(7, argv, lens, SIZE_MAX, 0);
    struct cache_cmd *cmd = cmd_send(c, CMD_PURGE, 7, argv, lens, NULL, NULL, NULL);
    if (!cmd)
        return;
    c->purge_inflight = true;
    cmd->purge_gen = c->purge_seen;
    memcpy(cmd->lsn, hex, sizeof(hex));
}

/* The bypass's purge is applied (here or by another worker): the flag is cleared unless a trouble came
 * after the purge was asked for (the next tick asks for another then). */
static void dirty_purge_end(struct cache *c, enum dirty_purge_outcome o)
{
    if (o != DIRTY_PURGE_ENDED)
        return;
    if (!dirty_purge_clears(&c->dirty, consistency_cache_troubles(c->consistency)))
        return;
    consistency_cache_dirty_clear(c->consistency);
    log_info("redis: cache moved to a new epoch; cached values in use again");
}

/* A failed record is asked again on the next tick. The purge may already be applied: another worker of
 * this server may have seen and applied it (or a later one) before this reply came. */
void cache_purge_recorded(struct cache *c, bool ok, uint64_t gen, uint64_t lsn)
{
    if (ok)
        cache_purge_seen(c, gen, lsn);
    dirty_purge_end(c, dirty_purge_recorded(&c->dirty, ok, gen, c->purge_applied));
}

void cache_purge_seen(struct cache *c, uint64_t gen, uint64_t lsn)
{
    if (gen <= c->purge_seen)
        return;
    if (c->purge_seen)
        log_warn("redis: purge %" PRIu64
                 " recorded on the primary (a write whose fences never reached Redis): "
                 "reads go to the primary until it is applied",
                 gen);
    c->purge_seen = gen;
    c->purge_lsn = lsn;
    purge_apply(c);
}

static void purge_deliver(struct cache_cmd *cmd, const redisReply *r)
{
    struct cache *c = cmd->c;
    c->purge_inflight = false;
    if (!r || r->type != REDIS_REPLY_STRING) {
        log_warn("redis: applying purge %" PRIu64 " failed (%s): tried again shortly", cmd->purge_gen,
                 r && r->type == REDIS_REPLY_ERROR ? r->str : "no answer");
        return;
    }
    if (cmd->purge_gen > c->purge_applied)
        c->purge_applied = cmd->purge_gen;
    epoch_read(c); /* the script may have moved it */
    consistency_local_drop(c->consistency);
    dirty_purge_end(c, dirty_purge_applied(&c->dirty, c->purge_applied));
    if (strcmp(r->str, "purged") != 0) {
        c->stats.epoch_bumps++;
        c->stats.purges++;
        log_info("redis: purge %" PRIu64 " applied: %s is every fence's floor; cache moved to a new epoch",
                 cmd->purge_gen, cmd->lsn);
    }
}

/* redis_client's events: the link is up (a new connection: its scripts, its store checked, and the epoch
 * if a bypass is on), and the health timer's tick (the epoch, if a bypass began since; the store checked
 * again: a failover replaces it under a live link's address). */
static void on_link_up(void *arg)
{
    struct cache *c = arg;
    c->trust = TRUST_UNCHECKED;
    c->check_inflight = false;
    c->purge_inflight = false;
    scripts_load(c);
    epoch_bump(c);
    epoch_read(c);
    trust_check(c);
    purge_apply(c);
}

static void on_tick(void *arg)
{
    epoch_bump(arg);
    trust_check(arg);
    purge_apply(arg);
}

/* ---- answers -------------------------------------------------------------------------------- */

/* A stored value is its data's LSN (16 hex digits) then the body; false if it is not. */
static bool value_split(const redisReply *v, struct cache_lookup *l)
{
    if (v->type != REDIS_REPLY_STRING ||
        !cache_value_split(v->str, v->len, &l->data_lsn, &l->value, &l->len)) {
        log_warn("redis: a cached value without its LSN: ignored");
        return false;
    }
    return true;
}

static enum cache_lookup_kind lookup_kind(long long script_kind)
{
    if (script_kind == 1)
        return CACHE_HIT;
    if (script_kind == 2)
        return CACHE_LEASE;
    return CACHE_WAIT;
}

static void lookup_count(struct cache_stats *st, enum cache_lookup_kind kind)
{
    if (kind == CACHE_HIT)
        st->hits++;
    else if (kind == CACHE_LEASE)
        st->misses++;
    else
        st->waits++;
}

static void lookup_deliver(struct cache_cmd *cmd, const redisReply *r)
{
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 5 ||
        r->element[0]->type != REDIS_REPLY_INTEGER || r->element[1]->type != REDIS_REPLY_STRING ||
        r->element[3]->type != REDIS_REPLY_STRING || r->element[4]->type != REDIS_REPLY_STRING) {
        if (r && r->type == REDIS_REPLY_ERROR)
            reply_warn(cmd->c, "lookup script failed", r->str);
        cmd->lookup_cb(cmd->arg, &(struct cache_lookup){ .kind = CACHE_BYPASS });
        return;
    }
    if (r->element[0]->integer == 0) { /* the store lost its state */
        trust_lost(cmd->c);
        cmd->c->stats.bypasses++;
        cmd->lookup_cb(cmd->arg, &(struct cache_lookup){ .kind = CACHE_BYPASS });
        return;
    }
    const redisReply *fence = r->element[2];
    const char *fence_text = fence->type == REDIS_REPLY_STRING ? fence->str : NULL;
    struct cache_lookup l = { .kind = lookup_kind(r->element[0]->integer),
                              .fence = cache_fence_parse(fence_text) };
    lookup_count(&cmd->c->stats, l.kind);
    if (l.kind == CACHE_HIT && !value_split(r->element[1], &l)) {
        cmd->lookup_cb(cmd->arg, &(struct cache_lookup){ .kind = CACHE_BYPASS });
        return;
    } else if (l.kind != CACHE_HIT) { /* a lease: ours, or (WAIT) the holder's, for fill_wait */
        snprintf(l.token, sizeof(l.token), "%s", r->element[1]->str);
    }
    snprintf(l.epoch, sizeof(l.epoch), "%s", r->element[3]->str);
    snprintf(cmd->c->epoch, sizeof(cmd->c->epoch), "%s", l.epoch);
    snprintf(l.key, sizeof(l.key), "%s", r->element[4]->str);
    snprintf(l.list, sizeof(l.list), "%s", cmd->list);
    snprintf(l.base, sizeof(l.base), "%s", cmd->key);
    cmd->lookup_cb(cmd->arg, &l);
}

/* The fast path's answer: a hit only if the epoch read with the value is the one its key was built
 * from; anything else (a miss, a new epoch) takes the script, which takes leases. */
static void peek_deliver(struct cache_cmd *cmd, const redisReply *r)
{
    struct cache *c = cmd->c;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
        if (r && r->type == REDIS_REPLY_ERROR)
            reply_warn(c, "lookup failed", r->str);
        c->stats.bypasses++;
        cmd->lookup_cb(cmd->arg, &(struct cache_lookup){ .kind = CACHE_BYPASS });
        return;
    }
    const redisReply *e = r->element[0], *v = r->element[1];
    const char *now = e->type == REDIS_REPLY_STRING ? e->str : "0";
    struct cache_lookup l = { .kind = CACHE_HIT };
    if (strcmp(now, cmd->peeked_epoch) == 0 && v->type == REDIS_REPLY_STRING && value_split(v, &l)) {
        c->stats.hits++;
        snprintf(l.epoch, sizeof(l.epoch), "%s", now);
        snprintf(l.key, sizeof(l.key), "%s", cmd->key);
        snprintf(l.base, sizeof(l.base), "%s", cmd->key);
        cmd->lookup_cb(cmd->arg, &l);
        return;
    }
    snprintf(c->epoch, sizeof(c->epoch), "%s", now);
    lookup_script_send(c, cmd->key, NULL, cmd->fences, cmd->lookup_cb, cmd->arg);
}

/* A NOSCRIPT answer to an invalidation by digest (a SCRIPT FLUSH by hand): the script did not run, so it is
 * sent again by its text rather than cost the write its 2xx. True when it was. */
static bool invalidate_resend(struct cache_cmd *cmd, const redisReply *r)
{
    struct script_args *a = cmd->by_text;
    if (!a || !r || r->type != REDIS_REPLY_ERROR || strncmp(r->str, "NOSCRIPT", 8) != 0)
        return false;
    script_argv_text(SCRIPT_INVALIDATE, a->argv, a->lens);
    struct cache_cmd *again =
        cmd_send(cmd->c, CMD_INVALIDATE, a->argc, a->argv, a->lens, NULL, cmd->done_cb, cmd->arg);
    if (!again)
        return false;
    again->through = cmd->through;
    again->moves_epoch = cmd->moves_epoch;
    return true;
}

static void invalidate_deliver(struct cache_cmd *cmd, const redisReply *r)
{
    struct cache *c = cmd->c;
    if (invalidate_resend(cmd, r))
        return;
    bool ok = r && r->type != REDIS_REPLY_ERROR;
    c->stats.invalidations++;
    if (ok && cmd->moves_epoch)
        c->stats.epoch_bumps++;
    if (!ok) {
        c->stats.invalidation_failures++;
        log_warn("redis: invalidation failed: %s", r ? r->str : "connection lost");
    }
    if (ok && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[0]->type == REDIS_REPLY_INTEGER && r->element[1]->type == REDIS_REPLY_STRING) {
        long long res = r->element[0]->integer;
        if (cmd->through && res >= 2 && res <= 5)
            c->stats.through[res - 2]++; /* the script's 2..5 are CACHE_THROUGH_STORED..EPOCH */
        snprintf(c->epoch, sizeof(c->epoch), "%s", r->element[1]->str);
    }
    if (cmd->done_cb)
        cmd->done_cb(cmd->arg, ok);
}

/* ---- the fence log ---------------------------------------------------------------------------- */

#define SYNC_COUNT 512    /* entries per read */
#define SYNC_ROUNDS_MAX 8 /* reads per sync: a longer backlog is skipped (every local copy goes) */

static bool sync_send(struct cache *c)
{
    c->stats.log_reads++;
    char count[12];
    snprintf(count, sizeof(count), "%d", SYNC_COUNT);
    const char *argv[] = { NULL, NULL, "0", c->cfg->redis_prefix, c->log.id, count };
    script_argv(c, SCRIPT_SYNC, argv);
    size_t lens[6];
    eval_lens(6, argv, lens, SIZE_MAX, 0);
    return cmd_send(c, CMD_SYNC, 6, argv, lens, NULL, NULL, NULL) != NULL;
}

static void sync_finish(struct cache *c, enum cache_sync_result r)
{
    struct cache_log_cursor *l = &c->log;
    l->busy = false;
    if (r == CACHE_SYNC_RESET)
        c->stats.log_resets++;
    l->done(l->arg, r);
}

void cache_sync(struct cache *c, cache_log_cb apply, cache_sync_cb done, void *arg)
{
    struct cache_log_cursor *l = &c->log;
    if (l->busy || !cache_usable(c)) {
        done(arg, CACHE_SYNC_FAILED);
        return;
    }
    l->busy = true;
    l->reset = false;
    l->rounds = 0;
    l->apply = apply;
    l->done = done;
    l->arg = arg;
    if (!sync_send(c))
        sync_finish(c, CACHE_SYNC_FAILED);
}

static bool reply_is_string(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_STRING;
}

/* A new marker (a store verified again) or a new epoch: entries may have gone with them. */
static void sync_marks(struct cache_log_cursor *l, const char *marker, const char *epoch)
{
    if (l->mark[0] && (strcmp(l->mark, marker) != 0 || strcmp(l->epoch, epoch) != 0))
        l->reset = true;
    snprintf(l->mark, sizeof(l->mark), "%s", marker);
    snprintf(l->epoch, sizeof(l->epoch), "%s", epoch);
}

/* One entry: [id, [s, seq, l, lsn, f, names]]. False if it is not one. */
static bool sync_entry_apply(struct cache_log_cursor *l, const redisReply *e)
{
    if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 || !reply_is_string(e->element[0]) ||
        e->element[1]->type != REDIS_REPLY_ARRAY || e->element[1]->elements != 6)
        return false;
    const redisReply *const *f = (const redisReply *const *)e->element[1]->element;
    for (int i = 1; i < 6; i += 2)
        if (!reply_is_string(f[i]))
            return false;
    uint64_t seq = strtoull(f[1]->str, NULL, 10);
    if (seq != l->seq + 1)
        l->reset = true; /* entries in between were trimmed, or the log began again */
    struct cache_log_entry entry = { .lsn = cache_fence_parse(f[3]->str),
                                     .unknown = strcmp(f[3]->str, "FFFFFFFFFFFFFFFF") == 0,
                                     .names = f[5]->str,
                                     .len = f[5]->len };
    l->apply(l->arg, &entry);
    snprintf(l->id, sizeof(l->id), "%s", e->element[0]->str);
    l->seq = seq;
    return true;
}

static void sync_deliver(struct cache_cmd *cmd, const redisReply *r)
{
    struct cache *c = cmd->c;
    struct cache_log_cursor *l = &c->log;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 1 || r->element[0]->type != REDIS_REPLY_INTEGER) {
        if (r && r->type == REDIS_REPLY_ERROR)
            reply_warn(c, "fence log read failed", r->str);
        sync_finish(c, CACHE_SYNC_FAILED);
        return;
    }
    long long kind = r->element[0]->integer;
    if (kind == 0 || r->elements < 4 || !reply_is_string(r->element[1]) || !reply_is_string(r->element[2])) {
        if (kind == 0)
            trust_lost(c);
        sync_finish(c, CACHE_SYNC_FAILED);
        return;
    }
    sync_marks(l, r->element[1]->str, r->element[2]->str);
    if (kind == 1) { /* where the log ends: copies stored before this first read cannot be checked */
        l->reset = true;
        if (r->elements == 5 && reply_is_string(r->element[3]) && reply_is_string(r->element[4])) {
            snprintf(l->id, sizeof(l->id), "%s", r->element[3]->str);
            l->seq = strtoull(r->element[4]->str, NULL, 10);
        }
        sync_finish(c, l->reset ? CACHE_SYNC_RESET : CACHE_SYNC_OK);
        return;
    }
    const redisReply *entries = r->element[3];
    size_t n = entries->type == REDIS_REPLY_ARRAY ? entries->elements : 0;
    for (size_t i = 0; i < n; i++)
        if (!sync_entry_apply(l, entries->element[i]))
            l->reset = true;
    if (n < SYNC_COUNT) {
        sync_finish(c, l->reset ? CACHE_SYNC_RESET : CACHE_SYNC_OK);
        return;
    }
    if (++l->rounds >= SYNC_ROUNDS_MAX) { /* too far behind: jump to the end and drop every copy */
        l->id[0] = '\0';
        l->reset = true;
    }
    if (!sync_send(c))
        sync_finish(c, CACHE_SYNC_FAILED);
}

static void script_load_deliver(struct cache_cmd *cmd, const redisReply *r)
{
    if (r && r->type == REDIS_REPLY_STRING && r->len == 40)
        memcpy(cmd->c->sha[cmd->script], r->str, 41);
    else
        log_warn("redis: SCRIPT LOAD failed (%s): scripts go by EVAL", r && r->str ? r->str : "no answer");
}

static void epoch_deliver(struct cache_cmd *cmd, const redisReply *r)
{
    struct cache *c = cmd->c;
    c->epoch_inflight = false;
    if (r && r->type == REDIS_REPLY_INTEGER)
        snprintf(c->epoch, sizeof(c->epoch), "%lld", r->integer);
    if (r && r->type != REDIS_REPLY_ERROR) {
        c->stats.epoch_bumps++;
        consistency_cache_dirty_clear(c->consistency);
        log_info("redis: cache moved to a new epoch; cached values in use again");
    }
}

static long long reply_int(const redisReply *r, size_t i)
{
    return r->element[i]->type == REDIS_REPLY_INTEGER ? r->element[i]->integer : 0;
}

/* Anything but the script's four integers (an error, a lost link) is UNKNOWN: the caller limits locally. */
static void rate_deliver(struct cache_cmd *cmd, const redisReply *r)
{
    struct cache_rate out = { .result = CACHE_RATE_UNKNOWN };
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 4) {
        long long remaining = reply_int(r, 1), retry = reply_int(r, 2), reset = reply_int(r, 3);
        out = (struct cache_rate){ .result = reply_int(r, 0) ? CACHE_RATE_ALLOWED : CACHE_RATE_LIMITED,
                                   .remaining = remaining > 0 ? (uint64_t)remaining : 0,
                                   .retry_us = retry > 0 ? (uint64_t)retry : 0,
                                   .reset_us = reset > 0 ? (uint64_t)reset : 0 };
    } else if (r && r->type == REDIS_REPLY_ERROR) {
        reply_warn(cmd->c, "rate limit script", r->str);
    }
    cmd->rate_cb(cmd->arg, &out);
}

/* The answer to a command not yet answered (r NULL: the link went). Fills and releases want none. */
static void cmd_deliver(struct cache_cmd *cmd, const redisReply *r)
{
    switch (cmd->kind) {
    case CMD_RATE:
        rate_deliver(cmd, r);
        break;
    case CMD_PEEK:
        peek_deliver(cmd, r);
        break;
    case CMD_LOOKUP:
        lookup_deliver(cmd, r);
        break;
    case CMD_INVALIDATE:
        invalidate_deliver(cmd, r);
        break;
    case CMD_SCRIPT_LOAD:
        script_load_deliver(cmd, r);
        break;
    case CMD_EPOCH:
        epoch_deliver(cmd, r);
        break;
    case CMD_EPOCH_READ:
        epoch_read_deliver(cmd, r);
        break;
    case CMD_CHECK:
        check_deliver(cmd, r);
        break;
    case CMD_VERIFY:
        verify_deliver(cmd, r);
        break;
    case CMD_SYNC:
        sync_deliver(cmd, r);
        break;
    case CMD_PURGE:
        purge_deliver(cmd, r);
        break;
    case CMD_FILL:
    case CMD_RELEASE:
        break;
    }
}

/* command_timeout passed: the caller is answered now, as if Redis had failed. */
static void cmd_answer_fail(struct cache_cmd *cmd)
{
    if (cmd->kind == CMD_LOOKUP || cmd->kind == CMD_PEEK)
        cmd->lookup_cb(cmd->arg, &(struct cache_lookup){ .kind = CACHE_BYPASS });
    else if (cmd->kind == CMD_RATE)
        cmd->rate_cb(cmd->arg, &(struct cache_rate){ .result = CACHE_RATE_UNKNOWN });
    else if (cmd->kind == CMD_INVALIDATE && cmd->done_cb)
        cmd->done_cb(cmd->arg, false);
    else if (cmd->kind == CMD_EPOCH)
        cmd->c->epoch_inflight = false;
    else if (cmd->kind == CMD_CHECK)
        cmd->c->check_inflight = false;
    else if (cmd->kind == CMD_VERIFY)
        verify_deliver(cmd, NULL);
    else if (cmd->kind == CMD_SYNC)
        sync_finish(cmd->c, CACHE_SYNC_FAILED);
    else if (cmd->kind == CMD_PURGE)
        purge_deliver(cmd, NULL);
}

static void cmd_free(struct cache_cmd *cmd)
{
    free(cmd->by_text);
    free(cmd);
}

/* At exit: the request a command answers dies with the process. An invalidation not confirmed may not
 * have run: every worker bypasses the cache until it moves to a new epoch. */
static void cmd_discard(struct cache_cmd *cmd)
{
    if (cmd->kind == CMD_INVALIDATE && cmd->sent.state == REDIS_CMD_SENT) {
        log_warn("redis: exiting with an invalidation unconfirmed: the cache is bypassed until a new epoch");
        consistency_cache_dirty_set(cmd->c->consistency);
    }
    if (cmd->kind == CMD_RATE && cmd->sent.state == REDIS_CMD_SENT)
        cmd->rate_cb(cmd->arg, NULL); /* its caller frees what it kept for the request */
    cmd_free(cmd);
}

static void cmd_reply(struct redis_cmd *sent, const redisReply *r, enum redis_cmd_event ev)
{
    struct cache_cmd *cmd = (struct cache_cmd *)sent;
    if (ev == REDIS_CMD_DEADLINE) {
        cmd_answer_fail(cmd);
        return;
    }
    if (ev == REDIS_CMD_DISCARDED) {
        cmd_discard(cmd);
        return;
    }
    scripts_reload_if_flushed(cmd->c, r);
    if (cmd->sent.state == REDIS_CMD_SENT)
        cmd_deliver(cmd, r);
    cmd_free(cmd);
}

/* ---- commands ------------------------------------------------------------------------------- */

/* A lookup is optional work: past command_timeout its request reads the database (BYPASS) and the
 * connection stays, its late answer dropped. Dropping the connection would make the next write's
 * invalidation fail (Redis "down") and so move the whole cache to a new epoch for nothing. Commands whose
 * outcome matters (an invalidation, the epoch, SCRIPT LOAD) drop it: their outcome is unknown. Nobody
 * waits for a fill or a lease's release: they have no deadline, and their slowness or failure never
 * drops the connection (a lost connection answers them). */
static enum redis_deadline cmd_deadline(enum cmd_kind kind)
{
    switch (kind) {
    case CMD_FILL:
    case CMD_RELEASE:
        return REDIS_DEADLINE_NONE;
    case CMD_RATE: /* late, its request was limited locally */
    case CMD_PEEK:
    case CMD_LOOKUP:
    case CMD_CHECK:
    case CMD_EPOCH_READ: /* late, the first lookup learns it */
    case CMD_SYNC:
    case CMD_VERIFY: /* late, it is checked again: the marker tells what happened */
    case CMD_PURGE:  /* late, it is applied again: the store remembers what was applied */
        return REDIS_DEADLINE_KEEP_LINK;
    case CMD_INVALIDATE:
    case CMD_EPOCH:
    case CMD_SCRIPT_LOAD:
        break;
    }
    return REDIS_DEADLINE_DROP_LINK;
}

/* Sends argv as one command. NULL when it could not be sent (nothing called). */
static struct cache_cmd *cmd_send(struct cache *c, enum cmd_kind kind, int argc, const char **argv,
                                  const size_t *lens, cache_lookup_cb lcb, cache_done_cb dcb, void *arg)
{
    struct cache_cmd *cmd = calloc(1, sizeof(*cmd));
    if (!cmd)
        return NULL;
    *cmd = (struct cache_cmd){ .c = c, .kind = kind, .lookup_cb = lcb, .done_cb = dcb, .arg = arg };
    if (kind == CMD_LOOKUP) { /* argv is the lookup script's: key at 4, the list's generation name at 6 */
        snprintf(cmd->key, sizeof(cmd->key), "%s", argv[4]);
        snprintf(cmd->list, sizeof(cmd->list), "%s", argv[6]);
    }
    if (!redis_client_send(c->rc, &cmd->sent, cmd_reply, cmd_deadline(kind), argc, argv, lens)) {
        free(cmd);
        return NULL;
    }
    return cmd;
}

/* A single row's lookup first reads the epoch and the value of the epoch last seen, in one MGET (cheaper
 * for Redis than the script); a list page, a miss or an epoch change goes through the script. */
void cache_lookup(struct cache *c, const char *key, const char *list, const struct cache_fences *fences,
                  cache_lookup_cb cb, void *arg)
{
    char epoch_key[96], value_key[192];
    if (list || !c->epoch[0] || !cache_usable(c) ||
        !cache_key_epoch(epoch_key, sizeof(epoch_key), c->cfg->redis_prefix) ||
        !cache_key_value(value_key, sizeof(value_key), c->cfg->redis_prefix, c->epoch, key)) {
        lookup_script_send(c, key, list, fences, cb, arg);
        return;
    }
    const char *argv[] = { "MGET", epoch_key, value_key };
    size_t lens[] = { 4, strlen(epoch_key), strlen(value_key) };
    struct cache_cmd *cmd = cmd_send(c, CMD_PEEK, 3, argv, lens, cb, NULL, arg);
    if (!cmd) {
        lookup_script_send(c, key, list, fences, cb, arg);
        return;
    }
    snprintf(cmd->key, sizeof(cmd->key), "%s", key);
    snprintf(cmd->peeked_epoch, sizeof(cmd->peeked_epoch), "%s", c->epoch);
    cmd->fences = fences;
}

static void lookup_script_send(struct cache *c, const char *key, const char *list,
                               const struct cache_fences *fences, cache_lookup_cb cb, void *arg)
{
    enum { FIXED = 8 };
    char ttl[16];
    snprintf(ttl, sizeof(ttl), "%d", LEASE_TTL_MS);
    int n = deployment_on(c) && fences ? fences->n : 0;
    if (n > CACHE_READ_FENCES_MAX)
        n = CACHE_READ_FENCES_MAX;
    const char *argv[FIXED + CACHE_READ_FENCES_MAX] = {
        NULL, NULL, "0", c->cfg->redis_prefix, key, ttl, list ? list : "", deployment_on(c) ? "1" : "0"
    };
    for (int i = 0; i < n; i++)
        argv[FIXED + i] = fences->names[i];
    script_argv(c, SCRIPT_LOOKUP, argv);
    size_t lens[FIXED + CACHE_READ_FENCES_MAX];
    eval_lens(FIXED + n, argv, lens, SIZE_MAX, 0);
    struct cache_cmd *cmd =
        cache_usable(c) ? cmd_send(c, CMD_LOOKUP, FIXED + n, argv, lens, cb, NULL, arg) : NULL;
    if (!cmd) {
        c->stats.bypasses++;
        cb(arg, &(struct cache_lookup){ .kind = CACHE_BYPASS });
        return;
    }
    cmd->fences = fences;
}

void cache_fill(struct cache *c, const struct cache_lookup *lease, const char *value, size_t len,
                uint64_t data_lsn, uint64_t reach_lsn)
{
    const char *key = lease->key;
    if (!cache_usable(c) || lease->kind != CACHE_LEASE)
        return;
    if (len > c->cfg->cache_max_value_bytes) { /* served, not cached */
        log_debug("redis: %s not cached: %zu bytes, over max_value_bytes", key, len);
        cache_release(c, lease);
        return;
    }
    char ttl[16], lsn[CACHE_LSN_HEX], reach[CACHE_LSN_HEX], pages[16];
    snprintf(ttl, sizeof(ttl), "%d", c->cfg->cache_ttl_s);
    snprintf(pages, sizeof(pages), "%d", c->cfg->cache_list_pages);
    cache_lsn_hex(data_lsn, lsn);
    cache_lsn_hex(reach_lsn, reach);
    const char *argv[] = { NULL,  NULL, "0", c->cfg->redis_prefix, key,         lease->epoch, lease->token,
                           value, ttl,  lsn, lease->list,          lease->base, pages,        reach };
    script_argv(c, SCRIPT_FILL, argv);
    size_t lens[14];
    eval_lens(14, argv, lens, 7, len);
    if (!cmd_send(c, CMD_FILL, 14, argv, lens, NULL, NULL, NULL))
        log_debug("redis: fill of %s not sent", key);
    else
        c->stats.fills++;
}
void cache_release(struct cache *c, const struct cache_lookup *lease)
{
    if (!cache_usable(c) || lease->kind != CACHE_LEASE)
        return;
    const char *argv[] = { NULL, NULL, "0", c->cfg->redis_prefix, lease->epoch, lease->key, lease->token };
    script_argv(c, SCRIPT_RELEASE, argv);
    size_t lens[7];
    eval_lens(7, argv, lens, SIZE_MAX, 0);
    if (!cmd_send(c, CMD_RELEASE, 7, argv, lens, NULL, NULL, NULL))
        log_debug("redis: release of the lease of %s not sent", lease->key);
}

/* What the invalidation does with the write's row (LUA_INVALIDATE's ARGV[8]): '' nothing, 'd' tombstones,
 * 'v' records the version only (counted in *why when a store was possible but is refused here), 's'
 * stores it if the script finds it the newest. */
static const char *through_mode(struct cache *c, const struct cache_change *ch, uint64_t lsn,
                                const struct cache_through *t, int *why)
{
    *why = -1;
    if (!t || !t->key || !t->key[0])
        return "";
    if (t->deleted)
        return "d";
    if (t->version <= 0)
        return ""; /* nothing orders its writes: never stored, nothing to record */
    if (!c->cfg->cache_write_through || !t->value)
        return "v";
    if (lsn == CONSISTENCY_LSN_NONE)
        *why = CACHE_THROUGH_UNKNOWN;
    else if (t->len > c->cfg->cache_max_value_bytes)
        *why = CACHE_THROUGH_LARGE;
    else if (ch->all || !t->epoch || !t->epoch[0])
        *why = CACHE_THROUGH_EPOCH;
    return *why >= 0 ? "v" : "s";
}

/* Sends the invalidation script: its fixed arguments, then the change's generations, keys, and ids as
 * keys (written into id_keys, nids of them). NULL when it could not be sent. */
static struct cache_cmd *invalidate_send(struct cache *c, const struct cache_change *ch, uint64_t lsn,
                                         const struct cache_through *t, int nids,
                                         char (*id_keys)[CACHE_KEY_MAX], cache_done_cb cb, void *arg)
{
    enum {
        FIXED = 16,
        MAXARGS = FIXED + CACHE_CHANGE_GENS_MAX + CACHE_CHANGE_FENCES_MAX + CACHE_CHANGE_KEYS_MAX +
                  CACHE_CHANGE_IDS_MAX,
        VALUE_AT = 13, /* ARGV[11] */
    };
    char lsn_s[CACHE_LSN_HEX], ttl[16], ngens_s[12], nfences_s[12], version[24], value_ttl[16];
    cache_lsn_hex(lsn, lsn_s);
    int fence_ttl = c->cfg->max_replica_lag_ms * 6;
    int nfences = deployment_on(c) ? ch->fences.n : 0;
    if (nfences > CACHE_CHANGE_FENCES_MAX)
        nfences = CACHE_CHANGE_FENCES_MAX; /* never with effects.h's bound */
    snprintf(ttl, sizeof(ttl), "%d", fence_ttl > FENCE_TTL_MIN_MS ? fence_ttl : FENCE_TTL_MIN_MS);
    snprintf(ngens_s, sizeof(ngens_s), "%d", ch->ngens);
    snprintf(nfences_s, sizeof(nfences_s), "%d", nfences);
    snprintf(value_ttl, sizeof(value_ttl), "%d", c->cfg->cache_ttl_s);
    int why;
    const char *mode = through_mode(c, ch, lsn, t, &why);
    snprintf(version, sizeof(version), "%" PRId64, t ? t->version : 0);
    bool store = mode[0] == 's';
    const char *argv[MAXARGS] = { NULL,
                                  NULL,
                                  "0",
                                  c->cfg->redis_prefix,
                                  lsn_s,
                                  ttl,
                                  ch->all ? "1" : "0",
                                  ngens_s,
                                  nfences_s,
                                  deployment_on(c) ? "1" : "0",
                                  mode,
                                  mode[0] ? t->key : "",
                                  version,
                                  store ? t->value : "",
                                  value_ttl,
                                  store ? t->epoch : "" };
    /* By its digest once loaded: Redis hashes the text of every EVAL (2.6 KB) to find the compiled script.
     * After a SCRIPT FLUSH the digest fails with NOSCRIPT before the script runs: the arguments are kept to
     * send it again by its text (invalidate_resend). */
    script_argv(c, SCRIPT_INVALIDATE, argv);
    int argc = FIXED;
    for (int i = 0; i < ch->ngens; i++)
        argv[argc++] = ch->gens[i];
    for (int i = 0; i < nfences; i++)
        argv[argc++] = ch->fences.names[i];
    for (int i = 0; i < ch->nkeys; i++)
        argv[argc++] = ch->keys[i];
    for (int i = 0; i < nids; i++) {
        snprintf(id_keys[i], CACHE_KEY_MAX, "%s%" PRId64, ch->id_prefix, ch->ids[i]);
        argv[argc++] = id_keys[i];
    }
    size_t lens[MAXARGS];
    eval_lens(argc, argv, lens, VALUE_AT, store ? t->len : 0);
    bool by_digest = argv[1] != SCRIPTS[SCRIPT_INVALIDATE];
    struct script_args *by_text = by_digest ? script_args_copy(argc, argv, lens) : NULL;
    if (by_digest && !by_text) /* no copy to send again: by its text now */
        script_argv_text(SCRIPT_INVALIDATE, argv, lens);
    struct cache_cmd *cmd = cmd_send(c, CMD_INVALIDATE, argc, argv, lens, NULL, cb, arg);
    if (!cmd) {
        free(by_text);
        return NULL;
    }
    cmd->by_text = by_text;
    cmd->through = store;
    if (why >= 0)
        c->stats.through[why]++;
    return cmd;
}

void cache_invalidate(struct cache *c, const struct cache_change *ch, uint64_t lsn,
                      const struct cache_through *t, cache_done_cb cb, void *arg)
{
    if (redis_client_state(c->rc) == CACHE_DISABLED) {
        cb(arg, true);
        return;
    }
    struct cache_cmd *cmd = NULL;
    if (redis_client_up(c->rc)) {
        int nids = ch->nids < CACHE_CHANGE_IDS_MAX ? ch->nids : CACHE_CHANGE_IDS_MAX;
        char(*id_keys)[CACHE_KEY_MAX] = nids > 0 ? malloc((size_t)nids * sizeof(*id_keys)) : NULL;
        if (nids == 0 || id_keys)
            cmd = invalidate_send(c, ch, lsn, t, nids, id_keys, cb, arg);
        free(id_keys);
    }
    if (!cmd) {
        c->stats.invalidation_failures++;
        cb(arg, false);
        return;
    }
    cmd->moves_epoch = ch->all;
}

const char *cache_epoch(const struct cache *c)
{
    return cache_usable(c) ? c->epoch : "";
}

/* ---- lifetime ------------------------------------------------------------------------------- */

struct cache *cache_new(struct event_base *base, const struct config *cfg, struct consistency *consistency)
{
    struct cache *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->cfg = cfg;
    c->consistency = consistency;
    struct redis_client_events events = { .up = on_link_up, .tick = on_tick, .arg = c };
    c->rc = redis_client_new(base, cfg, &events);
    if (!c->rc) {
        free(c);
        return NULL;
    }
    return c;
}

/* No callback runs from here (worker_free relies on it): every pending command is discarded
 * (cmd_discard), not answered. */
void cache_rate_check(struct cache *c, const char *key, uint64_t interval_us, uint64_t tolerance_us,
                      cache_rate_cb cb, void *arg)
{
    char full[384], interval[24], tolerance[24];
    snprintf(full, sizeof(full), "%s:rl:%s", c->cfg->redis_prefix, key);
    snprintf(interval, sizeof(interval), "%" PRIu64, interval_us);
    snprintf(tolerance, sizeof(tolerance), "%" PRIu64, tolerance_us);
    const char *argv[] = { NULL, NULL, "1", full, interval, tolerance };
    script_argv(c, SCRIPT_RATE, argv);
    size_t lens[6];
    eval_lens(6, argv, lens, SIZE_MAX, 0);
    struct cache_cmd *cmd =
        redis_client_up(c->rc) ? cmd_send(c, CMD_RATE, 6, argv, lens, NULL, NULL, arg) : NULL;
    if (!cmd) {
        cb(arg, &(struct cache_rate){ .result = CACHE_RATE_UNKNOWN });
        return;
    }
    cmd->rate_cb = cb;
}

void cache_free(struct cache *c)
{
    if (!c)
        return;
    redis_client_free(c->rc);
    free(c);
}

enum cache_state cache_state(const struct cache *c)
{
    return redis_client_state(c->rc);
}

const char *cache_state_name(enum cache_state s)
{
    static const char *names[] = { "disabled", "down", "connecting", "up" };
    return names[s];
}

const char *cache_master(const struct cache *c)
{
    return redis_client_master(c->rc);
}

void cache_stats(const struct cache *c, struct cache_stats *out)
{
    struct redis_client_stats link;
    redis_client_stats(c->rc, &link);
    *out = c->stats;
    out->connects = link.connects;
    out->disconnects = link.disconnects;
    out->ping_failures = link.ping_failures;
    out->master_changes = link.master_changes;
}
