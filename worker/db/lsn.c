/* lsn: commit-LSN grouping. A write's answer waits for pg_current_wal_lsn() read after its commit; one
 * read, sent after the commit, serves every write waiting for one. Its answer also resolves the unknown
 * commits counted when it was sent (consistency.h). */
#include "worker/db/lsn.h"

#include <stdio.h>
#include <stdlib.h>

#include "common/log.h"
#include "worker/db/batch.h"
#include "worker/db/queue.h"
#include "worker/db/route.h"

static const char SQL_WRITE_LSN[] = "SELECT pg_current_wal_lsn()::text";

/* Every write of the group succeeded; lsn (POOL_LSN_NONE when unknown: reads of it go to the primary)
 * is at or past each one's commit. Ends the group and starts the next if writes are waiting. */
void lsn_group_deliver(struct pool *p, struct job *g, uint64_t lsn)
{
    for (struct job *w = g->batch, *next; w; w = next) {
        next = w->next;
        struct pool_result r = { .status = POOL_OK,
                                 .res = w->held,
                                 .sqlstate = "",
                                 .message = "",
                                 .side = POOL_PRIMARY,
                                 .backend = -1,
                                 .commit_lsn = lsn };
        job_finish(p, w, &r);
    }
    g->batch = NULL;
    job_finish(p, g, &(struct pool_result){ .side = POOL_PRIMARY });
    p->lsn_inflight = false;
    lsn_kick(p);
}

void lsn_group_take(struct pool *p, struct job *g, const struct pool_result *r)
{
    uint64_t lsn;
    if (r->status != POOL_OK || PQntuples(r->res) != 1 ||
        pool_lsn_parse(PQgetvalue(r->res, 0, 0), &lsn) != 0) {
        log_warn("primary: cannot read pg_current_wal_lsn() after a commit; reads of it go to the primary");
        lsn = POOL_LSN_NONE;
    } else {
        if (p->consistency)
            consistency_unknown_resolve(p->consistency, p->lsn_marks, lsn);
        if (lsn > p->primary.lsn)
            p->primary.lsn = lsn; /* a fresher sample of the primary's position than its health check's */
        if (p->consistency)
            consistency_primary_position_note(p->consistency, p->primary_identity, lsn);
    }
    lsn_group_deliver(p, g, lsn);
}

/* Sends one commit-LSN read for every write waiting, unless one is under way (its answer may predate
 * their commits: they wait for the next). */
void lsn_kick(struct pool *p)
{
    if (p->lsn_inflight || !p->lsn_waiting.head)
        return;
    struct job *g = job_new(&(struct pool_query){ .sql = SQL_WRITE_LSN }, JOB_LSN, NULL, NULL);
    struct job *waiting = p->lsn_waiting.head;
    p->lsn_waiting = (struct side_queue){ 0 };
    p->lsn_inflight = true;
    if (!g) {
        log_warn("primary: out of memory reading a commit LSN: fencing with a primary-only LSN");
        for (struct job *w = waiting, *next; w; w = next) {
            next = w->next;
            job_finish(p, w,
                       &(struct pool_result){ .status = POOL_OK,
                                              .res = w->held,
                                              .sqlstate = "",
                                              .message = "",
                                              .side = POOL_PRIMARY,
                                              .backend = -1,
                                              .commit_lsn = POOL_LSN_NONE });
        }
        p->lsn_inflight = false;
        return;
    }
    g->batch = waiting;
    if (p->consistency)
        consistency_unknown_snapshot(p->consistency, p->lsn_marks);
    route_submit(p, g);
}

/* A shared write committed every job's row: the rows whose first column is the job's 1-based place. */
void lsn_batch_committed(struct pool *p, struct job *j, PGresult *res)
{
    j->next = j->batch;
    j->batch = NULL;
    int place = 1;
    for (struct job *k = j, *next; k; k = next, place++) {
        next = k->next;
        char key[16];
        snprintf(key, sizeof(key), "%d", place);
        k->held = batch_result_pick(res, key, 1);
        if (k->held)
            queue_push(&p->lsn_waiting, k);
        else
            job_finish(p, k,
                       &(struct pool_result){ .status = POOL_ERR_BROKEN,
                                              .sqlstate = "",
                                              .side = POOL_PRIMARY,
                                              .backend = -1,
                                              .message = "out of memory after the commit" });
    }
    PQclear(res);
}
