/* cache: a state machine over one redisAsyncContext. hiredis frees a context itself after its
 * disconnect callback, so this module only drops its pointer there; it frees a context only from its
 * own timers, never from inside a hiredis callback. Timeouts are ours: hiredis 0.14 has none for
 * async connects and commands. */
#include "worker/cache.h"

#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/log.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

struct cache {
    struct event_base *base;
    const struct config *cfg;
    redisAsyncContext *ac;
    enum cache_state state;
    struct event *timer_ev;       /* reconnect back-off, connect timeout */
    struct event *ping_ev;        /* periodic health PING */
    struct event *ping_timeout_ev;
    bool ping_inflight;
    int failures;
    struct cache_stats stats;
};

static void cache_connect(struct cache *c);

static void timer_arm(struct event *ev, int ms)
{
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    event_add(ev, &tv);
}

static void cache_down(struct cache *c, const char *why)
{
    if (c->state == CACHE_UP || c->failures == 0)
        log_warn("redis %s:%d: %s: cache bypassed until it is back", c->cfg->redis_host, c->cfg->redis_port, why);
    c->state = CACHE_DOWN;
    c->ping_inflight = false;
    event_del(c->ping_timeout_ev);
    int ms = BACKOFF_MIN_MS << (c->failures < 6 ? c->failures : 6);
    c->failures++;
    timer_arm(c->timer_ev, ms > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : ms);
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
    event_del(c->timer_ev);
    if (c->failures)
        log_info("redis %s:%d: connected again", c->cfg->redis_host, c->cfg->redis_port);
    c->failures = 0;
    c->state = CACHE_UP;
    c->stats.connects++;
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
    redisAsyncContext *ac = redisAsyncConnect(c->cfg->redis_host, c->cfg->redis_port);
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
    timer_arm(c->timer_ev, c->cfg->redis_connect_timeout_ms);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct cache *c = arg;
    if (c->state == CACHE_CONNECTING)
        cache_abandon(c, "connect_timeout passed");
    else if (c->state == CACHE_DOWN)
        cache_connect(c);
}

static void on_pong(redisAsyncContext *ac, void *r, void *priv)
{
    (void)ac;
    struct cache *c = priv;
    redisReply *reply = r;
    if (!c->ping_inflight)
        return; /* answered after its timeout already gave up on the connection */
    c->ping_inflight = false;
    event_del(c->ping_timeout_ev);
    if (!reply || reply->type != REDIS_REPLY_STATUS || strcmp(reply->str, "PONG") != 0) {
        c->stats.ping_failures++;
        if (reply)
            log_warn("redis: unexpected PING answer");
    }
}

static void ping_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct cache *c = arg;
    if (c->state != CACHE_UP || c->ping_inflight || !c->ac)
        return;
    if (redisAsyncCommand(c->ac, on_pong, c, "PING") != REDIS_OK) {
        cache_abandon(c, "cannot send PING");
        return;
    }
    c->ping_inflight = true;
    timer_arm(c->ping_timeout_ev, c->cfg->redis_command_timeout_ms);
}

static void ping_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct cache *c = arg;
    c->stats.ping_failures++;
    c->ping_inflight = false;
    cache_abandon(c, "PING not answered within command_timeout");
}

struct cache *cache_new(struct event_base *base, const struct config *cfg)
{
    struct cache *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->base = base;
    c->cfg = cfg;
    c->state = CACHE_DISABLED;
    if (!cfg->redis_enabled)
        return c;
    c->timer_ev = evtimer_new(base, timer_cb, c);
    c->ping_ev = event_new(base, -1, EV_PERSIST, ping_cb, c);
    c->ping_timeout_ev = evtimer_new(base, ping_timeout_cb, c);
    if (!c->timer_ev || !c->ping_ev || !c->ping_timeout_ev) {
        cache_free(c);
        return NULL;
    }
    timer_arm(c->ping_ev, cfg->health_interval_ms);
    cache_connect(c);
    return c;
}

void cache_free(struct cache *c)
{
    if (!c)
        return;
    if (c->ac) {
        c->ac->data = NULL;
        redisAsyncFree(c->ac);
    }
    struct event *evs[] = { c->timer_ev, c->ping_ev, c->ping_timeout_ev };
    for (size_t i = 0; i < 3; i++)
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
