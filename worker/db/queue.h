/* queue: jobs, the wait queue of each side, and the batching of queued statements. */
#ifndef PGAPI_QUEUE_H
#define PGAPI_QUEUE_H

#include <event2/util.h>

#include "worker/db/pool_internal.h"
#include "worker/db/route_decide.h"

/* A job for q, its parameters copied. NULL when out of memory. */
struct job *job_new(const struct pool_query *q, enum job_kind kind, pool_cb cb, void *arg);
/* Counts the statement, runs the callback once and frees the job. */
void job_finish(struct pool *p, struct job *j, const struct pool_result *r);
/* Answers j with a failure (a committed write: success with a primary-only fence). */
void job_fail(struct pool *p, struct job *j, enum pool_side side, enum pool_status st, const char *msg);
/* Appends j at the tail of q. */
void queue_push(struct side_queue *q, struct job *j);
/* Removes and returns the first job of q that be may run, or NULL. */
struct job *queue_take(struct side_queue *q, const struct backend *be);
/* Drops a queued read whose callback argument is arg, without its callback. */
bool queue_cancel(struct side_queue *q, const void *arg);
/* Whether the queued job k joins lead's statement: the same batched statement, not aimed at one
 * backend, and on a replica (replica not NULL) a fence that replica has passed. */
bool queue_batch_joins(const struct job *lead, const struct job *k, const struct route_backend *replica,
                       uint64_t floor_lsn);
/* Moves the jobs of q that join lead (queue_batch_joins) to the end of lead->batch, in queue order, until
 * the statement holds BATCH_MAX jobs (lead included); the others stay in order. Returns how many joined. */
int queue_batch_take(struct side_queue *q, struct job *lead, const struct route_backend *replica,
                     uint64_t floor_lsn);
/* Moves the queued reads that join j's statement on c into j->batch (on the primary, those queued for
 * the replicas too while it takes their reads); true if any. */
bool queue_batch_gather(struct pgconn *c, struct job *j);
/* Sends j and its batch as one statement taking each parameter as an array. */
void queue_batch_send(struct pgconn *c, struct job *j);
/* Each job of j's batch gets its own share of the result r. */
void queue_batch_deliver(struct pool *p, struct job *j, const struct pool_result *r);
/* A shared write failed as a whole: each job runs again alone. */
void queue_batch_split(struct pool *p, struct job *j);
/* The connection under a batch broke: each read of it is retried once. */
void queue_batch_requeue(struct pool *p, struct job *j, enum pool_side side);
/* Queues j on side (a commit-LSN read first), or fails it when the queue is full. */
void queue_or_fail(struct pool *p, enum pool_side side, struct job *j);
/* Submits again every job of side's queue that `moves` picks. */
void queue_resubmit(struct pool *p, enum pool_side side, bool (*moves)(struct pool *, const struct job *));
/* Timer: expires jobs past queue_timeout and reroutes the others. */
void queue_sweep_cb(evutil_socket_t fd, short what, void *arg);

#endif
