/* handlers_health: the tutorial's hello route and the two probes ops point their checks at. */
#include <inttypes.h>
#include <stdio.h>
#include <unistd.h>

#include "worker/api/handlers.h"
#include "worker/cache/cache.h"
#include "worker/db/pool.h"
#include "worker/http/reply.h"

void handle_root(struct api_context *api, struct http_request *req, const struct route_args *a)
{
    (void)api;
    (void)a;
    reply_text(req, 200, "Hello World!");
}

void handle_healthz(struct api_context *api, struct http_request *req, const struct route_args *a)
{
    (void)a;
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "status", json_object_new_string("ok"));
    json_object_object_add(o, "pid", json_object_new_int(getpid()));
    json_object_object_add(o, "worker", json_object_new_int(api->slot));
    json_object_object_add(o, "generation", json_object_new_int64(api->generation));
    reply_json(req, 200, o);
}

static struct json_object *replica_json(const struct pool *p, int i)
{
    struct pool_backend_stats s;
    char buf[32];
    pool_backend_stats(p, i, &s);
    snprintf(buf, sizeof(buf), "%" PRIX64 "/%" PRIX64, s.lsn >> 32, s.lsn & 0xffffffffu);
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "up", json_object_new_boolean(s.up));
    json_object_object_add(o, "replay_lsn", json_object_new_string(buf));
    json_object_object_add(o, "lag_ms", json_object_new_int(s.lag_ms));
    return o;
}

/* 200 "ready" when everything answers; 200 "degraded" when the primary answers but a replica or Redis
 * does not (reads then go to the primary and the cache is bypassed, so every request still works);
 * 503 "unavailable" when the primary does not: writes would fail. Taking an instance out of a load
 * balancer because Redis is down would turn a cache outage into a full one. */
void handle_readyz(struct api_context *api, struct http_request *req, const struct route_args *a)
{
    (void)a;
    bool primary = pool_primary_up(api->pool);
    int nrep = pool_replica_count(api->pool), up = pool_replicas_up(api->pool);
    enum cache_state cs = cache_state(api->cache);
    bool redis_ok = cs == CACHE_UP || cs == CACHE_DISABLED;
    const char *status = "ready";
    if (!primary)
        status = "unavailable";
    else if (up < nrep || !redis_ok)
        status = "degraded";
    struct json_object *o = json_object_new_object(), *reps = json_object_new_array();
    for (int i = 0; i < nrep; i++)
        json_object_array_add(reps, replica_json(api->pool, i));
    json_object_object_add(o, "status", json_object_new_string(status));
    json_object_object_add(o, "primary", json_object_new_boolean(primary));
    json_object_object_add(o, "replicas_up", json_object_new_int(up));
    json_object_object_add(o, "replicas", reps);
    json_object_object_add(o, "redis", json_object_new_string(cache_state_name(cs)));
    const char *master = cache_master(api->cache);
    if (master)
        json_object_object_add(o, "redis_master", json_object_new_string(master));
    json_object_object_add(o, "worker", json_object_new_int(api->slot));
    reply_json(req, primary ? 200 : 503, o);
}
