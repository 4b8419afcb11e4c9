/* api: what the API code (router, resource operations, health routes) gets from its worker: the whole
 * surface it may use, so that it never sees struct worker. worker.c fills it; the router gets it as
 * every request's handler context (http_request.ctx). */
#ifndef PGAPI_API_H
#define PGAPI_API_H

#include <stdbool.h>

#include "worker/api/fill_wait.h"

struct config;
struct event_base;
struct pool;
struct cache;
struct local_cache;
struct consistency;
struct deployment;
struct resource_op_state;
struct ratelimit;
struct auth;

struct api_context {
    const struct config *cfg;
    struct event_base *base;
    struct pool *pool;
    struct cache *cache;
    struct local_cache *local;       /* NULL when off: redis disabled or local_entries = 0 */
    struct consistency *consistency; /* shared with every worker: commit LSNs of acknowledged writes */
    struct deployment *deployment;   /* what this server shares with the others (deployment.h) */
    struct resource_op_state *ops;   /* requests in flight (resource_ops_discard_all at exit) */
    struct fill_waits fill_waits;    /* reads waiting for a fill lease another of them holds */
    struct ratelimit *ratelimit;     /* NULL when [ratelimit] enabled is off */
    struct auth *auth;               /* bearer tokens ([auth]); NULL: none needed */
    int slot;                        /* the worker's, for /healthz and /readyz */
    unsigned generation;
    const bool *draining; /* the worker's: true once it stops accepting */
};

#endif
