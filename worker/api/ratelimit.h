/* ratelimit: [ratelimit] on the API routes. One GCRA step in Redis per request (cache_rate_check), keyed
 * by the token's subject, else the client's address, reads and writes apart; while Redis cannot answer,
 * the same GCRA in this worker's memory with its share of the limits. Answers 429 rate_limited itself. */
#ifndef PGAPI_RATELIMIT_H
#define PGAPI_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cache;
struct config;
struct http_request;
struct ratelimit;

struct ratelimit_stats {
    uint64_t allowed, limited;             /* decided in Redis: every server's shared budget */
    uint64_t local_allowed, local_limited; /* decided by this worker alone (Redis down, slow or off) */
};

/* NULL when [ratelimit] enabled is off (or without memory: logged). */
struct ratelimit *ratelimit_new(const struct config *cfg, struct cache *cache);
/* After cache_free: a check still in flight is answered (discarded) by the cache first. */
void ratelimit_free(struct ratelimit *rl);
void ratelimit_stats(const struct ratelimit *rl, struct ratelimit_stats *out);

/* The client's key: "<r|w>:s:<subject>" for an authenticated subject, else "<r|w>:a:<address>". False
 * when it does not fit cap. */
bool ratelimit_key(char *dst, size_t cap, bool write, const char *subject, const char *client);

/* go(arg, req) runs once the request may proceed, with its RateLimit headers added; a limited request is
 * answered 429 here and go(arg, NULL) only frees. go(arg, NULL) too when the worker exits first. */
typedef void (*ratelimit_go_fn)(void *arg, struct http_request *req);
void ratelimit_admit(struct ratelimit *rl, struct http_request *req, ratelimit_go_fn go, void *arg);

#endif
