/* batch: helpers for coalesced by-id reads. Under load the pool runs the reads of one statement that
 * wait in its queue as one `... WHERE id = ANY($1::bigint[])` and hands each waiting read its own row,
 * so PostgreSQL and PgBouncer see one statement instead of many. */
#ifndef PGAPI_BATCH_H
#define PGAPI_BATCH_H

#include <libpq-fe.h>
#include <stddef.h>

#define BATCH_MAX 32 /* reads per statement */

/* "{1,2,3}" from decimal id texts; returns its length, or 0 if it does not fit in cap. */
size_t batch_ids_text(char *buf, size_t cap, const char *const *ids, int n);
/* A result of its own (PQclear it) with the rows of res whose first column is id: the shape a
 * single-row read of that id would have returned. NULL when out of memory. */
PGresult *batch_result_pick(const PGresult *res, const char *id);

#endif
