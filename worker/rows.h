/* rows: answers from result sets whose rows are (id, json text): one object, or a keyset page. */
#ifndef PGAPI_ROWS_H
#define PGAPI_ROWS_H

#include <libpq-fe.h>
#include <stdint.h>

#include "worker/http.h"

/* Sends column `col` of row 0 (JSON text) as the body. */
void rows_reply_one(struct http_request *req, int status, const PGresult *res, int col);
/* Sends {"data":[rows...],"next":"<base>?limit=L&after_id=ID"|null}; res holds up to limit+1 rows of
 * (id, json), the extra one only telling that a next page exists. */
void rows_reply_page(struct http_request *req, const PGresult *res, int64_t limit, const char *base);
/* The same page body, appended to b (an evbuffer). Returns -1 when out of memory. */
struct evbuffer;
int rows_page_build(struct evbuffer *b, const PGresult *res, int64_t limit, const char *base);

#endif
