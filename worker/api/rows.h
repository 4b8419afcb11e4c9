/* rows: builds a keyset page from a result set whose rows are (id, json text). */
#ifndef PGAPI_ROWS_H
#define PGAPI_ROWS_H

#include <libpq-fe.h>
#include <stdint.h>

struct evbuffer;

/* Appends {"data":[rows...],"next":"<base>?limit=L&after_id=ID"|null} to b; res holds the page's rows
 * of (id, json, more), as resource.h's RESOURCE_SQL_PAGE bounds them: every row is shown, and the last
 * one's `more` tells whether a next page (after its id) exists. -1 when out of memory. */
int rows_page_build(struct evbuffer *b, const PGresult *res, int64_t limit, const char *base);

#endif
