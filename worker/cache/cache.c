/* cache: a state machine over one redisAsyncContext. hiredis frees a context itself after its
 * disconnect callback, so this module only drops its pointer there; it frees a context only from its
 * own timers, never from inside a hiredis callback. Timeouts are ours: hiredis 0.14 has none for
 * async connects and commands. */
#include "worker/cache/cache.h"

#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/config.h"
#include "common/consistency.h"
#include "common/log.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define LEASE_TTL_MS 3000
#define FENCE_TTL_MIN_MS 60000
#define LSN_HEX 17

/* Keys: <prefix>:epoch, <prefix>:seq (lease tokens), <prefix>:f:<key> (fence, 16 hex digits, compared
 * as strings: Lua numbers are doubles), <prefix>:e<epoch>:v:<key> (value: the data's LSN in 16 hex
 * digits, then the body), <prefix>:e<epoch>:l:<key> (lease). Each script runs atomically in Redis. */
/* A list's pages share a generation (<prefix>:g:<name>, with its fence <prefix>:f:g:<name>): a write
 * that can change the list bumps it, and every page key of the old generation is never read again. */
static const char LUA_LOOKUP[] =
    "local p, k = ARGV[1], ARGV[2] "
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
    "    while redis.call('SCARD', set) >= tonumber(ARGV[10]) do redis.call('DEL', redis.call('SPOP', set)) end "
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
    "  if (not cur) or cur < lsn then redis.call('SET', fk, lsn, 'PX', ttl) else redis.call('PEXPIRE', fk, ttl) end "
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
static const char LUA_RELEASE[] =
    "local lk = ARGV[1] .. ':e' .. ARGV[2] .. ':l:' .. ARGV[3] "
    "if redis.call('GET', lk) == ARGV[4] then redis.call('DEL', lk) end "
    "return 1";

enum cmd_kind { CMD_HANDSHAKE, CMD_PEEK, CMD_LOOKUP, CMD_FILL, CMD_RELEASE, CMD_INVALIDATE, CMD_EPOCH, CMD_PING,
                CMD_SCRIPT_LOAD };

/* The scripts go by SHA1 (EVALSHA) once SCRIPT LOAD on connect has told us the digests; until then,
 * and after a NOSCRIPT (SCRIPT FLUSH by hand), by their text (EVAL). */
enum script_id { SCRIPT_LOOKUP, SCRIPT_FILL, SCRIPT_RELEASE, SCRIPT_INVALIDATE, SCRIPT_COUNT };
static const char *const SCRIPTS[SCRIPT_COUNT] = { LUA_LOOKUP, LUA_FILL, LUA_RELEASE, LUA_INVALIDATE };

/* One command in flight. hiredis always calls back (with NULL when the connection goes), so the
 * struct is freed there; a timeout answers the caller first and marks it answered. */
struct cache_cmd {
    struct cache *c;
    enum cmd_kind kind;
    struct event *timer_ev;
    bool answered;
    cache_lookup_cb lookup_cb;
    cache_done_cb done_cb;
    void *arg;
    char gen[64], base[64];       /* lookups: the list's generation name and the page's key */
    enum script_id script;        /* SCRIPT LOAD */
    bool moves_epoch;             /* an invalidation of rows that could not be named */
};

struct cache {
    struct event_base *base;
    const struct config *cfg;
    redisAsyncContext *ac;
    enum cache_state state;
    char where[300];              /* "host:port" or the socket path, for log lines */
    char refused[160];            /* why Redis refused the handshake; the connect timer reports it */
    char down_why[160];           /* the reason last logged: each new one is logged once */
    struct event *timer_ev;       /* reconnect back-off, connect (and handshake) timeout */
    struct event *ping_ev;        /* periodic health PING */
    bool ping_inflight;
    bool epoch_inflight;
    struct consistency *fences;        /* shared: the cache-dirty flag */
    int failures;
    char sha[SCRIPT_COUNT][41];   /* "" until loaded */
    char epoch[24];               /* the epoch last seen: single-row lookups peek at it first */
    bool closing;                 /* cache_free: replies run no callback */
    long reply_warned_s;          /* when a failed lookup was last logged (monotonic seconds) */
    unsigned long reply_unlogged; /* failed lookups since, not logged */
    struct cache_stats stats;
};

static void cache_connect(struct cache *c);
static struct cache_cmd *cmd_send(struct cache *c, enum cmd_kind kind, int argc, const char **argv, const size_t *lens,
                                  cache_lookup_cb lcb, cache_done_cb dcb, void *arg);
static void epoch_bump(struct cache *c);
static void scripts_load(struct cache *c);

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

static void timer_arm(struct event *ev, int ms)
{
    struct timeval tv = clock_timeval(ms);
    event_add(ev, &tv);
}

/* Logged when Redis goes from up to down and whenever the reason changes (a Redis that is back but
 * refuses our AUTH says so once), never once per retry. */
static void cache_down(struct cache *c, const char *why)
{
    if (c->state == CACHE_UP || c->failures == 0 || strcmp(why, c->down_why) != 0)
        log_warn("redis %s: %s: cache bypassed until it is back", c->where, why);
    snprintf(c->down_why, sizeof(c->down_why), "%s", why);
    c->state = CACHE_DOWN;
    int ms = clock_backoff_ms(c->failures, BACKOFF_MIN_MS, BACKOFF_MAX_MS);
    c->failures++;
    timer_arm(c->timer_ev, ms);
}

/* Our side gives up on the context (timeout): hiredis runs the disconnect callback from the free. */
static void cache_abandon(struct cache *c, const char *why)
{
    redisAsyncContext *ac = c->ac;
    c->ac = NULL;
    if (ac) {
        ac->data = NULL;
        redisAsyncFree(ac);
    }
    c->stats.disconnects++;
    cache_down(c, why);
}

static void handshake_send(struct cache *c);

/* The link is open; the cache is up only once the handshake (AUTH or PING) is answered. The connect
 * timer stays armed: connect_timeout bounds both. */
static void on_connect(const redisAsyncContext *ac, int status)
{
    struct cache *c = ac->data;
    if (!c)
        return;
    if (status != REDIS_OK) {
        c->ac = NULL; /* hiredis frees it after this callback */
        cache_down(c, ac->errstr[0] ? ac->errstr : "connect failed");
        return;
    }
    handshake_send(c);
}

static void cache_up(struct cache *c)
{
    event_del(c->timer_ev);
    if (c->failures)
        log_info("redis %s: connected again", c->where);
    c->failures = 0;
    c->down_why[0] = '\0';
    c->state = CACHE_UP;
    c->stats.connects++;
    scripts_load(c);
    epoch_bump(c);
}

/* The first command of every connection, before any other: AUTH [username] password when a password
 * is configured, else PING, so that a Redis that wants a password (NOAUTH) is noticed here, once, and
 * not as a failure of every lookup. */
static void handshake_send(struct cache *c)
{
    const struct config *cfg = c->cfg;
    const char *argv[3];
    size_t lens[3];
    int argc = 0;
    if (cfg->redis_password[0]) {
        argv[argc++] = "AUTH";
        if (cfg->redis_username[0])
            argv[argc++] = cfg->redis_username;
        argv[argc++] = cfg->redis_password;
    } else {
        argv[argc++] = "PING";
    }
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    if (!cmd_send(c, CMD_HANDSHAKE, argc, argv, lens, NULL, NULL, NULL)) {
        snprintf(c->refused, sizeof(c->refused), "cannot send %s", argv[0]);
        timer_arm(c->timer_ev, 0);
    }
}

/* A refusal is reported by the connect timer (fired at once), which drops the link: this runs inside a
 * hiredis callback, where the context must not be freed. Redis's error text names no secret. */
static void handshake_done(struct cache *c, const redisReply *r)
{
    if (!r)
        return; /* the link went: its disconnect (or our timer) already reported it */
    if (r->type != REDIS_REPLY_ERROR) {
        cache_up(c);
        return;
    }
    const char *hint = "";
    if (strncmp(r->str, "NOAUTH", 6) == 0)
        hint = " (set PGAPI_REDIS_PASSWORD or [redis] password_file)";
    else if (strncmp(r->str, "WRONGPASS", 9) == 0)
        hint = " (check [redis] username and the password)";
    snprintf(c->refused, sizeof(c->refused), "%s refused: %.80s%s", c->cfg->redis_password[0] ? "AUTH" : "PING",
             r->str, hint);
    timer_arm(c->timer_ev, 0);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct cache *c = ac->data;
    (void)status;
    if (!c)
        return;
    c->ac = NULL;
    c->stats.disconnects++;
    cache_down(c, ac->errstr[0] ? ac->errstr : "connection closed");
}

static void cache_connect(struct cache *c)
{
    const struct config *cfg = c->cfg;
    redisAsyncContext *ac = cfg->redis_socket[0] ? redisAsyncConnectUnix(cfg->redis_socket)
                                                 : redisAsyncConnect(cfg->redis_host, cfg->redis_port);
    if (!ac || ac->err) {
        cache_down(c, ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        return;
    }
    ac->data = c;
    if (redisLibeventAttach(ac, c->base) != REDIS_OK) {
        redisAsyncFree(ac);
        cache_down(c, "cannot attach to the event loop");
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    c->ac = ac;
    c->state = CACHE_CONNECTING;
    c->refused[0] = '\0';
    timer_arm(c->timer_ev, c->cfg->redis_connect_timeout_ms);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct cache *c = arg;
    if (c->state == CACHE_CONNECTING)
        cache_abandon(c, c->refused[0] ? c->refused : "connect_timeout passed");
    else if (c->state == CACHE_DOWN)
        cache_connect(c);
}

static void ping_send(struct cache *c);

static void ping_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct cache *c = arg;
    epoch_bump(c);
    ping_send(c);
}

struct cache *cache_new(struct event_base *base, const struct config *cfg, struct consistency *fences)
{
    struct cache *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->base = base;
    c->cfg = cfg;
    c->fences = fences;
    c->state = CACHE_DISABLED;
    if (cfg->redis_socket[0])
        snprintf(c->where, sizeof(c->where), "%s", cfg->redis_socket);
    else
        snprintf(c->where, sizeof(c->where), "%s:%d", cfg->redis_host, cfg->redis_port);
    if (!cfg->redis_enabled)
        return c;
    c->timer_ev = evtimer_new(base, timer_cb, c);
    c->ping_ev = event_new(base, -1, EV_PERSIST, ping_cb, c);
    if (!c->timer_ev || !c->ping_ev) {
        cache_free(c);
        return NULL;
    }
    timer_arm(c->ping_ev, cfg->health_interval_ms);
    cache_connect(c);
    return c;
}

/* No callback runs from here (worker_free relies on it): hiredis answers every pending command with
 * NULL from redisAsyncFree, and on_cmd_reply only frees them. */
void cache_free(struct cache *c)
{
    if (!c)
        return;
    c->closing = true;
    if (c->ac) {
        c->ac->data = NULL;
        redisAsyncFree(c->ac);
    }
    struct event *evs[] = { c->timer_ev, c->ping_ev };
    for (size_t i = 0; i < 2; i++)
        if (evs[i])
            event_free(evs[i]);
    free(c);
}

enum cache_state cache_state(const struct cache *c)
{
    return c->state;
}

const char *cache_state_name(enum cache_state s)
{
    static const char *names[] = { "disabled", "down", "connecting", "up" };
    return names[s];
}

void cache_stats(const struct cache *c, struct cache_stats *out)
{
    *out = c->stats;
}

/* ---- commands ------------------------------------------------------------------------------- */

static void lsn_hex(uint64_t lsn, char *buf)
{
    snprintf(buf, LSN_HEX, "%016" PRIX64, lsn);
}

static bool cache_usable(const struct cache *c)
{
    return c->state == CACHE_UP && c->ac && !consistency_cache_dirty(c->fences);
}

static void cmd_answer_fail(struct cache_cmd *cmd)
{
    cmd->answered = true;
    if (cmd->kind == CMD_LOOKUP || cmd->kind == CMD_PEEK)
        cmd->lookup_cb(cmd->arg, &(struct cache_lookup){ .kind = CACHE_BYPASS });
    else if (cmd->kind == CMD_INVALIDATE && cmd->done_cb)
        cmd->done_cb(cmd->arg, false);
    else if (cmd->kind == CMD_EPOCH)
        cmd->c->epoch_inflight = false;
    else if (cmd->kind == CMD_PING)
        cmd->c->stats.ping_failures++;
    if (cmd->kind == CMD_PING)
        cmd->c->ping_inflight = false;
}

/* A lookup is optional work: past command_timeout its request reads the database (BYPASS) and the
 * connection stays, its late answer dropped. Dropping the connection would make the next write's
 * invalidation fail (Redis "down") and so move the whole cache to a new epoch for nothing. Commands whose
 * outcome matters (an invalidation, the epoch, the PING health probe) drop it: their outcome is unknown. */
static void cmd_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct cache_cmd *cmd = arg;
    struct cache *c = cmd->c;
    cmd_answer_fail(cmd);
    if (cmd->kind == CMD_LOOKUP || cmd->kind == CMD_PEEK)
        return; /* on_cmd_reply frees cmd when the answer comes, or the connection goes */
    cache_abandon(c, "command not answered within command_timeout"); /* frees cmd via its callback */
}

static uint64_t fence_parse(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_STRING ? strtoull(r->str, NULL, 16) : 0;
}

/* A stored value is its data's LSN (16 hex digits) then the body; false if it is not. */
static bool value_split(const redisReply *v, struct cache_lookup *l)
{
    char hex[LSN_HEX];
    if (v->type != REDIS_REPLY_STRING || v->len < LSN_HEX - 1) {
        log_warn("redis: a cached value without its LSN: ignored");
        return false;
    }
    memcpy(hex, v->str, LSN_HEX - 1);
    hex[LSN_HEX - 1] = '\0';
    char *end;
    l->data_lsn = strtoull(hex, &end, 16);
    if (*end != '\0') {
        log_warn("redis: a cached value without its LSN: ignored");
        return false;
    }
    l->value = v->str + LSN_HEX - 1;
    l->len = v->len - (LSN_HEX - 1);
    return true;
}

static void lookup_deliver(struct cache_cmd *cmd, const redisReply *r)
{
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 5 || r->element[0]->type != REDIS_REPLY_INTEGER ||
        r->element[1]->type != REDIS_REPLY_STRING || r->element[3]->type != REDIS_REPLY_STRING ||
        r->element[4]->type != REDIS_REPLY_STRING) {
        if (r && r->type == REDIS_REPLY_ERROR)
            reply_warn(cmd->c, "lookup script failed", r->str);
        cmd->lookup_cb(cmd->arg, &(struct cache_lookup){ .kind = CACHE_BYPASS });
        return;
    }
    long long kind = r->element[0]->integer;
    struct cache_stats *st = &cmd->c->stats;
    if (kind == 1)
        st->hits++;
    else if (kind == 2)
        st->misses++;
    else
        st->waits++;
    struct cache_lookup l = { .kind = kind == 1 ? CACHE_HIT : kind == 2 ? CACHE_LEASE : CACHE_WAIT,
                              .fence = fence_parse(r->element[2]) };
    if (l.kind == CACHE_HIT && !value_split(r->element[1], &l)) {
        cmd->lookup_cb(cmd->arg, &(struct cache_lookup){ .kind = CACHE_BYPASS });
        return;
    } else if (l.kind == CACHE_LEASE) {
        snprintf(l.token, sizeof(l.token), "%s", r->element[1]->str);
    }
    snprintf(l.epoch, sizeof(l.epoch), "%s", r->element[3]->str);
    snprintf(cmd->c->epoch, sizeof(cmd->c->epoch), "%s", l.epoch);
    snprintf(l.key, sizeof(l.key), "%s", r->element[4]->str);
    snprintf(l.gen, sizeof(l.gen), "%s", cmd->gen);
    snprintf(l.base, sizeof(l.base), "%s", cmd->base);
    cmd->lookup_cb(cmd->arg, &l);
}

static void lookup_script_send(struct cache *c, const char *key, const char *gen, cache_lookup_cb cb, void *arg);

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
    if (strcmp(now, cmd->gen) == 0 && v->type == REDIS_REPLY_STRING && value_split(v, &l)) {
        c->stats.hits++;
        snprintf(l.epoch, sizeof(l.epoch), "%s", now);
        snprintf(l.key, sizeof(l.key), "%s", cmd->base);
        snprintf(l.base, sizeof(l.base), "%s", cmd->base);
        cmd->lookup_cb(cmd->arg, &l);
        return;
    }
    snprintf(c->epoch, sizeof(c->epoch), "%s", now);
    lookup_script_send(c, cmd->base, NULL, cmd->lookup_cb, cmd->arg);
}

/* At exit: the request a command answers dies with the process. An invalidation not confirmed may not
 * have run: every worker bypasses the cache until it moves to a new epoch. */
static void cmd_discard(struct cache_cmd *cmd)
{
    if (cmd->kind == CMD_INVALIDATE && !cmd->answered) {
        log_warn("redis: exiting with an invalidation unconfirmed: the cache is bypassed until a new epoch");
        consistency_cache_dirty_set(cmd->c->fences);
    }
    free(cmd);
}

static void on_cmd_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)ac;
    struct cache_cmd *cmd = priv;
    redisReply *r = reply;
    if (cmd->timer_ev)
        event_free(cmd->timer_ev);
    if (cmd->c->closing) {
        cmd_discard(cmd);
        return;
    }
    bool loaded = false; /* reload once, not per reply */
    for (int i = 0; i < SCRIPT_COUNT; i++)
        loaded = loaded || cmd->c->sha[i][0];
    if (r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0 && cmd->c->ac && loaded) {
        log_warn("redis: scripts were flushed: loading them again");
        scripts_load(cmd->c);
    }
    if (!cmd->answered) {
        bool ok = r && r->type != REDIS_REPLY_ERROR;
        if (cmd->kind == CMD_HANDSHAKE) {
            handshake_done(cmd->c, r);
        } else if (cmd->kind == CMD_PEEK) {
            peek_deliver(cmd, r);
        } else if (cmd->kind == CMD_LOOKUP) {
            lookup_deliver(cmd, r);
        } else if (cmd->kind == CMD_INVALIDATE) {
            cmd->c->stats.invalidations++;
            if (ok && cmd->moves_epoch)
                cmd->c->stats.epoch_bumps++;
            if (!ok) {
                cmd->c->stats.invalidation_failures++;
                log_warn("redis: invalidation failed: %s", r ? r->str : "connection lost");
            }
            if (cmd->done_cb)
                cmd->done_cb(cmd->arg, ok);
        } else if (cmd->kind == CMD_PING) {
            cmd->c->ping_inflight = false;
            if (r && (r->type != REDIS_REPLY_STATUS || strcmp(r->str, "PONG") != 0)) { /* NULL: link lost */
                cmd->c->stats.ping_failures++;
                log_warn("redis: unexpected PING answer");
            }
        } else if (cmd->kind == CMD_SCRIPT_LOAD) {
            if (r && r->type == REDIS_REPLY_STRING && r->len == 40)
                memcpy(cmd->c->sha[cmd->script], r->str, 41);
            else
                log_warn("redis: SCRIPT LOAD failed (%s): scripts go by EVAL", r && r->str ? r->str : "no answer");
        } else if (cmd->kind == CMD_EPOCH) {
            cmd->c->epoch_inflight = false;
            if (ok) {
                cmd->c->stats.epoch_bumps++;
                consistency_cache_dirty_clear(cmd->c->fences);
                log_info("redis: cache moved to a new epoch; cached values in use again");
            }
        }
    }
    free(cmd);
}

/* Sends argv as one command with the command timeout, but a fill or a lease's release: nobody waits for
 * them, so they have no deadline, and their slowness or failure never drops the connection (a lost
 * connection answers them). NULL when it could not be sent (nothing called). */
static struct cache_cmd *cmd_send(struct cache *c, enum cmd_kind kind, int argc, const char **argv, const size_t *lens,
                    cache_lookup_cb lcb, cache_done_cb dcb, void *arg)
{
    struct cache_cmd *cmd = calloc(1, sizeof(*cmd));
    if (!cmd)
        return NULL;
    *cmd = (struct cache_cmd){ .c = c, .kind = kind, .lookup_cb = lcb, .done_cb = dcb, .arg = arg };
    if (kind == CMD_LOOKUP) { /* argv is the lookup script's: key at 4, generation name at 6 */
        snprintf(cmd->base, sizeof(cmd->base), "%s", argv[4]);
        snprintf(cmd->gen, sizeof(cmd->gen), "%s", argv[6]);
    }
    bool deadline = kind != CMD_FILL && kind != CMD_RELEASE;
    if (deadline && !(cmd->timer_ev = evtimer_new(c->base, cmd_timeout_cb, cmd))) {
        free(cmd);
        return NULL;
    }
    if (redisAsyncCommandArgv(c->ac, on_cmd_reply, cmd, argc, argv, lens) != REDIS_OK) {
        if (cmd->timer_ev)
            event_free(cmd->timer_ev);
        free(cmd);
        return NULL;
    }
    if (deadline)
        timer_arm(cmd->timer_ev, c->cfg->redis_command_timeout_ms);
    return cmd;
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

/* A single row's lookup first reads the epoch and the value of the epoch last seen, in one MGET (cheaper
 * for Redis than the script); a list page, a miss or an epoch change goes through the script. */
void cache_lookup(struct cache *c, const char *key, const char *gen, cache_lookup_cb cb, void *arg)
{
    if (gen || !c->epoch[0] || !cache_usable(c)) {
        lookup_script_send(c, key, gen, cb, arg);
        return;
    }
    char epoch_key[96], value_key[192];
    snprintf(epoch_key, sizeof(epoch_key), "%s:epoch", c->cfg->redis_prefix);
    snprintf(value_key, sizeof(value_key), "%s:e%s:v:%s", c->cfg->redis_prefix, c->epoch, key);
    const char *argv[] = { "MGET", epoch_key, value_key };
    size_t lens[] = { 4, strlen(epoch_key), strlen(value_key) };
    struct cache_cmd *cmd = cmd_send(c, CMD_PEEK, 3, argv, lens, cb, NULL, arg);
    if (!cmd) {
        lookup_script_send(c, key, gen, cb, arg);
        return;
    }
    snprintf(cmd->base, sizeof(cmd->base), "%s", key);
    snprintf(cmd->gen, sizeof(cmd->gen), "%s", c->epoch); /* a peek's gen: the epoch it assumed */
}

static void lookup_script_send(struct cache *c, const char *key, const char *gen, cache_lookup_cb cb, void *arg)
{
    char ttl[16];
    snprintf(ttl, sizeof(ttl), "%d", LEASE_TTL_MS);
    const char *argv[] = { NULL, NULL, "0", c->cfg->redis_prefix, key, ttl, gen ? gen : "" };
    script_argv(c, SCRIPT_LOOKUP, argv);
    size_t lens[7];
    eval_lens(7, argv, lens, SIZE_MAX, 0);
    if (!cache_usable(c) || !cmd_send(c, CMD_LOOKUP, 7, argv, lens, cb, NULL, arg)) {
        c->stats.bypasses++;
        cb(arg, &(struct cache_lookup){ .kind = CACHE_BYPASS });
    }
}

void cache_fill(struct cache *c, const struct cache_lookup *lease, const char *value, size_t len, uint64_t data_lsn)
{
    const char *key = lease->key;
    const char *gen = lease->gen, *base = lease->base;
    if (!cache_usable(c) || lease->kind != CACHE_LEASE)
        return;
    if (len > c->cfg->cache_max_value_bytes) { /* served, not cached */
        log_debug("redis: %s not cached: %zu bytes, over max_value_bytes", key, len);
        cache_release(c, lease);
        return;
    }
    char ttl[16], lsn[LSN_HEX], pages[16];
    snprintf(ttl, sizeof(ttl), "%d", c->cfg->cache_ttl_s);
    snprintf(pages, sizeof(pages), "%d", c->cfg->cache_list_pages);
    lsn_hex(data_lsn, lsn);
    const char *argv[] = { NULL, NULL, "0", c->cfg->redis_prefix, key, lease->epoch, lease->token, value,
                           ttl, lsn, gen, base, pages };
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
static struct cache_cmd *invalidate_send(struct cache *c, const struct cache_change *ch, uint64_t lsn, int nids,
                                         char (*id_keys)[CACHE_KEY_MAX], cache_done_cb cb, void *arg)
{
    enum { FIXED = 8, MAXARGS = FIXED + CACHE_CHANGE_GENS_MAX + CACHE_CHANGE_KEYS_MAX + CACHE_CHANGE_IDS_MAX };
    char lsn_s[LSN_HEX], ttl[16], ngens_s[12];
    lsn_hex(lsn, lsn_s);
    int fence_ttl = c->cfg->max_replica_lag_ms * 6;
    snprintf(ttl, sizeof(ttl), "%d", fence_ttl > FENCE_TTL_MIN_MS ? fence_ttl : FENCE_TTL_MIN_MS);
    snprintf(ngens_s, sizeof(ngens_s), "%d", ch->ngens);
    const char *argv[MAXARGS] = { NULL, NULL, "0", c->cfg->redis_prefix, lsn_s, ttl, ch->all ? "1" : "0", ngens_s };
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

void cache_invalidate(struct cache *c, const struct cache_change *ch, uint64_t lsn, cache_done_cb cb, void *arg)
{
    if (c->state == CACHE_DISABLED) {
        cb(arg, true);
        return;
    }
    struct cache_cmd *cmd = NULL;
    if (c->state == CACHE_UP && c->ac) {
        int nids = ch->nids < CACHE_CHANGE_IDS_MAX ? ch->nids : CACHE_CHANGE_IDS_MAX;
        char (*id_keys)[CACHE_KEY_MAX] = nids > 0 ? malloc((size_t)nids * sizeof(*id_keys)) : NULL;
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

/* Ends a bypass: a new epoch makes every value cached before the failure unreachable. */
static void epoch_bump(struct cache *c)
{
    if (c->epoch_inflight || c->state != CACHE_UP || !c->ac || !consistency_cache_dirty(c->fences))
        return;
    char key[96];
    snprintf(key, sizeof(key), "%s:epoch", c->cfg->redis_prefix);
    const char *argv[] = { "INCR", key };
    size_t lens[] = { 4, strlen(key) };
    if (cmd_send(c, CMD_EPOCH, 2, argv, lens, NULL, NULL, NULL))
        c->epoch_inflight = true;
}

/* Health: a PING per health_interval; one not answered within command_timeout drops the connection
 * (the command timeout does it, as for any command). */
static void ping_send(struct cache *c)
{
    if (c->state != CACHE_UP || c->ping_inflight || !c->ac)
        return;
    const char *argv[] = { "PING" };
    size_t lens[] = { 4 };
    if (!cmd_send(c, CMD_PING, 1, argv, lens, NULL, NULL, NULL))
        cache_abandon(c, "cannot send PING");
    else
        c->ping_inflight = true;
}

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
