/* rows: builds a keyset page from a result set whose rows are (id, json text). */
#ifndef PGAPI_ROWS_H
#define PGAPI_ROWS_H

#include <libpq-fe.h>
#include <stdint.h>

struct evbuffer;

/* Appends {"data":[rows...],"next":"<base>?limit=L&after_id=ID"|null} to b; res holds up to limit+1
 * rows of (id, json), the extra one only telling that a next page exists. -1 when out of memory. */
int rows_page_build(struct evbuffer *b, const PGresult *res, int64_t limit, const char *base);

#endif
