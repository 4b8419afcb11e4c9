/* sentinel: two hiredis async contexts on the worker's loop, each with its own state machine. A question
 * uses a short-lived context per Sentinel tried; the subscription keeps one context and moves to the next
 * Sentinel when it is lost. hiredis may run several callbacks for one failure (the connect callback, the
 * pending replies with NULL, the disconnect callback): the first one to act detaches the context
 * (ac->data = NULL) and the others see that and return. A context is freed only from our own timers. */
#include "worker/cache/sentinel.h"

#include <arpa/inet.h>
#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/config.h"
#include "common/log.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define CHANNEL "+switch-master"

enum ask_state {
    ASK_IDLE,    /* no question in flight */
    ASK_WAITING, /* a Sentinel was asked; its answer or the timer decides */
};

enum sub_state {
    SUB_WAITING,    /* back-off before the next Sentinel is tried */
    SUB_CONNECTING, /* SUBSCRIBE sent, not yet confirmed */
    SUB_SUBSCRIBED, /* confirmed: switches are heard */
};

struct sentinel {
    struct event_base *base;
    const struct config *cfg;
    struct sentinel_events ev;
    enum ask_state ask;
    redisAsyncContext *ask_ac;
    int ask_first, ask_tried; /* the Sentinel that answered last is asked first */
    struct event *ask_timer;
    enum sub_state sub;
    redisAsyncContext *sub_ac;
    int sub_index, sub_failures;
    struct event *sub_timer;
    char sub_why[160]; /* the last reason logged: each new one is logged once */
};

static const struct config_addr *sentinel_at(const struct sentinel *s, int i)
{
    return &s->cfg->redis_sentinels[i % s->cfg->redis_sentinel_count];
}

static void timer_arm(struct event *ev, int ms)
{
    struct timeval tv = clock_timeval(ms);
    event_add(ev, &tv);
}

/* Drops our interest in a context hiredis is already freeing (inside its callbacks). */
static void ctx_detach(const redisAsyncContext *ac)
{
    ((redisAsyncContext *)ac)->data = NULL;
}

/* Frees a context from our own timers (never inside its callbacks). */
static void ctx_free(redisAsyncContext **acp)
{
    redisAsyncContext *ac = *acp;
    *acp = NULL;
    if (ac) {
        ac->data = NULL;
        redisAsyncFree(ac);
    }
}

static redisAsyncContext *ctx_open(struct sentinel *s, const struct config_addr *a,
                                   void (*on_connect)(const redisAsyncContext *, int),
                                   void (*on_disconnect)(const redisAsyncContext *, int))
{
    redisAsyncContext *ac = redisAsyncConnect(a->host, a->port);
    if (!ac || ac->err || redisLibeventAttach(ac, s->base) != REDIS_OK) {
        if (ac)
            redisAsyncFree(ac);
        return NULL;
    }
    ac->data = s;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    return ac;
}

/* A Sentinel names hosts as it was told them: an IP literal unless announce-hostnames is on, and a name
 * would need a blocking resolver here. */
static bool addr_valid(const char *host, size_t len)
{
    unsigned char buf[sizeof(struct in6_addr)];
    char h[64];
    if (len == 0 || len >= sizeof(h))
        return false;
    memcpy(h, host, len);
    h[len] = '\0';
    return inet_pton(AF_INET, h, buf) == 1 || inet_pton(AF_INET6, h, buf) == 1;
}

static int port_parse(const char *text)
{
    char *end = NULL;
    long port = strtol(text, &end, 10);
    return end != text && *end == '\0' && port >= 1 && port <= 65535 ? (int)port : 0;
}

/* ---- the question ------------------------------------------------------------------------------ */

static void ask_next(struct sentinel *s);

static void ask_failed(struct sentinel *s, const char *why)
{
    const struct config_addr *a = sentinel_at(s, s->ask_first + s->ask_tried - 1);
    log_warn("redis sentinel %s:%d: %s: asking the next", a->host, a->port, why);
    ask_next(s);
}

/* The answer is ["ip", "port"], or nil when the Sentinel monitors no master of that name. */
static void ask_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    struct sentinel *s = ac->data;
    const redisReply *r = reply;
    (void)priv;
    if (!s)
        return;
    ctx_detach(ac);
    s->ask_ac = NULL;
    event_del(s->ask_timer);
    int port = 0;
    bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
              r->element[0]->type == REDIS_REPLY_STRING && r->element[1]->type == REDIS_REPLY_STRING &&
              addr_valid(r->element[0]->str, r->element[0]->len) && (port = port_parse(r->element[1]->str));
    if (r)
        redisAsyncDisconnect(ac); /* after this callback; with NULL hiredis is freeing it already */
    if (!ok) {
        ask_failed(s, !r                             ? "connection lost"
                      : r->type == REDIS_REPLY_ERROR ? "refused the question"
                      : r->type == REDIS_REPLY_NIL   ? "monitors no master of that name"
                                                     : "answered no IP address and port");
        return;
    }
    s->ask = ASK_IDLE;
    s->ask_first = (s->ask_first + s->ask_tried - 1) % s->cfg->redis_sentinel_count;
    s->ev.answer(s->ev.arg, r->element[0]->str, port);
}

static void ask_on_connect(const redisAsyncContext *ac, int status)
{
    struct sentinel *s = ac->data;
    if (!s || status == REDIS_OK)
        return;
    ctx_detach(ac);
    s->ask_ac = NULL;
    event_del(s->ask_timer);
    ask_failed(s, ac->errstr[0] ? ac->errstr : "connect failed");
}

static void ask_on_disconnect(const redisAsyncContext *ac, int status)
{
    struct sentinel *s = ac->data;
    (void)status;
    if (!s)
        return;
    ctx_detach(ac);
    s->ask_ac = NULL;
    event_del(s->ask_timer);
    ask_failed(s, "connection closed");
}

static void ask_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct sentinel *s = arg;
    ctx_free(&s->ask_ac);
    ask_failed(s, "no answer within connect_timeout");
}

/* Tries the Sentinels after the last one tried; after the last of them the answer is "none". */
static void ask_next(struct sentinel *s)
{
    const struct config *cfg = s->cfg;
    if (s->ask_tried == cfg->redis_sentinel_count) {
        s->ask = ASK_IDLE;
        s->ev.answer(s->ev.arg, NULL, 0);
        return;
    }
    const struct config_addr *a = sentinel_at(s, s->ask_first + s->ask_tried);
    s->ask_tried++;
    redisAsyncContext *ac = ctx_open(s, a, ask_on_connect, ask_on_disconnect);
    if (!ac || redisAsyncCommand(ac, ask_reply, NULL, "SENTINEL get-master-addr-by-name %s",
                                 cfg->redis_master_name) != REDIS_OK) {
        if (ac) {
            ac->data = NULL;
            redisAsyncFree(ac);
        }
        ask_failed(s, "cannot connect");
        return;
    }
    s->ask_ac = ac;
    timer_arm(s->ask_timer, cfg->redis_connect_timeout_ms);
}

void sentinel_ask(struct sentinel *s)
{
    if (s->ask != ASK_IDLE)
        return;
    s->ask = ASK_WAITING;
    s->ask_tried = 0;
    ask_next(s);
}

/* ---- the subscription ---------------------------------------------------------------------------- */

/* Lost or never made: the next Sentinel after a back-off, logged once per reason. */
static void sub_lost(struct sentinel *s, const char *why)
{
    const struct config_addr *a = sentinel_at(s, s->sub_index);
    if (s->sub == SUB_SUBSCRIBED || strcmp(why, s->sub_why) != 0)
        log_warn(
            "redis sentinel %s:%d: %s: no master switch is heard until another Sentinel is subscribed to",
            a->host, a->port, why);
    snprintf(s->sub_why, sizeof(s->sub_why), "%s", why);
    s->sub = SUB_WAITING;
    s->sub_index = (s->sub_index + 1) % s->cfg->redis_sentinel_count;
    timer_arm(s->sub_timer, clock_backoff_ms(s->sub_failures++, BACKOFF_MIN_MS, BACKOFF_MAX_MS));
}

/* "+switch-master" carries "<name> <old ip> <old port> <new ip> <new port>". */
static void sub_message(struct sentinel *s, const char *text)
{
    char name[64], old_host[64], new_host[64], old_port[8], new_port[8];
    if (sscanf(text, "%63s %63s %7s %63s %7s", name, old_host, old_port, new_host, new_port) != 5 ||
        strcmp(name, s->cfg->redis_master_name) != 0)
        return;
    int port = port_parse(new_port);
    if (!port || !addr_valid(new_host, strlen(new_host))) {
        log_warn("redis sentinel: +switch-master for %s names no IP address and port: asking", name);
        sentinel_ask(s);
        return;
    }
    s->ev.switched(s->ev.arg, new_host, port);
}

/* Runs for the confirmation and then for every message; NULL when the context goes. */
static void sub_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    struct sentinel *s = ac->data;
    const redisReply *r = reply;
    (void)priv;
    if (!s)
        return;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 3 || r->element[0]->type != REDIS_REPLY_STRING) {
        ctx_detach(ac);
        s->sub_ac = NULL;
        if (r)
            redisAsyncDisconnect(ac);
        sub_lost(s, !r                             ? "connection lost"
                    : r->type == REDIS_REPLY_ERROR ? "SUBSCRIBE refused"
                                                   : "bad reply");
        return;
    }
    const char *kind = r->element[0]->str;
    if (strcmp(kind, "subscribe") == 0) {
        event_del(s->sub_timer);
        if (s->sub_failures) {
            const struct config_addr *a = sentinel_at(s, s->sub_index);
            log_info("redis sentinel %s:%d: subscribed again", a->host, a->port);
        }
        s->sub = SUB_SUBSCRIBED;
        s->sub_failures = 0;
        s->sub_why[0] = '\0';
        s->ev.subscribed(s->ev.arg);
    } else if (strcmp(kind, "message") == 0 && r->element[2]->type == REDIS_REPLY_STRING) {
        sub_message(s, r->element[2]->str);
    }
}

static void sub_on_connect(const redisAsyncContext *ac, int status)
{
    struct sentinel *s = ac->data;
    if (!s || status == REDIS_OK)
        return;
    ctx_detach(ac);
    s->sub_ac = NULL;
    sub_lost(s, ac->errstr[0] ? ac->errstr : "connect failed");
}

static void sub_on_disconnect(const redisAsyncContext *ac, int status)
{
    struct sentinel *s = ac->data;
    (void)status;
    if (!s)
        return;
    ctx_detach(ac);
    s->sub_ac = NULL;
    sub_lost(s, ac->errstr[0] ? ac->errstr : "connection closed");
}

static void sub_connect(struct sentinel *s)
{
    redisAsyncContext *ac = ctx_open(s, sentinel_at(s, s->sub_index), sub_on_connect, sub_on_disconnect);
    if (!ac || redisAsyncCommand(ac, sub_reply, NULL, "SUBSCRIBE %s", CHANNEL) != REDIS_OK) {
        if (ac) {
            ac->data = NULL;
            redisAsyncFree(ac);
        }
        sub_lost(s, "cannot connect");
        return;
    }
    s->sub_ac = ac;
    s->sub = SUB_CONNECTING;
    timer_arm(s->sub_timer, s->cfg->redis_connect_timeout_ms);
}

static void sub_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct sentinel *s = arg;
    if (s->sub == SUB_WAITING) {
        sub_connect(s);
    } else if (s->sub == SUB_CONNECTING) {
        ctx_free(&s->sub_ac);
        sub_lost(s, "SUBSCRIBE not confirmed within connect_timeout");
    }
}

/* ---- lifetime ------------------------------------------------------------------------------------ */

struct sentinel *sentinel_new(struct event_base *base, const struct config *cfg,
                              const struct sentinel_events *ev)
{
    struct sentinel *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->base = base;
    s->cfg = cfg;
    s->ev = *ev;
    s->ask_timer = evtimer_new(base, ask_timer_cb, s);
    s->sub_timer = evtimer_new(base, sub_timer_cb, s);
    if (!s->ask_timer || !s->sub_timer) {
        sentinel_free(s);
        return NULL;
    }
    sub_connect(s);
    return s;
}

void sentinel_free(struct sentinel *s)
{
    if (!s)
        return;
    ctx_free(&s->ask_ac);
    ctx_free(&s->sub_ac);
    if (s->ask_timer)
        event_free(s->ask_timer);
    if (s->sub_timer)
        event_free(s->sub_timer);
    free(s);
}
