/* lsn: commit-LSN grouping: one pg_current_wal_lsn() read after commits serves every write waiting. */
#ifndef PGAPI_LSN_H
#define PGAPI_LSN_H

#include "worker/db/pool_internal.h"

/* Answers every write of the group g with commit LSN lsn; starts the next group. */
void lsn_group_deliver(struct pool *p, struct job *g, uint64_t lsn);
/* The answer r of g's pg_current_wal_lsn() read. */
void lsn_group_take(struct pool *p, struct job *g, const struct pool_result *r);
/* Sends one commit-LSN read for every write waiting, unless one is under way. */
void lsn_kick(struct pool *p);
/* A shared write committed: each job takes its rows and waits for a commit LSN. */
void lsn_batch_committed(struct pool *p, struct job *j, PGresult *res);

#endif
