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

#define LEASE_TTL_MS 3000
#define FENCE_TTL_MIN_MS 60000

/* The keys the scripts use are laid out in cache_keys.h. A list's pages share a generation: a write that
 * can change the list bumps it, and every page key of the old generation is never read again. */
static const char LUA_LOOKUP[] = "local p, k = ARGV[1], ARGV[2] "
                                 "local e = redis.call('GET', p .. ':epoch') or '0' "
                                 "local f "
                                 "if ARGV[4] ~= '' then "
                                 "  k = k .. ':g' .. (redis.call('GET', p .. ':g:' .. ARGV[4]) or '0') "
                                 "  f = redis.call('GET', p .. ':f:g:' .. ARGV[4]) "
                                 "else f = redis.call('GET', p .. ':f:' .. k) end "
                                 "f = f or '0000000000000000' "
                                 "local v = redis.call('GET', p .. ':e' .. e .. ':v:' .. k) "
                                 "if v then return {1, v, f, e, k} end "
                                 "local lk = p .. ':e' .. e .. ':l:' .. k "
                                 "if redis.call('EXISTS', lk) == 1 then return {3, '', f, e, k} end "
                                 "local t = tostring(redis.call('INCR', p .. ':seq')) "
                                 "redis.call('SET', lk, t, 'PX', ARGV[3]) "
                                 "return {2, t, f, e, k}";
/* A list page is filled only into the list's current generation and recorded in the list's page set,
 * so an invalidation can delete every live page: no page of an old generation is left behind. The set
 * holds at most ARGV[10] pages (list_pages): a fill into a full set first deletes pages the set names
 * (SPOP: any one), value and member together, so every stored page stays tracked and one invalidation
 * deletes at most that many (clients asking for thousands of distinct pages cannot make it block Redis). */
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
    "if ARGV[7] < (f or '0000000000000000') then return 0 end "
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
static const char LUA_INVALIDATE[] =
    "local p, lsn, ttl = ARGV[1], ARGV[2], ARGV[3] "
    "if ARGV[4] == '1' then redis.call('INCR', p .. ':epoch') end "
    "local e = redis.call('GET', p .. ':epoch') or '0' "
    "local function raise(fk) "
    "  local cur = redis.call('GET', fk) "
    "  if (not cur) or cur < lsn then redis.call('SET', fk, lsn, 'PX', ttl) "
    "else redis.call('PEXPIRE', fk, ttl) end "
    "end "
    "local ngens = tonumber(ARGV[5]) "
    "for i = 6, 5 + ngens do "
    "  local set = p .. ':e' .. e .. ':pages:' .. ARGV[i] "
    "  for _, vk in ipairs(redis.call('SMEMBERS', set)) do redis.call('DEL', vk) end "
    "  redis.call('DEL', set) "
    "  redis.call('INCR', p .. ':g:' .. ARGV[i]) "
    "  raise(p .. ':f:g:' .. ARGV[i]) "
    "end "
    "for i = 6 + ngens, #ARGV do "
    "  local k = ARGV[i] "
    "  raise(p .. ':f:' .. k) "
    "  redis.call('DEL', p .. ':e' .. e .. ':v:' .. k, p .. ':e' .. e .. ':l:' .. k) "
    "end "
    "return 1";

/* A lease whose holder will not fill (the value is too large, or a page past the last id) is given back
 * at once: left to expire, it would make every other reader of the key wait for a fill that never comes
 * (CACHE_WAIT, up to 50 ms each) for LEASE_TTL_MS. Only the holder's own lease goes. */
static const char LUA_RELEASE[] = "local lk = ARGV[1] .. ':e' .. ARGV[2] .. ':l:' .. ARGV[3] "
                                  "if redis.call('GET', lk) == ARGV[4] then redis.call('DEL', lk) end "
                                  "return 1";

enum cmd_kind { CMD_PEEK, CMD_LOOKUP, CMD_FILL, CMD_RELEASE, CMD_INVALIDATE, CMD_EPOCH, CMD_SCRIPT_LOAD };

/* The scripts go by SHA1 (EVALSHA) once SCRIPT LOAD on connect has told us the digests; until then,
 * and after a NOSCRIPT (SCRIPT FLUSH by hand), by their text (EVAL). */
enum script_id { SCRIPT_LOOKUP, SCRIPT_FILL, SCRIPT_RELEASE, SCRIPT_INVALIDATE, SCRIPT_COUNT };
static const char *const SCRIPTS[SCRIPT_COUNT] = { LUA_LOOKUP, LUA_FILL, LUA_RELEASE, LUA_INVALIDATE };

/* One command in flight; redis_client calls back until it is over (redis_client.h), then it is freed. */
struct cache_cmd {
    struct redis_cmd sent; /* first: the client's part */
    struct cache *c;
    enum cmd_kind kind;
    cache_lookup_cb lookup_cb;
    cache_done_cb done_cb;
    void *arg;
    char key[64];          /* lookups: the key as asked for */
    char list[64];         /* a lookup of a list page: its list's generation name ("" for a row) */
    char peeked_epoch[24]; /* a peek: the epoch its value key was built from */
    enum script_id script; /* SCRIPT LOAD */
    bool moves_epoch;      /* an invalidation of rows that could not be named */
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
};

static struct cache_cmd *cmd_send(struct cache *c, enum cmd_kind kind, int argc, const char **argv,
                                  const size_t *lens, cache_lookup_cb lcb, cache_done_cb dcb, void *arg);
static void lookup_script_send(struct cache *c, const char *key, const char *list, cache_lookup_cb cb,
                               void *arg);

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

static bool cache_usable(const struct cache *c)
{
    return redis_client_up(c->rc) && !consistency_cache_dirty(c->consistency);
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

/* Ends a bypass: a new epoch makes every value cached before the failure unreachable. */
static void epoch_bump(struct cache *c)
{
    if (c->epoch_inflight || !redis_client_up(c->rc) || !consistency_cache_dirty(c->consistency))
        return;
    char key[96];
    if (!cache_key_epoch(key, sizeof(key), c->cfg->redis_prefix))
        return;
    const char *argv[] = { "INCR", key };
    size_t lens[] = { 4, strlen(key) };
    if (cmd_send(c, CMD_EPOCH, 2, argv, lens, NULL, NULL, NULL))
        c->epoch_inflight = true;
}

/* redis_client's events: the link is up (a new connection: its scripts, and the epoch if a bypass is on),
 * and the health timer's tick (the epoch, if a bypass began since). */
static void on_link_up(void *arg)
{
    struct cache *c = arg;
    scripts_load(c);
    epoch_bump(c);
}

static void on_tick(void *arg)
{
    epoch_bump(arg);
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
    const redisReply *fence = r->element[2];
    const char *fence_text = fence->type == REDIS_REPLY_STRING ? fence->str : NULL;
    struct cache_lookup l = { .kind = lookup_kind(r->element[0]->integer),
                              .fence = cache_fence_parse(fence_text) };
    lookup_count(&cmd->c->stats, l.kind);
    if (l.kind == CACHE_HIT && !value_split(r->element[1], &l)) {
        cmd->lookup_cb(cmd->arg, &(struct cache_lookup){ .kind = CACHE_BYPASS });
        return;
    } else if (l.kind == CACHE_LEASE) {
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
    lookup_script_send(c, cmd->key, NULL, cmd->lookup_cb, cmd->arg);
}

static void invalidate_deliver(struct cache_cmd *cmd, const redisReply *r)
{
    struct cache *c = cmd->c;
    bool ok = r && r->type != REDIS_REPLY_ERROR;
    c->stats.invalidations++;
    if (ok && cmd->moves_epoch)
        c->stats.epoch_bumps++;
    if (!ok) {
        c->stats.invalidation_failures++;
        log_warn("redis: invalidation failed: %s", r ? r->str : "connection lost");
    }
    if (cmd->done_cb)
        cmd->done_cb(cmd->arg, ok);
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
    if (r && r->type != REDIS_REPLY_ERROR) {
        c->stats.epoch_bumps++;
        consistency_cache_dirty_clear(c->consistency);
        log_info("redis: cache moved to a new epoch; cached values in use again");
    }
}

/* The answer to a command not yet answered (r NULL: the link went). Fills and releases want none. */
static void cmd_deliver(struct cache_cmd *cmd, const redisReply *r)
{
    switch (cmd->kind) {
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
    else if (cmd->kind == CMD_INVALIDATE && cmd->done_cb)
        cmd->done_cb(cmd->arg, false);
    else if (cmd->kind == CMD_EPOCH)
        cmd->c->epoch_inflight = false;
}

/* At exit: the request a command answers dies with the process. An invalidation not confirmed may not
 * have run: every worker bypasses the cache until it moves to a new epoch. */
static void cmd_discard(struct cache_cmd *cmd)
{
    if (cmd->kind == CMD_INVALIDATE && cmd->sent.state == REDIS_CMD_SENT) {
        log_warn("redis: exiting with an invalidation unconfirmed: the cache is bypassed until a new epoch");
        consistency_cache_dirty_set(cmd->c->consistency);
    }
    free(cmd);
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
    free(cmd);
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
    case CMD_PEEK:
    case CMD_LOOKUP:
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
void cache_lookup(struct cache *c, const char *key, const char *list, cache_lookup_cb cb, void *arg)
{
    char epoch_key[96], value_key[192];
    if (list || !c->epoch[0] || !cache_usable(c) ||
        !cache_key_epoch(epoch_key, sizeof(epoch_key), c->cfg->redis_prefix) ||
        !cache_key_value(value_key, sizeof(value_key), c->cfg->redis_prefix, c->epoch, key)) {
        lookup_script_send(c, key, list, cb, arg);
        return;
    }
    const char *argv[] = { "MGET", epoch_key, value_key };
    size_t lens[] = { 4, strlen(epoch_key), strlen(value_key) };
    struct cache_cmd *cmd = cmd_send(c, CMD_PEEK, 3, argv, lens, cb, NULL, arg);
    if (!cmd) {
        lookup_script_send(c, key, list, cb, arg);
        return;
    }
    snprintf(cmd->key, sizeof(cmd->key), "%s", key);
    snprintf(cmd->peeked_epoch, sizeof(cmd->peeked_epoch), "%s", c->epoch);
}

static void lookup_script_send(struct cache *c, const char *key, const char *list, cache_lookup_cb cb,
                               void *arg)
{
    char ttl[16];
    snprintf(ttl, sizeof(ttl), "%d", LEASE_TTL_MS);
    const char *argv[] = { NULL, NULL, "0", c->cfg->redis_prefix, key, ttl, list ? list : "" };
    script_argv(c, SCRIPT_LOOKUP, argv);
    size_t lens[7];
    eval_lens(7, argv, lens, SIZE_MAX, 0);
    if (!cache_usable(c) || !cmd_send(c, CMD_LOOKUP, 7, argv, lens, cb, NULL, arg)) {
        c->stats.bypasses++;
        cb(arg, &(struct cache_lookup){ .kind = CACHE_BYPASS });
    }
}

void cache_fill(struct cache *c, const struct cache_lookup *lease, const char *value, size_t len,
                uint64_t data_lsn)
{
    const char *key = lease->key;
    if (!cache_usable(c) || lease->kind != CACHE_LEASE)
        return;
    if (len > c->cfg->cache_max_value_bytes) { /* served, not cached */
        log_debug("redis: %s not cached: %zu bytes, over max_value_bytes", key, len);
        cache_release(c, lease);
        return;
    }
    char ttl[16], lsn[CACHE_LSN_HEX], pages[16];
    snprintf(ttl, sizeof(ttl), "%d", c->cfg->cache_ttl_s);
    snprintf(pages, sizeof(pages), "%d", c->cfg->cache_list_pages);
    cache_lsn_hex(data_lsn, lsn);
    const char *argv[] = { NULL,  NULL, "0", c->cfg->redis_prefix, key,         lease->epoch, lease->token,
                           value, ttl,  lsn, lease->list,          lease->base, pages };
    script_argv(c, SCRIPT_FILL, argv);
    size_t lens[13];
    eval_lens(13, argv, lens, 7, len);
    if (!cmd_send(c, CMD_FILL, 13, argv, lens, NULL, NULL, NULL))
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

/* Sends the invalidation script: its fixed arguments, then the change's generations, keys, and ids as
 * keys (written into id_keys, nids of them). NULL when it could not be sent. */
static struct cache_cmd *invalidate_send(struct cache *c, const struct cache_change *ch, uint64_t lsn,
                                         int nids, char (*id_keys)[CACHE_KEY_MAX], cache_done_cb cb,
                                         void *arg)
{
    enum {
        FIXED = 8,
        MAXARGS = FIXED + CACHE_CHANGE_GENS_MAX + CACHE_CHANGE_KEYS_MAX + CACHE_CHANGE_IDS_MAX
    };
    char lsn_s[CACHE_LSN_HEX], ttl[16], ngens_s[12];
    cache_lsn_hex(lsn, lsn_s);
    int fence_ttl = c->cfg->max_replica_lag_ms * 6;
    snprintf(ttl, sizeof(ttl), "%d", fence_ttl > FENCE_TTL_MIN_MS ? fence_ttl : FENCE_TTL_MIN_MS);
    snprintf(ngens_s, sizeof(ngens_s), "%d", ch->ngens);
    const char *argv[MAXARGS] = { NULL,   NULL, "0", c->cfg->redis_prefix, lsn_s, ttl, ch->all ? "1" : "0",
                                  ngens_s };
    script_argv(c, SCRIPT_INVALIDATE, argv);
    int argc = FIXED;
    for (int i = 0; i < ch->ngens; i++)
        argv[argc++] = ch->gens[i];
    for (int i = 0; i < ch->nkeys; i++)
        argv[argc++] = ch->keys[i];
    for (int i = 0; i < nids; i++) {
        snprintf(id_keys[i], CACHE_KEY_MAX, "%s%" PRId64, ch->id_prefix, ch->ids[i]);
        argv[argc++] = id_keys[i];
    }
    size_t lens[MAXARGS];
    eval_lens(argc, argv, lens, SIZE_MAX, 0);
    return cmd_send(c, CMD_INVALIDATE, argc, argv, lens, NULL, cb, arg);
}

void cache_invalidate(struct cache *c, const struct cache_change *ch, uint64_t lsn, cache_done_cb cb,
                      void *arg)
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
            cmd = invalidate_send(c, ch, lsn, nids, id_keys, cb, arg);
        free(id_keys);
    }
    if (!cmd) {
        c->stats.invalidation_failures++;
        cb(arg, false);
        return;
    }
    cmd->moves_epoch = ch->all;
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

void cache_stats(const struct cache *c, struct cache_stats *out)
{
    struct redis_client_stats link;
    redis_client_stats(c->rc, &link);
    *out = c->stats;
    out->connects = link.connects;
    out->disconnects = link.disconnects;
    out->ping_failures = link.ping_failures;
}
