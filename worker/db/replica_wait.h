/* replica_wait: a read whose fence no replica has replayed yet waits briefly (config replica_wait) for one
 * that will, rather than run on the primary at once (docs/consistency.md, "Waiting for a replica"). */
#ifndef PGAPI_REPLICA_WAIT_H
#define PGAPI_REPLICA_WAIT_H

#include <event2/util.h>

#include "worker/db/pool_internal.h"
#include "worker/db/route_decide.h"

/* Parks the read j (v: the backends as j was routed) when it may wait (route_read_may_wait) and has not
 * waited before: true if it now waits; the step probes the replicas and gives up at its deadline. */
bool replica_wait_park(struct pool *p, struct job *j, const struct route_view *v);
/* Waiting reads that a replica may now serve, and those past their deadline, are routed again. */
void replica_wait_release(struct pool *p);
/* j (and its batch) starts on side: the reads among them that waited count once, by where they ran. */
void replica_wait_note_start(struct pool *p, enum pool_side side, struct job *j);
/* Drops a waiting read whose callback argument is arg, without its callback (pool_cancel). */
bool replica_wait_cancel(struct pool *p, const void *arg);
/* Timer: the waiting reads' step. */
void replica_wait_step_cb(evutil_socket_t fd, short what, void *arg);

#endif
