/* health: the periodic health check of every backend. */
#ifndef PGAPI_HEALTH_H
#define PGAPI_HEALTH_H

#include <event2/util.h>

#include "worker/db/pool_internal.h"

/* The answer r of be's health check: be enters or leaves rotation. */
void health_apply(struct backend *be, const struct pool_result *r);
/* Sends be's health check on an idle connection, unless one is under way. */
void health_send(struct backend *be);
/* The primary's address leads to a standby (its health check, or a read's guard, found it in recovery):
 * out of rotation until a health check finds a primary there again. */
void health_primary_in_recovery(struct backend *be);
/* Timer (health_interval): checks every backend. */
void health_cb(evutil_socket_t fd, short what, void *arg);

#endif
