/* sentinel: finds the Redis master through Redis Sentinel ([redis] sentinels, master_name). hiredis 0.14
 * has no Sentinel client: this one asks the Sentinels in turn (SENTINEL get-master-addr-by-name) and keeps
 * one subscription to +switch-master on one of them. redis_client (the link) uses it; nothing else does.
 * Why a master change is lost state and what follows: docs/consistency.md, "High availability". */
#ifndef PGAPI_SENTINEL_H
#define PGAPI_SENTINEL_H

struct event_base;
struct config;
struct sentinel;

struct sentinel_events {
    /* The answer to sentinel_ask: the master's address, or host NULL when no Sentinel named one. */
    void (*answer)(void *arg, const char *host, int port);
    /* A Sentinel announced a new master (+switch-master for our name). */
    void (*switched)(void *arg, const char *host, int port);
    /* The subscription is (again) in place: a switch may have gone unseen meanwhile, so ask again. */
    void (*subscribed)(void *arg);
    void *arg;
};

/* Starts the subscription. NULL without memory. */
struct sentinel *sentinel_new(struct event_base *base, const struct config *cfg,
                              const struct sentinel_events *ev);
/* Every callback is off from here. */
void sentinel_free(struct sentinel *s);
/* Asks the Sentinels, one after another until one answers; the answer comes through events.answer. At
 * most one question is in flight: asking again meanwhile waits for its answer. */
void sentinel_ask(struct sentinel *s);

#endif
