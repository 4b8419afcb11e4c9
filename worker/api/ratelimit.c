/* ratelimit: one Redis round trip before the handler (not pipelined with the cache lookup: a local hit
 * needs no Redis at all, and a limited request must do no other work), then the handler. While Redis
 * cannot answer, a per-worker GCRA with the limits divided by the workers keeps limiting: never open
 * silently, every decision is counted (pgapi_ratelimit_total) and the switch is logged once each way. */
#include "worker/api/ratelimit.h"

#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/config.h"
#include "common/log.h"
#include "worker/cache/cache.h"
#include "worker/http/http.h"
#include "worker/http/reply.h"

#define LOCAL_SLOTS 4096 /* clients this worker tracks alone; a power of two */
#define LOCAL_PROBE 8    /* slots one client may land in */
#define KEY_MAX (HTTP_SUBJECT_MAX + 8)

/* One limit: a request every interval_us, at most tolerance_us (burst intervals) ahead. */
struct limit {
    const char *name; /* the RateLimit-Policy's name */
    int rate, burst;
    uint64_t interval_us, tolerance_us;             /* shared, in Redis */
    uint64_t local_interval_us, local_tolerance_us; /* this worker's share */
};

struct local_slot {
    uint64_t hash; /* 0 = free */
    uint64_t tat_us;
};

struct ratelimit {
    const struct config *cfg;
    struct cache *cache;
    struct limit reads, writes;
    bool local_mode; /* the last decision was local: logged when it starts and ends */
    struct ratelimit_stats stats;
    struct local_slot slots[LOCAL_SLOTS];
};

/* A request waiting for Redis' answer. */
struct wait {
    struct ratelimit *rl;
    struct http_request *req;
    const struct limit *lim;
    char key[KEY_MAX];
    ratelimit_go_fn go;
    void *arg;
    uint64_t t0_us; /* sent: the round trip counts in Server-Timing's cache */
};

static void limit_init(struct limit *l, const char *name, int rate, int burst, int workers)
{
    int local_burst = burst / workers > 0 ? burst / workers : 1;
    *l = (struct limit){ .name = name, .rate = rate, .burst = burst };
    l->interval_us = 1000000 / (uint64_t)rate > 0 ? 1000000 / (uint64_t)rate : 1;
    l->tolerance_us = l->interval_us * (uint64_t)burst;
    l->local_interval_us = l->interval_us * (uint64_t)workers;
    l->local_tolerance_us = l->local_interval_us * (uint64_t)local_burst;
}

struct ratelimit *ratelimit_new(const struct config *cfg, struct cache *cache)
{
    if (!cfg->ratelimit_enabled)
        return NULL;
    struct ratelimit *rl = calloc(1, sizeof(*rl));
    if (!rl) {
        log_error("out of memory for the rate limiter: requests are not limited");
        return NULL;
    }
    int workers = cfg->workers > 0 ? cfg->workers : 1;
    rl->cfg = cfg;
    rl->cache = cache;
    limit_init(&rl->reads, "reads", cfg->read_rate, cfg->read_burst, workers);
    limit_init(&rl->writes, "writes", cfg->write_rate, cfg->write_burst, workers);
    if (!cfg->redis_enabled) {
        rl->local_mode = true;
        log_warn("ratelimit: [redis] enabled is off: each of the %d workers limits alone, with 1/%d of the "
                 "limits",
                 workers, workers);
    }
    return rl;
}

void ratelimit_free(struct ratelimit *rl)
{
    free(rl);
}

void ratelimit_stats(const struct ratelimit *rl, struct ratelimit_stats *out)
{
    *out = rl ? rl->stats : (struct ratelimit_stats){ 0 };
}

bool ratelimit_key(char *dst, size_t cap, bool write, const char *subject, const char *client)
{
    bool by_subject = subject && subject[0];
    int n = snprintf(dst, cap, "%c:%c:%s", write ? 'w' : 'r', by_subject ? 's' : 'a',
                     by_subject            ? subject
                     : client && client[0] ? client
                                           : "-");
    return n > 0 && (size_t)n < cap;
}

/* ---- this worker's own GCRA ------------------------------------------------------------------ */

static uint64_t key_hash(const char *key)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)key; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return h ? h : 1;
}

/* The client's slot: its own, else a free or idle one (its bucket full again), else the one closest to
 * full. The table is bounded: a client pushed out starts again with a full burst, which only the
 * busiest LOCAL_PROBE clients of one neighbourhood can cause. */
static struct local_slot *local_slot_find(struct ratelimit *rl, uint64_t hash, uint64_t now)
{
    struct local_slot *best = NULL;
    for (int i = 0; i < LOCAL_PROBE; i++) {
        struct local_slot *s = &rl->slots[(hash + (uint64_t)i) & (LOCAL_SLOTS - 1)];
        if (s->hash == hash)
            return s;
        if (!best || s->tat_us < best->tat_us)
            best = s;
    }
    *best = (struct local_slot){ .hash = hash, .tat_us = now };
    return best;
}

static struct cache_rate local_decide(struct ratelimit *rl, const struct limit *lim, const char *key)
{
    uint64_t now = clock_now_us();
    struct local_slot *s = local_slot_find(rl, key_hash(key), now);
    uint64_t tat = s->tat_us > now ? s->tat_us : now;
    uint64_t ahead = tat + lim->local_interval_us - now;
    if (ahead > lim->local_tolerance_us)
        return (struct cache_rate){ .result = CACHE_RATE_LIMITED,
                                    .retry_us = ahead - lim->local_tolerance_us,
                                    .reset_us = tat - now };
    s->tat_us = now + ahead;
    return (struct cache_rate){ .result = CACHE_RATE_ALLOWED,
                                .remaining = (lim->local_tolerance_us - ahead) / lim->local_interval_us,
                                .reset_us = ahead };
}

/* ---- deciding and answering -------------------------------------------------------------------- */

static uint64_t seconds_up(uint64_t us)
{
    return (us + 999999) / 1000000;
}

/* The RateLimit-Policy and RateLimit fields of draft-ietf-httpapi-ratelimit-headers-10 (structured
 * fields: a named policy, q quota, w window in seconds; r remaining, t seconds to reset). A GCRA is
 * announced as its burst (q) over the time it takes to earn the whole burst back (w). */
static void headers_add(struct http_request *req, const struct limit *lim, const struct cache_rate *r)
{
    char policy[96], state[96];
    uint64_t window = seconds_up((uint64_t)lim->burst * 1000000 / (uint64_t)lim->rate);
    snprintf(policy, sizeof(policy), "\"%s\";q=%d;w=%llu", lim->name, lim->burst,
             (unsigned long long)(window ? window : 1));
    uint64_t reset = seconds_up(r->result == CACHE_RATE_LIMITED ? r->retry_us : r->reset_us);
    snprintf(state, sizeof(state), "\"%s\";r=%llu;t=%llu", lim->name,
             (unsigned long long)(r->result == CACHE_RATE_LIMITED ? 0 : r->remaining),
             (unsigned long long)reset);
    http_header_add(req, "RateLimit-Policy", policy);
    http_header_add(req, "RateLimit", state);
}

static void mode_note(struct ratelimit *rl, bool local)
{
    if (local == rl->local_mode || !rl->cfg->redis_enabled)
        return;
    rl->local_mode = local;
    if (local)
        log_warn("ratelimit: Redis cannot answer (down, or slower than command_timeout): this worker limits "
                 "alone with 1/%d of the limits until it answers again",
                 rl->cfg->workers > 0 ? rl->cfg->workers : 1);
    else
        log_info("ratelimit: Redis answers again: the limits are shared again");
}

static void decided(struct ratelimit *rl, struct http_request *req, const struct limit *lim, const char *key,
                    const struct cache_rate *shared, ratelimit_go_fn go, void *arg)
{
    struct cache_rate r = *shared;
    bool local = r.result == CACHE_RATE_UNKNOWN;
    mode_note(rl, local);
    if (local)
        r = local_decide(rl, lim, key);
    bool allowed = r.result == CACHE_RATE_ALLOWED;
    uint64_t *count = local ? (allowed ? &rl->stats.local_allowed : &rl->stats.local_limited)
                            : (allowed ? &rl->stats.allowed : &rl->stats.limited);
    (*count)++;
    headers_add(req, lim, &r);
    if (allowed) {
        go(arg, req);
        return;
    }
    char retry[24];
    uint64_t s = seconds_up(r.retry_us);
    snprintf(retry, sizeof(retry), "%llu", (unsigned long long)(s ? s : 1));
    http_header_add(req, "Retry-After", retry);
    reply_error(req, 429, "rate_limited", "too many %s from this client: retry in %s s", lim->name, retry);
    go(arg, NULL);
}

static void wait_done(void *arg, const struct cache_rate *r)
{
    struct wait *w = arg;
    if (r && w->rl->cfg->redis_enabled)
        w->req->timing.cache_us += clock_now_us() - w->t0_us;
    if (r)
        decided(w->rl, w->req, w->lim, w->key, r, w->go, w->arg);
    else
        w->go(w->arg, NULL); /* the worker exits */
    free(w);
}

void ratelimit_admit(struct ratelimit *rl, struct http_request *req, ratelimit_go_fn go, void *arg)
{
    bool write = req->method != HTTP_GET && req->method != HTTP_HEAD;
    struct wait *w = calloc(1, sizeof(*w));
    if (!w) {
        log_error("request %s: out of memory in the rate limiter: 503", req->request_id);
        reply_error(req, 503, "out_of_memory", "server out of memory");
        go(arg, NULL);
        return;
    }
    *w = (struct wait){ .rl = rl,
                        .req = req,
                        .lim = write ? &rl->writes : &rl->reads,
                        .go = go,
                        .arg = arg,
                        .t0_us = clock_now_us() };
    /* a key that does not fit (a subject is at most HTTP_SUBJECT_MAX) is cut: still that client's */
    (void)ratelimit_key(w->key, sizeof(w->key), write, req->subject, req->client);
    if (!rl->cfg->redis_enabled) {
        wait_done(w, &(struct cache_rate){ .result = CACHE_RATE_UNKNOWN });
        return;
    }
    cache_rate_check(rl->cache, w->key, w->lim->interval_us, w->lim->tolerance_us, wait_done, w);
}
