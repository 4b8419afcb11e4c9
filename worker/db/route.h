/* route: which backend runs a statement, and backends in and out of rotation. */
#ifndef PGAPI_ROUTE_H
#define PGAPI_ROUTE_H

#include "worker/db/pool_internal.h"
#include "worker/db/route_decide.h"

/* Takes be out of rotation until a health check passes again. */
void route_backend_down(struct backend *be, const char *why);
/* The idle connection c takes the next job it may run, if any. */
void route_pump(struct pgconn *c);
/* What route_decide.h reads of be. */
void route_backend_snapshot(const struct backend *be, struct route_backend *out);
/* The snapshot of every backend that route_decide.h decides on. */
void route_view_fill(const struct pool *p, struct route_view *v);
/* Whether replica be may serve a read that must see every write up to fence. */
bool route_replica_eligible(const struct backend *be, uint64_t fence);
/* Whether the primary, as it stands now, takes the reads queued for the replicas (route_decide.h). */
bool route_primary_takes_reads_now(const struct pool *p);
/* Counts the reads of j (and of its batch) that start on the primary, by why no replica took them. */
void route_primary_reads_note(struct pool *p, const struct job *j);
/* Runs j on an idle connection of the backend it belongs to, queues it, or fails it. */
void route_submit(struct pool *p, struct job *j);
/* Queued reads move to the side that may now serve them. */
void route_reroute(struct pool *p);

#endif
