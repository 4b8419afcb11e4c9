/* cache: the worker's Redis connection (hiredis async on the worker's libevent loop): connect with
 * back-off, PING health, and the state every cache user checks first. Redis is optional at run time. */
#ifndef PGAPI_CACHE_H
#define PGAPI_CACHE_H

#include <stdbool.h>
#include <stdint.h>

struct event_base;
struct config;
struct cache;

enum cache_state { CACHE_DISABLED, CACHE_DOWN, CACHE_CONNECTING, CACHE_UP };

struct cache_stats {
    uint64_t connects, disconnects, ping_failures;
};

struct cache *cache_new(struct event_base *base, const struct config *cfg);
void cache_free(struct cache *c);
enum cache_state cache_state(const struct cache *c);
const char *cache_state_name(enum cache_state s);
void cache_stats(const struct cache *c, struct cache_stats *out);

#endif
