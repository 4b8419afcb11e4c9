/* batch: helpers for statements that serve several requests. Under load the pool runs the queued jobs
 * of one statement as one statement taking each parameter as an array: by-id reads as
 * `... WHERE id = ANY($1)`, creates as one multi-row INSERT; each job still gets the rows a statement
 * of its own would have returned (see pool_query.batch_sql). */
#ifndef PGAPI_BATCH_H
#define PGAPI_BATCH_H

#include <libpq-fe.h>

#define BATCH_MAX 32 /* jobs per statement */

/* The array literal '{"a","b\"c",NULL}' of n text values (NULL: a NULL element). malloc'd; NULL when
 * out of memory. */
char *batch_array_text(const char *const *values, int n);
/* A result of its own (PQclear it) with the rows of res whose first column is key, keeping the
 * columns from first_col on: the shape a statement of its own would have returned. NULL when out of
 * memory. */
PGresult *batch_result_pick(const PGresult *res, const char *key, int first_col);
/* A copy of res (PQclear it) without its last column: a replica read's result without the replay
 * position the pool added to its statement (pgconn.c). NULL when out of memory. */
PGresult *batch_result_drop_last(const PGresult *res);

#endif
