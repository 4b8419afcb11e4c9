/* redis_client: the worker's Redis connection (hiredis async on the worker's libevent loop): connect with
 * back-off, the AUTH (or PING) handshake, PING health, command deadlines, and the link's state that every
 * cache user checks first. It knows nothing of what the commands mean (cache.c does). */
#ifndef PGAPI_REDIS_CLIENT_H
#define PGAPI_REDIS_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event;
struct event_base;
struct config;
struct redisReply;
struct redis_client;

/* The link's state, which cache_state() reports. Redis is optional at run time. */
enum cache_state { CACHE_DISABLED, CACHE_DOWN, CACHE_CONNECTING, CACHE_UP };

/* What the cache protocol (cache.c) is told about the link. */
struct redis_client_events {
    void (*up)(void *arg);   /* the handshake was answered: the link serves commands */
    void (*tick)(void *arg); /* every health_interval, just before the health PING is sent */
    void *arg;
};

struct redis_client_stats {
    uint64_t connects, disconnects, ping_failures;
    uint64_t master_changes; /* the Sentinels named another master than the one the link used */
};

/* With [redis] enabled off the client stays CACHE_DISABLED and never connects. NULL without memory. */
struct redis_client *redis_client_new(struct event_base *base, const struct config *cfg,
                                      const struct redis_client_events *events);
/* Every command still in flight is answered REDIS_CMD_DISCARDED from here, and no other callback runs. */
void redis_client_free(struct redis_client *rc);
enum cache_state redis_client_state(const struct redis_client *rc);
/* Down after a connection attempt failed (not merely not yet tried). */
bool redis_client_failed(const struct redis_client *rc);
/* Up, with a connection to send on. */
bool redis_client_up(const struct redis_client *rc);
void redis_client_stats(const struct redis_client *rc, struct redis_client_stats *out);
/* With [redis] sentinels: "host:port" of the master the Sentinels last named; else NULL. */
const char *redis_client_master(const struct redis_client *rc);

/* What happens to a command whose answer has not come within command_timeout. */
enum redis_deadline {
    REDIS_DEADLINE_NONE,      /* nobody waits for it: no deadline; its slowness never drops the link */
    REDIS_DEADLINE_KEEP_LINK, /* its sender is told (REDIS_CMD_DEADLINE); the link stays, the answer late */
    REDIS_DEADLINE_DROP_LINK, /* its sender is told, then the link is dropped: the outcome is unknown */
};

/* Where a command is in its life. */
enum redis_cmd_state {
    REDIS_CMD_SENT,      /* waiting for its answer */
    REDIS_CMD_TIMED_OUT, /* its deadline passed and its sender was told: any answer now comes late */
};

/* Why a command's callback runs. It runs once with REDIS_CMD_REPLY or REDIS_CMD_DISCARDED, after which
 * the command belongs to its sender again (to free); before that, at most once with REDIS_CMD_DEADLINE. */
enum redis_cmd_event {
    REDIS_CMD_DEADLINE,  /* command_timeout passed (reply NULL); the command stays in flight */
    REDIS_CMD_REPLY,     /* the answer, or NULL when the link went; cmd->state says if it comes late */
    REDIS_CMD_DISCARDED, /* redis_client_free: reply NULL; the caller it was for must not be answered */
};

struct redis_cmd;
typedef void (*redis_cmd_cb)(struct redis_cmd *cmd, const struct redisReply *reply, enum redis_cmd_event ev);

/* One command in flight, the first member of its sender's own command struct. hiredis always calls back
 * (with NULL when the connection goes), so the callback always runs. */
struct redis_cmd {
    struct redis_client *rc;
    redis_cmd_cb cb;
    enum redis_deadline deadline;
    enum redis_cmd_state state;
    struct event *timer_ev;
};

/* Sends argv as one command; cmd is the sender's and stays valid until its callback's last run. False
 * when it could not be sent (the callback never runs). */
bool redis_client_send(struct redis_client *rc, struct redis_cmd *cmd, redis_cmd_cb cb,
                       enum redis_deadline deadline, int argc, const char **argv, const size_t *lens)
    __attribute__((warn_unused_result));

#endif
