/* dbreply: turns a failed database result into the API's JSON error with the right status. */
#ifndef PGAPI_DBREPLY_H
#define PGAPI_DBREPLY_H

#include <stdbool.h>

#include "worker/db/pool.h"
#include "worker/http/http.h"

/* If r is not POOL_OK, answers req and returns true. `what` names the resource for messages. */
bool dbreply_error_answer(struct http_request *req, const struct pool_result *r, const char *what);
/* What a write_outcome_unknown's message tells its client to do: resend with the same Idempotency-Key
 * when the request carried one (the keyed statement stores its answer in the transaction that writes), else
 * read first. */
const char *dbreply_retry_advice(const struct http_request *req);
/* The write's statement was sent and its answer lost: dbreply_error_answer answers write_outcome_unknown. */
bool dbreply_outcome_unknown(const struct http_request *req, const struct pool_result *r);

#endif
