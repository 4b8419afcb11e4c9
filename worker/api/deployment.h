/* deployment: what this server shares with the other servers of its deployment through Redis and the
 * primary (docs/consistency.md, "Several servers"): the fence log read before a local copy is served,
 * the primary's position that verifies a store that lost its state, and the purge record a write leaves
 * when its fences could not reach Redis. */
#ifndef PGAPI_DEPLOYMENT_H
#define PGAPI_DEPLOYMENT_H

#include <stdbool.h>
#include <stdint.h>

#include "worker/db/pool.h"

struct api_context;
struct deployment;

/* A request waiting for the fence log (deployment_sync_wait); the caller's, valid until cb runs. */
struct deployment_wait {
    struct deployment_wait *next;
    void (*cb)(struct deployment_wait *w, bool ok);
};

/* NULL (logged) without memory. Off (every call answers at once) with deployment_fences off or without
 * Redis. */
struct deployment *deployment_new(struct api_context *api);
/* No callback runs from here. */
void deployment_free(struct deployment *d);
bool deployment_on(const struct deployment *d);
/* What a new worker waits for before it accepts (with the primary and the cache): the primary's purge
 * record read once, so that a purge made before it started is applied before it serves (it reads the
 * record now if it can). */
bool deployment_settled(struct deployment *d);
/* cb(ok) once every fence another server logged before this call is in the shared memory: one read of
 * the log serves every request that waits while none is under way (then ok false: Redis unusable). */
void deployment_sync_wait(struct deployment *d, struct deployment_wait *w);
/* A write committed but its fences could not reach Redis: records a purge on the primary (a pool write:
 * cb gets its result; one row, the new gen, when it committed). */
void deployment_purge_record(struct deployment *d, pool_cb cb, void *arg);
/* A write whose answer was lost with its link may have committed, with nobody left to invalidate what it
 * changed: a purge is recorded once the primary answers again (next health_interval), so no cache keeps
 * its old value for ever. Not the cache-dirty flag: that sends every read to the primary, which may be
 * what is down. The guarantee covers acknowledged writes only: until the purge, the old value may still
 * be served. */
void deployment_purge_soon(struct deployment *d);

#endif
