/* redis_client: a state machine over one redisAsyncContext. hiredis frees a context itself after its
 * disconnect callback, so this module only drops its pointer there; it frees a context only from its
 * own timers, never from inside a hiredis callback. Timeouts are ours: hiredis 0.14 has none for
 * async connects and commands. */
#include "worker/cache/redis_client.h"

#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/config.h"
#include "common/log.h"
#include "worker/cache/sentinel.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

struct redis_client {
    struct event_base *base;
    const struct config *cfg;
    struct redis_client_events events;
    redisAsyncContext *ac;
    enum cache_state state;
    char where[300]; /* "host:port" or the socket path, for log lines */
    char host[256];  /* the address connected to: [redis] host/port, or what the Sentinels named */
    int port;
    struct sentinel *sentinel; /* with [redis] sentinels: names host/port */
    bool resolving;            /* CACHE_CONNECTING: waiting for the Sentinels' answer, not yet connecting */
    bool role_checked;         /* with Sentinels: the handshake also checked that the store is a master */
    char refused[160];         /* why Redis refused the handshake; the connect timer reports it */
    char drop[160];         /* why the link is to be dropped: the timer does it (never inside a callback) */
    char down_why[160];     /* the reason last logged: each new one is logged once */
    struct event *timer_ev; /* reconnect back-off, connect (and handshake) timeout */
    struct event *ping_ev;  /* periodic health PING */
    bool ping_inflight;
    int failures;
    bool closing;                    /* redis_client_free: replies are discarded */
    const struct redis_cmd *awaited; /* the command whose deadline passed, while its socket is read */
    struct redis_client_stats stats;
};

static void client_connect(struct redis_client *rc);
static void client_connect_to(struct redis_client *rc);

static void timer_arm(struct event *ev, int ms)
{
    struct timeval tv = clock_timeval(ms);
    event_add(ev, &tv);
}

/* Logged when Redis goes from up to down and whenever the reason changes (a Redis that is back but
 * refuses our AUTH says so once), never once per retry. */
static void client_down(struct redis_client *rc, const char *why)
{
    if (rc->state == CACHE_UP || rc->failures == 0 || strcmp(why, rc->down_why) != 0)
        log_warn("redis %s: %s: cache bypassed until it is back", rc->where, why);
    snprintf(rc->down_why, sizeof(rc->down_why), "%s", why);
    rc->state = CACHE_DOWN;
    int ms = clock_backoff_ms(rc->failures, BACKOFF_MIN_MS, BACKOFF_MAX_MS);
    rc->failures++;
    timer_arm(rc->timer_ev, ms);
}

/* Our side gives up on the context (timeout): hiredis runs the disconnect callback from the free. */
static void client_abandon(struct redis_client *rc, const char *why)
{
    redisAsyncContext *ac = rc->ac;
    rc->ac = NULL;
    if (ac) {
        ac->data = NULL;
        redisAsyncFree(ac);
    }
    rc->stats.disconnects++;
    client_down(rc, why);
}

/* A link to a store that is no master (any more) is dropped from the timer: the reconnection asks the
 * Sentinels again. Called from inside hiredis callbacks, where the context must not be freed. */
static void client_drop_soon(struct redis_client *rc, const char *why)
{
    if (!rc->ac || rc->drop[0])
        return;
    snprintf(rc->drop, sizeof(rc->drop), "%s", why);
    timer_arm(rc->timer_ev, 0);
}

/* ---- commands ------------------------------------------------------------------------------- */

#define DEADLINE_READS 64 /* reads of hiredis' 16 kB a deadline may take: 1 MB of replies at most */

static bool fd_readable(int fd)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    return poll(&p, 1, 0) > 0; /* a timeout of 0: the loop never waits here */
}

/* Whether cmd was answered by the replies already in our socket. hiredis reads 16 kB per readable event,
 * once per loop iteration; a worker whose iterations are long (thousands of connections served in each)
 * took a backlog of replies Redis had long sent for Redis's silence, bypassed the cache and sent every
 * read to the database (whose queue then overflowed: 503). The socket is read before a deadline counts. */
static bool cmd_answered_meanwhile(struct redis_client *rc, const struct redis_cmd *cmd)
{
    rc->awaited = cmd;
    for (int i = 0; i < DEADLINE_READS && rc->ac && rc->awaited == cmd && fd_readable(rc->ac->c.fd); i++)
        redisAsyncHandleRead(rc->ac);   /* as the libevent adapter's read event does */
    bool answered = rc->awaited != cmd; /* its reply (or the link's end) came: cmd may be freed */
    rc->awaited = NULL;
    return answered;
}

/* Past command_timeout the sender answers its own caller; a command whose outcome matters then drops the
 * connection (the sender chose REDIS_DEADLINE_DROP_LINK): hiredis answers it NULL from the free. */
static void cmd_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct redis_cmd *cmd = arg;
    struct redis_client *rc = cmd->rc;
    if (cmd_answered_meanwhile(rc, cmd))
        return;
    enum redis_deadline deadline = cmd->deadline;
    cmd->state = REDIS_CMD_TIMED_OUT;
    cmd->cb(cmd, NULL, REDIS_CMD_DEADLINE);
    if (deadline == REDIS_DEADLINE_DROP_LINK)
        client_abandon(rc, "command not answered within command_timeout"); /* frees cmd via its callback */
}

static void on_cmd_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)ac;
    struct redis_cmd *cmd = priv;
    const redisReply *r = reply;
    if (cmd->rc->awaited == cmd)
        cmd->rc->awaited = NULL;
    if (r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "READONLY", 8) == 0 && !cmd->rc->closing)
        client_drop_soon(cmd->rc, "the store is a replica now (READONLY)");
    if (cmd->timer_ev) {
        event_free(cmd->timer_ev);
        cmd->timer_ev = NULL;
    }
    cmd->cb(cmd, reply, cmd->rc->closing ? REDIS_CMD_DISCARDED : REDIS_CMD_REPLY);
}

bool redis_client_send(struct redis_client *rc, struct redis_cmd *cmd, redis_cmd_cb cb,
                       enum redis_deadline deadline, int argc, const char **argv, const size_t *lens)
{
    if (!rc->ac)
        return false;
    *cmd = (struct redis_cmd){ .rc = rc, .cb = cb, .deadline = deadline, .state = REDIS_CMD_SENT };
    bool timed = deadline != REDIS_DEADLINE_NONE;
    if (timed && !(cmd->timer_ev = evtimer_new(rc->base, cmd_timeout_cb, cmd)))
        return false;
    if (redisAsyncCommandArgv(rc->ac, on_cmd_reply, cmd, argc, argv, lens) != REDIS_OK) {
        if (cmd->timer_ev)
            event_free(cmd->timer_ev);
        cmd->timer_ev = NULL;
        return false;
    }
    if (timed)
        timer_arm(cmd->timer_ev, rc->cfg->redis_command_timeout_ms);
    return true;
}

/* The client's own commands (the handshake, the health PING): nothing but the redis_cmd. */
static bool own_cmd_send(struct redis_client *rc, redis_cmd_cb cb, int argc, const char **argv,
                         const size_t *lens)
{
    struct redis_cmd *cmd = calloc(1, sizeof(*cmd));
    if (!cmd)
        return false;
    if (!redis_client_send(rc, cmd, cb, REDIS_DEADLINE_DROP_LINK, argc, argv, lens)) {
        free(cmd);
        return false;
    }
    return true;
}

/* ---- connection ----------------------------------------------------------------------------- */

static void client_up(struct redis_client *rc)
{
    event_del(rc->timer_ev);
    if (rc->failures)
        log_info("redis %s: connected again", rc->where);
    rc->failures = 0;
    rc->down_why[0] = '\0';
    rc->state = CACHE_UP;
    rc->stats.connects++;
    rc->events.up(rc->events.arg);
}

/* A refusal is reported by the connect timer (fired at once), which drops the link: this runs inside a
 * hiredis callback, where the context must not be freed. Redis's error text names no secret. */
static void role_check_send(struct redis_client *rc);

static void handshake_done(struct redis_client *rc, const redisReply *r)
{
    if (!r)
        return; /* the link went: its disconnect (or our timer) already reported it */
    if (r->type != REDIS_REPLY_ERROR) {
        if (rc->sentinel && !rc->role_checked)
            role_check_send(rc);
        else
            client_up(rc);
        return;
    }
    const char *hint = "";
    if (strncmp(r->str, "NOAUTH", 6) == 0)
        hint = " (set PGAPI_REDIS_PASSWORD or [redis] password_file)";
    else if (strncmp(r->str, "WRONGPASS", 9) == 0)
        hint = " (check [redis] username and the password)";
    const char *sent = rc->cfg->redis_password[0] ? "AUTH" : "PING";
    snprintf(rc->refused, sizeof(rc->refused), "%s refused: %.80s%s", sent, r->str, hint);
    timer_arm(rc->timer_ev, 0);
}

static void handshake_reply(struct redis_cmd *cmd, const redisReply *r, enum redis_cmd_event ev)
{
    if (ev == REDIS_CMD_DEADLINE)
        return; /* the link is dropped: its reply comes NULL */
    if (ev == REDIS_CMD_REPLY && cmd->state == REDIS_CMD_SENT)
        handshake_done(cmd->rc, r);
    free(cmd);
}

/* With Sentinels, the store they named must be a master when we connect: a former master restarted is
 * a master with no data until its Sentinels make it a replica. INFO, which the pgapi ACL user has. */
static void role_check_reply(struct redis_cmd *cmd, const redisReply *r, enum redis_cmd_event ev)
{
    struct redis_client *rc = cmd->rc;
    if (ev == REDIS_CMD_DEADLINE)
        return;
    if (ev == REDIS_CMD_REPLY && cmd->state == REDIS_CMD_SENT && r) {
        rc->role_checked = true;
        if (r->type == REDIS_REPLY_STRING && strstr(r->str, "role:master")) {
            client_up(rc);
        } else {
            snprintf(rc->refused, sizeof(rc->refused), "%s",
                     r->type == REDIS_REPLY_ERROR ? "INFO replication refused (the ACL user needs +info)"
                                                  : "not a master: asking the Sentinels again");
            timer_arm(rc->timer_ev, 0);
        }
    }
    free(cmd);
}

static void role_check_send(struct redis_client *rc)
{
    const char *argv[] = { "INFO", "replication" };
    size_t lens[] = { 4, 11 };
    if (!own_cmd_send(rc, role_check_reply, 2, argv, lens)) {
        snprintf(rc->refused, sizeof(rc->refused), "cannot send INFO");
        timer_arm(rc->timer_ev, 0);
    }
}

/* The first command of every connection, before any other: AUTH [username] password when a password
 * is configured, else PING, so that a Redis that wants a password (NOAUTH) is noticed here, once, and
 * not as a failure of every lookup. */
static void handshake_send(struct redis_client *rc)
{
    const struct config *cfg = rc->cfg;
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
    if (!own_cmd_send(rc, handshake_reply, argc, argv, lens)) {
        snprintf(rc->refused, sizeof(rc->refused), "cannot send %s", argv[0]);
        timer_arm(rc->timer_ev, 0);
    }
}

/* The link is open; the cache is up only once the handshake (AUTH or PING) is answered. The connect
 * timer stays armed: connect_timeout bounds both. */
static void on_connect(const redisAsyncContext *ac, int status)
{
    struct redis_client *rc = ac->data;
    if (!rc)
        return;
    if (status != REDIS_OK) {
        rc->ac = NULL; /* hiredis frees it after this callback */
        client_down(rc, ac->errstr[0] ? ac->errstr : "connect failed");
        return;
    }
    handshake_send(rc);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct redis_client *rc = ac->data;
    (void)status;
    if (!rc)
        return;
    rc->ac = NULL;
    rc->stats.disconnects++;
    client_down(rc, ac->errstr[0] ? ac->errstr : "connection closed");
}

static void client_connect_to(struct redis_client *rc)
{
    const struct config *cfg = rc->cfg;
    redisAsyncContext *ac = NULL;
    rc->role_checked = false;
    if (cfg->redis_socket[0])
        ac = redisAsyncConnectUnix(cfg->redis_socket);
    else
        ac = redisAsyncConnect(rc->host, rc->port);
    if (!ac || ac->err) {
        client_down(rc, ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        return;
    }
    ac->data = rc;
    if (redisLibeventAttach(ac, rc->base) != REDIS_OK) {
        redisAsyncFree(ac);
        client_down(rc, "cannot attach to the event loop");
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    rc->ac = ac;
    rc->state = CACHE_CONNECTING;
    rc->refused[0] = '\0';
    timer_arm(rc->timer_ev, rc->cfg->redis_connect_timeout_ms);
}

/* With Sentinels every connection starts with a question: the master may have moved while we were away.
 * The Sentinel module bounds each try, so the answer always comes (NULL host: none named one). */
static void client_connect(struct redis_client *rc)
{
    if (!rc->sentinel) {
        client_connect_to(rc);
        return;
    }
    rc->resolving = true;
    rc->state = CACHE_CONNECTING;
    sentinel_ask(rc->sentinel);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct redis_client *rc = arg;
    if (rc->drop[0]) {
        char why[sizeof(rc->drop)];
        snprintf(why, sizeof(why), "%s", rc->drop);
        rc->drop[0] = '\0';
        client_abandon(rc, why);
    } else if (rc->state == CACHE_CONNECTING && !rc->resolving) {
        client_abandon(rc, rc->refused[0] ? rc->refused : "connect_timeout passed");
    } else if (rc->state == CACHE_DOWN) {
        client_connect(rc);
    }
}

/* ---- Sentinel ------------------------------------------------------------------------------- */

/* Records the master the Sentinels name; true when it is another one than the link's. */
static bool master_note(struct redis_client *rc, const char *host, int port)
{
    if (strcmp(rc->host, host) == 0 && rc->port == port)
        return false;
    const char *name = rc->cfg->redis_master_name;
    if (rc->host[0]) {
        log_warn("redis sentinel: master %s is %s:%d (was %s:%d): its store is verified before it is trusted",
                 name, host, port, rc->host, rc->port);
        rc->stats.master_changes++;
    } else {
        log_info("redis sentinel: master %s is %s:%d", name, host, port);
    }
    snprintf(rc->host, sizeof(rc->host), "%s", host);
    rc->port = port;
    snprintf(rc->where, sizeof(rc->where), "%s:%d", host, port);
    return true;
}

static void sentinel_answer(void *arg, const char *host, int port)
{
    struct redis_client *rc = arg;
    bool moved = host && master_note(rc, host, port);
    if (!rc->resolving) {
        if (moved)
            client_drop_soon(rc, "the Sentinels name another master");
        return;
    }
    rc->resolving = false;
    if (host)
        client_connect_to(rc);
    else
        client_down(rc, "no Sentinel named the master");
}

static void sentinel_switched(void *arg, const char *host, int port)
{
    struct redis_client *rc = arg;
    if (master_note(rc, host, port))
        client_drop_soon(rc, "the Sentinels switched the master");
}

static void sentinel_subscribed(void *arg)
{
    struct redis_client *rc = arg;
    if (!rc->resolving && rc->ac)
        sentinel_ask(rc->sentinel);
}

/* ---- health --------------------------------------------------------------------------------- */

static void ping_reply(struct redis_cmd *cmd, const redisReply *r, enum redis_cmd_event ev)
{
    struct redis_client *rc = cmd->rc;
    if (ev == REDIS_CMD_DEADLINE) {
        rc->stats.ping_failures++;
        rc->ping_inflight = false;
        return; /* the link is dropped: its reply comes NULL */
    }
    if (ev == REDIS_CMD_REPLY && cmd->state == REDIS_CMD_SENT) {
        rc->ping_inflight = false;
        if (r && (r->type != REDIS_REPLY_STATUS || strcmp(r->str, "PONG") != 0)) { /* NULL: link lost */
            rc->stats.ping_failures++;
            log_warn("redis: unexpected PING answer");
        }
    }
    free(cmd);
}

/* Health: a PING per health_interval; one not answered within command_timeout drops the connection
 * (the command timeout does it, as for any command whose outcome matters). */
static void ping_send(struct redis_client *rc)
{
    if (!redis_client_up(rc) || rc->ping_inflight)
        return;
    const char *argv[] = { "PING" };
    size_t lens[] = { 4 };
    if (!own_cmd_send(rc, ping_reply, 1, argv, lens))
        client_abandon(rc, "cannot send PING");
    else
        rc->ping_inflight = true;
}

static void ping_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct redis_client *rc = arg;
    rc->events.tick(rc->events.arg);
    ping_send(rc);
}

/* ---- lifetime ------------------------------------------------------------------------------- */

struct redis_client *redis_client_new(struct event_base *base, const struct config *cfg,
                                      const struct redis_client_events *events)
{
    struct redis_client *rc = calloc(1, sizeof(*rc));
    if (!rc)
        return NULL;
    rc->base = base;
    rc->cfg = cfg;
    rc->events = *events;
    rc->state = CACHE_DISABLED;
    snprintf(rc->host, sizeof(rc->host), "%s", cfg->redis_sentinel_count ? "" : cfg->redis_host);
    rc->port = cfg->redis_port;
    if (cfg->redis_socket[0])
        snprintf(rc->where, sizeof(rc->where), "%s", cfg->redis_socket);
    else if (cfg->redis_sentinel_count)
        snprintf(rc->where, sizeof(rc->where), "master %s (Sentinels)", cfg->redis_master_name);
    else
        snprintf(rc->where, sizeof(rc->where), "%s:%d", cfg->redis_host, cfg->redis_port);
    if (!cfg->redis_enabled)
        return rc;
    rc->timer_ev = evtimer_new(base, timer_cb, rc);
    rc->ping_ev = event_new(base, -1, EV_PERSIST, ping_cb, rc);
    const struct sentinel_events sev = { sentinel_answer, sentinel_switched, sentinel_subscribed, rc };
    if (cfg->redis_sentinel_count)
        rc->sentinel = sentinel_new(base, cfg, &sev);
    if (!rc->timer_ev || !rc->ping_ev || (cfg->redis_sentinel_count && !rc->sentinel)) {
        redis_client_free(rc);
        return NULL;
    }
    timer_arm(rc->ping_ev, cfg->health_interval_ms);
    client_connect(rc);
    return rc;
}

/* hiredis answers every pending command with NULL from redisAsyncFree: each is REDIS_CMD_DISCARDED. */
void redis_client_free(struct redis_client *rc)
{
    if (!rc)
        return;
    rc->closing = true;
    sentinel_free(rc->sentinel);
    if (rc->ac) {
        rc->ac->data = NULL;
        redisAsyncFree(rc->ac);
    }
    struct event *evs[] = { rc->timer_ev, rc->ping_ev };
    for (size_t i = 0; i < 2; i++)
        if (evs[i])
            event_free(evs[i]);
    free(rc);
}

enum cache_state redis_client_state(const struct redis_client *rc)
{
    return rc->state;
}

bool redis_client_failed(const struct redis_client *rc)
{
    return rc->state == CACHE_DOWN && rc->failures > 0;
}

bool redis_client_up(const struct redis_client *rc)
{
    return rc->state == CACHE_UP && rc->ac;
}

void redis_client_stats(const struct redis_client *rc, struct redis_client_stats *out)
{
    *out = rc->stats;
}

const char *redis_client_master(const struct redis_client *rc)
{
    return rc->sentinel && rc->host[0] ? rc->where : NULL;
}
